//! Lite Reduced Atrous Spatial Pyramid Pooling (LR-ASPP) decoder, as in the
//! MobileNetV3 segmentation head, without BatchNorm so that it trains with
//! batches of one or two images:
//!
//! ```text
//! high [N, Ch, h, w] ─ cbr (1x1 conv + bias, ReLU) ──────────┐
//!                    └ global avg pool ─ scale (1x1 conv) ─ sigmoid ─ * ─ high_classifier (1x1) ─ upsample to low ─┐
//! low  [N, Cl, 2h.., ..] ─ low_classifier (1x1) ───────────────────────────────────────────────────────────────── + ─ logits
//! ```
//!
//! Every convolution is an [`AdaptedConv2d`] site at `decoder.<name>`.
//! Also provides [`resize_bilinear`], a differentiable bilinear resize.

use candle_core::{Device, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use semla_adapters::{Adaptation, AdaptedConv2d, SiteInfo};

/// Loads (or, over a `VarMap`, creates with Kaiming-normal weights and zero
/// biases) a 1x1 convolution site at `<vb prefix>.<name>`; `path` is its full module path.
pub(crate) fn conv1x1(
    vb: &VarBuilder,
    path: &str,
    name: &str,
    cin: usize,
    cout: usize,
) -> Result<AdaptedConv2d> {
    let vb = vb.pp(name);
    let weight = vb.get_with_hints(
        (cout, cin, 1, 1),
        "weight",
        candle_nn::init::DEFAULT_KAIMING_NORMAL,
    )?;
    let bias = vb.get_with_hints(cout, "bias", Init::Const(0.))?;
    AdaptedConv2d::new(path, weight, Some(bias), 1, 0, 1)
}

/// Forward of a 1x1, stride-1, unpadded convolution site as matrix products:
/// same result as [`AdaptedConv2d::forward`] (the base weight plus the
/// site's factored update from `adaptation`), without candle's im2col copy,
/// which made 1x1 convolutions about 8x slower than the matrix product.
/// Other geometries fall back to [`AdaptedConv2d::forward`].
///
/// `x`: `[N, in, H, W]` -> `[N, out, H, W]`.
pub fn pointwise(site: &AdaptedConv2d, x: &Tensor, adaptation: &Adaptation) -> Result<Tensor> {
    let g = site.geometry();
    if g.kernel_size != 1 || g.stride != 1 || g.padding != 0 {
        return site.forward(x, adaptation);
    }
    let (n, cin, h, w) = x.dims4()?;
    let x3 = x.contiguous()?.reshape((n, cin, h * w))?;
    let update = adaptation.get(site.path());
    // One mixture for the batch and a large map: `W + ΔW` is cheaper than the factors.
    let merged = match update {
        Some(update) if update.merge_is_cheaper(n, n * h * w)? => {
            Some(update.merged_weight(site.weight())?)
        }
        _ => None,
    };
    let weight = merged.as_ref().unwrap_or(site.weight());
    let cout = weight.dim(0)?;
    // Frozen path when adapter training: only `x` gets a gradient (see `semla_adapters::frozen`).
    let mut y = semla_adapters::frozen::pointwise(&x3, &weight.reshape((cout, cin))?, site.bias())?;
    if let Some(update) = update.filter(|_| merged.is_none()) {
        let rank = update.a.dim(0)?;
        let a = update.a.reshape((rank, cin))?.broadcast_left(n)?;
        let b = update.b.reshape((cout, rank))?.broadcast_left(n)?;
        let coeff = update.coeff.to_dtype(x.dtype())?.unsqueeze(2)?; // [N|1, R, 1]
        let hidden = a.matmul(&x3)?.broadcast_mul(&coeff)?; // [N, R, HW]
        y = (y + b.matmul(&hidden)?)?;
    }
    y.reshape((n, cout, h, w))
}

/// Joins a module prefix and a name with a dot (no dot when the prefix is empty).
pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Logistic sigmoid from differentiable primitives (`1 / (1 + e^-x)`).
pub(crate) fn sigmoid(x: &Tensor) -> Result<Tensor> {
    (x.neg()?.exp()? + 1.0)?.recip()
}

/// The LR-ASPP head.
#[derive(Clone, Debug)]
pub struct LrAspp {
    cbr: AdaptedConv2d,
    scale: AdaptedConv2d,
    low_classifier: AdaptedConv2d,
    high_classifier: AdaptedConv2d,
}

impl LrAspp {
    /// Builds the head under `prefix` (e.g. `decoder`). `low_channels` and
    /// `high_channels` are the channels of the two backbone feature maps,
    /// `inter_channels` the width of the pooled branch (128 in MobileNetV3).
    pub fn new(
        vb: &VarBuilder,
        prefix: &str,
        low_channels: usize,
        high_channels: usize,
        inter_channels: usize,
        num_classes: usize,
    ) -> Result<Self> {
        let vbp = vb.pp(prefix);
        Ok(Self {
            cbr: conv1x1(
                &vbp,
                &join(prefix, "cbr"),
                "cbr",
                high_channels,
                inter_channels,
            )?,
            scale: conv1x1(
                &vbp,
                &join(prefix, "scale"),
                "scale",
                high_channels,
                inter_channels,
            )?,
            low_classifier: conv1x1(
                &vbp,
                &join(prefix, "low_classifier"),
                "low_classifier",
                low_channels,
                num_classes,
            )?,
            high_classifier: conv1x1(
                &vbp,
                &join(prefix, "high_classifier"),
                "high_classifier",
                inter_channels,
                num_classes,
            )?,
        })
    }

    /// `low`: `[N, Cl, hl, wl]`, `high`: `[N, Ch, hh, wh]` -> logits `[N, C, hl, wl]`.
    pub fn forward(&self, low: &Tensor, high: &Tensor, adaptation: &Adaptation) -> Result<Tensor> {
        let branch = pointwise(&self.cbr, high, adaptation)?.relu()?;
        let pooled = high.mean_keepdim(3)?.mean_keepdim(2)?;
        let gate = sigmoid(&pointwise(&self.scale, &pooled, adaptation)?)?;
        let branch = branch.broadcast_mul(&gate)?;
        let (_, _, hl, wl) = low.dims4()?;
        let branch = resize_bilinear(&branch, hl, wl)?;
        let high_logits = pointwise(&self.high_classifier, &branch, adaptation)?;
        pointwise(&self.low_classifier, low, adaptation)? + high_logits
    }

    /// The four sites, in order.
    pub fn sites(&self) -> [&AdaptedConv2d; 4] {
        [
            &self.cbr,
            &self.scale,
            &self.low_classifier,
            &self.high_classifier,
        ]
    }

    /// Mutable access to the sites, in the order of [`LrAspp::sites`].
    pub fn sites_mut(&mut self) -> [&mut AdaptedConv2d; 4] {
        [
            &mut self.cbr,
            &mut self.scale,
            &mut self.low_classifier,
            &mut self.high_classifier,
        ]
    }

    /// Site descriptions.
    pub fn site_infos(&self) -> Vec<SiteInfo> {
        self.sites().iter().map(|s| s.info()).collect()
    }
}

/// Interpolation matrix `[out, in]` of PyTorch's bilinear resize with
/// `align_corners=False` (no antialiasing) along one axis.
fn interpolation_matrix(input: usize, output: usize, device: &Device) -> Result<Tensor> {
    let mut m = vec![0f32; output * input];
    let scale = input as f64 / output as f64;
    for o in 0..output {
        let src = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(input - 1);
        let i1 = (i0 + 1).min(input - 1);
        let frac = (src - i0 as f64) as f32;
        m[o * input + i0] += 1.0 - frac;
        m[o * input + i1] += frac;
    }
    Tensor::from_vec(m, (output, input), device)
}

/// Bilinear resize of `x` `[N, C, H, W]` to `[N, C, out_h, out_w]`, equal to
/// PyTorch's `F.interpolate(mode="bilinear", align_corners=False)`.
///
/// Written as two matrix products so that it has a backward pass (candle's
/// `upsample_bilinear2d` has none).
pub fn resize_bilinear(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if h == 0 || w == 0 {
        candle_core::bail!("resize_bilinear: empty input {:?}", x.dims())
    }
    if h == out_h && w == out_w {
        return Ok(x.clone());
    }
    let rw = interpolation_matrix(w, out_w, x.device())?
        .t()?
        .to_dtype(x.dtype())?; // [W, out_w]
    let rh = interpolation_matrix(h, out_h, x.device())?.to_dtype(x.dtype())?; // [out_h, H]
    let x = x.broadcast_matmul(&rw)?; // [N, C, H, out_w]
    rh.broadcast_left(x.dims()[..2].to_vec())?
        .matmul(&x.contiguous()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use semla_test_support::max_abs_diff;

    #[test]
    fn bilinear_matches_hand_computed_values() {
        // 1x1x2x2 -> 4x4, PyTorch align_corners=False: first row
        // [1, 1.25, 1.75, 2] for input rows [1, 2], [3, 4].
        let x = Tensor::new(&[[[[1f32, 2.], [3., 4.]]]], &Device::Cpu).unwrap();
        let y = resize_bilinear(&x, 4, 4).unwrap();
        let v = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let expected = [
            1.0, 1.25, 1.75, 2.0, 1.5, 1.75, 2.25, 2.5, 2.5, 2.75, 3.25, 3.5, 3.0, 3.25, 3.75, 4.0,
        ];
        for (a, b) in v.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{v:?}");
        }
        // Matches candle's own (non-differentiable) bilinear upsampling.
        let big = Tensor::arange(0f32, 30., &Device::Cpu)
            .unwrap()
            .reshape((1, 2, 3, 5))
            .unwrap();
        let ours = resize_bilinear(&big, 7, 11).unwrap();
        let theirs = big.upsample_bilinear2d(7, 11, false).unwrap();
        let d = max_abs_diff(&ours, &theirs);
        assert!(d < 1e-5, "{d}");
    }
}
