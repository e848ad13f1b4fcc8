//! The comparison page: one self-contained HTML file (every figure embedded as a data URI,
//! no external resource) putting runs side by side: the config keys that differ, the final
//! metrics with the best per column in bold, training curves, and the reconstruction grid of
//! the same eval images for every run at its final step.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine as _;

use super::collect::{differing_keys, first_line, is_result_key, run_label, value_text, Collection, Run};
use super::format::{self, html_escape as esc, Better, NumberFormat};
use super::plot;
use super::table::{pivot, TableSpec};
use crate::error::InputError;
use crate::metric::{self, Split};

/// Columns of the final-metrics table: the measures on the test split with the last weights,
/// the training speed and the training time.
fn table_metrics() -> Vec<String> {
    let mut names: Vec<String> = metric::MEASURES.iter().map(|m| m.at(Split::Eval)).collect();
    names.push(metric::IMG_PER_S.at(Split::Train));
    names.push("run.train_seconds".into());
    names
}

/// Curves drawn (those at least one run logged): training losses and the validation measures
/// checkpoint selection reads.
fn curve_metrics() -> Vec<String> {
    let val = [&metric::REC_MSE, &metric::PSNR, &metric::PERPLEXITY, &metric::USAGE, &metric::RFID];
    let train = [&metric::COMMIT_LOSS, &metric::G_LOSS, &metric::D_LOSS, &metric::ADAPTIVE_WEIGHT];
    let mut names = vec![metric::REC_LOSS.at(Split::Train)];
    names.extend(val.iter().map(|m| m.at(Split::Val)));
    names.extend(train.iter().map(|m| m.at(Split::Train)));
    names
}

const STYLE: &str = r#"
body { font-family: -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; margin: 24px auto; max-width: 1400px; color: #222; padding: 0 16px; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.meta { color: #666; font-size: 0.9em; }
.warn { background: #fff4e5; border-left: 4px solid #f28e2b; padding: 8px 12px; margin: 12px 0; }
table { border-collapse: collapse; font-size: 0.9em; margin: 8px 0; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e4e4e4; text-align: right; white-space: nowrap; }
th { background: #f6f6f6; }
td.name, th.name { text-align: left; font-family: "DejaVu Sans Mono", monospace; font-size: 0.85em; }
td.best { font-weight: bold; }
.curves { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 12px; }
.curves img { width: 100%; border: 1px solid #eee; }
.grids { display: flex; flex-wrap: wrap; gap: 14px; }
figure { margin: 0; }
figure img { image-rendering: pixelated; border: 1px solid #ddd; }
figcaption { font-size: 0.8em; color: #444; max-width: 420px; }
details { margin: 8px 0; }
"#;

fn data_uri(mime: &str, bytes: &[u8]) -> String {
    format!("data:{mime};base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// The page for the runs of a collection.
pub fn page(c: &Collection) -> anyhow::Result<String> {
    let runs: Vec<&Run> = c.runs.iter().collect();
    if runs.is_empty() {
        return Err(InputError::Usage("no readable runs to compare".into()).into());
    }
    let keys = differing_keys(&runs);
    let mut html = String::new();
    let title = format!("vqlab: {} runs side by side", runs.len());
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
        esc(&title),
        esc(&title)
    );
    let commit = if crate::GIT_COMMIT.is_empty() { String::new() } else { format!(", commit {}", crate::GIT_COMMIT) };
    let _ = writeln!(
        html,
        "<p class=\"meta\">From {} · generated {} by vqlab {}{commit}</p>",
        esc(&c.sources.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")),
        crate::util::timestamp_now(),
        env!("CARGO_PKG_VERSION"),
    );
    let unfinished: Vec<&Run> = c.unfinished().collect();
    if !unfinished.is_empty() || !c.broken.is_empty() {
        html.push_str("<div class=\"warn\"><b>Not finished or unreadable:</b><ul>\n");
        for r in &unfinished {
            let _ = writeln!(html, "<li>{}</li>", esc(&r.describe_state()));
        }
        for b in &c.broken {
            let _ = writeln!(html, "<li>{}: {}</li>", esc(&b.dir.display().to_string()), esc(first_line(&b.why)));
        }
        html.push_str("</ul>Their metrics are what they logged so far.</div>\n");
    }

    // Configuration: the keys that differ, then the shared ones folded away.
    html.push_str("<h2>Configuration</h2>\n");
    if keys.is_empty() {
        html.push_str("<p>The runs share every config key that changes a result.</p>\n");
    }
    html.push_str("<table>\n<tr><th class=\"name\">run</th><th>state</th>");
    for k in &keys {
        let _ = write!(html, "<th title=\"{}\">{}</th>", esc(k), esc(k));
    }
    html.push_str("</tr>\n");
    for r in &runs {
        let _ = write!(
            html,
            "<tr><td class=\"name\" title=\"{}\">{}</td><td>{}</td>",
            esc(&r.dir.display().to_string()),
            esc(&r.name),
            r.state.name()
        );
        for k in &keys {
            let _ = write!(html, "<td>{}</td>", esc(&r.get(k).map(value_text).unwrap_or_else(|| "-".into())));
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</table>\n");
    let shared: BTreeMap<&String, &serde_json::Value> =
        runs[0].values.iter().filter(|(k, _)| is_result_key(k) && !keys.contains(k)).collect();
    let _ = writeln!(html, "<details><summary>Shared config ({} keys)</summary>\n<table>", shared.len());
    for (k, v) in shared {
        let _ = writeln!(html, "<tr><td class=\"name\">{}</td><td>{}</td></tr>", esc(k), esc(&value_text(v)));
    }
    html.push_str("</table></details>\n");

    // Final metrics.
    let metrics: Vec<String> =
        table_metrics().into_iter().filter(|m| runs.iter().any(|r| r.number(m).is_some())).collect();
    html.push_str("<h2>Final metrics</h2>\n");
    html.push_str(
        "<p>eval/…: the test split's eval subset, weights of the last step (measured once, at the end); \
         train/…: the last logged interval.</p>\n",
    );
    if metrics.is_empty() {
        html.push_str("<p>No run has final metrics yet.</p>\n");
    } else {
        let formats: Vec<NumberFormat> = metrics
            .iter()
            .map(|m| NumberFormat::for_values(format::info(m).digits + 1, runs.iter().filter_map(|r| r.number(m))))
            .collect();
        let best: Vec<Option<f64>> = metrics
            .iter()
            .zip(&formats)
            .map(|(m, f)| {
                let vals: Vec<f64> = runs.iter().filter_map(|r| r.number(m)).map(|v| f.rounded(v)).collect();
                if vals.len() < 2 {
                    return None;
                }
                match format::info(m).better? {
                    Better::Lower => Some(vals.iter().cloned().fold(f64::INFINITY, f64::min)),
                    Better::Higher => Some(vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max)),
                }
            })
            .collect();
        html.push_str("<table>\n<tr><th class=\"name\">run</th>");
        for (m, f) in metrics.iter().zip(&formats) {
            let info = format::info(m);
            let arrow = match info.better {
                Some(Better::Lower) => " ↓",
                Some(Better::Higher) => " ↑",
                None => "",
            };
            let scale =
                if f.exponent != 0 { format!(" {}", format::times_ten_unicode(f.exponent)) } else { String::new() };
            let _ = write!(html, "<th title=\"{}\">{}{scale}{arrow}</th>", esc(m), esc(&info.label));
        }
        html.push_str("</tr>\n");
        for r in &runs {
            let _ = write!(html, "<tr><td class=\"name\">{}</td>", esc(&run_label(r, &keys)));
            for ((m, f), b) in metrics.iter().zip(&formats).zip(&best) {
                match r.number(m) {
                    Some(v) => {
                        let class = if Some(f.rounded(v)) == *b { " class=\"best\"" } else { "" };
                        let _ = write!(html, "<td{class} title=\"{v}\">{}</td>", f.text(v));
                    }
                    None => html.push_str("<td>–</td>"),
                }
            }
            html.push_str("</tr>\n");
        }
        html.push_str("</table>\n");
        if metrics.iter().any(|m| format::info(m).fid_style) {
            let nets: std::collections::BTreeSet<String> =
                runs.iter().filter_map(|r| r.get("run.feature_net")).map(value_text).collect();
            let _ = writeln!(
                html,
                "<p class=\"meta\">rFID and KID are FID-style: features of {}; comparable within vqlab only.</p>",
                esc(&nets.into_iter().collect::<Vec<_>>().join("; "))
            );
        }
    }

    // Mean over seeds: when the runs differ in their seed and in something else, the pivot
    // `vqlab report` would make with the other differing keys as rows.
    let row_keys: Vec<String> = keys.iter().filter(|k| k.as_str() != "train.seed").cloned().collect();
    if keys.iter().any(|k| k == "train.seed") && !row_keys.is_empty() && !metrics.is_empty() {
        let spec = TableSpec {
            rows: row_keys,
            metrics: metrics.iter().filter(|m| !m.starts_with("run.")).map(|m| m.to_string()).collect(),
            ..Default::default()
        };
        match pivot(c, &spec) {
            Ok(p) => {
                html.push_str("<h2>Mean over seeds</h2>\n");
                html.push_str(&p.to_html());
                let _ = writeln!(html, "<p class=\"meta\">{}</p>", esc(&p.footnote()[0]));
            }
            Err(e) => tracing::debug!("no mean-over-seeds table: {e}"),
        }
    }

    // Curves.
    html.push_str(
        "<h2>Training curves</h2>\n<p>val/…: the validation split (held out of the training split) at every eval step.</p>\n<div class=\"curves\">\n",
    );
    let mut curves = 0;
    // Each run's metrics log is read once for all the figures.
    let logged: Vec<(&Run, super::collect::Curves)> =
        runs.iter().map(|r| Ok((*r, r.curves()?))).collect::<anyhow::Result<_>>()?;
    for m in curve_metrics() {
        let m = m.as_str();
        let chart = match plot::curves_chart_of(c, &logged, m, None) {
            Ok(chart) => chart,
            Err(_) => continue,
        };
        let svg = plot::svg(&chart, (720, 440))?;
        let _ = writeln!(html, "<img alt=\"{}\" src=\"{}\">", esc(m), data_uri("image/svg+xml", svg.as_bytes()));
        curves += 1;
    }
    if curves == 0 {
        html.push_str("<p>No run has logged metrics yet.</p>\n");
    }
    html.push_str("</div>\n");

    // Reconstructions.
    html.push_str("<h2>Reconstructions at the final step</h2>\n");
    let eval_sets: std::collections::BTreeSet<String> = runs
        .iter()
        .map(|r| {
            format!(
                "{} {} {}",
                r.get("data.dataset").map(value_text).unwrap_or_default(),
                r.get("data.image_size").map(value_text).unwrap_or_default(),
                r.get("eval.sample_images").map(value_text).unwrap_or_default()
            )
        })
        .collect();
    if eval_sets.len() > 1 {
        html.push_str(
            "<p class=\"warn\">These runs use different datasets, image sizes or sample counts: their grids show different images.</p>\n",
        );
    } else {
        html.push_str(
            "<p class=\"meta\">The same first eval images for every run: originals above, reconstructions below (with the degraded inputs between them for the denoising and super-resolution tasks).</p>\n",
        );
    }
    html.push_str("<div class=\"grids\">\n");
    for r in &runs {
        match r.last_sample() {
            Some((step, path)) => {
                let bytes = std::fs::read(&path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
                let (w, h) = image::load_from_memory(&bytes).map(|i| (i.width(), i.height())).unwrap_or((0, 0));
                let _ = writeln!(
                    html,
                    "<figure><img alt=\"{}\" width=\"{}\" height=\"{}\" src=\"{}\"><figcaption>{}<br>{} · step {step}</figcaption></figure>",
                    esc(&r.name),
                    w * 2,
                    h * 2,
                    data_uri("image/png", &bytes),
                    esc(&run_label(r, &keys)),
                    esc(&r.name)
                );
            }
            None => {
                let _ = writeln!(
                    html,
                    "<figure><figcaption>{}: no reconstruction grid yet</figcaption></figure>",
                    esc(&r.name)
                );
            }
        }
    }
    html.push_str("</div>\n</body>\n</html>\n");
    Ok(html)
}
