//! Lookup-free quantization (MAGVIT-v2, Yu et al. 2023, "Language Model Beats Diffusion"):
//! project the latent to d = log2 K channels, quantize each to its sign (±1) with a
//! straight-through estimator, and project back. A code's index is its bit pattern, the first
//! channel the most significant bit. Training adds the commitment loss `‖z − sg[q]‖²` and the
//! entropy penalty: with p_n = softmax over the K codes c of 2·(z_n·c)/τ (−‖z − c‖²/τ up to
//! terms that do not depend on c), the mean per-sample entropy H(p_n) pushed down and the
//! entropy of the batch's mean distribution H(mean p_n) pushed up (lucidrains'
//! `LFQ`, diversity γ = 1): loss = mean H(p_n) − H(mean p_n).
//!
//! Neither term needs the N × K matrix of p_n. Over codes c ∈ {−1, 1}^d, exp(2 z·c/τ) is a
//! product over channels, so p_n is a product of independent bits with P(c_i = +1) =
//! σ(4 z_i/τ): the per-sample entropy is the sum of the bits' binary entropies, exactly. The
//! batch distribution mean_n p_n(c) splits the bits into a high and a low half: with P_hi (N,
//! 2^⌊d/2⌋) and P_lo (N, 2^⌈d/2⌉) the products over each half, mean_n p_n = P_hiᵀ P_lo / N,
//! one matmul. At K = 4096 and 3,136 latents a batch that is 12.8 M probabilities in the
//! direct form is two 3,136 × 64 matrices here. (lucidrains clamps p at 1e-5 inside the
//! per-sample log; the exact sum of bit entropies has no clamp. The batch entropy keeps it.)

use candle_core::{DType, Result, Tensor, D};

use super::layers::{latent_rows, rows_to_latents, CodeProjection};
use super::params::ParamStore;
use crate::ops::softplus;

#[derive(Debug, Clone)]
pub struct Lfq {
    pub bits: usize,
    /// 2^bits: the implicit codebook.
    pub codes: usize,
    proj: Option<CodeProjection>,
    /// The high and the low half of the bits: the channels each covers and, for the products
    /// of their bit probabilities, the selector (2·bits, 2^bits) whose column c has a 1 in row
    /// i where bit i of c is 1 and in row bits + i where it is 0.
    halves: [(std::ops::Range<usize>, Tensor); 2],
    /// Bit place values (d, 1): 2^(d−1), …, 2, 1.
    place: Tensor,
    temperature: f64,
}

/// One LFQ pass.
pub struct LfqOutput {
    pub z_q: Tensor,
    pub indices: Tensor,
    /// `‖z − sg[q]‖²` (mean), unweighted.
    pub commit_loss: Tensor,
    /// mean H(p_n) − H(mean p_n) in training passes; 0 otherwise.
    pub entropy_loss: Tensor,
    /// The signs (N, d) as ±1.
    pub signs: Tensor,
}

/// Entropy of probability rows, −Σ p ln max(p, 1e-5) (lucidrains' clamp).
fn entropy(p: &Tensor) -> Result<Tensor> {
    (p * p.clamp(1e-5, 1.0)?.log()?)?.sum(D::Minus1)?.neg()
}

impl Lfq {
    pub fn new(ps: &mut ParamStore, embed_dim: usize, codebook_size: usize, temperature: f64) -> Result<Self> {
        let bits = codebook_size.trailing_zeros() as usize;
        let dev = ps.device().clone();
        let proj = if bits == embed_dim { None } else { Some(CodeProjection::new(ps, "quantizer.", embed_dim, bits)?) };
        let selector = |range: std::ops::Range<usize>| -> Result<(std::ops::Range<usize>, Tensor)> {
            let g = range.len();
            let mut rows = vec![0f32; (2 * g) << g];
            for c in 0..1usize << g {
                for i in 0..g {
                    let row = if (c >> (g - 1 - i)) & 1 == 1 { i } else { g + i };
                    rows[row * (1 << g) + c] = 1.0;
                }
            }
            Ok((range, Tensor::from_vec(rows, (2 * g, 1 << g), &dev)?))
        };
        let halves = [selector(0..bits / 2)?, selector(bits / 2..bits)?];
        let place: Vec<f32> = (0..bits).map(|i| (1u64 << (bits - 1 - i)) as f32).collect();
        Ok(Lfq {
            bits,
            codes: codebook_size,
            proj,
            halves,
            place: Tensor::from_vec(place, (bits, 1), &dev)?,
            temperature,
        })
    }

    /// The projections between the latent's channels and the code channels (none when equal).
    pub fn projection(&self) -> Option<&CodeProjection> {
        self.proj.as_ref()
    }

    /// Quantize encoder output (B, D, H, W); `train` computes the entropy penalty.
    pub fn forward(&self, z: &Tensor, train: bool) -> Result<LfqOutput> {
        let flat = latent_rows(z, self.proj.as_ref())?;
        let positive = flat.detach().gt(0.0)?.to_dtype(DType::F32)?;
        let signs = positive.affine(2.0, -1.0)?;
        let st = (&flat + (&signs - &flat)?.detach())?;
        let indices = positive.matmul(&self.place)?.squeeze(1)?.round()?.to_dtype(DType::U32)?;
        let commit_loss = (&flat - &signs)?.sqr()?.mean_all()?;
        let entropy_loss =
            if train { self.entropy_penalty(&flat)? } else { Tensor::zeros((), DType::F32, flat.device())? };
        let z_q = rows_to_latents(&st, z, self.proj.as_ref())?;
        Ok(LfqOutput { z_q, indices, commit_loss, entropy_loss, signs })
    }

    /// mean_n H(p_n) − H(mean_n p_n) of the rows (N, d), in the factorized form of the module
    /// doc: ln P(c_i = ±1) = −softplus(∓x_i) with x = 4z/τ.
    fn entropy_penalty(&self, flat: &Tensor) -> Result<Tensor> {
        let x = (flat * (4.0 / self.temperature))?;
        let minus_log_pos = softplus(&x.neg()?)?;
        let minus_log_neg = softplus(&x)?;
        let p_pos = minus_log_pos.neg()?.exp()?;
        let p_neg = minus_log_neg.neg()?.exp()?;
        let bit_entropy = ((&p_pos * &minus_log_pos)? + (&p_neg * &minus_log_neg)?)?;
        let per_sample = bit_entropy.sum(1)?.mean(0)?;
        let n = flat.dim(0)?;
        let products = |(range, selector): &(std::ops::Range<usize>, Tensor)| -> Result<Tensor> {
            if range.is_empty() {
                return Tensor::ones((n, 1), DType::F32, flat.device());
            }
            let (from, len) = (range.start, range.len());
            let log_p = Tensor::cat(&[minus_log_pos.narrow(1, from, len)?, minus_log_neg.narrow(1, from, len)?], 1)?;
            log_p.neg()?.matmul(selector)?.exp()
        };
        let (hi, lo) = (products(&self.halves[0])?, products(&self.halves[1])?);
        let mean = (hi.t()?.matmul(&lo)? / n as f64)?.flatten_all()?;
        per_sample - entropy(&mean)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn codes_are_bit_patterns_first_channel_most_significant() {
        let mut ps = ParamStore::new(&Device::Cpu, 0);
        let lfq = Lfq::new(&mut ps, 3, 8, 0.01).unwrap();
        assert_eq!((lfq.bits, lfq.codes), (3, 8));
        // Rows (+, −, +) → 101 = 5, (−, −, −) → 0, (+, +, +) → 7; z_q is the signs.
        let z = Tensor::from_vec(vec![0.3f32, -2.0, 0.1, -0.1, -0.5, -3.0, 1.0, 2.0, 3.0], (3, 3, 1, 1), &Device::Cpu)
            .unwrap();
        let out = lfq.forward(&z, false).unwrap();
        assert_eq!(out.indices.to_vec1::<u32>().unwrap(), [5, 0, 7]);
        assert_eq!(out.z_q.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [1., -1., 1., -1., -1., -1., 1., 1., 1.]);
        // Commitment by hand: mean of (0.7² + 1² + 0.9²  + 0.9² + 0.5² + 2² + 0 + 1² + 2²) / 9.
        let by_hand = (0.49 + 1.0 + 0.81 + 0.81 + 0.25 + 4.0 + 0.0 + 1.0 + 4.0) / 9.0;
        assert!((f64::from(out.commit_loss.to_scalar::<f32>().unwrap()) - by_hand).abs() < 1e-6);
    }

    #[test]
    fn the_entropy_penalty_by_hand() {
        // One bit, two codes (−1, +1), τ = 1: p_n = softmax(2·z·(−1), 2·z·(+1)). For z = 0:
        // p = (½, ½): per-sample entropy ln 2, batch entropy ln 2, penalty 0. For z = ±10 (two
        // confident samples on different codes): per-sample ≈ 0, batch mean (½, ½) → −ln 2.
        let mut ps = ParamStore::new(&Device::Cpu, 0);
        let lfq = Lfq::new(&mut ps, 1, 2, 1.0).unwrap();
        let zero = Tensor::zeros((2, 1, 1, 1), DType::F32, &Device::Cpu).unwrap();
        let e = lfq.forward(&zero, true).unwrap().entropy_loss.to_scalar::<f32>().unwrap();
        assert!(e.abs() < 1e-6, "{e}");
        let apart = Tensor::from_vec(vec![10f32, -10.0], (2, 1, 1, 1), &Device::Cpu).unwrap();
        let e = lfq.forward(&apart, true).unwrap().entropy_loss.to_scalar::<f32>().unwrap();
        assert!((f64::from(e) + std::f64::consts::LN_2).abs() < 1e-4, "{e}");
        // Both on the same code: per-sample ≈ 0 and batch ≈ 0 (collapse is not rewarded).
        let same = Tensor::from_vec(vec![10f32, 10.0], (2, 1, 1, 1), &Device::Cpu).unwrap();
        let e = lfq.forward(&same, true).unwrap().entropy_loss.to_scalar::<f32>().unwrap();
        assert!(f64::from(e).abs() < 1e-4, "{e}");
    }
}
