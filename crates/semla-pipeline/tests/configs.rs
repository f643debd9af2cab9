//! The official YAML configuration files and their JSON equivalents.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use std::path::Path;

use semla_adapters::Combination;
use semla_pipeline::config::{
    ConfigError, SemlaConfig, domain_list_from_json_str, domain_list_from_yaml_str,
    read_domain_list,
};
use semla_retrieval::SimilarityMeasure;

fn yaml(text: &str) -> Result<SemlaConfig, ConfigError> {
    SemlaConfig::from_yaml_str(text, Path::new("semla_config.yaml"))
}

#[test]
fn the_shipped_semla_config_reads_as_written() {
    // The official file, verbatim in content.
    let config = yaml(
        "distance_measure_name: euclidean\ntemperature: 0.05\ntop_k: 5\ncombination_type: cat\n",
    )
    .unwrap();
    assert_eq!(
        config,
        SemlaConfig {
            similarity: SimilarityMeasure::Euclidean,
            temperature: 0.05,
            top_k: 5,
            combination_type: Combination::Cat,
        }
    );
    let params = config.retrieval_params();
    assert_eq!(params.top_k, 5);
    assert_eq!(params.temperature, 0.05);
}

#[test]
fn both_measure_keys_are_honoured() {
    // Officially `distance_measure_name` was ignored; here it selects cosine.
    let config = yaml("distance_measure_name: cosine\n").unwrap();
    assert_eq!(config.similarity, SimilarityMeasure::Cosine);
    let config = yaml("similarity_measure_name: cosine\ntop_k: 3\n").unwrap();
    assert_eq!(config.similarity, SimilarityMeasure::Cosine);
    assert_eq!(config.top_k, 3);
    assert_eq!(config.temperature, 0.05);
    let config = yaml("similarity_measure_name: cosine\ndistance_measure_name: cosine\n").unwrap();
    assert_eq!(config.similarity, SimilarityMeasure::Cosine);

    let err =
        yaml("similarity_measure_name: cosine\ndistance_measure_name: euclidean\n").unwrap_err();
    let message = err.to_string();
    assert!(message.contains("semla_config.yaml"), "{message}");
    assert!(message.contains("disagree"), "{message}");
}

#[test]
fn missing_keys_take_the_official_defaults() {
    assert_eq!(yaml("").unwrap(), SemlaConfig::default());
    assert_eq!(yaml("# nothing here\n").unwrap(), SemlaConfig::default());
    let config = yaml("temperature: 1\n").unwrap();
    assert_eq!(config.temperature, 1.0);
    assert_eq!(config.top_k, 5);
    assert_eq!(config.similarity, SimilarityMeasure::Euclidean);
    assert_eq!(config.combination_type, Combination::Cat);
}

#[test]
fn bad_semla_configs_are_clear_errors() {
    for (text, needle) in [
        ("temprature: 0.1\n", "temprature"),
        ("distance_measure_name: manhattan\n", "manhattan"),
        ("top_k: 0\n", "top_k"),
        ("top_k: -2\n", "top_k"),
        ("temperature: -0.5\n", "temperature"),
        ("combination_type: ties\n", "ties"),
        ("- euclidean\n", "mapping"),
        ("top_k: [5\n", "YAML"),
    ] {
        let err = yaml(text).unwrap_err();
        let message = err.to_string();
        assert!(message.contains(needle), "{text:?}: {message}");
        assert!(message.contains("semla_config.yaml"), "{text:?}: {message}");
    }
}

#[test]
fn json_configs_read_like_yaml() {
    let origin = Path::new("semla_config.json");
    let config = SemlaConfig::from_json_str(
        r#"{"similarity_measure_name": "cosine", "temperature": 0.2, "top_k": 2, "combination_type": "linear"}"#,
        origin,
    )
    .unwrap();
    assert_eq!(
        config,
        SemlaConfig {
            similarity: SimilarityMeasure::Cosine,
            temperature: 0.2,
            top_k: 2,
            combination_type: Combination::Linear,
        }
    );
    let err = SemlaConfig::from_json_str("{\"top_k\": 5,}", origin).unwrap_err();
    assert!(
        matches!(err, ConfigError::Syntax { format: "JSON", .. }),
        "{err}"
    );
}

#[test]
fn domain_lists_in_official_and_mapping_form() {
    let origin = Path::new("source_domains.yaml");
    // The official target file: commented-out entries are skipped.
    let names = domain_list_from_yaml_str(
        "- acdc-rain\n- acdc-fog\n# - muses-clear-day\n- acdc-snow\n- acdc-night\n",
        origin,
    )
    .unwrap();
    assert_eq!(names, ["acdc-rain", "acdc-fog", "acdc-snow", "acdc-night"]);
    let names =
        domain_list_from_yaml_str("source_domains:\n  - bdd\n  - mv\n  - cs-normal\n", origin)
            .unwrap();
    assert_eq!(names, ["bdd", "mv", "cs-normal"]);
    let names =
        domain_list_from_json_str(r#"{"domains": ["nyu", "a150"]}"#, Path::new("d.json")).unwrap();
    assert_eq!(names, ["nyu", "a150"]);
    let names = domain_list_from_json_str(r#"["pc59"]"#, Path::new("d.json")).unwrap();
    assert_eq!(names, ["pc59"]);

    for (text, needle) in [
        ("- bdd\n- bdd\n", "twice"),
        ("- bdd\n- 3\n", "entry 1"),
        ("# - bdd\n", "no domains"),
        ("[]\n", "no domains"),
        ("sources:\n  - bdd\n", "sources"),
        ("domains: bdd\n", "list"),
        ("bdd\n", "a string"),
    ] {
        let err = domain_list_from_yaml_str(text, origin).unwrap_err();
        let message = err.to_string();
        assert!(message.contains(needle), "{text:?}: {message}");
        assert!(
            message.contains("source_domains.yaml"),
            "{text:?}: {message}"
        );
    }
}

#[test]
fn files_are_read_by_extension() {
    let dir = tempfile::tempdir().unwrap();
    let yaml_path = dir.path().join("source_domains.yaml");
    std::fs::write(&yaml_path, "- acdc-rain\n- mv\n").unwrap();
    assert_eq!(read_domain_list(&yaml_path).unwrap(), ["acdc-rain", "mv"]);
    let json_path = dir.path().join("semla_config.JSON");
    std::fs::write(&json_path, r#"{"distance_measure_name": "cosine"}"#).unwrap();
    assert_eq!(
        SemlaConfig::from_path(&json_path).unwrap().similarity,
        SimilarityMeasure::Cosine
    );
    let missing = dir.path().join("nope.yaml");
    let err = SemlaConfig::from_path(&missing).unwrap_err();
    assert!(matches!(err, ConfigError::Io { .. }));
    assert!(err.to_string().contains("nope.yaml"), "{err}");
}
