//! Fast CPU building blocks as candle custom ops (convolutions with fused bias and relus, the
//! nearest-code search, the latents' move to and from the quantizers' rows, ActNorm +
//! LeakyReLU, the stage-2 transformer's linear, LayerNorm, GELU, attention and
//! cross-entropy), with candle's own ops as the fallback on other devices (and with
//! `VQLAB_REFERENCE_OPS=1`).

pub mod conv;
pub mod dense;
pub mod kernels;
pub mod layout;
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

/// Unless the user set `CANDLE_NUM_THREADS`, run candle's parallel elementwise CPU ops (the
/// residual adds, the gradient sums, the loss arithmetic: everything candle computes between
/// vqlab's ops) on rayon's pool, where vqlab's ops run, and give candle's own pool no threads
/// (`CANDLE_NUM_THREADS=1`). A separate candle pool adds workers that spin for a while after
/// each of its ops, taking cores from vqlab's (about 5% of the benchmark step, 8% at
/// 32×32×3); without a pool those ops ran on the calling thread while the other cores waited
/// (about a sixth of the benchmark step on 2 cores). The switch is
/// `vendor/candle-core-rayon.patch`; each element is computed as before, so results keep
/// their bits. Call before any thread starts.
pub fn tune_threads() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
        candle_core::utils::set_elementwise_on_rayon(true);
    }
}

pub mod act;
pub mod nearest;

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    /// candle's parallel elementwise maps on rayon's pool (`tune_threads`,
    /// vendor/candle-core-rayon.patch) give every element what a plain loop gives it: for
    /// contiguous operands, a broadcast row, a transposed (strided) operand and a unary map,
    /// on 210,000 elements (past candle's 64 Ki threshold for splitting, 13 ranges of 16 Ki).
    #[test]
    fn candle_elementwise_maps_on_rayon_compute_every_element() -> candle_core::Result<()> {
        candle_core::utils::set_elementwise_on_rayon(true);
        let dev = Device::Cpu;
        let (r, c) = (300usize, 700usize);
        let a: Vec<f32> = (0..r * c).map(|i| ((i * 7919) % 1000) as f32 / 37.0 - 13.0).collect();
        let b: Vec<f32> = (0..r * c).map(|i| ((i * 104_729) % 997) as f32 / 11.0 - 40.0).collect();
        let row: Vec<f32> = (0..c).map(|j| j as f32 * 0.5 - 100.0).collect();
        let at = Tensor::from_vec(a.clone(), (r, c), &dev)?;
        let bt = Tensor::from_vec(b.clone(), (r, c), &dev)?;
        // b read as a (c, r) matrix and transposed: element (i, j) is b[j·r + i], stride r.
        let bt_t = Tensor::from_vec(b.clone(), (c, r), &dev)?.t()?;
        let rowt = Tensor::from_vec(row.clone(), (1, c), &dev)?;
        type Case<'a> = (Tensor, Box<dyn Fn(usize, usize) -> f32 + 'a>);
        let cases: [Case<'_>; 4] = [
            ((&at + &bt)?, Box::new(|i, j| a[i * c + j] + b[i * c + j])),
            (at.broadcast_sub(&rowt)?, Box::new(|i, j| a[i * c + j] - row[j])),
            ((&at * &bt_t)?, Box::new(|i, j| a[i * c + j] * b[j * r + i])),
            ((&at - &bt)?.relu()?, Box::new(|i, j| (a[i * c + j] - b[i * c + j]).max(0.0))),
        ];
        for (k, (t, want)) in cases.iter().enumerate() {
            let got = t.to_vec2::<f32>()?;
            for (i, row) in got.iter().enumerate() {
                for (j, v) in row.iter().enumerate() {
                    assert_eq!(v.to_bits(), want(i, j).to_bits(), "case {k}, element ({i}, {j})");
                }
            }
        }
        Ok(())
    }

    /// Broadcasts made contiguous (vendor/candle-core-broadcast.patch fills a broadcast of one
    /// value; the rest keep candle's strided copy): every element is the value it broadcasts,
    /// for a scalar, a size-1 dimension of stride 1 among stride-0 ones (how the mean's
    /// gradient of a (128, 1, 28, 28) batch is laid out), and a broadcast row and column.
    #[test]
    fn broadcasts_made_contiguous_hold_the_broadcast_values() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let s = Tensor::new(-2.75f32, &dev)?;
        let full = s.broadcast_as((300, 700))?.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(full.len(), 210_000);
        assert!(full.iter().all(|v| *v == -2.75), "scalar broadcast");
        // A value that does not start its storage (offset 3).
        let at3 = Tensor::new(&[1f32, 2., 3., 4., 5.], &dev)?.narrow(0, 3, 1)?;
        let at3 = at3.broadcast_as((300, 700))?.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        assert!(at3.iter().all(|v| *v == 4.0), "broadcast of the fourth element");
        let one = Tensor::new(&[[[[0.5f32]]]], &dev)?.broadcast_as((128, 1, 28, 28))?;
        let one = one.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        assert!(one.len() == 100_352 && one.iter().all(|v| *v == 0.5), "(1, 1, 1, 1) broadcast");
        let row: Vec<f32> = (0..7).map(|j| j as f32 - 3.0).collect();
        let rows = Tensor::from_vec(row.clone(), (1, 7), &dev)?.broadcast_as((5, 7))?.contiguous()?;
        let cols = Tensor::from_vec(row.clone(), (7, 1), &dev)?.broadcast_as((7, 5))?.contiguous()?;
        let (rows, cols) = (rows.to_vec2::<f32>()?, cols.to_vec2::<f32>()?);
        for i in 0..5 {
            for j in 0..7 {
                assert_eq!(rows[i][j], row[j], "row broadcast ({i}, {j})");
                assert_eq!(cols[j][i], row[j], "column broadcast ({j}, {i})");
            }
        }
        Ok(())
    }
}
