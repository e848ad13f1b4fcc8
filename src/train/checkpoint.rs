//! Training checkpoints of a run (`checkpoints/` of its run dir, in the format of
//! [`crate::nn::checkpoint`]): every parameter and buffer (`model.*`), the optimizer moments
//! (`opt_g.*`, `opt_d.*`), the step and the optimizer step counts. Batches and every other
//! random choice are functions of (seed, step), so this is all an exact resume needs.
//!
//! The last checkpoint is written atomically; the one it replaces is kept as the previous
//! one, the fallback when the last fails its checksum. The best checkpoint (by the run's
//! selection rule on the validation split) holds the model's weights only.

use anyhow::Context;
use candle_core::Device;

pub use crate::nn::checkpoint::{read, Checkpoint};
use crate::nn::checkpoint::{to_bytes, verify_bytes};
use crate::rundir::RunDir;
use crate::util::write_atomic;

/// Save as `last`, keeping the one it replaces as `previous` if that one is intact (a
/// corrupted `last` is dropped, so `previous` stays a good fallback).
pub fn save_last(run: &RunDir, ckpt: &Checkpoint) -> anyhow::Result<()> {
    let d = run.checkpoints_dir();
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    let bytes = to_bytes(ckpt, &[])?;
    let last = run.last_checkpoint();
    if last.exists() {
        let old = std::fs::read(&last).with_context(|| format!("reading {}", last.display()))?;
        match verify_bytes(&last, &old) {
            Ok(_) => std::fs::rename(&last, run.previous_checkpoint())
                .with_context(|| format!("keeping {} as previous", last.display()))?,
            Err(e) => {
                let previous = run.previous_checkpoint();
                let name = previous.file_name().unwrap_or_default().to_string_lossy();
                tracing::warn!("not keeping a corrupted checkpoint as {name}: {e:#}");
                std::fs::remove_file(&last).with_context(|| format!("removing {}", last.display()))?;
            }
        }
    }
    write_atomic(&last, &bytes)
}

/// Save a full checkpoint under its own name (atomically).
pub fn save_full(path: &std::path::Path, ckpt: &Checkpoint) -> anyhow::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    write_atomic(path, &to_bytes(ckpt, &[])?)
}

pub fn save_best(run: &RunDir, ckpt: &Checkpoint, metric: &str, value: f64) -> anyhow::Result<()> {
    std::fs::create_dir_all(run.checkpoints_dir())?;
    let bytes = to_bytes(ckpt, &[("best_metric", metric.to_string()), ("best_value", value.to_string())])?;
    write_atomic(&run.best_checkpoint(), &bytes)
}

/// The newest readable checkpoint: `last`, else `previous`. Problems found on the way are
/// returned as notes for the run's log.
pub fn load_latest(run: &RunDir, device: &Device) -> (Option<Checkpoint>, Vec<String>) {
    let mut notes = Vec::new();
    for p in [run.last_checkpoint(), run.previous_checkpoint()] {
        if !p.exists() {
            continue;
        }
        match read(&p, device) {
            Ok(c) => return (Some(c), notes),
            Err(e) => notes.push(format!("ignoring checkpoint: {e:#}")),
        }
    }
    (None, notes)
}
