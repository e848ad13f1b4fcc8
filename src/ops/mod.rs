//! Fast CPU building blocks as candle custom ops (convolutions with fused bias and relus, an
//! in-place Adam update), with candle's own ops as the fallback on other devices.

pub mod conv;
pub mod kernels;

pub use conv::{conv2d, conv_transpose2d, Fuse};

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

pub mod act;
pub mod nearest;
