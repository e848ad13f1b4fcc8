//! The long-format metrics table of a run (`metrics.parquet`: step i64, wall_time f64,
//! split str, metric str, value f64), kept in memory and rewritten atomically.

use std::path::{Path, PathBuf};

use anyhow::Context;
use polars::prelude::*;

use crate::rundir::RunDir;
use crate::util::write_atomic_with;

#[derive(Debug, Clone, PartialEq)]
pub struct MetricRow {
    pub step: i64,
    pub wall_time: f64,
    pub split: String,
    pub metric: String,
    pub value: f64,
}

#[derive(Debug, Default)]
pub struct MetricsLog {
    rows: Vec<MetricRow>,
    path: PathBuf,
}

impl MetricsLog {
    /// A log for a run dir; on resume, the rows up to `keep_until_step` are read back.
    pub fn open(run_dir: &Path, keep_until_step: Option<u64>) -> anyhow::Result<Self> {
        let path = RunDir::new(run_dir).metrics_file();
        let mut log = MetricsLog { rows: Vec::new(), path };
        if let Some(limit) = keep_until_step {
            if log.path.exists() {
                log.rows = read_rows(&log.path)?.into_iter().filter(|r| r.step <= limit as i64).collect();
            }
        }
        Ok(log)
    }

    /// Record `split/metric` (e.g. "train/rec_loss").
    pub fn record(&mut self, step: u64, name: &str, value: f64) {
        let (split, metric) = name.split_once('/').unwrap_or(("train", name));
        self.rows.push(MetricRow {
            step: step as i64,
            wall_time: crate::util::unix_now(),
            split: split.to_string(),
            metric: metric.to_string(),
            value,
        });
    }

    pub fn rows(&self) -> &[MetricRow] {
        &self.rows
    }

    /// The last value of `split/metric`.
    pub fn last(&self, name: &str) -> Option<f64> {
        let (split, metric) = name.split_once('/')?;
        self.rows.iter().rev().find(|r| r.split == split && r.metric == metric).map(|r| r.value)
    }

    /// Rewrite `metrics.parquet` atomically.
    pub fn flush(&self) -> anyhow::Result<()> {
        let n = self.rows.len();
        let cols = vec![
            Column::new("step".into(), self.rows.iter().map(|r| r.step).collect::<Vec<i64>>()),
            Column::new("wall_time".into(), self.rows.iter().map(|r| r.wall_time).collect::<Vec<f64>>()),
            Column::new("split".into(), self.rows.iter().map(|r| r.split.as_str()).collect::<Vec<&str>>()),
            Column::new("metric".into(), self.rows.iter().map(|r| r.metric.as_str()).collect::<Vec<&str>>()),
            Column::new("value".into(), self.rows.iter().map(|r| r.value).collect::<Vec<f64>>()),
        ];
        let mut df = DataFrame::new(n, cols)?;
        write_atomic_with(&self.path, |tmp| {
            let file = std::fs::File::create(tmp)?;
            ParquetWriter::new(file).finish(&mut df)?;
            std::fs::File::open(tmp)?.sync_all()?;
            Ok(())
        })
    }
}

/// Read a `metrics.parquet` back into rows.
pub fn read_rows(path: &Path) -> anyhow::Result<Vec<MetricRow>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let df = Context::with_context(ParquetReader::new(file).finish(), || format!("reading {}", path.display()))?;
    let step = df.column("step")?.i64()?;
    let wall = df.column("wall_time")?.f64()?;
    let split = df.column("split")?.str()?;
    let metric = df.column("metric")?.str()?;
    let value = df.column("value")?.f64()?;
    Ok((0..df.height())
        .map(|i| MetricRow {
            step: step.get(i).unwrap_or(0),
            wall_time: wall.get(i).unwrap_or(f64::NAN),
            split: split.get(i).unwrap_or("").to_string(),
            metric: metric.get(i).unwrap_or("").to_string(),
            value: value.get(i).unwrap_or(f64::NAN),
        })
        .collect())
}
