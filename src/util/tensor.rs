//! Borrowing the f32 data of CPU tensors, for the fast CPU ops and the fused optimizer.

use candle_core::{bail, CpuStorage, Layout, Result, Storage, Tensor};

/// The f32 data of a contiguous CPU storage; `what` names the caller in errors.
pub fn cpu_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { bail!("{what}: f32 tensors only") };
    let Some((a, b)) = l.contiguous_offsets() else { bail!("{what}: contiguous tensors only") };
    Ok(&v[a..b])
}

/// Borrow the f32 data of CPU tensors (made contiguous first) for the length of `f`.
pub fn with_slices<const N: usize, R>(ts: [&Tensor; N], f: impl FnOnce([&[f32]; N]) -> Result<R>) -> Result<R> {
    let owned = ts.iter().map(|t| t.contiguous()).collect::<Result<Vec<_>>>()?;
    let guards: Vec<_> = owned.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices: [&[f32]; N] = [&[]; N];
    for (i, (g, l)) in guards.iter().enumerate() {
        let Storage::Cpu(s) = &**g else { bail!("vqlab CPU op: CPU tensors only") };
        slices[i] = cpu_f32(s, l, "vqlab CPU op")?;
    }
    f(slices)
}
