//! FID-style scores against an independent numpy/scipy implementation.

use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use vqlab::metrics::fid::{frechet_distance, gaussian, kid, kid_subsets};

/// `n` correlated features of dimension `d`: z·A + shift with z ~ N(0, 1).
fn features(n: usize, d: usize, seed: u64, shift: f32) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 1.0).unwrap();
    let mut mix = rand_chacha::ChaCha8Rng::seed_from_u64(99);
    let a: Vec<f32> = (0..d * d).map(|_| normal.sample(&mut mix) * 0.5).collect();
    let mut out = vec![0f32; n * d];
    for i in 0..n {
        let z: Vec<f32> = (0..d).map(|_| normal.sample(&mut rng)).collect();
        for j in 0..d {
            out[i * d + j] = (0..d).map(|k| z[k] * a[k * d + j]).sum::<f32>() + z[j] + shift;
        }
    }
    out
}

fn oracle(d: usize, x: &[f32], y: &[f32], subsets: &[(Vec<usize>, Vec<usize>)]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let spec = serde_json::json!({
        "d": d,
        "x": x.iter().map(|v| *v as f64).collect::<Vec<_>>(),
        "y": y.iter().map(|v| *v as f64).collect::<Vec<_>>(),
        "subsets": subsets.iter().map(|(a, b)| vec![a.clone(), b.clone()]).collect::<Vec<_>>(),
    });
    let path = dir.path().join("spec.json");
    std::fs::write(&path, spec.to_string()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oracles/fid_kid.py");
    let out = std::process::Command::new("python3").arg(script).arg(&path).output().expect("python3 runs");
    assert!(
        out.status.success(),
        "oracle failed (numpy/scipy missing? bash scripts/setup.sh --deps-only): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

#[test]
fn frechet_distance_and_kid_match_scipy_on_well_conditioned_features() {
    let (n, d) = (400, 12);
    let x = features(n, d, 1, 0.0);
    let y = features(n, d, 2, 0.3);
    let fid = frechet_distance(&gaussian(&x, n, d), &gaussian(&y, n, d));
    let subsets = kid_subsets(n, n, 20, 100, 5);
    let (kid_mean, kid_std) = kid(&x, &y, d, &subsets);
    let o = oracle(d, &x, &y, &subsets);
    assert!(rel(fid, o["fid"].as_f64().unwrap()) < 1e-6, "fid {fid} vs scipy {}", o["fid"]);
    assert!(rel(kid_mean, o["kid_mean"].as_f64().unwrap()) < 1e-6, "kid {kid_mean} vs numpy {}", o["kid_mean"]);
    assert!(rel(kid_std, o["kid_std"].as_f64().unwrap()) < 1e-6, "kid std {kid_std} vs numpy {}", o["kid_std"]);
    assert!(fid > 0.5, "shifted features are far apart: {fid}");
}

#[test]
fn frechet_distance_is_finite_and_non_negative_when_rank_deficient() {
    // 6 samples in 16 dimensions: both covariances have rank ≤ 5.
    let (n, d) = (6, 16);
    let x = features(n, d, 3, 0.0);
    let y = features(n, d, 4, 0.1);
    let fid = frechet_distance(&gaussian(&x, n, d), &gaussian(&y, n, d));
    assert!(fid.is_finite() && fid >= 0.0, "{fid}");
    assert!(frechet_distance(&gaussian(&x, n, d), &gaussian(&x, n, d)) < 1e-6);
}
