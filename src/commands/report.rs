//! `vqlab report`, `vqlab plot` and `vqlab compare`.

use std::path::{Path, PathBuf};

use super::{ExitStatus, Out};
use crate::cli::{ReportFormat, XScaleArg};
use crate::error::InputError;
use crate::metric::{self, Split};
use crate::report::{plot, table::TableSpec, Collection, Run};
use crate::util::write_atomic;

/// Collect the runs under `dirs` and apply `--where KEY=VALUE` filters.
fn collect_runs(dirs: &[PathBuf], filters: &[String]) -> anyhow::Result<Collection> {
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

/// The arguments of `vqlab report`.
pub struct ReportArgs {
    pub spec: TableSpec,
    pub filters: Vec<String>,
    pub format: Option<ReportFormat>,
    pub out: Option<PathBuf>,
    pub standalone: bool,
}

/// The format `--format` names, else the one `--out`'s extension implies, else Markdown.
fn report_format(format: Option<ReportFormat>, out: Option<&Path>) -> Result<ReportFormat, InputError> {
    if let Some(f) = format {
        return Ok(f);
    }
    let Some(ext) = out.and_then(|o| o.extension()).map(|e| e.to_string_lossy().to_lowercase()) else {
        return Ok(ReportFormat::Markdown);
    };
    match ext.as_str() {
        "tex" => Ok(ReportFormat::Latex),
        "md" | "markdown" => Ok(ReportFormat::Markdown),
        "csv" => Ok(ReportFormat::Csv),
        "parquet" => Ok(ReportFormat::Parquet),
        other => Err(InputError::Usage(format!(
            "--out: cannot tell the format from `.{other}`; name it with --format latex|markdown|csv|parquet"
        ))),
    }
}

/// `vqlab report`: a paper table of final metrics.
pub fn report(dirs: &[PathBuf], args: ReportArgs, out: Out<'_>) -> anyhow::Result<ExitStatus> {
    let ReportArgs { mut spec, filters, format, out: file, standalone } = args;
    let format = report_format(format, file.as_deref())?;
    if format == ReportFormat::Parquet && file.is_none() {
        return Err(InputError::Usage("--format parquet needs --out FILE".into()).into());
    }
    let c = collect_runs(dirs, &filters)?;
    if spec.metrics.is_empty() {
        let defaults = [&metric::REC_MSE, &metric::PSNR, &metric::USAGE, &metric::PERPLEXITY, &metric::RFID];
        spec.metrics = defaults
            .iter()
            .map(|m| m.at(Split::Eval))
            .filter(|m| c.finished().any(|r| r.number(m).is_some()))
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
    match file {
        Some(path) => {
            write_atomic(&path, &bytes)?;
            tracing::info!("wrote {} ({} runs)", path.display(), pivot.notes.runs_used);
        }
        None => out.write_all(&bytes)?,
    }
    Ok(ExitStatus::Success)
}

/// `vqlab plot`: a final metric against a swept key, or training curves.
#[allow(clippy::too_many_arguments)]
pub fn plot(
    dirs: &[PathBuf],
    x: Option<&str>,
    y: &str,
    group: Option<&str>,
    curves: bool,
    filters: &[String],
    x_scale: XScaleArg,
    out: &Path,
) -> anyhow::Result<ExitStatus> {
    let ext = out.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
    if ext != "png" && ext != "svg" {
        return Err(InputError::file(out, "--out: expected a .png or .svg file name").into());
    }
    let c = collect_runs(dirs, filters)?;
    let chart = if curves {
        if x.is_some() {
            return Err(InputError::Usage("--curves plots over training steps; drop --x".into()).into());
        }
        let runs: Vec<&Run> = c.runs.iter().collect();
        plot::curves_chart(&c, &runs, y, group)?
    } else {
        let x = x.ok_or_else(|| {
            InputError::Usage("name the x axis with --x KEY (or draw training curves with --curves)".into())
        })?;
        let scale = match x_scale {
            XScaleArg::Auto => plot::XScale::Auto,
            XScaleArg::Linear => plot::XScale::Linear,
            XScaleArg::Log2 => plot::XScale::Log2,
        };
        plot::metric_chart(&c, x, y, group, scale)?
    };
    plot::write(&chart, out)?;
    tracing::info!("wrote {}", out.display());
    Ok(ExitStatus::Success)
}

/// `vqlab compare`: one HTML page putting runs side by side.
pub fn compare(dirs: &[PathBuf], filters: &[String], out: &Path) -> anyhow::Result<ExitStatus> {
    let c = collect_runs(dirs, filters)?;
    let html = crate::report::compare::page(&c)?;
    write_atomic(out, html.as_bytes())?;
    tracing::info!("wrote {} ({} runs)", out.display(), c.runs.len());
    Ok(ExitStatus::Success)
}
