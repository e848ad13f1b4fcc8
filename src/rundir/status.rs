//! A run's status file, the single source of truth for whether the run is pending, running,
//! done, failed, interrupted or stopped early, and where and how its attempts ran.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::util::process;
use crate::util::{timestamp_now, unix_now, write_atomic};

/// Set by a scheduler in a worker's environment: the slot it runs on (recorded as `slot`).
pub const SLOT_ENV: &str = "VQLAB_SLOT";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Pending,
    Running,
    Done,
    Failed,
    Interrupted,
    StoppedEarly,
    /// Not trained: its parent run (a later stage's input) failed for good. Reconsidered
    /// whenever the sweep runs again.
    Skipped,
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
            RunState::Skipped => "skipped",
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
        let p = super::RunDir::new(run_dir).status_file();
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
        write_atomic(&super::RunDir::new(run_dir).status_file(), &bytes)
    }

    pub fn mark_running(&mut self, device: &str) {
        self.state = RunState::Running;
        self.attempts += 1;
        self.reason.clear();
        self.device = device.to_string();
        self.started = timestamp_now();
        self.finished.clear();
        self.pid = std::process::id();
        self.host = process::hostname();
        self.slot = std::env::var(SLOT_ENV).unwrap_or_default();
        self.cuda_visible_devices = std::env::var("CUDA_VISIBLE_DEVICES").ok();
        self.start_time = unix_now();
        self.end_time = 0.0;
        self.vqlab_version = env!("CARGO_PKG_VERSION").to_string();
    }

    /// A `running` status whose worker process is gone (it ran on this host and its pid is
    /// no longer alive): the run resumes from its checkpoint on the next `vqlab run`.
    pub fn worker_gone(&self) -> bool {
        self.state == RunState::Running && self.host == process::hostname() && !process::alive(self.pid)
    }

    /// A `running` status whose worker is alive on this host.
    pub fn worker_alive(&self) -> bool {
        self.state == RunState::Running && self.host == process::hostname() && process::alive(self.pid)
    }

    pub fn mark_finished(&mut self, state: RunState, reason: impl Into<String>) {
        self.state = state;
        self.reason = reason.into();
        self.finished = timestamp_now();
        self.end_time = unix_now();
        if state == RunState::Failed {
            self.failures += 1;
        }
    }
}

/// Every field of the status file with its meaning, in the file's order (`vqlab docs status`;
/// the README and docs/design.md hold the table, and a test fails when they drift).
pub const STATUS_FIELDS: &[(&str, &str)] = &[
    ("state", "`pending`, `running`, `done`, `failed`, `interrupted`, `stopped_early` or `skipped` (a later stage's run whose parent failed for good)"),
    ("attempts", "attempts started, interruptions included"),
    ("reason", "why the last attempt failed, was interrupted or stopped early (empty when done)"),
    ("device", "the device of the last attempt (`cpu`, `cuda:0`, …)"),
    ("started", "RFC 3339 UTC start of the last attempt"),
    ("finished", "RFC 3339 UTC end of the last attempt (empty while running)"),
    ("vqlab_version", "the version that wrote the status"),
    ("pid", "the worker's process id (a `running` run whose pid is gone resumes)"),
    ("host", "the worker's host"),
    ("step", "the step of the last checkpoint"),
    ("failures", "failed attempts; retries stop at `launcher.max_attempts` (interruptions do not count)"),
    ("slot", "the scheduler slot of the last attempt (`gpu1.0`, `cpu.0`, `slurm 123_4`)"),
    ("cuda_visible_devices", "`CUDA_VISIBLE_DEVICES` as the worker saw it (null when unset)"),
    ("start_time", "Unix time of the last attempt's start"),
    ("end_time", "Unix time of the last attempt's end (0 while running)"),
    ("progress_step", "the step of the last log"),
    ("loss", "the reconstruction loss at that step"),
    (
        "peak_memory_mib",
        "peak device memory over the first steps, MiB (GPU memory, or peak RSS on the CPU); absent until measured",
    ),
    ("gpu_alone", "the run failed out of memory beside other runs: its retries get a GPU to themselves"),
];

/// The Markdown table of the status file's fields.
pub fn status_fields_table() -> String {
    let mut s = String::from("| field | meaning |\n|---|---|\n");
    for (field, meaning) in STATUS_FIELDS {
        s.push_str(&format!("| `{field}` | {meaning} |\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_field_list_is_the_serialized_status() {
        let mut status = RunStatus::pending();
        status.peak_memory_mib = Some(1);
        let json = serde_json::to_value(&status).unwrap();
        let keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        let mut listed: Vec<&str> = STATUS_FIELDS.iter().map(|(f, _)| *f).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        listed.sort();
        assert_eq!(sorted, listed);
    }
}
