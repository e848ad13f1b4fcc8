//! `results.parquet` of a sweep: one row per run dir, a column per flattened config key
//! (`quantizer.codebook_size`, …), the run's state (`run.state`, `run.attempts`,
//! `run.reason`, `run.dir`) and its final metrics from its summary (`eval/rec_mse`, …; null
//! while the run is unfinished). A run dir that cannot be read is a row with
//! `run.state = "unreadable"` and the reason. Rewritten atomically whenever a run finishes.

use std::collections::{BTreeMap, BTreeSet};

use polars::prelude::*;
use serde_json::Value;

use super::{RunDir, SweepDir};
use crate::util::write_atomic_with;

/// One run's row: flattened config, state and (when finished) summary.
fn run_row(dir: &RunDir) -> BTreeMap<String, Value> {
    match dir.record() {
        Ok(record) => record.values.into_iter().collect(),
        Err(why) => BTreeMap::from([
            ("run.dir".to_string(), Value::from(dir.name())),
            ("run.state".to_string(), Value::from("unreadable")),
            ("run.reason".to_string(), Value::from(why)),
        ]),
    }
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
pub fn results_frame(run_dirs: &[RunDir]) -> anyhow::Result<DataFrame> {
    let rows: Vec<BTreeMap<String, Value>> = run_dirs.iter().map(run_row).collect();
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

/// Rewrite the sweep's results file atomically. Returns the number of rows.
pub(super) fn write(sweep: &SweepDir) -> anyhow::Result<usize> {
    let mut df = results_frame(&sweep.runs()?)?;
    write_atomic_with(&sweep.results_file(), |tmp| {
        let file = std::fs::File::create(tmp)?;
        ParquetWriter::new(file).finish(&mut df)?;
        std::fs::File::open(tmp)?.sync_all()?;
        Ok(())
    })?;
    Ok(df.height())
}
