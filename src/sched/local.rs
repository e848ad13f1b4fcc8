//! The local launcher: materialise a sweep's run directories and train the pending runs over
//! the machine's slots, each as a child process `vqlab train RUN_DIR` holding one slot, with
//! its device in its environment and its output in the run's `train.log`, so a crashing run
//! cannot take the sweep down. State lives in the run dirs: kill the scheduler at any moment
//! and `vqlab run` again resumes the sweep.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use anyhow::Context;

use super::devices::{self, Demand, Slot};
use crate::config::{self, PlannedRun, Sweep};
use crate::error::InputError;
use crate::rundir::{RunDir, RunState, RunStatus, SweepDir, SLOT_ENV};
use crate::util::process as signals;
use crate::util::{timestamp_now, write_atomic};

/// Set in a worker's environment by the launcher: the worker's stderr already is train.log.
pub const WORKER_ENV: &str = "VQLAB_WORKER";

/// The state of a planned run as its directory says (pending when it has none).
pub fn planned_state(sweep_dir: &Path, run: &PlannedRun) -> RunStatus {
    SweepDir::new(sweep_dir).run(&run.dir_name).read_status_or_pending().unwrap_or_else(|_| RunStatus::pending())
}

/// Create the sweep dir, its provenance file, and a directory with `config.toml` and
/// `status.json` for every run that does not have one yet.
pub fn prepare(runs_dir: &Path, sweep: &Sweep, provenance: &str) -> anyhow::Result<PathBuf> {
    let layout = SweepDir::of(runs_dir, &sweep.name);
    let sweep_dir = layout.path().to_path_buf();
    std::fs::create_dir_all(&sweep_dir).with_context(|| format!("creating sweep directory {}", sweep_dir.display()))?;
    let mut text = String::new();
    for line in provenance.lines() {
        text.push_str(&format!("# {line}\n"));
    }
    text.push_str(&format!("# written {} by vqlab {}\n\n", timestamp_now(), env!("CARGO_PKG_VERSION")));
    text.push_str(&config::to_toml(&sweep.base));
    crate::util::remove_stale_temps(&sweep_dir);
    write_atomic(&layout.experiment_file(), text.as_bytes())?;
    for run in &sweep.runs {
        let run_dir = layout.run(&run.dir_name);
        let dir = run_dir.path();
        crate::util::refuse_symlinked_dir(dir)?;
        crate::util::remove_stale_temps(dir);
        let cfg_path = run_dir.config_file();
        if cfg_path.exists() && !run_dir.cell_file().exists() {
            run_dir.write_cell(&run.cell)?;
        }
        if cfg_path.exists() {
            // Same directory name means same id; check the file was not edited into another run.
            let existing = config::load_run_config(&cfg_path).map_err(|e| anyhow::anyhow!(e))?;
            if config::run_id(&existing) != run.id {
                return Err(InputError::file(
                    cfg_path,
                    format!("this run's config was edited: it no longer hashes to {}; move the directory away or restore the file", run.id),
                )
                .into());
            }
            continue;
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        run_dir.write_config(&run.id, &run.config)?;
        run_dir.write_cell(&run.cell)?;
        run_dir.write_status(&RunStatus::pending())?;
    }
    Ok(sweep_dir)
}

/// Refresh the sweep's results.parquet; a failure is logged, not fatal to the sweep.
pub fn refresh_results(sweep_dir: &Path) {
    let layout = SweepDir::new(sweep_dir);
    if let Err(e) = layout.write_results() {
        tracing::warn!("could not refresh {}: {e:#}", layout.results_file().display());
    }
}

/// Options of a local sweep.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    pub fail_fast: bool,
    pub max_attempts: u32,
    /// Cap on concurrent runs (0 = the slots decide).
    pub max_parallel: usize,
}

/// What happened to a run that was not already finished when the sweep started.
pub enum Next {
    Train,
    Skip,
    GaveUp,
}

/// Decide what to do with a run from its status. A `running` run whose worker is alive on
/// this host is waited for; one whose worker is gone resumes like an interrupted one.
pub fn next_step(dir: &Path, max_attempts: u32) -> anyhow::Result<Next> {
    let mut status = RunStatus::read_or_pending(dir)?;
    if status.worker_alive() {
        tracing::warn!("{}: its worker (pid {}) is still running; waiting for it to stop", dir.display(), status.pid);
        while signals::alive(status.pid) && signals::received() == 0 {
            std::thread::sleep(Duration::from_millis(200));
        }
        status = RunStatus::read_or_pending(dir)?;
    }
    Ok(decide(&status, max_attempts))
}

/// What a run's status asks for: nothing once finished, nothing more once its failures used
/// up `launcher.max_attempts`, training otherwise (pending, interrupted, failed with
/// attempts left, or running with its worker gone).
pub fn decide(status: &RunStatus, max_attempts: u32) -> Next {
    match status.state {
        s if s.is_finished() => Next::Skip,
        RunState::Failed if status.failures >= max_attempts => Next::GaveUp,
        _ => Next::Train,
    }
}

/// The runs of a sweep that still need training, by index, as [`decide`] tells from their run
/// dirs. With `wait_for_live_workers`, a run whose worker is still alive on this host is waited
/// for first ([`next_step`]); without, its status is read as it is (a dry run waits for nothing).
/// The Slurm dry run and the real submit both select with this.
pub fn runs_to_train(sweep_dir: &Path, sweep: &Sweep, wait_for_live_workers: bool) -> anyhow::Result<Vec<usize>> {
    let max_attempts = sweep.base.launcher.max_attempts;
    let layout = SweepDir::new(sweep_dir);
    let mut train = Vec::new();
    for (i, r) in sweep.runs.iter().enumerate() {
        let dir = layout.run(&r.dir_name);
        let next = if wait_for_live_workers {
            next_step(dir.path(), max_attempts)?
        } else {
            decide(&dir.read_status_or_pending().unwrap_or_else(|_| RunStatus::pending()), max_attempts)
        };
        if matches!(next, Next::Train) {
            train.push(i);
        }
    }
    Ok(train)
}

struct Running {
    child: Child,
    run: usize,
    slot: Slot,
    bar: Option<ProgressBar>,
}

/// Test hook: the memory (MiB) every run is estimated at, instead of `model::memory`'s estimate.
pub const FAKE_RUN_MEMORY_ENV: &str = "VQLAB_FAKE_RUN_MEMORY_MIB";

/// A failure reason that says the device ran out of memory (CUDA's and candle's wordings).
pub fn is_out_of_memory(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    r.contains("out of memory") || r.contains("out_of_memory")
}

/// What each run asks of a slot, indexed by run (runs not in `runs` ask nothing): its measured
/// peak from an earlier attempt, else the training memory estimate (computed only when GPUs
/// are packed by memory, once per distinct model); alone after an out-of-memory failure.
fn demands(sweep: &Sweep, dirs: &[PathBuf], runs: &[usize]) -> anyhow::Result<Vec<Demand>> {
    let by_memory = matches!(sweep.base.hardware.runs_per_gpu, config::RunsPerGpu::Auto(_));
    let fake = std::env::var(FAKE_RUN_MEMORY_ENV).ok().and_then(|m| m.parse::<u64>().ok());
    let mut estimates: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let mut out = vec![Demand { memory_mib: 0, alone: false }; dirs.len()];
    for &r in runs {
        let status = RunStatus::read_or_pending(&dirs[r])?;
        let memory_mib = match (status.peak_memory_mib, fake) {
            (Some(m), _) => m,
            (None, Some(f)) => f,
            (None, None) if by_memory => {
                let c = &sweep.runs[r].config;
                let key =
                    format!("{:?}{:?}{:?}{:?}", c.model, c.quantizer, c.loss, (c.data.image_size, c.train.batch_size));
                match estimates.get(&key) {
                    Some(m) => *m,
                    None => {
                        let m = (crate::model::memory::estimate_bytes(c)? / (1024.0 * 1024.0)).ceil() as u64;
                        estimates.insert(key, m);
                        m
                    }
                }
            }
            (None, None) => 0,
        };
        out[r] = Demand { memory_mib, alone: status.gpu_alone };
    }
    Ok(out)
}

/// The slots for training `runs` (by index) of a sweep, and what each run asks of a slot (by
/// run index): what a real sweep plans and what its dry run shows.
pub fn slot_plan(
    sweep_dir: &Path,
    sweep: &Sweep,
    runs: &[usize],
    max_parallel: usize,
) -> anyhow::Result<(Vec<Demand>, devices::Plan)> {
    let dirs: Vec<PathBuf> = sweep.runs.iter().map(|r| sweep_dir.join(&r.dir_name)).collect();
    let demand = demands(sweep, &dirs, runs)?;
    let plan = devices::plan(&sweep.base.hardware, &runs.iter().map(|r| demand[*r]).collect::<Vec<_>>(), max_parallel);
    Ok((demand, plan))
}

/// Train the sweep's unfinished runs on the given slots, the next run starting the moment a
/// slot frees. Returns the number of runs that ended failed.
pub fn run_sweep(sweep_dir: &Path, sweep: &Sweep, opts: &LocalOptions) -> anyhow::Result<usize> {
    let exe = std::env::current_exe().context("locating the vqlab executable")?;
    let total = sweep.runs.len();
    let dirs: Vec<PathBuf> = sweep.runs.iter().map(|r| sweep_dir.join(&r.dir_name)).collect();
    let mut queue: VecDeque<usize> = VecDeque::new();
    let (mut done, mut failed) = (0usize, 0usize);
    // How each run ended in this sweep: finished (true) or failed for good (false). A later
    // stage's run starts once its parent finished; it is skipped when the parent failed.
    let mut ended: Vec<Option<bool>> = vec![None; total];
    let parents: Vec<Option<usize>> = (0..total).map(|i| sweep.parent_index(i)).collect();
    for (i, dir) in dirs.iter().enumerate() {
        match next_step(dir, opts.max_attempts)? {
            Next::Skip => {
                done += 1;
                ended[i] = Some(true);
            }
            Next::GaveUp => {
                let st = RunStatus::read_or_pending(dir)?;
                tracing::warn!("{}: failed {} times, not retried: {}", sweep.runs[i].dir_name, st.failures, st.reason);
                failed += 1;
                ended[i] = Some(false);
            }
            Next::Train => queue.push_back(i),
        }
    }
    if done > 0 {
        tracing::info!("{done} of {total} runs already done: skipped");
    }
    let queued: Vec<usize> = queue.iter().copied().collect();
    let (mut demand, mut plan) = slot_plan(sweep_dir, sweep, &queued, opts.max_parallel)?;
    for w in &plan.warnings {
        tracing::warn!("{w}");
    }
    if queue.is_empty() {
        return Ok(failed);
    }
    tracing::info!("{} runs to train on {}", queue.len(), plan.description);
    let progress = Progress::new(total, done, failed, queue.len());
    let mut running: Vec<Running> = Vec::new();
    let mut stopping = false;
    let mut killed = false;
    loop {
        let signals_seen = signals::received();
        if signals_seen >= 1 && !stopping {
            stopping = true;
            progress.println("interrupt: telling the running runs to checkpoint and stop (again to kill them)");
            for r in &running {
                signals::send(r.child.id(), libc::SIGTERM);
            }
        }
        if signals_seen >= 2 && !killed {
            killed = true;
            progress.println("second interrupt: killing the running runs");
            for r in &running {
                signals::send(r.child.id(), libc::SIGKILL);
            }
        }
        // Runs whose parent failed for good are skipped (and their own children after them).
        while let Some(pos) = queue.iter().position(|&r| parents[r].is_some_and(|p| ended[p] == Some(false))) {
            let run = queue.remove(pos).expect("a queued run");
            let parent = parents[run].map(|p| sweep.runs[p].dir_name.clone()).unwrap_or_default();
            let mut st = RunStatus::read_or_pending(&dirs[run])?;
            st.mark_finished(RunState::Skipped, format!("parent failed: {parent}"));
            st.write(&dirs[run])?;
            ended[run] = Some(false);
            failed += 1;
            progress.println(&format!(
                "[{}/{total}] {}: skipped: parent failed ({parent})",
                run + 1,
                sweep.runs[run].dir_name
            ));
            progress.update(done, failed, queue.len() + running.len());
        }
        // Start queued runs, in order, while one fits and its parent (if any) is done: a run
        // that needs a whole GPU waits for one, and smaller runs behind it may start meanwhile.
        while let Some((pos, slot)) = if stopping {
            None
        } else {
            queue.iter().enumerate().find_map(|(pos, &r)| {
                let ready = parents[r].is_none_or(|p| ended[p] == Some(true));
                if ready {
                    plan.pool.acquire(demand[r]).map(|s| (pos, s))
                } else {
                    None
                }
            })
        } {
            // `pos` was just found by iterating this queue, so it is in range.
            let run = queue.remove(pos).expect("a queued run");
            let sharing = plan.pool.sharing(&slot);
            let child = spawn_worker(&exe, &dirs[run], &slot, plan.threads_per_run, sharing)?;
            let c = &sweep.runs[run].config;
            let bar = progress
                .add_run(&sweep.runs[run].dir_name, if c.prior.enabled { c.prior.steps } else { c.train.steps });
            let memory = match demand[run] {
                Demand { memory_mib: 0, .. } => String::new(),
                d => format!(", {} MiB{}", d.memory_mib, if d.alone { ", alone" } else { "" }),
            };
            progress.println(&format!(
                "[{}/{total}] {}: training on {} ({}{memory})",
                run + 1,
                sweep.runs[run].dir_name,
                slot.label(),
                config::short_description(&sweep.runs[run].config)
            ));
            running.push(Running { child, run, slot, bar });
        }
        if running.is_empty() && (queue.is_empty() || stopping) {
            break;
        }
        // Reap finished workers; refresh the bars of the others.
        let mut i = 0;
        while i < running.len() {
            let exited = running[i].child.try_wait()?;
            let Some(exit) = exited else {
                if let Some(bar) = &running[i].bar {
                    if let Ok(st) = RunStatus::read_or_pending(&dirs[running[i].run]) {
                        bar.set_position(st.progress_step.max(st.step));
                        if let Some(l) = st.loss {
                            bar.set_message(format!("rec_loss {l:.5}"));
                        }
                    }
                }
                i += 1;
                continue;
            };
            let r = running.swap_remove(i);
            plan.pool.release(&r.slot);
            let name = &sweep.runs[r.run].dir_name;
            let mut status = settle(&dirs[r.run], exit)?;
            // A retry or resume is packed by what the run measured, if it got that far.
            if let Some(m) = status.peak_memory_mib {
                demand[r.run].memory_mib = m;
            }
            if status.state == RunState::Failed
                && is_out_of_memory(&status.reason)
                && matches!(r.slot, Slot::Gpu { .. })
            {
                // Retried alone on a GPU (recorded, so a later scheduler does the same).
                demand[r.run].alone = true;
                if !status.gpu_alone {
                    status.gpu_alone = true;
                    status.write(&dirs[r.run])?;
                }
            }
            refresh_results(sweep_dir);
            if let Some(bar) = &r.bar {
                bar.finish_and_clear();
            }
            match status.state {
                RunState::Done | RunState::StoppedEarly => {
                    done += 1;
                    ended[r.run] = Some(true);
                    let what = if status.state == RunState::Done {
                        "done".to_string()
                    } else {
                        format!("stopped early: {}", status.reason)
                    };
                    progress.println(&format!("[{}/{total}] {name}: {what}", r.run + 1));
                }
                RunState::Interrupted | RunState::Running => {
                    progress.println(&format!("[{}/{total}] {name}: interrupted at step {}", r.run + 1, status.step));
                }
                _ => {
                    let retry = !stopping && status.failures < opts.max_attempts && !opts.fail_fast;
                    progress.println(&format!(
                        "[{}/{total}] {name}: failed (attempt {}, failure {} of {}): {} (log: {}){}",
                        r.run + 1,
                        status.attempts,
                        status.failures,
                        opts.max_attempts,
                        status.reason,
                        RunDir::new(&dirs[r.run]).log_file().display(),
                        if retry { "; retrying" } else { "" }
                    ));
                    if retry {
                        queue.push_back(r.run);
                    } else {
                        failed += 1;
                        ended[r.run] = Some(false);
                        if opts.fail_fast && !stopping {
                            progress.println("--fail-fast: stopping the sweep");
                            stopping = true;
                            queue.clear();
                            for other in &running {
                                signals::send(other.child.id(), libc::SIGTERM);
                            }
                        }
                    }
                }
            }
            progress.update(done, failed, queue.len() + running.len());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    progress.finish();
    if stopping && signals::received() > 0 {
        tracing::warn!("sweep interrupted: run `vqlab run` again to resume it");
    }
    Ok(failed)
}

/// Start `vqlab train RUN_DIR` on a slot: its device and thread count in its environment,
/// its output appended to train.log, and SIGTERM when the scheduler dies (so an orphaned
/// worker checkpoints and stops instead of racing the next scheduler).
fn spawn_worker(exe: &Path, dir: &Path, slot: &Slot, threads: usize, sharing: usize) -> anyhow::Result<Child> {
    use std::os::unix::process::CommandExt;
    let log_path = RunDir::new(dir).log_file();
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("train")
        .arg(dir)
        .env(WORKER_ENV, "1")
        .env(SLOT_ENV, slot.label())
        .env("CUDA_VISIBLE_DEVICES", slot.cuda_visible_devices())
        .env("RAYON_NUM_THREADS", threads.to_string())
        .env(crate::train::GPU_SHARING_ENV, sharing.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a terminal's Ctrl-C reaches the scheduler, which decides.
        .process_group(0);
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    cmd.spawn().with_context(|| format!("starting {} train {}", exe.display(), dir.display()))
}

/// The status a worker left, completed when it died without recording an outcome.
fn settle(dir: &Path, exit: std::process::ExitStatus) -> anyhow::Result<RunStatus> {
    let mut status = RunStatus::read_or_pending(dir)?;
    if status.state == RunState::Running || status.state == RunState::Pending {
        let how = match exit.code() {
            Some(c) => format!("exit code {c}"),
            None => {
                use std::os::unix::process::ExitStatusExt;
                format!("signal {}", exit.signal().unwrap_or(0))
            }
        };
        if signals::received() > 0 {
            status.mark_finished(RunState::Interrupted, format!("killed ({how}) at step {}", status.step));
        } else {
            status.mark_finished(
                RunState::Failed,
                format!("worker died ({how}) at step {}; see {}", status.step, RunDir::new(dir).log_file().display()),
            );
        }
        status.write(dir)?;
    }
    Ok(status)
}

/// indicatif bars when stderr is a terminal (one per running run, one overall); plain log
/// lines otherwise.
struct Progress {
    multi: Option<MultiProgress>,
    overall: Option<ProgressBar>,
    total: usize,
}

impl Progress {
    fn new(total: usize, done: usize, failed: usize, remaining: usize) -> Self {
        if !std::io::stderr().is_terminal() {
            return Progress { multi: None, overall: None, total };
        }
        let multi = MultiProgress::new();
        let overall = multi.add(ProgressBar::new(total as u64));
        overall.set_style(
            ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {msg} (ETA {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        overall.set_prefix("sweep");
        let p = Progress { multi: Some(multi), overall: Some(overall), total };
        p.update(done, failed, remaining);
        p
    }

    fn add_run(&self, name: &str, steps: u64) -> Option<ProgressBar> {
        let multi = self.multi.as_ref()?;
        let bar = multi.add(ProgressBar::new(steps));
        bar.set_style(
            ProgressStyle::with_template("{prefix:>24} [{bar:30}] {pos}/{len} steps {per_sec} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(name.to_string());
        Some(bar)
    }

    fn update(&self, done: usize, failed: usize, remaining: usize) {
        if let Some(o) = &self.overall {
            o.set_position((done + failed) as u64);
            o.set_message(format!("{done} done, {failed} failed, {remaining} remaining"));
        } else if done + failed > 0 {
            tracing::info!("sweep: {done} done, {failed} failed, {remaining} remaining of {}", self.total);
        }
    }

    fn println(&self, line: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(line);
            }
            None => tracing::info!("{line}"),
        }
    }

    fn finish(&self) {
        if let Some(o) = &self.overall {
            o.finish_and_clear();
        }
    }
}
