//! Training one run: `vqlab train RUN_DIR`. The loop owns iteration, the log / eval /
//! checkpoint cadence, resume and the run's status; the math of a step is in `step`.

pub mod checkpoint;
pub mod eval;
pub mod prior;
pub mod step;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use candle_core::Device;

use crate::config::{self, CodebookInit, DeviceKind, ExperimentConfig, Variant, TRAINING_REVISION};
use crate::data::{self, BatchOrder, Degradation};
use crate::metric::{self, CheckpointRule, Metric, Split};
use crate::metrics::features::{self, FeatureNet};
use crate::metrics::sink::SamplesSink;
use crate::metrics::tensorboard::TensorBoardSink;
use crate::metrics::{MetricsLog, RunStart, Sink, SinkSet};
use crate::model::VqModel;
use crate::nn::optim::Adam;
use crate::rundir::{RunDir, RunState, RunStatus};
use crate::util::flatten;
use checkpoint::Checkpoint;

/// Set by a scheduler in a worker's environment: how many other runs were on its GPU when it
/// started.
pub const GPU_SHARING_ENV: &str = "VQLAB_GPU_SHARING";
/// Test hook: a run whose dir name contains this fails out of memory whenever it starts on a
/// GPU that other runs share (what a CUDA out-of-memory error looks like to the scheduler),
/// so the retry-alone path runs on machines without a GPU.
pub const FAKE_OOM_ENV: &str = "VQLAB_FAKE_OOM_RUN";
/// Test hook: the peak device memory (MiB) a worker reports instead of measuring it.
pub const FAKE_DEVICE_MEMORY_ENV: &str = "VQLAB_FAKE_DEVICE_MEMORY_MIB";

/// How a training attempt ended (the process exit code follows from it).
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Done,
    Failed(String),
    /// Stopped by SIGINT/SIGTERM after a checkpoint; resumes from it.
    Interrupted(String),
    /// Stopped by a `train.early_stop` rule.
    StoppedEarly(String),
}

/// How the training loop ended, when it did not fail.
enum Ending {
    Completed,
    Interrupted(u64),
    Stopped(String),
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

/// Memory the run's process holds on its device, MiB: its GPU memory as `nvidia-smi` lists it
/// for this process (allocator caches included), or its peak resident memory on the CPU
/// (VmHWM). None when it cannot be read. `VQLAB_FAKE_DEVICE_MEMORY_MIB` replaces it (tests).
pub fn device_memory_mib(d: &Device) -> Option<u64> {
    if let Some(m) = std::env::var(FAKE_DEVICE_MEMORY_ENV).ok().and_then(|m| m.parse().ok()) {
        return Some(m);
    }
    match d {
        Device::Cuda(_) => {
            let out = std::process::Command::new("nvidia-smi")
                .args(["--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"])
                .stderr(std::process::Stdio::null())
                .output()
                .ok()?;
            let me = std::process::id().to_string();
            String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
                let (pid, mib) = l.split_once(',')?;
                (pid.trim() == me).then(|| mib.trim().parse().ok()).flatten()
            })
        }
        _ => {
            let status = std::fs::read_to_string("/proc/self/status").ok()?;
            let kib: u64 = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            Some(kib.div_ceil(1024))
        }
    }
}

/// What `vqlab bench` measured.
#[derive(Debug, serde::Serialize)]
pub struct BenchResult {
    pub model: String,
    pub device: String,
    pub threads: usize,
    pub batch_size: usize,
    pub steps: u64,
    /// Images of the timed steps over their total time.
    pub img_per_s: f64,
    pub median_step_ms: f64,
    pub step_ms: Vec<f64>,
    /// With `--profile`: where the timed steps' time went, vqlab's op passes slowest first and
    /// then the rest.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub profile: Vec<ProfileRow>,
}

/// One line of `vqlab bench --profile`.
#[derive(Debug, serde::Serialize)]
pub struct ProfileRow {
    pub op: String,
    pub calls_per_step: f64,
    pub ms_per_step: f64,
    /// Of the mean step time.
    pub share: f64,
    /// The pass broken down by what it ran on (a convolution's layer shape), slowest first;
    /// empty for passes that do not say.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<ProfileRow>,
}

/// Time `steps` training steps (after `warmup` untimed ones) of a run's model, optimizers and
/// batches, exactly as the training loop runs them at a step that does not log: the same
/// data loading, step functions and dead-code restarts, no sinks, eval or checkpoints.
/// VQ-GAN steps before `loss.disc_start` skip the discriminator, as in training.
/// `profile` also times each of vqlab's op passes over the timed steps (`util::profile`).
pub fn bench(cfg: &ExperimentConfig, warmup: u64, steps: u64, profile: bool) -> anyhow::Result<BenchResult> {
    if cfg.hardware.threads_per_run > 0 {
        let _ = rayon::ThreadPoolBuilder::new().num_threads(cfg.hardware.threads_per_run as usize).build_global();
    }
    let device = select_device(cfg.hardware.device)?;
    let splits = data::load(&cfg.data)?;
    let data_variance = splits.train.pixel_variance();
    let model = VqModel::new(cfg, &device)?;
    let (mut opt_g, mut opt_d) = optimizers(cfg, &model)?;
    let mut order = BatchOrder::new(splits.train.len, cfg.train.batch_size, cfg.train.seed);
    let mut step_ms = Vec::with_capacity(steps as usize);
    let mut images = 0usize;
    let t_all = Instant::now();
    let mut timed_from = t_all;
    for step in 0..warmup + steps {
        if step == warmup {
            crate::util::profile::enable(profile);
            timed_from = Instant::now();
        }
        let t0 = Instant::now();
        let x = splits.train.batch(&order.indices(step), &device)?;
        let losses = match &mut opt_d {
            None => step::vqvae_step(cfg, &model, &mut opt_g, &x, data_variance, step, false)?,
            Some(opt_d) => step::vqgan_step(cfg, &model, &mut opt_g, opt_d, &x, data_variance, step, false)?,
        };
        // A device finishes its queued work before the step counts as done.
        losses[0].1.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
        if step >= warmup {
            step_ms.push(t0.elapsed().as_secs_f64() * 1e3);
            images += order.batch_size();
        }
    }
    let secs = timed_from.elapsed().as_secs_f64();
    let rows = if profile { profile_rows(secs, steps) } else { Vec::new() };
    let mut sorted = step_ms.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(BenchResult {
        model: config::short_description(cfg),
        device: device_name(&device),
        threads: rayon::current_num_threads(),
        batch_size: cfg.train.batch_size,
        steps,
        img_per_s: images as f64 / secs,
        median_step_ms: sorted[sorted.len() / 2],
        step_ms,
        profile: rows,
    })
}

/// Stop profiling and turn what was recorded over `steps` timed steps of `secs` in all into
/// rows: each op pass, then the rest of the step.
fn profile_rows(secs: f64, steps: u64) -> Vec<ProfileRow> {
    crate::util::profile::enable(false);
    let step_ms_mean = secs * 1e3 / steps as f64;
    let mut covered = 0.0;
    let mut rows = Vec::new();
    for (op, calls, op_secs) in crate::util::profile::totals() {
        let ms = op_secs * 1e3 / steps as f64;
        covered += ms;
        let calls_per_step = calls as f64 / steps as f64;
        let layers = crate::util::profile::details(op)
            .into_iter()
            .map(|(layer, calls, secs)| {
                let ms = secs * 1e3 / steps as f64;
                ProfileRow {
                    op: layer,
                    calls_per_step: calls as f64 / steps as f64,
                    ms_per_step: ms,
                    share: ms / step_ms_mean,
                    layers: Vec::new(),
                }
            })
            .collect();
        rows.push(ProfileRow { op: op.to_string(), calls_per_step, ms_per_step: ms, share: ms / step_ms_mean, layers });
    }
    let rest = (step_ms_mean - covered).max(0.0);
    rows.push(ProfileRow {
        op: "everything else: candle's ops (elementwise, reductions, matmuls, layout copies), gradient bookkeeping, batches".into(),
        calls_per_step: 0.0,
        ms_per_step: rest,
        share: rest / step_ms_mean,
        layers: Vec::new(),
    });
    rows
}

/// The generator's and (VQ-GAN) the discriminator's Adam.
fn optimizers(cfg: &ExperimentConfig, model: &VqModel) -> candle_core::Result<(Adam, Option<Adam>)> {
    let g_vars: Vec<_> = model
        .params
        .vars()
        .iter()
        .filter(|(k, _)| !k.starts_with("disc."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let opt_g = Adam::new(g_vars, cfg.train.lr, cfg.adam_betas())?;
    let opt_d = match cfg.model.variant {
        Variant::Vqgan => Some(Adam::new(model.params.vars_with_prefix("disc."), cfg.train.lr, cfg.adam_betas())?),
        Variant::Vqvae => None,
    };
    Ok((opt_g, opt_d))
}

/// Train the run in `run_dir` to completion (or resume it), recording its status. Errors
/// that prevent even recording a status (an unwritable run dir) are returned; everything
/// else ends as a failed status with its reason.
pub fn train_run(run_dir: &Path) -> anyhow::Result<Outcome> {
    let run = RunDir::new(run_dir);
    let mut status = run.read_status_or_pending()?;
    let cfg = match run.read_config() {
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
    for sub in run.output_dirs() {
        if let Err(e) = crate::util::refuse_symlinked_dir(&sub) {
            return fail_before_start(run_dir, &mut status, e.to_string());
        }
        crate::util::remove_stale_temps(&sub);
    }
    crate::util::remove_stale_temps(run_dir);
    crate::util::process::install();
    status.mark_running(&device_name(&device));
    status.write(run_dir)?;
    let result = if cfg.prior.enabled {
        prior::run(&cfg, run_dir, &device, &mut status)
    } else {
        Trainer::run(&cfg, run_dir, &device, &mut status)
    };
    let outcome = match result {
        Ok(Ending::Completed) => {
            status.mark_finished(RunState::Done, "");
            Outcome::Done
        }
        Ok(Ending::Interrupted(step)) => {
            let reason = format!("interrupted by a signal; checkpointed at step {step}");
            tracing::warn!("{reason}");
            status.mark_finished(RunState::Interrupted, reason.clone());
            Outcome::Interrupted(reason)
        }
        Ok(Ending::Stopped(reason)) => {
            tracing::warn!("stopped early: {reason}");
            status.mark_finished(RunState::StoppedEarly, reason.clone());
            Outcome::StoppedEarly(reason)
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

/// The test hook `VQLAB_FAKE_OOM_RUN`: fail as CUDA does when this run starts on a shared GPU.
fn fake_out_of_memory(run_dir: &Path) -> anyhow::Result<()> {
    let Ok(pattern) = std::env::var(FAKE_OOM_ENV) else { return Ok(()) };
    let name = run_dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let sharing: usize = std::env::var(GPU_SHARING_ENV).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    if !pattern.is_empty() && name.contains(&pattern) && sharing > 0 {
        anyhow::bail!(
            "CUDA_ERROR_OUT_OF_MEMORY: out of memory ({FAKE_OOM_ENV} test hook; {sharing} other runs on the GPU)"
        );
    }
    Ok(())
}

/// Record an attempt that failed before training could start.
fn fail_before_start(run_dir: &Path, status: &mut RunStatus, reason: String) -> anyhow::Result<Outcome> {
    tracing::error!("run failed: {reason}");
    status.mark_running("none");
    status.mark_finished(RunState::Failed, reason.clone());
    status.write(run_dir)?;
    Ok(Outcome::Failed(reason))
}

/// The measures of one eval, each under its metric; a residual quantizer's per-level
/// measures (level, metric, value); and the code counts.
struct Measured {
    values: Vec<(&'static Metric, f64)>,
    levels: Vec<(u32, &'static Metric, f64)>,
    counts: Vec<u64>,
}

/// The code statistics of a set (or of one residual level) under their metrics.
fn code_values(c: &crate::metrics::CodebookStats) -> [(&'static Metric, f64); 3] {
    [(&metric::PERPLEXITY, c.perplexity), (&metric::USAGE, c.usage), (&metric::DEAD_CODES, c.dead_codes as f64)]
}

/// The feature network of the FID-style scores and the reference statistics of the two sets
/// it scores reconstructions of.
struct Fid {
    net: FeatureNet,
    /// None without a validation split.
    val: Option<eval::FidReference>,
    test: eval::FidReference,
}

struct Trainer<'a> {
    cfg: &'a ExperimentConfig,
    run: RunDir,
    device: &'a Device,
    model: VqModel,
    opt_g: Adam,
    opt_d: Option<Adam>,
    sinks: SinkSet,
    fid: Option<Fid>,
    /// How the best checkpoint is chosen, the best value so far and its step (0 = none yet).
    best_rule: CheckpointRule,
    best_value: Option<f64>,
    best_step: u64,
    /// Variance of the training pixels (what `loss.recon = "mse_var"` divides by).
    data_variance: f64,
    /// Seconds spent in training steps (logging included, eval and checkpoints not).
    train_seconds: f64,
    /// The last step reached, for the end-of-run record.
    step_reached: u64,
    /// The largest device memory measured at the probe steps (MiB).
    peak_memory_mib: Option<u64>,
    /// What the task does to the model's inputs (`task.kind`).
    degradation: Degradation,
}

/// Close a run's sinks as its training ended: flushed at a checkpoint when interrupted (the
/// resume continues the same files), ended otherwise; a failure keeps what was recorded up to
/// it (a resume drops the steps past its checkpoint) and marks the TensorBoard session failed.
fn close_sinks(sinks: &mut SinkSet, step: u64, result: anyhow::Result<Ending>) -> anyhow::Result<Ending> {
    match result {
        Ok(Ending::Interrupted(at)) => {
            sinks.checkpoint()?;
            Ok(Ending::Interrupted(at))
        }
        Ok(ending) => {
            sinks.end(step, true)?;
            Ok(ending)
        }
        Err(e) => {
            if let Err(e2) = sinks.end(step, false) {
                tracing::warn!("recording the failure in the metrics: {e2:#}");
            }
            Err(e)
        }
    }
}

/// The noise streams of the two eval sets (`data::degrade::eval_key`).
const VAL_STREAM: u64 = 1;
const TEST_STREAM: u64 = 2;

impl<'a> Trainer<'a> {
    fn run(
        cfg: &'a ExperimentConfig,
        run_dir: &'a Path,
        device: &'a Device,
        status: &mut RunStatus,
    ) -> anyhow::Result<Ending> {
        fake_out_of_memory(run_dir)?;
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
        if splits.val.len == 0 {
            tracing::warn!(
                "no validation split (data.val_images = 0): no best checkpoint; the eval metrics are those of the last step"
            );
        } else {
            tracing::info!(
                "validation split: the last {} images of the training split (not trained on); checkpoint selection reads it, never the test split",
                splits.val.len
            );
        }
        let model = VqModel::new(cfg, device)?;
        let (opt_g, opt_d) = optimizers(cfg, &model)?;
        let run = RunDir::new(run_dir);
        let (ckpt, notes) = checkpoint::load_latest(&run, device);
        for n in &notes {
            tracing::warn!("{n}");
        }
        if !notes.is_empty() {
            match &ckpt {
                Some(c) => tracing::warn!(
                    "falling back to {} at step {}",
                    run.previous_checkpoint().file_name().unwrap_or_default().to_string_lossy(),
                    c.step
                ),
                None => tracing::warn!("no readable checkpoint left: starting afresh from step 0"),
            }
        }
        let mut trainer = Trainer {
            cfg,
            run,
            device,
            model,
            opt_g,
            opt_d,
            sinks: SinkSet::default(),
            fid: None,
            best_rule: CheckpointRule::LOWEST_VAL_REC_MSE,
            best_value: None,
            best_step: 0,
            data_variance: splits.train.pixel_variance(),
            train_seconds: 0.0,
            step_reached: 0,
            peak_memory_mib: status.peak_memory_mib,
            degradation: Degradation::of(&cfg.task),
        };
        let start = match ckpt {
            Some(c) => {
                trainer.restore(&c)?;
                tracing::info!("resuming from checkpoint at step {}", c.step);
                c.step
            }
            None if cfg.loss.branch == config::Branch::SharedPrefix => trainer.branch(run_dir)?,
            None => {
                if cfg.quantizer.init == CodebookInit::Kmeans {
                    trainer.kmeans_init(&splits)?;
                }
                0
            }
        };
        trainer.step_reached = start;
        trainer.open_sinks(start)?;
        if cfg.eval.fid {
            let t0 = Instant::now();
            let net = features::feature_net(&cfg.data, &trainer.run.cache_dir(), device)
                .context("preparing the FID feature network (eval.fid = true)")?;
            let val = match splits.val.len {
                0 => None,
                _ => Some(eval::FidReference::new(&net, &splits.val, &cfg.eval, "data.val_images", device)?),
            };
            let test = eval::FidReference::new(&net, &splits.eval, &cfg.eval, "data.eval_images", device)?;
            trainer.fid = Some(Fid { net, val, test });
            tracing::info!("FID-style scores ready ({:.1}s)", t0.elapsed().as_secs_f64());
        }
        let counts = trainer.model.parameter_counts();
        tracing::info!(
            "model: {}; parameters: {}",
            config::short_description(cfg),
            counts.iter().filter(|(_, n)| *n > 0).map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
        );
        let result = trainer.train_from(start, &splits, status);
        close_sinks(&mut trainer.sinks, trainer.step_reached, result)
    }

    /// The run's sinks: metrics.parquet (with the rows up to `start` read back on resume),
    /// TensorBoard and sample PNGs; then the start-of-run records (config text, HParams).
    fn open_sinks(&mut self, start: u64) -> anyhow::Result<()> {
        let log = MetricsLog::open(self.run.path(), Some(start))?;
        let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
        let last: Vec<(String, f64)> =
            log.rows().iter().map(|r| (format!("{}/{}", r.split, r.metric), r.value)).collect();
        sinks.push(Box::new(log));
        match TensorBoardSink::open(self.run.path()) {
            Ok(tb) => sinks.push(Box::new(tb)),
            Err(e) => tracing::warn!("TensorBoard logging is off for this run: {e:#}"),
        }
        sinks.push(Box::new(SamplesSink::new(self.run.path())));
        self.sinks = SinkSet::new(sinks);
        for (name, v) in last {
            self.sinks.remember(&name, v);
        }
        let cfg = self.cfg;
        let task = cfg.task.kind != config::TaskKind::Reconstruct;
        let mut metrics = metric::names(Split::Eval, cfg.eval.fid, false, task);
        metrics.extend(metric::level_names(Split::Eval, cfg.quantizer.levels));
        if cfg.data.val_images() > 0 {
            for split in [Split::Val, Split::Best] {
                metrics.extend(metric::names(split, cfg.eval.fid, false, task));
                metrics.extend(metric::level_names(split, cfg.quantizer.levels));
            }
        }
        metrics.push(metric::IMG_PER_S.at(Split::Train));
        let run = RunStart {
            resume_step: start,
            hparams: hparams(cfg, self.run.path())?,
            metrics,
            config_toml: config::to_toml(cfg),
            start_time: crate::util::unix_now(),
        };
        self.sinks.start(&run)
    }

    /// k-means codebook from the encoder outputs of the first batches the run will train on
    /// (at least 20 vectors per code, at most 50 batches), 10 Lloyd iterations; each level of
    /// a residual quantizer from the residuals of the levels before it.
    fn kmeans_init(&self, splits: &data::Splits) -> anyhow::Result<()> {
        let t0 = Instant::now();
        let cfg = self.cfg;
        let k = cfg.quantizer.codebook_size as usize;
        let mut order = BatchOrder::new(splits.train.len, cfg.train.batch_size, cfg.train.seed);
        let mut latents = Vec::new();
        let mut rows = 0;
        for step in 0..50 {
            let x = splits.train.batch(&order.indices(step), self.device)?;
            let z = self.model.encode(&self.train_input(&x, step)?)?.detach();
            let (b, _, h, w) = z.dims4()?;
            rows += b * h * w;
            latents.push(z);
            if rows >= 20 * k {
                break;
            }
        }
        self.model.quantizer.seed_from_kmeans(&latents, 10, cfg.train.seed)?;
        tracing::info!("k-means codebook init from {rows} encoder outputs ({:.1}s)", t0.elapsed().as_secs_f64());
        Ok(())
    }

    /// The model's input for training batch `x` of `step`: `x` degraded as the task says, with
    /// noise keyed by the run's seed, the step and the image's place in the batch.
    fn train_input(&self, x: &candle_core::Tensor, step: u64) -> candle_core::Result<candle_core::Tensor> {
        let keys: Vec<u64> = (0..x.dim(0)?).map(|i| data::degrade::train_key(self.cfg.train.seed, step, i)).collect();
        self.degradation.apply(x, &keys)
    }

    /// `loss.branch = "shared_prefix"`: start from the VQ-VAE parent's state at `disc_start`
    /// (every generator parameter and buffer, Adam's moments and step count), with the
    /// discriminator as this run's seed initialises it. Best-checkpoint selection starts here.
    fn branch(&mut self, run_dir: &Path) -> anyhow::Result<u64> {
        let parent_cfg = config::sweep::branch_parent_of(self.cfg);
        let name = config::run_dir_name(&parent_cfg, &config::run_id(&parent_cfg));
        let parent = RunDir::new(run_dir.parent().unwrap_or(Path::new(".")).join(&name));
        let path = parent.branch_checkpoint();
        if !path.exists() {
            anyhow::bail!(
                "loss.branch = \"shared_prefix\": the VQ-VAE run {} has no state at loss.disc_start = {} ({} is missing: it has not reached that step, or it finished under a vqlab that did not keep it; move it away to train it again)",
                parent.path().display(),
                self.cfg.loss.disc_start,
                path.display()
            );
        }
        let c = checkpoint::read(&path, self.device).with_context(|| format!("reading {}", path.display()))?;
        if c.step != self.cfg.loss.disc_start {
            anyhow::bail!(
                "{} is at step {}, not at loss.disc_start = {}",
                path.display(),
                c.step,
                self.cfg.loss.disc_start
            );
        }
        let mut weights: BTreeMap<String, _> =
            c.tensors.iter().filter_map(|(k, v)| Some((k.strip_prefix("model.")?.to_string(), v.clone()))).collect();
        // The discriminator is this run's own, untrained as it is at disc_start in a full run.
        for (k, v) in self.model.params.tensors() {
            if k.starts_with("disc.") {
                weights.insert(k, v.copy()?);
            }
        }
        self.model.params.load(&weights)?;
        self.opt_g.load_state("opt_g", &c.tensors, c.counters.get("opt_g_t").copied().unwrap_or(0))?;
        tracing::info!("branching from {name} at step {} (loss.branch = \"shared_prefix\")", c.step);
        Ok(c.step)
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
        // (Checkpoints of revision 2 name the counter after the rule's metric, val/rec_mse.)
        self.best_value = ["best_value_bits", "best_rec_mse_bits"]
            .iter()
            .find_map(|k| c.counters.get(*k))
            .map(|b| f64::from_bits(*b))
            .filter(|v| v.is_finite());
        self.best_step = c.counters.get("best_step").copied().unwrap_or(0);
        Ok(())
    }

    fn snapshot(&self, step: u64) -> Checkpoint {
        let mut tensors: BTreeMap<String, _> =
            self.model.params.tensors().into_iter().map(|(k, v)| (format!("model.{k}"), v)).collect();
        tensors.extend(self.opt_g.state("opt_g"));
        let mut counters = BTreeMap::from([
            ("opt_g_t".to_string(), self.opt_g.t),
            ("best_value_bits".to_string(), self.best_value.unwrap_or(f64::INFINITY).to_bits()),
            ("best_step".to_string(), self.best_step),
        ]);
        if let Some(o) = &self.opt_d {
            tensors.extend(o.state("opt_d"));
            counters.insert("opt_d_t".into(), o.t);
        }
        Checkpoint { step, tensors, counters }
    }

    fn train_from(&mut self, start: u64, splits: &data::Splits, status: &mut RunStatus) -> anyhow::Result<Ending> {
        let cfg = self.cfg;
        let t = &cfg.train;
        // Device memory is read after the first steps, and for VQ-GAN again once the
        // discriminator trains too: what a scheduler packing GPUs by memory needs to know.
        let mut probes = vec![t.steps.min(5)];
        if cfg.model.variant == Variant::Vqgan && cfg.loss.disc_start + 5 <= t.steps {
            probes.push(cfg.loss.disc_start + 5);
        }
        let mut order = BatchOrder::new(splits.train.len, t.batch_size, t.seed);
        // img/s over the steps since the last log, without the eval and checkpoint time.
        let mut since_log = Instant::now();
        let mut paused = 0.0f64;
        let mut images_since_log = 0usize;
        let mut loop_start = Instant::now();
        let mut saved = start;
        for step in start..t.steps {
            if crate::util::process::received() > 0 {
                if step > saved {
                    checkpoint::save_last(&self.run, &self.snapshot(step))?;
                    status.step = step;
                }
                return Ok(Ending::Interrupted(status.step));
            }
            let done = step + 1;
            let last = done == t.steps;
            let log = t.log_every > 0 && (done % t.log_every == 0 || last);
            let ckpt = done % t.checkpoint_every == 0 || last;
            let eval = done % t.eval_every == 0 || last;
            let x = splits.train.batch(&order.indices(step), self.device)?;
            let input = self.train_input(&x, step)?;
            let batch = step::Batch { input: &input, target: &x };
            images_since_log += order.batch_size();
            let dv = self.data_variance;
            let losses = match &mut self.opt_d {
                None => step::vqvae_step(cfg, &self.model, &mut self.opt_g, batch, dv, step, log)?,
                Some(opt_d) => step::vqgan_step(cfg, &self.model, &mut self.opt_g, opt_d, batch, dv, step, log)?,
            };
            self.step_reached = done;
            if cfg.model.variant == Variant::Vqvae && done == cfg.loss.disc_start && !last {
                // The state a shared-prefix VQ-GAN arm of this config starts from.
                checkpoint::save_full(&self.run.branch_checkpoint(), &self.snapshot(done))?;
            }
            if probes.contains(&done) {
                if let Some(m) = device_memory_mib(self.device) {
                    let peak = self.peak_memory_mib.map_or(m, |p| p.max(m));
                    self.peak_memory_mib = Some(peak);
                    status.peak_memory_mib = Some(peak);
                    status.write(self.run.path())?;
                    tracing::info!("device memory after step {done}: {m} MiB");
                }
            }
            if log || ckpt {
                // The only host synchronisation of a training step, at log and checkpoint steps.
                let mut values = Vec::with_capacity(losses.len());
                for (name, tensor) in &losses {
                    let v = tensor.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
                    if !v.is_finite() {
                        anyhow::bail!("non-finite {} at step {done}", name.key);
                    }
                    values.push((*name, v));
                }
                if log {
                    let secs = (since_log.elapsed().as_secs_f64() - paused).max(1e-9);
                    let img_per_s = images_since_log as f64 / secs;
                    for (m, v) in &values {
                        self.sinks.scalar(done, &m.at(Split::Train), *v)?;
                    }
                    self.sinks.scalar(done, &metric::IMG_PER_S.at(Split::Train), img_per_s)?;
                    let rec =
                        values.iter().find(|(m, _)| m.key == metric::REC_LOSS.key).map(|(_, v)| *v).unwrap_or(f64::NAN);
                    tracing::info!("step {done}/{} rec_loss {rec:.5} {img_per_s:.0} img/s", t.steps);
                    status.progress_step = done;
                    status.loss = Some(rec);
                    status.write(self.run.path())?;
                    since_log = Instant::now();
                    paused = 0.0;
                    images_since_log = 0;
                }
            }
            if eval || ckpt {
                self.train_seconds += loop_start.elapsed().as_secs_f64();
                let t_pause = Instant::now();
                let mut stop = None;
                if eval {
                    let values = self.evaluate_val(done, splits)?;
                    // Validation made the rules typed; one that is not (an edited config) never fires.
                    stop = cfg.train.early_stop.iter().filter_map(|rule| rule.rule().ok()).find_map(|rule| {
                        let name = rule.metric.to_string();
                        values.iter().find(|(n, _)| *n == name).and_then(|(_, v)| rule.fires(done, *v))
                    });
                }
                // The test split is measured once, at the end (before the final checkpoint, so
                // that a resume past it finds the numbers recorded).
                if last || stop.is_some() {
                    self.evaluate_test(done, splits)?;
                }
                if ckpt || stop.is_some() {
                    checkpoint::save_last(&self.run, &self.snapshot(done))?;
                    self.sinks.checkpoint()?;
                    saved = done;
                    status.step = done;
                    status.write(self.run.path())?;
                }
                if let Some(reason) = stop {
                    self.write_summary(splits)?;
                    return Ok(Ending::Stopped(reason));
                }
                paused += t_pause.elapsed().as_secs_f64();
                loop_start = Instant::now();
            }
        }
        self.write_summary(splits)?;
        Ok(Ending::Completed)
    }

    /// Measure the model on the validation split or on the test split's eval subset: the
    /// measures of [`metric::MEASURES`] and the code counts.
    fn measure(&self, splits: &data::Splits, test: bool, step: u64) -> anyhow::Result<Measured> {
        let set = if test { &splits.eval } else { &splits.val };
        let fid = self.fid.as_ref().and_then(|f| {
            let reference = if test { Some(&f.test) } else { f.val.as_ref() };
            Some((&f.net, reference?))
        });
        let stream = if test { TEST_STREAM } else { VAL_STREAM };
        let r =
            eval::evaluate(&self.model, set, &self.degradation, stream, self.cfg.eval.batch_size, self.device, fid)?;
        let mut values: Vec<(&'static Metric, f64)> = vec![(&metric::REC_MSE, r.rec_mse), (&metric::PSNR, r.psnr)];
        if let Some(p) = r.input_psnr {
            values.push((&metric::INPUT_PSNR, p));
        }
        values.extend(code_values(&r.codes));
        if let Some(f) = r.fid {
            values.extend([(&metric::RFID, f.rfid), (&metric::KID, f.kid), (&metric::KID_STD, f.kid_std)]);
        }
        if let Some((m, _)) = values.iter().find(|(_, v)| !v.is_finite()) {
            anyhow::bail!("non-finite {} at step {step}", m.key);
        }
        let levels = (0u32..).zip(&r.levels).flat_map(|(l, c)| code_values(c).map(|(m, v)| (l, m, v))).collect();
        Ok(Measured { values, levels, counts: r.counts })
    }

    /// Record measures under `split/` and log them; returns the full names.
    fn record(
        &mut self,
        step: u64,
        split: Split,
        measured: &Measured,
        counts: bool,
        what: &str,
    ) -> anyhow::Result<Vec<(String, f64)>> {
        let values = &measured.values;
        let mut named: Vec<(String, f64)> = values.iter().map(|(m, v)| (m.at(split), *v)).collect();
        named.extend(measured.levels.iter().map(|(l, m, v)| (m.at_level(split, *l), *v)));
        let counts = counts.then_some(measured.counts.as_slice());
        for (name, v) in &named {
            self.sinks.scalar(step, name, *v)?;
        }
        if let Some(counts) = counts {
            self.sinks.histogram(step, &metric::code_usage_tag(split), counts)?;
        }
        let get = |key: &str| values.iter().find(|(m, _)| m.key == key).map(|(_, v)| *v);
        let fid_text = match (get("rfid"), get("kid"), get("kid_std")) {
            (Some(f), Some(k), Some(ks)) => format!(" rfid {f:.3} kid {k:.4}±{ks:.4}"),
            _ => String::new(),
        };
        tracing::info!(
            "{what} at step {step}: rec_mse {:.5} psnr {:.2} dB perplexity {:.1} usage {:.3} dead {}{fid_text}",
            get("rec_mse").unwrap_or(f64::NAN),
            get("psnr").unwrap_or(f64::NAN),
            get("perplexity").unwrap_or(f64::NAN),
            get("usage").unwrap_or(f64::NAN),
            get("dead_codes").unwrap_or(f64::NAN),
        );
        Ok(named)
    }

    /// The eval of an eval step: the validation split (`val/*`), the best checkpoint by its
    /// rec MSE, and a reconstruction grid of the first test images (a picture for people;
    /// nothing selects on it). Returns the validation metrics (none without a validation
    /// split), which early-stop rules read.
    fn evaluate_val(&mut self, step: u64, splits: &data::Splits) -> anyhow::Result<Vec<(String, f64)>> {
        let t0 = Instant::now();
        let mut named = Vec::new();
        if splits.val.len > 0 {
            let measured = self.measure(splits, false, step)?;
            named = self.record(step, Split::Val, &measured, true, "validation eval")?;
            let values = measured.values;
            let rule = self.best_rule;
            let value = values.iter().find(|(m, _)| m.key == rule.metric.metric.key).map(|(_, v)| *v);
            if let Some(value) = value.filter(|v| rule.improves(*v, self.best_value)) {
                self.best_value = Some(value);
                self.best_step = step;
                let weights = Checkpoint {
                    step,
                    tensors: self.model.params.tensors().into_iter().map(|(k, v)| (format!("model.{k}"), v)).collect(),
                    counters: BTreeMap::new(),
                };
                checkpoint::save_best(&self.run, &weights, &rule.metric.to_string(), value)?;
            }
        }
        let grid = eval::reconstruction_grid(
            &self.model,
            &splits.eval,
            &self.degradation,
            TEST_STREAM,
            self.cfg.eval.sample_images as usize,
            self.device,
        )?;
        let mut png = Vec::new();
        grid.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
        self.sinks.image(step, metric::RECONSTRUCTIONS_TAG, &png, grid.width(), grid.height())?;
        tracing::debug!("eval step {step} took {:.1}s", t0.elapsed().as_secs_f64());
        Ok(named)
    }

    /// The final eval on the test split: `eval/*` with the weights of this (last) step, and
    /// `best/*` with the weights of the best checkpoint (the same numbers when the best is
    /// this step).
    fn evaluate_test(&mut self, step: u64, splits: &data::Splits) -> anyhow::Result<()> {
        let t0 = Instant::now();
        let measured = self.measure(splits, true, step)?;
        self.record(step, Split::Eval, &measured, true, "test eval (last step)")?;
        if self.best_step > 0 {
            let best_values = if self.best_step == step {
                measured
            } else {
                let best = checkpoint::read(&self.run.best_checkpoint(), self.device)
                    .context("reading the best checkpoint")?;
                let weights: BTreeMap<String, _> = best
                    .tensors
                    .iter()
                    .filter_map(|(k, v)| Some((k.strip_prefix("model.")?.to_string(), v.clone())))
                    .collect();
                // Var::set writes in place: keep a copy of the last step's weights to go back to.
                let mut current = BTreeMap::new();
                for (k, v) in self.model.params.tensors() {
                    current.insert(k, v.copy()?);
                }
                self.model.params.load(&weights)?;
                let measured = self.measure(splits, true, step);
                self.model.params.load(&current)?;
                measured?
            };
            let what = format!("test eval (best checkpoint, step {})", self.best_step);
            self.record(step, Split::Best, &best_values, false, &what)?;
        }
        tracing::info!("test eval took {:.1}s", t0.elapsed().as_secs_f64());
        Ok(())
    }

    /// `summary.json`: every resolved config key, flattened, plus the final eval metrics.
    fn write_summary(&self, splits: &data::Splits) -> anyhow::Result<()> {
        let mut summary = serde_json::Map::new();
        flatten("", &serde_json::to_value(self.cfg)?, &mut summary);
        summary.insert("run.dir".into(), self.run.name().into());
        summary.insert("run.id".into(), config::run_id(self.cfg).into());
        summary.insert("run.dataset_fingerprint".into(), splits.fingerprint().into());
        summary.insert("run.train_seconds".into(), self.train_seconds.into());
        summary.insert("run.vqlab_version".into(), env!("CARGO_PKG_VERSION").into());
        summary.insert("run.vqlab_commit".into(), crate::GIT_COMMIT.into());
        summary.insert("run.training_revision".into(), TRAINING_REVISION.into());
        // The codes usage and dead codes count against (the implicit grid for fsq).
        summary.insert("run.codebook_codes".into(), self.model.quantizer.codebook_size.into());
        if let Some(m) = self.peak_memory_mib {
            summary.insert("run.peak_memory_mib".into(), m.into());
        }
        // Where each group of numbers comes from: split, images and checkpoint.
        let (n_eval, n_val) = (splits.eval.len, splits.val.len);
        summary.insert("run.last_step".into(), self.step_reached.into());
        summary.insert(
            "run.source.eval".into(),
            format!("test split (first {n_eval} test images), weights of the last step ({})", self.step_reached).into(),
        );
        if n_val > 0 {
            summary.insert(
                "run.source.val".into(),
                format!("validation split (last {n_val} training images, not trained on), weights of the last step")
                    .into(),
            );
        }
        if self.best_step > 0 {
            summary.insert("run.best_step".into(), self.best_step.into());
            let rule = self.best_rule.describe();
            summary.insert("run.best_rule".into(), rule.clone().into());
            summary.insert(
                "run.source.best".into(),
                format!(
                    "test split (first {n_eval} test images), weights of the best checkpoint ({rule}, step {})",
                    self.best_step
                )
                .into(),
            );
        }
        if let Some(fid) = &self.fid {
            summary.insert("run.feature_net".into(), fid.net.description.clone().into());
            if let Some(info) = &fid.net.info {
                summary.insert("run.feature_net_test_accuracy".into(), info.test_accuracy.into());
            }
        }
        let splits_measured = [Split::Eval, Split::Val, Split::Best];
        let names = metric::MEASURES.iter().flat_map(|m| splits_measured.map(|s| m.at(s)));
        let levels = splits_measured.into_iter().flat_map(|s| metric::level_names(s, self.cfg.quantizer.levels));
        for name in names.chain(levels).chain([metric::IMG_PER_S.at(Split::Train)]) {
            if let Some(v) = self.sinks.last(&name) {
                summary.insert(name, v.into());
            }
        }
        self.run.write_summary(&summary)
    }
}

/// The hyperparameters TensorBoard's HParams tab shows for a run: its sweep cell's keys (from
/// `cell.json`, written by the scheduler) plus the variant, codebook size and seed, with their
/// resolved values.
pub fn hparams(cfg: &ExperimentConfig, run_dir: &Path) -> anyhow::Result<BTreeMap<String, serde_json::Value>> {
    let mut flat = serde_json::Map::new();
    flatten("", &serde_json::to_value(cfg)?, &mut flat);
    let mut keys: Vec<String> = vec!["model.variant".into(), "quantizer.codebook_size".into(), "train.seed".into()];
    if let Ok(Some(cell)) = RunDir::new(run_dir).read_cell() {
        keys.extend(cell.keys().cloned());
    }
    Ok(keys.into_iter().filter_map(|k| Some((k.clone(), flat.get(&k)?.clone()))).collect())
}
