//! Parameters: every trainable tensor of a model, by readable name (`encoder.conv1.weight`),
//! created from a seeded generator so that a fixed seed gives the same initial weights on
//! every machine (candle's own CPU generator cannot be seeded).

use crate::config::ConvAlgorithm;
use std::collections::BTreeMap;

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

/// How a parameter is initialised.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    Uniform(f64, f64),
    Normal { mean: f64, std: f64 },
    Const(f64),
}

/// Named trainable variables in a deterministic (sorted) order.
pub struct ParamStore {
    vars: BTreeMap<String, Var>,
    /// State that is saved with the weights but not trained by the optimizer (EMA averages,
    /// ActNorm's initialised flag).
    buffers: BTreeMap<String, Var>,
    device: Device,
    rng: rand_chacha::ChaCha8Rng,
    /// How the convolution layers made from this store run 3×3 convolutions on the CPU: the
    /// row matrix unless [`ParamStore::set_conv_algorithm`] says otherwise (a run's models
    /// take `train.conv_algorithm`, winograd4 by default).
    conv_algorithm: ConvAlgorithm,
}

impl ParamStore {
    pub fn new(device: &Device, seed: u64) -> Self {
        ParamStore {
            vars: BTreeMap::new(),
            buffers: BTreeMap::new(),
            device: device.clone(),
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
            conv_algorithm: ConvAlgorithm::Im2row,
        }
    }

    /// The convolution layers created from now on run their 3×3 convolutions this way
    /// (`train.conv_algorithm`).
    pub fn set_conv_algorithm(&mut self, algorithm: ConvAlgorithm) {
        self.conv_algorithm = algorithm;
    }

    pub fn conv_algorithm(&self) -> ConvAlgorithm {
        self.conv_algorithm
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Create a trainable parameter; names must be unique.
    pub fn param(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        Ok(self.param_var(name, shape, init)?.as_tensor().clone())
    }

    /// Create a trainable parameter and return its variable (for layers that set it).
    pub fn param_var(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Var> {
        let var = self.create(name, shape, init)?;
        self.vars.insert(name.to_string(), var.clone());
        Ok(var)
    }

    /// Create a non-trainable state tensor, saved in checkpoints.
    pub fn buffer(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Var> {
        let var = self.create(name, shape, init)?;
        self.buffers.insert(name.to_string(), var.clone());
        Ok(var)
    }

    fn create(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Var> {
        if self.vars.contains_key(name) || self.buffers.contains_key(name) {
            candle_core::bail!("parameter {name} defined twice");
        }
        let n: usize = shape.iter().product();
        let data: Vec<f32> = match init {
            Init::Uniform(lo, hi) => (0..n).map(|_| self.rng.random_range(lo..hi) as f32).collect(),
            Init::Normal { mean, std } => {
                let d = Normal::new(mean, std).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                (0..n).map(|_| d.sample(&mut self.rng) as f32).collect()
            }
            Init::Const(v) => vec![v as f32; n],
        };
        Var::from_tensor(&Tensor::from_vec(data, shape, &self.device)?)
    }

    pub fn vars(&self) -> &BTreeMap<String, Var> {
        &self.vars
    }

    /// Variables whose names start with `prefix` (e.g. `disc.`), sorted by name.
    pub fn vars_with_prefix(&self, prefix: &str) -> Vec<(String, Var)> {
        self.vars.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// A parameter or buffer by name.
    pub fn get(&self, name: &str) -> Option<&Var> {
        self.vars.get(name).or_else(|| self.buffers.get(name))
    }

    /// Number of scalars under a prefix ("" = all).
    pub fn count(&self, prefix: &str) -> usize {
        self.vars.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, v)| v.elem_count()).sum()
    }

    /// All parameters and buffers by name (for checkpoints).
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.vars.iter().chain(self.buffers.iter()).map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect()
    }

    /// Overwrite variables from named tensors; every variable must be present with its shape.
    pub fn load(&self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        for (name, var) in self.vars.iter().chain(self.buffers.iter()) {
            let t = tensors
                .get(name)
                .ok_or_else(|| candle_core::Error::Msg(format!("checkpoint lacks parameter {name}")))?;
            if t.dims() != var.dims() {
                candle_core::bail!(
                    "checkpoint parameter {name} has shape {:?}, model expects {:?}",
                    t.dims(),
                    var.dims()
                );
            }
            var.set(&t.to_dtype(DType::F32)?.to_device(&self.device)?)?;
        }
        Ok(())
    }
}

/// PyTorch's default bound for conv weights and biases: U(−1/√fan_in, 1/√fan_in).
pub fn torch_default(fan_in: usize) -> Init {
    let b = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform(-b, b)
}
