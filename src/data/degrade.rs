//! The degradations of the image-to-image tasks (`task.kind`): what the model sees instead of
//! the clean image it must produce.
//!
//! - denoise: x + σ·ε, ε ~ N(0, 1) per pixel, clipped to [0, 1]. Each image's noise comes
//!   from a key of its own (training: the run's seed, the step and the position in the batch;
//!   eval: the image's index in its set), so resumes and every run's eval see the same noise.
//! - superres: the mean of each s × s block (box downscale), then bicubic upscaling back to
//!   the full size, clipped to [0, 1]. The bicubic kernel is Keys' with a = −0.5 on
//!   pixel-centre coordinates, renormalised where it reaches past the border: the
//!   convention of PIL's `Image.resize(…, BICUBIC)`.

use candle_core::{Device, Result, Tensor};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use crate::config::{TaskConfig, TaskKind};

/// What a task does to an input image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Degradation {
    /// Reconstruction: the image itself.
    None,
    Noise {
        std: f64,
    },
    Downscale {
        scale: usize,
    },
}

/// The noise stream of a training batch: image `i` of step `step` of a run seeded `seed`.
pub fn train_key(seed: u64, step: u64, i: usize) -> u64 {
    seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ step.wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ (i as u64) ^ 0x7a5c
}

/// The noise stream of image `index` of an eval set (`set` tells the validation split from the
/// test split): the same for every run.
pub fn eval_key(set: u64, index: usize) -> u64 {
    set.wrapping_mul(0x94d0_49bb_1331_11eb) ^ (index as u64).wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0xe7a1
}

impl Degradation {
    pub fn of(task: &TaskConfig) -> Self {
        match task.kind {
            TaskKind::Reconstruct => Degradation::None,
            TaskKind::Denoise => Degradation::Noise { std: task.noise_std() },
            TaskKind::Superres => Degradation::Downscale { scale: task.scale() as usize },
        }
    }

    pub fn is_none(&self) -> bool {
        *self == Degradation::None
    }

    /// The degraded batch of images (B, C, H, W) on [0, 1]; `keys` has one noise key per image.
    pub fn apply(&self, x: &Tensor, keys: &[u64]) -> Result<Tensor> {
        match *self {
            Degradation::None => Ok(x.clone()),
            Degradation::Noise { std } => {
                let per_image = x.elem_count() / x.dim(0)?;
                let mut noise = Vec::with_capacity(x.elem_count());
                for &key in keys {
                    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(key);
                    noise.extend((0..per_image).map(|_| {
                        let e: f64 = StandardNormal.sample(&mut rng);
                        (e * std) as f32
                    }));
                }
                let noise = Tensor::from_vec(noise, x.shape(), x.device())?;
                (x + noise)?.clamp(0.0, 1.0)
            }
            Degradation::Downscale { scale } => {
                let (_, _, h, w) = x.dims4()?;
                let small = x.avg_pool2d(scale)?;
                let rows = bicubic_matrix(h / scale, h, x.device())?; // (H, h)
                let cols = bicubic_matrix(w / scale, w, x.device())?.t()?; // (w, W)
                let wide = small.broadcast_matmul(&cols)?; // (B, C, h, W)
                rows.broadcast_matmul(&wide)?.clamp(0.0, 1.0)
            }
        }
    }
}

/// Keys' cubic convolution kernel with a = −0.5 (PIL's bicubic filter).
fn cubic(x: f64) -> f64 {
    let a = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

/// The (out, in) matrix of bicubic upscaling from `n_in` to `n_out` samples, rows summing to 1:
/// output sample i at input coordinate c = (i + ½)·n_in/n_out, weights cubic(j + ½ − c) over the
/// input samples j within the kernel's support of 2, renormalised at the borders.
pub fn bicubic_weights(n_in: usize, n_out: usize) -> Vec<f64> {
    let scale = n_in as f64 / n_out as f64;
    let mut m = vec![0.0; n_out * n_in];
    for i in 0..n_out {
        let centre = (i as f64 + 0.5) * scale;
        let lo = ((centre - 2.0 + 0.5).floor().max(0.0)) as usize;
        let hi = ((centre + 2.0 + 0.5).floor() as usize).min(n_in);
        let row = &mut m[i * n_in..(i + 1) * n_in];
        for (j, w) in row.iter_mut().enumerate().take(hi).skip(lo) {
            *w = cubic(j as f64 + 0.5 - centre);
        }
        let total: f64 = row.iter().sum();
        if total != 0.0 {
            row.iter_mut().for_each(|w| *w /= total);
        }
    }
    m
}

fn bicubic_matrix(n_in: usize, n_out: usize, device: &Device) -> Result<Tensor> {
    let m: Vec<f32> = bicubic_weights(n_in, n_out).into_iter().map(|w| w as f32).collect();
    Tensor::from_vec(m, (n_out, n_in), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bicubic_kernel_and_weights_by_hand() {
        // Keys' kernel: 1 at 0, 0 at the integers, the a = −0.5 values at ½ and 3/2.
        assert_eq!(cubic(0.0), 1.0);
        assert_eq!((cubic(1.0), cubic(2.0)), (0.0, 0.0));
        assert!((cubic(0.5) - 0.5625).abs() < 1e-12 && (cubic(1.5) + 0.0625).abs() < 1e-12);
        // ×2 from 4 samples: output 3 sits at input coordinate 1.75, a quarter sample from
        // input 1's centre (1.5): weights cubic(−1.25), cubic(−0.25), cubic(0.75), cubic(1.75).
        let m = bicubic_weights(4, 8);
        let want = [cubic(1.25), cubic(0.25), cubic(0.75), cubic(1.75)];
        let total: f64 = want.iter().sum();
        for (j, w) in want.iter().enumerate() {
            assert!((m[3 * 4 + j] - w / total).abs() < 1e-12, "{:?}", &m[12..16]);
        }
        // Every row sums to 1, so a constant image stays constant.
        for row in m.chunks(4) {
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn noise_is_keyed_per_image_and_clipped() {
        let x = Tensor::full(0.5f32, (2, 1, 4, 4), &Device::Cpu).unwrap();
        let d = Degradation::Noise { std: 10.0 };
        let a = d.apply(&x, &[1, 2]).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = d.apply(&x, &[1, 3]).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a[..16], b[..16], "the same key, the same noise");
        assert_ne!(a[16..], b[16..]);
        assert!(a.iter().all(|v| (0.0..=1.0).contains(v)) && a.contains(&0.0) && a.contains(&1.0));
    }
}
