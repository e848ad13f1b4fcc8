//! Checks of impossible values and cross-key constraints, and the resolution of "auto"
//! values (dataset paths, native sizes, recon loss) into the concrete values a run uses.

use super::schema::*;
use crate::error::InputError;

/// Fill in the values that depend on other keys, so that `config.toml` of a run says exactly
/// what ran: the dataset path and native size, the recon loss per variant, an empty sweep.
pub fn resolve(cfg: &mut ExperimentConfig) {
    let kind = cfg.data.dataset;
    if cfg.data.path.is_empty() {
        cfg.data.path = kind.default_path().to_string();
    }
    if let Some((c, side)) = kind.native_shape() {
        if cfg.data.image_size == 0 {
            cfg.data.image_size = side;
        }
        if cfg.data.channels == 0 {
            cfg.data.channels = c;
        }
    } else if cfg.data.channels == 0 {
        cfg.data.channels = 3;
    }
    if cfg.data.val_images.is_none() {
        cfg.data.val_images = Some(kind.default_val_images());
    }
    if cfg.train.betas.is_none() {
        cfg.train.betas = Some(cfg.model.variant.reference_betas());
    }
    if cfg.model.variant == Variant::Vqvae {
        // The VQ-VAE arm of a shared-prefix sweep is the parent: the key is the VQ-GAN's.
        cfg.loss.branch = Branch::None;
    }
    if cfg.loss.recon == ReconLoss::Auto {
        cfg.loss.recon = match cfg.model.variant {
            Variant::Vqvae => ReconLoss::Mse,
            Variant::Vqgan => ReconLoss::L1,
        };
    }
    match cfg.task.kind {
        TaskKind::Denoise => {
            cfg.task.noise_std.get_or_insert(DEFAULT_NOISE_STD);
        }
        TaskKind::Superres => {
            cfg.task.scale.get_or_insert(DEFAULT_SCALE);
        }
        TaskKind::Reconstruct => {}
    }
    if cfg.quantizer.kind == QuantizerKind::Lfq {
        // The MAGVIT-v2 authors' defaults, as lucidrains' LFQ has them.
        cfg.quantizer.lfq_entropy_weight.get_or_insert(0.1);
        cfg.quantizer.lfq_temperature.get_or_insert(0.01);
    }
    if cfg.quantizer.kind == QuantizerKind::Fsq && cfg.quantizer.fsq_levels.is_empty() {
        if let Some(levels) = fsq_table_levels(cfg.quantizer.codebook_size) {
            cfg.quantizer.fsq_levels = levels.to_vec();
        }
    }
    cfg.sweep = SweepConfig::default();
}

/// Is `name` usable as one directory component under the runs dir?
pub fn check_dir_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.starts_with('.') {
        return Err(format!("\"{name}\" must not start with `.`"));
    }
    if name.len() > 100 {
        return Err("must be at most 100 characters".into());
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        return Err(format!(
            "\"{name}\" contains {bad:?}; use letters, digits, `-`, `_` and `.` only (it names a directory)"
        ));
    }
    Ok(())
}

/// Every problem of a resolved run configuration, each with its key; `origin` names where a
/// key's value came from.
pub fn validate(cfg: &ExperimentConfig, origin: &dyn Fn(&str) -> String) -> Result<(), InputError> {
    let mut issues: Vec<(&'static str, String)> = Vec::new();
    let mut bad = |key: &'static str, msg: String| issues.push((key, msg));

    if let Err(msg) = check_dir_name(&cfg.experiment.name) {
        bad("experiment.name", msg);
    }

    // Data.
    let d = &cfg.data;
    if d.dataset == DatasetKind::Folder && d.path.is_empty() {
        bad("data.path", "the folder dataset needs a path to a directory of PNG/JPEG images".into());
    }
    if d.dataset == DatasetKind::Folder && d.image_size == 0 {
        bad("data.image_size", "the folder dataset needs an explicit image_size (images are resized to it)".into());
    }
    if !matches!(d.channels, 0 | 1 | 3) {
        bad("data.channels", format!("expected 1 (grayscale) or 3 (RGB), found {}", d.channels));
    }
    if d.eval_images == 0 {
        bad("data.eval_images", "expected at least 1 eval image, found 0".into());
    }
    if d.dataset == DatasetKind::Synthetic && d.val_images() > 1_000_000 {
        bad("data.val_images", format!("expected at most 1000000 synthetic images, found {}", d.val_images()));
    }
    check_task(cfg, &mut bad);
    check_prior(cfg, &mut bad);
    let m = &cfg.model;
    if m.downsample == 0 || m.downsample > 6 {
        bad("model.downsample", format!("expected 1 to 6 stride-2 stages, found {}", m.downsample));
    } else if d.image_size != 0 {
        let factor = 1u32 << m.downsample;
        if !d.image_size.is_multiple_of(factor) {
            bad(
                "data.image_size",
                format!(
                    "{} is not divisible by 2^downsample = {factor} (model.downsample = {}); use a multiple of {factor} or change model.downsample",
                    d.image_size, m.downsample
                ),
            );
        }
        if d.image_size < 4 || d.image_size > 1024 {
            bad("data.image_size", format!("expected 4 to 1024 pixels, found {}", d.image_size));
        }
    }

    // Model.
    if m.hidden_channels < 2 || !m.hidden_channels.is_multiple_of(2) {
        bad("model.hidden_channels", format!("expected an even number ≥ 2, found {}", m.hidden_channels));
    }
    if m.res_channels == 0 {
        bad("model.res_channels", "expected at least 1, found 0".into());
    }
    if m.res_blocks > 32 {
        bad("model.res_blocks", format!("expected at most 32, found {}", m.res_blocks));
    }

    // Quantizer.
    let q = &cfg.quantizer;
    if q.codebook_size == 0 {
        bad("quantizer.codebook_size", "expected at least 1 code, found 0".into());
    } else if q.codebook_size > 1 << 20 {
        bad("quantizer.codebook_size", format!("expected at most 1048576 codes, found {}", q.codebook_size));
    }
    if q.embed_dim == 0 {
        bad("quantizer.embed_dim", "expected at least 1, found 0".into());
    }
    if q.lookup_dim > q.embed_dim {
        bad("quantizer.lookup_dim", format!("expected at most embed_dim = {}, found {}", q.embed_dim, q.lookup_dim));
    }
    nonneg(&mut bad, "quantizer.beta", q.beta);
    if !(q.ema_decay > 0.0 && q.ema_decay < 1.0) {
        bad("quantizer.ema_decay", format!("expected a number in (0, 1), found {}", q.ema_decay));
    }
    if !(q.ema_epsilon.is_finite() && q.ema_epsilon > 0.0) {
        bad("quantizer.ema_epsilon", format!("expected a positive number, found {}", q.ema_epsilon));
    }
    nonneg(&mut bad, "quantizer.dead_code_threshold", q.dead_code_threshold);
    if !(1..=16).contains(&q.levels) {
        bad("quantizer.levels", format!("expected 1 (one quantizer) to 16 residual levels, found {}", q.levels));
    } else if q.levels > 1 && matches!(q.kind, QuantizerKind::Fsq | QuantizerKind::Lfq) {
        bad(
            "quantizer.levels",
            format!(
                "residual quantization stacks codebook quantizers (kind = \"vq\", \"ema\" or \"simvq\"); kind = \"{}\" has a fixed grid: leave levels at 1",
                crate::config::quantizer_kind_name(q.kind)
            ),
        );
    }
    if q.kind == QuantizerKind::Lfq {
        check_lfq(q, &mut bad);
    } else {
        for (key, set) in
            [("quantizer.lfq_entropy_weight", q.lfq_entropy_weight), ("quantizer.lfq_temperature", q.lfq_temperature)]
        {
            if set.is_some() {
                bad(key, "an option of kind = \"lfq\" only".into());
            }
        }
    }
    if q.kind == QuantizerKind::Simvq {
        // The rotation trick applies to simvq's codes as to any codebook's.
        for key in codebook_options_set(q).into_iter().filter(|k| *k != "quantizer.gradient") {
            let why = match key {
                "quantizer.init" => "simvq's codebook is a frozen random basis",
                "quantizer.dead_code_threshold" => "simvq's frozen basis is not restarted",
                "quantizer.ema_decay" | "quantizer.ema_epsilon" => "an option of the ema kind",
                _ => "not an option of simvq",
            };
            bad(key, format!("{why}; leave it at its default for kind = \"simvq\""));
        }
    }
    if q.kind == QuantizerKind::Fsq {
        check_fsq(q, &mut bad);
    } else if !q.fsq_levels.is_empty() {
        bad(
            "quantizer.fsq_levels",
            "levels are for kind = \"fsq\" only; remove them or set quantizer.kind = \"fsq\"".into(),
        );
    }

    // Loss.
    let l = &cfg.loss;
    nonneg(&mut bad, "loss.codebook_weight", l.codebook_weight);
    nonneg(&mut bad, "loss.disc_weight", l.disc_weight);
    nonneg(&mut bad, "loss.perceptual_weight", l.perceptual_weight);
    if l.perceptual_weight > 0.0 {
        bad(
            "loss.perceptual_weight",
            "LPIPS weights are not available offline and vqlab ships none; keep loss.perceptual_weight = 0".into(),
        );
    }
    if l.disc_channels == 0 {
        bad("loss.disc_channels", "expected at least 1, found 0".into());
    }
    if l.disc_layers > 8 {
        bad("loss.disc_layers", format!("expected 0 (auto) to 8, found {}", l.disc_layers));
    }
    if l.branch == Branch::SharedPrefix && !(l.disc_start >= 1 && l.disc_start < cfg.train.steps) {
        bad(
            "loss.branch",
            format!(
                "shared_prefix branches at loss.disc_start, which must be between 1 and train.steps − 1 = {}; found {}",
                cfg.train.steps.saturating_sub(1),
                l.disc_start
            ),
        );
    }

    // Train.
    let t = &cfg.train;
    if t.steps == 0 {
        bad("train.steps", "expected at least 1 step, found 0".into());
    }
    if t.batch_size == 0 {
        bad("train.batch_size", "expected at least 1, found 0".into());
    }
    if !(t.lr.is_finite() && t.lr > 0.0) {
        bad("train.lr", format!("expected a positive finite learning rate, found {}", t.lr));
    }
    for (i, b) in cfg.adam_betas().iter().enumerate() {
        if !(0.0..1.0).contains(b) {
            bad("train.betas", format!("expected both Adam betas in [0, 1), found betas[{i}] = {b}"));
        }
    }
    // log_every = 0 switches train metrics off (the logging-overhead benchmark's baseline).
    for (key, v) in [("train.eval_every", t.eval_every), ("train.checkpoint_every", t.checkpoint_every)] {
        if v == 0 {
            bad(key, "expected at least 1 step, found 0".into());
        }
    }

    // Early stop reads the validation split: a rule on a test-split metric would select on
    // the test set.
    for (i, rule) in t.early_stop.iter().enumerate() {
        use crate::metric::{MetricName, Split};
        let on_test = MetricName::parse(&rule.metric).filter(|m| matches!(m.split, Split::Eval | Split::Best));
        if let Some(m) = on_test {
            bad(
                "train.early_stop",
                format!(
                    "rule {i}: {} is measured on the test split, and stopping on it would select on the test set; use {} (the validation split, data.val_images)",
                    rule.metric,
                    m.metric.at(Split::Val)
                ),
            );
            continue;
        }
        match rule.rule() {
            Err(why) => bad("train.early_stop", format!("rule {i}: {why}")),
            Ok(r) if r.metric.metric.needs.fid && !cfg.eval.fid => {
                bad("train.early_stop", format!("rule {i}: {} needs eval.fid = true", rule.metric))
            }
            Ok(_) => {}
        }
    }

    if !t.early_stop.is_empty() && d.val_images() == 0 {
        bad(
            "train.early_stop",
            "early stop reads the validation split, and data.val_images = 0 leaves none; set data.val_images > 0"
                .into(),
        );
    }

    // Eval.
    let e = &cfg.eval;
    if e.kid_subsets == 0 {
        bad("eval.kid_subsets", "expected at least 1, found 0".into());
    }
    if e.kid_subset_size < 2 {
        bad(
            "eval.kid_subset_size",
            format!("expected at least 2 (KID is unbiased over pairs), found {}", e.kid_subset_size),
        );
    }
    if e.batch_size == 0 {
        bad("eval.batch_size", "expected at least 1, found 0".into());
    }
    // KID's std is the spread over random subsets: a subset as large as the set is the whole
    // set every time, and the std is 0 whatever the model (torch-fidelity refuses it too).
    if e.fid && e.kid_subset_size >= 2 {
        let size = e.kid_subset_size as usize;
        let sets = [("data.eval_images", "eval", d.eval_images), ("data.val_images", "validation", d.val_images())];
        for (key, what, n) in sets {
            if n > 0 && size >= n {
                bad(
                    "eval.kid_subset_size",
                    format!(
                        "{size} is not smaller than the {what} set ({key} = {n}): every KID subset would be the whole set and eval/kid_std would be 0; set eval.kid_subset_size below {n} (or raise {key})"
                    ),
                );
            }
        }
    }

    // Hardware and launcher.
    let h = &cfg.hardware;
    if h.runs_per_gpu == RunsPerGpu::Count(0) {
        bad("hardware.runs_per_gpu", "expected at least 1, found 0".into());
    }
    if h.cpu_slots == 0 {
        bad("hardware.cpu_slots", "expected at least 1, found 0".into());
    }
    if cfg.launcher.max_attempts == 0 {
        bad("launcher.max_attempts", "expected at least 1, found 0".into());
    }

    if issues.is_empty() {
        return Ok(());
    }
    let mut errs: Vec<InputError> =
        issues.into_iter().map(|(key, msg)| InputError::config(origin(key), key, msg)).collect();
    Err(if errs.len() == 1 { errs.remove(0) } else { InputError::Many(errs) })
}

/// LFQ: a power-of-two K (one bit per channel), its own two options, and none of the
/// codebook kinds' options.
fn check_lfq(q: &QuantizerConfig, bad: &mut impl FnMut(&'static str, String)) {
    if !q.codebook_size.is_power_of_two() || q.codebook_size < 2 || q.codebook_size > 1 << 16 {
        bad(
            "quantizer.codebook_size",
            format!(
                "lfq quantizes log2 K channels to bits, so K must be a power of two from 2 to 65536; found {}",
                q.codebook_size
            ),
        );
    }
    if let Some(w) = q.lfq_entropy_weight.filter(|w| !(w.is_finite() && *w >= 0.0)) {
        bad("quantizer.lfq_entropy_weight", format!("expected a finite number ≥ 0, found {w}"));
    }
    if let Some(t) = q.lfq_temperature.filter(|t| !(t.is_finite() && *t > 0.0)) {
        bad("quantizer.lfq_temperature", format!("expected a positive number, found {t}"));
    }
    for key in codebook_options_set(q) {
        bad(key, "an option of the codebook kinds (vq, ema); lfq has a fixed ±1 code per bit".into());
    }
}

/// The task's options: each only with its kind, in range, and a scale that divides the images.
fn check_task(cfg: &ExperimentConfig, bad: &mut impl FnMut(&'static str, String)) {
    let t = &cfg.task;
    match (t.kind, t.noise_std) {
        (TaskKind::Denoise, Some(s)) if !(s.is_finite() && s > 0.0 && s <= 1.0) => {
            bad("task.noise_std", format!("expected a σ in (0, 1] on the [0, 1] pixel scale, found {s}"));
        }
        (TaskKind::Denoise, _) | (_, None) => {}
        (_, Some(_)) => bad("task.noise_std", "an option of task.kind = \"denoise\" only".into()),
    }
    match (t.kind, t.scale) {
        (TaskKind::Superres, Some(s)) => {
            let side = cfg.data.image_size;
            if !(2..=16).contains(&s) {
                bad("task.scale", format!("expected a downscaling factor from 2 to 16, found {s}"));
            } else if side != 0 && !side.is_multiple_of(s) {
                bad(
                    "task.scale",
                    format!("{s} does not divide data.image_size = {side}: the box downscale needs whole blocks"),
                );
            }
        }
        (_, None) => {}
        (_, Some(_)) => bad("task.scale", "an option of task.kind = \"superres\" only".into()),
    }
}

/// The stage-2 prior: a transformer that can be built, over codes it can model.
fn check_prior(cfg: &ExperimentConfig, bad: &mut impl FnMut(&'static str, String)) {
    let p = &cfg.prior;
    if !p.enabled {
        return;
    }
    if cfg.quantizer.levels > 1 {
        bad(
            "prior.enabled",
            format!(
                "the prior models one code per position; quantizer.levels = {} stacks several (a depth transformer is not built yet): set quantizer.levels = 1",
                cfg.quantizer.levels
            ),
        );
    }
    if cfg.task.kind != TaskKind::Reconstruct {
        bad("prior.enabled", "a prior generates images from codes: it needs task.kind = \"reconstruct\"".into());
    }
    if !(1..=48).contains(&p.layers) {
        bad("prior.layers", format!("expected 1 to 48 transformer blocks, found {}", p.layers));
    }
    if !(1..=64).contains(&p.heads) {
        bad("prior.heads", format!("expected 1 to 64 heads, found {}", p.heads));
    } else if p.width == 0 || !p.width.is_multiple_of(p.heads) || p.width > 4096 {
        bad(
            "prior.width",
            format!("expected a width up to 4096 that prior.heads = {} divides, found {}", p.heads, p.width),
        );
    }
    if !(p.dropout.is_finite() && (0.0..1.0).contains(&p.dropout)) {
        bad("prior.dropout", format!("expected a probability in [0, 1), found {}", p.dropout));
    }
    if p.steps == 0 {
        bad("prior.steps", "expected at least 1, found 0".into());
    }
    if p.batch_size == 0 {
        bad("prior.batch_size", "expected at least 1, found 0".into());
    }
    if !(p.lr.is_finite() && p.lr > 0.0) {
        bad("prior.lr", format!("expected a positive learning rate, found {}", p.lr));
    }
    if p.eval_every == 0 {
        bad("prior.eval_every", "expected at least 1, found 0".into());
    }
    if !(p.temperature.is_finite() && p.temperature >= 0.0) {
        bad("prior.temperature", format!("expected a finite temperature ≥ 0 (0 = argmax), found {}", p.temperature));
    }
    if p.top_k > cfg.quantizer.codebook_size {
        bad(
            "prior.top_k",
            format!(
                "{} is more than the {} codes (quantizer.codebook_size); 0 = all",
                p.top_k, cfg.quantizer.codebook_size
            ),
        );
    }
    if cfg.eval.fid && (p.samples as usize) <= cfg.eval.kid_subset_size as usize {
        bad(
            "prior.samples",
            format!(
                "{} samples are not more than eval.kid_subset_size = {}: gen/kid draws subsets of that size from the samples",
                p.samples, cfg.eval.kid_subset_size
            ),
        );
    }
}

/// The options of the nearest-neighbour codebook kinds (vq, ema) that `q` sets away from their
/// defaults: the kinds without such a codebook refuse them.
fn codebook_options_set(q: &QuantizerConfig) -> Vec<&'static str> {
    let d = QuantizerConfig::default();
    [
        ("quantizer.init", q.init != CodebookInit::Random),
        ("quantizer.dead_code_threshold", q.dead_code_threshold > 0.0),
        ("quantizer.l2_normalize", q.l2_normalize),
        ("quantizer.lookup_dim", q.lookup_dim > 0),
        ("quantizer.ema_decay", q.ema_decay != d.ema_decay),
        ("quantizer.ema_epsilon", q.ema_epsilon != d.ema_epsilon),
        ("quantizer.gradient", q.gradient != GradientEstimator::Ste),
    ]
    .into_iter()
    .filter_map(|(key, set)| set.then_some(key))
    .collect()
}

/// FSQ: levels from the paper's table or given, and none of the codebook kinds' options.
fn check_fsq(q: &QuantizerConfig, bad: &mut impl FnMut(&'static str, String)) {
    let sizes = || FSQ_LEVEL_TABLE.iter().map(|(k, _)| k.to_string()).collect::<Vec<_>>().join(", ");
    if q.fsq_levels.is_empty() {
        if fsq_table_levels(q.codebook_size).is_none() {
            bad(
                "quantizer.codebook_size",
                format!(
                    "fsq takes its levels from the FSQ paper's table for K = {}; found {}: set quantizer.fsq_levels (e.g. [8, 5, 5, 5]) for another size",
                    sizes(),
                    q.codebook_size
                ),
            );
        }
    } else {
        let levels = &q.fsq_levels;
        if levels.len() > 16 || levels.iter().any(|&l| !(2..=256).contains(&l)) {
            bad("quantizer.fsq_levels", format!("expected 1 to 16 levels, each from 2 to 256, found {levels:?}"));
        } else {
            let codes: u64 = levels.iter().map(|&l| u64::from(l)).product();
            let nominal = FSQ_LEVEL_TABLE.iter().find(|(_, l)| *l == levels.as_slice()).map(|(k, _)| u64::from(*k));
            if codes > 1 << 20 {
                bad("quantizer.fsq_levels", format!("{levels:?} make {codes} codes; expected at most 1048576"));
            } else if u64::from(q.codebook_size) != codes && nominal != Some(u64::from(q.codebook_size)) {
                bad(
                    "quantizer.codebook_size",
                    format!(
                        "fsq levels {levels:?} make {codes} codes; set quantizer.codebook_size = {codes}{}",
                        nominal.map(|k| format!(" (or {k}, their nominal size in the FSQ paper)")).unwrap_or_default()
                    ),
                );
            }
        }
    }
    for key in codebook_options_set(q) {
        let why = match key {
            "quantizer.init" => "fsq has no codebook to initialise; leave it \"random\"",
            "quantizer.dead_code_threshold" => "fsq has no codes to restart; leave it 0",
            "quantizer.l2_normalize" => "fsq has no codebook to normalise; leave it false",
            "quantizer.lookup_dim" => "fsq projects to len(levels) channels itself; leave it 0",
            "quantizer.gradient" => {
                "the rotation trick maps z onto a codebook vector; fsq rounds with the straight-through estimator"
            }
            _ => "an option of the ema kind; fsq has no EMA codebook",
        };
        bad(key, why.into());
    }
    if q.beta != QuantizerConfig::default().beta {
        bad("quantizer.beta", "fsq has no commitment loss for a weight to apply to".into());
    }
}

fn nonneg(bad: &mut impl FnMut(&'static str, String), key: &'static str, v: f64) {
    if !(v.is_finite() && v >= 0.0) {
        bad(key, format!("expected a finite number ≥ 0, found {v}"));
    }
}
