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

use candle_core::{DType, Device, Result, Tensor};
use rand::{Rng, RngCore, SeedableRng};

use super::params::{Init, ParamStore};
use crate::ops::dense;

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

    /// Rows (…, from) to (…, to).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        dense::linear(x, &self.weight, self.bias.as_ref())
    }

    fn weight_bias(&self) -> Result<[&Tensor; 2]> {
        match &self.bias {
            Some(b) => Ok([&self.weight, b]),
            None => candle_core::bail!("prior: a block's linear layers have biases"),
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
        dense::layer_norm(x, &self.gain, &self.bias, 1e-5)
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

impl Block {
    fn params(&self) -> Result<dense::BlockParams<'_>> {
        let wb = Linear::weight_bias;
        Ok(dense::BlockParams {
            ln1: [&self.ln1.gain, &self.ln1.bias],
            qkv: wb(&self.qkv)?,
            proj: wb(&self.proj)?,
            ln2: [&self.ln2.gain, &self.ln2.bias],
            fc: wb(&self.fc)?,
            out: wb(&self.out)?,
        })
    }
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
        match self.mask(x.dims(), x.device())? {
            Some(mask) => x * mask,
            None => Ok(x.clone()),
        }
    }

    /// The next site's mask of the given shape as a tensor.
    fn mask(&self, dims: &[usize], device: &Device) -> Result<Option<Tensor>> {
        self.mask_values(dims.iter().product()).map(|m| Tensor::from_vec(m, dims, device)).transpose()
    }

    /// The next site's mask of `len` elements: 0 or 1/(1 − p) per element (None when off).
    /// Element i keeps its value when word i of the site's ChaCha8 stream is below
    /// (1 − p)·2³²; chunks of the mask are drawn in parallel, each from its own position of
    /// the stream, so the mask does not depend on the thread count.
    fn mask_values(&self, len: usize) -> Option<Vec<f32>> {
        const CHUNK: usize = 1 << 14;
        let key = self.key.filter(|_| self.p > 0.0)?;
        let site = self.site.get();
        self.site.set(site + 1);
        let stream = key.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ key.step.wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ site;
        let keep = 1.0 - self.p;
        let threshold = (keep * 4_294_967_296.0).round() as u64;
        let scale = (1.0 / keep) as f32;
        // SAFETY: each chunk's loop writes every element of it.
        let mask = unsafe {
            crate::ops::kernels::par_filled(len, CHUNK, |ci, m| {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(stream);
                rng.set_stream(site);
                rng.set_word_pos((ci * CHUNK) as u128);
                // The stream's words in blocks (one call per 256 words rather than one per
                // word; the same words in the same order as `next_u32`).
                let mut words = [0u8; 4 * 256];
                for part in m.chunks_mut(256) {
                    let bytes = &mut words[..4 * part.len()];
                    rng.fill_bytes(bytes);
                    for (v, w) in part.iter_mut().zip(bytes.chunks_exact(4)) {
                        let word = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
                        v.write(if u64::from(word) < threshold { scale } else { 0.0 });
                    }
                }
            })
        };
        Some(mask)
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
        Ok(Prior { params: ps, shape, tok, pos, blocks, ln_f, head })
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
        self.head.forward(&self.features(tokens, dropout)?)
    }

    /// What the head sees: the final LayerNorm's output (B, T', C).
    fn features(&self, tokens: &Tensor, dropout: Option<DropoutKey>) -> Result<Tensor> {
        let (b, t) = tokens.dims2()?;
        let (c, h) = (self.shape.width, self.shape.heads);
        let drop = Dropout { p: self.shape.dropout, key: dropout, site: std::cell::Cell::new(0) };
        let emb = self.tok.index_select(&tokens.flatten_all()?, 0)?.reshape((b, t, c))?;
        let mut x = drop.apply(&emb.broadcast_add(&self.pos.narrow(0, 0, t)?)?)?;
        for block in &self.blocks {
            // Sites in the order of the block's dropouts: the attention weights, then the two
            // residual branches.
            let masks = drop.mask_values(b * h * t * t).map(|attn| dense::BlockMasks {
                attn,
                resid1: drop.mask_values(b * t * c).unwrap_or_default(),
                resid2: drop.mask_values(b * t * c).unwrap_or_default(),
            });
            x = dense::transformer_block(&x, &block.params()?, h, 1e-5, masks)?;
        }
        self.ln_f.forward(&x)
    }

    /// Mean cross-entropy (nats per code) of code grids (B, T) under the prior.
    pub fn nll(&self, codes: &Tensor, dropout: Option<DropoutKey>) -> Result<Tensor> {
        // The head and the loss as one op: the same numbers as cross_entropy(logits(..)).
        dense::linear_cross_entropy(
            &self.features(&self.inputs(codes)?, dropout)?,
            &self.head.weight,
            &codes.flatten_all()?,
        )
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
    fn dropout_masks_keep_element_i_by_word_i_of_the_sites_stream() {
        let key = DropoutKey { seed: 11, step: 3 };
        let drop = Dropout { p: 0.1, key: Some(key), site: std::cell::Cell::new(0) };
        let _ = drop.mask(&[5], &Device::Cpu).unwrap();
        // Site 1, over more than one chunk of the parallel draw and not a multiple of 256.
        let n = (1 << 14) + 777;
        let mask = drop.mask(&[n], &Device::Cpu).unwrap().unwrap().to_vec1::<f32>().unwrap();
        let stream = 11u64.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 3u64.wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ 1;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(stream);
        rng.set_stream(1);
        let threshold = (0.9f64 * 4_294_967_296.0).round() as u64;
        for (i, &m) in mask.iter().enumerate() {
            let want = if u64::from(rng.next_u32()) < threshold { (1.0 / 0.9f64) as f32 } else { 0.0 };
            assert_eq!(m, want, "element {i}");
        }
        let kept = mask.iter().filter(|&&m| m > 0.0).count() as f64 / n as f64;
        assert!((kept - 0.9).abs() < 0.01, "{kept}");
    }

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
