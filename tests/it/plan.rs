//! Sweep expansion and run ids, through `vqlab plan --json`.

use std::collections::BTreeSet;

use crate::common::{stderr, stdout, tiny_experiment, vqlab, write};

const GRID: &str = r#"[experiment]
name = "ids"
[sweep]
seeds = [0, 1, 2]
grid = { "quantizer.codebook_size" = [64, 256, 1024, 4096], "model.variant" = ["vqvae", "vqgan"] }
"#;

fn plan_ids(dir: &std::path::Path, extra: &[&str]) -> Vec<(String, String)> {
    let mut args = vec!["plan", "exp.toml", "--json"];
    args.extend_from_slice(extra);
    let out = vqlab(dir, &args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_str().unwrap().to_string(), r["dir"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn grid_times_seeds_gives_24_distinct_runs() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "exp.toml", GRID);
    let runs = plan_ids(dir.path(), &[]);
    assert_eq!(runs.len(), 4 * 2 * 3);
    let ids: BTreeSet<_> = runs.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids.len(), 24);
    // Readable directory names: variant, K, seed, id.
    assert!(runs.iter().any(|(id, d)| *d == format!("vqgan-K1024-s2-{id}")), "{runs:?}");
}

#[test]
fn hardware_and_cadence_do_not_change_ids() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "exp.toml", GRID);
    let a = plan_ids(dir.path(), &[]);
    let b = plan_ids(dir.path(), &["--set", "hardware.cpu_slots=2", "--set", "train.log_every=7"]);
    assert_eq!(a, b);
    let c = plan_ids(dir.path(), &["--set", "train.lr=1e-3"]);
    assert!(a.iter().all(|r| !c.contains(r)), "a result-changing key changes every id");
}

#[test]
fn adding_a_codebook_size_keeps_the_other_ids() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "exp.toml", GRID);
    let before: BTreeSet<_> = plan_ids(dir.path(), &[]).into_iter().collect();
    let after: BTreeSet<_> =
        plan_ids(dir.path(), &["--sweep", "quantizer.codebook_size=64,256,1024,4096,8192"]).into_iter().collect();
    assert_eq!(after.len(), 30);
    assert!(before.is_subset(&after));
    assert!(after.difference(&before).all(|(_, d)| d.contains("-K8192-")));
}

#[test]
fn zip_varies_lists_together() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "exp.toml",
        "[sweep]\nzip = { \"quantizer.codebook_size\" = [64, 512], \"quantizer.embed_dim\" = [16, 32] }\ngrid = { \"model.variant\" = [\"vqvae\", \"vqgan\"] }\n",
    );
    let out = vqlab(dir.path(), &["plan", "exp.toml", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let cells: Vec<(u64, u64)> = v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (r["cell"]["quantizer.codebook_size"].as_u64().unwrap(), r["cell"]["quantizer.embed_dim"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(cells, vec![(64, 16), (512, 32), (64, 16), (512, 32)]);
}

#[test]
fn sweeping_a_key_that_changes_nothing_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "exp.toml", "[sweep]\ngrid = { \"train.log_every\" = [1, 2] }\n");
    let out = vqlab(dir.path(), &["plan", "exp.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("two cells resolve to the same run"), "{}", stderr(&out));
}

#[test]
fn plan_table_lists_states() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "exp.toml", GRID);
    let out = vqlab(dir.path(), &["plan", "exp.toml"]);
    let text = stdout(&out);
    assert!(text.starts_with("sweep ids (24 runs) in runs/ids"), "{text}");
    assert_eq!(text.matches("pending").count(), 24);
}

#[test]
fn describe_counts_parameters_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    // hidden 8, res 4, 1 block, 1 downsample, D 2, K 3, 1 channel:
    // encoder: down0 1→8 4×4: 8·16+8 = 136; conv3 8→8 3×3: 576+8 = 584;
    //          res 8→4 3×3: 288+4 = 292, 4→8 1×1: 32+8 = 40; pre_vq 8→2: 16+2 = 18 → 1070
    // quantizer: 3×2 = 6
    // decoder: conv_in 2→8 3×3: 144+8 = 152; res 292+40 = 332; up0 8→1 4×4: 128+1 = 129 → 613
    write(
        dir.path(),
        "exp.toml",
        "[data]\ndataset = \"synthetic\"\nimage_size = 8\n[model]\nhidden_channels = 8\nres_channels = 4\nres_blocks = 1\ndownsample = 1\n[quantizer]\nembed_dim = 2\ncodebook_size = 3\n",
    );
    let out = vqlab(dir.path(), &["describe", "exp.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let row = text.lines().find(|l| l.starts_with("vqvae K=3")).expect("a parameter row");
    let cells: Vec<&str> = row.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect();
    assert_eq!(&cells[1..5], &["1070", "6", "613", "0"], "{row}");
    assert_eq!(cells[5], "1689");
    assert!(text.contains("```mermaid\nflowchart LR"), "{text}");
}

#[test]
fn a_closed_stdout_ends_plan_quietly() {
    // `vqlab plan BIG.toml | head -1`: the reader goes away after one line.
    use std::io::BufRead;
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let seeds: Vec<String> = (0..3000).map(|s| s.to_string()).collect();
    write(dir.path(), "big.toml", &tiny_experiment("big", &format!("[sweep]\nseeds = [{}]", seeds.join(", "))));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vqlab"))
        .args(["plan", "big.toml"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(!first.is_empty());
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(out.status.code() == Some(0) || out.status.signal() == Some(libc::SIGPIPE), "{:?}", out.status);
    assert!(!err.contains("panic") && !err.contains("Broken pipe"), "{err}");
}
