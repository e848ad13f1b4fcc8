//! IDX files (MNIST, Fashion-MNIST): big-endian magic 0x00000803 (u8 images, 3 dims) and
//! 0x00000801 (u8 labels, 1 dim), raw or gzip-compressed.

use std::path::{Path, PathBuf};

use super::{read_maybe_gz, require_dir, ImageSet};
use crate::error::InputError;

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;

/// Load `train-*` and `t10k-*` from a directory (the layout of the original archives and of
/// Debian's dataset packages).
pub fn load_dir(dir: &Path) -> Result<(ImageSet, ImageSet), InputError> {
    require_dir(dir, "for Fashion-MNIST install Debian's `dataset-fashion-mnist` (scripts/setup.sh does)")?;
    let train = load_pair(&find(dir, "train-images-idx3-ubyte")?, &find(dir, "train-labels-idx1-ubyte")?)?;
    let eval = load_pair(&find(dir, "t10k-images-idx3-ubyte")?, &find(dir, "t10k-labels-idx1-ubyte")?)?;
    Ok((train, eval))
}

fn find(dir: &Path, stem: &str) -> Result<PathBuf, InputError> {
    for name in [format!("{stem}.gz"), stem.to_string(), stem.replacen("-idx", ".idx", 1)] {
        let p = dir.join(&name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(InputError::data(dir.join(format!("{stem}.gz")), "missing IDX file (looked for it with and without .gz)"))
}

fn header(bytes: &[u8], path: &Path, magic: u32, dims: usize) -> Result<Vec<usize>, InputError> {
    let need = 4 + 4 * dims;
    if bytes.len() < need {
        return Err(InputError::data(path, format!("too short for an IDX header ({} bytes)", bytes.len())));
    }
    let found = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if found != magic {
        return Err(InputError::data(
            path,
            format!("wrong magic number 0x{found:08x}, expected 0x{magic:08x}: not an IDX file of this kind"),
        ));
    }
    Ok((0..dims)
        .map(|i| {
            let o = 4 + 4 * i;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect())
}

pub fn read_images(path: &Path) -> Result<(Vec<u8>, usize, usize, usize), InputError> {
    let bytes = read_maybe_gz(path)?;
    let dims = header(&bytes, path, IMAGES_MAGIC, 3)?;
    let (n, h, w) = (dims[0], dims[1], dims[2]);
    let body = &bytes[16..];
    if h != w || h == 0 {
        return Err(InputError::data(path, format!("images are {h}×{w}; vqlab needs square images")));
    }
    let want = n.checked_mul(h * w).ok_or_else(|| InputError::data(path, "header sizes overflow"))?;
    if body.len() != want {
        return Err(InputError::data(
            path,
            format!("header says {n} images of {h}×{w} ({want} bytes) but the file holds {} bytes", body.len()),
        ));
    }
    Ok((body.to_vec(), n, h, w))
}

pub fn read_labels(path: &Path) -> Result<Vec<u8>, InputError> {
    let bytes = read_maybe_gz(path)?;
    let dims = header(&bytes, path, LABELS_MAGIC, 1)?;
    let body = &bytes[8..];
    if body.len() != dims[0] {
        return Err(InputError::data(
            path,
            format!("header says {} labels but the file holds {}", dims[0], body.len()),
        ));
    }
    Ok(body.to_vec())
}

fn load_pair(images: &Path, labels: &Path) -> Result<ImageSet, InputError> {
    let (pixels, n, side, _) = read_images(images)?;
    let l = read_labels(labels)?;
    if l.len() != n {
        return Err(InputError::data(labels, format!("{} labels for {n} images in {}", l.len(), images.display())));
    }
    Ok(ImageSet { pixels, labels: Some(l.into_iter().map(u16::from).collect()), len: n, channels: 1, side })
}
