//! The stage-2 prior and the runs that depend on runs: the transformer against a numpy
//! oracle, its causal mask, argmax sampling; two-stage sweeps with a failing parent, kills at
//! random moments and an exact resume.

use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use vqlab::model::prior::{Prior, PriorShape};

use crate::common::*;

fn shape(dropout: f64) -> PriorShape {
    PriorShape { codes: 11, positions: 7, layers: 2, width: 16, heads: 4, dropout }
}

/// Random code grids (b, positions), deterministic.
fn grids(b: usize, t: usize, k: usize, seed: u64) -> Vec<u32> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..b * t)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 33) % k as u64) as u32
        })
        .collect()
}

#[test]
fn the_transformer_and_its_cross_entropy_match_numpy() {
    let s = shape(0.0);
    let prior = Prior::new(s, 3, &Device::Cpu).unwrap();
    let (b, t) = (3, s.positions);
    let codes = Tensor::from_vec(grids(b, t, s.codes, 1), (b, t), &Device::Cpu).unwrap();
    let inputs = prior.inputs(&codes).unwrap();
    let logits: Vec<f32> = prior.logits(&inputs, None).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let ce = f64::from(prior.nll(&codes, None).unwrap().to_scalar::<f32>().unwrap());
    let params: serde_json::Map<String, serde_json::Value> = prior
        .params
        .tensors()
        .into_iter()
        .map(|(k, v)| {
            let data: Vec<f32> = v.flatten_all().unwrap().to_vec1().unwrap();
            (k, serde_json::json!({ "shape": v.dims(), "data": data }))
        })
        .collect();
    let rows = |t: &Tensor| t.to_vec2::<u32>().unwrap();
    let spec = serde_json::json!({
        "params": params, "tokens": rows(&inputs), "targets": rows(&codes), "layers": s.layers, "heads": s.heads,
    });
    let want = json_oracle("prior.py", &spec);
    let want_logits: Vec<f64> = want["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(want_logits.len(), logits.len());
    for (i, (a, w)) in logits.iter().zip(&want_logits).enumerate() {
        assert!((f64::from(*a) - w).abs() <= 1e-4 * w.abs().max(1.0), "logit {i}: {a} vs numpy {w}");
    }
    let want_ce = want["ce"].as_f64().unwrap();
    assert!((ce - want_ce).abs() <= 1e-5 * want_ce.abs().max(1.0), "cross-entropy {ce} vs numpy {want_ce}");
    // The inputs are the start token (index K) and the codes shifted by one.
    let first: Vec<u32> = rows(&inputs)[0].clone();
    assert_eq!(first[0], s.codes as u32);
    assert_eq!(&first[1..], &rows(&codes)[0][..t - 1]);
}

#[test]
fn the_output_at_t_does_not_see_inputs_after_t_bit_for_bit() {
    let s = shape(0.0);
    let prior = Prior::new(s, 5, &Device::Cpu).unwrap();
    let t = s.positions;
    let base = grids(2, t, s.codes + 1, 7);
    let logits = |tokens: &[u32]| -> Vec<Vec<Vec<f32>>> {
        let x = Tensor::from_vec(tokens.to_vec(), (2, t), &Device::Cpu).unwrap();
        prior.logits(&x, None).unwrap().to_vec3().unwrap()
    };
    let before = logits(&base);
    for cut in 0..t - 1 {
        let mut changed = base.clone();
        for row in 0..2 {
            for p in cut + 1..t {
                changed[row * t + p] = (changed[row * t + p] + 1 + p as u32) % (s.codes as u32 + 1);
            }
        }
        let after = logits(&changed);
        for row in 0..2 {
            for p in 0..=cut {
                let (a, b) = (&before[row][p], &after[row][p]);
                assert!(
                    a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "position {p} changed when inputs after {cut} did"
                );
            }
            assert_ne!(before[row][cut + 1], after[row][cut + 1], "position {} must see its own input", cut + 1);
        }
    }
}

#[test]
fn sampling_at_temperature_zero_and_near_zero_is_argmax_decoding() {
    let s = shape(0.1);
    let prior = Prior::new(s, 9, &Device::Cpu).unwrap();
    let n = 5;
    // Greedy decoding written out here: feed the prefix, take the largest logit.
    let mut greedy = Vec::new();
    for _ in 0..n {
        let mut seq = vec![s.codes as u32];
        for p in 0..s.positions {
            let x = Tensor::from_vec(seq.clone(), (1, p + 1), &Device::Cpu).unwrap();
            let row: Vec<f32> = prior.logits(&x, None).unwrap().to_vec3::<f32>().unwrap()[0][p].clone();
            let best = (0..row.len()).fold(0, |b, i| if row[i] > row[b] { i } else { b });
            seq.push(best as u32);
        }
        greedy.extend_from_slice(&seq[1..]);
    }
    assert_eq!(prior.sample(n, 0.0, 0, 1, 2).unwrap(), greedy, "temperature 0");
    assert_eq!(prior.sample(n, 1e-6, 0, 2, 3).unwrap(), greedy, "temperature 1e-6");
    assert_eq!(prior.sample(n, 1.0, 1, 3, 5).unwrap(), greedy, "top-1 at temperature 1");
    // At temperature 1 the draws differ from the argmax somewhere, and follow the seed.
    let drawn = prior.sample(n, 1.0, 0, 4, 5).unwrap();
    assert_ne!(drawn, greedy);
    assert_eq!(drawn, prior.sample(n, 1.0, 0, 4, 2).unwrap(), "the same seed draws the same, whatever the batch");
}

/// The `[prior]` section of the tiny two-stage experiments.
fn prior_section(samples: u32) -> String {
    format!(
        "[prior]\nenabled = true\nlayers = 1\nwidth = 16\nheads = 2\nsteps = 20\nbatch_size = 16\neval_every = 10\nsamples = {samples}\n"
    )
}

/// A tiny two-stage experiment: a synthetic tokenizer sweep, each followed by a prior.
fn two_stage(name: &str, extra: &str) -> String {
    tiny_experiment(name, &format!("{}{extra}", prior_section(8)))
}

fn summary(run: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap()
}

fn unix(st: &serde_json::Value, key: &str) -> f64 {
    st[key].as_f64().unwrap_or_else(|| panic!("status lacks {key}: {st}"))
}

#[test]
fn a_two_stage_sweep_trains_each_prior_after_its_tokenizer_and_skips_a_failed_parents_prior() {
    let dir = tempfile::tempdir().unwrap();
    // With the generation scores: KID subsets of 32 from 40 samples.
    let exp = tiny_experiment_fid(
        "stages",
        &prior_section(40),
    ) + &String::from(
        "[hardware]\ncpu_slots = 2\n[launcher]\nmax_attempts = 1\n[sweep]\ngrid = { \"train.lr\" = [1e30, 1e-3], \"prior.temperature\" = [0.0, 1.0] }\n",
    );
    write(dir.path(), "exp.toml", &exp);
    let plan = vqlab(dir.path(), &["plan", "exp.toml", "--json"]);
    assert_eq!(plan.status.code(), Some(0), "{}", stderr(&plan));
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let runs = plan["runs"].as_array().unwrap();
    // 2 tokenizers (one per lr, however many priors follow) and 4 priors.
    assert_eq!(runs.len(), 6, "{plan}");
    let tokenizers: Vec<&serde_json::Value> = runs.iter().filter(|r| r["parent"].is_null()).collect();
    assert_eq!(tokenizers.len(), 2);
    for r in runs.iter().filter(|r| !r["parent"].is_null()) {
        let parent = r["parent"].as_str().unwrap();
        assert!(r["dir"].as_str().unwrap().starts_with(&format!("{parent}-prior-")), "{r}");
        let parent_pos = runs.iter().position(|p| p["dir"] == parent).unwrap();
        let pos = runs.iter().position(|p| p["dir"] == r["dir"]).unwrap();
        assert!(parent_pos < pos, "a parent comes before its child");
        assert!(r["cell"].get("prior.temperature").is_some());
    }
    for t in &tokenizers {
        assert!(t["cell"].get("prior.temperature").is_none(), "{t}");
    }
    let text = stdout(&vqlab(dir.path(), &["plan", "exp.toml"]));
    assert_eq!(text.matches("└─ ").count(), 4, "{text}");

    let out = vqlab(dir.path(), &["run", "exp.toml"]);
    assert_eq!(out.status.code(), Some(1), "the lr = 1e30 tokenizer fails: {}", stderr(&out));
    let sweep = dir.path().join("runs/stages");
    for r in runs {
        let run = sweep.join(r["dir"].as_str().unwrap());
        let st = status(&run);
        let lr = r["cell"]["train.lr"].as_f64().unwrap();
        match (r["parent"].is_null(), lr > 1.0) {
            (true, true) => assert_eq!(st["state"], "failed", "{st}"),
            (true, false) => assert_eq!(st["state"], "done", "{st}"),
            (false, true) => {
                assert_eq!(st["state"], "skipped", "{st}");
                assert!(st["reason"].as_str().unwrap().starts_with("parent failed"), "{st}");
                assert_eq!(st["attempts"], 0, "a skipped prior never started");
            }
            (false, false) => {
                assert_eq!(st["state"], "done", "{st}");
                let parent = status(&sweep.join(r["parent"].as_str().unwrap()));
                assert!(unix(&st, "start_time") >= unix(&parent, "end_time"), "started before its parent ended");
                let s = summary(&run);
                assert_eq!(s["run.parent"], r["parent"]);
                assert_eq!(s["run.stage"], "prior");
                for key in
                    ["eval/nll", "best/nll", "eval/unigram_nll", "val/nll", "gen/fid", "gen/kid", "gen/marginal_fid"]
                {
                    let v = s[key].as_f64().unwrap_or_else(|| panic!("{key} missing: {s}"));
                    assert!(v.is_finite() && v > 0.0, "{key} = {v}");
                }
                assert!(run.join("codes.safetensors").is_file());
                assert!(run.join("samples").read_dir().unwrap().next().is_some(), "a sample grid");
            }
        }
    }
    let st = stdout(&vqlab(dir.path(), &["status", "runs/stages"]));
    assert_eq!(st.matches("└─ ").count(), 4, "{st}");
    assert!(st.contains("skipped"), "{st}");
}

#[test]
fn a_prior_resumes_exactly_and_its_id_follows_its_parents() {
    // An uninterrupted run and one killed mid-way and rerun give the same numbers.
    let exp = two_stage("resume", "").replace("steps = 12", "steps = 12\nseed = 4");
    let a = tempfile::tempdir().unwrap();
    write(a.path(), "exp.toml", &exp);
    let out = vqlab(a.path(), &["run", "exp.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let runs_a = run_dirs(&a.path().join("runs/resume"));
    assert_eq!(runs_a.len(), 2);
    let prior_a = &runs_a[1];

    let b = tempfile::tempdir().unwrap();
    write(b.path(), "exp.toml", &exp.replace("steps = 20", "steps = 200"));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vqlab"))
        .args(["run", "exp.toml"])
        .current_dir(b.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill the scheduler and its prior worker once the prior checkpointed past step 10.
    let sweep_b = b.path().join("runs/resume");
    let t0 = Instant::now();
    let prior_b = loop {
        let dirs = if sweep_b.is_dir() { run_dirs(&sweep_b) } else { Vec::new() };
        if let Some(p) = dirs.iter().find(|d| d.to_string_lossy().contains("-prior-")) {
            if p.join("status.json").is_file() && status(p)["step"].as_u64().unwrap_or(0) >= 10 {
                break p.clone();
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "the prior never checkpointed");
        std::thread::sleep(Duration::from_millis(20));
    };
    let pid = status(&prior_b)["pid"].as_u64().unwrap() as i32;
    unsafe {
        libc::kill(child.id() as i32, libc::SIGKILL);
        libc::kill(pid, libc::SIGKILL);
    }
    let _ = child.wait();
    wait_gone(pid as u32);
    // The longer run is another run (prior.steps is hashed); the same steps resume it.
    let ids_long: Vec<_> = run_dirs(&sweep_b).iter().map(|p| p.file_name().unwrap().to_owned()).collect();
    assert_eq!(ids_long[0], runs_a[0].file_name().unwrap(), "the tokenizer is the same run");
    assert_ne!(ids_long[1], prior_a.file_name().unwrap(), "prior.steps changes the prior's id");
    let out = vqlab(b.path(), &["run", "exp.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let log = std::fs::read_to_string(prior_b.join("train.log")).unwrap();
    assert!(log.contains("resuming from checkpoint at step"), "{log}");

    // Exactness: the same 200-step prior uninterrupted in a third dir.
    let c = tempfile::tempdir().unwrap();
    write(c.path(), "exp.toml", &exp.replace("steps = 20", "steps = 200"));
    let out = vqlab(c.path(), &["run", "exp.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let prior_c = &run_dirs(&c.path().join("runs/resume"))[1];
    let (sb, sc) = (summary(&prior_b), summary(prior_c));
    for key in ["eval/nll", "best/nll", "val/nll", "eval/unigram_nll", "run.best_step"] {
        assert_eq!(sb[key], sc[key], "{key} after a kill and resume");
    }
    let codes = |p: &Path| vqlab::train::prior::read_codes(&p.join("codes.safetensors")).unwrap();
    let (cb, cc) = (codes(&prior_b), codes(prior_c));
    assert!(cb.train.grids == cc.train.grids && cb.test.grids == cc.test.grids, "the same code grids");
}

#[test]
fn bad_prior_settings_are_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "exp.toml", &two_stage("badprior", ""));
    for (set, key) in [
        ("prior.width=17", "prior.width"),
        ("prior.heads=0", "prior.heads"),
        ("prior.dropout=1.0", "prior.dropout"),
        ("prior.temperature=-1", "prior.temperature"),
        ("prior.top_k=33", "prior.top_k"),
        ("quantizer.levels=2", "prior.enabled"),
        ("prior.steps=0", "prior.steps"),
    ] {
        let out = vqlab(dir.path(), &["plan", "exp.toml", "--set", set]);
        assert_eq!(out.status.code(), Some(2), "{set}: {}", stderr(&out));
        assert!(stderr(&out).contains(key), "{set}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }
}

#[test]
fn sigkill_at_random_moments_of_a_two_stage_sweep_then_rerun_trains_every_run_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let exp = two_stage("dagkill", "[hardware]\ncpu_slots = 2\n[sweep]\nseeds = [0, 1, 2, 3]\n")
        .replace("steps = 12", "steps = 40")
        .replace("steps = 20", "steps = 60");
    write(dir.path(), "exp.toml", &exp);
    let sweep = dir.path().join("runs/dagkill");
    // Kill moments drawn once from a fixed generator (ms after the start of each attempt).
    let mut x: u64 = 0x2026_1201;
    let mut done_files = std::collections::BTreeMap::new();
    for round in 0..4 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let wait = Duration::from_millis(400 + (x >> 33) % 2500);
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vqlab"))
            .args(["run", "exp.toml"])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(wait);
        let workers = running_workers(&sweep);
        unsafe {
            libc::kill(child.id() as i32, libc::SIGKILL);
            for pid in &workers {
                libc::kill(*pid as i32, libc::SIGKILL);
            }
        }
        let _ = child.wait();
        for pid in &workers {
            wait_gone(*pid);
        }
        // What was done must stay as it was: no run trains twice.
        for r in run_dirs(&sweep) {
            if r.join("status.json").is_file() && status(&r)["state"] == "done" && !done_files.contains_key(&r) {
                done_files.insert(r.clone(), file_digests(&r, |_| true));
            }
        }
        eprintln!("round {round}: killed after {wait:?}; {} runs done", done_files.len());
    }
    let out = vqlab(dir.path(), &["run", "exp.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let runs = run_dirs(&sweep);
    assert_eq!(runs.len(), 8);
    for r in &runs {
        let st = status(r);
        assert_eq!(st["state"], "done", "{}: {st}", r.display());
        let name = r.file_name().unwrap().to_string_lossy().to_string();
        if let Some((parent, _)) = name.split_once("-prior-") {
            let p = status(&sweep.join(parent));
            assert!(unix(&st, "start_time") >= unix(&p, "end_time"), "{name} started before {parent} ended");
            // No attempt of a prior ever found its parent unfinished.
            let log = std::fs::read_to_string(r.join("train.log")).unwrap();
            assert!(!log.contains("is not done"), "{log}");
        }
    }
    for (r, before) in &done_files {
        assert_eq!(&file_digests(r, |_| true), before, "{} was done and was touched", r.display());
    }
}

#[test]
fn a_shared_prefix_vqgan_arm_starts_bit_for_bit_from_its_vqvae_run_and_ends_as_a_full_run_does() {
    use vqlab::train::checkpoint::read;
    // Both arms with the same recon loss and betas (the variants' defaults differ).
    let exp = |name: &str, loss: &str| {
        tiny_experiment(name, "[sweep]\ngrid = { \"model.variant\" = [\"vqvae\", \"vqgan\"] }\n")
            .replace("disc_start = 6", &format!("disc_start = 6\nrecon = \"l1\"\n{loss}"))
            .replace("[train]\n", "[train]\nbetas = [0.5, 0.9]\n")
    };
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "shared.toml", &exp("shared", "branch = \"shared_prefix\""));
    write(dir.path(), "full.toml", &exp("full", ""));
    let plan = vqlab(dir.path(), &["plan", "shared.toml", "--json"]);
    assert_eq!(plan.status.code(), Some(0), "{}", stderr(&plan));
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let runs = plan["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    let vae = runs.iter().find(|r| r["dir"].as_str().unwrap().starts_with("vqvae")).unwrap();
    let gan = runs.iter().find(|r| r["dir"].as_str().unwrap().starts_with("vqgan")).unwrap();
    assert_eq!(gan["parent"], vae["dir"], "{plan}");
    for f in ["shared.toml", "full.toml"] {
        let out = vqlab(dir.path(), &["run", f]);
        assert_eq!(out.status.code(), Some(0), "{f}: {}", stderr(&out));
    }
    let shared = dir.path().join("runs/shared");
    let full = dir.path().join("runs/full");
    let vae_dir = shared.join(vae["dir"].as_str().unwrap());
    let gan_dir = shared.join(gan["dir"].as_str().unwrap());
    let log = std::fs::read_to_string(gan_dir.join("train.log")).unwrap();
    assert!(log.contains("branching from") && log.contains("at step 6"), "{log}");
    assert!(!log.contains("step 3/12"), "the branched arm does not train the prefix: {log}");
    // The full VQ-GAN run checkpointed at step 6 (its previous checkpoint once it ended at 12):
    // the VQ-VAE run's state at disc_start is that state, bit for bit, discriminator aside.
    let full_gan = run_dirs(&full).into_iter().find(|r| r.to_string_lossy().contains("vqgan")).unwrap();
    let at6 = read(&full_gan.join("checkpoints/previous.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(at6.step, 6);
    let branch = read(&vae_dir.join("checkpoints/branch.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(branch.step, 6);
    assert_eq!(branch.counters["opt_g_t"], at6.counters["opt_g_t"]);
    let mut compared = 0;
    for (k, v) in &branch.tensors {
        let w = at6.tensors.get(k).unwrap_or_else(|| panic!("{k} missing in the full run's checkpoint"));
        let bits = |t: &Tensor| {
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        };
        assert_eq!(bits(v), bits(w), "{k} differs at the branch step");
        compared += 1;
    }
    assert!(branch.tensors.keys().any(|k| k.starts_with("opt_g.")), "Adam's moments are in the branch state");
    assert!(compared > 10);
    // From the same state the branched arm ends where the full run ends.
    let (s_gan, s_full) = (summary(&gan_dir), summary(&full_gan));
    for key in ["eval/rec_mse", "eval/psnr", "eval/perplexity", "eval/usage"] {
        assert_eq!(s_gan[key], s_full[key], "{key}");
    }

    // Defaults differ between the variants (recon loss, betas): refused, naming the key.
    write(
        dir.path(),
        "bad.toml",
        &tiny_experiment("bad", "[sweep]\ngrid = { \"model.variant\" = [\"vqvae\", \"vqgan\"] }\n")
            .replace("disc_start = 6", "disc_start = 6\nbranch = \"shared_prefix\""),
    );
    let out = vqlab(dir.path(), &["plan", "bad.toml"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("loss.branch") && stderr(&out).contains("`loss.recon`"), "{}", stderr(&out));
}

#[test]
fn bench_times_the_priors_training_step() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "exp.toml", &two_stage("benchprior", ""));
    let out = vqlab(dir.path(), &["bench", "exp.toml", "--prior", "--steps", "3", "--warmup", "1", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["batch_size"], 16, "prior.batch_size: {r}");
    assert_eq!(r["steps"], 3);
    assert_eq!(r["step_ms"].as_array().unwrap().len(), 3);
    assert!(r["img_per_s"].as_f64().unwrap() > 0.0, "{r}");
    assert!(
        r["model"].as_str().unwrap().contains("prior 1 blocks × width 16, 2 heads")
            && r["model"].as_str().unwrap().contains("49 positions of K=32"),
        "{r}"
    );
    // The op passes of one step, counted from the architecture by hand: 1 block makes 4
    // linear layers (qkv, proj, fc, out) plus the head, 2 LayerNorms plus the final one, 1
    // attention, 1 GELU, 2 residual adds and one cross-entropy, each forward and backward once;
    // and one Adam update.
    let out =
        vqlab(dir.path(), &["bench", "exp.toml", "--prior", "--profile", "--steps", "2", "--warmup", "1", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let calls = |op: &str| -> f64 {
        r["profile"].as_array().unwrap().iter().find(|p| p["op"] == op).unwrap_or_else(|| panic!("no {op}: {r}"))
            ["calls_per_step"]
            .as_f64()
            .unwrap()
    };
    for (pass, n) in [
        ("linear", 5.0),
        ("LayerNorm", 3.0),
        ("attention", 1.0),
        ("GELU", 1.0),
        ("residual add + dropout", 2.0),
        ("cross-entropy", 1.0),
    ] {
        assert_eq!(calls(&format!("{pass} forward")), n, "{pass} forward");
        assert_eq!(calls(&format!("{pass} backward")), n, "{pass} backward");
    }
    assert_eq!(calls("Adam"), 1.0);
}
