//! CLIP ViT-B/16 image forward at 224 px (or ViT-L/14 at 336 px): ours against PyTorch eager.
//!
//! `cargo bench -p semla-models --bench clip` runs our model (random weights,
//! standard ViT-B/16 config) with fused kernels, with composed (training)
//! kernels, and with a per-image mixture of 5 rank-8 LoRA adapters on q, v,
//! fc1, fc2 (the factored path), then runs `tools/reference/clip_bench.py`
//! (PyTorch, same config, same thread count) and prints the ratio.
//!
//! Environment: `CLIP_BENCH_THREADS` (default 2; sets `RAYON_NUM_THREADS`
//! unless already set), `CLIP_BENCH_ITERS` (default 10), `CLIP_BENCH_PYTHON`
//! (default `python3`; set to an empty string to skip PyTorch), `CLIP_BENCH_BATCH`
//! (images per forward, default 1; images per second are printed too),
//! `CLIP_BENCH_GLIBC_DEFAULTS=1` (leaves glibc's allocator untuned, see
//! `semla_core::alloc`), `CLIP_BENCH_MODEL` (`b16`, the default: ViT-B/16 at 224 px;
//! `l14-336`: ViT-L/14 at 336 px, CAT-Seg L's CLIP).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use semla_adapters::{Adaptation, FactoredSite};
use semla_models::clip::{ClipConfig, ClipModel, Kernels};
use semla_test_support::env_usize;

/// CPU time of the whole process in seconds (every thread: the kernels run on
/// rayon's workers, not on the calling thread). At one thread this figure does
/// not grow when other processes load the machine.
fn process_cpu_seconds() -> Option<f64> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to fill.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    (status == 0).then_some(now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9)
}

/// GFLOP/s of a 1024^3 f32 matrix product through candle on this machine now
/// (best of 5): the peak the forward is compared with.
fn sgemm_peak_gflops(device: &Device) -> candle_core::Result<f64> {
    let a = Tensor::randn(0f32, 1.0, (1024, 1024), device)?;
    let b = Tensor::randn(0f32, 1.0, (1024, 1024), device)?;
    a.matmul(&b)?;
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t0 = Instant::now();
        a.matmul(&b)?;
        best = best.min(t0.elapsed().as_secs_f64());
    }
    Ok(2.0 * 1024f64.powi(3) / best / 1e9)
}

/// Floating-point operations (2 per multiply-add) of one image's vision
/// forward: the patch embedding, every layer's q, k, v, out, fc1, fc2 and the
/// two attention products (norms, softmax and activations not counted).
fn forward_flops(cfg: &ClipConfig) -> f64 {
    let v = &cfg.vision_config;
    let (d, inner, p) = (
        v.hidden_size as f64,
        v.intermediate_size as f64,
        v.patch_size as f64,
    );
    let patches = v.grid_size().pow(2) as f64;
    let tokens = patches + 1.0;
    let embed = patches * v.num_channels as f64 * p * p * d;
    let layer = tokens * (4.0 * d * d + 2.0 * d * inner) + 2.0 * tokens * tokens * d;
    2.0 * (embed + v.num_hidden_layers as f64 * layer)
}

/// `(median wall, min wall, median process CPU)` seconds over `iters` calls after 2 warm-ups.
fn time_it(
    iters: usize,
    mut f: impl FnMut() -> candle_core::Result<Tensor>,
) -> candle_core::Result<(f64, f64, f64)> {
    for _ in 0..2 {
        f()?;
    }
    let mut times = Vec::with_capacity(iters);
    let mut cpu = Vec::with_capacity(iters);
    for _ in 0..iters {
        let c0 = process_cpu_seconds();
        let t0 = Instant::now();
        f()?;
        times.push(t0.elapsed().as_secs_f64());
        cpu.push(
            process_cpu_seconds()
                .zip(c0)
                .map_or(f64::NAN, |(c1, c0)| c1 - c0),
        );
    }
    times.sort_by(f64::total_cmp);
    cpu.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], times[0], cpu[cpu.len() / 2]))
}

fn main() -> candle_core::Result<()> {
    let threads = env_usize("CLIP_BENCH_THREADS", 2);
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // SAFETY: no other thread exists yet; rayon reads this when its pool starts.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    }
    // As the CLI does: freed buffers stay in the heap (`CLIP_BENCH_GLIBC_DEFAULTS=1` keeps glibc's defaults).
    if std::env::var_os("CLIP_BENCH_GLIBC_DEFAULTS").is_none() {
        semla_core::alloc::keep_freed_memory();
    }
    let iters = env_usize("CLIP_BENCH_ITERS", 10).max(1);
    let device = Device::Cpu;
    let model_name = std::env::var("CLIP_BENCH_MODEL").unwrap_or_else(|_| "b16".into());
    let cfg = match model_name.as_str() {
        "b16" => ClipConfig::vit_b16(),
        "l14-336" => {
            let mut cfg = ClipConfig::vit_l14();
            cfg.vision_config.image_size = 336;
            cfg
        }
        other => panic!("CLIP_BENCH_MODEL must be b16 or l14-336, not {other}"),
    };
    let size = cfg.vision_config.image_size;
    let vb = VarBuilder::from_tensors(
        semla_models::clip::random_vision_weights(&cfg, &device)?,
        DType::F32,
        &device,
    );
    let mut model = ClipModel::new(&vb, &cfg)?;
    let batch = env_usize("CLIP_BENCH_BATCH", 1).max(1);
    let pixels = Tensor::randn(0f32, 1.0, (batch, 3, size, size), &device)?;
    let none = Adaptation::none();

    // Ours and PyTorch alternate for a few rounds so that both see the same
    // machine load; the minimum over all rounds is the least disturbed figure.
    let rounds = env_usize("CLIP_BENCH_ROUNDS", 2).max(1);
    let python = std::env::var("CLIP_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let (mut fused, mut fused_min) = (f64::INFINITY, f64::INFINITY);
    let (mut torch, mut torch_min) = (f64::INFINITY, f64::INFINITY);
    let (mut fused_cpu, mut torch_cpu) = (f64::INFINITY, f64::INFINITY);
    // The sgemm peak: the best of every round's measurement (a loaded moment only lowers it).
    let mut peak = 0f64;
    for round in 0..rounds {
        peak = peak.max(sgemm_peak_gflops(&device)?);
        let (median, min, cpu) = time_it(iters, || model.get_image_features(&pixels, &none))?;
        println!(
            "round {round}: ours (fused kernels): median {median:.4} s, min {min:.4} s, process CPU {cpu:.4} s"
        );
        fused = fused.min(median);
        fused_min = fused_min.min(min);
        fused_cpu = fused_cpu.min(cpu);
        if let Some((median, min, cpu)) = pytorch(&python, &model_name, threads, iters, batch) {
            println!(
                "round {round}: PyTorch eager:        median {median:.4} s, min {min:.4} s, process CPU {cpu:.4} s"
            );
            torch = torch.min(median);
            torch_min = torch_min.min(min);
            torch_cpu = torch_cpu.min(cpu);
        }
    }
    println!(
        "ours (fused kernels):      best median {fused:.4} s, min {fused_min:.4} s ({iters} iters x {rounds} rounds, {threads} threads, batch {batch}: {:.2} images/s)",
        batch as f64 / fused
    );
    let achieved = forward_flops(&cfg) * batch as f64 / fused / 1e9;
    println!(
        "ours at {achieved:.0} GFLOP/s: {:.0} % of the sgemm peak measured in this run ({peak:.0} GFLOP/s, 1024^3 through candle, best of the rounds)",
        100.0 * achieved / peak
    );
    if torch.is_finite() {
        println!(
            "PyTorch eager:             best median {torch:.4} s, min {torch_min:.4} s ({:.2} images/s)",
            batch as f64 / torch
        );
        println!(
            "ratio ours/PyTorch:        {:.2} (best medians), {:.2} (minimums); below 1 means faster",
            fused / torch,
            fused_min / torch_min
        );
        if threads == 1 {
            println!(
                "ratio of process CPU time: {:.2} (1 thread; insensitive to machine load)",
                fused_cpu / torch_cpu
            );
        }
    }

    // 5 rank-8 adapters on q, v, fc1, fc2 of every layer, mixed per image.
    let mut mixture = Adaptation::none();
    for site in model.sites() {
        let name = site.path.rsplit('.').next().unwrap_or("");
        if !site.path.starts_with("vision_model.encoder")
            || !["q_proj", "v_proj", "fc1", "fc2"].contains(&name)
        {
            continue;
        }
        let factors: Vec<(Tensor, Tensor)> = (0..5)
            .map(|_| {
                Ok((
                    Tensor::randn(0f32, 0.02, (8, site.in_features), &device)?,
                    Tensor::randn(0f32, 0.02, (site.out_features, 8), &device)?,
                ))
            })
            .collect::<candle_core::Result<_>>()?;
        let parts: Vec<(&Tensor, &Tensor, f64)> =
            factors.iter().map(|(a, b)| (a, b, 2.0)).collect();
        mixture.insert(
            site.path.clone(),
            FactoredSite::stack(&parts, &[vec![0.4, 0.3, 0.15, 0.1, 0.05]])?,
        );
    }
    // The plain forward again, right before, so that both see about the same load.
    let (plain, _, plain_cpu) = time_it(iters, || model.get_image_features(&pixels, &none))?;
    let (mixed, _, mixed_cpu) = time_it(iters, || model.get_image_features(&pixels, &mixture))?;
    println!(
        "ours + 5 LoRA (factored):  median {mixed:.4} s against {plain:.4} s plain ({:.2}x; process CPU {:.2}x)",
        mixed / plain,
        mixed_cpu / plain_cpu
    );

    model.set_kernels(Kernels::Composed);
    let (composed, _, composed_cpu) = time_it(iters, || model.get_image_features(&pixels, &none))?;
    println!(
        "ours (composed kernels):   median {composed:.4} s (process CPU {:.2}x the fused kernels')",
        composed_cpu / plain_cpu
    );

    Ok(())
}

/// Runs `tools/reference/clip_bench.py`: `(median, min, process CPU)` seconds, or `None`
/// (with a message) when PyTorch is unavailable or `python` is empty.
fn pytorch(
    python: &str,
    model: &str,
    threads: usize,
    iters: usize,
    batch: usize,
) -> Option<(f64, f64, f64)> {
    let args = [
        "--threads",
        &threads.to_string(),
        "--iters",
        &iters.to_string(),
        "--batch",
        &batch.to_string(),
        "--model",
        model,
    ]
    .map(String::from);
    let value = semla_test_support::reference_json(python, "clip_bench.py", &args)?;
    let get = |key: &str| value.get(key).and_then(serde_json::Value::as_f64);
    Some((
        get("median_s")?,
        get("min_s")?,
        get("process_cpu_s").unwrap_or(f64::NAN),
    ))
}
