//! Training one run: `vqlab train RUN_DIR`. The loop owns iteration, the log / eval /
//! checkpoint cadence, resume and the run's status; the math of a step is in `step`.

pub mod checkpoint;
pub mod eval;
pub mod optim;
pub mod step;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use candle_core::Device;

use crate::config::{self, CodebookInit, DeviceKind, ExperimentConfig, Variant};
use crate::data::{self, BatchOrder};
use crate::fsutil::write_atomic;
use crate::metrics::MetricsLog;
use crate::model::VqModel;
use crate::sched::state::{RunState, RunStatus, CONFIG_FILE};
use checkpoint::Checkpoint;
use optim::Adam;

pub const SUMMARY_FILE: &str = "summary.json";
pub const SAMPLES_DIR: &str = "samples";

/// How a training attempt ended (the process exit code follows from it).
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Done,
    Failed(String),
}

/// Pick the device a run trains on.
pub fn select_device(kind: DeviceKind) -> anyhow::Result<Device> {
    match kind {
        DeviceKind::Cpu => Ok(Device::Cpu),
        DeviceKind::Cuda => Device::new_cuda(0).context("hardware.device = \"cuda\" but no CUDA device could be opened (is this binary built with --features cuda?)"),
        DeviceKind::Auto => Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
    }
}

pub fn device_name(d: &Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => format!("cuda:{}", std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "0".into())),
        Device::Metal(_) => "metal".into(),
    }
}

/// Train the run in `run_dir` to completion (or resume it), recording its status. Errors
/// that prevent even recording a status (an unwritable run dir) are returned; everything
/// else ends as a failed status with its reason.
pub fn train_run(run_dir: &Path) -> anyhow::Result<Outcome> {
    let mut status = RunStatus::read_or_pending(run_dir)?;
    let cfg = match config::load_run_config(&run_dir.join(CONFIG_FILE)) {
        Ok(cfg) => cfg,
        Err(e) => return fail_before_start(run_dir, &mut status, format!("invalid config: {e}")),
    };
    if cfg.hardware.threads_per_run > 0 {
        // Ignore the error if a pool already exists (a library caller set one up).
        let _ = rayon::ThreadPoolBuilder::new().num_threads(cfg.hardware.threads_per_run as usize).build_global();
    }
    let device = match select_device(cfg.hardware.device) {
        Ok(d) => d,
        Err(e) => return fail_before_start(run_dir, &mut status, format!("{e:#}")),
    };
    status.mark_running(&device_name(&device));
    status.write(run_dir)?;
    let result = Trainer::run(&cfg, run_dir, &device, &mut status);
    let outcome = match result {
        Ok(()) => {
            status.mark_finished(RunState::Done, "");
            Outcome::Done
        }
        Err(e) => {
            let reason = format!("{e:#}");
            tracing::error!("run failed: {reason}");
            status.mark_finished(RunState::Failed, reason.clone());
            Outcome::Failed(reason)
        }
    };
    status.write(run_dir)?;
    Ok(outcome)
}

/// Record an attempt that failed before training could start.
fn fail_before_start(run_dir: &Path, status: &mut RunStatus, reason: String) -> anyhow::Result<Outcome> {
    tracing::error!("run failed: {reason}");
    status.mark_running("none");
    status.mark_finished(RunState::Failed, reason.clone());
    status.write(run_dir)?;
    Ok(Outcome::Failed(reason))
}

struct Trainer<'a> {
    cfg: &'a ExperimentConfig,
    run_dir: &'a Path,
    device: &'a Device,
    model: VqModel,
    opt_g: Adam,
    opt_d: Option<Adam>,
    metrics: MetricsLog,
    best_rec_mse: f64,
}

impl<'a> Trainer<'a> {
    fn run(
        cfg: &'a ExperimentConfig,
        run_dir: &'a Path,
        device: &'a Device,
        status: &mut RunStatus,
    ) -> anyhow::Result<()> {
        let t_load = Instant::now();
        let splits = data::load(&cfg.data)?;
        tracing::info!(
            "data: {}; {} train and {} eval images of {}×{}×{} ({:.1}s)",
            splits.source,
            splits.train.len,
            splits.eval.len,
            splits.train.channels,
            splits.train.side,
            splits.train.side,
            t_load.elapsed().as_secs_f64()
        );
        for note in &splits.notes {
            tracing::warn!("{note}");
        }
        let model = VqModel::new(cfg, device)?;
        let g_vars: Vec<_> = model
            .params
            .vars()
            .iter()
            .filter(|(k, _)| !k.starts_with("disc."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let opt_g = Adam::new(g_vars, cfg.train.lr, cfg.train.betas)?;
        let opt_d = match cfg.model.variant {
            Variant::Vqgan => Some(Adam::new(model.params.vars_with_prefix("disc."), cfg.train.lr, cfg.train.betas)?),
            Variant::Vqvae => None,
        };
        let (ckpt, notes) = checkpoint::load_latest(run_dir, device);
        for n in notes {
            tracing::warn!("{n}");
        }
        let mut trainer = Trainer {
            cfg,
            run_dir,
            device,
            model,
            opt_g,
            opt_d,
            metrics: MetricsLog::default(),
            best_rec_mse: f64::INFINITY,
        };
        let start = match ckpt {
            Some(c) => {
                trainer.restore(&c)?;
                tracing::info!("resuming from checkpoint at step {}", c.step);
                c.step
            }
            None => {
                if cfg.quantizer.init == CodebookInit::Kmeans {
                    trainer.kmeans_init(&splits)?;
                }
                0
            }
        };
        trainer.metrics = MetricsLog::open(run_dir, Some(start))?;
        let counts = trainer.model.parameter_counts();
        tracing::info!(
            "model: {}; parameters: {}",
            config::short_description(cfg),
            counts.iter().filter(|(_, n)| *n > 0).map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
        );
        trainer.train_from(start, &splits, status)?;
        Ok(())
    }

    /// k-means codebook from the encoder outputs of the first batches the run will train on
    /// (at least 20 vectors per code, at most 50 batches), 10 Lloyd iterations.
    fn kmeans_init(&self, splits: &data::Splits) -> anyhow::Result<()> {
        let t0 = Instant::now();
        let cfg = self.cfg;
        let k = cfg.quantizer.codebook_size as usize;
        let mut order = BatchOrder::new(splits.train.len, cfg.train.batch_size, cfg.train.seed);
        let mut parts = Vec::new();
        let mut rows = 0;
        for step in 0..50 {
            let x = splits.train.batch(&order.indices(step), self.device)?;
            let v = self.model.quantizer.lookup_vectors(&self.model.encode(&x)?)?.detach();
            rows += v.dim(0)?;
            parts.push(v);
            if rows >= 20 * k {
                break;
            }
        }
        let vectors = candle_core::Tensor::cat(&parts, 0)?;
        let centroids = crate::model::quantizer::kmeans(&vectors, k, 10, cfg.train.seed)?;
        self.model.quantizer.set_codebook(&centroids)?;
        tracing::info!("k-means codebook init from {rows} encoder outputs ({:.1}s)", t0.elapsed().as_secs_f64());
        Ok(())
    }

    fn restore(&mut self, c: &Checkpoint) -> anyhow::Result<()> {
        let model: BTreeMap<String, _> =
            c.tensors.iter().filter_map(|(k, v)| Some((k.strip_prefix("model.")?.to_string(), v.clone()))).collect();
        self.model.params.load(&model)?;
        if let Some(d) = &self.model.discriminator {
            d.sync_initialized()?;
        }
        self.opt_g.load_state("opt_g", &c.tensors, c.counters.get("opt_g_t").copied().unwrap_or(0))?;
        if let Some(o) = &mut self.opt_d {
            o.load_state("opt_d", &c.tensors, c.counters.get("opt_d_t").copied().unwrap_or(0))?;
        }
        self.best_rec_mse = c.counters.get("best_rec_mse_bits").map(|b| f64::from_bits(*b)).unwrap_or(f64::INFINITY);
        Ok(())
    }

    fn snapshot(&self, step: u64) -> Checkpoint {
        let mut tensors: BTreeMap<String, _> =
            self.model.params.tensors().into_iter().map(|(k, v)| (format!("model.{k}"), v)).collect();
        tensors.extend(self.opt_g.state("opt_g"));
        let mut counters = BTreeMap::from([
            ("opt_g_t".to_string(), self.opt_g.t),
            ("best_rec_mse_bits".to_string(), self.best_rec_mse.to_bits()),
        ]);
        if let Some(o) = &self.opt_d {
            tensors.extend(o.state("opt_d"));
            counters.insert("opt_d_t".into(), o.t);
        }
        Checkpoint { step, tensors, counters }
    }

    fn train_from(&mut self, start: u64, splits: &data::Splits, status: &mut RunStatus) -> anyhow::Result<()> {
        let cfg = self.cfg;
        let t = &cfg.train;
        let mut order = BatchOrder::new(splits.train.len, t.batch_size, t.seed);
        let mut since_log = Instant::now();
        let mut images_since_log = 0usize;
        for step in start..t.steps {
            let done = step + 1;
            let last = done == t.steps;
            let log = done % t.log_every == 0 || last;
            let ckpt = done % t.checkpoint_every == 0 || last;
            let eval = done % t.eval_every == 0 || last;
            let x = splits.train.batch(&order.indices(step), self.device)?;
            images_since_log += order.batch_size();
            let losses = match &mut self.opt_d {
                None => step::vqvae_step(cfg, &self.model, &mut self.opt_g, &x, step, log)?,
                Some(opt_d) => step::vqgan_step(cfg, &self.model, &mut self.opt_g, opt_d, &x, step, log)?,
            };
            if log || ckpt {
                // The only host synchronisation of a training step, at log and checkpoint steps.
                let mut values = Vec::with_capacity(losses.len());
                for (name, tensor) in &losses {
                    let v = tensor.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
                    if !v.is_finite() {
                        anyhow::bail!("non-finite {} at step {done}", name.trim_start_matches("train/"));
                    }
                    values.push((*name, v));
                }
                if log {
                    let secs = since_log.elapsed().as_secs_f64();
                    let img_per_s = images_since_log as f64 / secs.max(1e-9);
                    for (name, v) in &values {
                        self.metrics.record(done, name, *v);
                    }
                    self.metrics.record(done, "train/img_per_s", img_per_s);
                    let rec = values.iter().find(|(n, _)| *n == "train/rec_loss").map(|(_, v)| *v).unwrap_or(f64::NAN);
                    tracing::info!("step {done}/{} rec_loss {rec:.5} {img_per_s:.0} img/s", t.steps);
                    since_log = Instant::now();
                    images_since_log = 0;
                }
            }
            if eval {
                self.evaluate(done, splits)?;
            }
            if ckpt {
                checkpoint::save_last(self.run_dir, &self.snapshot(done))?;
                self.metrics.flush()?;
                status.step = done;
                status.write(self.run_dir)?;
            }
        }
        self.write_summary(splits)?;
        Ok(())
    }

    fn evaluate(&mut self, step: u64, splits: &data::Splits) -> anyhow::Result<()> {
        let t0 = Instant::now();
        let r = eval::evaluate(&self.model, &splits.eval, self.cfg.eval.batch_size, self.device)?;
        for (name, v) in [
            ("eval/rec_mse", r.rec_mse),
            ("eval/psnr", r.psnr),
            ("eval/perplexity", r.codes.perplexity),
            ("eval/usage", r.codes.usage),
            ("eval/dead_codes", r.codes.dead_codes as f64),
        ] {
            if !v.is_finite() {
                anyhow::bail!("non-finite {name} at step {step}");
            }
            self.metrics.record(step, name, v);
        }
        tracing::info!(
            "eval at step {step}: rec_mse {:.5} psnr {:.2} dB perplexity {:.1} usage {:.3} dead {} ({:.1}s)",
            r.rec_mse,
            r.psnr,
            r.codes.perplexity,
            r.codes.usage,
            r.codes.dead_codes,
            t0.elapsed().as_secs_f64()
        );
        let grid =
            eval::reconstruction_grid(&self.model, &splits.eval, self.cfg.eval.sample_images as usize, self.device)?;
        let dir = self.run_dir.join(SAMPLES_DIR);
        std::fs::create_dir_all(&dir)?;
        let mut png = Vec::new();
        grid.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
        write_atomic(&dir.join(format!("step_{step:07}.png")), &png)?;
        if r.rec_mse < self.best_rec_mse {
            self.best_rec_mse = r.rec_mse;
            let weights = Checkpoint {
                step,
                tensors: self.model.params.tensors().into_iter().map(|(k, v)| (format!("model.{k}"), v)).collect(),
                counters: BTreeMap::new(),
            };
            checkpoint::save_best(self.run_dir, &weights, "eval/rec_mse", r.rec_mse)?;
        }
        Ok(())
    }

    /// `summary.json`: every resolved config key, flattened, plus the final eval metrics.
    fn write_summary(&self, splits: &data::Splits) -> anyhow::Result<()> {
        let mut summary = serde_json::Map::new();
        flatten("", &serde_json::to_value(self.cfg)?, &mut summary);
        summary.insert(
            "run.dir".into(),
            self.run_dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default().into(),
        );
        summary.insert("run.id".into(), config::run_id(self.cfg).into());
        summary.insert("run.dataset_fingerprint".into(), splits.fingerprint().into());
        for name in ["eval/rec_mse", "eval/psnr", "eval/perplexity", "eval/usage", "eval/dead_codes", "train/img_per_s"]
        {
            if let Some(v) = self.metrics.last(name) {
                summary.insert(name.into(), v.into());
            }
        }
        let mut bytes = serde_json::to_vec_pretty(&summary)?;
        bytes.push(b'\n');
        write_atomic(&self.run_dir.join(SUMMARY_FILE), &bytes)
    }
}

/// Flatten nested objects into dotted keys; arrays stay values.
pub fn flatten(prefix: &str, v: &serde_json::Value, out: &mut serde_json::Map<String, serde_json::Value>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}
