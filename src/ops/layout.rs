//! Latents between channel planes (B, C, H, W) and the rows the quantizers work on
//! (B·H·W, C), as one CPU custom op each way whose backward pass is the other.
//!
//! With candle's ops this is a permute made contiguous: a copy that gathers one value at a
//! time through a strided index, on the calling thread, and the permuted gradient that the
//! backward pass makes contiguous again the same way: four such copies of the latents a
//! step. Here each image is one register-transposing pass ([`super::transpose::pass`]), the
//! images spread over rayon's pool. The values are only moved, so the bits are the same.

use super::kernels;
use super::transpose::{pass, Post, TO_PIXELS, TO_PLANES};
use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

/// Latents (B, C, H, W) as rows (B·H·W, C): row b·H·W + y·W + x holds the C channels of
/// pixel (y, x) of image b.
pub fn planes_to_rows(z: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = z.dims4()?;
    if !fast(z) {
        return z.permute((0, 2, 3, 1))?.reshape((b * h * w, c));
    }
    z.contiguous()?.apply_op1(Relayout { to_rows: true, b, c, h, w })
}

/// Rows (B·H·W, C) back to latents (B, C, H, W): the inverse of [`planes_to_rows`].
pub fn rows_to_planes(rows: &Tensor, b: usize, h: usize, w: usize) -> Result<Tensor> {
    let (n, c) = rows.dims2()?;
    if n != b * h * w {
        bail!("rows to latents: {n} rows for {b} images of {h}×{w} pixels")
    }
    if !fast(rows) {
        return rows.reshape((b, h, w, c))?.permute((0, 3, 1, 2))?.contiguous();
    }
    rows.contiguous()?.apply_op1(Relayout { to_rows: false, b, c, h, w })
}

fn fast(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && !super::conv::reference_forced()
}

/// One direction of the move; the other is its backward pass.
#[derive(Clone, Copy)]
struct Relayout {
    to_rows: bool,
    b: usize,
    c: usize,
    h: usize,
    w: usize,
}

impl CustomOp1 for Relayout {
    fn name(&self) -> &'static str {
        if self.to_rows {
            "vqlab-latents-to-rows"
        } else {
            "vqlab-rows-to-latents"
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let pass_name = if self.to_rows { "latents to rows" } else { "rows to latents" };
        crate::util::profile::time(pass_name, || self.relayout(s, l))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let back = Relayout { to_rows: !self.to_rows, ..*self };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&back)?))
    }
}

impl Relayout {
    fn relayout(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(v) = s else { bail!("{}: f32 tensors only", self.name()) };
        let Some((a, e)) = l.contiguous_offsets() else { bail!("{}: contiguous tensors only", self.name()) };
        let (x, c, hw) = (&v[a..e], self.c, self.h * self.w);
        let img = c * hw;
        if x.len() != self.b * img {
            bail!("{}: {} values for {} images of {c} × {hw}", self.name(), x.len(), self.b)
        }
        let row = move |p: usize| p * c;
        // SAFETY: each image's chunk is zero-filled, then written by the pass.
        let y = unsafe {
            kernels::par_filled(x.len(), img, |i, chunk| {
                let (x, y) = (&x[i * img..][..img], kernels::zeroed(chunk));
                if self.to_rows {
                    pass::<TO_PIXELS>(x, c, hw, Post::default(), row, y)
                } else {
                    pass::<TO_PLANES>(x, c, hw, Post::default(), row, y)
                }
            })
        };
        let shape = if self.to_rows { Shape::from((self.b * hw, c)) } else { Shape::from((self.b, c, self.h, self.w)) };
        Ok((CpuStorage::F32(y), shape))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Distinct values, with a −0 and a NaN among them so that a pass that computed instead
    /// of moving would show.
    fn values(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| match i % 97 {
                5 => -0.0,
                11 => f32::NAN,
                _ => i as f32 * 0.25 - 100.0,
            })
            .collect()
    }

    /// Both directions and their gradients, against the index arithmetic written out: row
    /// b·H·W + y·W + x, column c holds z[b, c, y, x]. Shapes cover the vector blocks (8 × 8)
    /// and the scalar edges (fewer than 8 channels or pixels, and the remainders).
    #[test]
    fn rows_and_planes_move_every_value_and_gradient() -> Result<()> {
        let dev = Device::Cpu;
        for (b, c, h, w) in [(1, 1, 1, 1), (2, 3, 2, 3), (3, 64, 7, 7), (2, 70, 5, 4), (1, 9, 3, 3)] {
            let n = b * c * h * w;
            let zv = values(n);
            let z = Var::from_vec(zv.clone(), (b, c, h, w), &dev)?;
            let rows = planes_to_rows(z.as_tensor())?;
            assert_eq!(rows.dims(), [b * h * w, c]);
            let got = rows.flatten_all()?.to_vec1::<f32>()?;
            let at = |bi: usize, ci: usize, p: usize| zv[(bi * c + ci) * h * w + p];
            for bi in 0..b {
                for p in 0..h * w {
                    for ci in 0..c {
                        let r = bi * h * w + p;
                        assert_eq!(
                            got[r * c + ci].to_bits(),
                            at(bi, ci, p).to_bits(),
                            "{b}×{c}×{h}×{w} row {r} col {ci}"
                        );
                    }
                }
            }
            let back = rows_to_planes(&rows, b, h, w)?;
            assert_eq!(back.dims(), [b, c, h, w]);
            let back_v = back.flatten_all()?.to_vec1::<f32>()?;
            assert!(back_v.iter().zip(&zv).all(|(a, e)| a.to_bits() == e.to_bits()), "round trip {b}×{c}×{h}×{w}");
            // d/dz Σ rows_to_planes(planes_to_rows(z)) ⊙ G = G, through both ops' backward passes.
            let g: Vec<f32> = (0..n).map(|i| (i % 13) as f32 - 6.0).collect();
            let gt = Tensor::from_vec(g.clone(), (b, c, h, w), &dev)?;
            let grads = (back * &gt)?.sum_all()?.backward()?;
            let dz = grads.get(z.as_tensor()).expect("gradient of z").flatten_all()?.to_vec1::<f32>()?;
            assert_eq!(dz, g, "gradient {b}×{c}×{h}×{w}");
            // d/dz Σ planes_to_rows(z) ⊙ R = R read back into planes.
            let rv: Vec<f32> = (0..n).map(|i| (i % 7) as f32 + 0.5).collect();
            let rt = Tensor::from_vec(rv.clone(), (b * h * w, c), &dev)?;
            let grads = (planes_to_rows(z.as_tensor())? * &rt)?.sum_all()?.backward()?;
            let dz = grads.get(z.as_tensor()).expect("gradient of z").flatten_all()?.to_vec1::<f32>()?;
            for bi in 0..b {
                for ci in 0..c {
                    for p in 0..h * w {
                        let want = rv[(bi * h * w + p) * c + ci];
                        assert_eq!(
                            dz[(bi * c + ci) * h * w + p],
                            want,
                            "{b}×{c}×{h}×{w} gradient at ({bi}, {ci}, {p})"
                        );
                    }
                }
            }
        }
        Ok(())
    }
}
