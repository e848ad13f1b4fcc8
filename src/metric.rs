//! Every metric vqlab records, in one typed list: its name, the splits it is measured on,
//! which way is better, its unit, what it needs (the FID feature network, a discriminator),
//! how reports label it, and what it means. Validation, the trainer, the sinks, early stop,
//! best-checkpoint selection and the report formatter all read this list; the README's and
//! `docs/design.md`'s metric tables are generated from it (`vqlab docs metrics`).
//!
//! A full name is `split/key`: `train/rec_loss`, `val/rec_mse`, `eval/rfid`, `best/psnr`.

use std::fmt;

/// Where a metric's numbers come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Split {
    /// Training steps, every `train.log_every` steps (batch statistics).
    Train,
    /// The validation split (`data.val_images`, held out of the training split) at every eval
    /// step, with the weights of that step. Early stop and checkpoint selection read it.
    Val,
    /// The test split's eval subset (`data.eval_images`), once at the end, last weights.
    Eval,
    /// The test split's eval subset, once at the end, with the best checkpoint's weights.
    Best,
    /// A prior run's samples, decoded by its tokenizer, against the test split's eval subset.
    Gen,
}

impl Split {
    pub const ALL: [Split; 5] = [Split::Train, Split::Val, Split::Eval, Split::Best, Split::Gen];

    pub fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Eval => "eval",
            Split::Best => "best",
            Split::Gen => "gen",
        }
    }

    pub fn from_prefix(prefix: &str) -> Option<Split> {
        Split::ALL.into_iter().find(|s| s.prefix() == prefix)
    }

    /// Where the numbers come from, for table footnotes.
    pub fn source(self) -> &'static str {
        match self {
            Split::Train => "train/…: training batches, every train.log_every steps",
            Split::Val => {
                "val/…: the validation split (data.val_images, held out of the training split), weights of the last step"
            }
            Split::Eval => "eval/…: the test split's eval subset (data.eval_images), weights of the last step",
            Split::Best => {
                "best/…: the test split's eval subset, weights of the checkpoint with the lowest val/rec_mse (a prior's: val/nll)"
            }
            Split::Gen => {
                "gen/…: prior.samples samples of the prior (best checkpoint), decoded by its tokenizer, against the test split's eval subset"
            }
        }
    }
}

/// Which way a metric improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Lower,
    Higher,
}

/// What measuring a metric needs beyond the autoencoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Needs {
    /// The feature network of the FID-style scores (`eval.fid = true`).
    pub fid: bool,
    /// A discriminator (`model.variant = "vqgan"`).
    pub discriminator: bool,
    /// A degraded input (`task.kind` = `denoise` or `superres`).
    pub task: bool,
    /// A stage-2 prior run (`prior.enabled`); a prior run records only these.
    pub prior: bool,
}

/// One metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metric {
    /// The name after the split: `rec_mse`.
    pub key: &'static str,
    /// The splits it is recorded on.
    pub splits: &'static [Split],
    /// None: neither direction is better (a diagnostic); reports never bold it.
    pub better: Option<Better>,
    /// Unit, empty when it has none.
    pub unit: &'static str,
    pub needs: Needs,
    /// The quantizer kinds (`quantizer.kind`) that have it; empty: every kind.
    pub kinds: &'static [&'static str],
    /// Also recorded for each level of a residual quantizer (`quantizer.levels` > 1), as
    /// `split/key_l0`, `split/key_l1`, … (the plain name counts all levels' codes together).
    pub per_level: bool,
    /// Short label for table headers ("rec. MSE").
    pub label: &'static str,
    /// Significant digits of the largest value in a table column.
    pub digits: i32,
    /// What it is, for the docs.
    pub doc: &'static str,
}

const MEASURED: &[Split] = &[Split::Val, Split::Eval, Split::Best];
const TRAINING: &[Split] = &[Split::Train];
const NONE: Needs = Needs { fid: false, discriminator: false, task: false, prior: false };
const FID: Needs = Needs { fid: true, discriminator: false, task: false, prior: false };
const DISC: Needs = Needs { fid: false, discriminator: true, task: false, prior: false };
const TASK: Needs = Needs { fid: false, discriminator: false, task: true, prior: false };
const PRIOR: Needs = Needs { fid: false, discriminator: false, task: false, prior: true };
const PRIOR_FID: Needs = Needs { fid: true, discriminator: false, task: false, prior: true };
const GENERATED: &[Split] = &[Split::Gen];

/// An eval measure, on the validation and test splits.
const fn measure(
    key: &'static str,
    better: Option<Better>,
    unit: &'static str,
    needs: Needs,
    label: &'static str,
    digits: i32,
    doc: &'static str,
) -> Metric {
    Metric { key, splits: MEASURED, better, unit, needs, kinds: &[], per_level: false, label, digits, doc }
}

/// A training-step value: a [`measure`]'s fields on the train split only.
const fn train(
    key: &'static str,
    better: Option<Better>,
    unit: &'static str,
    needs: Needs,
    label: &'static str,
    digits: i32,
    doc: &'static str,
) -> Metric {
    Metric { splits: TRAINING, ..measure(key, better, unit, needs, label, digits, doc) }
}

use Better::{Higher, Lower};

pub const REC_MSE: Metric = measure(
    "rec_mse",
    Some(Lower),
    "",
    NONE,
    "rec. MSE",
    3,
    "mean squared error of the reconstructions, pixels on [0, 1]",
);
pub const PSNR: Metric = measure(
    "psnr",
    Some(Higher),
    "dB",
    NONE,
    "PSNR (dB)",
    4,
    "mean over images of 10·log10(1 / the image's MSE), against the clean image",
);
pub const INPUT_PSNR: Metric = measure(
    "input_psnr",
    Some(Higher),
    "dB",
    TASK,
    "input PSNR (dB)",
    4,
    "the degraded input's own PSNR against the clean image (the noisy image; the box-down, bicubic-up image): the baseline a denoising or super-resolution model must beat",
);
pub const PERPLEXITY: Metric = Metric {
    per_level: true,
    ..measure(
        "perplexity",
        Some(Higher),
        "codes",
        NONE,
        "perplexity",
        4,
        "exp(−Σ p_k ln p_k) of the code counts over every latent vector of the set",
    )
};
pub const USAGE: Metric = Metric {
    per_level: true,
    ..measure("usage", Some(Higher), "", NONE, "usage", 3, "fraction of the K codes used at least once on the set")
};
pub const DEAD_CODES: Metric = Metric {
    per_level: true,
    ..measure("dead_codes", Some(Lower), "codes", NONE, "dead codes", 3, "K − codes used on the set")
};
pub const RFID: Metric = measure(
    "rfid",
    Some(Lower),
    "",
    FID,
    "rFID",
    3,
    "Fréchet distance between feature statistics of the originals and their reconstructions (the dataset's own feature network: FID-style)",
);
pub const KID: Metric = measure(
    "kid",
    Some(Lower),
    "",
    FID,
    "KID",
    3,
    "unbiased MMD² with kernel (x·y/d + 1)³, mean over random subsets (FID-style features)",
);
pub const KID_STD: Metric =
    measure("kid_std", None, "", FID, "KID std", 2, "standard deviation of KID over the subsets");

pub const NLL: Metric = measure(
    "nll",
    Some(Lower),
    "bits/code",
    PRIOR,
    "NLL (bits/code)",
    4,
    "a prior's mean negative log-likelihood of the set's code grids (encoded by its tokenizer), in bits per code",
);
pub const UNIGRAM_NLL: Metric = measure(
    "unigram_nll",
    Some(Lower),
    "bits/code",
    PRIOR,
    "unigram NLL (bits/code)",
    4,
    "the baseline of nll: the NLL of the set's codes under the training codes' marginal distribution (add-one smoothed), in bits per code",
);

/// The measures of an eval, in table order.
pub const MEASURES: [&Metric; 11] =
    [&REC_MSE, &PSNR, &INPUT_PSNR, &PERPLEXITY, &USAGE, &DEAD_CODES, &RFID, &KID, &KID_STD, &NLL, &UNIGRAM_NLL];

/// A prior's generation score.
const fn generated(
    key: &'static str,
    better: Option<Better>,
    needs: Needs,
    label: &'static str,
    doc: &'static str,
) -> Metric {
    Metric { splits: GENERATED, ..measure(key, better, "", needs, label, 3, doc) }
}

pub const GEN_FID: Metric = generated(
    "fid",
    Some(Lower),
    PRIOR_FID,
    "gFID",
    "Fréchet distance between feature statistics of the test images and the prior's decoded samples (the feature network of rFID: FID-style)",
);
pub const GEN_KID: Metric =
    generated("kid", Some(Lower), PRIOR_FID, "gKID", "KID between the test images and the prior's decoded samples");
pub const GEN_KID_STD: Metric =
    generated("kid_std", None, PRIOR_FID, "gKID std", "standard deviation of gen/kid over the subsets");
pub const GEN_MARGINAL_FID: Metric = generated(
    "marginal_fid",
    Some(Lower),
    PRIOR_FID,
    "marginal gFID",
    "the baseline of gen/fid: images decoded from codes drawn independently per position from the training codes' marginal",
);

/// A prior run's generation scores, in table order.
pub const GENERATION: [&Metric; 4] = [&GEN_FID, &GEN_KID, &GEN_KID_STD, &GEN_MARGINAL_FID];

pub const REC_LOSS: Metric = train(
    "rec_loss",
    Some(Lower),
    "",
    NONE,
    "train/rec_loss",
    3,
    "the reconstruction loss of the batch (loss.recon: l1, mse or mse_var)",
);
pub const CODEBOOK_LOSS: Metric = Metric {
    kinds: &["vq", "ema", "simvq"],
    ..train("codebook_loss", Some(Lower), "", NONE, "train/codebook_loss", 3, "‖sg[z_e] − z_q‖² (0 with EMA codebooks)")
};
pub const COMMIT_LOSS: Metric = Metric {
    kinds: &["vq", "ema", "lfq", "simvq"],
    ..train("commit_loss", Some(Lower), "", NONE, "train/commit_loss", 3, "‖z_e − sg[z_q]‖² (before the β weight)")
};
pub const ENTROPY_LOSS: Metric = Metric {
    kinds: &["lfq"],
    ..train(
        "entropy_loss",
        Some(Lower),
        "",
        NONE,
        "train/entropy_loss",
        3,
        "LFQ's entropy penalty: mean per-sample entropy of the code distribution minus the entropy of the batch's mean distribution (before its weight)",
    )
};
pub const BATCH_PERPLEXITY: Metric = train(
    "perplexity",
    Some(Higher),
    "codes",
    NONE,
    "batch perplexity",
    4,
    "perplexity of the batch's code counts (Sonnet's per-batch definition; biased low for large K)",
);
pub const BATCH_USAGE: Metric =
    train("usage", Some(Higher), "", NONE, "batch usage", 3, "fraction of codes used in the batch");
pub const G_LOSS: Metric = train(
    "g_loss",
    Some(Lower),
    "",
    DISC,
    "train/g_loss",
    3,
    "the generator's adversarial loss −mean(D(x̂)) (0 before loss.disc_start)",
);
pub const D_LOSS: Metric = train(
    "d_loss",
    Some(Lower),
    "",
    DISC,
    "train/d_loss",
    3,
    "the discriminator's hinge (or vanilla) loss (0 before loss.disc_start)",
);
pub const D_REAL: Metric =
    train("d_real", None, "", DISC, "train/d_real", 3, "mean discriminator logit on real images");
pub const D_FAKE: Metric =
    train("d_fake", None, "", DISC, "train/d_fake", 3, "mean discriminator logit on reconstructions");
pub const ADAPTIVE_WEIGHT: Metric = train(
    "adaptive_weight",
    None,
    "",
    DISC,
    "train/adaptive_weight",
    3,
    "taming's λ = ‖∇rec‖ / (‖∇g‖ + 1e-4), clamped to [0, 1e4], times loss.disc_weight",
);
pub const IMG_PER_S: Metric = train(
    "img_per_s",
    Some(Higher),
    "img/s",
    NONE,
    "img/s",
    3,
    "training images per second over the steps since the last log, eval and checkpoints excluded",
);
pub const TRAIN_NLL: Metric = train(
    "nll",
    Some(Lower),
    "bits/code",
    PRIOR,
    "train/nll",
    4,
    "a prior's cross-entropy on the training batch (dropout on), in bits per code",
);

/// The values a training step logs, in the order of the docs.
pub const TRAIN: [&Metric; 13] = [
    &REC_LOSS,
    &CODEBOOK_LOSS,
    &COMMIT_LOSS,
    &ENTROPY_LOSS,
    &BATCH_PERPLEXITY,
    &BATCH_USAGE,
    &G_LOSS,
    &D_LOSS,
    &D_REAL,
    &D_FAKE,
    &ADAPTIVE_WEIGHT,
    &IMG_PER_S,
    &TRAIN_NLL,
];

/// The TensorBoard image tag of the reconstruction grids (originals above reconstructions of
/// the first test images, at every eval step).
pub const RECONSTRUCTIONS_TAG: &str = "eval/reconstructions";

/// The TensorBoard histogram tag of the code counts on a split (one bucket per code).
pub fn code_usage_tag(split: Split) -> String {
    format!("{}/code_usage", split.prefix())
}

impl Metric {
    /// The full name on `split`: `val/rec_mse`.
    pub fn at(&self, split: Split) -> String {
        format!("{}/{}", split.prefix(), self.key)
    }

    /// The full name of level `level` of a residual quantizer on `split`: `eval/usage_l0`.
    pub fn at_level(&self, split: Split, level: u32) -> String {
        format!("{}/{}_l{level}", split.prefix(), self.key)
    }

    /// Whether a run whose `quantizer.kind` is `kind` has it.
    pub fn applies_to(&self, kind: &str) -> bool {
        self.kinds.is_empty() || self.kinds.contains(&kind)
    }

    /// A metric computed by a tokenizer run with these settings.
    pub fn is_measured(&self, fid: bool, discriminator: bool, task: bool) -> bool {
        !self.needs.prior
            && (fid || !self.needs.fid)
            && (discriminator || !self.needs.discriminator)
            && (task || !self.needs.task)
    }
}

/// A metric on a split: what a full name like `val/rec_mse` means.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricName {
    pub split: Split,
    pub metric: &'static Metric,
    /// The level of a residual quantizer (`eval/usage_l1`); None for the plain name.
    pub level: Option<u32>,
}

impl MetricName {
    pub fn new(split: Split, metric: &'static Metric) -> Self {
        MetricName { split, metric, level: None }
    }

    /// Look a full name up; None for a name vqlab does not record.
    pub fn parse(name: &str) -> Option<MetricName> {
        let (prefix, key) = name.split_once('/')?;
        let split = Split::from_prefix(prefix)?;
        let list = on_split(split);
        if let Some(m) = list.iter().find(|m| m.key == key) {
            return Some(MetricName::new(split, m));
        }
        let (base, level) = key.rsplit_once("_l")?;
        if level.is_empty() || !level.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let level = level.parse().ok()?;
        list.iter().find(|m| m.per_level && m.key == base).map(|m| MetricName { split, metric: m, level: Some(level) })
    }
}

impl fmt::Display for MetricName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.level {
            Some(l) => write!(f, "{}", self.metric.at_level(self.split, l)),
            None => write!(f, "{}/{}", self.split.prefix(), self.metric.key),
        }
    }
}

/// The metrics recorded on a split: the training values, or the eval measures.
fn on_split(split: Split) -> &'static [&'static Metric] {
    match split {
        Split::Train => &TRAIN,
        Split::Gen => &GENERATION,
        _ => &MEASURES,
    }
}

/// The full names a prior run records on a split (`fid`: with the generation scores).
pub fn prior_names(split: Split, fid: bool) -> Vec<String> {
    on_split(split).iter().filter(|m| m.needs.prior && (fid || !m.needs.fid)).map(|m| m.at(split)).collect()
}

/// The full names a run records on a split, in table order (`task`: the run degrades its
/// inputs).
pub fn names(split: Split, fid: bool, discriminator: bool, task: bool) -> Vec<String> {
    on_split(split).iter().filter(|m| m.is_measured(fid, discriminator, task)).map(|m| m.at(split)).collect()
}

/// The per-level names a run with a residual quantizer of `levels` levels also records on a
/// split (none for a single quantizer), level by level.
pub fn level_names(split: Split, levels: u32) -> Vec<String> {
    if levels <= 1 {
        return Vec::new();
    }
    (0..levels)
        .flat_map(|l| on_split(split).iter().filter(|m| m.per_level).map(move |m| m.at_level(split, l)))
        .collect()
}

/// Every full name vqlab can record (the plain names; per-level names follow the levels).
pub fn all_names() -> Vec<String> {
    Split::ALL.into_iter().flat_map(|s| names(s, true, true, true).into_iter().chain(prior_names(s, true))).collect()
}

/// How a run picks its best checkpoint: the eval step with the best value of a validation
/// metric, in the metric's own direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CheckpointRule {
    pub metric: MetricName,
}

impl CheckpointRule {
    /// vqlab's rule: the lowest `val/rec_mse`.
    pub const LOWEST_VAL_REC_MSE: CheckpointRule =
        CheckpointRule { metric: MetricName { split: Split::Val, metric: &REC_MSE, level: None } };

    /// Whether `value` beats the best so far (None: no checkpoint yet).
    pub fn improves(&self, value: f64, best: Option<f64>) -> bool {
        if !value.is_finite() {
            return false;
        }
        match (best, self.metric.metric.better) {
            (None, _) => true,
            (Some(b), Some(Higher)) => value > b,
            (Some(b), _) => value < b,
        }
    }

    /// "lowest val/rec_mse".
    pub fn describe(&self) -> String {
        let word = if self.metric.metric.better == Some(Higher) { "highest" } else { "lowest" };
        format!("{word} {}", self.metric)
    }
}

/// A bound an early-stop rule watches for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    Below(f64),
    Above(f64),
}

/// Stop a run when a validation metric crosses a bound at an eval step at or after
/// `after_step` (the typed form of a `train.early_stop` entry).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StopRule {
    pub metric: MetricName,
    pub bound: Bound,
    pub after_step: u64,
}

impl StopRule {
    /// The reason to stop at `step` with this value of the rule's metric, if it fires.
    pub fn fires(&self, step: u64, value: f64) -> Option<String> {
        if step < self.after_step {
            return None;
        }
        match self.bound {
            Bound::Below(b) if value < b => {
                Some(format!("{} = {value:.6} < {b} at step {step} (train.early_stop)", self.metric))
            }
            Bound::Above(a) if value > a => {
                Some(format!("{} = {value:.6} > {a} at step {step} (train.early_stop)", self.metric))
            }
            _ => None,
        }
    }
}

/// The Markdown table of every metric (`vqlab docs metrics`; the README and docs/design.md
/// hold it verbatim).
pub fn table() -> String {
    let mut s = String::from("| name | splits | better | unit | needs | definition |\n|---|---|---|---|---|---|\n");
    for m in TRAIN.iter().chain(MEASURES.iter()).chain(GENERATION.iter()) {
        let mut splits: Vec<String> = m.splits.iter().map(|s| format!("`{}`", m.at(*s))).collect();
        if m.per_level {
            splits.push(format!(
                "(and `{}`, `{}`, … per residual level)",
                m.at_level(Split::Eval, 0),
                m.at_level(Split::Eval, 1)
            ));
        }
        let better = match m.better {
            Some(Lower) => "lower",
            Some(Higher) => "higher",
            None => "—",
        };
        let mut needs = Vec::new();
        if m.needs.fid {
            needs.push("`eval.fid`");
        }
        if m.needs.discriminator {
            needs.push("vqgan");
        }
        if m.needs.task {
            needs.push("`task.kind` denoise/superres");
        }
        if m.needs.prior {
            needs.push("`prior.enabled`");
        }
        let kinds = format!("kind {}", m.kinds.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join("/"));
        if !m.kinds.is_empty() {
            needs.push(&kinds);
        }
        let needs = if needs.is_empty() { "—".to_string() } else { needs.join(", ") };
        let unit = if m.unit.is_empty() { "—" } else { m.unit };
        s.push_str(&format!("| {} | {} | {better} | {unit} | {needs} | {} |\n", m.key, splits.join(" "), m.doc));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_names_parse_back() {
        for name in all_names() {
            assert_eq!(MetricName::parse(&name).map(|m| m.to_string()), Some(name));
        }
        assert!(MetricName::parse("train/rec_mse").is_none());
        assert!(MetricName::parse("val/rec_loss").is_none());
        assert!(MetricName::parse("test/rec_mse").is_none());
        assert_eq!(MetricName::parse("best/kid_std").unwrap().metric.key, "kid_std");
        let level = MetricName::parse("eval/dead_codes_l12").unwrap();
        assert_eq!((level.metric.key, level.level), ("dead_codes", Some(12)));
        assert_eq!(level.to_string(), "eval/dead_codes_l12");
        for not in ["eval/rec_mse_l0", "eval/usage_l", "eval/usage_lx", "eval/usage_l-1", "train/usage_l0"] {
            assert!(MetricName::parse(not).is_none(), "{not}");
        }
        assert_eq!(
            level_names(Split::Val, 2),
            [
                "val/perplexity_l0",
                "val/usage_l0",
                "val/dead_codes_l0",
                "val/perplexity_l1",
                "val/usage_l1",
                "val/dead_codes_l1"
            ]
        );
        assert!(level_names(Split::Eval, 1).is_empty());
    }

    #[test]
    fn a_run_without_fid_or_discriminator_records_fewer_names() {
        assert_eq!(
            names(Split::Val, false, false, false),
            ["val/rec_mse", "val/psnr", "val/perplexity", "val/usage", "val/dead_codes"]
        );
        assert_eq!(names(Split::Eval, true, false, false).len(), 8);
        assert_eq!(names(Split::Eval, false, false, true)[..3], ["eval/rec_mse", "eval/psnr", "eval/input_psnr"]);
        assert_eq!(names(Split::Train, false, false, false).len(), 7);
        assert_eq!(names(Split::Train, false, true, false).len(), 12);
        // Tokenizer runs: 12 training values, 9 measures on val/eval/best. Prior runs: train/nll,
        // nll and unigram_nll on val/eval/best, 4 generation scores.
        assert_eq!(all_names().len(), 12 + 3 * 9 + 1 + 3 * 2 + 4);
        assert_eq!(prior_names(Split::Gen, true), ["gen/fid", "gen/kid", "gen/kid_std", "gen/marginal_fid"]);
        assert!(prior_names(Split::Gen, false).is_empty());
        assert_eq!(prior_names(Split::Best, false), ["best/nll", "best/unigram_nll"]);
        assert_eq!(prior_names(Split::Train, false), ["train/nll"]);
        assert!(COMMIT_LOSS.applies_to("lfq") && !COMMIT_LOSS.applies_to("fsq"));
        assert!(REC_LOSS.applies_to("fsq") && !ENTROPY_LOSS.applies_to("vq"));
    }

    #[test]
    fn the_checkpoint_rule_follows_the_metric_direction() {
        let low = CheckpointRule::LOWEST_VAL_REC_MSE;
        assert!(low.improves(0.2, None));
        assert!(low.improves(0.1, Some(0.2)));
        assert!(!low.improves(0.2, Some(0.2)));
        assert!(!low.improves(f64::NAN, None));
        assert_eq!(low.describe(), "lowest val/rec_mse");
        let high = CheckpointRule { metric: MetricName::new(Split::Val, &PSNR) };
        assert!(high.improves(30.0, Some(29.0)));
        assert!(!high.improves(28.0, Some(29.0)));
        assert_eq!(high.describe(), "highest val/psnr");
    }

    #[test]
    fn stop_rules_fire_past_their_bound_after_their_step() {
        let metric = MetricName::parse("val/usage").unwrap();
        let rule = StopRule { metric, bound: Bound::Below(0.05), after_step: 100 };
        assert_eq!(rule.fires(50, 0.01), None);
        assert_eq!(rule.fires(100, 0.05), None);
        assert_eq!(
            rule.fires(100, 0.01).as_deref(),
            Some("val/usage = 0.010000 < 0.05 at step 100 (train.early_stop)")
        );
        let rule = StopRule { metric, bound: Bound::Above(0.5), after_step: 0 };
        assert!(rule.fires(1, 0.6).is_some() && rule.fires(1, 0.4).is_none());
    }
}
