//! Procedural shapes, deterministic from a seed: for tests, benchmarks and machines without a
//! dataset package. Eight classes (disc, square, ring, horizontal bars, vertical bars, cross,
//! triangle, diagonal) at random positions, sizes and intensities over a dim noisy background.

use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::ImageSet;

pub const CLASSES: usize = 8;

pub fn generate(n: usize, channels: usize, side: usize, seed: u64) -> ImageSet {
    let per = channels * side * side;
    let mut pixels = vec![0u8; n * per];
    let mut labels = vec![0u16; n];
    pixels.par_chunks_mut(per).zip(labels.par_iter_mut()).enumerate().for_each(|(i, (img, label))| {
        // One generator per image: the result does not depend on the thread count.
        let mut rng =
            rand_chacha::ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(i as u64));
        *label = draw(img, channels, side, &mut rng) as u16;
    });
    ImageSet { pixels, labels: Some(labels), len: n, channels, side }
}

fn draw(img: &mut [u8], channels: usize, side: usize, rng: &mut impl Rng) -> usize {
    let class = rng.random_range(0..CLASSES);
    let s = side as f32;
    let cx = rng.random_range(0.3..0.7) * s;
    let cy = rng.random_range(0.3..0.7) * s;
    let r = rng.random_range(0.15..0.3) * s;
    let color: Vec<f32> = (0..channels).map(|_| rng.random_range(0.55..1.0)).collect();
    let background = rng.random_range(0.0..0.15);
    let plane = side * side;
    for y in 0..side {
        for x in 0..side {
            let (fx, fy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
            let d = (fx * fx + fy * fy).sqrt();
            let inside = match class {
                0 => d <= r,
                1 => fx.abs() <= r * 0.8 && fy.abs() <= r * 0.8,
                2 => d <= r && d >= r * 0.6,
                3 => fy.abs() <= r && ((fy + r) / (r / 2.0)) as i32 % 2 == 0 && fx.abs() <= r,
                4 => fx.abs() <= r && ((fx + r) / (r / 2.0)) as i32 % 2 == 0 && fy.abs() <= r,
                5 => (fx.abs() <= r * 0.25 && fy.abs() <= r) || (fy.abs() <= r * 0.25 && fx.abs() <= r),
                6 => fy <= r * 0.7 && fy >= -r && fx.abs() <= (fy + r) * 0.6,
                _ => (fx - fy).abs() <= r * 0.3 && d <= r * 1.2,
            };
            let noise: f32 = rng.random_range(-0.04..0.04);
            for c in 0..channels {
                let v = if inside { color[c] } else { background } + noise;
                img[c * plane + y * side + x] = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
            }
        }
    }
    class
}
