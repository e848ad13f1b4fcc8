//! Run state on disk: `status.json` in each run dir is the single source of truth for
//! whether a run is pending, running, done, failed or interrupted.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::fsutil::{timestamp_now, write_atomic};

pub const STATUS_FILE: &str = "status.json";
pub const CONFIG_FILE: &str = "config.toml";

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
        self.vqlab_version = env!("CARGO_PKG_VERSION").to_string();
    }

    pub fn mark_finished(&mut self, state: RunState, reason: impl Into<String>) {
        self.state = state;
        self.reason = reason.into();
        self.finished = timestamp_now();
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}
