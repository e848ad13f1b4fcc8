//! Per-layer times of vqlab's convolutions at the shapes of `experiments/bench_step.toml`
//! (batch 128): each layer's forward pass alone and forward + backward (input and weight
//! gradients of Σ y), the median of several repetitions, as one JSON object a line.
//! `scripts/bench_conv_layers.sh` runs this against the same layers in PyTorch
//! (`scripts/bench/torch_conv_layers.py`), in alternating rounds:
//!
//!   cargo bench --bench conv_layers -- --reps 9
//!   cargo bench --bench conv_layers -- --algorithm winograd4   # train.conv_algorithm's values
//!   cargo bench --bench conv_layers -- --layer 3x3             # the layers whose name has it
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use vqlab::config::ConvAlgorithm;
use vqlab::ops::{conv2d_using, conv_transpose2d, Fuse};

/// (name, transposed, input dims, kernel dims, stride, padding): the VQ-VAE's distinct conv
/// shapes and the discriminator's (the rows of scripts/bench/torch_conv_layers.py).
type Layer = (&'static str, bool, [usize; 4], [usize; 4], usize, usize);

const LAYERS: &[Layer] = &[
    ("enc1 4x4/2 1->64", false, [128, 1, 28, 28], [64, 1, 4, 4], 2, 1),
    ("enc2 4x4/2 64->128", false, [128, 64, 14, 14], [128, 64, 4, 4], 2, 1),
    ("enc3 3x3 128->128", false, [128, 128, 7, 7], [128, 128, 3, 3], 1, 1),
    ("res 3x3 128->32", false, [128, 128, 7, 7], [32, 128, 3, 3], 1, 1),
    ("res 1x1 32->128", false, [128, 32, 7, 7], [128, 32, 1, 1], 1, 0),
    ("dec1 3x3 64->128", false, [128, 64, 7, 7], [128, 64, 3, 3], 1, 1),
    ("up0 T4x4/2 128->64", true, [128, 128, 7, 7], [128, 64, 4, 4], 2, 1),
    ("up1 T4x4/2 64->1", true, [128, 64, 14, 14], [64, 1, 4, 4], 2, 1),
    ("disc2 4x4/1 128->256", false, [128, 128, 7, 7], [256, 128, 4, 4], 1, 1),
    ("disc3 4x4/1 256->1", false, [128, 256, 6, 6], [1, 256, 4, 4], 1, 1),
];

/// The median (the mean of the middle two for an even count, as Python's statistics.median).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() -> candle_core::Result<()> {
    // As `vqlab` sets up its threads (candle's elementwise ops on rayon's pool).
    vqlab::ops::tune_threads();
    let args: Vec<String> = std::env::args().collect();
    let reps = args
        .iter()
        .position(|a| a == "--reps")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(7)
        .max(1);
    let algorithm = match args.iter().position(|a| a == "--algorithm").and_then(|i| args.get(i + 1)) {
        None => ConvAlgorithm::Im2row,
        Some(a) => serde_json::from_value(serde_json::json!(a))
            .map_err(|_| candle_core::Error::Msg(format!("--algorithm {a}: expected im2row, winograd or winograd4")))?,
    };
    let only = args.iter().position(|a| a == "--layer").and_then(|i| args.get(i + 1));
    let dev = Device::Cpu;
    for &(name, transpose, xd, wd, stride, pad) in
        LAYERS.iter().filter(|l| only.is_none_or(|o| l.0.contains(o.as_str())))
    {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, &xd[..], &dev)?)?;
        let w = Var::from_tensor(&(Tensor::randn(0f32, 1.0, &wd[..], &dev)? * 0.05)?)?;
        let f = |x: &Tensor| {
            if transpose {
                conv_transpose2d(x, w.as_tensor(), None, stride, pad, Fuse::NONE)
            } else {
                conv2d_using(x, w.as_tensor(), None, stride, pad, Fuse::NONE, algorithm)
            }
        };
        let (mut fwd, mut both) = (Vec::new(), Vec::new());
        // One untimed repetition first (buffers, caches).
        for rep in 0..reps + 1 {
            let t0 = Instant::now();
            drop(f(x.as_tensor())?);
            let t1 = t0.elapsed().as_secs_f64();
            let t0 = Instant::now();
            let y = f(x.as_tensor())?;
            let grads = y.sum_all()?.backward()?;
            let t2 = t0.elapsed().as_secs_f64();
            if grads.get(w.as_tensor()).is_none() || grads.get(x.as_tensor()).is_none() {
                candle_core::bail!("{name}: a gradient is missing");
            }
            drop(y);
            if rep > 0 {
                fwd.push(t1 * 1e3);
                both.push(t2 * 1e3);
            }
        }
        println!(
            "{}",
            serde_json::json!({"layer": name, "algorithm": algorithm, "fwd_ms": median(fwd), "fwd_bwd_ms": median(both)})
        );
    }
    Ok(())
}
