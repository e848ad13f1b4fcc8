//! Models: the quantizer, encoder/decoder blocks, the PatchGAN discriminator, and the
//! assembled variants (VQ-VAE = autoencoder + quantizer; VQ-GAN adds the discriminator).
//! Model code returns `candle_core::Result`; losses and steps live in `train`.

pub mod autoencoder;
pub mod discriminator;
pub mod fsq;
pub mod layers;
pub mod lfq;
pub mod memory;
pub mod params;
pub mod prior;
pub mod quantizer;
pub mod residual;

use candle_core::{Device, Result, Tensor};

pub use autoencoder::{Decoder, Encoder};
pub use discriminator::Discriminator;
pub use params::{Init, ParamStore};
pub use quantizer::{Quantized, Quantizer};
pub use residual::ModelQuantizer;

use crate::config::{ExperimentConfig, Variant};

/// A VQ-VAE or VQ-GAN with its parameters.
pub struct VqModel {
    pub params: ParamStore,
    pub encoder: Encoder,
    pub quantizer: ModelQuantizer,
    pub decoder: Decoder,
    pub discriminator: Option<Discriminator>,
}

/// Reconstruction and what the quantizer did on the way.
pub struct Reconstruction {
    /// Reconstructed pixels on the [0, 1] scale (not clamped).
    pub x_hat: Tensor,
    pub quantized: Quantized,
}

impl VqModel {
    /// Build from a resolved config; weights drawn from `train.seed`.
    pub fn new(cfg: &ExperimentConfig, device: &Device) -> Result<Self> {
        let mut ps = ParamStore::new(device, cfg.train.seed);
        ps.set_conv_algorithm(cfg.train.conv_algorithm);
        let channels = cfg.data.channels as usize;
        let embed_dim = cfg.quantizer.embed_dim as usize;
        let encoder = Encoder::new(&mut ps, &cfg.model, channels, embed_dim)?;
        let quantizer = ModelQuantizer::new(&mut ps, &cfg.quantizer)?;
        let decoder = Decoder::new(&mut ps, &cfg.model, channels, embed_dim)?;
        let discriminator = match cfg.model.variant {
            Variant::Vqvae => None,
            Variant::Vqgan => Some(Discriminator::new(
                &mut ps,
                channels,
                cfg.data.image_size as usize,
                cfg.loss.disc_channels as usize,
                cfg.loss.disc_layers as usize,
            )?),
        };
        Ok(VqModel { params: ps, encoder, quantizer, decoder, discriminator })
    }

    /// Encoder output for pixels in [0, 1] (the network sees them centred on 0).
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        self.encoder.forward(&(x - 0.5)?)
    }

    /// Encode, quantize, decode. Pixels in [0, 1].
    pub fn reconstruct(&self, x: &Tensor, train: bool) -> Result<Reconstruction> {
        let z = self.encode(x)?;
        let quantized = self.quantizer.forward(&z, train)?;
        let x_hat = (self.decoder.forward(&quantized.z_q)? + 0.5)?;
        Ok(Reconstruction { x_hat, quantized })
    }

    /// Images (B, C, H·f, W·f) on the [0, 1] scale from code indices on a (B, H, W) grid.
    pub fn decode_indices(&self, indices: &Tensor, grid: (usize, usize, usize)) -> Result<Tensor> {
        let z_q = self.quantizer.decode_indices(indices, grid)?;
        self.decoder.forward(&z_q)? + 0.5
    }

    /// Parameter counts: (encoder, quantizer, decoder, discriminator).
    pub fn parameter_counts(&self) -> [(&'static str, usize); 4] {
        [
            ("encoder", self.params.count("encoder.")),
            ("quantizer", self.params.count("quantizer.")),
            ("decoder", self.params.count("decoder.")),
            ("discriminator", self.params.count("disc.")),
        ]
    }
}

/// A Mermaid flowchart of the configured model, with shapes.
pub fn mermaid(cfg: &ExperimentConfig) -> String {
    let c = cfg.data.channels;
    let s = cfg.data.image_size;
    let n = cfg.model.downsample;
    let h = cfg.model.hidden_channels;
    let latent = s >> n;
    let q = &cfg.quantizer;
    let mut out = String::from("flowchart LR\n");
    match cfg.task.kind {
        crate::config::TaskKind::Reconstruct => out.push_str(&format!("  x[\"input {c}×{s}×{s}\"] --> enc\n")),
        kind => {
            let what = match kind {
                crate::config::TaskKind::Denoise => {
                    format!("denoise: + N(0, {}²) noise, clipped to [0, 1]", cfg.task.noise_std())
                }
                _ => {
                    let f = cfg.task.scale();
                    format!("superres: box ↓{f} to {}×{}, bicubic ↑{f}", s / f, s / f)
                }
            };
            out.push_str(&format!("  x[\"clean image {c}×{s}×{s} (the target)\"] --> deg[\"{what}\"] --> enc\n"));
        }
    }
    out.push_str("  subgraph enc[Encoder]\n    direction TB\n");
    let mut side = s;
    let mut prev = "x0".to_string();
    out.push_str("    x0[\"centre: x − 0.5\"]\n");
    for i in 0..n {
        side /= 2;
        let ch = if i + 1 == n { h } else { h / 2 };
        out.push_str(&format!("    {prev} --> d{i}[\"conv 4×4 s2 → {ch}×{side}×{side}, ReLU\"]\n"));
        prev = format!("d{i}");
    }
    out.push_str(&format!(
        "    {prev} --> c3[\"conv 3×3 → {h}, ReLU\"] --> er[\"{} residual block(s) (3×3 → {}, 1×1 → {h}), ReLU\"] --> pre[\"conv 1×1 → {}×{latent}×{latent}\"]\n",
        cfg.model.res_blocks, cfg.model.res_channels, q.embed_dim
    ));
    out.push_str("  end\n");
    if q.kind == crate::config::QuantizerKind::Fsq {
        let levels = fsq::levels_of(q.codebook_size, &q.fsq_levels).unwrap_or_default();
        let codes: u32 = levels.iter().product();
        let d = levels.len();
        let proj =
            if d == q.embed_dim as usize { String::new() } else { format!("1×1 conv {} → {d}, then ", q.embed_dim) };
        let back = if proj.is_empty() { String::new() } else { format!(", 1×1 conv {d} → {}", q.embed_dim) };
        out.push_str(&format!(
            "  enc --> vq{{\"FSQ: levels {levels:?} ({codes} implicit codes)<br/>{proj}tanh bound, round (straight-through), ÷ half-width{back}<br/>no codebook, no auxiliary loss\"}}\n"
        ));
    } else if q.kind == crate::config::QuantizerKind::Lfq {
        let bits = q.codebook_size.trailing_zeros();
        let proj =
            if bits == q.embed_dim { String::new() } else { format!("1×1 conv {} → {bits}, then ", q.embed_dim) };
        let back = if proj.is_empty() { String::new() } else { format!(", 1×1 conv {bits} → {}", q.embed_dim) };
        out.push_str(&format!(
            "  enc --> vq{{\"LFQ: {bits} bits, K = {}<br/>{proj}sign (straight-through){back}<br/>β = {} commitment, entropy penalty × {} (τ = {})\"}}\n",
            q.codebook_size,
            q.beta,
            q.lfq_entropy_weight.unwrap_or(0.1),
            q.lfq_temperature.unwrap_or(0.01)
        ));
    } else {
        let kind = match q.kind {
            crate::config::QuantizerKind::Ema => "EMA codebook updates",
            _ => "codebook + commitment loss",
        };
        let mut extras = Vec::new();
        if q.kind == crate::config::QuantizerKind::Simvq {
            extras.push("SimVQ: codes = frozen random basis × learned W".to_string());
        }
        if q.l2_normalize {
            extras.push("cosine codes".to_string());
        }
        if q.lookup_dim > 0 {
            extras.push(format!("lookup in {} dims", q.lookup_dim));
        }
        let extras = if extras.is_empty() { String::new() } else { format!(", {}", extras.join(", ")) };
        let residual = if q.levels > 1 {
            format!(
                "Residual VQ: {} levels, each K = {} codes on the residual of the levels before; output Σ q_l, losses summed<br/>",
                q.levels, q.codebook_size
            )
        } else {
            String::new()
        };
        out.push_str(&format!(
            "  enc --> vq{{\"{residual}VQ: K = {}, D = {}, β = {}<br/>{kind}{extras}<br/>{}\"}}\n",
            q.codebook_size,
            q.embed_dim,
            q.beta,
            match q.gradient {
                crate::config::GradientEstimator::Ste => "straight-through",
                crate::config::GradientEstimator::Rotation => "rotation trick (gradient through the rotation z → q)",
            }
        ));
    }
    out.push_str("  vq --> dec\n  subgraph dec[Decoder]\n    direction TB\n");
    out.push_str(&format!("    ci[\"conv 3×3 → {h}\"] --> dr[\"{} residual block(s), ReLU\"]\n", cfg.model.res_blocks));
    let mut prev = "dr".to_string();
    let mut side = latent;
    for i in 0..n {
        side *= 2;
        let ch = if i + 1 == n { c } else { h / 2 };
        let act = if i + 1 == n { "" } else { ", ReLU" };
        out.push_str(&format!("    {prev} --> u{i}[\"conv-transpose 4×4 s2 → {ch}×{side}×{side}{act}\"]\n"));
        prev = format!("u{i}");
    }
    out.push_str("  end\n");
    out.push_str(&format!("  dec --> xh[\"reconstruction {c}×{s}×{s} (+ 0.5)\"]\n"));
    if cfg.model.variant == Variant::Vqgan {
        let layers = if cfg.loss.disc_layers == 0 {
            discriminator::auto_layers(s as usize)
        } else {
            cfg.loss.disc_layers as usize
        };
        out.push_str(&format!(
            "  xh --> D[[\"PatchGAN: {layers} stride-2 conv layers, ActNorm, LeakyReLU 0.2\"]]\n  x --> D\n  D --> adv[\"{} loss, adaptive weight × {}\"]\n",
            match cfg.loss.disc_loss {
                crate::config::DiscLoss::Hinge => "hinge",
                crate::config::DiscLoss::Vanilla => "vanilla",
            },
            cfg.loss.disc_weight
        ));
    }
    out
}
