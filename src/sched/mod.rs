//! Scheduling: devices and slots, and the launchers (local child processes over the machine's
//! slots, or a Slurm job array). Run state lives in the run dirs ([`crate::rundir`]).

pub mod devices;
pub mod local;
pub mod slurm;
