//! Reports read by the tools their readers use: pdflatex compiles the LaTeX table, pandas
//! recomputes every number from results.parquet, headless Chromium loads every image of the
//! comparison page. One real sweep (12 runs, 4 of them failing) is trained once and shared.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::common::{oracle, run_dirs, status, stderr, stdout, tiny_experiment_fid, vqlab, write};

/// K = 16, 32 train; K = 64 runs with a learning rate that makes the loss non-finite, so they
/// fail (one attempt each). 3 × 2 variants × 2 seeds = 12 runs.
fn sweep() -> &'static Path {
    static SWEEP: OnceLock<PathBuf> = OnceLock::new();
    SWEEP.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let exp = tiny_experiment_fid(
            "table",
            "[launcher]\nmax_attempts = 1\n[sweep]\nseeds = [0, 1]\ngrid = { \"model.variant\" = [\"vqvae\", \"vqgan\"] }\n\
             zip = { \"quantizer.codebook_size\" = [16, 32, 64], \"train.lr\" = [1e-3, 2e-3, 1e30] }",
        );
        write(&dir, "exp.toml", &exp);
        let out = vqlab(&dir, &["run", "exp.toml"]);
        assert_eq!(out.status.code(), Some(1), "the K = 64 runs fail: {}", stderr(&out));
        let sweep = dir.join("runs/table");
        let states: Vec<String> =
            run_dirs(&sweep).iter().map(|r| status(r)["state"].as_str().unwrap().to_string()).collect();
        assert_eq!(states.iter().filter(|s| *s == "done").count(), 8, "{states:?}");
        assert_eq!(states.iter().filter(|s| *s == "failed").count(), 4, "{states:?}");
        sweep
    })
}

fn workdir() -> PathBuf {
    tempfile::tempdir().unwrap().keep()
}

fn report(dir: &Path, args: &[&str]) -> std::process::Output {
    let sweep = sweep().to_str().unwrap().to_string();
    let mut all = vec!["report", sweep.as_str()];
    all.extend_from_slice(args);
    vqlab(dir, &all)
}

fn pdflatex(dir: &Path, tex: &str) {
    let out = Command::new("pdflatex")
        .args(["-interaction=nonstopmode", "-halt-on-error", tex])
        .current_dir(dir)
        .output()
        .expect("pdflatex runs (bash scripts/setup.sh --deps-only installs texlive)");
    assert!(
        out.status.success(),
        "pdflatex {tex} failed:\n{}",
        String::from_utf8_lossy(&out.stdout).lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
    let pdf = dir.join(Path::new(tex).with_extension("pdf"));
    assert!(std::fs::metadata(&pdf).unwrap().len() > 1000, "{} is a real PDF", pdf.display());
}

const METRICS: &str = "eval/rec_mse,eval/psnr,eval/usage,eval/perplexity,eval/rfid";

#[test]
fn latex_markdown_csv_and_parquet_tables_match_pandas_and_the_latex_compiles() {
    let dir = workdir();
    for (file, extra) in [
        ("table.tex", None),
        ("table.md", None),
        ("table.csv", None),
        ("table.parquet", None),
        ("doc.tex", Some("--standalone")),
    ] {
        let mut args =
            vec!["--rows", "quantizer.codebook_size", "--cols", "model.variant", "--metrics", METRICS, "--out", file];
        args.extend(extra);
        let out = report(&dir, &args);
        assert_eq!(out.status.code(), Some(0), "{file}: {}", stderr(&out));
        // The failed runs are named on stderr, not silently dropped.
        assert!(stderr(&out).contains("4 runs not finished (4 failed)"), "{}", stderr(&out));
    }
    // The fragment is \input into a paper-like document; the standalone one compiles as is.
    write(
        &dir,
        "paper.tex",
        "\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage{graphicx}\n\\begin{document}\nSee Table~\\ref{tab:table}.\n\\input{table.tex}\n\\end{document}\n",
    );
    pdflatex(&dir, "paper.tex");
    pdflatex(&dir, "doc.tex");

    let results = sweep().join("results.parquet");
    let files: Vec<PathBuf> =
        ["table.tex", "table.md", "table.csv", "table.parquet"].iter().map(|f| dir.join(f)).collect();
    let mut args: Vec<&OsStr> = vec![results.as_os_str()];
    args.extend(files.iter().map(|f| f.as_os_str()));
    args.extend(["--rows", "quantizer.codebook_size", "--cols", "model.variant", "--metrics", METRICS].map(OsStr::new));
    let check = oracle("report_check.py", &args);
    assert_eq!(check["errors"], serde_json::json!([]), "{check}");
    // 3 codebook sizes × 2 variants × 5 metrics, the K = 64 row all failed.
    assert_eq!(check["cells"], 30, "{check}");
    assert_eq!(check["failed_runs"].as_array().unwrap().len(), 4);
    // rec MSE of these runs is a few hundredths at most: no scale; the table still says which
    // runs failed and why.
    let tex = std::fs::read_to_string(dir.join("table.tex")).unwrap();
    assert!(tex.contains("\\toprule") && tex.contains("\\bottomrule") && tex.contains("\\label{tab:table}"));
    assert!(tex.contains("Not finished, left out (4)"), "{tex}");
    assert!(
        tex.contains("non-finite") || tex.contains("not finite") || tex.contains("NaN"),
        "the reason is footnoted: {tex}"
    );
    assert!(tex.contains("FID-style") && tex.contains("classifier"), "{tex}");
    assert!(tex.contains("over n = 2 seeds"), "{tex}");
}

#[test]
fn a_single_run_per_cell_and_rows_over_two_keys() {
    let dir = workdir();
    let out = report(
        &dir,
        &[
            "--rows",
            "model.variant,quantizer.codebook_size",
            "--where",
            "train.seed=1",
            "--metrics",
            "eval/usage,eval/dead_codes",
            "--format",
            "markdown",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let md = stdout(&out);
    // The experiment file lists vqvae first: rows follow it, then K ascending.
    let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| vq")).collect();
    assert_eq!(rows.len(), 6, "{md}");
    assert!(rows[0].starts_with("| vqvae | 16 |") && rows[3].starts_with("| vqgan | 16 |"), "{md}");
    assert!(md.contains("One run per cell") && !md.contains(" ± "), "{md}");
    // Usage and dead codes agree by definition: dead = K (1 − usage).
    for (ri, k) in [(0, 16.0), (1, 32.0)] {
        let cells: Vec<&str> = rows[ri].split('|').map(str::trim).collect();
        let usage: f64 = cells[3].trim_matches('*').parse().unwrap();
        let dead: f64 = cells[4].trim_matches('*').parse().unwrap();
        assert!((dead - k * (1.0 - usage)).abs() <= 0.5 + k * 0.0005, "{k}: usage {usage} dead {dead}");
    }
}

#[test]
fn bad_report_requests_exit_2_with_the_reason() {
    let dir = workdir();
    let cases: [(&[&str], &str); 6] = [
        (&["--rows", "quantizer.codebook_sise"], "no run has the config key `quantizer.codebook_sise`"),
        (&["--rows", "quantizer.codebook_size", "--metrics", "eval/fid"], "no finished run has the metric `eval/fid`"),
        // Without the variant in rows or cols, a cell would average VQ-VAE with VQ-GAN.
        (&["--rows", "quantizer.codebook_size"], "`model.variant`"),
        (&["--rows", "quantizer.codebook_size", "--cols", "model.variant", "--format", "parquet"], "needs --out"),
        (
            &["--rows", "quantizer.codebook_size", "--cols", "model.variant", "--out", "t.docx"],
            "cannot tell the format",
        ),
        (&["--rows", "quantizer.codebook_size", "--where", "model.variant"], "expected KEY=VALUE"),
    ];
    for (args, message) in cases {
        let out = report(&dir, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }
    let out = vqlab(&dir, &["report", "no/such/sweep", "--rows", "model.variant"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no/such/sweep: not a directory"), "{}", stderr(&out));
}

#[test]
fn nested_sweeps_are_found_and_broken_run_dirs_named() {
    let dir = workdir();
    let root = dir.join("papers");
    let nested = root.join("a/b");
    std::fs::create_dir_all(&nested).unwrap();
    let cp = Command::new("cp").arg("-r").arg(sweep()).arg(nested.join("table")).status().unwrap();
    assert!(cp.success());
    // A run dir whose status.json was cut off mid-write by something other than vqlab.
    write(&root, "other/vqvae-K8-s0-deadbeef/status.json", "{\"state\": \"do");
    write(&root, "other/vqvae-K8-s0-deadbeef/config.toml", "");
    let out = vqlab(
        &dir,
        &[
            "report",
            "papers",
            "--rows",
            "quantizer.codebook_size",
            "--cols",
            "model.variant",
            "--metrics",
            "eval/usage",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("unreadable run dir") && stderr(&out).contains("deadbeef"), "{}", stderr(&out));
    let md = stdout(&out);
    assert!(md.contains("Unreadable run dirs") && md.contains("deadbeef"), "{md}");
    assert!(md.contains("8 runs from papers"), "{md}");
}

/// The text of every `<text>` element of an SVG.
fn svg_texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| Some(t[t.find('>')? + 1..t.find("</text>")?].trim().to_string()))
        .collect()
}

fn png_size(bytes: &[u8]) -> (u32, u32) {
    // The PNG signature, then the IHDR chunk: width and height as big-endian u32.
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(&bytes[12..16], b"IHDR");
    (u32::from_be_bytes(bytes[16..20].try_into().unwrap()), u32::from_be_bytes(bytes[20..24].try_into().unwrap()))
}

#[test]
fn plots_of_a_metric_against_codebook_size_and_of_training_curves() {
    let dir = workdir();
    let sweep = sweep().to_str().unwrap();
    for out_file in ["usage.png", "usage.svg"] {
        let out = vqlab(
            &dir,
            &[
                "plot",
                sweep,
                "--x",
                "quantizer.codebook_size",
                "--x-scale",
                "log2",
                "--y",
                "eval/usage",
                "--group",
                "model.variant",
                "--out",
                out_file,
            ],
        );
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    let png = std::fs::read(dir.join("usage.png")).unwrap();
    assert_eq!(png_size(&png), (960, 600));
    let img = image::load_from_memory(&png).unwrap().to_rgb8();
    // Both groups are drawn in their palette colours (Tableau blue and orange).
    let has = |c: [u8; 3]| img.pixels().any(|p| p.0 == c);
    assert!(has([0x4e, 0x79, 0xa7]) && has([0xf2, 0x8e, 0x2b]), "two coloured series");
    let svg = std::fs::read_to_string(dir.join("usage.svg")).unwrap();
    let texts = svg_texts(&svg);
    assert!(svg.starts_with("<svg"));
    assert!(texts.contains(&"vqvae".to_string()) && texts.contains(&"vqgan".to_string()), "legend: {texts:?}");
    // The x axis is log2 with codebook sizes as tick labels.
    assert!(texts.iter().any(|t| t == "16") && texts.iter().any(|t| t == "32"), "{texts:?}");
    assert!(texts.iter().any(|t| t.contains("(log2 scale)")), "{texts:?}");
    // One marker per (group, K) with a finished run: the failed K = 64 has none.
    let markers = svg.matches("<circle").count() - svg.matches("r=\"5\"").count();
    assert_eq!(markers, 4, "2 groups × 2 codebook sizes");
    // Two metrics on one pair of axes: a series per metric and group, labelled by both.
    let out = vqlab(
        &dir,
        &[
            "plot",
            sweep,
            "--x",
            "quantizer.codebook_size",
            "--y",
            "eval/usage,eval/perplexity",
            "--group",
            "model.variant",
            "--out",
            "two.svg",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let svg = std::fs::read_to_string(dir.join("two.svg")).unwrap();
    let texts = svg_texts(&svg);
    for label in ["usage vqvae", "usage vqgan", "perplexity vqvae", "perplexity vqgan"] {
        assert!(texts.iter().any(|t| t == label), "legend lacks {label}: {texts:?}");
    }
    let markers = svg.matches("<circle").count() - svg.matches("r=\"5\"").count();
    assert_eq!(markers, 8, "2 metrics × 2 groups × 2 codebook sizes");

    let out = vqlab(
        &dir,
        &[
            "plot",
            sweep,
            "--curves",
            "--y",
            "train/rec_loss",
            "--group",
            "model.variant",
            "--where",
            "quantizer.codebook_size=16",
            "--out",
            "curves.svg",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let svg = std::fs::read_to_string(dir.join("curves.svg")).unwrap();
    let texts = svg_texts(&svg);
    // Two seeds per group; the legend follows the experiment file's order (vqvae first).
    let legend: Vec<&String> = texts.iter().filter(|t| t.starts_with("model=")).collect();
    assert_eq!(legend, ["model=vqvae (n=2)", "model=vqgan (n=2)"], "{texts:?}");
    assert!(svg.contains("<polygon") || svg.contains("fill-opacity"), "grouped curves carry a ±std band");

    let out = vqlab(&dir, &["plot", sweep, "--x", "model.variant", "--y", "eval/usage", "--out", "x.png"]);
    assert_eq!(out.status.code(), Some(2), "a text key cannot be an x axis: {}", stderr(&out));
    let out = vqlab(&dir, &["plot", sweep, "--x", "quantizer.codebook_size", "--y", "eval/usage", "--out", "x.pdf"]);
    assert_eq!(out.status.code(), Some(2));
}

/// Headless Chromium as the probe in env/machines runs it.
fn chromium() -> Command {
    let mut c = Command::new("chromium");
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
    ]);
    c
}

#[test]
fn the_compare_page_renders_in_chromium_with_every_image_loaded() {
    let dir = workdir();
    let sweep = sweep().to_str().unwrap();
    let out = vqlab(&dir, &["compare", sweep, "--where", "quantizer.codebook_size=16", "--out", "compare.html"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let html = std::fs::read_to_string(dir.join("compare.html")).unwrap();
    // Self-contained: nothing fetched from anywhere.
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"), "no external resources");
    // Four runs, each with its final reconstruction grid.
    let runs = run_dirs(Path::new(sweep));
    let k16: Vec<&PathBuf> =
        runs.iter().filter(|r| r.file_name().unwrap().to_string_lossy().contains("-K16-")).collect();
    assert_eq!(k16.len(), 4);
    for r in &k16 {
        assert!(html.contains(r.file_name().unwrap().to_str().unwrap()));
    }
    // The differing keys are the variant and the seed, nothing else.
    assert!(html.contains("<th title=\"model.variant\">") && html.contains("<th title=\"train.seed\">"));
    assert!(!html.contains("<th title=\"quantizer.codebook_size\">"));
    // With seeds among the differing keys, the page also averages over them: one row per
    // (recon, variant), with n = 2 seeds.
    let mean = &html[html.find("<h2>Mean over seeds</h2>").expect("a mean-over-seeds table")..];
    let mean = &mean[..mean.find("</table>").unwrap()];
    assert_eq!(mean.matches("<tr><td>").count(), 2, "{mean}");
    assert!(mean.contains("<td>vqvae</td>") && mean.contains("<td>vqgan</td>") && mean.contains(" ± "), "{mean}");

    // The test's own probe, appended to a copy: after load, count the images that decoded.
    let probe = r#"<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0);
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({total: imgs.length, loaded: ok.length,
    broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt)});
  document.body.appendChild(out);
});
</script></body>"#;
    write(&dir, "probed.html", &html.replace("</body>", probe));
    let profile = dir.join("chromium-profile");
    let out = chromium()
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--virtual-time-budget=10000", "--dump-dom"])
        .arg(format!("file://{}", dir.join("probed.html").display()))
        .output()
        .expect("chromium runs (bash scripts/setup.sh --deps-only installs it)");
    let dom = String::from_utf8_lossy(&out.stdout);
    let start = dom.find("<pre id=\"probe\">").unwrap_or_else(|| panic!("the page loaded: {}", stderr(&out)));
    let json = &dom[start + 16..];
    let json: serde_json::Value = serde_json::from_str(&json[..json.find("</pre>").unwrap()]).unwrap();
    let grids = 4;
    let total = json["total"].as_u64().unwrap();
    assert!(total >= grids + 5, "4 grids and the curves: {json}");
    assert_eq!(json["loaded"], json["total"], "every image decoded: {json}");

    // And a screenshot of the page, for a person to look at when this fails.
    let shot = chromium()
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", dir.join("compare.png").display()))
        .arg("--window-size=1400,2400")
        .arg(format!("file://{}", dir.join("compare.html").display()))
        .output()
        .unwrap();
    assert!(dir.join("compare.png").is_file(), "{}", stderr(&shot));
}

#[test]
fn a_table_that_mixes_training_revisions_warns_and_says_so() {
    // A copy of the shared sweep where one finished run looks like the first milestone's: its
    // summary has no training revision (revision 1) and the betas it trained with.
    let dir = workdir();
    let copy = dir.join("mixed");
    for entry in walkdir::WalkDir::new(sweep()).into_iter().filter_map(|e| e.ok()) {
        let rel = entry.path().strip_prefix(sweep()).unwrap();
        let to = copy.join(rel);
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&to).unwrap();
        } else {
            std::fs::copy(entry.path(), &to).unwrap();
        }
    }
    let old = run_dirs(&copy).into_iter().find(|r| status(r)["state"] == "done").unwrap();
    let path = old.join("summary.json");
    let mut summary: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(summary.remove("run.training_revision"), Some(serde_json::json!(vqlab::config::TRAINING_REVISION)));
    std::fs::write(&path, serde_json::to_vec(&summary).unwrap()).unwrap();
    let table_of = |source: &str, more: &[&str]| {
        let mut args = vec!["report", source, "--rows", "quantizer.codebook_size", "--cols", "model.variant"];
        args.extend_from_slice(&["--metrics", "eval/rec_mse"]);
        args.extend_from_slice(more);
        let out = vqlab(&dir, &args);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        (stderr(&out), stdout(&out))
    };
    let (err, table) = table_of("mixed", &[]);
    let rev = vqlab::config::TRAINING_REVISION;
    assert!(err.contains(&format!("mix training revisions (1 run of revision 1, 7 runs of revision {rev})")), "{err}");
    assert!(table.contains(&format!("training revisions 1 and {rev}")), "{table}");
    assert!(table.contains("eval/…: the test split's eval subset"), "the footnote names the split: {table}");
    // Filtering to one revision leaves a clean table.
    let (err, _) = table_of("mixed", &["--where", &format!("run.training_revision={rev}")]);
    assert!(!err.contains("mix training revisions"), "{err}");
    // The footnote names the sweep as given (relative), also when given as an absolute path
    // under the working directory.
    let abs = copy.to_str().unwrap().to_string();
    let (_, table) = table_of(&abs, &[]);
    assert!(table.contains("runs from mixed,") && !table.contains(&abs), "{table}");
}
