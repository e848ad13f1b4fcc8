//! A folder of PNG/JPEG images (searched recursively). Subdirectory names become class labels
//! (the ImageFolder convention) when every image sits in one. If the folder has `train/` and
//! `eval/` (or `test/`) subfolders they are the splits; otherwise a fixed shuffle puts
//! min(eval_images, n/10) images (at least 1) in the eval split.

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;

use super::{planar_from_rgb, require_dir, ImageSet};
use crate::error::InputError;

pub fn load_dir(
    dir: &Path,
    side: usize,
    channels: usize,
    eval_images: usize,
) -> Result<(ImageSet, ImageSet), InputError> {
    require_dir(dir, "point data.path at a directory of PNG/JPEG images")?;
    let train_dir = dir.join("train");
    let eval_dir = ["eval", "test"].iter().map(|d| dir.join(d)).find(|d| d.is_dir());
    if let (true, Some(eval_dir)) = (train_dir.is_dir(), eval_dir) {
        let classes = class_names(&[&train_dir, &eval_dir]);
        return Ok((
            load_files(&train_dir, &classes, side, channels)?,
            load_files(&eval_dir, &classes, side, channels)?,
        ));
    }
    let classes = class_names(&[dir]);
    let all = load_files(dir, &classes, side, channels)?;
    if all.len < 2 {
        return Err(InputError::data(
            dir,
            format!("found {} image(s); a train and an eval split need at least 2", all.len),
        ));
    }
    let n_eval = eval_images.min(all.len / 10).max(1);
    let mut order: Vec<usize> = (0..all.len).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(0x00f0_1de5));
    Ok((subset(&all, &order[n_eval..]), subset(&all, &order[..n_eval])))
}

fn subset(set: &ImageSet, idx: &[usize]) -> ImageSet {
    let mut pixels = Vec::with_capacity(idx.len() * set.image_len());
    for &i in idx {
        pixels.extend_from_slice(set.image(i));
    }
    let labels = set.labels.as_ref().map(|l| idx.iter().map(|&i| l[i]).collect());
    ImageSet { pixels, labels, len: idx.len(), channels: set.channels, side: set.side }
}

fn is_image(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).as_deref(),
        Some("png" | "jpg" | "jpeg")
    )
}

fn list_images(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .follow_links(true)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file() && is_image(e.path()))
        .map(|e| e.into_path())
        .collect();
    files.sort();
    files
}

/// Sorted names of the immediate subdirectories that hold images, if all images are in one.
fn class_names(dirs: &[&Path]) -> Option<Vec<String>> {
    let mut names = std::collections::BTreeSet::new();
    for dir in dirs {
        for f in list_images(dir) {
            let rel = f.strip_prefix(dir).ok()?;
            let mut comps = rel.components();
            let first = comps.next()?;
            comps.next()?; // a file directly in `dir` means: no classes
            names.insert(first.as_os_str().to_string_lossy().to_string());
        }
    }
    if names.is_empty() || names.len() > u16::MAX as usize {
        None
    } else {
        Some(names.into_iter().collect())
    }
}

fn load_files(dir: &Path, classes: &Option<Vec<String>>, side: usize, channels: usize) -> Result<ImageSet, InputError> {
    let files = list_images(dir);
    if files.is_empty() {
        return Err(InputError::data(dir, "no PNG or JPEG images found (searched recursively)"));
    }
    let per = channels * side * side;
    let decoded: Vec<Vec<u8>> = files
        .par_iter()
        .map(|f| {
            let img = image::open(f).map_err(|e| InputError::data(f, format!("cannot decode image: {e}")))?;
            let rgb = square_resize(img.to_rgb8(), side as u32);
            Ok(planar_from_rgb(&rgb, channels))
        })
        .collect::<Result<_, InputError>>()?;
    let mut pixels = Vec::with_capacity(files.len() * per);
    for d in decoded {
        pixels.extend_from_slice(&d);
    }
    let labels = classes.as_ref().map(|names| {
        files
            .iter()
            .map(|f| {
                let rel = f.strip_prefix(dir).unwrap_or(f);
                let first =
                    rel.components().next().map(|c| c.as_os_str().to_string_lossy().to_string()).unwrap_or_default();
                names.iter().position(|n| *n == first).unwrap_or(0) as u16
            })
            .collect()
    });
    Ok(ImageSet { pixels, labels, len: files.len(), channels, side })
}

/// Centre-crop to a square, then resize to `side`.
fn square_resize(img: image::RgbImage, side: u32) -> image::RgbImage {
    let (w, h) = img.dimensions();
    let s = w.min(h);
    let cropped = image::imageops::crop_imm(&img, (w - s) / 2, (h - s) / 2, s, s).to_image();
    if s == side {
        cropped
    } else {
        image::imageops::resize(&cropped, side, side, image::imageops::FilterType::Triangle)
    }
}
