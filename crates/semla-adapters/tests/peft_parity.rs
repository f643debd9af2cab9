//! Parity with Python peft 0.13.2: adapters, scalings, `add_weighted_adapter`
//! merges (cat, linear, svd) and model outputs, against the fixtures written
//! by `tools/reference/peft_fusion.py`. No Python at test time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly
#![allow(clippy::needless_range_loop)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use semla_adapters::apply::{delta_weights, merge_into};
use semla_adapters::linalg::{Matrix, low_rank_svd};
use semla_adapters::{
    Adaptation, AdaptedConv2d, AdaptedLinear, Adapter, AdapterLibrary, Combination, merge, peft,
};
use semla_test_support::{max_abs, max_abs_diff};

const TOL: f32 = 1e-5;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/peft")
}

fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("expected.safetensors"), &Device::Cpu).unwrap()
}

fn library() -> AdapterLibrary {
    AdapterLibrary::open(&fixtures().join("library")).unwrap()
}

fn assert_close(a: &Tensor, b: &Tensor, what: &str) {
    let d = max_abs_diff(a, b);
    assert!(d < TOL, "{what}: max abs diff {d}");
}

const SITES: [&str; 4] = ["conv1", "conv2", "fc1", "fc2"];

/// The toy model of the reference script, built from its base weights.
struct Toy {
    conv1: AdaptedConv2d,
    conv2: AdaptedConv2d,
    fc1: AdaptedLinear,
    fc2: AdaptedLinear,
}

impl Toy {
    fn new(e: &HashMap<String, Tensor>) -> Self {
        let w = |k: &str| e[&format!("base.{k}")].clone();
        Self {
            conv1: AdaptedConv2d::new("conv1", w("conv1.weight"), Some(w("conv1.bias")), 1, 1, 1)
                .unwrap(),
            conv2: AdaptedConv2d::new("conv2", w("conv2.weight"), Some(w("conv2.bias")), 1, 0, 1)
                .unwrap(),
            fc1: AdaptedLinear::new("fc1", w("fc1.weight"), Some(w("fc1.bias"))),
            fc2: AdaptedLinear::new("fc2", w("fc2.weight"), Some(w("fc2.bias"))),
        }
    }

    fn forward(&self, x: &Tensor, ad: &Adaptation) -> Tensor {
        let h = self.conv1.forward(x, ad).unwrap().relu().unwrap();
        let h = self.conv2.forward(&h, ad).unwrap().relu().unwrap();
        let h = h
            .flatten_from(2)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap();
        let h = self.fc1.forward(&h, ad).unwrap().relu().unwrap();
        self.fc2.forward(&h, ad).unwrap().mean(1).unwrap()
    }

    fn merged(&self, deltas: &std::collections::BTreeMap<String, Tensor>) -> Self {
        let mut m = Self {
            conv1: self.conv1.clone(),
            conv2: self.conv2.clone(),
            fc1: self.fc1.clone(),
            fc2: self.fc2.clone(),
        };
        merge_into(&mut m.conv1, deltas).unwrap();
        merge_into(&mut m.conv2, deltas).unwrap();
        merge_into(&mut m.fc1, deltas).unwrap();
        merge_into(&mut m.fc2, deltas).unwrap();
        m
    }

    fn infos(&self) -> Vec<semla_adapters::SiteInfo> {
        vec![
            self.conv1.info(),
            self.conv2.info(),
            self.fc1.info(),
            self.fc2.info(),
        ]
    }
}

struct MergeSpec {
    name: String,
    adapters: Vec<String>,
    weights: Vec<f64>,
    combination: Combination,
    svd_rank: Option<usize>,
}

fn merges() -> Vec<MergeSpec> {
    let text = std::fs::read_to_string(fixtures().join("merges.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| MergeSpec {
            name: m["name"].as_str().unwrap().into(),
            adapters: m["adapters"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().into())
                .collect(),
            weights: m["weights"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w.as_f64().unwrap())
                .collect(),
            combination: m["combination"].as_str().unwrap().parse().unwrap(),
            svd_rank: m["svd_rank"].as_u64().map(|r| r as usize),
        })
        .collect()
}

fn load_all(lib: &AdapterLibrary, names: &[String]) -> Vec<Adapter> {
    names.iter().map(|n| lib.load(n).unwrap()).collect()
}

#[test]
fn library_lists_adapters_prototypes_and_scalings() {
    let lib = library();
    assert_eq!(
        lib.names(),
        ["alpha_plain", "beta_rslora", "delta_plain", "gamma_pattern"]
    );
    let e = expected();
    // alpha and gamma were written by np.savez, beta by np.savez_compressed.
    for name in ["alpha_plain", "beta_rslora", "gamma_pattern"] {
        let proto = lib.prototype(name).unwrap();
        let want = e[&format!("prototype.{name}")]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(proto, want, "{name}");
        assert!(lib.entry(name).unwrap().has_prototype());
    }
    assert!(!lib.entry("delta_plain").unwrap().has_prototype());
    let err = lib.prototype("delta_plain").unwrap_err().to_string();
    assert!(
        err.contains("delta_plain_statistics.npz") && err.contains("no prototype"),
        "{err}"
    );

    let scalings: HashMap<String, f64> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("scalings.json")).unwrap())
            .unwrap();
    let mut checked = 0;
    for entry in lib.entries() {
        let adapter = lib.load(&entry.name).unwrap();
        assert_eq!(adapter.sites.len(), entry.sites.len());
        for site in &entry.sites {
            let want = scalings[&format!("{}.{}", entry.name, site.path)];
            assert!(
                (site.scale - want).abs() < 1e-12,
                "{} {}: {} vs {want}",
                entry.name,
                site.path,
                site.scale
            );
            assert!((adapter.scale_for(&site.path) - want).abs() < 1e-12);
            assert_eq!(site.shape.rank, adapter.sites[&site.path].rank());
            checked += 1;
        }
        assert_eq!(entry.parameter_count(), adapter.parameter_count());
    }
    assert_eq!(checked, scalings.len());
    // gamma's rank_pattern gives fc2 rank 2; its alpha_pattern changes conv1's scaling.
    let gamma = lib.entry("gamma_pattern").unwrap();
    assert_eq!(
        gamma
            .sites
            .iter()
            .find(|s| s.path == "fc2")
            .unwrap()
            .shape
            .rank,
        2
    );
}

#[test]
fn single_adapters_reproduce_peft_outputs() {
    let (lib, e) = (library(), expected());
    let toy = Toy::new(&e);
    let x = &e["input"];
    assert_close(
        &toy.forward(x, &Adaptation::none()),
        &e["output.base"],
        "base",
    );
    for name in lib.names() {
        let adapter = lib.load(name).unwrap();
        adapter.check_fits(&toy.infos()).unwrap();
        let factored = Adaptation::from_adapters(&[&adapter], &[vec![1.0]]).unwrap();
        assert_close(
            &toy.forward(x, &factored),
            &e[&format!("output.{name}")],
            name,
        );
        let merged = toy.merged(&delta_weights(&[&adapter], &[1.0]).unwrap());
        assert_close(
            &merged.forward(x, &Adaptation::none()),
            &e[&format!("output.{name}")],
            name,
        );
    }
}

#[test]
fn cat_and_linear_match_peft_add_weighted_adapter() {
    let (lib, e) = (library(), expected());
    let toy = Toy::new(&e);
    let x = &e["input"];
    for spec in merges()
        .iter()
        .filter(|m| m.combination != Combination::Svd)
    {
        let adapters = load_all(&lib, &spec.adapters);
        let refs: Vec<&Adapter> = adapters.iter().collect();
        let merged = merge(&refs, &spec.weights, spec.combination, spec.svd_rank).unwrap();
        for site in SITES {
            let ours = &merged.sites[site];
            let scale = merged.scale_for(site);
            assert_eq!(scale, 1.0);
            assert_close(
                &ours.delta_weight(scale).unwrap(),
                &e[&format!("{}.{site}.delta", spec.name)],
                site,
            );
            // Factors as peft stores them; peft zero-pads sites where fewer adapters contribute.
            let (pa, pb) = (
                &e[&format!("{}.{site}.lora_A", spec.name)],
                &e[&format!("{}.{site}.lora_B", spec.name)],
            );
            let r = ours.rank();
            assert_close(&ours.a, &pa.narrow(0, 0, r).unwrap(), site);
            assert_close(&ours.b, &pb.narrow(1, 0, r).unwrap(), site);
            if r < pa.dim(0).unwrap() {
                let rest = pa.narrow(0, r, pa.dim(0).unwrap() - r).unwrap();
                assert_eq!(max_abs(&rest), 0.0);
            }
        }
        let want = &e[&format!("output.{}", spec.name)];
        let through_merged_adapter = Adaptation::from_adapters(&[&merged], &[vec![1.0]]).unwrap();
        assert_close(&toy.forward(x, &through_merged_adapter), want, &spec.name);
        if spec.combination == Combination::Cat {
            // cat is exact: the factored mixture of the originals and the
            // merged-into-weights model give peft's output too.
            let factored =
                Adaptation::from_adapters(&refs, std::slice::from_ref(&spec.weights)).unwrap();
            assert_close(&toy.forward(x, &factored), want, "factored cat");
            let merged_model = toy.merged(&delta_weights(&refs, &spec.weights).unwrap());
            assert_close(
                &merged_model.forward(x, &Adaptation::none()),
                want,
                "merged cat",
            );
        }
    }
}

fn to_matrix(t: &Tensor) -> Matrix {
    let rows = t.dim(0).unwrap();
    let data: Vec<f64> = t
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect();
    Matrix::from_rows(rows, data.len() / rows, data)
}

#[test]
fn svd_truncates_the_exact_sum_and_explains_peft() {
    let (lib, e) = (library(), expected());
    let toy = Toy::new(&e);
    let x = &e["input"];
    for spec in merges()
        .iter()
        .filter(|m| m.combination == Combination::Svd)
    {
        let adapters = load_all(&lib, &spec.adapters);
        let refs: Vec<&Adapter> = adapters.iter().collect();
        let merged = merge(&refs, &spec.weights, Combination::Svd, spec.svd_rank).unwrap();
        let rank = spec.svd_rank.unwrap_or(8);
        assert_eq!(merged.config.r, rank);
        for site in SITES {
            let ours = &merged.sites[site];
            assert_eq!(ours.rank(), rank);
            // Reconstruction of the exact truncated sum (numpy SVD of the dense delta).
            let delta = ours.delta_weight(merged.scale_for(site)).unwrap();
            assert_close(
                &delta,
                &e[&format!("{}_exact.{site}.delta", spec.name)],
                site,
            );
            // Singular values: rows of A are orthonormal, so |B[:, k]| = S[k].
            let s_ref = e[&format!("{}_exact.{site}.singular_values", spec.name)]
                .to_vec1::<f32>()
                .unwrap();
            let b = to_matrix(&ours.b.flatten_from(1).unwrap());
            for k in 0..rank.min(s_ref.len()) {
                let norm = (0..b.rows).map(|i| b.at(i, k).powi(2)).sum::<f64>().sqrt();
                assert!(
                    (norm - f64::from(s_ref[k])).abs() < 1e-5,
                    "{site} S[{k}]: {norm} vs {}",
                    s_ref[k]
                );
            }
            // peft 0.13's own "svd" is the truncation of sum w_i s_i^2 B_i A_i.
            let (mut bs, mut cs, mut as_) = (Vec::new(), Vec::new(), Vec::new());
            for (adapter, w) in refs.iter().zip(&spec.weights) {
                if let Some(s) = adapter.sites.get(site) {
                    let scale = adapter.scale_for(site);
                    bs.push(to_matrix(&s.b.flatten_from(1).unwrap()));
                    as_.push(to_matrix(&s.a));
                    cs.extend(std::iter::repeat_n(w * scale * scale, s.rank()));
                }
            }
            let total: usize = cs.len();
            let (out, inn) = (bs[0].rows, as_[0].cols);
            let mut bcat = Matrix::zeros(out, total);
            let mut acat = Matrix::zeros(total, inn);
            let mut off = 0;
            for (b, a) in bs.iter().zip(&as_) {
                for r in 0..a.rows {
                    for o in 0..out {
                        *bcat.at_mut(o, off + r) = b.at(o, r);
                    }
                    for j in 0..inn {
                        *acat.at_mut(off + r, j) = a.at(r, j);
                    }
                }
                off += a.rows;
            }
            let (u, s, vt) = low_rank_svd(&bcat, &cs, &acat);
            let peft_delta = to_matrix(&e[&format!("{}.{site}.delta", spec.name)]);
            let mut worst = 0f64;
            for i in 0..out {
                for j in 0..inn {
                    let v: f64 = (0..rank.min(s.len()))
                        .map(|k| u.at(i, k) * s[k] * vt.at(k, j))
                        .sum();
                    worst = worst.max((v - peft_delta.at(i, j)).abs());
                }
            }
            assert!(
                worst < 1e-5,
                "{site}: peft svd is not trunc(sum w s^2 BA): {worst}"
            );
        }
        let ad = Adaptation::from_adapters(&[&merged], &[vec![1.0]]).unwrap();
        assert_close(
            &toy.forward(x, &ad),
            &e[&format!("output.{}_exact", spec.name)],
            &spec.name,
        );
    }
}

#[test]
fn bin_pickle_loads_like_safetensors() {
    let from_bin = peft::load_adapter(&fixtures().join("bin/alpha_plain")).unwrap();
    let from_st = library().load("alpha_plain").unwrap();
    assert_eq!(from_bin.name, "alpha_plain");
    assert_eq!(from_bin.config, from_st.config);
    assert_eq!(
        from_bin.sites.keys().collect::<Vec<_>>(),
        from_st.sites.keys().collect::<Vec<_>>()
    );
    for (path, site) in &from_bin.sites {
        assert_eq!(max_abs_diff(&site.a, &from_st.sites[path].a), 0.0);
        assert_eq!(max_abs_diff(&site.b, &from_st.sites[path].b), 0.0);
    }
    // The library header reader also understands the pickle.
    let entry =
        semla_adapters::LibraryEntry::read(&fixtures().join("bin/alpha_plain"), "alpha_plain")
            .unwrap();
    assert_eq!(entry.parameter_count(), from_st.parameter_count());
}

#[test]
fn saving_a_peft_adapter_reproduces_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let lib = library();
    for name in lib.names() {
        let adapter = lib.load(name).unwrap();
        let out = dir.path().join(name);
        peft::save_adapter(&out, &adapter).unwrap();
        // The config is byte-identical to peft's (sorted keys, unknown fields kept).
        let original =
            std::fs::read_to_string(lib.entry(name).unwrap().dir.join(peft::CONFIG_FILE)).unwrap();
        let ours = std::fs::read_to_string(out.join(peft::CONFIG_FILE)).unwrap();
        assert_eq!(ours, original, "{name}");
        // Same tensors, keys and metadata.
        let bytes = std::fs::read(out.join(peft::SAFETENSORS_FILE)).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(meta.metadata().as_ref().unwrap()["format"], "pt");
        let back = peft::load_adapter(&out).unwrap();
        for (path, site) in &adapter.sites {
            assert_eq!(max_abs_diff(&site.a, &back.sites[path].a), 0.0);
            assert_eq!(max_abs_diff(&site.b, &back.sites[path].b), 0.0);
        }
        let orig = safetensors::SafeTensors::deserialize(
            &std::fs::read(lib.entry(name).unwrap().weights_file.clone()).unwrap(),
        )
        .unwrap()
        .names()
        .into_iter()
        .map(str::to_string)
        .collect::<std::collections::BTreeSet<_>>();
        let mine = safetensors::SafeTensors::deserialize(&bytes)
            .unwrap()
            .names()
            .into_iter()
            .map(str::to_string)
            .collect::<std::collections::BTreeSet<_>>();
        assert_eq!(orig, mine);
        // No temporary files are left behind.
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2);
    }
}

#[test]
fn semla_written_merges_are_current() {
    // The folders that `peft_fusion.py verify` loaded in Python peft must be
    // what this code writes today.
    let check = fixtures().join("peft_load_check.json");
    let Ok(text) = std::fs::read_to_string(&check) else {
        eprintln!("skipping: {} not generated yet", check.display());
        return;
    };
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["all_passed"], true);
    let lib = library();
    for spec in merges() {
        let adapters = load_all(&lib, &spec.adapters);
        let refs: Vec<&Adapter> = adapters.iter().collect();
        let merged = merge(&refs, &spec.weights, spec.combination, spec.svd_rank).unwrap();
        let written =
            peft::load_adapter(&fixtures().join("semla_written").join(&spec.name)).unwrap();
        assert_eq!(written.config, merged.config, "{}", spec.name);
        for (path, site) in &merged.sites {
            assert_close(&site.a, &written.sites[path].a, path);
            assert_close(&site.b, &written.sites[path].b, path);
        }
    }
}
