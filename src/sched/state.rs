//! Run state on disk: `status.json` in each run dir is the single source of truth for
//! whether a run is pending, running, done, failed or interrupted.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::fsutil::{timestamp_now, write_atomic};

pub const STATUS_FILE: &str = "status.json";
pub const CONFIG_FILE: &str = "config.toml";
/// Set by a scheduler in a worker's environment: the slot it runs on.
pub const SLOT_ENV: &str = "VQLAB_SLOT";
/// Set by a scheduler in a worker's environment: how many other runs were on its GPU when it
/// started.
pub const GPU_SHARING_ENV: &str = "VQLAB_GPU_SHARING";
/// Test hook: a run whose dir name contains this fails out of memory whenever it starts on a
/// GPU that other runs share (what a CUDA out-of-memory error looks like to the scheduler),
/// so the retry-alone path runs on machines without a GPU.
pub const FAKE_OOM_ENV: &str = "VQLAB_FAKE_OOM_RUN";
/// Test hook: the peak device memory (MiB) a worker reports instead of measuring it.
pub const FAKE_DEVICE_MEMORY_ENV: &str = "VQLAB_FAKE_DEVICE_MEMORY_MIB";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Pending,
    Running,
    Done,
    Failed,
    Interrupted,
    StoppedEarly,
}

impl RunState {
    pub fn name(self) -> &'static str {
        match self {
            RunState::Pending => "pending",
            RunState::Running => "running",
            RunState::Done => "done",
            RunState::Failed => "failed",
            RunState::Interrupted => "interrupted",
            RunState::StoppedEarly => "stopped_early",
        }
    }
    /// A run in this state needs no more work.
    /// (`interrupted` and a `running` whose process is gone resume from their checkpoint.)
    pub fn is_finished(self) -> bool {
        matches!(self, RunState::Done | RunState::StoppedEarly)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunStatus {
    pub state: RunState,
    pub attempts: u32,
    pub reason: String,
    pub device: String,
    pub started: String,
    pub finished: String,
    pub vqlab_version: String,
    /// Process and host of the worker while running (detects a dead "running" run).
    #[serde(default)]
    pub pid: u32,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub step: u64,
    /// Failed attempts (retries stop at launcher.max_attempts); interruptions do not count.
    #[serde(default)]
    pub failures: u32,
    /// The scheduler slot of the current or last attempt ("gpu1.0", "cpu.0", "slurm 123_4").
    #[serde(default)]
    pub slot: String,
    /// CUDA_VISIBLE_DEVICES as the worker saw it (null when unset).
    #[serde(default)]
    pub cuda_visible_devices: Option<String>,
    /// Unix times of the current or last attempt's start and end.
    #[serde(default)]
    pub start_time: f64,
    #[serde(default)]
    pub end_time: f64,
    /// Progress at the last log step: step reached and its reconstruction loss.
    #[serde(default)]
    pub progress_step: u64,
    #[serde(default)]
    pub loss: Option<f64>,
    /// Peak memory of the run's device over its first steps, MiB: the GPU memory of the
    /// worker's process, or its peak resident memory on the CPU. `runs_per_gpu = "auto"`
    /// packs a retry or a resume by it instead of the estimate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory_mib: Option<u64>,
    /// The run failed out of memory beside other runs: its retries get a GPU to themselves.
    #[serde(default)]
    pub gpu_alone: bool,
}

impl RunStatus {
    pub fn pending() -> Self {
        RunStatus {
            state: RunState::Pending,
            attempts: 0,
            reason: String::new(),
            device: String::new(),
            started: String::new(),
            finished: String::new(),
            vqlab_version: env!("CARGO_PKG_VERSION").to_string(),
            pid: 0,
            host: String::new(),
            step: 0,
            failures: 0,
            slot: String::new(),
            cuda_visible_devices: None,
            start_time: 0.0,
            end_time: 0.0,
            progress_step: 0,
            loss: None,
            peak_memory_mib: None,
            gpu_alone: false,
        }
    }

    pub fn read(run_dir: &Path) -> anyhow::Result<Option<Self>> {
        let p = run_dir.join(STATUS_FILE);
        match std::fs::read(&p) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", p.display()))?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// The run's status, or a fresh pending one when it has none yet.
    pub fn read_or_pending(run_dir: &Path) -> anyhow::Result<Self> {
        Ok(Self::read(run_dir)?.unwrap_or_else(Self::pending))
    }

    pub fn write(&self, run_dir: &Path) -> anyhow::Result<()> {
        let mut bytes = serde_json::to_vec_pretty(self)?;
        bytes.push(b'\n');
        write_atomic(&run_dir.join(STATUS_FILE), &bytes)
    }

    pub fn mark_running(&mut self, device: &str) {
        self.state = RunState::Running;
        self.attempts += 1;
        self.reason.clear();
        self.device = device.to_string();
        self.started = timestamp_now();
        self.finished.clear();
        self.pid = std::process::id();
        self.host = hostname();
        self.slot = std::env::var(SLOT_ENV).unwrap_or_default();
        self.cuda_visible_devices = std::env::var("CUDA_VISIBLE_DEVICES").ok();
        self.start_time = crate::fsutil::unix_now();
        self.end_time = 0.0;
        self.vqlab_version = env!("CARGO_PKG_VERSION").to_string();
    }

    pub fn mark_finished(&mut self, state: RunState, reason: impl Into<String>) {
        self.state = state;
        self.reason = reason.into();
        self.finished = timestamp_now();
        self.end_time = crate::fsutil::unix_now();
        if state == RunState::Failed {
            self.failures += 1;
        }
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}
