//! Command-line definitions (clap derive) and nothing else.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LauncherArg {
    Local,
    Slurm,
}

#[derive(Debug, Parser)]
#[command(name = "vqlab", version, about = "Sweeps of VQ-VAE and VQ-GAN experiments: plan, train, evaluate, report.")]
pub struct Cli {
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// Overrides of an experiment file, shared by the commands that read one.
#[derive(Debug, Args, Clone, Default)]
pub struct ExperimentArgs {
    /// Experiment file (TOML, YAML or JSON).
    pub experiment: PathBuf,
    /// Override a key: --set quantizer.codebook_size=1024 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Sweep a key over values: --sweep quantizer.codebook_size=256,1024 (repeatable; adds to
    /// or replaces the file's sweep.grid entry for that key).
    #[arg(long = "sweep", value_name = "KEY=V1,V2,…")]
    pub sweeps: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Expand the sweep, train and evaluate every run that is not done, print the results.
    Run {
        #[command(flatten)]
        exp: ExperimentArgs,
        /// Output root; the sweep goes to <runs-dir>/<experiment.name>.
        #[arg(long, env = "VQLAB_RUNS_DIR", default_value = "runs")]
        runs_dir: PathBuf,
        /// Stop at the first failed run.
        #[arg(long)]
        fail_fast: bool,
        /// Where the runs train: this machine's slots, or a Slurm job array (default: the
        /// file's launcher.kind).
        #[arg(long, value_enum)]
        launcher: Option<LauncherArg>,
        /// At most N runs at once (local: caps the slots; slurm: the array's %N throttle).
        #[arg(long, value_name = "N")]
        max_parallel: Option<usize>,
        /// Slurm: follow the submitted job array until it ends (default: submit and return).
        #[arg(long)]
        wait: bool,
        /// Show what would run; create and train nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// List the runs a sweep expands to, with ids, directories and states; runs nothing.
    Plan {
        #[command(flatten)]
        exp: ExperimentArgs,
        #[arg(long, env = "VQLAB_RUNS_DIR", default_value = "runs")]
        runs_dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Train one resolved run (what the schedulers launch); resumes from its checkpoint.
    Train {
        /// A run directory holding config.toml.
        run_dir: PathBuf,
    },
    /// State of every run of a sweep (or of every sweep under the runs dir).
    Status {
        /// A sweep directory; default: every sweep under the runs dir.
        sweep_dir: Option<PathBuf>,
        #[arg(long, env = "VQLAB_RUNS_DIR", default_value = "runs")]
        runs_dir: PathBuf,
    },
    /// Resolved config, parameter counts, estimated memory and a Mermaid diagram of the model.
    Describe {
        #[command(flatten)]
        exp: ExperimentArgs,
    },
}
