//! SAM's dimensions. The official `build_sam.py::_build_sam` takes four encoder
//! arguments and hard-codes everything else; MobileSAM's `build_sam_vit_t`
//! swaps the ViT for a `TinyViT` of fixed arguments. Here every dimension is
//! read from the checkpoint's shapes (so tiny test models, the released
//! ViT-B/L/H and MobileSAM load alike), and an encoder config file
//! (`_build_sam`'s four arguments, or TinyViT's constructor arguments, as JSON)
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

/// MobileSAM's `TinyViT` constructor arguments, as an `--encoder-config` JSON
/// file holds them; `build_sam_vit_t` passes [`TinyVitArgs::vit_t`]. The image
/// size is SAM's 1024 and the stages are four, as the official forward assumes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TinyVitArgs {
    /// Channels of each stage (`[64, 128, 160, 320]`).
    pub embed_dims: Vec<usize>,
    /// Blocks of each stage (`[2, 2, 6, 2]`): MBConv blocks in stage 0, attention blocks after.
    pub depths: Vec<usize>,
    /// Attention heads of each stage (`[2, 4, 5, 10]`; stage 0's is unused).
    pub num_heads: Vec<usize>,
    /// Attention window side of each stage (`[7, 7, 14, 7]`; stage 0's is unused).
    pub window_sizes: Vec<usize>,
    /// MLP hidden width over the stage width (4, TinyViT's default).
    #[serde(default = "default_ratio")]
    pub mlp_ratio: f64,
    /// MBConv hidden width over the stage-0 width (4, TinyViT's default).
    #[serde(default = "default_ratio")]
    pub mbconv_expand_ratio: f64,
    /// Kernel of the depthwise convolution after each attention (3, TinyViT's default).
    #[serde(default = "default_local_conv")]
    pub local_conv_size: usize,
}

fn default_ratio() -> f64 {
    4.0
}

fn default_local_conv() -> usize {
    3
}

/// TinyViT's stage count: `forward_features` and the stage resolutions assume four.
pub const TINY_VIT_STAGES: usize = 4;

impl TinyVitArgs {
    /// MobileSAM's encoder (`build_sam_vit_t`, `mobile_sam.pt`).
    pub fn vit_t() -> Self {
        Self {
            embed_dims: vec![64, 128, 160, 320],
            depths: vec![2, 2, 6, 2],
            num_heads: vec![2, 4, 5, 10],
            window_sizes: vec![7, 7, 14, 7],
            mlp_ratio: 4.0,
            mbconv_expand_ratio: 4.0,
            local_conv_size: 3,
        }
    }

    /// The hidden widths these arguments build, as the official modules size
    /// them (`int(dim * ratio)`): the MBConv's (stage 0), then each later
    /// stage's MLP.
    fn hidden_widths(&self) -> Vec<usize> {
        let hidden = |dim: usize, ratio: f64| (dim as f64 * ratio) as usize;
        let mut widths = Vec::with_capacity(self.embed_dims.len());
        if let Some(&d0) = self.embed_dims.first() {
            widths.push(hidden(d0, self.mbconv_expand_ratio));
        }
        widths.extend(
            self.embed_dims
                .iter()
                .skip(1)
                .map(|&d| hidden(d, self.mlp_ratio)),
        );
        widths
    }

    /// The stride of the depthwise convolution in the `PatchMerging` after
    /// stage `stage`: the official code keeps 1 for output widths 320, 448 and
    /// 576 (the last stage of its released models) and 2 otherwise.
    pub fn merge_stride(&self, stage: usize) -> usize {
        match self.embed_dims.get(stage + 1) {
            Some(320 | 448 | 576) => 1,
            _ => 2,
        }
    }

    /// The grid side of each stage, checked against the side the official
    /// blocks are built for (`256 / 2^i`, stage 3 as stage 2) and the 64x64
    /// grid `forward_features` reshapes to.
    pub fn stage_sides(&self) -> Result<Vec<usize>, String> {
        let n = self.embed_dims.len();
        if n != TINY_VIT_STAGES
            || [
                self.depths.len(),
                self.num_heads.len(),
                self.window_sizes.len(),
            ] != [n; 3]
        {
            return Err(format!(
                "TinyViT: {n} embed_dims, {} depths, {} num_heads, {} window_sizes; \
                 the official forward takes {TINY_VIT_STAGES} stages",
                self.depths.len(),
                self.num_heads.len(),
                self.window_sizes.len()
            ));
        }
        let first = IMAGE_SIZE / 4;
        let mut sides = vec![first];
        for stage in 1..n {
            let previous = sides[stage - 1];
            // A 3x3 convolution with padding 1.
            let side = (previous - 1) / self.merge_stride(stage - 1) + 1;
            let built_for = first >> if stage == 3 { 2 } else { stage };
            if side != built_for {
                return Err(format!(
                    "TinyViT stage {stage}: widths {:?} give a {side}x{side} grid where the \
                     official blocks expect {built_for}x{built_for}",
                    self.embed_dims
                ));
            }
            sides.push(side);
        }
        Ok(sides)
    }

    /// Checks `given` (an `--encoder-config`) against these arguments read from
    /// a checkpoint whose hidden layers are `hidden_widths` wide; stage 0's
    /// heads and window, which no tensor records, are not compared.
    fn check_fits(&self, given: &Self, hidden_widths: &[usize]) -> Result<(), String> {
        let fits = given.embed_dims == self.embed_dims
            && given.depths == self.depths
            && given.num_heads.get(1..) == self.num_heads.get(1..)
            && given.window_sizes.get(1..) == self.window_sizes.get(1..)
            && given.local_conv_size == self.local_conv_size
            && given.hidden_widths() == hidden_widths;
        if fits {
            Ok(())
        } else {
            Err(format!(
                "the encoder config ({given}) does not fit the checkpoint, whose shapes say {self}"
            ))
        }
    }
}

impl std::fmt::Display for TinyVitArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TinyViT widths {:?}, depths {:?}, heads {:?}, windows {:?}, MLP ratio {}, \
             MBConv ratio {}, local convolution {}",
            self.embed_dims,
            self.depths,
            self.num_heads,
            self.window_sizes,
            self.mlp_ratio,
            self.mbconv_expand_ratio,
            self.local_conv_size
        )
    }
}

/// What an `--encoder-config` names: SAM's ViT or MobileSAM's TinyViT.
#[derive(Clone, Debug, PartialEq)]
pub enum EncoderSpec {
    /// `_build_sam`'s four arguments.
    Vit(EncoderArgs),
    /// TinyViT's constructor arguments.
    TinyVit(TinyVitArgs),
}

impl EncoderSpec {
    /// A released encoder by name: `vit_b`, `vit_l`, `vit_h` (SAM) or `vit_t` (MobileSAM).
    pub fn released(name: &str) -> Option<Self> {
        Some(match name {
            "vit_b" => Self::Vit(EncoderArgs::vit_b()),
            "vit_l" => Self::Vit(EncoderArgs::vit_l()),
            "vit_h" => Self::Vit(EncoderArgs::vit_h()),
            "vit_t" => Self::TinyVit(TinyVitArgs::vit_t()),
            _ => return None,
        })
    }

    /// Reads an `--encoder-config` JSON file: TinyViT's arguments when it has
    /// `embed_dims`, else `_build_sam`'s four.
    pub fn from_file(path: &Path) -> Result<Self, SamError> {
        let text = std::fs::read_to_string(path).map_err(|cause| SamError::Io {
            path: path.to_path_buf(),
            cause,
        })?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| SamError::Config {
                path: path.to_path_buf(),
                message: format!("not JSON: {e}"),
            })?;
        if value.get("embed_dims").is_none() {
            return EncoderArgs::from_file(path).map(Self::Vit);
        }
        serde_json::from_value(value)
            .map(Self::TinyVit)
            .map_err(|e| SamError::Config {
                path: path.to_path_buf(),
                message: format!(
                    "not a TinyViT encoder config ({e}); expected {{\"embed_dims\": [64, 128, 160, 320], \
                     \"depths\": [2, 2, 6, 2], \"num_heads\": [2, 4, 5, 10], \
                     \"window_sizes\": [7, 7, 14, 7]}} and optionally mlp_ratio, \
                     mbconv_expand_ratio, local_conv_size"
                ),
            })
    }
}

impl std::fmt::Display for EncoderSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Vit(args) => args.fmt(f),
            Self::TinyVit(args) => args.fmt(f),
        }
    }
}

/// MobileSAM's image encoder (`TinyViT`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TinyVitConfig {
    /// The constructor arguments (read from the shapes).
    pub args: TinyVitArgs,
    /// The hidden width of the MBConv blocks (stage 0), then of each later stage's MLP.
    pub hidden_widths: Vec<usize>,
    /// Channels of the neck's output: the prompt embedding width (256).
    pub out_chans: usize,
}

/// Which image encoder a SAM model has.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum EncoderConfig {
    /// SAM's `ImageEncoderViT`.
    Vit(ImageEncoderConfig),
    /// MobileSAM's `TinyViT`.
    TinyVit(TinyVitConfig),
}

impl EncoderConfig {
    /// Side of the image embedding's grid (64 for every released model).
    pub fn grid(&self) -> usize {
        match self {
            Self::Vit(config) => config.grid(),
            // Four pixels a patch, then one stride-2 merge before each of stages 1 and 2.
            Self::TinyVit(_) => IMAGE_SIZE / 16,
        }
    }

    /// The arguments, as an `--encoder-config` would give them.
    pub fn spec(&self) -> EncoderSpec {
        match self {
            Self::Vit(config) => EncoderSpec::Vit(config.args.clone()),
            Self::TinyVit(config) => EncoderSpec::TinyVit(config.args.clone()),
        }
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
    pub encoder: EncoderConfig,
    /// Width of prompt and image embeddings (256).
    pub prompt_embed_dim: usize,
    /// Hidden channels of the mask-input downscaling (16).
    pub mask_in_chans: usize,
    /// The mask decoder.
    pub decoder: MaskDecoderConfig,
}

/// The official number of decoder heads (`_build_sam`).
const DECODER_HEADS: usize = 8;

/// The shapes of a checkpoint, with the lookups the config readers need.
struct Shapes<'a>(&'a HashMap<String, Vec<usize>>);

impl Shapes<'_> {
    /// Axis `axis` of tensor `key`.
    fn dim(&self, key: &str, axis: usize) -> Result<usize, String> {
        self.0
            .get(key)
            .and_then(|s| s.get(axis).copied())
            .ok_or_else(|| format!("the checkpoint has no tensor {key}: not a SAM model"))
    }

    /// How many `prefix.{i}.suffix` exist for i = 0, 1, ...
    fn count(&self, prefix: &str, suffix: &str) -> usize {
        (0..)
            .take_while(|i| self.0.contains_key(&format!("{prefix}.{i}.{suffix}")))
            .count()
    }
}

impl SamConfig {
    /// The configuration a checkpoint's shapes imply; `encoder` (from
    /// `--encoder-config`) must agree. A MobileSAM checkpoint is recognised by
    /// its TinyViT patch embedding (`image_encoder.patch_embed.seq.0.c.weight`).
    /// For SAM's ViT, heads and global blocks are read from the relative-position
    /// tables (their length is `2 * 14 - 1` in windowed blocks and `2 * 64 - 1`
    /// in global ones, their width the head width); for TinyViT, widths and
    /// depths from the blocks, heads and windows from `attention_biases`
    /// (`[heads, window^2]`), the ratios from the hidden layers.
    pub fn from_shapes(
        shapes: &HashMap<String, Vec<usize>>,
        encoder: Option<&EncoderSpec>,
    ) -> Result<Self, String> {
        let shapes = Shapes(shapes);
        let prompt_embed_dim = shapes.dim("image_encoder.neck.0.weight", 0)?;
        let tiny = shapes
            .0
            .contains_key("image_encoder.patch_embed.seq.0.c.weight");
        let encoder = match (tiny, encoder) {
            (false, None) => EncoderConfig::Vit(vit_from_shapes(&shapes, None, prompt_embed_dim)?),
            (false, Some(EncoderSpec::Vit(args))) => {
                EncoderConfig::Vit(vit_from_shapes(&shapes, Some(args), prompt_embed_dim)?)
            }
            (true, None) => {
                EncoderConfig::TinyVit(tiny_vit_from_shapes(&shapes, None, prompt_embed_dim)?)
            }
            (true, Some(EncoderSpec::TinyVit(args))) => {
                EncoderConfig::TinyVit(tiny_vit_from_shapes(&shapes, Some(args), prompt_embed_dim)?)
            }
            (true, Some(EncoderSpec::Vit(args))) => {
                return Err(format!(
                    "the encoder config is SAM's ViT ({args}) but the checkpoint is MobileSAM's TinyViT"
                ));
            }
            (false, Some(EncoderSpec::TinyVit(args))) => {
                return Err(format!(
                    "the encoder config is MobileSAM's TinyViT ({args}) but the checkpoint is SAM's ViT"
                ));
            }
        };
        let transformer_dim = shapes.dim("mask_decoder.iou_token.weight", 1)?;
        if transformer_dim != prompt_embed_dim || transformer_dim % DECODER_HEADS != 0 {
            return Err(format!(
                "mask_decoder: width {transformer_dim} must equal the neck's {prompt_embed_dim} \
                 and be a multiple of {DECODER_HEADS} heads"
            ));
        }
        let mask_tokens = shapes.dim("mask_decoder.mask_tokens.weight", 0)?;
        let config = Self {
            encoder,
            prompt_embed_dim,
            mask_in_chans: shapes.dim("prompt_encoder.mask_downscaling.3.weight", 0)?,
            decoder: MaskDecoderConfig {
                transformer_dim,
                depth: shapes.count("mask_decoder.transformer.layers", "norm1.weight"),
                mlp_dim: shapes.dim("mask_decoder.transformer.layers.0.mlp.lin1.weight", 0)?,
                num_heads: DECODER_HEADS,
                num_multimask_outputs: mask_tokens.saturating_sub(1),
                iou_head_depth: shapes.count("mask_decoder.iou_prediction_head.layers", "weight"),
                iou_head_hidden_dim: shapes
                    .dim("mask_decoder.iou_prediction_head.layers.0.weight", 0)?,
            },
        };
        if config.decoder.num_multimask_outputs == 0 || config.decoder.iou_head_depth == 0 {
            return Err("mask_decoder: no multimask tokens or no IoU head".into());
        }
        Ok(config)
    }

    /// Which released variant this is (`vit_b`, `vit_l`, `vit_h`, or
    /// MobileSAM's `vit_t`), if any.
    pub fn released_name(&self) -> Option<&'static str> {
        let spec = self.encoder.spec();
        ["vit_b", "vit_l", "vit_h", "vit_t"]
            .into_iter()
            .find(|name| EncoderSpec::released(name).as_ref() == Some(&spec))
    }
}

/// SAM's ViT from the shapes (see [`SamConfig::from_shapes`]).
fn vit_from_shapes(
    shapes: &Shapes,
    given: Option<&EncoderArgs>,
    out_chans: usize,
) -> Result<ImageEncoderConfig, String> {
    let embed_dim = shapes.dim("image_encoder.patch_embed.proj.weight", 0)?;
    let patch_size = shapes.dim("image_encoder.patch_embed.proj.weight", 2)?;
    if patch_size == 0 || !IMAGE_SIZE.is_multiple_of(patch_size) {
        return Err(format!(
            "image_encoder.patch_embed.proj.weight: patch {patch_size} does not divide {IMAGE_SIZE}"
        ));
    }
    let grid = IMAGE_SIZE / patch_size;
    let depth = shapes.count("image_encoder.blocks", "attn.qkv.weight");
    let window_size = 14;
    let mut global = Vec::new();
    let mut head_dim = None;
    for i in 0..depth {
        let key = format!("image_encoder.blocks.{i}.attn.rel_pos_h");
        let len = shapes.dim(&key, 0)?;
        let width = shapes.dim(&key, 1)?;
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
    if let Some(given) = given
        && *given != args
    {
        return Err(format!(
            "the encoder config ({given}) does not fit the checkpoint, whose shapes say {args}"
        ));
    }
    let mlp_hidden = shapes.dim("image_encoder.blocks.0.mlp.lin1.weight", 0)?;
    let mlp_ratio = mlp_hidden / embed_dim;
    if mlp_hidden != embed_dim * mlp_ratio {
        return Err(format!(
            "image_encoder.blocks.0.mlp.lin1.weight: hidden width {mlp_hidden} is not a multiple of {embed_dim}"
        ));
    }
    Ok(ImageEncoderConfig {
        args,
        patch_size,
        window_size,
        mlp_ratio,
        out_chans,
    })
}

/// MobileSAM's TinyViT from the shapes (see [`SamConfig::from_shapes`]).
fn tiny_vit_from_shapes(
    shapes: &Shapes,
    given: Option<&TinyVitArgs>,
    out_chans: usize,
) -> Result<TinyVitConfig, String> {
    let prefix = "image_encoder.layers";
    let stages = (0..)
        .take_while(|i| {
            shapes
                .0
                .keys()
                .any(|k| k.starts_with(&format!("{prefix}.{i}.blocks.0.")))
        })
        .count();
    if stages != TINY_VIT_STAGES {
        return Err(format!(
            "TinyViT: the checkpoint has {stages} stages with blocks, the official forward takes {TINY_VIT_STAGES}"
        ));
    }
    // Stage 0: MBConv blocks; stages 1-3: attention blocks.
    let d0 = shapes.dim(&format!("{prefix}.0.blocks.0.conv1.c.weight"), 1)?;
    let mbconv_hidden = shapes.dim(&format!("{prefix}.0.blocks.0.conv1.c.weight"), 0)?;
    let local_conv_size = shapes.dim(&format!("{prefix}.1.blocks.0.local_conv.c.weight"), 2)?;
    let mut embed_dims = vec![d0];
    let mut depths = vec![shapes.count(&format!("{prefix}.0.blocks"), "conv1.c.weight")];
    // Stage 0 attends nowhere: its heads and window come from the given config or vit_t's.
    let fallback = given.cloned().unwrap_or_else(TinyVitArgs::vit_t);
    let mut num_heads = vec![fallback.num_heads.first().copied().unwrap_or(1)];
    let mut window_sizes = vec![fallback.window_sizes.first().copied().unwrap_or(1)];
    let mut mlp_hidden = Vec::new();
    for stage in 1..stages {
        let block = format!("{prefix}.{stage}.blocks.0");
        let dim = shapes.dim(&format!("{block}.attn.norm.weight"), 0)?;
        let biases = format!("{block}.attn.attention_biases");
        let heads = shapes.dim(&biases, 0)?;
        let offsets = shapes.dim(&biases, 1)?;
        let window = offsets.isqrt();
        if window == 0 || window * window != offsets {
            return Err(format!(
                "{biases}: {offsets} offsets, expected the square of a window side"
            ));
        }
        if heads == 0 || dim % heads != 0 {
            return Err(format!(
                "{block}: {heads} heads do not divide the width {dim}"
            ));
        }
        embed_dims.push(dim);
        depths.push(shapes.count(&format!("{prefix}.{stage}.blocks"), "attn.qkv.weight"));
        num_heads.push(heads);
        window_sizes.push(window);
        mlp_hidden.push(shapes.dim(&format!("{block}.mlp.fc1.weight"), 0)?);
    }
    let mut hidden_widths = vec![mbconv_hidden];
    hidden_widths.extend(&mlp_hidden);
    let ratio = |hidden: usize, dim: usize| hidden as f64 / dim.max(1) as f64;
    let mlp_ratio = ratio(mlp_hidden[0], embed_dims[1]);
    for (stage, (&hidden, &dim)) in hidden_widths.iter().zip(&embed_dims).enumerate().skip(2) {
        // One ratio builds every stage's MLP: the official constructor takes one.
        if (dim as f64 * mlp_ratio).round() as usize != hidden {
            return Err(format!(
                "{prefix}.{stage}.blocks.0.mlp.fc1.weight: hidden width {hidden} is not stage 1's \
                 ratio {mlp_ratio} of {dim}"
            ));
        }
    }
    let args = TinyVitArgs {
        embed_dims,
        depths,
        num_heads,
        window_sizes,
        mlp_ratio,
        mbconv_expand_ratio: ratio(mbconv_hidden, d0),
        local_conv_size,
    };
    args.stage_sides()?;
    if let Some(given) = given {
        args.check_fits(given, &hidden_widths)?;
    }
    Ok(TinyVitConfig {
        args,
        hidden_widths,
        out_chans,
    })
}
