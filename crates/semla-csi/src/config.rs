//! CSI's relabeling configuration: the official `relabeling_cfg` tuples
//! `(target class, source class or None, (method, detection threshold,
//! classifier threshold or None))`, the collect and relabel windows, and the
//! taxonomy they refer to (class names, coarse categories, concept strings).
//!
//! As YAML (class names or indices alike):
//!
//! ```yaml
//! relabeling_cfg:
//!   - [Bicyclist, Pedestrian, [components, 0.1, 0.5]]   # coarse-to-fine
//!   - [Bicyclist, null, [components, 0.1, 0.5]]         # open: source discovered
//! range_of_collect_mapping_info: [100, 200]
//! range_of_relabel_with_mapping_info: [200, 1000]
//! ```
//!
//! plus, optionally, `classes`, `categories` and `concepts` for a taxonomy
//! other than the built-in CamVid one, and the box rules' constants.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{CsiError, Result};

/// The largest config file read (it holds a few lines).
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The box proposers a relabeling entry can name as its method.
pub const METHODS: [&str; 1] = ["components"];

/// A class, by index or by name.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(untagged)]
pub enum ClassRef {
    /// Its label value.
    Index(usize),
    /// Its name in the taxonomy.
    Name(String),
}

/// A label space: class names in label order, the coarse categories a
/// relabeling stays within, and each class's concept strings (what the
/// detector and the classifier are asked about; CSI's
/// `cityscapes_classes_with_concept`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Taxonomy {
    /// Class names, index = label value.
    pub classes: Vec<String>,
    /// `(category, classes)`; every class in exactly one.
    pub categories: Vec<(String, Vec<usize>)>,
    /// Concept strings of each class (index = label value).
    pub concepts: Vec<Vec<String>>,
}

impl Taxonomy {
    /// CamVid's 11 classes, grouped as Cityscapes groups their counterparts
    /// (flat, construction, object, nature, sky, human, vehicle), with
    /// concept strings a classifier can be asked about.
    pub fn camvid() -> Self {
        let classes = semla_data::domains::classes::CAMVID_11;
        let concepts: [&[&str]; 11] = [
            &["sky"],
            &["building", "house", "shop"],
            &["pole", "flagpole"],
            &["road"],
            &["sidewalk"],
            &["tree"],
            &["street sign", "traffic light"],
            &["fence"],
            &["car", "van", "truck", "bus"],
            &["person"],
            &["bicycle", "scooter"],
        ];
        let categories: [(&str, &[usize]); 7] = [
            ("flat", &[3, 4]),
            ("construction", &[1, 7]),
            ("object", &[2, 6]),
            ("nature", &[5]),
            ("sky", &[0]),
            ("human", &[9, 10]),
            ("vehicle", &[8]),
        ];
        Self {
            classes: classes.iter().map(|c| c.to_string()).collect(),
            categories: categories
                .iter()
                .map(|(n, c)| (n.to_string(), c.to_vec()))
                .collect(),
            concepts: concepts
                .iter()
                .map(|c| c.iter().map(|s| s.to_string()).collect())
                .collect(),
        }
    }

    /// The label value of `class`.
    pub fn resolve(&self, class: &ClassRef) -> Result<usize> {
        match class {
            ClassRef::Index(i) if *i < self.classes.len() => Ok(*i),
            ClassRef::Index(i) => Err(CsiError::config(format!(
                "class {i} is outside the {} classes",
                self.classes.len()
            ))),
            ClassRef::Name(name) => self
                .classes
                .iter()
                .position(|c| c.eq_ignore_ascii_case(name))
                .ok_or_else(|| {
                    CsiError::config(format!(
                        "unknown class `{name}` (classes: {})",
                        self.classes.join(", ")
                    ))
                }),
        }
    }

    /// The category holding `class`.
    pub fn category_of(&self, class: usize) -> Option<usize> {
        self.categories.iter().position(|(_, c)| c.contains(&class))
    }

    /// Every concept string with the class that owns it, in class order
    /// (CSI's `mode='all_class'` list).
    pub fn all_concepts(&self) -> (Vec<String>, Vec<usize>) {
        let mut strings = Vec::new();
        let mut owners = Vec::new();
        for (class, concepts) in self.concepts.iter().enumerate() {
            for c in concepts {
                strings.push(c.clone());
                owners.push(class);
            }
        }
        (strings, owners)
    }

    /// The label table that makes a source's coarse labels from its fine
    /// ones (for [`semla_data::RemappedSource`]): each `(from, into)` of
    /// `merges` labels `from` as `into`; each class of `drops` becomes
    /// `ignore`; every other class keeps its label.
    pub fn coarse_label_map(
        &self,
        merges: &[(usize, usize)],
        drops: &[usize],
        ignore: u32,
    ) -> Vec<u32> {
        let mut map: Vec<u32> = (0..self.classes.len() as u32).collect();
        for &(from, into) in merges {
            if let Some(m) = map.get_mut(from) {
                *m = into as u32;
            }
        }
        for &d in drops {
            if let Some(m) = map.get_mut(d) {
                *m = ignore;
            }
        }
        map
    }

    /// Parses `"Bicyclist=Pedestrian,SignSymbol=Pole"` into `(from, into)` pairs.
    pub fn parse_merges(&self, text: &str) -> Result<Vec<(usize, usize)>> {
        text.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|pair| {
                let (from, into) = pair
                    .split_once('=')
                    .ok_or_else(|| CsiError::config(format!("`{pair}` is not FROM=INTO")))?;
                let from = self.resolve(&class_ref(from))?;
                let into = self.resolve(&class_ref(into))?;
                if from == into {
                    return Err(CsiError::config(format!(
                        "`{pair}` merges a class into itself"
                    )));
                }
                Ok((from, into))
            })
            .collect()
    }

    /// Parses `"Bicyclist,Car"` into classes.
    pub fn parse_classes(&self, text: &str) -> Result<Vec<usize>> {
        text.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|c| self.resolve(&class_ref(c)))
            .collect()
    }

    fn validate(&self) -> Result<()> {
        let n = self.classes.len();
        if n == 0 || self.concepts.len() != n {
            return Err(CsiError::config(format!(
                "{n} classes but {} concept lists",
                self.concepts.len()
            )));
        }
        for class in 0..n {
            let homes = self
                .categories
                .iter()
                .filter(|(_, c)| c.contains(&class))
                .count();
            if homes != 1 {
                return Err(CsiError::config(format!(
                    "class {} is in {homes} categories: each class needs exactly one",
                    self.classes[class]
                )));
            }
        }
        if let Some((name, _)) = self
            .categories
            .iter()
            .find(|(_, c)| c.iter().any(|&i| i >= n))
        {
            return Err(CsiError::config(format!(
                "category {name} names a class outside the {n}"
            )));
        }
        Ok(())
    }
}

/// A class written on a command line: an index or a name.
fn class_ref(text: &str) -> ClassRef {
    let text = text.trim();
    text.parse()
        .map_or_else(|_| ClassRef::Name(text.to_string()), ClassRef::Index)
}

/// A half-open step window `[start, end)`; `(-1, -1)` (the official "off") is empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Window {
    /// First step inside.
    pub start: i64,
    /// First step after.
    pub end: i64,
}

impl Window {
    /// The official "never".
    pub const OFF: Window = Window { start: -1, end: -1 };

    /// Whether step `t` is inside.
    pub fn contains(&self, t: usize) -> bool {
        self.start >= 0 && self.start <= t as i64 && (t as i64) < self.end
    }

    /// Whether it holds no step.
    pub fn is_empty(&self) -> bool {
        self.start < 0 || self.end <= self.start
    }
}

/// One resolved `relabeling_cfg` entry.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RelabelEntry {
    /// The class the relabeled pixels get.
    pub target: usize,
    /// The class whose pixels may be relabeled; `None`: discovered during
    /// the collect window.
    pub source: Option<usize>,
    /// The box proposer ([`METHODS`]).
    pub method: String,
    /// A box is kept when its score is above this (strictly).
    pub detection_threshold: f32,
    /// A box is kept when the classifier's restricted confidence is above
    /// this (strictly) and its class is the target; `None`: no classifier check.
    pub classifier_threshold: Option<f32>,
}

/// What the relabeling does at a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Nothing.
    Off,
    /// Count which classes the found boxes fall on.
    Collect,
    /// Relabel inside the found boxes.
    Relabel,
}

/// The whole relabeling configuration, resolved against its taxonomy.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CsiConfig {
    /// The label space.
    pub taxonomy: Taxonomy,
    /// The entries, in the file's order.
    pub entries: Vec<RelabelEntry>,
    /// `range_of_collect_mapping_info`.
    pub collect: Window,
    /// `range_of_relabel_with_mapping_info`.
    pub relabel: Window,
    /// Boxes narrower or shorter than this are dropped. Default 10.
    pub min_box_side_px: usize,
    /// Class-agnostic NMS overlap. Default 0.3.
    pub nms_iou: f32,
    /// A class is a box's source candidate when its share of the box's
    /// pseudo-label is above this. Default 0.5.
    pub class_ratio: f32,
}

/// `(method, detection threshold, classifier threshold)` as the file writes it.
type RawMethod = (String, f32, Option<f32>);

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    relabeling_cfg: Vec<(ClassRef, Option<ClassRef>, RawMethod)>,
    #[serde(default)]
    range_of_collect_mapping_info: Option<(i64, i64)>,
    #[serde(default)]
    range_of_relabel_with_mapping_info: Option<(i64, i64)>,
    #[serde(default)]
    classes: Option<Vec<String>>,
    #[serde(default)]
    categories: Option<BTreeMap<String, Vec<ClassRef>>>,
    #[serde(default)]
    concepts: Option<BTreeMap<String, Vec<String>>>,
    #[serde(default)]
    min_box_side_px: Option<usize>,
    #[serde(default)]
    nms_iou: Option<f32>,
    #[serde(default)]
    class_ratio: Option<f32>,
}

impl CsiConfig {
    /// A configuration over `taxonomy` with the official constants.
    pub fn new(
        taxonomy: Taxonomy,
        entries: Vec<RelabelEntry>,
        collect: Window,
        relabel: Window,
    ) -> Result<Self> {
        let config = Self {
            taxonomy,
            entries,
            collect,
            relabel,
            min_box_side_px: 10,
            nms_iou: 0.3,
            class_ratio: 0.5,
        };
        config.validate()?;
        Ok(config)
    }

    /// Reads the YAML form (see the module doc); `default_taxonomy` applies
    /// where the file names no `classes`.
    pub fn from_yaml(text: &str, default_taxonomy: &Taxonomy) -> Result<Self> {
        let raw: RawConfig = serde_norway::from_str(text)
            .map_err(|e| CsiError::config(format!("is not a relabeling config: {e}")))?;
        let mut taxonomy = default_taxonomy.clone();
        if let Some(classes) = raw.classes {
            taxonomy = Taxonomy {
                concepts: classes.iter().map(|c| vec![c.to_lowercase()]).collect(),
                categories: (0..classes.len())
                    .map(|i| (classes[i].clone(), vec![i]))
                    .collect(),
                classes,
            };
        }
        if let Some(categories) = raw.categories {
            taxonomy.categories = categories
                .into_iter()
                .map(|(name, classes)| {
                    let classes = classes
                        .iter()
                        .map(|c| taxonomy.resolve(c))
                        .collect::<Result<Vec<_>>>()?;
                    Ok((name, classes))
                })
                .collect::<Result<Vec<_>>>()?;
        }
        if let Some(concepts) = raw.concepts {
            for (class, strings) in concepts {
                let index = taxonomy.resolve(&ClassRef::Name(class))?;
                taxonomy.concepts[index] = strings;
            }
        }
        taxonomy.validate()?;
        let entries = raw
            .relabeling_cfg
            .iter()
            .map(|(target, source, (method, det, cls))| {
                Ok(RelabelEntry {
                    target: taxonomy.resolve(target)?,
                    source: source.as_ref().map(|s| taxonomy.resolve(s)).transpose()?,
                    method: method.clone(),
                    detection_threshold: *det,
                    classifier_threshold: *cls,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let window =
            |w: Option<(i64, i64)>| w.map_or(Window::OFF, |(start, end)| Window { start, end });
        let mut config = Self::new(
            taxonomy,
            entries,
            window(raw.range_of_collect_mapping_info),
            window(raw.range_of_relabel_with_mapping_info),
        )?;
        if let Some(v) = raw.min_box_side_px {
            config.min_box_side_px = v;
        }
        if let Some(v) = raw.nms_iou {
            config.nms_iou = v;
        }
        if let Some(v) = raw.class_ratio {
            config.class_ratio = v;
        }
        config.validate()?;
        Ok(config)
    }

    /// Reads a YAML file.
    pub fn from_file(path: &Path, default_taxonomy: &Taxonomy) -> Result<Self> {
        let with_origin = |e: CsiError| match e {
            CsiError::Config { message, .. } => CsiError::Config {
                origin: Some(path.display().to_string()),
                message,
            },
            other => other,
        };
        let in_file = |message: String| CsiError::Config {
            origin: Some(path.display().to_string()),
            message,
        };
        let bytes = std::fs::metadata(path)
            .map_err(|e| in_file(format!("cannot be read: {e}")))?
            .len();
        if bytes > MAX_CONFIG_BYTES {
            return Err(in_file(format!(
                "is {bytes} bytes; a relabeling config is at most {MAX_CONFIG_BYTES}"
            )));
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| in_file(format!("cannot be read: {e}")))?;
        Self::from_yaml(&text, default_taxonomy).map_err(with_origin)
    }

    /// What the relabeling does at step `t`: relabel wins where the windows
    /// meet (`collect.end == relabel.start` relabels at that step).
    pub fn phase(&self, t: usize) -> Phase {
        if self.relabel.contains(t) {
            Phase::Relabel
        } else if self.collect.contains(t) {
            Phase::Collect
        } else {
            Phase::Off
        }
    }

    /// Rejects what cannot run.
    pub fn validate(&self) -> Result<()> {
        self.taxonomy.validate()?;
        let n = self.taxonomy.classes.len();
        let name = |i: usize| self.taxonomy.classes.get(i).cloned().unwrap_or_default();
        if self.entries.is_empty() {
            return Err(CsiError::config("relabeling_cfg has no entries"));
        }
        for (i, entry) in self.entries.iter().enumerate() {
            if entry.target >= n || entry.source.is_some_and(|s| s >= n) {
                return Err(CsiError::config(format!(
                    "entry {i} names a class outside the {n}"
                )));
            }
            if self.entries[..i].iter().any(|e| e.target == entry.target) {
                return Err(CsiError::config(format!(
                    "two entries relabel into {}: one per target class",
                    name(entry.target)
                )));
            }
            if entry.source == Some(entry.target) {
                return Err(CsiError::config(format!(
                    "entry {i} relabels {} into itself",
                    name(entry.target)
                )));
            }
            if !METHODS.contains(&entry.method.as_str()) {
                return Err(CsiError::config(format!(
                    "entry {i} asks for the box proposer `{}`; this build has {} (no open-vocabulary detector weights can be loaded here)",
                    entry.method,
                    METHODS.join(", ")
                )));
            }
            let unit = |v: f32| v.is_finite() && (0.0..=1.0).contains(&v);
            if !unit(entry.detection_threshold) || !entry.classifier_threshold.is_none_or(unit) {
                return Err(CsiError::config(format!(
                    "entry {i}'s thresholds must be in [0, 1]"
                )));
            }
            if entry.source.is_none() && self.collect.is_empty() {
                return Err(CsiError::config(format!(
                    "entry {i} ({}) has no source class and the collect window is off: nothing would find one",
                    name(entry.target)
                )));
            }
            if self.taxonomy.concepts[entry.target].is_empty() {
                return Err(CsiError::config(format!(
                    "{} has no concept strings to detect it by",
                    name(entry.target)
                )));
            }
        }
        if !self.collect.is_empty()
            && !self.relabel.is_empty()
            && self.collect.end > self.relabel.start
        {
            return Err(CsiError::config(format!(
                "the collect window [{}, {}) must end by the relabel window's start {}",
                self.collect.start, self.collect.end, self.relabel.start
            )));
        }
        if self.min_box_side_px == 0
            || !(self.nms_iou.is_finite() && (0.0..=1.0).contains(&self.nms_iou))
            || !(self.class_ratio.is_finite() && (0.0..1.0).contains(&self.class_ratio))
        {
            return Err(CsiError::config(
                "min_box_side_px must be at least 1, nms_iou in [0, 1], class_ratio in [0, 1)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "
relabeling_cfg:
  - [Bicyclist, Pedestrian, [components, 0.1, 0.5]]
  - [6, 2, [components, 0.01, null]]
  - [Fence, null, [components, 0.1, 0.5]]
range_of_collect_mapping_info: [10, 20]
range_of_relabel_with_mapping_info: [20, 100]
";

    #[test]
    fn reads_the_official_tuple_form_by_name_or_index() {
        let config = CsiConfig::from_yaml(YAML, &Taxonomy::camvid()).unwrap();
        assert_eq!(config.entries.len(), 3);
        assert_eq!(config.entries[0].target, 10);
        assert_eq!(config.entries[0].source, Some(9));
        assert_eq!(config.entries[1].classifier_threshold, None);
        assert_eq!(config.entries[1].detection_threshold, 0.01);
        assert_eq!(config.entries[2].source, None);
        assert_eq!(config.min_box_side_px, 10);
        assert_eq!(config.nms_iou, 0.3);
    }

    #[test]
    fn windows_switch_exactly_where_they_meet() {
        let config = CsiConfig::from_yaml(YAML, &Taxonomy::camvid()).unwrap();
        assert_eq!(config.phase(9), Phase::Off);
        assert_eq!(config.phase(10), Phase::Collect);
        assert_eq!(config.phase(19), Phase::Collect);
        assert_eq!(config.phase(20), Phase::Relabel);
        assert_eq!(config.phase(99), Phase::Relabel);
        assert_eq!(config.phase(100), Phase::Off);
        assert!(!Window::OFF.contains(0));
    }

    #[test]
    fn rejects_what_cannot_run() {
        let camvid = Taxonomy::camvid();
        let bad = |text: &str| CsiConfig::from_yaml(text, &camvid).unwrap_err().to_string();
        // An open entry without a collect window (the official experiment 91's combination).
        assert!(
            bad("relabeling_cfg: [[Bicyclist, null, [components, 0.1, 0.5]]]\nrange_of_relabel_with_mapping_info: [0, 10]")
                .contains("collect window is off")
        );
        assert!(
            bad("relabeling_cfg: [[Bicyclist, Pedestrian, [owlvit, 0.1, 0.5]]]").contains("owlvit")
        );
        assert!(
            bad("relabeling_cfg: [[Unicorn, Pedestrian, [components, 0.1, 0.5]]]")
                .contains("unknown class")
        );
        assert!(bad("relabeling_cfg: [[40, 9, [components, 0.1, 0.5]]]").contains("outside"));
        assert!(
            bad("relabeling_cfg: [[Bicyclist, Pedestrian, [components, 1.5, 0.5]]]")
                .contains("[0, 1]")
        );
        assert!(
            bad("relabeling_cfg: [[Car, Car, [components, 0.1, 0.5]]]").contains("into itself")
        );
        assert!(bad(
            "relabeling_cfg: [[Car, null, [components, 0.1, 0.5]]]\nrange_of_collect_mapping_info: [0, 30]\nrange_of_relabel_with_mapping_info: [20, 40]"
        )
        .contains("must end"));
        assert!(bad("relabeling_cfg: []").contains("no entries"));
        assert!(bad("relabel: 3").contains("not a relabeling config"));
    }

    #[test]
    fn a_file_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("csi.yaml");
        std::fs::write(
            &path,
            "relabeling_cfg: [[Unicorn, 1, [components, 0.1, 0.5]]]",
        )
        .unwrap();
        let err = CsiConfig::from_file(&path, &Taxonomy::camvid())
            .unwrap_err()
            .to_string();
        assert!(err.contains("csi.yaml") && err.contains("Unicorn"), "{err}");
        let missing = CsiConfig::from_file(&dir.path().join("nope.yaml"), &Taxonomy::camvid())
            .unwrap_err()
            .to_string();
        assert!(missing.contains("nope.yaml"), "{missing}");
    }

    #[test]
    fn coarse_labels_merge_and_drop_classes() {
        let t = Taxonomy::camvid();
        let merges = t.parse_merges("Bicyclist=Pedestrian, 6=Pole").unwrap();
        assert_eq!(merges, vec![(10, 9), (6, 2)]);
        let drops = t.parse_classes("Fence").unwrap();
        let map = t.coarse_label_map(&merges, &drops, 11);
        assert_eq!(map, vec![0, 1, 2, 3, 4, 5, 2, 11, 8, 9, 9]);
        assert!(t.parse_merges("Bicyclist").is_err());
        assert!(t.parse_merges("Car=Car").is_err());
        assert!(t.parse_classes("Unicorn").is_err());
    }

    #[test]
    fn camvid_taxonomy_puts_every_class_in_one_category() {
        let t = Taxonomy::camvid();
        t.validate().unwrap();
        assert_eq!(t.category_of(10), t.category_of(9));
        assert_ne!(t.category_of(8), t.category_of(10));
        let (strings, owners) = t.all_concepts();
        assert_eq!(strings.len(), owners.len());
        assert_eq!(
            owners[strings.iter().position(|s| s == "bicycle").unwrap()],
            10
        );
    }
}
