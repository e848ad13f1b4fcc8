//! Where a run's metrics go. Every sink implements [`Sink`]; a run writes to all of them
//! through a [`SinkSet`]: the Parquet log (`metrics.parquet`), TensorBoard (`tb/`) and the
//! PNG reconstruction grids (`samples/`).
//!
//! An essential sink (the Parquet record, the sample PNGs) failing fails the run with its
//! reason; a non-essential one (TensorBoard) failing is logged once and switched off, and the
//! run goes on.

use std::collections::BTreeMap;
use std::path::Path;

use crate::util::write_atomic;

/// What a sink is told when a run (or a resumed attempt of it) starts.
#[derive(Debug, Clone)]
pub struct RunStart {
    /// The step training continues from (0 for a fresh run).
    pub resume_step: u64,
    /// The hyperparameters that identify the run within its sweep (the swept keys, the seed,
    /// the variant and the codebook size), flattened.
    pub hparams: BTreeMap<String, serde_json::Value>,
    /// The metrics a comparison of runs should show (`eval/rec_mse`, …).
    pub metrics: Vec<String>,
    /// The resolved config as TOML.
    pub config_toml: String,
    /// Unix time the run first started.
    pub start_time: f64,
}

pub trait Sink {
    fn name(&self) -> &'static str;
    /// Whether a failure of this sink fails the run.
    fn essential(&self) -> bool;
    fn start(&mut self, _run: &RunStart) -> anyhow::Result<()> {
        Ok(())
    }
    /// `name` is `split/metric`, e.g. "train/rec_loss".
    fn scalar(&mut self, step: u64, name: &str, value: f64) -> anyhow::Result<()>;
    /// A PNG image (reconstruction grids).
    fn image(&mut self, _step: u64, _tag: &str, _png: &[u8], _width: u32, _height: u32) -> anyhow::Result<()> {
        Ok(())
    }
    /// Code counts n_k, k = 0..K (the code-usage histogram).
    fn histogram(&mut self, _step: u64, _tag: &str, _counts: &[u64]) -> anyhow::Result<()> {
        Ok(())
    }
    /// Make what was recorded so far durable (called at checkpoints).
    fn checkpoint(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    /// The run ended at `step`, successfully or not.
    fn end(&mut self, _step: u64, _success: bool) -> anyhow::Result<()> {
        Ok(())
    }
}

/// All of a run's sinks, plus the last value of every scalar (for the summary).
#[derive(Default)]
pub struct SinkSet {
    sinks: Vec<Box<dyn Sink>>,
    last: BTreeMap<String, f64>,
}

impl SinkSet {
    pub fn new(sinks: Vec<Box<dyn Sink>>) -> Self {
        SinkSet { sinks, last: BTreeMap::new() }
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.sinks.iter().map(|s| s.name()).collect()
    }

    /// Seed the last values (from a resumed run's metrics log).
    pub fn remember(&mut self, name: &str, value: f64) {
        self.last.insert(name.to_string(), value);
    }

    pub fn last(&self, name: &str) -> Option<f64> {
        self.last.get(name).copied()
    }

    fn each(&mut self, mut f: impl FnMut(&mut dyn Sink) -> anyhow::Result<()>) -> anyhow::Result<()> {
        let mut i = 0;
        while i < self.sinks.len() {
            match f(self.sinks[i].as_mut()) {
                Ok(()) => i += 1,
                Err(e) if self.sinks[i].essential() => {
                    return Err(e.context(format!("writing {}", self.sinks[i].name())));
                }
                Err(e) => {
                    tracing::warn!("{} logging switched off for the rest of this run: {e:#}", self.sinks[i].name());
                    self.sinks.remove(i);
                }
            }
        }
        Ok(())
    }

    pub fn start(&mut self, run: &RunStart) -> anyhow::Result<()> {
        self.each(|s| s.start(run))
    }

    pub fn scalar(&mut self, step: u64, name: &str, value: f64) -> anyhow::Result<()> {
        self.last.insert(name.to_string(), value);
        self.each(|s| s.scalar(step, name, value))
    }

    pub fn image(&mut self, step: u64, tag: &str, png: &[u8], width: u32, height: u32) -> anyhow::Result<()> {
        self.each(|s| s.image(step, tag, png, width, height))
    }

    pub fn histogram(&mut self, step: u64, tag: &str, counts: &[u64]) -> anyhow::Result<()> {
        self.each(|s| s.histogram(step, tag, counts))
    }

    pub fn checkpoint(&mut self) -> anyhow::Result<()> {
        self.each(|s| s.checkpoint())
    }

    pub fn end(&mut self, step: u64, success: bool) -> anyhow::Result<()> {
        self.each(|s| s.end(step, success))
    }
}

/// Reconstruction grids as PNG files `samples/step_0001000.png`.
pub struct SamplesSink {
    run: crate::rundir::RunDir,
}

impl SamplesSink {
    pub fn new(run_dir: &Path) -> Self {
        SamplesSink { run: crate::rundir::RunDir::new(run_dir) }
    }
}

impl Sink for SamplesSink {
    fn name(&self) -> &'static str {
        "the reconstruction grids"
    }

    fn essential(&self) -> bool {
        true
    }

    fn scalar(&mut self, _: u64, _: &str, _: f64) -> anyhow::Result<()> {
        Ok(())
    }

    fn image(&mut self, step: u64, _tag: &str, png: &[u8], _: u32, _: u32) -> anyhow::Result<()> {
        std::fs::create_dir_all(self.run.samples_dir())?;
        write_atomic(&self.run.sample_file(step), png)
    }
}

impl Sink for super::MetricsLog {
    fn name(&self) -> &'static str {
        "the Parquet metrics log"
    }

    fn essential(&self) -> bool {
        true
    }

    fn scalar(&mut self, step: u64, name: &str, value: f64) -> anyhow::Result<()> {
        self.record(step, name, value);
        Ok(())
    }

    fn checkpoint(&mut self) -> anyhow::Result<()> {
        self.flush()
    }

    fn end(&mut self, _: u64, _: bool) -> anyhow::Result<()> {
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Failing(bool);

    impl Sink for Failing {
        fn name(&self) -> &'static str {
            "failing"
        }
        fn essential(&self) -> bool {
            self.0
        }
        fn scalar(&mut self, _: u64, _: &str, _: f64) -> anyhow::Result<()> {
            anyhow::bail!("disk full")
        }
    }

    #[test]
    fn a_failing_optional_sink_is_dropped_and_an_essential_one_fails_the_run() {
        let mut set = SinkSet::new(vec![Box::new(Failing(false))]);
        set.scalar(1, "eval/usage", 0.5).unwrap();
        assert!(set.names().is_empty());
        assert_eq!(set.last("eval/usage"), Some(0.5));
        let mut set = SinkSet::new(vec![Box::new(Failing(true))]);
        let err = set.scalar(1, "eval/usage", 0.5).unwrap_err();
        assert!(format!("{err:#}").contains("disk full"), "{err:#}");
    }
}
