//! One library function per command of the `vqlab` binary (uv's `commands/` is the model).
//! Each takes its parsed arguments and a writer for what it prints, and returns how it ended;
//! `app` only dispatches, and maps the [`ExitStatus`] to the process's exit code. The
//! decisions are the library's: which runs a sweep still needs (`sched::local`), how runs are
//! read (`rundir`), how metrics are named (`metric`).

mod inspect;
mod report;
mod run;

use std::io::Write;

pub use inspect::{bench, describe, docs, status};
pub use report::{compare, plot, report, ReportArgs};
pub use run::{plan, run, train, RunFlags};

use crate::cli::ExperimentArgs;
use crate::config::{self, Sweep};
pub use crate::error::ExitStatus;

/// What a command prints to (standard output in the binary, a buffer in tests).
pub type Out<'a> = &'a mut dyn Write;

fn load(exp: &ExperimentArgs) -> anyhow::Result<Sweep> {
    Ok(config::load_sweep(&exp.experiment, &exp.sets, &exp.sweeps)?)
}
