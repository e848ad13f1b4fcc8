//! Deterministic batch order: the batch of any global step is a pure function of (seed, step),
//! so a resumed run sees exactly the batches an uninterrupted one would.

use rand::seq::SliceRandom;
use rand::SeedableRng;

#[derive(Debug, Clone)]
pub struct BatchOrder {
    len: usize,
    batch: usize,
    seed: u64,
    cached_epoch: Option<(u64, Vec<usize>)>,
}

impl BatchOrder {
    /// `len` images, batches of `batch` (capped at `len`); the last incomplete batch of an
    /// epoch is dropped so every step has the same shape.
    pub fn new(len: usize, batch: usize, seed: u64) -> Self {
        BatchOrder { len, batch: batch.min(len).max(1), seed, cached_epoch: None }
    }

    pub fn batch_size(&self) -> usize {
        self.batch
    }

    pub fn batches_per_epoch(&self) -> u64 {
        (self.len / self.batch).max(1) as u64
    }

    /// Indices of the images of global step `step` (0-based).
    pub fn indices(&mut self, step: u64) -> Vec<usize> {
        let per = self.batches_per_epoch();
        let (epoch, k) = (step / per, (step % per) as usize);
        if self.cached_epoch.as_ref().map(|(e, _)| *e) != Some(epoch) {
            self.cached_epoch = None;
        }
        let (len, seed) = (self.len, self.seed);
        let (_, perm) = self.cached_epoch.get_or_insert_with(|| {
            let mut perm: Vec<usize> = (0..len).collect();
            perm.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0xa076_1d64_78bd_642f)));
            (epoch, perm)
        });
        perm[k * self.batch..(k + 1) * self.batch].to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_covers_each_image_once_and_is_repeatable() {
        let mut a = BatchOrder::new(10, 3, 7);
        let mut seen: Vec<usize> = (0..3).flat_map(|s| a.indices(s)).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 9, "3 batches of 3 distinct images out of 10");
        let mut b = BatchOrder::new(10, 3, 7);
        assert_eq!(a.indices(4), b.indices(4));
        assert_ne!(BatchOrder::new(10, 3, 8).indices(0), b.indices(0));
    }
}
