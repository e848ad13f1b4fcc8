//! The fixes of the line-by-line check against the reference implementations (Sonnet's
//! vqvae.py, lucidrains' vector_quantize_pytorch.py, torch-fidelity), each against numbers
//! derived independently: numpy oracles in tests/oracles or hand computation.

use candle_core::{Device, Tensor};
use vqlab::config::{ExperimentConfig, QuantizerConfig, QuantizerKind, Variant};
use vqlab::model::quantizer::{draw_rows, kmeans};
use vqlab::model::{ParamStore, Quantizer, VqModel};

use crate::common::{oracle, stderr, tiny_experiment, vqlab, write};

fn rows_tensor(rows: &[Vec<f64>]) -> Tensor {
    let d = rows[0].len();
    let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().map(|v| *v as f32)).collect();
    Tensor::from_vec(flat, (rows.len(), d), &Device::Cpu).unwrap()
}

/// Latent vectors (N, D) as a (N, D, 1, 1) encoder output.
fn latents(rows: &[Vec<f64>]) -> Tensor {
    let t = rows_tensor(rows);
    let (n, d) = t.dims2().unwrap();
    t.reshape((n, d, 1, 1)).unwrap()
}

fn ema_quantizer(k: u32, d: u32, decay: f64) -> (ParamStore, Quantizer) {
    let mut ps = ParamStore::new(&Device::Cpu, 0);
    let cfg = QuantizerConfig {
        kind: QuantizerKind::Ema,
        codebook_size: k,
        embed_dim: d,
        ema_decay: decay,
        ..Default::default()
    };
    let q = Quantizer::new(&mut ps, &cfg).unwrap();
    (ps, q)
}

fn codebook(q: &Quantizer) -> Vec<Vec<f64>> {
    q.codebook()
        .unwrap()
        .as_tensor()
        .to_vec2::<f32>()
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(f64::from).collect())
        .collect()
}

fn run_oracle(spec: serde_json::Value) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spec.json");
    std::fs::write(&path, spec.to_string()).unwrap();
    oracle("ema_kmeans.py", &[path.as_os_str()])
}

fn as_rows(v: &serde_json::Value) -> Vec<Vec<f64>> {
    v.as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()).collect()
}

fn assert_close(got: &[Vec<f64>], want: &[Vec<f64>], tol: f64, what: &str) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        for (a, b) in g.iter().zip(w) {
            assert!((a - b).abs() <= tol * b.abs().max(1.0), "{what}: row {i}: {g:?} vs oracle {w:?}");
        }
    }
}

/// Points around `centres`, `per` each, with small deterministic offsets.
fn clustered(centres: &[[f64; 2]], per: usize) -> Vec<Vec<f64>> {
    let mut rows = Vec::new();
    for i in 0..per {
        for (c, centre) in centres.iter().enumerate() {
            let a = 0.05 * ((i * 7 + c * 3) % 11) as f64 - 0.25;
            let b = 0.04 * ((i * 5 + c) % 13) as f64 - 0.24;
            rows.push(vec![centre[0] + a, centre[1] + b]);
        }
    }
    rows
}

#[test]
fn ema_after_kmeans_keeps_the_kmeans_codebook_and_follows_the_numpy_oracle() {
    // Four clusters for k-means; the batches afterwards only ever come near two of them, so
    // the other two codes get no vector at the first steps (the bug: they became zero).
    let centres = [[0.0, 0.0], [6.0, 0.0], [0.0, 6.0], [7.0, 7.0]];
    let x = clustered(&centres, 30);
    let (k, iters, seed, decay, per_batch) = (4usize, 10usize, 11u64, 0.9f64, 6usize);
    let seed_rows = draw_rows(x.len(), k, seed, u64::MAX);
    let batches: Vec<Vec<Vec<f64>>> = (0..3)
        .map(|s| clustered(&centres[..2], 3).into_iter().map(|r| vec![r[0] + 0.1 * s as f64, r[1]]).collect())
        .collect();
    let o = run_oracle(serde_json::json!({
        "x": x, "seed_rows": seed_rows, "k": k, "iters": iters, "per_batch": per_batch,
        "decay": decay, "eps": 1e-5, "batches": batches,
    }));

    let (centroids, counts) = kmeans(&rows_tensor(&x), k, iters, seed).unwrap();
    let got_c: Vec<Vec<f64>> =
        centroids.to_vec2::<f32>().unwrap().into_iter().map(|r| r.into_iter().map(f64::from).collect()).collect();
    assert_close(&got_c, &as_rows(&o["centroids"]), 1e-5, "k-means centroids");
    let got_n: Vec<f64> = counts.to_vec1::<f32>().unwrap().into_iter().map(f64::from).collect();
    let want_n: Vec<f64> = o["counts"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(got_n, want_n, "k-means cluster sizes");

    let (_ps, q) = ema_quantizer(k as u32, 2, decay);
    q.seed_from_kmeans(&centroids, &counts, per_batch).unwrap();
    for (step, batch) in batches.iter().enumerate() {
        let out = q.forward(&latents(batch), true).unwrap();
        let idx: Vec<u64> = out.indices.to_vec1::<u32>().unwrap().into_iter().map(u64::from).collect();
        let want_idx: Vec<u64> =
            o["assignments"][step].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(idx, want_idx, "assignments at step {step}");
        assert_close(&codebook(&q), &as_rows(&o["codebooks"][step]), 1e-4, &format!("codebook after step {step}"));
    }
    // The codes that got no vector still sit at their k-means centroids, not at zero.
    let final_cb = codebook(&q);
    for j in 0..k {
        let used = o["assignments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_array().unwrap().iter().any(|v| v.as_u64() == Some(j as u64)));
        if !used {
            let (c, g) = (&got_c[j], &final_cb[j]);
            let dist = ((c[0] - g[0]).powi(2) + (c[1] - g[1]).powi(2)).sqrt();
            assert!(dist < 1e-3 * (c[0].hypot(c[1])).max(1.0), "unused code {j} moved from {c:?} to {g:?}");
        }
    }
}

#[test]
fn ema_from_a_zero_start_is_sonnets_debiased_average() {
    // Without a k-means seed the statistics start at zero and Sonnet's debiasing applies.
    let (k, decay) = (3usize, 0.8f64);
    let start = vec![vec![0.0, 0.0], vec![5.0, 5.0], vec![-5.0, 5.0]];
    let batches = vec![
        vec![vec![0.5, 0.1], vec![4.0, 5.5], vec![-0.2, 0.3]],
        vec![vec![5.5, 4.5], vec![-4.0, 6.0], vec![0.1, -0.1]],
    ];
    let o = run_oracle(serde_json::json!({
        "centroids": start, "counts": [0, 0, 0], "k": k, "decay": decay, "eps": 1e-5,
        "batches": batches, "seeded": false, "per_batch": 3,
    }));
    let (_ps, q) = ema_quantizer(k as u32, 2, decay);
    q.set_codebook(&rows_tensor(&start)).unwrap();
    for (step, batch) in batches.iter().enumerate() {
        q.forward(&latents(batch), true).unwrap();
        assert_close(&codebook(&q), &as_rows(&o["codebooks"][step]), 1e-4, &format!("codebook after step {step}"));
    }
}

#[test]
fn seeds_and_restart_candidates_are_drawn_without_replacement() {
    // K = 512 seeds from 600 vectors: all distinct (with replacement, about 512²/(2·600) ≈ 218
    // would repeat).
    let picks = draw_rows(600, 512, 3, u64::MAX);
    let distinct: std::collections::BTreeSet<u32> = picks.iter().copied().collect();
    assert_eq!((picks.len(), distinct.len()), (512, 512));
    assert!(picks.iter().all(|&p| p < 600));
    // Fewer vectors than codes: every vector once per round, so counts differ by at most one.
    let picks = draw_rows(10, 25, 3, 7);
    let mut counts = [0usize; 10];
    picks.iter().for_each(|&p| counts[p as usize] += 1);
    assert!(counts.iter().all(|&c| c == 2 || c == 3), "{counts:?}");
    assert_eq!(counts.iter().filter(|&&c| c == 3).count(), 5);
    // k-means with as many codes as distinct rows and no iteration keeps every row once.
    let rows: Vec<Vec<f64>> = (0..64).map(|i| vec![i as f64, (i * i % 17) as f64]).collect();
    let (c, counts) = kmeans(&rows_tensor(&rows), 64, 0, 5).unwrap();
    let c = c.to_vec2::<f32>().unwrap();
    let distinct: std::collections::BTreeSet<(i64, i64)> = c.iter().map(|r| (r[0] as i64, r[1] as i64)).collect();
    assert_eq!(distinct.len(), 64, "duplicate k-means seeds");
    assert!(counts.to_vec1::<f32>().unwrap().iter().all(|&n| n == 1.0));
}

/// A grayscale VQ-VAE config of one residual block, `side`² pixels, hidden width `hidden`.
fn small_model(side: u32, hidden: u32, embed_dim: u32) -> ExperimentConfig {
    let mut cfg = ExperimentConfig::default();
    cfg.data.channels = 1;
    cfg.data.image_size = side;
    cfg.model.hidden_channels = hidden;
    cfg.model.res_channels = hidden / 2;
    cfg.model.res_blocks = 1;
    cfg.quantizer.embed_dim = embed_dim;
    cfg
}

#[test]
fn cosine_codebooks_start_at_unit_norm_and_an_adam_step_turns_them_by_about_lr() {
    let mut cfg = small_model(28, 16, 64);
    cfg.quantizer.codebook_size = 512;
    cfg.quantizer.l2_normalize = true;
    cfg.train.lr = 1e-3;
    let model = VqModel::new(&cfg, &Device::Cpu).unwrap();
    let before = model.quantizer.codebook().unwrap().as_tensor().to_vec2::<f32>().unwrap();
    for row in &before {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "initial code norm {norm}");
    }
    let vars: Vec<_> = model.params.vars().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let mut opt = vqlab::nn::optim::Adam::new(vars, cfg.train.lr, cfg.adam_betas()).unwrap();
    let pixels: Vec<f32> = (0..8 * 28 * 28).map(|i| ((i * 37 % 101) as f32) / 100.0).collect();
    let x = Tensor::from_vec(pixels, (8, 1, 28, 28), &Device::Cpu).unwrap();
    vqlab::train::step::vqvae_step(&cfg, &model, &mut opt, &x, 1.0, 0, false).unwrap();
    let after = model.quantizer.codebook().unwrap().as_tensor().to_vec2::<f32>().unwrap();
    // Adam's first step moves each coordinate by at most lr (m̂/√v̂ = ±1), so a unit vector
    // in D = 64 dimensions turns by at most asin(lr·√64) ≈ 8·lr. From norm ≈ 1/K·√(D/3) of the
    // plain init it would turn by ~100× that.
    let bound = (cfg.train.lr * 8.0).asin() * 1.01;
    let mut max_angle = 0f64;
    for (a, b) in before.iter().zip(&after) {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let nb: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum::<f64>().sqrt();
        let angle = (dot / nb).clamp(-1.0, 1.0).acos();
        max_angle = max_angle.max(angle);
    }
    assert!(max_angle <= bound, "a code turned by {max_angle} rad > {bound}");
    assert!(max_angle >= 0.5 * cfg.train.lr, "no code moved ({max_angle} rad)");
}

#[test]
fn the_encoder_applies_sonnets_relu_after_its_3x3_convolution() {
    // By hand: conv3 outputs −1000 everywhere (zero weights, bias −1000); the residual block
    // adds the constant 2 (zero weights, conv1 bias 2); the 1×1 pre-VQ conv has weights 0.5 and
    // bias 0.25 over 8 channels. Sonnet: relu(−1000) = 0, + 2 → relu → 0.25 + 8·0.5·2 = 8.25.
    // Without the relu: relu(−1000 + 2) = 0 → 0.25.
    let cfg = small_model(8, 8, 3);
    let model = VqModel::new(&cfg, &Device::Cpu).unwrap();
    let set = |name: &str, value: f32| {
        let v = model.params.get(name).unwrap_or_else(|| panic!("no parameter {name}"));
        v.set(&(v.as_tensor().zeros_like().unwrap() + value as f64).unwrap()).unwrap();
    };
    set("encoder.conv3.weight", 0.0);
    set("encoder.conv3.bias", -1000.0);
    set("encoder.res.0.conv3.weight", 0.0);
    set("encoder.res.0.conv3.bias", 0.0);
    set("encoder.res.0.conv1.weight", 0.0);
    set("encoder.res.0.conv1.bias", 2.0);
    set("encoder.pre_vq.weight", 0.5);
    set("encoder.pre_vq.bias", 0.25);
    let x = Tensor::ones((2, 1, 8, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
    let z = model.encode(&x).unwrap();
    assert_eq!(z.dims(), &[2, 3, 2, 2]);
    for v in z.flatten_all().unwrap().to_vec1::<f32>().unwrap() {
        assert_eq!(v, 8.25);
    }
}

#[test]
fn adam_betas_and_the_reconstruction_loss_follow_each_variants_reference() {
    let dir = tempfile::tempdir().unwrap();
    let exp = write(
        dir.path(),
        "exp.toml",
        &tiny_experiment("betas", "[sweep]\ngrid = { \"model.variant\" = [\"vqvae\", \"vqgan\"] }"),
    );
    let sweep = vqlab::config::load_sweep(&exp, &[], &[]).unwrap();
    let mut seen = Vec::new();
    for run in &sweep.runs {
        let c = &run.config;
        assert_eq!(c.train.betas, Some(c.adam_betas()), "the resolved config names the betas it trains with");
        seen.push((c.model.variant, c.adam_betas(), c.loss.recon.name()));
    }
    seen.sort_by_key(|s| s.0.name());
    // Sonnet's VQ-VAE example: Adam's defaults and MSE; taming's VQ-GAN: (0.5, 0.9) and L1.
    assert_eq!(seen, vec![(Variant::Vqgan, [0.5, 0.9], "l1"), (Variant::Vqvae, [0.9, 0.999], "mse")]);
    // Explicit betas win; mse_var is accepted.
    let out = vqlab(
        dir.path(),
        &["plan", exp.to_str().unwrap(), "--set", "train.betas=[0.8, 0.99]", "--set", "loss.recon=mse_var"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn checkpoints_are_selected_on_the_validation_split_and_the_test_split_is_measured_once() {
    let dir = tempfile::tempdir().unwrap();
    let exp = write(dir.path(), "exp.toml", &tiny_experiment("select", ""));
    let out = vqlab(dir.path(), &["run", exp.to_str().unwrap(), "--set", "train.eval_every=3"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let run = &crate::common::run_dirs(&dir.path().join("runs/select"))[0];
    let parquet = run.join("metrics.parquet");
    let pq = oracle("parquet_read.py", &[parquet.as_os_str()]);
    let rows = pq[parquet.to_str().unwrap()]["rows"].as_array().unwrap().clone();
    let of = |split: &str, metric: &str| -> Vec<(i64, f64)> {
        rows.iter()
            .filter(|r| r["split"] == split && r["metric"] == metric)
            .map(|r| (r["step"].as_i64().unwrap(), r["value"].as_f64().unwrap()))
            .collect()
    };
    // Validation metrics at every eval step; the test split once, at the end.
    let val = of("val", "rec_mse");
    assert_eq!(val.iter().map(|p| p.0).collect::<Vec<_>>(), vec![3, 6, 9, 12]);
    assert_eq!(of("eval", "rec_mse").iter().map(|p| p.0).collect::<Vec<_>>(), vec![12]);
    // The best checkpoint is the step with the lowest val/rec_mse, as pyarrow reads the log.
    let (best_step, best_value) = val.iter().copied().fold((0, f64::INFINITY), |b, p| if p.1 < b.1 { p } else { b });
    let ckpt = vqlab::train::checkpoint::read(&run.join("checkpoints/best.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(ckpt.step as i64, best_step);
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["run.best_step"].as_i64(), Some(best_step));
    assert_eq!(summary["run.best_rule"], "lowest val/rec_mse");
    assert_eq!(summary["run.training_revision"].as_u64(), Some(vqlab::config::TRAINING_REVISION as u64));
    assert!((summary["val/rec_mse"].as_f64().unwrap() - val[3].1).abs() < 1e-12);
    assert!(best_value <= val[3].1);
    for key in ["run.source.eval", "run.source.val", "run.source.best"] {
        assert!(summary[key].is_string(), "{key}: {summary}");
    }
    assert!(summary["run.source.best"].as_str().unwrap().contains(&format!("step {best_step}")));
    // best/* are the test-split numbers of the best checkpoint's weights: the last step's
    // own when it is the best, another measurement otherwise.
    let (eval, best) = (summary["eval/rec_mse"].as_f64().unwrap(), summary["best/rec_mse"].as_f64().unwrap());
    if best_step == 12 {
        assert_eq!(eval, best);
    } else {
        assert_ne!(eval, best);
    }
    // Validation and test images differ (synthetic sets from different seeds).
    assert_ne!(summary["val/rec_mse"], summary["eval/rec_mse"]);
}
