//! CIFAR-10 binary version: `data_batch_1.bin` … `data_batch_5.bin` and `test_batch.bin`,
//! records of 1 label byte + 3072 pixel bytes (R, G, B planes of 32×32).

use std::path::Path;

use super::{require_dir, ImageSet};
use crate::error::InputError;

const RECORD: usize = 1 + 3 * 32 * 32;

pub fn load_dir(dir: &Path) -> Result<(ImageSet, ImageSet), InputError> {
    require_dir(dir, "download the CIFAR-10 binary version and point data.path at cifar-10-batches-bin")?;
    let mut train = empty();
    for i in 1..=5 {
        append(&mut train, &dir.join(format!("data_batch_{i}.bin")))?;
    }
    let mut eval = empty();
    append(&mut eval, &dir.join("test_batch.bin"))?;
    Ok((train, eval))
}

fn empty() -> ImageSet {
    ImageSet { pixels: Vec::new(), labels: Some(Vec::new()), len: 0, channels: 3, side: 32 }
}

fn append(set: &mut ImageSet, path: &Path) -> Result<(), InputError> {
    let bytes = std::fs::read(path).map_err(|e| InputError::data(path, format!("cannot read CIFAR-10 batch: {e}")))?;
    if bytes.is_empty() || bytes.len() % RECORD != 0 {
        return Err(InputError::data(
            path,
            format!("{} bytes is not a whole number of {RECORD}-byte CIFAR-10 records (truncated?)", bytes.len()),
        ));
    }
    let labels = set.labels.get_or_insert_with(Vec::new);
    for rec in bytes.chunks_exact(RECORD) {
        if rec[0] > 9 {
            return Err(InputError::data(path, format!("label {} outside 0..=9: not a CIFAR-10 batch", rec[0])));
        }
        labels.push(rec[0] as u16);
        set.pixels.extend_from_slice(&rec[1..]);
        set.len += 1;
    }
    Ok(())
}
