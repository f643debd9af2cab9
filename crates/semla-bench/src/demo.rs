//! `semla demo`: SemLA end to end on the synthetic street world, with no
//! download and no input file.
//!
//! 1. Render every domain of the world (train, validation and tuning images):
//!    `clear`, and seven styles each with its milder `-light` variant, so that
//!    every shift has a relative in the library ([`default_domains`]).
//! 2. Build the library ([`crate::library_build`]): a tiny base segmenter
//!    trained on the source style (`clear`), one LoRA adapter per domain on the
//!    frozen base, prototypes from the `style` embedder (the base model's
//!    early-layer channel statistics, which the CamVid study found best).
//! 3. Tune SemLA's top-k and temperature on test-split images that neither the
//!    adapters nor the evaluation see ([`crate::tuning`], as `bench camvid` does).
//! 4. Run zero-shot, uniform, SemLA (weight fusion and late fusion) and oracle,
//!    leave-one-out (each target's own adapter removed, except for oracle).
//! 5. Print the Table-1 style summary and write an HTML report.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use semla_core::Progress;
use semla_core::fs::write_atomic;
use semla_data::image_io::rgb_png_bytes;
use semla_data::synthetic::{self, SyntheticWorld, render_source};
use semla_data::{InMemorySource, SampleSource};
use semla_experiments::{ExperimentKind, ExperimentOutput, ExperimentSettings};
use semla_models::SegmenterConfig;
use semla_models::tiny::TinySegConfig;
use semla_pipeline::render::{colour_mask, upscale};
use semla_pipeline::{Semla, SemlaSettings, SourceLibrary};
use semla_retrieval::RetrievalParams;
use semla_train::augment::AugmentConfig;
use semla_train::lora::LoraSettings;
use serde::Serialize;

use crate::error::{BenchError, Result};
use crate::leave_one_out::{TABLE_METHODS, run_leave_one_out, targets};
use crate::library_build::{BuildData, LibraryPlan, TrainRecipe, build_library};
use crate::present::report::{Report, ReportSample};
use crate::table::{ResultsTable, assemble};
use crate::tuning::{Tuning, tune_retrieval};

/// Everything that sets the size of the demo.
#[derive(Clone, Debug, Serialize)]
pub struct DemoConfig {
    /// Domains of the world used (the first is the source style).
    pub domains: Vec<String>,
    /// Image width.
    pub width: u32,
    /// Image height.
    pub height: u32,
    /// Training images rendered per domain.
    pub train_images: usize,
    /// Validation images rendered per domain.
    pub val_images: usize,
    /// Base training steps.
    pub base_steps: usize,
    /// Base learning rate.
    pub base_lr: f64,
    /// Adapter training steps (per domain).
    pub adapter_steps: usize,
    /// Adapter learning rate.
    pub adapter_lr: f64,
    /// Images per training step.
    pub batch_size: usize,
    /// LoRA rank.
    pub rank: usize,
    /// LoRA alpha.
    pub alpha: f64,
    /// Width of the tiny segmenter.
    pub model_width: usize,
    /// The query embedder (built on the base model): `style`, the early-layer
    /// channel statistics the CamVid study found best, by default.
    pub embedder: String,
    /// Retrieval settings of SemLA (similarity always; top-k and temperature when
    /// `tune_images` is 0).
    pub retrieval: RetrievalParams,
    /// Images per domain on which SemLA's top-k and temperature are tuned: the
    /// world's test split, which neither the adapters nor the evaluation see
    /// ([`crate::tuning`]). 0: no tuning.
    pub tune_images: usize,
    /// Seed of everything.
    pub seed: u64,
    /// Sample images per domain shown in the report.
    pub report_samples: usize,
}

impl DemoConfig {
    /// The full demo (a few minutes on 2 cores in a release build).
    pub fn full() -> Self {
        Self {
            domains: default_domains(),
            width: 96,
            height: 72,
            train_images: 96,
            val_images: 32,
            base_steps: 600,
            base_lr: 4e-3,
            // Adapters trained longer over-specialise: with 150 steps the
            // oracle gains but neighbouring domains' adapters transfer worse
            // (SemLA h-mean 10.1 vs 13.3 at 80 steps, uniform 8.1 vs 9.5).
            adapter_steps: 80,
            adapter_lr: 5e-3,
            batch_size: 8,
            rank: 8,
            alpha: 16.0,
            model_width: 16,
            embedder: "style".to_string(),
            // Used as given only without tuning.
            retrieval: RetrievalParams {
                top_k: 3,
                temperature: 0.05,
                ..RetrievalParams::default()
            },
            tune_images: 12,
            seed: 7,
            report_samples: 1,
        }
    }

    /// The quick demo (well under 2 minutes: smaller images, fewer steps and images).
    pub fn quick() -> Self {
        Self {
            width: 80,
            height: 64,
            train_images: 48,
            val_images: 16,
            base_steps: 200,
            adapter_steps: 60,
            ..Self::full()
        }
    }
}

/// The world's domains, the source style first, then each style and its milder
/// variant (`fog`, `fog-light`, ...): every shift has a relative in the library,
/// as in a real one.
pub fn default_domains() -> Vec<String> {
    let mut names = vec!["clear".to_string()];
    for style in SyntheticWorld::domain_names() {
        if style == "clear" {
            continue;
        }
        names.push(style.to_string());
        let light = format!("{style}-light");
        if SyntheticWorld::domain(&light).is_ok() {
            names.push(light);
        }
    }
    names
}

/// What the demo produced.
#[derive(Clone, Debug)]
pub struct DemoOutcome {
    /// The results table (methods x domains).
    pub table: ResultsTable,
    /// Where the report was written.
    pub report: PathBuf,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Seconds per phase.
    pub phases: Vec<(String, f64)>,
    /// The retrieval settings SemLA was evaluated with (tuned or given).
    pub retrieval: RetrievalParams,
    /// The tuning grid's results, when tuning ran.
    pub tuning: Option<Tuning>,
}

/// The demo's data: the rendered training sets of the world's domains.
struct DemoData<'a> {
    train_sets: &'a [InMemorySource],
}

impl BuildData for DemoData<'_> {
    fn base_source(&mut self, _: &mut dyn Progress) -> Result<InMemorySource> {
        self.domain_source(0, "", &mut semla_core::NoProgress)
    }

    fn domain_source(
        &mut self,
        index: usize,
        _: &str,
        _: &mut dyn Progress,
    ) -> Result<InMemorySource> {
        self.train_sets
            .get(index)
            .cloned()
            .ok_or_else(|| BenchError::Invalid(format!("no training set for domain {index}")))
    }
}

/// Runs the demo into `out_dir`.
pub fn run_demo(
    config: &DemoConfig,
    device: &Device,
    out_dir: &Path,
    progress: &mut dyn Progress,
) -> Result<DemoOutcome> {
    let started = Instant::now();
    let mut phases = crate::machine::Phases::new();
    let device = device.clone();
    if config.domains.len() < 2 {
        return Err(BenchError::Invalid(
            "the demo needs at least two domains".into(),
        ));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| BenchError::io(out_dir, e))?;
    let library_dir = out_dir.join("library");
    if library_dir.exists() {
        // Only a library an earlier demo wrote (it has our record) is replaced.
        let ours = library_dir
            .join(semla_adapters::library::RECORD_FILE)
            .is_file()
            || std::fs::read_dir(&library_dir)
                .map_err(|e| BenchError::io(&library_dir, e))?
                .all(|e| {
                    e.is_ok_and(|e| {
                        e.path().is_dir()
                            && config
                                .domains
                                .iter()
                                .any(|d| e.file_name().to_str() == Some(d.as_str()))
                    })
                });
        if !ours {
            return Err(BenchError::Invalid(format!(
                "{} exists and was not written by semla demo; choose another --out",
                library_dir.display()
            )));
        }
        std::fs::remove_dir_all(&library_dir).map_err(|e| BenchError::io(&library_dir, e))?;
    }

    // 1. The world.
    progress.begin("rendering the synthetic world", config.domains.len() as u64);
    let mut train_sets = Vec::new();
    let mut val_sets = Vec::new();
    for (i, name) in config.domains.iter().enumerate() {
        train_sets.push(render_source(
            name,
            synthetic::Split::Train,
            config.train_images,
            config.width,
            config.height,
        )?);
        val_sets.push(render_source(
            name,
            synthetic::Split::Val,
            config.val_images,
            config.width,
            config.height,
        )?);
        progress.set(i as u64 + 1);
    }
    progress.end();
    phases.end("render");

    // 2. The library: base model, adapters, prototypes with the backbone embedder.
    let class_names: Vec<String> = synthetic::CLASS_NAMES
        .iter()
        .map(|s| s.to_string())
        .collect();
    let plan = LibraryPlan {
        source: config.domains[0].clone(),
        model: SegmenterConfig::Tiny(TinySegConfig {
            num_classes: synthetic::NUM_CLASSES,
            width: config.model_width,
            class_names: class_names.clone(),
        }),
        base: TrainRecipe {
            steps: config.base_steps,
            lr: config.base_lr,
            batch_size: config.batch_size,
        },
        adapter: TrainRecipe {
            steps: config.adapter_steps,
            lr: config.adapter_lr,
            batch_size: config.batch_size,
        },
        augment: AugmentConfig {
            min_scale: 0.8,
            max_scale: 1.25,
            flip_probability: 0.5,
            crop: None,
        },
        checkpoint_every: None,
        lora: LoraSettings {
            rank: config.rank,
            alpha: config.alpha,
            targets: Vec::new(),
            use_rslora: false,
        },
        embedder: config.embedder.parse().map_err(BenchError::Invalid)?,
        prototype_batch: 16,
        reuse: false,
        seed: config.seed,
    };
    let built = build_library(
        &plan,
        &config.domains,
        &mut DemoData {
            train_sets: &train_sets,
        },
        out_dir,
        &device,
        progress,
    )?;
    phases.extend(&built.phases);

    // 3. SemLA's top-k and temperature, tuned on test-split images no adapter saw.
    let sources = SourceLibrary::open(&built.library_dir, &config.domains, true)?;
    let semla = Semla::new(
        built.base.clone(),
        sources,
        Some(built.embedder),
        SemlaSettings {
            retrieval: config.retrieval,
            ..SemlaSettings::default()
        },
        &device,
    )?;
    let mut settings = ExperimentSettings {
        params: config.retrieval,
        batch_size: 16,
        keep_predictions: config.report_samples,
        ..ExperimentSettings::new(ExperimentKind::ZeroShot)
    };
    let tuning = if config.tune_images > 0 {
        let mut tune_sets = Vec::new();
        for name in &config.domains {
            tune_sets.push(render_source(
                name,
                synthetic::Split::Test,
                config.tune_images,
                config.width,
                config.height,
            )?);
        }
        let tuning = tune_retrieval(
            &semla,
            &targets(&config.domains, &tune_sets, &class_names),
            &settings,
            config.tune_images,
            progress,
        )?;
        if let Some(best) = tuning.points.get(tuning.best) {
            settings.params.top_k = best.top_k;
            settings.params.temperature = best.temperature;
        }
        Some(tuning)
    } else {
        None
    };
    phases.end("tuning");

    // 4. The experiments, leave-one-out.
    let targets = targets(&config.domains, &val_sets, &class_names);
    let outputs = run_leave_one_out(
        &semla,
        &targets,
        &TABLE_METHODS,
        &settings,
        Some(&out_dir.join("experiments")),
        progress,
    )?;
    let results: Vec<(String, Vec<(String, f64)>)> = outputs
        .iter()
        .map(|(method, output)| (method.clone(), output.results.clone()))
        .collect();
    let table = assemble(&config.domains, &results);
    phases.end("experiments");

    // 5. Table and report.
    let text = table.render_text();
    write_atomic(&out_dir.join("table.txt"), text.as_bytes())?;
    let seconds = started.elapsed().as_secs_f64();
    let report = build_report(
        config,
        &settings.params,
        tuning.is_some(),
        &table,
        &outputs,
        &val_sets,
        seconds,
        phases.list(),
    )?;
    let report_path = out_dir.join("report.html");
    write_atomic(&report_path, report.to_html().as_bytes())?;
    let summary = serde_json::json!({
        "config": config,
        "table": table,
        "h_mean": table.rows.iter().map(|r| (r.method.clone(), table.h_mean(&r.method))).collect::<Vec<_>>(),
        "gap_closure_semla": table.gap_closure("semla"),
        "retrieval": settings.params,
        "tuning": tuning,
        "seconds": seconds,
        "phases": phases.list(),
    });
    write_atomic(
        &out_dir.join("summary.json"),
        serde_json::to_string_pretty(&summary)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    phases.end("report");
    Ok(DemoOutcome {
        table,
        report: report_path,
        seconds: started.elapsed().as_secs_f64(),
        phases: phases.list().to_vec(),
        retrieval: settings.params,
        tuning,
    })
}

/// PNG bytes of a picture for the report.
fn png(image: &semla_data::RgbImage) -> Result<Vec<u8>> {
    rgb_png_bytes(image).map_err(|e| BenchError::Invalid(format!("encoding a PNG: {e}")))
}

#[allow(clippy::too_many_arguments)]
fn build_report(
    config: &DemoConfig,
    retrieval: &RetrievalParams,
    tuned: bool,
    table: &ResultsTable,
    outputs: &[(String, ExperimentOutput)],
    val_sets: &[InMemorySource],
    seconds: f64,
    phases: &[(String, f64)],
) -> Result<Report> {
    let palette: Vec<[u8; 3]> = synthetic::PALETTE.to_vec();
    let scale = (192 / config.width.max(1)).max(1);
    let find = |method: &str| outputs.iter().find(|(m, _)| m == method).map(|(_, o)| o);
    let mut samples = Vec::new();
    for (domain, source) in config.domains.iter().zip(val_sets) {
        for index in 0..config.report_samples.min(source.len()) {
            let sample = source.sample(index)?;
            let (w, h) = (sample.width, sample.height);
            let photo = sample.to_photo()?;
            let truth: Vec<u16> = sample.labels.iter().map(|&l| l.min(255) as u16).collect();
            let mut panels = vec![(
                "ground truth".to_string(),
                png(&upscale(&colour_mask(&truth, w, h, &palette)?, scale))?,
            )];
            for method in ["zeroshot", "uniform", "semla", "oracle"] {
                let Some(output) = find(method) else { continue };
                if let Some(p) = output
                    .predictions
                    .iter()
                    .find(|p| &p.target == domain && p.index == index)
                {
                    panels.push((
                        method.to_string(),
                        png(&upscale(
                            &colour_mask(&p.classes, p.width, p.height, &palette)?,
                            scale,
                        ))?,
                    ));
                }
            }
            let image_id = source.describe(index);
            let adapters = find("semla")
                .and_then(|o| o.mixture(domain, &image_id))
                .map(|r| {
                    r.adapters
                        .iter()
                        .map(|a| (a.name.clone(), a.weight))
                        .collect()
                })
                .unwrap_or_default();
            samples.push(ReportSample {
                domain: domain.clone(),
                image_id: format!("val {image_id}"),
                image_png: png(&upscale(&photo, scale))?,
                panels,
                adapters,
            });
        }
    }
    let phase_text: Vec<String> = phases
        .iter()
        .map(|(name, s)| format!("{name} {s:.1} s"))
        .collect();
    Ok(Report {
        title: "SemLA on the synthetic street world".into(),
        notes: vec![
            format!(
                "{} domains ({}); base tiny segmenter trained on `{}`; one rank-{} LoRA adapter per domain; \
                 prototypes from the `{}` embedder; leave-one-out (each target's own adapter removed, except for oracle).",
                config.domains.len(),
                config.domains.join(", "),
                config.domains[0],
                config.rank,
                config.embedder
            ),
            format!(
                "{}x{} images, {} training and {} validation images per domain; base {} steps, adapters {} steps; \
                 SemLA top-k {}, temperature {}{}, \
                 {} similarity. semla-outputs is the late-fusion ablation (weighted average of the selected adapters' softmax outputs).",
                config.width,
                config.height,
                config.train_images,
                config.val_images,
                config.base_steps,
                config.adapter_steps,
                retrieval.top_k,
                retrieval.temperature,
                if tuned {
                    format!(
                        " (tuned on {} test-split images per domain that neither the adapters nor the evaluation see)",
                        config.tune_images
                    )
                } else {
                    String::new()
                },
                retrieval.similarity
            ),
            format!("Wall time {seconds:.1} s ({}).", phase_text.join(", ")),
        ],
        table: table.clone(),
        samples,
        legend: synthetic::CLASS_NAMES
            .iter()
            .zip(synthetic::PALETTE)
            .map(|(name, rgb)| (name.to_string(), rgb))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_foreign_library_folder_is_never_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let library = dir.path().join("library");
        std::fs::create_dir_all(&library).unwrap();
        std::fs::write(library.join("notes.txt"), "mine").unwrap();
        let err = run_demo(
            &DemoConfig::quick(),
            &Device::Cpu,
            dir.path(),
            &mut semla_core::NoProgress,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("not written by semla demo"),
            "{err}"
        );
        assert!(library.join("notes.txt").is_file());
    }
}
