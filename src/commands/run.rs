//! `vqlab run`, `vqlab plan` and `vqlab train`.

use std::collections::BTreeSet;
use std::path::Path;

use super::{load, ExitStatus, Out};
use crate::cli::{ExperimentArgs, LauncherArg};
use crate::config::{self, LauncherKind, Sweep};
use crate::error::InputError;
use crate::rundir::{RunDir, SweepDir, SweepLock};
use crate::sched::local::{self, LocalOptions};
use crate::sched::slurm;
use crate::table;
use crate::train::{self, Outcome};
use crate::util::process;

/// The flags of `vqlab run`.
#[derive(Debug, Clone, Default)]
pub struct RunFlags {
    pub fail_fast: bool,
    pub launcher: Option<LauncherArg>,
    /// 0 = no cap.
    pub max_parallel: usize,
    pub wait: bool,
    pub dry_run: bool,
}

/// `vqlab run`: expand the sweep, then train what is not done on this machine's slots or as a
/// Slurm job array; print the results table.
pub fn run(exp: &ExperimentArgs, runs_dir: &Path, flags: &RunFlags, out: Out<'_>) -> anyhow::Result<ExitStatus> {
    let sweep = load(exp)?;
    let slurm = match flags.launcher {
        Some(LauncherArg::Slurm) => true,
        Some(LauncherArg::Local) => false,
        None => sweep.base.launcher.kind == LauncherKind::Slurm,
    };
    if flags.wait && !slurm {
        return Err(InputError::Usage("--wait follows a Slurm job array; it needs --launcher slurm".into()).into());
    }
    let layout = SweepDir::of(runs_dir, &sweep.name);
    if flags.dry_run && !slurm {
        write!(out, "{}", plan_table(&sweep, layout.path()))?;
        // The slots a real run would plan for the runs it would train.
        let train = local::runs_to_train(layout.path(), &sweep, false)?;
        let (_, plan) = local::slot_plan(layout.path(), &sweep, &train, flags.max_parallel)?;
        writeln!(out, "slots: {}", plan.description)?;
        for w in &plan.warnings {
            writeln!(out, "warning: {w}")?;
        }
        writeln!(out, "dry run: nothing created or trained")?;
        return Ok(ExitStatus::Success);
    }
    check_datasets(&sweep)?;
    let provenance = provenance(exp);
    if slurm {
        if flags.dry_run {
            // The runs a submit would send, selected the same way, from what the run dirs say.
            let train = local::runs_to_train(layout.path(), &sweep, false)?;
            let opts = slurm::SlurmOptions { max_parallel: flags.max_parallel, wait: false, dry_run: true };
            return slurm::submit(layout.path(), &sweep, &train, &opts);
        }
        let sweep_dir = local::prepare(runs_dir, &sweep, &provenance)?;
        let _lock = SweepLock::acquire(&layout)?;
        let train = local::runs_to_train(&sweep_dir, &sweep, true)?;
        process::install();
        let opts = slurm::SlurmOptions { max_parallel: flags.max_parallel, wait: flags.wait, dry_run: false };
        let status = slurm::submit(&sweep_dir, &sweep, &train, &opts)?;
        if flags.wait {
            write!(out, "{}", results_table(&layout, &sweep))?;
        }
        return Ok(status);
    }
    let sweep_dir = local::prepare(runs_dir, &sweep, &provenance)?;
    let _lock = SweepLock::acquire(&layout)?;
    process::install();
    tracing::info!("sweep {}: {} runs in {}", sweep.name, sweep.runs.len(), sweep_dir.display());
    let opts = LocalOptions {
        fail_fast: flags.fail_fast,
        max_attempts: sweep.base.launcher.max_attempts,
        max_parallel: flags.max_parallel,
    };
    let failed = local::run_sweep(&sweep_dir, &sweep, &opts)?;
    local::refresh_results(&sweep_dir);
    write!(out, "{}", results_table(&layout, &sweep))?;
    if process::received() > 0 {
        return Ok(ExitStatus::Interrupted);
    }
    Ok(ExitStatus::from_failures(failed))
}

/// The command line that made the sweep, for its experiment file's header.
fn provenance(exp: &ExperimentArgs) -> String {
    let mut text = format!("vqlab run {}", exp.experiment.display());
    for s in &exp.sets {
        text.push_str(&format!(" --set {s}"));
    }
    for s in &exp.sweeps {
        text.push_str(&format!(" --sweep {s}"));
    }
    let abs = std::fs::canonicalize(&exp.experiment).unwrap_or_else(|_| exp.experiment.clone());
    text.push_str(&format!("\nexperiment file: {}", abs.display()));
    text
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
            // A later stage's run hangs under its parent, which comes before it.
            let name = match &r.parent {
                Some(_) => format!("└─ {}", r.dir_name),
                None => r.dir_name.clone(),
            };
            vec![
                (i + 1).to_string(),
                r.id.clone(),
                name,
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

/// `vqlab plan`: the runs a sweep expands to, with ids, directories and states.
pub fn plan(exp: &ExperimentArgs, runs_dir: &Path, json: bool, out: Out<'_>) -> anyhow::Result<ExitStatus> {
    let sweep = load(exp)?;
    let sweep_dir = SweepDir::of(runs_dir, &sweep.name);
    let sweep_dir = sweep_dir.path();
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
                    "parent": r.parent,
                    "state": local::planned_state(sweep_dir, r).state.name(),
                })
            })
            .collect();
        let doc = serde_json::json!({"experiment": sweep.name, "sweep_dir": sweep_dir, "runs": runs});
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
    } else {
        write!(out, "{}", plan_table(&sweep, sweep_dir))?;
    }
    Ok(ExitStatus::Success)
}

/// `vqlab train RUN_DIR`: train one resolved run (what the launchers start).
pub fn train(run_dir: &Path) -> anyhow::Result<ExitStatus> {
    let run = RunDir::new(run_dir);
    if !run.config_file().is_file() {
        return Err(InputError::file(
            run_dir,
            format!(
                "not a run directory: it has no {} (create runs with `vqlab run`)",
                run.config_file().file_name().unwrap_or_default().to_string_lossy()
            ),
        )
        .into());
    }
    Ok(match train::train_run(run_dir)? {
        Outcome::Done | Outcome::StoppedEarly(_) => ExitStatus::Success,
        Outcome::Failed(_) => ExitStatus::Failed,
        Outcome::Interrupted(_) => ExitStatus::Interrupted,
    })
}

/// The end-of-sweep table: state and final eval metrics of every run (and, when the sweep
/// has priors, their test NLL and gFID).
pub(super) fn results_table(layout: &SweepDir, sweep: &Sweep) -> String {
    use crate::metric::{self, Split};
    let mut metrics: Vec<String> =
        [&metric::REC_MSE, &metric::PSNR, &metric::USAGE, &metric::PERPLEXITY, &metric::RFID]
            .map(|m| m.at(Split::Eval))
            .to_vec();
    let mut header = vec!["run", "state", "rec_mse", "psnr", "usage", "perplexity", "rfid*"];
    if sweep.runs.iter().any(|r| r.config.prior.enabled) {
        metrics.extend([metric::NLL.at(Split::Eval), metric::GEN_FID.at(Split::Gen)]);
        header.extend(["nll (bits)", "gfid*"]);
    }
    header.push("img/s");
    let speed = metric::IMG_PER_S.at(Split::Train);
    let rows: Vec<Vec<String>> = sweep
        .runs
        .iter()
        .map(|r| match layout.run(&r.dir_name).record() {
            Ok(record) => {
                let mut row = vec![r.dir_name.clone(), record.state().name().to_string()];
                row.extend(metrics.iter().chain([&speed]).map(|m| table::num(record.number(m))));
                row
            }
            Err(_) => {
                let mut row = vec![r.dir_name.clone(), "unreadable".to_string()];
                row.extend(std::iter::repeat_n(table::num(None), metrics.len() + 1));
                row
            }
        })
        .collect();
    table::render(&header, &rows) + "* FID-style: the dataset's own feature network, comparable within vqlab only\n"
}
