//! The experiment-file schema (docs/design.md, "Experiment file"): every section as a serde struct with
//! `deny_unknown_fields` and defaults chosen for small-image VQ research.
//!
//! This module only describes shapes and defaults; loading lives in `load`, checks of
//! impossible values in `validate`, sweep expansion in `sweep`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ExperimentConfig {
    pub experiment: ExperimentSection,
    pub data: DataConfig,
    pub model: ModelConfig,
    pub quantizer: QuantizerConfig,
    /// What the model learns to produce from what: reconstruction, denoising or
    /// super-resolution (left out of the run id at its default, reconstruction).
    pub task: TaskConfig,
    pub loss: LossConfig,
    pub train: TrainConfig,
    pub eval: EvalConfig,
    pub hardware: HardwareConfig,
    pub sweep: SweepConfig,
    pub launcher: LauncherConfig,
    /// The stage-2 prior (`prior.enabled`): a run of its own, child of the tokenizer run of
    /// the same config. Left out of config files and run ids while disabled.
    #[serde(skip_serializing_if = "PriorConfig::is_disabled")]
    pub prior: PriorConfig,
}

impl ExperimentConfig {
    /// Adam's betas of this run: `train.betas`, or the variant's reference when unset.
    pub fn adam_betas(&self) -> [f64; 2] {
        self.train.betas.unwrap_or_else(|| self.model.variant.reference_betas())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExperimentSection {
    /// Sweep directory name under the runs dir: letters, digits, `.`, `_`, `-`.
    pub name: String,
    /// Free text kept with the results.
    pub description: String,
}

impl Default for ExperimentSection {
    fn default() -> Self {
        Self { name: "experiment".into(), description: String::new() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    FashionMnist,
    Mnist,
    Cifar10,
    Folder,
    Synthetic,
}

impl DatasetKind {
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Mnist => "mnist",
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Folder => "folder",
            DatasetKind::Synthetic => "synthetic",
        }
    }
    /// Where the dataset lives when `data.path` is empty.
    pub fn default_path(self) -> &'static str {
        match self {
            DatasetKind::FashionMnist => "/usr/share/datasets/fashion-mnist",
            DatasetKind::Mnist => "/usr/share/datasets/mnist",
            DatasetKind::Cifar10 => "data/cifar-10-batches-bin",
            DatasetKind::Folder => "",
            DatasetKind::Synthetic => "",
        }
    }
    /// Validation images carved from the end of the training split when `data.val_images` is
    /// not set: what checkpoint selection and early stop read (never the test split). The
    /// folder dataset has no default (its size is unknown until it is read): 0, no validation
    /// split, so no best checkpoint and no early stop unless `data.val_images` is set.
    pub fn default_val_images(self) -> usize {
        match self {
            DatasetKind::FashionMnist | DatasetKind::Mnist | DatasetKind::Cifar10 => 5_000,
            DatasetKind::Synthetic => 2_000,
            DatasetKind::Folder => 0,
        }
    }
    /// (channels, side) of the images as stored; `None` where it depends on the files.
    pub fn native_shape(self) -> Option<(u32, u32)> {
        match self {
            DatasetKind::FashionMnist | DatasetKind::Mnist => Some((1, 28)),
            DatasetKind::Cifar10 => Some((3, 32)),
            DatasetKind::Folder => None,
            DatasetKind::Synthetic => Some((1, 28)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    pub dataset: DatasetKind,
    /// Empty = the dataset's default location.
    pub path: String,
    /// Side of the square images fed to the model; 0 = the dataset's native size.
    pub image_size: u32,
    /// 1 (grayscale) or 3 (RGB); 0 = the dataset's native channels (folder: 3).
    pub channels: u32,
    /// Training images used, from what the validation split leaves; 0 = all of them
    /// (synthetic: 10,000 generated).
    pub train_images: usize,
    /// Validation split: the last `val_images` images of the training split, never trained
    /// on; the best checkpoint, early stop and the eval curves read it. Unset = the dataset's
    /// default ([`DatasetKind::default_val_images`]); 0 = no validation split.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_images: Option<usize>,
    /// Fixed eval subset (the first images of the test split): the final metrics.
    pub eval_images: usize,
}

impl DataConfig {
    /// The validation split's size as resolved (the dataset default when unset).
    pub fn val_images(&self) -> usize {
        self.val_images.unwrap_or_else(|| self.dataset.default_val_images())
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            dataset: DatasetKind::FashionMnist,
            path: String::new(),
            image_size: 0,
            channels: 0,
            train_images: 0,
            val_images: None,
            eval_images: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    Vqvae,
    Vqgan,
}

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Variant::Vqvae => "vqvae",
            Variant::Vqgan => "vqgan",
        }
    }
    /// Adam's betas in the variant's reference implementation: Sonnet's VQ-VAE example trains
    /// with Adam's defaults, taming-transformers' VQ-GAN with (0.5, 0.9).
    pub fn reference_betas(self) -> [f64; 2] {
        match self {
            Variant::Vqvae => [0.9, 0.999],
            Variant::Vqgan => [0.5, 0.9],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub variant: Variant,
    pub hidden_channels: u32,
    pub res_channels: u32,
    pub res_blocks: u32,
    /// Number of stride-2 stages: 28 -> 7 with 2.
    pub downsample: u32,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self { variant: Variant::Vqvae, hidden_channels: 128, res_channels: 32, res_blocks: 2, downsample: 2 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantizerKind {
    Vq,
    Ema,
    /// Finite scalar quantization (no codebook; levels from `quantizer.fsq_levels` or the
    /// FSQ paper's table for `quantizer.codebook_size`).
    Fsq,
    /// Lookup-free quantization (MAGVIT-v2): the signs of log2 K channels, commitment loss
    /// and the entropy penalty.
    Lfq,
    /// SimVQ (Zhu et al. 2024): a frozen random codebook times a learned linear map; nearest
    /// code and losses as `vq`.
    Simvq,
}

/// How the gradient passes from the quantized vector q back to the encoder output z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GradientEstimator {
    /// The straight-through estimator: the identity (van den Oord et al.).
    #[default]
    Ste,
    /// The rotation trick (Fifty et al. 2024): through the rotation and rescaling that maps z
    /// onto q, held constant.
    Rotation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CodebookInit {
    Random,
    Kmeans,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuantizerConfig {
    pub kind: QuantizerKind,
    pub codebook_size: u32,
    pub embed_dim: u32,
    /// Commitment weight, on the encoder term.
    pub beta: f64,
    pub ema_decay: f64,
    pub ema_epsilon: f64,
    pub init: CodebookInit,
    /// Restart codes whose EMA usage falls below this (0 = off).
    pub dead_code_threshold: f64,
    pub l2_normalize: bool,
    /// Factorized low-dimensional lookup (0 = off).
    pub lookup_dim: u32,
    /// FSQ: the levels of each channel (empty: the FSQ paper's for `codebook_size`). Left out
    /// of the serialized config when empty, so run ids of the other kinds are unchanged.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fsq_levels: Vec<u32>,
    /// The gradient estimator of the codebook kinds (`ste` or `rotation`). Always written to
    /// a run's config; at its default it is left out of the run id (`sweep::HASHED_UNLESS_DEFAULT`),
    /// so ids from before the key existed stay.
    pub gradient: GradientEstimator,
    /// Residual quantization (SoundStream, RQ-VAE): this many quantizers of the kind, each
    /// with its own codebook of `codebook_size` codes, each on the residual of the ones before.
    /// 1: a single quantizer (left out of the run id at 1, `sweep::HASHED_UNLESS_DEFAULT`).
    pub levels: u32,
    /// LFQ: weight of the entropy penalty (resolved to 0.1 for lfq; unset otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lfq_entropy_weight: Option<f64>,
    /// LFQ: temperature τ of the code distribution in the entropy penalty (resolved to 0.01).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lfq_temperature: Option<f64>,
}

/// The FSQ paper's levels for each nominal codebook size (Mentzer et al. 2023, Table 1).
pub const FSQ_LEVEL_TABLE: [(u32, &[u32]); 5] = [
    (1 << 8, &[8, 6, 5]),
    (1 << 10, &[8, 5, 5, 5]),
    (1 << 12, &[7, 5, 5, 5, 5]),
    (1 << 14, &[8, 8, 8, 6, 5]),
    (1 << 16, &[8, 8, 8, 5, 5, 5]),
];

/// The FSQ paper's levels for a nominal codebook size.
pub fn fsq_table_levels(codebook_size: u32) -> Option<&'static [u32]> {
    FSQ_LEVEL_TABLE.iter().find(|(k, _)| *k == codebook_size).map(|(_, l)| *l)
}

/// The levels an fsq config asks for: `quantizer.fsq_levels`, else the table's for
/// `quantizer.codebook_size` (validation makes sure one of them exists).
pub fn fsq_levels_of(codebook_size: u32, explicit: &[u32]) -> Option<Vec<u32>> {
    if explicit.is_empty() {
        fsq_table_levels(codebook_size).map(<[u32]>::to_vec)
    } else {
        Some(explicit.to_vec())
    }
}

impl Default for QuantizerConfig {
    fn default() -> Self {
        Self {
            kind: QuantizerKind::Vq,
            codebook_size: 512,
            embed_dim: 64,
            beta: 0.25,
            ema_decay: 0.99,
            ema_epsilon: 1e-5,
            init: CodebookInit::Random,
            dead_code_threshold: 0.0,
            l2_normalize: false,
            lookup_dim: 0,
            fsq_levels: Vec::new(),
            gradient: GradientEstimator::Ste,
            levels: 1,
            lfq_entropy_weight: None,
            lfq_temperature: None,
        }
    }
}

/// The image-to-image task of the seed article's §6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// The input is the clean image.
    #[default]
    Reconstruct,
    /// The input is the image plus Gaussian noise of `task.noise_std`, clipped to [0, 1].
    Denoise,
    /// The input is the image box-downscaled by `task.scale` and bicubic-upscaled back.
    Superres,
}

/// denoise's σ when `task.noise_std` is unset.
pub const DEFAULT_NOISE_STD: f64 = 0.2;
/// superres's factor when `task.scale` is unset.
pub const DEFAULT_SCALE: u32 = 2;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TaskConfig {
    pub kind: TaskKind,
    /// denoise: σ of the Gaussian noise on the [0, 1] pixel scale (resolved to 0.2; unset
    /// for the other kinds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub noise_std: Option<f64>,
    /// superres: the downscaling factor (resolved to 2; unset for the other kinds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<u32>,
}

impl TaskConfig {
    /// denoise's σ: `task.noise_std`, or its default.
    pub fn noise_std(&self) -> f64 {
        self.noise_std.unwrap_or(DEFAULT_NOISE_STD)
    }

    /// superres's downscaling factor: `task.scale`, or its default.
    pub fn scale(&self) -> u32 {
        self.scale.unwrap_or(DEFAULT_SCALE)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReconLoss {
    /// MSE for vqvae, L1 for vqgan (taming's choice); resolved per run.
    Auto,
    Mse,
    /// MSE divided by the variance of the training pixels, as Sonnet's VQ-VAE example does.
    #[serde(rename = "mse_var")]
    MseVar,
    L1,
}

impl ReconLoss {
    pub fn name(self) -> &'static str {
        match self {
            ReconLoss::Auto => "auto",
            ReconLoss::Mse => "mse",
            ReconLoss::MseVar => "mse_var",
            ReconLoss::L1 => "l1",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiscLoss {
    Hinge,
    Vanilla,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    pub recon: ReconLoss,
    pub codebook_weight: f64,
    /// VQ-GAN only: weight of the adversarial term.
    pub disc_weight: f64,
    /// Step at which the adversarial term switches on.
    pub disc_start: u64,
    pub disc_loss: DiscLoss,
    /// taming's calculate_adaptive_weight.
    pub adaptive_weight: bool,
    /// LPIPS weight; needs weights that are not available offline, so 0.
    pub perceptual_weight: f64,
    /// Discriminator conv layers; 0 = as many as keep the patch map at least 2×2.
    pub disc_layers: u32,
    pub disc_channels: u32,
    /// VQ-GAN: `shared_prefix` starts from the matching VQ-VAE run's state at `disc_start`
    /// instead of training the same prefix again.
    pub branch: Branch,
}

/// Where a VQ-GAN run's steps before `loss.disc_start` come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Branch {
    /// Trained by the run itself.
    #[default]
    None,
    /// The matching VQ-VAE run of the sweep (same config but the variant and the
    /// discriminator's keys) trains them; this run branches from its checkpoint at
    /// `disc_start`, weights and optimizer state bit for bit.
    SharedPrefix,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            recon: ReconLoss::Auto,
            codebook_weight: 1.0,
            disc_weight: 0.8,
            disc_start: 2000,
            disc_loss: DiscLoss::Hinge,
            adaptive_weight: true,
            perceptual_weight: 0.0,
            disc_layers: 0,
            disc_channels: 64,
            branch: Branch::None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    /// Adam's (β1, β2); unset = the variant's reference: Sonnet's (0.9, 0.999) for vqvae,
    /// taming's (0.5, 0.9) for vqgan.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub betas: Option<[f64; 2]>,
    pub log_every: u64,
    pub eval_every: u64,
    pub checkpoint_every: u64,
    pub seed: u64,
    /// Codebook-health early stop: rules checked at every eval step (none by default; left
    /// out of the resolved config when empty, so it changes no run id unless used).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub early_stop: Vec<EarlyStopRule>,
    /// How the CPU ops compute convolutions with stride 1 and padding 1.
    pub conv_algorithm: ConvAlgorithm,
}

/// How stride-1, padding-1 convolutions run on the CPU (`train.conv_algorithm`). All compute
/// the same convolution; they add the products in different orders, so their results differ
/// by rounding and the run id hashes the choice. Other devices run candle's ops.
///
/// The default is [`ConvAlgorithm::Winograd4`] since 2026-12-06 (im2row before): runs that
/// leave the key unset moved to new ids then, and `im2row` runs keep theirs (see
/// `HASHED_UNLESS_DEFAULT` in `config::sweep`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConvAlgorithm {
    /// A gemm over the row matrix (im2row), as every other convolution: the reference.
    Im2row,
    /// Winograd F(2×2, 3×3) (Lavin & Gray 2016): 16 gemms in the Winograd domain.
    Winograd,
    /// Winograd F(4×4, 3×3) (Lavin & Gray 2016): 36 gemms over a quarter of the tiles; and
    /// 4×4 kernels with 8 or more outputs (the discriminator's) as F(3×3, 4×4), the same
    /// 36-point transforms. The default.
    #[default]
    Winograd4,
}

/// Stop a run when an eval metric crosses a bound at an eval step at or after `after_step`,
/// e.g. `{ metric = "val/usage", below = 0.05, after_step = 1000 }`: rules read the validation
/// split, never the test split. The run ends
/// `stopped_early` with the rule in its reason and frees its slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopRule {
    pub metric: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
    #[serde(default)]
    pub after_step: u64,
}

impl EarlyStopRule {
    /// The typed rule: its metric looked up in [`crate::metric`] and its one bound. Err says
    /// what is wrong (validation reports it under `train.early_stop`).
    pub fn rule(&self) -> Result<crate::metric::StopRule, String> {
        use crate::metric::{Bound, MetricName, Split};
        let metric = MetricName::parse(&self.metric).filter(|m| m.split == Split::Val).ok_or_else(|| {
            format!(
                "metric {:?} is not a validation metric (expected one of {})",
                self.metric,
                crate::metric::names(Split::Val, true, false, true).join(", ")
            )
        })?;
        let bound = match (self.below, self.above) {
            (Some(b), None) => Bound::Below(b),
            (None, Some(a)) => Bound::Above(a),
            _ => return Err("expected exactly one of `below` or `above`".into()),
        };
        Ok(crate::metric::StopRule { metric, bound, after_step: self.after_step })
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 5000,
            batch_size: 128,
            lr: 2e-4,
            betas: None,
            log_every: 50,
            eval_every: 1000,
            checkpoint_every: 1000,
            seed: 0,
            early_stop: Vec::new(),
            conv_algorithm: ConvAlgorithm::Winograd4,
        }
    }
}

/// The stage-2 prior: a decoder-only transformer over the tokenizer's code grid in raster
/// order (VQGAN's stage 2, minGPT's blocks), trained on the codes of the training split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PriorConfig {
    /// Each tokenizer run of the sweep is followed by a prior run on its codes.
    pub enabled: bool,
    pub layers: u32,
    /// The model width (embedding size); a multiple of `heads`.
    pub width: u32,
    pub heads: u32,
    pub dropout: f64,
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    /// Validation NLL (and the best checkpoint) cadence, and checkpoints.
    pub eval_every: u64,
    /// Sampling temperature; 0 = argmax decoding.
    pub temperature: f64,
    /// Sample from the k most likely codes only (0 = all).
    pub top_k: u32,
    /// Samples decoded for gen/fid and gen/kid.
    pub samples: u32,
}

impl PriorConfig {
    pub fn is_disabled(&self) -> bool {
        !self.enabled
    }
}

impl Default for PriorConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            layers: 4,
            width: 128,
            heads: 4,
            dropout: 0.1,
            steps: 5000,
            batch_size: 64,
            lr: 3e-4,
            eval_every: 500,
            temperature: 1.0,
            top_k: 0,
            samples: 2000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// rFID + KID with the dataset's feature network.
    pub fid: bool,
    pub kid_subsets: u32,
    pub kid_subset_size: u32,
    pub batch_size: usize,
    /// Eval images shown in reconstruction grids.
    pub sample_images: u32,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self { fid: true, kid_subsets: 100, kid_subset_size: 1000, batch_size: 500, sample_images: 16 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Auto,
    Cpu,
    Cuda,
}

/// `"all"` or a list of GPU indices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum GpuSelection {
    Named(GpuAll),
    List(Vec<u32>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuAll {
    All,
}

/// How many runs share one GPU: a fixed number, or `"auto"`: as many as fit in its memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RunsPerGpu {
    Count(u32),
    Auto(AutoKeyword),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoKeyword {
    Auto,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HardwareConfig {
    pub device: DeviceKind,
    pub gpus: GpuSelection,
    /// Runs packed on one GPU: a number, or "auto" (by measured or estimated memory).
    pub runs_per_gpu: RunsPerGpu,
    /// Concurrent runs on CPU.
    pub cpu_slots: u32,
    /// 0 = cores / concurrent runs.
    pub threads_per_run: u32,
}

impl Default for HardwareConfig {
    fn default() -> Self {
        Self {
            device: DeviceKind::Auto,
            gpus: GpuSelection::Named(GpuAll::All),
            runs_per_gpu: RunsPerGpu::Count(1),
            cpu_slots: 1,
            threads_per_run: 0,
        }
    }
}

/// Sweep values are kept as JSON values: any scalar or list an experiment key accepts.
pub type SweepAxes = BTreeMap<String, Vec<serde_json::Value>>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SweepConfig {
    /// Each seed repeats every cell (sets `train.seed`).
    pub seeds: Vec<u64>,
    /// Cartesian product over dotted keys.
    pub grid: SweepAxes,
    /// Lists of equal length, varied together.
    pub zip: SweepAxes,
}

impl SweepConfig {
    pub fn is_empty(&self) -> bool {
        self.seeds.is_empty() && self.grid.is_empty() && self.zip.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LauncherKind {
    Local,
    Slurm,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LauncherConfig {
    pub kind: LauncherKind,
    /// Attempts per run before it stays failed.
    pub max_attempts: u32,
    pub slurm: SlurmConfig,
}

impl Default for LauncherConfig {
    fn default() -> Self {
        Self { kind: LauncherKind::Local, max_attempts: 3, slurm: SlurmConfig::default() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlurmConfig {
    pub partition: String,
    pub time: String,
    pub gres: String,
    pub cpus_per_task: u32,
    pub mem: String,
    /// Array throttle (`%N`); 0 = no limit.
    pub max_parallel: u32,
    /// Extra `#SBATCH` lines, verbatim.
    pub extra: Vec<String>,
}

impl Default for SlurmConfig {
    fn default() -> Self {
        Self {
            partition: String::new(),
            time: "04:00:00".into(),
            gres: String::new(),
            cpus_per_task: 2,
            mem: String::new(),
            max_parallel: 0,
            extra: Vec::new(),
        }
    }
}
