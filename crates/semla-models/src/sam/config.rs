//! SAM's dimensions. The official `build_sam.py::_build_sam` takes four encoder
//! arguments and hard-codes everything else; here every dimension is read from
//! the checkpoint's shapes (so tiny test models and the released ViT-B/L/H load
//! alike), and an encoder config file (`_build_sam`'s four arguments as JSON)
//! is checked against them.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::SamError;

/// SAM's fixed input side: images are resized so the longest side is this, then padded.
pub const IMAGE_SIZE: usize = 1024;
/// The official pixel mean (RGB, 0-255), a `Sam` constructor argument, not a tensor.
pub const PIXEL_MEAN: [f32; 3] = [123.675, 116.28, 103.53];
/// The official pixel standard deviation (RGB, 0-255).
pub const PIXEL_STD: [f32; 3] = [58.395, 57.12, 57.375];

/// `_build_sam`'s four encoder arguments, as an `--encoder-config` JSON file holds them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderArgs {
    /// Width of the ViT (768 for ViT-B).
    pub encoder_embed_dim: usize,
    /// Number of blocks (12 for ViT-B).
    pub encoder_depth: usize,
    /// Attention heads per block (12 for ViT-B).
    pub encoder_num_heads: usize,
    /// 0-based indices of the blocks with global attention; the others attend in windows.
    pub encoder_global_attn_indexes: Vec<usize>,
}

impl EncoderArgs {
    /// The released ViT-B (`sam_vit_b_01ec64.pth`).
    pub fn vit_b() -> Self {
        Self::new(768, 12, 12, vec![2, 5, 8, 11])
    }
    /// The released ViT-L (`sam_vit_l_0b3195.pth`).
    pub fn vit_l() -> Self {
        Self::new(1024, 24, 16, vec![5, 11, 17, 23])
    }
    /// The released ViT-H (`sam_vit_h_4b8939.pth`).
    pub fn vit_h() -> Self {
        Self::new(1280, 32, 16, vec![7, 15, 23, 31])
    }

    fn new(dim: usize, depth: usize, heads: usize, global: Vec<usize>) -> Self {
        Self {
            encoder_embed_dim: dim,
            encoder_depth: depth,
            encoder_num_heads: heads,
            encoder_global_attn_indexes: global,
        }
    }

    /// Reads an `--encoder-config` JSON file.
    pub fn from_file(path: &Path) -> Result<Self, SamError> {
        let text = std::fs::read_to_string(path).map_err(|cause| SamError::Io {
            path: path.to_path_buf(),
            cause,
        })?;
        serde_json::from_str(&text).map_err(|e| SamError::Config {
            path: path.to_path_buf(),
            message: format!(
                "not an encoder config ({e}); expected {{\"encoder_embed_dim\": 768, \
                 \"encoder_depth\": 12, \"encoder_num_heads\": 12, \
                 \"encoder_global_attn_indexes\": [2, 5, 8, 11]}}"
            ),
        })
    }
}

impl std::fmt::Display for EncoderArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "width {}, {} blocks, {} heads, global attention in blocks {:?}",
            self.encoder_embed_dim,
            self.encoder_depth,
            self.encoder_num_heads,
            self.encoder_global_attn_indexes
        )
    }
}

/// The image encoder (`ImageEncoderViT`); defaults are `_build_sam`'s constants.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageEncoderConfig {
    /// The four arguments that differ between variants.
    pub args: EncoderArgs,
    /// Patch side in pixels (16).
    pub patch_size: usize,
    /// Window side of the windowed blocks, in patches (14).
    pub window_size: usize,
    /// MLP hidden width over the embedding width (4).
    pub mlp_ratio: usize,
    /// Channels of the neck's output: the prompt embedding width (256).
    pub out_chans: usize,
}

impl ImageEncoderConfig {
    /// Patches per side of the padded 1024 input (64).
    pub fn grid(&self) -> usize {
        IMAGE_SIZE / self.patch_size
    }
}

/// The mask decoder (`MaskDecoder` with its `TwoWayTransformer`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskDecoderConfig {
    /// Token width of the two-way transformer (256), equal to the prompt embedding width.
    pub transformer_dim: usize,
    /// Two-way blocks (2).
    pub depth: usize,
    /// MLP hidden width of each block (2048).
    pub mlp_dim: usize,
    /// Attention heads (8); not recorded in the shapes, fixed as in the official code.
    pub num_heads: usize,
    /// Masks predicted besides the single-mask output (3).
    pub num_multimask_outputs: usize,
    /// Layers of the IoU head (3).
    pub iou_head_depth: usize,
    /// Hidden width of the IoU head (256).
    pub iou_head_hidden_dim: usize,
}

/// Every dimension of a SAM model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamConfig {
    /// The image encoder.
    pub encoder: ImageEncoderConfig,
    /// Width of prompt and image embeddings (256).
    pub prompt_embed_dim: usize,
    /// Hidden channels of the mask-input downscaling (16).
    pub mask_in_chans: usize,
    /// The mask decoder.
    pub decoder: MaskDecoderConfig,
}

/// The official number of decoder heads (`_build_sam`).
const DECODER_HEADS: usize = 8;

impl SamConfig {
    /// The configuration a checkpoint's shapes imply. Heads and global blocks of
    /// the encoder are read from the relative-position tables (their length is
    /// `2 * 14 - 1` in windowed blocks and `2 * 64 - 1` in global ones, their
    /// width the head width); `encoder` (from `--encoder-config`) must agree.
    pub fn from_shapes(
        shapes: &HashMap<String, Vec<usize>>,
        encoder: Option<&EncoderArgs>,
    ) -> Result<Self, String> {
        let dim = |key: &str, axis: usize| -> Result<usize, String> {
            shapes
                .get(key)
                .and_then(|s| s.get(axis).copied())
                .ok_or_else(|| format!("the checkpoint has no tensor {key}: not a SAM model"))
        };
        let count = |prefix: &str, suffix: &str| {
            (0..)
                .take_while(|i| shapes.contains_key(&format!("{prefix}.{i}.{suffix}")))
                .count()
        };
        let embed_dim = dim("image_encoder.patch_embed.proj.weight", 0)?;
        let patch_size = dim("image_encoder.patch_embed.proj.weight", 2)?;
        if patch_size == 0 || !IMAGE_SIZE.is_multiple_of(patch_size) {
            return Err(format!(
                "image_encoder.patch_embed.proj.weight: patch {patch_size} does not divide {IMAGE_SIZE}"
            ));
        }
        let grid = IMAGE_SIZE / patch_size;
        let depth = count("image_encoder.blocks", "attn.qkv.weight");
        let window_size = 14;
        let mut global = Vec::new();
        let mut head_dim = None;
        for i in 0..depth {
            let key = format!("image_encoder.blocks.{i}.attn.rel_pos_h");
            let len = dim(&key, 0)?;
            let width = dim(&key, 1)?;
            if len == 2 * grid - 1 {
                global.push(i);
            } else if len != 2 * window_size - 1 {
                return Err(format!(
                    "{key}: {len} relative positions, expected {} (windowed) or {} (global)",
                    2 * window_size - 1,
                    2 * grid - 1
                ));
            }
            match head_dim {
                None => head_dim = Some(width),
                Some(w) if w != width => {
                    return Err(format!("{key}: head width {width}, block 0 has {w}"));
                }
                Some(_) => {}
            }
        }
        let head_dim = head_dim.ok_or("the checkpoint has no image_encoder.blocks")?;
        if head_dim == 0 || embed_dim % head_dim != 0 {
            return Err(format!(
                "image_encoder: head width {head_dim} does not divide the width {embed_dim}"
            ));
        }
        let args = EncoderArgs::new(embed_dim, depth, embed_dim / head_dim, global);
        if let Some(given) = encoder
            && *given != args
        {
            return Err(format!(
                "the encoder config ({given}) does not fit the checkpoint, whose shapes say {args}"
            ));
        }
        let mlp_hidden = dim("image_encoder.blocks.0.mlp.lin1.weight", 0)?;
        let prompt_embed_dim = dim("image_encoder.neck.0.weight", 0)?;
        let transformer_dim = dim("mask_decoder.iou_token.weight", 1)?;
        if transformer_dim != prompt_embed_dim || transformer_dim % DECODER_HEADS != 0 {
            return Err(format!(
                "mask_decoder: width {transformer_dim} must equal the neck's {prompt_embed_dim} \
                 and be a multiple of {DECODER_HEADS} heads"
            ));
        }
        let mask_tokens = dim("mask_decoder.mask_tokens.weight", 0)?;
        let config = Self {
            encoder: ImageEncoderConfig {
                args,
                patch_size,
                window_size,
                mlp_ratio: mlp_hidden / embed_dim,
                out_chans: prompt_embed_dim,
            },
            prompt_embed_dim,
            mask_in_chans: dim("prompt_encoder.mask_downscaling.3.weight", 0)?,
            decoder: MaskDecoderConfig {
                transformer_dim,
                depth: count("mask_decoder.transformer.layers", "norm1.weight"),
                mlp_dim: dim("mask_decoder.transformer.layers.0.mlp.lin1.weight", 0)?,
                num_heads: DECODER_HEADS,
                num_multimask_outputs: mask_tokens.saturating_sub(1),
                iou_head_depth: count("mask_decoder.iou_prediction_head.layers", "weight"),
                iou_head_hidden_dim: dim("mask_decoder.iou_prediction_head.layers.0.weight", 0)?,
            },
        };
        if mlp_hidden != embed_dim * config.encoder.mlp_ratio {
            return Err(format!(
                "image_encoder.blocks.0.mlp.lin1.weight: hidden width {mlp_hidden} is not a multiple of {embed_dim}"
            ));
        }
        if config.decoder.num_multimask_outputs == 0 || config.decoder.iou_head_depth == 0 {
            return Err("mask_decoder: no multimask tokens or no IoU head".into());
        }
        Ok(config)
    }

    /// Which released variant this is (`vit_b`, `vit_l`, `vit_h`), if any.
    pub fn released_name(&self) -> Option<&'static str> {
        let args = &self.encoder.args;
        [
            ("vit_b", EncoderArgs::vit_b()),
            ("vit_l", EncoderArgs::vit_l()),
            ("vit_h", EncoderArgs::vit_h()),
        ]
        .into_iter()
        .find(|(_, a)| a == args)
        .map(|(name, _)| name)
    }
}
