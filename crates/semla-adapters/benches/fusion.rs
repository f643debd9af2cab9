//! Benchmarks of applying a mixture of adapters, and of opening a library.
//!
//! `cargo bench -p semla-adapters --bench fusion`
//!
//! - A 5-adapter, rank-8 mixture on ViT-B/16-sized layers (a 768x768 and a
//!   768->3072 Linear, 197 tokens, batch 1): plain forward; factored
//!   (`Adaptation::from_adapters` + forward); merged (delta W per site, added
//!   to a copy of the weights, + forward). Median of repeated runs.
//! - Fusion into one adapter (`cat`, `svd`) for a ViT-B/16 adapter set
//!   (12 blocks x q, v, fc1, fc2).
//! - `AdapterLibrary::open` of 1,000 adapters shaped like ViT-B/16 LoRA
//!   adapters (48 sites each; the files are hard links of one adapter, since
//!   opening reads only configs and headers).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng, rngs::StdRng};
use semla_adapters::apply::{delta_weights, merge_into};
use semla_adapters::{
    Adaptation, AdaptedLinear, Adapter, AdapterLibrary, Combination, LoraConfig, merge,
};
use semla_test_support::max_abs_diff;

fn randn(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

fn adapter(name: &str, sites: &[(String, usize, usize)], r: usize, seed: u64) -> Adapter {
    let mut rng = StdRng::seed_from_u64(seed);
    let sites: Vec<_> = sites
        .iter()
        .map(|(path, i, o)| {
            (
                path.clone(),
                (
                    randn(&mut rng, r * i, 0.05),
                    vec![r, *i],
                    randn(&mut rng, o * r, 0.05),
                    vec![*o, r],
                ),
            )
        })
        .collect();
    Adapter::from_host(name, LoraConfig::new(r, 16.0), sites).unwrap()
}

fn median(mut f: impl FnMut(), runs: usize) -> Duration {
    f(); // warm-up
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let runs = 31;
    let dev = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(0);
    let layers = [
        ("attn.q_proj".to_string(), 768usize, 768usize),
        ("mlp.fc1".to_string(), 768, 3072),
    ];
    let base: Vec<AdaptedLinear> = layers
        .iter()
        .map(|(p, i, o)| {
            AdaptedLinear::new(
                p.clone(),
                Tensor::from_vec(randn(&mut rng, i * o, 0.03), (*o, *i), &dev).unwrap(),
                None,
            )
        })
        .collect();
    let adapters: Vec<Adapter> = (0..5)
        .map(|k| adapter(&format!("d{k}"), &layers, 8, k + 1))
        .collect();
    let refs: Vec<&Adapter> = adapters.iter().collect();
    let weights = vec![0.4, 0.25, 0.15, 0.12, 0.08];
    let x = Tensor::from_vec(randn(&mut rng, 197 * 768, 1.0), (1, 197, 768), &dev).unwrap();
    let forward = |layers: &[AdaptedLinear], ad: &Adaptation| -> Vec<Tensor> {
        layers.iter().map(|l| l.forward(&x, ad).unwrap()).collect()
    };

    println!("# 5 adapters, rank 8, 768x768 + 768->3072 Linear, x [1, 197, 768], median of {runs}");
    let plain = median(
        || {
            forward(&base, &Adaptation::none());
        },
        runs,
    );
    let factored = median(
        || {
            let ad = Adaptation::from_adapters(&refs, std::slice::from_ref(&weights)).unwrap();
            forward(&base, &ad);
        },
        runs,
    );
    let ad = Adaptation::from_adapters(&refs, std::slice::from_ref(&weights)).unwrap();
    let factored_forward_only = median(
        || {
            forward(&base, &ad);
        },
        runs,
    );
    let merged = median(
        || {
            let deltas = delta_weights(&refs, &weights).unwrap();
            let mut copy = base.clone();
            for l in &mut copy {
                merge_into(l, &deltas).unwrap();
            }
            forward(&copy, &Adaptation::none());
        },
        runs,
    );
    // Agreement of the two paths on this workload.
    let deltas = delta_weights(&refs, &weights).unwrap();
    let mut copy = base.clone();
    for l in &mut copy {
        merge_into(l, &deltas).unwrap();
    }
    let worst = forward(&copy, &Adaptation::none())
        .iter()
        .zip(forward(&base, &ad))
        .map(|(a, b)| max_abs_diff(a, &b))
        .fold(0f32, f32::max);
    println!("plain forward                       {}", ms(plain));
    println!("factored (build + forward)          {}", ms(factored));
    println!(
        "factored (forward only)             {}",
        ms(factored_forward_only)
    );
    println!("merged (delta + weight copy + fwd)  {}", ms(merged));
    println!("max |merged - factored|             {worst:.2e}");

    // A ViT-B/16 adapter set: 12 blocks x (q, v: 768x768; fc1: 768->3072; fc2: 3072->768).
    let vit_sites: Vec<(String, usize, usize)> = (0..12)
        .flat_map(|b| {
            [
                (
                    format!("vision_model.encoder.layers.{b}.self_attn.q_proj"),
                    768,
                    768,
                ),
                (
                    format!("vision_model.encoder.layers.{b}.self_attn.v_proj"),
                    768,
                    768,
                ),
                (
                    format!("vision_model.encoder.layers.{b}.mlp.fc1"),
                    768,
                    3072,
                ),
                (
                    format!("vision_model.encoder.layers.{b}.mlp.fc2"),
                    3072,
                    768,
                ),
            ]
        })
        .collect();
    let vit: Vec<Adapter> = (0..5)
        .map(|k| adapter(&format!("v{k}"), &vit_sites, 8, 10 + k))
        .collect();
    let vit_refs: Vec<&Adapter> = vit.iter().collect();
    println!("\n# fusion of 5 rank-8 ViT-B/16 adapters (48 sites), median of 5");
    for combination in [Combination::Cat, Combination::Svd] {
        let t = median(
            || {
                merge(&vit_refs, &weights, combination, None).unwrap();
            },
            5,
        );
        println!("merge {combination:<6}                        {}", ms(t));
    }

    // Library of 1,000 ViT-B/16-shaped adapters.
    let tmp = tempfile::tempdir().unwrap();
    let mut lib = AdapterLibrary::open(tmp.path()).unwrap();
    let mut template = vit[0].clone();
    template.name = "template".into();
    lib.add(&template, Some(&vec![0.1; 768])).unwrap();
    let src = tmp.path().join("template");
    for i in 0..999 {
        let name = format!("domain-{i:04}");
        let dir = tmp.path().join(&name);
        std::fs::create_dir(&dir).unwrap();
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::hard_link(src.join(f), dir.join(f)).unwrap();
        }
        std::fs::hard_link(
            src.join("template_statistics.npz"),
            dir.join(format!("{name}_statistics.npz")),
        )
        .unwrap();
    }
    println!(
        "\n# AdapterLibrary::open, 1,000 adapters x 48 sites (configs + safetensors headers), median of 7"
    );
    let t = median(
        || {
            assert_eq!(AdapterLibrary::open(tmp.path()).unwrap().len(), 1000);
        },
        7,
    );
    println!("open                                {}", ms(t));
    let lib = AdapterLibrary::open(tmp.path()).unwrap();
    let t = median(
        || {
            lib.load("domain-0500").unwrap();
        },
        7,
    );
    println!("load one adapter (1.2 M params)     {}", ms(t));
}
