//! LeakyReLU with an optional per-channel affine before it — leaky((x + loc) · scale), the
//! ActNorm + LeakyReLU pair of the PatchGAN discriminator — as one CPU custom op with its
//! own backward pass. With candle's ops the pair is four tensors in the graph, and the
//! backward pass of `maximum` alone builds comparison masks of the full activation.

use candle_core::{bail, CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// leaky((x + loc) · scale) with x (N, C, H, W) and loc, scale (1, C, 1, 1); without the
/// affine, leaky(x). `slope` in [0, 1).
pub fn affine_leaky_relu(x: &Tensor, affine: Option<(&Tensor, &Tensor)>, slope: f64) -> Result<Tensor> {
    let fast = x.device().is_cpu() && x.dtype() == DType::F32 && !super::conv::reference_forced();
    if !fast {
        return affine_leaky_relu_reference(x, affine, slope);
    }
    let (loc, scale) = match affine {
        Some((l, s)) => (l.contiguous()?, s.contiguous()?),
        None => (Tensor::zeros(0, DType::F32, &Device::Cpu)?, Tensor::zeros(0, DType::F32, &Device::Cpu)?),
    };
    x.contiguous()?.apply_op3(&loc, &scale, AffineLeaky { slope: slope as f32 })
}

/// The same with candle's ops.
pub fn affine_leaky_relu_reference(x: &Tensor, affine: Option<(&Tensor, &Tensor)>, slope: f64) -> Result<Tensor> {
    let t = match affine {
        Some((loc, scale)) => x.broadcast_add(loc)?.broadcast_mul(scale)?,
        None => x.clone(),
    };
    t.maximum(&(&t * slope)?)
}

struct AffineLeaky {
    slope: f32,
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { bail!("affine leaky relu: f32 tensors only") };
    let Some((a, b)) = l.contiguous_offsets() else { bail!("affine leaky relu: contiguous tensors only") };
    Ok(&v[a..b])
}

/// (channels, pixels per plane) of x, checking loc and scale.
fn geometry(x: &[usize], loc: usize, scale: usize) -> Result<(usize, usize)> {
    let [_, c, h, w] = x else { bail!("affine leaky relu: expected a 4-D input, got {x:?}") };
    if loc != scale || (loc != 0 && loc != *c) {
        bail!("affine leaky relu: loc has {loc} and scale {scale} elements for {c} channels")
    }
    Ok((*c, h * w))
}

impl CustomOp3 for AffineLeaky {
    fn name(&self) -> &'static str {
        "vqlab-affine-leaky-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        crate::util::profile::time("ActNorm + LeakyReLU forward", || {
            let (x, loc, scale) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
            let (c, hw) = geometry(l1.dims(), loc.len(), scale.len())?;
            let mut y = vec![0.0f32; x.len()];
            let slope = self.slope;
            if hw > 0 {
                y.par_chunks_mut(hw).zip(x.par_chunks(hw)).enumerate().for_each(|(plane, (y, x))| {
                    let (l, s) = if loc.is_empty() { (0.0, 1.0) } else { (loc[plane % c], scale[plane % c]) };
                    for (y, x) in y.iter_mut().zip(x) {
                        let t = (x + l) * s;
                        *y = if t > 0.0 { t } else { t * slope };
                    }
                });
            }
            Ok((CpuStorage::F32(y), l1.shape().clone()))
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        loc: &Tensor,
        scale: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        crate::util::profile::time("ActNorm + LeakyReLU backward", || {
            let (x_c, dy_c) = (x.contiguous()?, dy.contiguous()?);
            let (xg, xl) = x_c.storage_and_layout();
            let (dg, dl) = dy_c.storage_and_layout();
            let (lg, ll) = loc.storage_and_layout();
            let (sg, sl) = scale.storage_and_layout();
            let (
                candle_core::Storage::Cpu(xs),
                candle_core::Storage::Cpu(ds),
                candle_core::Storage::Cpu(ls),
                candle_core::Storage::Cpu(ss),
            ) = (&*xg, &*dg, &*lg, &*sg)
            else {
                bail!("affine leaky relu backward: CPU tensors only")
            };
            let (xv, dv, lv, sv) = (f32_slice(xs, xl)?, f32_slice(ds, dl)?, f32_slice(ls, ll)?, f32_slice(ss, sl)?);
            let (c, hw) = geometry(x.dims(), lv.len(), sv.len())?;
            let slope = self.slope;
            let mut dx = vec![0.0f32; xv.len()];
            // Per plane: Σ dt (the loc gradient over scale) and Σ dt·(x + loc) (the scale
            // gradient), added up per channel in plane order (the same result on any thread count).
            let mut plane_sums = vec![(0.0f32, 0.0f32); xv.len().checked_div(hw).unwrap_or(0)];
            if hw > 0 {
                dx.par_chunks_mut(hw)
                    .zip(xv.par_chunks(hw).zip(dv.par_chunks(hw)))
                    .zip(plane_sums.par_iter_mut())
                    .enumerate()
                    .for_each(|(plane, ((dx, (x, dy)), sums))| {
                        let ch = plane % c;
                        let (l, s) = if lv.is_empty() { (0.0, 1.0) } else { (lv[ch], sv[ch]) };
                        let (mut sum_dt, mut sum_dtu) = (0.0f32, 0.0f32);
                        for ((dx, x), dy) in dx.iter_mut().zip(x).zip(dy) {
                            let u = x + l;
                            let dt = if u * s > 0.0 { *dy } else { dy * slope };
                            *dx = dt * s;
                            sum_dt += dt;
                            sum_dtu += dt * u;
                        }
                        *sums = (sum_dt, sum_dtu);
                    });
            }
            let mut sums = vec![0.0f64; 2 * c];
            for (plane, (a, b)) in plane_sums.iter().enumerate() {
                sums[plane % c] += *a as f64;
                sums[c + plane % c] += *b as f64;
            }
            let dev = Device::Cpu;
            let dx = if x.track_op() { Some(Tensor::from_vec(dx, x.shape(), &dev)?) } else { None };
            let (dloc, dscale) = if lv.is_empty() {
                (None, None)
            } else {
                let dloc: Vec<f32> = (0..c).map(|ch| (sums[ch] * sv[ch] as f64) as f32).collect();
                let dscale: Vec<f32> = (0..c).map(|ch| sums[c + ch] as f32).collect();
                (
                    loc.track_op().then(|| Tensor::from_vec(dloc, loc.shape(), &dev)).transpose()?,
                    scale.track_op().then(|| Tensor::from_vec(dscale, scale.shape(), &dev)).transpose()?,
                )
            };
            Ok((dx, dloc, dscale))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{rand_tensor, rel_err};
    use candle_core::Var;
    use rand::SeedableRng;

    #[test]
    fn matches_candle_forward_and_gradients() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for (dims, affine) in [([2, 3, 4, 5], true), ([3, 8, 7, 7], true), ([1, 1, 1, 1], true), ([4, 5, 3, 6], false)]
        {
            let x = Var::from_tensor(&rand_tensor(&mut rng, &dims, -1.0, 1.0)).unwrap();
            let c = dims[1];
            let loc = Var::from_tensor(&rand_tensor(&mut rng, &[1, c, 1, 1], -0.5, 0.5)).unwrap();
            let scale = Var::from_tensor(&rand_tensor(&mut rng, &[1, c, 1, 1], 0.2, 2.0)).unwrap();
            let r = rand_tensor(&mut rng, &dims, -1.0, 1.0);
            let aff = affine.then(|| (loc.as_tensor(), scale.as_tensor()));
            let results: Vec<Vec<Tensor>> = [affine_leaky_relu, affine_leaky_relu_reference]
                .iter()
                .map(|f| {
                    let y = f(x.as_tensor(), aff, 0.2).unwrap();
                    let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                    let mut v = vec![y, g.get(x.as_tensor()).unwrap().clone()];
                    if affine {
                        v.push(g.get(loc.as_tensor()).unwrap().clone());
                        v.push(g.get(scale.as_tensor()).unwrap().clone());
                    }
                    v
                })
                .collect();
            for (name, (a, b)) in ["y", "dx", "dloc", "dscale"].iter().zip(results[0].iter().zip(&results[1])) {
                let e = rel_err(a, b);
                assert!(e <= 1e-4, "{name}: relative error {e:e} for {dims:?} affine={affine}");
            }
        }
    }

    #[test]
    fn by_hand() {
        // x = (−2, 3), loc = 1, scale = 2: t = (−2, 8), y = (−0.4, 8); with L = Σ y:
        // dx = (0.2·2, 2), dloc = 0.4 + 2, dscale = 0.2·(−1) + 4.
        let x = Var::from_tensor(&Tensor::new(&[[[[-2f32, 3.]]]], &Device::Cpu).unwrap()).unwrap();
        let loc = Var::from_tensor(&Tensor::new(&[[[[1f32]]]], &Device::Cpu).unwrap()).unwrap();
        let scale = Var::from_tensor(&Tensor::new(&[[[[2f32]]]], &Device::Cpu).unwrap()).unwrap();
        let y = affine_leaky_relu(x.as_tensor(), Some((loc.as_tensor(), scale.as_tensor())), 0.2).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let close = |a: Vec<f32>, b: &[f32]| a.iter().zip(b).all(|(a, b)| (a - b).abs() < 1e-6);
        assert!(close(flat(&y), &[-0.4, 8.0]), "{:?}", flat(&y));
        let g = y.sum_all().unwrap().backward().unwrap();
        assert!(close(flat(g.get(x.as_tensor()).unwrap()), &[0.4, 2.0]));
        assert!(close(flat(g.get(loc.as_tensor()).unwrap()), &[2.4]));
        assert!(close(flat(g.get(scale.as_tensor()).unwrap()), &[3.8]));
    }
}
