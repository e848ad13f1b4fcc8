//! Paper tables: a rows × cols pivot of finished runs over config keys, each cell the mean ±
//! sample std (N − 1) of a metric over the runs that differ only in their seed; the best value
//! of every column in bold; rendered as LaTeX (booktabs), Markdown, CSV or Parquet. The
//! LaTeX and Markdown cells are the same strings; CSV and Parquet carry the unrounded numbers
//! next to them.

use std::collections::{BTreeMap, BTreeSet};

use polars::prelude::*;
use serde_json::Value;

use super::collect::{first_line, value_text, Collection, Run};
use super::format::{self, Better, NumberFormat};
use crate::error::InputError;

/// What to tabulate.
#[derive(Debug, Clone, Default)]
pub struct TableSpec {
    pub rows: Vec<String>,
    pub cols: Vec<String>,
    pub metrics: Vec<String>,
    pub caption: Option<String>,
    pub label: Option<String>,
}

/// Mean, sample std and count of one metric over the seeds of one cell.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    pub n: usize,
    pub mean: f64,
    /// None for a single run.
    pub std: Option<f64>,
}

impl Stat {
    pub fn of(values: &[f64]) -> Option<Stat> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let std = (n > 1).then(|| (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt());
        Some(Stat { n, mean, std })
    }
}

/// One cell of the pivot: the runs that fall in it and their statistics per metric.
#[derive(Debug, Clone, Default)]
pub struct Cell {
    pub stats: Vec<Option<Stat>>,
    pub best: Vec<bool>,
    /// Runs of this cell that did not finish, described for the footnote.
    pub not_finished: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Pivot {
    pub spec: TableSpec,
    pub row_values: Vec<Vec<Value>>,
    /// `[[]]` when there are no column keys.
    pub col_values: Vec<Vec<Value>>,
    /// `cells[row][col]`.
    pub cells: Vec<Vec<Cell>>,
    /// Per metric.
    pub formats: Vec<NumberFormat>,
    /// The most common number of seeds per cell; cells with another n show theirs.
    pub usual_n: usize,
    pub notes: Notes,
}

/// What the footnote says besides the statistics.
#[derive(Debug, Clone, Default)]
pub struct Notes {
    pub runs_used: usize,
    pub not_finished: Vec<String>,
    pub broken: Vec<String>,
    /// Cells of the rows × cols grid with no run at all.
    pub empty_cells: Vec<String>,
    /// vqlab version of the finished runs -> (runs, commits, runs without a commit).
    pub versions: BTreeMap<String, (usize, BTreeSet<String>, usize)>,
    pub feature_nets: BTreeSet<String>,
    /// Training revision (see `config::TRAINING_REVISION`) -> finished runs trained by it.
    pub revisions: BTreeMap<u64, usize>,
    pub sources: Vec<String>,
    pub fid_style: bool,
}

/// A path as the user gave it, made relative when it lies under the working directory (so
/// a footnote does not print the absolute path of the machine it was made on).
pub fn shown_path(p: &std::path::Path) -> String {
    if p.is_absolute() {
        if let Ok(cwd) = std::env::current_dir() {
            if let Ok(rel) = p.strip_prefix(&cwd) {
                return if rel.as_os_str().is_empty() { ".".into() } else { rel.display().to_string() };
            }
        }
    }
    p.display().to_string()
}

/// Keys in which the runs of one cell may differ: the seed, and keys that change no result.
fn ignored_key(key: &str) -> bool {
    key == "train.seed" || !super::collect::is_result_key(key)
}

fn tuple_of(run: &Run, keys: &[String]) -> Vec<Value> {
    keys.iter().map(|k| run.get(k).cloned().unwrap_or(Value::Null)).collect()
}

pub fn tuple_text(keys: &[String], values: &[Value]) -> String {
    keys.iter()
        .zip(values)
        .map(|(k, v)| format!("{}={}", format::key_label(k), value_text(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn sort_tuples(c: &Collection, keys: &[String], tuples: &mut [Vec<Value>]) {
    // Rank each position by the order the sweep lists its values in.
    let mut ranks: Vec<Vec<Value>> = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let mut unique: Vec<Value> = Vec::new();
        for t in tuples.iter() {
            if !unique.contains(&t[i]) {
                unique.push(t[i].clone());
            }
        }
        c.sort_values(key, &mut unique);
        ranks.push(unique);
    }
    tuples.sort_by_key(|t| t.iter().enumerate().map(|(i, v)| ranks[i].iter().position(|x| x == v)).collect::<Vec<_>>());
}

/// Check that every key the table names exists, and every metric.
fn check_names(c: &Collection, spec: &TableSpec) -> Result<(), InputError> {
    let all_keys: BTreeSet<&String> = c.runs.iter().flat_map(|r| r.values.keys()).collect();
    for key in spec.rows.iter().chain(&spec.cols) {
        if !all_keys.contains(key) {
            let mut near: Vec<&str> = all_keys
                .iter()
                .filter(|k| {
                    !k.contains('/') && (k.ends_with(key.rsplit('.').next().unwrap_or(key)) || k.contains(key.as_str()))
                })
                .map(|k| k.as_str())
                .collect();
            near.truncate(5);
            let hint = if near.is_empty() { String::new() } else { format!(" (did you mean {}?)", near.join(", ")) };
            return Err(InputError::Usage(format!("no run has the config key `{key}`{hint}")));
        }
    }
    let finished: Vec<&Run> = c.finished().collect();
    for m in &spec.metrics {
        if !finished.iter().any(|r| r.get(m).is_some()) {
            let available: BTreeSet<&str> = finished
                .iter()
                .flat_map(|r| r.values.keys())
                .filter(|k| k.contains('/') || k.as_str() == "run.train_seconds")
                .map(|k| k.as_str())
                .collect();
            return Err(InputError::Usage(format!(
                "no finished run has the metric `{m}` (available: {})",
                available.into_iter().collect::<Vec<_>>().join(", ")
            )));
        }
    }
    if spec.metrics.is_empty() {
        return Err(InputError::Usage("name at least one metric with --metrics".into()));
    }
    if spec.rows.is_empty() {
        return Err(InputError::Usage("name at least one config key with --rows".into()));
    }
    Ok(())
}

/// The row values, col values and runs of one cell.
type CellRuns<'a> = (Vec<Value>, Vec<Value>, Vec<&'a Run>);

/// Build the pivot of the collection's runs.
pub fn pivot(c: &Collection, spec: &TableSpec) -> Result<Pivot, InputError> {
    check_names(c, spec)?;
    if c.finished().next().is_none() {
        let states: BTreeMap<&str, usize> = c.runs.iter().fold(BTreeMap::new(), |mut m, r| {
            *m.entry(r.state.name()).or_default() += 1;
            m
        });
        let tally = states.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", ");
        return Err(InputError::Usage(format!("no finished runs to tabulate ({tally})")));
    }
    let mut row_values: Vec<Vec<Value>> = Vec::new();
    let mut col_values: Vec<Vec<Value>> = Vec::new();
    let mut members: BTreeMap<(String, String), CellRuns<'_>> = BTreeMap::new();
    for run in &c.runs {
        let r = tuple_of(run, &spec.rows);
        let col = tuple_of(run, &spec.cols);
        if !row_values.contains(&r) {
            row_values.push(r.clone());
        }
        if !col_values.contains(&col) {
            col_values.push(col.clone());
        }
        members.entry((key_of(&r), key_of(&col))).or_insert_with(|| (r.clone(), col.clone(), Vec::new())).2.push(run);
    }
    sort_tuples(c, &spec.rows, &mut row_values);
    sort_tuples(c, &spec.cols, &mut col_values);

    // Runs that share a cell must differ only in their seed (and in keys that do not change a
    // result); otherwise the mean would mix different experiments.
    for (r, col, runs) in members.values() {
        let keys: BTreeSet<&String> = runs.iter().flat_map(|run| run.values.keys()).collect();
        // A tokenizer and its prior share a cell (rFID beside gFID): the `prior.*` keys are
        // compared among the prior runs only, every other key among all runs.
        let is_prior = |run: &&Run| run.get("prior.enabled") == Some(&Value::Bool(true));
        let priors: Vec<&Run> = runs.iter().copied().filter(is_prior).collect();
        let compared = |k: &str| if k.starts_with("prior.") { priors.as_slice() } else { runs.as_slice() };
        let differing: Vec<&String> = keys
            .into_iter()
            .filter(|k| !ignored_key(k) && compared(k).iter().any(|run| run.get(k) != compared(k)[0].get(k)))
            .collect();
        if let Some(key) = differing.first() {
            // `key` is in `differing` because some run's value differs from the first run's.
            let group = compared(key);
            let (first, other) =
                (group[0], *group.iter().find(|run| run.get(key) != group[0].get(key)).expect("a run differs"));
            let cell: Vec<Value> = r.iter().chain(col.iter()).cloned().collect();
            let cell_keys: Vec<String> = spec.rows.iter().chain(&spec.cols).cloned().collect();
            let names = differing.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
            return Err(InputError::Usage(format!(
                "the runs of cell [{}] differ in {names} ({} and {}), which neither --rows nor --cols name: \
                 add them there, or keep one value with --where {key}=VALUE",
                tuple_text(&cell_keys, &cell),
                first.name,
                other.name,
            )));
        }
    }

    let mut notes = Notes { sources: c.sources.iter().map(|p| shown_path(p)).collect(), ..Default::default() };
    let mut cells: Vec<Vec<Cell>> = Vec::new();
    for r in &row_values {
        let mut row_cells = Vec::new();
        for col in &col_values {
            let runs = members.get(&(key_of(r), key_of(col))).map(|m| m.2.clone()).unwrap_or_default();
            let mut cell = Cell::default();
            if runs.is_empty() {
                let cell_keys: Vec<String> = spec.rows.iter().chain(&spec.cols).cloned().collect();
                let values: Vec<Value> = r.iter().chain(col.iter()).cloned().collect();
                notes.empty_cells.push(tuple_text(&cell_keys, &values));
            }
            let finished: Vec<&Run> = runs.iter().copied().filter(|run| run.is_finished()).collect();
            for run in runs.iter().filter(|run| !run.is_finished()) {
                let what = run.describe_state();
                cell.not_finished.push(what.clone());
                notes.not_finished.push(what);
            }
            for run in &finished {
                notes.runs_used += 1;
                let version = run.get("run.vqlab_version").map(value_text).unwrap_or_else(|| run.vqlab_version.clone());
                let commit = run.get("run.vqlab_commit").map(value_text).filter(|c| !c.is_empty());
                let entry = notes.versions.entry(version).or_default();
                entry.0 += 1;
                match commit {
                    Some(c) => {
                        entry.1.insert(c);
                    }
                    None => entry.2 += 1,
                }
                if let Some(net) = run.get("run.feature_net") {
                    notes.feature_nets.insert(value_text(net));
                }
                *notes.revisions.entry(run.training_revision()).or_default() += 1;
            }
            for m in &spec.metrics {
                let values: Vec<f64> = finished.iter().filter_map(|run| run.number(m)).collect();
                cell.stats.push(Stat::of(&values));
            }
            cell.best = vec![false; spec.metrics.len()];
            row_cells.push(cell);
        }
        cells.push(row_cells);
    }
    notes.broken = c.broken.iter().map(|b| format!("{} ({})", shown_path(&b.dir), first_line(&b.why))).collect();
    notes.fid_style = spec.metrics.iter().any(|m| format::info(m).fid_style);

    let formats: Vec<NumberFormat> = spec
        .metrics
        .iter()
        .enumerate()
        .map(|(mi, m)| {
            let means = cells.iter().flatten().filter_map(|cell| cell.stats[mi].map(|s| s.mean));
            NumberFormat::for_values(format::info(m).digits, means)
        })
        .collect();

    // Best per column (a column is one metric at one col value), at printed precision, ties
    // all bold; a column with fewer than two values has no best.
    for (mi, m) in spec.metrics.iter().enumerate() {
        let Some(better) = format::info(m).better else { continue };
        #[allow(clippy::needless_range_loop)]
        for ci in 0..col_values.len() {
            let shown: Vec<(usize, f64)> = (0..row_values.len())
                .filter_map(|ri| cells[ri][ci].stats[mi].map(|s| (ri, formats[mi].rounded(s.mean))))
                .collect();
            if shown.len() < 2 {
                continue;
            }
            let best = match better {
                Better::Lower => shown.iter().map(|p| p.1).fold(f64::INFINITY, f64::min),
                Better::Higher => shown.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max),
            };
            for (ri, v) in shown {
                if v == best {
                    cells[ri][ci].best[mi] = true;
                }
            }
        }
    }

    let mut n_counts: BTreeMap<usize, usize> = BTreeMap::new();
    for cell in cells.iter().flatten() {
        for s in cell.stats.iter().flatten() {
            *n_counts.entry(s.n).or_default() += 1;
        }
    }
    let usual_n = n_counts.iter().max_by_key(|(n, count)| (**count, **n)).map(|(n, _)| *n).unwrap_or(0);
    Ok(Pivot { spec: spec.clone(), row_values, col_values, cells, formats, usual_n, notes })
}

/// A map key for a tuple of JSON values (which are not `Ord`): their JSON text.
fn key_of(values: &[Value]) -> String {
    serde_json::to_string(values).unwrap_or_default()
}

/// Number cells and header parts shared by LaTeX and Markdown.
impl Pivot {
    fn has_cols(&self) -> bool {
        !self.spec.cols.is_empty()
    }

    /// The statistic as printed: "1.23 ± 0.04", "1.23" for one run, None for no run.
    pub fn cell_text(&self, ri: usize, ci: usize, mi: usize) -> Option<String> {
        let s = self.cells[ri][ci].stats[mi]?;
        let f = self.formats[mi];
        Some(match s.std {
            Some(std) => format!("{} ± {}", f.text(s.mean), f.text(std)),
            None => f.text(s.mean),
        })
    }

    fn n_marker(&self, ri: usize, ci: usize, mi: usize) -> Option<usize> {
        let s = self.cells[ri][ci].stats[mi]?;
        (s.n != self.usual_n).then_some(s.n)
    }

    /// The metric's header label with its scale: "rec. MSE ×10⁻³".
    fn metric_label(&self, mi: usize) -> String {
        let m = &self.spec.metrics[mi];
        let mut label = format::info(m).label;
        if self.formats[mi].exponent != 0 {
            label.push_str(&format!(" {}", format::times_ten_unicode(self.formats[mi].exponent)));
        }
        label
    }

    /// The same in LaTeX: "rec. MSE ($\times 10^{-3}$)".
    fn metric_label_latex(&self, mi: usize) -> String {
        let mut label = format::latex_escape(&format::info(&self.spec.metrics[mi]).label);
        if self.formats[mi].exponent != 0 {
            label.push_str(&format!(" ($\\times 10^{{{}}}$)", self.formats[mi].exponent));
        }
        label
    }

    fn arrow(&self, mi: usize) -> &'static str {
        match format::info(&self.spec.metrics[mi]).better {
            Some(Better::Lower) => "↓",
            Some(Better::Higher) => "↑",
            None => "",
        }
    }

    fn col_text(&self, ci: usize) -> String {
        self.col_values[ci].iter().map(value_text).collect::<Vec<_>>().join(", ")
    }

    /// Columns in order: for each metric, each col value.
    fn columns(&self) -> Vec<(usize, usize)> {
        (0..self.spec.metrics.len()).flat_map(|mi| (0..self.col_values.len()).map(move |ci| (mi, ci))).collect()
    }

    /// The footnote as plain sentences (Unicode; the LaTeX writer escapes them).
    pub fn footnote(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let n = self.usual_n;
        let seeds = if n == 1 { "One run per cell".to_string() } else { format!("Mean ± std over n = {n} seeds") };
        let marked = if (0..self.row_values.len()).any(|ri| {
            (0..self.col_values.len())
                .any(|ci| (0..self.spec.metrics.len()).any(|mi| self.n_marker(ri, ci, mi).is_some()))
        }) {
            " (cells with another n say so)"
        } else {
            ""
        };
        let directions = self.spec.metrics.iter().any(|m| format::info(m).better.is_some());
        lines.push(format!(
            "{seeds}{marked}.{}",
            if directions { " Best per column in bold; ↓ lower is better, ↑ higher is better." } else { "" }
        ));
        if self.notes.fid_style {
            let nets: Vec<String> = self.notes.feature_nets.iter().cloned().collect();
            let net = if nets.is_empty() { "vqlab's dataset feature network".to_string() } else { nets.join("; ") };
            lines.push(format!(
                "rFID and KID are FID-style scores on the features of {net}: they compare runs within vqlab and are not comparable with Inception-based scores."
            ));
        }
        // Each split's source once, in the order the metrics first name it.
        let mut sources: Vec<&str> = Vec::new();
        for s in self.spec.metrics.iter().filter_map(|m| format::source(m)) {
            if !sources.contains(&s) {
                sources.push(s);
            }
        }
        if !sources.is_empty() {
            lines.push(format!("{}.", sources.join("; ")));
        }
        if self.notes.revisions.len() > 1 {
            lines.push(super::collect::revision_warning(&self.notes.revisions));
        }
        if !self.notes.not_finished.is_empty() {
            let all = &self.notes.not_finished;
            let mut shown: Vec<String> = all.iter().take(12).cloned().collect();
            if all.len() > shown.len() {
                shown.push(format!("and {} more", all.len() - shown.len()));
            }
            lines.push(format!("Not finished, left out ({}): {}.", all.len(), shown.join("; ")));
        }
        if !self.notes.empty_cells.is_empty() {
            lines.push(format!("No runs: {}.", self.notes.empty_cells.join("; ")));
        }
        if !self.notes.broken.is_empty() {
            lines.push(format!("Unreadable run dirs: {}.", self.notes.broken.join("; ")));
        }
        let versions: Vec<String> = self
            .notes
            .versions
            .iter()
            .map(|(version, (_, commits, unknown))| {
                let mut parts: Vec<String> = Vec::new();
                let listed = commits.iter().cloned().collect::<Vec<_>>().join(", ");
                match commits.len() {
                    0 => {}
                    1 => parts.push(format!("commit {listed}")),
                    _ => parts.push(format!("commits {listed}")),
                }
                if *unknown > 0 && !commits.is_empty() {
                    parts.push(format!("{unknown} runs from before commits were recorded"));
                }
                if parts.is_empty() {
                    version.clone()
                } else {
                    format!("{version} ({})", parts.join("; "))
                }
            })
            .collect();
        let this = if crate::GIT_COMMIT.is_empty() {
            env!("CARGO_PKG_VERSION").to_string()
        } else {
            format!("{} (commit {})", env!("CARGO_PKG_VERSION"), crate::GIT_COMMIT)
        };
        let revisions: Vec<String> = self.notes.revisions.keys().map(|r| r.to_string()).collect();
        let revision = match revisions.len() {
            0 => String::new(),
            1 => format!(", training revision {}", revisions[0]),
            _ => format!(", training revisions {}", revisions.join(" and ")),
        };
        lines.push(format!(
            "{} runs from {}, trained by vqlab {}{revision}; table by vqlab {this}.",
            self.notes.runs_used,
            self.notes.sources.join(", "),
            versions.join(", ")
        ));
        lines
    }

    fn default_caption(&self) -> String {
        let by = |keys: &[String]| keys.iter().map(|k| format::key_label(k)).collect::<Vec<_>>().join(", ");
        let mut s = format!("Final eval metrics by {}", by(&self.spec.rows));
        if self.has_cols() {
            s.push_str(&format!(" and {}", by(&self.spec.cols)));
        }
        s.push('.');
        s
    }

    /// A booktabs table environment (or a whole document with `standalone`).
    pub fn to_latex(&self, standalone: bool) -> String {
        let esc = format::latex_escape;
        let columns = self.columns();
        let mut out = String::new();
        if standalone {
            out.push_str(
                "\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage{graphicx}\n\\begin{document}\n",
            );
        }
        // More than six number columns do not fit a text column at normal size: scale the
        // tabular to the line width (graphicx's \resizebox).
        let wide = columns.len() > 6;
        out.push_str(&format!("% Generated by vqlab {} {}\n", env!("CARGO_PKG_VERSION"), crate::GIT_COMMIT));
        out.push_str(if wide {
            "% Needs \\usepackage{booktabs} and \\usepackage{graphicx} in the preamble.\n"
        } else {
            "% Needs \\usepackage{booktabs} in the preamble.\n"
        });
        out.push_str("\\begin{table}[t]\n\\centering\n");
        let caption = self.spec.caption.clone().unwrap_or_else(|| self.default_caption());
        out.push_str(&format!("\\caption{{{}}}\n", esc(&caption)));
        let label = self.spec.label.clone().unwrap_or_else(|| {
            let name =
                self.notes.sources.first().map(|s| s.trim_end_matches('/').rsplit('/').next().unwrap_or(s).to_string());
            format!("tab:{}", name.unwrap_or_else(|| "vqlab".into()))
        });
        out.push_str(&format!("\\label{{{}}}\n", label.replace(['\\', '{', '}', '%', '#', '&', '$', '_'], "-")));
        let spec: String = "l".repeat(self.spec.rows.len()) + &"r".repeat(columns.len());
        if wide {
            out.push_str("\\resizebox{\\linewidth}{!}{%\n");
        }
        out.push_str(&format!("\\begin{{tabular}}{{{spec}}}\n\\toprule\n"));
        let nr = self.spec.rows.len();
        let metric_head = |mi: usize| {
            let arrow = self.arrow(mi);
            format!(
                "{}{}",
                self.metric_label_latex(mi),
                if arrow.is_empty() { String::new() } else { format!(" {}", esc(arrow)) }
            )
        };
        let row_heads: Vec<String> = self.spec.rows.iter().map(|k| esc(&format::key_label(k))).collect();
        if self.has_cols() {
            let nc = self.col_values.len();
            let mut head = vec![String::new(); nr];
            let mut rules = Vec::new();
            for mi in 0..self.spec.metrics.len() {
                head.push(format!("\\multicolumn{{{nc}}}{{c}}{{{}}}", metric_head(mi)));
                let start = nr + mi * nc + 1;
                rules.push(format!("\\cmidrule(lr){{{start}-{}}}", start + nc - 1));
            }
            out.push_str(&head.join(" & "));
            out.push_str(" \\\\\n");
            out.push_str(&rules.join(" "));
            out.push('\n');
            let mut sub = row_heads.clone();
            for (_, ci) in &columns {
                sub.push(esc(&self.col_text(*ci)));
            }
            out.push_str(&sub.join(" & "));
        } else {
            let mut head = row_heads.clone();
            head.extend((0..self.spec.metrics.len()).map(metric_head));
            out.push_str(&head.join(" & "));
        }
        out.push_str(" \\\\\n\\midrule\n");
        for (ri, r) in self.row_values.iter().enumerate() {
            let mut line: Vec<String> = r.iter().map(|v| esc(&value_text(v))).collect();
            for (mi, ci) in &columns {
                line.push(match self.cell_text(ri, *ci, *mi) {
                    None => "--".into(),
                    Some(text) => {
                        let math = text.replace(" ± ", " \\pm ");
                        let mut cell = if self.cells[ri][*ci].best[*mi] {
                            format!("$\\mathbf{{{math}}}$")
                        } else {
                            format!("${math}$")
                        };
                        if let Some(n) = self.n_marker(ri, *ci, *mi) {
                            cell.push_str(&format!("\\,{{\\scriptsize(n={n})}}"));
                        }
                        cell
                    }
                });
            }
            out.push_str(&line.join(" & "));
            out.push_str(" \\\\\n");
        }
        out.push_str("\\bottomrule\n\\end{tabular}\n");
        if wide {
            out.push_str("}\n");
        }
        out.push_str("\\par\\smallskip\n{\\footnotesize\\raggedright\n");
        for line in self.footnote() {
            out.push_str(&esc(&line));
            out.push('\n');
        }
        out.push_str("\\par}\n\\end{table}\n");
        if standalone {
            out.push_str("\\end{document}\n");
        }
        out
    }

    /// A GitHub-flavoured Markdown table with the footnote below it.
    pub fn to_markdown(&self) -> String {
        let columns = self.columns();
        let mut head: Vec<String> = self.spec.rows.iter().map(|k| format::key_label(k)).collect();
        for (mi, ci) in &columns {
            let arrow = self.arrow(*mi);
            let mut h = self.metric_label(*mi);
            if !arrow.is_empty() {
                h.push(' ');
                h.push_str(arrow);
            }
            if self.has_cols() {
                h.push_str(&format!(" · {}", self.col_text(*ci)));
            }
            head.push(format::markdown_escape(&h));
        }
        let mut out = format!("| {} |\n", head.join(" | "));
        let align: Vec<&str> = self.spec.rows.iter().map(|_| ":---").chain(columns.iter().map(|_| "---:")).collect();
        out.push_str(&format!("| {} |\n", align.join(" | ")));
        for (ri, r) in self.row_values.iter().enumerate() {
            let mut line: Vec<String> = r.iter().map(|v| format::markdown_escape(&value_text(v))).collect();
            for (mi, ci) in &columns {
                line.push(match self.cell_text(ri, *ci, *mi) {
                    None => "–".into(),
                    Some(text) => {
                        let mut cell = if self.cells[ri][*ci].best[*mi] { format!("**{text}**") } else { text };
                        if let Some(n) = self.n_marker(ri, *ci, *mi) {
                            cell.push_str(&format!(" (n={n})"));
                        }
                        cell
                    }
                });
            }
            out.push_str(&format!("| {} |\n", line.join(" | ")));
        }
        out.push('\n');
        let caption = self.spec.caption.clone().unwrap_or_else(|| self.default_caption());
        out.push_str(&format!("{caption} "));
        out.push_str(&self.footnote().join(" "));
        out.push('\n');
        out
    }

    /// An HTML table (for the comparison page): the same cells as the Markdown table.
    pub fn to_html(&self) -> String {
        let esc = format::html_escape;
        let columns = self.columns();
        let mut out = String::from("<table>\n<tr>");
        for k in &self.spec.rows {
            out.push_str(&format!("<th title=\"{}\">{}</th>", esc(k), esc(&format::key_label(k))));
        }
        for (mi, ci) in &columns {
            let mut h = self.metric_label(*mi);
            let arrow = self.arrow(*mi);
            if !arrow.is_empty() {
                h.push(' ');
                h.push_str(arrow);
            }
            if self.has_cols() {
                h.push_str(&format!(" · {}", self.col_text(*ci)));
            }
            out.push_str(&format!("<th title=\"{}\">{}</th>", esc(&self.spec.metrics[*mi]), esc(&h)));
        }
        out.push_str("</tr>\n");
        for (ri, r) in self.row_values.iter().enumerate() {
            out.push_str("<tr>");
            for v in r {
                out.push_str(&format!("<td>{}</td>", esc(&value_text(v))));
            }
            for (mi, ci) in &columns {
                match self.cell_text(ri, *ci, *mi) {
                    None => out.push_str("<td>–</td>"),
                    Some(text) => {
                        let class = if self.cells[ri][*ci].best[*mi] { " class=\"best\"" } else { "" };
                        let n = self.n_marker(ri, *ci, *mi).map(|n| format!(" (n={n})")).unwrap_or_default();
                        out.push_str(&format!("<td{class}>{}{n}</td>", esc(&text)));
                    }
                }
            }
            out.push_str("</tr>\n");
        }
        out.push_str("</table>\n");
        out
    }

    /// One row per (row values, col values, metric): the unrounded mean, std and n, whether
    /// it is the column's best, the text the LaTeX and Markdown tables print, and why runs
    /// are missing.
    pub fn to_frame(&self) -> anyhow::Result<DataFrame> {
        let mut key_cols: Vec<Vec<Option<String>>> = vec![Vec::new(); self.spec.rows.len() + self.spec.cols.len()];
        let (mut metric, mut mean, mut std, mut n, mut best, mut shown, mut scale, mut missing) =
            (vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        for (ri, r) in self.row_values.iter().enumerate() {
            for (ci, col) in self.col_values.iter().enumerate() {
                for (mi, m) in self.spec.metrics.iter().enumerate() {
                    for (i, v) in r.iter().chain(col.iter()).enumerate() {
                        key_cols[i].push((!v.is_null()).then(|| value_text(v)));
                    }
                    let s = self.cells[ri][ci].stats[mi];
                    metric.push(m.clone());
                    mean.push(s.map(|s| s.mean));
                    std.push(s.and_then(|s| s.std));
                    n.push(s.map(|s| s.n as u32).unwrap_or(0));
                    best.push(self.cells[ri][ci].best[mi]);
                    shown.push(self.cell_text(ri, ci, mi).unwrap_or_default());
                    scale.push(self.formats[mi].exponent);
                    missing.push(self.cells[ri][ci].not_finished.join("; "));
                }
            }
        }
        let mut columns: Vec<Column> = Vec::new();
        for (name, values) in self.spec.rows.iter().chain(&self.spec.cols).zip(key_cols) {
            // Keys as numbers where every value is one, so pandas sorts them numerically.
            let numbers: Option<Vec<Option<f64>>> = values
                .iter()
                .map(|v| match v {
                    None => Some(None),
                    Some(t) => t.parse::<f64>().ok().map(Some),
                })
                .collect();
            columns.push(match numbers {
                Some(nums) if nums.iter().flatten().all(|x| x.fract() == 0.0) => {
                    Column::new(name.into(), nums.iter().map(|x| x.map(|x| x as i64)).collect::<Vec<_>>())
                }
                Some(nums) => Column::new(name.into(), nums),
                None => Column::new(name.into(), values),
            });
        }
        columns.push(Column::new("metric".into(), metric));
        columns.push(Column::new("mean".into(), mean));
        columns.push(Column::new("std".into(), std));
        columns.push(Column::new("n".into(), n));
        columns.push(Column::new("best".into(), best));
        columns.push(Column::new("shown".into(), shown));
        columns.push(Column::new("scale_exponent".into(), scale));
        columns.push(Column::new("not_finished".into(), missing));
        let height = columns[0].len();
        Ok(DataFrame::new(height, columns)?)
    }

    pub fn to_csv(&self) -> anyhow::Result<String> {
        let mut df = self.to_frame()?;
        let mut buf = Vec::new();
        CsvWriter::new(&mut buf).include_header(true).finish(&mut df)?;
        Ok(String::from_utf8(buf)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_use_the_sample_std() {
        // Mean 2.5; squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5, / (4 − 1): std √(5/3).
        let s = Stat::of(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(s.n, 4);
        assert_eq!(s.mean, 2.5);
        assert!((s.std.unwrap() - (5.0f64 / 3.0).sqrt()).abs() < 1e-15);
        assert_eq!(Stat::of(&[7.0]).unwrap().std, None);
        assert_eq!(Stat::of(&[]), None);
    }
}
