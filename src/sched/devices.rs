//! Devices and slots: which GPUs a sweep may use, how many runs go on each, and how many CPU
//! threads each run gets so that concurrent runs do not oversubscribe the cores.
//!
//! GPUs are discovered with `nvidia-smi` (present wherever the NVIDIA driver is), restricted
//! to `CUDA_VISIBLE_DEVICES` when it is set and to `hardware.gpus`. A binary built without the
//! `cuda` feature cannot train on them: it warns and uses CPU slots.
//!
//! Test hook: `VQLAB_FAKE_GPUS=N` makes the scheduler see N GPUs (indices 0..N) as if built
//! with CUDA, so the GPU fan-out is exercised on machines without one. The workers still
//! train on whatever device they can open (the CPU there).

use crate::config::{DeviceKind, GpuSelection, HardwareConfig};

pub const FAKE_GPUS_ENV: &str = "VQLAB_FAKE_GPUS";

/// One place a run can train: a GPU (its physical index) or a CPU slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    Gpu { index: u32, lane: u32 },
    Cpu { lane: u32 },
}

impl Slot {
    pub fn label(&self) -> String {
        match self {
            Slot::Gpu { index, lane } => format!("gpu{index}.{lane}"),
            Slot::Cpu { lane } => format!("cpu.{lane}"),
        }
    }

    /// `CUDA_VISIBLE_DEVICES` for a worker on this slot: exactly one index, or none on CPU.
    pub fn cuda_visible_devices(&self) -> String {
        match self {
            Slot::Gpu { index, .. } => index.to_string(),
            Slot::Cpu { .. } => String::new(),
        }
    }
}

/// The slots of a sweep and the threads each run gets.
#[derive(Debug, Clone)]
pub struct Plan {
    pub slots: Vec<Slot>,
    pub threads_per_run: usize,
    /// What was found, for the log.
    pub description: String,
    pub warnings: Vec<String>,
}

/// GPU indices `nvidia-smi` lists (empty when it is missing or fails).
fn nvidia_smi_gpus() -> Vec<u32> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=index", "--format=csv,noheader"])
        .stderr(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => {
            String::from_utf8_lossy(&o.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect()
        }
        _ => Vec::new(),
    }
}

/// Parse `CUDA_VISIBLE_DEVICES` (integer indices; anything else — UUIDs — is kept as "all").
fn visible_filter(value: Option<String>) -> Option<Vec<u32>> {
    let v = value?;
    let parts: Vec<&str> = v.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    let parsed: Vec<u32> = parts.iter().filter_map(|s| s.parse().ok()).collect();
    (parsed.len() == parts.len()).then_some(parsed)
}

/// The GPUs a sweep may use: discovered (or faked), then filtered.
pub fn gpus(hw: &HardwareConfig, warnings: &mut Vec<String>) -> Vec<u32> {
    let (found, usable) = match std::env::var(FAKE_GPUS_ENV).ok().and_then(|n| n.parse::<u32>().ok()) {
        Some(n) => ((0..n).collect::<Vec<_>>(), true),
        None => {
            let found = nvidia_smi_gpus();
            let usable = cfg!(feature = "cuda");
            if !found.is_empty() && !usable && hw.device != DeviceKind::Cpu {
                warnings.push(format!(
                    "nvidia-smi sees {} GPU(s) but this vqlab was built without CUDA: training on CPU \
                     (rebuild with `cargo build --release --features cuda`)",
                    found.len()
                ));
            }
            (found, usable)
        }
    };
    if !usable {
        return Vec::new();
    }
    let mut list = found;
    if let Some(visible) = visible_filter(std::env::var("CUDA_VISIBLE_DEVICES").ok()) {
        list.retain(|g| visible.contains(g));
    }
    if let GpuSelection::List(wanted) = &hw.gpus {
        list.retain(|g| wanted.contains(g));
    }
    list
}

/// Slots for a sweep of `runs` runs: GPUs × runs_per_gpu, or cpu_slots; at most
/// `max_parallel` (0 = no cap) and never more than the runs.
pub fn plan(hw: &HardwareConfig, runs: usize, max_parallel: usize) -> Plan {
    let mut warnings = Vec::new();
    let gpus = if hw.device == DeviceKind::Cpu { Vec::new() } else { gpus(hw, &mut warnings) };
    let mut slots: Vec<Slot> = if gpus.is_empty() {
        (0..hw.cpu_slots.max(1)).map(|lane| Slot::Cpu { lane }).collect()
    } else {
        // Lane-major order: the first runs spread over the GPUs before doubling up.
        (0..hw.runs_per_gpu.max(1)).flat_map(|lane| gpus.iter().map(move |&index| Slot::Gpu { index, lane })).collect()
    };
    if max_parallel > 0 {
        slots.truncate(max_parallel);
    }
    slots.truncate(runs.max(1));
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let threads_per_run =
        if hw.threads_per_run > 0 { hw.threads_per_run as usize } else { (cores / slots.len().max(1)).max(1) };
    let description = if gpus.is_empty() {
        format!("{} CPU slot(s), {threads_per_run} thread(s) per run on {cores} core(s)", slots.len())
    } else {
        format!(
            "{} slot(s) on GPU(s) {:?} ({} run(s) per GPU), {threads_per_run} CPU thread(s) per run",
            slots.len(),
            gpus,
            hw.runs_per_gpu.max(1)
        )
    };
    Plan { slots, threads_per_run, description, warnings }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_devices_parse() {
        assert_eq!(visible_filter(Some("0,2".into())), Some(vec![0, 2]));
        assert_eq!(visible_filter(Some("".into())), Some(vec![]));
        assert_eq!(visible_filter(Some("GPU-abc".into())), None);
        assert_eq!(visible_filter(None), None);
    }
}
