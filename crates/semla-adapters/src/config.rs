//! `adapter_config.json`: PEFT's `LoraConfig`, with the fields semla uses
//! typed and every other field kept verbatim.
//!
//! PEFT writes the file with sorted keys (`json.dumps(..., sort_keys=True)`);
//! [`LoraConfig::to_json`] does the same, so reading and writing a PEFT file
//! keeps its fields, their values and their order.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{AdapterError, Result};

/// Which modules an adapter targets: PEFT accepts a list of module-name
/// suffixes or one regular expression.
#[derive(Clone, Debug, PartialEq)]
pub enum TargetModules {
    /// A list of names (PEFT matches them against the end of module paths).
    List(Vec<String>),
    /// A regular expression matched against whole module paths.
    Regex(String),
}

/// PEFT's `LoraConfig` as stored in `adapter_config.json`.
///
/// Scaling of a site: `lora_alpha / r`, or `lora_alpha / sqrt(r)` with
/// `use_rslora`, where `r` and `lora_alpha` come from `rank_pattern` /
/// `alpha_pattern` when a key matches the module (see [`LoraConfig::rank_and_alpha`]).
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    /// Default rank `r`.
    pub r: usize,
    /// Default `lora_alpha`.
    pub lora_alpha: f64,
    /// rsLoRA scaling (`alpha / sqrt(r)`).
    pub use_rslora: bool,
    /// Per-module rank overrides, in file order (first match wins). Keys are
    /// Python regular expressions matched as PEFT does.
    pub rank_pattern: Vec<(String, usize)>,
    /// Per-module alpha overrides, in file order.
    pub alpha_pattern: Vec<(String, f64)>,
    /// Targeted modules, if given.
    pub target_modules: Option<TargetModules>,
    /// Every other field of the file (`peft_type`, `task_type`, `lora_dropout`,
    /// `base_model_name_or_path`, ...), kept verbatim.
    pub extra: Map<String, Value>,
}

impl LoraConfig {
    /// A plain LoRA config with rank `r` and `lora_alpha`, with the fields PEFT
    /// itself writes for a LoRA adapter.
    pub fn new(r: usize, lora_alpha: f64) -> Self {
        let mut extra = Map::new();
        extra.insert("peft_type".into(), Value::from("LORA"));
        extra.insert("bias".into(), Value::from("none"));
        extra.insert("fan_in_fan_out".into(), Value::from(false));
        extra.insert("inference_mode".into(), Value::from(true));
        extra.insert("init_lora_weights".into(), Value::from(true));
        extra.insert("lora_dropout".into(), Value::from(0.0));
        extra.insert("modules_to_save".into(), Value::Null);
        extra.insert("use_dora".into(), Value::from(false));
        extra.insert("task_type".into(), Value::Null);
        extra.insert("base_model_name_or_path".into(), Value::Null);
        Self {
            r,
            lora_alpha,
            use_rslora: false,
            rank_pattern: Vec::new(),
            alpha_pattern: Vec::new(),
            target_modules: None,
            extra,
        }
    }

    /// Parses the JSON text of an `adapter_config.json`; `path` names the file in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| AdapterError::invalid(path, format!("not valid JSON: {e}")))?;
        Self::from_json(value, path)
    }

    /// Reads and parses `path` (an `adapter_config.json`).
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| AdapterError::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// Builds a config from a parsed JSON object; `path` names the file in errors.
    pub fn from_json(value: Value, path: &Path) -> Result<Self> {
        let bad = |msg: String| AdapterError::invalid(path, msg);
        let Value::Object(mut map) = value else {
            return Err(bad("adapter config is not a JSON object".into()));
        };
        if let Some(kind) = map.get("peft_type").and_then(Value::as_str)
            && kind != "LORA"
        {
            return Err(bad(format!(
                "peft_type is {kind:?}, only LORA adapters are supported"
            )));
        }
        if map.get("use_dora").and_then(Value::as_bool) == Some(true) {
            return Err(bad(
                "use_dora is true: DoRA adapters are not supported".into()
            ));
        }
        if map.get("fan_in_fan_out").and_then(Value::as_bool) == Some(true) {
            return Err(bad(
                "fan_in_fan_out is true: transposed (Conv1D) sites are not supported".into(),
            ));
        }
        let r = match map.remove("r") {
            Some(v) => positive_usize(&v)
                .ok_or_else(|| bad(format!("r must be a positive integer, got {v}")))?,
            None => return Err(bad("missing field r".into())),
        };
        let lora_alpha = match map.remove("lora_alpha") {
            Some(v) => finite_f64(&v)
                .ok_or_else(|| bad(format!("lora_alpha must be a finite number, got {v}")))?,
            None => return Err(bad("missing field lora_alpha".into())),
        };
        let use_rslora = match map.remove("use_rslora") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => b,
            Some(v) => return Err(bad(format!("use_rslora must be true or false, got {v}"))),
        };
        let rank_pattern =
            pattern_entries(map.remove("rank_pattern"), "rank_pattern", path, |v| {
                positive_usize(v)
            })?;
        let alpha_pattern = pattern_entries(
            map.remove("alpha_pattern"),
            "alpha_pattern",
            path,
            finite_f64,
        )?;
        let target_modules = match map.remove("target_modules") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(TargetModules::Regex(s)),
            Some(Value::Array(items)) => {
                let names = items
                    .into_iter()
                    .map(|v| match v {
                        Value::String(s) => Ok(s),
                        other => Err(bad(format!("target_modules entry {other} is not a string"))),
                    })
                    .collect::<Result<Vec<_>>>()?;
                Some(TargetModules::List(names))
            }
            Some(v) => {
                return Err(bad(format!(
                    "target_modules must be a list or a string, got {v}"
                )));
            }
        };
        Ok(Self {
            r,
            lora_alpha,
            use_rslora,
            rank_pattern,
            alpha_pattern,
            target_modules,
            extra: map,
        })
    }

    /// The config as a JSON object with sorted keys, as PEFT writes it.
    pub fn to_json(&self) -> Value {
        let mut all: Vec<(String, Value)> = self
            .extra
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.push(("r".into(), Value::from(self.r)));
        all.push(("lora_alpha".into(), number(self.lora_alpha)));
        all.push(("use_rslora".into(), Value::from(self.use_rslora)));
        let rank: Map<String, Value> = self
            .rank_pattern
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(*v)))
            .collect();
        let alpha: Map<String, Value> = self
            .alpha_pattern
            .iter()
            .map(|(k, v)| (k.clone(), number(*v)))
            .collect();
        all.push(("rank_pattern".into(), Value::Object(rank)));
        all.push(("alpha_pattern".into(), Value::Object(alpha)));
        let targets = match &self.target_modules {
            None => Value::Null,
            Some(TargetModules::Regex(s)) => Value::from(s.clone()),
            Some(TargetModules::List(v)) => Value::from(v.clone()),
        };
        all.push(("target_modules".into(), targets));
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Value::Object(all.into_iter().collect())
    }

    /// The config as pretty JSON text (2-space indent, sorted keys, like PEFT).
    pub fn to_json_string(&self) -> String {
        // Serialising a `Value` cannot fail.
        serde_json::to_string_pretty(&self.to_json()).unwrap_or_default()
    }

    /// Rank and alpha of the module at `module_path`, following PEFT 0.13's
    /// `_create_and_replace`: the keys of `rank_pattern` and then of
    /// `alpha_pattern` are tried in order as the Python regular expression
    /// `.*\.{key}$` matched at the start of the path; the first matching key
    /// (or, if none matches, the path itself) is then looked up in *both*
    /// maps, falling back to `r` / `lora_alpha`.
    pub fn rank_and_alpha(&self, module_path: &str) -> (usize, f64) {
        let keys = self
            .rank_pattern
            .iter()
            .map(|(k, _)| k)
            .chain(self.alpha_pattern.iter().map(|(k, _)| k));
        let chosen = keys
            .into_iter()
            .find(|key| pattern_matches(key, module_path))
            .map(String::as_str)
            .unwrap_or(module_path);
        let r = self
            .rank_pattern
            .iter()
            .find(|(k, _)| k == chosen)
            .map_or(self.r, |(_, v)| *v);
        let alpha = self
            .alpha_pattern
            .iter()
            .find(|(k, _)| k == chosen)
            .map_or(self.lora_alpha, |(_, v)| *v);
        (r, alpha)
    }

    /// Scaling of the module at `module_path`: `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub fn scale_for(&self, module_path: &str) -> f64 {
        let (r, alpha) = self.rank_and_alpha(module_path);
        if self.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        }
    }
}

impl serde::Serialize for LoraConfig {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

/// Whether PEFT's `re.match(rf".*\.{key}$", path)` succeeds. The Python
/// pattern is wrapped whole in `^(?:...)` so that a `|` in the key keeps
/// Python's meaning. A key that is not a valid pattern never matches
/// ([`LoraConfig::from_json`] rejects such keys).
fn pattern_matches(key: &str, path: &str) -> bool {
    compile_pattern(key).is_ok_and(|re| re.is_match(path))
}

fn compile_pattern(key: &str) -> std::result::Result<regex::Regex, regex::Error> {
    regex::Regex::new(&format!(r"^(?:.*\.{key}$)"))
}

fn pattern_entries<T>(
    value: Option<Value>,
    field: &str,
    path: &Path,
    parse: impl Fn(&Value) -> Option<T>,
) -> Result<Vec<(String, T)>> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(map)) => map
            .into_iter()
            .map(|(key, v)| {
                compile_pattern(&key).map_err(|e| {
                    AdapterError::invalid(
                        path,
                        format!("{field} key {key:?} is not a valid pattern: {e}"),
                    )
                })?;
                let parsed = parse(&v).ok_or_else(|| {
                    AdapterError::invalid(path, format!("{field}[{key:?}] = {v} is invalid"))
                })?;
                Ok((key, parsed))
            })
            .collect(),
        Some(v) => Err(AdapterError::invalid(
            path,
            format!("{field} must be an object, got {v}"),
        )),
    }
}

fn positive_usize(v: &Value) -> Option<usize> {
    v.as_u64()
        .filter(|&r| r > 0)
        .and_then(|r| usize::try_from(r).ok())
}

fn finite_f64(v: &Value) -> Option<f64> {
    v.as_f64().filter(|x| x.is_finite())
}

/// A JSON number that stays an integer when the value is one (PEFT writes `lora_alpha: 16`).
pub(crate) fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        Value::from(x as i64)
    } else {
        Value::from(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> LoraConfig {
        LoraConfig::from_json_str(json, Path::new("test.json")).unwrap()
    }

    #[test]
    fn patterns_follow_peft() {
        let c = config(
            r#"{"r": 8, "lora_alpha": 16, "rank_pattern": {"fc2": 2, "layers\\.0\\.q": 4},
                "alpha_pattern": {"conv1": 12, "fc2": 3}}"#,
        );
        // Suffix after a dot matches; the chosen key is looked up in both maps.
        assert_eq!(c.rank_and_alpha("model.fc2"), (2, 3.0));
        assert_eq!(c.rank_and_alpha("enc.layers.0.q"), (4, 16.0));
        assert_eq!(c.rank_and_alpha("enc.layers.1.q"), (8, 16.0));
        assert_eq!(c.rank_and_alpha("a.conv1"), (8, 12.0));
        // A top-level module matches through the exact-name fallback.
        assert_eq!(c.rank_and_alpha("fc2"), (2, 3.0));
        // "xfc2" is not "<something>.fc2".
        assert_eq!(c.rank_and_alpha("a.xfc2"), (8, 16.0));
        assert_eq!(c.scale_for("a.conv1"), 1.5);
    }

    #[test]
    fn first_matching_key_wins_even_if_only_in_rank_pattern() {
        // PEFT picks one key; alpha for that key falls back to lora_alpha even
        // though another alpha key would match.
        let c = config(
            r#"{"r": 8, "lora_alpha": 16, "rank_pattern": {"q": 2}, "alpha_pattern": {".*q": 5}}"#,
        );
        assert_eq!(c.rank_and_alpha("layer.q"), (2, 16.0));
    }

    #[test]
    fn rslora_scaling() {
        let c = config(r#"{"r": 16, "lora_alpha": 8, "use_rslora": true}"#);
        assert_eq!(c.scale_for("x.y"), 2.0);
    }

    #[test]
    fn unknown_fields_round_trip_in_order() {
        let text = r#"{"a_field": {"nested": [1, 2]}, "lora_alpha": 16, "peft_type": "LORA", "r": 8, "zzz": null}"#;
        let c = config(text);
        let out = c.to_json();
        let keys: Vec<&String> = out.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "a_field",
                "alpha_pattern",
                "lora_alpha",
                "peft_type",
                "r",
                "rank_pattern",
                "target_modules",
                "use_rslora",
                "zzz"
            ]
        );
        assert_eq!(out["a_field"], serde_json::json!({"nested": [1, 2]}));
        assert_eq!(out["lora_alpha"], serde_json::json!(16));
        assert_eq!(config(&c.to_json_string()), c);
    }

    #[test]
    fn bad_configs_are_named_errors() {
        for (json, needle) in [
            (r#"{"lora_alpha": 16}"#, "missing field r"),
            (
                r#"{"r": 0, "lora_alpha": 16}"#,
                "r must be a positive integer",
            ),
            (
                r#"{"r": 4, "lora_alpha": "x"}"#,
                "lora_alpha must be a finite number",
            ),
            (r#"{"r": 4, "lora_alpha": 4, "use_dora": true}"#, "DoRA"),
            (
                r#"{"r": 4, "lora_alpha": 4, "peft_type": "IA3"}"#,
                "only LORA",
            ),
            (
                r#"{"r": 4, "lora_alpha": 4, "rank_pattern": {"(": 2}}"#,
                "not a valid pattern",
            ),
            ("[1]", "not a JSON object"),
            ("{", "not valid JSON"),
        ] {
            let err = LoraConfig::from_json_str(json, Path::new("dir/adapter_config.json"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("dir/adapter_config.json") && err.contains(needle),
                "{json}: {err}"
            );
        }
    }
}
