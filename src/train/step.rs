//! The math of one training step per variant, kept apart from the loop that drives it.
//! A step returns its losses as device scalars; nothing here synchronises with the host.

use candle_core::{backprop::GradStore, DType, Result, Tensor, Var};

use crate::config::{DiscLoss, ExperimentConfig, QuantizerKind, ReconLoss};
use crate::metric::{self, Metric};
use crate::model::VqModel;
use crate::nn::optim::Adam;

/// The scalar tensors of one step, each under its metric of [`crate::metric::TRAIN`] (read on
/// the host only at log steps).
pub type StepLosses = Vec<(&'static Metric, Tensor)>;

/// The reconstruction loss; `data_variance` (the training pixels' variance) is what
/// `mse_var` divides by, as Sonnet's VQ-VAE example does, and is unused otherwise.
pub fn recon_loss(x_hat: &Tensor, x: &Tensor, kind: ReconLoss, data_variance: f64) -> Result<Tensor> {
    let diff = (x_hat - x)?;
    match kind {
        ReconLoss::L1 => diff.abs()?.mean_all(),
        ReconLoss::Mse | ReconLoss::Auto => diff.sqr()?.mean_all(),
        ReconLoss::MseVar => diff.sqr()?.mean_all()? / data_variance,
    }
}

/// Batch perplexity and usage from the batch's code counts (Sonnet's per-batch definition),
/// on device.
pub fn batch_code_stats(counts: &Tensor) -> Result<(Tensor, Tensor)> {
    let n = counts.sum_all()?;
    let k = counts.dims1()?;
    let p = counts.broadcast_div(&n)?;
    // p·ln p with 0·ln 0 = 0: ln of max(p, tiny) is finite and multiplied by p = 0.
    let entropy = (p.clone() * p.clamp(1e-30, 1.0)?.log()?)?.sum_all()?.neg()?;
    let perplexity = entropy.exp()?;
    let usage = (counts.gt(0.0)?.to_dtype(DType::F32)?.sum_all()? / k as f64)?;
    Ok((perplexity, usage))
}

/// Quantizer loss as the autoencoder optimises it: β·commitment, plus the codebook term (vq)
/// or the weighted entropy penalty (lfq).
fn quantizer_loss(cfg: &ExperimentConfig, model: &VqModel, q: &crate::model::Quantized) -> Result<Tensor> {
    let commit = (&q.commit_loss * model.quantizer.beta)?;
    match cfg.quantizer.kind {
        QuantizerKind::Vq | QuantizerKind::Simvq => commit + (&q.codebook_loss * cfg.loss.codebook_weight)?,
        QuantizerKind::Ema => Ok(commit),
        // No codebook and no commitment term (both are zero tensors without gradient).
        QuantizerKind::Fsq => Ok(commit),
        QuantizerKind::Lfq => match &q.entropy_loss {
            Some(e) => commit + (e * cfg.quantizer.lfq_entropy_weight.unwrap_or(0.1))?,
            None => Ok(commit),
        },
    }
}

/// The quantizer's values a step logs: the losses its kind has (as the metric registry lists
/// them per kind).
fn quantizer_values(cfg: &ExperimentConfig, q: &crate::model::Quantized) -> StepLosses {
    let kind = crate::config::quantizer_kind_name(cfg.quantizer.kind);
    let mut out =
        vec![(&metric::CODEBOOK_LOSS, q.codebook_loss.clone()), (&metric::COMMIT_LOSS, q.commit_loss.clone())];
    if let Some(e) = &q.entropy_loss {
        out.push((&metric::ENTROPY_LOSS, e.clone()));
    }
    out.retain(|(m, _)| m.applies_to(kind));
    out
}

/// A training batch: what the model sees and what it must produce, pixels on [0, 1] (one
/// tensor for reconstruction; a `&Tensor` converts to that).
#[derive(Clone, Copy)]
pub struct Batch<'a> {
    pub input: &'a Tensor,
    pub target: &'a Tensor,
}

impl<'a> From<&'a Tensor> for Batch<'a> {
    fn from(x: &'a Tensor) -> Self {
        Batch { input: x, target: x }
    }
}

/// The optimizer's view of a gradient store.
fn from_store(grads: &GradStore) -> impl FnMut(usize, &str, &Var) -> Result<Option<Tensor>> + '_ {
    move |_, _, var| Ok(grads.get(var.as_tensor()).cloned())
}

/// VQ-VAE: loss = recon + codebook_weight·codebook + β·commitment; one Adam step.
pub fn vqvae_step<'a>(
    cfg: &ExperimentConfig,
    model: &VqModel,
    opt: &mut Adam,
    batch: impl Into<Batch<'a>>,
    data_variance: f64,
    step: u64,
    log: bool,
) -> Result<StepLosses> {
    let Batch { input, target } = batch.into();
    let r = model.reconstruct(input, true)?;
    let rec = recon_loss(&r.x_hat, target, cfg.loss.recon, data_variance)?;
    let loss = (&rec + quantizer_loss(cfg, model, &r.quantized)?)?;
    let grads = loss.backward()?;
    opt.step(from_store(&grads))?;
    model.quantizer.restart_dead_codes(&r.quantized, cfg.train.seed, step)?;
    let mut out = vec![(&metric::REC_LOSS, rec)];
    out.extend(quantizer_values(cfg, &r.quantized));
    if log {
        let (perplexity, usage) = batch_code_stats(&r.quantized.code_counts(model.quantizer.codebook_size)?)?;
        out.push((&metric::BATCH_PERPLEXITY, perplexity));
        out.push((&metric::BATCH_USAGE, usage));
    }
    Ok(out)
}

/// Discriminator loss on logits: hinge 0.5·(mean relu(1 − D(x)) + mean relu(1 + D(x̂))) or
/// vanilla 0.5·(mean softplus(−D(x)) + mean softplus(D(x̂))).
pub fn disc_loss(real: &Tensor, fake: &Tensor, kind: DiscLoss) -> Result<Tensor> {
    let (a, b) = match kind {
        DiscLoss::Hinge => (real.affine(-1.0, 1.0)?.relu()?.mean_all()?, fake.affine(1.0, 1.0)?.relu()?.mean_all()?),
        DiscLoss::Vanilla => (softplus(&real.neg()?)?.mean_all()?, softplus(fake)?.mean_all()?),
    };
    (a + b)? * 0.5
}

pub use crate::ops::softplus;

/// taming's adaptive weight: ‖∇_L rec‖ / (‖∇_L g‖ + 1e-4), clamped to [0, 1e4], detached.
pub fn adaptive_weight(grad_rec: &Tensor, grad_g: &Tensor) -> Result<Tensor> {
    let n_rec = grad_rec.sqr()?.sum_all()?.sqrt()?;
    let n_g = grad_g.sqr()?.sum_all()?.sqrt()?;
    Ok((n_rec / (n_g + 1e-4)?)?.clamp(0.0, 1e4)?.detach())
}

/// VQ-GAN (taming's VQLPIPSWithDiscriminator without LPIPS): generator loss
/// rec + d_weight·disc_factor·(−mean D(x̂)) + quantizer loss, then a discriminator update on
/// the same batch. The adversarial part is off (and logged as 0) before `loss.disc_start`.
///
/// As in taming, the two generator losses are told apart only at the decoder's last layer,
/// where the adaptive weight compares their gradients: the last layer runs on a leaf copy of
/// its input, each loss is backpropagated to there (the adversarial one through the
/// discriminator with its weights held constant), and the rest of the generator is then
/// backpropagated once, with the weighted sum of the two gradients at that leaf.
#[allow(clippy::too_many_arguments)] // a step's inputs, as the loop and `vqlab bench` both pass them
pub fn vqgan_step<'a>(
    cfg: &ExperimentConfig,
    model: &VqModel,
    opt_g: &mut Adam,
    opt_d: &mut Adam,
    batch: impl Into<Batch<'a>>,
    data_variance: f64,
    step: u64,
    log: bool,
) -> Result<StepLosses> {
    // The discriminator's real images are the clean targets.
    let Batch { input, target: x } = batch.into();
    let disc = model
        .discriminator
        .as_ref()
        .ok_or_else(|| candle_core::Error::Msg("vqgan model without discriminator".into()))?;
    let zero = Tensor::zeros((), DType::F32, x.device())?;
    let (mut out, quantized, rec): (StepLosses, _, _) = if step < cfg.loss.disc_start {
        let r = model.reconstruct(input, true)?;
        let rec = recon_loss(&r.x_hat, x, cfg.loss.recon, data_variance)?;
        let ae_loss = (&rec + quantizer_loss(cfg, model, &r.quantized)?)?;
        let grads = ae_loss.backward()?;
        opt_g.step(from_store(&grads))?;
        let out = vec![
            (&metric::G_LOSS, zero.clone()),
            (&metric::D_LOSS, zero.clone()),
            (&metric::D_REAL, zero.clone()),
            (&metric::D_FAKE, zero.clone()),
            (&metric::ADAPTIVE_WEIGHT, zero.clone()),
        ];
        (out, r.quantized, rec)
    } else {
        let quantized = model.quantizer.forward(&model.encode(input)?, true)?;
        let h = model.decoder.forward_to_last(&quantized.z_q)?;
        let h_leaf = Var::from_tensor(&h.detach())?;
        let x_hat = (model.decoder.last_layer(h_leaf.as_tensor())? + 0.5)?;
        let rec = recon_loss(&x_hat, x, cfg.loss.recon, data_variance)?;
        // Real logits first: ActNorm initialises from the first batch it sees, which must be real.
        let logits_real = disc.forward(x)?;
        // The fakes' logits for both losses from one pass (the same values; see the method).
        let (logits_fake_g, logits_fake_d) = disc.forward_frozen_and_detached(&x_hat)?;
        let g_loss = logits_fake_g.mean_all()?.neg()?;
        let grads_rec = rec.backward()?;
        let grads_g = g_loss.backward()?;
        let last = model.decoder.last_layer_weight();
        let d_weight = if cfg.loss.adaptive_weight {
            let (Some(gr), Some(gg)) = (grads_rec.get(last), grads_g.get(last)) else {
                candle_core::bail!("no gradient at the decoder's last layer");
            };
            (adaptive_weight(gr, gg)? * cfg.loss.disc_weight)?
        } else {
            (zero.clone() + cfg.loss.disc_weight)?
        };
        let weighted = |a: Option<&Tensor>, g: Option<&Tensor>| -> Result<Option<Tensor>> {
            Ok(match (a, g) {
                (Some(a), Some(g)) => Some((a + g.broadcast_mul(&d_weight)?)?),
                (Some(a), None) => Some(a.clone()),
                (None, Some(g)) => Some(g.broadcast_mul(&d_weight)?),
                (None, None) => None,
            })
        };
        // The generator below the last layer: Σ h ⊙ ∂L/∂h has the gradients of L there.
        let Some(dh) = weighted(grads_rec.get(h_leaf.as_tensor()), grads_g.get(h_leaf.as_tensor()))? else {
            candle_core::bail!("no gradient at the decoder's last layer input");
        };
        let body = ((h * dh.detach())?.sum_all()? + quantizer_loss(cfg, model, &quantized)?)?;
        let grads_body = body.backward()?;
        opt_g.step(|_, _, v| {
            let t = v.as_tensor();
            let top = weighted(grads_rec.get(t), grads_g.get(t))?;
            Ok(match (top, grads_body.get(t)) {
                (Some(a), Some(b)) => Some((a + b)?),
                (a, b) => a.or_else(|| b.cloned()),
            })
        })?;
        // Discriminator update on the same batch; x̂ from before the generator update.
        let d_loss = disc_loss(&logits_real, &logits_fake_d, cfg.loss.disc_loss)?;
        let grads_d = d_loss.backward()?;
        opt_d.step(from_store(&grads_d))?;
        let out = vec![
            (&metric::G_LOSS, g_loss),
            (&metric::D_LOSS, d_loss),
            (&metric::D_REAL, logits_real.mean_all()?),
            (&metric::D_FAKE, logits_fake_d.mean_all()?),
            (&metric::ADAPTIVE_WEIGHT, d_weight),
        ];
        (out, quantized, rec)
    };
    model.quantizer.restart_dead_codes(&quantized, cfg.train.seed, step)?;
    out.push((&metric::REC_LOSS, rec));
    out.extend(quantizer_values(cfg, &quantized));
    if log {
        let (perplexity, usage) = batch_code_stats(&quantized.code_counts(model.quantizer.codebook_size)?)?;
        out.push((&metric::BATCH_PERPLEXITY, perplexity));
        out.push((&metric::BATCH_USAGE, usage));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The VQ-GAN step as first written: two full backward passes (reconstruction + quantizer
    /// losses, and the adversarial loss through the discriminator), combined per variable.
    fn vqgan_step_two_passes(cfg: &ExperimentConfig, model: &VqModel, opt_g: &mut Adam, opt_d: &mut Adam, x: &Tensor) {
        let disc = model.discriminator.as_ref().unwrap();
        let r = model.reconstruct(x, true).unwrap();
        let rec = recon_loss(&r.x_hat, x, cfg.loss.recon, 1.0).unwrap();
        let ae_loss = (&rec + quantizer_loss(cfg, model, &r.quantized).unwrap()).unwrap();
        let logits_real = disc.forward(x).unwrap();
        let g_loss = disc.forward(&r.x_hat).unwrap().mean_all().unwrap().neg().unwrap();
        let grads_ae = ae_loss.backward().unwrap();
        let grads_g = g_loss.backward().unwrap();
        let last = model.decoder.last_layer_weight();
        let d_weight = (adaptive_weight(grads_ae.get(last).unwrap(), grads_g.get(last).unwrap()).unwrap()
            * cfg.loss.disc_weight)
            .unwrap();
        opt_g
            .step(|_, _, v| {
                let (a, g) = (grads_ae.get(v.as_tensor()), grads_g.get(v.as_tensor()));
                Ok(match (a, g) {
                    (Some(a), Some(g)) => Some((a + g.broadcast_mul(&d_weight)?)?),
                    (Some(a), None) => Some(a.clone()),
                    (None, Some(g)) => Some(g.broadcast_mul(&d_weight)?),
                    (None, None) => None,
                })
            })
            .unwrap();
        let logits_fake_d = disc.forward(&r.x_hat.detach()).unwrap();
        let d_loss = disc_loss(&logits_real, &logits_fake_d, cfg.loss.disc_loss).unwrap();
        let grads_d = d_loss.backward().unwrap();
        opt_d.step(from_store(&grads_d)).unwrap();
    }

    #[test]
    fn the_one_pass_vqgan_step_updates_every_parameter_as_two_full_passes_do() {
        let mut cfg = ExperimentConfig::default();
        cfg.model.variant = crate::config::Variant::Vqgan;
        (cfg.model.hidden_channels, cfg.model.res_channels, cfg.model.res_blocks) = (16, 8, 1);
        (cfg.data.channels, cfg.data.image_size) = (1, 16);
        (cfg.quantizer.codebook_size, cfg.quantizer.embed_dim) = (16, 8);
        (cfg.loss.disc_channels, cfg.loss.disc_start, cfg.loss.disc_weight) = (8, 0, 0.8);
        cfg.train.lr = 1e-2;
        // The step's structure is under test, not the convolutions: on the row matrix their
        // rounding is smallest (Adam at lr 1e-2 turns the two step forms' different summation
        // orders into weight differences of up to 4e-4 under Winograd F(4×4)'s rounding).
        cfg.train.conv_algorithm = crate::config::ConvAlgorithm::Im2row;
        let dev = Device::Cpu;
        let make = || {
            let model = VqModel::new(&cfg, &dev).unwrap();
            let g = model
                .params
                .vars()
                .iter()
                .filter(|(k, _)| !k.starts_with("disc."))
                .map(|(k, v)| (k.clone(), v.clone()));
            let opt_g = Adam::new(g.collect(), cfg.train.lr, cfg.adam_betas()).unwrap();
            let opt_d = Adam::new(model.params.vars_with_prefix("disc."), cfg.train.lr, cfg.adam_betas()).unwrap();
            (model, opt_g, opt_d)
        };
        let (a, mut a_g, mut a_d) = make();
        let (b, mut b_g, mut b_d) = make();
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for step in 0..3 {
            let pixels: Vec<f32> = (0..4 * 16 * 16).map(|_| rng.random_range(0.0f32..1.0)).collect();
            let x = Tensor::from_vec(pixels, (4, 1, 16, 16), &dev).unwrap();
            vqgan_step(&cfg, &a, &mut a_g, &mut a_d, &x, 1.0, step, false).unwrap();
            vqgan_step_two_passes(&cfg, &b, &mut b_g, &mut b_d, &x);
        }
        let (pa, pb) = (a.params.tensors(), b.params.tensors());
        let mut compared = 0;
        for (name, ta) in &pa {
            let (va, vb) = (
                ta.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                pb[name].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            let scale = vb.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
            let err = va.iter().zip(&vb).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale;
            assert!(err < 1e-4, "{name}: relative difference {err:e}");
            compared += 1;
        }
        assert!(compared > 20, "{compared} tensors");
        // The step did move the weights (a test of a no-op would pass the comparison too).
        let fresh = make().0.params.tensors();
        let moved = pa
            .iter()
            .filter(|(k, t)| {
                (*t - &fresh[*k]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 1e-4
            })
            .count();
        assert!(moved * 2 > pa.len(), "only {moved} of {} tensors changed", pa.len());
    }

    fn t(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    #[test]
    fn hinge_and_vanilla_on_known_logits() {
        let (real, fake) = (t(&[2.0, 0.5]), t(&[-2.0, 0.5]));
        // Hinge: real relu(1 − x) = (0, 0.5) → 0.25; fake relu(1 + x) = (0, 1.5) → 0.75.
        let h = disc_loss(&real, &fake, DiscLoss::Hinge).unwrap().to_scalar::<f32>().unwrap();
        assert!((h - 0.5).abs() < 1e-6, "{h}");
        let sp = |x: f64| (1.0 + x.exp()).ln();
        let expect = 0.5 * ((sp(-2.0) + sp(-0.5)) / 2.0 + (sp(-2.0) + sp(0.5)) / 2.0);
        let v = disc_loss(&real, &fake, DiscLoss::Vanilla).unwrap().to_scalar::<f32>().unwrap();
        assert!((v as f64 - expect).abs() < 1e-6, "{v} vs {expect}");
        // softplus stays finite for large logits.
        let big = softplus(&t(&[1000.0, -1000.0])).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(big, vec![1000.0, 0.0]);
    }

    #[test]
    fn adaptive_weight_is_the_ratio_of_gradient_norms() {
        // ‖(3, 4)‖ = 5, ‖(0, 1)‖ = 1 → 5 / (1 + 1e-4).
        let w = adaptive_weight(&t(&[3.0, 4.0]), &t(&[0.0, 1.0])).unwrap().to_scalar::<f32>().unwrap();
        assert!((w as f64 - 5.0 / 1.0001).abs() < 1e-5, "{w}");
        // A vanishing generator gradient is clamped at 1e4.
        let w = adaptive_weight(&t(&[3.0, 4.0]), &t(&[0.0, 0.0])).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(w, 1e4);
    }

    #[test]
    fn adaptive_weight_from_real_gradients_of_two_losses() {
        // L = a·w with w the "last layer": ∇_w (a·w)² = 2a²w, ∇_w (−a·w) = −a; at a = 2, w = 3:
        // norms 24 and 2 → 24 / (2 + 1e-4).
        let w = Var::new(&[3.0f32], &Device::Cpu).unwrap();
        let a = 2.0;
        let rec = (w.as_tensor() * a).unwrap().sqr().unwrap().sum_all().unwrap();
        let g = (w.as_tensor() * -a).unwrap().sum_all().unwrap();
        let gr = rec.backward().unwrap();
        let gg = g.backward().unwrap();
        let aw = adaptive_weight(gr.get(w.as_tensor()).unwrap(), gg.get(w.as_tensor()).unwrap())
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((aw as f64 - 24.0 / 2.0001).abs() < 1e-4, "{aw}");
    }

    #[test]
    fn batch_perplexity_and_usage() {
        // Codes (0, 0, 1, 3) of K = 4: p = (½, ¼, 0, ¼), H = 1.5 ln 2, perplexity 2^1.5.
        let idx = Tensor::new(&[0u32, 0, 1, 3], &Device::Cpu).unwrap();
        let (p, u) = batch_code_stats(&crate::model::quantizer::code_counts(&idx, 4).unwrap()).unwrap();
        assert!((p.to_scalar::<f32>().unwrap() as f64 - 2f64.powf(1.5)).abs() < 1e-5);
        assert_eq!(u.to_scalar::<f32>().unwrap(), 0.75);
    }

    #[test]
    fn recon_losses() {
        let (a, b) = (t(&[0.0, 1.0, 0.5]), t(&[0.5, 0.0, 0.5]));
        let mse = recon_loss(&a, &b, ReconLoss::Mse, 0.3).unwrap().to_scalar::<f32>().unwrap();
        assert!((mse - (0.25 + 1.0) / 3.0).abs() < 1e-6, "{mse}");
        assert_eq!(recon_loss(&a, &b, ReconLoss::L1, 0.3).unwrap().to_scalar::<f32>().unwrap(), 0.5);
        // Sonnet's variance-normalised MSE: (1.25 / 3) / 0.25.
        let v = recon_loss(&a, &b, ReconLoss::MseVar, 0.25).unwrap().to_scalar::<f32>().unwrap();
        assert!((v - 1.25 / 3.0 / 0.25).abs() < 1e-6, "{v}");
    }
}
