//! One LoRA training step on CLIP ViT-B/16's vision tower: ours against
//! PyTorch + peft in one run.
//!
//! `cargo bench -p semla-train --bench clip_lora_step` times forward, loss,
//! backward and AdamW for rank-8 LoRA (alpha 16) on `q_proj`, `v_proj`, `fc1`,
//! `fc2` of all 12 vision layers (1,032,192 trainable values) on a frozen CLIP
//! (random weights, standard config, 224 px). The loss is the cross-entropy of
//! 100 x the cosine similarity between image features and fixed random class
//! embeddings, as in CLIP fine-tuning. Then it runs
//! `tools/reference/clip_train_bench.py` (transformers `CLIPModel` + peft, the
//! same targets, loss and AdamW) and prints the ratio; ours and PyTorch alternate
//! round by round so that both see the same machine load.
//!
//! Environment: `CLIP_TRAIN_THREADS` (default 2; sets `RAYON_NUM_THREADS` unless
//! already set), `CLIP_TRAIN_BATCH` (default 4), `CLIP_TRAIN_STEPS` (timed steps
//! per round after one warm-up, default 5), `CLIP_TRAIN_ROUNDS` (default 2),
//! `CLIP_BENCH_PYTHON` (default `python3`; an empty string skips PyTorch),
//! `CLIP_BENCH_GLIBC_DEFAULTS=1` (leaves glibc's allocator untuned, see
//! `semla_core::alloc`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use std::time::Instant;

use candle_core::{D, DType, Device, Tensor};
use candle_nn::VarBuilder;
use semla_models::clip::{ClipConfig, ClipModel, Kernels};
use semla_test_support::env_usize;
use semla_train::lora::{LoraSettings, LoraTrainee};
use semla_train::optim::{AdamW, AdamWConfig};

/// `x / max(|x|, 1e-12)` along the last dimension (PyTorch's `F.normalize`).
fn normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    x.broadcast_div(&norm)
}

fn main() -> candle_core::Result<()> {
    let threads = env_usize("CLIP_TRAIN_THREADS", 2);
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // SAFETY: no other thread exists yet; rayon reads this when its pool starts.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    }
    // As the CLI does: freed buffers stay in the heap (`CLIP_BENCH_GLIBC_DEFAULTS=1` keeps glibc's defaults).
    if std::env::var_os("CLIP_BENCH_GLIBC_DEFAULTS").is_none() {
        semla_core::alloc::keep_freed_memory();
    }
    let batch = env_usize("CLIP_TRAIN_BATCH", 4).max(1);
    let steps = env_usize("CLIP_TRAIN_STEPS", 5).max(1);
    let rounds = env_usize("CLIP_TRAIN_ROUNDS", 2).max(1);
    let python = std::env::var("CLIP_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let device = Device::Cpu;
    let cfg = ClipConfig::vit_b16();
    let vb = VarBuilder::from_tensors(
        semla_models::clip::random_vision_weights(&cfg, &device)?,
        DType::F32,
        &device,
    );
    let mut model = ClipModel::new(&vb, &cfg)?;
    model.set_kernels(Kernels::Composed);

    let vision_sites: Vec<_> = model
        .sites()
        .into_iter()
        .filter(|s| s.path.starts_with("vision_model.encoder"))
        .collect();
    let settings = LoraSettings {
        targets: ["q_proj", "v_proj", "fc1", "fc2"]
            .map(String::from)
            .to_vec(),
        ..LoraSettings::default()
    };
    let lora = LoraTrainee::new(&vision_sites, &settings, 0, &device).unwrap();
    let params = lora.params();
    let trainable: usize = params.iter().map(|(_, v)| v.elem_count()).sum();
    let mut opt = AdamW::new(&params, AdamWConfig::default()).unwrap();

    let pixels = Tensor::randn(0f32, 1.0, (batch, 3, 224, 224), &device)?;
    let classes = 10usize;
    let class_embeddings = normalize(&Tensor::randn(
        0f32,
        1.0,
        (classes, cfg.projection_dim),
        &device,
    )?)?;
    let labels: Vec<u32> = (0..batch).map(|i| (i % classes) as u32).collect();
    let labels = Tensor::from_vec(labels, batch, &device)?;

    // Seconds spent in forward (with the loss), backward and AdamW, summed over the timed steps.
    let mut phases = [0f64; 3];
    let mut step = |phases: &mut [f64; 3]| -> candle_core::Result<f64> {
        let start = Instant::now();
        let features = normalize(&model.get_image_features(&pixels, lora.adaptation())?)?;
        let logits = (features.matmul(&class_embeddings.t()?)? * 100.0)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
        let forward = start.elapsed().as_secs_f64();
        let grads = loss.backward()?;
        let backward = start.elapsed().as_secs_f64();
        drop(loss);
        opt.step(&grads, 1e-3, 1.0).unwrap();
        let total = start.elapsed().as_secs_f64();
        phases[0] += forward;
        phases[1] += backward - forward;
        phases[2] += total - backward;
        Ok(total)
    };
    println!(
        "LoRA training step, CLIP ViT-B/16 vision at 224 px, batch {batch}, r=8 on q, v, fc1, fc2 \
         ({trainable} trainable values), {threads} threads, {steps} steps x {rounds} rounds"
    );
    let (mut ours, mut ours_min) = (f64::INFINITY, f64::INFINITY);
    let (mut torch, mut torch_min) = (f64::INFINITY, f64::INFINITY);
    for round in 0..rounds {
        step(&mut [0f64; 3])?; // warm-up
        let mut times: Vec<f64> = (0..steps)
            .map(|_| step(&mut phases))
            .collect::<candle_core::Result<_>>()?;
        times.sort_by(f64::total_cmp);
        let (median, min) = (times[times.len() / 2], times[0]);
        println!("round {round}: ours:           median {median:.3} s, min {min:.3} s");
        ours = ours.min(median);
        ours_min = ours_min.min(min);
        if let Some((median, min)) = pytorch(&python, threads, steps, batch) {
            println!("round {round}: PyTorch + peft: median {median:.3} s, min {min:.3} s");
            torch = torch.min(median);
            torch_min = torch_min.min(min);
        }
    }
    println!(
        "ours:           best median {ours:.3} s per step, min {ours_min:.3} s ({:.2} images/s)",
        batch as f64 / ours
    );
    let timed = (steps * rounds) as f64;
    println!(
        "ours, mean per step: forward + loss {:.3} s, backward {:.3} s, AdamW {:.3} s",
        phases[0] / timed,
        phases[1] / timed,
        phases[2] / timed
    );
    if torch.is_finite() {
        println!(
            "PyTorch + peft: best median {torch:.3} s per step, min {torch_min:.3} s ({:.2} images/s)",
            batch as f64 / torch
        );
        println!(
            "ratio ours/PyTorch: {:.2} (best medians), {:.2} (minimums); below 1 means faster",
            ours / torch,
            ours_min / torch_min
        );
    }
    Ok(())
}

/// Runs `tools/reference/clip_train_bench.py`: `(median, min)` seconds per step,
/// or `None` (with a message) when PyTorch is unavailable or `python` is empty.
fn pytorch(python: &str, threads: usize, steps: usize, batch: usize) -> Option<(f64, f64)> {
    let args = [
        "--threads",
        &threads.to_string(),
        "--steps",
        &steps.to_string(),
        "--batch",
        &batch.to_string(),
    ]
    .map(String::from);
    let value = semla_test_support::reference_json(python, "clip_train_bench.py", &args)?;
    let get = |key: &str| value.get(key).and_then(serde_json::Value::as_f64);
    Some((get("median_s")?, get("min_s")?))
}
