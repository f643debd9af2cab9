//! A tiny segmenter for fast tests and demos (about 28k parameters at the
//! default width 16; trains in seconds on a CPU at 128x96).
//!
//! ```text
//! image ─ stem (3x3/2) ─ down1 (3x3/2) ─┬─ down2 (3x3/2) ─ head (1x1) ─ classifier (1x1) ─ upsample to 1/4 ─┐
//!                                       └─ skip (1x1) ──────────────────────────────────────────────────── + ─ upsample ─ logits
//! ```
//!
//! The 3x3 convolutions are plain; the 1x1 convolutions `head`, `classifier`
//! and `skip` are adapter sites. ReLU activations, no normalisation layers.

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};
use semla_adapters::{Adaptation, AdaptedConv2d, SiteInfo};

use crate::config::SegmenterConfig;
pub use crate::config::TinySegConfig;
use crate::lraspp::{conv1x1, pointwise, resize_bilinear};
use crate::segmenter::{Normalization, Segmenter};

/// A plain 3x3 stride-2 convolution with padding 1 and bias.
#[derive(Clone, Debug)]
struct Down {
    /// `[out, in, 3, 3]`
    weight: Tensor,
    /// `[out]`
    bias: Tensor,
}

impl Down {
    fn new(vb: &VarBuilder, cin: usize, cout: usize) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(
                (cout, cin, 3, 3),
                "weight",
                candle_nn::init::DEFAULT_KAIMING_NORMAL,
            )?,
            bias: vb.get_with_hints(cout, "bias", Init::Const(0.))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Frozen path when adapter training (only `x` gets a gradient); plain ops otherwise.
        semla_adapters::frozen::conv2d(x, &self.weight, Some(&self.bias), 1, 2, 1, 1)?.relu()
    }
}

/// The tiny segmenter.
#[derive(Clone, Debug)]
pub struct TinySeg {
    config: TinySegConfig,
    stem: Down,
    down1: Down,
    down2: Down,
    head: AdaptedConv2d,
    classifier: AdaptedConv2d,
    skip: AdaptedConv2d,
}

impl TinySeg {
    /// Builds the model from `vb` (frozen tensors, or a `VarMap` where missing
    /// variables are created: Kaiming-normal weights, zero biases).
    pub fn new(vb: &VarBuilder, config: &TinySegConfig) -> Result<Self> {
        let w = config.width;
        let c = config.num_classes;
        Ok(Self {
            config: config.clone(),
            stem: Down::new(&vb.pp("stem"), 3, w)?,
            down1: Down::new(&vb.pp("down1"), w, 2 * w)?,
            down2: Down::new(&vb.pp("down2"), 2 * w, 4 * w)?,
            head: conv1x1(vb, "head", "head", 4 * w, 4 * w)?,
            classifier: conv1x1(vb, "classifier", "classifier", 4 * w, c)?,
            skip: conv1x1(vb, "skip", "skip", 2 * w, c)?,
        })
    }

    /// `[N, 3, H, W]` -> (1/4 features `[N, 2w, H/4, W/4]`, head features `[N, 4w, H/8, W/8]`).
    fn features(&self, images: &Tensor, adaptation: &Adaptation) -> Result<(Tensor, Tensor)> {
        let x = self.stem.forward(images)?;
        let quarter = self.down1.forward(&x)?;
        let eighth = self.down2.forward(&quarter)?;
        let head = pointwise(&self.head, &eighth, adaptation)?.relu()?;
        Ok((quarter, head))
    }

    fn sites_ref(&self) -> [&AdaptedConv2d; 3] {
        [&self.head, &self.classifier, &self.skip]
    }
}

impl Segmenter for TinySeg {
    fn num_classes(&self) -> usize {
        self.config.num_classes
    }

    fn normalization(&self) -> Normalization {
        Normalization::IMAGENET
    }

    fn forward(&self, images: &Tensor, adaptation: &Adaptation) -> Result<Tensor> {
        let (_, _, h, w) = images.dims4()?;
        let (quarter, head) = self.features(images, adaptation)?;
        let (_, _, qh, qw) = quarter.dims4()?;
        let coarse = resize_bilinear(&pointwise(&self.classifier, &head, adaptation)?, qh, qw)?;
        let logits = (pointwise(&self.skip, &quarter, adaptation)? + coarse)?;
        resize_bilinear(&logits, h, w)
    }

    fn embed(&self, images: &Tensor) -> Result<Tensor> {
        let (_, head) = self.features(images, &Adaptation::none())?;
        head.mean(3)?.mean(2)
    }

    /// Statistics of the stem's output (no adapter site precedes it): `[N, 2 * width]`.
    fn embed_style(&self, images: &Tensor) -> Result<Tensor> {
        crate::segmenter::channel_statistics(&self.stem.forward(images)?)
    }

    fn sites(&self) -> Vec<SiteInfo> {
        self.sites_ref().iter().map(|s| s.info()).collect()
    }

    fn merge_delta(&mut self, path: &str, delta: &Tensor) -> Result<()> {
        let sites = vec![&mut self.head, &mut self.classifier, &mut self.skip];
        crate::segmenter::merge_into_sites(sites, path, delta)
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (name, d) in [
            ("stem", &self.stem),
            ("down1", &self.down1),
            ("down2", &self.down2),
        ] {
            out.push((format!("{name}.weight"), d.weight.clone()));
            out.push((format!("{name}.bias"), d.bias.clone()));
        }
        for s in self.sites_ref() {
            out.push((format!("{}.weight", s.path()), s.weight().clone()));
            if let Some(b) = s.bias() {
                out.push((format!("{}.bias", s.path()), b.clone()));
            }
        }
        out
    }

    fn config(&self) -> SegmenterConfig {
        SegmenterConfig::Tiny(self.config.clone())
    }
}
