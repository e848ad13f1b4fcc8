//! Training through the CLI on tiny synthetic sweeps: the run directory, skipping done runs,
//! VQ-GAN's adversarial switch, failures that do not stop the sweep.

use std::path::Path;

use vqlab::metrics::log::read_rows;

use crate::common::{run_dirs, status, stderr, stdout, tiny_experiment, vqlab, write};

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
    assert!(stderr(&out).contains("2 of 2 runs already done: skipped"), "{}", stderr(&out));
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

/// Every tensor of a checkpoint, by name, as raw f32 values.
fn checkpoint_tensors(path: &Path) -> std::collections::BTreeMap<String, Vec<f32>> {
    candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

#[test]
fn a_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one() {
    // VQ-GAN with k-means init and dead-code restarts: every stateful part of a step.
    let ta = assert_resume_is_exact(
        "resume",
        &["model.variant=vqgan", "quantizer.init=kmeans", "quantizer.dead_code_threshold=0.5"],
    );
    assert!(ta.keys().any(|k| k.starts_with("opt_d.m.disc.")), "optimizer moments are saved");
}

/// Train the tiny experiment with these `--set`s to step 12 in one go, and again stopped after
/// its step-6 checkpoint and continued: the last checkpoints must hold the same tensors, and the
/// resumed metrics must continue without gaps or duplicates. Returns the checkpoint's tensors.
pub fn assert_resume_is_exact(name: &str, sets: &[&str]) -> std::collections::BTreeMap<String, Vec<f32>> {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "exp.toml", &tiny_experiment(name, ""));
    let mut args = vec!["run", "exp.toml"];
    for s in sets {
        args.extend(["--set", s]);
    }
    let out = vqlab(dir.path(), &args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let a = &run_dirs(&dir.path().join("runs").join(name))[0];

    // The same run, stopped after its step-6 checkpoint, then continued to step 12.
    let b = dir.path().join("b");
    std::fs::create_dir_all(&b).unwrap();
    let cfg = std::fs::read_to_string(a.join("config.toml")).unwrap();
    assert!(cfg.contains("steps = 12\n"));
    std::fs::write(b.join("config.toml"), cfg.replace("steps = 12\n", "steps = 6\n")).unwrap();
    let out = vqlab(dir.path(), &["train", "b"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    std::fs::write(b.join("config.toml"), &cfg).unwrap();
    let out = vqlab(dir.path(), &["train", "b"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("resuming from checkpoint at step 6"), "{}", stderr(&out));
    assert!(std::fs::read_to_string(b.join("train.log")).unwrap().contains("resuming from checkpoint at step 6"));

    let ta = checkpoint_tensors(&a.join("checkpoints/last.safetensors"));
    let tb = checkpoint_tensors(&b.join("checkpoints/last.safetensors"));
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    for (tensor, va) in &ta {
        assert_eq!(va, &tb[tensor], "{tensor} differs after resume");
    }
    let steps: Vec<i64> = read_rows(&b.join("metrics.parquet"))
        .unwrap()
        .iter()
        .filter(|r| r.metric == "rec_loss")
        .map(|r| r.step)
        .collect();
    assert_eq!(steps, vec![3, 6, 9, 12]);
    ta
}

#[test]
fn quickstart_file_runs_on_real_data_shortened() {
    if !Path::new("/usr/share/datasets/fashion-mnist").is_dir() {
        assert!(std::env::var_os("CI").is_none(), "CI must install Debian's dataset-fashion-mnist");
        eprintln!("skipped: Fashion-MNIST not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exp = concat!(env!("CARGO_MANIFEST_DIR"), "/experiments/quickstart.toml");
    let out = vqlab(
        dir.path(),
        &[
            "run",
            exp,
            "--runs-dir",
            "out",
            "--set",
            "train.steps=8",
            "--set",
            "loss.disc_start=4",
            "--set",
            "data.eval_images=200",
            "--set",
            "eval.kid_subset_size=100",
            "--set",
            "train.log_every=4",
            "--set",
            "train.eval_every=8",
            "--set",
            "train.checkpoint_every=8",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let runs = run_dirs(&dir.path().join("out/quickstart"));
    assert_eq!(runs.len(), 4, "K 64 and 512 × vqvae and vqgan");
    assert!(runs.iter().all(|r| status(r)["state"] == "done"));
    // The FID feature network: trained once on all 60,000 training images, ≥ 85% on the
    // 10,000 test images, its accuracy recorded next to its weights and in every summary.
    let cache = dir.path().join("out/.cache/features");
    let metas: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert_eq!(metas.len(), 1, "one network for the four runs");
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(&metas[0]).unwrap()).unwrap();
    assert_eq!(info["dataset"], "fashion-mnist");
    assert_eq!(info["train_images"], 60000);
    assert_eq!(info["test_images"], 10000);
    assert!(info["test_accuracy"].as_f64().unwrap() >= 0.85, "{info}");
    for r in &runs {
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(r.join("summary.json")).unwrap()).unwrap();
        assert_eq!(summary["run.feature_net_test_accuracy"], info["test_accuracy"]);
        let rfid = summary["eval/rfid"].as_f64().unwrap();
        assert!(rfid.is_finite() && rfid > 0.0, "{rfid}");
    }
    let logs: usize = runs
        .iter()
        .filter(|r| std::fs::read_to_string(r.join("train.log")).unwrap().contains("training the feature network"))
        .count();
    assert_eq!(logs, 1, "trained by the first run only");
}

#[test]
fn sigkill_of_a_worker_then_train_again_resumes_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    // One attempt: the scheduler leaves the killed run failed instead of retrying it.
    let exp = tiny_experiment("kill", "[launcher]\nmax_attempts = 1")
        .replace("steps = 12", "steps = 600")
        .replace("checkpoint_every = 6", "checkpoint_every = 20")
        .replace("log_every = 3", "log_every = 20")
        .replace("eval_every = 6", "eval_every = 300");
    write(dir.path(), "exp.toml", &exp);
    let mut scheduler = std::process::Command::new(env!("CARGO_BIN_EXE_vqlab"))
        .args(["run", "exp.toml", "--runs-dir", "a"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait for a checkpoint past step 40, then SIGKILL the worker in the middle of training.
    let sweep = dir.path().join("a/kill");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let (run, killed_at) = loop {
        assert!(std::time::Instant::now() < deadline, "the run never reached step 40");
        let found = std::fs::read_dir(&sweep).ok().and_then(|mut it| {
            it.find_map(|e| {
                let p = e.ok()?.path();
                let s: serde_json::Value = serde_json::from_slice(&std::fs::read(p.join("status.json")).ok()?).ok()?;
                (s["state"] == "running" && s["step"].as_u64()? >= 40)
                    .then(|| (p, s["pid"].as_u64().unwrap(), s["step"].as_u64().unwrap()))
            })
        });
        if let Some((p, pid, step)) = found {
            let killed = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
            assert!(killed.success());
            break (p, step);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert_eq!(scheduler.wait().unwrap().code(), Some(1), "the sweep reports the failed run");
    let st = status(&run);
    assert_eq!(st["state"], "failed");
    assert!(st["reason"].as_str().unwrap().starts_with("worker died (signal 9)"), "{st}");
    assert!(killed_at < 600);
    // Every file the killed run left is readable.
    assert!(read_rows(&run.join("metrics.parquet")).unwrap().iter().all(|r| r.step as u64 <= killed_at + 20));

    let out = vqlab(dir.path(), &["train", run.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("resuming from checkpoint at step"), "{}", stderr(&out));
    assert_eq!(status(&run)["state"], "done");
    assert_eq!(status(&run)["attempts"], 2);

    // The same run uninterrupted, in another runs dir, ends with identical weights.
    let out = vqlab(dir.path(), &["run", "exp.toml", "--runs-dir", "b"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let twin = dir.path().join("b/kill").join(run.file_name().unwrap());
    let (ta, tb) = (
        checkpoint_tensors(&run.join("checkpoints/last.safetensors")),
        checkpoint_tensors(&twin.join("checkpoints/last.safetensors")),
    );
    for (name, va) in &ta {
        assert_eq!(va, &tb[name], "{name} differs between the resumed and the uninterrupted run");
    }
}

#[test]
fn every_quantizer_option_trains() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "exp.toml", &tiny_experiment("options", "[sweep]\nzip = { \"quantizer.kind\" = [\"ema\", \"vq\"], \"quantizer.l2_normalize\" = [true, false], \"quantizer.lookup_dim\" = [0, 4], \"quantizer.init\" = [\"kmeans\", \"random\"] }"));
    let out = vqlab(dir.path(), &["run", "exp.toml", "--set", "quantizer.dead_code_threshold=1.0"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let runs = run_dirs(&dir.path().join("runs/options"));
    assert_eq!(runs.len(), 2);
    for run in runs {
        assert_eq!(status(&run)["state"], "done");
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
        assert!(summary["eval/rec_mse"].as_f64().unwrap().is_finite());
    }
}

#[test]
fn bench_prints_img_per_s_as_json_and_rejects_zero_steps() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "exp.toml", &tiny_experiment("bench", ""));
    let out = vqlab(dir.path(), &["bench", "exp.toml", "--steps", "3", "--warmup", "1", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["steps"], 3);
    assert_eq!(v["batch_size"], 16);
    let ms: Vec<f64> = v["step_ms"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(ms.len(), 3);
    // img/s is the timed images over the timed steps' wall time: 48 images in about Σ step_ms.
    let img_per_s = v["img_per_s"].as_f64().unwrap();
    let from_steps = 48.0 / (ms.iter().sum::<f64>() / 1e3);
    assert!((img_per_s / from_steps - 1.0).abs() < 0.2, "{img_per_s} vs {from_steps}");
    assert!(!dir.path().join("runs").exists(), "bench writes no run dir");
    let out = vqlab(dir.path(), &["bench", "exp.toml", "--steps", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = vqlab(dir.path(), &["bench", "missing.toml"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn bench_profile_counts_each_op_pass_of_the_architecture() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "exp.toml", &tiny_experiment("benchprofile", ""));
    let out = vqlab(dir.path(), &["bench", "exp.toml", "--steps", "3", "--warmup", "1", "--json", "--profile"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let rows = v["profile"].as_array().unwrap();
    let calls = |op: &str| rows.iter().find(|r| r["op"] == op).map(|r| r["calls_per_step"].as_f64().unwrap());
    // The tiny VQ-VAE (2 stride-2 stages, 1 residual block): the encoder's two 4×4 stride-2
    // convs, its 3×3, the block's 3×3 and 1×1 and the 1×1 to D (6); the decoder's 3×3 and
    // its block's two (3); two transposed convs up. Every conv has a trained weight: one
    // backward pass each. One nearest-code search.
    assert_eq!(calls("conv2d forward"), Some(9.0), "{rows:?}");
    assert_eq!(calls("conv2d backward"), Some(9.0), "{rows:?}");
    assert_eq!(calls("conv_transpose2d forward"), Some(2.0), "{rows:?}");
    assert_eq!(calls("conv_transpose2d backward"), Some(2.0), "{rows:?}");
    assert_eq!(calls("nearest code"), Some(1.0), "{rows:?}");
    // The latents go to the quantizer's rows and back once each; each move's backward pass
    // is the other move.
    assert_eq!(calls("latents to rows"), Some(2.0), "{rows:?}");
    assert_eq!(calls("rows to latents"), Some(2.0), "{rows:?}");
    assert_eq!(calls("ActNorm + LeakyReLU forward"), None, "no discriminator in a VQ-VAE");
    let share: f64 = rows.iter().map(|r| r["share"].as_f64().unwrap()).sum();
    assert!(share >= 1.0 - 1e-6, "the rows cover the step: {share}");
    // The VQ-GAN step: the generator's 9 convs, and the discriminator's 4 (28×28: the first,
    // two blocks, the last) over reals, over fakes with its weights frozen (the generator's
    // loss) and over fakes for its own loss, which reuses the frozen pass's outputs (4 copies,
    // no convolution). Backward: the generator's 9 once; the discriminator's 4 for the
    // generator's loss and 4 + 4 for its own; the decoder's last (transposed) layer once per
    // generator loss and once for the rest.
    let out = vqlab(
        dir.path(),
        &["bench", "exp.toml", "--steps", "2", "--warmup", "1", "--json", "--profile"]
            .into_iter()
            .chain(["--set", "model.variant=vqgan", "--set", "loss.disc_start=0"])
            .chain(["--set", "train.conv_algorithm=im2row"])
            .collect::<Vec<_>>(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let rows = v["profile"].as_array().unwrap();
    let calls = |op: &str| rows.iter().find(|r| r["op"] == op).map(|r| r["calls_per_step"].as_f64().unwrap());
    assert_eq!(calls("conv2d forward"), Some(9.0 + 4.0 + 4.0), "{rows:?}");
    assert_eq!(calls("conv2d forward, output reused"), Some(4.0), "{rows:?}");
    assert_eq!(calls("conv2d backward"), Some(9.0 + 4.0 + 8.0), "{rows:?}");
    assert_eq!(calls("conv_transpose2d backward"), Some(3.0), "{rows:?}");
    assert_eq!(calls("ActNorm + LeakyReLU forward"), Some(3.0 * 3.0), "{rows:?}");
    // Each convolution pass is broken down by layer shape: the discriminator's convolutions
    // over 28×28 (1→8, 4×4/2), 14×14 (8→16, 4×4/2), 7×7 (16→32, 4×4/1) and 6×6 (32→1), four
    // forward passes each (reals, frozen fakes, and the reused output counted apart), and the
    // layers' calls add up to the pass's.
    for pass in ["conv2d forward", "conv2d backward", "conv_transpose2d backward"] {
        let row = rows.iter().find(|r| r["op"] == pass).unwrap();
        let layers = row["layers"].as_array().unwrap_or_else(|| panic!("{pass}: no layers: {row}"));
        let sum: f64 = layers.iter().map(|l| l["calls_per_step"].as_f64().unwrap()).sum();
        assert_eq!(sum, row["calls_per_step"].as_f64().unwrap(), "{row}");
    }
    let layer_calls = |pass: &str, layer: &str| {
        let row = rows.iter().find(|r| r["op"] == pass).unwrap();
        row["layers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["op"] == layer)
            .map(|l| l["calls_per_step"].as_f64().unwrap())
    };
    assert_eq!(layer_calls("conv2d forward", "4×4/1 16→32 on 16×7×7"), Some(2.0), "{rows:?}");
    assert_eq!(layer_calls("conv2d forward, output reused", "4×4/1 16→32 on 16×7×7"), Some(1.0), "{rows:?}");
    assert_eq!(layer_calls("conv2d backward", "4×4/1 32→1 on 16×6×6"), Some(3.0), "{rows:?}");
    assert_eq!(layer_calls("conv_transpose2d backward", "T4×4/2 8→1 on 16×14×14"), Some(2.0), "{rows:?}");
    // Under winograd4 (the default) the rows name the Winograd tile the layer ran with: the
    // 3×3 layers F(4×4, 3×3), the discriminator's 4×4/1 one with 32 outputs F(3×3, 4×4), its
    // last (one output) the row matrix.
    let out = vqlab(
        dir.path(),
        &["bench", "exp.toml", "--steps", "1", "--warmup", "1", "--json", "--profile"]
            .into_iter()
            .chain(["--set", "model.variant=vqgan", "--set", "loss.disc_start=0"])
            .collect::<Vec<_>>(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let rows = v["profile"].as_array().unwrap();
    let forward = rows.iter().find(|r| r["op"] == "conv2d forward").unwrap()["layers"].as_array().unwrap();
    let names: Vec<&str> = forward.iter().map(|l| l["op"].as_str().unwrap()).collect();
    for want in [
        "4×4/1 16→32 on 16×7×7, Winograd F(3×3, 4×4)",
        "4×4/1 32→1 on 16×6×6",
        "3×3/1 16→16 on 16×7×7, Winograd F(4×4, 3×3)",
        "4×4/2 8→16 on 16×14×14",
    ] {
        assert!(names.contains(&want), "{want}: {names:?}");
    }
    // The text form prints the same table, the layers indented under their pass.
    let out = vqlab(dir.path(), &["bench", "exp.toml", "--steps", "2", "--warmup", "0", "--profile"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("where a step's time goes") && stdout(&out).contains("conv2d backward"));
    assert!(stdout(&out).contains("\n    4×4/2 8→16 on 16×14×14 "), "{}", stdout(&out));
}

/// rec_loss per step of a run of the tiny experiment, with candle's ops or vqlab's.
fn losses_with(dir: &Path, name: &str, variant: &str, reference: bool, sets: &[&str]) -> Vec<f64> {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_vqlab"));
    cmd.args(["run", "exp.toml", "--set", &format!("experiment.name={name}"), "--set"])
        .arg(format!("model.variant={variant}"))
        .args(["--set", "train.log_every=1", "--set", "train.steps=8", "--set", "loss.disc_start=2"])
        .args(sets.iter().flat_map(|s| ["--set", s]))
        .current_dir(dir)
        .env_remove("VQLAB_RUNS_DIR");
    if reference {
        cmd.env("VQLAB_REFERENCE_OPS", "1");
    } else {
        cmd.env_remove("VQLAB_REFERENCE_OPS");
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let run = &run_dirs(&dir.join("runs").join(name))[0];
    read_rows(&run.join("metrics.parquet"))
        .unwrap()
        .iter()
        .filter(|r| r.metric == "rec_loss")
        .map(|r| r.value)
        .collect()
}

#[test]
fn training_with_the_fast_ops_follows_training_with_candles_ops() {
    // Same seed, same data: the two runs differ only in rounding, so their losses agree step
    // by step (VQ-GAN: the adversarial term is on from step 2). vqlab's ops with every
    // convolution on the row matrix (im2row); the Winograd tiles are the next test's.
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "exp.toml", &tiny_experiment("ops", ""));
    for variant in ["vqvae", "vqgan"] {
        let fast =
            losses_with(dir.path(), &format!("fast-{variant}"), variant, false, &["train.conv_algorithm=im2row"]);
        let reference = losses_with(dir.path(), &format!("ref-{variant}"), variant, true, &[]);
        assert_eq!(fast.len(), 8);
        assert_eq!(fast.len(), reference.len());
        for (step, (a, b)) in fast.iter().zip(&reference).enumerate() {
            assert!((a - b).abs() <= 1e-3 * b.abs(), "{variant} step {}: {a} vs {b}", step + 1);
        }
        // The losses moved: a comparison of two runs that never trained would pass too.
        assert!(fast[7] < fast[0] * 0.98, "{variant}: {fast:?}");
    }
}

#[test]
fn training_with_winograd_follows_training_with_candles_ops() {
    // `train.conv_algorithm = "winograd"` (F(2×2, 3×3)) and `"winograd4"` (F(4×4, 3×3))
    // compute the encoder's and decoder's 3×3 convolutions (and the residual blocks') other
    // ways, and winograd4 the discriminator's 4×4/1 one too (F(3×3, 4×4)): the same
    // convolutions up to rounding, so the losses agree step by step with candle's ops, and
    // each run gets its own id.
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "exp.toml", &tiny_experiment("wino", ""));
    let reference = losses_with(dir.path(), "reference", "vqvae", true, &["train.conv_algorithm=im2row"]);
    for algorithm in ["winograd", "winograd4"] {
        let sets = [format!("train.conv_algorithm={algorithm}")];
        let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
        let winograd = losses_with(dir.path(), algorithm, "vqvae", false, &sets);
        assert_eq!(winograd.len(), 8);
        for (step, (a, b)) in winograd.iter().zip(&reference).enumerate() {
            assert!((a - b).abs() <= 1e-3 * b.abs(), "{algorithm} step {}: {a} vs {b}", step + 1);
        }
        assert!(winograd[7] < winograd[0] * 0.98, "{algorithm}: {winograd:?}");
    }
    let id = |name: &str| {
        let run = &run_dirs(&dir.path().join("runs").join(name))[0];
        run.file_name().unwrap().to_string_lossy().rsplit('-').next().unwrap().to_string()
    };
    // The VQ-GAN (adversarial term on from step 2) with winograd4.
    let reference = losses_with(dir.path(), "reference-gan", "vqgan", true, &[]);
    let winograd = losses_with(dir.path(), "winograd4-gan", "vqgan", false, &["train.conv_algorithm=winograd4"]);
    assert_eq!(winograd.len(), 8);
    for (step, (a, b)) in winograd.iter().zip(&reference).enumerate() {
        assert!((a - b).abs() <= 1e-3 * b.abs(), "winograd4 VQ-GAN step {}: {a} vs {b}", step + 1);
    }
    assert!(winograd[7] < winograd[0] * 0.98, "winograd4 VQ-GAN: {winograd:?}");
    let ids = [id("reference"), id("winograd"), id("winograd4")];
    assert!(ids[0] != ids[1] && ids[0] != ids[2] && ids[1] != ids[2], "{ids:?}");
    let out = vqlab(dir.path(), &["plan", "exp.toml", "--set", "train.conv_algorithm=fft"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("train.conv_algorithm") && stderr(&out).contains("winograd"), "{}", stderr(&out));
}
