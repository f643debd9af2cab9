//! `config.json` of a Hugging Face `CLIPModel` (`CLIPConfig`), with the
//! defaults of transformers 4.46 for every field a file leaves out.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ClipError;

/// Activation of the MLPs (`hidden_act`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)`: OpenAI's CLIP (transformers' default).
    #[default]
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// Exact GELU with erf (`"gelu"`).
    #[serde(rename = "gelu")]
    Gelu,
    /// Tanh approximation of GELU (`"gelu_new"`, `"gelu_pytorch_tanh"`, `"gelu_fast"`).
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluTanh,
}

/// `CLIPTextConfig`. Defaults are transformers' (those of ViT-B/32's text tower).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    /// Token vocabulary size (49408).
    pub vocab_size: usize,
    /// Width `D_t` of the text transformer (512).
    pub hidden_size: usize,
    /// Hidden width of the MLPs (2048).
    pub intermediate_size: usize,
    /// Output width of `text_projection` as this sub-config states it (512);
    /// the model uses [`ClipConfig::projection_dim`].
    pub projection_dim: usize,
    /// Number of encoder layers (12).
    pub num_hidden_layers: usize,
    /// Attention heads (8).
    pub num_attention_heads: usize,
    /// Context length (77).
    pub max_position_embeddings: usize,
    /// MLP activation (`quick_gelu`).
    pub hidden_act: Activation,
    /// Layer-norm epsilon (1e-5).
    pub layer_norm_eps: f64,
    /// Padding id (1; unused by the model itself).
    pub pad_token_id: Option<u32>,
    /// Start-of-text id (49406).
    pub bos_token_id: Option<u32>,
    /// End-of-text id (49407). The value 2 (older OpenAI configs) selects
    /// the legacy pooling at the largest id of each sequence, as transformers does.
    pub eos_token_id: Option<u32>,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49_408,
            hidden_size: 512,
            intermediate_size: 2048,
            projection_dim: 512,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            pad_token_id: Some(1),
            bos_token_id: Some(49_406),
            eos_token_id: Some(49_407),
        }
    }
}

/// `CLIPVisionConfig`. Defaults are transformers' (ViT-B/32).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipVisionConfig {
    /// Width `D_v` of the vision transformer (768).
    pub hidden_size: usize,
    /// Hidden width of the MLPs (3072).
    pub intermediate_size: usize,
    /// Output width of `visual_projection` as this sub-config states it (512);
    /// the model uses [`ClipConfig::projection_dim`].
    pub projection_dim: usize,
    /// Number of encoder layers (12).
    pub num_hidden_layers: usize,
    /// Attention heads (12).
    pub num_attention_heads: usize,
    /// Input channels (3).
    pub num_channels: usize,
    /// Training resolution (224); the position embeddings cover
    /// `(image_size / patch_size)^2` patches plus the class token.
    pub image_size: usize,
    /// Patch size (32).
    pub patch_size: usize,
    /// MLP activation (`quick_gelu`).
    pub hidden_act: Activation,
    /// Layer-norm epsilon (1e-5).
    pub layer_norm_eps: f64,
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            projection_dim: 512,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }
}

impl ClipVisionConfig {
    /// Patches per side at the training resolution.
    pub fn grid_size(&self) -> usize {
        self.image_size / self.patch_size.max(1)
    }
}

/// `CLIPConfig`: both towers and the shared embedding width.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipConfig {
    /// Text tower.
    pub text_config: ClipTextConfig,
    /// Vision tower.
    pub vision_config: ClipVisionConfig,
    /// Width `E` of the joint embedding space (512).
    pub projection_dim: usize,
    /// Initial value of `logit_scale` (2.6592 = ln(1/0.07)); the checkpoint's
    /// `logit_scale` tensor wins when present.
    pub logit_scale_init_value: f64,
}

impl Default for ClipConfig {
    fn default() -> Self {
        Self {
            text_config: ClipTextConfig::default(),
            vision_config: ClipVisionConfig::default(),
            projection_dim: 512,
            logit_scale_init_value: 2.6592,
        }
    }
}

impl ClipConfig {
    /// OpenAI's CLIP ViT-B/16 (`openai/clip-vit-base-patch16`).
    pub fn vit_b16() -> Self {
        let mut cfg = Self::default();
        cfg.vision_config.patch_size = 16;
        cfg
    }

    /// OpenAI's CLIP ViT-L/14 at 224 px (`openai/clip-vit-large-patch14`).
    pub fn vit_l14() -> Self {
        Self {
            text_config: ClipTextConfig {
                hidden_size: 768,
                intermediate_size: 3072,
                num_attention_heads: 12,
                projection_dim: 768,
                ..ClipTextConfig::default()
            },
            vision_config: ClipVisionConfig {
                hidden_size: 1024,
                intermediate_size: 4096,
                num_hidden_layers: 24,
                num_attention_heads: 16,
                patch_size: 14,
                projection_dim: 768,
                ..ClipVisionConfig::default()
            },
            projection_dim: 768,
            logit_scale_init_value: 2.6592,
        }
    }

    /// Parses a `config.json`.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self, ClipError> {
        let cfg: Self = serde_json::from_str(text).map_err(|cause| ClipError::Json {
            path: path.to_path_buf(),
            cause,
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Reads and checks a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, ClipError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ClipError::Io {
            path: path.to_path_buf(),
            cause,
        })?;
        Self::from_json_str(&text, path)
    }

    /// Checks that the sizes are usable (no zero sizes, heads divide widths).
    pub fn validate(&self, path: &Path) -> Result<(), ClipError> {
        let bad = |message: String| {
            Err(ClipError::Config {
                path: path.to_path_buf(),
                message,
            })
        };
        let t = &self.text_config;
        let v = &self.vision_config;
        for (name, value) in [
            ("text_config.hidden_size", t.hidden_size),
            ("text_config.num_attention_heads", t.num_attention_heads),
            ("text_config.vocab_size", t.vocab_size),
            (
                "text_config.max_position_embeddings",
                t.max_position_embeddings,
            ),
            ("vision_config.hidden_size", v.hidden_size),
            ("vision_config.num_attention_heads", v.num_attention_heads),
            ("vision_config.patch_size", v.patch_size),
            ("vision_config.image_size", v.image_size),
            ("vision_config.num_channels", v.num_channels),
            ("projection_dim", self.projection_dim),
        ] {
            if value == 0 {
                return bad(format!("{name} must be positive"));
            }
        }
        if !t.hidden_size.is_multiple_of(t.num_attention_heads) {
            return bad(format!(
                "text_config.hidden_size {} is not divisible by num_attention_heads {}",
                t.hidden_size, t.num_attention_heads
            ));
        }
        if !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return bad(format!(
                "vision_config.hidden_size {} is not divisible by num_attention_heads {}",
                v.hidden_size, v.num_attention_heads
            ));
        }
        if v.image_size < v.patch_size {
            return bad(format!(
                "vision_config.image_size {} is smaller than patch_size {}",
                v.image_size, v.patch_size
            ));
        }
        Ok(())
    }
}
