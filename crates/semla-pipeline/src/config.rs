//! The official SemLA configuration files and their JSON equivalents.
//!
//! - `semla_config.yaml`: a mapping with `temperature` (default 0.05),
//!   `top_k` (default 5), `combination_type` (default `cat`) and the measure
//!   under `distance_measure_name` or `similarity_measure_name` (default
//!   `euclidean`).
//! - `source_domains.yaml` / `target_domains.yaml`: a YAML list of domain
//!   names (source order breaks retrieval ties). A mapping with a single
//!   `domains`, `source_domains` or `target_domains` key holding that list is
//!   accepted too.
//!
//! A file whose name ends in `.json` is parsed as JSON, anything else as YAML.
//!
//! The official config-key bug: the shipped `semla_config.yaml` and the README
//! write `distance_measure_name`, but `experiments.py` only reads
//! `similarity_measure_name`, so the value was silently ignored and every
//! official run used Euclidean. Here both keys are honoured; giving both with
//! different values is an error. Unknown keys are errors too (the official
//! code ignores them, which is how that bug went unnoticed).

use std::path::{Path, PathBuf};

use semla_adapters::Combination;
use semla_retrieval::{RetrievalParams, SimilarityMeasure};

use crate::mixture::Fusion;
use crate::semla::SemlaSettings;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A configuration file (`semla_config.yaml`, `source_domains.yaml`, their
/// JSON equivalents) that cannot be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid YAML/JSON.
    #[error("{}: not valid {format}: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// "YAML" or "JSON".
        format: &'static str,
        /// The parser's message.
        message: String,
    },
    /// The file parses but its content is not what SemLA expects.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// The contents of `semla_config.yaml`, with the official defaults for
/// missing keys (an empty file gives all defaults).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SemlaConfig {
    /// `similarity_measure_name` / `distance_measure_name` (default euclidean).
    pub similarity: SimilarityMeasure,
    /// `temperature` (default 0.05), finite and `>= 0`.
    pub temperature: f64,
    /// `top_k` (default 5), at least 1.
    pub top_k: usize,
    /// `combination_type` (default `cat`): how the selected adapters are fused.
    pub combination_type: Combination,
}

impl Default for SemlaConfig {
    fn default() -> Self {
        Self {
            similarity: SimilarityMeasure::Euclidean,
            temperature: 0.05,
            top_k: 5,
            combination_type: Combination::Cat,
        }
    }
}

/// The keys a `semla_config` file may hold.
const SEMLA_CONFIG_KEYS: [&str; 5] = [
    "similarity_measure_name",
    "distance_measure_name",
    "temperature",
    "top_k",
    "combination_type",
];

impl SemlaConfig {
    /// Reads `path` (`.json`: JSON, otherwise YAML).
    pub fn from_path(path: &Path) -> Result<Self, ConfigError> {
        let value = read_document(path)?;
        Self::from_value(value, path)
    }

    /// Parses YAML text; `origin` names the source in errors.
    pub fn from_yaml_str(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        Self::from_value(parse_yaml(text, origin)?, origin)
    }

    /// Parses JSON text; `origin` names the source in errors.
    pub fn from_json_str(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        Self::from_value(parse_json(text, origin)?, origin)
    }

    fn from_value(value: Value, origin: &Path) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: origin.to_path_buf(),
            message,
        };
        let value = match value {
            // An empty YAML document: all defaults.
            Value::Null => Value::Object(Default::default()),
            Value::Object(_) => value,
            other => {
                return Err(invalid(format!(
                    "expected a mapping of settings, found {}",
                    kind_of(&other)
                )));
            }
        };
        let Value::Object(map) = value else {
            return Err(invalid("expected a mapping of settings".to_string()));
        };
        if let Some(unknown) = map
            .keys()
            .find(|key| !SEMLA_CONFIG_KEYS.contains(&key.as_str()))
        {
            return Err(invalid(format!(
                "unknown key '{unknown}' (expected one of {SEMLA_CONFIG_KEYS:?})"
            )));
        }
        let string = |key: &str| -> Result<Option<String>, ConfigError> {
            match map.get(key) {
                None => Ok(None),
                Some(Value::String(text)) => Ok(Some(text.clone())),
                Some(other) => Err(invalid(format!(
                    "'{key}' must be a string, found {}",
                    kind_of(other)
                ))),
            }
        };

        let defaults = Self::default();
        let measure_name = match (
            string("similarity_measure_name")?,
            string("distance_measure_name")?,
        ) {
            (Some(a), Some(b)) if a != b => {
                return Err(invalid(format!(
                    "similarity_measure_name '{a}' and distance_measure_name '{b}' disagree \
                     (they are the same setting; give one)"
                )));
            }
            (Some(name), _) | (None, Some(name)) => Some(name),
            (None, None) => None,
        };
        let similarity = match measure_name {
            Some(name) => name.parse().map_err(|e| invalid(format!("{e}")))?,
            None => defaults.similarity,
        };
        let temperature = match map.get("temperature") {
            None => defaults.temperature,
            Some(Value::Number(number)) => number.as_f64().unwrap_or(f64::NAN),
            Some(other) => {
                return Err(invalid(format!(
                    "temperature must be a number, found {}",
                    kind_of(other)
                )));
            }
        };
        if !temperature.is_finite() || temperature < 0.0 {
            return Err(invalid(format!(
                "temperature must be a finite number >= 0, got {temperature}"
            )));
        }
        let top_k = match map.get("top_k") {
            None => defaults.top_k,
            Some(Value::Number(number)) => match number.as_u64() {
                Some(0) | None => {
                    return Err(invalid(format!(
                        "top_k must be a whole number >= 1, got {number}"
                    )));
                }
                Some(k) => {
                    usize::try_from(k).map_err(|_| invalid(format!("top_k {k} is too large")))?
                }
            },
            Some(other) => {
                return Err(invalid(format!(
                    "top_k must be a whole number >= 1, found {}",
                    kind_of(other)
                )));
            }
        };
        let combination_type = match string("combination_type")? {
            Some(name) => name
                .parse()
                .map_err(|e: semla_adapters::AdapterError| invalid(e.to_string()))?,
            None => defaults.combination_type,
        };
        Ok(Self {
            similarity,
            temperature,
            top_k,
            combination_type,
        })
    }

    /// The retrieval parameters of this config.
    pub fn retrieval_params(&self) -> RetrievalParams {
        RetrievalParams {
            similarity: self.similarity,
            top_k: self.top_k,
            temperature: self.temperature,
        }
    }

    /// The pipeline settings of this config: its retrieval parameters and
    /// `combination_type`, with weight fusion (the official method).
    pub fn settings(&self) -> SemlaSettings {
        SemlaSettings {
            retrieval: self.retrieval_params(),
            combination: self.combination_type,
            fusion: Fusion::Weights,
        }
    }

    /// The config of `path` (the official defaults without one), with the
    /// settings given on a command line overriding it, checked.
    pub fn resolve(
        path: Option<&Path>,
        top_k: Option<usize>,
        temperature: Option<f64>,
        similarity: Option<SimilarityMeasure>,
    ) -> crate::Result<Self> {
        let mut config = match path {
            Some(path) => Self::from_path(path)?,
            None => Self::default(),
        };
        if let Some(k) = top_k {
            config.top_k = k;
        }
        if let Some(t) = temperature {
            config.temperature = t;
        }
        if let Some(measure) = similarity {
            config.similarity = measure;
        }
        config.retrieval_params().validate()?;
        Ok(config)
    }
}

/// Reads a domain list (`source_domains.yaml`, `target_domains.yaml`, or a
/// `.json` equivalent): names in file order, non-empty, unique.
pub fn read_domain_list(path: &Path) -> Result<Vec<String>, ConfigError> {
    let value = read_document(path)?;
    domain_list_from_value(value, path)
}

/// Parses a YAML domain list; `origin` names the source in errors.
pub fn domain_list_from_yaml_str(text: &str, origin: &Path) -> Result<Vec<String>, ConfigError> {
    domain_list_from_value(parse_yaml(text, origin)?, origin)
}

/// Parses a JSON domain list; `origin` names the source in errors.
pub fn domain_list_from_json_str(text: &str, origin: &Path) -> Result<Vec<String>, ConfigError> {
    domain_list_from_value(parse_json(text, origin)?, origin)
}

const DOMAIN_LIST_KEYS: [&str; 3] = ["domains", "source_domains", "target_domains"];

fn domain_list_from_value(value: Value, origin: &Path) -> Result<Vec<String>, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        path: origin.to_path_buf(),
        message,
    };
    let list = match value {
        Value::Array(items) => items,
        Value::Object(mut map) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            match keys.as_slice() {
                [key] if DOMAIN_LIST_KEYS.contains(&key.as_str()) => match map.remove(key) {
                    Some(Value::Array(items)) => items,
                    other => {
                        return Err(invalid(format!(
                            "'{key}' must be a list of domain names, found {}",
                            other.as_ref().map_or("nothing", kind_of)
                        )));
                    }
                },
                _ => {
                    return Err(invalid(format!(
                        "expected a list of domain names, or a mapping with one of the keys \
                         {DOMAIN_LIST_KEYS:?}; found keys {keys:?}"
                    )));
                }
            }
        }
        Value::Null => return Err(invalid("lists no domains (the file is empty)".to_string())),
        other => {
            return Err(invalid(format!(
                "expected a list of domain names, found {}",
                kind_of(&other)
            )));
        }
    };
    if list.is_empty() {
        return Err(invalid("lists no domains".to_string()));
    }
    let mut names: Vec<String> = Vec::with_capacity(list.len());
    for (index, item) in list.into_iter().enumerate() {
        let Value::String(name) = item else {
            return Err(invalid(format!(
                "entry {index} is {}, not a domain name",
                kind_of(&item)
            )));
        };
        if name.is_empty() {
            return Err(invalid(format!("entry {index} is an empty name")));
        }
        if names.contains(&name) {
            return Err(invalid(format!("domain '{name}' is listed twice")));
        }
        names.push(name);
    }
    Ok(names)
}

fn read_document(path: &Path) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if is_json(path) {
        parse_json(&text, path)
    } else {
        parse_yaml(&text, path)
    }
}

fn is_json(path: &Path) -> bool {
    path.extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("json"))
}

fn parse_yaml(text: &str, origin: &Path) -> Result<Value, ConfigError> {
    // A document of only comments/whitespace is YAML null.
    if text
        .lines()
        .all(|line| line.trim().is_empty() || line.trim_start().starts_with('#'))
    {
        return Ok(Value::Null);
    }
    serde_norway::from_str(text).map_err(|e| syntax(origin, "YAML", e.to_string()))
}

fn parse_json(text: &str, origin: &Path) -> Result<Value, ConfigError> {
    serde_json::from_str(text).map_err(|e| syntax(origin, "JSON", e.to_string()))
}

fn syntax(origin: &Path, format: &'static str, message: String) -> ConfigError {
    ConfigError::Syntax {
        path: PathBuf::from(origin),
        format,
        message,
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}
