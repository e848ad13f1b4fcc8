//! Bad input: every case exits 2 with one message that names the file (or variable / flag)
//! and the key, and never panics.

use crate::common::{stderr, vqlab, write};

/// Run `vqlab plan` (or `args`) on `text` and return stderr, asserting exit 2 and one message.
fn rejected(text: &str, args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "exp.toml", text);
    let mut all = vec!["plan", "exp.toml"];
    all.extend_from_slice(args);
    let out = vqlab(dir.path(), &all);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.matches("error:").count(), 1, "exactly one message: {err}");
    err
}

#[test]
fn kid_subsets_as_large_as_the_eval_set_are_rejected() {
    // torch-fidelity's default subset size (1000) against 200 eval images: every subset would
    // be the whole set and the KID std 0.
    let err = rejected("[data]\ndataset = \"synthetic\"\neval_images = 200\n[eval]\nfid = true\n", &[]);
    assert!(err.contains("key `eval.kid_subset_size`"), "{err}");
    assert!(err.contains("data.eval_images = 200"), "{err}");
    // Equal sizes are rejected too; the validation split is held to the same rule.
    let err = rejected("[data]\ndataset = \"synthetic\"\neval_images = 500\n[eval]\nkid_subset_size = 500\n", &[]);
    assert!(err.contains("key `eval.kid_subset_size`") && err.contains("data.eval_images = 500"), "{err}");
    let err = rejected("[data]\ndataset = \"synthetic\"\nval_images = 300\neval_images = 2000\n", &[]);
    assert!(err.contains("key `eval.kid_subset_size`") && err.contains("data.val_images = 300"), "{err}");
    // Without FID-style scores there is no KID to check.
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "exp.toml", "[data]\ndataset = \"synthetic\"\neval_images = 200\n[eval]\nfid = false\n");
    assert_eq!(vqlab(dir.path(), &["plan", "exp.toml"]).status.code(), Some(0));
}

#[test]
fn early_stop_without_a_validation_split_is_rejected() {
    let err = rejected(
        "[data]\ndataset = \"synthetic\"\nval_images = 0\n[eval]\nfid = false\n[train]\nearly_stop = [{ metric = \"val/usage\", below = 0.1 }]\n",
        &[],
    );
    assert!(err.contains("key `train.early_stop`") && err.contains("data.val_images = 0"), "{err}");
}

#[test]
fn zip_lists_of_unequal_length() {
    let err =
        rejected("[sweep]\nzip = { \"quantizer.codebook_size\" = [64, 128, 256], \"train.lr\" = [1e-3, 2e-4] }\n", &[]);
    assert!(err.contains("exp.toml [sweep.zip]: key `sweep.zip`: lists of unequal length"), "{err}");
    assert!(err.contains("`quantizer.codebook_size` has 3 values but `train.lr` has 2"), "{err}");
}

#[test]
fn unknown_key_with_suggestion() {
    let err = rejected("[quantizer]\ncodebok_size = 512\n", &[]);
    assert!(
        err.contains("exp.toml: key `quantizer.codebok_size`: unknown key (did you mean `codebook_size`?)"),
        "{err}"
    );
}

#[test]
fn string_where_a_number_belongs() {
    let err = rejected("[quantizer]\ncodebook_size = \"many\"\n", &[]);
    assert!(
        err.contains("exp.toml: key `quantizer.codebook_size`: expected a non-negative integer, found string \"many\""),
        "{err}"
    );
}

#[test]
fn codebook_size_zero() {
    let err = rejected("[quantizer]\ncodebook_size = 0\n", &[]);
    assert!(err.contains("exp.toml: key `quantizer.codebook_size`: expected at least 1 code, found 0"), "{err}");
}

#[test]
fn image_size_not_divisible_by_downsampling() {
    let err = rejected("[data]\nimage_size = 30\n[model]\ndownsample = 2\n", &[]);
    assert!(err.contains("exp.toml: key `data.image_size`: 30 is not divisible by 2^downsample = 4"), "{err}");
}

#[test]
fn toml_syntax_error_names_line() {
    let err = rejected("[quantizer\ncodebook_size = 3\n", &[]);
    assert!(err.contains("exp.toml: cannot parse: TOML parse error at line 1"), "{err}");
}

#[test]
fn missing_experiment_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = vqlab(dir.path(), &["plan", "nowhere.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("error: nowhere.toml: cannot read experiment file: no such file"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn unknown_extension() {
    let err = {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "exp.ini", "x=1");
        let out = vqlab(dir.path(), &["plan", "exp.ini"]);
        assert_eq!(out.status.code(), Some(2));
        stderr(&out)
    };
    assert!(err.contains("exp.ini: unknown experiment file format"), "{err}");
}

#[test]
fn set_override_is_named_as_the_origin() {
    let err = rejected("", &["--set", "quantizer.codebook_size=abc"]);
    assert!(
        err.contains(
            "--set quantizer.codebook_size=abc: key `quantizer.codebook_size`: expected a non-negative integer"
        ),
        "{err}"
    );
}

#[test]
fn environment_variable_is_named_as_the_origin() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "exp.toml", "");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vqlab"))
        .args(["plan", "exp.toml"])
        .current_dir(dir.path())
        .env("VQLAB_QUANTIZER__CODEBOOK_SIZE", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("environment variable VQLAB_QUANTIZER__CODEBOOK_SIZE: key `quantizer.codebook_size`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn sweep_over_a_key_that_does_not_exist() {
    let err = rejected("[sweep]\ngrid = { \"quantizer.codebok_size\" = [1, 2] }\n", &[]);
    assert!(
        err.contains("key `sweep.grid.\"quantizer.codebok_size\"`: `quantizer.codebok_size` is not an experiment key"),
        "{err}"
    );
}

#[test]
fn bad_value_inside_a_sweep() {
    let err = rejected("[sweep]\ngrid = { \"quantizer.codebook_size\" = [\"a\", 2] }\n", &[]);
    assert!(
        err.contains(
            "exp.toml [sweep.grid]: key `quantizer.codebook_size`: expected a non-negative integer, found string \"a\""
        ),
        "{err}"
    );
}

#[test]
fn unknown_variant_value() {
    let err = rejected("[model]\nvariant = \"vqxx\"\n", &[]);
    assert!(err.contains("key `model.variant`: unknown value \"vqxx\"; expected one of: vqvae, vqgan"), "{err}");
}

#[test]
fn negative_and_non_finite_rates() {
    let err = rejected("[train]\nlr = -1.0\n", &[]);
    assert!(err.contains("key `train.lr`: expected a positive finite learning rate, found -1"), "{err}");
    let err = rejected("[quantizer]\nbeta = nan\n", &[]);
    assert!(err.contains("key `quantizer.beta`: expected a finite number ≥ 0, found NaN"), "{err}");
}

#[test]
fn experiment_name_cannot_escape_the_runs_dir() {
    let err = rejected("[experiment]\nname = \"../../x\"\n", &[]);
    assert!(err.contains("key `experiment.name`"), "{err}");
}

#[test]
fn yaml_and_json_files_load_with_the_same_keys() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "exp.yaml", "quantizer:\n  codebook_size: 0\n");
    let out = vqlab(dir.path(), &["plan", "exp.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("exp.yaml: key `quantizer.codebook_size`: expected at least 1 code, found 0"),
        "{}",
        stderr(&out)
    );
    write(dir.path(), "exp.json", r#"{"quantizer": {"codebok_size": 4}}"#);
    let out = vqlab(dir.path(), &["plan", "exp.json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("exp.json: key `quantizer.codebok_size`: unknown key"), "{}", stderr(&out));
}

#[test]
fn missing_dataset_directory_at_run() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "exp.toml", "[data]\ndataset = \"fashion-mnist\"\npath = \"/nonexistent/fmnist\"\n");
    let out = vqlab(dir.path(), &["run", "exp.toml"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("error: dataset /nonexistent/fmnist: directory not found (data.path)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn truncated_gzip_at_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fm");
    std::fs::create_dir_all(&data).unwrap();
    // A valid gzip stream cut short.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &vec![7u8; 100_000]).unwrap();
    let full = gz.finish().unwrap();
    for name in [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ] {
        std::fs::write(data.join(name), &full[..full.len() / 2]).unwrap();
    }
    write(dir.path(), "exp.toml", &format!("[data]\npath = \"{}\"\n", data.display()));
    let out = vqlab(dir.path(), &["run", "exp.toml"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("train-images-idx3-ubyte.gz: truncated gzip stream"), "{}", stderr(&out));
}
