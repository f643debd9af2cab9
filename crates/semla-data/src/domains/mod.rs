//! Domains: a named set of (image, label map) pairs per split, with its classes, ignore
//! value and evaluator, resolved from SemLA's domain names under a dataset root.
//!
//! # Extension point
//!
//! A domain's files come from a [`DomainLayout`] (a trait object): it lists the pairs of
//! a split, the images used to build the domain's prototype, and loads a sample's photo
//! and label map (so a layout can also synthesise or corrupt images on the fly). Names
//! are turned into domains by the [`RESOLVERS`] list, tried in order: each resolver
//! returns `None` for names it does not own. To add a domain kind (e.g. the synthetic
//! world `synthetic/<style>` or corrupted CamVid `camvid/fog3`), write a layout and a
//! resolver in its own module and add the resolver to [`RESOLVERS`] *before* the
//! resolvers whose names it shadows ([`camvid::resolve`] only owns `camvid` and
//! `camvid/<sequence>` with a CamVid sequence name such as `0001TP`).
//!
//! # Dataset root
//!
//! Official layouts live under one root (`--data-root`, else the `DETECTRON2_DATASETS`
//! environment variable; a trailing slash is optional, unlike in the reference code).

pub mod camvid;
pub mod classes;
pub mod corrupted;
mod listing;
pub mod official;
pub mod palette;
pub mod synthetic;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use crate::image_io::read_rgb;
use crate::labels::{LabelEncoding, LabelError, LabelMap};
pub use palette::Palette;

/// Errors resolving a domain or listing its files.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// Neither `--data-root` nor `DETECTRON2_DATASETS` gives a dataset root.
    #[error(
        "no dataset root: pass --data-root or set the DETECTRON2_DATASETS environment variable"
    )]
    NoDataRoot,
    /// No resolver owns this name.
    #[error("unknown domain `{name}`; known domains: {known}")]
    UnknownDomain {
        /// The name asked for.
        name: String,
        /// The names (or patterns) that exist.
        known: String,
    },
    /// A folder the layout needs does not exist.
    #[error("missing folder {path} (expected layout: {layout})")]
    MissingFolder {
        /// The folder expected.
        path: PathBuf,
        /// The layout, described.
        layout: String,
    },
    /// A file the layout needs does not exist.
    #[error("missing file {path} (expected layout: {layout})")]
    MissingFile {
        /// The file expected.
        path: PathBuf,
        /// The layout, described.
        layout: String,
    },
    /// An image has no label map where the naming rule puts it.
    #[error("image {image} has no label map: expected {label} (expected layout: {layout})")]
    MissingLabel {
        /// The image.
        image: PathBuf,
        /// The label path expected (the first candidate).
        label: PathBuf,
        /// The layout, described.
        layout: String,
    },
    /// A split file has a line that does not follow its format.
    #[error("{path}:{line}: {message}")]
    SplitFile {
        /// The split file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A directory could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The folder or file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A label map or photo could not be read.
    #[error(transparent)]
    Label(#[from] LabelError),
}

/// A dataset split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Training split (adapter training; prototypes come from [`Domain::train_images`]).
    Train,
    /// Validation split: what SemLA evaluates on.
    Val,
    /// Test split (labels often withheld).
    Test,
}

impl Split {
    /// Every split, in the order train, val, test.
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    /// `train`, `val` or `test`.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "train" | "training" => Ok(Split::Train),
            "val" | "validation" => Ok(Split::Val),
            "test" | "testing" => Ok(Split::Test),
            other => Err(format!(
                "unknown split `{other}` (expected train, val or test)"
            )),
        }
    }
}

/// Which mIoU definition the domain's official evaluator uses (see `semla-metrics`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EvaluatorKind {
    /// cityscapesScripts (Cityscapes, ACDC, MUSES): a class predicted but absent from the
    /// ground truth counts with IoU 0.
    CityscapesScript,
    /// detectron2 `SemSegEvaluator` (BDD, MV, ADE, IDD, PC59, NYU, COCONut): classes absent
    /// from the ground truth are left out.
    Detectron2,
}

/// One image and its label map.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ImagePair {
    /// The photo.
    pub image: PathBuf,
    /// The label map.
    pub label: PathBuf,
    /// How the label file's values map to class indices.
    pub encoding: LabelEncoding,
}

/// Where a domain's files come from. Implement it to add a domain kind (see the module
/// documentation).
pub trait DomainLayout: fmt::Debug + Send + Sync {
    /// The expected layout in words (with paths), for error messages and `data stats`.
    fn describe(&self) -> String;

    /// The (image, label) pairs of `split`, sorted deterministically.
    fn pairs(&self, split: Split) -> Result<Vec<ImagePair>, DomainError>;

    /// The images SemLA averages into the domain's prototype (its "embedding dir"). Some
    /// datasets use a different folder for this than for evaluation. Defaults to the
    /// training split's images.
    fn train_images(&self) -> Result<Vec<PathBuf>, DomainError> {
        Ok(self
            .pairs(Split::Train)?
            .into_iter()
            .map(|s| s.image)
            .collect())
    }

    /// Loads a sample's photo as 8-bit RGB, `[H, W, 3]`. Layouts that transform images
    /// (corruptions, rendering) override this.
    fn load_image(&self, sample: &ImagePair) -> Result<image::RgbImage, DomainError> {
        Ok(read_rgb(&sample.image)?)
    }

    /// Loads a sample's label map as class indices (ignore value for unlabelled pixels).
    fn load_label(&self, sample: &ImagePair) -> Result<LabelMap, DomainError> {
        Ok(sample.encoding.read(&sample.label)?)
    }
}

/// A domain: its name, classes, ignore value, evaluator and the layout of its files.
/// Cheap to clone (the layout is shared).
#[derive(Clone, Debug)]
pub struct Domain {
    /// The name it was resolved from (e.g. `acdc-fog`, `camvid/0001TP`).
    pub name: String,
    /// Class names in class-index order.
    pub classes: Vec<String>,
    /// The label value that marks pixels excluded from training and evaluation.
    pub ignore_value: u16,
    /// The official evaluator's mIoU definition.
    pub evaluator: EvaluatorKind,
    /// The colours used to display its label maps.
    pub palette: Palette,
    /// Where its files come from.
    pub layout: Arc<dyn DomainLayout>,
}

impl Domain {
    /// Number of classes (`K`); class indices are `0..K`.
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// The (image, label) pairs of `split`, sorted.
    pub fn pairs(&self, split: Split) -> Result<Vec<ImagePair>, DomainError> {
        self.layout.pairs(split)
    }

    /// The images averaged into the domain's prototype.
    pub fn train_images(&self) -> Result<Vec<PathBuf>, DomainError> {
        self.layout.train_images()
    }

    /// Loads a sample's photo, `[H, W, 3]` RGB.
    pub fn load_image(&self, sample: &ImagePair) -> Result<image::RgbImage, DomainError> {
        self.layout.load_image(sample)
    }

    /// Loads a sample's label map as class indices.
    pub fn load_label(&self, sample: &ImagePair) -> Result<LabelMap, DomainError> {
        self.layout.load_label(sample)
    }
}

/// A resolver turns a domain name into a domain, or returns `None` for names it does not
/// own. `data_root` is the dataset root.
pub type Resolver = fn(name: &str, data_root: &Path) -> Option<Result<Domain, DomainError>>;

/// The resolvers [`resolve_domain`] tries, in order. Add new domain kinds here.
pub const RESOLVERS: &[Resolver] = &[
    official::resolve,
    corrupted::resolve,
    camvid::resolve,
    synthetic::resolve,
];

/// The names and name patterns known, for error messages.
pub const KNOWN_DOMAINS: &str = "cs-normal, acdc-{fog,night,rain,snow}, \
muses-{clear,rain,fog,snow}-{day,night}, bdd, mv, a150, idd, pc59, nyu, coconutL, \
camvid, camvid/<sequence> (e.g. camvid/0001TP), camvid/day, camvid/dusk, \
camvid/<corruption><severity> (e.g. camvid/fog3; also spelt camvid-fog3), synthetic-<style> (e.g. synthetic-fog)";

/// Resolves a domain name under `data_root` (see the module documentation).
pub fn resolve_domain(name: &str, data_root: &Path) -> Result<Domain, DomainError> {
    RESOLVERS
        .iter()
        .find_map(|resolver| resolver(name, data_root))
        .unwrap_or_else(|| {
            Err(DomainError::UnknownDomain {
                name: name.to_string(),
                known: KNOWN_DOMAINS.to_string(),
            })
        })
}

/// The dataset root: `explicit` if given, else `DETECTRON2_DATASETS` (empty counts as
/// unset). A trailing slash makes no difference.
pub fn data_root(explicit: Option<&Path>) -> Result<PathBuf, DomainError> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    match std::env::var_os("DETECTRON2_DATASETS") {
        Some(value) if !value.is_empty() => Ok(PathBuf::from(value)),
        _ => Err(DomainError::NoDataRoot),
    }
}
