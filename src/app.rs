//! The commands of the `vqlab` binary, each a thin layer over the library modules.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Context;
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command, ExperimentArgs};
use crate::config::{self, LauncherKind, Sweep};
use crate::error::InputError;
use crate::sched::local::{self, LocalOptions, LOG_FILE, WORKER_ENV};
use crate::sched::lock::SweepLock;
use crate::sched::slurm;
use crate::sched::state::{RunState, RunStatus, STATUS_FILE};
use crate::table;
use crate::train::{self, Outcome, SUMMARY_FILE};

/// Logs go to stderr through `tracing`; `RUST_LOG` overrides -v/-q. A `vqlab train` started
/// by hand also appends to the run's train.log (a launched worker's stderr already is it).
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
            std::fs::OpenOptions::new().create(true).append(true).open(run_dir.join(LOG_FILE)).ok()
        }
        _ => None,
    };
    let _ = match tee {
        Some(file) => builder.with_ansi(false).with_writer(std::io::stderr.and(std::sync::Mutex::new(file))).try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}

/// Run a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Run { exp, runs_dir, fail_fast, launcher, max_parallel, wait, dry_run } => cmd_run(
            &exp,
            &runs_dir,
            RunFlags { fail_fast, launcher, max_parallel: max_parallel.unwrap_or(0), wait, dry_run },
        ),
        Command::Plan { exp, runs_dir, json } => cmd_plan(&exp, &runs_dir, json),
        Command::Train { run_dir } => cmd_train(&run_dir),
        Command::Status { sweep_dir, runs_dir } => cmd_status(sweep_dir.as_deref(), &runs_dir),
        Command::Describe { exp } => cmd_describe(&exp),
        Command::Bench { exp, steps, warmup, json } => cmd_bench(&exp, steps, warmup, json),
        Command::Report { dirs, rows, cols, metrics, filters, format, out, caption, label, standalone } => {
            let spec = crate::report::table::TableSpec { rows, cols, metrics, caption, label };
            cmd_report(&dirs, spec, &filters, format, out.as_deref(), standalone)
        }
        Command::Plot { dirs, x, y, group, curves, filters, x_scale, out } => {
            cmd_plot(&dirs, x.as_deref(), &y, group.as_deref(), curves, &filters, x_scale, &out)
        }
        Command::Compare { dirs, filters, out } => cmd_compare(&dirs, &filters, &out),
    }
}

/// Collect the runs under `dirs` and apply `--where KEY=VALUE` filters.
fn collect_runs(dirs: &[PathBuf], filters: &[String]) -> anyhow::Result<crate::report::Collection> {
    let mut c = crate::report::collect(dirs)?;
    for f in filters {
        let (key, value) = f.split_once('=').ok_or_else(|| {
            InputError::Usage(format!("--where {f}: expected KEY=VALUE, e.g. --where model.variant=vqgan"))
        })?;
        let key = key.trim();
        if !c.runs.iter().any(|r| r.values.contains_key(key)) {
            return Err(InputError::Usage(format!("--where {f}: no run has the config key `{key}`")).into());
        }
        c.filter(key, value.trim());
        if c.runs.is_empty() {
            return Err(InputError::Usage(format!("--where {f}: no run has {key} = {}", value.trim())).into());
        }
    }
    c.warn_incomplete();
    Ok(c)
}

fn cmd_report(
    dirs: &[PathBuf],
    mut spec: crate::report::table::TableSpec,
    filters: &[String],
    format: Option<crate::cli::ReportFormat>,
    out: Option<&Path>,
    standalone: bool,
) -> anyhow::Result<u8> {
    use crate::cli::ReportFormat;
    let format = match (format, out.and_then(|o| o.extension()).map(|e| e.to_string_lossy().to_lowercase())) {
        (Some(f), _) => f,
        (None, Some(ext)) => match ext.as_str() {
            "tex" => ReportFormat::Latex,
            "md" | "markdown" => ReportFormat::Markdown,
            "csv" => ReportFormat::Csv,
            "parquet" => ReportFormat::Parquet,
            other => {
                return Err(InputError::Usage(format!(
                    "--out: cannot tell the format from `.{other}`; name it with --format latex|markdown|csv|parquet"
                ))
                .into())
            }
        },
        (None, None) => ReportFormat::Markdown,
    };
    if format == ReportFormat::Parquet && out.is_none() {
        return Err(InputError::Usage("--format parquet needs --out FILE".into()).into());
    }
    let c = collect_runs(dirs, filters)?;
    if spec.metrics.is_empty() {
        spec.metrics = ["eval/rec_mse", "eval/psnr", "eval/usage", "eval/perplexity", "eval/rfid"]
            .iter()
            .filter(|m| c.finished().any(|r| r.number(m).is_some()))
            .map(|m| m.to_string())
            .collect();
    }
    let pivot = crate::report::table::pivot(&c, &spec)?;
    let bytes = match format {
        ReportFormat::Latex => pivot.to_latex(standalone).into_bytes(),
        ReportFormat::Markdown => pivot.to_markdown().into_bytes(),
        ReportFormat::Csv => pivot.to_csv()?.into_bytes(),
        ReportFormat::Parquet => {
            let mut df = pivot.to_frame()?;
            let mut buf = Vec::new();
            polars::prelude::ParquetWriter::new(&mut buf).finish(&mut df)?;
            buf
        }
    };
    match out {
        Some(path) => {
            crate::fsutil::write_atomic(path, &bytes)?;
            tracing::info!("wrote {} ({} runs)", path.display(), pivot.notes.runs_used);
        }
        None => {
            use std::io::Write;
            std::io::stdout().write_all(&bytes)?;
        }
    }
    Ok(0)
}

#[allow(clippy::too_many_arguments)]
fn cmd_plot(
    dirs: &[PathBuf],
    x: Option<&str>,
    y: &str,
    group: Option<&str>,
    curves: bool,
    filters: &[String],
    x_scale: crate::cli::XScaleArg,
    out: &Path,
) -> anyhow::Result<u8> {
    use crate::report::plot;
    let ext = out.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
    if ext != "png" && ext != "svg" {
        return Err(InputError::file(out, "--out: expected a .png or .svg file name").into());
    }
    let c = collect_runs(dirs, filters)?;
    let chart = if curves {
        if x.is_some() {
            return Err(InputError::Usage("--curves plots over training steps; drop --x".into()).into());
        }
        let runs: Vec<&crate::report::Run> = c.runs.iter().collect();
        plot::curves_chart(&c, &runs, y, group)?
    } else {
        let x = x.ok_or_else(|| {
            InputError::Usage("name the x axis with --x KEY (or draw training curves with --curves)".into())
        })?;
        let scale = match x_scale {
            crate::cli::XScaleArg::Auto => plot::XScale::Auto,
            crate::cli::XScaleArg::Linear => plot::XScale::Linear,
            crate::cli::XScaleArg::Log2 => plot::XScale::Log2,
        };
        plot::metric_chart(&c, x, y, group, scale)?
    };
    plot::write(&chart, out)?;
    tracing::info!("wrote {}", out.display());
    Ok(0)
}

fn cmd_compare(dirs: &[PathBuf], filters: &[String], out: &Path) -> anyhow::Result<u8> {
    let c = collect_runs(dirs, filters)?;
    let html = crate::report::compare::page(&c)?;
    crate::fsutil::write_atomic(out, html.as_bytes())?;
    tracing::info!("wrote {} ({} runs)", out.display(), c.runs.len());
    Ok(0)
}

fn load(exp: &ExperimentArgs) -> anyhow::Result<Sweep> {
    Ok(config::load_sweep(&exp.experiment, &exp.sets, &exp.sweeps)?)
}

struct RunFlags {
    fail_fast: bool,
    launcher: Option<crate::cli::LauncherArg>,
    max_parallel: usize,
    wait: bool,
    dry_run: bool,
}

fn cmd_run(exp: &ExperimentArgs, runs_dir: &Path, flags: RunFlags) -> anyhow::Result<u8> {
    let sweep = load(exp)?;
    let slurm = match flags.launcher {
        Some(crate::cli::LauncherArg::Slurm) => true,
        Some(crate::cli::LauncherArg::Local) => false,
        None => sweep.base.launcher.kind == LauncherKind::Slurm,
    };
    if flags.wait && !slurm {
        return Err(InputError::Usage("--wait follows a Slurm job array; it needs --launcher slurm".into()).into());
    }
    let sweep_dir = runs_dir.join(&sweep.name);
    if flags.dry_run && !slurm {
        print!("{}", plan_table(&sweep, &sweep_dir));
        let demands = vec![crate::sched::devices::Demand { memory_mib: 0, alone: false }; sweep.runs.len()];
        let plan = crate::sched::devices::plan(&sweep.base.hardware, &demands, flags.max_parallel);
        println!("slots: {}", plan.description);
        println!("dry run: nothing created or trained");
        return Ok(0);
    }
    check_datasets(&sweep)?;
    let mut provenance = format!("vqlab run {}", exp.experiment.display());
    for s in &exp.sets {
        provenance.push_str(&format!(" --set {s}"));
    }
    for s in &exp.sweeps {
        provenance.push_str(&format!(" --sweep {s}"));
    }
    let abs = std::fs::canonicalize(&exp.experiment).unwrap_or_else(|_| exp.experiment.clone());
    provenance.push_str(&format!("\nexperiment file: {}", abs.display()));
    if slurm {
        if flags.dry_run {
            // The script for the runs not done yet, from what the run dirs say (if any).
            let train: Vec<usize> = (0..sweep.runs.len())
                .filter(|&i| !local::planned_state(&sweep_dir, &sweep.runs[i]).state.is_finished())
                .collect();
            let opts = slurm::SlurmOptions { max_parallel: flags.max_parallel, wait: false, dry_run: true };
            return slurm::submit(&sweep_dir, &sweep, &train, &opts);
        }
        let sweep_dir = local::prepare(runs_dir, &sweep, &provenance)?;
        let _lock = SweepLock::acquire(&sweep_dir)?;
        let max_attempts = sweep.base.launcher.max_attempts;
        let mut train = Vec::new();
        for (i, r) in sweep.runs.iter().enumerate() {
            if matches!(local::next_step(&sweep_dir.join(&r.dir_name), max_attempts)?, local::Next::Train) {
                train.push(i);
            }
        }
        crate::sched::signals::install();
        let opts = slurm::SlurmOptions { max_parallel: flags.max_parallel, wait: flags.wait, dry_run: false };
        let code = slurm::submit(&sweep_dir, &sweep, &train, &opts)?;
        if flags.wait {
            print!("{}", results_table(&sweep_dir, &sweep));
        }
        return Ok(code);
    }
    let sweep_dir = local::prepare(runs_dir, &sweep, &provenance)?;
    let _lock = SweepLock::acquire(&sweep_dir)?;
    crate::sched::signals::install();
    tracing::info!("sweep {}: {} runs in {}", sweep.name, sweep.runs.len(), sweep_dir.display());
    let opts = LocalOptions {
        fail_fast: flags.fail_fast,
        max_attempts: sweep.base.launcher.max_attempts,
        max_parallel: flags.max_parallel,
    };
    let failed = local::run_sweep(&sweep_dir, &sweep, &opts)?;
    local::refresh_results(&sweep_dir);
    print!("{}", results_table(&sweep_dir, &sweep));
    if crate::sched::signals::received() > 0 {
        return Ok(130);
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

/// Load every distinct dataset of a sweep once, so that a missing or broken dataset is a
/// clear error (exit 2) before anything runs.
fn check_datasets(sweep: &Sweep) -> anyhow::Result<()> {
    let mut seen = BTreeSet::new();
    for run in &sweep.runs {
        let key = serde_json::to_string(&run.config.data)?;
        if seen.insert(key) {
            crate::data::load(&run.config.data)?;
        }
    }
    Ok(())
}

fn cell_text(run: &config::PlannedRun) -> String {
    if run.cell.is_empty() {
        return "-".into();
    }
    run.cell
        .iter()
        .map(|(k, v)| format!("{}={}", k.rsplit('.').next().unwrap_or(k), v.to_string().trim_matches('"')))
        .collect::<Vec<_>>()
        .join(" ")
}

fn plan_table(sweep: &Sweep, sweep_dir: &Path) -> String {
    let rows: Vec<Vec<String>> = sweep
        .runs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            vec![
                (i + 1).to_string(),
                r.id.clone(),
                r.dir_name.clone(),
                cell_text(r),
                local::planned_state(sweep_dir, r).state.name().to_string(),
            ]
        })
        .collect();
    format!(
        "sweep {} ({} runs) in {}\n{}",
        sweep.name,
        sweep.runs.len(),
        sweep_dir.display(),
        table::render(&["#", "id", "run", "swept values", "state"], &rows)
    )
}

fn cmd_plan(exp: &ExperimentArgs, runs_dir: &Path, json: bool) -> anyhow::Result<u8> {
    let sweep = load(exp)?;
    let sweep_dir = runs_dir.join(&sweep.name);
    if json {
        let runs: Vec<serde_json::Value> = sweep
            .runs
            .iter()
            .map(|r| {
                serde_json::json!({
                    "id": r.id,
                    "dir": r.dir_name,
                    "path": sweep_dir.join(&r.dir_name),
                    "cell": r.cell,
                    "state": local::planned_state(&sweep_dir, r).state.name(),
                })
            })
            .collect();
        let out = serde_json::json!({"experiment": sweep.name, "sweep_dir": sweep_dir, "runs": runs});
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", plan_table(&sweep, &sweep_dir));
    }
    Ok(0)
}

fn cmd_train(run_dir: &Path) -> anyhow::Result<u8> {
    if !run_dir.join(crate::sched::state::CONFIG_FILE).is_file() {
        return Err(InputError::file(
            run_dir,
            "not a run directory: it has no config.toml (create runs with `vqlab run`)",
        )
        .into());
    }
    match train::train_run(run_dir)? {
        Outcome::Done | Outcome::StoppedEarly(_) => Ok(0),
        Outcome::Failed(_) => Ok(1),
        Outcome::Interrupted(_) => Ok(130),
    }
}

fn read_summary(run_dir: &Path) -> Option<serde_json::Map<String, serde_json::Value>> {
    let bytes = std::fs::read(run_dir.join(SUMMARY_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The end-of-sweep table: state and final eval metrics of every run.
fn results_table(sweep_dir: &Path, sweep: &Sweep) -> String {
    let metrics = ["eval/rec_mse", "eval/psnr", "eval/usage", "eval/perplexity", "eval/rfid", "train/img_per_s"];
    let rows: Vec<Vec<String>> = sweep
        .runs
        .iter()
        .map(|r| {
            let dir = sweep_dir.join(&r.dir_name);
            let status = RunStatus::read_or_pending(&dir).unwrap_or_else(|_| RunStatus::pending());
            let summary = read_summary(&dir);
            let mut row = vec![r.dir_name.clone(), status.state.name().to_string()];
            for m in metrics {
                row.push(table::num(summary.as_ref().and_then(|s| s.get(m)).and_then(|v| v.as_f64())));
            }
            row
        })
        .collect();
    table::render(&["run", "state", "rec_mse", "psnr", "usage", "perplexity", "rfid*", "img/s"], &rows)
        + "* FID-style: the dataset's own feature network, comparable within vqlab only\n"
}

fn cmd_status(sweep_dir: Option<&Path>, runs_dir: &Path) -> anyhow::Result<u8> {
    let sweeps: Vec<PathBuf> = match sweep_dir {
        Some(d) => {
            if !d.is_dir() {
                return Err(InputError::file(d, "sweep directory not found").into());
            }
            vec![d.to_path_buf()]
        }
        None => {
            if !runs_dir.is_dir() {
                return Err(
                    InputError::file(runs_dir, "runs directory not found (pass a sweep dir or --runs-dir)").into()
                );
            }
            let mut v: Vec<PathBuf> = std::fs::read_dir(runs_dir)?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_dir() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
                .collect();
            v.sort();
            v
        }
    };
    for dir in sweeps {
        let runs = local::run_dirs(&dir)?;
        let mut rows = Vec::new();
        let mut counts = std::collections::BTreeMap::<&str, usize>::new();
        let slurm_view = slurm::run_view(&dir);
        for run in &runs {
            let st = RunStatus::read(run)?.with_context(|| format!("{} has no {STATUS_FILE}", run.display()))?;
            let steps = config::load_run_config(&run.join(crate::sched::state::CONFIG_FILE))
                .map(|c| c.train.steps.to_string())
                .unwrap_or_else(|_| "?".into());
            *counts.entry(st.state.name()).or_default() += 1;
            let name = run.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            let mut state = st.state.name().to_string();
            if st.state == RunState::Running
                && st.host == crate::sched::state::hostname()
                && !crate::sched::signals::alive(st.pid)
            {
                state = "running (worker gone: resumes on the next `vqlab run`)".into();
            }
            let device = match (&st.slot, st.device.as_str()) {
                (slot, "") if slot.is_empty() => String::new(),
                (slot, d) if slot.is_empty() => d.to_string(),
                (slot, d) => format!("{d} [{slot}]"),
            };
            let mut row = vec![
                name.clone(),
                state,
                format!("{} ({} failed)", st.attempts, st.failures),
                format!("{}/{steps}", st.progress_step.max(st.step)),
                device,
                st.reason.clone(),
            ];
            if let Some((_, view)) = &slurm_view {
                row.insert(2, view.get(&name).cloned().unwrap_or_else(|| "-".into()));
            }
            rows.push(row);
        }
        let tally = counts.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", ");
        println!("{} ({} runs: {})", dir.display(), runs.len(), if tally.is_empty() { "none".into() } else { tally });
        let mut header = vec!["run", "state", "attempts", "step", "device", "reason"];
        if let Some((job, _)) = &slurm_view {
            println!("Slurm job array {job}: tasks still queued or running are shown under `slurm`");
            header.insert(2, "slurm");
        }
        print!("{}", table::render(&header, &rows));
    }
    Ok(0)
}

fn cmd_bench(exp: &ExperimentArgs, steps: u64, warmup: u64, json: bool) -> anyhow::Result<u8> {
    let sweep = load(exp)?;
    let cfg = &sweep.runs.first().context("the sweep expands to no runs")?.config;
    if sweep.runs.len() > 1 {
        tracing::warn!("the sweep has {} runs; timing the first: {}", sweep.runs.len(), config::short_description(cfg));
    }
    let r = train::bench(cfg, warmup, steps)?;
    if json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{}: {:.1} img/s (median step {:.1} ms over {} steps of batch {}, {} thread(s), {})",
            r.model, r.img_per_s, r.median_step_ms, r.steps, r.batch_size, r.threads, r.device
        );
    }
    Ok(0)
}

fn cmd_describe(exp: &ExperimentArgs) -> anyhow::Result<u8> {
    let sweep = load(exp)?;
    let first = &sweep.runs.first().context("the sweep expands to no runs")?.config;
    println!("# experiment {}: {} run(s)\n", sweep.name, sweep.runs.len());
    println!("## Resolved config (first run)\n\n```toml\n{}```\n", config::to_toml(first));
    println!("## Parameters and memory\n");
    let mut seen = BTreeSet::new();
    let mut rows = Vec::new();
    for run in &sweep.runs {
        let c = &run.config;
        let key = (
            c.model.variant.name(),
            c.quantizer.codebook_size,
            c.quantizer.embed_dim,
            c.model.hidden_channels,
            c.model.res_channels,
            c.model.res_blocks,
            c.quantizer.lookup_dim,
        );
        if !seen.insert(format!("{key:?}")) {
            continue;
        }
        let model = crate::model::VqModel::new(c, &candle_core::Device::Cpu)
            .context("building the model to count its parameters")?;
        let counts = model.parameter_counts();
        let total: usize = counts.iter().map(|(_, n)| n).sum();
        let mut row = vec![config::short_description(c)];
        row.extend(counts.iter().map(|(_, n)| n.to_string()));
        row.push(total.to_string());
        row.push(format!("{:.0} MiB", crate::model::memory::training_bytes(c, total) / (1024.0 * 1024.0)));
        rows.push(row);
    }
    print!(
        "{}",
        table::render(&["model", "encoder", "quantizer", "decoder", "discriminator", "total", "≈ train memory"], &rows)
    );
    println!("\n## Model\n\n```mermaid\n{}```", crate::model::mermaid(first));
    Ok(0)
}
