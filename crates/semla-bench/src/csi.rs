//! `semla bench csi`: CSI on CamVid, in the paper's two settings.
//!
//! - **coarse-to-fine**: the source's labels merge classes the target splits
//!   (Bicyclist into Pedestrian, SignSymbol into Pole, Fence into Building);
//! - **open**: a class the source never labels (Bicyclist left unlabelled),
//!   its source class discovered during the collect window.
//!
//! Source: the clear daytime frames with the setting's coarse labels; target:
//! an unlabeled shifted domain (dusk by default); evaluation: the target's
//! held-out frames in the fine taxonomy. Rows: the source-only model (the
//! ImageNet EfficientNet-Lite0 + LR-ASPP trained on the coarse source), DACS
//! from it without CSI, DACS with CSI (the weight-free box proposer over the
//! teacher's regions, the ImageNet classifier with its concept map), and an
//! oracle (the source-only model trained as long on the target's fine
//! labels). Also the relabeling's statistics, from training and from an
//! audit of the source-only teacher's relabeled pixels against the target's
//! real train labels. Resumable: finished models are reused, interrupted
//! trainings resume from their checkpoints.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use semla_adapters::Adaptation;
use semla_core::Progress;
use semla_core::fs::write_atomic;
use semla_csi::detect::ComponentBoxes;
use semla_csi::imagenet::ImageNetConcepts;
use semla_csi::relabel::Relabeler;
use semla_csi::report::{Audit, write_report};
use semla_csi::train::Relabeling;
use semla_csi::{CsiConfig, RelabelEntry, Taxonomy, Window};
use semla_data::domains::{Split, resolve_domain};
use semla_data::{InMemorySource, RemappedSource, SampleSource};
use semla_metrics::{ConfusionMatrix, Definition};
use semla_models::efficientnet::{EfficientLiteSegConfig, pretrained_varmap};
use semla_models::{Segmenter, SegmenterConfig, load_segmenter, save_segmenter};
use semla_selftrain::{DacsSettings, Student};
use semla_train::augment::AugmentConfig;
use semla_train::runs::{build_trainable, train_base, with_trainable_part};
use semla_train::trainer::{Session, TrainConfig};
use serde::Serialize;

use crate::camvid::{Frames, SOURCE_DOMAIN, load_domain};
use crate::error::{BenchError, Result};

/// One of the paper's two settings.
#[derive(Clone, Debug, Serialize)]
pub struct CsiSetting {
    /// `coarse-to-fine` or `open`.
    pub name: String,
    /// `(from, into)`: source labels merged.
    pub merges: Vec<(usize, usize)>,
    /// Source classes left unlabelled.
    pub drops: Vec<usize>,
    /// The relabeling entries.
    pub entries: Vec<RelabelEntry>,
    /// Whether the entries' sources are collected first (the open setting).
    pub collect: bool,
}

/// CamVid class indices the settings name.
const POLE: usize = 2;
const BUILDING: usize = 1;
const SIGN: usize = 6;
const FENCE: usize = 7;
const PEDESTRIAN: usize = 9;
const BICYCLIST: usize = 10;

fn entry(target: usize, source: Option<usize>, config: &CsiBenchConfig) -> RelabelEntry {
    RelabelEntry {
        target,
        source,
        method: "components".into(),
        detection_threshold: config.detection_threshold,
        classifier_threshold: Some(config.classifier_threshold),
    }
}

/// The two settings. Coarse-to-fine merges the pairs whose parts an
/// ImageNet classifier can tell apart (bicycles from clothes, street signs
/// and traffic lights from poles, fences from buildings); open drops
/// Bicyclist, which the classifier knows by its bicycle.
pub fn default_settings(config: &CsiBenchConfig) -> Vec<CsiSetting> {
    vec![
        CsiSetting {
            name: "coarse-to-fine".into(),
            merges: vec![(BICYCLIST, PEDESTRIAN), (SIGN, POLE), (FENCE, BUILDING)],
            drops: Vec::new(),
            entries: vec![
                entry(BICYCLIST, Some(PEDESTRIAN), config),
                entry(SIGN, Some(POLE), config),
                entry(FENCE, Some(BUILDING), config),
            ],
            collect: false,
        },
        CsiSetting {
            name: "open".into(),
            merges: Vec::new(),
            drops: vec![BICYCLIST],
            entries: vec![entry(BICYCLIST, None, config)],
            collect: true,
        },
    ]
}

/// Everything that sets the size of the benchmark.
#[derive(Clone, Debug, Serialize)]
pub struct CsiBenchConfig {
    /// The CamVid dataset root.
    pub data_root: PathBuf,
    /// The ImageNet EfficientNet-Lite0 `.pth`: the backbone's start and the classifier.
    pub weights: PathBuf,
    /// Target domains. Default `camvid-dusk`.
    pub domains: Vec<String>,
    /// Split evaluated.
    pub eval_split: Split,
    /// Input size `(height, width)`. Default 144x192: bicyclists and signs
    /// are a few pixels wide at 96x128.
    pub image_size: (usize, usize),
    /// Source-only training steps. Default 300.
    pub base_steps: usize,
    /// Its learning rate. Default 2e-3.
    pub base_lr: f64,
    /// DACS (and oracle) steps. Default 200.
    pub adapt_steps: usize,
    /// Their learning rate. Default 1e-3.
    pub adapt_lr: f64,
    /// Source images per step (and target images per DACS step). Default 2.
    pub batch_size: usize,
    /// The teacher's EMA ceiling. Default 0.99 (the official 0.999 barely
    /// moves the teacher in a 200-step run).
    pub ema_alpha: f64,
    /// Box detection threshold. Default 0.1 (official, truck and train).
    pub detection_threshold: f32,
    /// Classifier threshold. Default 0.5 (official, truck and train).
    pub classifier_threshold: f32,
    /// The classifier's input side. Default 128.
    pub classifier_px: u32,
    /// Share of the open setting's steps spent collecting. Default 0.25.
    pub collect_fraction: f64,
    /// Training images per domain at most. Default 96.
    pub train_images: Option<usize>,
    /// Evaluation images per domain at most. Default 50.
    pub eval_images: Option<usize>,
    /// Seed of everything. Default 7.
    pub seed: u64,
}

impl CsiBenchConfig {
    /// The documented defaults.
    pub fn new(data_root: PathBuf, weights: PathBuf) -> Self {
        Self {
            data_root,
            weights,
            domains: vec!["camvid-dusk".into()],
            eval_split: Split::Val,
            image_size: (144, 192),
            base_steps: 300,
            base_lr: 2e-3,
            adapt_steps: 200,
            adapt_lr: 1e-3,
            batch_size: 2,
            ema_alpha: 0.99,
            detection_threshold: 0.1,
            classifier_threshold: 0.5,
            classifier_px: 128,
            collect_fraction: 0.25,
            train_images: Some(96),
            eval_images: Some(50),
            seed: 7,
        }
    }
}

/// One row of the table.
#[derive(Clone, Debug, Serialize)]
pub struct CsiRow {
    /// Setting.
    pub setting: String,
    /// Target domain.
    pub domain: String,
    /// `source-only`, `dacs`, `dacs-csi`, `oracle`.
    pub method: String,
    /// mIoU over the fine classes (%).
    pub miou: f64,
    /// `(class, IoU %)` of the classes the setting splits or adds, then their sources.
    pub classes: Vec<(String, Option<f64>)>,
}

/// The relabeling of one CSI run.
#[derive(Clone, Debug, Serialize)]
pub struct CsiRunReport {
    /// Setting.
    pub setting: String,
    /// Target domain.
    pub domain: String,
    /// The source-only teacher's relabeling of the target's train frames, scored.
    pub audit: Audit,
    /// During training, per target: `(class, source found, boxes detected,
    /// boxes kept, pixels relabeled)`, read back from the run's report.
    pub training: Vec<(String, Option<String>, u64, u64, u64)>,
    /// Where the training's report is.
    pub report_dir: PathBuf,
}

/// What the benchmark produced.
#[derive(Clone, Debug, Serialize)]
pub struct CsiBenchOutcome {
    /// Every row.
    pub rows: Vec<CsiRow>,
    /// Every CSI run's relabeling.
    pub relabeling: Vec<CsiRunReport>,
    /// Wall time.
    pub seconds: f64,
    /// What was reused.
    pub reused: Vec<String>,
}

fn train_config(config: &CsiBenchConfig, steps: usize, lr: f64, seed: u64) -> TrainConfig {
    let mut c = TrainConfig::new(steps, config.batch_size, lr);
    c.seed = seed;
    c.augment = AugmentConfig {
        min_scale: 1.0,
        max_scale: 1.0,
        flip_probability: 0.5,
        crop: None,
    };
    c.checkpoint_every = Some(50);
    c
}

fn is_model(dir: &Path) -> bool {
    dir.join(semla_models::model_dir::CONFIG_FILE).is_file()
        && dir.join(semla_models::model_dir::WEIGHTS_FILE).is_file()
}

fn session(checkpoint: &Path) -> Session<'_> {
    Session {
        checkpoint_dir: Some(checkpoint),
        resume: true,
        stop_at: None,
    }
}

/// Per-class IoU (fractions, `None` for classes absent from both) and mIoU
/// (detectron2's definition) of `model` on `data`.
fn evaluate(
    model: &dyn Segmenter,
    data: &InMemorySource,
    device: &Device,
) -> Result<(f64, Vec<Option<f64>>)> {
    let k = model.num_classes();
    let mut matrix = ConfusionMatrix::new(k);
    let ignore = u16::try_from(data.ignore_label()).ok();
    for i in 0..data.len() {
        let sample = data.sample(i)?;
        let images = model.normalization().batch(&[&sample], device)?;
        let predicted: Vec<u16> = model
            .forward(&images, &Adaptation::none())?
            .argmax(1)?
            .flatten_all()?
            .to_vec1::<u32>()?
            .into_iter()
            .map(|p| p as u16)
            .collect();
        let truth: Vec<u16> = sample.labels.iter().map(|&l| l as u16).collect();
        matrix
            .accumulate(&predicted, &truth, ignore)
            .map_err(|e| BenchError::Invalid(format!("{}: {e}", data.describe(i))))?;
    }
    let scores = matrix.scores(Definition::Detectron2);
    Ok((
        scores.mean_iou.unwrap_or(0.0),
        scores.classes.iter().map(|c| c.iou).collect(),
    ))
}

/// Runs the benchmark into `out_dir`.
pub fn run_csi_bench(
    config: &CsiBenchConfig,
    device: &Device,
    out_dir: &Path,
    progress: &mut dyn Progress,
) -> Result<CsiBenchOutcome> {
    let started = Instant::now();
    let device = device.clone();
    std::fs::create_dir_all(out_dir).map_err(|e| BenchError::io(out_dir, e))?;
    let source_domain = resolve_domain(SOURCE_DOMAIN, &config.data_root)?;
    let taxonomy = Taxonomy::camvid();
    if source_domain.classes != taxonomy.classes {
        return Err(BenchError::Invalid(format!(
            "{SOURCE_DOMAIN} does not label CamVid's 11 classes"
        )));
    }
    let ignore = source_domain.ignore_value;
    let palette = source_domain.palette;
    let size = config.image_size;
    let frames = Frames::Spaced(config.train_images);
    let daytime = load_domain(
        &config.data_root,
        SOURCE_DOMAIN,
        Split::Train,
        size,
        frames,
        progress,
    )?;
    let classifier = ImageNetConcepts::from_pth(&config.weights, config.classifier_px, &device)?;
    let mut model_config = EfficientLiteSegConfig::new(taxonomy.classes.len());
    model_config.class_names = taxonomy.classes.clone();
    let model_config = SegmenterConfig::EfficientLite0(model_config);
    let mut rows = Vec::new();
    let mut relabeling = Vec::new();
    let mut reused = Vec::new();
    for (setting_index, setting) in default_settings(config).iter().enumerate() {
        let dir = out_dir.join(&setting.name);
        let coarse = RemappedSource::new(
            daytime.clone(),
            taxonomy.coarse_label_map(&setting.merges, &setting.drops, u32::from(ignore)),
        );
        // The source-only model.
        let source_dir = dir.join("source-only");
        if is_model(&source_dir) {
            reused.push(format!("{}/source-only", setting.name));
        } else {
            let pretrained = pretrained_varmap(&config.weights, &device).map_err(|e| {
                BenchError::Invalid(format!(
                    "loading the ImageNet weights {}: {e}",
                    config.weights.display()
                ))
            })?;
            let (model, varmap) =
                build_trainable(&model_config, Some(pretrained), config.seed, &device)?;
            progress.begin(
                &format!("{}: training the source-only model", setting.name),
                config.base_steps as u64,
            );
            train_base(
                model.as_ref(),
                &varmap,
                &device,
                &coarse,
                &train_config(config, config.base_steps, config.base_lr, config.seed),
                &session(&dir.join("checkpoints").join("source-only")),
                &mut |p| progress.training_step(p.step, p.loss),
            )?;
            progress.end();
            save_segmenter(model.as_ref(), &source_dir)?;
        }
        let base = load_segmenter(&source_dir, &device)?;
        let steps = config.adapt_steps as i64;
        let (collect, relabel) = if setting.collect {
            let end = ((config.adapt_steps as f64 * config.collect_fraction).round() as i64).max(1);
            (
                Window { start: 0, end },
                Window {
                    start: end,
                    end: steps,
                },
            )
        } else {
            (
                Window::OFF,
                Window {
                    start: 0,
                    end: steps,
                },
            )
        };
        let csi_config =
            CsiConfig::new(taxonomy.clone(), setting.entries.clone(), collect, relabel)?;
        for (domain_index, domain) in config.domains.iter().enumerate() {
            let target = load_domain(
                &config.data_root,
                domain,
                Split::Train,
                size,
                frames,
                progress,
            )?;
            let held_out = load_domain(
                &config.data_root,
                domain,
                config.eval_split,
                size,
                Frames::Spaced(config.eval_images),
                progress,
            )?;
            let unlabeled = target.clone().into_unlabeled();
            let seed = config
                .seed
                .wrapping_add(100 * setting_index as u64 + domain_index as u64 + 1);
            let adapt = train_config(config, config.adapt_steps, config.adapt_lr, seed);
            let dacs = DacsSettings {
                alpha: config.ema_alpha,
                ..DacsSettings::default()
            };
            // The audit: the source-only teacher's relabeling of the target's train frames.
            let audit = {
                let (vocabulary, _) = taxonomy.all_concepts();
                let proposer = ComponentBoxes::new(&classifier, vocabulary);
                let mut audit_config = csi_config.clone();
                if setting.collect {
                    // The open setting's source is only known after collection:
                    // audit with the class the collection found, when it ran.
                    audit_config
                        .entries
                        .iter_mut()
                        .for_each(|e| e.source = e.source.or(collected_source(&dir, domain)));
                }
                if audit_config.entries.iter().all(|e| e.source.is_some()) {
                    let mut relabeler = Relabeler::new(audit_config, &proposer, Some(&classifier))?;
                    progress.note(&format!(
                        "{}: auditing the relabeling on {domain}",
                        setting.name
                    ));
                    semla_csi::report::audit(&mut relabeler, base.as_ref(), &target)?
                } else {
                    Audit::default()
                }
            };
            let runs: [(&str, Option<&CsiConfig>); 3] = [
                ("dacs", None),
                ("dacs-csi", Some(&csi_config)),
                ("oracle", None),
            ];
            let mut scored = vec![(
                "source-only".to_string(),
                evaluate(base.as_ref(), &held_out, &device)?,
            )];
            for (method, relabel) in runs {
                let run_dir = dir.join(domain).join(method);
                if is_model(&run_dir) {
                    reused.push(format!("{}/{domain}/{method}", setting.name));
                } else {
                    let (model, params) = with_trainable_part(base.as_ref(), &|_| true, &device)?;
                    let checkpoint = dir.join("checkpoints").join(domain).join(method);
                    progress.begin(
                        &format!("{}: {method} on {domain}", setting.name),
                        config.adapt_steps as u64,
                    );
                    if method == "oracle" {
                        let trainee = Student::Weights {
                            model: model.as_ref(),
                            params: &params,
                        }
                        .trainee(&device);
                        semla_train::trainer::train(
                            &trainee,
                            &target,
                            &adapt,
                            &session(&checkpoint),
                            &mut |p| progress.training_step(p.step, p.loss),
                        )?;
                    } else {
                        let relabeling_inputs = relabel.map(|c| Relabeling {
                            config: c.clone(),
                            classifier: &classifier,
                        });
                        let outcome = semla_csi::train::train(
                            Student::Weights {
                                model: model.as_ref(),
                                params: &params,
                            },
                            &device,
                            &coarse,
                            &unlabeled,
                            relabeling_inputs.as_ref(),
                            &adapt,
                            &dacs,
                            &session(&checkpoint),
                            &mut |p| progress.training_step(p.step, p.loss),
                        )?;
                        if let Some((report, examples)) = &outcome.relabeling {
                            write_report(
                                &run_dir.join("relabeling"),
                                report,
                                examples,
                                ignore,
                                |c| palette.color(c, Some(ignore)),
                            )?;
                        }
                        let stats = serde_json::to_string_pretty(&outcome.dacs).unwrap_or_default();
                        write_atomic(&run_dir.join("dacs-stats.json"), stats.as_bytes())?;
                    }
                    progress.end();
                    save_segmenter(model.as_ref(), &run_dir)?;
                }
                let trained = load_segmenter(&run_dir, &device)?;
                scored.push((
                    method.to_string(),
                    evaluate(trained.as_ref(), &held_out, &device)?,
                ));
            }
            // The split or new classes, then the classes they come from.
            let mut reported: Vec<usize> = setting.entries.iter().map(|e| e.target).collect();
            reported.extend(setting.merges.iter().map(|&(_, into)| into));
            if setting.collect {
                reported.push(PEDESTRIAN);
            }
            for (method, (miou, per_class)) in scored {
                rows.push(CsiRow {
                    setting: setting.name.clone(),
                    domain: domain.clone(),
                    method,
                    miou: 100.0 * miou,
                    classes: reported
                        .iter()
                        .map(|&c| {
                            (
                                taxonomy.classes[c].clone(),
                                per_class.get(c).copied().flatten().map(|v| 100.0 * v),
                            )
                        })
                        .collect(),
                });
            }
            let report_dir = dir.join(domain).join("dacs-csi").join("relabeling");
            relabeling.push(CsiRunReport {
                setting: setting.name.clone(),
                domain: domain.clone(),
                audit,
                training: training_stats(&report_dir),
                report_dir,
            });
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let markdown = render(config, &rows, &relabeling);
    write_atomic(
        &out_dir.join(format!("table-{}.md", config.eval_split)),
        markdown.as_bytes(),
    )?;
    let outcome = CsiBenchOutcome {
        rows,
        relabeling,
        seconds,
        reused,
    };
    let summary = serde_json::json!({
        "config": config,
        "outcome": outcome,
        "load_average_at_end": crate::machine::load_average(),
    });
    write_atomic(
        &out_dir.join(format!("summary-{}.json", config.eval_split)),
        serde_json::to_string_pretty(&summary)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    Ok(outcome)
}

/// The source class the open setting's CSI run collected on `domain`, read
/// back from its report (`None` before it ran, or when none was found).
fn collected_source(setting_dir: &Path, domain: &str) -> Option<usize> {
    let path = setting_dir
        .join(domain)
        .join("dacs-csi")
        .join("relabeling")
        .join(semla_csi::report::REPORT_JSON);
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    report["map"]["elements"][0]["source"]
        .as_u64()
        .map(|s| s as usize)
}

/// Each target's counts from the report a CSI training wrote in `dir`.
fn training_stats(dir: &Path) -> Vec<(String, Option<String>, u64, u64, u64)> {
    let Some(report) = std::fs::read(dir.join(semla_csi::report::REPORT_JSON))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
    else {
        return Vec::new();
    };
    report["targets"]
        .as_array()
        .map(|targets| {
            targets
                .iter()
                .map(|t| {
                    let count = |k: &str| t["stats"][k].as_u64().unwrap_or(0);
                    (
                        t["class"].as_str().unwrap_or_default().to_string(),
                        t["source"].as_str().map(str::to_string),
                        count("detected"),
                        count("kept"),
                        count("relabeled_px"),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The Markdown tables of a run.
pub fn render(config: &CsiBenchConfig, rows: &[CsiRow], relabeling: &[CsiRunReport]) -> String {
    let mut out = format!(
        "IoU (%) on the {} frames of each target, fine taxonomy; rows: the source-only model, DACS without and with CSI, and the oracle trained on the target's fine labels.\n",
        config.eval_split
    );
    let mut groups: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.setting.as_str(), r.domain.as_str()))
        .collect();
    groups.dedup();
    for (setting, domain) in groups {
        let group: Vec<&CsiRow> = rows
            .iter()
            .filter(|r| r.setting == setting && r.domain == domain)
            .collect();
        let Some(first) = group.first() else { continue };
        out.push_str(&format!("\n### {setting}, {domain}\n\n| method | mIoU |"));
        for (class, _) in &first.classes {
            out.push_str(&format!(" {class} |"));
        }
        out.push_str("\n|---|---|");
        out.push_str(&"---|".repeat(first.classes.len()));
        out.push('\n');
        for r in group {
            out.push_str(&format!("| {} | {:.1} |", r.method, r.miou));
            for (_, iou) in &r.classes {
                match iou {
                    Some(v) => out.push_str(&format!(" {v:.1} |")),
                    None => out.push_str(" - |"),
                }
            }
            out.push('\n');
        }
    }
    out.push_str("\nRelabeling audit (the source-only teacher on the target's train frames, against their real labels):\n\n| setting | domain | images | boxes kept | px relabeled | precision | recall |\n|---|---|---|---|---|---|---|\n");
    let names = semla_data::domains::classes::CAMVID_11;
    for r in relabeling {
        let a = &r.audit;
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.3} | {:.3} |\n",
            r.setting, r.domain, a.images, a.boxes, a.relabeled_px, a.precision, a.recall
        ));
        for &(class, px, correct) in &a.by_target {
            out.push_str(&format!(
                "| | into {} | | | {px} | {:.3} | |\n",
                names.get(class).copied().unwrap_or("?"),
                correct as f64 / px.max(1) as f64
            ));
        }
    }
    out.push_str("\nRelabeling during DACS + CSI (all steps, both target images of each):\n\n| setting | domain | target | source | boxes found | kept | px relabeled |\n|---|---|---|---|---|---|---|\n");
    for r in relabeling {
        for (class, source, detected, kept, px) in &r.training {
            out.push_str(&format!(
                "| {} | {} | {class} | {} | {detected} | {kept} | {px} |\n",
                r.setting,
                r.domain,
                source.as_deref().unwrap_or("(none found)")
            ));
        }
    }
    out
}
