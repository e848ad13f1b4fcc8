//! What the ops' tests share: random tensors and the relative error against a reference.

use candle_core::{Device, Tensor};
use rand::Rng;

/// A tensor of `dims` with entries uniform in [lo, hi).
pub fn rand_tensor(rng: &mut impl Rng, dims: &[usize], lo: f32, hi: f32) -> Tensor {
    let n: usize = dims.iter().product();
    Tensor::from_vec((0..n).map(|_| rng.random_range(lo..hi)).collect::<Vec<f32>>(), dims, &Device::Cpu).unwrap()
}

/// max |a − b| over max |b|: the relative error of `a` against the reference `b`.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}
