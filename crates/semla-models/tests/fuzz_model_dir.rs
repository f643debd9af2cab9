//! Property-based tests of a model folder's parsers: a valid `config.json` and
//! `model.safetensors`, damaged at random. Whatever the damage: no panic, an
//! error naming the file, and no allocation beyond a bound far below what a
//! damaged size field would ask for.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use candle_core::Device;
use proptest::prelude::*;
use semla_models::config::{SegmenterConfig, TinySegConfig};
use semla_models::{load_segmenter, random_segmenter, save_segmenter};
use semla_test_support::fuzz::{LargestAllocation, largest_allocation, mutated};

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

/// The model's files are a few tens of kilobytes.
const MAX_ALLOCATION_BYTES: usize = 16 << 20;

/// A valid tiny model folder's `config.json` and `model.safetensors`.
fn valid_model_files() -> (Vec<u8>, Vec<u8>) {
    let tmp = tempfile::tempdir().unwrap();
    let config = SegmenterConfig::Tiny(TinySegConfig {
        width: 4,
        ..TinySegConfig::new(3)
    });
    let model = random_segmenter(&config, &Device::Cpu).unwrap();
    save_segmenter(model.as_ref(), tmp.path()).unwrap();
    (
        std::fs::read(tmp.path().join("config.json")).unwrap(),
        std::fs::read(tmp.path().join("model.safetensors")).unwrap(),
    )
}

/// Writes the two files, loads the folder and checks the outcome: an error names
/// the folder, and `file` when only that file can be blamed (a damaged config
/// may also show as weights that do not fit it).
fn load_checked(config: &[u8], weights: &[u8], file: Option<&str>) -> Result<(), TestCaseError> {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("config.json"), config).unwrap();
    std::fs::write(tmp.path().join("model.safetensors"), weights).unwrap();
    let (result, largest) = largest_allocation(|| load_segmenter(tmp.path(), &Device::Cpu));
    if let Err(e) = result {
        let e = e.to_string();
        prop_assert!(e.contains(tmp.path().to_str().unwrap()), "{}", e);
        prop_assert!(file.is_none_or(|f| e.contains(f)), "{}", e);
    }
    prop_assert!(
        largest < MAX_ALLOCATION_BYTES,
        "{} bytes asked for",
        largest
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn model_configs(config in mutated(valid_model_files().0)) {
        load_checked(&config, &valid_model_files().1, None)?;
    }

    #[test]
    fn model_weights(weights in mutated(valid_model_files().1)) {
        load_checked(&valid_model_files().0, &weights, Some("model.safetensors"))?;
    }
}

#[test]
fn class_counts_out_of_range_are_refused_before_the_weights_are_read() {
    let (_, weights) = valid_model_files();
    for (classes, needle) in [("0", "at least one class"), ("100000000", "--max-classes")] {
        let tmp = tempfile::tempdir().unwrap();
        let config = format!(r#"{{"kind": "tiny", "num_classes": {classes}, "width": 4}}"#);
        std::fs::write(tmp.path().join("config.json"), config).unwrap();
        std::fs::write(tmp.path().join("model.safetensors"), &weights).unwrap();
        let err = load_segmenter(tmp.path(), &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("config.json") && err.contains(needle), "{err}");
    }
}
