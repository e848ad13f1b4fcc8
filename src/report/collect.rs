//! Finding and reading the runs behind a report: walk one or more sweep dirs (nested ones
//! too, symlinks followed) and read every run dir as a [`RunRecord`] (rayon across runs):
//! its status and, for finished runs, its summary. Unfinished and broken runs are kept and
//! named, never dropped silently. A run's metrics log is read only when a figure needs its
//! curves.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::{Map, Value};

use crate::error::InputError;
use crate::metrics::log::read_rows;
use crate::rundir::{RunDir, RunRecord, RunState, SweepDir};

/// One run dir as a report sees it.
#[derive(Debug, Clone)]
pub struct Run {
    pub dir: PathBuf,
    /// The run dir's name (`vqgan-K512-s0-1a2b3c4d`).
    pub name: String,
    pub state: RunState,
    pub reason: String,
    pub attempts: u32,
    /// Flattened config keys, plus the final metrics and `run.*` keys once finished.
    pub values: Map<String, Value>,
    pub vqlab_version: String,
}

/// Every logged metric of a run over steps: `split/metric` -> (step, value), sorted by step.
pub type Curves = BTreeMap<String, Vec<(i64, f64)>>;

/// A directory that looks like a run dir but cannot be read as one.
#[derive(Debug, Clone)]
pub struct Broken {
    pub dir: PathBuf,
    pub why: String,
}

/// Every run found under the given roots.
#[derive(Debug, Default)]
pub struct Collection {
    /// Readable runs, finished or not, in path order.
    pub runs: Vec<Run>,
    pub broken: Vec<Broken>,
    /// The roots as given.
    pub sources: Vec<PathBuf>,
    /// The order in which the sweeps' experiment files list each swept key's values
    /// (`sweep.grid`, `sweep.zip`, `sweep.seeds` as `train.seed`).
    pub value_order: BTreeMap<String, Vec<Value>>,
}

impl Run {
    pub fn is_finished(&self) -> bool {
        self.state.is_finished()
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.values.get(key).filter(|v| !v.is_null())
    }

    /// The training revision that produced the run's numbers (see `config::TRAINING_REVISION`).
    pub fn training_revision(&self) -> u64 {
        self.get("run.training_revision").and_then(Value::as_u64).unwrap_or(1)
    }

    /// A finite number under `key`.
    pub fn number(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64).filter(|v| v.is_finite())
    }

    /// One line for a footnote or a log: `vqgan-K4096-s2-… (failed: reason)`.
    pub fn describe_state(&self) -> String {
        if self.reason.is_empty() {
            format!("{} ({})", self.name, self.state.name())
        } else {
            format!("{} ({}: {})", self.name, self.state.name(), first_line(&self.reason))
        }
    }

    /// Every logged metric over steps (`split/metric` -> sorted (step, value)), from
    /// `metrics.parquet`; empty if the run logged nothing yet.
    pub fn curves(&self) -> anyhow::Result<Curves> {
        let path = RunDir::new(&self.dir).metrics_file();
        let mut curves = Curves::new();
        if !path.is_file() {
            return Ok(curves);
        }
        for r in read_rows(&path)? {
            if r.value.is_finite() {
                curves.entry(format!("{}/{}", r.split, r.metric)).or_default().push((r.step, r.value));
            }
        }
        for points in curves.values_mut() {
            points.sort_by_key(|p| p.0);
        }
        Ok(curves)
    }

    /// The reconstruction grid of the last eval step: (step, PNG path).
    pub fn last_sample(&self) -> Option<(u64, PathBuf)> {
        RunDir::new(&self.dir).samples().pop()
    }
}

/// "a, b, c and 7 more".
pub fn name_list(runs: &[&Run], shown: usize) -> String {
    let mut names: Vec<String> = runs.iter().take(shown).map(|r| r.name.clone()).collect();
    if runs.len() > shown {
        names.push(format!("and {} more", runs.len() - shown));
    }
    names.join(", ")
}

pub fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("").trim()
}

impl Collection {
    pub fn finished(&self) -> impl Iterator<Item = &Run> {
        self.runs.iter().filter(|r| r.is_finished())
    }

    pub fn unfinished(&self) -> impl Iterator<Item = &Run> {
        self.runs.iter().filter(|r| !r.is_finished())
    }

    /// Warn (stderr, through tracing) about unfinished and broken runs: one line with the
    /// count by state and the first few names; every name at debug level.
    pub fn warn_incomplete(&self) {
        let unfinished: Vec<&Run> = self.unfinished().collect();
        if !unfinished.is_empty() {
            let mut states: BTreeMap<&str, usize> = BTreeMap::new();
            for r in &unfinished {
                *states.entry(r.state.name()).or_default() += 1;
            }
            let tally = states.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", ");
            tracing::warn!(
                "{} runs not finished ({tally}), left out of tables: {}",
                unfinished.len(),
                name_list(&unfinished, 4)
            );
            for r in &unfinished {
                tracing::debug!("not finished: {}", r.describe_state());
            }
        }
        for b in &self.broken {
            tracing::warn!("unreadable run dir, left out: {}: {}", b.dir.display(), first_line(&b.why));
        }
        let revisions = self.revisions();
        if revisions.len() > 1 {
            tracing::warn!("{}", revision_warning(&revisions));
        }
    }

    /// Finished runs per training revision.
    pub fn revisions(&self) -> BTreeMap<u64, usize> {
        let mut out = BTreeMap::new();
        for r in self.finished() {
            *out.entry(r.training_revision()).or_default() += 1;
        }
        out
    }

    /// Keep only the runs whose `key` equals one of the given values (`--where k=v`).
    pub fn filter(&mut self, key: &str, wanted: &str) {
        self.runs.retain(|r| r.get(key).is_some_and(|v| value_matches(v, wanted)));
    }

    /// Sort values of `key` the way the experiment file lists them; values it does not list
    /// follow, numbers ascending, text alphabetically.
    pub fn sort_values(&self, key: &str, values: &mut [Value]) {
        let listed = self.value_order.get(key);
        let rank = |v: &Value| listed.and_then(|l| l.iter().position(|x| x == v)).unwrap_or(usize::MAX);
        values.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| compare_values(a, b)));
    }
}

/// A config key that can make two runs give different results: not a `run.*` key or a metric,
/// and not one of the keys the run id leaves out (paths, hardware, logging cadence, names).
pub fn is_result_key(key: &str) -> bool {
    !(key.starts_with("run.")
        || key.contains('/')
        || crate::config::sweep::NON_RESULT_KEYS.iter().any(|k| key == *k || key.starts_with(&format!("{k}."))))
}

/// The result keys whose values differ between these runs, in key order.
pub fn differing_keys(runs: &[&Run]) -> Vec<String> {
    let keys: BTreeSet<&String> = runs.iter().flat_map(|r| r.values.keys()).collect();
    keys.into_iter()
        .filter(|k| is_result_key(k))
        .filter(|k| {
            let first = runs.first().and_then(|r| r.get(k));
            runs.iter().any(|r| r.get(k) != first)
        })
        .cloned()
        .collect()
}

/// A run's short label from the keys that tell it apart: "model=vqgan K=512 seed=0".
pub fn run_label(run: &Run, keys: &[String]) -> String {
    if keys.is_empty() {
        return run.name.clone();
    }
    keys.iter()
        .map(|k| {
            format!("{}={}", super::format::key_label(k), run.get(k).map(value_text).unwrap_or_else(|| "-".into()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The warning for runs of different training revisions side by side.
pub fn revision_warning(revisions: &BTreeMap<u64, usize>) -> String {
    let parts: Vec<String> =
        revisions.iter().map(|(r, n)| format!("{n} run{} of revision {r}", if *n == 1 { "" } else { "s" })).collect();
    format!(
        "Warning: these runs mix training revisions ({}): an older revision's runs were trained by code that computes other numbers for the same config; rerun them with `vqlab run` (a new revision gets new run dirs), or keep one revision with --where run.training_revision=N.",
        parts.join(", ")
    )
}

/// A `--where` value against a JSON value: numbers compare numerically, the rest as text.
pub fn value_matches(v: &Value, wanted: &str) -> bool {
    match (v.as_f64(), wanted.parse::<f64>()) {
        (Some(a), Ok(b)) => a == b,
        _ => value_text(v) == wanted,
    }
}

/// Numbers before text; numbers ascending, text alphabetically.
pub fn compare_values(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => value_text(a).cmp(&value_text(b)),
    }
}

/// A value as a cell shows it: strings without quotes.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn is_run_dir(dir: &Path) -> bool {
    RunDir::new(dir).looks_like_run()
}

/// The run dirs under `root` (itself, if it is one), without descending into run dirs or
/// hidden directories (`.cache`, `.slurm`).
fn run_dirs_under(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if is_run_dir(root) {
        return Ok(vec![root.to_path_buf()]);
    }
    let mut found = Vec::new();
    let mut walk = walkdir::WalkDir::new(root).follow_links(true).sort_by_file_name().into_iter();
    while let Some(entry) = walk.next() {
        let entry = match entry {
            Ok(e) => e,
            Err(e) if e.depth() == 0 => {
                return Err(InputError::file(root, format!("cannot read the directory: {e}")).into())
            }
            Err(e) => {
                tracing::warn!("skipping {}: {e}", e.path().map(|p| p.display().to_string()).unwrap_or_default());
                continue;
            }
        };
        if !entry.file_type().is_dir() || entry.depth() == 0 {
            continue;
        }
        if entry.file_name().to_string_lossy().starts_with('.') {
            walk.skip_current_dir();
            continue;
        }
        if is_run_dir(entry.path()) {
            found.push(entry.path().to_path_buf());
            walk.skip_current_dir();
        }
    }
    Ok(found)
}

fn read_run(dir: &Path) -> Result<Run, Broken> {
    let record = RunRecord::read(&RunDir::new(dir)).map_err(|why| Broken { dir: dir.to_path_buf(), why })?;
    Ok(Run {
        dir: dir.to_path_buf(),
        name: record.name,
        state: record.status.state,
        reason: record.status.reason,
        attempts: record.status.attempts,
        values: record.values,
        vqlab_version: record.status.vqlab_version,
    })
}

/// Value lists of the sweep a run dir belongs to, from its sweep's `experiment.toml`.
fn sweep_value_order(sweep_dir: &Path, order: &mut BTreeMap<String, Vec<Value>>) {
    let Ok(text) = std::fs::read_to_string(SweepDir::new(sweep_dir).experiment_file()) else { return };
    let Ok(doc) = text.parse::<toml::Table>() else { return };
    let Some(sweep) = doc.get("sweep").and_then(|s| s.as_table()) else { return };
    let mut add = |key: &str, values: &[toml::Value]| {
        let list = order.entry(key.to_string()).or_default();
        for v in values {
            if let Ok(v) = serde_json::to_value(v) {
                if !list.contains(&v) {
                    list.push(v);
                }
            }
        }
    };
    for axes in ["grid", "zip"] {
        if let Some(table) = sweep.get(axes).and_then(|t| t.as_table()) {
            for (key, values) in table {
                if let Some(values) = values.as_array() {
                    add(key, values);
                }
            }
        }
    }
    if let Some(seeds) = sweep.get("seeds").and_then(|s| s.as_array()) {
        add("train.seed", seeds);
    }
}

/// Find and read every run under `roots` (sweep dirs, directories of sweeps, or run dirs).
pub fn collect(roots: &[PathBuf]) -> anyhow::Result<Collection> {
    if roots.is_empty() {
        return Err(InputError::Usage("name at least one sweep or run directory".into()).into());
    }
    let mut dirs = Vec::new();
    for root in roots {
        if !root.is_dir() {
            return Err(InputError::file(root, "not a directory (expected a sweep dir or a run dir)").into());
        }
        let found = run_dirs_under(root)?;
        if found.is_empty() {
            return Err(InputError::file(
                root,
                format!(
                    "no run directories under it (a run dir holds the {} and {} that `vqlab run` writes)",
                    RunDir::CONFIG_FILE_NAME,
                    RunDir::STATUS_FILE_NAME
                ),
            )
            .into());
        }
        dirs.extend(found);
    }
    let mut seen = BTreeSet::new();
    dirs.retain(|d| seen.insert(std::fs::canonicalize(d).unwrap_or_else(|_| d.clone())));
    let read: Vec<Result<Run, Broken>> = dirs.par_iter().map(|d| read_run(d)).collect();
    let mut collection = Collection { sources: roots.to_vec(), ..Default::default() };
    let parents: BTreeSet<PathBuf> = dirs.iter().filter_map(|d| d.parent().map(Path::to_path_buf)).collect();
    for parent in parents {
        sweep_value_order(&parent, &mut collection.value_order);
    }
    for r in read {
        match r {
            Ok(run) => collection.runs.push(run),
            Err(b) => collection.broken.push(b),
        }
    }
    Ok(collection)
}
