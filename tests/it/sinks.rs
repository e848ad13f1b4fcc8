//! The metrics layer read back by the tools users read it with: TensorBoard's own
//! EventAccumulator and a real `tensorboard` server's HParams plugin, pyarrow for Parquet,
//! numpy for the codebook statistics. Plus the FID feature network's once-only training and
//! Parquet files that survive SIGKILL.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{oracle, run_dirs, stderr, tiny_experiment, tiny_experiment_fid, vqlab, write};

fn json_file(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

/// Flatten a TOML table into dotted keys, independently of vqlab's own flattening.
fn flat_toml(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, toml::Value>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flat_toml(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-6)
}

fn parquet(files: &[PathBuf]) -> serde_json::Value {
    let args: Vec<&OsStr> = files.iter().map(|p| p.as_os_str()).collect();
    oracle("parquet_read.py", &args)
}

const TRAIN_METRICS: [&str; 6] = ["rec_loss", "codebook_loss", "commit_loss", "perplexity", "usage", "img_per_s"];
const GAN_METRICS: [&str; 5] = ["g_loss", "d_loss", "d_real", "d_fake", "adaptive_weight"];
const EVAL_METRICS: [&str; 8] = ["rec_mse", "psnr", "perplexity", "usage", "dead_codes", "rfid", "kid", "kid_std"];

#[test]
fn tensorboard_and_pyarrow_read_every_run_of_a_four_run_sweep() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "exp.toml",
        &tiny_experiment_fid(
            "four",
            "[sweep]\ngrid = { \"quantizer.codebook_size\" = [16, 32], \"model.variant\" = [\"vqvae\", \"vqgan\"] }",
        ),
    );
    let out = vqlab(dir.path(), &["run", "exp.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let sweep = dir.path().join("runs/four");
    let runs = run_dirs(&sweep);
    assert_eq!(runs.len(), 4);

    let tb = oracle("tb_read.py", &[sweep.as_os_str(), OsStr::new("--server")]);
    let mut files: Vec<PathBuf> = runs.iter().map(|r| r.join("metrics.parquet")).collect();
    files.push(sweep.join("results.parquet"));
    let pq = parquet(&files);

    // The experiment file says: 12 steps, train metrics every 3, eval every 6 and at the end:
    // the validation split at every eval step, the test split (last and best weights) once.
    let train_steps = vec![3i64, 6, 9, 12];
    let eval_steps = vec![6i64, 12];
    let final_step = vec![12i64];
    let mut all_counts = Vec::new();
    let mut count_rows = Vec::new();
    for run in &runs {
        let name = run.file_name().unwrap().to_str().unwrap();
        let cfg: toml::Value = toml::from_str(&std::fs::read_to_string(run.join("config.toml")).unwrap()).unwrap();
        let variant = cfg["model"]["variant"].as_str().unwrap().to_string();
        let k = cfg["quantizer"]["codebook_size"].as_integer().unwrap();
        let side = cfg["data"]["image_size"].as_integer().unwrap();
        let eval_images = cfg["data"]["eval_images"].as_integer().unwrap();
        let val_images = cfg["data"]["val_images"].as_integer().unwrap();
        let r = &tb["runs"][name];
        assert!(r.is_object(), "TensorBoard found no run {name}: {tb}");

        // Parquet (pyarrow) and TensorBoard carry the same series.
        let prow = &pq[run.join("metrics.parquet").to_str().unwrap()];
        assert!(prow.get("error").is_none(), "{prow}");
        let mut series: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
        for row in prow["rows"].as_array().unwrap() {
            let tag = format!("{}/{}", row["split"].as_str().unwrap(), row["metric"].as_str().unwrap());
            series.entry(tag).or_default().push((row["step"].as_i64().unwrap(), row["value"].as_f64().unwrap()));
        }
        let mut expected: Vec<String> = TRAIN_METRICS.iter().map(|m| format!("train/{m}")).collect();
        if variant == "vqgan" {
            expected.extend(GAN_METRICS.iter().map(|m| format!("train/{m}")));
        }
        for split in ["val", "eval", "best"] {
            expected.extend(EVAL_METRICS.iter().map(|m| format!("{split}/{m}")));
        }
        for tag in &expected {
            let want_steps = match tag.split('/').next() {
                Some("train") => &train_steps,
                Some("val") => &eval_steps,
                _ => &final_step,
            };
            let pq_series = series.get(tag).unwrap_or_else(|| panic!("{name}: metrics.parquet lacks {tag}"));
            let tb_series: Vec<(i64, f64)> = r["scalars"][tag]
                .as_array()
                .unwrap_or_else(|| panic!("{name}: TensorBoard lacks {tag}"))
                .iter()
                .map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap()))
                .collect();
            assert_eq!(&pq_series.iter().map(|p| p.0).collect::<Vec<_>>(), want_steps, "{name} {tag} parquet steps");
            assert_eq!(&tb_series.iter().map(|p| p.0).collect::<Vec<_>>(), want_steps, "{name} {tag} tb steps");
            for ((_, a), (_, b)) in pq_series.iter().zip(&tb_series) {
                assert!(close(*a, *b, 1e-6), "{name} {tag}: parquet {a} vs tensorboard {b}");
            }
        }
        assert_eq!(r["scalars"].as_object().unwrap().len(), expected.len(), "{name}: no other scalars");

        // Reconstruction grids at every eval step, and the code-usage histogram.
        let images = r["images"]["eval/reconstructions"].as_array().expect("reconstruction images");
        assert_eq!(images.iter().map(|i| i[0].as_i64().unwrap()).collect::<Vec<_>>(), eval_steps);
        assert!(images.iter().all(|i| i[1].as_i64().unwrap() > 0 && i[3].as_i64().unwrap() > 100));
        // Every latent vector of the set is counted: images × (side / 4)² positions.
        for (split, steps, images) in [("val", &eval_steps, val_images), ("eval", &final_step, eval_images)] {
            let hist = r["histograms"][format!("{split}/code_usage")].as_array().expect("code-usage histogram");
            assert_eq!(&hist.iter().map(|h| h[0].as_i64().unwrap()).collect::<Vec<_>>(), steps);
            let latents = images * (side / 4) * (side / 4);
            for h in hist {
                assert_eq!(h[1].as_f64().unwrap(), latents as f64, "{name}: {split} histogram total");
                let counts: Vec<u64> = h[2].as_array().unwrap().iter().map(|c| c.as_f64().unwrap() as u64).collect();
                assert_eq!(counts.len() as i64, k, "one bucket per code");
                count_rows.push((name.to_string(), split, h[0].as_i64().unwrap()));
                all_counts.push(counts);
            }
        }
        // The resolved config as text.
        let text = r["text"]["config"].as_str().expect("config text");
        assert!(text.contains(&format!("codebook_size = {k}")), "{text}");
        assert!(text.contains(&format!("variant = \"{variant}\"")), "{text}");
        // HParams plugin data: the swept keys with this run's values, the metrics, success.
        let hp = &r["hparams"];
        let names: Vec<&str> =
            hp["experiment"]["hparams"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert!(names.contains(&"quantizer.codebook_size") && names.contains(&"model.variant"), "{hp}");
        let metrics: Vec<&str> =
            hp["experiment"]["metrics"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        for m in EVAL_METRICS {
            assert!(metrics.contains(&format!("eval/{m}").as_str()), "{m} missing from {metrics:?}");
        }
        assert_eq!(hp["session_start"]["quantizer.codebook_size"].as_f64(), Some(k as f64));
        assert_eq!(hp["session_start"]["model.variant"].as_str(), Some(variant.as_str()));
        assert_eq!(hp["session_end"], "STATUS_SUCCESS");
    }

    // Eval perplexity, usage and dead codes equal numpy's on the counts TensorBoard holds.
    let counts_file = dir.path().join("counts.json");
    std::fs::write(&counts_file, serde_json::to_string(&all_counts).unwrap()).unwrap();
    let np = oracle("codebook_stats.py", &[counts_file.as_os_str()]);
    for (i, (name, split, step)) in count_rows.iter().enumerate() {
        let prow = &pq[sweep.join(name).join("metrics.parquet").to_str().unwrap()];
        let value = |metric: &str| {
            prow["rows"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["split"] == *split && r["metric"] == metric && r["step"].as_i64() == Some(*step))
                .and_then(|r| r["value"].as_f64())
                .unwrap()
        };
        let o = &np[i];
        assert!(close(value("perplexity"), o[0].as_f64().unwrap(), 1e-9), "{name}@{step} perplexity vs numpy {o}");
        assert!(close(value("usage"), o[1].as_f64().unwrap(), 1e-12), "{name}@{step} usage vs numpy {o}");
        assert_eq!(value("dead_codes"), o[2].as_f64().unwrap(), "{name}@{step} dead codes vs numpy");
    }

    // A real TensorBoard's HParams tab: one session group per run, with its swept keys and
    // final metrics (those of summary.json).
    let groups = tb["session_groups"].as_array().expect("session groups");
    assert_eq!(groups.len(), 4, "{groups:?}");
    for run in &runs {
        let name = run.file_name().unwrap().to_str().unwrap();
        let summary = json_file(&run.join("summary.json"));
        let g = groups
            .iter()
            .find(|g| g["name"].as_str().unwrap().starts_with(name))
            .unwrap_or_else(|| panic!("no session group for {name}: {groups:?}"));
        assert_eq!(g["hparams"]["model.variant"], summary["model.variant"]);
        assert_eq!(g["hparams"]["quantizer.codebook_size"].as_f64(), summary["quantizer.codebook_size"].as_f64());
        for m in EVAL_METRICS {
            let tag = format!("eval/{m}");
            let (a, b) = (g["metrics"][&tag].as_f64().unwrap(), summary[&tag].as_f64().unwrap());
            assert!(close(a, b, 1e-6), "{name} {tag}: HParams tab {a} vs summary {b}");
        }
        assert_eq!(g["status"][0], "STATUS_SUCCESS");
    }

    // results.parquet: one row per run, a column per config key (values as in config.toml)
    // and per final metric (as in summary.json).
    let res = &pq[sweep.join("results.parquet").to_str().unwrap()];
    assert!(res.get("error").is_none(), "{res}");
    let rows = res["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4);
    for run in &runs {
        let name = run.file_name().unwrap().to_str().unwrap();
        let row = rows.iter().find(|r| r["run.dir"] == name).unwrap_or_else(|| panic!("no row for {name}"));
        assert_eq!(row["run.state"], "done");
        let mut flat = BTreeMap::new();
        flat_toml("", &toml::from_str(&std::fs::read_to_string(run.join("config.toml")).unwrap()).unwrap(), &mut flat);
        assert!(flat.len() > 40, "the whole resolved config: {}", flat.len());
        for (key, v) in &flat {
            let cell = &row[key];
            match v {
                toml::Value::Integer(i) => assert_eq!(cell.as_i64(), Some(*i), "{name} {key}"),
                toml::Value::Float(f) => assert!(close(cell.as_f64().unwrap(), *f, 1e-12), "{name} {key}"),
                toml::Value::Boolean(b) => assert_eq!(cell.as_bool(), Some(*b), "{name} {key}"),
                toml::Value::String(s) => assert_eq!(cell.as_str(), Some(s.as_str()), "{name} {key}"),
                _ => assert!(!cell.is_null(), "{name} {key}"),
            }
        }
        let summary = json_file(&run.join("summary.json"));
        for m in EVAL_METRICS {
            let tag = format!("eval/{m}");
            assert_eq!(row[&tag].as_f64(), summary[&tag].as_f64(), "{name} {tag}");
        }
        let fid = summary["eval/rfid"].as_f64().unwrap();
        assert!(fid.is_finite() && fid >= 0.0);
        assert!(summary["run.feature_net"].as_str().unwrap().contains("synthetic"), "{summary}");
    }
}

/// Start `vqlab` in its own process group (so the test can SIGKILL it and its workers).
fn spawn_group(dir: &Path, args: &[&str]) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    Command::new(env!("CARGO_BIN_EXE_vqlab"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("VQLAB_RUNS_DIR")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap()
}

fn kill_group(child: &mut std::process::Child) {
    unsafe {
        libc::kill(-(child.id() as i32), libc::SIGKILL);
    }
    let _ = child.wait();
}

fn parquet_files(root: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(|e| e.ok())
        .map(|e| e.into_path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect()
}

#[test]
fn sigkill_mid_sweep_leaves_every_parquet_file_readable() {
    let dir = tempfile::tempdir().unwrap();
    let exp = tiny_experiment("killed", "[sweep]\ngrid = { \"model.variant\" = [\"vqvae\", \"vqgan\"] }")
        .replace("steps = 12", "steps = 80")
        .replace("log_every = 3", "log_every = 1")
        .replace("eval_every = 6", "eval_every = 10")
        .replace("checkpoint_every = 6", "checkpoint_every = 2");
    write(dir.path(), "exp.toml", &exp);
    let sweep = dir.path().join("runs/killed");
    let mut checked = 0;
    for delay_ms in [900u64, 1700, 2600, 3400] {
        let mut child = spawn_group(dir.path(), &["run", "exp.toml"]);
        std::thread::sleep(Duration::from_millis(delay_ms));
        kill_group(&mut child);
        let files = parquet_files(&sweep);
        if files.is_empty() {
            continue;
        }
        let pq = parquet(&files);
        for f in &files {
            let r = &pq[f.to_str().unwrap()];
            assert!(r.get("error").is_none(), "after SIGKILL at {delay_ms} ms, {} is unreadable: {r}", f.display());
            checked += 1;
        }
    }
    assert!(checked >= 3, "the kills came after some Parquet files were written ({checked} checked)");
    // Resume to the end: both runs done, their files readable, results.parquet complete.
    let out = vqlab(dir.path(), &["run", "exp.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let files = parquet_files(&sweep);
    let pq = parquet(&files);
    for f in &files {
        assert!(pq[f.to_str().unwrap()].get("error").is_none(), "{}", f.display());
    }
    let res = &pq[sweep.join("results.parquet").to_str().unwrap()];
    let states: Vec<&str> = res["rows"].as_array().unwrap().iter().map(|r| r["run.state"].as_str().unwrap()).collect();
    assert_eq!(states, vec!["done", "done"]);
    // Each run's metrics have one row per (step, metric): no duplicates from the killed attempts.
    for run in run_dirs(&sweep) {
        let rows = pq[run.join("metrics.parquet").to_str().unwrap()]["rows"].as_array().unwrap().clone();
        let mut seen = std::collections::BTreeSet::new();
        for r in &rows {
            let key = (r["step"].as_i64().unwrap(), r["split"].to_string(), r["metric"].to_string());
            assert!(seen.insert(key.clone()), "{}: duplicate row {key:?}", run.display());
        }
        let rec_steps = rows.iter().filter(|r| r["metric"] == "rec_loss").count();
        assert_eq!(rec_steps, 80, "{}: every step's train metrics once", run.display());
    }
}

#[test]
fn the_feature_network_is_trained_once_when_runs_start_together() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_experiment_fid("together", "");
    let runs: Vec<PathBuf> = (0..3)
        .map(|i| write(&dir.path().join(format!("runs/together/r{i}")), "config.toml", &cfg))
        .map(|p| p.parent().unwrap().to_path_buf())
        .collect();
    let children: Vec<_> = runs
        .iter()
        .map(|r| {
            let log = std::fs::File::create(r.join("train.log")).unwrap();
            Command::new(env!("CARGO_BIN_EXE_vqlab"))
                .arg("train")
                .arg(r)
                .env_remove("RUST_LOG")
                .env_remove("VQLAB_CACHE_DIR")
                .env("VQLAB_WORKER", "1")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let logs: Vec<String> = runs.iter().map(|r| std::fs::read_to_string(r.join("train.log")).unwrap()).collect();
    let trained = logs.iter().filter(|l| l.contains("training the feature network")).count();
    assert_eq!(trained, 1, "exactly one process trains it:\n{}", logs.join("\n----\n"));
    assert!(
        logs.iter().filter(|l| l.contains("waiting for another process")).count() >= 1,
        "the others wait for it:\n{}",
        logs.join("\n----\n")
    );
    let summaries: Vec<serde_json::Value> = runs.iter().map(|r| json_file(&r.join("summary.json"))).collect();
    assert!(summaries.iter().all(|s| s["run.feature_net"] == summaries[0]["run.feature_net"]));
    // Same config, same feature network: the same scores.
    assert!(summaries.iter().all(|s| s["eval/rfid"] == summaries[0]["eval/rfid"]));
    let cache = dir.path().join("runs/.cache/features");
    let meta: Vec<PathBuf> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert_eq!(meta.len(), 1);
    let info = json_file(&meta[0]);
    assert!(info["test_accuracy"].as_f64().unwrap() > 0.8, "synthetic shapes are easy: {info}");
    assert_eq!(info["dataset"], "synthetic");

    // A lock file left behind by a dead trainer is no obstacle: the kernel released its lock.
    for e in std::fs::read_dir(&cache).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|e| e != "lock") {
            std::fs::remove_file(p).unwrap();
        } else {
            std::fs::write(&p, "pid 4194303 on a-host-that-died\n").unwrap();
        }
    }
    let r3 = write(&dir.path().join("runs/together/r3"), "config.toml", &cfg);
    let out = vqlab(dir.path(), &["train", r3.parent().unwrap().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let log = stderr(&out);
    assert!(log.contains("training the feature network") && !log.contains("waiting"), "{log}");
}

#[test]
fn an_unlabelled_image_folder_says_its_scores_use_an_untrained_network() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("flat");
    std::fs::create_dir_all(&images).unwrap();
    for i in 0..48u32 {
        let img = image::RgbImage::from_fn(16, 16, |x, y| {
            let v = ((x * 13 + y * 7 + i * 29) % 256) as u8;
            image::Rgb([v, v / 2, 255 - v])
        });
        img.save(images.join(format!("{i:02}.png"))).unwrap();
    }
    let exp = tiny_experiment_fid("flat", "")
        .replace(
            "dataset = \"synthetic\"\ntrain_images = 256\neval_images = 64",
            &format!("dataset = \"folder\"\npath = \"{}\"\nimage_size = 16\neval_images = 16", images.display()),
        )
        .replace("kid_subset_size = 32", "kid_subset_size = 3");
    assert!(exp.contains("folder"), "{exp}");
    write(dir.path(), "exp.toml", &exp);
    let out = vqlab(dir.path(), &["run", "exp.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let run = &run_dirs(&dir.path().join("runs/flat"))[0];
    let summary = json_file(&run.join("summary.json"));
    let net = summary["run.feature_net"].as_str().unwrap();
    assert!(net.contains("untrained random conv net") && net.contains("no labels"), "{net}");
    assert!(summary["run.feature_net_test_accuracy"].is_null());
    let rfid = summary["eval/rfid"].as_f64().unwrap();
    assert!(rfid.is_finite() && rfid >= 0.0);
}
