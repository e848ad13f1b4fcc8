//! vqlab: experiment orchestration for vector-quantized image models.
//!
//! One experiment file describes a sweep of VQ-VAE / VQ-GAN runs; vqlab expands it
//! ([`config`]), lays out its run directories ([`rundir`]), loads the data ([`data`]), builds
//! the models ([`model`]), trains and evaluates each run ([`train`]) as its own process
//! ([`sched`]), records metrics ([`metric`] names them, [`metrics`] measures and writes them)
//! and turns finished sweeps into tables, figures and comparison pages ([`report`]).
//! [`commands`] holds one function per command of the `vqlab` binary; [`app`] parses,
//! dispatches and maps the outcome to an exit status.
//!
//! # Layers
//!
//! Each module imports only from modules of lower layers (`tests/it/layers.rs` checks every
//! `crate::` path in `src/` against this list, and fails on an upward or sideways import):
//!
//! - layer 0: `error` — errors of bad input, exit statuses
//! - layer 1: `util`, `table` — atomic writes, locks, signals, process liveness, JSON
//!   flattening; text tables
//! - layer 2: `metric` — every metric's name, splits, direction, unit and needs; checkpoint
//!   and early-stop rules
//! - layer 3: `config` — the experiment schema, loading, validation, sweeps and run ids
//! - layer 4: `rundir` — the on-disk layout of sweeps and runs and its typed files
//! - layer 5: `data`, `ops`, `nn` — datasets, fast CPU ops, Adam and the checkpoint format
//! - layer 6: `model` — quantizers, autoencoder, discriminator
//! - layer 7: `metrics` — codebook statistics, FID/KID and the feature network, the sinks
//! - layer 8: `train` — one run: the loop, the steps, eval, checkpoints, summary
//! - layer 9: `sched` — devices and slots, the local and Slurm launchers
//! - layer 10: `report` — tables, figures, the comparison page
//! - layer 11: `cli` — the command line's grammar
//! - layer 12: `commands` — one library function per command
//! - layer 13: `app` — dispatch, logging, exit status

pub mod app;
pub mod cli;
pub mod commands;
pub mod config;
pub mod data;
pub mod error;
pub mod metric;
pub mod metrics;
pub mod model;
pub mod nn;
pub mod ops;
pub mod report;
pub mod rundir;
pub mod sched;
pub mod table;
pub mod train;
pub mod util;

pub use error::InputError;

/// The git commit this binary was built from (12 hex digits; empty outside a git checkout).
pub const GIT_COMMIT: &str = env!("VQLAB_GIT_COMMIT");
