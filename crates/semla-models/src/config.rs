//! Configurations of every segmenter kind: the `config.json` of a model folder,
//! tagged by `"kind"`. Plain data (no model code), so that the models and the
//! registry that builds them ([`crate::model_dir`]) both depend on it and not on
//! each other, as `configuration_*.py` and `modeling_*.py` are split in
//! transformers.

/// Configuration of any segmenter kind, as stored in a model folder's
/// `config.json`: `{"kind": "efficientnet-lite0-lraspp", "num_classes": 11, ...}`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind")]
pub enum SegmenterConfig {
    /// [`crate::efficientnet::EfficientLiteSeg`]: EfficientNet-Lite0 + LR-ASPP.
    #[serde(rename = "efficientnet-lite0-lraspp")]
    EfficientLite0(EfficientLiteSegConfig),
    /// [`crate::tiny::TinySeg`]: a few convolutions, for tests and demos.
    #[serde(rename = "tiny")]
    Tiny(TinySegConfig),
    /// [`crate::catseg::CatSeg`]: open-vocabulary CAT-Seg (its classes are an input).
    #[serde(rename = "catseg")]
    CatSeg(Box<crate::catseg::CatSegConfig>),
}

impl SegmenterConfig {
    /// Number of output classes.
    pub fn num_classes(&self) -> usize {
        match self {
            Self::EfficientLite0(c) => c.num_classes,
            Self::Tiny(c) => c.num_classes,
            Self::CatSeg(c) => c.class_names.len(),
        }
    }

    /// Whether the weight `name` (a checkpoint key) belongs to the model's
    /// head, the part trained on a frozen backbone: the LR-ASPP decoder
    /// (`decoder.*`) of EfficientNet-Lite0, everything after the tiny
    /// model's downsampling stages (`head`, `classifier`, `skip`), CAT-Seg's
    /// cost aggregator (`sem_seg_head.predictor.transformer.*`, CLIP frozen).
    pub fn is_head_weight(&self, name: &str) -> bool {
        match self {
            Self::EfficientLite0(_) => name.starts_with("decoder."),
            Self::Tiny(_) => ["head.", "classifier.", "skip."]
                .iter()
                .any(|p| name.starts_with(p)),
            Self::CatSeg(_) => {
                name.starts_with(crate::catseg::AGGREGATOR_PREFIX)
                    && name[crate::catseg::AGGREGATOR_PREFIX.len()..].starts_with('.')
            }
        }
    }

    /// Class names (may be empty).
    pub fn class_names(&self) -> &[String] {
        match self {
            Self::EfficientLite0(c) => &c.class_names,
            Self::Tiny(c) => &c.class_names,
            Self::CatSeg(c) => &c.class_names,
        }
    }
}

/// Configuration of [`crate::tiny::TinySeg`] (`"kind": "tiny"` in `config.json`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TinySegConfig {
    /// Number of output classes.
    pub num_classes: usize,
    /// Channels of the stem; the next stages have 2x and 4x (default 16).
    #[serde(default = "default_width")]
    pub width: usize,
    /// Optional class names, index = class id.
    #[serde(default)]
    pub class_names: Vec<String>,
}

fn default_width() -> usize {
    16
}

impl TinySegConfig {
    /// A configuration with the default width and no class names.
    pub fn new(num_classes: usize) -> Self {
        Self {
            num_classes,
            width: default_width(),
            class_names: Vec::new(),
        }
    }
}

/// Configuration of [`crate::efficientnet::EfficientLiteSeg`] (`config.json` of a model folder,
/// with `"kind": "efficientnet-lite0-lraspp"`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EfficientLiteSegConfig {
    /// Number of output classes.
    pub num_classes: usize,
    /// Width of the LR-ASPP pooled branch (default 128, as in MobileNetV3).
    #[serde(default = "default_decoder_channels")]
    pub decoder_channels: usize,
    /// Optional class names, index = class id.
    #[serde(default)]
    pub class_names: Vec<String>,
}

fn default_decoder_channels() -> usize {
    128
}

impl EfficientLiteSegConfig {
    /// A configuration with the default decoder width and no class names.
    pub fn new(num_classes: usize) -> Self {
        Self {
            num_classes,
            decoder_channels: default_decoder_channels(),
            class_names: Vec::new(),
        }
    }
}
