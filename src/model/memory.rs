//! Training-memory estimates: what `vqlab describe` prints and what the scheduler packs GPUs
//! by before a run has measured its own peak.

use crate::config::{ExperimentConfig, Variant};

/// A rough training-memory estimate in bytes: weights, gradients and two Adam moments, plus
/// stored activations (each layer output and its ReLU) and the N×K distance matrix, ×2 for
/// their gradients.
pub fn training_bytes(c: &ExperimentConfig, params: usize) -> f64 {
    let s = c.data.image_size as f64;
    let h = c.model.hidden_channels as f64;
    let r = c.model.res_channels as f64;
    let n = c.model.downsample as i32;
    let lat = (s / 2f64.powi(n)).powi(2);
    let mut per_image = 0.0;
    let mut side = s;
    for i in 0..n {
        side /= 2.0;
        let ch = if i + 1 == n { h } else { h / 2.0 };
        per_image += 2.0 * 2.0 * ch * side * side; // encoder stage + mirrored decoder stage
    }
    per_image += 2.0 * lat * (h * 2.0 + c.model.res_blocks as f64 * (2.0 * r + 2.0 * h)); // conv3/conv_in + residual stacks
    per_image += lat
        * c.quantizer.levels.max(1) as f64
        * (c.quantizer.embed_dim as f64 * 4.0 + c.quantizer.codebook_size as f64 * 2.0);
    if c.model.variant == Variant::Vqgan {
        // Three discriminator passes a step (fake for G, real and fake for D), two tensors a layer.
        let layers = if c.loss.disc_layers == 0 {
            super::discriminator::auto_layers(s as usize)
        } else {
            c.loss.disc_layers as usize
        };
        let ndf = c.loss.disc_channels as f64;
        let mut side = s / 2.0;
        let mut disc = ndf * side * side;
        for i in 1..=layers {
            if i < layers {
                side /= 2.0;
            } else {
                side -= 1.0;
            }
            disc += ndf * 2f64.powi(i as i32).min(8.0) * side * side;
        }
        per_image += 3.0 * 2.0 * disc;
    }
    let batch = c.train.batch_size as f64;
    4.0 * (params as f64 * 4.0 + 2.0 * per_image * batch)
}

/// The estimate for a run's config, counting its parameters on a model built on the CPU.
pub fn estimate_bytes(c: &ExperimentConfig) -> candle_core::Result<f64> {
    let model = super::VqModel::new(c, &candle_core::Device::Cpu)?;
    let params: usize = model.parameter_counts().iter().map(|(_, n)| n).sum();
    Ok(training_bytes(c, params))
}
