//! Helpers: run the vqlab binary in a temp dir, write experiment files.

use std::path::Path;
use std::process::{Command, Output};

pub fn vqlab(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vqlab"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("VQLAB_RUNS_DIR")
        .output()
        .expect("the vqlab binary runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

pub fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, text).unwrap();
    p
}

/// A tiny synthetic experiment that trains in seconds on CPU.
pub fn tiny_experiment(name: &str, extra: &str) -> String {
    format!(
        r#"[experiment]
name = "{name}"
[data]
dataset = "synthetic"
train_images = 256
eval_images = 64
[model]
hidden_channels = 16
res_channels = 8
res_blocks = 1
[quantizer]
codebook_size = 32
embed_dim = 8
[loss]
disc_start = 6
disc_channels = 8
[train]
steps = 12
batch_size = 16
lr = 1e-3
log_every = 3
eval_every = 6
checkpoint_every = 6
[eval]
batch_size = 64
sample_images = 4
{extra}
"#
    )
}
