//! vqlab's integration tests: one binary, one module per area, each test in its own temp dir.

mod common;
mod config_errors;
mod data;
mod docs;
mod fuzz;
mod hardening;
mod layers;
mod learning;
mod metrics;
mod plan;
mod prior;
mod quantizers;
mod reference;
mod report;
mod sched;
mod sinks;
mod slurm;
mod snapshots;
mod tasks;
mod train;
