//! Docs that cannot drift: the tables the README and docs/design.md hold between
//! `<!-- generated: vqlab docs TOPIC -->` markers are exactly what `vqlab docs TOPIC` prints
//! from the code, and both documents name every command `vqlab --help` lists.

use std::path::Path;

use crate::common::{stdout, vqlab};

const TOPICS: [&str; 3] = ["keys", "metrics", "status"];

fn read(doc: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(doc)).unwrap()
}

/// The text between a topic's markers in a document; None when the document has no block.
fn generated_block(doc: &str, topic: &str) -> Option<String> {
    let start = format!("<!-- generated: vqlab docs {topic} -->\n");
    let from = doc.find(&start)? + start.len();
    let to = from + doc[from..].find("<!-- end generated -->")?;
    Some(doc[from..to].to_string())
}

#[test]
fn the_generated_tables_of_the_docs_are_what_the_code_prints() {
    let dir = tempfile::tempdir().unwrap();
    for topic in TOPICS {
        let out = vqlab(dir.path(), &["docs", topic]);
        assert!(out.status.success(), "vqlab docs {topic} failed");
        let printed = stdout(&out);
        assert!(printed.lines().count() > 5, "vqlab docs {topic} printed too little:\n{printed}");
        for doc in ["README.md", "docs/design.md"] {
            let block = generated_block(&read(doc), topic)
                .unwrap_or_else(|| panic!("{doc} has no `<!-- generated: vqlab docs {topic} -->` block"));
            assert!(
                block == printed,
                "{doc}'s `{topic}` table differs from `vqlab docs {topic}`; paste its output between the markers.\n--- {doc}\n{block}\n--- vqlab docs {topic}\n{printed}"
            );
        }
    }
}

#[test]
fn every_key_of_the_table_is_accepted_at_its_default_and_others_are_refused() {
    // Independent of the generator: each key of the README's table, set with `--set` to the
    // default the table gives, is accepted and changes nothing (the run id stays the one of
    // the bare file); a key outside the table is refused.
    let dir = tempfile::tempdir().unwrap();
    crate::common::write(dir.path(), "exp.toml", "[experiment]\nname = \"keys\"\n[data]\ndataset = \"synthetic\"\n");
    let plain = stdout(&vqlab(dir.path(), &["plan", "exp.toml", "--json"]));
    let table = generated_block(&read("README.md"), "keys").unwrap();
    let mut sets = Vec::new();
    for line in table.lines().skip(2) {
        let cells: Vec<&str> = line.split(" | ").collect();
        let key = cells[0].trim_start_matches("| ").trim_matches('`');
        let default = cells[1];
        // Defaults that depend on other keys ("per dataset", "`0.1` for lfq") and the sweep
        // itself are skipped: only a default that is one literal is set.
        let literal = default.starts_with('`') && default.ends_with('`') && default.matches('`').count() == 2;
        if !literal || key.starts_with("sweep.") || key == "experiment.name" {
            continue;
        }
        sets.push(format!("{key}={}", default.trim_matches('`')));
    }
    assert!(sets.len() > 45, "{sets:?}");
    let mut args = vec!["plan", "exp.toml", "--json"];
    for s in &sets {
        args.extend(["--set", s.as_str()]);
    }
    let out = vqlab(dir.path(), &args);
    assert!(out.status.success(), "{}", crate::common::stderr(&out));
    let ids = |json: &str| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        v["runs"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect()
    };
    // data.dataset's default is fashion-mnist: set back to the file's synthetic, the ids agree.
    let mut args2 = args.clone();
    args2.extend(["--set", "data.dataset=synthetic"]);
    let with_defaults = stdout(&vqlab(dir.path(), &args2));
    assert_eq!(ids(&with_defaults), ids(&plain), "setting keys to the table's defaults changed the run");
    let out = vqlab(dir.path(), &["plan", "exp.toml", "--set", "quantizer.no_such_key=1"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn the_docs_name_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let commands = crate::common::commands(dir.path());
    assert!(commands.len() >= 10, "{commands:?}");
    for doc in ["README.md", "docs/design.md"] {
        let text = read(doc);
        for c in &commands {
            assert!(text.contains(&format!("| `vqlab {c}")), "{doc}'s command table lacks `vqlab {c}`");
        }
    }
}
