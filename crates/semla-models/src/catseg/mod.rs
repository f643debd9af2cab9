//! CAT-Seg (Cho et al., CVPR 2024), the open-vocabulary segmenter SemLA runs on:
//! CLIP in OpenAI's layout fine-tuned for dense features, a cost volume between
//! every pixel and every class name, and a cost aggregator; run with the
//! official sliding-window inference.
//!
//! Module paths equal the official checkpoint's keys (`model_final.pth`):
//! - [`clip`][]: `sem_seg_head.predictor.clip_model.*` (both towers),
//! - [`aggregator`][]: `sem_seg_head.predictor.transformer.*`,
//! - `upsample1` / `upsample2` (here): the guidance of the decoder,
//! - [`sliding`][]: the official `inference_sliding_window`,
//! - [`checkpoint`][]: reading `model_final.pth` or a converted folder,
//! - [`classes`][]: class lists, prompts and the official domains' lists,
//! - [`config`][]: every dimension, from the official YAML and the checkpoint,
//! - [`random`][]: random weights at any size, for benchmarks.
//!
//! The class list is an input ([`CatSeg::set_classes`]); the text embeddings
//! are computed per class list and per adapter mixture (the text tower carries
//! LoRA sites), or once for the first image ([`TextCache::FirstImage`], the
//! official code's behaviour).

pub mod aggregator;
pub mod checkpoint;
pub mod classes;
pub mod clip;
pub mod config;
pub mod random;
pub mod sliding;

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use semla_adapters::{Adaptation, AdaptedLinear, SiteInfo};

pub use aggregator::{Aggregator, AggregatorOutput};
pub use clip::{ClipTowers, DenseVisual};
pub use config::{CLIP_PIXEL_MEAN, CLIP_PIXEL_STD, CatSegClipConfig, CatSegConfig};

use crate::clip::ClipTokenizer;
use crate::config::SegmenterConfig;
use crate::layers::{ConvTranspose, Kernels};
use crate::segmenter::{Normalization, Segmenter};

type Result<T> = candle_core::Result<T>;

/// Checkpoint prefix of the CLIP towers.
pub const CLIP_PREFIX: &str = config::CLIP_PREFIX;
/// Checkpoint prefix of the aggregator.
pub const AGGREGATOR_PREFIX: &str = "sem_seg_head.predictor.transformer";

/// When the class text embeddings are computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TextCache {
    /// For every forward, with each image's own adapter mixture (the text tower
    /// carries live LoRA sites): what the mixture means.
    #[default]
    PerMixture,
    /// Once, with the first image's mixture, then reused, as the official
    /// predictor's cache does within one target domain (semla-spec 7.4): a
    /// fidelity option for reproducing the paper's numbers.
    FirstImage,
}

/// Everything one batch of CLIP views produced (the parity tests compare each).
#[derive(Clone, Debug)]
pub struct ViewOutput {
    /// Dense CLIP output `[V, 1 + G*G, E]` and the two guidance blocks.
    pub visual: DenseVisual,
    /// Cost volume `[V, T, G, G]` and logits `[V, T, 4G, 4G]`.
    pub aggregator: AggregatorOutput,
}

/// The CAT-Seg model.
pub struct CatSeg {
    config: CatSegConfig,
    clip: ClipTowers,
    aggregator: Aggregator,
    upsample1: ConvTranspose,
    upsample2: ConvTranspose,
    /// Shared by the copies [`CatSeg::with_classes`] makes.
    tokenizer: Arc<ClipTokenizer>,
    /// `[T, context]` token ids of the current class prompts.
    token_ids: Option<Tensor>,
    text_cache: TextCache,
    cached_text: Mutex<Option<Tensor>>,
    kernels: Kernels,
    device: Device,
}

impl std::fmt::Debug for CatSeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatSeg")
            .field("config", &self.config)
            .field("text_cache", &self.text_cache)
            .finish_non_exhaustive()
    }
}

impl CatSeg {
    /// Builds the model from checkpoint tensors in `vb` (official key names).
    pub fn new(vb: &VarBuilder, config: &CatSegConfig) -> Result<Self> {
        config.validate().map_err(candle_core::Error::Msg)?;
        let mut clip = ClipTowers::load(vb, CLIP_PREFIX, &config.clip, config.guidance_layers)?;
        clip.apply_qkv_lora = config.apply_qkv_lora;
        let width = config.clip.vision_width;
        let tokenizer =
            Arc::new(ClipTokenizer::new().map_err(|e| candle_core::Error::Msg(e.to_string()))?);
        let mut model = Self {
            config: config.clone(),
            aggregator: Aggregator::load(vb, AGGREGATOR_PREFIX, config)?,
            upsample1: ConvTranspose::load(
                vb,
                "upsample1",
                width,
                config.decoder_guidance_dims[0],
                2,
            )?,
            upsample2: ConvTranspose::load(
                vb,
                "upsample2",
                width,
                config.decoder_guidance_dims[1],
                4,
            )?,
            clip,
            tokenizer,
            token_ids: None,
            text_cache: TextCache::default(),
            cached_text: Mutex::new(None),
            kernels: Kernels::Fused,
            device: vb.device().clone(),
        };
        if !config.class_names.is_empty() {
            model.set_classes(&config.class_names)?;
        }
        Ok(model)
    }

    /// The configuration (with the current class list).
    pub fn catseg_config(&self) -> &CatSegConfig {
        &self.config
    }

    /// A copy of this model segmenting `classes` instead, with an empty text
    /// cache (the official code's fresh cache for a new target domain). The
    /// weights are shared, not copied: a copy costs the class prompts' tokens.
    pub fn with_classes(&self, classes: &[String]) -> Result<Self> {
        let mut copy = Self {
            config: self.config.clone(),
            clip: self.clip.clone(),
            aggregator: self.aggregator.clone(),
            upsample1: self.upsample1.clone(),
            upsample2: self.upsample2.clone(),
            tokenizer: Arc::clone(&self.tokenizer),
            token_ids: None,
            text_cache: self.text_cache,
            cached_text: Mutex::new(None),
            kernels: self.kernels,
            device: self.device.clone(),
        };
        copy.set_classes(classes)?;
        Ok(copy)
    }

    /// Sets the classes to segment (tokenises their prompts; clears the text cache).
    /// A prompt longer than the context is an error, as in the official tokenizer.
    pub fn set_classes(&mut self, classes: &[String]) -> Result<()> {
        if classes.is_empty() {
            candle_core::bail!("CAT-Seg needs at least one class name");
        }
        let context = self.config.clip.context_length;
        let prompts = self.config.prompts(classes);
        let mut ids = Vec::with_capacity(prompts.len() * context);
        for (prompt, name) in prompts.iter().zip(classes) {
            let bpe = self.tokenizer.encode(prompt);
            if bpe.len() + 2 > context {
                candle_core::bail!(
                    "class {name:?}: its prompt has {} tokens, more than the context of {context}",
                    bpe.len() + 2
                );
            }
            let row = self.tokenizer.encode_context(
                prompt,
                context,
                crate::clip::tokenizer::Padding::Zeros,
            );
            if row
                .iter()
                .any(|&id| id as usize >= self.config.clip.vocab_size)
            {
                candle_core::bail!("class {name:?}: a token id is outside the model's vocabulary");
            }
            ids.extend(row);
        }
        self.token_ids = Some(Tensor::from_vec(
            ids,
            (classes.len(), context),
            &self.device,
        )?);
        self.config.class_names = classes.to_vec();
        self.clear_text_cache();
        Ok(())
    }

    /// The current token ids `[T, context]`.
    pub fn token_ids(&self) -> Result<&Tensor> {
        self.token_ids.as_ref().ok_or_else(|| {
            candle_core::Error::Msg("CAT-Seg has no class list: give --classes".into())
        })
    }

    /// Chooses when text embeddings are computed (clears the cache).
    pub fn set_text_cache(&mut self, cache: TextCache) {
        self.text_cache = cache;
        self.clear_text_cache();
    }

    /// Forgets cached text embeddings (a new target domain in the official code).
    pub fn clear_text_cache(&self) {
        if let Ok(mut cached) = self.cached_text.lock() {
            *cached = None;
        }
    }

    /// Chooses fused inference kernels or differentiable composed ones.
    pub fn set_kernels(&mut self, kernels: Kernels) {
        self.kernels = kernels;
    }

    /// The class text embeddings `[T, E]` (unit norm) under one mixture
    /// (`adaptation` with a single row of coefficients).
    pub fn text_embeddings(&self, adaptation: &Adaptation) -> Result<Tensor> {
        self.clip
            .encode_text(self.token_ids()?, adaptation, self.kernels)
    }

    /// The logits CAT-Seg trains on (the official `CATSeg.forward` in training
    /// mode): `images` `[N, 3, H, W]` CLIP-normalised crops, padded to a multiple
    /// of 32, resized to the CLIP input, through the model with differentiable
    /// kernels, logits `[N, T, 4G, 4G]` bilinearly resized to `[N, T, H, W]`. The
    /// text embeddings are computed under the adaptation (no cache), from the
    /// current class list. The guidance is the inference path's (layers of
    /// `guidance_layers`), not the official LoRA trainer's duplicated hooks
    /// (semla-spec 7.5): a trained adapter sees the features it is used with.
    pub fn training_logits(&self, images: &Tensor, adaptation: &Adaptation) -> Result<Tensor> {
        let kernels = Kernels::Composed;
        let (n, _, h, w) = images.dims4()?;
        let s = self.config.clip_resolution;
        let (ph, pw) = (h.div_ceil(32) * 32, w.div_ceil(32) * 32);
        let padded = images
            .pad_with_zeros(2, 0, ph - h)?
            .pad_with_zeros(3, 0, pw - w)?;
        let view = if (ph, pw) == (s, s) {
            padded
        } else {
            crate::layers::bilinear_resize_differentiable(&padded, s, s, false)?
        };
        if adaptation.mixtures()? != 1 {
            candle_core::bail!("CAT-Seg trains one adapter mixture per batch");
        }
        let text = self
            .clip
            .encode_text(self.token_ids()?, adaptation, kernels)?;
        let (t, e) = text.dims2()?;
        let text = text.unsqueeze(0)?.broadcast_as((n, t, e))?.contiguous()?;
        let logits = self
            .forward_views_with(&view, &text, adaptation, kernels)?
            .aggregator
            .logits;
        crate::layers::bilinear_resize_differentiable(&logits, h, w, false)
    }

    /// The text embeddings of each of `images` images `[N, T, E]`, honouring the cache.
    fn text_for_images(&self, images: usize, adaptation: &Adaptation) -> Result<Tensor> {
        if self.text_cache == TextCache::FirstImage {
            let mut cached = self
                .cached_text
                .lock()
                .map_err(|_| candle_core::Error::Msg("text cache lock poisoned".into()))?;
            let text = match cached.as_ref() {
                Some(text) => text.clone(),
                None => {
                    let text = self.text_embeddings(&adaptation.for_image(0)?)?;
                    *cached = Some(text.clone());
                    text
                }
            };
            let (t, e) = text.dims2()?;
            return text
                .unsqueeze(0)?
                .broadcast_as((images, t, e))?
                .contiguous();
        }
        if adaptation.mixtures()? == 1 {
            let text = self.text_embeddings(adaptation)?;
            let (t, e) = text.dims2()?;
            return text
                .unsqueeze(0)?
                .broadcast_as((images, t, e))?
                .contiguous();
        }
        let per_image = (0..images)
            .map(|n| self.text_embeddings(&adaptation.for_image(n)?))
            .collect::<Result<Vec<_>>>()?;
        Tensor::stack(&per_image, 0)
    }

    /// One batch of views: `pixels` `[V, 3, S, S]` CLIP-normalised at the CLIP
    /// resolution, `text` `[V, T, E]`, `adaptation` with one row per view (or one
    /// shared row) -> dense features, cost and logits `[V, T, 4G, 4G]`.
    pub fn forward_views(
        &self,
        pixels: &Tensor,
        text: &Tensor,
        adaptation: &Adaptation,
    ) -> Result<ViewOutput> {
        self.forward_views_with(pixels, text, adaptation, self.kernels)
    }

    fn forward_views_with(
        &self,
        pixels: &Tensor,
        text: &Tensor,
        adaptation: &Adaptation,
        kernels: Kernels,
    ) -> Result<ViewOutput> {
        let visual = self.clip.encode_image_dense(pixels, adaptation, kernels)?;
        let (v, tokens, e) = visual.features.dims3()?;
        let g = ((tokens - 1) as f64).sqrt() as usize;
        let grid = |x: &Tensor| -> Result<Tensor> {
            let c = x.dim(2)?;
            x.narrow(1, 1, tokens - 1)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((v, c, g, g))
        };
        let image = grid(&visual.features)?;
        debug_assert_eq!(image.dim(1)?, e);
        let g4 = self.upsample1.forward(&grid(&visual.guidance[0])?)?;
        let g5 = self.upsample2.forward(&grid(&visual.guidance[1])?)?;
        let aggregator = self
            .aggregator
            .forward(&image, text, [&g4, &g5], adaptation, kernels)?;
        Ok(ViewOutput { visual, aggregator })
    }

    /// The official sliding-window inference of one image: `image` `[3, H, W]`
    /// CLIP-normalised at its own size, `adaptation` one mixture -> per-class
    /// probabilities `[T, out_h, out_w]` (`out` = the dataset record's size).
    pub fn sliding_window_probabilities(
        &self,
        image: &Tensor,
        out: (usize, usize),
        adaptation: &Adaptation,
    ) -> Result<Tensor> {
        let views = sliding::views(image, self.config.clip_resolution)?;
        let n_views = views.dim(0)?;
        let text = self.text_for_images(1, adaptation)?;
        let (_, t, e) = text.dims3()?;
        let text = text.broadcast_as((n_views, t, e))?.contiguous()?;
        let logits = self
            .forward_views(&views, &text, &adaptation.repeat_each(n_views)?)?
            .aggregator
            .logits;
        sliding::combine(&logits, out)
    }

    /// The non-sliding forward: the image bilinearly resized to the CLIP input,
    /// sigmoid, resized to `out` (`TEST.SLIDING_WINDOW False`): `[T, out_h, out_w]`.
    pub fn whole_image_probabilities(
        &self,
        image: &Tensor,
        out: (usize, usize),
        adaptation: &Adaptation,
    ) -> Result<Tensor> {
        let s = self.config.clip_resolution;
        let (_, h, w) = image.dims3()?;
        // detectron2's ImageList pads to a multiple of 32 before the resize.
        let (ph, pw) = (h.div_ceil(32) * 32, w.div_ceil(32) * 32);
        let padded = image
            .pad_with_zeros(1, 0, ph - h)?
            .pad_with_zeros(2, 0, pw - w)?;
        let view = sliding::resize(&padded.unsqueeze(0)?, s, s)?;
        let text = self.text_for_images(1, adaptation)?;
        let logits = self
            .forward_views(&view, &text, adaptation)?
            .aggregator
            .logits;
        let probs = candle_nn::ops::sigmoid(&logits)?;
        sliding::resize(&probs, out.0, out.1)?.squeeze(0)
    }

    /// Per-class probabilities `[N, T, out_h, out_w]` of a batch of images
    /// (each image alone through the official inference, with its own mixture).
    pub fn probabilities(
        &self,
        images: &Tensor,
        out: (usize, usize),
        adaptation: &Adaptation,
    ) -> Result<Tensor> {
        let n = images.dim(0)?;
        let mut all = Vec::with_capacity(n);
        for i in 0..n {
            let image = images.get(i)?;
            let mixture = adaptation.for_image(i)?;
            all.push(if self.config.sliding_window {
                self.sliding_window_probabilities(&image, out, &mixture)?
            } else {
                self.whole_image_probabilities(&image, out, &mixture)?
            });
        }
        Tensor::stack(&all, 0)
    }

    fn all_sites(&self) -> Vec<&AdaptedLinear> {
        let mut sites = self.clip.sites();
        sites.extend(self.aggregator.sites());
        sites
    }
}

/// The smallest probability whose logarithm [`CatSeg`]'s forward returns (so
/// that a probability of 0 stays finite).
const MIN_PROBABILITY: f64 = 1e-12;

impl Segmenter for CatSeg {
    fn num_classes(&self) -> usize {
        self.config.class_names.len()
    }

    fn normalization(&self) -> Normalization {
        // On [0, 1] values: the official (x - 255 m) / (255 s) on 0..255.
        Normalization {
            mean: CLIP_PIXEL_MEAN.map(|m| m / 255.0),
            std: CLIP_PIXEL_STD.map(|s| s / 255.0),
        }
    }

    /// Log-probabilities `[N, T, H, W]` at input resolution: `ln p` of the
    /// official per-class (sigmoid) probabilities, so argmax and every ratio
    /// between classes are the official ones.
    fn forward(&self, images: &Tensor, adaptation: &Adaptation) -> Result<Tensor> {
        let (_, _, h, w) = images.dims4()?;
        self.probabilities(images, (h, w), adaptation)?
            .maximum(MIN_PROBABILITY)?
            .log()
    }

    fn training_logits(&self, images: &Tensor, adaptation: &Adaptation) -> Result<Tensor> {
        CatSeg::training_logits(self, images, adaptation)
    }

    fn training_objective(&self) -> crate::segmenter::TrainingObjective {
        crate::segmenter::TrainingObjective::SigmoidOneHot
    }

    /// The mean of the dense CLIP features of the whole image (resized to the
    /// CLIP input), unit norm: `[N, E]`.
    fn embed(&self, images: &Tensor) -> Result<Tensor> {
        let s = self.config.clip_resolution;
        let view = sliding::resize(images, s, s)?;
        let visual = self
            .clip
            .encode_image_dense(&view, &Adaptation::none(), self.kernels)?;
        let tokens = visual.features.dim(1)?;
        let mean = visual.features.narrow(1, 1, tokens - 1)?.mean(1)?;
        mean.broadcast_div(&mean.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-12)?)
    }

    /// Per-channel mean and deviation of the patch embedding (before any site).
    fn embed_style(&self, images: &Tensor) -> Result<Tensor> {
        let s = self.config.clip_resolution;
        let view = sliding::resize(images, s, s)?;
        let p = self.config.clip.patch_size;
        let patches = view.conv2d(self.clip.patch_weight(), 0, p, 1, 1)?;
        crate::segmenter::channel_statistics(&patches)
    }

    fn sites(&self) -> Vec<SiteInfo> {
        self.all_sites()
            .into_iter()
            .map(AdaptedLinear::info)
            .collect()
    }

    fn merge_delta(&mut self, path: &str, delta: &Tensor) -> Result<()> {
        let mut sites = self.clip.sites_mut();
        sites.extend(self.aggregator.sites_mut());
        for site in sites {
            if site.path() == path {
                let merged = (site.weight() + delta.to_dtype(site.weight().dtype())?)?;
                site.set_weight(merged)?;
                return self.clip.restack_qkv();
            }
        }
        candle_core::bail!("the model has no adapter site `{path}`")
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = self.clip.named_tensors(CLIP_PREFIX);
        out.extend(self.aggregator.named_tensors(AGGREGATOR_PREFIX));
        self.upsample1.named("upsample1", &mut out);
        self.upsample2.named("upsample2", &mut out);
        out
    }

    fn config(&self) -> SegmenterConfig {
        SegmenterConfig::CatSeg(Box::new(self.config.clone()))
    }
}

/// Builds CAT-Seg from named tensors (checkpoint keys), all cast to f32.
pub fn from_tensors(
    tensors: std::collections::HashMap<String, Tensor>,
    config: &CatSegConfig,
    device: &Device,
) -> Result<CatSeg> {
    CatSeg::new(
        &VarBuilder::from_tensors(tensors, DType::F32, device),
        config,
    )
}
