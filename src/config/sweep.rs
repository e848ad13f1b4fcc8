//! Sweep expansion (grid × zip × seeds) into fully resolved run configs, and the one function
//! that maps a run config to its id and directory name.

use std::collections::BTreeMap;

use figment::Figment;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::load::{parse_sweep_arg, KeyOverride, Layers};
use super::schema::{Branch, ConvAlgorithm, ExperimentConfig, QuantizerKind, SweepAxes, Variant};
use super::validate::{resolve, validate};
use crate::error::InputError;

/// Keys that never change a run's result: excluded from its id, so changing them (more CPU
/// slots, a different log cadence, another data path) keeps every run's directory.
/// Keys added after runs existed, with the value every earlier run had (as JSON): at that
/// value a key is left out of the run id, so those runs keep their ids (and stay done); any
/// other value is hashed like every key.
pub const HASHED_UNLESS_DEFAULT: &[(&str, &str)] = &[
    ("quantizer.gradient", "\"ste\""),
    ("quantizer.levels", "1"),
    ("task", r#"{"kind":"reconstruct"}"#),
    ("loss.branch", "\"none\""),
    // im2row was the default until 2026-12-06 (winograd4 since): runs at im2row keep their ids.
    ("train.conv_algorithm", "\"im2row\""),
];

pub const NON_RESULT_KEYS: &[&str] = &[
    "experiment",
    "sweep",
    "launcher",
    "hardware",
    "data.path",
    "train.log_every",
    "train.eval_every",
    "train.checkpoint_every",
    "eval.batch_size",
    "eval.sample_images",
];

/// Sections a sweep may not vary (they name or drive the sweep itself).
const UNSWEEPABLE: &[&str] = &["experiment", "sweep", "launcher"];

/// One cell of a sweep: its resolved config, id and the values that make it a cell.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedRun {
    pub id: String,
    pub dir_name: String,
    /// Swept keys and their values in this cell (seed included when seeds are swept).
    pub cell: BTreeMap<String, serde_json::Value>,
    /// A later stage's run (a prior): the directory name of the run it consumes, which comes
    /// before it in the sweep's list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    #[serde(skip)]
    pub config: ExperimentConfig,
}

impl Sweep {
    /// The index of a run's parent in `runs` (None for a first-stage run).
    pub fn parent_index(&self, run: usize) -> Option<usize> {
        let parent = self.runs[run].parent.as_ref()?;
        self.runs.iter().position(|r| &r.dir_name == parent)
    }
}

/// A whole expanded sweep.
#[derive(Debug, Clone)]
pub struct Sweep {
    pub name: String,
    /// The configuration before expansion (provenance: `experiment.toml`).
    pub base: ExperimentConfig,
    pub runs: Vec<PlannedRun>,
}

/// The training-semantics revision: what a run with a given config computes. Bump it in any
/// change that alters a run's results for the same config (a fixed formula, a new default
/// that resolves into the same keys, another order of random draws), so that the run ids
/// change and results of the old code are never taken for results of the new one.
///
/// 1: the first milestone. 2: the reference-check fixes (encoder ReLU after the 3×3 conv,
/// k-means-seeded EMA statistics, draws without replacement, unit-norm cosine codebooks,
/// the validation split and per-variant Adam betas).
pub const TRAINING_REVISION: u32 = 2;

/// Revisions of what one quantizer kind computes, hashed into the ids of that kind's runs
/// only: a change to one kind moves those ids and leaves every other run (and its finished
/// results) in place. Bump a kind's entry, or add one, when its results change for the same
/// config.
///
/// lfq 2: the entropy penalty in factorized form (`model::lfq`), the per-sample entropy
/// without the 1e-5 clamp.
pub const KIND_REVISIONS: &[(QuantizerKind, u32)] = &[(QuantizerKind::Lfq, 2)];

/// Revisions of what one `train.conv_algorithm` computes, hashed into the ids of the runs
/// that use it (like [`KIND_REVISIONS`]): a change to one algorithm moves only those ids.
///
/// winograd4 2: 4×4 convolutions with stride 1 and padding 1 and at least 8 outputs (the
/// discriminator's inner ones) run as Winograd F(3×3, 4×4) as well.
pub const CONV_ALGORITHM_REVISIONS: &[(ConvAlgorithm, u32)] = &[(ConvAlgorithm::Winograd4, 2)];

/// What a stage-2 prior run computes from its config and its tokenizer's codes (bump it
/// like [`TRAINING_REVISION`] when the prior's results change for the same config).
///
/// 2: the transformer's linear layers, LayerNorm, GELU, attention and cross-entropy run as
/// vqlab's CPU ops (`ops::dense`), which add in another order than candle's ops.
pub const PRIOR_REVISION: u32 = 2;

/// The run id: a short hash of the canonical JSON of the result-relevant config, the
/// training revision and the revision of the run's quantizer kind. A prior run's id hashes
/// its `[prior]` section, [`PRIOR_REVISION`] and its parent's id (which hashes the rest).
pub fn run_id(cfg: &ExperimentConfig) -> String {
    if cfg.prior.enabled {
        let parent = run_id(&tokenizer_of(cfg));
        // Plain structs: serializing cannot fail.
        let prior = serde_json::to_value(&cfg.prior).expect("the prior section serializes");
        let value = serde_json::json!({ "parent": parent, "prior": prior, "prior_revision": PRIOR_REVISION });
        return short_hash(&canonical_json(&value));
    }
    if cfg.loss.branch == Branch::SharedPrefix {
        let parent = run_id(&branch_parent_of(cfg));
        let own = run_id_with(cfg, KIND_REVISIONS, CONV_ALGORITHM_REVISIONS);
        return short_hash(&canonical_json(&serde_json::json!({ "branch_parent": parent, "run": own })));
    }
    run_id_with(cfg, KIND_REVISIONS, CONV_ALGORITHM_REVISIONS)
}

/// The VQ-VAE run a `loss.branch = "shared_prefix"` VQ-GAN run starts from: the same config
/// as a VQ-VAE, without the branch.
pub fn branch_parent_of(cfg: &ExperimentConfig) -> ExperimentConfig {
    let mut parent = cfg.clone();
    parent.model.variant = Variant::Vqvae;
    parent.loss.branch = Branch::None;
    parent
}

/// The first result key (flattened) whose value differs between two configs, ignoring the
/// variant and the keys only a VQ-GAN reads, with both values.
fn first_prefix_difference(a: &ExperimentConfig, b: &ExperimentConfig) -> Option<(String, String, String)> {
    let flat = |c: &ExperimentConfig| {
        let mut m = serde_json::Map::new();
        crate::util::flatten("", &serde_json::to_value(c).expect("a config serializes"), &mut m);
        m
    };
    let (fa, fb) = (flat(a), flat(b));
    let gan_only = |k: &str| {
        k == "model.variant" || k == "loss.branch" || k == "loss.adaptive_weight" || k.starts_with("loss.disc_")
    };
    let skipped = |k: &str| gan_only(k) || NON_RESULT_KEYS.iter().any(|n| k == *n || k.starts_with(&format!("{n}.")));
    let keys: std::collections::BTreeSet<&String> = fa.keys().chain(fb.keys()).collect();
    let found = keys.into_iter().filter(|k| !skipped(k)).find_map(|k| {
        let (va, vb) = (fa.get(k), fb.get(k));
        let text = |v: Option<&serde_json::Value>| v.map_or("unset".to_string(), |v| v.to_string());
        (va != vb).then(|| (k.clone(), text(va), text(vb)))
    });
    found
}

/// The tokenizer run a prior run's config consumes: the same config with the prior disabled.
pub fn tokenizer_of(cfg: &ExperimentConfig) -> ExperimentConfig {
    ExperimentConfig { prior: Default::default(), ..cfg.clone() }
}

fn short_hash(canonical: &str) -> String {
    let digest = Sha256::digest(canonical.as_bytes());
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

fn run_id_with(
    cfg: &ExperimentConfig,
    kind_revisions: &[(QuantizerKind, u32)],
    algorithm_revisions: &[(ConvAlgorithm, u32)],
) -> String {
    // Plain structs and string-keyed maps: serializing to JSON cannot fail.
    let mut value = serde_json::to_value(cfg).expect("a config always serializes to JSON");
    for key in NON_RESULT_KEYS {
        remove_key(&mut value, key);
    }
    for (key, default) in HASHED_UNLESS_DEFAULT {
        // The constant above is JSON written in this file (a unit test hashes every entry).
        let default: serde_json::Value = serde_json::from_str(default).expect("HASHED_UNLESS_DEFAULT holds JSON");
        let at_default = key.split('.').try_fold(&value, |v, k| v.get(k)).is_some_and(|v| v == &default);
        if at_default {
            remove_key(&mut value, key);
        }
    }
    if let serde_json::Value::Object(map) = &mut value {
        map.insert("training_revision".into(), TRAINING_REVISION.into());
        if let Some((_, revision)) = kind_revisions.iter().find(|(kind, _)| *kind == cfg.quantizer.kind) {
            map.insert("quantizer_revision".into(), (*revision).into());
        }
        if let Some((_, revision)) = algorithm_revisions.iter().find(|(a, _)| *a == cfg.train.conv_algorithm) {
            map.insert("conv_algorithm_revision".into(), (*revision).into());
        }
    }
    short_hash(&canonical_json(&value))
}

/// The readable directory name of a run: `vqgan-K1024-s0-<id>`; a residual quantizer of 4
/// levels: `vqvae-K512x4-s0-<id>`; a prior run after its parent's name:
/// `vqgan-K1024-s0-<parent id>-prior-<id>`.
pub fn run_dir_name(cfg: &ExperimentConfig, id: &str) -> String {
    if cfg.prior.enabled {
        let parent = tokenizer_of(cfg);
        return format!("{}-prior-{id}", run_dir_name(&parent, &run_id(&parent)));
    }
    let levels = if cfg.quantizer.levels > 1 { format!("x{}", cfg.quantizer.levels) } else { String::new() };
    format!("{}-K{}{levels}-s{}-{}", cfg.model.variant.name(), cfg.quantizer.codebook_size, cfg.train.seed, id)
}

/// JSON with object keys sorted, whatever serde_json's map ordering feature says.
fn canonical_json(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let items: Vec<String> = keys
                .iter()
                .map(|k| format!("{}:{}", serde_json::Value::String((*k).clone()), canonical_json(&map[*k])))
                .collect();
            format!("{{{}}}", items.join(","))
        }
        serde_json::Value::Array(items) => {
            format!("[{}]", items.iter().map(canonical_json).collect::<Vec<_>>().join(","))
        }
        other => other.to_string(),
    }
}

fn remove_key(v: &mut serde_json::Value, dotted: &str) {
    let mut parts: Vec<&str> = dotted.split('.').collect();
    let last = parts.pop().unwrap_or_default();
    let mut cur = v;
    for p in parts {
        match cur.get_mut(p) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(obj) = cur.as_object_mut() {
        obj.remove(last);
    }
}

/// Does a dotted key name a leaf (a value, not a section) of the schema?
/// An experiment key (a leaf of the schema), optional keys included: the documented list of
/// [`super::keys::KEYS`], which a unit test holds equal to the schema.
fn is_leaf_key(dotted: &str) -> bool {
    super::keys::KEYS.iter().any(|(k, _, _)| *k == dotted)
}

struct Axis {
    key: String,
    values: Vec<serde_json::Value>,
    origin: String,
}

/// Expand the layered configuration plus `--sweep` arguments into resolved runs.
pub fn expand(layers: &Layers, cli_sweeps: &[String]) -> Result<Sweep, InputError> {
    let (base, base_fig) = layers.extract_with(&[])?;
    let file = layers.file.display().to_string();

    let grid_origin = format!("{} [sweep.grid]", layers.origin_of(&base_fig, "sweep.grid"));
    let zip_origin = format!("{} [sweep.zip]", layers.origin_of(&base_fig, "sweep.zip"));
    let mut grid: Vec<Axis> = axes(&base.sweep.grid, &grid_origin);
    for arg in cli_sweeps {
        let (key, values) = parse_sweep_arg(arg)?;
        grid.retain(|a| a.key != key);
        grid.push(Axis { key, values, origin: format!("--sweep {arg}") });
    }
    let mut zip: Vec<Axis> = axes(&base.sweep.zip, &zip_origin);
    // A `--set` of a key the file sweeps fixes that key: later layers win, sweeps included.
    for set in &layers.sets {
        let before = grid.len() + zip.len();
        grid.retain(|a| a.key != set.key || a.origin.starts_with("--sweep"));
        zip.retain(|a| a.key != set.key);
        if grid.len() + zip.len() != before {
            tracing::info!("{} fixes a key the experiment file sweeps; its sweep values are not used", set.origin);
        }
    }

    for (section, axis) in grid.iter().map(|a| ("sweep.grid", a)).chain(zip.iter().map(|a| ("sweep.zip", a))) {
        let key = format!("{section}.\"{}\"", axis.key);
        if UNSWEEPABLE.iter().any(|s| axis.key == *s || axis.key.starts_with(&format!("{s}."))) {
            return Err(InputError::config(
                &axis.origin,
                key,
                "this section cannot be swept (it names or drives the sweep itself)",
            ));
        }
        if !is_leaf_key(&axis.key) {
            return Err(InputError::config(
                &axis.origin,
                key,
                format!(
                    "`{}` is not an experiment key; sweep keys are dotted keys such as quantizer.codebook_size",
                    axis.key
                ),
            ));
        }
        if axis.values.is_empty() {
            return Err(InputError::config(&axis.origin, key, "expected a non-empty list of values"));
        }
    }
    if let Some(first) = zip.first() {
        if let Some(other) = zip.iter().find(|a| a.values.len() != first.values.len()) {
            return Err(InputError::config(
                &first.origin,
                "sweep.zip",
                format!(
                    "lists of unequal length: `{}` has {} values but `{}` has {}; zip varies lists together, so they need the same length",
                    first.key,
                    first.values.len(),
                    other.key,
                    other.values.len()
                ),
            ));
        }
        if let Some(a) = zip.iter().find(|z| grid.iter().any(|g| g.key == z.key)) {
            return Err(InputError::config(
                &a.origin,
                "sweep.zip",
                format!("`{}` is both in grid and zip; use one", a.key),
            ));
        }
    }

    // Cells: grid cartesian product (keys in order), then zip rows, seeds innermost.
    let mut cells: Vec<Vec<(&Axis, &serde_json::Value)>> = vec![vec![]];
    for axis in &grid {
        cells = cells
            .into_iter()
            .flat_map(|cell| {
                axis.values.iter().map(move |v| {
                    let mut c = cell.clone();
                    c.push((axis, v));
                    c
                })
            })
            .collect();
    }
    if let Some(first) = zip.first() {
        let n = first.values.len();
        cells = cells
            .into_iter()
            .flat_map(|cell| {
                let zip = &zip;
                (0..n).map(move |i| {
                    let mut c = cell.clone();
                    c.extend(zip.iter().map(|a| (a, &a.values[i])));
                    c
                })
            })
            .collect();
    }
    let seed_origin = format!("{} [sweep.seeds]", layers.origin_of(&base_fig, "sweep.seeds"));
    let seeds: Vec<Option<u64>> =
        if base.sweep.seeds.is_empty() { vec![None] } else { base.sweep.seeds.iter().map(|s| Some(*s)).collect() };

    let mut runs = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut problems: Vec<String> = Vec::new();
    let mut problem_errors: Vec<InputError> = Vec::new();
    for cell in &cells {
        for seed in &seeds {
            let mut overrides = Vec::new();
            let mut shown = BTreeMap::new();
            for (axis, value) in cell {
                let toml_value = json_to_toml(value).ok_or_else(|| {
                    InputError::config(
                        &axis.origin,
                        format!("sweep \"{}\"", axis.key),
                        format!("value {value} cannot be used (null or mixed list)"),
                    )
                })?;
                overrides.push(KeyOverride { key: axis.key.clone(), value: toml_value, origin: axis.origin.clone() });
                shown.insert(axis.key.clone(), (*value).clone());
            }
            if let Some(seed) = seed {
                overrides.push(KeyOverride {
                    key: "train.seed".into(),
                    value: toml::Value::Integer(*seed as i64),
                    origin: seed_origin.clone(),
                });
                shown.insert("train.seed".into(), serde_json::json!(seed));
            }
            let (mut cfg, fig) = layers.extract_with(&overrides)?;
            resolve(&mut cfg);
            let origin = |key: &str| origin_in(layers, &fig, &overrides, key, &file);
            if let Err(e) = validate(&cfg, &origin) {
                // The same problem in many cells is reported once.
                let text = e.to_string();
                if !problems.contains(&text) {
                    problems.push(text);
                    problem_errors.push(e);
                }
                continue;
            }
            let mut parent = None;
            if cfg.prior.enabled {
                // The tokenizer stage first: one run however many priors follow it.
                let tokenizer = tokenizer_of(&cfg);
                let id = run_id(&tokenizer);
                let dir_name = run_dir_name(&tokenizer, &id);
                if !seen.contains_key(&id) {
                    seen.insert(id.clone(), runs.len());
                    let cell =
                        shown.iter().filter(|(k, _)| !k.starts_with("prior.")).map(|(k, v)| (k.clone(), v.clone()));
                    runs.push(PlannedRun {
                        id,
                        dir_name: dir_name.clone(),
                        cell: cell.collect(),
                        parent: None,
                        config: tokenizer,
                    });
                }
                parent = Some(dir_name);
            }
            let id = run_id(&cfg);
            if let Some(prev) = seen.get(&id) {
                let prev_cell: &PlannedRun = &runs[*prev];
                return Err(InputError::config(
                    file.clone(),
                    "sweep",
                    format!(
                        "two cells resolve to the same run {id} ({} and {}); keys such as paths, hardware and logging cadence do not change a run, so sweeping them repeats it",
                        describe_cell(&prev_cell.cell),
                        describe_cell(&shown)
                    ),
                ));
            }
            seen.insert(id.clone(), runs.len());
            let dir_name = run_dir_name(&cfg, &id);
            runs.push(PlannedRun { id, dir_name, cell: shown, parent, config: cfg });
        }
    }
    if problem_errors.is_empty() {
        link_branches(&mut runs, &file)?;
    }
    if !problem_errors.is_empty() {
        return Err(if problem_errors.len() == 1 {
            problem_errors.remove(0)
        } else {
            InputError::Many(problem_errors)
        });
    }
    Ok(Sweep { name: base.experiment.name.clone(), base, runs })
}

/// `loss.branch = "shared_prefix"`: each such VQ-GAN run becomes the child of the sweep's VQ-VAE
/// run of its cell, which must have the same config before `disc_start` (exit 2 naming the
/// first key that differs).
fn link_branches(runs: &mut [PlannedRun], file: &str) -> Result<(), InputError> {
    for i in 0..runs.len() {
        if runs[i].config.loss.branch != Branch::SharedPrefix || runs[i].config.prior.enabled {
            continue;
        }
        let parent = branch_parent_of(&runs[i].config);
        let parent_id = run_id(&parent);
        if let Some(p) = runs.iter().position(|r| r.id == parent_id) {
            runs[i].parent = Some(runs[p].dir_name.clone());
            continue;
        }
        let mut cell = runs[i].cell.clone();
        cell.insert("model.variant".into(), serde_json::json!("vqvae"));
        let same_cell = runs.iter().find(|r| {
            r.config.model.variant == Variant::Vqvae
                && r.cell.iter().all(|(k, v)| k.starts_with("prior.") || cell.get(k).is_none_or(|c| c == v))
                && cell.iter().all(|(k, v)| k == "model.variant" || r.cell.get(k).is_none_or(|c| c == v))
        });
        let name = &runs[i].dir_name;
        let msg = match same_cell.and_then(|r| Some((r, first_prefix_difference(&parent, &r.config)?))) {
            Some((r, (key, gan, vae))) => format!(
                "{name} branches from {} at loss.disc_start, but the two differ before it in `{key}` ({gan} for the VQ-GAN arm, {vae} for the VQ-VAE run): set `{key}` explicitly so that both arms train the same prefix (the variants' defaults differ in loss.recon and train.betas)",
                r.dir_name
            ),
            None => format!(
                "{name} branches from the VQ-VAE run of its cell at loss.disc_start, but the sweep has none: sweep model.variant over [\"vqvae\", \"vqgan\"]"
            ),
        };
        return Err(InputError::config(file.to_string(), "loss.branch", msg));
    }
    Ok(())
}

/// A key's origin in a cell: the sweep axis that set it, else the layers below.
fn origin_in(layers: &Layers, fig: &Figment, overrides: &[KeyOverride], key: &str, _file: &str) -> String {
    if let Some(o) = overrides.iter().rev().find(|o| o.key == key) {
        return o.origin.clone();
    }
    layers.origin_of(fig, key)
}

fn axes(map: &SweepAxes, origin: &str) -> Vec<Axis> {
    map.iter().map(|(k, v)| Axis { key: k.clone(), values: v.clone(), origin: origin.to_string() }).collect()
}

fn describe_cell(cell: &BTreeMap<String, serde_json::Value>) -> String {
    if cell.is_empty() {
        return "the base config".into();
    }
    cell.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

fn json_to_toml(v: &serde_json::Value) -> Option<toml::Value> {
    if v.is_null() {
        return None;
    }
    toml::Value::try_from(v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys() {
        let v = serde_json::json!({"b": 1, "a": {"d": [1, 2], "c": "x"}});
        assert_eq!(canonical_json(&v), r#"{"a":{"c":"x","d":[1,2]},"b":1}"#);
    }

    #[test]
    fn ids_ignore_non_result_keys_only() {
        let base = ExperimentConfig::default();
        let mut slots = base.clone();
        slots.hardware.cpu_slots = 7;
        slots.train.log_every = 3;
        slots.data.path = "/elsewhere".into();
        assert_eq!(run_id(&base), run_id(&slots));
        let mut k = base.clone();
        k.quantizer.codebook_size = 1024;
        assert_ne!(run_id(&base), run_id(&k));
        assert_eq!(run_id(&base).len(), 8);
    }

    #[test]
    fn new_keys_at_their_default_keep_the_old_ids() {
        // Every run before the keys had im2row (the default until winograd4 took its place).
        let mut base = ExperimentConfig::default();
        base.train.conv_algorithm = ConvAlgorithm::Im2row;
        let mut value = serde_json::to_value(&base).unwrap();
        remove_key(&mut value, "quantizer.gradient");
        remove_key(&mut value, "quantizer.levels");
        remove_key(&mut value, "task");
        remove_key(&mut value, "loss.branch");
        remove_key(&mut value, "train.conv_algorithm");
        // The id of a config without the keys, as the code before them hashed it.
        for key in NON_RESULT_KEYS {
            remove_key(&mut value, key);
        }
        if let serde_json::Value::Object(map) = &mut value {
            map.insert("training_revision".into(), TRAINING_REVISION.into());
        }
        let digest = Sha256::digest(canonical_json(&value).as_bytes());
        let old: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
        assert_eq!(run_id(&base), old);
        let mut residual = base.clone();
        residual.quantizer.levels = 4;
        assert_ne!(run_id(&residual), old);
        let mut denoise = base.clone();
        denoise.task.kind = crate::config::TaskKind::Denoise;
        assert_ne!(run_id(&denoise), old);
        let mut winograd = base.clone();
        winograd.train.conv_algorithm = ConvAlgorithm::Winograd;
        assert_ne!(run_id(&winograd), old);
        let mut winograd4 = base.clone();
        winograd4.train.conv_algorithm = ConvAlgorithm::Winograd4;
        assert!(![old.clone(), run_id(&winograd)].contains(&run_id(&winograd4)));
        // Today's default config is a winograd4 run: not the id its im2row results had.
        assert_eq!(run_id(&ExperimentConfig::default()), run_id(&winograd4));
        let mut branched = base.clone();
        (branched.model.variant, branched.loss.branch) = (Variant::Vqgan, Branch::SharedPrefix);
        let unbranched = ExperimentConfig {
            loss: crate::config::LossConfig { branch: Branch::None, ..branched.loss.clone() },
            ..branched.clone()
        };
        assert_ne!(run_id(&branched), run_id(&unbranched));
        assert_eq!(run_dir_name(&residual, "ab"), "vqvae-K512x4-s0-ab");
        assert_eq!(run_dir_name(&base, "ab"), "vqvae-K512-s0-ab");
    }

    #[test]
    fn a_kind_revision_moves_the_ids_of_that_kind_only() {
        let mut lfq = ExperimentConfig::default();
        (lfq.quantizer.kind, lfq.quantizer.codebook_size) = (QuantizerKind::Lfq, 64);
        assert_ne!(run_id(&lfq), run_id_with(&lfq, &[], CONV_ALGORITHM_REVISIONS));
        for kind in [QuantizerKind::Vq, QuantizerKind::Ema, QuantizerKind::Fsq, QuantizerKind::Simvq] {
            let mut other = lfq.clone();
            other.quantizer.kind = kind;
            assert_eq!(run_id(&other), run_id_with(&other, &[], CONV_ALGORITHM_REVISIONS), "{kind:?}");
        }
    }

    #[test]
    fn a_conv_algorithm_revision_moves_the_ids_of_that_algorithm_only() {
        for variant in [Variant::Vqvae, Variant::Vqgan] {
            let mut cfg = ExperimentConfig::default();
            cfg.model.variant = variant;
            cfg.train.conv_algorithm = ConvAlgorithm::Winograd4;
            assert_ne!(run_id(&cfg), run_id_with(&cfg, KIND_REVISIONS, &[]));
            for other in [ConvAlgorithm::Im2row, ConvAlgorithm::Winograd] {
                cfg.train.conv_algorithm = other;
                assert_eq!(run_id(&cfg), run_id_with(&cfg, KIND_REVISIONS, &[]), "{other:?}");
            }
        }
    }
}
