//! [`RunRecord`]: a run dir read whole, the one way `vqlab status`, `results.parquet` and the
//! reports read runs.

use serde_json::{Map, Value};

use super::{RunDir, RunState, RunStatus};
use crate::util::flatten;

/// One run dir as its readers see it.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub dir: RunDir,
    /// The run dir's name (`vqgan-K512-s0-1a2b3c4d`).
    pub name: String,
    pub status: RunStatus,
    /// Flattened config keys (`quantizer.codebook_size`, …), the run's `run.*` keys (`run.dir`,
    /// `run.state`, `run.attempts`, `run.reason`) and, once finished, everything its summary
    /// holds: final metrics (`eval/rec_mse`, …) and provenance (`run.training_revision`, …).
    pub values: Map<String, Value>,
}

impl RunRecord {
    /// Read a run dir. Err says why it cannot be read as a run: an unreadable status, a
    /// finished run without a readable summary, or an unfinished one without a readable config.
    pub fn read(dir: &RunDir) -> Result<RunRecord, String> {
        let status = dir.read_status_or_pending().map_err(|e| format!("{e:#}"))?;
        let mut values = if status.state.is_finished() {
            let mut summary = match dir.read_summary() {
                Ok(Some(s)) => s,
                Ok(None) => return Err(format!("finished, but {} is missing", dir.summary_file().display())),
                Err(e) => return Err(format!("finished, but {e:#}")),
            };
            // Summaries from before training revisions were recorded are revision 1.
            summary.entry("run.training_revision").or_insert(Value::from(1u64));
            summary
        } else {
            let cfg = dir.read_config().map_err(|e| e.to_string())?;
            let mut flat = Map::new();
            flatten("", &serde_json::to_value(&cfg).map_err(|e| e.to_string())?, &mut flat);
            flat
        };
        let name = dir.name();
        values.insert("run.dir".into(), name.clone().into());
        values.insert("run.state".into(), status.state.name().into());
        values.insert("run.attempts".into(), status.attempts.into());
        if !status.reason.is_empty() {
            values.insert("run.reason".into(), status.reason.clone().into());
        }
        Ok(RunRecord { dir: dir.clone(), name, status, values })
    }

    pub fn state(&self) -> RunState {
        self.status.state
    }

    /// A finite number under `key`.
    pub fn number(&self, key: &str) -> Option<f64> {
        self.values.get(key).and_then(Value::as_f64).filter(|v| v.is_finite())
    }
}
