//! Scale-out of an experiment by shards, and the exact merge of their parts.
//!
//! `semla eval --experiment ... --shard I/N` runs [`run_shard`]: per target
//! domain, the images the whole run would evaluate (its first `limit`) are
//! sorted by id ([`SampleSource::describe`](semla_data::SampleSource::describe),
//! ties by position), and the image at sorted position `k` belongs to shard
//! `k mod N` ([`assignment`]). The shard evaluates its images only and writes a
//! part file, [`PART_FILE`] ([`ShardPart`]): its index and count, per target
//! the integer confusion matrix of its pixels, the ids of its images and their
//! per-image records (the `weights.jsonl` records, with their positions), and
//! a [`Fingerprint`] of what it ran: the model folder's files, the library's
//! adapters and prototypes, the settings, and each target's list of images.
//!
//! `semla eval merge PARTS... --out DIR` runs [`merge_parts`]: the parts must be
//! one complete set (one fingerprint, one count `N`, each index once, every
//! image in the shard the assignment gives it); the matrices are summed exactly
//! and every score is computed from the sums, the records put back in the
//! whole run's order, so that `results.json` and `weights.jsonl` come out byte
//! for byte as the unsharded run writes them, and `report.json` too but for its
//! timings (the sum of the shards' seconds). This holds because an image's
//! prediction and mixture do not depend on the images batched with it (the
//! pipeline's tests check that a batch segments as each image alone).

use std::path::{Path, PathBuf};

use semla_core::Progress;
use semla_core::fs::{StagedDir, write_atomic};
use semla_core::hash::Fnv;
use semla_metrics::{ConfusionMatrix, Definition};
use semla_pipeline::{AdapterChoice, Fusion, Semla};
use semla_retrieval::RetrievalParams;
use serde::{Deserialize, Serialize};

use crate::engine::{check_runnable, run_target, target_report};
use crate::error::{ExperimentError, Result};
use crate::output::{ExperimentOutput, ImageRecord, to_json_indent4};
use crate::settings::{ExperimentKind, ExperimentSettings, Target};

/// The part file a shard writes into its output folder.
pub const PART_FILE: &str = "shard.json";

/// The `format` of a part file.
pub const PART_FORMAT: &str = "semla-shard/1";

/// One shard of `count`: index `0..count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shard {
    /// This shard, `0..count`.
    pub index: usize,
    /// How many shards share the run (at least 1).
    pub count: usize,
}

impl Shard {
    /// Shard `index` of `count`; `index < count` and `count >= 1`.
    pub fn new(index: usize, count: usize) -> std::result::Result<Self, String> {
        if count == 0 {
            return Err("a run cannot have 0 shards".into());
        }
        if index >= count {
            return Err(format!(
                "shard {index} of {count} does not exist (shards are numbered 0 to {})",
                count - 1
            ));
        }
        Ok(Self { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    /// `I/N`, e.g. `0/4` (0-based: the shards of 4 are `0/4` to `3/4`).
    fn from_str(text: &str) -> std::result::Result<Self, Self::Err> {
        let (index, count) = text
            .split_once('/')
            .ok_or_else(|| format!("`{text}` is not I/N (e.g. 0/4)"))?;
        let parse = |part: &str, what: &str| {
            part.trim()
                .parse::<usize>()
                .map_err(|_| format!("`{text}`: the {what} is not a whole number"))
        };
        Self::new(parse(index, "shard index")?, parse(count, "shard count")?)
    }
}

/// The shard of each image of a target, `ids` being the images in evaluation
/// order: sorted by id (equal ids by position), the image at sorted position
/// `k` belongs to shard `k mod count`.
pub fn assignment(ids: &[String], count: usize) -> Vec<usize> {
    let count = count.max(1);
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by(|&a, &b| ids[a].cmp(&ids[b]).then(a.cmp(&b)));
    let mut owner = vec![0; ids.len()];
    for (position, &image) in order.iter().enumerate() {
        owner[image] = position % count;
    }
    owner
}

/// What a shard ran, as hashes (FNV-1a, [`semla_core::hash`], 16 hex digits):
/// parts with different fingerprints refuse to merge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// The files of the model folder (names and contents; not its
    /// sub-folders, such as training checkpoints).
    pub model: String,
    /// The files of the candidate adapters' folders (configs, weights,
    /// prototypes), in source order, and those at the library's root (the
    /// embedder record).
    pub library: String,
    /// The experiment settings and what else changes the results (the caller's
    /// `extra`: SemLA config, embedder, split, resize, ...).
    pub settings: String,
    /// Per target, in order: its images.
    pub targets: Vec<TargetFingerprint>,
}

/// A target's list of images, in a [`Fingerprint`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetFingerprint {
    /// Target domain.
    pub target: String,
    /// Images the whole run evaluates (all shards together).
    pub images: usize,
    /// Hash of the target's name, definition, class names and image ids in
    /// evaluation order.
    pub list: String,
}

impl Fingerprint {
    /// The fingerprint of a run's inputs (its targets are added by
    /// [`run_shard`]): the files of `model_dir`, those of the folders of
    /// `sources` in `library_dir` and those at its root, and `settings` with
    /// `extra` (anything else the caller knows changes the results). Paths are
    /// not hashed: a model or library copied elsewhere has the same fingerprint.
    pub fn of_inputs(
        model_dir: &Path,
        library_dir: &Path,
        sources: &[String],
        settings: &ExperimentSettings,
        extra: &serde_json::Value,
    ) -> Result<Self> {
        let fs = |e: semla_core::fs::FsError| ExperimentError::io(e.path, e.source);
        let model = semla_core::hash::model_fingerprint(model_dir).map_err(fs)?;
        let library = semla_core::hash::library_fingerprint(library_dir, sources).map_err(fs)?;
        let mut hash = Fnv::new();
        let settings = serde_json::json!({
            "experiment": PartSettings::from(settings),
            "extra": extra,
        });
        hash.write_str(&settings.to_string());
        Ok(Self {
            model,
            library,
            settings: hex(&hash),
            targets: Vec::new(),
        })
    }

    /// What differs between two fingerprints, in words (`None`: nothing).
    pub fn difference(&self, other: &Self) -> Option<String> {
        if self.model != other.model {
            return Some("they ran different models (the model folders' files differ)".into());
        }
        if self.library != other.library {
            return Some("they ran different libraries (the adapters or prototypes differ)".into());
        }
        if self.settings != other.settings {
            return Some(
                "they ran different settings (experiment, retrieval, SemLA config, embedder, split or resize)"
                    .into(),
            );
        }
        let names = |f: &Self| {
            f.targets
                .iter()
                .map(|t| t.target.clone())
                .collect::<Vec<_>>()
        };
        if names(self) != names(other) {
            return Some(format!(
                "they ran different targets ({} and {})",
                names(self).join(", "),
                names(other).join(", ")
            ));
        }
        self.targets
            .iter()
            .zip(&other.targets)
            .find(|(a, b)| a != b)
            .map(|(a, b)| {
                format!(
                    "they saw different images of target {} ({} and {} images, lists {} and {})",
                    a.target, a.images, b.images, a.list, b.list
                )
            })
    }
}

/// The hash of a target's name, definition, class names and image ids.
fn list_hash(target: &str, definition: Definition, class_names: &[String], ids: &[&str]) -> String {
    let mut hash = Fnv::new();
    hash.write_str(target);
    hash.write_str(match definition {
        Definition::Cityscapes => "cityscapes",
        Definition::Detectron2 => "detectron2",
    });
    hash.write(&(class_names.len() as u64).to_le_bytes());
    for name in class_names {
        hash.write_str(name);
    }
    hash.write(&(ids.len() as u64).to_le_bytes());
    for id in ids {
        hash.write_str(id);
    }
    hex(&hash)
}

fn hex(hash: &Fnv) -> String {
    format!("{:016x}", hash.finish())
}

/// The settings a part records: what `report.json` shows of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartSettings {
    /// The mode.
    pub experiment: ExperimentKind,
    /// The fusion.
    pub fusion: Fusion,
    /// Retrieval settings.
    pub retrieval: RetrievalParams,
    /// Leave-one-out.
    pub remove_target_adapter: bool,
    /// Images per forward pass.
    pub batch_size: usize,
    /// Images per target at most.
    pub limit: Option<usize>,
}

impl From<&ExperimentSettings> for PartSettings {
    fn from(settings: &ExperimentSettings) -> Self {
        Self {
            experiment: settings.kind,
            fusion: settings.fusion,
            retrieval: settings.params,
            remove_target_adapter: settings.remove_target_adapter,
            batch_size: settings.batch_size,
            limit: settings.limit,
        }
    }
}

impl PartSettings {
    /// The experiment settings these are (no kept predictions).
    pub fn to_settings(&self) -> ExperimentSettings {
        ExperimentSettings {
            fusion: self.fusion,
            params: self.retrieval,
            remove_target_adapter: self.remove_target_adapter,
            batch_size: self.batch_size,
            limit: self.limit,
            ..ExperimentSettings::new(self.experiment)
        }
    }
}

/// One image of a shard: its position in the target's evaluation order and its
/// `weights.jsonl` record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartRecord {
    /// Position in the target's evaluation order (the source index).
    pub index: usize,
    /// Target domain.
    pub target: String,
    /// The image id.
    pub image: String,
    /// The adapters it ran with.
    pub adapters: Vec<AdapterChoice>,
}

/// A confusion matrix as a part stores it: exact integer counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartConfusion {
    /// Number of classes `K`.
    pub classes: usize,
    /// `K` rows (ground truth) of `K` counts (prediction).
    pub counts: Vec<Vec<u64>>,
    /// Pixels whose ground truth is the ignore value.
    pub ignored: u64,
    /// Pixels whose ground truth is no class.
    pub invalid_ground_truth: u64,
}

impl From<&ConfusionMatrix> for PartConfusion {
    fn from(matrix: &ConfusionMatrix) -> Self {
        let k = matrix.num_classes();
        Self {
            classes: k,
            counts: matrix
                .counts()
                .chunks(k.max(1))
                .map(<[u64]>::to_vec)
                .collect(),
            ignored: matrix.ignored(),
            invalid_ground_truth: matrix.invalid_ground_truth(),
        }
    }
}

/// One target of a part.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartTarget {
    /// Target domain.
    pub target: String,
    /// Its mIoU definition.
    pub definition: Definition,
    /// Its class names.
    pub class_names: Vec<String>,
    /// The ids of the images this shard evaluated, in evaluation order.
    pub images: Vec<String>,
    /// Their records, in the same order.
    pub records: Vec<PartRecord>,
    /// The pixel counts of these images.
    pub confusion: PartConfusion,
    /// Wall time of this shard on the target.
    pub seconds: f64,
}

/// A shard's part file ([`PART_FILE`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardPart {
    /// [`PART_FORMAT`].
    pub format: String,
    /// Which shard of how many.
    pub shard: Shard,
    /// What it ran.
    pub fingerprint: Fingerprint,
    /// The experiment settings.
    pub settings: PartSettings,
    /// Per target, in order.
    pub targets: Vec<PartTarget>,
}

impl ShardPart {
    /// The part as JSON (indented by 4, as `results.json`).
    pub fn to_json(&self) -> String {
        // Serialising plain data cannot fail.
        let value = serde_json::to_value(self).unwrap_or_default();
        let mut text = to_json_indent4(&value);
        text.push('\n');
        text
    }

    /// Writes [`PART_FILE`] into `dir` (created if needed; its other files are
    /// kept), staged and swapped in as the experiment outputs are.
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        let staged = StagedDir::from_existing(dir)?;
        write_atomic(&staged.path().join(PART_FILE), self.to_json().as_bytes())?;
        staged.commit()?;
        Ok(dir.join(PART_FILE))
    }

    /// Reads a part file, or the [`PART_FILE`] of a folder, and checks that it
    /// holds together (format, shard, matrices, records).
    pub fn read(path: &Path) -> Result<Self> {
        let file = if path.is_dir() {
            path.join(PART_FILE)
        } else {
            path.to_path_buf()
        };
        let bad = |message: String| ExperimentError::Part {
            path: file.clone(),
            message,
        };
        let meta = std::fs::metadata(&file).map_err(|e| ExperimentError::io(&file, e))?;
        semla_core::limits::check_file_bytes(meta.len(), "the shard part").map_err(bad)?;
        let text = std::fs::read_to_string(&file).map_err(|e| ExperimentError::io(&file, e))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not JSON ({e})")))?;
        match value.get("format").and_then(|f| f.as_str()) {
            Some(PART_FORMAT) => {}
            Some(other) => {
                return Err(bad(format!(
                    "format `{other}` is not {PART_FORMAT} (written by another semla version?)"
                )));
            }
            None => {
                return Err(bad(format!(
                    "not a shard part ({PART_FORMAT}): no `format`"
                )));
            }
        }
        let part: ShardPart = serde_json::from_value(value)
            .map_err(|e| bad(format!("not a shard part ({PART_FORMAT}): {e}")))?;
        part.check().map_err(bad)?;
        Ok(part)
    }

    /// The part's own consistency.
    fn check(&self) -> std::result::Result<(), String> {
        Shard::new(self.shard.index, self.shard.count)?;
        let names: Vec<&str> = self.targets.iter().map(|t| t.target.as_str()).collect();
        let listed: Vec<&str> = self
            .fingerprint
            .targets
            .iter()
            .map(|t| t.target.as_str())
            .collect();
        if names != listed {
            return Err(format!(
                "its targets ({}) are not its fingerprint's ({})",
                names.join(", "),
                listed.join(", ")
            ));
        }
        for (target, listed) in self.targets.iter().zip(&self.fingerprint.targets) {
            let name = &target.target;
            let m = &target.confusion;
            semla_core::limits::check_classes(
                m.classes as u64,
                &format!("target {name}'s matrix"),
            )?;
            if m.counts.len() != m.classes || m.counts.iter().any(|row| row.len() != m.classes) {
                return Err(format!(
                    "target {name}: the confusion matrix is not {k} x {k}",
                    k = m.classes
                ));
            }
            if target.records.len() != target.images.len() {
                return Err(format!(
                    "target {name}: {} records for {} images",
                    target.records.len(),
                    target.images.len()
                ));
            }
            for (record, id) in target.records.iter().zip(&target.images) {
                if &record.target != name || &record.image != id {
                    return Err(format!(
                        "target {name}: the record of {} ({}) is not that of image {id}",
                        record.image, record.target
                    ));
                }
                if record.index >= listed.images {
                    return Err(format!(
                        "target {name}: image {id} at position {} of {}",
                        record.index, listed.images
                    ));
                }
            }
            if target.records.windows(2).any(|w| w[0].index >= w[1].index) {
                return Err(format!(
                    "target {name}: the images are not in evaluation order"
                ));
            }
        }
        Ok(())
    }
}

/// Runs shard `shard` of an experiment over `targets` (see the module
/// documentation): per target, only the images [`assignment`] gives it.
/// `inputs` is [`Fingerprint::of_inputs`] of the run; the part gets it with the
/// targets' image lists. A target may give a shard no image (more shards than
/// images); a target without images is an error, as in the whole run.
pub fn run_shard(
    semla: &Semla,
    targets: &[Target<'_>],
    settings: &ExperimentSettings,
    shard: Shard,
    inputs: &Fingerprint,
    progress: &mut dyn Progress,
) -> Result<ShardPart> {
    Shard::new(shard.index, shard.count).map_err(ExperimentError::Invalid)?;
    check_runnable(semla, settings)?;
    let mut fingerprint = inputs.clone();
    fingerprint.targets.clear();
    let mut parts = Vec::with_capacity(targets.len());
    for target in targets {
        let total = settings
            .limit
            .unwrap_or(usize::MAX)
            .min(target.source.len());
        let ids: Vec<String> = (0..total).map(|i| target.source.describe(i)).collect();
        let owner = assignment(&ids, shard.count);
        let mine: Vec<usize> = (0..total).filter(|&i| owner[i] == shard.index).collect();
        let run = run_target(semla, target, settings, Some(&mine), progress)?;
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        fingerprint.targets.push(TargetFingerprint {
            target: target.name.clone(),
            images: total,
            list: list_hash(
                &target.name,
                target.definition,
                &target.class_names,
                &id_refs,
            ),
        });
        let records: Vec<PartRecord> = run
            .records
            .into_iter()
            .map(|(index, record)| PartRecord {
                index,
                target: record.target,
                image: record.image,
                adapters: record.adapters,
            })
            .collect();
        parts.push(PartTarget {
            target: target.name.clone(),
            definition: target.definition,
            class_names: target.class_names.clone(),
            images: records.iter().map(|r| r.image.clone()).collect(),
            records,
            confusion: PartConfusion::from(&run.confusion),
            seconds: run.seconds,
        });
    }
    Ok(ShardPart {
        format: PART_FORMAT.to_string(),
        shard,
        fingerprint,
        settings: PartSettings::from(settings),
        targets: parts,
    })
}

/// What [`merge_parts`] gives: the whole run's output and settings.
#[derive(Clone, Debug)]
pub struct Merged {
    /// As [`crate::run_experiment`] gives it (no kept predictions; each
    /// target's seconds are the sum of its shards').
    pub output: ExperimentOutput,
    /// The run's settings (for [`ExperimentOutput::write`]).
    pub settings: ExperimentSettings,
    /// How many shards were merged.
    pub shards: usize,
}

/// Merges the parts of a sharded run (each with the file it came from, for the
/// errors) into the output of the whole run. Refuses a set that is not one
/// complete run: parts of different fingerprints or shard counts, an index
/// given twice or missing, an image in the wrong shard, in two, or in none.
pub fn merge_parts(parts: &[(PathBuf, ShardPart)]) -> Result<Merged> {
    let refuse = |message: String| ExperimentError::Merge(message);
    let Some((first_path, first)) = parts.first() else {
        return Err(refuse("no shard part given".into()));
    };
    let count = first.shard.count;
    let mut by_index: Vec<Option<(&Path, &ShardPart)>> = vec![None; count];
    for (path, part) in parts {
        part.check().map_err(|message| ExperimentError::Part {
            path: path.clone(),
            message,
        })?;
        if part.shard.count != count {
            return Err(refuse(format!(
                "{} is shard {} but {} is shard {}: the parts come from runs of different shard counts",
                path.display(),
                part.shard,
                first_path.display(),
                first.shard
            )));
        }
        if let Some(why) = first.fingerprint.difference(&part.fingerprint) {
            return Err(refuse(format!(
                "{} and {} are not parts of one run: {why}",
                first_path.display(),
                path.display()
            )));
        }
        if part.settings != first.settings {
            return Err(refuse(format!(
                "{} and {} are not parts of one run: their experiment settings differ",
                first_path.display(),
                path.display()
            )));
        }
        match by_index.get_mut(part.shard.index) {
            Some(Some((other, _))) => {
                return Err(refuse(format!(
                    "shard {} is given twice ({} and {})",
                    part.shard,
                    other.display(),
                    path.display()
                )));
            }
            Some(slot) => *slot = Some((path.as_path(), part)),
            None => {
                return Err(refuse(format!(
                    "{}: shard {} does not exist",
                    path.display(),
                    part.shard
                )));
            }
        }
    }
    let missing: Vec<String> = by_index
        .iter()
        .enumerate()
        .filter(|(_, p)| p.is_none())
        .map(|(i, _)| format!("{i}/{count}"))
        .collect();
    if !missing.is_empty() {
        return Err(refuse(format!(
            "incomplete set: {} of {count} parts given, shard {} missing",
            count - missing.len(),
            missing.join(", ")
        )));
    }
    let shards: Vec<(&Path, &ShardPart)> = by_index.into_iter().flatten().collect();

    let settings = first.settings.to_settings();
    let mut output = ExperimentOutput {
        kind: settings.kind,
        fusion: settings.fusion,
        results: Vec::new(),
        reports: Vec::new(),
        images: Vec::new(),
        predictions: Vec::new(),
    };
    for (t, listed) in first.fingerprint.targets.iter().enumerate() {
        let name = &listed.target;
        let head = &first.targets[t];
        // Per position in the evaluation order: the record, its shard and file.
        let mut found: Vec<Option<(&PartRecord, usize, &Path)>> = vec![None; listed.images];
        let mut counts = vec![0u64; head.confusion.classes * head.confusion.classes];
        let (mut ignored, mut invalid) = (0u64, 0u64);
        let mut seconds = 0.0;
        for &(path, part) in &shards {
            let target = &part.targets[t];
            if target.confusion.classes != head.confusion.classes {
                return Err(refuse(format!(
                    "target {name}: {} has a {}-class matrix, {} a {}-class one",
                    path.display(),
                    target.confusion.classes,
                    first_path.display(),
                    head.confusion.classes
                )));
            }
            for record in &target.records {
                match found.get_mut(record.index) {
                    Some(Some((_, _, other))) => {
                        return Err(refuse(format!(
                            "target {name}: image {} is in two parts ({} and {})",
                            record.image,
                            other.display(),
                            path.display()
                        )));
                    }
                    Some(slot) => *slot = Some((record, part.shard.index, path)),
                    // `check` keeps positions below the fingerprint's count.
                    None => {}
                }
            }
            let overflow = || {
                refuse(format!(
                    "target {name}: the pixel counts overflow (a damaged part?)"
                ))
            };
            for (sum, value) in counts
                .iter_mut()
                .zip(target.confusion.counts.iter().flatten())
            {
                *sum = sum.checked_add(*value).ok_or_else(overflow)?;
            }
            ignored = ignored
                .checked_add(target.confusion.ignored)
                .ok_or_else(overflow)?;
            invalid = invalid
                .checked_add(target.confusion.invalid_ground_truth)
                .ok_or_else(overflow)?;
            seconds += target.seconds;
        }
        let Some(found) = found.into_iter().collect::<Option<Vec<_>>>() else {
            return Err(refuse(format!(
                "target {name}: some of its {} images are in no part (a damaged part?)",
                listed.images
            )));
        };
        let id_refs: Vec<&str> = found.iter().map(|(r, _, _)| r.image.as_str()).collect();
        if list_hash(name, head.definition, &head.class_names, &id_refs) != listed.list {
            return Err(refuse(format!(
                "target {name}: the parts' images are not the list their fingerprint names (a damaged part?)"
            )));
        }
        let all: Vec<String> = id_refs.iter().map(|s| s.to_string()).collect();
        for (owner, (record, shard, path)) in assignment(&all, count).into_iter().zip(&found) {
            if owner != *shard {
                return Err(refuse(format!(
                    "{}: target {name}'s image {} belongs to shard {owner}/{count}, not {shard}/{count}",
                    path.display(),
                    record.image
                )));
            }
        }
        let confusion =
            ConfusionMatrix::from_counts(head.confusion.classes, counts, ignored, invalid)
                .map_err(|e| refuse(format!("target {name}: {e}")))?;
        let report = target_report(
            name,
            head.definition,
            &head.class_names,
            &confusion,
            listed.images,
            seconds,
        );
        output.results.push((name.clone(), report.miou_percent));
        output.reports.push(report);
        output
            .images
            .extend(found.into_iter().map(|(r, _, _)| ImageRecord {
                target: r.target.clone(),
                image: r.image.clone(),
                adapters: r.adapters.clone(),
            }));
    }
    Ok(Merged {
        output,
        settings,
        shards: count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_refuse_what_does_not_exist() {
        assert_eq!("2/3".parse::<Shard>(), Ok(Shard { index: 2, count: 3 }));
        assert_eq!(" 0 / 1 ".parse::<Shard>(), Ok(Shard { index: 0, count: 1 }));
        for bad in ["3/3", "0/0", "1", "a/2", "-1/2", "1/2/3"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        assert_eq!(Shard { index: 1, count: 4 }.to_string(), "1/4");
    }

    #[test]
    fn images_are_dealt_round_robin_in_id_order() {
        let ids: Vec<String> = ["c", "a", "d", "b", "e"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // Sorted: a(1) b(3) c(0) d(2) e(4) -> shards 0 1 2 0 1.
        assert_eq!(assignment(&ids, 3), [2, 0, 0, 1, 1]);
        assert_eq!(assignment(&ids, 1), [0; 5]);
        let same: Vec<String> = vec!["x".into(); 3];
        assert_eq!(assignment(&same, 2), [0, 1, 0]);
    }

    #[test]
    fn mixtures_survive_the_part_file_bit_for_bit() {
        // The weights.jsonl a merge writes is the whole run's only if every f64
        // read back from a part is the one written.
        let mut state = 0x1234_5678_9abc_def0u64;
        let values: Vec<f64> = (0..2000)
            .map(|i| {
                state = semla_core::rng::mix64(state.wrapping_add(i));
                let unit = (state >> 11) as f64 / (1u64 << 53) as f64;
                unit * 10f64.powi((i % 40) as i32 - 30)
            })
            .collect();
        let record = PartRecord {
            index: 0,
            target: "t".into(),
            image: "i".into(),
            adapters: values
                .iter()
                .map(|&v| AdapterChoice {
                    name: "a".into(),
                    distance: Some(v),
                    similarity: Some(-v),
                    weight: v,
                })
                .collect(),
        };
        let text = serde_json::to_string(&record).unwrap();
        let back: PartRecord = serde_json::from_str(&text).unwrap();
        for (a, b) in record.adapters.iter().zip(&back.adapters) {
            assert_eq!(a.weight.to_bits(), b.weight.to_bits());
            assert_eq!(a.distance.map(f64::to_bits), b.distance.map(f64::to_bits));
        }
    }
}
