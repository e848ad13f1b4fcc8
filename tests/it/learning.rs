//! The learning bar on real Fashion-MNIST (experiments/learning_check.toml, ~3 minutes on 2
//! cores): plain VQ reaches a reconstruction bound; EMA with k-means init and dead-code
//! restarts uses (nearly) all codes; at K = 1024 it beats a random init on usage.
//! `VQLAB_QUICK_TESTS=1` skips it locally; CI always runs it.

use std::path::Path;

use crate::common::{stderr, vqlab};

/// Whether the real-data tests run here (CI always runs them).
fn real_data() -> bool {
    let in_ci = std::env::var_os("CI").is_some();
    if !Path::new("/usr/share/datasets/fashion-mnist").is_dir() {
        assert!(!in_ci, "CI must install Debian's dataset-fashion-mnist");
        eprintln!("skipped: Fashion-MNIST not installed");
        return false;
    }
    if std::env::var_os("VQLAB_QUICK_TESTS").is_some() {
        assert!(!in_ci, "CI runs the learning test");
        eprintln!("skipped: VQLAB_QUICK_TESTS is set");
        return false;
    }
    true
}

#[test]
fn fashion_mnist_learning_bar() {
    if !real_data() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exp = concat!(env!("CARGO_MANIFEST_DIR"), "/experiments/learning_check.toml");
    let out = vqlab(dir.path(), &["run", exp, "--runs-dir", "runs"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut found = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(dir.path().join("runs/learning-check")).unwrap() {
        let p = entry.unwrap().path();
        if !p.is_dir() {
            continue;
        }
        let s: serde_json::Value = serde_json::from_slice(&std::fs::read(p.join("summary.json")).unwrap()).unwrap();
        let key = (
            s["quantizer.kind"].as_str().unwrap().to_string(),
            s["quantizer.codebook_size"].as_u64().unwrap(),
            s["quantizer.init"].as_str().unwrap().to_string(),
        );
        found.insert(key, (s["eval/rec_mse"].as_f64().unwrap(), s["eval/usage"].as_f64().unwrap()));
    }
    let get = |kind: &str, k: u64, init: &str| found[&(kind.to_string(), k, init.to_string())];
    eprintln!("learning bar: {found:?}");
    let (mse, _) = get("vq", 256, "random");
    assert!(mse <= 0.02, "vq K=256 eval rec MSE {mse} > 0.02");
    let (mse, usage) = get("ema", 512, "kmeans");
    assert!(usage >= 0.9, "ema K=512 k-means + restart usage {usage} < 0.9");
    assert!(mse <= 0.012, "ema K=512 k-means + restart rec MSE {mse} > 0.012");
    let (_, with) = get("ema", 1024, "kmeans");
    let (_, without) = get("ema", 1024, "random");
    assert!(with > without, "K=1024: k-means + restart usage {with} ≤ random init usage {without}");
}

/// experiments/tasks.toml: denoising at σ = 0.2 beats the noisy input by at least 3 dB and
/// ×2 super-resolution beats box-down/bicubic-up, on the first 2,000 test images. The
/// baselines themselves are checked against numpy + PIL on the same images: the clipped
/// noisy input is 15.96 dB (mean of per-image PSNRs; 15.93 dB as the PSNR of the mean MSE)
/// and bicubic 19.32 dB (18.96 dB), computed once with numpy's generator and PIL's resize.
#[test]
fn fashion_mnist_denoising_and_superresolution_beat_their_inputs() {
    if !real_data() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exp = concat!(env!("CARGO_MANIFEST_DIR"), "/experiments/tasks.toml");
    let out = vqlab(dir.path(), &["run", exp, "--runs-dir", "runs"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut found = std::collections::BTreeMap::new();
    for run in crate::common::run_dirs(&dir.path().join("runs/tasks")) {
        let s: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
        let psnr = (s["eval/psnr"].as_f64().unwrap(), s["eval/input_psnr"].as_f64().unwrap());
        found.insert(s["task.kind"].as_str().unwrap().to_string(), psnr);
    }
    eprintln!("tasks (eval PSNR, input PSNR): {found:?}");
    let (model, noisy) = found["denoise"];
    assert!((noisy - 15.96).abs() < 0.05, "noisy input {noisy} dB, numpy: 15.96");
    assert!(model >= noisy + 3.0, "denoising {model} dB < noisy input {noisy} + 3 dB");
    let (model, bicubic) = found["superres"];
    assert!((bicubic - 19.324).abs() < 0.005, "bicubic input {bicubic} dB, numpy + PIL: 19.324");
    assert!(model > bicubic, "super-resolution {model} dB ≤ bicubic {bicubic} dB");
}
