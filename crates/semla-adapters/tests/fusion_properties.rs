//! Algebra of fusion and application on random adapters: the PEFT merge bug
//! list (weight 1 reproduces, weight 0 removes, negative subtracts, mixed
//! ranks, rsLoRA after a merge) and the agreement of the merged and factored
//! paths, per image.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng, rngs::StdRng};
use semla_adapters::apply::{delta_weights, merge_into};
use semla_adapters::{
    Adaptation, AdaptedConv2d, AdaptedLinear, Adapter, Combination, LoraConfig, merge, peft,
};
use semla_test_support::max_abs;

fn randn(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// An adapter with a Linear site `lin` (6 -> 5) and a 3x3 Conv2d site `conv` (3 -> 4).
fn random_adapter(name: &str, r: usize, alpha: f64, rslora: bool, seed: u64) -> Adapter {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut config = LoraConfig::new(r, alpha);
    config.use_rslora = rslora;
    let sites = vec![
        (
            "lin".to_string(),
            (
                randn(&mut rng, r * 6),
                vec![r, 6],
                randn(&mut rng, 5 * r),
                vec![5, r],
            ),
        ),
        (
            "conv".to_string(),
            (
                randn(&mut rng, r * 3 * 9),
                vec![r, 3, 3, 3],
                randn(&mut rng, 4 * r),
                vec![4, r, 1, 1],
            ),
        ),
    ];
    Adapter::from_host(name, config, sites).unwrap()
}

fn diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    max_abs(&(a - b).unwrap())
}

fn merged_deltas(adapter: &Adapter) -> BTreeMap<String, Tensor> {
    delta_weights(&[adapter], &[1.0]).unwrap()
}

fn assert_deltas_close(
    a: &BTreeMap<String, Tensor>,
    b: &BTreeMap<String, Tensor>,
    tol: f32,
    what: &str,
) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{what}"
    );
    for (k, t) in a {
        let d = diff(t, &b[k]);
        assert!(d < tol, "{what}: site {k} differs by {d}");
    }
}

const ALL: [Combination; 3] = [Combination::Cat, Combination::Linear, Combination::Svd];

#[test]
fn one_adapter_at_weight_one_reproduces_itself() {
    for (rslora, alpha) in [(false, 8.0), (true, 6.0)] {
        let a = random_adapter("a", 4, alpha, rslora, 1);
        for combination in ALL {
            let m = merge(&[&a], &[1.0], combination, None).unwrap();
            assert_eq!(m.config.r, 4);
            assert!(!m.config.use_rslora);
            assert_deltas_close(
                &merged_deltas(&m),
                &merged_deltas(&a),
                1e-5,
                &format!("{combination}"),
            );
        }
    }
}

#[test]
fn weight_zero_removes_an_adapter() {
    let a = random_adapter("a", 4, 8.0, false, 1);
    let b = random_adapter("b", 6, 3.0, true, 2);
    for combination in [Combination::Cat, Combination::Svd] {
        let with_zero = merge(&[&a, &b], &[0.7, 0.0], combination, Some(4)).unwrap();
        let alone = merge(&[&a], &[0.7], combination, Some(4)).unwrap();
        assert_deltas_close(
            &merged_deltas(&with_zero),
            &merged_deltas(&alone),
            1e-5,
            &format!("{combination}"),
        );
    }
    let b4 = random_adapter("b4", 4, 3.0, false, 3);
    let lin = merge(&[&a, &b4], &[0.7, 0.0], Combination::Linear, None).unwrap();
    let alone = merge(&[&a], &[0.7], Combination::Linear, None).unwrap();
    assert_deltas_close(&merged_deltas(&lin), &merged_deltas(&alone), 1e-5, "linear");
}

#[test]
fn negative_weights_subtract() {
    let a = random_adapter("a", 4, 8.0, false, 1);
    let b = random_adapter("b", 2, 2.0, true, 2);
    let cancel = merge(&[&a, &a], &[1.0, -1.0], Combination::Cat, None).unwrap();
    for t in merged_deltas(&cancel).values() {
        assert!(max_abs(t) < 1e-6);
    }
    let sub = merge(&[&a, &b], &[1.0, -1.0], Combination::Cat, None).unwrap();
    let (da, db) = (merged_deltas(&a), merged_deltas(&b));
    let want: BTreeMap<String, Tensor> = da
        .iter()
        .map(|(k, t)| (k.clone(), (t - &db[k]).unwrap()))
        .collect();
    assert_deltas_close(&merged_deltas(&sub), &want, 1e-5, "a - b");
    // A single negative weight stays exact with cat (PEFT would switch to linear and fail).
    let neg = merge(&[&a], &[-0.5], Combination::Cat, None).unwrap();
    let want: BTreeMap<String, Tensor> = da
        .iter()
        .map(|(k, t)| (k.clone(), (t * -0.5).unwrap()))
        .collect();
    assert_deltas_close(&merged_deltas(&neg), &want, 1e-5, "-0.5 a");
    // linear cannot take a square root of a negative weight: a clear error.
    let a2 = random_adapter("a2", 4, 8.0, false, 5);
    let err = merge(&[&a, &a2], &[1.0, -1.0], Combination::Linear, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("negative") && err.contains("cat or svd"),
        "{err}"
    );
}

#[test]
fn mixed_ranks_fuse_exactly_and_svd_is_exact_at_full_rank() {
    let adapters = [
        random_adapter("a", 2, 4.0, false, 1),
        random_adapter("b", 5, 5.0, true, 2),
        random_adapter("c", 3, 1.0, false, 3),
    ];
    let refs: Vec<&Adapter> = adapters.iter().collect();
    let weights = [0.5, -0.25, 1.5];
    let exact = delta_weights(&refs, &weights).unwrap();
    let cat = merge(&refs, &weights, Combination::Cat, None).unwrap();
    assert_eq!(cat.config.r, 10);
    assert_eq!(cat.config.lora_alpha, 10.0);
    assert!(cat.config.rank_pattern.is_empty());
    assert_deltas_close(&merged_deltas(&cat), &exact, 1e-5, "cat");
    // Rank 10 keeps everything; the default (max r = 5) truncates.
    let full = merge(&refs, &weights, Combination::Svd, Some(10)).unwrap();
    assert_deltas_close(&merged_deltas(&full), &exact, 1e-5, "svd full");
    let truncated = merge(&refs, &weights, Combination::Svd, None).unwrap();
    assert_eq!(truncated.sites["lin"].rank(), 5);
    // Linear needs equal ranks.
    let err = merge(&refs, &weights, Combination::Linear, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("equal ranks"), "{err}");
}

#[test]
fn rslora_scaling_is_right_after_merge_and_save() {
    // rsLoRA: scale = alpha / sqrt(r) = 8 / 2 = 4.
    let a = random_adapter("a", 4, 8.0, true, 7);
    assert_eq!(a.scale_for("lin"), 4.0);
    let b = random_adapter("b", 4, 2.0, false, 8);
    let exact = delta_weights(&[&a, &b], &[0.3, 0.6]).unwrap();
    for combination in [Combination::Cat, Combination::Svd] {
        let m = merge(&[&a, &b], &[0.3, 0.6], combination, Some(8)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        peft::save_adapter(dir.path(), &m).unwrap();
        let back = peft::load_adapter(dir.path()).unwrap();
        assert!(!back.config.use_rslora);
        assert_eq!(back.scale_for("lin"), 1.0);
        assert_deltas_close(
            &merged_deltas(&back),
            &exact,
            1e-5,
            &format!("{combination} reloaded"),
        );
    }
}

#[test]
fn sites_missing_from_some_adapters_get_per_site_ranks() {
    let a = random_adapter("a", 4, 8.0, false, 1);
    let mut b = random_adapter("b", 2, 2.0, false, 2);
    b.sites.remove("conv");
    let m = merge(&[&a, &b], &[1.0, 1.0], Combination::Cat, None).unwrap();
    assert_eq!(m.config.r, 6);
    assert_eq!(m.sites["conv"].rank(), 4);
    assert_eq!(m.config.rank_and_alpha("conv"), (4, 4.0));
    assert_eq!(m.scale_for("conv"), 1.0);
    let dir = tempfile::tempdir().unwrap();
    peft::save_adapter(dir.path(), &m).unwrap();
    let back = peft::load_adapter(dir.path()).unwrap();
    assert_deltas_close(
        &merged_deltas(&back),
        &delta_weights(&[&a, &b], &[1.0, 1.0]).unwrap(),
        1e-5,
        "cat",
    );
}

/// A model with one Conv2d site and one Linear site.
#[derive(Clone)]
struct TwoSites {
    conv: AdaptedConv2d,
    lin: AdaptedLinear,
}

impl TwoSites {
    fn new() -> Self {
        let mut rng = StdRng::seed_from_u64(11);
        let dev = Device::Cpu;
        let conv_w = Tensor::from_vec(randn(&mut rng, 4 * 3 * 9), (4, 3, 3, 3), &dev).unwrap();
        let conv_b = Tensor::from_vec(randn(&mut rng, 4), 4, &dev).unwrap();
        // The Linear site takes 6 features: tokens are (4 conv channels + 2 extra) built below.
        let lin_w = Tensor::from_vec(randn(&mut rng, 5 * 6), (5, 6), &dev).unwrap();
        Self {
            conv: AdaptedConv2d::new("conv", conv_w, Some(conv_b), 1, 1, 1).unwrap(),
            lin: AdaptedLinear::new("lin", lin_w, None),
        }
    }

    /// `x` `[N, 3, 5, 5]` -> `[N, 5]`.
    fn forward(&self, x: &Tensor, ad: &Adaptation) -> Tensor {
        let h = self.conv.forward(x, ad).unwrap().relu().unwrap(); // [N, 4, 5, 5]
        let tokens = h.flatten_from(2).unwrap().transpose(1, 2).unwrap(); // [N, 25, 4]
        let extra = tokens.narrow(2, 0, 2).unwrap().sqr().unwrap();
        let tokens = Tensor::cat(&[&tokens, &extra], 2)
            .unwrap()
            .contiguous()
            .unwrap(); // [N, 25, 6]
        self.lin.forward(&tokens, ad).unwrap().mean(1).unwrap()
    }

    fn merged(&self, deltas: &BTreeMap<String, Tensor>) -> Self {
        let mut m = self.clone();
        assert!(merge_into(&mut m.conv, deltas).unwrap());
        assert!(merge_into(&mut m.lin, deltas).unwrap());
        m
    }
}

fn input(n: usize, seed: u64) -> Tensor {
    let mut rng = StdRng::seed_from_u64(seed);
    Tensor::from_vec(randn(&mut rng, n * 3 * 25), (n, 3, 5, 5), &Device::Cpu).unwrap()
}

#[test]
fn merged_and_factored_paths_agree() {
    let model = TwoSites::new();
    let adapters = [
        random_adapter("a", 2, 4.0, false, 1),
        random_adapter("b", 5, 5.0, true, 2),
        random_adapter("c", 3, 1.0, false, 3),
    ];
    let refs: Vec<&Adapter> = adapters.iter().collect();
    let weights = vec![0.5, -0.25, 1.5];
    let x = input(3, 4);
    let factored = model.forward(
        &x,
        &Adaptation::from_adapters(&refs, std::slice::from_ref(&weights)).unwrap(),
    );
    let merged = model
        .merged(&delta_weights(&refs, &weights).unwrap())
        .forward(&x, &Adaptation::none());
    assert!(
        diff(&factored, &merged) < 1e-5,
        "{}",
        diff(&factored, &merged)
    );
    // And the adaptation changes the output at all.
    assert!(diff(&factored, &model.forward(&x, &Adaptation::none())) > 1e-3);
}

#[test]
fn a_per_image_mixed_batch_equals_images_one_by_one() {
    let model = TwoSites::new();
    let adapters = [
        random_adapter("a", 2, 4.0, false, 1),
        random_adapter("b", 5, 5.0, true, 2),
        random_adapter("c", 3, 1.0, false, 3),
    ];
    let refs: Vec<&Adapter> = adapters.iter().collect();
    let per_image = vec![
        vec![1.0, 0.0, 0.0],
        vec![0.2, 0.3, 0.5],
        vec![-0.5, 0.0, 2.0],
    ];
    let x = input(3, 5);
    let batch = model.forward(&x, &Adaptation::from_adapters(&refs, &per_image).unwrap());
    for (n, w) in per_image.iter().enumerate() {
        let xn = x.narrow(0, n, 1).unwrap();
        let alone = model.forward(
            &xn,
            &Adaptation::from_adapters(&refs, std::slice::from_ref(w)).unwrap(),
        );
        let merged = model
            .merged(&delta_weights(&refs, w).unwrap())
            .forward(&xn, &Adaptation::none());
        let row = batch.narrow(0, n, 1).unwrap();
        assert!(diff(&row, &alone) < 1e-5, "image {n}");
        assert!(diff(&row, &merged) < 1e-5, "image {n} merged");
    }
}

#[test]
fn bad_weights_are_errors() {
    let a = random_adapter("a", 2, 4.0, false, 1);
    let b = random_adapter("b", 2, 4.0, false, 2);
    for (weights, needle) in [
        (vec![], "empty"),
        (vec![1.0], "1 weights given for 2 adapters"),
        (vec![1.0, f64::NAN], "not finite"),
        (vec![f64::INFINITY, 1.0], "not finite"),
    ] {
        let err = merge(&[&a, &b], &weights, Combination::Cat, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{weights:?}: {err}");
        let err = Adaptation::from_adapters(&[&a, &b], std::slice::from_ref(&weights))
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{weights:?}: {err}");
    }
    let err = Adaptation::from_adapters(&[&a], &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("zero images"), "{err}");
    let err = merge(&[], &[], Combination::Cat, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("empty"), "{err}");
    let err = merge(&[&a], &[1.0], Combination::Svd, Some(0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("at least 1"), "{err}");
}

/// A site update with rank `rank` on a `[out, fan_in]` weight and one mixture row.
fn site_update(rank: usize, fan_in: usize, out: usize, seed: u64) -> semla_adapters::FactoredSite {
    let mut rng = StdRng::seed_from_u64(seed);
    let dev = Device::Cpu;
    let a = Tensor::from_vec(randn(&mut rng, rank * fan_in), (rank, fan_in), &dev).unwrap();
    let b = Tensor::from_vec(randn(&mut rng, out * rank), (out, rank), &dev).unwrap();
    semla_adapters::FactoredSite::stack(&[(&a, &b, 0.5)], &[vec![1.0]]).unwrap()
}

#[test]
fn the_merge_or_factor_choice_follows_the_multiply_add_count() {
    // 64 -> 64, rank 8: merging costs 64*64*8 = 32768 multiply-adds, the factored
    // form 8 * (64 + 64) = 1024 per row: merged from 33 rows on.
    let site = site_update(8, 64, 64, 1);
    assert!(!site.merge_is_cheaper(1, 32).unwrap());
    assert!(site.merge_is_cheaper(1, 33).unwrap());
    // A batch sharing the one mixture row may merge too.
    assert!(site.merge_is_cheaper(4, 400).unwrap());
    // Per-image rows in a batch of two: never merged.
    let two = semla_adapters::FactoredSite {
        coeff: Tensor::ones((2, 8), candle_core::DType::F32, &Device::Cpu).unwrap(),
        ..site.clone()
    };
    assert!(!two.merge_is_cheaper(2, 10_000).unwrap());
    // Trainable factors: never merged, so gradients reach A and B.
    let var = candle_core::Var::from_tensor(&site.a).unwrap();
    let training = semla_adapters::FactoredSite {
        a: var.as_tensor().clone(),
        ..site
    };
    assert!(!training.merge_is_cheaper(1, 10_000).unwrap());
}

#[test]
fn merged_and_factored_site_forms_give_the_same_output() {
    let mut rng = StdRng::seed_from_u64(9);
    let dev = Device::Cpu;
    let weight = Tensor::from_vec(randn(&mut rng, 16 * 12), (16, 12), &dev).unwrap();
    let bias = Tensor::from_vec(randn(&mut rng, 16), 16, &dev).unwrap();
    let linear = AdaptedLinear::new("lin", weight.clone(), Some(bias.clone()));
    let site = site_update(3, 12, 16, 2);
    let mut adaptation = Adaptation::none();
    adaptation.insert("lin", site.clone());
    // Hand reference: x W^T + b + s * (x A^T) B^T, with s = 0.5 folded in coeff.
    let reference = |x: &Tensor| -> Tensor {
        let base = x
            .broadcast_matmul(&weight.t().unwrap())
            .unwrap()
            .broadcast_add(&bias)
            .unwrap();
        let low = x
            .broadcast_matmul(&site.a.t().unwrap())
            .unwrap()
            .affine(0.5, 0.0)
            .unwrap();
        (base + low.broadcast_matmul(&site.b.t().unwrap()).unwrap()).unwrap()
    };
    // 2 rows: factored (16*12*3 = 576 > 2*3*28 = 168); 40 rows: merged.
    for rows in [2usize, 40] {
        assert_eq!(site.merge_is_cheaper(1, rows).unwrap(), rows == 40);
        let x = Tensor::from_vec(randn(&mut rng, rows * 12), (1, rows, 12), &dev).unwrap();
        let got = linear.forward(&x, &adaptation).unwrap();
        assert!(diff(&got, &reference(&x)) < 1e-5, "{rows} rows");
    }
    // A 1x1 convolution on a 12x12 map merges; the result equals the factored maths.
    let conv = AdaptedConv2d::new(
        "conv",
        weight.reshape((16, 12, 1, 1)).unwrap(),
        Some(bias.clone()),
        1,
        0,
        1,
    )
    .unwrap();
    let conv_site = semla_adapters::FactoredSite {
        a: site.a.reshape((3, 12, 1, 1)).unwrap(),
        b: site.b.reshape((16, 3, 1, 1)).unwrap(),
        coeff: site.coeff.clone(),
    };
    assert!(conv_site.merge_is_cheaper(1, 144).unwrap());
    let mut adaptation = Adaptation::none();
    adaptation.insert("conv", conv_site);
    let x = Tensor::from_vec(randn(&mut rng, 12 * 144), (1, 12, 12, 12), &dev).unwrap();
    let got = conv.forward(&x, &adaptation).unwrap(); // [1, 16, 12, 12]
    let tokens = x.flatten_from(2).unwrap().transpose(1, 2).unwrap(); // [1, 144, 12]
    let want = reference(&tokens.contiguous().unwrap())
        .transpose(1, 2)
        .unwrap()
        .reshape((1, 16, 12, 12))
        .unwrap();
    assert!(diff(&got, &want) < 1e-5);
}
