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
