//! Checkpoints: one safetensors file holding every parameter and buffer (`model.*`), the
//! optimizer moments (`opt_g.*`, `opt_d.*`) and, in its metadata, the step, the optimizer
//! step counts and a SHA-256 of the tensor data. Batches and every other random choice are
//! functions of (seed, step), so this is all an exact resume needs.
//!
//! `last.safetensors` is written atomically; the one it replaces is kept as
//! `previous.safetensors`, the fallback when `last` fails its checksum.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};

use crate::fsutil::write_atomic;

pub const DIR: &str = "checkpoints";
pub const LAST: &str = "last.safetensors";
pub const PREVIOUS: &str = "previous.safetensors";
pub const BEST: &str = "best.safetensors";
const FORMAT: &str = "vqlab-checkpoint-1";

#[derive(Debug, Clone, Default)]
pub struct Checkpoint {
    pub step: u64,
    pub tensors: BTreeMap<String, Tensor>,
    /// Free-form integers saved with it (optimizer step counts, …).
    pub counters: BTreeMap<String, u64>,
}

fn data_section(bytes: &[u8]) -> anyhow::Result<&[u8]> {
    let (header_len, _) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| anyhow::anyhow!("not a safetensors file: {e}"))?;
    Ok(&bytes[8 + header_len..])
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Serialize with metadata and a checksum of the tensor data.
pub fn to_bytes(ckpt: &Checkpoint, extra_meta: &[(&str, String)]) -> anyhow::Result<Vec<u8>> {
    let mut meta: HashMap<String, String> = HashMap::new();
    meta.insert("format".into(), FORMAT.into());
    meta.insert("step".into(), ckpt.step.to_string());
    meta.insert("vqlab_version".into(), env!("CARGO_PKG_VERSION").into());
    for (k, v) in &ckpt.counters {
        meta.insert(format!("counter.{k}"), v.to_string());
    }
    for (k, v) in extra_meta {
        meta.insert((*k).to_string(), v.clone());
    }
    // The data section does not depend on the metadata: hash it from a first serialization.
    let plain = safetensors::serialize(ckpt.tensors.iter().map(|(k, v)| (k.as_str(), v)), None)?;
    meta.insert("data_sha256".into(), sha256_hex(data_section(&plain)?));
    Ok(safetensors::serialize(ckpt.tensors.iter().map(|(k, v)| (k.as_str(), v)), Some(meta))?)
}

/// Check a checkpoint's format and checksum; returns its metadata.
fn verify_bytes(path: &Path, bytes: &[u8]) -> anyhow::Result<HashMap<String, String>> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a valid safetensors file: {e}", path.display()))?;
    let meta = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| anyhow::anyhow!("{e}"))?.1;
    let meta = meta.metadata().clone().unwrap_or_default();
    drop(st);
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        bail!("{}: not a vqlab checkpoint (format {:?})", path.display(), meta.get("format"));
    }
    let expected = meta.get("data_sha256").cloned().unwrap_or_default();
    let actual = sha256_hex(data_section(bytes)?);
    if expected != actual {
        bail!("{}: checksum mismatch (corrupted file): expected {expected}, found {actual}", path.display());
    }
    Ok(meta)
}

/// Read and verify a checkpoint file.
pub fn read(path: &Path, device: &Device) -> anyhow::Result<Checkpoint> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let meta = verify_bytes(path, &bytes)?;
    let step = meta.get("step").and_then(|s| s.parse().ok()).context("checkpoint metadata lacks step")?;
    let counters =
        meta.iter().filter_map(|(k, v)| Some((k.strip_prefix("counter.")?.to_string(), v.parse().ok()?))).collect();
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)?.into_iter().collect();
    Ok(Checkpoint { step, tensors, counters })
}

pub fn dir(run_dir: &Path) -> PathBuf {
    run_dir.join(DIR)
}

/// Save as `last`, keeping the one it replaces as `previous` if that one is intact (a
/// corrupted `last` is dropped, so `previous` stays a good fallback).
pub fn save_last(run_dir: &Path, ckpt: &Checkpoint) -> anyhow::Result<()> {
    let d = dir(run_dir);
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    let bytes = to_bytes(ckpt, &[])?;
    let last = d.join(LAST);
    if last.exists() {
        let old = std::fs::read(&last).with_context(|| format!("reading {}", last.display()))?;
        match verify_bytes(&last, &old) {
            Ok(_) => std::fs::rename(&last, d.join(PREVIOUS))
                .with_context(|| format!("keeping {} as previous", last.display()))?,
            Err(e) => {
                tracing::warn!("not keeping a corrupted checkpoint as {PREVIOUS}: {e:#}");
                std::fs::remove_file(&last).with_context(|| format!("removing {}", last.display()))?;
            }
        }
    }
    write_atomic(&last, &bytes)
}

pub fn save_best(run_dir: &Path, ckpt: &Checkpoint, metric: &str, value: f64) -> anyhow::Result<()> {
    let d = dir(run_dir);
    std::fs::create_dir_all(&d)?;
    let bytes = to_bytes(ckpt, &[("best_metric", metric.to_string()), ("best_value", value.to_string())])?;
    write_atomic(&d.join(BEST), &bytes)
}

/// The newest readable checkpoint: `last`, else `previous`. Problems found on the way are
/// returned as notes for the run's log.
pub fn load_latest(run_dir: &Path, device: &Device) -> (Option<Checkpoint>, Vec<String>) {
    let mut notes = Vec::new();
    for name in [LAST, PREVIOUS] {
        let p = dir(run_dir).join(name);
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
