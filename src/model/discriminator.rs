//! PatchGAN discriminator (pix2pix NLayerDiscriminator as used by taming-transformers):
//! 4×4 convolutions, LeakyReLU 0.2, N(0, 0.02) weights, a patch map of logits.
//!
//! Normalisation is taming's ActNorm option, not BatchNorm: ActNorm is an affine per channel
//! initialised from the first real batch and then trained, so it keeps no running statistics.
//! A VQ-GAN step runs the discriminator several times (fake for the generator, real and fake
//! for itself); candle's BatchNorm would update its running statistics on every one of those
//! passes and mix real and fake batch statistics.

use std::cell::Cell;

use candle_core::{Result, Tensor, Var};

use super::layers::Conv2d;
use super::params::{Init, ParamStore};

/// pix2pix's LeakyReLU slope.
const LEAKY_SLOPE: f64 = 0.2;

#[derive(Debug, Clone)]
struct ActNorm {
    loc: Var,
    scale: Var,
    initialized_flag: Var,
    initialized: Cell<bool>,
}

impl ActNorm {
    fn new(ps: &mut ParamStore, name: &str, c: usize) -> Result<Self> {
        let loc = ps.param_var(&format!("{name}.loc"), &[1, c, 1, 1], Init::Const(0.0))?;
        let scale = ps.param_var(&format!("{name}.scale"), &[1, c, 1, 1], Init::Const(1.0))?;
        let initialized_flag = ps.buffer(&format!("{name}.initialized"), &[1], Init::Const(0.0))?;
        Ok(ActNorm { loc, scale, initialized_flag, initialized: Cell::new(false) })
    }

    /// leaky((x + loc) · scale), initialising loc and scale from `x` on the first call.
    fn forward_leaky(&self, x: &Tensor, frozen: bool, slope: f64) -> Result<Tensor> {
        if !self.initialized.get() {
            // Data-dependent init: zero mean, unit variance per channel on this batch.
            let x = x.detach();
            let mean = x.mean_keepdim(0)?.mean_keepdim(2)?.mean_keepdim(3)?;
            let var = x.broadcast_sub(&mean)?.sqr()?.mean_keepdim(0)?.mean_keepdim(2)?.mean_keepdim(3)?;
            self.loc.set(&mean.neg()?)?;
            self.scale.set(&(var.sqrt()? + 1e-6)?.recip()?)?;
            self.initialized_flag.set(&Tensor::ones(1, candle_core::DType::F32, x.device())?)?;
            self.initialized.set(true);
        }
        let (loc, scale) = (self.loc.as_tensor(), self.scale.as_tensor());
        if frozen {
            crate::ops::act::affine_leaky_relu(x, Some((&loc.detach(), &scale.detach())), slope)
        } else {
            crate::ops::act::affine_leaky_relu(x, Some((loc, scale)), slope)
        }
    }
}

#[derive(Debug, Clone)]
pub struct Discriminator {
    first: Conv2d,
    blocks: Vec<(Conv2d, ActNorm)>,
    last: Conv2d,
    pub n_layers: usize,
}

/// As many stride-2 layers as keep the patch map at least 2×2 (at most 3, pix2pix's default).
pub fn auto_layers(side: usize) -> usize {
    let mut n = 1;
    while n < 3 && side >> (n + 1) >= 4 {
        n += 1;
    }
    n
}

impl Discriminator {
    pub fn new(ps: &mut ParamStore, channels: usize, side: usize, ndf: usize, layers: usize) -> Result<Self> {
        let n_layers = if layers == 0 { auto_layers(side) } else { layers };
        let w = Init::Normal { mean: 0.0, std: 0.02 };
        let first = Conv2d::with_init(ps, "disc.conv0", channels, ndf, 4, 2, 1, w, true)?;
        let mut blocks = Vec::new();
        let mut mult = 1;
        for i in 1..=n_layers {
            let prev = mult;
            mult = (1 << i).min(8);
            let stride = if i == n_layers { 1 } else { 2 };
            let name = format!("disc.conv{i}");
            let conv = Conv2d::with_init(ps, &name, ndf * prev, ndf * mult, 4, stride, 1, w, false)?;
            let norm = ActNorm::new(ps, &format!("disc.norm{i}"), ndf * mult)?;
            blocks.push((conv, norm));
        }
        let last = Conv2d::with_init(ps, "disc.out", ndf * mult, 1, 4, 1, 1, w, true)?;
        Ok(Discriminator { first, blocks, last, n_layers })
    }

    /// Logits per patch, (B, 1, h, w).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, false)
    }

    /// The same logits with the discriminator's parameters held constant: gradients reach the
    /// input only (the generator's adversarial loss, which does not train the discriminator).
    pub fn forward_frozen(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, true)
    }

    /// The logits of [`Discriminator::forward_frozen`] on `x` and of [`Discriminator::forward`]
    /// on `x` detached, from one pass: the two have the same values (the same weights and
    /// input), so each convolution runs once and the trainable graph reuses its output.
    /// A VQ-GAN step needs both for its fakes (the generator's loss, then the discriminator's),
    /// as taming computes them with two passes.
    pub fn forward_frozen_and_detached(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let leaky = |h: &Tensor| crate::ops::act::affine_leaky_relu(h, None, LEAKY_SLOPE);
        let y = self.first.forward_frozen(x)?;
        let (mut hf, mut hd) = (leaky(&y)?, leaky(&self.first.forward_known(&x.detach(), &y)?)?);
        for (c, norm) in &self.blocks {
            let y = c.forward_frozen(&hf)?;
            let yd = c.forward_known(&hd, &y)?;
            (hf, hd) = (norm.forward_leaky(&y, true, LEAKY_SLOPE)?, norm.forward_leaky(&yd, false, LEAKY_SLOPE)?);
        }
        let y = self.last.forward_frozen(&hf)?;
        let yd = self.last.forward_known(&hd, &y)?;
        Ok((y, yd))
    }

    fn forward_with(&self, x: &Tensor, frozen: bool) -> Result<Tensor> {
        let conv = |c: &Conv2d, h: &Tensor| if frozen { c.forward_frozen(h) } else { c.forward(h) };
        let mut h = crate::ops::act::affine_leaky_relu(&conv(&self.first, x)?, None, LEAKY_SLOPE)?;
        for (c, norm) in &self.blocks {
            h = norm.forward_leaky(&conv(c, &h)?, frozen, LEAKY_SLOPE)?;
        }
        conv(&self.last, &h)
    }

    /// After loading a checkpoint: ActNorm layers that were initialised stay so.
    pub fn sync_initialized(&self) -> Result<()> {
        for (_, norm) in &self.blocks {
            let v = norm.initialized_flag.as_tensor().to_vec1::<f32>()?;
            norm.initialized.set(v.first().copied().unwrap_or(0.0) > 0.5);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
    }

    /// The shared pass over fakes gives the bits of the two separate passes taming runs: the
    /// logits, the generator's gradient at the input through the frozen discriminator, and the
    /// discriminator's own parameter gradients (hinge loss on real and fake logits).
    #[test]
    fn the_shared_fake_pass_gives_the_bits_of_two_separate_passes() {
        let dev = Device::Cpu;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut img = |n: usize| {
            let v: Vec<f32> = (0..n * 2 * 20 * 20).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            Tensor::from_vec(v, (n, 2, 20, 20), &dev).unwrap()
        };
        let (real, fake) = (img(6), img(6));
        let mut ps = ParamStore::new(&dev, 3);
        let disc = Discriminator::new(&mut ps, 2, 20, 8, 2).unwrap();
        assert_eq!(disc.blocks.len(), 2);
        let logits_real = disc.forward(&real).unwrap();
        let vars: Vec<Var> = ps.vars_with_prefix("disc.").into_iter().map(|(_, v)| v).collect();
        assert!(vars.len() >= 7, "{} parameters", vars.len());
        // What a step needs from the fakes' logits: ∂(−mean D(x̂))/∂x̂ and the d-loss gradients.
        let grads = |g: &Tensor, d: &Tensor, x: &Var| {
            let gx = g.mean_all().unwrap().neg().unwrap().backward().unwrap();
            let a = (&logits_real.affine(-1.0, 1.0).unwrap().relu().unwrap().mean_all().unwrap()
                + d.affine(1.0, 1.0).unwrap().relu().unwrap().mean_all().unwrap())
            .unwrap();
            let gd = a.backward().unwrap();
            let mut out = vec![bits(g), bits(d), bits(gx.get(x.as_tensor()).unwrap())];
            assert!(vars.iter().all(|v| gx.get(v.as_tensor()).is_none()), "the frozen pass reached a weight");
            out.extend(vars.iter().map(|v| bits(gd.get(v.as_tensor()).unwrap())));
            out
        };
        let x = Var::from_tensor(&fake).unwrap();
        let separate = {
            let g = disc.forward_frozen(x.as_tensor()).unwrap();
            let d = disc.forward(&x.as_tensor().detach()).unwrap();
            grads(&g, &d, &x)
        };
        let (g, d) = disc.forward_frozen_and_detached(x.as_tensor()).unwrap();
        let shared = grads(&g, &d, &x);
        assert_eq!(separate.len(), shared.len());
        for (i, (a, b)) in separate.iter().zip(&shared).enumerate() {
            assert_eq!(a, b, "tensor {i} differs");
        }
        // The gradients are not all zero (the comparison would pass for a dead network too).
        // One may be: with every logit inside (−1, 1), the hinge loss's gradient at the last
        // bias is −1 (real) + 1 (fake) = 0 exactly.
        let nonzero = separate[2..].iter().filter(|t| t.iter().any(|b| f32::from_bits(*b) != 0.0)).count();
        assert!(nonzero + 1 >= separate.len() - 2, "{nonzero} of {} gradients are non-zero", separate.len() - 2);
    }
}
