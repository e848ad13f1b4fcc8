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
            let Some(g) = grad(i, name, var)? else {
                continue;
            };
            let m = ((&self.m[i] * self.beta1)? + (&g * (1.0 - self.beta1))?)?;
            let v = ((&self.v[i] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            // PyTorch: θ −= lr/bc1 · m / (√v / √bc2 + ε).
            let denom = ((v.sqrt()? / bc2.sqrt())? + self.eps)?;
            let update = ((&m / denom)? * step_size)?;
            var.set(&(var.as_tensor() - update)?)?;
            self.m[i] = m;
            self.v[i] = v;
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
