//! Fuzzing the experiment-file loader with proptest: generated TOML, YAML and JSON documents
//! over the real keys and junk ones with values of every type, byte-level mutations of a
//! valid file, and generated `--set` / `--sweep` strings. No input may panic; every rejection
//! must be an input error (exit code 2) whose every line names where the input came from
//! (the file, or the `--set` / `--sweep` flag) and, for a key problem, the key. A sample
//! also goes through the binary to check the exit code and that nothing panicked.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use crate::common::{stderr, vqlab, write};
use vqlab::error::InputError;

/// Every dotted key of the default config, from the library's own schema.
fn known_keys() -> Vec<String> {
    let mut flat = serde_json::Map::new();
    vqlab::util::flatten("", &serde_json::to_value(vqlab::config::ExperimentConfig::default()).unwrap(), &mut flat);
    let mut keys: Vec<String> = flat.keys().cloned().collect();
    keys.extend(["sweep.grid", "sweep.zip", "sweep.seeds", "train.early_stop"].map(String::from));
    keys
}

/// A generated value: every TOML type, edge numbers, odd strings, nested arrays and tables.
#[derive(Debug, Clone)]
enum Val {
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    Arr(Vec<Val>),
    Table(Vec<(String, Val)>),
}

fn val() -> impl Strategy<Value = Val> {
    let leaf = prop_oneof![
        prop_oneof![Just(0i64), Just(-1), Just(1), Just(64), Just(i64::MAX), Just(i64::MIN), any::<i64>()]
            .prop_map(Val::Int),
        prop_oneof![
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(-0.0),
            Just(1e308),
            Just(1e-320),
            any::<f64>(),
            (-1e3f64..1e3)
        ]
        .prop_map(Val::Float),
        prop_oneof![
            Just("vqgan".to_string()),
            Just("../../x".to_string()),
            Just("/etc/passwd".to_string()),
            Just("".to_string()),
            Just("a/b".to_string()),
            "\\PC{0,12}",
            "[a-z_.]{0,10}"
        ]
        .prop_map(Val::Str),
        any::<bool>().prop_map(Val::Bool),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Val::Arr),
            prop::collection::vec(("[a-z_.]{1,8}", inner), 0..4).prop_map(Val::Table),
        ]
    })
}

fn toml_key(k: &str) -> String {
    if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        k.to_string()
    } else {
        json_str(k)
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn toml_val(v: &Val) -> String {
    match v {
        Val::Int(i) => i.to_string(),
        Val::Float(f) if f.is_nan() => "nan".into(),
        Val::Float(f) if f.is_infinite() => if *f > 0.0 { "inf" } else { "-inf" }.into(),
        Val::Float(f) => format!("{f:?}"),
        Val::Str(s) => json_str(s),
        Val::Bool(b) => b.to_string(),
        Val::Arr(items) => format!("[{}]", items.iter().map(toml_val).collect::<Vec<_>>().join(", ")),
        Val::Table(kv) => {
            format!(
                "{{ {} }}",
                kv.iter().map(|(k, v)| format!("{} = {}", toml_key(k), toml_val(v))).collect::<Vec<_>>().join(", ")
            )
        }
    }
}

fn json_val(v: &Val) -> String {
    match v {
        Val::Int(i) => i.to_string(),
        // JSON has no NaN or infinity: these become strings, which the loader must reject.
        Val::Float(f) if !f.is_finite() => json_str(&f.to_string()),
        Val::Float(f) => format!("{f:?}"),
        Val::Str(s) => json_str(s),
        Val::Bool(b) => b.to_string(),
        Val::Arr(items) => format!("[{}]", items.iter().map(json_val).collect::<Vec<_>>().join(", ")),
        Val::Table(kv) => {
            format!(
                "{{{}}}",
                kv.iter().map(|(k, v)| format!("{}: {}", json_str(k), json_val(v))).collect::<Vec<_>>().join(", ")
            )
        }
    }
}

/// A document: (dotted key, value) pairs, mostly real keys, some junk.
fn entries() -> impl Strategy<Value = Vec<(String, Val)>> {
    let keys = known_keys();
    let key = prop_oneof![
        4 => prop::sample::select(keys),
        1 => "[a-z_]{1,8}(\\.[a-z_]{1,8}){0,2}",
    ];
    prop::collection::vec((key, val()), 0..10)
}

/// Nest dotted keys into sections; a later entry under the same path replaces an earlier one.
fn nest(entries: &[(String, Val)]) -> BTreeMap<String, BTreeMap<String, Val>> {
    let mut sections: BTreeMap<String, BTreeMap<String, Val>> = BTreeMap::new();
    for (k, v) in entries {
        let (section, key) = k.rsplit_once('.').unwrap_or(("experiment", k));
        sections.entry(section.to_string()).or_default().insert(key.to_string(), v.clone());
    }
    // A key that is also a section would make the document ambiguous: drop such keys.
    let names: Vec<String> = sections.keys().cloned().collect();
    for (section, table) in sections.iter_mut() {
        table.retain(|k, _| !names.contains(&format!("{section}.{k}")));
    }
    sections
}

fn render_toml(entries: &[(String, Val)]) -> String {
    let mut out = String::new();
    for (section, table) in nest(entries) {
        out.push_str(&format!("[{}]\n", section.split('.').map(toml_key).collect::<Vec<_>>().join(".")));
        for (k, v) in table {
            out.push_str(&format!("{} = {}\n", toml_key(&k), toml_val(&v)));
        }
    }
    out
}

/// JSON, and the same documents as YAML (JSON is YAML's flow style; a block-style variant
/// is rendered too).
fn render_json(entries: &[(String, Val)]) -> String {
    let mut tree: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (section, table) in nest(entries) {
        let body =
            table.iter().map(|(k, v)| format!("{}: {}", json_str(k), json_val(v))).collect::<Vec<_>>().join(", ");
        // Only the first level nests here; deeper sections become dotted names, which the
        // loader must reject as unknown keys.
        let (top, rest) = section
            .split_once('.')
            .map(|(a, b)| (a.to_string(), Some(b.to_string())))
            .unwrap_or((section.clone(), None));
        let item = match rest {
            Some(sub) => format!("{}: {{{body}}}", json_str(&sub)),
            None => body,
        };
        tree.entry(top).or_default().push(item);
    }
    let parts: Vec<String> = tree
        .iter()
        .map(|(k, items)| {
            format!(
                "{}: {{{}}}",
                json_str(k),
                items.iter().filter(|i| !i.is_empty()).cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect();
    format!("{{{}}}", parts.join(", "))
}

fn render_yaml_block(entries: &[(String, Val)]) -> String {
    let mut out = String::new();
    for (section, table) in nest(entries) {
        out.push_str(&format!("{}:\n", json_str(&section)));
        for (k, v) in table {
            out.push_str(&format!("  {}: {}\n", json_str(&k), json_val(&v)));
        }
    }
    out
}

const VALID: &str = include_str!("../../experiments/quickstart.toml");

static CHECKED: AtomicUsize = AtomicUsize::new(0);
static REJECTED: AtomicUsize = AtomicUsize::new(0);

/// Load `text` as `name` with these flags; a panic or a rejection that does not name its
/// origin fails the case.
fn check(dir: &Path, name: &str, text: &[u8], sets: &[String], sweeps: &[String]) -> Result<(), TestCaseError> {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| vqlab::config::load_sweep(&path, sets, sweeps)));
    CHECKED.fetch_add(1, Ordering::Relaxed);
    let result =
        result.map_err(|_| TestCaseError::fail(format!("panic loading {name}: {}", String::from_utf8_lossy(text))))?;
    match result {
        Ok(sweep) => {
            // Accepted: every run must have a safe directory name and a config that loads back.
            for run in &sweep.runs {
                prop_assert!(!run.dir_name.contains('/') && !run.dir_name.starts_with('.'), "{}", run.dir_name);
                prop_assert!(vqlab::config::validate::check_dir_name(&sweep.name).is_ok(), "{}", sweep.name);
            }
        }
        Err(e) => {
            REJECTED.fetch_add(1, Ordering::Relaxed);
            check_names_origin(&e, name)?;
        }
    }
    Ok(())
}

fn check_names_origin(e: &InputError, file: &str) -> Result<(), TestCaseError> {
    match e {
        InputError::Many(all) => {
            prop_assert!(!all.is_empty());
            for e in all {
                check_names_origin(e, file)?;
            }
        }
        InputError::Config { origin, key, message } => {
            prop_assert!(
                origin.contains(file)
                    || origin.starts_with("--set")
                    || origin.starts_with("--sweep")
                    || origin.starts_with("VQLAB_"),
                "origin {origin}: {e}"
            );
            prop_assert!(!key.is_empty() && !message.is_empty(), "{e}");
        }
        InputError::File { path, message } => {
            prop_assert!(path.ends_with(file) && !message.is_empty(), "{e}");
        }
        InputError::Usage(message) => {
            prop_assert!(
                message.starts_with("--set") || message.starts_with("--sweep"),
                "a usage error names its flag: {e}"
            );
        }
        InputError::Data { .. } => prop_assert!(false, "loading a config touches no dataset: {e}"),
    }
    Ok(())
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() })
}

#[test]
fn the_loader_never_panics_and_names_the_origin_of_every_rejection() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let before = (CHECKED.load(Ordering::Relaxed), REJECTED.load(Ordering::Relaxed));

    runner(1500)
        .run(&entries(), |e| {
            check(d, "exp.toml", render_toml(&e).as_bytes(), &[], &[])?;
            check(d, "exp.json", render_json(&e).as_bytes(), &[], &[])?;
            check(d, "exp.yaml", render_json(&e).as_bytes(), &[], &[])?;
            check(d, "exp.yml", render_yaml_block(&e).as_bytes(), &[], &[])
        })
        .unwrap();

    // Byte-level mutations of a valid file: deletions, insertions and replacements.
    let mutation = prop::collection::vec((0..VALID.len(), any::<u8>(), 0u8..3), 1..8);
    runner(1500)
        .run(&mutation, |edits| {
            let mut bytes = VALID.as_bytes().to_vec();
            for (at, byte, kind) in edits {
                let at = at.min(bytes.len().saturating_sub(1));
                match kind {
                    0 => {
                        bytes.remove(at);
                    }
                    1 => bytes.insert(at, byte),
                    _ => bytes[at] = byte,
                }
            }
            check(d, "mutated.toml", &bytes, &[], &[])
        })
        .unwrap();

    // --set and --sweep strings on a valid file.
    let keys = known_keys();
    let flag = (
        prop_oneof![3 => prop::sample::select(keys), 1 => "\\PC{0,10}"],
        prop_oneof![Just("=".to_string()), Just("".to_string()), Just(" = ".to_string())],
        prop_oneof!["\\PC{0,12}", val().prop_map(|v| toml_val(&v))],
    );
    runner(1500)
        .run(&(flag.clone(), flag), |((k1, eq1, v1), (k2, eq2, v2))| {
            check(d, "base.toml", VALID.as_bytes(), &[format!("{k1}{eq1}{v1}")], &[])?;
            check(d, "base.toml", VALID.as_bytes(), &[], &[format!("{k2}{eq2}{v2}")])
        })
        .unwrap();

    let checked = CHECKED.load(Ordering::Relaxed) - before.0;
    let rejected = REJECTED.load(Ordering::Relaxed) - before.1;
    eprintln!("fuzz: {checked} inputs loaded, {rejected} rejected, 0 panics");
    assert!(checked >= 10_500, "{checked}");
    // The generators must reach both outcomes, or they test nothing.
    assert!(rejected > checked / 4 && rejected < checked, "{rejected} of {checked} rejected");
}

/// A sample through the binary: exit code 2, one message, no panic.
#[test]
fn the_binary_exits_2_on_fuzzed_files_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let seen = std::cell::Cell::new(0);
    runner(40)
        .run(&entries(), |e| {
            let text = render_toml(&e);
            write(dir.path(), "exp.toml", &text);
            let out = vqlab(dir.path(), &["plan", "exp.toml"]);
            let err = stderr(&out);
            prop_assert!(!err.contains("panic"), "{err}");
            prop_assert!(out.status.code() == Some(0) || out.status.code() == Some(2), "{:?}: {err}", out.status);
            if out.status.code() == Some(2) {
                prop_assert!(err.contains("exp.toml"), "names the file: {err}");
                seen.set(seen.get() + 1);
            }
            Ok(())
        })
        .unwrap();
    assert!(seen.get() > 5, "the sample reached rejections");
}
