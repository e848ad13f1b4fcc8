//! Fast CPU building blocks as candle custom ops (convolutions with fused bias and relus, the
//! nearest-code search, ActNorm + LeakyReLU, the stage-2 transformer's linear, LayerNorm,
//! GELU, attention and cross-entropy), with candle's own ops as the fallback on other devices
//! (and with `VQLAB_REFERENCE_OPS=1`).

pub mod conv;
pub mod dense;
pub mod kernels;
pub mod transpose;
pub mod vecmath;
pub mod winograd;

#[cfg(test)]
mod testing;

pub use conv::{conv2d, conv2d_known, conv2d_using, conv_transpose2d, Fuse};

/// softplus(x) = ln(1 + eˣ) = max(x, 0) + ln(1 + e^{−|x|}), stable for large |x|.
pub fn softplus(x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
    x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?
}

/// Keep freed memory in the process for the next step instead of handing it back to the
/// kernel. A training step allocates and frees the same set of tensors (up to tens of MiB
/// each) every time; with glibc's defaults each large one is a fresh mmap whose pages fault in
/// and are zeroed by the kernel on first touch, which costs more than the kernels writing them.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before any other thread runs.
    unsafe {
        // 32 MiB is the largest threshold glibc accepts; larger requests still get an mmap.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// Unless the user set it, run candle's own elementwise CPU ops on the calling thread
/// (`CANDLE_NUM_THREADS=1`). The heavy work of a step is vqlab's ops, on rayon's pool; candle's
/// separate pool would add a worker that spins for a while after each of its ops, taking a
/// core from them (about 5% of the benchmark step, 8% at 32×32×3). Call before any thread
/// starts.
pub fn tune_threads() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

pub mod act;
pub mod nearest;
