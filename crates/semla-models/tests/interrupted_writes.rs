//! A model folder (`config.json` + `model.safetensors`) is replaced whole or not
//! at all, whichever commit point a save is interrupted at, and the training
//! checkpoints kept beside them stay. In a test binary of its own: the failure
//! injection is process-wide.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use candle_core::Device;
use semla_models::config::{SegmenterConfig, TinySegConfig};
use semla_models::{load_segmenter, random_segmenter, save_segmenter};
use semla_test_support::files::interrupt_everywhere;

#[test]
fn interrupted_model_saves_keep_the_old_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model");
    let tiny = |classes| {
        SegmenterConfig::Tiny(TinySegConfig {
            width: 4,
            ..TinySegConfig::new(classes)
        })
    };
    let old = random_segmenter(&tiny(3), &Device::Cpu).unwrap();
    save_segmenter(old.as_ref(), &out).unwrap();
    std::fs::create_dir_all(out.join("checkpoints")).unwrap();
    std::fs::write(out.join("checkpoints/step_10.safetensors"), b"kept").unwrap();
    // Another class count: config and weights must change together.
    let new = random_segmenter(&tiny(5), &Device::Cpu).unwrap();
    let points = interrupt_everywhere(dir.path(), &out, || {
        save_segmenter(new.as_ref(), &out).is_ok()
    });
    assert!(
        points >= 2,
        "each file and the folder swap are commit points"
    );
    let loaded = load_segmenter(&out, &Device::Cpu).unwrap();
    assert_eq!(loaded.config(), new.config());
    assert_eq!(
        std::fs::read(out.join("checkpoints/step_10.safetensors")).unwrap(),
        b"kept"
    );
}
