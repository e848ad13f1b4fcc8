//! Datasets against independent readers and hand-made files.

use std::path::Path;

use vqlab::config::{DataConfig, DatasetKind};

const FASHION: &str = "/usr/share/datasets/fashion-mnist";

/// A data config without a validation split: the loaders' splits as the files hold them.
fn cfg(dataset: DatasetKind, path: &Path, image_size: u32, channels: u32, eval_images: usize) -> DataConfig {
    DataConfig {
        dataset,
        path: path.display().to_string(),
        image_size,
        channels,
        train_images: 0,
        val_images: Some(0),
        eval_images,
    }
}

#[test]
fn the_validation_split_is_the_end_of_the_training_file_and_is_not_trained_on() {
    if !Path::new(FASHION).is_dir() {
        assert!(std::env::var_os("CI").is_none(), "CI must install Debian's dataset-fashion-mnist");
        eprintln!("skipped: {FASHION} not installed");
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oracles/idx_first.py");
    let out = std::process::Command::new("python3")
        .args([script, FASHION, "0,54999,55000,59700,59999"])
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let oracle: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let image = |i: &str| -> Vec<u8> {
        oracle["train_at"][i]["image"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u8).collect()
    };
    // The dataset's default: 5,000 validation images, the last of the 60,000 training images.
    let mut c = cfg(DatasetKind::FashionMnist, Path::new(FASHION), 28, 1, 100);
    c.val_images = None;
    let splits = vqlab::data::load(&c).unwrap();
    assert_eq!((splits.train.len, splits.val.len, splits.eval.len), (55_000, 5_000, 100));
    assert_eq!(splits.train.image(0), &image("0")[..]);
    assert_eq!(splits.train.image(54_999), &image("54999")[..], "the last image trained on");
    assert_eq!(splits.val.image(0), &image("55000")[..], "the first validation image");
    assert_eq!(splits.val.image(4_999), &image("59999")[..]);
    assert_eq!(splits.val.labels.as_ref().unwrap()[0] as u64, oracle["train_at"]["55000"]["label"].as_u64().unwrap());
    // train_images takes from what the validation split leaves.
    c.train_images = 1000;
    c.val_images = Some(300);
    let splits = vqlab::data::load(&c).unwrap();
    assert_eq!((splits.train.len, splits.val.len), (1000, 300));
    assert_eq!(splits.val.image(0), &image("59700")[..]);
    // A validation split as large as the training split is bad input naming the key.
    c.val_images = Some(60_000);
    let err = vqlab::data::load(&c).unwrap_err().to_string();
    assert!(err.contains("data.val_images"), "{err}");
}

#[test]
fn fashion_mnist_matches_an_independent_reader() {
    if !Path::new(FASHION).is_dir() {
        // CI installs dataset-fashion-mnist; there a missing package is a failure.
        assert!(std::env::var_os("CI").is_none(), "CI must install Debian's dataset-fashion-mnist");
        eprintln!("skipped: {FASHION} not installed");
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oracles/idx_first.py");
    let out = std::process::Command::new("python3").args([script, FASHION]).output().expect("python3 runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let oracle: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let splits = vqlab::data::load(&cfg(DatasetKind::FashionMnist, Path::new(FASHION), 28, 1, 10_000)).unwrap();
    for (name, set) in [("train", &splits.train), ("t10k", &splits.eval)] {
        let o = &oracle[name];
        assert_eq!(set.len as u64, o["n"].as_u64().unwrap());
        assert_eq!(set.side as u64, o["h"].as_u64().unwrap());
        let first: Vec<u8> = o["first"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u8).collect();
        let last: Vec<u8> = o["last"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u8).collect();
        assert_eq!(set.image(0), &first[..], "{name} first image");
        assert_eq!(set.image(set.len - 1), &last[..], "{name} last image");
        let labels = set.labels.as_ref().unwrap();
        assert_eq!(labels[0] as u64, o["label_first"].as_u64().unwrap());
        assert_eq!(labels[set.len - 1] as u64, o["label_last"].as_u64().unwrap());
    }
}

fn write_idx(dir: &Path, stem: &str, magic: u32, dims: &[u32], body: &[u8], gz: bool) {
    let mut bytes = magic.to_be_bytes().to_vec();
    for d in dims {
        bytes.extend(d.to_be_bytes());
    }
    bytes.extend_from_slice(body);
    if gz {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, &bytes).unwrap();
        std::fs::write(dir.join(format!("{stem}.gz")), enc.finish().unwrap()).unwrap();
    } else {
        std::fs::write(dir.join(stem), bytes).unwrap();
    }
}

/// Two 4×4 train images and one eval image with known pixels.
fn tiny_idx(dir: &Path, gz: bool) {
    let train: Vec<u8> = (0..32).collect();
    write_idx(dir, "train-images-idx3-ubyte", 0x803, &[2, 4, 4], &train, gz);
    write_idx(dir, "train-labels-idx1-ubyte", 0x801, &[2], &[3, 9], gz);
    write_idx(dir, "t10k-images-idx3-ubyte", 0x803, &[1, 4, 4], &[200; 16], gz);
    write_idx(dir, "t10k-labels-idx1-ubyte", 0x801, &[1], &[1], gz);
}

#[test]
fn idx_raw_and_gzip_read_the_same() {
    for gz in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        tiny_idx(dir.path(), gz);
        let s = vqlab::data::load(&cfg(DatasetKind::Mnist, dir.path(), 4, 1, 10)).unwrap();
        assert_eq!(s.train.len, 2);
        assert_eq!(s.train.image(1), &(16u8..32).collect::<Vec<_>>()[..]);
        assert_eq!(s.train.labels.as_ref().unwrap(), &vec![3, 9]);
        assert_eq!(s.eval.len, 1, "eval_images is capped at the split's size");
        assert!(s.notes.iter().any(|n| n.contains("eval split has 1")));
    }
}

#[test]
fn idx_wrong_magic_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    tiny_idx(dir.path(), false);
    write_idx(dir.path(), "train-images-idx3-ubyte", 0x801, &[2, 4, 4], &[0; 32], false);
    let err = vqlab::data::load(&cfg(DatasetKind::Mnist, dir.path(), 4, 1, 10)).unwrap_err().to_string();
    assert!(err.contains("train-images-idx3-ubyte: wrong magic number 0x00000801, expected 0x00000803"), "{err}");
}

#[test]
fn idx_body_shorter_than_header_says() {
    let dir = tempfile::tempdir().unwrap();
    tiny_idx(dir.path(), false);
    write_idx(dir.path(), "train-images-idx3-ubyte", 0x803, &[3, 4, 4], &[0; 32], false);
    let err = vqlab::data::load(&cfg(DatasetKind::Mnist, dir.path(), 4, 1, 10)).unwrap_err().to_string();
    assert!(err.contains("header says 3 images of 4×4 (48 bytes) but the file holds 32 bytes"), "{err}");
}

#[test]
fn cifar10_records_are_planar_rgb() {
    let dir = tempfile::tempdir().unwrap();
    // One record per file: label i, red plane = 10·i, green = 100, blue = 255.
    let record = |label: u8| {
        let mut r = vec![label];
        r.extend(vec![10 * label; 1024]);
        r.extend(vec![100; 1024]);
        r.extend(vec![255; 1024]);
        r
    };
    for i in 1..=5u8 {
        std::fs::write(dir.path().join(format!("data_batch_{i}.bin")), record(i)).unwrap();
    }
    std::fs::write(dir.path().join("test_batch.bin"), record(7)).unwrap();
    let s = vqlab::data::load(&cfg(DatasetKind::Cifar10, dir.path(), 32, 3, 10)).unwrap();
    assert_eq!(s.train.len, 5);
    assert_eq!(s.train.labels.as_ref().unwrap(), &vec![1, 2, 3, 4, 5]);
    let img = s.train.image(2);
    assert_eq!((img[0], img[1024], img[2048]), (30, 100, 255));
    // Grayscale conversion uses ITU-R 601 luma: (299·70 + 587·100 + 114·255 + 500) / 1000 = 109.
    let g = vqlab::data::load(&cfg(DatasetKind::Cifar10, dir.path(), 32, 1, 10)).unwrap();
    assert_eq!(g.eval.image(0)[0], 109);
    // A truncated batch names the file.
    std::fs::write(dir.path().join("data_batch_3.bin"), &record(3)[..100]).unwrap();
    let err = vqlab::data::load(&cfg(DatasetKind::Cifar10, dir.path(), 32, 3, 10)).unwrap_err().to_string();
    assert!(err.contains("data_batch_3.bin: 100 bytes is not a whole number of 3073-byte CIFAR-10 records"), "{err}");
}

#[test]
fn image_folder_with_class_subdirectories() {
    let dir = tempfile::tempdir().unwrap();
    for (class, value) in [("cats", 40u8), ("dogs", 220u8)] {
        std::fs::create_dir_all(dir.path().join(class)).unwrap();
        for i in 0..10 {
            let img = image::RgbImage::from_pixel(12, 8, image::Rgb([value, value, value]));
            img.save(dir.path().join(class).join(format!("{i}.png"))).unwrap();
        }
    }
    let s = vqlab::data::load(&cfg(DatasetKind::Folder, dir.path(), 4, 1, 2)).unwrap();
    assert_eq!((s.train.len, s.eval.len), (18, 2));
    assert_eq!(s.train.side, 4);
    for set in [&s.train, &s.eval] {
        for i in 0..set.len {
            let expected = if set.labels.as_ref().unwrap()[i] == 0 { 40 } else { 220 };
            assert!(set.image(i).iter().all(|&p| p == expected), "class label matches the pixels");
        }
    }
    // An unreadable file is named.
    std::fs::write(dir.path().join("dogs").join("broken.png"), b"not a png").unwrap();
    let err = vqlab::data::load(&cfg(DatasetKind::Folder, dir.path(), 4, 1, 2)).unwrap_err().to_string();
    assert!(err.contains("broken.png: cannot decode image"), "{err}");
}

#[test]
fn empty_folder_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = vqlab::data::load(&cfg(DatasetKind::Folder, dir.path(), 8, 3, 2)).unwrap_err().to_string();
    assert!(err.contains("no PNG or JPEG images found"), "{err}");
}

#[test]
fn synthetic_is_deterministic_and_labelled() {
    let c = cfg(DatasetKind::Synthetic, Path::new(""), 16, 3, 32);
    let a = vqlab::data::load(&c).unwrap();
    let b = vqlab::data::load(&c).unwrap();
    assert_eq!(a.train.pixels, b.train.pixels);
    assert_eq!(a.fingerprint(), b.fingerprint());
    assert_eq!(a.train.len, 10_000);
    let labels = a.train.labels.as_ref().unwrap();
    let distinct: std::collections::BTreeSet<_> = labels.iter().collect();
    assert_eq!(distinct.len(), 8, "all eight shape classes occur");
    assert_ne!(a.train.image(0), a.eval.image(0), "train and eval are different draws");
}
