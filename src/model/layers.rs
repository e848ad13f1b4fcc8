//! The layers the models are built from, as plain structs holding their tensors.

use candle_core::{Result, Tensor};

use super::params::{torch_default, Init, ParamStore};
use crate::config::ConvAlgorithm;
use crate::ops::{self, Fuse};

/// 2-D convolution with optional bias.
#[derive(Debug, Clone)]
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub stride: usize,
    pub padding: usize,
    /// How a 3×3 convolution runs on the CPU (the store's, see [`ParamStore::conv_algorithm`]).
    pub algorithm: ConvAlgorithm,
}

impl Conv2d {
    /// PyTorch's default initialisation.
    pub fn new(
        ps: &mut ParamStore,
        name: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let init = torch_default(c_in * k * k);
        let weight = ps.param(&format!("{name}.weight"), &[c_out, c_in, k, k], init)?;
        let bias = Some(ps.param(&format!("{name}.bias"), &[c_out], init)?);
        Ok(Conv2d { weight, bias, stride, padding, algorithm: ps.conv_algorithm() })
    }

    /// Weights from a given distribution, bias optional (the GAN discriminator's init).
    #[allow(clippy::too_many_arguments)]
    pub fn with_init(
        ps: &mut ParamStore,
        name: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        padding: usize,
        init: Init,
        bias: bool,
    ) -> Result<Self> {
        let weight = ps.param(&format!("{name}.weight"), &[c_out, c_in, k, k], init)?;
        let bias = if bias { Some(ps.param(&format!("{name}.bias"), &[c_out], Init::Const(0.0))?) } else { None };
        Ok(Conv2d { weight, bias, stride, padding, algorithm: ps.conv_algorithm() })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_fused(x, Fuse::NONE)
    }

    /// The convolution with relus on its input and/or output fused in.
    pub fn forward_fused(&self, x: &Tensor, fuse: Fuse) -> Result<Tensor> {
        ops::conv2d_using(x, &self.weight, self.bias.as_ref(), self.stride, self.padding, fuse, self.algorithm)
    }

    /// The convolution with its weights held constant (no gradient reaches them).
    pub fn forward_frozen(&self, x: &Tensor) -> Result<Tensor> {
        let bias = self.bias.as_ref().map(|b| b.detach());
        ops::conv2d_using(
            x,
            &self.weight.detach(),
            bias.as_ref(),
            self.stride,
            self.padding,
            Fuse::NONE,
            self.algorithm,
        )
    }

    /// [`Conv2d::forward`] for an input whose output `y` an earlier call already computed
    /// (the same values; see [`ops::conv2d_known`]): a new graph node, no second convolution.
    pub fn forward_known(&self, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        ops::conv2d_known(x, &self.weight, self.bias.as_ref(), self.stride, self.padding, y, self.algorithm)
    }
}

/// 2-D transposed convolution (weight layout: in, out, k, k).
#[derive(Debug, Clone)]
pub struct ConvTranspose2d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub stride: usize,
    pub padding: usize,
}

impl ConvTranspose2d {
    pub fn new(
        ps: &mut ParamStore,
        name: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        // PyTorch computes fan_in of a transposed conv from weight.size(1) = c_out.
        let init = torch_default(c_out * k * k);
        let weight = ps.param(&format!("{name}.weight"), &[c_in, c_out, k, k], init)?;
        let bias = ps.param(&format!("{name}.bias"), &[c_out], init)?;
        Ok(ConvTranspose2d { weight, bias, stride, padding })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_fused(x, Fuse::NONE)
    }

    /// The transposed convolution with relus on its input and/or output fused in.
    pub fn forward_fused(&self, x: &Tensor, fuse: Fuse) -> Result<Tensor> {
        ops::conv_transpose2d(x, &self.weight, Some(&self.bias), self.stride, self.padding, fuse)
    }
}

/// Sonnet's residual stack: each block is x + conv1×1(relu(conv3×3(relu(x)))), then a relu.
#[derive(Debug, Clone)]
pub struct ResidualStack {
    blocks: Vec<(Conv2d, Conv2d)>,
}

impl ResidualStack {
    pub fn new(ps: &mut ParamStore, name: &str, hidden: usize, res: usize, n: usize) -> Result<Self> {
        let blocks = (0..n)
            .map(|i| {
                Ok((
                    Conv2d::new(ps, &format!("{name}.{i}.conv3"), hidden, res, 3, 1, 1)?,
                    Conv2d::new(ps, &format!("{name}.{i}.conv1"), res, hidden, 1, 1, 0)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ResidualStack { blocks })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_pre_relu(x)?.relu()
    }

    /// The stack without its final relu, for a next layer that fuses it in as an input relu.
    pub fn forward_pre_relu(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for (c3, c1) in &self.blocks {
            let r = c1.forward(&c3.forward_fused(&h, Fuse::RELU_BOTH)?)?;
            h = (h + r)?;
        }
        Ok(h)
    }
}

/// A quantizer's 1×1 convolutions into its code space and back (`quantizer.proj_in`,
/// `quantizer.proj_out`; `quantizer.l1.proj_in`, … for the levels of a residual quantizer),
/// and the latents as the rows the quantizers work on.
#[derive(Debug, Clone)]
pub struct CodeProjection {
    into: Conv2d,
    out: Conv2d,
}

impl CodeProjection {
    /// Projections between the latent's `from` channels and `to` code channels, their
    /// parameters named `{prefix}proj_in` and `{prefix}proj_out`.
    pub fn new(ps: &mut ParamStore, prefix: &str, from: usize, to: usize) -> Result<Self> {
        Ok(CodeProjection {
            into: Conv2d::new(ps, &format!("{prefix}proj_in"), from, to, 1, 1, 0)?,
            out: Conv2d::new(ps, &format!("{prefix}proj_out"), to, from, 1, 1, 0)?,
        })
    }
}

/// Latents (B, C, H, W), projected into the code space when there is a projection, as rows
/// (B·H·W, C').
pub fn latent_rows(z: &Tensor, proj: Option<&CodeProjection>) -> Result<Tensor> {
    let z = match proj {
        Some(p) => p.into.forward(z)?,
        None => z.clone(),
    };
    ops::layout::planes_to_rows(&z)
}

/// Rows (B·H·W, C') back to latents (B, C, H, W) of a batch shaped like `like`, projected out.
pub fn rows_to_latents(rows: &Tensor, like: &Tensor, proj: Option<&CodeProjection>) -> Result<Tensor> {
    let (b, _, h, w) = like.dims4()?;
    let z = ops::layout::rows_to_planes(rows, b, h, w)?;
    match proj {
        Some(p) => p.out.forward(&z),
        None => Ok(z),
    }
}
