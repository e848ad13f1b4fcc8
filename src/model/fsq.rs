//! Finite scalar quantization (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made
//! Simple"): project the latent to d = len(levels) channels, bound channel i to L_i values
//! with `tanh(z + shift)·half_l − offset`, round with a straight-through estimator, rescale
//! to [−1, 1] and project back. There is no codebook and no auxiliary loss; the implicit
//! codebook is the grid of Π L_i level tuples, and a code's index is the tuple read as a
//! mixed-radix number (the first channel varies fastest).
//!
//! The bound follows the paper's appendix A.1 as lucidrains' vector-quantize-pytorch corrects
//! it: the shift is `atanh(offset / half_l)` (the paper's listing writes `tan`), so that a zero
//! latent lands exactly on a level for even L, and half_l = (L − 1)(1 + ε)/2 (the listing has
//! 1 − ε, with which offset / half_l > 1 and atanh is undefined for L = 2). The extreme levels
//! stay reachable: the bound spans (−half_l − offset, half_l − offset), and rounding never
//! leaves the L levels since ε(L − 1)/2 < ½.

use candle_core::{DType, Result, Tensor};

use super::layers::{latent_rows, rows_to_latents, CodeProjection};
use super::params::ParamStore;
pub use crate::config::{fsq_levels_of as levels_of, fsq_table_levels as table_levels, FSQ_LEVEL_TABLE as LEVEL_TABLE};

/// The ε of the bound (vector-quantize-pytorch's 1e-3, on the `1 + ε` side).
const EPS: f64 = 1e-3;

/// Per-channel constants of the bound: (half_l, offset, shift, half_width).
pub fn bound_constants(levels: &[u32]) -> Vec<(f64, f64, f64, f64)> {
    levels
        .iter()
        .map(|&levels| {
            let l = f64::from(levels);
            let half_l = (l - 1.0) * (1.0 + EPS) / 2.0;
            let offset = if levels.is_multiple_of(2) { 0.5 } else { 0.0 };
            let shift = (offset / half_l).atanh();
            let half_width = f64::from(levels / 2);
            (half_l, offset, shift, half_width)
        })
        .collect()
}

#[derive(Debug, Clone)]
pub struct Fsq {
    pub levels: Vec<u32>,
    /// Π levels: the size of the implicit codebook.
    pub codes: usize,
    /// Projections from the latent's channels to len(levels) and back (none when equal).
    proj: Option<CodeProjection>,
    half_l: Tensor,
    offset: Tensor,
    shift: Tensor,
    half_width: Tensor,
    /// Mixed-radix place values (d, 1): 1, L_0, L_0·L_1, …
    basis: Tensor,
}

/// One FSQ pass: the straight-through output, each latent vector's code, and the rounded
/// levels (N, d) the code reads.
pub struct FsqOutput {
    pub z_q: Tensor,
    pub indices: Tensor,
    pub levels: Tensor,
}

impl Fsq {
    pub fn new(ps: &mut ParamStore, embed_dim: usize, levels: &[u32]) -> Result<Self> {
        let d = levels.len();
        let dev = ps.device().clone();
        let proj = if d == embed_dim { None } else { Some(CodeProjection::new(ps, "quantizer.", embed_dim, d)?) };
        let consts = bound_constants(levels);
        let row = |f: fn(&(f64, f64, f64, f64)) -> f64| -> Result<Tensor> {
            Tensor::from_vec(consts.iter().map(|c| f(c) as f32).collect::<Vec<f32>>(), (1, d), &dev)
        };
        let mut place = 1f32;
        let mut basis = Vec::with_capacity(d);
        for &l in levels {
            basis.push(place);
            place *= l as f32;
        }
        Ok(Fsq {
            levels: levels.to_vec(),
            codes: levels.iter().map(|&l| l as usize).product(),
            proj,
            half_l: row(|c| c.0)?,
            offset: row(|c| c.1)?,
            shift: row(|c| c.2)?,
            half_width: row(|c| c.3)?,
            basis: Tensor::from_vec(basis, (d, 1), &dev)?,
        })
    }

    /// Bound rows (N, d) to each channel's range: tanh(z + shift)·half_l − offset.
    pub fn bound(&self, flat: &Tensor) -> Result<Tensor> {
        flat.broadcast_add(&self.shift)?.tanh()?.broadcast_mul(&self.half_l)?.broadcast_sub(&self.offset)
    }

    /// The projections between the latent's channels and the code channels (none when equal).
    pub fn projection(&self) -> Option<&CodeProjection> {
        self.proj.as_ref()
    }

    /// Quantize encoder output (B, D, H, W).
    pub fn forward(&self, z: &Tensor) -> Result<FsqOutput> {
        let flat = latent_rows(z, self.proj.as_ref())?;
        let bounded = self.bound(&flat)?;
        let rounded = bounded.detach().round()?;
        // Straight through: the rounded value forward, the bound's gradient backward.
        let st = (&bounded + (&rounded - &bounded)?.detach())?;
        let normalized = st.broadcast_div(&self.half_width)?;
        let digits = rounded.broadcast_add(&self.half_width)?;
        let indices = digits.matmul(&self.basis)?.squeeze(1)?.round()?.to_dtype(DType::U32)?;
        let z_q = rows_to_latents(&normalized, z, self.proj.as_ref())?;
        Ok(FsqOutput { z_q, indices, levels: rounded })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_level_table_is_the_papers() {
        // FSQ paper, Table 1; the implicit codebook sizes are the products.
        assert_eq!(table_levels(256), Some(&[8u32, 6, 5][..]));
        assert_eq!(table_levels(4096), Some(&[7u32, 5, 5, 5, 5][..]));
        assert_eq!(table_levels(512), None);
        let sizes: Vec<u32> = LEVEL_TABLE.iter().map(|(_, l)| l.iter().product()).collect();
        assert_eq!(sizes, [240, 1000, 4375, 15360, 64000]);
    }

    #[test]
    fn bound_constants_by_hand() {
        // L = 5: half_l = 4·1.001/2 = 2.002, no offset; L = 8: half_l = 7·1.001/2 = 3.5035,
        // offset 0.5, shift = atanh(0.5/3.5035) = 0.14369…; L = 2: half_l = 0.5005,
        // shift = atanh(0.5/0.5005) = atanh(0.999000999) = 3.8007…
        let c = bound_constants(&[5, 8, 2]);
        assert!((c[0].0 - 2.002).abs() < 1e-12 && c[0].1 == 0.0 && c[0].2 == 0.0 && c[0].3 == 2.0);
        assert!((c[1].0 - 3.5035).abs() < 1e-12 && c[1].1 == 0.5 && c[1].3 == 4.0);
        assert!((c[1].2 - (0.5f64 / 3.5035).atanh()).abs() < 1e-15 && (c[1].2 - 0.143_693).abs() < 1e-5, "{}", c[1].2);
        assert!(c[2].2.is_finite() && (c[2].2 - 3.800_7).abs() < 1e-3, "{}", c[2].2);
    }

    #[test]
    fn zero_lands_on_a_level_and_codes_cover_the_grid() {
        let mut ps = ParamStore::new(&Device::Cpu, 0);
        let fsq = Fsq::new(&mut ps, 2, &[8, 5]).unwrap();
        assert_eq!(fsq.codes, 40);
        // (1, 2, 1, 1): a zero latent.
        let z = Tensor::zeros((1, 2, 1, 1), DType::F32, &Device::Cpu).unwrap();
        let out = fsq.forward(&z).unwrap();
        let levels = out.levels.to_vec2::<f32>().unwrap();
        assert_eq!(levels, [[0.0, 0.0]]);
        // Digits (0 + 4, 0 + 2) → 4 + 8·2 = 20.
        assert_eq!(out.indices.to_vec1::<u32>().unwrap(), [20]);
        // Large latents reach the extreme levels: −4 and 3 for L = 8, −2 and 2 for L = 5, the
        // first and the last code.
        let z = Tensor::from_vec(vec![-50f32, -50.0, 50.0, 50.0], (2, 2, 1, 1), &Device::Cpu).unwrap();
        let out = fsq.forward(&z).unwrap();
        assert_eq!(out.levels.to_vec2::<f32>().unwrap(), [[-4.0, -2.0], [3.0, 2.0]]);
        assert_eq!(out.indices.to_vec1::<u32>().unwrap(), [0, 39]);
        // z_q is the levels over half_width: 3/4 and 2/2.
        let zq = out.z_q.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(zq, [-1.0, -1.0, 0.75, 1.0]);
    }
}
