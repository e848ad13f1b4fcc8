//! Sonnet / van den Oord VQ-VAE encoder and decoder: stride-2 4×4 convolutions, a 3×3
//! convolution and a residual stack on the way down; the mirror image on the way up.

use candle_core::{Result, Tensor};

use super::layers::{Conv2d, ConvTranspose2d, ResidualStack};
use super::params::ParamStore;
use crate::config::ModelConfig;
use crate::ops::Fuse;

#[derive(Debug, Clone)]
pub struct Encoder {
    downs: Vec<Conv2d>,
    conv3: Conv2d,
    res: ResidualStack,
    pre_vq: Conv2d,
}

impl Encoder {
    pub fn new(ps: &mut ParamStore, m: &ModelConfig, channels: usize, embed_dim: usize) -> Result<Self> {
        let hidden = m.hidden_channels as usize;
        let n = m.downsample as usize;
        let mut downs = Vec::with_capacity(n);
        let mut c_in = channels;
        for i in 0..n {
            // Sonnet: hidden/2 channels in all but the last stride-2 stage.
            let c_out = if i + 1 == n { hidden } else { hidden / 2 };
            downs.push(Conv2d::new(ps, &format!("encoder.down{i}"), c_in, c_out, 4, 2, 1)?);
            c_in = c_out;
        }
        let conv3 = Conv2d::new(ps, "encoder.conv3", hidden, hidden, 3, 1, 1)?;
        let res = ResidualStack::new(ps, "encoder.res", hidden, m.res_channels as usize, m.res_blocks as usize)?;
        let pre_vq = Conv2d::new(ps, "encoder.pre_vq", hidden, embed_dim, 1, 1, 0)?;
        Ok(Encoder { downs, conv3, res, pre_vq })
    }

    /// Pixels (centred on 0) to latents (B, embed_dim, H/2^n, W/2^n).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for d in &self.downs {
            h = d.forward_fused(&h, Fuse::RELU_OUT)?;
        }
        // Sonnet: h = relu(enc_3(h)) before the residual stack, whose final relu is fused into
        // the 1×1 pre-VQ convolution.
        let h = self.res.forward_pre_relu(&self.conv3.forward_fused(&h, Fuse::RELU_OUT)?)?;
        self.pre_vq.forward_fused(&h, Fuse::RELU_IN)
    }
}

#[derive(Debug, Clone)]
pub struct Decoder {
    conv_in: Conv2d,
    res: ResidualStack,
    ups: Vec<ConvTranspose2d>,
}

impl Decoder {
    pub fn new(ps: &mut ParamStore, m: &ModelConfig, channels: usize, embed_dim: usize) -> Result<Self> {
        let hidden = m.hidden_channels as usize;
        let n = m.downsample as usize;
        let conv_in = Conv2d::new(ps, "decoder.conv_in", embed_dim, hidden, 3, 1, 1)?;
        let res = ResidualStack::new(ps, "decoder.res", hidden, m.res_channels as usize, m.res_blocks as usize)?;
        let mut ups = Vec::with_capacity(n);
        let mut c_in = hidden;
        for i in 0..n {
            let c_out = if i + 1 == n { channels } else { hidden / 2 };
            ups.push(ConvTranspose2d::new(ps, &format!("decoder.up{i}"), c_in, c_out, 4, 2, 1)?);
            c_in = c_out;
        }
        Ok(Decoder { conv_in, res, ups })
    }

    pub fn forward(&self, z: &Tensor) -> Result<Tensor> {
        self.last_layer(&self.forward_to_last(z)?)
    }

    /// Everything before the last layer. The residual stack's final relu is fused into the
    /// first upsampling layer, and every upsampling layer but the last ends in a relu.
    pub fn forward_to_last(&self, z: &Tensor) -> Result<Tensor> {
        let mut h = self.res.forward_pre_relu(&self.conv_in.forward(z)?)?;
        let last = self.ups.len() - 1;
        for (i, u) in self.ups[..last].iter().enumerate() {
            h = u.forward_fused(&h, Fuse { relu_input: i == 0, relu_output: true })?;
        }
        Ok(h)
    }

    /// The last layer on the output of [`Decoder::forward_to_last`].
    pub fn last_layer(&self, h: &Tensor) -> Result<Tensor> {
        let last = self.ups.len() - 1;
        self.ups[last].forward_fused(h, Fuse { relu_input: last == 0, relu_output: false })
    }

    /// The decoder's last layer weight: where VQ-GAN's adaptive weight compares gradients.
    pub fn last_layer_weight(&self) -> &Tensor {
        &self.ups[self.ups.len() - 1].weight
    }

    pub const LAST_LAYER_NAME_PREFIX: &'static str = "decoder.up";
}
