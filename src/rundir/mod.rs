//! The on-disk layout of a sweep and its runs, and the only module that names their files
//! (cargo's `Layout` is the model). Everything else asks a [`SweepDir`] or a [`RunDir`] for a
//! path, and reads and writes the typed files through them: `status.json` ([`RunStatus`]),
//! `summary.json`, `cell.json`, the sweep lock ([`SweepLock`]) and `results.parquet`.
//! [`RunRecord`] is the one reader of a whole run dir, shared by `vqlab status`, the sweep's
//! results table and the reports.
//!
//! ```text
//! <runs-dir>/
//!   .cache/features/          feature networks of the FID-style scores (VQLAB_CACHE_DIR moves it)
//!   <experiment>/             a sweep dir
//!     experiment.toml         the resolved experiment, with the command that made it
//!     results.parquet         one row per run (config, state, final metrics)
//!     .lock                   held by the sweep's scheduler
//!     .slurm/                 job.json, array.sbatch, one log per array task
//!     <run>/                  a run dir: <variant>-K<size>-s<seed>-<id>
//!       config.toml           the run's resolved config: the only input of `vqlab train`
//!       cell.json             the swept keys and their values in this run
//!       status.json           state, attempts, device, reason
//!       train.log             the worker's log
//!       metrics.parquet       every logged value (step, split, metric, value)
//!       summary.json          final metrics and provenance, once finished
//!       tb/                   TensorBoard event files
//!       samples/              reconstruction grids, step_0001000.png
//!       checkpoints/          last, previous and best .safetensors
//! ```

mod lock;
mod record;
mod results;
mod status;

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{Map, Value};

pub use lock::SweepLock;
pub use record::RunRecord;
pub use results::results_frame;
pub use status::{status_fields_table, RunState, RunStatus, SLOT_ENV, STATUS_FIELDS};

use crate::util::write_atomic;

const EXPERIMENT_FILE: &str = "experiment.toml";
const RESULTS_FILE: &str = "results.parquet";
const LOCK_FILE: &str = ".lock";
const SLURM_DIR: &str = ".slurm";
const SLURM_JOB_FILE: &str = "job.json";
const SLURM_SCRIPT_FILE: &str = "array.sbatch";
const CACHE_DIR: &str = ".cache";
const FEATURES_DIR: &str = "features";
/// Overrides `<runs-dir>/.cache` (a cache shared by several runs dirs).
pub const CACHE_DIR_ENV: &str = "VQLAB_CACHE_DIR";

const CONFIG_FILE: &str = "config.toml";
const CELL_FILE: &str = "cell.json";
const STATUS_FILE: &str = "status.json";
const SUMMARY_FILE: &str = "summary.json";
const LOG_FILE: &str = "train.log";
const METRICS_FILE: &str = "metrics.parquet";
const TB_DIR: &str = "tb";
const SAMPLES_DIR: &str = "samples";
const CHECKPOINTS_DIR: &str = "checkpoints";
const LAST_CHECKPOINT: &str = "last.safetensors";
const PREVIOUS_CHECKPOINT: &str = "previous.safetensors";
const BEST_CHECKPOINT: &str = "best.safetensors";
const BRANCH_CHECKPOINT: &str = "branch.safetensors";
const CODES_FILE: &str = "codes.safetensors";

/// A sweep directory: `<runs-dir>/<experiment name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepDir {
    path: PathBuf,
}

impl SweepDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SweepDir { path: path.into() }
    }

    /// The sweep dir of experiment `name` under `runs_dir`.
    pub fn of(runs_dir: &Path, name: &str) -> Self {
        SweepDir::new(runs_dir.join(name))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn experiment_file(&self) -> PathBuf {
        self.path.join(EXPERIMENT_FILE)
    }

    pub fn results_file(&self) -> PathBuf {
        self.path.join(RESULTS_FILE)
    }

    pub fn lock_file(&self) -> PathBuf {
        self.path.join(LOCK_FILE)
    }

    pub fn slurm_dir(&self) -> PathBuf {
        self.path.join(SLURM_DIR)
    }

    /// What was submitted to Slurm (`.slurm/job.json`).
    pub fn slurm_job_file(&self) -> PathBuf {
        self.slurm_dir().join(SLURM_JOB_FILE)
    }

    /// The job array's batch script (`.slurm/array.sbatch`).
    pub fn slurm_script(&self) -> PathBuf {
        self.slurm_dir().join(SLURM_SCRIPT_FILE)
    }

    /// The `--output` pattern of the array tasks (`.slurm/%A_%a.out`).
    pub fn slurm_task_log_pattern(&self) -> PathBuf {
        self.slurm_dir().join("%A_%a.out")
    }

    /// The run dir `name` of this sweep.
    pub fn run(&self, name: &str) -> RunDir {
        RunDir::new(self.path.join(name))
    }

    /// The run dirs of this sweep (those with a status file), sorted by name.
    pub fn runs(&self) -> anyhow::Result<Vec<RunDir>> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&self.path)
            .with_context(|| format!("reading sweep directory {}", self.path.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| RunDir::new(p.clone()).status_file().is_file())
            .collect();
        dirs.sort();
        Ok(dirs.into_iter().map(RunDir::new).collect())
    }

    /// Rewrite `results.parquet` atomically from the run dirs. Returns the number of rows.
    pub fn write_results(&self) -> anyhow::Result<usize> {
        results::write(self)
    }

    /// Whether `name` is a directory of the layout rather than a run (`.lock`, `.slurm`, …):
    /// hidden entries are never runs.
    pub fn is_layout_entry(name: &str) -> bool {
        name.starts_with('.')
    }
}

/// A run directory: `<sweep dir>/<variant>-K<size>-s<seed>-<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        RunDir { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory's name (`vqgan-K512-s0-1a2b3c4d`).
    pub fn name(&self) -> String {
        self.path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()
    }

    /// A directory holding a run's config or status file.
    pub fn looks_like_run(&self) -> bool {
        self.config_file().is_file() || self.status_file().is_file()
    }

    pub fn config_file(&self) -> PathBuf {
        self.path.join(CONFIG_FILE)
    }

    pub fn cell_file(&self) -> PathBuf {
        self.path.join(CELL_FILE)
    }

    pub fn status_file(&self) -> PathBuf {
        self.path.join(STATUS_FILE)
    }

    pub fn summary_file(&self) -> PathBuf {
        self.path.join(SUMMARY_FILE)
    }

    pub fn log_file(&self) -> PathBuf {
        self.path.join(LOG_FILE)
    }

    /// File names for messages that tell a user what a run dir holds.
    pub const CONFIG_FILE_NAME: &'static str = CONFIG_FILE;
    pub const STATUS_FILE_NAME: &'static str = STATUS_FILE;

    /// The log's file name, for the Slurm batch script (which appends to `$RUN/<name>`).
    pub fn log_file_name() -> &'static str {
        LOG_FILE
    }

    pub fn metrics_file(&self) -> PathBuf {
        self.path.join(METRICS_FILE)
    }

    pub fn tensorboard_dir(&self) -> PathBuf {
        self.path.join(TB_DIR)
    }

    pub fn samples_dir(&self) -> PathBuf {
        self.path.join(SAMPLES_DIR)
    }

    /// The reconstruction grid of eval step `step`.
    pub fn sample_file(&self, step: u64) -> PathBuf {
        self.samples_dir().join(format!("step_{step:07}.png"))
    }

    /// The reconstruction grids written so far: (step, path), by step.
    pub fn samples(&self) -> Vec<(u64, PathBuf)> {
        let Ok(entries) = std::fs::read_dir(self.samples_dir()) else { return Vec::new() };
        let mut out: Vec<(u64, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                let step = name.strip_prefix("step_")?.strip_suffix(".png")?.parse::<u64>().ok()?;
                Some((step, e.path()))
            })
            .collect();
        out.sort();
        out
    }

    pub fn checkpoints_dir(&self) -> PathBuf {
        self.path.join(CHECKPOINTS_DIR)
    }

    pub fn last_checkpoint(&self) -> PathBuf {
        self.checkpoints_dir().join(LAST_CHECKPOINT)
    }

    pub fn previous_checkpoint(&self) -> PathBuf {
        self.checkpoints_dir().join(PREVIOUS_CHECKPOINT)
    }

    pub fn best_checkpoint(&self) -> PathBuf {
        self.checkpoints_dir().join(BEST_CHECKPOINT)
    }

    /// A prior run's code grids of the three splits, encoded once by its tokenizer.
    pub fn codes_file(&self) -> PathBuf {
        self.path.join(CODES_FILE)
    }

    /// A VQ-VAE run's full state at step `loss.disc_start`, what `loss.branch = "shared_prefix"`
    /// VQ-GAN arms start from.
    pub fn branch_checkpoint(&self) -> PathBuf {
        self.checkpoints_dir().join(BRANCH_CHECKPOINT)
    }

    /// The subdirectories a worker writes into (checked for symlinks, cleaned of stale temps).
    pub fn output_dirs(&self) -> [PathBuf; 3] {
        [self.checkpoints_dir(), self.samples_dir(), self.tensorboard_dir()]
    }

    /// The cache of this run's runs dir: `<runs-dir>/.cache` for `<runs-dir>/<experiment>/<run>`;
    /// `VQLAB_CACHE_DIR` overrides it.
    pub fn cache_dir(&self) -> PathBuf {
        if let Some(d) = std::env::var_os(CACHE_DIR_ENV).filter(|d| !d.is_empty()) {
            return PathBuf::from(d);
        }
        let abs = std::path::absolute(&self.path).unwrap_or_else(|_| self.path.clone());
        match abs.parent().and_then(Path::parent) {
            Some(runs_dir) => runs_dir.join(CACHE_DIR),
            None => abs.join(CACHE_DIR),
        }
    }

    /// Where feature networks are cached under a cache dir.
    pub fn feature_cache(cache_dir: &Path) -> PathBuf {
        cache_dir.join(FEATURES_DIR)
    }

    pub fn read_status(&self) -> anyhow::Result<Option<RunStatus>> {
        RunStatus::read(&self.path)
    }

    /// The run's status, or a fresh pending one when it has none yet.
    pub fn read_status_or_pending(&self) -> anyhow::Result<RunStatus> {
        RunStatus::read_or_pending(&self.path)
    }

    pub fn write_status(&self, status: &RunStatus) -> anyhow::Result<()> {
        status.write(&self.path)
    }

    /// `summary.json`, None when the run has none (yet).
    pub fn read_summary(&self) -> anyhow::Result<Option<Map<String, Value>>> {
        read_json_object(&self.summary_file())
    }

    pub fn write_summary(&self, summary: &Map<String, Value>) -> anyhow::Result<()> {
        write_json(&self.summary_file(), &Value::Object(summary.clone()))
    }

    /// `cell.json`: the keys the run's sweep varies and their values in this run.
    pub fn read_cell(&self) -> anyhow::Result<Option<Map<String, Value>>> {
        read_json_object(&self.cell_file())
    }

    pub fn write_cell(&self, cell: &impl serde::Serialize) -> anyhow::Result<()> {
        write_json(&self.cell_file(), &serde_json::to_value(cell)?)
    }

    /// The run's resolved config (`config.toml`).
    pub fn read_config(&self) -> Result<crate::config::ExperimentConfig, crate::error::InputError> {
        crate::config::load_run_config(&self.config_file())
    }

    /// Write the run's resolved config with a header naming its id.
    pub fn write_config(&self, id: &str, cfg: &crate::config::ExperimentConfig) -> anyhow::Result<()> {
        let body = format!(
            "# Resolved config of run {id} — the only input of `vqlab train {}`.\n\n{}",
            self.path.display(),
            crate::config::to_toml(cfg)
        );
        write_atomic(&self.config_file(), body.as_bytes())
    }

    /// Read the whole run dir the way every reader of runs sees it.
    pub fn record(&self) -> Result<RunRecord, String> {
        RunRecord::read(self)
    }
}

/// A JSON object file; None when it does not exist.
fn read_json_object(path: &Path) -> anyhow::Result<Option<Map<String, Value>>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            Ok(Some(serde_json::from_slice(&bytes).with_context(|| format!("{}: not a JSON object", path.display()))?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_json(path: &Path, value: &Value) -> anyhow::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_dir_is_beside_the_sweeps() {
        let run = RunDir::new("/data/runs/exp/vqvae-K8-s0-abc");
        std::env::remove_var(CACHE_DIR_ENV);
        assert_eq!(run.cache_dir(), PathBuf::from("/data/runs/.cache"));
        assert_eq!(RunDir::feature_cache(&run.cache_dir()), PathBuf::from("/data/runs/.cache/features"));
    }

    #[test]
    fn samples_are_listed_by_step() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        std::fs::create_dir_all(run.samples_dir()).unwrap();
        for step in [1000, 20, 300] {
            std::fs::write(run.sample_file(step), b"png").unwrap();
        }
        std::fs::write(run.samples_dir().join("notes.txt"), b"").unwrap();
        let steps: Vec<u64> = run.samples().iter().map(|(s, _)| *s).collect();
        assert_eq!(steps, [20, 300, 1000]);
        assert!(run.sample_file(20).ends_with("samples/step_0000020.png"));
    }
}
