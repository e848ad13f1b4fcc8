//! Loading an experiment: built-in defaults ← experiment file (TOML/YAML/JSON by extension)
//! ← `VQLAB_` environment variables (`__` between levels) ← `--set key=value`, through
//! figment, with every error translated into an [`InputError`] naming its origin and key.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Json, Serialized, Toml, Yaml};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider};

use super::schema::ExperimentConfig;
use crate::error::InputError;

/// Prefix of configuration environment variables; only names with a `__` level separator
/// are configuration (so `VQLAB_LOG` and the like stay free for other uses).
pub const ENV_PREFIX: &str = "VQLAB_";

/// One `--set key=value` (or a sweep cell's value) as a figment provider whose metadata names
/// it, so that an error about its key says `--set quantizer.codebook_size=abc`.
#[derive(Debug, Clone)]
pub struct KeyOverride {
    pub key: String,
    pub value: toml::Value,
    pub origin: String,
}

impl KeyOverride {
    /// Parse `key=value`; the value is read as a TOML value (`64`, `1e-3`, `true`, `[1, 2]`,
    /// `"text"`), and anything that is not valid TOML is taken as a plain string.
    pub fn parse_set(arg: &str) -> Result<Self, InputError> {
        let (key, raw) = split_assignment(arg, "--set")?;
        Ok(KeyOverride { key: key.to_string(), value: parse_value(raw), origin: format!("--set {arg}") })
    }
}

fn split_assignment<'a>(arg: &'a str, flag: &str) -> Result<(&'a str, &'a str), InputError> {
    let Some((key, raw)) = arg.split_once('=') else {
        return Err(InputError::Usage(format!(
            "{flag} {arg}: expected KEY=VALUE, e.g. {flag} quantizer.codebook_size=1024"
        )));
    };
    let key = key.trim();
    let valid = !key.is_empty()
        && key.split('.').all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    if !valid {
        return Err(InputError::Usage(format!(
            "{flag} {arg}: `{key}` is not a dotted key of letters, digits and `_` (e.g. quantizer.codebook_size)"
        )));
    }
    Ok((key, raw.trim()))
}

/// A command-line value as TOML; bare words that are not TOML become strings.
pub fn parse_value(raw: &str) -> toml::Value {
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut table) => table.remove("v").unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

/// `--sweep key=v1,v2,…`: the values of one swept key, each parsed like a `--set` value.
pub fn parse_sweep_arg(arg: &str) -> Result<(String, Vec<serde_json::Value>), InputError> {
    let (key, raw) = split_assignment(arg, "--sweep")?;
    // A bracketed list is one TOML array; otherwise split on commas.
    let values: Vec<toml::Value> = if raw.starts_with('[') {
        match parse_value(raw) {
            toml::Value::Array(items) => items,
            other => vec![other],
        }
    } else {
        raw.split(',').map(|v| parse_value(v.trim())).collect()
    };
    if values.is_empty() || raw.is_empty() {
        return Err(InputError::Usage(format!("--sweep {arg}: expected at least one value after `=`")));
    }
    let values = values
        .into_iter()
        .map(|v| serde_json::to_value(v).map_err(|e| InputError::Usage(format!("--sweep {arg}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((key.to_string(), values))
}

impl Provider for KeyOverride {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.origin.clone())
    }
    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Serialized::default(&self.key, &self.value).data()
    }
}

/// The layered configuration of one experiment file plus overrides, before sweep expansion.
#[derive(Debug, Clone)]
pub struct Layers {
    pub file: PathBuf,
    pub figment: Figment,
    pub sets: Vec<KeyOverride>,
}

impl Layers {
    /// Build the layers; checks only that the file exists and has a known extension.
    pub fn new(file: &Path, sets: &[String]) -> Result<Self, InputError> {
        Self::build(file, sets, true)
    }

    /// The file alone, without environment variables: a run's `config.toml` is its only input.
    pub fn file_only(file: &Path) -> Result<Self, InputError> {
        Self::build(file, &[], false)
    }

    fn build(file: &Path, sets: &[String], with_env: bool) -> Result<Self, InputError> {
        let meta = std::fs::metadata(file)
            .map_err(|e| InputError::file(file, format!("cannot read experiment file: {}", io_reason(&e))))?;
        if !meta.is_file() {
            return Err(InputError::file(file, "cannot read experiment file: it is a directory"));
        }
        // figment treats an unreadable file as empty; read it ourselves first to fail loudly.
        std::fs::read(file)
            .map_err(|e| InputError::file(file, format!("cannot read experiment file: {}", io_reason(&e))))?;
        let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        let mut figment = Figment::from(Serialized::defaults(ExperimentConfig::default()));
        figment = match ext.as_str() {
            "toml" => figment.merge(Toml::file_exact(file)),
            "yaml" | "yml" => figment.merge(Yaml::file_exact(file)),
            "json" => figment.merge(Json::file_exact(file)),
            _ => {
                return Err(InputError::file(
                    file,
                    "unknown experiment file format: expected a .toml, .yaml, .yml or .json extension",
                ))
            }
        };
        if with_env {
            figment = figment.merge(Env::prefixed(ENV_PREFIX).filter(|k| k.as_str().contains("__")).split("__"));
        }
        let sets = sets.iter().map(|s| KeyOverride::parse_set(s)).collect::<Result<Vec<_>, _>>()?;
        for set in &sets {
            figment = figment.merge(set.clone());
        }
        Ok(Layers { file: file.to_path_buf(), figment, sets })
    }

    /// Extract the configuration with extra overrides on top (a sweep cell's values).
    pub fn extract_with(&self, extra: &[KeyOverride]) -> Result<(ExperimentConfig, Figment), InputError> {
        let mut figment = self.figment.clone();
        for e in extra {
            figment = figment.merge(e.clone());
        }
        match figment.extract::<ExperimentConfig>() {
            Ok(cfg) => Ok((cfg, figment)),
            Err(err) => Err(translate(err, &figment, &self.file)),
        }
    }

    /// Where the value at a dotted key came from: the file, an env var or a `--set`.
    pub fn origin_of(&self, figment: &Figment, key: &str) -> String {
        origin_name(figment.find_metadata(key), key, &self.file)
    }
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

fn origin_name(meta: Option<&Metadata>, key: &str, file: &Path) -> String {
    let Some(meta) = meta else {
        return file.display().to_string();
    };
    if let Some(figment::Source::File(path)) = &meta.source {
        return path.display().to_string();
    }
    if meta.name.contains("environment variable") {
        return format!("environment variable {ENV_PREFIX}{}", key.replace('.', "__").to_ascii_uppercase());
    }
    // figment names a `Serialized::defaults(value)` provider after the value's type.
    if meta.name.starts_with("Serialized") || meta.name == std::any::type_name::<ExperimentConfig>() {
        // A built-in default can only be "wrong" through a cross-key check; name the file.
        return file.display().to_string();
    }
    meta.name.to_string()
}

/// Translate figment's errors (there may be several) into ours.
fn translate(err: figment::Error, figment: &Figment, file: &Path) -> InputError {
    let mut out: Vec<InputError> = err.into_iter().map(|e| translate_one(e, figment, file)).collect();
    if out.len() == 1 {
        out.remove(0)
    } else {
        InputError::Many(out)
    }
}

fn translate_one(e: figment::Error, figment: &Figment, file: &Path) -> InputError {
    use figment::error::Kind;
    let path = e.path.join(".");
    let (key, message) = match &e.kind {
        Kind::UnknownField(field, expected) => {
            // figment's path usually ends with the unknown field already.
            let key = match e.path.last() {
                Some(last) if last == field => path.clone(),
                _ if path.is_empty() => field.clone(),
                _ => format!("{path}.{field}"),
            };
            let mut msg = "unknown key".to_string();
            if let Some(best) = closest(field, expected) {
                msg.push_str(&format!(" (did you mean `{best}`?)"));
            }
            if !expected.is_empty() {
                msg.push_str(&format!("; expected one of: {}", expected.join(", ")));
            }
            (key, msg)
        }
        Kind::UnknownVariant(value, expected) => {
            (path.clone(), format!("unknown value \"{value}\"; expected one of: {}", expected.join(", ")))
        }
        Kind::InvalidType(actual, expected) => {
            (path.clone(), format!("expected {}, found {actual}", plain_type(expected)))
        }
        Kind::InvalidValue(actual, expected) => {
            (path.clone(), format!("expected {}, found {actual}", plain_type(expected)))
        }
        Kind::InvalidLength(n, expected) => (path.clone(), format!("expected {expected}, found {n} elements")),
        Kind::Message(msg) if path.is_empty() => {
            // A provider failed as a whole: most often a syntax error in the file.
            let origin = e
                .metadata
                .as_ref()
                .map(|m| origin_name(Some(m), "", file))
                .unwrap_or_else(|| file.display().to_string());
            return InputError::file(PathBuf::from(origin), format!("cannot parse: {}", msg.trim()));
        }
        other => (path.clone(), other.to_string()),
    };
    let origin = match figment.find_metadata(&key) {
        Some(meta) => origin_name(Some(meta), &key, file),
        None => origin_name(e.metadata.as_ref(), &key, file),
    };
    InputError::config(origin, key, message)
}

/// serde's Rust type names in words a config author knows.
fn plain_type(expected: &str) -> String {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a non-negative integer".into(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "an integer".into(),
        "f32" | "f64" => "a number".into(),
        "a boolean" | "bool" => "true or false".into(),
        other => other.to_string(),
    }
}

/// The closest expected name by edit distance, if it is close enough to be a typo.
fn closest<'a>(given: &str, expected: &[&'a str]) -> Option<&'a str> {
    expected
        .iter()
        .map(|cand| (levenshtein(given, cand), *cand))
        .filter(|(d, cand)| *d <= 2.max(cand.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_as_toml_or_fall_back_to_strings() {
        assert_eq!(parse_value("64"), toml::Value::Integer(64));
        assert_eq!(parse_value("1e-3"), toml::Value::Float(1e-3));
        assert_eq!(parse_value("vqgan"), toml::Value::String("vqgan".into()));
        assert_eq!(parse_value("[1, 2]"), toml::Value::Array(vec![toml::Value::Integer(1), toml::Value::Integer(2)]));
    }

    #[test]
    fn edit_distance_by_hand() {
        assert_eq!(levenshtein("codebok_size", "codebook_size"), 1);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(closest("codebok_size", &["codebook_size", "embed_dim"]), Some("codebook_size"));
        assert_eq!(closest("zzz", &["codebook_size"]), None);
    }
}
