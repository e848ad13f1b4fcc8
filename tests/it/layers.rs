//! The module layering of `src/lib.rs`'s doc comment, checked against every `crate::` path in
//! `src/`: a module may import only from modules of lower layers. The checker is written here,
//! independently of the product, and is itself tested on files with an upward import.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `- layer N: \`a\`, \`b\` — …` lines of the lib.rs doc comment: module → layer.
fn declared_layers(lib_rs: &str) -> BTreeMap<String, u32> {
    let mut layers = BTreeMap::new();
    for line in lib_rs.lines() {
        let Some(rest) = line.trim_start().strip_prefix("//! - layer ") else { continue };
        let Some((n, mods)) = rest.split_once(':') else { continue };
        let n: u32 = n.trim().parse().expect("a layer number");
        let mods = mods.split('—').next().unwrap();
        for m in mods.split(',') {
            let m = m.trim().trim_matches('`');
            if !m.is_empty() {
                assert!(layers.insert(m.to_string(), n).is_none(), "{m} is in two layers");
            }
        }
    }
    layers
}

/// The top-level module a file of `src/` belongs to, and how many `super::` reach the crate
/// root from it (None for lib.rs and main.rs).
fn module_of(rel: &Path) -> Option<(String, usize)> {
    let parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().to_string()).collect();
    match parts.as_slice() {
        [file] if file == "lib.rs" || file == "main.rs" => None,
        [file] => Some((file.trim_end_matches(".rs").to_string(), 1)),
        [dir, rest @ ..] => {
            let depth = if rest.last().is_some_and(|f| f == "mod.rs") { rest.len() } else { rest.len() + 1 };
            Some((dir.clone(), depth))
        }
        [] => None,
    }
}

/// The top-level modules a file's code (comments left out) names through `crate::` or through
/// enough `super::` to reach the crate root.
fn imports(text: &str, depth_to_root: usize) -> Vec<(usize, String)> {
    let root_super = "super::".repeat(depth_to_root);
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        for prefix in ["crate::", root_super.as_str()] {
            let mut rest = code;
            while let Some(pos) = rest.find(prefix) {
                // `super::super::x` must not count as a deeper file's `super::x`.
                let before = &rest[..pos];
                rest = &rest[pos + prefix.len()..];
                if prefix.starts_with("super") && before.ends_with("super::") {
                    continue;
                }
                if prefix.starts_with("super") && rest.starts_with("super::") {
                    continue;
                }
                if let Some(group) = rest.strip_prefix('{') {
                    let inner = group.split('}').next().unwrap_or("");
                    for item in inner.split(',') {
                        let name: String =
                            item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                        if !name.is_empty() {
                            out.push((i + 1, name));
                        }
                    }
                } else {
                    let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    if !name.is_empty() {
                        out.push((i + 1, name));
                    }
                }
            }
        }
    }
    out
}

/// Every import that goes to a module of the same or a higher layer, or to an undeclared one.
fn violations(layers: &BTreeMap<String, u32>, files: &[(PathBuf, String)]) -> Vec<String> {
    let mut bad = Vec::new();
    for (rel, text) in files {
        let Some((module, depth)) = module_of(rel) else { continue };
        let Some(&own) = layers.get(&module) else {
            bad.push(format!("{}: module `{module}` is in no layer of src/lib.rs", rel.display()));
            continue;
        };
        for (line, target) in imports(text, depth) {
            if target == module || target == "self" || target == "GIT_COMMIT" || target == "InputError" {
                continue;
            }
            match layers.get(&target) {
                None => bad.push(format!("{}:{line}: `{target}` is in no layer of src/lib.rs", rel.display())),
                Some(&t) if t >= own => bad.push(format!(
                    "{}:{line}: `{module}` (layer {own}) imports `{target}` (layer {t}): only lower layers may be imported",
                    rel.display()
                )),
                Some(_) => {}
            }
        }
    }
    bad
}

fn source_files(src: &Path) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                files.push((p.strip_prefix(src).unwrap().to_path_buf(), text));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn no_module_imports_from_its_own_or_a_higher_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let layers = declared_layers(&std::fs::read_to_string(src.join("lib.rs")).unwrap());
    assert!(layers.len() >= 15, "the layer list was not found in src/lib.rs: {layers:?}");
    let files = source_files(&src);
    // Every top-level module of the crate is in the list.
    for (rel, _) in &files {
        if let Some((m, _)) = module_of(rel) {
            assert!(layers.contains_key(&m), "src/{}: module {m} is in no layer", rel.display());
        }
    }
    let bad = violations(&layers, &files);
    assert!(bad.is_empty(), "imports against the layering of src/lib.rs:\n{}", bad.join("\n"));
}

#[test]
fn the_checker_finds_upward_and_sideways_imports() {
    let layers: BTreeMap<String, u32> =
        [("util", 0), ("metric", 1), ("config", 2), ("data", 4), ("ops", 4), ("train", 7)]
            .into_iter()
            .map(|(m, l)| (m.to_string(), l))
            .collect();
    let file = |p: &str, t: &str| (PathBuf::from(p), t.to_string());
    let files = vec![
        // Allowed: downward, within the module, comments.
        file("config/validate.rs", "use crate::metric::Split;\nuse super::schema::X; // crate::train::no\n"),
        file("train/mod.rs", "use crate::{config, data::load, util};\n"),
        // Upward through `crate::`, a group, and `super::` from a top-level file.
        file("config/validate.rs", "    let n = crate::train::EVAL_METRICS;\n"),
        file("metric.rs", "use crate::{util, config::ExperimentConfig};\n"),
        file("util/mod.rs", "use super::metric::Split;\n"),
        file("util/process.rs", "use super::super::train;\n"),
        // Sideways: the same layer.
        file("data/mod.rs", "use crate::ops::conv;\n"),
    ];
    let bad = violations(&layers, &files);
    assert_eq!(bad.len(), 5, "{bad:#?}");
    assert!(bad[0].contains("config/validate.rs:1: `config` (layer 2) imports `train` (layer 7)"), "{}", bad[0]);
    assert!(bad[1].contains("metric.rs:1: `metric` (layer 1) imports `config`"), "{}", bad[1]);
    assert!(bad[2].contains("util/mod.rs:1: `util` (layer 0) imports `metric`"), "{}", bad[2]);
    assert!(bad[3].contains("util/process.rs:1: `util` (layer 0) imports `train`"), "{}", bad[3]);
    assert!(bad[4].contains("data/mod.rs:1: `data` (layer 4) imports `ops` (layer 4)"), "{}", bad[4]);
}
