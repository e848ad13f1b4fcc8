//! The model's quantizer: one [`Quantizer`], or a residual stack of them (SoundStream's
//! Algorithm 1, RQ-VAE): level 0 quantizes the encoder output z, level l the residual
//! r_l = z − Σ_{j<l} sg(q_j) the levels before it left, each with its own codebook of K codes
//! (its own EMA statistics, k-means seed and dead-code restarts). The output is Σ_l q_l with
//! the gradient estimator applied once, from the sum to z (straight through, as audiocraft's
//! `ResidualVectorQuantization` does, or rotated); each level's codebook and commitment losses
//! are taken against its own residual and summed. Because r_l carries z's gradient, every
//! level's commitment term pulls the encoder.
//!
//! Codes are counted over all levels' codebooks together: level l's code k is the pooled code
//! l·K + k of L·K, so usage, perplexity and dead codes of a residual quantizer count against
//! L·K codes, and per level against K (`eval/usage_l0`, …).

use candle_core::{DType, Result, Tensor, Var};

use super::layers::{latent_rows, rows_to_latents};
use super::params::ParamStore;
use super::quantizer::{code_counts, kmeans, rotate_to, Quantized, Quantizer};
use crate::config::{GradientEstimator, QuantizerConfig};

#[derive(Debug, Clone)]
pub struct ModelQuantizer {
    levels: Vec<Quantizer>,
    /// The residual stack's estimator from Σ q_l to z (the levels' own are unused).
    gradient: GradientEstimator,
    /// The codes latents are counted against: K (Π levels for fsq) for one quantizer, L·K
    /// for a residual one.
    pub codebook_size: usize,
    /// The commitment weight β (the same at every level).
    pub beta: f64,
}

impl ModelQuantizer {
    /// One quantizer named `quantizer.…` when `levels` is 1; otherwise `levels` of them,
    /// named `quantizer.l0.…`, `quantizer.l1.…`, ….
    pub fn new(ps: &mut ParamStore, q: &QuantizerConfig) -> Result<Self> {
        let levels = if q.levels <= 1 {
            vec![Quantizer::new(ps, q)?]
        } else {
            (0..q.levels).map(|l| Quantizer::named(ps, q, &format!("quantizer.l{l}."))).collect::<Result<Vec<_>>>()?
        };
        let codebook_size = levels.iter().map(|l| l.codebook_size).sum();
        Ok(ModelQuantizer { beta: levels[0].beta, levels, gradient: q.gradient, codebook_size })
    }

    /// The quantizer of each level (one for a single quantizer).
    pub fn levels(&self) -> &[Quantizer] {
        &self.levels
    }

    /// Whether this is a residual stack of more than one level.
    pub fn is_residual(&self) -> bool {
        self.levels.len() > 1
    }

    /// The codebook of a single quantizer (the first level's of a residual one).
    pub fn codebook(&self) -> Option<&Var> {
        self.levels[0].codebook()
    }

    /// The quantized latents of one quantizer's code indices (see
    /// [`Quantizer::decode_indices`]); a residual stack's pooled codes are not one per position.
    pub fn decode_indices(&self, indices: &Tensor, grid: (usize, usize, usize)) -> Result<Tensor> {
        if self.is_residual() {
            candle_core::bail!("decoding codes of a residual quantizer needs one code per level and position");
        }
        self.levels[0].decode_indices(indices, grid)
    }

    /// Quantize encoder output (B, D, H, W); `train` enables the levels' EMA updates.
    pub fn forward(&self, z: &Tensor, train: bool) -> Result<Quantized> {
        if !self.is_residual() {
            return self.levels[0].forward(z, train);
        }
        let mut residual = z.clone();
        // Σ q_l, without gradient (0 + q is q exactly).
        let mut sum = z.detach().zeros_like()?;
        let mut passes = Vec::with_capacity(self.levels.len());
        for level in &self.levels {
            let pass = level.forward(&residual, train)?;
            let q = pass.z_q.detach();
            residual = (residual - &q)?;
            sum = (sum + q)?;
            passes.push(pass);
        }
        let z_q = match self.gradient {
            GradientEstimator::Ste => (z + (&sum - z)?.detach())?,
            GradientEstimator::Rotation => {
                let rotated = rotate_to(&latent_rows(z, None)?, &latent_rows(&sum, None)?)?;
                rows_to_latents(&rotated, z, None)?
            }
        };
        let total = |f: &dyn Fn(&Quantized) -> &Tensor| -> Result<Tensor> {
            passes.iter().skip(1).try_fold(f(&passes[0]).clone(), |acc, p| acc + f(p))
        };
        let codebook_loss = total(&|p| &p.codebook_loss)?;
        let commit_loss = total(&|p| &p.commit_loss)?;
        let mut offset = 0u32;
        let mut pooled = Vec::with_capacity(passes.len());
        for (pass, level) in passes.iter().zip(&self.levels) {
            // Through f32, exact for the at most 16 · 2^20 pooled codes validation allows.
            pooled.push((pass.indices.to_dtype(DType::F32)? + f64::from(offset))?.to_dtype(DType::U32)?);
            offset += level.codebook_size as u32;
        }
        let indices = Tensor::cat(&pooled, 0)?;
        let counts = if train { Some(code_counts(&indices, self.codebook_size)?) } else { None };
        Ok(Quantized {
            z_q,
            indices,
            codebook_loss,
            commit_loss,
            entropy_loss: None,
            flat: passes[0].flat.clone(),
            counts,
            levels: passes,
        })
    }

    /// After an optimizer step: each level's dead-code restart, from the residual vectors
    /// that level saw (level l's draws from a seed of its own).
    pub fn restart_dead_codes(&self, q: &Quantized, seed: u64, step: u64) -> Result<()> {
        if !self.is_residual() {
            return self.levels[0].restart_dead_codes(q, seed, step);
        }
        for (l, (level, pass)) in self.levels.iter().zip(&q.levels).enumerate() {
            level.restart_dead_codes(pass, level_seed(seed, l), step)?;
        }
        Ok(())
    }

    /// k-means codebooks from encoder outputs `latents` (batches (B, D, H, W)): level 0 from
    /// the latents, then each level from the residuals the seeded levels before it leave,
    /// `iterations` Lloyd iterations each.
    pub fn seed_from_kmeans(&self, latents: &[Tensor], iterations: usize, seed: u64) -> Result<()> {
        let mut residuals = latents.to_vec();
        for (l, level) in self.levels.iter().enumerate() {
            let parts = residuals.iter().map(|r| Ok(level.lookup_vectors(r)?.detach())).collect::<Result<Vec<_>>>()?;
            let vectors = Tensor::cat(&parts, 0)?;
            let (centroids, counts) = kmeans(&vectors, level.codebook_size, iterations, level_seed(seed, l))?;
            // One batch's worth of latent vectors: the scale of the counts the EMA averages.
            level.seed_from_kmeans(&centroids, &counts, parts[0].dim(0)?)?;
            if l + 1 < self.levels.len() {
                residuals =
                    residuals.iter().map(|r| r - level.forward(r, false)?.z_q.detach()).collect::<Result<Vec<_>>>()?;
            }
        }
        Ok(())
    }
}

/// Level l's seed for random draws: the run's seed for level 0 (a single quantizer's draws are
/// those of level 0), another stream for each other level.
fn level_seed(seed: u64, level: usize) -> u64 {
    seed ^ (level as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}
