//! What an experiment produced, and its files: the official `results.json`
//! (`{target: mIoU percent}`) and the richer `report.json` (settings, per-target
//! scores and timings) and `weights.jsonl` (the mixture of every image).

use std::path::Path;

use semla_core::fs::{StagedDir, write_atomic};
use semla_metrics::Definition;
use semla_pipeline::{AdapterChoice, Fusion};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::settings::{ExperimentKind, ExperimentSettings};

/// The mixture used for one image (a line of `weights.jsonl`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Target domain.
    pub target: String,
    /// The image (file name or sample id).
    pub image: String,
    /// Selected adapters, most similar first; empty for `zeroshot`.
    pub adapters: Vec<AdapterChoice>,
}

/// IoU of one class.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassIou {
    /// Class index.
    pub class: usize,
    /// Class name (empty if unknown).
    pub name: String,
    /// IoU in percent; `None` when the class does not count under the definition.
    pub iou_percent: Option<f64>,
}

/// Per-target details (an entry of `report.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetReport {
    /// Target domain.
    pub target: String,
    /// The mIoU definition (`cityscapes` or `detectron2`).
    pub definition: Definition,
    /// Images evaluated.
    pub images: usize,
    /// mIoU in percent.
    pub miou_percent: f64,
    /// Pixel accuracy in percent.
    pub pixel_accuracy_percent: Option<f64>,
    /// Per-class IoU.
    pub per_class_iou: Vec<ClassIou>,
    /// Wall time of the target (loading, embedding, retrieval, segmentation).
    pub seconds: f64,
    /// `seconds / images`.
    pub seconds_per_image: f64,
}

/// A kept prediction (see [`ExperimentSettings::keep_predictions`]).
#[derive(Clone, Debug)]
pub struct KeptPrediction {
    /// Target domain.
    pub target: String,
    /// Sample index in the target's source.
    pub index: usize,
    /// Predicted class per pixel, `[H, W]` row-major.
    pub classes: Vec<u16>,
    /// `H`.
    pub height: usize,
    /// `W`.
    pub width: usize,
}

/// Everything an experiment produced.
#[derive(Clone, Debug)]
pub struct ExperimentOutput {
    /// The mode.
    pub kind: ExperimentKind,
    /// The fusion.
    pub fusion: Fusion,
    /// mIoU in percent per target, in target order.
    pub results: Vec<(String, f64)>,
    /// Per-target details.
    pub reports: Vec<TargetReport>,
    /// One record per image.
    pub images: Vec<ImageRecord>,
    /// Kept predictions.
    pub predictions: Vec<KeptPrediction>,
}

impl ExperimentOutput {
    /// `results.json` in the official shape: `{target: mIoU percent}`,
    /// indented by 4 like `json.dump(..., indent=4)`.
    pub fn results_json(&self) -> String {
        let map: serde_json::Map<String, serde_json::Value> = self
            .results
            .iter()
            .map(|(t, v)| (t.clone(), serde_json::json!(v)))
            .collect();
        to_json_indent4(&serde_json::Value::Object(map))
    }

    /// `report.json`: the settings and every target's details.
    pub fn report_json(&self, settings: &ExperimentSettings) -> String {
        let value = serde_json::json!({
            "experiment": self.kind,
            "fusion": self.fusion,
            "method": settings.method_name(),
            "retrieval": settings.params,
            "remove_target_adapter": settings.remove_target_adapter,
            "batch_size": settings.batch_size,
            "targets": self.reports,
        });
        to_json_indent4(&value)
    }

    /// `weights.jsonl`: one JSON object per image.
    pub fn weights_jsonl(&self) -> String {
        let mut out = String::new();
        for record in &self.images {
            // Serialising plain data cannot fail.
            out.push_str(&serde_json::to_string(record).unwrap_or_default());
            out.push('\n');
        }
        out
    }

    /// Writes `results.json`, `report.json` and `weights.jsonl` into `dir`
    /// (created if needed), the three together: staged beside `dir` with its other
    /// files and swapped in whole, so that an interrupted write never leaves a
    /// new `results.json` beside old per-image weights.
    pub fn write(&self, dir: &Path, settings: &ExperimentSettings) -> Result<()> {
        let staged = StagedDir::from_existing(dir)?;
        let files = [
            ("results.json", self.results_json()),
            ("report.json", self.report_json(settings)),
            ("weights.jsonl", self.weights_jsonl()),
        ];
        for (name, text) in files {
            write_atomic(&staged.path().join(name), text.as_bytes())?;
        }
        staged.commit()?;
        Ok(())
    }

    /// The record of image `index` of `target`'s evaluation order, if kept.
    pub fn mixture(&self, target: &str, image: &str) -> Option<&ImageRecord> {
        self.images
            .iter()
            .find(|r| r.target == target && r.image == image)
    }
}

pub(crate) fn to_json_indent4(value: &serde_json::Value) -> String {
    let mut buf = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, formatter);
    // Serialising a Value into a Vec cannot fail.
    let _ = value.serialize(&mut ser);
    String::from_utf8(buf).unwrap_or_default()
}
