//! Nearest code of every latent vector: argmin_k ‖e_k‖²/2 − x·e_k. On the CPU one pass over
//! chunks of rows — a gemm of the chunk against the codebook and the argmin of its scores
//! while they are in cache — instead of materialising the (N × K) score matrix three times
//! (product, shifted scores, argmin) as candle's ops do.

use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::kernels::{self, MatRef};

/// Index (u32) of the nearest code for each row of `x` (N, D) in `codebook` (K, D); ties go
/// to the lowest index. No gradient.
pub fn nearest(x: &Tensor, codebook: &Tensor) -> Result<Tensor> {
    let fast = x.device().is_cpu()
        && x.dtype() == DType::F32
        && codebook.dtype() == DType::F32
        && !super::conv::reference_forced();
    if !fast {
        return nearest_reference(x, codebook);
    }
    x.detach().contiguous()?.apply_op2_no_bwd(&codebook.detach().contiguous()?, &Nearest)
}

/// The same with candle's ops.
pub fn nearest_reference(x: &Tensor, codebook: &Tensor) -> Result<Tensor> {
    let half_norms = (codebook.sqr()?.sum(1)? * 0.5)?;
    let scores = x.matmul(&codebook.t()?)?;
    half_norms.unsqueeze(0)?.broadcast_sub(&scores)?.argmin(1)
}

struct Nearest;

/// Rows per chunk: the chunk's scores stay within about 256 KiB.
fn chunk_rows(k: usize) -> usize {
    ((1usize << 16) / k.max(1)).clamp(1, 1024)
}

impl CustomOp2 for Nearest {
    fn name(&self) -> &'static str {
        "vqlab-nearest-code"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        crate::util::profile::time("nearest code", || {
            let (CpuStorage::F32(xv), CpuStorage::F32(ev)) = (s1, s2) else { bail!("nearest code: f32 tensors only") };
            let (Some((xa, xb)), Some((ea, eb))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
                bail!("nearest code: contiguous tensors only")
            };
            let (x, e) = (&xv[xa..xb], &ev[ea..eb]);
            let ([n, d], [k, d2]) = (l1.dims(), l2.dims()) else { bail!("nearest code: expected (N, D) and (K, D)") };
            let (n, d, k) = (*n, *d, *k);
            if d != *d2 {
                bail!("nearest code: vectors of {d} dims against codes of {d2}")
            }
            if k == 0 {
                bail!("nearest code: empty codebook")
            }
            let half: Vec<f32> =
                e.chunks_exact(d.max(1)).map(|r| 0.5 * r.iter().map(|v| v * v).sum::<f32>()).take(k).collect();
            let half = if d == 0 { vec![0.0; k] } else { half };
            let mut out = vec![0u32; n];
            let rows = chunk_rows(k);
            out.par_chunks_mut(rows).enumerate().for_each_init(Vec::new, |scores: &mut Vec<f32>, (ci, idx)| {
                let m = idx.len();
                scores.resize(m * k, 0.0);
                let xs = &x[ci * rows * d..][..m * d];
                kernels::gemm(m, k, d, MatRef::rows(xs, d), MatRef::rows(e, d).t(), scores, false);
                for (r, slot) in idx.iter_mut().enumerate() {
                    *slot = argmin_shifted(&half, &scores[r * k..][..k]);
                }
            });
            Ok((CpuStorage::U32(out), Shape::from(n)))
        })
    }
}

/// The first j with the least h[j] − s[j] (NaNs never chosen; 0 when nothing is below +∞):
/// the nearest code of one row of scores. Vectorised where the CPU has AVX2, with the same
/// result: the differences are the same f32 subtractions, each lane keeps its first least
/// value, and the lanes' results are merged by value, then by index.
fn argmin_shifted(h: &[f32], s: &[f32]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if kernels::wide_simd() {
        // SAFETY: the CPU has AVX2 (checked at run time).
        return unsafe { avx::argmin_shifted(h, s) };
    }
    argmin_scalar(h, s, 0, (0, f32::INFINITY)).0
}

/// The scalar scan from index `from` on, continuing from `best` (index, value).
#[inline(always)]
fn argmin_scalar(h: &[f32], s: &[f32], from: usize, best: (u32, f32)) -> (u32, f32) {
    let (mut best, mut best_v) = best;
    for (j, (s, h)) in s.iter().zip(h).enumerate().skip(from) {
        let v = h - s;
        if v < best_v {
            best_v = v;
            best = j as u32;
        }
    }
    (best, best_v)
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    /// [`super::argmin_shifted`] 8 codes at a time.
    #[target_feature(enable = "avx2")]
    pub(super) fn argmin_shifted(h: &[f32], s: &[f32]) -> u32 {
        let k = h.len().min(s.len());
        let whole = k / 8 * 8;
        let (mut best_v, mut best_i) = (_mm256_set1_ps(f32::INFINITY), _mm256_setzero_si256());
        let (mut at, eight) = (_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(8));
        for j in (0..whole).step_by(8) {
            // SAFETY: j + 8 ≤ whole ≤ the length of both slices.
            let v = unsafe { _mm256_sub_ps(_mm256_loadu_ps(h.as_ptr().add(j)), _mm256_loadu_ps(s.as_ptr().add(j))) };
            // Ordered less-than: false for NaN, as the scalar `v < best_v`.
            let lower = _mm256_cmp_ps::<_CMP_LT_OQ>(v, best_v);
            best_v = _mm256_blendv_ps(best_v, v, lower);
            best_i = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(best_i), _mm256_castsi256_ps(at), lower));
            at = _mm256_add_epi32(at, eight);
        }
        let (mut vs, mut is) = ([0f32; 8], [0i32; 8]);
        // SAFETY: both arrays hold 8 lanes.
        unsafe {
            _mm256_storeu_ps(vs.as_mut_ptr(), best_v);
            _mm256_storeu_si256(is.as_mut_ptr().cast(), best_i);
        }
        let (mut best, mut value) = (0u32, f32::INFINITY);
        for (v, i) in vs.into_iter().zip(is) {
            if v < value || (v == value && (i as u32) < best) {
                (best, value) = (i as u32, v);
            }
        }
        super::argmin_scalar(h, s, whole, (best, value)).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};

    /// The vectorised scan picks what the scalar one picks: on rows of every length to 40 and
    /// of 512, with many ties (values on a coarse grid), −0 against +0, NaNs and infinities;
    /// and both pick what the rule gives on rows worked out by hand.
    #[test]
    fn the_argmin_of_a_row_is_the_scalar_scans() {
        let nan = f32::NAN;
        let inf = f32::INFINITY;
        // (h, s, the first index of the least h − s, NaN never chosen, 0 if none is below +∞).
        let by_hand: [(&[f32], &[f32], u32); 6] = [
            (&[1.0, 0.0, 0.0], &[0.0; 3], 1),
            (&[nan, 2.0, 1.0, 1.0], &[0.0; 4], 2),
            (&[inf, inf, nan], &[0.0; 3], 0),
            (&[0.0, -0.0, -1.0], &[0.0, 0.0, -1.0], 0),
            // 9 codes: the least at 8, past the first 8-lane block; a tie at 3 and 7 before it.
            (&[5.0, 4.0, 3.0, 1.0, 2.0, 3.0, 4.0, 1.0, 0.5], &[0.0; 9], 8),
            (&[5.0, 4.0, 3.0, 1.0, 2.0, 3.0, 4.0, 1.0, 1.0], &[0.0; 9], 3),
        ];
        for (h, s, want) in by_hand {
            assert_eq!(argmin_scalar(h, s, 0, (0, inf)).0, want, "scalar: h {h:?} s {s:?}");
            assert_eq!(argmin_shifted(h, s), want, "h {h:?} s {s:?}");
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let special = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 0.0];
        for k in (1..=40).chain([512, 515]) {
            for trial in 0..200 {
                let mut draw = |_| match rng.random_range(0..20) {
                    0 if trial % 3 == 0 => special[rng.random_range(0..special.len())],
                    _ => rng.random_range(-4i32..4) as f32 * 0.5,
                };
                let h: Vec<f32> = (0..k).map(&mut draw).collect();
                let s: Vec<f32> = (0..k).map(&mut draw).collect();
                let want = argmin_scalar(&h, &s, 0, (0, f32::INFINITY)).0;
                assert_eq!(argmin_shifted(&h, &s), want, "k {k} trial {trial}: h {h:?} s {s:?}");
            }
        }
    }

    #[test]
    fn matches_candle_on_random_codebooks() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for (n, d, k) in [(1, 1, 1), (5, 3, 7), (300, 16, 64), (2000, 64, 512), (70, 8, 4096)] {
            let x: Vec<f32> = (0..n * d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let e: Vec<f32> = (0..k * d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let x = Tensor::from_vec(x, (n, d), &Device::Cpu).unwrap();
            let e = Tensor::from_vec(e, (k, d), &Device::Cpu).unwrap();
            let fast = nearest(&x, &e).unwrap().to_vec1::<u32>().unwrap();
            let reference = nearest_reference(&x, &e).unwrap().to_vec1::<u32>().unwrap();
            // Rounding may flip a near tie: every pick must be as near as the reference's.
            let xs = x.to_vec2::<f32>().unwrap();
            let es = e.to_vec2::<f32>().unwrap();
            let dist = |r: usize, c: u32| -> f64 {
                xs[r].iter().zip(&es[c as usize]).map(|(a, b)| ((a - b) as f64).powi(2)).sum()
            };
            for (r, (a, b)) in fast.iter().zip(&reference).enumerate() {
                assert!(dist(r, *a) <= dist(r, *b) + 1e-5, "row {r}: code {a} vs {b} (n {n} d {d} k {k})");
            }
            let same = fast.iter().zip(&reference).filter(|(a, b)| a == b).count();
            assert!(same * 100 >= n * 99, "{same} of {n} picks agree");
        }
    }
}
