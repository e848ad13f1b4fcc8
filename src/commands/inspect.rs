//! `vqlab status`, `vqlab describe`, `vqlab bench` and `vqlab docs`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{load, ExitStatus, Out};
use crate::cli::{DocsTopic, ExperimentArgs};
use crate::config;
use crate::error::InputError;
use crate::rundir::SweepDir;
use crate::sched::slurm;
use crate::table;

/// `vqlab status`: the state of every run of a sweep, or of every sweep under the runs dir.
pub fn status(sweep_dir: Option<&Path>, runs_dir: &Path, out: Out<'_>) -> anyhow::Result<ExitStatus> {
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
                .filter(|p| {
                    p.is_dir() && !p.file_name().is_some_and(|n| SweepDir::is_layout_entry(&n.to_string_lossy()))
                })
                .collect();
            v.sort();
            v
        }
    };
    for dir in sweeps {
        let runs = SweepDir::new(&dir).runs()?;
        let mut rows = Vec::new();
        let mut counts = std::collections::BTreeMap::<&str, usize>::new();
        let slurm_view = slurm::run_view(&dir);
        for run in &runs {
            let st = run.read_status()?.with_context(|| format!("{} has no status file", run.path().display()))?;
            let cfg = run.read_config().ok();
            let steps = cfg
                .as_ref()
                .map(|c| if c.prior.enabled { c.prior.steps } else { c.train.steps }.to_string())
                .unwrap_or_else(|| "?".into());
            *counts.entry(st.state.name()).or_default() += 1;
            let name = run.name();
            // A prior run sorts right after its parent (its name extends the parent's).
            let shown = match &cfg {
                Some(c) if c.prior.enabled => format!("└─ {name}"),
                _ => name.clone(),
            };
            let state = if st.worker_gone() {
                "running (worker gone: resumes on the next `vqlab run`)".to_string()
            } else {
                st.state.name().to_string()
            };
            let device = match (&st.slot, st.device.as_str()) {
                (slot, "") if slot.is_empty() => String::new(),
                (slot, d) if slot.is_empty() => d.to_string(),
                (slot, d) => format!("{d} [{slot}]"),
            };
            let mut row = vec![
                shown,
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
        writeln!(
            out,
            "{} ({} runs: {})",
            dir.display(),
            runs.len(),
            if tally.is_empty() { "none".into() } else { tally }
        )?;
        let mut header = vec!["run", "state", "attempts", "step", "device", "reason"];
        if let Some((job, _)) = &slurm_view {
            writeln!(out, "Slurm job array {job}: tasks still queued or running are shown under `slurm`")?;
            header.insert(2, "slurm");
        }
        write!(out, "{}", table::render(&header, &rows))?;
    }
    Ok(ExitStatus::Success)
}

/// `vqlab bench`: time training steps of the experiment's first run.
pub fn bench(
    exp: &ExperimentArgs,
    steps: u64,
    warmup: u64,
    json: bool,
    profile: bool,
    prior: bool,
    out: Out<'_>,
) -> anyhow::Result<ExitStatus> {
    let sweep = load(exp)?;
    let first = &sweep.runs.first().context("the sweep expands to no runs")?.config;
    // --prior times the first prior run's transformer (the [prior] defaults when there is none).
    let cfg =
        if prior { sweep.runs.iter().map(|r| &r.config).find(|c| c.prior.enabled).unwrap_or(first) } else { first };
    if sweep.runs.len() > 1 {
        tracing::warn!("the sweep has {} runs; timing the first: {}", sweep.runs.len(), config::short_description(cfg));
    }
    let r = if prior {
        crate::train::prior::bench_prior(cfg, warmup, steps, profile)?
    } else {
        crate::train::bench(cfg, warmup, steps, profile)?
    };
    if json {
        writeln!(out, "{}", serde_json::to_string(&r)?)?;
    } else {
        writeln!(
            out,
            "{}: {:.1} img/s (median step {:.1} ms over {} steps of batch {}, {} thread(s), {})",
            r.model, r.img_per_s, r.median_step_ms, r.steps, r.batch_size, r.threads, r.device
        )?;
        if !r.profile.is_empty() {
            let row = |name: String, p: &crate::train::ProfileRow| {
                vec![
                    name,
                    if p.calls_per_step > 0.0 { format!("{:.0}", p.calls_per_step) } else { String::new() },
                    format!("{:.2}", p.ms_per_step),
                    format!("{:.1}%", 100.0 * p.share),
                ]
            };
            // Each pass, then (indented) the layer shapes it ran on.
            let rows: Vec<Vec<String>> = r
                .profile
                .iter()
                .flat_map(|p| {
                    std::iter::once(row(p.op.clone(), p))
                        .chain(p.layers.iter().map(|l| row(format!("    {}", l.op), l)))
                })
                .collect();
            writeln!(out, "\nwhere a step's time goes (mean over the timed steps):")?;
            write!(out, "{}", table::render(&["op pass", "calls/step", "ms/step", "of the step"], &rows))?;
        }
    }
    Ok(ExitStatus::Success)
}

/// `vqlab describe`: resolved config, parameter counts, memory estimate, model diagram.
pub fn describe(exp: &ExperimentArgs, out: Out<'_>) -> anyhow::Result<ExitStatus> {
    let sweep = load(exp)?;
    let first = &sweep.runs.first().context("the sweep expands to no runs")?.config;
    writeln!(out, "# experiment {}: {} run(s)\n", sweep.name, sweep.runs.len())?;
    writeln!(out, "## Resolved config (first run)\n\n```toml\n{}```\n", config::to_toml(first))?;
    writeln!(out, "## Parameters and memory\n")?;
    let mut seen = BTreeSet::new();
    let mut rows = Vec::new();
    for run in &sweep.runs {
        let c = &run.config;
        // Runs that differ only in what does not change the parameters (seed, training) share a row.
        let key =
            (&c.model, &c.quantizer, c.loss.disc_layers, c.loss.disc_channels, c.data.channels, c.data.image_size);
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
    write!(
        out,
        "{}",
        table::render(&["model", "encoder", "quantizer", "decoder", "discriminator", "total", "≈ train memory"], &rows)
    )?;
    writeln!(out, "\n## Model\n\n```mermaid\n{}```", crate::model::mermaid(first))?;
    Ok(ExitStatus::Success)
}

/// `vqlab docs TOPIC`: a reference table generated from the code.
pub fn docs(topic: DocsTopic, out: Out<'_>) -> anyhow::Result<ExitStatus> {
    let text = match topic {
        DocsTopic::Keys => config::keys::table(),
        DocsTopic::Metrics => crate::metric::table(),
        DocsTopic::Status => crate::rundir::status_fields_table(),
    };
    write!(out, "{text}")?;
    Ok(ExitStatus::Success)
}
