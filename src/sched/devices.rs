//! Devices and slots: which GPUs a sweep may use, how many runs go on each, and how many CPU
//! threads each run gets so that concurrent runs do not oversubscribe the cores.
//!
//! GPUs are discovered with `nvidia-smi` (present wherever the NVIDIA driver is), restricted
//! to `CUDA_VISIBLE_DEVICES` when it is set and to `hardware.gpus`. A binary built without the
//! `cuda` feature cannot train on them: it warns and uses CPU slots.
//!
//! Packing: `hardware.runs_per_gpu = N` puts up to N runs on each GPU; `"auto"` packs runs by
//! memory: each run's demand (its measured peak from an earlier attempt, else the estimate
//! `describe` prints) against 90% of each GPU's memory, the rest left as headroom. A run
//! that failed out of memory is retried alone on a GPU. [`SlotPool`] does the bookkeeping
//! for both.
//!
//! Test hooks: `VQLAB_FAKE_GPUS=N` makes the scheduler see N GPUs (indices 0..N) as if built
//! with CUDA, so the GPU fan-out is exercised on machines without one (the workers still
//! train on whatever device they can open, the CPU there); `VQLAB_FAKE_GPU_MEMORY_MIB` gives
//! them that much memory each.

use crate::config::{DeviceKind, GpuSelection, HardwareConfig, RunsPerGpu};

pub const FAKE_GPUS_ENV: &str = "VQLAB_FAKE_GPUS";
pub const FAKE_GPU_MEMORY_ENV: &str = "VQLAB_FAKE_GPU_MEMORY_MIB";

/// The share of a GPU's memory that `runs_per_gpu = "auto"` fills; the rest is headroom for
/// the CUDA context, allocator fragmentation and estimates that come out low.
pub const MEMORY_BUDGET: f64 = 0.9;

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
    pub pool: SlotPool,
    /// How many runs can train at once with these demands (what the threads are split by).
    pub concurrency: usize,
    pub threads_per_run: usize,
    /// What was found, for the log.
    pub description: String,
    pub warnings: Vec<String>,
}

/// One GPU a sweep may use: its physical index and total memory (MiB; 0 = unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gpu {
    pub index: u32,
    pub memory_mib: u64,
}

/// GPUs and their memory as `nvidia-smi` lists them (empty when it is missing or fails).
fn nvidia_smi_gpus() -> Vec<Gpu> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=index,memory.total", "--format=csv,noheader,nounits"])
        .stderr(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => parse_gpu_list(&String::from_utf8_lossy(&o.stdout)),
        _ => Vec::new(),
    }
}

/// `index, memory.total` lines (MiB); a memory field that is not a number counts as unknown.
fn parse_gpu_list(text: &str) -> Vec<Gpu> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.split(',').map(str::trim);
            let index = parts.next()?.parse().ok()?;
            let memory_mib = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
            Some(Gpu { index, memory_mib })
        })
        .collect()
}

/// Parse `CUDA_VISIBLE_DEVICES` (integer indices; anything else — UUIDs — is kept as "all").
fn visible_filter(value: Option<String>) -> Option<Vec<u32>> {
    let v = value?;
    let parts: Vec<&str> = v.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    let parsed: Vec<u32> = parts.iter().filter_map(|s| s.parse().ok()).collect();
    (parsed.len() == parts.len()).then_some(parsed)
}

/// The GPUs a sweep may use: discovered (or faked), then filtered.
pub fn gpus(hw: &HardwareConfig, warnings: &mut Vec<String>) -> Vec<Gpu> {
    let (found, usable) = match std::env::var(FAKE_GPUS_ENV).ok().and_then(|n| n.parse::<u32>().ok()) {
        Some(n) => {
            let memory_mib = std::env::var(FAKE_GPU_MEMORY_ENV).ok().and_then(|m| m.parse().ok()).unwrap_or(0);
            ((0..n).map(|index| Gpu { index, memory_mib }).collect::<Vec<_>>(), true)
        }
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
        list.retain(|g| visible.contains(&g.index));
    }
    if let GpuSelection::List(wanted) = &hw.gpus {
        list.retain(|g| wanted.contains(&g.index));
    }
    list
}

/// What one run asks of a slot: memory (MiB, for packing by memory) and whether it must have
/// its GPU to itself (it failed out of memory beside other runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    pub memory_mib: u64,
    pub alone: bool,
}

/// One device of a pool: a GPU or the CPU, its capacity in the pool's unit (MiB when packing
/// by memory, runs otherwise) and what each busy lane holds. A run that must be alone, or
/// needs more than the capacity, is booked at the whole capacity, so nothing joins it.
#[derive(Debug, Clone)]
struct PoolDevice {
    gpu: Option<u32>,
    capacity: u64,
    /// Lane i holds `Some(units)` while a run is on it.
    lanes: Vec<Option<u64>>,
}

impl PoolDevice {
    fn used(&self) -> u64 {
        self.lanes.iter().flatten().sum()
    }
}

/// Which slots are free, as runs start and end: by memory (`runs_per_gpu = "auto"`) or by
/// count. A run goes to the device with the most room left (so the first runs spread over
/// the GPUs); one that needs more than a device's budget, or has to be alone, gets an empty
/// device to itself.
#[derive(Debug, Clone)]
pub struct SlotPool {
    devices: Vec<PoolDevice>,
    by_memory: bool,
    max_running: usize,
}

impl SlotPool {
    /// The slot for a run with this demand, if one is free now.
    pub fn acquire(&mut self, demand: Demand) -> Option<Slot> {
        if self.running() >= self.max_running {
            return None;
        }
        let units = if self.by_memory { demand.memory_mib.max(1) } else { 1 };
        // The units a run holds on a device: all of them when it must be alone there.
        let booked = |dev: &PoolDevice| {
            if (demand.alone && dev.gpu.is_some()) || units > dev.capacity {
                dev.capacity
            } else {
                units
            }
        };
        let device = self
            .devices
            .iter_mut()
            .enumerate()
            .filter(|(_, dev)| dev.used() + booked(dev) <= dev.capacity)
            .max_by_key(|(i, dev)| (dev.capacity.saturating_sub(dev.used()), std::cmp::Reverse(*i)))
            .map(|(_, dev)| dev)?;
        let units = booked(device);
        let lane = match device.lanes.iter().position(Option::is_none) {
            Some(l) => l,
            None => {
                device.lanes.push(None);
                device.lanes.len() - 1
            }
        };
        device.lanes[lane] = Some(units);
        Some(match device.gpu {
            Some(index) => Slot::Gpu { index, lane: lane as u32 },
            None => Slot::Cpu { lane: lane as u32 },
        })
    }

    /// Give a slot back when its run ends.
    pub fn release(&mut self, slot: &Slot) {
        let (gpu, lane) = match slot {
            Slot::Gpu { index, lane } => (Some(*index), *lane),
            Slot::Cpu { lane } => (None, *lane),
        };
        if let Some(dev) = self.devices.iter_mut().find(|d| d.gpu == gpu) {
            if let Some(l) = dev.lanes.get_mut(lane as usize) {
                *l = None;
            }
        }
    }

    pub fn running(&self) -> usize {
        self.devices.iter().map(|d| d.lanes.iter().flatten().count()).sum()
    }

    /// Other runs on the slot's GPU right now (0 on the CPU).
    pub fn sharing(&self, slot: &Slot) -> usize {
        match slot {
            Slot::Gpu { index, .. } => {
                let here = self.devices.iter().find(|d| d.gpu == Some(*index));
                here.map_or(0, |d| d.lanes.iter().flatten().count()).saturating_sub(1)
            }
            Slot::Cpu { .. } => 0,
        }
    }
}

/// Slots for a sweep whose runs to train have these demands: GPUs × runs_per_gpu, GPUs by
/// memory, or cpu_slots; at most `max_parallel` runs at once (0 = no cap) and never more than
/// the runs.
pub fn plan(hw: &HardwareConfig, demands: &[Demand], max_parallel: usize) -> Plan {
    let mut warnings = Vec::new();
    let gpus = if hw.device == DeviceKind::Cpu { Vec::new() } else { gpus(hw, &mut warnings) };
    let runs = demands.len().max(1);
    let cap = if max_parallel > 0 { max_parallel.min(runs) } else { runs };
    let pool = pool_for(&gpus, hw, cap, &mut warnings);
    // How many of these runs fit at once: fill a copy of the pool with them.
    let mut trial = pool.clone();
    let concurrency = demands.iter().filter(|d| trial.acquire(**d).is_some()).count().max(1);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let threads_per_run =
        if hw.threads_per_run > 0 { hw.threads_per_run as usize } else { (cores / concurrency).max(1) };
    let description = if gpus.is_empty() {
        format!("{concurrency} CPU slot(s), {threads_per_run} thread(s) per run on {cores} core(s)")
    } else if pool.by_memory {
        let total: Vec<String> = gpus.iter().map(|g| format!("{} ({} MiB)", g.index, g.memory_mib)).collect();
        format!(
            "GPU(s) {} packed by memory ({:.0}% of each; {concurrency} of these runs fit at once), {threads_per_run} CPU thread(s) per run",
            total.join(", "),
            MEMORY_BUDGET * 100.0
        )
    } else {
        format!(
            "{concurrency} slot(s) on GPU(s) {:?} ({} run(s) per GPU), {threads_per_run} CPU thread(s) per run",
            gpus.iter().map(|g| g.index).collect::<Vec<_>>(),
            pool.devices.first().map_or(1, |d| d.capacity)
        )
    };
    Plan { pool, concurrency, threads_per_run, description, warnings }
}

/// The slots of these GPUs (none = the CPU) under `hardware`'s packing rule.
fn pool_for(gpus: &[Gpu], hw: &HardwareConfig, max_running: usize, warnings: &mut Vec<String>) -> SlotPool {
    let mut by_memory = false;
    let devices: Vec<PoolDevice> = if gpus.is_empty() {
        vec![PoolDevice { gpu: None, capacity: hw.cpu_slots.max(1) as u64, lanes: Vec::new() }]
    } else {
        let per_gpu = match hw.runs_per_gpu {
            RunsPerGpu::Count(n) => n.max(1) as u64,
            RunsPerGpu::Auto(_) if gpus.iter().all(|g| g.memory_mib > 0) => {
                by_memory = true;
                0
            }
            RunsPerGpu::Auto(_) => {
                warnings
                    .push("hardware.runs_per_gpu = \"auto\" but the GPUs' memory is unknown: one run per GPU".into());
                1
            }
        };
        gpus.iter()
            .map(|g| PoolDevice {
                gpu: Some(g.index),
                capacity: if by_memory { (g.memory_mib as f64 * MEMORY_BUDGET) as u64 } else { per_gpu },
                lanes: Vec::new(),
            })
            .collect()
    };
    SlotPool { devices, by_memory, max_running }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hardware(runs_per_gpu: RunsPerGpu) -> HardwareConfig {
        HardwareConfig { runs_per_gpu, ..Default::default() }
    }

    fn ten_gib(n: u32) -> Vec<Gpu> {
        (0..n).map(|index| Gpu { index, memory_mib: 10 * 1024 }).collect()
    }

    const AUTO: RunsPerGpu = RunsPerGpu::Auto(crate::config::AutoKeyword::Auto);

    #[test]
    fn auto_packs_three_runs_of_3_gib_on_each_10_gib_gpu() {
        // Budget 0.9 · 10240 = 9216 MiB per GPU: three runs of 3072 MiB (9216) fit, a fourth not.
        let mut pool = pool_for(&ten_gib(2), &hardware(AUTO), 100, &mut Vec::new());
        let run = Demand { memory_mib: 3072, alone: false };
        let slots: Vec<Slot> = std::iter::from_fn(|| pool.acquire(run)).collect();
        let on = |g: u32| slots.iter().filter(|s| matches!(s, Slot::Gpu { index, .. } if *index == g)).count();
        assert_eq!((slots.len(), on(0), on(1)), (6, 3, 3));
        // The first runs spread over the GPUs before doubling up.
        assert_eq!(slots[0], Slot::Gpu { index: 0, lane: 0 });
        assert_eq!(slots[1], Slot::Gpu { index: 1, lane: 0 });
        // A freed slot is reused; a smaller run fits where a 3 GiB one does not.
        pool.release(&slots[2]);
        assert_eq!(pool.acquire(run), Some(slots[2].clone()));
        assert_eq!(pool.acquire(Demand { memory_mib: 1024, alone: false }), None, "0 MiB left on each");
    }

    #[test]
    fn a_run_that_ran_out_of_memory_gets_a_gpu_to_itself() {
        let mut pool = pool_for(&ten_gib(2), &hardware(AUTO), 100, &mut Vec::new());
        let small = Demand { memory_mib: 1024, alone: false };
        let alone = Demand { memory_mib: 1024, alone: true };
        let a = pool.acquire(small).unwrap();
        let b = pool.acquire(small).unwrap();
        assert_eq!(pool.acquire(alone), None, "both GPUs are busy");
        pool.release(&b);
        let c = pool.acquire(alone).unwrap();
        assert_eq!(c, b, "the emptied GPU");
        assert_eq!(pool.sharing(&c), 0);
        // Nothing else joins it while it runs; the other GPU still takes runs.
        for _ in 0..5 {
            let s = pool.acquire(small).unwrap();
            assert!(matches!((&s, &a), (Slot::Gpu { index: x, .. }, Slot::Gpu { index: y, .. }) if x == y), "{s:?}");
        }
        // A run estimated above a GPU's budget runs alone on an empty one.
        pool.release(&c);
        let big = pool.acquire(Demand { memory_mib: 20_000, alone: false }).unwrap();
        assert_eq!(big, c);
        assert_eq!(pool.acquire(small).map(|s| matches!(s, Slot::Gpu { index: 1, .. })), Some(false));
    }

    #[test]
    fn a_fixed_count_ignores_memory_and_auto_without_memory_falls_back_to_one() {
        let run = Demand { memory_mib: 50_000, alone: false };
        let mut pool = pool_for(&ten_gib(2), &hardware(RunsPerGpu::Count(2)), 100, &mut Vec::new());
        assert_eq!(std::iter::from_fn(|| pool.acquire(run)).count(), 4);
        let unknown = [Gpu { index: 0, memory_mib: 0 }];
        let mut warnings = Vec::new();
        let mut pool = pool_for(&unknown, &hardware(AUTO), 100, &mut warnings);
        assert_eq!(std::iter::from_fn(|| pool.acquire(run)).count(), 1);
        assert!(warnings[0].contains("memory is unknown"), "{warnings:?}");
        // max_running caps the pool whatever fits.
        let mut pool = pool_for(&ten_gib(2), &hardware(RunsPerGpu::Count(4)), 3, &mut Vec::new());
        assert_eq!(std::iter::from_fn(|| pool.acquire(run)).count(), 3);
    }

    #[test]
    fn nvidia_smi_lines_parse() {
        let gpus = parse_gpu_list("0, 143771\n1, [N/A]\n");
        assert_eq!(gpus, vec![Gpu { index: 0, memory_mib: 143_771 }, Gpu { index: 1, memory_mib: 0 }]);
    }

    #[test]
    fn visible_devices_parse() {
        assert_eq!(visible_filter(Some("0,2".into())), Some(vec![0, 2]));
        assert_eq!(visible_filter(Some("".into())), Some(vec![]));
        assert_eq!(visible_filter(Some("GPU-abc".into())), None);
        assert_eq!(visible_filter(None), None);
    }
}
