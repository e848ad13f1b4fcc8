//! The quantizer kinds beyond `vq` and `ema`, each against an independent oracle
//! (tests/oracles), with its bad combinations refused and its runs resumed exactly.

use candle_core::{Device, Tensor, Var};
use vqlab::config::{QuantizerConfig, QuantizerKind};
use vqlab::model::{ModelQuantizer, ParamStore, Quantizer};

use crate::common::{json_oracle, stderr, tiny_experiment, vqlab, write};

fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    let (n, d) = (t.dim(0).unwrap(), t.elem_count() / t.dim(0).unwrap());
    t.reshape((n, d))
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(f64::from).collect())
        .collect()
}

/// Rows of numbers from an oracle's JSON.
fn json_rows(v: &serde_json::Value) -> Vec<Vec<f64>> {
    v.as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()).collect()
}

/// Every number of `got` within `tol` (relative, absolute below 1) of the oracle's rows.
fn assert_rows_close(got: &[Vec<f64>], want: &serde_json::Value, tol: f64, what: &str) {
    let want = json_rows(want);
    assert_eq!(got.len(), want.len(), "{what}: rows");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        for (a, b) in g.iter().zip(w) {
            assert!((a - b).abs() <= tol * b.abs().max(1.0), "{what}, row {i}: {g:?} vs oracle {w:?}");
        }
    }
}

/// `vqlab plan exp.toml --set …` is exit 2 with `expected` in its message.
fn assert_plan_refuses(dir: &std::path::Path, sets: &[&str], expected: &str) {
    let mut args = vec!["plan", "exp.toml"];
    for s in sets {
        args.extend(["--set", s]);
    }
    let out = vqlab(dir, &args);
    assert_eq!(out.status.code(), Some(2), "{sets:?}: {}", stderr(&out));
    assert!(stderr(&out).contains(expected), "{sets:?}: expected {expected:?} in {}", stderr(&out));
}

#[test]
fn fsq_follows_the_numpy_oracle_forward_codes_and_gradient() {
    // len(levels) = embed_dim: no projections, so the oracle sees the latents themselves.
    // Two levels too: the bound must stay defined (and reach both) at L = 2.
    let levels = vec![8u32, 5, 2, 3];
    let cfg = QuantizerConfig {
        kind: QuantizerKind::Fsq,
        codebook_size: 240,
        embed_dim: 4,
        fsq_levels: levels.clone(),
        ..Default::default()
    };
    let mut ps = ParamStore::new(&Device::Cpu, 0);
    let q = Quantizer::new(&mut ps, &cfg).unwrap();
    assert_eq!(q.codebook_size, 240);
    assert_eq!(ps.count("quantizer."), 0, "no codebook, no projections");
    // 64 latent vectors spread over (−3, 3), as (N, d, 1, 1), and weights for a loss.
    let n = 64;
    let values: Vec<f32> = (0..n * 4).map(|i| ((i as f32 * 0.7361).sin() * 3.0) + 0.01 * (i % 7) as f32).collect();
    let weights: Vec<f32> = (0..n * 4).map(|i| (i as f32 * 1.3).cos()).collect();
    let z = Var::from_tensor(&Tensor::from_vec(values.clone(), (n, 4, 1, 1), &Device::Cpu).unwrap()).unwrap();
    let w = Tensor::from_vec(weights.clone(), (n, 4, 1, 1), &Device::Cpu).unwrap();
    let out = q.forward(z.as_tensor(), true).unwrap();
    let loss = (&out.z_q * &w).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let grad = grads.get(z.as_tensor()).unwrap();

    let chunk =
        |v: &[f32]| v.chunks(4).map(|r| r.iter().map(|x| f64::from(*x)).collect::<Vec<f64>>()).collect::<Vec<_>>();
    let spec = serde_json::json!({ "levels": levels, "z": chunk(&values), "w": chunk(&weights) });
    let want = json_oracle("fsq.py", &spec);

    let (q_want, g_want) = (json_rows(&want["q"]), json_rows(&want["grad"]));
    for (i, (got, exp)) in rows(&out.z_q).iter().zip(&q_want).enumerate() {
        for (a, b) in got.iter().zip(exp) {
            assert!((a - b).abs() < 1e-6, "row {i}: z_q {got:?} vs oracle {exp:?}");
        }
    }
    let codes: Vec<u32> = out.indices.to_vec1().unwrap();
    let codes_want: Vec<u32> = want["codes"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap() as u32).collect();
    assert_eq!(codes, codes_want);
    assert!(codes.iter().all(|&c| c < 240));
    let distinct: std::collections::BTreeSet<u32> = codes.iter().copied().collect();
    assert!(distinct.len() > 10, "the latents spread over many codes: {distinct:?}");
    for (i, (got, exp)) in rows(grad).iter().zip(&g_want).enumerate() {
        for (a, b) in got.iter().zip(exp) {
            assert!((a - b).abs() < 1e-5 * b.abs().max(1.0), "row {i}: grad {got:?} vs oracle {exp:?}");
        }
    }
    // The counts are over the implicit codebook, and FSQ adds no loss.
    assert_eq!(out.counts.unwrap().dims(), &[240]);
    assert_eq!(out.commit_loss.to_scalar::<f32>().unwrap(), 0.0);
}

#[test]
fn fsq_bad_combinations_are_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "exp.toml", &tiny_experiment("fsqbad", ""));
    let cases: [(&[&str], &str); 6] = [
        (&["quantizer.kind=fsq", "quantizer.codebook_size=512"], "key `quantizer.codebook_size`: fsq takes its levels"),
        (
            &["quantizer.kind=fsq", "quantizer.codebook_size=256", "quantizer.ema_decay=0.9"],
            "key `quantizer.ema_decay`",
        ),
        (&["quantizer.kind=fsq", "quantizer.codebook_size=256", "quantizer.init=kmeans"], "key `quantizer.init`"),
        (
            &["quantizer.kind=fsq", "quantizer.fsq_levels=[4, 4]", "quantizer.codebook_size=32"],
            "make 16 codes; set quantizer.codebook_size = 16",
        ),
        (
            &["quantizer.kind=fsq", "quantizer.fsq_levels=[1, 4]", "quantizer.codebook_size=4"],
            "key `quantizer.fsq_levels`",
        ),
        (&["quantizer.fsq_levels=[4, 4]"], "key `quantizer.fsq_levels`: levels are for kind = \"fsq\""),
    ];
    for (sets, expected) in cases {
        assert_plan_refuses(dir.path(), sets, expected);
    }
    // The paper's table, and explicit levels with their product or their nominal size, pass.
    for sets in [
        &["quantizer.kind=fsq", "quantizer.codebook_size=4096"][..],
        &["quantizer.kind=fsq", "quantizer.fsq_levels=[4, 4]", "quantizer.codebook_size=16"],
        &["quantizer.kind=fsq", "quantizer.fsq_levels=[8, 6, 5]", "quantizer.codebook_size=256"],
    ] {
        let mut args = vec!["plan", "exp.toml"];
        for s in sets {
            args.extend(["--set", s]);
        }
        let out = vqlab(dir.path(), &args);
        assert_eq!(out.status.code(), Some(0), "{sets:?}: {}", stderr(&out));
    }
}

#[test]
fn an_fsq_run_counts_codes_against_its_implicit_codebook_and_resumes_exactly() {
    let tensors =
        crate::train::assert_resume_is_exact("fsqresume", &["quantizer.kind=fsq", "quantizer.codebook_size=256"]);
    assert!(tensors.contains_key("model.quantizer.proj_in.weight"), "{:?}", tensors.keys().collect::<Vec<_>>());
    assert!(!tensors.keys().any(|k| k.contains("codebook")), "fsq has no codebook");

    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "exp.toml", &tiny_experiment("fsqcodes", ""));
    let out =
        vqlab(dir.path(), &["run", "exp.toml", "--set", "quantizer.kind=fsq", "--set", "quantizer.codebook_size=256"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let run = &crate::common::run_dirs(&dir.path().join("runs/fsqcodes"))[0];
    let cfg = std::fs::read_to_string(run.join("config.toml")).unwrap();
    let compact: String = cfg.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(compact.contains("fsq_levels=[8,6,5,]"), "the resolved config names the levels:\n{cfg}");
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["run.codebook_codes"], 240, "8·6·5 implicit codes");
    // usage = used / 240 and dead = 240 − used: the two agree on the same codebook.
    let usage = summary["eval/usage"].as_f64().unwrap();
    let dead = summary["eval/dead_codes"].as_f64().unwrap();
    assert!((usage * 240.0 + dead - 240.0).abs() < 1e-6, "usage {usage}, dead codes {dead}");
}

#[test]
fn the_rotation_trick_follows_the_numpy_oracle_and_forwards_the_code() {
    let (n, d, k) = (48usize, 5usize, 7usize);
    let cfg = QuantizerConfig {
        codebook_size: k as u32,
        embed_dim: d as u32,
        gradient: vqlab::config::GradientEstimator::Rotation,
        ..Default::default()
    };
    let mut ps = ParamStore::new(&Device::Cpu, 0);
    let q = Quantizer::new(&mut ps, &cfg).unwrap();
    let codebook: Vec<f32> = (0..k * d).map(|i| (i as f32 * 0.917).sin() * 1.5).collect();
    q.set_codebook(&Tensor::from_vec(codebook.clone(), (k, d), &Device::Cpu).unwrap()).unwrap();
    let values: Vec<f32> = (0..n * d).map(|i| (i as f32 * 0.389).cos() * 2.0 + 0.1).collect();
    let weights: Vec<f32> = (0..n * d).map(|i| (i as f32 * 2.11).sin()).collect();
    let z = Var::from_tensor(&Tensor::from_vec(values.clone(), (n, d, 1, 1), &Device::Cpu).unwrap()).unwrap();
    let w = Tensor::from_vec(weights.clone(), (n, d, 1, 1), &Device::Cpu).unwrap();
    let out = q.forward(z.as_tensor(), false).unwrap();
    let grads = (&out.z_q * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let grad = grads.get(z.as_tensor()).unwrap();

    let chunk =
        |v: &[f32]| v.chunks(d).map(|r| r.iter().map(|x| f64::from(*x)).collect::<Vec<f64>>()).collect::<Vec<_>>();
    let spec = serde_json::json!({ "e": chunk(&values), "codebook": chunk(&codebook), "w": chunk(&weights) });
    let want = json_oracle("rotation.py", &spec);
    assert_eq!(want["rotation_is_orthogonal"], true);

    let codes: Vec<u32> = out.indices.to_vec1().unwrap();
    let codes_want: Vec<u32> = want["codes"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap() as u32).collect();
    assert_eq!(codes, codes_want);
    // Forward: the code itself (to float rounding, as with the straight-through estimator).
    let cb = chunk(&codebook);
    for (i, row) in rows(&out.z_q).iter().enumerate() {
        for (a, b) in row.iter().zip(&cb[codes[i] as usize]) {
            assert!((a - b).abs() < 1e-6, "row {i}: {row:?} is not code {}", codes[i]);
        }
    }
    let (out_want, g_want) = (json_rows(&want["out"]), json_rows(&want["grad"]));
    for (i, (got, exp)) in rows(&out.z_q).iter().zip(&out_want).enumerate() {
        for (a, b) in got.iter().zip(exp) {
            assert!((a - b).abs() < 1e-5, "row {i}: the oracle's λRe is the code too: {got:?} vs {exp:?}");
        }
    }
    let mut differs = false;
    for (i, ((got, exp), w_row)) in rows(grad).iter().zip(&g_want).zip(chunk(&weights)).enumerate() {
        for ((a, b), wi) in got.iter().zip(exp).zip(&w_row) {
            assert!((a - b).abs() < 1e-4 * b.abs().max(1.0), "row {i}: grad {got:?} vs oracle {exp:?}");
            differs |= (a - wi).abs() > 1e-3;
        }
    }
    assert!(differs, "the rotation trick's gradient is not the straight-through identity");
}

#[test]
fn a_rotation_trick_run_resumes_exactly_and_fsq_refuses_it() {
    crate::train::assert_resume_is_exact("rotresume", &["quantizer.gradient=rotation"]);
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "exp.toml", &tiny_experiment("rotbad", ""));
    let out = vqlab(
        dir.path(),
        &[
            "plan",
            "exp.toml",
            "--set",
            "quantizer.kind=fsq",
            "--set",
            "quantizer.codebook_size=256",
            "--set",
            "quantizer.gradient=rotation",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("key `quantizer.gradient`"), "{}", stderr(&out));
    // The default estimator leaves run ids as they were: `ste` set explicitly changes nothing.
    let ids = |extra: &[&str]| {
        let mut args = vec!["plan", "exp.toml", "--json"];
        args.extend_from_slice(extra);
        let v: serde_json::Value = serde_json::from_str(&crate::common::stdout(&vqlab(dir.path(), &args))).unwrap();
        v["runs"][0]["id"].as_str().unwrap().to_string()
    };
    assert_eq!(ids(&[]), ids(&["--set", "quantizer.gradient=ste"]));
    assert_ne!(ids(&[]), ids(&["--set", "quantizer.gradient=rotation"]));
}

#[test]
fn lfq_follows_the_numpy_oracle_codes_losses_and_gradient() {
    // An even and an odd number of bits (the batch entropy splits them in halves), a soft and
    // a sharp temperature (at τ = 0.05 most p_n(c) fall below the oracle's 1e-5 clamp).
    for (bits, tau) in [(4usize, 0.5), (5, 0.05)] {
        lfq_against_the_oracle(bits, tau);
    }
}

fn lfq_against_the_oracle(bits: usize, tau: f64) {
    let n = 32usize;
    let (beta, weight) = (0.25, 0.1);
    let cfg = QuantizerConfig {
        kind: QuantizerKind::Lfq,
        codebook_size: 1 << bits,
        embed_dim: bits as u32,
        beta,
        lfq_entropy_weight: Some(weight),
        lfq_temperature: Some(tau),
        ..Default::default()
    };
    let mut ps = ParamStore::new(&Device::Cpu, 0);
    let q = Quantizer::new(&mut ps, &cfg).unwrap();
    assert_eq!(q.codebook_size, 1 << bits);
    let values: Vec<f32> = (0..n * bits).map(|i| (i as f32 * 0.611).sin() * 1.2 + 0.05).collect();
    let weights: Vec<f32> = (0..n * bits).map(|i| (i as f32 * 1.7).cos() * 0.3).collect();
    let z = Var::from_tensor(&Tensor::from_vec(values.clone(), (n, bits, 1, 1), &Device::Cpu).unwrap()).unwrap();
    let g = Tensor::from_vec(weights.clone(), (n, bits, 1, 1), &Device::Cpu).unwrap();
    let out = q.forward(z.as_tensor(), true).unwrap();
    let entropy = out.entropy_loss.clone().unwrap();
    let loss = ((&out.commit_loss * beta).unwrap() + (&entropy * weight).unwrap()).unwrap();
    let loss = (loss + (&out.z_q * &g).unwrap().sum_all().unwrap()).unwrap();
    let grads = loss.backward().unwrap();
    let grad = grads.get(z.as_tensor()).unwrap();

    let chunk =
        |v: &[f32]| v.chunks(bits).map(|r| r.iter().map(|x| f64::from(*x)).collect::<Vec<f64>>()).collect::<Vec<_>>();
    let spec =
        serde_json::json!({ "z": chunk(&values), "g": chunk(&weights), "beta": beta, "weight": weight, "tau": tau });
    let want = json_oracle("lfq.py", &spec);
    let codes: Vec<u32> = out.indices.to_vec1().unwrap();
    let codes_want: Vec<u32> = want["codes"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap() as u32).collect();
    assert_eq!(codes, codes_want);
    assert_eq!(rows(&out.z_q), json_rows(&want["q"]));
    let close = |a: f64, b: f64, tol: f64| (a - b).abs() <= tol * b.abs().max(1.0);
    let commit = f64::from(out.commit_loss.to_scalar::<f32>().unwrap());
    assert!(close(commit, want["commit"].as_f64().unwrap(), 1e-5), "commit {commit} vs {}", want["commit"]);
    let ent = f64::from(entropy.to_scalar::<f32>().unwrap());
    assert!(close(ent, want["entropy"].as_f64().unwrap(), 1e-4), "bits {bits}: entropy {ent} vs {}", want["entropy"]);
    assert_rows_close(&rows(grad), &want["grad"], 2e-3, &format!("bits {bits}: grad"));
}

#[test]
fn lfq_bad_combinations_are_exit_2_and_a_run_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "exp.toml", &tiny_experiment("lfqbad", ""));
    let cases: [(&[&str], &str); 4] = [
        (&["quantizer.kind=lfq", "quantizer.codebook_size=100"], "key `quantizer.codebook_size`: lfq quantizes"),
        (&["quantizer.kind=lfq", "quantizer.codebook_size=64", "quantizer.init=kmeans"], "key `quantizer.init`"),
        (
            &["quantizer.kind=lfq", "quantizer.codebook_size=64", "quantizer.lfq_temperature=0"],
            "key `quantizer.lfq_temperature`",
        ),
        (&["quantizer.lfq_entropy_weight=0.2"], "key `quantizer.lfq_entropy_weight`: an option of kind = \"lfq\" only"),
    ];
    for (sets, expected) in cases {
        assert_plan_refuses(dir.path(), sets, expected);
    }
    let tensors =
        crate::train::assert_resume_is_exact("lfqresume", &["quantizer.kind=lfq", "quantizer.codebook_size=64"]);
    assert!(!tensors.keys().any(|k| k.contains("codebook")), "lfq has no learned codebook");
}

#[test]
fn simvq_follows_the_numpy_oracle_and_trains_only_its_linear_map() {
    let (n, d, k) = (40usize, 3usize, 9usize);
    let cfg = QuantizerConfig {
        kind: QuantizerKind::Simvq,
        codebook_size: k as u32,
        embed_dim: d as u32,
        ..Default::default()
    };
    let mut ps = ParamStore::new(&Device::Cpu, 0);
    let q = Quantizer::new(&mut ps, &cfg).unwrap();
    // The basis is a buffer (no optimizer sees it); W is the one trained tensor.
    let trained: Vec<&String> = ps.vars().keys().filter(|k| k.starts_with("quantizer.")).collect();
    assert_eq!(trained, ["quantizer.code_transform"]);
    let basis = rows(q.codebook().unwrap().as_tensor());
    let w = ps.get("quantizer.code_transform").unwrap().clone();
    let w_rows = rows(w.as_tensor());
    let values: Vec<f32> = (0..n * d).map(|i| (i as f32 * 0.53).sin() * 0.4).collect();
    let z = Tensor::from_vec(values.clone(), (n, d, 1, 1), &Device::Cpu).unwrap();
    let out = q.forward(&z, false).unwrap();
    let grads = out.codebook_loss.backward().unwrap();
    let grad_w = grads.get(w.as_tensor()).unwrap();
    assert!(grads.get(q.codebook().unwrap().as_tensor()).is_none(), "the frozen basis gets no gradient");

    let chunk =
        |v: &[f32]| v.chunks(d).map(|r| r.iter().map(|x| f64::from(*x)).collect::<Vec<f64>>()).collect::<Vec<_>>();
    let want = json_oracle("simvq.py", &serde_json::json!({ "z": chunk(&values), "basis": basis, "w": w_rows }));
    let codes: Vec<u32> = out.indices.to_vec1().unwrap();
    let codes_want: Vec<u32> = want["codes"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap() as u32).collect();
    assert_eq!(codes, codes_want);
    let close = |a: f64, b: f64, tol: f64| (a - b).abs() <= tol * b.abs().max(1e-3);
    for (got, exp) in rows(&out.z_q).iter().zip(&json_rows(&want["q"])) {
        for (a, b) in got.iter().zip(exp) {
            assert!((a - b).abs() < 1e-6, "z_q {got:?} vs {exp:?}");
        }
    }
    let loss = f64::from(out.codebook_loss.to_scalar::<f32>().unwrap());
    assert!(close(loss, want["codebook_loss"].as_f64().unwrap(), 1e-5), "{loss} vs {}", want["codebook_loss"]);
    for (got, exp) in rows(grad_w).iter().zip(&json_rows(&want["grad_w"])) {
        for (a, b) in got.iter().zip(exp) {
            assert!((a - b).abs() < 1e-6 + 1e-4 * b.abs(), "dL/dW {got:?} vs {exp:?}");
        }
    }
}

#[test]
fn simvq_refuses_the_codebook_options_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "exp.toml", &tiny_experiment("simbad", ""));
    for (set, key) in [("quantizer.init=kmeans", "quantizer.init"), ("quantizer.ema_decay=0.9", "quantizer.ema_decay")]
    {
        let out = vqlab(dir.path(), &["plan", "exp.toml", "--set", "quantizer.kind=simvq", "--set", set]);
        assert_eq!(out.status.code(), Some(2), "{set}: {}", stderr(&out));
        assert!(stderr(&out).contains(&format!("key `{key}`")), "{}", stderr(&out));
    }
    let t = crate::train::assert_resume_is_exact("simresume", &["quantizer.kind=simvq", "quantizer.gradient=rotation"]);
    assert!(t.contains_key("model.quantizer.code_transform") && t.contains_key("model.quantizer.codebook"));
}

#[test]
fn every_kind_and_its_options_can_be_swept_side_by_side() {
    // One zip over the kinds, with the keys only some kinds have (left out of the hashed
    // config at their defaults) swept like any other key.
    let dir = tempfile::tempdir().unwrap();
    let exp = tiny_experiment(
        "kinds",
        "[sweep.zip]\n\
         \"quantizer.kind\" = [\"vq\", \"ema\", \"fsq\", \"lfq\", \"simvq\", \"vq\"]\n\
         \"quantizer.init\" = [\"random\", \"kmeans\", \"random\", \"random\", \"random\", \"random\"]\n\
         \"quantizer.gradient\" = [\"ste\", \"ste\", \"ste\", \"ste\", \"ste\", \"rotation\"]\n\
         \"quantizer.lfq_temperature\" = [0.01, 0.01, 0.01, 0.05, 0.01, 0.01]\n",
    )
    .replace("codebook_size = 32\n", "codebook_size = 256\n");
    write(dir.path(), "exp.toml", &exp);
    let out = vqlab(dir.path(), &["plan", "exp.toml", "--json"]);
    // lfq_temperature is an lfq option: the other kinds refuse it even at 0.01.
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("key `quantizer.lfq_temperature`"), "{}", stderr(&out));
    write(
        dir.path(),
        "exp.toml",
        &exp.replace("\"quantizer.lfq_temperature\" = [0.01, 0.01, 0.01, 0.05, 0.01, 0.01]\n", ""),
    );
    let out = vqlab(dir.path(), &["plan", "exp.toml", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_str(&crate::common::stdout(&out)).unwrap();
    let runs = plan["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 6);
    let ids: std::collections::BTreeSet<&str> = runs.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 6, "six distinct runs");
    let out = vqlab(dir.path(), &["run", "exp.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let table = crate::common::stdout(&out);
    assert_eq!(table.matches(" done ").count(), 6, "{table}");
    // A figure with a line per family: kind and gradient together tell vq from vq + rotation.
    let out = vqlab(
        dir.path(),
        &[
            "plot",
            "runs/kinds",
            "--x",
            "quantizer.codebook_size",
            "--y",
            "eval/usage",
            "--group",
            "quantizer.kind,quantizer.gradient",
            "--out",
            "usage.svg",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let svg = std::fs::read_to_string(dir.path().join("usage.svg")).unwrap();
    for label in ["vq ste", "vq rotation", "ema ste", "fsq ste", "lfq ste", "simvq ste"] {
        assert!(svg.contains(label), "no series {label:?} in the figure");
    }
}

#[test]
fn residual_vq_follows_the_numpy_oracle_codes_losses_and_gradients() {
    let (n, d, k, levels) = (24usize, 4usize, 8usize, 3u32);
    let (beta, w) = (0.25, 1.0);
    let cfg = QuantizerConfig { codebook_size: k as u32, embed_dim: d as u32, beta, levels, ..Default::default() };
    let mut ps = ParamStore::new(&Device::Cpu, 0);
    let q = ModelQuantizer::new(&mut ps, &cfg).unwrap();
    assert_eq!((q.levels().len(), q.codebook_size), (3, 24), "three codebooks of 8, counted together");
    for l in 0..3 {
        assert!(ps.count(&format!("quantizer.l{l}.codebook")) == k * d, "level {l}'s own codebook");
    }
    // Codebooks at shrinking scales, as residuals shrink.
    let books: Vec<Vec<Vec<f64>>> = (0..3)
        .map(|l| {
            (0..k)
                .map(|c| {
                    (0..d).map(|j| ((c * 7 + j * 3 + l * 11) as f64 * 0.917).sin() * 1.5 / (1 + 2 * l) as f64).collect()
                })
                .collect()
        })
        .collect();
    for (level, book) in q.levels().iter().zip(&books) {
        let flat: Vec<f32> = book.iter().flatten().map(|x| *x as f32).collect();
        level.set_codebook(&Tensor::from_vec(flat, (k, d), &Device::Cpu).unwrap()).unwrap();
    }
    let values: Vec<f32> = (0..n * d).map(|i| (i as f32 * 0.389).cos() * 1.7 + 0.1).collect();
    let weights: Vec<f32> = (0..n * d).map(|i| (i as f32 * 1.3).sin() * 0.2).collect();
    let z = Var::from_tensor(&Tensor::from_vec(values.clone(), (n, d, 1, 1), &Device::Cpu).unwrap()).unwrap();
    let g = Tensor::from_vec(weights.clone(), (n, d, 1, 1), &Device::Cpu).unwrap();
    let out = q.forward(z.as_tensor(), true).unwrap();
    let loss = ((&out.commit_loss * beta).unwrap() + (&out.codebook_loss * w).unwrap()).unwrap();
    let loss = (loss + (&out.z_q * &g).unwrap().sum_all().unwrap()).unwrap();
    let grads = loss.backward().unwrap();

    let chunk =
        |v: &[f32]| v.chunks(d).map(|r| r.iter().map(|x| f64::from(*x)).collect::<Vec<f64>>()).collect::<Vec<_>>();
    let spec =
        serde_json::json!({ "z": chunk(&values), "g": chunk(&weights), "codebooks": books, "beta": beta, "w": w });
    let want = json_oracle("rvq.py", &spec);
    // Pooled indices: level l's code c is l·K + c.
    let pooled: Vec<u32> = out.indices.to_vec1().unwrap();
    for (l, codes) in want["codes"].as_array().unwrap().iter().enumerate() {
        let codes: Vec<u32> = codes.as_array().unwrap().iter().map(|c| c.as_u64().unwrap() as u32).collect();
        assert_eq!(out.levels[l].indices.to_vec1::<u32>().unwrap(), codes, "level {l}");
        let offset: Vec<u32> = codes.iter().map(|c| c + (l * k) as u32).collect();
        assert_eq!(&pooled[l * n..(l + 1) * n], offset.as_slice(), "level {l} pooled");
    }
    let close = |a: f64, b: f64, tol: f64| (a - b).abs() <= tol * b.abs().max(1.0);
    assert_rows_close(&rows(&out.z_q), &want["out"], 1e-5, "output");
    for (name, t) in [("codebook_loss", &out.codebook_loss), ("commit", &out.commit_loss)] {
        let v = f64::from(t.to_scalar::<f32>().unwrap());
        assert!(close(v, want[name].as_f64().unwrap(), 1e-5), "{name} {v} vs {}", want[name]);
    }
    assert_rows_close(&rows(grads.get(z.as_tensor()).unwrap()), &want["grad_z"], 1e-5, "grad z");
    for (l, level) in q.levels().iter().enumerate() {
        let ge = rows(grads.get(level.codebook().unwrap().as_tensor()).unwrap());
        assert_rows_close(&ge, &want["grad_codebooks"][l], 1e-5, &format!("level {l} codebook grad"));
    }
    // With the rotation trick the forward value is the same sum.
    let rotated = QuantizerConfig { gradient: vqlab::config::GradientEstimator::Rotation, ..cfg };
    let mut ps = ParamStore::new(&Device::Cpu, 0);
    let qr = ModelQuantizer::new(&mut ps, &rotated).unwrap();
    for (level, book) in qr.levels().iter().zip(&books) {
        let flat: Vec<f32> = book.iter().flatten().map(|x| *x as f32).collect();
        level.set_codebook(&Tensor::from_vec(flat, (k, d), &Device::Cpu).unwrap()).unwrap();
    }
    let out_r = qr.forward(z.as_tensor(), false).unwrap();
    assert_rows_close(&rows(&out_r.z_q), &want["out"], 1e-5, "rotated output");
}

#[test]
fn residual_vq_runs_count_levels_and_resume_exactly_and_bad_levels_are_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "exp.toml", &tiny_experiment("rvqbad", ""));
    for sets in [
        &["quantizer.levels=0"][..],
        &["quantizer.levels=17"],
        &["quantizer.levels=2", "quantizer.kind=fsq", "quantizer.codebook_size=256"],
        &["quantizer.levels=2", "quantizer.kind=lfq", "quantizer.codebook_size=64"],
    ] {
        assert_plan_refuses(dir.path(), sets, "key `quantizer.levels`");
    }
    // EMA levels seeded by k-means one after another, with dead-code restarts: every piece of
    // per-level state goes through the checkpoint.
    let t = crate::train::assert_resume_is_exact(
        "rvqresume",
        &["quantizer.kind=ema", "quantizer.levels=3", "quantizer.init=kmeans", "quantizer.dead_code_threshold=1"],
    );
    for l in 0..3 {
        for name in ["codebook", "ema_cluster_size", "ema_dw", "ema_decay_power", "usage_ema"] {
            assert!(t.contains_key(&format!("model.quantizer.l{l}.{name}")), "level {l} {name}");
        }
    }
    crate::train::assert_resume_is_exact("rvqvq", &["quantizer.levels=2", "quantizer.gradient=rotation"]);

    let out = vqlab(dir.path(), &["run", "exp.toml", "--set", "quantizer.levels=4"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let run = &crate::common::run_dirs(&dir.path().join("runs/rvqbad"))[0];
    let name = run.file_name().unwrap().to_string_lossy().to_string();
    assert!(name.starts_with("vqvae-K32x4-s0-"), "{name}");
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["run.codebook_codes"], 128, "4 levels of 32 codes");
    // Counted together, the used codes are the levels' used codes summed; dead codes too.
    for split in ["eval", "val", "best"] {
        let level = |m: &str, l: u32| summary[format!("{split}/{m}_l{l}")].as_f64().unwrap();
        let used: f64 = (0..4).map(|l| level("usage", l) * 32.0).sum();
        let all = summary[format!("{split}/usage")].as_f64().unwrap();
        assert!((all * 128.0 - used).abs() < 1e-6, "{split}: usage {all} vs levels' {used} of 128");
        let dead: f64 = (0..4).map(|l| level("dead_codes", l)).sum();
        assert_eq!(summary[format!("{split}/dead_codes")].as_f64().unwrap(), dead, "{split}");
        for l in 0..4 {
            let p = level("perplexity", l);
            assert!((1.0..=32.0).contains(&p), "{split} level {l} perplexity {p}");
        }
    }
    let out = vqlab(dir.path(), &["describe", "exp.toml", "--set", "quantizer.levels=4"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(crate::common::stdout(&out).contains("Residual VQ: 4 levels"), "{}", crate::common::stdout(&out));
}
