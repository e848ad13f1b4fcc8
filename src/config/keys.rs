//! Every experiment key with its meaning, and the reference table generated from them and
//! the schema's defaults (`vqlab docs keys`; the README and docs/design.md hold it verbatim,
//! and a test fails when they drift). A key the schema has and this list lacks fails the
//! unit test below, so a new key cannot land undocumented.

use serde_json::Value;

use super::ExperimentConfig;

/// (key, default shown instead of the schema's when the real default depends on other keys,
/// meaning), in the order of the docs.
pub const KEYS: &[(&str, Option<&str>, &str)] = &[
    ("experiment.name", None, "sweep directory `<runs-dir>/<name>`; letters, digits, `-`, `_`, `.`"),
    ("experiment.description", None, "free text kept with the results"),
    ("data.dataset", None, "`fashion-mnist`, `mnist`, `cifar10`, `folder`, `synthetic`"),
    ("data.path", Some("per dataset"), "fashion-mnist `/usr/share/datasets/fashion-mnist`, mnist `/usr/share/datasets/mnist`, cifar10 `data/cifar-10-batches-bin`; required for `folder`"),
    ("data.image_size", None, "side of the square model input; 0 = native (28 MNIST-family and synthetic, 32 CIFAR-10); required for `folder`"),
    ("data.channels", None, "1 or 3; 0 = native (1 MNIST-family and synthetic, 3 CIFAR-10 and folder)"),
    ("data.train_images", None, "train images used, from what the validation split leaves (0 = all; synthetic: 10,000 generated)"),
    ("data.val_images", Some("per dataset"), "the validation split: the last images of the training split, never trained on; the best checkpoint, early stop and the eval curves read it. 5,000 for fashion-mnist, mnist and cifar10, 2,000 for synthetic, 0 (none) for folder; 0 = no validation split"),
    ("data.eval_images", None, "the fixed eval subset: the first images of the test split; measured once, at the end"),
    ("model.variant", None, "`vqvae` or `vqgan`"),
    ("model.hidden_channels", None, "encoder/decoder width (even)"),
    ("model.res_channels", None, "residual block bottleneck width"),
    ("model.res_blocks", None, "residual blocks in encoder and decoder"),
    ("model.downsample", None, "stride-2 stages (28 → 7 with 2); image_size must be divisible by 2^downsample"),
    ("quantizer.kind", None, "`vq` (codebook loss), `ema` (Sonnet's VectorQuantizerEMA), `fsq` (finite scalar quantization: no codebook, no auxiliary loss), `lfq` (lookup-free: the signs of log2 K channels, commitment loss and an entropy penalty; K a power of two) or `simvq` (a frozen random codebook times a learned linear map, losses as `vq`)"),
    ("quantizer.codebook_size", None, "K"),
    ("quantizer.embed_dim", None, "D"),
    ("quantizer.beta", None, "commitment weight, on the encoder term"),
    ("quantizer.ema_decay", None, "γ of the EMA kind"),
    ("quantizer.ema_epsilon", None, "Laplace smoothing ε of the EMA kind"),
    ("quantizer.init", None, "`random` (uniform ±1/K; unit vectors with `l2_normalize`) or `kmeans` (10 Lloyd iterations on the encoder outputs of the first batches; for `ema` the EMA statistics start as those clusters)"),
    ("quantizer.dead_code_threshold", None, "restart codes whose EMA usage falls below this (0 = off)"),
    ("quantizer.l2_normalize", None, "cosine-similarity codes (ViT-VQGAN); the codebook starts as unit vectors"),
    ("quantizer.lookup_dim", None, "factorized low-dimensional lookup with in/out projections (0 = off)"),
    ("quantizer.gradient", None, "how the gradient reaches the encoder through the codebook lookup: `ste` (straight-through, the identity) or `rotation` (the rotation trick of Fifty et al. 2024: through the rotation and rescaling that maps z onto its code, held constant); codebook kinds only"),
    ("quantizer.levels", None, "residual quantization (SoundStream, RQ-VAE): this many quantizers of the kind (vq, ema or simvq, with their options), each with its own codebook of K codes, each quantizing the residual the levels before it left; losses summed over levels, the gradient straight through (or rotated) from the sum to z. Usage, perplexity and dead codes count all levels' codes together (levels × K) and per level (`eval/usage_l0`, …); 1 = one quantizer"),
    ("quantizer.lfq_entropy_weight", Some("`0.1` for lfq"), "lfq: weight of the entropy penalty (mean per-sample entropy of the code distribution minus the entropy of the batch's mean distribution); `quantizer.beta` weighs its commitment loss"),
    ("quantizer.lfq_temperature", Some("`0.01` for lfq"), "lfq: temperature τ of the code distribution softmax(2·z·c/τ) in the entropy penalty"),
    ("quantizer.fsq_levels", Some("`[]`"), "fsq: the levels of each channel; their product is the implicit codebook, which usage and dead codes count against. Empty = the FSQ paper's for `codebook_size`: 256 → [8, 6, 5], 1024 → [8, 5, 5, 5], 4096 → [7, 5, 5, 5, 5], 16384 → [8, 8, 8, 6, 5], 65536 → [8, 8, 8, 5, 5, 5]; any other size needs levels"),
    ("task.kind", None, "`reconstruct` (the input is the image), `denoise` (the image plus Gaussian noise of `task.noise_std`, clipped to [0, 1]) or `superres` (the image box-downscaled by `task.scale` and bicubic-upscaled back); the model learns the clean image from the input, and is evaluated on the same degradation of the eval images (`eval/input_psnr`: the degraded input's own PSNR, the baseline)"),
    ("task.noise_std", Some("`0.2` for denoise"), "denoise: σ of the noise on the [0, 1] pixel scale; fresh noise every training step, the same noise on the eval images for every run"),
    ("task.scale", Some("`2` for superres"), "superres: the downscaling factor (a divisor of data.image_size)"),
    ("loss.recon", None, "`mse`, `mse_var` (MSE / variance of the training pixels, Sonnet's) or `l1`; auto = mse for vqvae, l1 for vqgan"),
    ("loss.codebook_weight", None, "weight of the codebook term"),
    ("loss.disc_weight", None, "VQ-GAN: weight of the adversarial term"),
    ("loss.disc_start", None, "VQ-GAN: step at which the adversarial term switches on"),
    ("loss.disc_loss", None, "`hinge` or `vanilla`"),
    ("loss.adaptive_weight", None, "taming's adaptive weight at the decoder's last layer"),
    ("loss.perceptual_weight", None, "LPIPS; its weights are not available offline, so it must stay 0"),
    ("loss.disc_layers", None, "PatchGAN stride-2 layers; 0 = as many as keep the patch map ≥ 2×2 (at most 3)"),
    ("loss.disc_channels", None, "PatchGAN base width"),
    ("loss.branch", None, "VQ-GAN: `none`, or `shared_prefix`: start from the matching VQ-VAE run of the sweep (the same config but `model.variant` and the discriminator's keys; exit 2 naming the first other key that differs) at `loss.disc_start`, its weights and optimizer state bit for bit, instead of training the same prefix again. The run is that VQ-VAE run's child and hashes its id"),
    ("train.steps", None, "optimizer steps"),
    ("train.batch_size", None, "images per optimizer step"),
    ("train.lr", None, "Adam learning rate, both networks"),
    ("train.betas", Some("per variant"), "Adam betas; unset = the variant's reference: `[0.9, 0.999]` for vqvae (Sonnet), `[0.5, 0.9]` for vqgan (taming)"),
    ("train.log_every", None, "train metrics cadence (0 = off)"),
    ("train.eval_every", None, "eval cadence (and at the end)"),
    ("train.checkpoint_every", None, "checkpoint cadence (and at the end)"),
    ("train.seed", None, "weights, batch order, every random choice"),
    ("train.conv_algorithm", None, "stride-1, padding-1 convolutions on the CPU: `winograd4` (3×3 ones as Winograd F(4×4, 3×3), 0.31 of the multiply-adds on 7×7 maps, and the discriminator's 4×4 ones with 8 or more outputs as F(3×3, 4×4), 0.25; the benchmark's VQ-VAE step about 1.2× as fast as with `im2row`, its VQ-GAN step 1.3×; rounding errors ≤ ~4e-6 of the products' magnitudes), `im2row` (the reference: a gemm over the row matrix, as every other convolution; the default until 2026-12-06) or `winograd` (3×3 ones as F(2×2, 3×3), 0.58 of them; rounding ~20× smaller than F(4×4)'s). They round differently, so the run id hashes the choice; other devices use candle's ops either way"),
    ("train.early_stop", Some("`[]`"), "codebook-health rules on validation metrics, e.g. `[{ metric = \"val/usage\", below = 0.05, after_step = 1000 }]`: checked at each eval; the run ends `stopped_early` with the rule in its reason. A rule on an `eval/…` (test) metric is refused"),
    ("eval.fid", None, "rFID and KID with the dataset's feature network (see Metrics)"),
    ("eval.kid_subsets", None, "KID subsets"),
    ("eval.kid_subset_size", None, "KID subset size; must be below `data.eval_images` and `data.val_images` (a subset as large as its set makes the KID std 0)"),
    ("eval.batch_size", None, "eval batch size"),
    ("eval.sample_images", None, "eval images in each reconstruction grid"),
    ("hardware.device", None, "`auto`, `cpu`, `cuda` (build with `--features cuda`)"),
    ("hardware.gpus", None, "`\"all\"` or a list of indices"),
    ("hardware.runs_per_gpu", None, "runs packed on one GPU, or `\"auto\"`: as many as fit in 90% of its memory, by each run's measured peak or, before it has one, its estimate"),
    ("hardware.cpu_slots", None, "concurrent runs on CPU"),
    ("hardware.threads_per_run", None, "0 = cores / concurrent runs"),
    ("sweep.seeds", None, "repeat every cell per seed (sets `train.seed`)"),
    ("sweep.grid", None, "`{ \"dotted.key\" = [values…] }`: the cartesian product"),
    ("sweep.zip", None, "lists of equal length varied together"),
    ("prior.enabled", None, "stage 2: follow every tokenizer run of the sweep with a prior run on its codes (a child run: it starts when its parent is done, is skipped when the parent failed for good, and hashes its parent's id)"),
    ("prior.layers", None, "prior: transformer blocks (pre-LayerNorm, causal self-attention, 4× GELU MLP)"),
    ("prior.width", None, "prior: model width; a multiple of `prior.heads`"),
    ("prior.heads", None, "prior: attention heads"),
    ("prior.dropout", None, "prior: dropout on the embeddings, attention weights and residual branches"),
    ("prior.steps", None, "prior: optimizer steps"),
    ("prior.batch_size", None, "prior: code grids per step"),
    ("prior.lr", None, "prior: Adam learning rate, betas (0.9, 0.95)"),
    ("prior.eval_every", None, "prior: validation NLL, best checkpoint and checkpoint cadence (and at the end)"),
    ("prior.temperature", None, "prior: sampling temperature of the generation scores; 0 = argmax decoding"),
    ("prior.top_k", None, "prior: sample among the k most likely codes (0 = all)"),
    ("prior.samples", None, "prior: samples decoded for `gen/fid` and `gen/kid` (and their marginal baseline)"),
    ("launcher.kind", None, "`local` or `slurm` (`--launcher` overrides)"),
    ("launcher.max_attempts", None, "failures of a run before it is no longer retried (interruptions do not count)"),
    ("launcher.slurm.partition", None, "Slurm partition (empty: the cluster default)"),
    ("launcher.slurm.time", None, "time limit of each array task"),
    ("launcher.slurm.gres", None, "generic resources per task, e.g. `gpu:1`"),
    ("launcher.slurm.cpus_per_task", None, "CPUs per task (the worker uses them all)"),
    ("launcher.slurm.mem", None, "memory per task, e.g. `16G` (empty: the cluster default)"),
    ("launcher.slurm.max_parallel", None, "the array's `%N` throttle (0 = no limit; `--max-parallel` overrides)"),
    ("launcher.slurm.extra", None, "extra `#SBATCH` lines, verbatim"),
];

/// The schema's keys with their default values (`ExperimentConfig::default()`), dotted;
/// empty tables and lists are values.
pub fn defaults() -> Vec<(String, Value)> {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) {
        match v {
            Value::Object(map) if !map.is_empty() => {
                for (k, v) in map {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, v, out);
                }
            }
            other => out.push((prefix.to_string(), other.clone())),
        }
    }
    let mut out = Vec::new();
    // Plain structs, enums and string-keyed maps with finite numbers: serializing the defaults
    // to JSON cannot fail (`config::sweep::run_id` relies on the same).
    walk("", &serde_json::to_value(ExperimentConfig::default()).expect("the default config serializes"), &mut out);
    // The prior section is left out of a config while disabled, which it is by default.
    walk(
        "prior",
        &serde_json::to_value(super::PriorConfig::default()).expect("the prior section serializes"),
        &mut out,
    );
    out
}

/// A default as an experiment file writes it (TOML).
fn toml_text(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.to_string(),
            (None, Some(f)) if f != 0.0 && f.abs() < 1e-3 => format!("{f:e}"),
            (None, Some(f)) if f.fract() == 0.0 => format!("{f:.1}"),
            _ => n.to_string(),
        },
        Value::Array(items) => format!("[{}]", items.iter().map(toml_text).collect::<Vec<_>>().join(", ")),
        Value::Object(map) if map.is_empty() => "{}".into(),
        Value::Null => "unset".into(),
        other => other.to_string(),
    }
}

/// The Markdown table of every key: key, default, meaning.
pub fn table() -> String {
    let defaults: std::collections::BTreeMap<String, Value> = defaults().into_iter().collect();
    let mut s = String::from("| key | default | meaning |\n|---|---|---|\n");
    for (key, shown, meaning) in KEYS {
        let default = match (shown, defaults.get(*key)) {
            (Some(text), _) => text.to_string(),
            (None, Some(v)) => format!("`{}`", toml_text(v)),
            (None, None) => String::new(),
        };
        s.push_str(&format!("| `{key}` | {default} | {meaning} |\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_key_is_documented_once() {
        let documented: Vec<&str> = KEYS.iter().map(|(k, _, _)| *k).collect();
        let mut unique = documented.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), documented.len(), "a key is listed twice");
        let schema: Vec<String> = defaults().into_iter().map(|(k, _)| k).collect();
        for k in &schema {
            assert!(documented.contains(&k.as_str()), "schema key {k} has no entry in config::keys::KEYS");
        }
        // Unset optional keys (`data.val_images`, `train.betas`) are not in the serialized
        // defaults; they are the ones documented with a default of their own.
        for (k, shown, _) in KEYS {
            assert!(schema.iter().any(|s| s == k) || shown.is_some(), "documented key {k} is not in the schema");
        }
    }

    #[test]
    fn defaults_are_written_as_toml() {
        assert_eq!(toml_text(&Value::from(2e-4)), "2e-4");
        assert_eq!(toml_text(&Value::from(1e-5)), "1e-5");
        assert_eq!(toml_text(&Value::from(0.25)), "0.25");
        assert_eq!(toml_text(&Value::from(1.0)), "1.0");
        assert_eq!(toml_text(&Value::from(128)), "128");
        assert_eq!(toml_text(&Value::from("vq")), "\"vq\"");
        assert_eq!(toml_text(&serde_json::json!([0.5, 0.9])), "[0.5, 0.9]");
        let t = table();
        assert!(t.contains("| `quantizer.codebook_size` | `512` | K |"), "{t}");
        assert!(t.contains("| `train.lr` | `2e-4` |"), "{t}");
    }
}
