//! Adam (no weight decay), with its moments owned here so checkpoints can save and restore
//! them exactly (candle's AdamW keeps its state private).

use std::collections::BTreeMap;

use candle_core::{DType, Result, Tensor, Var};
use rayon::prelude::*;

pub struct Adam {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Number of updates done.
    pub t: u64,
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

impl Adam {
    pub fn new(vars: Vec<(String, Var)>, lr: f64, betas: [f64; 2]) -> Result<Self> {
        let m = vars.iter().map(|(_, v)| v.as_tensor().zeros_like()).collect::<Result<Vec<_>>>()?;
        let v = vars.iter().map(|(_, v)| v.as_tensor().zeros_like()).collect::<Result<Vec<_>>>()?;
        Ok(Adam { lr, beta1: betas[0], beta2: betas[1], eps: 1e-8, t: 0, vars, m, v })
    }

    /// One update. `grad(i, name, var)` gives the gradient of variable `i` (None = no gradient
    /// this step: the variable and its moments stay as they are, as in PyTorch).
    pub fn step(&mut self, grad: impl FnMut(usize, &str, &Var) -> Result<Option<Tensor>>) -> Result<()> {
        crate::util::profile::time("Adam", || self.step_untimed(grad))
    }

    fn step_untimed(&mut self, mut grad: impl FnMut(usize, &str, &Var) -> Result<Option<Tensor>>) -> Result<()> {
        self.t += 1;
        let bc1 = 1.0 - self.beta1.powi(self.t as i32);
        let bc2 = 1.0 - self.beta2.powi(self.t as i32);
        let step_size = self.lr / bc1;
        for i in 0..self.vars.len() {
            let (name, var) = &self.vars[i];
            // candle's gradients of variables still reference the forward graph; moments built
            // from them would chain every step's graph to the next (an unbounded leak).
            let Some(g) = grad(i, name, var)?.map(|g| g.detach()) else {
                continue;
            };
            if let Some((m, v)) = self.fused_update(i, &g, bc2, step_size)? {
                self.m[i] = m;
                self.v[i] = v;
                continue;
            }
            let m = ((&self.m[i] * self.beta1)? + (&g * (1.0 - self.beta1))?)?;
            let v = ((&self.v[i] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            // PyTorch: θ −= lr/bc1 · m / (√v / √bc2 + ε).
            let denom = ((v.sqrt()? / bc2.sqrt())? + self.eps)?;
            let update = ((&m / denom)? * step_size)?;
            var.set(&(var.as_tensor() - update)?)?;
            self.m[i] = m.detach();
            self.v[i] = v.detach();
        }
        Ok(())
    }

    /// The update of variable `i` as one pass over its elements on rayon's pool, for f32 CPU
    /// tensors (None otherwise: the caller takes candle's ops). It rounds exactly as the
    /// sequence of candle ops in `step` does (each scalar op is candle's affine x·a + b in
    /// f32), so the two give bit-identical parameters and moments; it only skips the eleven
    /// intermediate tensors. Returns the new moments; the variable is set.
    fn fused_update(&self, i: usize, g: &Tensor, bc2: f64, step_size: f64) -> Result<Option<(Tensor, Tensor)>> {
        let var = &self.vars[i].1;
        let (m, v) = (&self.m[i], &self.v[i]);
        let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
        if ![var.as_tensor(), g, m, v].into_iter().all(cpu_f32) || g.shape() != var.shape() {
            return Ok(None);
        }
        let f = |x: f64| x as f32;
        let (b1, c1, b2, c2) = (f(self.beta1), f(1.0 - self.beta1), f(self.beta2), f(1.0 - self.beta2));
        let (inv_sqrt_bc2, eps, step) = (f(1.0 / bc2.sqrt()), f(self.eps), f(step_size));
        let n = g.elem_count();
        // Written by the pass below straight into their capacity: no zero-fill first (three
        // passes over memory, on the calling thread, for values that are all overwritten).
        let (mut theta2, mut m2, mut v2) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        crate::util::tensor::with_slices([var.as_tensor(), g, m, v], |[theta, g, m, v]| {
            const CHUNK: usize = 1 << 14;
            if [theta.len(), m.len(), v.len()] != [n; 3] || g.len() != n {
                candle_core::bail!("Adam: a variable of {n} values with moments or gradient of another length");
            }
            theta2.spare_capacity_mut()[..n]
                .par_chunks_mut(CHUNK)
                .zip(
                    m2.spare_capacity_mut()[..n]
                        .par_chunks_mut(CHUNK)
                        .zip(v2.spare_capacity_mut()[..n].par_chunks_mut(CHUNK)),
                )
                .enumerate()
                .for_each(|(ci, (t2, (m2, v2)))| {
                    let at = ci * CHUNK;
                    for j in 0..t2.len() {
                        let (gj, k) = (g[at + j], at + j);
                        let mj = (m[k] * b1 + 0.0) + (gj * c1 + 0.0);
                        let vj = (v[k] * b2 + 0.0) + ((gj * gj) * c2 + 0.0);
                        let denom = (vj.sqrt() * inv_sqrt_bc2 + 0.0) * 1.0 + eps;
                        let update = (mj / denom) * step + 0.0;
                        t2[j].write(theta[k] - update);
                        m2[j].write(mj);
                        v2[j].write(vj);
                    }
                });
            // SAFETY: the chunks cover the first n elements of each vector, and the loop wrote
            // every element of every chunk.
            unsafe {
                theta2.set_len(n);
                m2.set_len(n);
                v2.set_len(n);
            }
            Ok(())
        })?;
        let dev = var.device();
        var.set(&Tensor::from_vec(theta2, var.shape(), dev)?)?;
        Ok(Some((Tensor::from_vec(m2, var.shape(), dev)?, Tensor::from_vec(v2, var.shape(), dev)?)))
    }

    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// Moments by name for checkpoints: `{prefix}.m.{name}`, `{prefix}.v.{name}`.
    pub fn state(&self, prefix: &str) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.insert(format!("{prefix}.m.{name}"), self.m[i].clone());
            out.insert(format!("{prefix}.v.{name}"), self.v[i].clone());
        }
        out
    }

    pub fn load_state(&mut self, prefix: &str, tensors: &BTreeMap<String, Tensor>, t: u64) -> Result<()> {
        for (i, (name, var)) in self.vars.iter().enumerate() {
            for (slot, store) in [("m", &mut self.m), ("v", &mut self.v)] {
                let key = format!("{prefix}.{slot}.{name}");
                let tensor =
                    tensors.get(&key).ok_or_else(|| candle_core::Error::Msg(format!("checkpoint lacks {key}")))?;
                store[i] = tensor.to_device(var.device())?;
            }
        }
        self.t = t;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn one_step_matches_the_adam_formula_and_keeps_no_graph() {
        // θ = 1, loss = 3θ² → g = 6θ = 6. PyTorch's first step: m = (1−β1)·6, v = (1−β2)·36,
        // θ −= lr/(1−β1) · m / (√v/√(1−β2) + ε) = lr · 6/(6 + ε).
        let w = Var::new(&[1.0f32], &Device::Cpu).unwrap();
        let mut opt = Adam::new(vec![("w".into(), w.clone())], 0.1, [0.5, 0.9]).unwrap();
        let loss = (w.as_tensor().sqr().unwrap() * 3.0).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        assert!(grads.get(w.as_tensor()).unwrap().track_op(), "candle's variable gradients carry the graph");
        opt.step(|_, _, v| Ok(grads.get(v.as_tensor()).cloned())).unwrap();
        let theta = w.as_tensor().to_vec1::<f32>().unwrap()[0] as f64;
        assert!((theta - (1.0 - 0.1 * 6.0 / (6.0 + 1e-8))).abs() < 1e-6, "{theta}");
        let state = opt.state("opt");
        assert!((state["opt.m.w"].to_vec1::<f32>().unwrap()[0] - 3.0).abs() < 1e-6);
        assert!((state["opt.v.w"].to_vec1::<f32>().unwrap()[0] - 3.6).abs() < 1e-5);
        assert!(state.values().all(|t| !t.track_op()), "moments must not hold the step's graph");
    }

    #[test]
    fn the_fused_update_is_bit_identical_to_candles_ops() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let n = 40_000; // more than one chunk of the fused pass
        let mut rand = |scale: f32| -> Vec<f32> { (0..n).map(|_| rng.random_range(-scale..scale)).collect() };
        let theta0 = rand(1.0);
        let grads: Vec<Vec<f32>> = (0..4).map(|s| rand(10f32.powi(-s))).collect();
        let w = Var::from_vec(theta0.clone(), n, &Device::Cpu).unwrap();
        let (lr, betas) = (3e-4, [0.9, 0.95]);
        let mut opt = Adam::new(vec![("w".into(), w.clone())], lr, betas).unwrap();
        // The reference: the formula as candle ops, written out independently of `step`.
        let mut theta = Tensor::from_vec(theta0, n, &Device::Cpu).unwrap();
        let (mut m, mut v) = (theta.zeros_like().unwrap(), theta.zeros_like().unwrap());
        for (t, g) in grads.iter().enumerate() {
            let g = Tensor::from_vec(g.clone(), n, &Device::Cpu).unwrap();
            opt.step(|_, _, _| Ok(Some(g.clone()))).unwrap();
            let t = (t + 1) as i32;
            let (bc1, bc2) = (1.0 - betas[0].powi(t), 1.0 - betas[1].powi(t));
            m = ((&m * betas[0]).unwrap() + (&g * (1.0 - betas[0])).unwrap()).unwrap();
            v = ((&v * betas[1]).unwrap() + (g.sqr().unwrap() * (1.0 - betas[1])).unwrap()).unwrap();
            let denom = ((v.sqrt().unwrap() / bc2.sqrt()).unwrap() + 1e-8).unwrap();
            theta = (&theta - ((&m / denom).unwrap() * (lr / bc1)).unwrap()).unwrap();
        }
        let bits = |t: &Tensor| t.to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(w.as_tensor()), bits(&theta), "parameters");
        let state = opt.state("o");
        assert_eq!(bits(&state["o.m.w"]), bits(&m), "first moments");
        assert_eq!(bits(&state["o.v.w"]), bits(&v), "second moments");
    }
}
