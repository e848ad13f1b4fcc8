//! Measuring and recording metrics: codebook statistics, FID/KID and the feature network, and
//! the sinks that write them (Parquet, TensorBoard, PNG). Their names, splits and directions
//! are [`crate::metric`]'s: `split/name` in TensorBoard, split + metric in Parquet.

pub mod features;
pub mod fid;
pub mod log;
pub mod sink;
pub mod tensorboard;

pub use log::MetricsLog;
pub use sink::{RunStart, Sink, SinkSet};

/// Codebook statistics from code counts over a set of latent vectors:
/// p_k = n_k / N, perplexity = exp(−Σ p_k ln p_k) (0·ln 0 = 0), usage = |{k : n_k > 0}| / K,
/// dead codes = K − used.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CodebookStats {
    pub perplexity: f64,
    pub usage: f64,
    pub dead_codes: u64,
}

pub fn codebook_stats(counts: &[u64]) -> CodebookStats {
    let k = counts.len();
    let total: u64 = counts.iter().sum();
    let used = counts.iter().filter(|&&c| c > 0).count();
    let entropy: f64 = if total == 0 {
        0.0
    } else {
        counts
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| {
                let p = c as f64 / total as f64;
                -p * p.ln()
            })
            .sum()
    };
    CodebookStats {
        perplexity: if total == 0 { 0.0 } else { entropy.exp() },
        usage: if k == 0 { 0.0 } else { used as f64 / k as f64 },
        dead_codes: (k - used) as u64,
    }
}

/// PSNR in dB of pixels on [0, 1] from a mean squared error (capped at 100 dB for a perfect
/// reconstruction).
pub fn psnr_from_mse(mse: f64) -> f64 {
    if mse <= 1e-10 {
        100.0
    } else {
        -10.0 * mse.log10()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codebook_stats_by_hand() {
        // Two codes used equally out of four: perplexity 2, usage 0.5, 2 dead.
        let s = codebook_stats(&[5, 0, 5, 0]);
        assert!((s.perplexity - 2.0).abs() < 1e-12);
        assert_eq!(s.usage, 0.5);
        assert_eq!(s.dead_codes, 2);
        // p = (0.75, 0.25): H = −(0.75 ln 0.75 + 0.25 ln 0.25) = 0.562335…
        let s = codebook_stats(&[3, 1]);
        assert!((s.perplexity - 0.5623351446188083f64.exp()).abs() < 1e-12);
        assert_eq!(psnr_from_mse(0.01), 20.0);
    }
}
