//! The quantizer kinds beyond `vq` and `ema`, each against an independent oracle
//! (tests/oracles), with its bad combinations refused and its runs resumed exactly.

use candle_core::{Device, Tensor, Var};
use vqlab::config::{QuantizerConfig, QuantizerKind};
use vqlab::model::{ParamStore, Quantizer};

use crate::common::{oracle, stderr, tiny_experiment, vqlab, write};

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

/// Run an oracle script on a JSON spec (written to a temporary file).
fn json_oracle(script: &str, spec: &serde_json::Value) -> serde_json::Value {
    let path = std::env::temp_dir().join(format!("{script}-{}.json", std::process::id()));
    std::fs::write(&path, spec.to_string()).unwrap();
    let want = oracle(script, &[path.as_os_str()]);
    let _ = std::fs::remove_file(&path);
    want
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
    let (n, bits) = (32usize, 4usize);
    let (beta, weight, tau) = (0.25, 0.1, 0.5);
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
    assert_eq!(q.codebook_size, 16);
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
    assert!(close(ent, want["entropy"].as_f64().unwrap(), 1e-4), "entropy {ent} vs {}", want["entropy"]);
    for (i, (got, exp)) in rows(grad).iter().zip(&json_rows(&want["grad"])).enumerate() {
        for (a, b) in got.iter().zip(exp) {
            assert!(close(*a, *b, 2e-3), "row {i}: grad {got:?} vs oracle {exp:?}");
        }
    }
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
