//! Scheduling: devices and slots, run state on disk, the sweep lock, signals, and the
//! launchers (local child processes over the machine's slots, or a Slurm job array).

pub mod devices;
pub mod local;
pub mod lock;
pub mod signals;
pub mod slurm;
pub mod state;

pub use state::{RunState, RunStatus};
