//! What a CSI run did, for people: `csi-report.json` (the configuration, the
//! map as it ended, each target's box counts, and optionally an audit of the
//! relabeled pixels against real labels) and `csi-boxes.png` (relabeled
//! boxes: the image, the teacher's labels before and after).

use std::path::Path;

use image::RgbImage;
use image::imageops::FilterType;
use semla_adapters::Adaptation;
use semla_core::fs::write_atomic;
use semla_data::SampleSource;
use semla_models::Segmenter;
use semla_selftrain::quality::{draw_labels, panel_grid};

use crate::config::{CsiConfig, Phase};
use crate::error::{CsiError, Result};
use crate::relabel::{RelabelExample, Relabeler, RelabelingMap, TargetStats};

/// The report's file names.
pub const REPORT_JSON: &str = "csi-report.json";
/// The picture grid.
pub const BOXES_PNG: &str = "csi-boxes.png";

/// One target class's line of the report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TargetReport {
    /// Its name.
    pub class: String,
    /// Its source class's name, once known.
    pub source: Option<String>,
    /// Its boxes through the pipeline.
    pub stats: TargetStats,
}

/// The relabeled pixels of a teacher against real labels.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Audit {
    /// Images relabeled.
    pub images: usize,
    /// Pixels whose label the relabeling changed.
    pub relabeled_px: usize,
    /// Of those, pixels whose real label is the class they were given.
    pub correct_px: usize,
    /// `correct_px / relabeled_px` (0 when nothing was relabeled).
    pub precision: f64,
    /// Pixels of the target classes in the real labels.
    pub target_px: usize,
    /// `correct_px / target_px`.
    pub recall: f64,
    /// Boxes kept.
    pub boxes: usize,
    /// Per target class: `(class, pixels relabeled into it, of those correct)`.
    pub by_target: Vec<(usize, usize, usize)>,
}

/// The whole report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CsiReport {
    /// The classifier's name.
    pub classifier: String,
    /// The configuration.
    pub config: CsiConfig,
    /// The map at the end.
    pub map: RelabelingMap,
    /// One line per configured target.
    pub targets: Vec<TargetReport>,
    /// An audit against real labels, when one was made.
    pub audit: Option<Audit>,
}

impl CsiReport {
    /// The report of `relabeler`.
    pub fn new(relabeler: &Relabeler<'_>, classifier: String, audit: Option<Audit>) -> Self {
        let config = relabeler.config().clone();
        let name = |c: usize| config.taxonomy.classes.get(c).cloned().unwrap_or_default();
        let targets = relabeler
            .map()
            .elements
            .iter()
            .map(|e| TargetReport {
                class: name(e.target),
                source: e.source.map(name),
                stats: relabeler.stats().get(e.target).cloned().unwrap_or_default(),
            })
            .collect();
        Self {
            classifier,
            map: relabeler.map().clone(),
            config,
            targets,
            audit,
        }
    }
}

/// Relabels every image of `data` as `teacher` labels it (the relabel phase,
/// with the map as `relabeler` holds it) and scores the changed pixels
/// against `data`'s real labels.
pub fn audit(
    relabeler: &mut Relabeler<'_>,
    teacher: &dyn Segmenter,
    data: &dyn SampleSource,
) -> Result<Audit> {
    let ignore = data.ignore_label();
    let ignore16 =
        u16::try_from(ignore).map_err(|_| CsiError::Invalid("labels must fit 16 bits".into()))?;
    let targets: Vec<u32> = relabeler
        .map()
        .active(Phase::Relabel)
        .iter()
        .map(|e| e.target as u32)
        .collect();
    let mut out = Audit::default();
    for i in 0..data.len() {
        let sample = data
            .sample(i)
            .map_err(|e| CsiError::Invalid(format!("{}: {e}", data.describe(i))))?;
        let images = teacher
            .normalization()
            .batch(&[&sample], &candle_core::Device::Cpu)?;
        let predicted: Vec<u32> = teacher
            .forward(&images, &Adaptation::none())?
            .argmax(1)?
            .flatten_all()?
            .to_vec1()?;
        let mut pseudo: Vec<u16> = predicted.iter().map(|&p| p as u16).collect();
        let photo = sample
            .to_photo()
            .map_err(|e| CsiError::Invalid(format!("{}: {e}", data.describe(i))))?;
        let outcome = relabeler.apply(Phase::Relabel, &photo, &mut pseudo, ignore16)?;
        out.images += 1;
        out.boxes += outcome.kept;
        out.relabeled_px += outcome.changed.len();
        for &(p, class) in &outcome.changed {
            let correct = sample.labels[p] == class as u32;
            out.correct_px += usize::from(correct);
            match out.by_target.iter_mut().find(|(c, _, _)| *c == class) {
                Some(entry) => {
                    entry.1 += 1;
                    entry.2 += usize::from(correct);
                }
                None => out.by_target.push((class, 1, usize::from(correct))),
            }
        }
        out.target_px += sample.labels.iter().filter(|l| targets.contains(l)).count();
    }
    out.precision = out.correct_px as f64 / out.relabeled_px.max(1) as f64;
    out.recall = out.correct_px as f64 / out.target_px.max(1) as f64;
    Ok(out)
}

/// Writes [`REPORT_JSON`] and [`BOXES_PNG`] (`examples`, relabeled boxes,
/// each row: the crop, labels before, labels after, enlarged) into `dir`;
/// `colour` paints a class.
pub fn write_report(
    dir: &Path,
    report: &CsiReport,
    examples: &[RelabelExample],
    ignore: u16,
    colour: impl Fn(u16) -> [u8; 3] + Copy,
) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| CsiError::Invalid(format!("creating {}: {e}", dir.display())))?;
    let json = serde_json::to_vec_pretty(report)
        .map_err(|e| CsiError::Invalid(format!("serialising the report: {e}")))?;
    write_atomic(&dir.join(REPORT_JSON), &json).map_err(|e| CsiError::Invalid(e.to_string()))?;
    let rows: Vec<Vec<RgbImage>> = examples
        .iter()
        .map(|ex| {
            let (w, h) = (ex.bbox.width(), ex.bbox.height());
            let scale = (96 / h.max(1)).clamp(1, 8) as u32;
            let big = |img: &RgbImage| {
                image::imageops::resize(
                    img,
                    w as u32 * scale,
                    h as u32 * scale,
                    FilterType::Nearest,
                )
            };
            vec![
                big(&ex.image),
                big(&draw_labels(&ex.before, w, h, ignore, colour)),
                big(&draw_labels(&ex.after, w, h, ignore, colour)),
            ]
        })
        .collect();
    if !rows.is_empty() {
        let grid = panel_grid(&rows);
        let mut png = Vec::new();
        grid.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(|e| CsiError::Invalid(format!("encoding {BOXES_PNG}: {e}")))?;
        write_atomic(&dir.join(BOXES_PNG), &png).map_err(|e| CsiError::Invalid(e.to_string()))?;
    }
    Ok(())
}
