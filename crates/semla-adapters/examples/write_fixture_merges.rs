//! Writes the merges listed in `tests/fixtures/peft/merges.json`, computed by
//! semla from the fixture library, to `tests/fixtures/peft/semla_written/<merge>/`
//! in PEFT format, for `tools/reference/peft_fusion.py verify` to load in Python peft.
//!
//! `cargo run -p semla-adapters --example write_fixture_merges`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use std::path::Path;

use semla_adapters::{Adapter, AdapterLibrary, Combination, merge, peft};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/peft");
    let library = AdapterLibrary::open(&fixtures.join("library"))?;
    let specs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("merges.json"))?)?;
    for spec in specs.as_array().ok_or("merges.json is not a list")? {
        let name = spec["name"].as_str().ok_or("merge without a name")?;
        let adapters: Vec<Adapter> = spec["adapters"]
            .as_array()
            .ok_or("adapters is not a list")?
            .iter()
            .map(|a| library.load(a.as_str().unwrap_or_default()))
            .collect::<Result<_, _>>()?;
        let weights: Vec<f64> = spec["weights"]
            .as_array()
            .ok_or("weights is not a list")?
            .iter()
            .filter_map(|w| w.as_f64())
            .collect();
        let combination: Combination = spec["combination"].as_str().unwrap_or_default().parse()?;
        let svd_rank = spec["svd_rank"].as_u64().map(|r| r as usize);
        let refs: Vec<&Adapter> = adapters.iter().collect();
        let mut merged = merge(&refs, &weights, combination, svd_rank)?;
        merged.name = name.to_string();
        let out = fixtures.join("semla_written").join(name);
        peft::save_adapter(&out, &merged)?;
        println!("wrote {}", out.display());
    }
    Ok(())
}
