//! Writes interrupted at every commit point (each rename into place, each folder
//! swap) leave the previous content intact and no temporary names; completed
//! writes leave the new content. In a test binary of its own: the failure
//! injection is process-wide.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use semla_adapters::{Adapter, AdapterLibrary, EmbedderIdentity, LoraConfig};
use semla_test_support::files::interrupt_everywhere;

fn adapter(name: &str, value: f32) -> Adapter {
    let sites = vec![(
        "enc.fc".to_string(),
        (vec![value; 24], vec![4, 6], vec![0.25; 20], vec![5, 4]),
    )];
    Adapter::from_host(name, LoraConfig::new(4, 8.0), sites).unwrap()
}

fn identity(id: &str) -> EmbedderIdentity {
    EmbedderIdentity {
        kind: "style".into(),
        id: id.into(),
        spec: "style".into(),
    }
}

#[test]
fn interrupted_library_writes_keep_the_old_content() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("library");
    std::fs::create_dir_all(&root).unwrap();
    let mut library = AdapterLibrary::open(&root).unwrap();
    for name in ["fog", "night", "rain"] {
        library.add(&adapter(name, 0.5), None).unwrap();
    }
    let first: Vec<(String, Vec<f32>, usize)> = ["fog", "night", "rain"]
        .iter()
        .enumerate()
        .map(|(i, n)| (n.to_string(), vec![i as f32; 4], 3))
        .collect();
    library
        .set_prototypes(&identity("style:a"), &first)
        .unwrap();

    // New prototypes of another embedder: the prototypes and the record change
    // together or not at all.
    let second: Vec<(String, Vec<f32>, usize)> = ["fog", "night", "rain"]
        .iter()
        .map(|n| (n.to_string(), vec![9.0; 6], 5))
        .collect();
    let points = interrupt_everywhere(dir.path(), &root, || {
        let mut library = AdapterLibrary::open(&root).unwrap();
        library
            .set_prototypes(&identity("style:b"), &second)
            .is_ok()
    });
    assert!(
        points >= 1,
        "set_prototypes has a commit point to interrupt"
    );
    let library = AdapterLibrary::open(&root).unwrap();
    assert_eq!(library.record().unwrap().embedder_id, "style:b");
    assert_eq!(library.prototype("night").unwrap(), vec![9.0; 6]);

    // Replacing an adapter: its whole folder changes (the old prototype goes).
    let fog = root.join("fog");
    interrupt_everywhere(dir.path(), &root, || {
        let mut library = AdapterLibrary::open(&root).unwrap();
        library.replace(&adapter("fog", 0.75), None).is_ok()
    });
    let library = AdapterLibrary::open(&root).unwrap();
    assert!(!library.entry("fog").unwrap().has_prototype());
    assert!(fog.join("adapter_config.json").is_file());
    let a = &library.load("fog").unwrap().sites["enc.fc"].a;
    assert_eq!(a.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0], 0.75);

    // A PEFT folder written whole.
    let out = dir.path().join("merged");
    semla_adapters::peft::save_adapter(&out, &adapter("m", 0.5)).unwrap();
    interrupt_everywhere(dir.path(), &out, || {
        semla_adapters::peft::save_adapter(&out, &adapter("m", 2.0)).is_ok()
    });
    let loaded = semla_adapters::peft::load_adapter(&out).unwrap();
    let a = loaded.sites["enc.fc"].a.flatten_all().unwrap();
    assert_eq!(a.to_vec1::<f32>().unwrap()[0], 2.0);
}
