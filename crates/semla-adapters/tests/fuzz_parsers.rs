//! Property-based tests of the parsers of untrusted adapter files: valid `.npy`
//! arrays, `.npz` prototypes, PEFT configs, safetensors weights and library
//! records, damaged at random (bytes overwritten, sizes made huge, files cut
//! short). Whatever the damage: no panic, an error that names the file, and no
//! allocation beyond a bound far below what a damaged size field would ask for.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use std::path::Path;

use proptest::prelude::*;
use semla_adapters::library::{read_prototype, write_prototype};
use semla_adapters::npz::{encode_npy, parse_npy};
use semla_adapters::site::{Conv2dGeometry, SiteKind};
use semla_adapters::{Adapter, AdapterLibrary, SiteInfo, peft};
use semla_test_support::fuzz::{LargestAllocation, largest_allocation, mutated};

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

/// Every input here is a few kilobytes; a parser that trusts a damaged size
/// field asks for gigabytes.
const MAX_ALLOCATION_BYTES: usize = 16 << 20;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn sites() -> Vec<SiteInfo> {
    vec![
        SiteInfo {
            path: "enc.fc".into(),
            kind: SiteKind::Linear,
            in_features: 12,
            out_features: 8,
        },
        SiteInfo {
            path: "head".into(),
            kind: SiteKind::Conv2d(Conv2dGeometry {
                kernel_size: 3,
                stride: 1,
                padding: 1,
                dilation: 1,
            }),
            in_features: 4,
            out_features: 5,
        },
    ]
}

/// A valid adapter folder's two files: `adapter_config.json` and
/// `adapter_model.safetensors`.
fn valid_adapter_files() -> (Vec<u8>, Vec<u8>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fog");
    peft::save_adapter(&dir, &Adapter::random("fog", &sites(), 2, 7).unwrap()).unwrap();
    (
        std::fs::read(dir.join("adapter_config.json")).unwrap(),
        std::fs::read(dir.join("adapter_model.safetensors")).unwrap(),
    )
}

fn valid_prototype() -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    let values: Vec<f32> = (0..64).map(|i| (i as f32).sin()).collect();
    std::fs::read(write_prototype(tmp.path(), "fog", &values).unwrap()).unwrap()
}

/// Asserts that an error names the file, by its name.
fn names(err: &str, file: &Path) -> bool {
    err.contains(file.file_name().unwrap().to_str().unwrap())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn npy_arrays(bytes in mutated(encode_npy(&[1, 48], &[0.25; 48]))) {
        let (result, largest) = largest_allocation(|| parse_npy(&bytes));
        if let Ok(array) = &result {
            let count: usize = array.shape.iter().product();
            prop_assert_eq!(count, array.data.len());
        }
        prop_assert!(largest < MAX_ALLOCATION_BYTES, "{} bytes asked for", largest);
    }

    #[test]
    fn npz_prototypes(bytes in mutated(valid_prototype())) {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("fog_statistics.npz");
        std::fs::write(&path, &bytes).unwrap();
        let (result, largest) = largest_allocation(|| read_prototype(&path));
        match result {
            Ok(prototype) => prop_assert!(!prototype.is_empty()),
            Err(e) => prop_assert!(names(&e.to_string(), &path), "{}", e),
        }
        prop_assert!(largest < MAX_ALLOCATION_BYTES, "{} bytes asked for", largest);
    }

    #[test]
    fn adapter_configs(bytes in mutated(valid_adapter_files().0)) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("fog");
        let (_, weights) = valid_adapter_files();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("adapter_config.json");
        std::fs::write(&path, &bytes).unwrap();
        std::fs::write(dir.join("adapter_model.safetensors"), weights).unwrap();
        let (result, largest) = largest_allocation(|| peft::load_adapter(&dir));
        match result {
            Ok(adapter) => prop_assert!(adapter.validate(&path).is_ok()),
            Err(e) => prop_assert!(e.to_string().contains("fog"), "{}", e),
        }
        prop_assert!(largest < MAX_ALLOCATION_BYTES, "{} bytes asked for", largest);
    }

    #[test]
    fn adapter_weights(bytes in mutated(valid_adapter_files().1)) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("fog");
        let (config, _) = valid_adapter_files();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("adapter_config.json"), config).unwrap();
        let path = dir.join("adapter_model.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        let (result, largest) = largest_allocation(|| {
            (peft::read_tensor_shapes(&path).map(|_| ()), peft::load_adapter(&dir).map(|_| ()))
        });
        for outcome in [result.0, result.1] {
            if let Err(e) = outcome {
                prop_assert!(names(&e.to_string(), &path), "{}", e);
            }
        }
        prop_assert!(largest < MAX_ALLOCATION_BYTES, "{} bytes asked for", largest);
    }

    /// A library whose record is damaged still opens or fails naming the record;
    /// its adapters stay listed either way.
    #[test]
    fn library_records(bytes in mutated(br#"{"format":"semla-library/2","embedder":"style","embedder_id":"style:ab12","dimension":64,"embedder_spec":"style@2","images":{"fog":3}}"#.to_vec())) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let mut library = AdapterLibrary::open(root).unwrap();
        library.add(&Adapter::random("fog", &sites(), 2, 7).unwrap(), None).unwrap();
        let record = root.join("semla_library.json");
        std::fs::write(&record, &bytes).unwrap();
        let (result, largest) = largest_allocation(|| AdapterLibrary::open(root));
        match result {
            Ok(library) => prop_assert_eq!(library.names(), vec!["fog"]),
            Err(e) => prop_assert!(names(&e.to_string(), &record), "{}", e),
        }
        prop_assert!(largest < MAX_ALLOCATION_BYTES, "{} bytes asked for", largest);
    }
}
