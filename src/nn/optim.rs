//! Adam (no weight decay), with its moments owned here so checkpoints can save and restore
//! them exactly (candle's AdamW keeps its state private).

use std::collections::BTreeMap;

use candle_core::{Result, Tensor, Var};

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
    pub fn step(&mut self, mut grad: impl FnMut(usize, &str, &Var) -> Result<Option<Tensor>>) -> Result<()> {
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
}
