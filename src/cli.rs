//! Command-line definitions (clap derive) and nothing else.
//!
//! The doc comments are also the `--help` text, which shows them verbatim: `<runs-dir>` there is
//! a placeholder for the reader, not HTML.
#![allow(rustdoc::invalid_html_tags)]

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LauncherArg {
    Local,
    Slurm,
}

/// Output formats of `vqlab report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Latex,
    Markdown,
    Csv,
    Parquet,
}

/// What `vqlab docs` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DocsTopic {
    /// Every experiment key with its default and meaning.
    Keys,
    /// Every metric: name, splits, direction, unit, what it needs, definition.
    Metrics,
    /// The fields of a run's status file.
    Status,
}

/// The x axis of `vqlab plot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum XScaleArg {
    /// log2 for positive powers of two spanning ×8 or more (codebook sizes), else linear.
    Auto,
    Linear,
    Log2,
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

impl Cli {
    /// Commands that only print what they find (plan, status, report, describe, …), as
    /// opposed to the scheduler and the worker, which manage runs.
    pub fn only_prints(&self) -> bool {
        !matches!(self.command, Command::Run { .. } | Command::Train { .. })
    }
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
    /// A paper table of final metrics: rows × cols over config keys, mean ± std over seeds,
    /// best per column in bold, a provenance footnote.
    Report {
        /// Sweep dirs, directories of sweeps, or run dirs (searched recursively).
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Config keys whose values make the rows (comma-separated).
        #[arg(long, value_delimiter = ',', required = true, value_name = "KEY,…")]
        rows: Vec<String>,
        /// Config keys whose values make the column groups (comma-separated).
        #[arg(long, value_delimiter = ',', value_name = "KEY,…")]
        cols: Vec<String>,
        /// Metrics (default: rec_mse, psnr, usage, perplexity and rfid, those the runs have).
        #[arg(long, value_delimiter = ',', value_name = "METRIC,…")]
        metrics: Vec<String>,
        /// Only runs with this config value (repeatable).
        #[arg(long = "where", value_name = "KEY=VALUE")]
        filters: Vec<String>,
        /// Output format (default: from --out's extension, else markdown).
        #[arg(long, value_enum)]
        format: Option<ReportFormat>,
        /// Write here instead of standard output (parquet needs it).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Table caption (default: what the rows and columns are).
        #[arg(long)]
        caption: Option<String>,
        /// LaTeX label (default: tab:<sweep name>).
        #[arg(long)]
        label: Option<String>,
        /// LaTeX: a complete document (article + booktabs) instead of a table to \input.
        #[arg(long)]
        standalone: bool,
    },
    /// A figure: a final metric against a swept key with error bars over seeds, or training
    /// curves with --curves. PNG or SVG by --out's extension.
    Plot {
        /// Sweep dirs, directories of sweeps, or run dirs.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Config key on the x axis (not with --curves).
        #[arg(long, value_name = "KEY")]
        x: Option<String>,
        /// Metric on the y axis (eval/usage, train/rec_loss, …); comma-separated metrics share the axes.
        #[arg(long, value_name = "METRIC")]
        y: String,
        /// One line per value of this config key (comma-separated keys: per combination of values;
        /// --curves takes one key).
        #[arg(long, value_name = "KEY")]
        group: Option<String>,
        /// Training curves of --y over steps, one line per run (or the mean ± std of each
        /// --group).
        #[arg(long)]
        curves: bool,
        /// Only runs with this config value (repeatable).
        #[arg(long = "where", value_name = "KEY=VALUE")]
        filters: Vec<String>,
        #[arg(long, value_enum, default_value = "auto")]
        x_scale: XScaleArg,
        /// Output file: .png or .svg.
        #[arg(long)]
        out: PathBuf,
    },
    /// One self-contained HTML page putting runs or sweeps side by side: differing config,
    /// final metrics, curves, reconstruction grids.
    Compare {
        /// Run dirs or sweep dirs.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Only runs with this config value (repeatable).
        #[arg(long = "where", value_name = "KEY=VALUE")]
        filters: Vec<String>,
        /// Output file (.html).
        #[arg(long)]
        out: PathBuf,
    },
    /// Time training steps of an experiment's first run (its data, model and optimizer, no
    /// logging, eval or checkpoints) and print img/s: what `train/img_per_s` of a run reaches.
    Bench {
        #[command(flatten)]
        exp: ExperimentArgs,
        /// Timed steps.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
        steps: u64,
        /// Untimed steps first (allocator and caches warm up).
        #[arg(long, default_value_t = 5)]
        warmup: u64,
        /// Print one JSON object instead of a line of text.
        #[arg(long)]
        json: bool,
        /// Also time each of vqlab's op passes (convolutions forward and backward, ActNorm +
        /// LeakyReLU, the nearest-code search; with --prior the transformer's linear layers,
        /// LayerNorm, GELU, attention and cross-entropy) and the Adam updates, and print where
        /// the step time goes, each convolution pass also by layer shape.
        #[arg(long)]
        profile: bool,
        /// Time the stage-2 prior's training step instead (the experiment's `[prior]` over its
        /// code grid, on random codes); img/s counts code grids.
        #[arg(long)]
        prior: bool,
    },
    /// Resolved config, parameter counts, estimated memory and a Mermaid diagram of the model.
    Describe {
        #[command(flatten)]
        exp: ExperimentArgs,
    },
    /// Reference tables generated from the code (Markdown): the experiment keys, the metrics,
    /// the status file's fields. The README and docs/design.md hold these tables verbatim.
    Docs {
        #[arg(value_enum)]
        topic: DocsTopic,
    },
}
