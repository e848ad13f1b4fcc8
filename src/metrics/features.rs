//! The feature network behind vqlab's FID-style scores.
//!
//! For a labelled dataset (Fashion-MNIST, MNIST, CIFAR-10, synthetic shapes, an image folder
//! with class subdirectories) it is a small classifier — two stride-2 3×3 convolutions (32 and
//! 64 channels, ReLU), a 128-unit fully connected layer and a softmax head — trained once on
//! the dataset's whole training split and cached under `<runs-dir>/.cache/features/`, keyed by a
//! fingerprint of the dataset's pixels and labels. Its features are the 128 activations of the
//! penultimate layer before their ReLU. The test accuracy is recorded next to the weights.
//!
//! An unlabelled folder gets the same network untrained, from a fixed seed (random features:
//! enough to compare runs on that dataset, and named as such in every summary).
//!
//! When several runs start at once, one takes an exclusive lock on the cache entry and trains;
//! the others block on the lock and then load what it wrote. The lock is an advisory `flock`,
//! which the kernel releases when its holder dies, so a crashed trainer leaves no stale lock:
//! the next process takes it and trains. Weights and metadata are written to temporary names
//! and renamed into place, metadata first, so a reader never sees a torn entry.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::config::{DataConfig, DatasetKind};
use crate::data::{self, BatchOrder, ImageSet, Splits};
use crate::model::layers::Conv2d;
use crate::model::params::{torch_default, ParamStore};
use crate::nn::checkpoint::{self, Checkpoint};
use crate::nn::optim::Adam;
use crate::util::{write_atomic, LockFile};

/// Bump when the architecture or its training recipe changes: old cache entries are ignored.
pub const ARCH: &str = "conv32s2-conv64s2-fc128-v1";
pub const FEATURE_DIM: usize = 128;
const TRAIN_BATCH: usize = 128;
const TRAIN_LR: f64 = 1e-3;
const INIT_SEED: u64 = 0xf1d;

/// What was recorded about a trained classifier (the `.json` next to its weights).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FeatureNetInfo {
    pub arch: String,
    pub dataset: String,
    pub fingerprint: String,
    pub classes: usize,
    pub train_images: usize,
    pub test_images: usize,
    pub train_steps: u64,
    pub test_accuracy: f64,
    pub train_seconds: f64,
    pub vqlab_version: String,
}

pub struct FeatureNet {
    conv1: Conv2d,
    conv2: Conv2d,
    fc1_w: Tensor,
    fc1_b: Tensor,
    fc2_w: Tensor,
    fc2_b: Tensor,
    params: ParamStore,
    /// One line naming the network, for summaries, logs and table footnotes.
    pub description: String,
    pub info: Option<FeatureNetInfo>,
}

impl FeatureNet {
    fn new(channels: usize, side: usize, classes: usize, device: &Device) -> candle_core::Result<Self> {
        let mut ps = ParamStore::new(device, INIT_SEED);
        let conv1 = Conv2d::new(&mut ps, "conv1", channels, 32, 3, 2, 1)?;
        let conv2 = Conv2d::new(&mut ps, "conv2", 32, 64, 3, 2, 1)?;
        let s = out_side(out_side(side));
        let flat = 64 * s * s;
        let fc1_w = ps.param("fc1.weight", &[FEATURE_DIM, flat], torch_default(flat))?;
        let fc1_b = ps.param("fc1.bias", &[FEATURE_DIM], torch_default(flat))?;
        let fc2_w = ps.param("fc2.weight", &[classes.max(1), FEATURE_DIM], torch_default(FEATURE_DIM))?;
        let fc2_b = ps.param("fc2.bias", &[classes.max(1)], torch_default(FEATURE_DIM))?;
        Ok(FeatureNet { conv1, conv2, fc1_w, fc1_b, fc2_w, fc2_b, params: ps, description: String::new(), info: None })
    }

    /// Features (B, 128) of images (B, C, H, W) with pixels on [0, 1].
    pub fn features(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = ((x - 0.5)? * 2.0)?;
        let h = self.conv1.forward(&h)?.relu()?;
        let h = self.conv2.forward(&h)?.relu()?;
        let h = h.flatten_from(1)?;
        h.matmul(&self.fc1_w.t()?)?.broadcast_add(&self.fc1_b)
    }

    fn logits(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.features(x)?.relu()?.matmul(&self.fc2_w.t()?)?.broadcast_add(&self.fc2_b)
    }

    /// Features of every image of a set, row-major (n × 128).
    pub fn features_of(&self, set: &ImageSet, batch_size: usize, device: &Device) -> candle_core::Result<Vec<f32>> {
        let mut out = Vec::with_capacity(set.len * FEATURE_DIM);
        let indices: Vec<usize> = (0..set.len).collect();
        for chunk in indices.chunks(batch_size.max(1)) {
            let f = self.features(&set.batch(chunk, device)?)?;
            out.extend(f.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    }

    /// Features of a batch tensor, row-major.
    pub fn features_vec(&self, x: &Tensor) -> candle_core::Result<Vec<f32>> {
        self.features(x)?.flatten_all()?.to_vec1::<f32>()
    }

    fn accuracy(&self, set: &ImageSet, device: &Device) -> anyhow::Result<f64> {
        let labels = set.labels.as_ref().context("accuracy needs labels")?;
        let mut correct = 0usize;
        let indices: Vec<usize> = (0..set.len).collect();
        for chunk in indices.chunks(500) {
            let pred = self.logits(&set.batch(chunk, device)?)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
            correct += chunk.iter().zip(pred).filter(|(&i, p)| labels[i] as u32 == *p).count();
        }
        Ok(correct as f64 / set.len.max(1) as f64)
    }
}

fn out_side(s: usize) -> usize {
    (s + 2 - 3) / 2 + 1
}

/// The data a feature network is trained and tested on: the dataset's whole train and test
/// splits at the run's image size and channels (not the run's `train_images` / `eval_images`
/// subsets, so that every run of a sweep shares one network). Synthetic shapes: 10,000 train
/// and 2,000 test images. An image folder: the run's own split (part of its data config).
pub fn feature_data(cfg: &DataConfig) -> anyhow::Result<Splits> {
    let mut full = cfg.clone();
    // The measuring instrument trains on the whole training split, whatever validation split
    // the runs carve from it: one network (and one cache entry) for every run on a dataset.
    full.val_images = Some(0);
    match cfg.dataset {
        DatasetKind::FashionMnist | DatasetKind::Mnist | DatasetKind::Cifar10 => {
            full.train_images = 0;
            full.eval_images = usize::MAX;
        }
        DatasetKind::Synthetic => {
            full.train_images = 10_000;
            full.eval_images = 2_000;
        }
        DatasetKind::Folder => {}
    }
    Ok(data::load(&full)?)
}

fn classes_of(set: &ImageSet) -> Option<usize> {
    let labels = set.labels.as_ref()?;
    let k = labels.iter().copied().max()? as usize + 1;
    let distinct = {
        let mut seen = vec![false; k];
        labels.iter().for_each(|&l| seen[l as usize] = true);
        seen.iter().filter(|&&s| s).count()
    };
    (distinct >= 2).then_some(k)
}

/// The feature network for a run's dataset: loaded from the cache, trained (once, under a
/// lock) when missing, or random when the dataset has no labels.
pub fn feature_net(cfg: &DataConfig, cache_dir: &Path, device: &Device) -> anyhow::Result<FeatureNet> {
    let t0 = Instant::now();
    let splits = feature_data(cfg)?;
    let (c, s) = (splits.train.channels, splits.train.side);
    let Some(classes) = classes_of(&splits.train) else {
        let mut net = FeatureNet::new(c, s, 1, device)?;
        net.description = format!(
            "untrained random conv net ({ARCH}, seed {INIT_SEED:#x}); the dataset has no labels, so scores compare runs on this dataset only"
        );
        return Ok(net);
    };
    let fingerprint = splits.fingerprint();
    let stem = format!("{}-{s}px{c}ch-{fingerprint}-{ARCH}", cfg.dataset.name());
    let dir = crate::rundir::RunDir::feature_cache(cache_dir);
    let weights = dir.join(format!("{stem}.safetensors"));
    let meta = dir.join(format!("{stem}.json"));
    if let Some(net) = try_load(&weights, &meta, c, s, classes, device) {
        return Ok(net);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating feature cache {}", dir.display()))?;
    let mut lock = LockFile::open(&dir.join(format!("{stem}.lock")))?;
    if !lock.try_lock()? {
        tracing::info!("waiting for another process ({}) to train the feature network {stem}", lock.holder());
        lock.lock()?;
    }
    // Holding the lock: someone may have finished while we waited.
    if let Some(net) = try_load(&weights, &meta, c, s, classes, device) {
        return Ok(net);
    }
    lock.claim()?;
    tracing::info!(
        "training the feature network {stem} on {} images ({} test images), once for every run on this dataset",
        splits.train.len,
        splits.eval.len
    );
    let net = train(&splits, cfg, classes, &fingerprint, device, t0)?;
    let info = net.info.clone().expect("trained nets carry their info");
    let mut json = serde_json::to_vec_pretty(&info)?;
    json.push(b'\n');
    write_atomic(&meta, &json)?;
    let ckpt = Checkpoint { step: info.train_steps, tensors: net.params.tensors(), counters: BTreeMap::new() };
    write_atomic(&weights, &checkpoint::to_bytes(&ckpt, &[("feature_net", stem.clone())])?)?;
    drop(lock);
    tracing::info!(
        "feature network: test accuracy {:.4} after {} steps ({:.1}s); cached at {}",
        info.test_accuracy,
        info.train_steps,
        info.train_seconds,
        weights.display()
    );
    Ok(net)
}

fn describe(info: &FeatureNetInfo) -> String {
    format!(
        "classifier {} trained on {} ({} images, test accuracy {:.4}, fingerprint {})",
        info.arch, info.dataset, info.train_images, info.test_accuracy, info.fingerprint
    )
}

/// A cached network, or None when it is missing or unreadable (then it is trained again).
fn try_load(weights: &Path, meta: &Path, c: usize, s: usize, classes: usize, device: &Device) -> Option<FeatureNet> {
    if !weights.exists() || !meta.exists() {
        return None;
    }
    let load = || -> anyhow::Result<FeatureNet> {
        let info: FeatureNetInfo = serde_json::from_slice(&std::fs::read(meta)?)?;
        let ckpt = checkpoint::read(weights, device)?;
        let net = FeatureNet::new(c, s, classes, device)?;
        net.params.load(&ckpt.tensors)?;
        Ok(FeatureNet { description: describe(&info), info: Some(info), ..net })
    };
    match load() {
        Ok(net) => {
            tracing::info!("feature network: {}", net.description);
            Some(net)
        }
        Err(e) => {
            tracing::warn!("ignoring cached feature network {}: {e:#}; training it again", weights.display());
            None
        }
    }
}

/// Steps: two epochs, at least 300 and at most 1500 (Fashion-MNIST: 937 steps, ~90% accuracy).
pub fn train_steps(train_len: usize) -> u64 {
    ((2 * train_len).div_ceil(TRAIN_BATCH) as u64).clamp(300, 1500)
}

fn train(
    splits: &Splits,
    cfg: &DataConfig,
    classes: usize,
    fingerprint: &str,
    device: &Device,
    t0: Instant,
) -> anyhow::Result<FeatureNet> {
    let mut net = FeatureNet::new(splits.train.channels, splits.train.side, classes, device)?;
    let labels = splits.train.labels.as_ref().context("training a classifier needs labels")?;
    let vars: Vec<_> = net.params.vars().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let mut opt = Adam::new(vars, TRAIN_LR, [0.9, 0.999])?;
    let steps = train_steps(splits.train.len);
    let mut order = BatchOrder::new(splits.train.len, TRAIN_BATCH, INIT_SEED);
    for step in 0..steps {
        let idx = order.indices(step);
        let x = splits.train.batch(&idx, device)?;
        let y = Tensor::from_vec(idx.iter().map(|&i| labels[i] as u32).collect::<Vec<_>>(), idx.len(), device)?;
        let loss = candle_nn::loss::cross_entropy(&net.logits(&x)?, &y)?;
        let grads = loss.backward()?;
        opt.step(|_, _, var| Ok(grads.get(var).cloned()))?;
        if (step + 1) % 100 == 0 {
            let l = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            tracing::debug!("feature network step {}/{steps}: loss {l:.4}", step + 1);
        }
    }
    let accuracy = net.accuracy(&splits.eval, device)?;
    let info = FeatureNetInfo {
        arch: ARCH.into(),
        dataset: cfg.dataset.name().into(),
        fingerprint: fingerprint.into(),
        classes,
        train_images: splits.train.len,
        test_images: splits.eval.len,
        train_steps: steps,
        test_accuracy: accuracy,
        train_seconds: t0.elapsed().as_secs_f64(),
        vqlab_version: env!("CARGO_PKG_VERSION").into(),
    };
    net.description = describe(&info);
    net.info = Some(info);
    Ok(net)
}
