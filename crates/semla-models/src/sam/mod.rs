//! Segment Anything (Kirillov et al., ICCV 2023), ported from the official
//! `segment_anything` code: the model CLOUDS prompts to sharpen pseudo-labels.
//!
//! Module paths equal the official checkpoints' keys (`sam_vit_b_01ec64.pth`,
//! a plain state dict; MobileSAM's `mobile_sam.pt` alike):
//! - [`image_encoder`]: `image_encoder.*` (ViT with windowed and global
//!   attention, relative positions, neck),
//! - [`tiny_vit`]: MobileSAM's `image_encoder.*` (TinyViT: MBConv and windowed
//!   attention stages, the same neck), which CLOUDS uses by default,
//! - [`prompt_encoder`]: `prompt_encoder.*` (points, boxes, mask input),
//! - [`mask_decoder`]: `mask_decoder.*` (two-way transformer in `transformer`,
//!   3 masks + IoU predictions),
//! - [`transforms`]: `SamPredictor`'s pre- and post-processing,
//! - [`config`]: every dimension, from the checkpoint's shapes.
//!
//! [`Sam::set_image`] embeds an image once; [`Sam::predict`] then answers
//! prompts against it, as `SamPredictor.set_image` / `.predict` do.

pub(crate) mod common;
pub mod config;
pub mod image_encoder;
pub mod mask_decoder;
pub mod prompt_encoder;
pub mod tiny_vit;
pub(crate) mod transformer;
pub mod transforms;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

pub use config::{EncoderArgs, EncoderConfig, EncoderSpec, IMAGE_SIZE, SamConfig, TinyVitArgs};
pub use image_encoder::ImageEncoder;
pub use mask_decoder::MaskDecoder;
pub use prompt_encoder::{EncodedPrompts, PromptEncoder};
pub use tiny_vit::TinyVit;

use crate::checkpoint::{self, CheckpointError};

/// Side of the decoder's low-resolution logits (4x the 64 grid).
pub const LOW_RES_SIZE: usize = 256;

/// Errors of the SAM module; each names the file or input at fault.
#[derive(Debug, thiserror::Error)]
pub enum SamError {
    /// A file could not be read.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// A configuration does not fit (or is not) a SAM checkpoint.
    #[error("{path}: {message}")]
    Config {
        /// The checkpoint or config file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The checkpoint is unreadable.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The tensors do not fit the configuration.
    #[error("{path}: {cause}")]
    Weights {
        /// The checkpoint.
        path: PathBuf,
        /// The missing or misshapen tensor.
        cause: candle_core::Error,
    },
    /// A prompt or image the model cannot take.
    #[error("SAM input: {0}")]
    Input(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

/// A prompt in the original image's pixels, as `SamPredictor.predict` takes it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Prompt {
    /// Points as (x, y).
    pub points: Vec<[f64; 2]>,
    /// One label per point: 1 foreground, 0 background.
    pub labels: Vec<i32>,
    /// A box as (x0, y0, x1, y1).
    pub bbox: Option<[f64; 4]>,
    /// Low-resolution mask logits `[256 * 256]` from an earlier prediction.
    pub mask_input: Option<Vec<f32>>,
}

impl Prompt {
    fn check(&self) -> Result<(), SamError> {
        if self.points.len() != self.labels.len() {
            return Err(SamError::Input(format!(
                "{} points but {} labels",
                self.points.len(),
                self.labels.len()
            )));
        }
        if let Some(label) = self.labels.iter().find(|l| !matches!(l, 0 | 1)) {
            return Err(SamError::Input(format!(
                "point label {label}: labels are 1 (foreground) or 0 (background)"
            )));
        }
        let coords = self
            .points
            .iter()
            .flatten()
            .chain(self.bbox.iter().flatten());
        if coords.clone().any(|v| !v.is_finite()) {
            return Err(SamError::Input(
                "a point or box coordinate is not finite".into(),
            ));
        }
        if let Some(mask) = &self.mask_input {
            if mask.len() != LOW_RES_SIZE * LOW_RES_SIZE {
                return Err(SamError::Input(format!(
                    "mask input of {} values, expected {LOW_RES_SIZE}x{LOW_RES_SIZE}",
                    mask.len()
                )));
            }
            if mask.iter().any(|v| !v.is_finite()) {
                return Err(SamError::Input(
                    "the mask input has a NaN or infinite value".into(),
                ));
            }
        }
        Ok(())
    }

    /// The shape key prompts must share to go through the decoder together.
    fn layout(&self) -> (usize, bool, bool) {
        (
            self.points.len(),
            self.bbox.is_some(),
            self.mask_input.is_some(),
        )
    }
}

/// An image embedded by [`Sam::set_image`].
#[derive(Clone, Debug)]
pub struct ImageEmbedding {
    /// `[1, 256, 64, 64]`.
    pub features: Tensor,
    /// The image's `(height, width)`.
    pub original_size: (usize, usize),
    /// The resized image's `(height, width)` inside the padded 1024 input.
    pub input_size: (usize, usize),
}

/// The answer to one prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// Mask logits at the image's size, `[M, height, width]` row-major.
    pub logits: Vec<f32>,
    /// Predicted IoU per mask, `[M]`.
    pub iou: Vec<f32>,
    /// The decoder's logits, `[M, 256, 256]`.
    pub low_res_logits: Vec<f32>,
    /// Masks (`M` = 3 with multimask output, else 1).
    pub masks: usize,
    /// The image's height.
    pub height: usize,
    /// The image's width.
    pub width: usize,
}

impl Prediction {
    /// The binary masks (`logits > 0`), `[M, height, width]`.
    pub fn binary_masks(&self) -> Vec<u8> {
        self.logits.iter().map(|&v| u8::from(v > 0.0)).collect()
    }
}

/// SAM's ViT or MobileSAM's TinyViT.
#[derive(Clone, Debug)]
enum Encoder {
    Vit(ImageEncoder),
    TinyVit(TinyVit),
}

impl Encoder {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Vit(encoder) => encoder.forward(x),
            Self::TinyVit(encoder) => encoder.forward(x),
        }
    }
}

/// SAM (or MobileSAM): image encoder, prompt encoder and mask decoder.
#[derive(Clone, Debug)]
pub struct Sam {
    config: SamConfig,
    image_encoder: Encoder,
    prompt_encoder: PromptEncoder,
    mask_decoder: MaskDecoder,
    /// `[1, 256, 64, 64]`: the prompt encoder's dense positions, computed once.
    dense_positions: Tensor,
    device: Device,
}

impl Sam {
    /// Loads a checkpoint (`.pth` state dict as released, or `.safetensors` of
    /// the same keys; SAM or MobileSAM). The dimensions come from its shapes;
    /// `encoder` (an `--encoder-config`: `_build_sam`'s four arguments or
    /// TinyViT's) must agree with them.
    pub fn load(
        path: &Path,
        encoder: Option<&EncoderSpec>,
        device: &Device,
    ) -> Result<Self, SamError> {
        let shapes = checkpoint::read_shapes(path)?;
        let config =
            SamConfig::from_shapes(&shapes, encoder).map_err(|message| SamError::Config {
                path: path.to_path_buf(),
                message,
            })?;
        let tensors = checkpoint::read_tensors(path, device)?;
        Self::from_tensors(tensors, config, device).map_err(|cause| SamError::Weights {
            path: path.to_path_buf(),
            cause,
        })
    }

    /// SAM from named tensors (checkpoint keys) and a configuration.
    pub fn from_tensors(
        tensors: HashMap<String, Tensor>,
        config: SamConfig,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let vb_encoder = vb.pp("image_encoder");
        let image_encoder = match &config.encoder {
            EncoderConfig::Vit(encoder) => Encoder::Vit(ImageEncoder::load(&vb_encoder, encoder)?),
            EncoderConfig::TinyVit(encoder) => {
                Encoder::TinyVit(TinyVit::load(&vb_encoder, encoder)?)
            }
        };
        let prompt_encoder = PromptEncoder::load(&vb.pp("prompt_encoder"), &config)?;
        let mask_decoder = MaskDecoder::load(&vb.pp("mask_decoder"), &config.decoder)?;
        let dense_positions = prompt_encoder.dense_positions(device)?;
        Ok(Self {
            config,
            image_encoder,
            prompt_encoder,
            mask_decoder,
            dense_positions,
            device: device.clone(),
        })
    }

    /// The model's dimensions.
    pub fn config(&self) -> &SamConfig {
        &self.config
    }

    /// `SamPredictor.set_image` on an RGB8 image (`height * width * 3`).
    pub fn set_image(
        &self,
        rgb: &[u8],
        height: usize,
        width: usize,
    ) -> Result<ImageEmbedding, SamError> {
        if height == 0 || width == 0 || rgb.len() != height * width * 3 {
            return Err(SamError::Input(format!(
                "an RGB image of {height}x{width} needs {} bytes, got {}",
                height * width * 3,
                rgb.len()
            )));
        }
        let (input, input_size) = transforms::preprocess(rgb, height, width);
        let input = Tensor::from_vec(input, (1, 3, IMAGE_SIZE, IMAGE_SIZE), &self.device)?;
        Ok(ImageEmbedding {
            features: self.image_encoder.forward(&input)?,
            original_size: (height, width),
            input_size,
        })
    }

    /// `SamPredictor.predict` (with logits): the masks of one prompt.
    pub fn predict(
        &self,
        image: &ImageEmbedding,
        prompt: &Prompt,
        multimask: bool,
    ) -> Result<Prediction, SamError> {
        let mut out = self.predict_batch(image, std::slice::from_ref(prompt), multimask)?;
        out.pop()
            .ok_or_else(|| SamError::Input("no prediction".into()))
    }

    /// Several prompts on one image in one decoder pass (`predict_torch` with a
    /// batch); they must share their layout (number of points, box or not,
    /// mask input or not).
    pub fn predict_batch(
        &self,
        image: &ImageEmbedding,
        prompts: &[Prompt],
        multimask: bool,
    ) -> Result<Vec<Prediction>, SamError> {
        let Some(first) = prompts.first() else {
            return Ok(Vec::new());
        };
        for prompt in prompts {
            prompt.check()?;
            if prompt.layout() != first.layout() {
                return Err(SamError::Input(
                    "prompts decoded together must have the same number of points and \
                     all or none a box and a mask input"
                        .into(),
                ));
            }
        }
        let b = prompts.len();
        let (original, input) = (image.original_size, image.input_size);
        let mut encoded = EncodedPrompts::default();
        if !first.points.is_empty() {
            let coords: Vec<f32> = prompts
                .iter()
                .flat_map(|p| {
                    p.points
                        .iter()
                        .flat_map(|&pt| transforms::scale_point(pt, original, input))
                })
                .collect();
            encoded.points = Some(Tensor::from_vec(
                coords,
                (b, first.points.len(), 2),
                &self.device,
            )?);
            encoded.labels = Some(prompts.iter().map(|p| p.labels.clone()).collect());
        }
        if first.bbox.is_some() {
            let coords: Vec<f32> = prompts
                .iter()
                .filter_map(|p| p.bbox)
                .flat_map(|[x0, y0, x1, y1]| {
                    let a = transforms::scale_point([x0, y0], original, input);
                    let c = transforms::scale_point([x1, y1], original, input);
                    [a[0], a[1], c[0], c[1]]
                })
                .collect();
            encoded.boxes = Some(Tensor::from_vec(coords, (b, 4), &self.device)?);
        }
        if first.mask_input.is_some() {
            let values: Vec<f32> = prompts
                .iter()
                .filter_map(|p| p.mask_input.as_deref())
                .flatten()
                .copied()
                .collect();
            encoded.masks = Some(Tensor::from_vec(
                values,
                (b, 1, LOW_RES_SIZE, LOW_RES_SIZE),
                &self.device,
            )?);
        }
        let (sparse, dense) = self.prompt_encoder.forward(&encoded, &self.device)?;
        let (low_res, iou) = self.mask_decoder.forward(
            &image.features,
            &self.dense_positions,
            &sparse,
            &dense,
            multimask,
        )?;
        let (_, masks, low_h, low_w) = low_res.dims4()?;
        let low_res: Vec<Vec<f32>> = low_res.flatten_from(1)?.to_vec2()?;
        let iou: Vec<Vec<f32>> = iou.to_vec2()?;
        Ok(low_res
            .into_iter()
            .zip(iou)
            .map(|(low_res_logits, iou)| Prediction {
                logits: transforms::postprocess(
                    &low_res_logits,
                    masks,
                    (low_h, low_w),
                    input,
                    original,
                ),
                iou,
                low_res_logits,
                masks,
                height: original.0,
                width: original.1,
            })
            .collect())
    }
}
