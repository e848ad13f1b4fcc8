//! Snapshot tests of what users read (insta): `--help` of every command, `plan`, the final
//! table of `run`, `status`, and the error message of each class of bad input. Paths of
//! temporary directories, run ids and measured numbers are redacted; any other change to what
//! a user sees shows up in review as a changed `.snap` file (`cargo insta review`).

use std::path::Path;

use crate::common::{stderr, stdout, tiny_experiment, vqlab, write};

fn filters() -> Vec<(&'static str, &'static str)> {
    vec![
        (r"/tmp/\.tmp[A-Za-z0-9]+", "[tmp]"),
        (r"\b[0-9a-f]{8}\b", "[id]"),
        (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "[time]"),
        (r"\(\d+(\.\d+)?s\)", "([secs])"),
        // What the machine has (the slot line of a dry run).
        (r"\d+ thread\(s\) per run on \d+ core\(s\)", "[threads] per run on [cores]"),
    ]
}

macro_rules! snapshot {
    ($name:expr, $value:expr) => {
        insta::with_settings!({ filters => filters(), prepend_module_to_snapshot => false, omit_expression => true }, {
            insta::assert_snapshot!($name, $value);
        })
    };
}

fn transcript(dir: &Path, args: &[&str]) -> String {
    let out = vqlab(dir, args);
    let mut s = format!("$ vqlab {}\nexit {}\n", args.join(" "), out.status.code().unwrap_or(-1));
    let (o, e) = (stdout(&out), stderr(&out));
    if !o.is_empty() {
        s.push_str(&format!("--- stdout\n{o}"));
    }
    if !e.is_empty() {
        s.push_str(&format!("--- stderr\n{e}"));
    }
    s
}

#[test]
fn help_of_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let top = stdout(&vqlab(dir.path(), &["--help"]));
    snapshot!("help", top);
    let commands = crate::common::commands(dir.path());
    assert!(commands.len() >= 10);
    for c in commands {
        snapshot!(format!("help-{c}"), stdout(&vqlab(dir.path(), &[c.as_str(), "--help"])));
    }
}

#[test]
fn plan_run_and_status_as_a_user_sees_them() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "exp.toml", &tiny_experiment("snap", "[sweep.grid]\n\"quantizer.codebook_size\" = [16, 32]\n"));
    snapshot!("plan", transcript(dir.path(), &["plan", "exp.toml"]));
    snapshot!("plan-dry-run", transcript(dir.path(), &["run", "exp.toml", "--dry-run"]));
    let out = vqlab(dir.path(), &["-q", "run", "exp.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The measured numbers differ between CPUs: keep the table's shape, states and names.
    let table = regex_lite_numbers(&stdout(&out));
    snapshot!("run-table", table);
    let status = regex_lite_numbers(&stdout(&vqlab(dir.path(), &["status", "runs/snap"])));
    snapshot!("status", status);
}

/// Measured numbers as `#` (the columns from `rec_mse` on; the run's name and state stay),
/// padding collapsed to single spaces and rules to `---`, since column widths follow the values.
fn regex_lite_numbers(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let words: Vec<String> = line
            .split_whitespace()
            .map(|w| {
                if w.chars().all(|c| c == '-') && w.len() > 1 {
                    "---".to_string()
                } else if w.parse::<f64>().is_ok() && (w.contains('.') || w.len() > 2) {
                    "#".to_string()
                } else {
                    w.to_string()
                }
            })
            .collect();
        out.push_str(&words.join(" "));
        out.push('\n');
    }
    out
}

#[test]
fn the_error_of_each_class_of_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "exp.toml", &tiny_experiment("bad", ""));
    write(d, "typo.toml", "[quantizer]\ncodebok_size = 64\n");
    write(d, "type.toml", "[quantizer]\ncodebook_size = \"many\"\n");
    write(d, "value.toml", "[data]\ndataset = \"synthetic\"\nimage_size = 30\n");
    write(d, "syntax.toml", "[quantizer\ncodebook_size = 64\n");
    write(d, "stop.toml", "[train]\nearly_stop = [{ metric = \"eval/usage\", below = 0.1 }]\n");
    write(d, "kid.toml", "[data]\ndataset = \"synthetic\"\neval_images = 200\n");
    write(d, "nodata.toml", "[data]\ndataset = \"mnist\"\npath = \"no/such/dir\"\n");
    write(d, "sweep.toml", "[sweep.grid]\n\"quantizer.codebook_sizes\" = [8, 16]\n");
    std::fs::create_dir_all(d.join("empty")).unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec!["plan", "missing.toml"],
        vec!["plan", "typo.toml"],
        vec!["plan", "type.toml"],
        vec!["plan", "value.toml"],
        vec!["plan", "syntax.toml"],
        vec!["plan", "stop.toml"],
        vec!["plan", "kid.toml"],
        vec!["plan", "sweep.toml"],
        vec!["plan", "exp.toml", "--set", "quantizer.codebook_size"],
        vec!["plan", "exp.toml", "--set", "train.lr=-1"],
        vec!["plan", "exp.toml", "--sweep", "train.steps"],
        vec!["run", "nodata.toml"],
        vec!["run", "exp.toml", "--wait"],
        vec!["train", "empty"],
        vec!["status", "no-such-sweep"],
        vec!["report", "empty", "--rows", "model.variant"],
        vec!["report", "exp.toml", "--rows", "model.variant"],
        vec!["plot", "empty", "--y", "eval/usage", "--out", "figure.pdf"],
        vec!["bench", "exp.toml", "--steps", "0"],
    ];
    let mut all = String::new();
    for args in &cases {
        let t = transcript(d, args);
        let code = vqlab(d, args).status.code();
        assert_eq!(code, Some(2), "bad input must be exit 2:\n{t}");
        assert!(!t.contains("panicked") && !t.contains("RUST_BACKTRACE"), "{t}");
        all.push_str(&t);
        all.push('\n');
    }
    snapshot!("bad-input", all);
}
