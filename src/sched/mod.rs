//! Scheduling: run state on disk and launching runs. This stage launches the runs of a sweep
//! one after another, each as a child process `vqlab train RUN_DIR`.

pub mod local;
pub mod state;

pub use state::{RunState, RunStatus};
