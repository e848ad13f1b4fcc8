//! Training through the CLI on tiny synthetic sweeps: the run directory, skipping done runs,
//! VQ-GAN's adversarial switch, failures that do not stop the sweep.

use std::path::Path;

use vqlab::metrics::log::read_rows;

use crate::common::{stderr, stdout, tiny_experiment, vqlab, write};

fn run_dirs(sweep: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(sweep).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    v.sort();
    v
}

fn status(run: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(run.join("status.json")).unwrap()).unwrap()
}

#[test]
fn sweep_trains_both_variants_and_skips_done_runs() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "exp.toml",
        &tiny_experiment("both", "[sweep]\ngrid = { \"model.variant\" = [\"vqvae\", \"vqgan\"] }"),
    );
    let out = vqlab(dir.path(), &["run", "exp.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let sweep = dir.path().join("runs/both");
    assert!(sweep.join("experiment.toml").is_file());
    let runs = run_dirs(&sweep);
    assert_eq!(runs.len(), 2);
    for run in &runs {
        for f in [
            "config.toml",
            "status.json",
            "train.log",
            "metrics.parquet",
            "summary.json",
            "checkpoints/last.safetensors",
            "checkpoints/best.safetensors",
        ] {
            assert!(run.join(f).is_file(), "{} lacks {f}", run.display());
        }
        assert!(std::fs::read_dir(run.join("samples")).unwrap().count() >= 2, "a grid per eval step");
        let st = status(run);
        assert_eq!(st["state"], "done");
        assert_eq!(st["attempts"], 1);
        assert_eq!(st["step"], 12);
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
        assert_eq!(summary["quantizer.codebook_size"], 32);
        assert!(summary["eval/rec_mse"].as_f64().unwrap() > 0.0);
        let usage = summary["eval/usage"].as_f64().unwrap();
        assert!(usage > 0.0 && usage <= 1.0);
        // `vqlab train` reads only config.toml: it holds the full resolved config.
        let cfg = std::fs::read_to_string(run.join("config.toml")).unwrap();
        assert!(cfg.contains("[quantizer]") && cfg.contains("codebook_size = 32"));
    }
    // The final table names every run.
    let table = stdout(&out);
    assert!(runs.iter().all(|r| table.contains(r.file_name().unwrap().to_str().unwrap())), "{table}");

    // A second run of the same sweep trains nothing: done runs are skipped untouched.
    let before = std::fs::metadata(runs[0].join("summary.json")).unwrap().modified().unwrap();
    let out = vqlab(dir.path(), &["run", "exp.toml"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("done, skipped"), "{}", stderr(&out));
    assert_eq!(std::fs::metadata(runs[0].join("summary.json")).unwrap().modified().unwrap(), before);
    assert_eq!(status(&runs[0])["attempts"], 1);

    // Sweeping one more codebook size adds only its runs.
    let out = vqlab(
        dir.path(),
        &["run", "exp.toml", "--sweep", "quantizer.codebook_size=32,16", "--set", "model.variant=vqvae"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let now = run_dirs(&sweep);
    assert_eq!(now.len(), 3, "{now:?}");
    assert!(now.iter().any(|p| p.file_name().unwrap().to_str().unwrap().starts_with("vqvae-K16-")));
}

#[test]
fn vqgan_adversarial_terms_are_zero_before_disc_start() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "exp.toml", &tiny_experiment("gan", ""));
    let out = vqlab(dir.path(), &["run", "exp.toml", "--set", "model.variant=vqgan"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let run = &run_dirs(&dir.path().join("runs/gan"))[0];
    let rows = read_rows(&run.join("metrics.parquet")).unwrap();
    // disc_start = 6, log_every = 3: steps 3 and 6 are before or at the switch (step 6 logs
    // the 6th step, index 5 < 6), 9 and 12 after.
    for metric in ["g_loss", "d_loss", "adaptive_weight"] {
        let vals: Vec<(i64, f64)> =
            rows.iter().filter(|r| r.split == "train" && r.metric == metric).map(|r| (r.step, r.value)).collect();
        assert_eq!(vals.iter().map(|v| v.0).collect::<Vec<_>>(), vec![3, 6, 9, 12], "{metric}");
        assert!(vals[..2].iter().all(|v| v.1 == 0.0), "{metric} before disc_start: {vals:?}");
        assert!(vals[2..].iter().all(|v| v.1.is_finite() && v.1 != 0.0), "{metric} after disc_start: {vals:?}");
    }
    let aw: Vec<f64> = rows.iter().filter(|r| r.metric == "adaptive_weight" && r.step > 6).map(|r| r.value).collect();
    assert!(aw.iter().all(|w| *w > 0.0 && *w <= 0.8 * 1e4), "{aw:?}");
}

#[test]
fn a_diverging_cell_fails_with_a_reason_and_the_sweep_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "exp.toml", &tiny_experiment("diverge", "[sweep]\ngrid = { \"train.lr\" = [1e-3, 1e30] }"));
    let out = vqlab(dir.path(), &["run", "exp.toml"]);
    assert_eq!(out.status.code(), Some(1), "some run failed: {}", stderr(&out));
    let runs = run_dirs(&dir.path().join("runs/diverge"));
    let states: Vec<(String, String)> = runs
        .iter()
        .map(|r| {
            let s = status(r);
            (s["state"].as_str().unwrap().to_string(), s["reason"].as_str().unwrap().to_string())
        })
        .collect();
    assert!(states.iter().any(|(s, _)| s == "done"), "{states:?}");
    let failed = states.iter().find(|(s, _)| s == "failed").expect("the huge-lr run fails");
    assert!(failed.1.starts_with("non-finite "), "{failed:?}");
    assert!(failed.1.contains(" at step "), "{failed:?}");
    // `vqlab status` shows it.
    let out = vqlab(dir.path(), &["status", "runs/diverge"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("1 done, 1 failed"), "{}", stdout(&out));
}

#[test]
fn train_on_a_directory_without_config_is_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = vqlab(dir.path(), &["train", "."]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not a run directory: it has no config.toml"), "{}", stderr(&out));
}
