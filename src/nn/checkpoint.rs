//! The checkpoint file format: one safetensors file of named tensors with, in its metadata,
//! a format tag, the step, free-form counters (optimizer step counts, …) and a SHA-256 of the
//! tensor data, checked on every read. Training checkpoints (`train::checkpoint`) and the
//! feature network's weights (`metrics::features`) are both written in it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context};
use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};

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
pub fn verify_bytes(path: &Path, bytes: &[u8]) -> anyhow::Result<HashMap<String, String>> {
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
