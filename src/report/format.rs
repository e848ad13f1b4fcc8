//! What reports know about each metric: which direction is better, how to label it, and how
//! many significant digits a table shows. One place, so tables, figures and the comparison
//! page agree.

pub use crate::metric::Better;
use crate::metric::{MetricName, Split};

#[derive(Debug, Clone, PartialEq)]
pub struct MetricInfo {
    pub better: Option<Better>,
    /// Short human label ("rec. MSE", "PSNR (dB)").
    pub label: String,
    /// Significant digits of the largest value in a table column.
    pub digits: i32,
    /// An FID-style score (needs the feature-network footnote).
    pub fid_style: bool,
}

/// The metric's direction, label and digits, from [`crate::metric`]. Unknown names get their
/// own name, no direction (never bold), 3 digits.
pub fn info(metric: &str) -> MetricInfo {
    if metric == "run.train_seconds" {
        return MetricInfo { better: Some(Better::Lower), label: "train time (s)".into(), digits: 3, fid_style: false };
    }
    let Some(name) = MetricName::parse(metric) else {
        return MetricInfo { better: None, label: metric.to_string(), digits: 3, fid_style: false };
    };
    let m = name.metric;
    let label = match name.split {
        Split::Val => format!("val {}", m.label),
        Split::Best => format!("{} (best ckpt)", m.label),
        Split::Train | Split::Eval | Split::Gen => m.label.to_string(),
    };
    let label = match name.level {
        Some(l) => format!("{label} l{l}"),
        None => label,
    };
    MetricInfo { better: m.better, label, digits: m.digits, fid_style: m.needs.fid }
}

/// Where a metric's numbers come from (split and weights), for table footnotes; None for
/// metrics that are not eval measures.
pub fn source(metric: &str) -> Option<&'static str> {
    match MetricName::parse(metric)?.split {
        Split::Train => None,
        split => Some(split.source()),
    }
}

/// Short label of a config key for headers: the last segment, with a few names papers use.
pub fn key_label(key: &str) -> String {
    match key {
        "quantizer.codebook_size" => "K".into(),
        "quantizer.embed_dim" => "D".into(),
        "model.variant" => "model".into(),
        "train.seed" => "seed".into(),
        other => other.rsplit('.').next().unwrap_or(other).to_string(),
    }
}

/// How one metric's numbers are printed: values are divided by 10^exponent and shown with
/// `decimals` decimals; the header carries "×10^exponent".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NumberFormat {
    pub exponent: i32,
    pub decimals: usize,
}

impl NumberFormat {
    /// The format for a metric whose values (means) are these: `digits` significant digits
    /// for the largest magnitude; very small or very large columns get a power-of-ten scale
    /// so that they read 1.23 rather than 0.00123.
    pub fn for_values(digits: i32, values: impl IntoIterator<Item = f64>) -> Self {
        let max = values.into_iter().filter(|v| v.is_finite()).map(f64::abs).fold(0.0f64, f64::max);
        if max == 0.0 {
            return NumberFormat { exponent: 0, decimals: 0 };
        }
        let magnitude = max.log10().floor() as i32;
        let exponent = if !(0.01..1e5).contains(&max) { magnitude } else { 0 };
        let scaled_magnitude = magnitude - exponent;
        let decimals = (digits - 1 - scaled_magnitude).clamp(0, 6) as usize;
        NumberFormat { exponent, decimals }
    }

    pub fn scale(&self, v: f64) -> f64 {
        v / 10f64.powi(self.exponent)
    }

    /// The value as printed (scaled and rounded), without a negative zero.
    pub fn text(&self, v: f64) -> String {
        let s = format!("{:.*}", self.decimals, self.scale(v));
        if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
            s[1..].to_string()
        } else {
            s
        }
    }

    /// The value the printed text stands for, for comparing at printed precision.
    pub fn rounded(&self, v: f64) -> f64 {
        self.text(v).parse().unwrap_or(f64::NAN)
    }
}

/// `10^-3` written with Unicode superscripts: "×10⁻³".
pub fn times_ten_unicode(exponent: i32) -> String {
    let sup = |c: char| match c {
        '-' => '⁻',
        '0' => '⁰',
        '1' => '¹',
        '2' => '²',
        '3' => '³',
        '4' => '⁴',
        '5' => '⁵',
        '6' => '⁶',
        '7' => '⁷',
        '8' => '⁸',
        _ => '⁹',
    };
    format!("×10{}", exponent.to_string().chars().map(sup).collect::<String>())
}

/// Escape text for LaTeX (outside math mode).
pub fn latex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\textbackslash{}"),
            '&' | '%' | '$' | '#' | '_' | '{' | '}' => {
                out.push('\\');
                out.push(c);
            }
            '~' => out.push_str("\\textasciitilde{}"),
            '^' => out.push_str("\\textasciicircum{}"),
            '<' => out.push_str("\\textless{}"),
            '>' => out.push_str("\\textgreater{}"),
            '±' => out.push_str("$\\pm$"),
            '×' => out.push_str("$\\times$"),
            '…' => out.push_str("\\ldots{}"),
            '↓' => out.push_str("$\\downarrow$"),
            '↑' => out.push_str("$\\uparrow$"),
            c if c.is_ascii() => out.push(c),
            // pdflatex's default encoding has no other non-ASCII characters.
            _ => out.push('?'),
        }
    }
    out
}

/// Escape text for HTML.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escape a Markdown table cell.
pub fn markdown_escape(s: &str) -> String {
    s.replace('|', "\\|").replace('*', "\\*").replace('_', "\\_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_scale_small_columns_and_keep_significant_digits() {
        // max 0.0083 < 0.01: scaled by 10^-3 to 8.3, 3 significant digits -> 2 decimals.
        let f = NumberFormat::for_values(3, [0.0083, 0.0045]);
        assert_eq!(f, NumberFormat { exponent: -3, decimals: 2 });
        assert_eq!(f.text(0.0045), "4.50");
        // max 0.0123 needs no scale: 4 decimals give 3 significant digits.
        assert_eq!(NumberFormat::for_values(3, [0.0123]), NumberFormat { exponent: 0, decimals: 4 });
        // PSNR 28.31 with 4 digits: 2 decimals, no scale.
        let f = NumberFormat::for_values(4, [28.314, 19.0]);
        assert_eq!((f.exponent, f.decimals), (0, 2));
        assert_eq!(f.text(28.314), "28.31");
        // Dead codes in the thousands: no decimals.
        assert_eq!(NumberFormat::for_values(3, [3071.0]).decimals, 0);
        // Usage 0.873 (3 digits of a value below 1): 3 decimals.
        assert_eq!(NumberFormat::for_values(3, [0.873]).text(0.87349), "0.873");
        assert_eq!(NumberFormat { exponent: 0, decimals: 2 }.text(-0.001), "0.00");
        assert_eq!(times_ten_unicode(-3), "×10⁻³");
    }

    #[test]
    fn labels_name_the_split_and_the_residual_level() {
        assert_eq!(info("eval/usage").label, "usage");
        assert_eq!(info("val/usage_l2").label, "val usage l2");
        assert_eq!(info("best/dead_codes_l0").label, "dead codes (best ckpt) l0");
        assert_eq!(info("eval/input_psnr").label, "input PSNR (dB)");
        assert_eq!(info("eval/unknown_l1").label, "eval/unknown_l1");
    }

    #[test]
    fn latex_escaping_covers_the_special_characters() {
        assert_eq!(
            latex_escape("a_b & 50% #1 {x} ~^\\"),
            "a\\_b \\& 50\\% \\#1 \\{x\\} \\textasciitilde{}\\textasciicircum{}\\textbackslash{}"
        );
    }
}
