//! vqlab: experiment orchestration for vector-quantized image models.
//!
//! One experiment file describes a sweep of VQ-VAE / VQ-GAN runs; vqlab expands it
//! ([`config`]), loads the data ([`data`]), builds the models ([`model`]), trains and
//! evaluates each run ([`train`]) as its own process ([`sched`]), and records metrics
//! ([`metrics`]). [`app`] wires these into the commands of the `vqlab` binary.

pub mod app;
pub mod cli;
pub mod config;
pub mod data;
pub mod error;
pub mod fsutil;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod report;
pub mod sched;
pub mod table;
pub mod train;

pub use error::InputError;

/// The git commit this binary was built from (12 hex digits; empty outside a git checkout).
pub const GIT_COMMIT: &str = env!("VQLAB_GIT_COMMIT");
