//! The `vqlab` binary's top: logging, one call into [`crate::commands`] per command, and the
//! exit status. No decisions are made here.

use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};
use crate::commands::{self, ExitStatus, ReportArgs, RunFlags};
use crate::report::table::TableSpec;
use crate::rundir::RunDir;
use crate::sched::local::WORKER_ENV;

/// Logs go to stderr through `tracing`; `RUST_LOG` overrides -v/-q. A `vqlab train` started
/// by hand also appends to the run's log (a launched worker's stderr already is it).
pub fn init_logging(cli: &Cli) {
    let level = if cli.quiet {
        "warn"
    } else {
        match cli.verbose {
            0 => "info",
            1 => "debug",
            _ => "trace",
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format!("vqlab={level},warn")));
    use std::io::IsTerminal;
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(std::io::stderr().is_terminal());
    let tee = match &cli.command {
        Command::Train { run_dir } if std::env::var_os(WORKER_ENV).is_none() && run_dir.is_dir() => {
            std::fs::OpenOptions::new().create(true).append(true).open(RunDir::new(run_dir).log_file()).ok()
        }
        _ => None,
    };
    let _ = match tee {
        Some(file) => builder.with_ansi(false).with_writer(std::io::stderr.and(std::sync::Mutex::new(file))).try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}

/// Run a parsed command line; returns how it ended.
pub fn run(cli: Cli) -> anyhow::Result<ExitStatus> {
    // Not locked for the whole command: a sweep's other threads may print too.
    let out = &mut std::io::stdout();
    match cli.command {
        Command::Run { exp, runs_dir, fail_fast, launcher, max_parallel, wait, dry_run } => {
            let flags = RunFlags { fail_fast, launcher, max_parallel: max_parallel.unwrap_or(0), wait, dry_run };
            commands::run(&exp, &runs_dir, &flags, out)
        }
        Command::Plan { exp, runs_dir, json } => commands::plan(&exp, &runs_dir, json, out),
        Command::Train { run_dir } => commands::train(&run_dir),
        Command::Status { sweep_dir, runs_dir } => commands::status(sweep_dir.as_deref(), &runs_dir, out),
        Command::Describe { exp } => commands::describe(&exp, out),
        Command::Docs { topic } => commands::docs(topic, out),
        Command::Bench { exp, steps, warmup, json, profile, prior } => {
            commands::bench(&exp, steps, warmup, json, profile, prior, out)
        }
        Command::Report { dirs, rows, cols, metrics, filters, format, out: file, caption, label, standalone } => {
            let spec = TableSpec { rows, cols, metrics, caption, label };
            commands::report(&dirs, ReportArgs { spec, filters, format, out: file, standalone }, out)
        }
        Command::Plot { dirs, x, y, group, curves, filters, x_scale, out: file } => {
            commands::plot(&dirs, x.as_deref(), &y, group.as_deref(), curves, &filters, x_scale, &file)
        }
        Command::Compare { dirs, filters, out: file } => commands::compare(&dirs, &filters, &file),
    }
}
