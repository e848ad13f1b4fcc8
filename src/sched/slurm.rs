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

/// What was submitted (`<sweep>/.slurm/job.json`): array task i trains `runs[i]`; each
/// later stage's run whose parent was in the submission is a job of its own, held by Slurm
/// until its parent's task ended well (`--dependency=afterok:<job>_<task>`; a requeued
/// parent task keeps its id, so the hold survives requeues).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub job_id: String,
    pub runs: Vec<String>,
    pub submitted: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<ChildJob>,
}

/// A later stage's run submitted after its parent's task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildJob {
    pub job_id: String,
    pub run: String,
    /// The Slurm task it waits for: `<job>_<task>`.
    pub after: String,
}

impl Job {
    /// Every Slurm job id of the submission, comma-separated (what `squeue -j` takes).
    fn ids(&self) -> String {
        std::iter::once(self.job_id.as_str())
            .chain(self.children.iter().map(|c| c.job_id.as_str()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every run of the submission.
    fn all_runs(&self) -> impl Iterator<Item = &String> {
        self.runs.iter().chain(self.children.iter().map(|c| &c.run))
    }

    /// The run of a Slurm (array job id, task index).
    fn run_of(&self, job: &str, task: usize) -> Option<&String> {
        if job == self.job_id {
            return self.runs.get(task);
        }
        self.children.iter().find(|c| c.job_id == job).map(|c| &c.run)
    }
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

/// Slurm's view of the array tasks of jobs (comma-separated ids) still queued or running:
/// (array job id, task index) → (state, reason).
pub fn squeue(job_ids: &str) -> anyhow::Result<BTreeMap<(String, usize), (String, String)>> {
    let out = Command::new("squeue")
        .args(["-h", "-r", "-j", job_ids, "-o", "%F|%K|%T|%R"])
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
            let job = p.next()?.trim().to_string();
            // A job that is not an array (none here) has no task index: task 0.
            let task = p.next()?.trim().parse().unwrap_or(0);
            Some(((job, task), (p.next()?.to_string(), p.next().unwrap_or("").to_string())))
        })
        .collect())
}

/// Slurm's state of each run dir name of a submitted sweep (only tasks still in squeue).
pub fn run_view(sweep_dir: &Path) -> Option<(String, BTreeMap<String, String>)> {
    let job = read_job(sweep_dir)?;
    let tasks = squeue(&job.ids()).ok()?;
    let view = tasks
        .into_iter()
        .filter_map(|((id, i), (state, reason))| {
            let name = job.run_of(&id, i)?.clone();
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

/// Submit the runs `train` (by index; [`super::local::runs_to_train`] selects them): the
/// first-stage runs (and later-stage runs whose parent is already done) as one job array, and
/// each run whose parent is in that array as a job held until the parent's task ended well.
/// A run whose parent failed for good is marked skipped. With `dry_run`, print the script and
/// the holds.
pub fn submit(sweep_dir: &Path, sweep: &Sweep, train: &[usize], opts: &SlurmOptions) -> anyhow::Result<ExitStatus> {
    let cfg = &sweep.base.launcher.slurm;
    let max_parallel = if opts.max_parallel > 0 { opts.max_parallel } else { cfg.max_parallel as usize };
    let abs_sweep = std::path::absolute(sweep_dir)?;
    // Stages: a run waits for its parent when the parent trains in this submission.
    let in_train = |i: usize| train.contains(&i);
    let finished = |i: usize| super::local::planned_state(sweep_dir, &sweep.runs[i]).state.is_finished();
    let (mut first, mut held, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
    for &i in train {
        match sweep.parent_index(i) {
            None => first.push(i),
            Some(p) if finished(p) => first.push(i),
            Some(p) if in_train(p) => held.push((i, p)),
            Some(p) => skipped.push((i, p)),
        }
    }
    let dirs: Vec<PathBuf> = first.iter().map(|&i| abs_sweep.join(&sweep.runs[i].dir_name)).collect();
    let exe = std::env::current_exe().context("locating the vqlab executable")?;
    let script = render_script(&sweep.name, &abs_sweep, &dirs, cfg, max_parallel, &exe);
    let task_of = |p: usize| first.iter().position(|&f| f == p);
    if opts.dry_run {
        print!("{script}");
        for &(i, p) in &held {
            match task_of(p) {
                Some(t) => println!(
                    "# then {}: a job of its own, held until task {t} ({}) ends well (--dependency=afterok:<job>_{t})",
                    sweep.runs[i].dir_name, sweep.runs[p].dir_name
                ),
                None => println!("# then {}: after its parent {}", sweep.runs[i].dir_name, sweep.runs[p].dir_name),
            }
        }
        for &(i, p) in &skipped {
            println!("# {}: skipped, its parent {} failed for good", sweep.runs[i].dir_name, sweep.runs[p].dir_name);
        }
        println!("# dry run: {} run(s) would be submitted; nothing was", dirs.len() + held.len());
        return Ok(ExitStatus::Success);
    }
    for &(i, p) in &skipped {
        mark_skipped(&sweep_dir.join(&sweep.runs[i].dir_name), &sweep.runs[p].dir_name)?;
    }
    if dirs.is_empty() {
        println!("every run of {} is done or out of attempts: nothing to submit", sweep.name);
        return Ok(ExitStatus::from_failures(skipped.len()));
    }
    if let Some(job) = read_job(sweep_dir) {
        if squeue(&job.ids()).map(|t| !t.is_empty()).unwrap_or(false) {
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
    let job_id = sbatch(&script_path, None)?;
    let mut job = Job {
        job_id: job_id.clone(),
        runs: first.iter().map(|&i| sweep.runs[i].dir_name.clone()).collect(),
        submitted: timestamp_now(),
        children: Vec::new(),
    };
    // Children in sweep order: a parent always comes before its children.
    for &(i, p) in &held {
        let after = match task_of(p) {
            Some(t) => format!("{job_id}_{t}"),
            None => match job.children.iter().find(|c| c.run == sweep.runs[p].dir_name) {
                Some(c) => format!("{}_0", c.job_id),
                None => bail!("the parent of {} is in no job of this submission", sweep.runs[i].dir_name),
            },
        };
        let name = &sweep.runs[i].dir_name;
        let child_dir = abs_sweep.join(name);
        let child_script = render_script(&sweep.name, &abs_sweep, std::slice::from_ref(&child_dir), cfg, 0, &exe);
        let path = layout.slurm_dir().join(format!("{name}.sbatch"));
        write_atomic(&path, child_script.as_bytes())?;
        let id = sbatch(&path, Some(&after))?;
        job.children.push(ChildJob { job_id: id, run: name.clone(), after });
    }
    let mut bytes = serde_json::to_vec_pretty(&job)?;
    bytes.push(b'\n');
    write_atomic(&job_path(sweep_dir), &bytes)?;
    let held_text = if job.children.is_empty() {
        String::new()
    } else {
        format!(", and {} held until their parents end well", job.children.len())
    };
    println!(
        "submitted {} run(s) of {} as Slurm job array {job_id}{held_text} (script: {}); follow with `vqlab status {}`",
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

/// `sbatch --parsable` a script, held until `after` (a `<job>_<task>`) ends well; its job id.
/// A hold that can never be met (the parent failed) cancels the job (`--kill-on-invalid-dep`).
fn sbatch(script: &Path, after: Option<&str>) -> anyhow::Result<String> {
    let mut cmd = Command::new("sbatch");
    cmd.arg("--parsable");
    if let Some(a) = after {
        cmd.arg(format!("--dependency=afterok:{a}")).arg("--kill-on-invalid-dep=yes");
    }
    let out = cmd.arg(script).output().context("running sbatch (is Slurm installed and on PATH?)")?;
    if !out.status.success() {
        bail!("sbatch failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().split(';').next().unwrap_or("").to_string())
}

/// Record that a later stage's run was not trained because its parent failed for good.
fn mark_skipped(dir: &Path, parent: &str) -> anyhow::Result<()> {
    let mut st = RunStatus::read_or_pending(dir)?;
    st.mark_finished(RunState::Skipped, format!("parent failed: {parent}"));
    st.write(dir)
}

/// Follow a submitted array until Slurm has no task of it left, then tally the runs.
pub fn follow(sweep_dir: &Path, job: &Job) -> anyhow::Result<ExitStatus> {
    let t0 = Instant::now();
    let mut last_line = String::new();
    loop {
        let tasks = squeue(&job.ids())?;
        let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
        for name in job.all_runs() {
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
            // Slurm cancelled the held jobs whose parent failed: say so in their run dirs.
            for c in &job.children {
                let dir = sweep_dir.join(&c.run);
                if RunStatus::read_or_pending(&dir)?.state == RunState::Pending {
                    let parent =
                        job.all_runs().find(|r| c.run.starts_with(&format!("{r}-"))).cloned().unwrap_or_default();
                    mark_skipped(&dir, &parent)?;
                }
            }
            super::local::refresh_results(sweep_dir);
            let failed = job
                .all_runs()
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
