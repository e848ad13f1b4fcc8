//! Vector quantizer: nearest code by one matmul (argmin ‖e‖²/2 − z·e), straight-through
//! estimator, codebook and commitment losses; the `ema` kind updates the codebook with
//! Sonnet's VectorQuantizerEMA (zero-debiased averages, Laplace-smoothed cluster sizes). The
//! `fsq` kind has no codebook: [`super::fsq`] rounds bounded channels to a fixed grid.

use candle_core::{DType, Result, Tensor, Var, D};

use super::fsq::Fsq;
use super::layers::{latent_rows, rows_to_latents, CodeProjection};
use super::lfq::Lfq;
use super::params::{Init, ParamStore};
use crate::config::{GradientEstimator, QuantizerConfig, QuantizerKind};

/// Names of the EMA state tensors after the quantizer's prefix (`quantizer.`, or
/// `quantizer.l1.` for a level of a residual quantizer): the hidden (un-debiased) cluster
/// sizes and sums, and γᵗ, the weight the zero start still has in them (1 before the first
/// update; 0 after a k-means seed, which is a real average and needs no debiasing).
pub const EMA_BUFFERS: &[&str] = &["ema_cluster_size", "ema_dw", "ema_decay_power"];

#[derive(Debug, Clone)]
pub struct Quantizer {
    pub kind: QuantizerKind,
    /// The learned (vq) or EMA-updated (ema) codebook; None for fsq.
    codebook: Option<Var>,
    /// The codes latents are counted against: K, or for fsq the implicit Π levels.
    pub codebook_size: usize,
    /// The fsq kind's grid.
    fsq: Option<Fsq>,
    /// The lfq kind's bits.
    lfq: Option<Lfq>,
    /// How the gradient passes from the chosen codes back to the latents.
    gradient: GradientEstimator,
    /// simvq: the learned linear map W (D, D); the codes are the frozen basis times Wᵀ.
    code_transform: Option<Var>,
    pub beta: f64,
    decay: f64,
    epsilon: f64,
    l2_normalize: bool,
    /// Factorized lookup: projections into and out of the low-dimensional code space.
    proj: Option<CodeProjection>,
    /// EMA state: hidden cluster sizes, hidden sums, and γᵗ (see [`EMA_BUFFERS`]).
    ema: Option<(Var, Var, Var)>,
    /// Dead-code restart: EMA of the number of latent vectors each code gets per batch, and
    /// the threshold below which a code is restarted.
    usage_ema: Option<Var>,
    dead_code_threshold: f64,
}

/// What one quantization pass produces.
pub struct Quantized {
    /// Straight-through output, shaped like the encoder output.
    pub z_q: Tensor,
    /// Code index of every latent vector, (N,) u32, N = B·H·W.
    pub indices: Tensor,
    /// `mean((z_q − sg[z])²)`: trains the codebook (vq kind); zero-gradient for ema.
    pub codebook_loss: Tensor,
    /// `mean((z − sg[z_q])²)`: unweighted commitment term.
    pub commit_loss: Tensor,
    /// lfq: the entropy penalty of a training pass (unweighted); None for the other kinds.
    pub entropy_loss: Option<Tensor>,
    /// The latent vectors as looked up (N, code_dim), detached: restarts draw from them.
    pub flat: Tensor,
    /// Vectors per code in this batch (K,), computed once in training passes for the EMA
    /// update, dead-code restarts and batch statistics; `None` in eval passes.
    pub counts: Option<Tensor>,
    /// A residual quantizer's passes, one per level (empty for a single quantizer).
    pub levels: Vec<Quantized>,
}

impl Quantized {
    /// Vectors per code: the counts of the training pass, or counted now for an eval pass.
    pub fn code_counts(&self, k: usize) -> Result<Tensor> {
        match &self.counts {
            Some(c) => Ok(c.clone()),
            None => code_counts(&self.indices, k),
        }
    }
}

fn l2norm(x: &Tensor) -> Result<Tensor> {
    let n = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    x.broadcast_div(&n)
}

impl Quantizer {
    /// The quantizer of a config (one level), its parameters named `quantizer.…`.
    pub fn new(ps: &mut ParamStore, q: &QuantizerConfig) -> Result<Self> {
        Self::named(ps, q, "quantizer.")
    }

    /// A quantizer whose parameters are named `{prefix}codebook`, ….
    pub fn named(ps: &mut ParamStore, q: &QuantizerConfig, prefix: &str) -> Result<Self> {
        let name = |what: &str| format!("{prefix}{what}");
        let k = q.codebook_size as usize;
        let d = q.embed_dim as usize;
        let others = |codebook_size: usize, fsq: Option<Fsq>, lfq: Option<Lfq>, beta: f64| Quantizer {
            kind: q.kind,
            codebook: None,
            codebook_size,
            fsq,
            lfq,
            gradient: GradientEstimator::Ste,
            code_transform: None,
            beta,
            decay: q.ema_decay,
            epsilon: q.ema_epsilon,
            l2_normalize: false,
            proj: None,
            ema: None,
            usage_ema: None,
            dead_code_threshold: 0.0,
        };
        if q.kind == QuantizerKind::Lfq {
            let lfq = Lfq::new(ps, d, k, q.lfq_temperature.unwrap_or(0.01))?;
            return Ok(others(k, None, Some(lfq), q.beta));
        }
        if q.kind == QuantizerKind::Fsq {
            let levels = super::fsq::levels_of(q.codebook_size, &q.fsq_levels).ok_or_else(|| {
                candle_core::Error::Msg(format!("fsq: no levels for codebook_size {} (validation checks this)", k))
            })?;
            let fsq = Fsq::new(ps, d, &levels)?;
            return Ok(others(fsq.codes, Some(fsq), None, 0.0));
        }
        let code_dim = if q.lookup_dim > 0 { q.lookup_dim as usize } else { d };
        let proj = if q.lookup_dim > 0 { Some(CodeProjection::new(ps, prefix, d, code_dim)?) } else { None };
        // uniform(−1/K, 1/K) as in taming and the reference PyTorch implementations: a N(0, 1)
        // codebook against small encoder outputs leaves one or two codes in use. Cosine codes
        // start as unit vectors (normalised N(0, 1) rows, as lucidrains' CosineSimCodebook and
        // ViT-VQGAN do): at norm ≈ 1/K an Adam step of size lr would turn them by ~lr·K.
        let bound = 1.0 / k as f64;
        let init = if q.l2_normalize { Init::Normal { mean: 0.0, std: 1.0 } } else { Init::Uniform(-bound, bound) };
        // SimVQ: the basis is frozen N(0, 1/D) rows and the map W a linear layer's default
        // init, U(±1/√D), as lucidrains' SimVQ has them.
        let code_transform = if q.kind == QuantizerKind::Simvq {
            let bound = 1.0 / (code_dim as f64).sqrt();
            Some(ps.param_var(&name("code_transform"), &[code_dim, code_dim], Init::Uniform(-bound, bound))?)
        } else {
            None
        };
        let init = if q.kind == QuantizerKind::Simvq {
            Init::Normal { mean: 0.0, std: 1.0 / (code_dim as f64).sqrt() }
        } else {
            init
        };
        let (codebook, ema) = if q.kind == QuantizerKind::Simvq {
            (ps.buffer(&name("codebook"), &[k, code_dim], init)?, None)
        } else if q.kind == QuantizerKind::Ema {
            // The EMA codebook is state, not a trained parameter.
            let codebook = ps.buffer(&name("codebook"), &[k, code_dim], init)?;
            let cs = ps.buffer(&name(EMA_BUFFERS[0]), &[k], Init::Const(0.0))?;
            let dw = ps.buffer(&name(EMA_BUFFERS[1]), &[k, code_dim], Init::Const(0.0))?;
            let decay_power = ps.buffer(&name(EMA_BUFFERS[2]), &[1], Init::Const(1.0))?;
            (codebook, Some((cs, dw, decay_power)))
        } else {
            (ps.param_var(&name("codebook"), &[k, code_dim], init)?, None)
        };
        if q.l2_normalize {
            codebook.set(&l2norm(codebook.as_tensor())?)?;
        }
        let usage_ema = if q.dead_code_threshold > 0.0 {
            // Start "alive": a code is restarted only after it has gone unused for a while.
            Some(ps.buffer(&name("usage_ema"), &[k], Init::Const(q.dead_code_threshold))?)
        } else {
            None
        };
        Ok(Quantizer {
            usage_ema,
            dead_code_threshold: q.dead_code_threshold,
            kind: q.kind,
            codebook: Some(codebook),
            codebook_size: k,
            fsq: None,
            lfq: None,
            gradient: q.gradient,
            code_transform,
            beta: q.beta,
            decay: q.ema_decay,
            epsilon: q.ema_epsilon,
            l2_normalize: q.l2_normalize,
            proj,
            ema,
        })
    }

    /// The codebook (None for fsq, which has none).
    pub fn codebook(&self) -> Option<&Var> {
        self.codebook.as_ref()
    }

    /// The fsq kind's grid.
    pub fn fsq(&self) -> Option<&Fsq> {
        self.fsq.as_ref()
    }

    fn vq_codebook(&self) -> Result<&Var> {
        self.codebook.as_ref().ok_or_else(|| candle_core::Error::Msg("the fsq quantizer has no codebook".into()))
    }

    /// The codebook as used for lookup (normalised when l2_normalize is on; for simvq the
    /// frozen basis times Wᵀ).
    pub fn lookup_codebook(&self) -> Result<Tensor> {
        let e = self.vq_codebook()?.as_tensor();
        if let Some(w) = &self.code_transform {
            // The basis is frozen: no gradient reaches it.
            return e.detach().matmul(&w.as_tensor().t()?);
        }
        if self.l2_normalize {
            l2norm(e)
        } else {
            Ok(e.clone())
        }
    }

    /// Quantize encoder output (B, D, H, W). `train` enables the EMA update.
    pub fn forward(&self, z: &Tensor, train: bool) -> Result<Quantized> {
        // The codebook-free kinds: codes on a fixed grid, no codebook loss.
        let grid = match (&self.fsq, &self.lfq) {
            (Some(fsq), _) => {
                let out = fsq.forward(z)?;
                Some((out.z_q, out.indices, None, None, out.levels))
            }
            (_, Some(lfq)) => {
                let out = lfq.forward(z, train)?;
                Some((out.z_q, out.indices, Some(out.commit_loss), Some(out.entropy_loss), out.signs))
            }
            _ => None,
        };
        if let Some((z_q, indices, commit_loss, entropy_loss, flat)) = grid {
            let zero = Tensor::zeros((), DType::F32, z.device())?;
            let counts = if train { Some(code_counts(&indices, self.codebook_size)?) } else { None };
            return Ok(Quantized {
                z_q,
                indices,
                codebook_loss: zero.clone(),
                commit_loss: commit_loss.unwrap_or(zero),
                entropy_loss,
                flat,
                counts,
                levels: Vec::new(),
            });
        }
        let flat = self.lookup_vectors(z)?;
        let e = self.lookup_codebook()?;
        let indices = nearest(&flat.detach(), &e.detach())?;
        let chosen = e.index_select(&indices, 0)?;
        let codebook_loss = (&chosen - flat.detach())?.sqr()?.mean_all()?;
        let commit_loss = (&flat - chosen.detach())?.sqr()?.mean_all()?;
        let counts = if train { Some(code_counts(&indices, self.codebook_size)?) } else { None };
        if let (Some(ema), Some(counts)) = (&self.ema, &counts) {
            self.ema_update(ema, &flat.detach(), &indices, counts)?;
        }
        let st = match self.gradient {
            GradientEstimator::Ste => (&flat + (chosen - &flat)?.detach())?,
            GradientEstimator::Rotation => rotate_to(&flat, &chosen)?,
        };
        let z_q = rows_to_latents(&st, z, self.proj.as_ref())?;
        Ok(Quantized {
            z_q,
            indices,
            codebook_loss,
            commit_loss,
            entropy_loss: None,
            flat: flat.detach(),
            counts,
            levels: Vec::new(),
        })
    }

    /// Sonnet's update: hidden ← hidden − (hidden − value)(1 − γ); average = hidden / (1 − γᵗ);
    /// n = Σ cluster sizes; smoothed = (size + ε) / (n + Kε) · n; codebook = dw / smoothed.
    /// γᵗ is kept as a buffer (multiplied by γ at each update, on the device): it is 0 from
    /// the start when the averages were seeded by k-means, and the division is then by 1.
    fn ema_update(
        &self,
        (cs, dw, decay_power): &(Var, Var, Var),
        flat: &Tensor,
        indices: &Tensor,
        counts: &Tensor,
    ) -> Result<()> {
        let k = self.codebook_size;
        let dev = flat.device();
        let sums = Tensor::zeros((k, flat.dim(1)?), DType::F32, dev)?.index_add(indices, flat, 0)?;
        let g = self.decay;
        let gamma_t = (decay_power.as_tensor() * g)?;
        decay_power.set(&gamma_t)?;
        let new_cs = (cs.as_tensor() - ((cs.as_tensor() - counts)? * (1.0 - g))?)?;
        let new_dw = (dw.as_tensor() - ((dw.as_tensor() - sums)? * (1.0 - g))?)?;
        cs.set(&new_cs)?;
        dw.set(&new_dw)?;
        let one_minus = gamma_t.affine(-1.0, 1.0)?;
        let avg_cs = new_cs.broadcast_div(&one_minus)?;
        let avg_dw = new_dw.broadcast_div(&one_minus)?;
        let n = avg_cs.sum_keepdim(0)?;
        let smoothed =
            ((&avg_cs + self.epsilon)?.broadcast_div(&(&n + k as f64 * self.epsilon)?)?).broadcast_mul(&n)?;
        let codebook = avg_dw.broadcast_div(&smoothed.unsqueeze(1)?)?;
        self.vq_codebook()?.set(&codebook)
    }

    /// After an optimizer step: update the usage EMA and restart dead codes from random latent
    /// vectors of this batch (drawn from (seed, step), so resumes repeat them). Everything
    /// stays on the device: dead codes are selected by a mask, not read back.
    pub fn restart_dead_codes(&self, q: &Quantized, seed: u64, step: u64) -> Result<()> {
        let Some(usage) = &self.usage_ema else { return Ok(()) };
        let k = self.codebook_size;
        let dev = q.flat.device();
        let n = q.flat.dim(0)?;
        let counts = q.code_counts(k)?;
        let g = self.decay;
        let new_usage = ((usage.as_tensor() * g)? + (counts * (1.0 - g))?)?;
        let dead = new_usage.lt(self.dead_code_threshold)?.to_dtype(DType::F32)?; // (K)
        let alive = dead.affine(-1.0, 1.0)?;
        let picks = random_rows(n, k, seed, step, dev)?;
        let candidates = q.flat.index_select(&picks, 0)?; // (K, code_dim)
        let dead_col = dead.unsqueeze(1)?;
        let alive_col = alive.unsqueeze(1)?;
        let current = self.vq_codebook()?;
        let codebook = (current.as_tensor().broadcast_mul(&alive_col)? + candidates.broadcast_mul(&dead_col)?)?;
        current.set(&codebook)?;
        // A restarted code counts as just alive again.
        usage.set(&((new_usage * &alive)? + (dead.clone() * self.dead_code_threshold)?)?)?;
        if let Some((cs, dw, decay_power)) = &self.ema {
            // Make the EMA averages of a restarted code equal (size 1, the new vector), in the
            // hidden (un-debiased) units: hidden = average · (1 − γᵗ).
            let one_minus = decay_power.as_tensor().affine(-1.0, 1.0)?;
            let cs_new = (cs.as_tensor() * &alive)? + dead.broadcast_mul(&one_minus)?;
            let dw_new = (dw.as_tensor().broadcast_mul(&alive_col)?
                + candidates.broadcast_mul(&dead_col)?.broadcast_mul(&one_minus)?)?;
            cs.set(&cs_new?)?;
            dw.set(&dw_new)?;
        }
        Ok(())
    }

    /// Replace the codebook.
    pub fn set_codebook(&self, codes: &Tensor) -> Result<()> {
        self.vq_codebook()?.set(&codes.to_dtype(DType::F32)?)
    }

    /// Start from a k-means result: the codebook is the centroids (normalised for cosine
    /// codes), and for the `ema` kind the EMA statistics start as those clusters, as
    /// lucidrains' `init_embed_` seeds them, so the first updates average the batches into
    /// the centroids instead of into zero. `counts` (K,) are the vectors per cluster out of
    /// the k-means sample; they are rescaled to `vectors_per_batch` in all, the scale of the
    /// per-batch counts the EMA averages. A cluster that k-means left empty is seeded as
    /// holding one vector, so that its centroid is not zeroed at the first step. The seed is
    /// an average, not a zero start: γᵗ is set to 0 and no debiasing applies.
    pub fn seed_from_kmeans(&self, centroids: &Tensor, counts: &Tensor, vectors_per_batch: usize) -> Result<()> {
        let centroids = centroids.to_dtype(DType::F32)?;
        let centroids = if self.l2_normalize { l2norm(&centroids)? } else { centroids };
        self.vq_codebook()?.set(&centroids)?;
        if let Some((cs, dw, decay_power)) = &self.ema {
            let counts = counts.to_dtype(DType::F32)?.clamp(1.0, f64::MAX)?;
            let size = (&counts * (vectors_per_batch as f64))?.broadcast_div(&counts.sum_keepdim(0)?)?;
            cs.set(&size)?;
            dw.set(&centroids.broadcast_mul(&size.unsqueeze(1)?)?)?;
            decay_power.set(&decay_power.as_tensor().zeros_like()?)?;
        }
        Ok(())
    }

    /// Project and flatten encoder output as the lookup sees it (N, code_dim).
    pub fn lookup_vectors(&self, z: &Tensor) -> Result<Tensor> {
        let flat = latent_rows(z, self.proj.as_ref())?;
        if self.l2_normalize {
            l2norm(&flat)
        } else {
            Ok(flat)
        }
    }

    /// The quantized latents (B, D, H, W) of code indices (B·H·W,) u32 on a (B, H, W) grid:
    /// what the decoder sees for those codes (a codebook row; fsq's grid point of the index's
    /// mixed-radix digits; lfq's ±1 bits), projected out of a factorized lookup.
    pub fn decode_indices(&self, indices: &Tensor, (b, h, w): (usize, usize, usize)) -> Result<Tensor> {
        let dev = indices.device();
        let rows = match (&self.fsq, &self.lfq) {
            (Some(fsq), _) => {
                let idx = indices.to_vec1::<u32>()?;
                let d = fsq.levels.len();
                let mut rows = Vec::with_capacity(idx.len() * d);
                for &i in &idx {
                    let mut rest = i;
                    for &l in &fsq.levels {
                        let half_width = (l / 2) as f32;
                        rows.push(((rest % l) as f32 - half_width) / half_width);
                        rest /= l;
                    }
                }
                Tensor::from_vec(rows, (idx.len(), d), dev)?
            }
            (_, Some(lfq)) => {
                let idx = indices.to_vec1::<u32>()?;
                let d = lfq.bits;
                let rows: Vec<f32> = idx
                    .iter()
                    .flat_map(|&i| (0..d).map(move |bit| if (i >> (d - 1 - bit)) & 1 == 1 { 1.0 } else { -1.0 }))
                    .collect();
                Tensor::from_vec(rows, (idx.len(), d), dev)?
            }
            _ => self.lookup_codebook()?.index_select(indices, 0)?,
        };
        let proj = match (&self.fsq, &self.lfq) {
            (Some(fsq), _) => fsq.projection(),
            (_, Some(lfq)) => lfq.projection(),
            _ => self.proj.as_ref(),
        };
        let like = Tensor::zeros((b, 1, h, w), DType::F32, dev)?;
        rows_to_latents(&rows, &like, proj)
    }

    /// Code indices of latents (B, D, H, W), without losses or updates (eval).
    pub fn encode_indices(&self, z: &Tensor) -> Result<Tensor> {
        Ok(self.forward(z, false)?.indices)
    }
}

/// The rotation trick (Fifty et al. 2024, "Restructuring Vector Quantization with the Rotation
/// Trick"): each row e becomes its code q through λR e, with R the rotation that takes e/‖e‖ to
/// q/‖q‖ and λ = ‖q‖/‖e‖, both held constant. In the efficient form of the paper's §4.2, with
/// u = e/‖e‖, q̂ = q/‖q‖ and w = (u + q̂)/‖u + q̂‖ (all detached):
/// R e = e − 2 (e·w) w + 2 (e·u) q̂. The forward value is q exactly; the gradient reaching e is
/// λ Rᵀ g instead of g. The codebook gets no gradient from it (as with the straight-through
/// estimator: the codebook loss trains it).
pub fn rotate_to(e: &Tensor, q: &Tensor) -> Result<Tensor> {
    let norm = |t: &Tensor| -> Result<Tensor> { t.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-6, f64::MAX) };
    let (ed, qd) = (e.detach(), q.detach());
    let (e_norm, q_norm) = (norm(&ed)?, norm(&qd)?);
    let u = ed.broadcast_div(&e_norm)?;
    let q_hat = qd.broadcast_div(&q_norm)?;
    let sum = (&u + &q_hat)?;
    let w = sum.broadcast_div(&norm(&sum)?)?;
    let ew = e.broadcast_mul(&w)?.sum_keepdim(D::Minus1)?;
    let eu = e.broadcast_mul(&u)?.sum_keepdim(D::Minus1)?;
    let rotated = ((e - (w.broadcast_mul(&ew)? * 2.0)?)? + (q_hat.broadcast_mul(&eu)? * 2.0)?)?;
    let scaled = rotated.broadcast_mul(&q_norm.broadcast_div(&e_norm)?)?;
    // The value of q (not its float rounding through R), the gradient of λR e.
    &scaled + (qd - &scaled)?.detach()
}

/// Index of the nearest code for each row: argmin_k ‖e_k‖²/2 − x·e_k (one matmul, no N×K×D).
pub fn nearest(x: &Tensor, codebook: &Tensor) -> Result<Tensor> {
    crate::ops::nearest::nearest(x, codebook)
}

/// Number of latent vectors assigned to each of the `k` codes, (K,) f32, on the device.
pub fn code_counts(indices: &Tensor, k: usize) -> Result<Tensor> {
    let ones = Tensor::ones(indices.dims1()?, DType::F32, indices.device())?;
    Tensor::zeros(k, DType::F32, indices.device())?.index_add(indices, &ones, 0)
}

/// K row indices in 0..n drawn from (seed, step), the same on every device and every resume:
/// without replacement when n ≥ K; otherwise every row once per round, in a new random order
/// each round, so that no row is drawn twice before all have been drawn once.
pub fn draw_rows(n: usize, k: usize, seed: u64, step: u64) -> Vec<u32> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ step.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0xdead_c0de);
    if n >= k {
        return rand::seq::index::sample(&mut rng, n, k).into_iter().map(|i| i as u32).collect();
    }
    let mut picks = Vec::with_capacity(k);
    while picks.len() < k {
        let mut round: Vec<u32> = (0..n as u32).collect();
        round.shuffle(&mut rng);
        picks.extend(round.into_iter().take(k - picks.len()));
    }
    picks
}

fn random_rows(n: usize, k: usize, seed: u64, step: u64, dev: &candle_core::Device) -> Result<Tensor> {
    Tensor::from_vec(draw_rows(n, k, seed, step), k, dev)
}

/// Lloyd's k-means on the device: K centroids of the rows of `x` (N, D), initialised from K
/// distinct rows drawn from `seed`; an empty cluster keeps its previous centroid. Returns the
/// centroids and the number of rows assigned to each (K,) by the final assignment.
pub fn kmeans(x: &Tensor, k: usize, iterations: usize, seed: u64) -> Result<(Tensor, Tensor)> {
    let n = x.dim(0)?;
    let dev = x.device();
    let mut centroids = x.index_select(&random_rows(n, k, seed, u64::MAX, dev)?, 0)?;
    for _ in 0..iterations {
        let assign = nearest(x, &centroids)?;
        let sums = Tensor::zeros(centroids.shape(), DType::F32, dev)?.index_add(&assign, x, 0)?;
        let counts = code_counts(&assign, k)?.unsqueeze(1)?;
        let filled = counts.gt(0.0)?.to_dtype(DType::F32)?;
        let means = sums.broadcast_div(&counts.clamp(1.0, f64::MAX)?)?;
        centroids = (means.broadcast_mul(&filled)? + centroids.broadcast_mul(&filled.affine(-1.0, 1.0)?)?)?;
    }
    let counts = code_counts(&nearest(x, &centroids)?, k)?;
    Ok((centroids, counts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::QuantizerConfig;
    use candle_core::Device;

    fn quantizer(k: u32, d: u32, kind: QuantizerKind, decay: f64, threshold: f64) -> (ParamStore, Quantizer) {
        let mut ps = ParamStore::new(&Device::Cpu, 0);
        let cfg = QuantizerConfig {
            kind,
            codebook_size: k,
            embed_dim: d,
            ema_decay: decay,
            dead_code_threshold: threshold,
            ..Default::default()
        };
        let q = Quantizer::new(&mut ps, &cfg).unwrap();
        (ps, q)
    }

    /// Latents (N, D) as a (N, D, 1, 1) encoder output.
    fn latents(rows: &[&[f32]]) -> Tensor {
        let d = rows[0].len();
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_vec(flat, (rows.len(), d, 1, 1), &Device::Cpu).unwrap()
    }

    #[test]
    fn nearest_code_on_a_hand_made_codebook() {
        let e = Tensor::new(&[[0f32, 0.], [3., 3.], [-4., 1.]], &Device::Cpu).unwrap();
        let x = Tensor::new(&[[0.1f32, 0.2], [2.9, 3.2], [-5., 0.], [1.4, 1.4]], &Device::Cpu).unwrap();
        // Squared distances of the last row: 3.92 to code 0, 5.12 to code 1.
        assert_eq!(nearest(&x, &e).unwrap().to_vec1::<u32>().unwrap(), vec![0, 1, 2, 0]);
    }

    #[test]
    fn loss_terms_and_straight_through_gradient() {
        let (_ps, q) = quantizer(2, 2, QuantizerKind::Vq, 0.99, 0.0);
        q.set_codebook(&Tensor::new(&[[0f32, 0.], [3., 3.]], &Device::Cpu).unwrap()).unwrap();
        // z = (2, 1.5): distances 6.25 and 3.25, so code 1; both terms = ((3−2)² + (3−1.5)²)/2.
        let z = Var::from_tensor(&latents(&[&[2.0, 1.5]])).unwrap();
        let out = q.forward(z.as_tensor(), true).unwrap();
        assert_eq!(out.indices.to_vec1::<u32>().unwrap(), vec![1]);
        let cb = out.codebook_loss.to_scalar::<f32>().unwrap();
        let commit = out.commit_loss.to_scalar::<f32>().unwrap();
        assert!((cb - 1.625).abs() < 1e-6 && (commit - 1.625).abs() < 1e-6, "{cb} {commit}");
        // Forward value is the code; the gradient of a downstream loss reaches z unchanged.
        assert_eq!(out.z_q.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![3.0, 3.0]);
        let w = Tensor::new(&[0.7f32, -1.3], &Device::Cpu).unwrap().reshape((1, 2, 1, 1)).unwrap();
        let downstream = (&out.z_q * &w).unwrap().sum_all().unwrap();
        let grads = downstream.backward().unwrap();
        let g = grads.get(z.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(g, vec![0.7, -1.3]);
        // The codebook gets gradient only through the codebook loss: d/de mean((e − sg z)²) = (e − z)·2/2.
        let grads = out.codebook_loss.backward().unwrap();
        let ge = grads.get(q.codebook().unwrap().as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(ge, vec![vec![0.0, 0.0], vec![1.0, 1.5]]);
    }

    #[test]
    fn ema_updates_follow_sonnets_formula() {
        let (gamma, eps) = (0.5f64, 1e-5f64);
        let (_ps, q) = quantizer(2, 1, QuantizerKind::Ema, gamma, 0.0);
        q.set_codebook(&Tensor::new(&[[0f32], [10.]], &Device::Cpu).unwrap()).unwrap();
        // Step 1: vectors 1, 2 → code 0; 9 → code 1. counts (2, 1), sums (3, 9).
        q.forward(&latents(&[&[1.0], &[2.0], &[9.0]]), true).unwrap();
        // hidden ← hidden − (hidden − value)(1 − γ), from 0; average = hidden / (1 − γ¹).
        let (h_cs, h_dw) = ([2.0 * (1.0 - gamma), 1.0 * (1.0 - gamma)], [3.0 * (1.0 - gamma), 9.0 * (1.0 - gamma)]);
        let expect = |h_cs: [f64; 2], h_dw: [f64; 2], t: i32| {
            let debias = 1.0 - gamma.powi(t);
            let cs = [h_cs[0] / debias, h_cs[1] / debias];
            let n = cs[0] + cs[1];
            (0..2).map(|k| (h_dw[k] / debias) / ((cs[k] + eps) / (n + 2.0 * eps) * n)).collect::<Vec<f64>>()
        };
        let e1 = expect(h_cs, h_dw, 1);
        let got: Vec<f32> = q.codebook().unwrap().as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        assert!((got[0] as f64 - e1[0]).abs() < 1e-5 && (got[1] as f64 - e1[1]).abs() < 1e-5, "{got:?} vs {e1:?}");
        // Step 2: vector 4 → code 0 (≈1.5 is nearer than 9); counts (1, 0), sums (4, 0).
        q.forward(&latents(&[&[4.0]]), true).unwrap();
        let h_cs2 = [h_cs[0] - (h_cs[0] - 1.0) * (1.0 - gamma), h_cs[1] - h_cs[1] * (1.0 - gamma)];
        let h_dw2 = [h_dw[0] - (h_dw[0] - 4.0) * (1.0 - gamma), h_dw[1] - h_dw[1] * (1.0 - gamma)];
        let e2 = expect(h_cs2, h_dw2, 2);
        let got: Vec<f32> = q.codebook().unwrap().as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        assert!((got[0] as f64 - e2[0]).abs() < 1e-5 && (got[1] as f64 - e2[1]).abs() < 1e-4, "{got:?} vs {e2:?}");
        // Eval passes do not update.
        q.forward(&latents(&[&[-3.0]]), false).unwrap();
        let again: Vec<f32> = q.codebook().unwrap().as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(got, again);
    }

    #[test]
    fn dead_codes_restart_from_batch_vectors() {
        // Threshold 0.5, decay 0.5: code 1 gets nothing, its usage EMA falls to 0.25 → restart.
        let (_ps, q) = quantizer(2, 1, QuantizerKind::Vq, 0.5, 0.5);
        q.set_codebook(&Tensor::new(&[[0f32], [100.]], &Device::Cpu).unwrap()).unwrap();
        let out = q.forward(&latents(&[&[0.1], &[0.2], &[-0.3]]), true).unwrap();
        q.restart_dead_codes(&out, 7, 0).unwrap();
        let got: Vec<f32> = q.codebook().unwrap().as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(got[0], 0.0, "a used code stays");
        assert!([0.1f32, 0.2, -0.3].contains(&got[1]), "restarted to a batch vector: {got:?}");
        let usage: Vec<f32> = q.usage_ema.as_ref().unwrap().as_tensor().to_vec1().unwrap();
        // Code 0: 0.5·0.5 + 0.5·3 = 1.75; code 1 reset to the threshold.
        assert_eq!(usage, vec![1.75, 0.5]);
    }

    #[test]
    fn l2_normalized_lookup_picks_by_angle() {
        // x = (5, 4) against codes (10, 0) and (0, 1): Euclidean distances² 41 and 34 pick code 1;
        // cosines 5/√41 = 0.78 and 4/√41 = 0.62 pick code 0.
        for (l2, want) in [(false, 1u32), (true, 0)] {
            let mut ps = ParamStore::new(&Device::Cpu, 0);
            let cfg = QuantizerConfig { codebook_size: 2, embed_dim: 2, l2_normalize: l2, ..Default::default() };
            let q = Quantizer::new(&mut ps, &cfg).unwrap();
            q.set_codebook(&Tensor::new(&[[10f32, 0.], [0., 1.]], &Device::Cpu).unwrap()).unwrap();
            let out = q.forward(&latents(&[&[5.0, 4.0]]), false).unwrap();
            assert_eq!(out.indices.to_vec1::<u32>().unwrap(), vec![want], "l2_normalize = {l2}");
            if l2 {
                // The output is the unit-length code (1, 0).
                assert_eq!(out.z_q.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![1.0, 0.0]);
            }
        }
    }

    #[test]
    fn factorized_lookup_projects_in_and_out() {
        let mut ps = ParamStore::new(&Device::Cpu, 0);
        let cfg = QuantizerConfig { codebook_size: 3, embed_dim: 4, lookup_dim: 2, ..Default::default() };
        let q = Quantizer::new(&mut ps, &cfg).unwrap();
        assert_eq!(q.codebook().unwrap().dims(), &[3, 2]);
        let z = Tensor::ones((5, 4, 2, 2), DType::F32, &Device::Cpu).unwrap();
        let out = q.forward(&z, true).unwrap();
        assert_eq!(out.z_q.dims(), &[5, 4, 2, 2]);
        assert_eq!(out.flat.dims(), &[20, 2]);
        // Projections are parameters: 4·2 + 2 in, 2·4 + 4 out, plus the 3×2 codebook.
        assert_eq!(ps.count("quantizer."), 10 + 12 + 6);
    }

    #[test]
    fn kmeans_finds_separated_clusters() {
        let mut rows = Vec::new();
        for i in 0..20 {
            let j = (i % 5) as f32 * 0.01;
            rows.push([1.0 + j, 1.0 - j]);
            rows.push([-4.0 - j, 2.0 + j]);
        }
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let x = Tensor::from_vec(flat, (rows.len(), 2), &Device::Cpu).unwrap();
        let (c, counts) = kmeans(&x, 2, 10, 3).unwrap();
        assert_eq!(counts.to_vec1::<f32>().unwrap(), vec![20.0, 20.0]);
        let c = c.to_vec2::<f32>().unwrap();
        let mut c: Vec<(f32, f32)> = c.into_iter().map(|r| (r[0], r[1])).collect();
        c.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
        // Cluster means: offsets average (0+1+2+3+4)/5 · 0.01 = 0.02.
        assert!((c[0].0 + 4.02).abs() < 1e-5 && (c[0].1 - 2.02).abs() < 1e-5, "{c:?}");
        assert!((c[1].0 - 1.02).abs() < 1e-5 && (c[1].1 - 0.98).abs() < 1e-5, "{c:?}");
    }
}
