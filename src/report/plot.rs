//! Figures with plotters: a final metric against a swept key with error bars over seeds, one
//! line per group (log2 x axis for codebook sizes), and training curves of several runs (the
//! mean of each group with a ±std band when grouped). PNG through the bitmap backend, SVG
//! through the SVG backend; the comparison page embeds the SVGs.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::Context;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::collect::{differing_keys, run_label, value_text, Collection, Curves, Run};
use super::format::{self, Better};
use super::table::{pivot, TableSpec};
use crate::error::InputError;
use crate::util::write_atomic;

/// One plotted point: y with its error bar (y itself when there is one run).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub lo: f64,
    pub hi: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<Point>,
}

/// How a chart draws its series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Markers, lines and vertical error bars.
    ErrorBars,
    /// Lines, with a shaded lo..hi band where lo < hi.
    Curves,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log2_x: bool,
    pub style: Style,
    pub series: Vec<Series>,
    /// Where the legend goes: lines that rise get it below them.
    pub better: Option<Better>,
}

/// The x axis of a metric figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XScale {
    /// log2 when every x is a positive power of two spanning at least ×8 (codebook sizes).
    Auto,
    Linear,
    Log2,
}

const PALETTE: [RGBColor; 10] = [
    RGBColor(0x4e, 0x79, 0xa7),
    RGBColor(0xf2, 0x8e, 0x2b),
    RGBColor(0xe1, 0x57, 0x59),
    RGBColor(0x59, 0xa1, 0x4f),
    RGBColor(0xb0, 0x7a, 0xa1),
    RGBColor(0x76, 0xb7, 0xb2),
    RGBColor(0xed, 0xc9, 0x48),
    RGBColor(0x9c, 0x75, 0x5f),
    RGBColor(0xff, 0x9d, 0xa7),
    RGBColor(0xba, 0xb0, 0xac),
];

fn y_label(metric: &str) -> String {
    let info = format::info(metric);
    let arrow = match info.better {
        Some(Better::Lower) => " (lower is better)",
        Some(Better::Higher) => " (higher is better)",
        None => "",
    };
    format!("{metric}{arrow}")
}

/// `metric` (final value, mean ± std over seeds) against the numeric config key `x_key`, one
/// series per value of `group` (comma-separated keys: one series per combination of values).
/// Several comma-separated metrics (`best/rfid,gen/fid`) share the axes, a series per metric
/// and group.
pub fn metric_chart(
    c: &Collection,
    x_key: &str,
    metric: &str,
    group: Option<&str>,
    scale: XScale,
) -> Result<Chart, InputError> {
    let spec = TableSpec {
        rows: vec![x_key.to_string()],
        cols: group.map(|g| g.split(',').map(|k| k.trim().to_string()).collect()).unwrap_or_default(),
        metrics: metric.split(',').map(|m| m.trim().to_string()).collect(),
        ..Default::default()
    };
    let p = pivot(c, &spec)?;
    let mut xs = Vec::new();
    for r in &p.row_values {
        match r[0].as_f64() {
            Some(x) => xs.push(x),
            None => {
                return Err(InputError::Usage(format!(
                    "--x {x_key}: the figure needs a numeric key, and `{}` is not a number (tabulate text keys with `vqlab report`)",
                    value_text(&r[0])
                )))
            }
        }
    }
    let powers_of_two = xs.iter().all(|&x| x > 0.0 && x.log2().fract() == 0.0);
    let span = xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max) / xs.iter().cloned().fold(f64::INFINITY, f64::min);
    let log2_x = match scale {
        XScale::Linear => false,
        XScale::Log2 => {
            if xs.iter().any(|&x| x <= 0.0) {
                return Err(InputError::Usage(format!("--x-scale log2: `{x_key}` has values ≤ 0")));
            }
            true
        }
        XScale::Auto => powers_of_two && span >= 8.0,
    };
    let metrics = spec.metrics.clone();
    let mut series = Vec::new();
    for (mi, m) in metrics.iter().enumerate() {
        for ci in 0..p.col_values.len() {
            let group_text = p.col_values[ci].iter().map(value_text).collect::<Vec<_>>().join(" ");
            let label = match (group.is_some(), metrics.len() > 1) {
                (true, true) => format!("{} {group_text}", format::info(m).label),
                (true, false) => group_text,
                (false, _) => m.to_string(),
            };
            let points: Vec<Point> = (0..p.row_values.len())
                .filter_map(|ri| {
                    let s = p.cells[ri][ci].stats[mi]?;
                    let sd = s.std.unwrap_or(0.0);
                    Some(Point { x: xs[ri], y: s.mean, lo: s.mean - sd, hi: s.mean + sd })
                })
                .collect();
            if !points.is_empty() {
                series.push(Series { label, points });
            }
        }
    }
    let n = p.usual_n;
    let labels: Vec<String> = metrics.iter().map(|m| format::info(m).label).collect();
    let directions: Vec<_> = metrics.iter().map(|m| format::info(m).better).collect();
    Ok(Chart {
        title: format!(
            "{} vs {}{}",
            labels.join(" and "),
            format::key_label(x_key),
            if n > 1 { format!(" (mean ± std over {n} seeds)") } else { String::new() }
        ),
        x_label: if log2_x { format!("{x_key} (log2 scale)") } else { x_key.to_string() },
        y_label: metrics.iter().map(|m| y_label(m)).collect::<Vec<_>>().join(", "),
        log2_x,
        style: Style::ErrorBars,
        series,
        // One direction when every metric shares it.
        better: if directions.iter().all(|d| *d == directions[0]) { directions[0] } else { None },
    })
}

/// Training curves of `metric` ("train/rec_loss", "eval/usage", …): one line per run, or with
/// `group` the mean over each group's runs at the steps all of them logged, with a ±std band.
pub fn curves_chart(c: &Collection, runs: &[&Run], metric: &str, group: Option<&str>) -> anyhow::Result<Chart> {
    let logged: Vec<(&Run, Curves)> = runs.iter().map(|r| Ok((*r, r.curves()?))).collect::<anyhow::Result<_>>()?;
    curves_chart_of(c, &logged, metric, group)
}

/// [`curves_chart`] from curves already read (the comparison page draws several metrics
/// from one read of each run's metrics.parquet).
pub fn curves_chart_of(
    c: &Collection,
    logged: &[(&Run, Curves)],
    metric: &str,
    group: Option<&str>,
) -> anyhow::Result<Chart> {
    let per_run: Vec<(&Run, &Vec<(i64, f64)>)> =
        logged.iter().filter_map(|(r, curves)| Some((*r, curves.get(metric).filter(|c| !c.is_empty())?))).collect();
    if per_run.is_empty() {
        return Err(InputError::Usage(format!(
            "no run logged `{metric}` (metric names look like train/rec_loss, eval/usage)"
        ))
        .into());
    }
    let series = match group {
        None => {
            let with_data: Vec<&Run> = per_run.iter().map(|(r, _)| *r).collect();
            let keys = differing_keys(&with_data);
            per_run
                .iter()
                .map(|(run, curve)| Series {
                    label: run_label(run, &keys),
                    points: curve.iter().map(|&(s, v)| Point { x: s as f64, y: v, lo: v, hi: v }).collect(),
                })
                .collect()
        }
        Some(g) => {
            let mut groups: Vec<serde_json::Value> = Vec::new();
            for (run, _) in &per_run {
                let v = run.get(g).cloned().unwrap_or(serde_json::Value::Null);
                if !groups.contains(&v) {
                    groups.push(v);
                }
            }
            c.sort_values(g, &mut groups);
            groups
                .iter()
                .map(|gv| {
                    let members: Vec<&Vec<(i64, f64)>> = per_run
                        .iter()
                        .filter(|(r, _)| r.get(g).unwrap_or(&serde_json::Value::Null) == gv)
                        .map(|(_, c)| *c)
                        .collect();
                    let steps: Vec<i64> = members[0]
                        .iter()
                        .map(|p| p.0)
                        .filter(|s| members.iter().all(|m| m.iter().any(|p| p.0 == *s)))
                        .collect();
                    let points = steps
                        .iter()
                        .map(|s| {
                            let vals: Vec<f64> = members
                                .iter()
                                .filter_map(|m| m.iter().rev().find(|p| p.0 == *s).map(|p| p.1))
                                .collect();
                            // `steps` holds only steps every member logged, so `vals` is never empty.
                            let st = super::table::Stat::of(&vals).expect("every member has the step");
                            let sd = st.std.unwrap_or(0.0);
                            Point { x: *s as f64, y: st.mean, lo: st.mean - sd, hi: st.mean + sd }
                        })
                        .collect();
                    Series {
                        label: format!("{}={} (n={})", format::key_label(g), value_text(gv), members.len()),
                        points,
                    }
                })
                .collect()
        }
    };
    Ok(Chart {
        title: format!("{} during training", format::info(metric).label),
        x_label: "step".into(),
        y_label: y_label(metric),
        log2_x: false,
        style: Style::Curves,
        series,
        better: format::info(metric).better,
    })
}

/// Register a system TrueType font as plotters' "sans-serif" (once per process).
fn ensure_font() -> anyhow::Result<()> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let mut candidates: Vec<std::path::PathBuf> = Vec::new();
        if let Some(p) = std::env::var_os("VQLAB_FONT") {
            candidates.push(p.into());
        }
        for p in [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
            "/usr/share/fonts/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
            "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
            "/System/Library/Fonts/Supplemental/Arial.ttf",
            "/Library/Fonts/Arial.ttf",
        ] {
            candidates.push(p.into());
        }
        for path in &candidates {
            if let Ok(bytes) = std::fs::read(path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Ok(());
                }
            }
        }
        Err("no TrueType font for figure text: install one (Debian: apt-get install fonts-dejavu-core) or set VQLAB_FONT=/path/to/font.ttf".into())
    })
    .clone()
    .map_err(|e| anyhow::anyhow!(e))
}

fn draw<DB: DrawingBackend>(area: DrawingArea<DB, Shift>, chart: &Chart) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("drawing the figure: {e:?}");
    area.fill(&WHITE).map_err(err)?;
    let tx = |x: f64| if chart.log2_x { x.log2() } else { x };
    let points = chart.series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for p in points {
        x0 = x0.min(tx(p.x));
        x1 = x1.max(tx(p.x));
        y0 = y0.min(p.lo.min(p.y));
        y1 = y1.max(p.hi.max(p.y));
    }
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let pad = |a: f64, b: f64, f: f64| {
        let d = if b > a { (b - a) * f } else { a.abs().max(1.0) * 0.05 };
        (a - d, b + d)
    };
    let (x0, x1) = if chart.log2_x { (x0 - 0.3, x1 + 0.3) } else { pad(x0, x1, 0.03) };
    let (y0, y1) = pad(y0, y1, 0.08);
    // Many series: the legend gets its own column at the right instead of covering lines.
    let side_legend = chart.series.len() > 4;
    let (w, _) = area.dim_in_pixel();
    let (plot_area, legend_area) = if side_legend {
        let (a, b) = area.split_horizontally(w * 7 / 10);
        (a, Some(b))
    } else {
        (area.clone(), None)
    };
    let mut cc = ChartBuilder::on(&plot_area)
        .caption(&chart.title, ("sans-serif", 22))
        .margin(18)
        .x_label_area_size(52)
        .y_label_area_size(78)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    let log2_label = |v: &f64| {
        let r = v.round();
        if (v - r).abs() < 1e-6 {
            format!("{}", 2f64.powf(r) as i64)
        } else {
            String::new()
        }
    };
    let plain_label = |v: &f64| {
        let a = v.abs();
        if a != 0.0 && !(1e-3..1e5).contains(&a) {
            format!("{v:.1e}")
        } else {
            let s = format!("{v:.4}");
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        }
    };
    let mut mesh = cc.configure_mesh();
    mesh.x_desc(chart.x_label.as_str())
        .y_desc(chart.y_label.as_str())
        .axis_desc_style(("sans-serif", 16))
        .label_style(("sans-serif", 14))
        .light_line_style(RGBColor(238, 238, 238))
        .y_label_formatter(&plain_label)
        .y_labels(8);
    if chart.log2_x {
        mesh.x_labels(((x1.floor() - x0.ceil()) as usize + 1).max(2)).x_label_formatter(&log2_label);
    } else {
        mesh.x_labels(10).x_label_formatter(&plain_label);
    }
    mesh.draw().map_err(err)?;

    // Error bars of several groups at the same x are drawn side by side, not on top of each
    // other: each group shifted by a small fraction of the x range.
    let groups = chart.series.len() as f64;
    let dodge = |i: usize| {
        if chart.style == Style::ErrorBars && groups > 1.0 {
            (i as f64 - (groups - 1.0) / 2.0) * (x1 - x0) * 0.008
        } else {
            0.0
        }
    };
    for (i, s) in chart.series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let shift = dodge(i);
        let tx = |x: f64| tx(x) + shift;
        let line: Vec<(f64, f64)> = s.points.iter().map(|p| (tx(p.x), p.y)).collect();
        if chart.style == Style::Curves && s.points.iter().any(|p| p.hi > p.lo) {
            let mut band: Vec<(f64, f64)> = s.points.iter().map(|p| (tx(p.x), p.hi)).collect();
            band.extend(s.points.iter().rev().map(|p| (tx(p.x), p.lo)));
            cc.draw_series(std::iter::once(Polygon::new(band, color.mix(0.18).filled()))).map_err(err)?;
        }
        cc.draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(3)));
        if chart.style == Style::Curves && s.points.len() <= 20 {
            // Few points (an eval metric logged a few times, or once): mark them, since a
            // line through one point draws nothing.
            cc.draw_series(line.iter().map(|&(x, y)| Circle::new((x, y), 3, color.filled()))).map_err(err)?;
        }
        if chart.style == Style::ErrorBars {
            cc.draw_series(line.iter().map(|&(x, y)| Circle::new((x, y), 4, color.filled()))).map_err(err)?;
            cc.draw_series(
                s.points
                    .iter()
                    .filter(|p| p.hi > p.lo)
                    .map(|p| ErrorBar::new_vertical(tx(p.x), p.lo, p.y, p.hi, color.stroke_width(2), 10)),
            )
            .map_err(err)?;
        }
    }
    if let Some(legend) = legend_area {
        let style = TextStyle::from(("sans-serif", 13).into_font()).color(&BLACK);
        for (i, s) in chart.series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let y = 60 + 22 * i as i32;
            legend.draw(&PathElement::new(vec![(8, y), (30, y)], color.stroke_width(3))).map_err(err)?;
            legend.draw(&Text::new(s.label.clone(), (36, y - 7), style.clone())).map_err(err)?;
        }
    } else {
        let rising = chart
            .series
            .first()
            .is_some_and(|s| matches!((s.points.first(), s.points.last()), (Some(a), Some(b)) if b.y > a.y));
        cc.configure_series_labels()
            .position(if rising { SeriesLabelPosition::LowerRight } else { SeriesLabelPosition::UpperRight })
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(err)?;
    }
    area.present().map_err(err)?;
    Ok(())
}

pub const SIZE: (u32, u32) = (960, 600);

pub fn svg(chart: &Chart, size: (u32, u32)) -> anyhow::Result<String> {
    ensure_font()?;
    let mut out = String::new();
    {
        let area = SVGBackend::with_string(&mut out, size).into_drawing_area();
        draw(area, chart)?;
    }
    Ok(out)
}

pub fn png(chart: &Chart, size: (u32, u32)) -> anyhow::Result<Vec<u8>> {
    ensure_font()?;
    let (w, h) = size;
    let mut pixels = vec![0u8; (w * h * 3) as usize];
    {
        let area = BitMapBackend::with_buffer(&mut pixels, size).into_drawing_area();
        draw(area, chart)?;
    }
    let img = image::RgbImage::from_raw(w, h, pixels).context("figure buffer size")?;
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)?;
    Ok(bytes)
}

/// Write the chart to `out` (`.png` or `.svg`), atomically.
pub fn write(chart: &Chart, out: &Path) -> anyhow::Result<()> {
    let ext = out.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
    let bytes = match ext.as_str() {
        "png" => png(chart, SIZE)?,
        "svg" => svg(chart, SIZE)?.into_bytes(),
        _ => return Err(InputError::file(out, "--out: expected a .png or .svg file name").into()),
    };
    write_atomic(out, &bytes)
}
