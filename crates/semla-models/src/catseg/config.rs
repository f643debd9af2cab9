//! CAT-Seg's configuration: every dimension of the model and of its inference,
//! with the official defaults, read from the official detectron2 YAML files
//! (`_BASE_` inheritance) and the checkpoint's tensor shapes as the official
//! code and OpenAI CLIP's `build_model` take them.
//!
//! Where the official code hard-codes a value for the two released CLIPs (head
//! counts `width / 64`, guidance layers `[7, 15]` or `[3, 7]`, the CLIP input
//! resolution), a YAML file may state it for other sizes (tiny test models) with
//! three keys under `MODEL.SEM_SEG_HEAD` that the official code does not have:
//! `CLIP_VISION_HEADS`, `CLIP_TEXT_HEADS`, `CLIP_GUIDANCE_LAYERS` (0-based block
//! indices).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_norway::Value;

/// `MODEL.CLIP_PIXEL_MEAN`: OpenAI CLIP's mean on 0..255 values.
pub const CLIP_PIXEL_MEAN: [f32; 3] = [122.770_94, 116.746_01, 104.093_735];
/// `MODEL.CLIP_PIXEL_STD`: OpenAI CLIP's standard deviation on 0..255 values.
pub const CLIP_PIXEL_STD: [f32; 3] = [68.500_53, 66.632_16, 70.323_16];
/// The prompt of `PROMPT_ENSEMBLE_TYPE single`.
pub const SINGLE_TEMPLATE: &str = "A photo of a {} in the scene";
/// The `CLIP_PRETRAINED` name of CAT-Seg B; every other name is treated like L,
/// as the official code does.
pub const VIT_B16: &str = "ViT-B/16";

/// The CLIP towers' dimensions (OpenAI layout), as `build_model` reads them from
/// the checkpoint's shapes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CatSegClipConfig {
    /// Visual width (`visual.conv1.weight` rows): 1024 for L, 768 for B.
    pub vision_width: usize,
    /// Visual blocks (24 for L, 12 for B).
    pub vision_layers: usize,
    /// Visual attention heads (`vision_width / 64` in the official code).
    pub vision_heads: usize,
    /// Patch size (14 for L, 16 for B).
    pub patch_size: usize,
    /// Side of the pretrained position grid (`sqrt(rows of visual.positional_embedding - 1)`):
    /// 24 for L@336, 14 for B@224 (resized bicubically to the dense grid).
    pub pretrained_grid: usize,
    /// Joint embedding width (`text_projection` columns): 768 for L, 512 for B.
    pub embed_dim: usize,
    /// Text width (`ln_final.weight`): 768 for L, 512 for B.
    pub text_width: usize,
    /// Text blocks (12).
    pub text_layers: usize,
    /// Text attention heads (`text_width / 64` in the official code).
    pub text_heads: usize,
    /// Context length (`positional_embedding` rows): 77.
    pub context_length: usize,
    /// Vocabulary size (`token_embedding.weight` rows): 49408.
    pub vocab_size: usize,
}

/// CAT-Seg (the `CATSeg` meta-architecture, its CLIP and its cost aggregator) and
/// its sliding-window inference. `"kind": "catseg"` in a model folder's `config.json`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CatSegConfig {
    /// `MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED` (`ViT-L/14@336px` or `ViT-B/16`).
    pub clip_pretrained: String,
    /// The CLIP towers.
    pub clip: CatSegClipConfig,
    /// Side of the square CLIP input (`clip_resolution`: 384 for B/16, else 336).
    pub clip_resolution: usize,
    /// 0-based visual blocks whose outputs guide the decoder (`[7, 15]`, B: `[3, 7]`).
    pub guidance_layers: [usize; 2],
    /// `TEXT_GUIDANCE_DIM` (= the joint embedding width).
    pub text_guidance_dim: usize,
    /// `TEXT_GUIDANCE_PROJ_DIM` (128).
    pub text_guidance_proj_dim: usize,
    /// `APPEARANCE_GUIDANCE_DIM` (= the joint embedding width).
    pub appearance_guidance_dim: usize,
    /// `APPEARANCE_GUIDANCE_PROJ_DIM` (128).
    pub appearance_guidance_proj_dim: usize,
    /// `DECODER_DIMS` ([64, 32]; multiples of 16, GroupNorm has `dim / 16` groups).
    pub decoder_dims: [usize; 2],
    /// `DECODER_GUIDANCE_DIMS`: channels of `upsample1` / `upsample2` ([256, 128]).
    pub decoder_guidance_dims: [usize; 2],
    /// `DECODER_GUIDANCE_PROJ_DIMS` ([32, 16]).
    pub decoder_guidance_proj_dims: [usize; 2],
    /// `NUM_LAYERS`: aggregator layers (2 in the released configs).
    pub num_layers: usize,
    /// `NUM_HEADS` of the aggregator's attentions (4).
    pub num_heads: usize,
    /// `HIDDEN_DIMS` of the aggregator (128).
    pub hidden_dim: usize,
    /// `POOLING_SIZES` of the class aggregation ([1, 1] at SemLA's inference; the
    /// YAML files say [2, 2]).
    pub pooling_sizes: [usize; 2],
    /// `FEATURE_RESOLUTION` ([24, 24]): the dense CLIP token grid.
    pub feature_resolution: [usize; 2],
    /// `WINDOW_SIZES` of the spatial Swin blocks (12).
    pub window_size: usize,
    /// The aggregator's class padding length (256, a constructor default of the
    /// official code): fewer classes are padded with learned tokens.
    pub pad_len: usize,
    /// The text prompt (`{}` is the class name).
    pub prompt_template: String,
    /// `TEST.SLIDING_WINDOW` (true at SemLA's inference).
    pub sliding_window: bool,
    /// Apply LoRA updates of the CLIP attention's `q_proj` / `k_proj` / `v_proj`
    /// sites. The official attention reads the base weights directly, so these
    /// adapters are inert there; `false` (the default) reproduces that.
    #[serde(default)]
    pub apply_qkv_lora: bool,
    /// The class names the model segments (an input of open-vocabulary CAT-Seg,
    /// replaced per run with `--classes`).
    #[serde(default)]
    pub class_names: Vec<String>,
}

/// Errors reading a CAT-Seg configuration.
#[derive(Debug, thiserror::Error)]
pub enum CatSegConfigError {
    /// The file could not be read.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// The file is not YAML, or a key has the wrong type.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The checkpoint's tensors do not describe a CAT-Seg model.
    #[error("{0}")]
    Checkpoint(String),
}

impl CatSegConfig {
    /// The official aggregator and inference settings of `vitl_336.yaml` with
    /// SemLA's inference overrides (`POOLING_SIZES [1, 1]`, `SLIDING_WINDOW True`),
    /// on the CLIP given.
    pub fn official(clip_pretrained: &str, clip: CatSegClipConfig) -> Self {
        let is_b16 = clip_pretrained == VIT_B16;
        Self {
            clip_pretrained: clip_pretrained.to_string(),
            clip_resolution: if is_b16 { 384 } else { 336 },
            guidance_layers: if is_b16 { [3, 7] } else { [7, 15] },
            text_guidance_dim: clip.embed_dim,
            text_guidance_proj_dim: 128,
            appearance_guidance_dim: clip.embed_dim,
            appearance_guidance_proj_dim: 128,
            decoder_dims: [64, 32],
            decoder_guidance_dims: [256, 128],
            decoder_guidance_proj_dims: [32, 16],
            num_layers: 2,
            num_heads: 4,
            hidden_dim: 128,
            pooling_sizes: [1, 1],
            feature_resolution: [24, 24],
            window_size: 12,
            pad_len: 256,
            prompt_template: SINGLE_TEMPLATE.to_string(),
            sliding_window: true,
            apply_qkv_lora: false,
            class_names: Vec::new(),
            clip,
        }
    }

    /// CAT-Seg L: CLIP ViT-L/14@336px.
    pub fn vitl_336() -> Self {
        Self::official(
            "ViT-L/14@336px",
            CatSegClipConfig {
                vision_width: 1024,
                vision_layers: 24,
                vision_heads: 16,
                patch_size: 14,
                pretrained_grid: 24,
                embed_dim: 768,
                text_width: 768,
                text_layers: 12,
                text_heads: 12,
                context_length: 77,
                vocab_size: 49408,
            },
        )
    }

    /// CAT-Seg B: CLIP ViT-B/16 (pretrained at 224 px, run at 384).
    pub fn vitb_384() -> Self {
        Self::official(
            VIT_B16,
            CatSegClipConfig {
                vision_width: 768,
                vision_layers: 12,
                vision_heads: 12,
                patch_size: 16,
                pretrained_grid: 14,
                embed_dim: 512,
                text_width: 512,
                text_layers: 12,
                text_heads: 8,
                context_length: 77,
                vocab_size: 49408,
            },
        )
    }

    /// The configuration of an official YAML file (with its `_BASE_` chain) for
    /// a checkpoint whose tensor shapes are `shapes` (keys with or without the
    /// `sem_seg_head.predictor.clip_model.` prefix as in the checkpoint), with
    /// SemLA's inference overrides applied (`POOLING_SIZES [1, 1]`, sliding window).
    pub fn from_yaml(
        path: &Path,
        shapes: &HashMap<String, Vec<usize>>,
    ) -> Result<Self, CatSegConfigError> {
        let yaml = read_yaml_with_bases(path, 0)?;
        let invalid = |message: String| CatSegConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let head = |key: &str| lookup(&yaml, &["MODEL", "SEM_SEG_HEAD", key]);
        let usize_key = |key: &str| -> Result<Option<usize>, CatSegConfigError> {
            head(key)
                .map(|v| {
                    v.as_u64()
                        .map(|n| n as usize)
                        .ok_or_else(|| invalid(format!("MODEL.SEM_SEG_HEAD.{key} is not a count")))
                })
                .transpose()
        };
        let pair_key = |key: &str| -> Result<Option<[usize; 2]>, CatSegConfigError> {
            head(key)
                .map(|v| {
                    let list: Option<Vec<usize>> = v.as_sequence().map(|s| {
                        s.iter()
                            .filter_map(|x| x.as_u64().map(|n| n as usize))
                            .collect()
                    });
                    match list.as_deref() {
                        Some(&[a, b]) => Ok([a, b]),
                        _ => Err(invalid(format!(
                            "MODEL.SEM_SEG_HEAD.{key} is not a list of two counts"
                        ))),
                    }
                })
                .transpose()
        };
        let clip_pretrained = match head("CLIP_PRETRAINED") {
            Some(v) => v
                .as_str()
                .ok_or_else(|| {
                    invalid("MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED is not a string".into())
                })?
                .to_string(),
            // The default of the official `add_cat_seg_config`.
            None => VIT_B16.to_string(),
        };
        let vision_heads = usize_key("CLIP_VISION_HEADS")?;
        let text_heads = usize_key("CLIP_TEXT_HEADS")?;
        let clip = CatSegClipConfig::from_shapes(shapes, vision_heads, text_heads)
            .map_err(CatSegConfigError::Checkpoint)?;
        let mut config = Self::official(&clip_pretrained, clip);
        // The defaults of the official `add_cat_seg_config` where the YAML is silent.
        config.text_guidance_dim = usize_key("TEXT_GUIDANCE_DIM")?.unwrap_or(512);
        config.appearance_guidance_dim = usize_key("APPEARANCE_GUIDANCE_DIM")?.unwrap_or(512);
        config.text_guidance_proj_dim = usize_key("TEXT_GUIDANCE_PROJ_DIM")?.unwrap_or(128);
        config.appearance_guidance_proj_dim =
            usize_key("APPEARANCE_GUIDANCE_PROJ_DIM")?.unwrap_or(128);
        config.decoder_dims = pair_key("DECODER_DIMS")?.unwrap_or([64, 32]);
        config.decoder_guidance_dims = pair_key("DECODER_GUIDANCE_DIMS")?.unwrap_or([256, 128]);
        config.decoder_guidance_proj_dims =
            pair_key("DECODER_GUIDANCE_PROJ_DIMS")?.unwrap_or([32, 16]);
        config.num_layers = usize_key("NUM_LAYERS")?.unwrap_or(4);
        config.num_heads = usize_key("NUM_HEADS")?.unwrap_or(4);
        config.hidden_dim = usize_key("HIDDEN_DIMS")?.unwrap_or(128);
        config.feature_resolution = pair_key("FEATURE_RESOLUTION")?.unwrap_or([24, 24]);
        config.window_size = usize_key("WINDOW_SIZES")?.unwrap_or(12);
        // POOLING_SIZES and TEST.SLIDING_WINDOW: SemLA's `get_domain_args`
        // overrides them to [1, 1] and True for every experiment.
        config.pooling_sizes = [1, 1];
        config.sliding_window = true;
        if let Some(v) = head("CLIP_GUIDANCE_LAYERS") {
            let list: Option<Vec<usize>> = v.as_sequence().map(|s| {
                s.iter()
                    .filter_map(|x| x.as_u64().map(|n| n as usize))
                    .collect()
            });
            config.guidance_layers = match list.as_deref() {
                Some(&[a, b]) => [a, b],
                _ => {
                    return Err(invalid(
                        "MODEL.SEM_SEG_HEAD.CLIP_GUIDANCE_LAYERS is not a list of two block indices"
                            .into(),
                    ));
                }
            };
        }
        if let Some(v) = head("ATTENTION_TYPE")
            && v.as_str() != Some("linear")
        {
            return Err(invalid(format!(
                "MODEL.SEM_SEG_HEAD.ATTENTION_TYPE {v:?}: only \"linear\" (every released model) is supported"
            )));
        }
        for key in ["PROMPT_DEPTH", "PROMPT_LENGTH"] {
            if usize_key(key)?.unwrap_or(0) != 0 {
                return Err(invalid(format!(
                    "MODEL.SEM_SEG_HEAD.{key} > 0: visual prompt tuning is not supported (every released model has 0)"
                )));
            }
        }
        if let Some(v) = lookup(&yaml, &["MODEL", "PROMPT_ENSEMBLE_TYPE"])
            && v.as_str() != Some("single")
        {
            return Err(invalid(format!(
                "MODEL.PROMPT_ENSEMBLE_TYPE {v:?}: only \"single\" works at inference in the official code"
            )));
        }
        config.decoder_guidance_dims =
            upsampler_channels(shapes).unwrap_or(config.decoder_guidance_dims);
        config.validate().map_err(invalid)?;
        Ok(config)
    }

    /// The configuration a checkpoint's shapes imply when no YAML file is given:
    /// the CLIP from its shapes (`ViT-B/16` when the patch is 16 and the width 768,
    /// else L), every aggregator width from its tensors, the official heads (4),
    /// window (12) and grid (24), SemLA's inference overrides.
    pub fn from_checkpoint(
        shapes: &HashMap<String, Vec<usize>>,
    ) -> Result<Self, CatSegConfigError> {
        let clip = CatSegClipConfig::from_shapes(shapes, None, None)
            .map_err(CatSegConfigError::Checkpoint)?;
        let name = if clip.patch_size == 16 && clip.vision_width == 768 {
            VIT_B16
        } else {
            "ViT-L/14@336px"
        };
        let mut config = Self::official(name, clip);
        let p = "sem_seg_head.predictor.transformer.";
        let dim = |key: &str, axis: usize| -> Result<usize, CatSegConfigError> {
            shapes
                .get(&format!("{p}{key}"))
                .and_then(|s| s.get(axis).copied())
                .ok_or_else(|| {
                    CatSegConfigError::Checkpoint(format!(
                        "the checkpoint has no tensor {p}{key}: not a CAT-Seg model"
                    ))
                })
        };
        config.hidden_dim = dim("conv1.weight", 0)?;
        config.appearance_guidance_proj_dim = dim("guidance_projection.0.weight", 0)?;
        config.appearance_guidance_dim = dim("guidance_projection.0.weight", 1)?;
        config.text_guidance_proj_dim = dim("text_guidance_projection.0.weight", 0)?;
        config.text_guidance_dim = dim("text_guidance_projection.0.weight", 1)?;
        config.decoder_dims = [
            dim("decoder1.conv.double_conv.0.weight", 0)?,
            dim("decoder2.conv.double_conv.0.weight", 0)?,
        ];
        config.decoder_guidance_proj_dims = [
            dim("decoder_guidance_projection.0.0.weight", 0)?,
            dim("decoder_guidance_projection.1.0.weight", 0)?,
        ];
        config.num_layers = (0..)
            .take_while(|i| shapes.contains_key(&format!("{p}layers.{i}.attention.norm1.weight")))
            .count();
        config.decoder_guidance_dims =
            upsampler_channels(shapes).unwrap_or(config.decoder_guidance_dims);
        config.validate().map_err(|message| {
            CatSegConfigError::Checkpoint(format!(
                "{message} (give the official YAML with --catseg-config)"
            ))
        })?;
        Ok(config)
    }

    /// Checks the relations between dimensions that the model's shapes rely on.
    pub fn validate(&self) -> Result<(), String> {
        let c = &self.clip;
        let checks: [(bool, String); 8] = [
            (
                c.vision_heads > 0 && c.vision_width.is_multiple_of(c.vision_heads),
                format!(
                    "visual width {} is not a multiple of {} heads",
                    c.vision_width, c.vision_heads
                ),
            ),
            (
                c.text_heads > 0 && c.text_width.is_multiple_of(c.text_heads),
                format!(
                    "text width {} is not a multiple of {} heads",
                    c.text_width, c.text_heads
                ),
            ),
            (
                self.guidance_layers
                    .iter()
                    .all(|&l| l + 1 < c.vision_layers),
                format!(
                    "guidance layers {:?} must be blocks before the last of {} (set CLIP_GUIDANCE_LAYERS)",
                    self.guidance_layers, c.vision_layers
                ),
            ),
            (
                self.num_heads > 0 && self.hidden_dim.is_multiple_of(self.num_heads),
                format!(
                    "hidden dim {} is not a multiple of {} heads",
                    self.hidden_dim, self.num_heads
                ),
            ),
            (
                self.decoder_dims
                    .iter()
                    .all(|d| d.is_multiple_of(16) && *d > 0),
                format!(
                    "decoder dims {:?} must be positive multiples of 16",
                    self.decoder_dims
                ),
            ),
            (
                self.hidden_dim > self.decoder_guidance_proj_dims[0]
                    && self.decoder_dims[0] > self.decoder_guidance_proj_dims[1],
                "decoder guidance projections must be narrower than the decoder inputs".into(),
            ),
            (
                self.clip_resolution.is_multiple_of(c.patch_size)
                    && self.clip_resolution / c.patch_size == self.feature_resolution[0]
                    && self.feature_resolution[0] == self.feature_resolution[1],
                format!(
                    "CLIP input {} with patch {} does not give the {:?} feature grid",
                    self.clip_resolution, c.patch_size, self.feature_resolution
                ),
            ),
            (
                self.window_size > 0
                    && self.feature_resolution[0].is_multiple_of(self.window_size)
                    && self
                        .pooling_sizes
                        .iter()
                        .all(|&p| p > 0 && self.feature_resolution[0].is_multiple_of(p)),
                format!(
                    "window {} and pooling {:?} must divide the feature grid {:?}",
                    self.window_size, self.pooling_sizes, self.feature_resolution
                ),
            ),
        ];
        match checks.into_iter().find(|(ok, _)| !ok) {
            Some((_, message)) => Err(message),
            None => Ok(()),
        }
    }

    /// The classes with the prompt of `PROMPT_ENSEMBLE_TYPE single`: a name with
    /// `", "` keeps only its first alternative, as the official `get_text_embeds`.
    pub fn prompts(&self, classes: &[String]) -> Vec<String> {
        classes
            .iter()
            .map(|name| {
                let first = name.split(", ").next().unwrap_or(name);
                self.prompt_template.replace("{}", first)
            })
            .collect()
    }
}

impl CatSegClipConfig {
    /// The towers' dimensions from the checkpoint's tensor shapes, as OpenAI's
    /// `build_model`: heads are `width / 64` unless given.
    pub fn from_shapes(
        shapes: &HashMap<String, Vec<usize>>,
        vision_heads: Option<usize>,
        text_heads: Option<usize>,
    ) -> Result<Self, String> {
        let get = |key: &str| -> Result<&Vec<usize>, String> {
            shapes
                .get(&format!("{CLIP_PREFIX}{key}"))
                .or_else(|| shapes.get(key))
                .ok_or_else(|| {
                    format!("the checkpoint has no tensor {CLIP_PREFIX}{key}: not a CAT-Seg model")
                })
        };
        let dim = |key: &str, axis: usize| -> Result<usize, String> {
            get(key)?
                .get(axis)
                .copied()
                .ok_or_else(|| format!("tensor {CLIP_PREFIX}{key} has too few dimensions"))
        };
        let count_blocks = |tower: &str| -> usize {
            let marker = format!("{tower}transformer.resblocks.");
            let mut max = None;
            for key in shapes.keys() {
                let key = key.strip_prefix(CLIP_PREFIX).unwrap_or(key);
                if let Some(rest) = key.strip_prefix(&marker)
                    && let Some((index, tail)) = rest.split_once('.')
                    && tail == "attn.in_proj_bias"
                    && let Ok(i) = index.parse::<usize>()
                {
                    max = Some(max.map_or(i, |m: usize| m.max(i)));
                }
            }
            max.map_or(0, |m| m + 1)
        };
        let vision_width = dim("visual.conv1.weight", 0)?;
        let patch_size = dim("visual.conv1.weight", 2)?;
        let positions = dim("visual.positional_embedding", 0)?;
        let pretrained_grid = ((positions.saturating_sub(1)) as f64).sqrt().round() as usize;
        if pretrained_grid * pretrained_grid + 1 != positions {
            return Err(format!(
                "visual.positional_embedding has {positions} rows: not a square grid plus the class token"
            ));
        }
        let text_width = dim("ln_final.weight", 0)?;
        let config = Self {
            vision_width,
            vision_layers: count_blocks("visual."),
            vision_heads: vision_heads.unwrap_or(vision_width / 64),
            patch_size,
            pretrained_grid,
            embed_dim: dim("text_projection", 1)?,
            text_width,
            text_layers: count_blocks(""),
            text_heads: text_heads.unwrap_or(text_width / 64),
            context_length: dim("positional_embedding", 0)?,
            vocab_size: dim("token_embedding.weight", 0)?,
        };
        if config.vision_layers == 0 || config.text_layers == 0 {
            return Err("the checkpoint has no CLIP transformer blocks (attn.in_proj_bias)".into());
        }
        Ok(config)
    }
}

/// Where CAT-Seg keeps its CLIP in the checkpoint.
pub const CLIP_PREFIX: &str = "sem_seg_head.predictor.clip_model.";

/// `[upsample1 out, upsample2 out]` channels from the checkpoint (ConvTranspose
/// weights are `[in, out, k, k]`).
fn upsampler_channels(shapes: &HashMap<String, Vec<usize>>) -> Option<[usize; 2]> {
    let out = |key: &str| shapes.get(key).and_then(|s| s.get(1).copied());
    Some([out("upsample1.weight")?, out("upsample2.weight")?])
}

/// The value at `path` in nested mappings.
fn lookup<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(*key))
}

/// Deepest `_BASE_` chain accepted (detectron2 has no limit; a cycle must end).
const MAX_BASE_DEPTH: usize = 16;

/// A YAML config with its `_BASE_` files merged under it, as detectron2's
/// `CfgNode.load_yaml_with_base`: the base (relative to the file's folder) is
/// loaded first and the file's mappings are merged over it key by key.
fn read_yaml_with_bases(path: &Path, depth: usize) -> Result<Value, CatSegConfigError> {
    let invalid = |message: String| CatSegConfigError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    if depth > MAX_BASE_DEPTH {
        return Err(invalid(
            "the _BASE_ chain is deeper than 16 files (a cycle?)".into(),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|cause| CatSegConfigError::Io {
        path: path.to_path_buf(),
        cause,
    })?;
    let mut value: Value =
        serde_norway::from_str(&text).map_err(|e| invalid(format!("not valid YAML: {e}")))?;
    if value.is_null() {
        value = Value::Mapping(Default::default());
    }
    let Value::Mapping(map) = &mut value else {
        return Err(invalid("the top level is not a mapping".into()));
    };
    let Some(base) = map.remove("_BASE_") else {
        return Ok(value);
    };
    let base = base
        .as_str()
        .ok_or_else(|| invalid("_BASE_ is not a file name".into()))?;
    let base_path = path.parent().unwrap_or(Path::new(".")).join(base);
    let mut merged = read_yaml_with_bases(&base_path, depth + 1)?;
    merge_over(&mut merged, value);
    Ok(merged)
}

/// Merges `top` over `base`: mappings key by key, anything else replaced.
fn merge_over(base: &mut Value, top: Value) {
    match (base, top) {
        (Value::Mapping(base), Value::Mapping(top)) => {
            for (key, value) in top {
                match base.get_mut(&key) {
                    Some(existing) => merge_over(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, top) => *base = top,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l_shapes() -> HashMap<String, Vec<usize>> {
        let mut shapes = HashMap::new();
        let p = CLIP_PREFIX;
        shapes.insert(format!("{p}visual.conv1.weight"), vec![1024, 3, 14, 14]);
        shapes.insert(format!("{p}visual.positional_embedding"), vec![577, 1024]);
        shapes.insert(format!("{p}ln_final.weight"), vec![768]);
        shapes.insert(format!("{p}text_projection"), vec![768, 768]);
        shapes.insert(format!("{p}positional_embedding"), vec![77, 768]);
        shapes.insert(format!("{p}token_embedding.weight"), vec![49408, 768]);
        for i in 0..24 {
            shapes.insert(
                format!("{p}visual.transformer.resblocks.{i}.attn.in_proj_bias"),
                vec![3072],
            );
        }
        for i in 0..12 {
            shapes.insert(
                format!("{p}transformer.resblocks.{i}.attn.in_proj_bias"),
                vec![2304],
            );
        }
        shapes.insert("upsample1.weight".into(), vec![1024, 256, 2, 2]);
        shapes.insert("upsample2.weight".into(), vec![1024, 128, 4, 4]);
        shapes
    }

    #[test]
    fn the_official_l_config_with_its_base_reads_as_cat_seg_l() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.yaml"),
            "MODEL:\n  SEM_SEG_HEAD:\n    CLIP_PRETRAINED: \"ViT-L/14@336px\"\n    TEXT_GUIDANCE_DIM: 768\n    APPEARANCE_GUIDANCE_DIM: 768\n    NUM_LAYERS: 4\n    POOLING_SIZES: [6, 6]\n  PROMPT_ENSEMBLE_TYPE: \"imagenet\"\nINPUT:\n  MIN_SIZE_TRAIN: (384, )\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("vitl_336.yaml"),
            "_BASE_: config.yaml\nMODEL:\n  SEM_SEG_HEAD:\n    NUM_LAYERS: 2\n    POOLING_SIZES: [2, 2]\n  PROMPT_ENSEMBLE_TYPE: \"single\"\n",
        )
        .unwrap();
        let config =
            CatSegConfig::from_yaml(&dir.path().join("vitl_336.yaml"), &l_shapes()).unwrap();
        assert_eq!(config, CatSegConfig::vitl_336());
    }

    #[test]
    fn guidance_layers_past_the_model_and_bad_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "MODEL:\n  SEM_SEG_HEAD:\n    CLIP_PRETRAINED: \"x\"\n    CLIP_GUIDANCE_LAYERS: [7, 30]\n    TEXT_GUIDANCE_DIM: 768\n    APPEARANCE_GUIDANCE_DIM: 768\n").unwrap();
        let err = CatSegConfig::from_yaml(&path, &l_shapes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("guidance layers [7, 30]"), "{err}");
        std::fs::write(&path, "_BASE_: c.yaml\n").unwrap();
        let err = CatSegConfig::from_yaml(&path, &l_shapes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("deeper than 16"), "{err}");
        std::fs::write(&path, "MODEL:\n  SEM_SEG_HEAD:\n    NUM_LAYERS: two\n").unwrap();
        let err = CatSegConfig::from_yaml(&path, &l_shapes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("NUM_LAYERS is not a count"), "{err}");
    }

    #[test]
    fn prompts_keep_the_first_alternative() {
        let config = CatSegConfig::vitl_336();
        let prompts = config.prompts(&["car, automobile".into(), "traffic light".into()]);
        assert_eq!(
            prompts,
            [
                "A photo of a car in the scene",
                "A photo of a traffic light in the scene"
            ]
        );
    }
}
