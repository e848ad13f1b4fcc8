//! Elementwise math of the transformer's ops as loops the compiler vectorises: e^x and erf as
//! polynomials (libm's expf and erff are a call per element), sums in eight lanes (a plain f32
//! sum is one serial chain), each kernel compiled for AVX2 + FMA where the CPU has them.
//!
//! - e^x: Cephes' expf — x = n·ln 2 + r with |r| ≤ ln 2 / 2 (ln 2 in two parts), e^r by its
//!   degree-7 polynomial, times 2^n built in the exponent bits; within 2 ulp of e^x.
//! - erf: Eigen's rational approximation for f32, x·P(x²)/Q(x²) on [−4, 4] (erf is ±1 in f32
//!   outside it); within a few ulp.

use std::mem::MaybeUninit;

use super::kernels::simd_dispatch;

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// 1.5 · 2²³: adding and subtracting it rounds |t| < 2²² to the nearest integer.
const ROUND: f32 = 12_582_912.0;

/// e^x for x in [−87, 88] (clamped there: the result stays a normal float).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = (x - n * 0.693_359_4) - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// erf(x).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906_3e-4;
    p = x2 * p + -2.954_6e-3;
    p = x2 * p + -1.609_603_3e-2;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329_3e-3;
    q = x2 * q + -1.426_473_9e-2;
    x * p / q
}

/// Σ v in eight interleaved partial sums (so the loop vectorises), then those in order.
#[inline(always)]
pub fn sum(v: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

/// Σ a·b, as [`sum`].
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let n = a.len().min(b.len());
    let (a8, b8) = (a[..n].chunks_exact(8), b[..n].chunks_exact(8));
    let (ra, rb) = (a8.remainder(), b8.remainder());
    for (x, y) in a8.zip(b8) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + ra.iter().zip(rb).map(|(x, y)| x * y).sum::<f32>()
}

/// The largest of v (−∞ for none; NaNs are passed over), in eight lanes so that the loop
/// vectorises (a fold is one serial chain). Any order gives the same maximum.
#[inline(always)]
fn max(v: &[f32]) -> f32 {
    let larger = |m: f32, x: f32| if x > m { x } else { m };
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] = larger(acc[l], c[l]);
        }
    }
    rest.iter().fold(acc.into_iter().fold(f32::NEG_INFINITY, larger), |m, &x| larger(m, x))
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1/√(2π).
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

simd_dispatch! {
    /// y = x·Φ(x) = x · (1 + erf(x/√2)) / 2, written into `y` (uninitialised is fine).
    pub fn gelu_forward(x: &[f32], y: &mut [MaybeUninit<f32>]) {
        for (y, &x) in y.iter_mut().zip(x) {
            y.write((erf(x * FRAC_1_SQRT_2) + 1.0) * 0.5 * x);
        }
    }
}

simd_dispatch! {
    /// dx = dy · (Φ(x) + x·φ(x)), written into `dx` (uninitialised is fine).
    pub fn gelu_backward(x: &[f32], dy: &[f32], dx: &mut [MaybeUninit<f32>]) {
        for ((d, &x), &g) in dx.iter_mut().zip(x).zip(dy) {
            let cdf = 0.5 * (1.0 + erf(x * FRAC_1_SQRT_2));
            d.write(g * (cdf + x * FRAC_1_SQRT_2PI * exp(-0.5 * x * x)));
        }
    }
}

simd_dispatch! {
    /// y = GELU(x) as [`gelu_forward`] and its derivative d = Φ(x) + x·φ(x) as
    /// [`gelu_backward`] has it (dx = dy · d), from one erf: the forward pass of a layer that
    /// will be differentiated keeps d, and its backward pass is one multiplication.
    pub fn gelu_forward_and_derivative(x: &[f32], y: &mut [MaybeUninit<f32>], d: &mut [MaybeUninit<f32>]) {
        for ((y, d), &x) in y.iter_mut().zip(d.iter_mut()).zip(x) {
            let e = erf(x * FRAC_1_SQRT_2);
            y.write((e + 1.0) * 0.5 * x);
            d.write(0.5 * (1.0 + e) + x * FRAC_1_SQRT_2PI * exp(-0.5 * x * x));
        }
    }
}

simd_dispatch! {
    /// Rows of `row` (each `t` wide, `t` rows) become causal softmax rows of their entries ×
    /// `scale`: row i over its first i + 1 entries, zero after them.
    pub fn causal_softmax(rows: &mut [f32], t: usize, scale: f32) {
        for (i, row) in rows.chunks_exact_mut(t).enumerate() {
            let (seen, ahead) = row.split_at_mut(i + 1);
            let m = max(seen) * scale;
            for v in seen.iter_mut() {
                *v = exp(*v * scale - m);
            }
            let inv = 1.0 / sum(seen);
            seen.iter_mut().for_each(|v| *v *= inv);
            ahead.fill(0.0);
        }
    }
}

simd_dispatch! {
    /// The softmax's backward pass on rows of P (`t` wide): dP ← P ⊙ (dP − Σ_j P dP) · scale.
    pub fn softmax_backward(p: &[f32], dp: &mut [f32], t: usize, scale: f32) {
        for (pr, dr) in p.chunks_exact(t).zip(dp.chunks_exact_mut(t)) {
            let d = dot(pr, dr);
            for (g, &p) in dr.iter_mut().zip(pr) {
                *g = p * (*g - d) * scale;
            }
        }
    }
}

simd_dispatch! {
    /// Per row of `logits` (`k` wide): log Σ e^row, into `lse`.
    pub fn log_sum_exp(logits: &[f32], k: usize, lse: &mut [f32]) {
        for (row, out) in logits.chunks_exact(k).zip(lse.iter_mut()) {
            let m = max(row);
            let mut acc = [0f32; 8];
            let chunks = row.chunks_exact(8);
            let rest: f32 = chunks.remainder().iter().map(|&v| exp(v - m)).sum();
            for c in chunks {
                for l in 0..8 {
                    acc[l] += exp(c[l] - m);
                }
            }
            *out = m + (acc.iter().sum::<f32>() + rest).ln();
        }
    }
}

simd_dispatch! {
    /// d = e^(logits − lse) · scale per row (`k` wide): the softmax, scaled.
    pub fn softmax_scaled(logits: &[f32], k: usize, lse: &[f32], scale: f32, d: &mut [f32]) {
        for ((dr, row), &l) in d.chunks_exact_mut(k).zip(logits.chunks_exact(k)).zip(lse) {
            for (d, &v) in dr.iter_mut().zip(row) {
                *d = exp(v - l) * scale;
            }
        }
    }
}

simd_dispatch! {
    /// LayerNorm of rows (`gain.len()` wide): y = (x − mean)/√(var + eps) · gain + bias,
    /// written into `y` (uninitialised is fine). `centred` is scratch of one row.
    pub fn layer_norm_rows(
        x: &[f32],
        gain: &[f32],
        bias: &[f32],
        eps: f32,
        centred: &mut [f32],
        y: &mut [MaybeUninit<f32>],
    ) {
        let c = gain.len();
        let centred = &mut centred[..c];
        for (yr, xr) in y.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
            let mean = sum(xr) / c as f32;
            for (h, &x) in centred.iter_mut().zip(xr) {
                *h = x - mean;
            }
            let rstd = 1.0 / (dot(centred, centred) / c as f32 + eps).sqrt();
            for (((y, &h), &g), &b) in yr.iter_mut().zip(centred.iter()).zip(gain).zip(bias) {
                y.write(h * rstd * g + b);
            }
        }
    }
}

simd_dispatch! {
    /// LayerNorm's backward pass over rows: dx, and Σ dy·x̂ and Σ dy added into `dgain` and
    /// `dbias`. `xhat` is scratch of one row.
    pub fn layer_norm_rows_backward(
        x: &[f32],
        gain: &[f32],
        dy: &[f32],
        eps: f32,
        dx: &mut [f32],
        dgain: &mut [f32],
        dbias: &mut [f32],
        xhat: &mut [f32],
    ) {
        let c = gain.len();
        let inv_c = 1.0 / c as f32;
        for ((dxr, xr), dyr) in dx.chunks_exact_mut(c).zip(x.chunks_exact(c)).zip(dy.chunks_exact(c)) {
            let mean = sum(xr) * inv_c;
            for (h, &x) in xhat.iter_mut().zip(xr) {
                *h = x - mean;
            }
            let rstd = 1.0 / (dot(xhat, xhat) * inv_c + eps).sqrt();
            xhat.iter_mut().for_each(|h| *h *= rstd);
            // dx̂ = dy ⊙ gain (kept in dx for now).
            for ((d, &g), &gn) in dxr.iter_mut().zip(dyr).zip(gain) {
                *d = g * gn;
            }
            let a = sum(dxr) * inv_c;
            let b = dot(dxr, xhat) * inv_c;
            for (d, &h) in dxr.iter_mut().zip(xhat.iter()) {
                *d = rstd * (*d - a - h * b);
            }
            for (((dg, db), &g), &h) in dgain.iter_mut().zip(dbias.iter_mut()).zip(dyr).zip(xhat.iter()) {
                *dg += g * h;
                *db += g;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_is_the_largest_element_at_every_length() {
        let mut x = 0x2545_f491_u32;
        for len in 0..40 {
            let v: Vec<f32> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    (x % 20_001) as f32 / 100.0 - 100.0
                })
                .collect();
            let want = v.iter().map(|&a| f64::from(a)).fold(f64::NEG_INFINITY, f64::max);
            assert_eq!(f64::from(max(&v)), want, "length {len}");
        }
        assert_eq!(max(&[1.0, f32::NAN, 3.0, -2.0, f32::NAN, 0.5, 2.0, 1.0, 2.5]), 3.0, "NaNs are passed over");
    }

    #[test]
    fn exp_and_erf_are_within_a_few_ulp_of_f64() {
        let mut worst_exp = 0f64;
        let mut worst_erf = 0f64;
        let n = 200_000;
        for i in 0..=n {
            let x = -87.0 + 175.0 * i as f64 / n as f64;
            let got = f64::from(exp(x as f32));
            let want = (x as f32 as f64).exp();
            worst_exp = worst_exp.max((got - want).abs() / want);
            let x = -6.0 + 12.0 * i as f64 / n as f64;
            let got = f64::from(erf(x as f32));
            let want = candle_core::cpu::erf::erf_f64(x as f32 as f64);
            worst_erf = worst_erf.max((got - want).abs());
        }
        // f32's ulp is 2^-23 ≈ 1.2e-7 relative.
        assert!(worst_exp < 3e-7, "exp: worst relative error {worst_exp}");
        assert!(worst_erf < 5e-7, "erf: worst absolute error {worst_erf}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) > 0.0 && exp(-1000.0) < 1e-37);
    }

    #[test]
    fn lane_sums_match_f64_sums() {
        let v: Vec<f32> = (0..1003).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        let w: Vec<f32> = (0..1003).map(|i| ((i * 11 % 13) as f32 - 6.0) / 3.0).collect();
        let s: f64 = v.iter().map(|&x| f64::from(x)).sum();
        let d: f64 = v.iter().zip(&w).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum();
        assert!((f64::from(sum(&v)) - s).abs() < 1e-3, "{} vs {s}", sum(&v));
        assert!((f64::from(dot(&v, &w)) - d).abs() < 1e-3, "{} vs {d}", dot(&v, &w));
    }
}
