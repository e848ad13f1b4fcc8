//! Hardening: nothing an experiment file says writes outside the runs dir, datasets are only
//! read, random SIGKILLs lose and repeat nothing, a full disk fails only the run that hits it,
//! a corrupted checkpoint is detected and survived, bad datasets are named.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use rand::{Rng, SeedableRng};

use crate::common::{file_digests, run_dirs, status, stderr, tiny_experiment, vqlab, wait_gone, write};

/// Path → (modified time, bytes) of every file under `dir` but temporary ones.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (SystemTime, Vec<u8>)> {
    file_digests(dir, |p| !is_temp(p))
}

/// A temporary file of an atomic write (`.<name>.tmp-<pid>`).
fn is_temp(p: &Path) -> bool {
    p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.') && n.to_string_lossy().contains(".tmp-"))
}

#[test]
fn names_and_symlinks_cannot_send_writes_outside_the_runs_dir() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for name in ["../../x", "/tmp/abs", "a/b", "..", ".hidden", "a\\b"] {
        write(d, "exp.toml", &tiny_experiment(name, ""));
        let out = vqlab(d, &["run", "exp.toml"]);
        assert_eq!(out.status.code(), Some(2), "{name}: {}", stderr(&out));
        assert!(stderr(&out).contains("key `experiment.name`"), "{name}: {}", stderr(&out));
    }
    assert!(!d.join("runs").exists(), "nothing created for a rejected name");
    // --set cannot smuggle a path in either.
    write(d, "exp.toml", &tiny_experiment("ok", ""));
    let out = vqlab(d, &["plan", "exp.toml", "--set", "experiment.name=../escape"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--set experiment.name=../escape"), "{}", stderr(&out));

    // A run dir replaced by a symlink to a directory elsewhere: refused, elsewhere untouched.
    let out = vqlab(d, &["run", "exp.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let run = run_dirs(&d.join("runs/ok")).remove(0);
    let elsewhere = d.join("elsewhere");
    std::fs::rename(&run, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &run).unwrap();
    let before = snapshot(&elsewhere);
    let out = vqlab(d, &["run", "exp.toml"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("is a symbolic link") && stderr(&out).contains("elsewhere"), "{}", stderr(&out));
    assert_eq!(snapshot(&elsewhere), before, "nothing written through the link");

    // A run's samples/ linked elsewhere: the run fails with that reason before writing.
    std::fs::remove_file(&run).unwrap();
    let outside = d.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    write(d, "exp15.toml", &tiny_experiment("ok", "").replace("steps = 12", "steps = 15"));
    let out = vqlab(d, &["run", "exp15.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let run15 = run_dirs(&d.join("runs/ok")).into_iter().find(|r| status(r)["state"] == "done").unwrap();
    let mut st = status(&run15);
    st["state"] = "interrupted".into();
    std::fs::write(run15.join("status.json"), serde_json::to_vec(&st).unwrap()).unwrap();
    std::fs::remove_dir_all(run15.join("samples")).unwrap();
    std::os::unix::fs::symlink(&outside, run15.join("samples")).unwrap();
    let out = vqlab(d, &["train", run15.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let st = status(&run15);
    assert_eq!(st["state"], "failed");
    assert!(st["reason"].as_str().unwrap().contains("samples: is a symbolic link"), "{st}");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "nothing written through the link");
}

#[test]
fn a_dataset_is_only_read() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("images");
    for class in ["a", "b"] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for i in 0..12 {
            let v = if class == "a" { 30 } else { 200 } + i as u8;
            image::RgbImage::from_pixel(16, 16, image::Rgb([v, v / 2, 255 - v]))
                .save(data.join(class).join(format!("{i}.png")))
                .unwrap();
        }
    }
    let before = snapshot(&data);
    let exp = tiny_experiment("folder", "")
        .replace(
            "dataset = \"synthetic\"",
            &format!("dataset = \"folder\"\npath = \"{}\"\nimage_size = 16", data.display()),
        )
        .replace("train_images = 256", "train_images = 0")
        .replace("eval_images = 64", "eval_images = 4");
    write(dir.path(), "exp.toml", &exp);
    let out = vqlab(dir.path(), &["run", "exp.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(snapshot(&data), before, "the dataset directory is unchanged: no file added, changed or touched");

    // One undecodable image: the run is refused before anything trains, naming the file.
    std::fs::write(data.join("b/broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let out = vqlab(dir.path(), &["run", "exp.toml", "--set", "train.steps=18"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("broken.png: cannot decode image"), "{}", stderr(&out));
}

/// An IDX file pair with zero images.
fn empty_idx(dir: &Path, stem: &str) {
    let mut images = vec![0, 0, 8, 3];
    images.extend(0u32.to_be_bytes());
    images.extend(28u32.to_be_bytes());
    images.extend(28u32.to_be_bytes());
    std::fs::write(dir.join(format!("{stem}-images-idx3-ubyte")), images).unwrap();
    let mut labels = vec![0, 0, 8, 1];
    labels.extend(0u32.to_be_bytes());
    std::fs::write(dir.join(format!("{stem}-labels-idx1-ubyte")), labels).unwrap();
}

#[test]
fn a_dataset_with_zero_images_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fm");
    std::fs::create_dir_all(&data).unwrap();
    empty_idx(&data, "train");
    empty_idx(&data, "t10k");
    let exp = tiny_experiment("empty", "")
        .replace("dataset = \"synthetic\"", &format!("dataset = \"fashion-mnist\"\npath = \"{}\"", data.display()));
    write(dir.path(), "exp.toml", &exp);
    let out = vqlab(dir.path(), &["run", "exp.toml"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains(&data.display().to_string()) && stderr(&out).contains("no"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panic"));
}

#[test]
fn a_corrupted_checkpoint_falls_back_to_the_previous_then_to_a_fresh_start() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "exp.toml", &tiny_experiment("ckpt", "").replace("checkpoint_every = 6", "checkpoint_every = 4"));
    let out = vqlab(dir.path(), &["run", "exp.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let run = run_dirs(&dir.path().join("runs/ckpt")).remove(0);
    let ckpt = run.join("checkpoints");
    let reopen = |run: &Path| {
        let mut st = status(run);
        st["state"] = "interrupted".into();
        std::fs::write(run.join("status.json"), serde_json::to_vec(&st).unwrap()).unwrap();
    };
    let flip = |p: &Path, from_end: usize| {
        let mut bytes = std::fs::read(p).unwrap();
        let n = bytes.len();
        bytes[n - from_end] ^= 0x5a; // inside the tensor data, past the header
        std::fs::write(p, bytes).unwrap();
    };
    // last = step 12, previous = step 8. Corrupt last: resume from previous, say so.
    reopen(&run);
    flip(&ckpt.join("last.safetensors"), 100);
    let out = vqlab(dir.path(), &["train", run.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let log = std::fs::read_to_string(run.join("train.log")).unwrap();
    assert!(log.contains("last.safetensors: checksum mismatch"), "{log}");
    assert!(log.contains("falling back to previous.safetensors at step 8"), "{log}");
    assert!(log.contains("resuming from checkpoint at step 8"), "{log}");
    assert_eq!(status(&run)["state"], "done");
    // The corrupted last was not kept as the new previous: previous is the good step 8.
    assert!(log.contains("not keeping a corrupted checkpoint as previous.safetensors"), "{log}");
    let previous =
        vqlab::train::checkpoint::read(&ckpt.join("previous.safetensors"), &candle_core::Device::Cpu).unwrap();
    assert_eq!(previous.step, 8);

    // Both corrupted: start afresh, say so, and finish.
    reopen(&run);
    flip(&ckpt.join("last.safetensors"), 100);
    flip(&ckpt.join("previous.safetensors"), 100);
    let out = vqlab(dir.path(), &["train", run.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let log = std::fs::read_to_string(run.join("train.log")).unwrap();
    assert!(log.contains("previous.safetensors: checksum mismatch"), "{log}");
    assert!(log.contains("no readable checkpoint left: starting afresh from step 0"), "{log}");
    assert_eq!(status(&run)["state"], "done");
    // The metrics of the fresh attempt replace the old ones: one row per step and metric.
    let rows = vqlab::metrics::log::read_rows(&run.join("metrics.parquet")).unwrap();
    let rec: Vec<i64> = rows.iter().filter(|r| r.split == "train" && r.metric == "rec_loss").map(|r| r.step).collect();
    assert_eq!(rec, vec![3, 6, 9, 12], "{rec:?}");
}

/// Everything a finished run holds, checked by reading it back: (files verified, problems).
/// Right after a SIGKILL, the temporary file of a write the kill interrupted may remain
/// (`temps_allowed`); the next `vqlab run` removes it.
fn verify_run(run: &Path, temps_allowed: bool) -> (usize, Vec<String>) {
    let mut problems = Vec::new();
    let mut files = 0;
    for e in walkdir::WalkDir::new(run).into_iter().filter_map(|e| e.ok()).filter(|e| e.file_type().is_file()) {
        let p = e.path();
        files += 1;
        if is_temp(p) {
            if !temps_allowed {
                problems.push(format!("temporary file left: {}", p.display()));
            }
            continue;
        }
        let ok = match p.extension().and_then(|x| x.to_str()) {
            Some("json") => serde_json::from_slice::<serde_json::Value>(&std::fs::read(p).unwrap()).is_ok(),
            Some("parquet") => vqlab::metrics::log::read_rows(p).is_ok(),
            Some("png") => image::open(p).is_ok(),
            Some("safetensors") => vqlab::train::checkpoint::read(p, &candle_core::Device::Cpu).is_ok(),
            Some("toml") => vqlab::config::load_run_config(p).is_ok(),
            _ => true,
        };
        if !ok {
            problems.push(format!("unreadable: {}", p.display()));
        }
    }
    for required in ["summary.json", "metrics.parquet", "config.toml", "status.json", "checkpoints/last.safetensors"] {
        if !run.join(required).is_file() {
            problems.push(format!("missing {required} in {}", run.display()));
        }
    }
    (files, problems)
}

#[test]
fn twenty_four_sigkills_at_random_moments_lose_nothing_and_rerun_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let exp =
        tiny_experiment("chaos", "[hardware]\ncpu_slots = 2\n[sweep]\nseeds = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]")
            .replace("steps = 12", "steps = 3000")
            .replace("checkpoint_every = 6", "checkpoint_every = 150")
            .replace("log_every = 3", "log_every = 150")
            .replace("eval_every = 6", "eval_every = 1500");
    write(dir.path(), "exp.toml", &exp);
    let sweep = dir.path().join("runs/chaos");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(20261125);
    // A finished run's files, by run: they must never change again.
    let mut finished: BTreeMap<PathBuf, BTreeMap<PathBuf, (SystemTime, Vec<u8>)>> = BTreeMap::new();
    let (mut kills, mut trials, mut verified) = (0, 0, 0);
    for trial in 0..24 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vqlab"))
            .args(["run", "exp.toml"])
            .current_dir(dir.path())
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // From mid-start-up to well into training.
        let wait = Duration::from_millis(rng.random_range(20..2000));
        std::thread::sleep(wait);
        if child.try_wait().unwrap().is_some() {
            break; // the sweep finished before this kill
        }
        // Kill the scheduler and, in most trials, its workers at the same instant (otherwise
        // the workers get SIGTERM from the kernel when their parent dies and checkpoint).
        let workers: Vec<u32> = if rng.random_bool(0.75) { crate::common::running_workers(&sweep) } else { Vec::new() };
        unsafe {
            libc::kill(child.id() as i32, libc::SIGKILL);
            for pid in &workers {
                libc::kill(*pid as i32, libc::SIGKILL);
            }
        }
        kills += 1 + workers.len();
        trials += 1;
        let _ = child.wait();
        for pid in &workers {
            wait_gone(*pid);
        }
        // A worker left alive gets SIGTERM through PDEATHSIG; let it checkpoint and exit.
        std::thread::sleep(Duration::from_millis(300));
        for run in run_dirs(&sweep) {
            if status(&run)["state"] != "done" {
                continue;
            }
            let snap = snapshot(&run);
            match finished.get(&run) {
                Some(before) => {
                    // status.json may be rewritten by nothing; every file byte-identical, same mtime.
                    assert_eq!(before, &snap, "trial {trial}: {} was finished and changed (ran twice?)", run.display());
                }
                None => {
                    let (files, problems) = verify_run(&run, true);
                    assert!(problems.is_empty(), "trial {trial} (killed after {wait:?}): {problems:?}");
                    verified += files;
                    finished.insert(run, snap);
                }
            }
        }
    }
    let out = vqlab(dir.path(), &["run", "exp.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for run in run_dirs(&sweep) {
        let st = status(&run);
        assert_eq!(st["state"], "done", "{st}");
        assert_eq!(st["failures"], 0, "a kill is not a failure: {st}");
        match finished.get(&run) {
            Some(before) => assert_eq!(before, &snapshot(&run), "{} ran again", run.display()),
            None => {
                let (files, problems) = verify_run(&run, false);
                assert!(problems.is_empty(), "{problems:?}");
                verified += files;
            }
        }
    }
    // After the last `vqlab run`, no temporary file is left anywhere in the sweep.
    let temps: Vec<PathBuf> = walkdir::WalkDir::new(&sweep)
        .into_iter()
        .filter_map(|e| e.ok())
        .map(|e| e.into_path())
        .filter(|p| is_temp(p))
        .collect();
    assert!(temps.is_empty(), "{temps:?}");
    let results = std::fs::File::open(sweep.join("results.parquet")).unwrap();
    use polars::prelude::SerReader;
    let df = polars::prelude::ParquetReader::new(results).finish().unwrap();
    assert_eq!(df.height(), 12);
    eprintln!("chaos: {trials} trials killed {kills} processes (scheduler and workers); {verified} files verified");
    assert!(trials >= 20, "at least 20 kills landed mid-sweep: {trials}");
}

/// A size-limited filesystem for the runs dir: tmpfs when this user may mount (root in CI),
/// else None.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk(dir.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_the_run_that_hits_it_and_corrupts_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    // Two runs: a tiny one, and one whose checkpoint (weights + Adam moments, ~30 MB) cannot fit.
    let exp = tiny_experiment(
        "disk",
        "[launcher]\nmax_attempts = 1\n[sweep]\ngrid = { \"model.hidden_channels\" = [16, 384] }",
    )
    .replace("steps = 12", "steps = 6");
    write(dir.path(), "exp.toml", &exp);
    let runs = dir.path().join("runs");
    let disk = SmallDisk::mount(&runs, "12m");
    let out = if disk.is_some() {
        vqlab(dir.path(), &["run", "exp.toml"])
    } else {
        // No mount allowed: a 12 MiB file-size limit instead (vqlab ignores SIGXFSZ, so the
        // write fails with EFBIG and names the file).
        let o = Command::new("sh")
            .args(["-c", &format!("ulimit -f 24576; exec {} run exp.toml", env!("CARGO_BIN_EXE_vqlab"))])
            .current_dir(dir.path())
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        o
    };
    assert_eq!(out.status.code(), Some(1), "one run failed: {}", stderr(&out));
    let sweep = runs.join("disk");
    let (mut small, mut big) = (None, None);
    for run in run_dirs(&sweep) {
        let hidden = vqlab::config::load_run_config(&run.join("config.toml")).unwrap().model.hidden_channels;
        if hidden == 16 {
            small = Some(run)
        } else {
            big = Some(run)
        }
    }
    let (small, big) = (small.unwrap(), big.unwrap());
    let st = status(&big);
    assert_eq!(st["state"], "failed", "{st}");
    let reason = st["reason"].as_str().unwrap();
    assert!(reason.contains("No space left on device") || reason.contains("File too large"), "{reason}");
    assert!(reason.contains("checkpoints"), "the reason names the file: {reason}");
    assert_eq!(status(&small)["state"], "done");
    let (files, problems) = verify_run(&small, false);
    assert!(problems.is_empty() && files > 5, "{problems:?}");
    // The failed run left no temporary file; its own files are readable as far as they go.
    for e in walkdir::WalkDir::new(&big).into_iter().filter_map(|e| e.ok()).filter(|e| e.file_type().is_file()) {
        assert!(!e.file_name().to_string_lossy().contains(".tmp-"), "{}", e.path().display());
    }
    serde_json::from_slice::<serde_json::Value>(&std::fs::read(big.join("status.json")).unwrap()).unwrap();
    drop(disk);
}
