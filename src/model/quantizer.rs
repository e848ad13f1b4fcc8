//! Vector quantizer: nearest code by one matmul (argmin ‖e‖²/2 − z·e), straight-through
//! estimator, codebook and commitment losses; the `ema` kind updates the codebook with
//! Sonnet's VectorQuantizerEMA (zero-debiased averages, Laplace-smoothed cluster sizes).

use candle_core::{DType, Result, Tensor, Var, D};

use super::layers::Conv2d;
use super::params::{Init, ParamStore};
use crate::config::{QuantizerConfig, QuantizerKind};

/// Names of the EMA state tensors.
pub const EMA_BUFFERS: &[&str] = &["quantizer.ema_cluster_size", "quantizer.ema_dw", "quantizer.ema_counter"];

#[derive(Debug, Clone)]
pub struct Quantizer {
    pub kind: QuantizerKind,
    pub codebook: Var,
    pub codebook_size: usize,
    pub beta: f64,
    decay: f64,
    epsilon: f64,
    l2_normalize: bool,
    /// Factorized lookup: projections into and out of the low-dimensional code space.
    proj: Option<(Conv2d, Conv2d)>,
    /// EMA state (hidden, un-debiased values) and the update counter.
    ema: Option<(Var, Var, Var)>,
}

/// What one quantization pass produces.
pub struct Quantized {
    /// Straight-through output, shaped like the encoder output.
    pub z_q: Tensor,
    /// Code index of every latent vector, (N,) u32, N = B·H·W.
    pub indices: Tensor,
    /// mean((z_q − sg[z])²): trains the codebook (vq kind); zero-gradient for ema.
    pub codebook_loss: Tensor,
    /// mean((z − sg[z_q])²): unweighted commitment term.
    pub commit_loss: Tensor,
}

fn l2norm(x: &Tensor) -> Result<Tensor> {
    let n = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    x.broadcast_div(&n)
}

impl Quantizer {
    pub fn new(ps: &mut ParamStore, q: &QuantizerConfig) -> Result<Self> {
        let k = q.codebook_size as usize;
        let d = q.embed_dim as usize;
        let code_dim = if q.lookup_dim > 0 { q.lookup_dim as usize } else { d };
        let proj = if q.lookup_dim > 0 {
            Some((
                Conv2d::new(ps, "quantizer.proj_in", d, code_dim, 1, 1, 0)?,
                Conv2d::new(ps, "quantizer.proj_out", code_dim, d, 1, 1, 0)?,
            ))
        } else {
            None
        };
        // uniform(−1/K, 1/K) as in taming and the reference PyTorch implementations: a N(0, 1)
        // codebook against small encoder outputs leaves one or two codes in use.
        // uniform(−1/K, 1/K) as in taming and the reference PyTorch implementations: a N(0, 1)
        // codebook against small encoder outputs leaves one or two codes in use.
        let bound = 1.0 / k as f64;
        let init = Init::Uniform(-bound, bound);
        let (codebook, ema) = if q.kind == QuantizerKind::Ema {
            // The EMA codebook is state, not a trained parameter.
            let codebook = ps.buffer("quantizer.codebook", &[k, code_dim], init)?;
            let cs = ps.buffer(EMA_BUFFERS[0], &[k], Init::Const(0.0))?;
            let dw = ps.buffer(EMA_BUFFERS[1], &[k, code_dim], Init::Const(0.0))?;
            let counter = ps.buffer(EMA_BUFFERS[2], &[1], Init::Const(0.0))?;
            (codebook, Some((cs, dw, counter)))
        } else {
            ps.param("quantizer.codebook", &[k, code_dim], init)?;
            (ps.get("quantizer.codebook").expect("just created").clone(), None)
        };
        Ok(Quantizer {
            kind: q.kind,
            codebook,
            codebook_size: k,
            beta: q.beta,
            decay: q.ema_decay,
            epsilon: q.ema_epsilon,
            l2_normalize: q.l2_normalize,
            proj,
            ema,
        })
    }

    /// The codebook as used for lookup (normalised when l2_normalize is on).
    fn lookup_codebook(&self) -> Result<Tensor> {
        let e = self.codebook.as_tensor();
        if self.l2_normalize {
            l2norm(e)
        } else {
            Ok(e.clone())
        }
    }

    /// Quantize encoder output (B, D, H, W). `train` enables the EMA update.
    pub fn forward(&self, z: &Tensor, train: bool) -> Result<Quantized> {
        let z = match &self.proj {
            Some((p_in, _)) => p_in.forward(z)?,
            None => z.clone(),
        };
        let (b, d, h, w) = z.dims4()?;
        let flat = z.permute((0, 2, 3, 1))?.reshape((b * h * w, d))?;
        let flat = if self.l2_normalize { l2norm(&flat)? } else { flat };
        let e = self.lookup_codebook()?;
        let indices = nearest(&flat.detach(), &e.detach())?;
        let chosen = e.index_select(&indices, 0)?;
        let codebook_loss = (&chosen - flat.detach())?.sqr()?.mean_all()?;
        let commit_loss = (&flat - chosen.detach())?.sqr()?.mean_all()?;
        if train {
            if let Some(ema) = &self.ema {
                self.ema_update(ema, &flat.detach(), &indices)?;
            }
        }
        let st = (&flat + (chosen - &flat)?.detach())?;
        let z_q = st.reshape((b, h, w, d))?.permute((0, 3, 1, 2))?.contiguous()?;
        let z_q = match &self.proj {
            Some((_, p_out)) => p_out.forward(&z_q)?,
            None => z_q,
        };
        Ok(Quantized { z_q, indices, codebook_loss, commit_loss })
    }

    /// Sonnet's update: hidden ← hidden − (hidden − value)(1 − γ); average = hidden / (1 − γᵗ);
    /// n = Σ cluster sizes; smoothed = (size + ε) / (n + Kε) · n; codebook = dw / smoothed.
    fn ema_update(&self, (cs, dw, counter): &(Var, Var, Var), flat: &Tensor, indices: &Tensor) -> Result<()> {
        let k = self.codebook_size;
        let dev = flat.device();
        let ones = Tensor::ones(indices.dims1()?, DType::F32, dev)?;
        let counts = Tensor::zeros(k, DType::F32, dev)?.index_add(indices, &ones, 0)?;
        let sums = Tensor::zeros((k, flat.dim(1)?), DType::F32, dev)?.index_add(indices, flat, 0)?;
        let g = self.decay;
        let t = (counter.as_tensor() + 1.0)?;
        counter.set(&t)?;
        let new_cs = (cs.as_tensor() - ((cs.as_tensor() - counts)? * (1.0 - g))?)?;
        let new_dw = (dw.as_tensor() - ((dw.as_tensor() - sums)? * (1.0 - g))?)?;
        cs.set(&new_cs)?;
        dw.set(&new_dw)?;
        // Debias by 1 − γᵗ, with γᵗ = exp(t ln γ) computed on the device (no sync).
        let gamma_t = (t * g.ln())?.exp()?;
        let one_minus = gamma_t.affine(-1.0, 1.0)?;
        let avg_cs = new_cs.broadcast_div(&one_minus)?;
        let avg_dw = new_dw.broadcast_div(&one_minus)?;
        let n = avg_cs.sum_keepdim(0)?;
        let smoothed =
            ((&avg_cs + self.epsilon)?.broadcast_div(&(&n + k as f64 * self.epsilon)?)?).broadcast_mul(&n)?;
        let codebook = avg_dw.broadcast_div(&smoothed.unsqueeze(1)?)?;
        self.codebook.set(&codebook)
    }

    /// Code indices of latents (B, D, H, W), without losses or updates (eval).
    pub fn encode_indices(&self, z: &Tensor) -> Result<Tensor> {
        Ok(self.forward(z, false)?.indices)
    }
}

/// Index of the nearest code for each row: argmin_k ‖e_k‖²/2 − x·e_k (one matmul, no N×K×D).
pub fn nearest(x: &Tensor, codebook: &Tensor) -> Result<Tensor> {
    let half_norms = (codebook.sqr()?.sum(1)? * 0.5)?;
    let scores = x.matmul(&codebook.t()?)?;
    half_norms.unsqueeze(0)?.broadcast_sub(&scores)?.argmin(1)
}
