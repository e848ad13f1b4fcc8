//! Datasets: IDX (MNIST / Fashion-MNIST, raw or .gz), CIFAR-10 binary batches, a folder of
//! PNG/JPEG images, and a procedural synthetic set. Every loader returns the same thing: a
//! train and an eval [`ImageSet`] of 8-bit pixels at the configured size and channels.
//!
//! Loaders only read. Problems with files (missing, wrong magic, truncated, undecodable) are
//! [`InputError::Data`] naming the file.

mod batch;
mod cifar;
pub mod degrade;
mod folder;
mod idx;
mod synthetic;

use std::path::Path;

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

pub use batch::BatchOrder;
pub use degrade::Degradation;

use crate::config::{DataConfig, DatasetKind};
use crate::error::InputError;

/// Images as 8-bit pixels, NCHW, with optional class labels.
#[derive(Debug, Clone)]
pub struct ImageSet {
    pub pixels: Vec<u8>,
    pub labels: Option<Vec<u16>>,
    pub len: usize,
    pub channels: usize,
    pub side: usize,
}

impl ImageSet {
    pub fn image_len(&self) -> usize {
        self.channels * self.side * self.side
    }

    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// A batch as an f32 tensor (B, C, H, W) with pixels on [0, 1].
    pub fn batch(&self, indices: &[usize], device: &Device) -> candle_core::Result<Tensor> {
        let n = self.image_len();
        let mut data = Vec::with_capacity(indices.len() * n);
        for &i in indices {
            data.extend(self.image(i).iter().map(|&p| p as f32 / 255.0));
        }
        Tensor::from_vec(data, (indices.len(), self.channels, self.side, self.side), device)
    }

    /// Take the last `n` images off this set and return them as a set of their own.
    fn split_off_last(&mut self, n: usize) -> ImageSet {
        let n = n.min(self.len);
        let keep = self.len - n;
        let pixels = self.pixels.split_off(keep * self.image_len());
        let labels = self.labels.as_mut().map(|l| l.split_off(keep));
        self.len = keep;
        ImageSet { pixels, labels, len: n, channels: self.channels, side: self.side }
    }

    /// Variance of all pixel values on the [0, 1] scale (Sonnet's `data_variance`), in f64.
    pub fn pixel_variance(&self) -> f64 {
        let n = self.pixels.len().max(1) as f64;
        let (sum, sq) = self.pixels.iter().fold((0.0f64, 0.0f64), |(s, q), &p| {
            let v = p as f64 / 255.0;
            (s + v, q + v * v)
        });
        let mean = sum / n;
        (sq / n - mean * mean).max(0.0)
    }

    /// Keep the first `n` images.
    fn truncate(&mut self, n: usize) {
        if n < self.len {
            self.len = n;
            self.pixels.truncate(n * self.image_len());
            if let Some(l) = &mut self.labels {
                l.truncate(n);
            }
        }
    }

    /// Resize and convert channels so that every image is `side`×`side`×`channels`.
    fn conform(self, channels: usize, side: usize) -> ImageSet {
        if self.channels == channels && self.side == side {
            return self;
        }
        let per = channels * side * side;
        let mut pixels = vec![0u8; self.len * per];
        pixels.par_chunks_mut(per).enumerate().for_each(|(i, out)| {
            let converted = convert_image(self.image(i), self.channels, self.side, channels, side);
            out.copy_from_slice(&converted);
        });
        ImageSet { pixels, labels: self.labels, len: self.len, channels, side }
    }
}

/// Convert one planar image between channel counts and sizes (bilinear via `image`).
fn convert_image(src: &[u8], c_in: usize, side_in: usize, c_out: usize, side_out: usize) -> Vec<u8> {
    let plane = side_in * side_in;
    // Interleave to HWC for `image`.
    let mut rgb = image::RgbImage::new(side_in as u32, side_in as u32);
    for (idx, px) in rgb.pixels_mut().enumerate() {
        *px = if c_in == 1 {
            image::Rgb([src[idx]; 3])
        } else {
            image::Rgb([src[idx], src[plane + idx], src[2 * plane + idx]])
        };
    }
    let rgb = if side_in != side_out {
        image::imageops::resize(&rgb, side_out as u32, side_out as u32, image::imageops::FilterType::Triangle)
    } else {
        rgb
    };
    planar_from_rgb(&rgb, c_out)
}

/// HWC RGB to planar (1 or 3 channels); grayscale uses ITU-R 601 luma like `image`.
pub(crate) fn planar_from_rgb(rgb: &image::RgbImage, channels: usize) -> Vec<u8> {
    let plane = (rgb.width() * rgb.height()) as usize;
    let mut out = vec![0u8; channels * plane];
    for (idx, px) in rgb.pixels().enumerate() {
        let [r, g, b] = px.0;
        if channels == 1 {
            out[idx] = ((r as u32 * 299 + g as u32 * 587 + b as u32 * 114 + 500) / 1000) as u8;
        } else {
            out[idx] = r;
            out[plane + idx] = g;
            out[2 * plane + idx] = b;
        }
    }
    out
}

/// The train, validation and eval splits of one dataset configuration. The validation split
/// is the end of the dataset's training split, never trained on; the eval split is the start
/// of its test split.
#[derive(Debug, Clone)]
pub struct Splits {
    pub train: ImageSet,
    /// Empty (len 0) when `data.val_images` = 0.
    pub val: ImageSet,
    pub eval: ImageSet,
    /// Human-readable source, e.g. "fashion-mnist at /usr/share/datasets/fashion-mnist".
    pub source: String,
    /// Warnings worth a log line (eval set smaller than asked, …).
    pub notes: Vec<String>,
}

impl Splits {
    /// A fingerprint of the pixels and labels (keys caches such as the FID feature network).
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        // An empty validation split adds nothing, so that splits without one (the feature
        // network's training data) keep the fingerprints, and caches, they had before.
        for set in [&self.train, &self.val, &self.eval].into_iter().filter(|s| s.len > 0) {
            h.update((set.len as u64).to_le_bytes());
            h.update((set.channels as u64).to_le_bytes());
            h.update((set.side as u64).to_le_bytes());
            h.update(&set.pixels);
            if let Some(l) = &set.labels {
                for v in l {
                    h.update(v.to_le_bytes());
                }
            }
        }
        h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

/// Load a dataset as a resolved config describes it (see `config::validate::resolve`).
pub fn load(cfg: &DataConfig) -> Result<Splits, InputError> {
    let path = Path::new(&cfg.path);
    let (mut train, mut eval, source) = match cfg.dataset {
        DatasetKind::FashionMnist | DatasetKind::Mnist => {
            let (t, e) = idx::load_dir(path)?;
            (t, e, format!("{} (IDX) at {}", cfg.dataset.name(), path.display()))
        }
        DatasetKind::Cifar10 => {
            let (t, e) = cifar::load_dir(path)?;
            (t, e, format!("cifar10 (binary batches) at {}", path.display()))
        }
        DatasetKind::Folder => {
            let (t, e) = folder::load_dir(path, cfg.image_size as usize, cfg.channels as usize, cfg.eval_images)?;
            (t, e, format!("image folder at {}", path.display()))
        }
        DatasetKind::Synthetic => {
            let n_train = if cfg.train_images == 0 { 10_000 } else { cfg.train_images };
            let side = cfg.image_size as usize;
            let ch = cfg.channels as usize;
            // The validation images are generated after the training ones, so that carving
            // them off the end below leaves exactly `n_train` training images.
            let mut t = synthetic::generate(n_train, ch, side, 0x5eed_0001);
            let v = synthetic::generate(cfg.val_images(), ch, side, 0x5eed_0003);
            t.pixels.extend_from_slice(&v.pixels);
            if let (Some(tl), Some(vl)) = (&mut t.labels, &v.labels) {
                tl.extend_from_slice(vl);
            }
            t.len += v.len;
            let e = synthetic::generate(cfg.eval_images, ch, side, 0x5eed_0002);
            (t, e, format!("synthetic shapes ({n_train} train, {} val, {} eval)", cfg.val_images(), cfg.eval_images))
        }
    };
    let n_val = cfg.val_images();
    if n_val > 0 && n_val >= train.len {
        return Err(InputError::data(
            path,
            format!(
                "data.val_images = {n_val} takes the whole training split ({} images), leaving nothing to train on; lower data.val_images",
                train.len
            ),
        ));
    }
    let val = train.split_off_last(n_val);
    let mut notes = Vec::new();
    if cfg.train_images > 0 && cfg.train_images > train.len {
        notes.push(format!(
            "data.train_images = {} but the train split has {}; using all of them",
            cfg.train_images, train.len
        ));
    }
    if cfg.train_images > 0 {
        train.truncate(cfg.train_images);
    }
    if cfg.eval_images > eval.len {
        notes.push(format!(
            "data.eval_images = {} but the eval split has {}; using all of them",
            cfg.eval_images, eval.len
        ));
    }
    eval.truncate(cfg.eval_images);
    if train.len == 0 {
        return Err(InputError::data(path, "the train split has no images"));
    }
    if eval.len == 0 {
        return Err(InputError::data(path, "the eval split has no images"));
    }
    let (c, s) = (cfg.channels as usize, cfg.image_size as usize);
    Ok(Splits { train: train.conform(c, s), val: val.conform(c, s), eval: eval.conform(c, s), source, notes })
}

/// Read a whole file, decompressing gzip when the file starts with its magic bytes.
pub(crate) fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, InputError> {
    use std::io::Read;
    let raw = std::fs::read(path).map_err(|e| InputError::data(path, format!("cannot read: {e}")))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..]).read_to_end(&mut out).map_err(|e| {
            let what = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                "truncated gzip stream"
            } else {
                "corrupt gzip stream"
            };
            InputError::data(path, format!("{what} ({e}); re-download or reinstall the dataset"))
        })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Check that a directory exists before looking for files in it.
pub(crate) fn require_dir(path: &Path, hint: &str) -> Result<(), InputError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(InputError::data(path, "is not a directory")),
        Err(_) => Err(InputError::data(path, format!("directory not found (data.path); {hint}"))),
    }
}
