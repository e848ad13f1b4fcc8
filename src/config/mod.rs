//! Experiment files: the schema, layered loading with figment, validation and resolution,
//! sweep expansion and run ids. Nothing here touches the runs dir or a dataset.

pub mod keys;
pub mod load;
pub mod schema;
pub mod sweep;
pub mod validate;

pub use load::Layers;
pub use schema::*;
pub use sweep::{expand, run_dir_name, run_id, PlannedRun, Sweep, TRAINING_REVISION};

use std::path::Path;

use crate::error::InputError;

/// Load an experiment file with overrides and expand its sweep: the one entry point the
/// commands use.
pub fn load_sweep(file: &Path, sets: &[String], sweeps: &[String]) -> Result<Sweep, InputError> {
    let layers = Layers::new(file, sets)?;
    expand(&layers, sweeps)
}

/// Load a run's own `config.toml` (what `vqlab train RUN_DIR` reads): one resolved run.
pub fn load_run_config(file: &Path) -> Result<ExperimentConfig, InputError> {
    let layers = Layers::file_only(file)?;
    let (mut cfg, fig) = layers.extract_with(&[])?;
    validate::resolve(&mut cfg);
    validate::validate(&cfg, &|key| layers.origin_of(&fig, key))?;
    Ok(cfg)
}

/// Render a config as TOML (the format of `config.toml` and `experiment.toml`).
pub fn to_toml(cfg: &ExperimentConfig) -> String {
    // All fields serialize to TOML-representable values (no None), so this cannot fail.
    toml::to_string_pretty(cfg).unwrap_or_else(|e| format!("# could not render config: {e}\n"))
}

/// The name of a quantizer kind as experiment files write it.
pub fn quantizer_kind_name(kind: QuantizerKind) -> &'static str {
    match kind {
        QuantizerKind::Vq => "vq",
        QuantizerKind::Ema => "ema",
        QuantizerKind::Fsq => "fsq",
        QuantizerKind::Lfq => "lfq",
        QuantizerKind::Simvq => "simvq",
    }
}

/// A one-line description of a run's model, e.g. `vqgan K=512 D=64 vq hidden=128`.
pub fn short_description(cfg: &ExperimentConfig) -> String {
    let q = &cfg.quantizer;
    let kind = quantizer_kind_name(q.kind);
    let levels = if q.levels > 1 { format!("x{}", q.levels) } else { String::new() };
    let task = match cfg.task.kind {
        TaskKind::Reconstruct => "",
        TaskKind::Denoise => " denoise",
        TaskKind::Superres => " superres",
    };
    format!(
        "{} K={}{levels} D={} {kind}{task} hidden={} seed={}",
        cfg.model.variant.name(),
        q.codebook_size,
        q.embed_dim,
        cfg.model.hidden_channels,
        cfg.train.seed
    )
}
