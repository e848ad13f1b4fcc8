//! The stage-2 prior: a decoder-only transformer over a tokenizer's code grid in raster order
//! (VQGAN's stage 2, with minGPT's blocks as taming-transformers has them): token and learned
//! position embeddings, pre-LayerNorm blocks of causal multi-head self-attention and a 4×
//! GELU MLP, a final LayerNorm and a linear head over the K codes. The input of position t is
//! code t − 1 (a start token of its own, index K, at t = 0), so the logits at t model
//! p(c_t | c_<t). Weights start as minGPT's: N(0, 0.02) for linear and embedding weights,
//! zero biases, unit LayerNorm gains.
//!
//! Dropout draws its masks from a generator keyed by the seed, the step and the site, so a
//! resumed run draws what an uninterrupted one would (candle's own generator is unseeded).

use candle_core::{DType, Device, Result, Tensor, D};
use rand::{Rng, SeedableRng};

use super::params::{Init, ParamStore};

/// The shape of a prior.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PriorShape {
    /// K: the codes it predicts (the start token is index K of the embedding).
    pub codes: usize,
    /// Positions of a code grid (H·W).
    pub positions: usize,
    pub layers: usize,
    pub width: usize,
    pub heads: usize,
    pub dropout: f64,
}

struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    fn new(ps: &mut ParamStore, name: &str, from: usize, to: usize, bias: bool) -> Result<Self> {
        let weight = ps.param(&format!("{name}.weight"), &[to, from], Init::Normal { mean: 0.0, std: 0.02 })?;
        let bias = if bias { Some(ps.param(&format!("{name}.bias"), &[to], Init::Const(0.0))?) } else { None };
        Ok(Linear { weight, bias })
    }

    /// Rows (N, from) to (N, to).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.matmul(&self.weight.t()?)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

struct LayerNorm {
    gain: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    fn new(ps: &mut ParamStore, name: &str, width: usize) -> Result<Self> {
        Ok(LayerNorm {
            gain: ps.param(&format!("{name}.weight"), &[width], Init::Const(1.0))?,
            bias: ps.param(&format!("{name}.bias"), &[width], Init::Const(0.0))?,
        })
    }

    /// PyTorch's LayerNorm over the last dimension: biased variance, ε = 1e-5.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + 1e-5)?.sqrt()?)?;
        normed.broadcast_mul(&self.gain)?.broadcast_add(&self.bias)
    }
}

struct Block {
    ln1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    ln2: LayerNorm,
    fc: Linear,
    out: Linear,
}

/// Dropout of one forward pass: off in eval passes; in training passes, masks drawn from
/// (seed, step, site).
#[derive(Debug, Clone, Copy)]
pub struct DropoutKey {
    pub seed: u64,
    pub step: u64,
}

struct Dropout {
    p: f64,
    key: Option<DropoutKey>,
    site: std::cell::Cell<u64>,
}

impl Dropout {
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let Some(key) = self.key.filter(|_| self.p > 0.0) else { return Ok(x.clone()) };
        let site = self.site.get();
        self.site.set(site + 1);
        let stream = key.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ key.step.wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ site;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(stream);
        rng.set_stream(site);
        let keep = 1.0 - self.p;
        let scale = (1.0 / keep) as f32;
        let mask: Vec<f32> =
            (0..x.elem_count()).map(|_| if rng.random::<f64>() < keep { scale } else { 0.0 }).collect();
        x * Tensor::from_vec(mask, x.shape(), x.device())?
    }
}

/// The prior's parameters live in a store of their own (`prior.…`).
pub struct Prior {
    pub params: ParamStore,
    pub shape: PriorShape,
    tok: Tensor,
    pos: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    head: Linear,
    /// Additive causal mask (T, T): 0 on and below the diagonal, −∞ above.
    mask: Tensor,
}

impl Prior {
    pub fn new(shape: PriorShape, seed: u64, device: &Device) -> Result<Self> {
        let mut ps = ParamStore::new(device, seed);
        let c = shape.width;
        let normal = Init::Normal { mean: 0.0, std: 0.02 };
        let tok = ps.param("prior.tok_emb", &[shape.codes + 1, c], normal)?;
        let pos = ps.param("prior.pos_emb", &[shape.positions, c], normal)?;
        let mut blocks = Vec::with_capacity(shape.layers);
        for l in 0..shape.layers {
            let n = |what: &str| format!("prior.blocks.{l}.{what}");
            blocks.push(Block {
                ln1: LayerNorm::new(&mut ps, &n("ln1"), c)?,
                qkv: Linear::new(&mut ps, &n("attn.qkv"), c, 3 * c, true)?,
                proj: Linear::new(&mut ps, &n("attn.proj"), c, c, true)?,
                ln2: LayerNorm::new(&mut ps, &n("ln2"), c)?,
                fc: Linear::new(&mut ps, &n("mlp.fc"), c, 4 * c, true)?,
                out: Linear::new(&mut ps, &n("mlp.proj"), 4 * c, c, true)?,
            });
        }
        let ln_f = LayerNorm::new(&mut ps, "prior.ln_f", c)?;
        let head = Linear::new(&mut ps, "prior.head", c, shape.codes, false)?;
        let t = shape.positions;
        let mask: Vec<f32> = (0..t * t).map(|i| if i % t > i / t { f32::NEG_INFINITY } else { 0.0 }).collect();
        let mask = Tensor::from_vec(mask, (t, t), device)?;
        Ok(Prior { params: ps, shape, tok, pos, blocks, ln_f, head, mask })
    }

    /// The inputs of code grids (B, T) u32: the start token, then the codes shifted by one.
    pub fn inputs(&self, codes: &Tensor) -> Result<Tensor> {
        let (b, t) = codes.dims2()?;
        let start = Tensor::full(self.shape.codes as u32, (b, 1), codes.device())?;
        Tensor::cat(&[start, codes.narrow(1, 0, t - 1)?], 1)
    }

    /// Logits (B, T', K) of input tokens (B, T') with T' ≤ T (start token first); `dropout`
    /// in training passes.
    pub fn logits(&self, tokens: &Tensor, dropout: Option<DropoutKey>) -> Result<Tensor> {
        let (b, t) = tokens.dims2()?;
        let (c, h) = (self.shape.width, self.shape.heads);
        let hd = c / h;
        let drop = Dropout { p: self.shape.dropout, key: dropout, site: std::cell::Cell::new(0) };
        let emb = self.tok.index_select(&tokens.flatten_all()?, 0)?.reshape((b, t, c))?;
        let mut x = drop.apply(&emb.broadcast_add(&self.pos.narrow(0, 0, t)?)?)?;
        let mask = self.mask.narrow(0, 0, t)?.narrow(1, 0, t)?;
        let scale = 1.0 / (hd as f64).sqrt();
        for block in &self.blocks {
            let a = block.ln1.forward(&x)?.reshape((b * t, c))?;
            let qkv = block.qkv.forward(&a)?.reshape((b, t, 3, h, hd))?;
            let head = |i: usize| qkv.narrow(2, i, 1)?.squeeze(2)?.transpose(1, 2)?.contiguous();
            let (q, k, v) = (head(0)?, head(1)?, head(2)?);
            let scores = (q.matmul(&k.transpose(2, 3)?.contiguous()?)? * scale)?.broadcast_add(&mask)?;
            let weights = drop.apply(&candle_nn::ops::softmax(&scores, D::Minus1)?)?;
            let y = weights.matmul(&v)?.transpose(1, 2)?.contiguous()?.reshape((b * t, c))?;
            x = (x + drop.apply(&block.proj.forward(&y)?.reshape((b, t, c))?)?)?;
            let m = block.ln2.forward(&x)?.reshape((b * t, c))?;
            let m = block.out.forward(&block.fc.forward(&m)?.gelu_erf()?)?;
            x = (x + drop.apply(&m.reshape((b, t, c))?)?)?;
        }
        let x = self.ln_f.forward(&x)?.reshape((b * t, c))?;
        self.head.forward(&x)?.reshape((b, t, self.shape.codes))
    }

    /// Mean cross-entropy (nats per code) of code grids (B, T) under the prior.
    pub fn nll(&self, codes: &Tensor, dropout: Option<DropoutKey>) -> Result<Tensor> {
        let logits = self.logits(&self.inputs(codes)?, dropout)?;
        let (b, t, k) = logits.dims3()?;
        cross_entropy(&logits.reshape((b * t, k))?, &codes.flatten_all()?)
    }

    /// Sample `n` code grids (n, T) autoregressively: softmax(logits / temperature) over the
    /// `top_k` most likely codes (0 = all), or the argmax at temperature 0. Sample i draws
    /// from stream i of `seed`, so batching (`batch` grids at a time) changes nothing.
    pub fn sample(&self, n: usize, temperature: f64, top_k: usize, seed: u64, batch: usize) -> Result<Vec<u32>> {
        let t_len = self.shape.positions;
        let k = self.shape.codes;
        let device = self.tok.device().clone();
        let mut out = Vec::with_capacity(n * t_len);
        let mut done = 0;
        while done < n {
            let b = batch.min(n - done);
            let mut grids: Vec<Vec<u32>> = vec![vec![k as u32]; b];
            // Sample i draws from a stream of its own: the same grids whatever the batching.
            let mut rngs: Vec<rand_chacha::ChaCha8Rng> = (done..done + b)
                .map(|i| {
                    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                    rng.set_stream(i as u64);
                    rng
                })
                .collect();
            for t in 0..t_len {
                let tokens: Vec<u32> = grids.iter().flatten().copied().collect();
                let tokens = Tensor::from_vec(tokens, (b, t + 1), &device)?;
                let logits = self.logits(&tokens, None)?.narrow(1, t, 1)?.squeeze(1)?;
                let logits = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
                for ((grid, row), rng) in grids.iter_mut().zip(&logits).zip(&mut rngs) {
                    grid.push(choose(row, temperature, top_k, rng.random::<f64>()));
                }
            }
            for grid in grids {
                out.extend_from_slice(&grid[1..]);
            }
            done += b;
        }
        Ok(out)
    }
}

/// Mean cross-entropy (nats) of logits (N, K) against targets (N,) u32: log-sum-exp minus
/// the target's logit.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let picked = log_p.gather(&targets.unsqueeze(1)?, 1)?;
    picked.mean_all()?.neg()
}

/// One draw from softmax(row / temperature) restricted to the `top_k` largest logits (0 = all)
/// by inverting the CDF at `u` ∈ [0, 1); the argmax at temperature 0 (the first on ties).
pub fn choose(row: &[f32], temperature: f64, top_k: usize, u: f64) -> u32 {
    let argmax = row.iter().enumerate().fold(0, |best, (i, &v)| if v > row[best] { i } else { best });
    if temperature <= 0.0 {
        return argmax as u32;
    }
    let mut order: Vec<usize> = (0..row.len()).collect();
    if top_k > 0 && top_k < row.len() {
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        order.truncate(top_k);
        order.sort_unstable();
    }
    let max = f64::from(row[argmax]);
    let weights: Vec<f64> = order.iter().map(|&i| ((f64::from(row[i]) - max) / temperature).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut target = u * total;
    for (&i, w) in order.iter().zip(&weights) {
        if target < *w {
            return i as u32;
        }
        target -= w;
    }
    // Rounding left the draw past the last weight: the last candidate with any weight.
    order.iter().zip(&weights).rev().find(|(_, w)| **w > 0.0).map_or(argmax, |(&i, _)| i) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choose_inverts_the_cdf_and_respects_top_k() {
        // softmax([0, ln 3]) = [0.25, 0.75]
        let row = [0.0f32, 3f32.ln()];
        assert_eq!(choose(&row, 1.0, 0, 0.2), 0);
        assert_eq!(choose(&row, 1.0, 0, 0.3), 1);
        assert_eq!(choose(&row, 0.0, 0, 0.0), 1);
        // top-1 is the argmax whatever the draw.
        assert_eq!(choose(&[5.0, 1.0, 4.0], 1.0, 1, 0.99), 0);
        // top-2 of [5, 1, 4]: codes 0 and 2 only.
        for u in [0.0, 0.5, 0.999] {
            assert_ne!(choose(&[5.0, 1.0, 4.0], 1.0, 2, u), 1);
        }
    }
}
