//! The Slurm launcher against a real slurmctld/slurmd (scripts/slurm_local.sh, started by
//! scripts/test.sh where Slurm can run; CI always has it).

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{run_dirs, status, stderr, stdout, tiny_experiment, vqlab, write};

/// Whether a Slurm cluster answers; outside CI a missing one skips the test.
fn slurm_up() -> bool {
    let ok = std::env::var_os("SLURM_CONF").is_some()
        && Command::new("sinfo").arg("-h").output().map(|o| o.status.success()).unwrap_or(false);
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "CI must run a Slurm cluster (scripts/test.sh starts one)");
        eprintln!("skipped: no Slurm cluster (eval \"$(bash scripts/slurm_local.sh start)\")");
    }
    ok
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn dry_run_prints_the_job_array_script_and_submits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let exp = tiny_experiment(
        "slurmdry",
        "[launcher.slurm]\npartition = \"gpu\"\ntime = \"01:00:00\"\ngres = \"gpu:1\"\ncpus_per_task = 4\nmem = \"8G\"\nmax_parallel = 2\nextra = [\"--qos=low\"]\n[sweep]\ngrid = { \"quantizer.codebook_size\" = [16, 32], \"model.variant\" = [\"vqvae\", \"vqgan\"] }",
    );
    write(dir.path(), "exp.toml", &exp);
    let out = vqlab(dir.path(), &["run", "exp.toml", "--launcher", "slurm", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let script = stdout(&out);
    for line in [
        "#SBATCH --array=0-3%2",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=01:00:00",
        "#SBATCH --gres=gpu:1",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=8G",
        "#SBATCH --qos=low",
        "#SBATCH --requeue",
        " train \"$RUN\"",
    ] {
        assert!(script.contains(line), "missing {line:?} in:\n{script}");
    }
    assert!(!dir.path().join("runs").exists(), "a dry run creates nothing");
    // --max-parallel overrides the file's throttle.
    let out = vqlab(dir.path(), &["run", "exp.toml", "--launcher", "slurm", "--dry-run", "--max-parallel", "3"]);
    assert!(stdout(&out).contains("#SBATCH --array=0-3%3"));
}

#[test]
fn a_four_run_sweep_runs_as_one_job_array() {
    if !slurm_up() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exp = tiny_experiment(
        "slurm4",
        "[sweep]\ngrid = { \"quantizer.codebook_size\" = [16, 32], \"model.variant\" = [\"vqvae\", \"vqgan\"] }",
    );
    write(dir.path(), "exp.toml", &exp);
    let t0 = Instant::now();
    let out = vqlab(dir.path(), &["run", "exp.toml", "--launcher", "slurm"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("submitted 4 run(s)"), "{}", stdout(&out));
    assert!(t0.elapsed() < Duration::from_secs(20), "sbatch returns at once");
    let job: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("runs/slurm4/.slurm/job.json")).unwrap()).unwrap();
    assert_eq!(job["runs"].as_array().unwrap().len(), 4);
    wait_until("4 done in vqlab status", Duration::from_secs(600), || {
        let st = vqlab(dir.path(), &["status", "runs/slurm4"]);
        stdout(&st).contains("4 done")
    });
    for r in run_dirs(&dir.path().join("runs/slurm4")) {
        let st = status(&r);
        assert!(
            st["slot"].as_str().unwrap().starts_with(&format!("slurm {}_", job["job_id"].as_str().unwrap())),
            "{st}"
        );
        assert!(r.join("summary.json").is_file());
    }
    // Everything done: submitting again has nothing to do.
    let out = vqlab(dir.path(), &["run", "exp.toml", "--launcher", "slurm"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("nothing to submit"), "{}", stdout(&out));
}

#[test]
fn a_requeued_task_resumes_from_its_checkpoint() {
    if !slurm_up() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exp = tiny_experiment("slurmrq", "")
        .replace("steps = 12", "steps = 600")
        .replace("checkpoint_every = 6", "checkpoint_every = 20")
        .replace("eval_every = 6", "eval_every = 300");
    write(dir.path(), "exp.toml", &exp);
    let out = vqlab(dir.path(), &["run", "exp.toml", "--launcher", "slurm"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let sweep = dir.path().join("runs/slurmrq");
    let job: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sweep.join(".slurm/job.json")).unwrap()).unwrap();
    let job_id = job["job_id"].as_str().unwrap().to_string();
    let run = run_dirs(&sweep).remove(0);
    wait_until("a checkpoint", Duration::from_secs(300), || {
        let st = status(&run);
        st["state"] == "running" && st["step"].as_u64().unwrap_or(0) >= 20
    });
    let rq = Command::new("scontrol").args(["requeue", &format!("{job_id}_0")]).output().unwrap();
    assert!(rq.status.success(), "{}", String::from_utf8_lossy(&rq.stderr));
    wait_until("the requeued run to finish", Duration::from_secs(600), || status(&run)["state"] == "done");
    let st = status(&run);
    assert!(st["attempts"].as_u64().unwrap() >= 2, "{st}");
    assert_eq!(st["failures"], 0, "{st}");
    let log = std::fs::read_to_string(run.join("train.log")).unwrap();
    assert!(log.contains("interrupted by a signal; checkpointed at step"), "{log}");
    assert!(log.contains("resuming from checkpoint at step"), "{log}");
}

/// The runs a Slurm batch script trains: the quoted paths of its RUNS array, by name.
fn script_runs(script: &str) -> Vec<String> {
    script
        .lines()
        .skip_while(|l| !l.starts_with("RUNS=("))
        .skip(1)
        .take_while(|l| !l.starts_with(')'))
        .map(|l| l.trim().trim_matches('\'').rsplit('/').next().unwrap().to_string())
        .collect()
}

#[test]
fn the_dry_run_and_the_submit_select_the_same_runs() {
    // A stand-in `sbatch` on PATH (first without, so that `vqlab run` prepares the run dirs and
    // then fails to submit); no Slurm cluster is needed.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let exp = tiny_experiment("slurmsel", "[sweep.grid]\n\"quantizer.codebook_size\" = [8, 16, 32, 64]\n");
    write(d, "exp.toml", &exp);
    let bin = d.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    // Only the stand-in's directory: a real Slurm's sbatch (/usr/bin) must not be found.
    let path = bin.display().to_string();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_vqlab"))
            .args(args)
            .current_dir(d)
            .env("PATH", &path)
            .env_remove("SLURM_CONF")
            .env_remove("VQLAB_RUNS_DIR")
            .output()
            .unwrap()
    };
    let out = run(&["run", "exp.toml", "--launcher", "slurm"]);
    assert!(!out.status.success(), "no sbatch yet: {}", stdout(&out));
    let runs = run_dirs(&d.join("runs/slurmsel"));
    assert_eq!(runs.len(), 4);
    // done; failed with its attempts used up (launcher.max_attempts = 3); failed with one
    // left; interrupted.
    let states = [("done", 1, 0), ("failed", 3, 3), ("failed", 2, 2), ("interrupted", 1, 0)];
    for (run, (state, attempts, failures)) in runs.iter().zip(states) {
        let mut st = status(run);
        st["state"] = state.into();
        st["attempts"] = attempts.into();
        st["failures"] = failures.into();
        std::fs::write(run.join("status.json"), serde_json::to_vec_pretty(&st).unwrap()).unwrap();
    }
    std::fs::write(runs[0].join("summary.json"), b"{}").unwrap();
    let names: Vec<String> = runs.iter().map(|r| r.file_name().unwrap().to_string_lossy().to_string()).collect();
    let expected = vec![names[2].clone(), names[3].clone()];
    // The script lists runs in sweep order; compare as sorted sets of names.
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };

    let out = run(&["run", "exp.toml", "--launcher", "slurm", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(sorted(script_runs(&stdout(&out))), expected, "{}", stdout(&out));

    let sbatch = bin.join("sbatch");
    std::fs::write(&sbatch, "#!/bin/sh\necho 4242\n").unwrap();
    std::fs::set_permissions(&sbatch, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = run(&["run", "exp.toml", "--launcher", "slurm"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let job: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("runs/slurmsel/.slurm/job.json")).unwrap()).unwrap();
    assert_eq!(job["job_id"], "4242");
    let submitted: Vec<String> =
        job["runs"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect();
    assert_eq!(sorted(submitted.clone()), expected);
    let script = std::fs::read_to_string(d.join("runs/slurmsel/.slurm/array.sbatch")).unwrap();
    assert_eq!(script_runs(&script), submitted, "array task i trains job.json's runs[i]");
}

#[test]
fn a_two_stage_sweep_holds_each_prior_until_its_tokenizer_ends_well_through_a_requeue() {
    if !slurm_up() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exp = tiny_experiment(
        "slurmdag",
        "[prior]\nenabled = true\nlayers = 1\nwidth = 16\nheads = 2\nsteps = 20\nbatch_size = 16\neval_every = 10\nsamples = 8\n[launcher]\nmax_attempts = 1\n[sweep]\ngrid = { \"train.lr\" = [1e30, 1e-3] }",
    )
    .replace("steps = 12", "steps = 400")
    .replace("checkpoint_every = 6", "checkpoint_every = 20")
    .replace("eval_every = 6", "eval_every = 200");
    write(dir.path(), "exp.toml", &exp);
    let dry = vqlab(dir.path(), &["run", "exp.toml", "--launcher", "slurm", "--dry-run"]);
    assert_eq!(dry.status.code(), Some(0), "{}", stderr(&dry));
    assert_eq!(stdout(&dry).matches("--dependency=afterok:<job>_").count(), 2, "{}", stdout(&dry));
    let child = Command::new(env!("CARGO_BIN_EXE_vqlab"))
        .args(["run", "exp.toml", "--launcher", "slurm", "--wait"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let sweep = dir.path().join("runs/slurmdag");
    wait_until("the job file", Duration::from_secs(60), || sweep.join(".slurm/job.json").is_file());
    let job: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sweep.join(".slurm/job.json")).unwrap()).unwrap();
    assert_eq!(job["runs"].as_array().unwrap().len(), 2, "{job}");
    assert_eq!(job["children"].as_array().unwrap().len(), 2, "{job}");
    let runs = run_dirs(&sweep);
    let good = runs
        .iter()
        .find(|r| {
            let c = std::fs::read_to_string(r.join("config.toml")).unwrap();
            !r.to_string_lossy().contains("-prior-") && c.contains("lr = 0.001")
        })
        .unwrap()
        .clone();
    let task = job["runs"].as_array().unwrap().iter().position(|r| good.ends_with(r.as_str().unwrap())).unwrap();
    // Requeue the good tokenizer mid-way: its prior stays held and runs after the resumed task.
    wait_until("a tokenizer checkpoint", Duration::from_secs(300), || {
        let st = status(&good);
        st["state"] == "running" && st["step"].as_u64().unwrap_or(0) >= 20
    });
    let id = format!("{}_{task}", job["job_id"].as_str().unwrap());
    let rq = Command::new("scontrol").args(["requeue", &id]).output().unwrap();
    assert!(rq.status.success(), "{}", String::from_utf8_lossy(&rq.stderr));
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "the lr = 1e30 tokenizer fails: {}", String::from_utf8_lossy(&out.stderr));
    for r in run_dirs(&sweep) {
        let st = status(&r);
        let name = r.file_name().unwrap().to_string_lossy().to_string();
        match name.split_once("-prior-") {
            None if r == good => {
                assert_eq!(st["state"], "done", "{st}");
                assert!(st["attempts"].as_u64().unwrap() >= 2, "requeued: {st}");
            }
            None => assert_eq!(st["state"], "failed", "{st}"),
            Some((parent, _)) if sweep.join(parent) == good => {
                assert_eq!(st["state"], "done", "{st}");
                let p = status(&good);
                assert!(st["start_time"].as_f64().unwrap() >= p["end_time"].as_f64().unwrap(), "{st} {p}");
                assert_eq!(st["attempts"], 1, "it never started before its parent was done: {st}");
            }
            Some(_) => {
                assert_eq!(st["state"], "skipped", "{st}");
                assert_eq!(st["attempts"], 0, "{st}");
            }
        }
    }
}
