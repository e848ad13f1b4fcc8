//! Evaluation of one image set (the validation split during training, the test split's eval
//! subset at the end): pixel metrics on [0, 1], code counts over every latent vector of the
//! set, FID-style scores between the originals and their reconstructions; reconstruction
//! grids of a set's first images.

use candle_core::{Device, Result};

use crate::config::EvalConfig;
use crate::data::degrade::{eval_key, Degradation};
use crate::data::ImageSet;
use crate::metrics::features::{FeatureNet, FEATURE_DIM};
use crate::metrics::fid::{frechet_distance, gaussian, kid, kid_subsets, Gaussian};
use crate::metrics::{codebook_stats, psnr_from_mse, CodebookStats};
use crate::model::VqModel;

/// Seed of the KID subsets: every eval of every run uses the same subsets.
const KID_SEED: u64 = 0x6b1d;

/// What FID-style scores of one image set need that does not change during a run: the
/// features of its originals and their Gaussian, the KID subsets.
pub struct FidReference {
    real: Vec<f32>,
    real_gaussian: Gaussian,
    subsets: Vec<(Vec<usize>, Vec<usize>)>,
}

impl FidReference {
    /// `what` names the set and the key that sizes it in errors ("data.eval_images").
    pub fn new(net: &FeatureNet, set: &ImageSet, cfg: &EvalConfig, key: &str, device: &Device) -> anyhow::Result<Self> {
        if set.len < 2 {
            anyhow::bail!("eval.fid needs at least 2 images in the set that {key} sizes, found {}", set.len);
        }
        let size = cfg.kid_subset_size as usize;
        if size >= set.len {
            // The dataset had fewer images than the config asked for (validation caught the rest).
            anyhow::bail!(
                "eval.kid_subset_size = {size} is not smaller than the {} images of the set that {key} sizes: every KID subset would be the whole set and its std 0; lower eval.kid_subset_size",
                set.len
            );
        }
        let real = net.features_of(set, cfg.batch_size, device)?;
        let real_gaussian = gaussian(&real, set.len, FEATURE_DIM);
        let subsets = kid_subsets(set.len, set.len, cfg.kid_subsets as usize, size, KID_SEED);
        Ok(FidReference { real, real_gaussian, subsets })
    }
}

/// FID-style scores of one eval.
#[derive(Debug, Clone, Copy)]
pub struct FidScores {
    pub rfid: f64,
    pub kid: f64,
    pub kid_std: f64,
}

#[derive(Debug, Clone)]
pub struct EvalResult {
    /// Mean squared error per pixel of the clamped reconstructions.
    pub rec_mse: f64,
    /// Mean over images of the per-image PSNR (dB).
    pub psnr: f64,
    /// The degraded inputs' own mean PSNR against the clean images (None for reconstruction).
    pub input_psnr: Option<f64>,
    /// Over all codes (all levels' together for a residual quantizer).
    pub codes: CodebookStats,
    /// A residual quantizer's levels, each over its own K codes; empty for one quantizer.
    pub levels: Vec<CodebookStats>,
    pub counts: Vec<u64>,
    pub fid: Option<FidScores>,
}

/// Measure `model` on `set`: the inputs degraded as the task says (image i's noise keyed by
/// `stream` and i), the outputs compared with the clean images.
pub fn evaluate(
    model: &VqModel,
    set: &ImageSet,
    degradation: &Degradation,
    stream: u64,
    batch_size: usize,
    device: &Device,
    fid: Option<(&FeatureNet, &FidReference)>,
) -> Result<EvalResult> {
    let k = model.quantizer.codebook_size;
    let mut counts = vec![0u64; k];
    let mut sq_sum = 0.0f64;
    let mut psnr_sum = 0.0f64;
    let mut input_psnr_sum = 0.0f64;
    let mut fake = Vec::with_capacity(if fid.is_some() { set.len * FEATURE_DIM } else { 0 });
    let indices: Vec<usize> = (0..set.len).collect();
    for chunk in indices.chunks(batch_size.max(1)) {
        let x = set.batch(chunk, device)?;
        let input = degraded(&x, chunk, degradation, stream)?;
        if !degradation.is_none() {
            for mse in per_image_mse(&input, &x)? {
                input_psnr_sum += psnr_from_mse(mse);
            }
        }
        let r = model.reconstruct(&input, false)?;
        let x_hat = r.x_hat.clamp(0.0, 1.0)?;
        if let Some((net, _)) = fid {
            fake.extend(net.features_vec(&x_hat)?);
        }
        for mse in per_image_mse(&x_hat, &x)? {
            sq_sum += mse;
            psnr_sum += psnr_from_mse(mse);
        }
        for i in r.quantized.indices.to_vec1::<u32>()? {
            counts[i as usize] += 1;
        }
    }
    let n = set.len.max(1) as f64;
    let fid = fid.map(|(_, ctx)| {
        let rfid = frechet_distance(&ctx.real_gaussian, &gaussian(&fake, set.len, FEATURE_DIM));
        let (kid, kid_std) = kid(&ctx.real, &fake, FEATURE_DIM, &ctx.subsets);
        FidScores { rfid, kid, kid_std }
    });
    let mut levels = Vec::new();
    if model.quantizer.is_residual() {
        let mut rest = counts.as_slice();
        for level in model.quantizer.levels() {
            let (own, more) = rest.split_at(level.codebook_size);
            levels.push(codebook_stats(own));
            rest = more;
        }
    }
    let input_psnr = (!degradation.is_none()).then_some(input_psnr_sum / n);
    Ok(EvalResult {
        rec_mse: sq_sum / n,
        psnr: psnr_sum / n,
        input_psnr,
        codes: codebook_stats(&counts),
        levels,
        counts,
        fid,
    })
}

/// The task's input for images `indices` of an eval set.
fn degraded(x: &candle_core::Tensor, indices: &[usize], d: &Degradation, stream: u64) -> Result<candle_core::Tensor> {
    let keys: Vec<u64> = indices.iter().map(|&i| eval_key(stream, i)).collect();
    d.apply(x, &keys)
}

/// Mean squared error of each image of `a` against `b` (B, C, H, W).
fn per_image_mse(a: &candle_core::Tensor, b: &candle_core::Tensor) -> Result<Vec<f64>> {
    (a - b)?.sqr()?.flatten_from(1)?.mean(1)?.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()
}

/// Originals (top rows) above their reconstructions (bottom rows), with the degraded inputs
/// between them for the denoising and super-resolution tasks; up to 8 per row, with a 2-pixel
/// gap. Returns an RGB image.
pub fn reconstruction_grid(
    model: &VqModel,
    set: &ImageSet,
    degradation: &Degradation,
    stream: u64,
    n: usize,
    device: &Device,
) -> Result<image::RgbImage> {
    let n = n.min(set.len).max(1);
    let idx: Vec<usize> = (0..n).collect();
    let x = set.batch(&idx, device)?;
    let input = degraded(&x, &idx, degradation, stream)?;
    let x_hat = model.reconstruct(&input, false)?.x_hat.clamp(0.0, 1.0)?;
    let mut blocks = vec![x.flatten_all()?.to_vec1::<f32>()?];
    if !degradation.is_none() {
        blocks.push(input.flatten_all()?.to_vec1::<f32>()?);
    }
    blocks.push(x_hat.flatten_all()?.to_vec1::<f32>()?);
    Ok(image_grid(&blocks, n, set.channels, set.side))
}

/// Blocks of `n` images (each `n·c·s·s` pixels on [0, 1], channel-major) drawn as rows of up
/// to 8 images with a 2-pixel gap, block under block, as an RGB image.
pub fn image_grid(blocks: &[Vec<f32>], n: usize, c: usize, s: usize) -> image::RgbImage {
    let per_row = n.min(8);
    let rows = n.div_ceil(per_row);
    let gap = 2;
    let cell = s + gap;
    let mut img = image::RgbImage::from_pixel(
        (per_row * cell + gap) as u32,
        (blocks.len() * rows * cell + gap) as u32,
        image::Rgb([255, 255, 255]),
    );
    for (block, data) in blocks.iter().enumerate() {
        for i in 0..n {
            let (r, col) = (i / per_row, i % per_row);
            let y0 = gap + (block * rows + r) * cell;
            let x0 = gap + col * cell;
            for y in 0..s {
                for xx in 0..s {
                    let px = |ch: usize| (data[i * c * s * s + ch * s * s + y * s + xx] * 255.0).round() as u8;
                    let rgb = if c == 1 { [px(0); 3] } else { [px(0), px(1), px(2)] };
                    img.put_pixel((x0 + xx) as u32, (y0 + y) as u32, image::Rgb(rgb));
                }
            }
        }
    }
    img
}

/// FID-style scores of generated images' features (n samples, [`FEATURE_DIM`] each) against
/// a reference set: Fréchet distance, and KID over `subsets` random pairs of subsets of
/// `subset_size` (reference, samples), drawn from the seed every eval uses.
pub fn generation_scores(reference: &FidReference, fake: &[f32], subsets: usize, subset_size: usize) -> FidScores {
    let n_real = reference.real.len() / FEATURE_DIM;
    let n_fake = fake.len() / FEATURE_DIM;
    let rfid = frechet_distance(&reference.real_gaussian, &gaussian(fake, n_fake, FEATURE_DIM));
    let pairs = kid_subsets(n_real, n_fake, subsets, subset_size, KID_SEED);
    let (kid, kid_std) = kid(&reference.real, fake, FEATURE_DIM, &pairs);
    FidScores { rfid, kid, kid_std }
}
