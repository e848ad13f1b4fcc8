//! The local scheduler: slots over (fake) GPUs, the sweep lock, Ctrl-C, SIGKILL and resume,
//! retries, early stop — asserted from what the workers recorded in their run dirs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{file_digests, oracle, run_dirs, status, stderr, stdout, tiny_experiment, vqlab, wait_gone, write};

fn spawn(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> std::process::Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vqlab"));
    cmd.args(args).current_dir(dir).env_remove("RUST_LOG").env_remove("VQLAB_RUNS_DIR");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

/// The largest number of [start, end) intervals that overlap at one instant.
fn max_overlap(intervals: &[(f64, f64)]) -> usize {
    let mut events: Vec<(f64, i32)> = intervals.iter().flat_map(|&(s, e)| [(s, 1), (e, -1)]).collect();
    // Ends before starts at the same instant.
    events.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap().then(a.1.cmp(&b.1)));
    let (mut cur, mut best) = (0i32, 0i32);
    for (_, d) in events {
        cur += d;
        best = best.max(cur);
    }
    best as usize
}

#[test]
fn sixteen_runs_on_four_fake_gpus_two_per_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let exp = tiny_experiment(
        "fanout",
        "[hardware]\nruns_per_gpu = 2\n[sweep]\nseeds = [0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15]",
    );
    write(dir.path(), "exp.toml", &exp);
    let child = spawn(dir.path(), &["run", "exp.toml"], &[("VQLAB_FAKE_GPUS", "4")]);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let runs = run_dirs(&dir.path().join("runs/fanout"));
    assert_eq!(runs.len(), 16);
    let mut all = Vec::new();
    let mut per_gpu: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for r in &runs {
        let st = status(r);
        assert_eq!(st["state"], "done", "{}", r.display());
        let cvd = st["cuda_visible_devices"].as_str().expect("the worker recorded CUDA_VISIBLE_DEVICES").to_string();
        let idx: u32 = cvd.parse().unwrap_or_else(|_| panic!("exactly one index, got {cvd:?}"));
        assert!(idx < 4, "{cvd}");
        assert!(st["slot"].as_str().unwrap().starts_with(&format!("gpu{idx}.")), "{st}");
        let iv = (st["start_time"].as_f64().unwrap(), st["end_time"].as_f64().unwrap());
        assert!(iv.1 > iv.0);
        all.push(iv);
        per_gpu.entry(cvd).or_default().push(iv);
    }
    let overall = max_overlap(&all);
    assert!(overall <= 8, "at most 4 GPUs × 2 runs alive: {overall}");
    assert!(overall >= 4, "the runs did fan out: {overall}");
    for (gpu, ivs) in &per_gpu {
        assert!(max_overlap(ivs) <= 2, "GPU {gpu} had {} runs at once", max_overlap(ivs));
    }
    assert_eq!(per_gpu.len(), 4, "every GPU was used: {:?}", per_gpu.keys());
}

#[test]
fn auto_packs_runs_by_memory_and_retries_an_out_of_memory_run_alone() {
    // Two fake 10 GiB GPUs (a 9216 MiB budget each) and runs estimated at 3 GiB: three fit on
    // each. The run of seed 5, the sixth to start, shares its GPU and fails out of memory
    // (the test hook); its retry waits for an empty GPU.
    let dir = tempfile::tempdir().unwrap();
    let exp = tiny_experiment("packed", "[hardware]\nruns_per_gpu = \"auto\"\n[sweep]\nseeds = [0, 1, 2, 3, 4, 5]")
        .replace("steps = 12", "steps = 30");
    write(dir.path(), "exp.toml", &exp);
    let envs = [
        ("VQLAB_FAKE_GPUS", "2"),
        ("VQLAB_FAKE_GPU_MEMORY_MIB", "10240"),
        ("VQLAB_FAKE_RUN_MEMORY_MIB", "3072"),
        ("VQLAB_FAKE_DEVICE_MEMORY_MIB", "2900"),
        ("VQLAB_FAKE_OOM_RUN", "-s5-"),
    ];
    let out = spawn(dir.path(), &["run", "exp.toml"], &envs).wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("packed by memory") && err.contains("6 of these runs fit at once"), "{err}");
    let mut per_gpu: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for r in run_dirs(&dir.path().join("runs/packed")) {
        let st = status(&r);
        assert_eq!(st["state"], "done", "{st}");
        let slot = st["slot"].as_str().unwrap().to_string();
        let (gpu, lane) = slot.trim_start_matches("gpu").split_once('.').unwrap();
        assert!(lane.parse::<u32>().unwrap() < 3, "at most three runs on a GPU: {slot}");
        // The measured peak is recorded for the next scheduler to pack by.
        assert_eq!(st["peak_memory_mib"], 2900, "{st}");
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(r.join("summary.json")).unwrap()).unwrap();
        assert_eq!(summary["run.peak_memory_mib"], 2900);
        let name = r.file_name().unwrap().to_str().unwrap().to_string();
        if name.contains("-s5-") {
            assert_eq!((st["attempts"].as_u64(), st["failures"].as_u64()), (Some(2), Some(1)), "{st}");
            assert_eq!(st["gpu_alone"], true, "the out-of-memory retry is recorded: {st}");
            assert!(err.contains(&format!("{name}: failed (attempt 1")) && err.contains("out of memory"), "{err}");
            assert!(err.contains(", alone)"), "the retry started alone: {err}");
        } else {
            assert_eq!((st["attempts"].as_u64(), st["gpu_alone"].as_bool()), (Some(1), Some(false)), "{st}");
        }
        per_gpu
            .entry(gpu.to_string())
            .or_default()
            .push((st["start_time"].as_f64().unwrap(), st["end_time"].as_f64().unwrap()));
    }
    assert_eq!(per_gpu.len(), 2, "{per_gpu:?}");
    for (gpu, ivs) in &per_gpu {
        assert!(max_overlap(ivs) <= 3, "GPU {gpu} held {} runs at once", max_overlap(ivs));
    }
}

#[test]
fn a_second_scheduler_on_a_busy_sweep_is_exit_2_and_a_stale_lock_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let exp = tiny_experiment("busy", "").replace("steps = 12", "steps = 200");
    write(dir.path(), "exp.toml", &exp);
    let mut first = spawn(dir.path(), &["run", "exp.toml"], &[]);
    let lock = dir.path().join("runs/busy/.lock");
    let t0 = Instant::now();
    while !std::fs::read_to_string(&lock).unwrap_or_default().contains("pid") {
        assert!(t0.elapsed() < Duration::from_secs(30), "the first scheduler never took the lock");
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = vqlab(dir.path(), &["run", "exp.toml"]);
    assert_eq!(second.status.code(), Some(2), "{}", stderr(&second));
    let msg = stderr(&second);
    assert!(msg.contains("busy") && msg.contains(&format!("pid {}", first.id())), "{msg}");
    assert!(msg.contains(&vqlab::util::process::hostname()), "names the host: {msg}");
    // Stop the first one the way a terminal's Ctrl-C would.
    unsafe { libc::kill(first.id() as i32, libc::SIGINT) };
    let out = first.wait().unwrap();
    assert_eq!(out.code(), Some(130));
    // Its lock file stays behind, naming a process that is gone: no obstacle.
    assert!(lock.is_file());
    let again = vqlab(dir.path(), &["run", "exp.toml", "--set", "train.steps=200"]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
}

#[test]
fn ctrl_c_checkpoints_the_running_runs_and_the_next_run_resumes_them() {
    let dir = tempfile::tempdir().unwrap();
    let exp = tiny_experiment("ctrlc", "[hardware]\ncpu_slots = 2\n[sweep]\nseeds = [0, 1]")
        .replace("steps = 12", "steps = 400")
        .replace("checkpoint_every = 6", "checkpoint_every = 50")
        .replace("eval_every = 6", "eval_every = 200");
    write(dir.path(), "exp.toml", &exp);
    let child = spawn(dir.path(), &["run", "exp.toml"], &[]);
    let sweep = dir.path().join("runs/ctrlc");
    // Wait until both runs have made progress past a few steps.
    let t0 = Instant::now();
    loop {
        let progressed = sweep
            .read_dir()
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.path().join("status.json").is_file())
                    .filter(|e| status(&e.path())["progress_step"].as_u64().unwrap_or(0) >= 6)
                    .count()
            })
            .unwrap_or(0);
        if progressed == 2 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "runs made no progress");
        std::thread::sleep(Duration::from_millis(100));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    let mut stopped_at = Vec::new();
    for r in run_dirs(&sweep) {
        let st = status(&r);
        assert_eq!(st["state"], "interrupted", "{st}");
        assert!(st["reason"].as_str().unwrap().contains("checkpointed at step"), "{st}");
        let step = st["step"].as_u64().unwrap();
        assert!((6..400).contains(&step), "{st}");
        stopped_at.push(step);
    }
    let out = vqlab(dir.path(), &["run", "exp.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for (r, step) in run_dirs(&sweep).iter().zip(stopped_at) {
        let st = status(r);
        assert_eq!(st["state"], "done");
        assert_eq!(st["attempts"], 2);
        assert_eq!(st["failures"], 0, "an interruption is not a failure");
        let log = std::fs::read_to_string(r.join("train.log")).unwrap();
        assert!(log.contains(&format!("resuming from checkpoint at step {step}")), "{log}");
    }
}

#[test]
fn sigkill_of_scheduler_and_workers_then_resume_finishes_every_run_once() {
    let dir = tempfile::tempdir().unwrap();
    let exp = tiny_experiment("killall", "[hardware]\ncpu_slots = 2\n[sweep]\nseeds = [0, 1, 2, 3, 4, 5]")
        .replace("steps = 12", "steps = 60")
        .replace("checkpoint_every = 6", "checkpoint_every = 5")
        .replace("eval_every = 6", "eval_every = 30");
    write(dir.path(), "exp.toml", &exp);
    let sweep = dir.path().join("runs/killall");
    let child = spawn(dir.path(), &["run", "exp.toml"], &[]);
    // Wait until at least one run is done and others are running, then kill everything.
    let t0 = Instant::now();
    loop {
        let states: Vec<String> = sweep
            .read_dir()
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.path().join("status.json").is_file())
                    .map(|e| status(&e.path())["state"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default();
        if states.iter().any(|s| s == "done") && states.iter().any(|s| s == "running") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(180), "{states:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let workers: Vec<u32> = run_dirs(&sweep)
        .iter()
        .map(|r| status(r))
        .filter(|s| s["state"] == "running")
        .map(|s| s["pid"].as_u64().unwrap() as u32)
        .collect();
    unsafe {
        for pid in &workers {
            libc::kill(*pid as i32, libc::SIGKILL);
        }
        libc::kill(child.id() as i32, libc::SIGKILL);
    }
    let _ = child.wait_with_output();
    // SIGKILL is asynchronous: wait until the workers are gone (or zombies).
    for pid in &workers {
        wait_gone(*pid);
    }
    let done_before: Vec<PathBuf> = run_dirs(&sweep).into_iter().filter(|r| status(r)["state"] == "done").collect();
    assert!(!done_before.is_empty());
    let before: Vec<_> = done_before.iter().map(|r| file_digests(r, |_| true)).collect();
    // `vqlab status` names the runs whose worker is gone.
    let st = vqlab(dir.path(), &["status", "runs/killall"]);
    assert!(stdout(&st).contains("worker gone") || workers.is_empty(), "{}", stdout(&st));

    let out = vqlab(dir.path(), &["run", "exp.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for r in run_dirs(&sweep) {
        let st = status(&r);
        assert_eq!(st["state"], "done", "{st}");
    }
    for (r, b) in done_before.iter().zip(before) {
        assert_eq!(file_digests(r, |_| true), b, "{} was done before the kill and was touched", r.display());
    }
    // Every file readable: Parquet by pyarrow, JSON by serde.
    let mut parquet = Vec::new();
    for e in walkdir::WalkDir::new(&sweep).into_iter().filter_map(|e| e.ok()).filter(|e| e.file_type().is_file()) {
        let p = e.path();
        match p.extension().and_then(|x| x.to_str()) {
            Some("parquet") => parquet.push(p.as_os_str().to_owned()),
            Some("json") => {
                serde_json::from_slice::<serde_json::Value>(&std::fs::read(p).unwrap())
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            }
            _ => {}
        }
    }
    let args: Vec<&std::ffi::OsStr> = parquet.iter().map(|p| p.as_os_str()).collect();
    let pq = oracle("parquet_read.py", &args);
    for (k, v) in pq.as_object().unwrap() {
        assert!(v.get("error").is_none(), "{k}: {v}");
    }
    assert!(pq.as_object().unwrap().len() >= 7, "6 metrics files and results.parquet");
}

#[test]
fn a_failing_run_is_retried_up_to_the_limit_and_fail_fast_stops_the_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let exp = tiny_experiment("retry", "[launcher]\nmax_attempts = 2\n[sweep]\ngrid = { \"train.lr\" = [1e30, 1e-3] }");
    write(dir.path(), "exp.toml", &exp);
    let out = vqlab(dir.path(), &["run", "exp.toml"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let runs = run_dirs(&dir.path().join("runs/retry"));
    let states: Vec<serde_json::Value> = runs.iter().map(|r| status(r)).collect();
    let failed = states.iter().find(|s| s["state"] == "failed").expect("the huge-lr run fails");
    assert_eq!(failed["attempts"], 2);
    assert_eq!(failed["failures"], 2);
    assert!(states.iter().any(|s| s["state"] == "done"));
    // Run again: out of attempts, not retried; still exit 1.
    let out = vqlab(dir.path(), &["run", "exp.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not retried"), "{}", stderr(&out));

    let dir = tempfile::tempdir().unwrap();
    let exp = tiny_experiment("ff", "[sweep]\ngrid = { \"train.lr\" = [1e30, 1e-3, 2e-3] }");
    write(dir.path(), "exp.toml", &exp);
    let out = vqlab(dir.path(), &["run", "exp.toml", "--fail-fast"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let states: Vec<serde_json::Value> = run_dirs(&dir.path().join("runs/ff")).iter().map(|r| status(r)).collect();
    let failed: Vec<_> = states.iter().filter(|s| s["state"] == "failed").collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["attempts"], 1, "--fail-fast does not retry");
    assert!(states.iter().filter(|s| s["state"] == "pending").count() >= 1, "later runs never started: {states:?}");
}

#[test]
fn a_codebook_health_rule_stops_a_run_early() {
    let dir = tempfile::tempdir().unwrap();
    // Usage is at most 1, so `below = 1.01` fires at the first eval at or after step 6.
    let exp = tiny_experiment("early", "").replace(
        "checkpoint_every = 6",
        "checkpoint_every = 6\nearly_stop = [{ metric = \"val/usage\", below = 1.01, after_step = 6 }]",
    );
    write(dir.path(), "exp.toml", &exp);
    let out = vqlab(dir.path(), &["run", "exp.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let run = &run_dirs(&dir.path().join("runs/early"))[0];
    let st = status(run);
    assert_eq!(st["state"], "stopped_early");
    assert_eq!(st["step"], 6);
    assert!(st["reason"].as_str().unwrap().contains("val/usage"), "{st}");
    // A run that stops early is still measured once on the test split, at its last step.
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
    assert!(summary["eval/rec_mse"].is_number() && summary["val/usage"].is_number(), "{summary}");
    assert_eq!(summary["run.last_step"], 6);
    // It counts as finished: nothing to do the next time.
    let out = vqlab(dir.path(), &["run", "exp.toml"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(status(run)["attempts"], 1);
    // A rule on an unknown metric is bad input.
    let bad = tiny_experiment("early2", "").replace(
        "checkpoint_every = 6",
        "checkpoint_every = 6\nearly_stop = [{ metric = \"eval/usag\", below = 0.1 }]",
    );
    write(dir.path(), "bad.toml", &bad);
    let out = vqlab(dir.path(), &["run", "bad.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("train.early_stop"), "{}", stderr(&out));
    // A rule on a test-split metric would select on the test set: bad input, with the fix.
    let test_rule = tiny_experiment("early3", "").replace(
        "checkpoint_every = 6",
        "checkpoint_every = 6\nearly_stop = [{ metric = \"eval/usage\", below = 0.1 }]",
    );
    write(dir.path(), "test_rule.toml", &test_rule);
    let out = vqlab(dir.path(), &["run", "test_rule.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("train.early_stop") && err.contains("test split") && err.contains("use val/usage"), "{err}");
}
