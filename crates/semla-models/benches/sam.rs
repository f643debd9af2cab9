//! `SamPredictor.set_image` (resize, normalisation, padding, the image encoder at
//! 1024 px) of MobileSAM (`vit_t`, TinyViT) and SAM ViT-B: ours against the
//! official PyTorch code, the two alternating round by round.
//!
//! `cargo bench -p semla-models --bench sam` asks `tools/reference/sam_bench.py`
//! to build each model at its released size (PyTorch's default initialisation)
//! and save its state dict and a 640x480 image, loads both here, then times
//! `Sam::set_image` and the script's `set_image` on the same weights and image.
//! PyTorch is needed for the weights: without it the bench says so and stops.
//!
//! Environment: `SAM_BENCH_MODELS` (default `vit_t,vit_b`), `SAM_BENCH_ITERS`
//! (default 3), `SAM_BENCH_ROUNDS` (default 2), `SAM_BENCH_THREADS` (default 2;
//! sets `RAYON_NUM_THREADS` unless already set), `SAM_BENCH_PYTHON` (default
//! `python3`), `SAM_BENCH_MOBILE_SAM` (a ChaoningZhang/MobileSAM source tree,
//! which `vit_t` needs: it is not on PyPI).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use std::time::Instant;

use candle_core::Device;
use semla_models::sam::Sam;
use semla_test_support::env_usize;

/// The 1-minute load average (Linux), for the record next to each round.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().map(String::from))
        .unwrap_or_else(|| "?".into())
}

fn main() {
    let threads = env_usize("SAM_BENCH_THREADS", 2);
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // SAFETY: no other thread exists yet; rayon reads this when its pool starts.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    }
    semla_core::alloc::keep_freed_memory();
    let iters = env_usize("SAM_BENCH_ITERS", 3).max(1);
    let rounds = env_usize("SAM_BENCH_ROUNDS", 2).max(1);
    let python = std::env::var("SAM_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let mobile_sam = std::env::var("SAM_BENCH_MOBILE_SAM").unwrap_or_default();
    let models = std::env::var("SAM_BENCH_MODELS").unwrap_or_else(|_| "vit_t,vit_b".into());
    let dir = tempfile::tempdir().unwrap();
    for variant in models.split(',').map(str::trim).filter(|v| !v.is_empty()) {
        let mut common = vec!["--variant".to_string(), variant.to_string()];
        if !mobile_sam.is_empty() {
            common.extend(["--mobile-sam".to_string(), mobile_sam.clone()]);
        }
        let mut write = common.clone();
        write.extend(["--write".to_string(), dir.path().display().to_string()]);
        let Some(written) = semla_test_support::reference_json(&python, "sam_bench.py", &write)
        else {
            println!("{variant}: skipped (the PyTorch script writes the weights)");
            continue;
        };
        let path = |key: &str| written[key].as_str().unwrap().to_string();
        let (checkpoint, image) = (path("checkpoint"), path("image"));
        let sam = Sam::load(checkpoint.as_ref(), None, &Device::Cpu).unwrap();
        let rgb = semla_data::image_io::read_rgb(image.as_ref()).unwrap();
        let (w, h) = rgb.dimensions();
        let (h, w) = (h as usize, w as usize);
        let mut timed = common.clone();
        timed.extend(
            [
                "--checkpoint",
                &checkpoint,
                "--image",
                &image,
                "--iters",
                &iters.to_string(),
                "--threads",
                &threads.to_string(),
            ]
            .map(String::from),
        );
        let (mut ours, mut ours_min, mut torch, mut torch_min) =
            (f64::INFINITY, f64::INFINITY, f64::INFINITY, f64::INFINITY);
        for round in 0..rounds {
            let load_before = load_average();
            sam.set_image(rgb.as_raw(), h, w).unwrap(); // warm-up
            let mut times: Vec<f64> = (0..iters)
                .map(|_| {
                    let t0 = Instant::now();
                    sam.set_image(rgb.as_raw(), h, w).unwrap();
                    t0.elapsed().as_secs_f64()
                })
                .collect();
            times.sort_by(f64::total_cmp);
            let (median, min) = (times[times.len() / 2], times[0]);
            ours = ours.min(median);
            ours_min = ours_min.min(min);
            print!(
                "{variant} round {round}: ours median {median:.3} s, min {min:.3} s (load {load_before} -> {})",
                load_average()
            );
            match semla_test_support::reference_json(&python, "sam_bench.py", &timed) {
                Some(v) => {
                    let (median, min) = (
                        v["median_s"].as_f64().unwrap(),
                        v["min_s"].as_f64().unwrap(),
                    );
                    torch = torch.min(median);
                    torch_min = torch_min.min(min);
                    println!(
                        "; PyTorch median {median:.3} s, min {min:.3} s (load -> {})",
                        load_average()
                    );
                }
                None => println!(),
            }
        }
        println!(
            "{variant}: ours {ours:.3} s (min {ours_min:.3}), PyTorch {torch:.3} s (min {torch_min:.3}): \
             ratio {:.2} (best medians), {:.2} (minimums); {iters} iters x {rounds} rounds, {threads} threads, \
             a {w}x{h} image",
            ours / torch,
            ours_min / torch_min
        );
    }
}
