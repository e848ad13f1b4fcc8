//! `results.parquet` of a sweep: one row per run dir, a column per flattened config key
//! (`quantizer.codebook_size`, …), the run's state (`run.state`, `run.attempts`,
//! `run.reason`, `run.dir`) and its final metrics from `summary.json` (`eval/rec_mse`, …;
//! null while the run is unfinished). Rewritten atomically whenever a run finishes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::Context;
use polars::prelude::*;
use serde_json::Value;

use crate::fsutil::write_atomic_with;
use crate::sched::state::{RunStatus, CONFIG_FILE};
use crate::train::{flatten, SUMMARY_FILE};

pub const RESULTS_FILE: &str = "results.parquet";

/// One run's row: flattened config, state and (when finished) summary.
pub fn run_row(run_dir: &Path) -> anyhow::Result<BTreeMap<String, Value>> {
    let mut row = serde_json::Map::new();
    match crate::config::load_run_config(&run_dir.join(CONFIG_FILE)) {
        Ok(cfg) => flatten("", &serde_json::to_value(&cfg)?, &mut row),
        Err(e) => {
            row.insert("run.reason".into(), format!("unreadable config: {e}").into());
        }
    }
    let status = RunStatus::read_or_pending(run_dir)?;
    row.insert("run.dir".into(), run_dir.file_name().map(|n| n.to_string_lossy().to_string()).into());
    row.insert("run.state".into(), status.state.name().into());
    row.insert("run.attempts".into(), status.attempts.into());
    if !status.reason.is_empty() {
        row.insert("run.reason".into(), status.reason.clone().into());
    }
    let summary_path = run_dir.join(SUMMARY_FILE);
    if summary_path.is_file() && status.state.is_finished() {
        let text = std::fs::read(&summary_path).with_context(|| format!("reading {}", summary_path.display()))?;
        let summary: serde_json::Map<String, Value> =
            serde_json::from_slice(&text).with_context(|| format!("parsing {}", summary_path.display()))?;
        for (k, v) in summary {
            row.entry(k).or_insert(v);
        }
    }
    Ok(row.into_iter().collect())
}

/// A column from JSON values: bool, i64, f64 or string (other values as JSON text).
fn column(name: &str, values: &[Option<&Value>]) -> Column {
    let present = || values.iter().flatten();
    if present().all(|v| v.is_boolean()) {
        return Column::new(name.into(), values.iter().map(|v| v.and_then(Value::as_bool)).collect::<Vec<_>>());
    }
    if present().all(|v| v.is_i64()) {
        return Column::new(name.into(), values.iter().map(|v| v.and_then(Value::as_i64)).collect::<Vec<_>>());
    }
    if present().all(|v| v.is_number()) {
        return Column::new(name.into(), values.iter().map(|v| v.and_then(Value::as_f64)).collect::<Vec<_>>());
    }
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    Column::new(name.into(), values.iter().map(|v| v.map(text)).collect::<Vec<Option<String>>>())
}

/// The results table of these run dirs.
pub fn results_frame(run_dirs: &[std::path::PathBuf]) -> anyhow::Result<DataFrame> {
    let rows: Vec<BTreeMap<String, Value>> = run_dirs.iter().map(|d| run_row(d)).collect::<anyhow::Result<_>>()?;
    let keys: BTreeSet<&String> = rows.iter().flat_map(|r| r.keys()).collect();
    // run.* first, then config keys, then metrics (keys with a '/').
    let mut ordered: Vec<&String> = keys.iter().copied().filter(|k| k.starts_with("run.")).collect();
    ordered.extend(keys.iter().copied().filter(|k| !k.starts_with("run.") && !k.contains('/')));
    ordered.extend(keys.iter().copied().filter(|k| k.contains('/')));
    let cols: Vec<Column> = ordered
        .iter()
        .map(|k| column(k, &rows.iter().map(|r| r.get(*k).filter(|v| !v.is_null())).collect::<Vec<_>>()))
        .collect();
    Ok(DataFrame::new(rows.len(), cols)?)
}

/// Rewrite `<sweep_dir>/results.parquet` atomically. Returns the number of rows.
pub fn write_results(sweep_dir: &Path) -> anyhow::Result<usize> {
    let dirs = crate::sched::local::run_dirs(sweep_dir)?;
    let mut df = results_frame(&dirs)?;
    let path = sweep_dir.join(RESULTS_FILE);
    write_atomic_with(&path, |tmp| {
        let file = std::fs::File::create(tmp)?;
        ParquetWriter::new(file).finish(&mut df)?;
        std::fs::File::open(tmp)?.sync_all()?;
        Ok(())
    })?;
    Ok(df.height())
}
