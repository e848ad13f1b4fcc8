//! Training a stage-2 prior run (`prior.enabled`): the frozen tokenizer of its parent run
//! encodes the training, validation and test splits once (`codes.safetensors` in the run
//! dir, [`RunDir::codes_file`]), a [`Prior`] learns the code grids of the training split, the validation NLL picks
//! the best checkpoint, and at the end the test NLL, the generation scores of the best
//! checkpoint's samples and their baselines are recorded.
//!
//! Baselines, computed the same way: `unigram_nll` (the codes under the training codes'
//! marginal, add-one smoothed) and `gen/marginal_fid` (images decoded from codes drawn
//! independently per position from that marginal).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};

use super::checkpoint::{self, Checkpoint};
use super::eval::{self, FidReference};
use super::Ending;
use crate::config::{self, ExperimentConfig};
use crate::data::{self, BatchOrder, ImageSet};
use crate::metric::{self, Split};
use crate::metrics::features::{self, FEATURE_DIM};
use crate::metrics::sink::SamplesSink;
use crate::metrics::tensorboard::TensorBoardSink;
use crate::metrics::{MetricsLog, RunStart, Sink, SinkSet};
use crate::model::prior::{DropoutKey, Prior, PriorShape};
use crate::model::VqModel;
use crate::nn::optim::Adam;
use crate::rundir::{RunDir, RunStatus};
use crate::util::flatten;

/// The TensorBoard image tag (and `samples/` grids) of a prior's samples.
pub const SAMPLES_TAG: &str = "gen/samples";
/// minGPT's and taming's Adam betas for the transformer.
const BETAS: [f64; 2] = [0.9, 0.95];
/// Seeds of the draws at the end: the prior's samples and the marginal baseline's codes.
const SAMPLE_SEED: u64 = 0x5a3d;
const MARGINAL_SEED: u64 = 0x3a61;
/// Grids sampled (or decoded) per batch.
const SAMPLE_BATCH: usize = 250;

/// A split's code grids, (images, positions) row-major.
#[derive(Debug, Clone)]
pub struct Codes {
    pub grids: Vec<u32>,
    pub count: usize,
}

/// The three splits' code grids and the grid's shape.
pub struct EncodedSplits {
    pub train: Codes,
    pub val: Codes,
    pub test: Codes,
    pub height: usize,
    pub width: usize,
}

/// The parent (tokenizer) run's directory: the sibling named by the config's parent.
pub fn parent_dir(run_dir: &Path, cfg: &ExperimentConfig) -> PathBuf {
    let parent = config::sweep::tokenizer_of(cfg);
    let name = config::run_dir_name(&parent, &config::run_id(&parent));
    run_dir.parent().unwrap_or(Path::new(".")).join(name)
}

/// The tokenizer of a finished parent run with its selected weights (the best checkpoint by
/// the validation split, else the last).
fn load_tokenizer(parent: &RunDir, cfg: &ExperimentConfig, device: &Device) -> anyhow::Result<(VqModel, String)> {
    let status = RunStatus::read_or_pending(parent.path())?;
    if !status.state.is_finished() {
        anyhow::bail!(
            "parent run {} is not done (state {}{}): a prior starts after its tokenizer",
            parent.path().display(),
            status.state.name(),
            if status.reason.is_empty() { String::new() } else { format!(": {}", status.reason) }
        );
    }
    let tokenizer_cfg = config::sweep::tokenizer_of(cfg);
    let model = VqModel::new(&tokenizer_cfg, device)?;
    let path = [parent.best_checkpoint(), parent.last_checkpoint()]
        .into_iter()
        .find(|p| p.exists())
        .ok_or_else(|| anyhow::anyhow!("parent run {} has no checkpoint", parent.path().display()))?;
    let ckpt = checkpoint::read(&path, device).with_context(|| format!("reading {}", path.display()))?;
    let weights: BTreeMap<String, _> =
        ckpt.tensors.iter().filter_map(|(k, v)| Some((k.strip_prefix("model.")?.to_string(), v.clone()))).collect();
    model.params.load(&weights)?;
    let which = format!("{} (step {})", path.file_name().unwrap_or_default().to_string_lossy(), ckpt.step);
    Ok((model, which))
}

/// Every image of a set encoded to its code grid.
fn encode_set(model: &VqModel, set: &ImageSet, batch: usize, device: &Device) -> anyhow::Result<(Codes, usize, usize)> {
    let mut grids = Vec::new();
    let (mut h, mut w) = (0, 0);
    let indices: Vec<usize> = (0..set.len).collect();
    for chunk in indices.chunks(batch.max(1)) {
        let x = set.batch(chunk, device)?;
        let z = model.encode(&x)?;
        (_, _, h, w) = z.dims4()?;
        grids.extend(model.quantizer.forward(&z, false)?.indices.to_vec1::<u32>()?);
    }
    Ok((Codes { grids, count: set.len }, h, w))
}

/// The code grids of the three splits: read from `codes.safetensors`, or encoded by the
/// tokenizer and written there (atomically) the first time.
fn encoded_splits(
    run: &RunDir,
    model: &VqModel,
    splits: &data::Splits,
    batch: usize,
    device: &Device,
) -> anyhow::Result<EncodedSplits> {
    let path = run.codes_file();
    if path.exists() {
        match read_codes(&path) {
            Ok(codes) => return Ok(codes),
            Err(e) => tracing::warn!("re-encoding the code grids: {e:#}"),
        }
    }
    let t0 = Instant::now();
    let (train, height, width) = encode_set(model, &splits.train, batch, device)?;
    let (val, _, _) = encode_set(model, &splits.val, batch, device)?;
    let (test, _, _) = encode_set(model, &splits.eval, batch, device)?;
    let encoded = EncodedSplits { train, val, test, height, width };
    write_codes(&path, &encoded)?;
    tracing::info!(
        "encoded {} train, {} val and {} test images to {height}×{width} code grids ({:.1}s)",
        encoded.train.count,
        encoded.val.count,
        encoded.test.count,
        t0.elapsed().as_secs_f64()
    );
    Ok(encoded)
}

fn write_codes(path: &Path, e: &EncodedSplits) -> anyhow::Result<()> {
    let t = e.height * e.width;
    let mut tensors = BTreeMap::new();
    for (name, codes) in [("train", &e.train), ("val", &e.val), ("test", &e.test)] {
        tensors.insert(name.to_string(), Tensor::from_vec(codes.grids.clone(), (codes.count, t), &Device::Cpu)?);
    }
    let counters = BTreeMap::from([("height".to_string(), e.height as u64), ("width".to_string(), e.width as u64)]);
    let bytes = crate::nn::checkpoint::to_bytes(&Checkpoint { step: 0, tensors, counters }, &[])?;
    crate::util::write_atomic(path, &bytes)
}

/// The code grids of a prior run's `codes.safetensors`.
pub fn read_codes(path: &Path) -> anyhow::Result<EncodedSplits> {
    let c = checkpoint::read(path, &Device::Cpu)?;
    let counter =
        |k: &str| c.counters.get(k).copied().map(|v| v as usize).context(format!("{} lacks {k}", path.display()));
    let (height, width) = (counter("height")?, counter("width")?);
    let split = |name: &str| -> anyhow::Result<Codes> {
        let t = c.tensors.get(name).with_context(|| format!("{} lacks the {name} codes", path.display()))?;
        let count = t.dim(0)?;
        Ok(Codes { grids: t.flatten_all()?.to_vec1::<u32>()?, count })
    };
    Ok(EncodedSplits { train: split("train")?, val: split("val")?, test: split("test")?, height, width })
}

/// Mean NLL in bits per code of a set's grids under the prior (no dropout), in batches.
fn nll_bits(prior: &Prior, codes: &Codes, positions: usize, batch: usize, device: &Device) -> anyhow::Result<f64> {
    let mut total = 0.0f64;
    for start in (0..codes.count).step_by(batch.max(1)) {
        let n = batch.min(codes.count - start);
        let rows = &codes.grids[start * positions..(start + n) * positions];
        let x = Tensor::from_vec(rows.to_vec(), (n, positions), device)?;
        let mean = prior.nll(&x, None)?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        total += mean * n as f64;
    }
    Ok(total / codes.count.max(1) as f64 / std::f64::consts::LN_2)
}

/// The training codes' marginal, add-one smoothed.
fn marginal(codes: &Codes, k: usize) -> Vec<f64> {
    let mut counts = vec![1.0f64; k];
    for &c in &codes.grids {
        counts[c as usize] += 1.0;
    }
    let total: f64 = counts.iter().sum();
    counts.iter().map(|c| c / total).collect()
}

/// Mean NLL in bits per code of a set under a fixed distribution over codes.
fn unigram_bits(p: &[f64], codes: &Codes) -> f64 {
    let n = codes.grids.len().max(1) as f64;
    codes.grids.iter().map(|&c| -p[c as usize].log2()).sum::<f64>() / n
}

struct PriorTrainer<'a> {
    cfg: &'a ExperimentConfig,
    run: RunDir,
    device: &'a Device,
    prior: Prior,
    opt: Adam,
    sinks: SinkSet,
    best_value: Option<f64>,
    best_step: u64,
    step_reached: u64,
    train_seconds: f64,
}

/// Train (or resume) the prior run in `run_dir`.
pub(super) fn run(
    cfg: &ExperimentConfig,
    run_dir: &Path,
    device: &Device,
    status: &mut RunStatus,
) -> anyhow::Result<Ending> {
    let p = &cfg.prior;
    let run = RunDir::new(run_dir);
    let parent = RunDir::new(parent_dir(run_dir, cfg));
    let (tokenizer, which) = load_tokenizer(&parent, cfg, device)?;
    tracing::info!("tokenizer: {} with the weights of {which}", parent.path().display());
    let splits = data::load(&cfg.data)?;
    let codes = encoded_splits(&run, &tokenizer, &splits, cfg.eval.batch_size, device)?;
    let positions = codes.height * codes.width;
    let k = tokenizer.quantizer.codebook_size;
    let shape = PriorShape {
        codes: k,
        positions,
        layers: p.layers as usize,
        width: p.width as usize,
        heads: p.heads as usize,
        dropout: p.dropout,
    };
    let prior = Prior::new(shape, cfg.train.seed, device)?;
    let vars: Vec<_> = prior.params.vars().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let opt = Adam::new(vars, p.lr, BETAS)?;
    tracing::info!(
        "prior: {} blocks, width {}, {} heads over {positions} positions of {k} codes; {} parameters",
        p.layers,
        p.width,
        p.heads,
        prior.params.count("")
    );
    let mut t = PriorTrainer {
        cfg,
        run,
        device,
        prior,
        opt,
        sinks: SinkSet::default(),
        best_value: None,
        best_step: 0,
        step_reached: 0,
        train_seconds: 0.0,
    };
    let (ckpt, notes) = checkpoint::load_latest(&t.run, device);
    for n in &notes {
        tracing::warn!("{n}");
    }
    let start = match ckpt {
        Some(c) => {
            t.restore(&c)?;
            tracing::info!("resuming from checkpoint at step {}", c.step);
            c.step
        }
        None => 0,
    };
    t.step_reached = start;
    t.open_sinks(start)?;
    let result = t.train_from(start, &codes, status).and_then(|ending| match ending {
        Ending::Completed => {
            t.finish(&tokenizer, &codes, &splits)?;
            Ok(Ending::Completed)
        }
        other => Ok(other),
    });
    super::close_sinks(&mut t.sinks, t.step_reached, result)
}

impl PriorTrainer<'_> {
    fn open_sinks(&mut self, start: u64) -> anyhow::Result<()> {
        let log = MetricsLog::open(self.run.path(), Some(start))?;
        let last: Vec<(String, f64)> =
            log.rows().iter().map(|r| (format!("{}/{}", r.split, r.metric), r.value)).collect();
        let mut sinks: Vec<Box<dyn Sink>> = vec![Box::new(log)];
        match TensorBoardSink::open(self.run.path()) {
            Ok(tb) => sinks.push(Box::new(tb)),
            Err(e) => tracing::warn!("TensorBoard logging is off for this run: {e:#}"),
        }
        sinks.push(Box::new(SamplesSink::new(self.run.path())));
        self.sinks = SinkSet::new(sinks);
        for (name, v) in last {
            self.sinks.remember(&name, v);
        }
        let fid = self.cfg.eval.fid;
        let metrics = [Split::Val, Split::Eval, Split::Best, Split::Gen]
            .into_iter()
            .flat_map(|s| metric::prior_names(s, fid))
            .chain([metric::TRAIN_NLL.at(Split::Train)])
            .collect();
        let start = RunStart {
            resume_step: start,
            hparams: super::hparams(self.cfg, self.run.path())?,
            metrics,
            config_toml: config::to_toml(self.cfg),
            start_time: crate::util::unix_now(),
        };
        self.sinks.start(&start)
    }

    fn restore(&mut self, c: &Checkpoint) -> anyhow::Result<()> {
        let weights: BTreeMap<String, _> =
            c.tensors.iter().filter_map(|(k, v)| Some((k.strip_prefix("model.")?.to_string(), v.clone()))).collect();
        self.prior.params.load(&weights)?;
        self.opt.load_state("opt", &c.tensors, c.counters.get("opt_t").copied().unwrap_or(0))?;
        self.best_value = c.counters.get("best_value_bits").map(|b| f64::from_bits(*b)).filter(|v| v.is_finite());
        self.best_step = c.counters.get("best_step").copied().unwrap_or(0);
        Ok(())
    }

    fn weights(&self) -> BTreeMap<String, Tensor> {
        self.prior.params.tensors().into_iter().map(|(k, v)| (format!("model.{k}"), v)).collect()
    }

    fn snapshot(&self, step: u64) -> Checkpoint {
        let mut tensors = self.weights();
        tensors.extend(self.opt.state("opt"));
        let counters = BTreeMap::from([
            ("opt_t".to_string(), self.opt.t),
            ("best_value_bits".to_string(), self.best_value.unwrap_or(f64::INFINITY).to_bits()),
            ("best_step".to_string(), self.best_step),
        ]);
        Checkpoint { step, tensors, counters }
    }

    fn train_from(&mut self, start: u64, codes: &EncodedSplits, status: &mut RunStatus) -> anyhow::Result<Ending> {
        let p = &self.cfg.prior;
        let positions = codes.height * codes.width;
        let mut order = BatchOrder::new(codes.train.count, p.batch_size, self.cfg.train.seed);
        let log_every = self.cfg.train.log_every;
        let mut loop_start = Instant::now();
        let mut saved = start;
        for step in start..p.steps {
            if crate::util::process::received() > 0 {
                if step > saved {
                    checkpoint::save_last(&self.run, &self.snapshot(step))?;
                    status.step = step;
                }
                return Ok(Ending::Interrupted(status.step));
            }
            let done = step + 1;
            let last = done == p.steps;
            let rows: Vec<u32> = order
                .indices(step)
                .iter()
                .flat_map(|&i| codes.train.grids[i * positions..(i + 1) * positions].iter().copied())
                .collect();
            let n = rows.len() / positions;
            let x = Tensor::from_vec(rows, (n, positions), self.device)?;
            let loss = self.prior.nll(&x, Some(DropoutKey { seed: self.cfg.train.seed, step }))?;
            let grads = loss.backward()?;
            self.opt.step(|_, _, var| Ok(grads.get(var.as_tensor()).cloned()))?;
            self.step_reached = done;
            if log_every > 0 && (done % log_every == 0 || last) {
                let bits = loss.to_dtype(DType::F64)?.to_scalar::<f64>()? / std::f64::consts::LN_2;
                if !bits.is_finite() {
                    anyhow::bail!("non-finite train/nll at step {done}");
                }
                self.sinks.scalar(done, &metric::TRAIN_NLL.at(Split::Train), bits)?;
                tracing::info!("step {done}/{} nll {bits:.4} bits/code", p.steps);
                status.progress_step = done;
                status.loss = Some(bits);
                status.write(self.run.path())?;
            }
            if done % p.eval_every == 0 || last {
                self.train_seconds += loop_start.elapsed().as_secs_f64();
                let val = nll_bits(&self.prior, &codes.val, positions, self.cfg.eval.batch_size, self.device)?;
                if codes.val.count > 0 {
                    self.sinks.scalar(done, &metric::NLL.at(Split::Val), val)?;
                    tracing::info!("validation NLL at step {done}: {val:.4} bits/code");
                    if val.is_finite() && self.best_value.is_none_or(|b| val < b) {
                        self.best_value = Some(val);
                        self.best_step = done;
                        let weights = Checkpoint { step: done, tensors: self.weights(), counters: BTreeMap::new() };
                        checkpoint::save_best(&self.run, &weights, &metric::NLL.at(Split::Val), val)?;
                    }
                }
                checkpoint::save_last(&self.run, &self.snapshot(done))?;
                self.sinks.checkpoint()?;
                saved = done;
                status.step = done;
                status.write(self.run.path())?;
                loop_start = Instant::now();
            }
        }
        Ok(Ending::Completed)
    }

    /// The end of the run: test NLL with the last and the best weights, the baselines, and
    /// the generation scores of the best weights' samples; then `summary.json`.
    fn finish(&mut self, tokenizer: &VqModel, codes: &EncodedSplits, splits: &data::Splits) -> anyhow::Result<()> {
        let t0 = Instant::now();
        let cfg = self.cfg;
        let p = &cfg.prior;
        let step = self.step_reached;
        let positions = codes.height * codes.width;
        let k = self.prior.shape.codes;
        let batch = cfg.eval.batch_size;
        let last = nll_bits(&self.prior, &codes.test, positions, batch, self.device)?;
        let p_marginal = marginal(&codes.train, k);
        let unigram = unigram_bits(&p_marginal, &codes.test);
        self.sinks.scalar(step, &metric::NLL.at(Split::Eval), last)?;
        self.sinks.scalar(step, &metric::UNIGRAM_NLL.at(Split::Eval), unigram)?;
        if self.best_step > 0 && self.best_step != step {
            let best =
                checkpoint::read(&self.run.best_checkpoint(), self.device).context("reading the best checkpoint")?;
            let weights: BTreeMap<String, _> = best
                .tensors
                .iter()
                .filter_map(|(k, v)| Some((k.strip_prefix("model.")?.to_string(), v.clone())))
                .collect();
            self.prior.params.load(&weights)?;
        }
        let best = if self.best_step == step || self.best_step == 0 {
            last
        } else {
            nll_bits(&self.prior, &codes.test, positions, batch, self.device)?
        };
        if self.best_step > 0 {
            self.sinks.scalar(step, &metric::NLL.at(Split::Best), best)?;
            self.sinks.scalar(step, &metric::UNIGRAM_NLL.at(Split::Best), unigram)?;
        }
        tracing::info!(
            "test NLL: {last:.4} bits/code (last), {best:.4} (best checkpoint); unigram baseline {unigram:.4}"
        );
        // Samples of the selected weights, and the marginal baseline's codes.
        let n = p.samples as usize;
        let sampled =
            self.prior.sample(n, p.temperature, p.top_k as usize, SAMPLE_SEED ^ cfg.train.seed, SAMPLE_BATCH)?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(MARGINAL_SEED ^ cfg.train.seed);
        let cdf: Vec<f64> = p_marginal
            .iter()
            .scan(0.0, |acc, p| {
                *acc += p;
                Some(*acc)
            })
            .collect();
        let independent: Vec<u32> = (0..n * positions)
            .map(|_| {
                let u = rng.random::<f64>() * cdf[k - 1];
                cdf.partition_point(|c| *c <= u).min(k - 1) as u32
            })
            .collect();
        let grid = (codes.height, codes.width);
        let (c, s) = (splits.eval.channels, splits.eval.side);
        let show = (cfg.eval.sample_images as usize).clamp(1, n);
        let images = decode(tokenizer, &sampled[..show * positions], show, grid, self.device)?;
        let png = {
            let img = eval::image_grid(&[images.flatten_all()?.to_vec1::<f32>()?], show, c, s);
            let mut png = Vec::new();
            img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
            (png, img.width(), img.height())
        };
        self.sinks.image(step, SAMPLES_TAG, &png.0, png.1, png.2)?;
        if cfg.eval.fid {
            let net = features::feature_net(&cfg.data, &self.run.cache_dir(), self.device)
                .context("preparing the FID feature network (eval.fid = true)")?;
            let reference = FidReference::new(&net, &splits.eval, &cfg.eval, "data.eval_images", self.device)?;
            let features_of = |grids: &[u32]| -> anyhow::Result<Vec<f32>> {
                let mut out = Vec::with_capacity(n * FEATURE_DIM);
                for chunk in grids.chunks(SAMPLE_BATCH * positions) {
                    let m = chunk.len() / positions;
                    let x = decode(tokenizer, chunk, m, grid, self.device)?.clamp(0.0, 1.0)?;
                    out.extend(net.features_vec(&x)?);
                }
                Ok(out)
            };
            let (subsets, size) = (cfg.eval.kid_subsets as usize, cfg.eval.kid_subset_size as usize);
            let gen = eval::generation_scores(&reference, &features_of(&sampled)?, subsets, size);
            let base = eval::generation_scores(&reference, &features_of(&independent)?, subsets, size);
            self.sinks.scalar(step, &metric::GEN_FID.at(Split::Gen), gen.rfid)?;
            self.sinks.scalar(step, &metric::GEN_KID.at(Split::Gen), gen.kid)?;
            self.sinks.scalar(step, &metric::GEN_KID_STD.at(Split::Gen), gen.kid_std)?;
            self.sinks.scalar(step, &metric::GEN_MARGINAL_FID.at(Split::Gen), base.rfid)?;
            tracing::info!(
                "generation: gfid {:.3} gkid {:.4}±{:.4} over {n} samples; marginal baseline gfid {:.3}",
                gen.rfid,
                gen.kid,
                gen.kid_std,
                base.rfid
            );
        }
        tracing::info!("prior evaluation took {:.1}s", t0.elapsed().as_secs_f64());
        self.write_summary(splits, codes)
    }

    fn write_summary(&self, splits: &data::Splits, codes: &EncodedSplits) -> anyhow::Result<()> {
        let cfg = self.cfg;
        let mut summary = serde_json::Map::new();
        flatten("", &serde_json::to_value(cfg)?, &mut summary);
        let parent = parent_dir(self.run.path(), cfg);
        summary.insert("run.dir".into(), self.run.name().into());
        summary.insert("run.id".into(), config::run_id(cfg).into());
        summary.insert("run.stage".into(), "prior".into());
        summary.insert(
            "run.parent".into(),
            parent.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default().into(),
        );
        summary.insert("run.parent_id".into(), config::run_id(&config::sweep::tokenizer_of(cfg)).into());
        summary.insert("run.prior_revision".into(), config::sweep::PRIOR_REVISION.into());
        summary.insert("run.dataset_fingerprint".into(), splits.fingerprint().into());
        summary.insert("run.train_seconds".into(), self.train_seconds.into());
        summary.insert("run.vqlab_version".into(), env!("CARGO_PKG_VERSION").into());
        summary.insert("run.vqlab_commit".into(), crate::GIT_COMMIT.into());
        summary.insert("run.training_revision".into(), config::TRAINING_REVISION.into());
        summary.insert("run.codebook_codes".into(), self.prior.shape.codes.into());
        summary.insert("run.code_grid".into(), format!("{}×{}", codes.height, codes.width).into());
        summary.insert("run.prior_parameters".into(), self.prior.params.count("").into());
        summary.insert("run.last_step".into(), self.step_reached.into());
        if self.best_step > 0 {
            summary.insert("run.best_step".into(), self.best_step.into());
            summary.insert("run.best_rule".into(), "lowest val/nll".into());
        }
        summary.insert(
            "run.source.gen".into(),
            format!(
                "{} samples of the {} weights (temperature {}, top-k {}), against the first {} test images",
                cfg.prior.samples,
                if self.best_step > 0 { "best checkpoint's" } else { "last step's" },
                cfg.prior.temperature,
                cfg.prior.top_k,
                splits.eval.len
            )
            .into(),
        );
        for split in [Split::Train, Split::Val, Split::Eval, Split::Best, Split::Gen] {
            for name in metric::prior_names(split, cfg.eval.fid) {
                if let Some(v) = self.sinks.last(&name) {
                    summary.insert(name, v.into());
                }
            }
        }
        self.run.write_summary(&summary)
    }
}

/// Images on [0, 1] of `n` code grids (row-major, `grid` = (H, W)) through the tokenizer.
fn decode(model: &VqModel, grids: &[u32], n: usize, (h, w): (usize, usize), device: &Device) -> anyhow::Result<Tensor> {
    let idx = Tensor::from_vec(grids.to_vec(), grids.len(), device)?;
    Ok(model.decode_indices(&idx, (n, h, w))?.clamp(0.0, 1.0)?)
}

/// Time `steps` training steps (after `warmup` untimed ones) of the experiment's prior
/// (`[prior]`, over the code grid its tokenizer config makes: (image_size / 2^downsample)²
/// positions of K codes) on random code grids, as the prior's training loop runs them at a
/// step that does not log. `img_per_s` counts code grids.
pub fn bench_prior(
    cfg: &ExperimentConfig,
    warmup: u64,
    steps: u64,
    profile: bool,
) -> anyhow::Result<super::BenchResult> {
    if cfg.hardware.threads_per_run > 0 {
        let _ = rayon::ThreadPoolBuilder::new().num_threads(cfg.hardware.threads_per_run as usize).build_global();
    }
    let device = super::select_device(cfg.hardware.device)?;
    let p = &cfg.prior;
    let side = (cfg.data.image_size >> cfg.model.downsample) as usize;
    let k = cfg.quantizer.codebook_size as usize;
    let shape = PriorShape {
        codes: k,
        positions: side * side,
        layers: p.layers as usize,
        width: p.width as usize,
        heads: p.heads as usize,
        dropout: p.dropout,
    };
    let prior = Prior::new(shape, cfg.train.seed, &device)?;
    let vars: Vec<_> = prior.params.vars().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let mut opt = Adam::new(vars, p.lr, BETAS)?;
    // A pool of 10 batches of random grids, cycled like an epoch.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.train.seed);
    let pool: Vec<u32> = (0..10 * p.batch_size * shape.positions).map(|_| rng.random_range(0..k as u32)).collect();
    let mut step_ms = Vec::with_capacity(steps as usize);
    let mut timed_from = Instant::now();
    for step in 0..warmup + steps {
        if step == warmup {
            crate::util::profile::enable(profile);
            timed_from = Instant::now();
        }
        let t0 = Instant::now();
        let chunk = p.batch_size * shape.positions;
        let at = (step as usize % 10) * chunk;
        let x = Tensor::from_vec(pool[at..at + chunk].to_vec(), (p.batch_size, shape.positions), &device)?;
        let loss = prior.nll(&x, Some(DropoutKey { seed: cfg.train.seed, step }))?;
        let grads = loss.backward()?;
        opt.step(|_, _, var| Ok(grads.get(var.as_tensor()).cloned()))?;
        loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        if step >= warmup {
            step_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    let secs = timed_from.elapsed().as_secs_f64();
    let rows = if profile { super::profile_rows(secs, steps) } else { Vec::new() };
    let mut sorted = step_ms.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(super::BenchResult {
        model: format!(
            "prior {} blocks × width {}, {} heads, dropout {} over {} positions of K={}",
            p.layers, p.width, p.heads, p.dropout, shape.positions, k
        ),
        device: super::device_name(&device),
        threads: rayon::current_num_threads(),
        batch_size: p.batch_size,
        steps,
        img_per_s: (steps as usize * p.batch_size) as f64 / secs,
        median_step_ms: sorted[sorted.len() / 2],
        step_ms,
        profile: rows,
    })
}
