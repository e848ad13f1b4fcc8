//! The image-to-image tasks (`task.kind`): the degradations against independent oracles,
//! their options refused where they do not apply, task runs recording the baseline and
//! resuming exactly. The learning check of the tasks is in `learning`.

use candle_core::{Device, Tensor};
use vqlab::data::Degradation;

use crate::common::{oracle, stderr, tiny_experiment, vqlab, write};

#[test]
fn superres_input_is_the_box_downscale_then_pils_bicubic_upscale() {
    // Two 12×12 images with edges and gradients (values up to 1, where the clip matters).
    let (n, side) = (2usize, 12usize);
    let x: Vec<f32> = (0..n * side * side)
        .map(|i| {
            let (img, r, c) = (i / (side * side), (i / side) % side, i % side);
            let v = ((r * 3 + c * 5 + img * 7) % 11) as f32 / 10.0;
            if (r + img) % 4 == 0 {
                1.0
            } else {
                v
            }
        })
        .collect();
    let images: Vec<Vec<Vec<f64>>> = x
        .chunks(side * side)
        .map(|im| im.chunks(side).map(|r| r.iter().map(|v| f64::from(*v)).collect()).collect())
        .collect();
    for scale in [2usize, 3, 4] {
        let path = std::env::temp_dir().join(format!("degrade-{}-{scale}.json", std::process::id()));
        std::fs::write(&path, serde_json::json!({ "x": images, "scale": scale }).to_string()).unwrap();
        let want = oracle("degrade.py", &[path.as_os_str()]);
        let _ = std::fs::remove_file(&path);
        let t = Tensor::from_vec(x.clone(), (n, 1, side, side), &Device::Cpu).unwrap();
        let got = Degradation::Downscale { scale }.apply(&t, &[0, 1]).unwrap();
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want: Vec<f64> = want["y"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|im| {
                im.as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
            })
            .collect();
        assert_eq!(got.len(), want.len());
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!((f64::from(*a) - b).abs() < 1e-5, "scale {scale}, pixel {i}: {a} vs PIL {b}");
        }
    }
}

#[test]
fn denoise_input_has_the_configured_noise() {
    // σ = 0.05 around 0.5 is clipped less than once in 10^23 pixels: the difference is the noise.
    let x = Tensor::full(0.5f32, (64, 1, 16, 16), &Device::Cpu).unwrap();
    let keys: Vec<u64> = (0..64).collect();
    let y = Degradation::Noise { std: 0.05 }.apply(&x, &keys).unwrap();
    let d: Vec<f64> =
        (y - &x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f64::from).collect();
    let n = d.len() as f64;
    let mean = d.iter().sum::<f64>() / n;
    let std = (d.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    // 16,384 draws: the mean's standard error is 0.05/128 ≈ 4e-4, the std's about 0.7%.
    assert!(mean.abs() < 2e-3, "noise mean {mean}");
    assert!((std / 0.05 - 1.0).abs() < 0.03, "noise std {std}");
}

#[test]
fn task_options_are_refused_where_they_do_not_apply() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "exp.toml", &tiny_experiment("taskbad", ""));
    for (sets, expected) in [
        (&["task.noise_std=0.1"][..], "key `task.noise_std`: an option of task.kind = \"denoise\" only"),
        (&["task.kind=superres", "task.noise_std=0.1"], "key `task.noise_std`"),
        (&["task.kind=denoise", "task.noise_std=0"], "key `task.noise_std`: expected a σ in (0, 1]"),
        (&["task.kind=denoise", "task.scale=2"], "key `task.scale`: an option of task.kind = \"superres\" only"),
        (&["task.kind=superres", "task.scale=5"], "key `task.scale`: 5 does not divide data.image_size"),
        (&["task.kind=superres", "task.scale=1"], "key `task.scale`: expected a downscaling factor from 2 to 16"),
        (&["task.kind=inpaint"], "task.kind"),
    ] {
        let mut args = vec!["plan", "exp.toml"];
        for s in sets {
            args.extend(["--set", s]);
        }
        let out = vqlab(dir.path(), &args);
        assert_eq!(out.status.code(), Some(2), "{sets:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(expected), "{sets:?}: expected {expected:?} in {}", stderr(&out));
    }
}

#[test]
fn task_runs_record_the_input_baseline_show_the_input_and_resume_exactly() {
    for (sets, name) in
        [(&["task.kind=denoise"][..], "taskdenoise"), (&["task.kind=superres", "task.scale=4"], "tasksr")]
    {
        crate::train::assert_resume_is_exact(name, sets);
    }
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "exp.toml",
        &tiny_experiment("tasks", "[sweep.grid]\n\"task.kind\" = [\"reconstruct\", \"denoise\", \"superres\"]\n"),
    );
    let out = vqlab(dir.path(), &["run", "exp.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut heights = std::collections::BTreeMap::new();
    for run in crate::common::run_dirs(&dir.path().join("runs/tasks")) {
        let s: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
        let kind = s["task.kind"].as_str().unwrap().to_string();
        let input = &s["eval/input_psnr"];
        if kind == "reconstruct" {
            assert!(input.is_null(), "a reconstruction has no degraded input: {input}");
            assert!(s.get("task.noise_std").is_none() && s.get("task.scale").is_none());
        } else {
            // A finite baseline, and the resolved option in the run's config.
            assert!(input.as_f64().unwrap().is_finite() && s["val/input_psnr"].as_f64().is_some(), "{kind}");
            let option = if kind == "denoise" { ("task.noise_std", 0.2) } else { ("task.scale", 2.0) };
            assert_eq!(s[option.0].as_f64(), Some(option.1), "{kind}");
        }
        let grid = std::fs::read_dir(run.join("samples")).unwrap().next().unwrap().unwrap().path();
        heights.insert(kind, image::open(&grid).unwrap().height());
    }
    // Originals and reconstructions; the tasks add the degraded inputs as a third block.
    let (plain, denoise, superres) = (heights["reconstruct"], heights["denoise"], heights["superres"]);
    assert_eq!(denoise, superres);
    assert_eq!((denoise - 2) * 2, (plain - 2) * 3, "{heights:?}");
}
