//! FID-style scores between two sets of features: the Fréchet distance of their Gaussians and
//! the kernel inception distance (unbiased MMD² with a cubic polynomial kernel).
//!
//! Tr (Σ₁Σ₂)^{1/2} is computed as Σ √λᵢ of the symmetric PSD matrix Σ₁^{1/2} Σ₂ Σ₁^{1/2}: the same
//! eigenvalues as Σ₁Σ₂, but from symmetric eigendecompositions, so the result is real and finite
//! even for rank-deficient covariances (fewer samples than feature dimensions), where
//! scipy's sqrtm needs pytorch-fid's eps·I offset and its "take the real part" step.

use nalgebra::{DMatrix, DVector};
use rand::seq::index::sample;
use rand::SeedableRng;

/// Mean and covariance (normalised by N − 1) of a feature set.
#[derive(Debug, Clone)]
pub struct Gaussian {
    pub mean: DVector<f64>,
    pub cov: DMatrix<f64>,
}

/// Fit a Gaussian to `n` feature rows of dimension `d` (row-major). Needs n ≥ 2.
pub fn gaussian(features: &[f32], n: usize, d: usize) -> Gaussian {
    let x = DMatrix::from_fn(n, d, |i, j| features[i * d + j] as f64);
    let mean = DVector::from_fn(d, |j, _| x.column(j).mean());
    let centred = DMatrix::from_fn(n, d, |i, j| x[(i, j)] - mean[j]);
    let cov = centred.transpose() * &centred / (n.max(2) - 1) as f64;
    Gaussian { mean, cov }
}

/// √M of a symmetric positive semi-definite matrix (negative rounding eigenvalues clipped to 0).
fn sqrt_psd(m: &DMatrix<f64>) -> DMatrix<f64> {
    let eig = symmetrised(m).symmetric_eigen();
    let roots = eig.eigenvalues.map(|l| l.max(0.0).sqrt());
    &eig.eigenvectors * DMatrix::from_diagonal(&roots) * eig.eigenvectors.transpose()
}

fn symmetrised(m: &DMatrix<f64>) -> DMatrix<f64> {
    (m + m.transpose()) * 0.5
}

/// Tr (Σ₁Σ₂)^{1/2}.
fn trace_sqrt_product(s1: &DMatrix<f64>, s2: &DMatrix<f64>) -> f64 {
    let r = sqrt_psd(s1);
    let inner = symmetrised(&(&r * s2 * &r));
    inner.symmetric_eigenvalues().iter().map(|l| l.max(0.0).sqrt()).sum()
}

/// ‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2 Tr (Σ₁Σ₂)^{1/2}, clamped at 0 against rounding.
pub fn frechet_distance(a: &Gaussian, b: &Gaussian) -> f64 {
    let diff = &a.mean - &b.mean;
    let mut tr = trace_sqrt_product(&a.cov, &b.cov);
    if !tr.is_finite() {
        // pytorch-fid's fallback: offset both covariances by eps·I.
        let eye = DMatrix::<f64>::identity(a.cov.nrows(), a.cov.ncols()) * 1e-6;
        tr = trace_sqrt_product(&(&a.cov + &eye), &(&b.cov + &eye));
    }
    (diff.dot(&diff) + a.cov.trace() + b.cov.trace() - 2.0 * tr).max(0.0)
}

/// KID subsets: `count` pairs of index sets of `size` rows drawn without replacement from each
/// set, deterministic from `seed`. `size` must be below both set sizes (callers check it and
/// name the key): a subset as large as its set is the whole set every time, and the std of
/// KID over such subsets is 0 whatever the features.
pub fn kid_subsets(n_x: usize, n_y: usize, count: usize, size: usize, seed: u64) -> Vec<(Vec<usize>, Vec<usize>)> {
    assert!(size < n_x && size < n_y, "KID subset size {size} must be below the set sizes {n_x} and {n_y}");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..count).map(|_| (sample(&mut rng, n_x, size).into_vec(), sample(&mut rng, n_y, size).into_vec())).collect()
}

fn kernel(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    (dot / a.len() as f64 + 1.0).powi(3)
}

/// Unbiased MMD² between rows `ix` of `x` and rows `iy` of `y` with k(a, b) = (a·b/d + 1)³.
pub fn mmd2_unbiased(x: &[f32], y: &[f32], d: usize, ix: &[usize], iy: &[usize]) -> f64 {
    fn row(m: &[f32], d: usize, i: usize) -> &[f32] {
        &m[i * d..(i + 1) * d]
    }
    let m = ix.len() as f64;
    let n = iy.len() as f64;
    let within = |set: &[f32], idx: &[usize]| {
        let mut s = 0.0;
        for (a, &i) in idx.iter().enumerate() {
            for &j in &idx[a + 1..] {
                s += kernel(row(set, d, i), row(set, d, j));
            }
        }
        2.0 * s
    };
    let mut cross = 0.0;
    for &i in ix {
        for &j in iy {
            cross += kernel(row(x, d, i), row(y, d, j));
        }
    }
    within(x, ix) / (m * (m - 1.0)) + within(y, iy) / (n * (n - 1.0)) - 2.0 * cross / (m * n)
}

/// Unbiased MMD² as [`mmd2_unbiased`], with the three Gram matrices from f64 matrix products
/// (what KID over 100 subsets of 1000 feature vectors needs to take seconds, not minutes).
pub fn mmd2_unbiased_gemm(x: &[f32], y: &[f32], d: usize, ix: &[usize], iy: &[usize]) -> f64 {
    let gather = |m: &[f32], idx: &[usize]| DMatrix::from_fn(idx.len(), d, |r, c| m[idx[r] * d + c] as f64);
    let (a, b) = (gather(x, ix), gather(y, iy));
    let k = |g: DMatrix<f64>| g.map(|v| (v / d as f64 + 1.0).powi(3));
    let off_diagonal_sum = |g: &DMatrix<f64>| g.sum() - g.trace();
    let kxx = k(&a * a.transpose());
    let kyy = k(&b * b.transpose());
    let kxy = k(&a * b.transpose());
    let (m, n) = (ix.len() as f64, iy.len() as f64);
    off_diagonal_sum(&kxx) / (m * (m - 1.0)) + off_diagonal_sum(&kyy) / (n * (n - 1.0)) - 2.0 * kxy.sum() / (m * n)
}

/// KID mean and standard deviation (population, as numpy's default) over the subsets.
pub fn kid(x: &[f32], y: &[f32], d: usize, subsets: &[(Vec<usize>, Vec<usize>)]) -> (f64, f64) {
    use rayon::prelude::*;
    let values: Vec<f64> = subsets.par_iter().map(|(ix, iy)| mmd2_unbiased_gemm(x, y, d, ix, iy)).collect();
    let k = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / k;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / k;
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frechet_distance_of_diagonal_gaussians_by_hand() {
        // Diagonal covariances: Tr (Σ₁Σ₂)^{1/2} = Σ √(a_i b_i).
        // μ₁ − μ₂ = (1, 2): 5; Tr Σ₁ = 4 + 9 = 13; Tr Σ₂ = 1 + 4 = 5; Tr √ = 2 + 6 = 8 → 5 + 13 + 5 − 16 = 7.
        let a = Gaussian {
            mean: DVector::from_vec(vec![1.0, 2.0]),
            cov: DMatrix::from_diagonal(&DVector::from_vec(vec![4.0, 9.0])),
        };
        let b = Gaussian {
            mean: DVector::from_vec(vec![0.0, 0.0]),
            cov: DMatrix::from_diagonal(&DVector::from_vec(vec![1.0, 4.0])),
        };
        assert!((frechet_distance(&a, &b) - 7.0).abs() < 1e-9);
        assert!(frechet_distance(&a, &a).abs() < 1e-9);
    }

    #[test]
    fn covariance_uses_n_minus_one() {
        // x = (0, 2, 4): mean 2, squared deviations 8, / (3 − 1) = 4.
        let g = gaussian(&[0.0, 2.0, 4.0], 3, 1);
        assert_eq!(g.mean[0], 2.0);
        assert_eq!(g.cov[(0, 0)], 4.0);
    }

    #[test]
    fn mmd_by_hand() {
        // d = 1, x = (0, 1), y = (1, 1): k(0,1) = 1, k(1,1) = 8, k(0,0) = 1.
        // xx: 2·k(0,1)/2 = 1; yy: 2·8/2 = 8; xy: (k(0,1)+k(0,1)+k(1,1)+k(1,1))/4 = 4.5 → 1 + 8 − 9 = 0.
        let v = mmd2_unbiased(&[0.0, 1.0], &[1.0, 1.0], 1, &[0, 1], &[0, 1]);
        assert!(v.abs() < 1e-12, "{v}");
        // x = (0, 0), y = (1, 1): xx 1, yy 8, xy k(0,1) = 1 → 1 + 8 − 2 = 7.
        assert!((mmd2_unbiased(&[0.0, 0.0], &[1.0, 1.0], 1, &[0, 1], &[0, 1]) - 7.0).abs() < 1e-12);
        assert!((mmd2_unbiased_gemm(&[0.0, 0.0], &[1.0, 1.0], 1, &[0, 1], &[0, 1]) - 7.0).abs() < 1e-12);
    }

    #[test]
    fn gemm_mmd_equals_the_direct_sum() {
        let x: Vec<f32> = (0..40 * 3).map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0).collect();
        let y: Vec<f32> = (0..30 * 3).map(|i| ((i * 13 % 7) as f32 - 2.0) / 2.0).collect();
        let ix: Vec<usize> = (0..40).step_by(3).collect();
        let iy: Vec<usize> = (1..30).step_by(2).collect();
        let a = mmd2_unbiased(&x, &y, 3, &ix, &iy);
        let b = mmd2_unbiased_gemm(&x, &y, 3, &ix, &iy);
        assert!((a - b).abs() <= 1e-12 * a.abs().max(1.0), "{a} vs {b}");
    }
}
