//! The Slurm launcher: the pending runs of a sweep become one job array. Each array task runs
//! `vqlab train` on its run dir. `vqlab run` submits with `sbatch` and returns at once: the
//! sweep lives in Slurm and the run dirs, not in the submitting shell. `--wait` follows it.
//!
//! Preemption, `scontrol requeue` and the time limit all end the same way. The worker gets
//! SIGTERM (the time limit arrives as SIGUSR1 120 s ahead, through `--signal=B:USR1@120`, and
//! the batch script turns it into SIGTERM and a requeue). It checkpoints and records
//! `interrupted`, and the requeued task resumes from that checkpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::config::{SlurmConfig, Sweep};
use crate::error::{ExitStatus, InputError};
use crate::rundir::{RunDir, RunState, RunStatus, SweepDir};
use crate::util::process as signals;
use crate::util::{timestamp_now, write_atomic};

/// What was submitted (`<sweep>/.slurm/job.json`): array task i trains `runs[i]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub job_id: String,
    pub runs: Vec<String>,
    pub submitted: String,
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The sbatch script of a job array over `run_dirs` (absolute paths).
pub fn render_script(
    sweep_name: &str,
    sweep_dir: &Path,
    run_dirs: &[PathBuf],
    cfg: &SlurmConfig,
    max_parallel: usize,
    exe: &Path,
) -> String {
    let mut s = String::from("#!/bin/bash\n");
    let mut sb = |line: String| s.push_str(&format!("#SBATCH {line}\n"));
    sb(format!("--job-name=vqlab-{sweep_name}"));
    let throttle = if max_parallel > 0 { format!("%{max_parallel}") } else { String::new() };
    sb(format!("--array=0-{}{throttle}", run_dirs.len().saturating_sub(1)));
    sb(format!("--output={}", SweepDir::new(sweep_dir).slurm_task_log_pattern().display()));
    sb("--open-mode=append".into());
    sb("--requeue".into());
    sb("--signal=B:USR1@120".into());
    if !cfg.partition.is_empty() {
        sb(format!("--partition={}", cfg.partition));
    }
    if !cfg.time.is_empty() {
        sb(format!("--time={}", cfg.time));
    }
    if !cfg.gres.is_empty() {
        sb(format!("--gres={}", cfg.gres));
    }
    if cfg.cpus_per_task > 0 {
        sb(format!("--cpus-per-task={}", cfg.cpus_per_task));
    }
    if !cfg.mem.is_empty() {
        sb(format!("--mem={}", cfg.mem));
    }
    for line in &cfg.extra {
        let l = line.trim();
        if l.starts_with("#SBATCH") {
            s.push_str(&format!("{l}\n"));
        } else {
            s.push_str(&format!("#SBATCH {l}\n"));
        }
    }
    s.push_str("\n# Written by vqlab: one array task per run dir; each runs `vqlab train` on it.\nset -u\nRUNS=(\n");
    for d in run_dirs {
        s.push_str(&format!("  {}\n", quote(&d.display().to_string())));
    }
    s.push_str(&format!(
        r#")
RUN="${{RUNS[$SLURM_ARRAY_TASK_ID]}}"
TASK="${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"
export VQLAB_WORKER=1 VQLAB_SLOT="slurm $TASK"
export RAYON_NUM_THREADS="${{SLURM_CPUS_PER_TASK:-$(nproc)}}"
requeue=0
child=0
# Time limit ahead (USR1): checkpoint, stop and requeue. Preemption or requeue (TERM): stop.
trap 'requeue=1; kill -TERM "$child" 2>/dev/null' USR1
trap 'kill -TERM "$child" 2>/dev/null' TERM
{exe} train "$RUN" >>"$RUN/{log}" 2>&1 &
child=$!
wait "$child"
rc=$?
# `wait` returns when a trapped signal arrives: wait for the worker's checkpoint.
while kill -0 "$child" 2>/dev/null; do
  wait "$child"
  rc=$?
done
if [ "$requeue" = 1 ]; then
  scontrol requeue "$TASK"
fi
exit "$rc"
"#,
        exe = quote(&exe.display().to_string()),
        log = RunDir::log_file_name(),
    ));
    s
}

fn job_path(sweep_dir: &Path) -> PathBuf {
    SweepDir::new(sweep_dir).slurm_job_file()
}

pub fn read_job(sweep_dir: &Path) -> Option<Job> {
    serde_json::from_slice(&std::fs::read(job_path(sweep_dir)).ok()?).ok()
}

/// Slurm's view of a job's array tasks still queued or running: task index → (state, reason).
pub fn squeue(job_id: &str) -> anyhow::Result<BTreeMap<usize, (String, String)>> {
    let out = Command::new("squeue")
        .args(["-h", "-r", "-j", job_id, "-o", "%K|%T|%R"])
        .output()
        .context("running squeue (is Slurm installed and SLURM_CONF set?)")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        // A finished job is unknown to squeue after MinJobAge.
        if err.contains("Invalid job id") {
            return Ok(BTreeMap::new());
        }
        bail!("squeue failed: {}", err.trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut p = l.split('|');
            let task = p.next()?.trim().parse().ok()?;
            Some((task, (p.next()?.to_string(), p.next().unwrap_or("").to_string())))
        })
        .collect())
}

/// Slurm's state of each run dir name of a submitted sweep (only tasks still in squeue).
pub fn run_view(sweep_dir: &Path) -> Option<(String, BTreeMap<String, String>)> {
    let job = read_job(sweep_dir)?;
    let tasks = squeue(&job.job_id).ok()?;
    let view = tasks
        .into_iter()
        .filter_map(|(i, (state, reason))| {
            let name = job.runs.get(i)?.clone();
            let reason = if reason.is_empty() || reason == "None" { String::new() } else { format!(" ({reason})") };
            Some((name, format!("{state}{reason}")))
        })
        .collect();
    Some((job.job_id, view))
}

pub struct SlurmOptions {
    pub max_parallel: usize,
    pub wait: bool,
    pub dry_run: bool,
}

/// Submit the runs `train` (by index; [`super::local::runs_to_train`] selects them) as one job
/// array, or with `dry_run` print its script.
pub fn submit(sweep_dir: &Path, sweep: &Sweep, train: &[usize], opts: &SlurmOptions) -> anyhow::Result<ExitStatus> {
    let cfg = &sweep.base.launcher.slurm;
    let max_parallel = if opts.max_parallel > 0 { opts.max_parallel } else { cfg.max_parallel as usize };
    let abs_sweep = std::path::absolute(sweep_dir)?;
    let dirs: Vec<PathBuf> = train.iter().map(|&i| abs_sweep.join(&sweep.runs[i].dir_name)).collect();
    let exe = std::env::current_exe().context("locating the vqlab executable")?;
    let script = render_script(&sweep.name, &abs_sweep, &dirs, cfg, max_parallel, &exe);
    if opts.dry_run {
        print!("{script}");
        println!("# dry run: {} run(s) would be submitted; nothing was", dirs.len());
        return Ok(ExitStatus::Success);
    }
    if dirs.is_empty() {
        println!("every run of {} is done or out of attempts: nothing to submit", sweep.name);
        return Ok(ExitStatus::Success);
    }
    if let Some(job) = read_job(sweep_dir) {
        if squeue(&job.job_id).map(|t| !t.is_empty()).unwrap_or(false) {
            return Err(InputError::file(
                sweep_dir,
                format!(
                    "the sweep is busy: Slurm job {} still has tasks queued or running (see `vqlab status {}`)",
                    job.job_id,
                    sweep_dir.display()
                ),
            )
            .into());
        }
    }
    let layout = SweepDir::new(sweep_dir);
    std::fs::create_dir_all(layout.slurm_dir())?;
    let script_path = layout.slurm_script();
    write_atomic(&script_path, script.as_bytes())?;
    let out = Command::new("sbatch")
        .arg("--parsable")
        .arg(&script_path)
        .output()
        .context("running sbatch (is Slurm installed and on PATH?)")?;
    if !out.status.success() {
        bail!("sbatch failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let job_id = String::from_utf8_lossy(&out.stdout).trim().split(';').next().unwrap_or("").to_string();
    let job = Job {
        job_id: job_id.clone(),
        runs: train.iter().map(|&i| sweep.runs[i].dir_name.clone()).collect(),
        submitted: timestamp_now(),
    };
    let mut bytes = serde_json::to_vec_pretty(&job)?;
    bytes.push(b'\n');
    write_atomic(&job_path(sweep_dir), &bytes)?;
    println!(
        "submitted {} run(s) of {} as Slurm job array {job_id} (script: {}); follow with `vqlab status {}`",
        dirs.len(),
        sweep.name,
        script_path.display(),
        sweep_dir.display()
    );
    if !opts.wait {
        return Ok(ExitStatus::Success);
    }
    follow(sweep_dir, &job)
}

/// Follow a submitted array until Slurm has no task of it left, then tally the runs.
pub fn follow(sweep_dir: &Path, job: &Job) -> anyhow::Result<ExitStatus> {
    let t0 = Instant::now();
    let mut last_line = String::new();
    loop {
        let tasks = squeue(&job.job_id)?;
        let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
        for name in &job.runs {
            let st = RunStatus::read_or_pending(&sweep_dir.join(name))?;
            *counts.entry(st.state.name()).or_default() += 1;
        }
        let line = format!(
            "job {}: {} task(s) in Slurm; runs: {}",
            job.job_id,
            tasks.len(),
            counts.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", ")
        );
        if line != last_line {
            tracing::info!("{line} ({:.0}s)", t0.elapsed().as_secs_f64());
            last_line = line;
        }
        if tasks.is_empty() {
            super::local::refresh_results(sweep_dir);
            let failed = job
                .runs
                .iter()
                .filter(|n| {
                    RunStatus::read_or_pending(&sweep_dir.join(n))
                        .map(|s| !matches!(s.state, RunState::Done | RunState::StoppedEarly))
                        .unwrap_or(true)
                })
                .count();
            return Ok(ExitStatus::from_failures(failed));
        }
        if signals::received() > 0 {
            tracing::warn!("stopped following job {} (it keeps running in Slurm)", job.job_id);
            return Ok(ExitStatus::Interrupted);
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}
