//! The local launcher: materialise a sweep's run directories and train the pending runs, each
//! as a child process `vqlab train RUN_DIR` whose output goes to the run's `train.log`, so a
//! crashing run cannot take the sweep down.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;

use super::state::{RunState, RunStatus, CONFIG_FILE};
use crate::config::{self, PlannedRun, Sweep};
use crate::error::InputError;
use crate::fsutil::{timestamp_now, write_atomic};

pub const EXPERIMENT_FILE: &str = "experiment.toml";
pub const LOG_FILE: &str = "train.log";
/// Set in a worker's environment by the launcher: the worker's stderr already is train.log.
pub const WORKER_ENV: &str = "VQLAB_WORKER";

/// The state of a planned run as its directory says (pending when it has none).
pub fn planned_state(sweep_dir: &Path, run: &PlannedRun) -> RunStatus {
    RunStatus::read_or_pending(&sweep_dir.join(&run.dir_name)).unwrap_or_else(|_| RunStatus::pending())
}

/// Create the sweep dir, its provenance file, and a directory with `config.toml` and
/// `status.json` for every run that does not have one yet.
pub fn prepare(runs_dir: &Path, sweep: &Sweep, provenance: &str) -> anyhow::Result<PathBuf> {
    let sweep_dir = runs_dir.join(&sweep.name);
    std::fs::create_dir_all(&sweep_dir).with_context(|| format!("creating sweep directory {}", sweep_dir.display()))?;
    let mut text = String::new();
    for line in provenance.lines() {
        text.push_str(&format!("# {line}\n"));
    }
    text.push_str(&format!("# written {} by vqlab {}\n\n", timestamp_now(), env!("CARGO_PKG_VERSION")));
    text.push_str(&config::to_toml(&sweep.base));
    write_atomic(&sweep_dir.join(EXPERIMENT_FILE), text.as_bytes())?;
    for run in &sweep.runs {
        let dir = sweep_dir.join(&run.dir_name);
        let cfg_path = dir.join(CONFIG_FILE);
        let cell_path = dir.join(crate::train::CELL_FILE);
        if cfg_path.exists() && !cell_path.exists() {
            write_cell(&cell_path, run)?;
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
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let body = format!(
            "# Resolved config of run {} — the only input of `vqlab train {}`.\n\n{}",
            run.id,
            dir.display(),
            config::to_toml(&run.config)
        );
        write_atomic(&cfg_path, body.as_bytes())?;
        write_cell(&cell_path, run)?;
        RunStatus::pending().write(&dir)?;
    }
    Ok(sweep_dir)
}

/// `cell.json`: the keys this run's sweep varies and their values in this run.
fn write_cell(path: &Path, run: &PlannedRun) -> anyhow::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(&run.cell)?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Refresh the sweep's results.parquet; a failure is logged, not fatal to the sweep.
pub fn refresh_results(sweep_dir: &Path) {
    if let Err(e) = crate::metrics::results::write_results(sweep_dir) {
        tracing::warn!("could not refresh {}: {e:#}", sweep_dir.join(crate::metrics::results::RESULTS_FILE).display());
    }
}

/// Options of a local sweep.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    pub fail_fast: bool,
    pub max_attempts: u32,
}

/// Train the sweep's unfinished runs one after another. Returns the number of failed runs.
pub fn run_sweep(sweep_dir: &Path, sweep: &Sweep, opts: &LocalOptions) -> anyhow::Result<usize> {
    let exe = std::env::current_exe().context("locating the vqlab executable")?;
    let total = sweep.runs.len();
    let mut failed = 0;
    for (i, run) in sweep.runs.iter().enumerate() {
        let dir = sweep_dir.join(&run.dir_name);
        let status = RunStatus::read_or_pending(&dir)?;
        if status.state.is_finished() {
            tracing::info!("[{}/{total}] {}: {}, skipped", i + 1, run.dir_name, status.state.name());
            continue;
        }
        if status.state == RunState::Failed && status.attempts >= opts.max_attempts {
            tracing::warn!(
                "[{}/{total}] {}: failed {} times, not retried: {}",
                i + 1,
                run.dir_name,
                status.attempts,
                status.reason
            );
            failed += 1;
            continue;
        }
        tracing::info!("[{}/{total}] {}: training ({})", i + 1, run.dir_name, config::short_description(&run.config));
        let outcome = run_child(&exe, &dir)?;
        refresh_results(sweep_dir);
        match outcome.state {
            RunState::Done | RunState::StoppedEarly => {
                tracing::info!("[{}/{total}] {}: {}", i + 1, run.dir_name, outcome.state.name())
            }
            _ => {
                failed += 1;
                tracing::error!(
                    "[{}/{total}] {}: {}: {} (log: {})",
                    i + 1,
                    run.dir_name,
                    outcome.state.name(),
                    outcome.reason,
                    dir.join(LOG_FILE).display()
                );
                if opts.fail_fast {
                    tracing::error!("--fail-fast: stopping the sweep");
                    break;
                }
            }
        }
    }
    Ok(failed)
}

/// Run one worker and return the status it left (or the reason it died without one).
fn run_child(exe: &Path, dir: &Path) -> anyhow::Result<RunStatus> {
    let log_path = dir.join(LOG_FILE);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut child = Command::new(exe)
        .arg("train")
        .arg(dir)
        .env(WORKER_ENV, "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {} train {}", exe.display(), dir.display()))?;
    let exit = child.wait()?;
    let mut status = RunStatus::read_or_pending(dir)?;
    if !status.state.is_finished() && status.state != RunState::Failed {
        // The worker died without recording an outcome (a crash or a signal).
        let how = match exit.code() {
            Some(c) => format!("exit code {c}"),
            None => {
                use std::os::unix::process::ExitStatusExt;
                format!("signal {}", exit.signal().unwrap_or(0))
            }
        };
        status.mark_finished(
            RunState::Failed,
            format!("worker died ({how}) at step {}; see {}", status.step, log_path.display()),
        );
        status.write(dir)?;
    }
    Ok(status)
}

/// The run directories of a sweep dir (those with a status.json), sorted by name.
pub fn run_dirs(sweep_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(sweep_dir)
        .with_context(|| format!("reading {}", sweep_dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join(super::state::STATUS_FILE).is_file())
        .collect();
    dirs.sort();
    Ok(dirs)
}
