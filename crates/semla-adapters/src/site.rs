//! Adapter sites: the layers of a model that a LoRA adapter can change, and the
//! run-time form of a mixture of adapters at each of them.
//!
//! A model built with [`AdaptedLinear`] / [`AdaptedConv2d`] layers takes an
//! [`Adaptation`] in its forward pass. The adaptation maps a site's module path
//! (the PEFT module path, e.g. `vision_model.encoder.layers.0.mlp.fc1`) to a
//! [`FactoredSite`]: the concatenated low-rank factors of every adapter that
//! touches the site, plus one coefficient per image and per rank row. This is
//! the factored path of SemLA's fusion:
//!
//! `y_n = W x_n + b + sum_j coeff[n, j] * B[:, j] * (A[j, :] x_n)`
//!
//! which equals PEFT's `cat` merge with weights `w_{n,i}` when the rows of
//! adapter `i` carry `coeff = w_{n,i} * s_i`, while letting every image of one
//! batch use its own mixture and never copying the base weights.

use std::collections::HashMap;

use candle_core::{D, DType, Result, Tensor};

/// Geometry of a convolutional site. The LoRA `A` factor of a Conv2d site is a
/// convolution with the base layer's kernel size, stride, padding and
/// dilation; `B` is always a 1x1 convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Conv2dGeometry {
    /// Square kernel size `k` of the base convolution.
    pub kernel_size: usize,
    /// Stride of the base convolution.
    pub stride: usize,
    /// Zero padding on each side.
    pub padding: usize,
    /// Dilation of the base convolution.
    pub dilation: usize,
}

/// What kind of layer a site is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum SiteKind {
    /// `nn.Linear`: weight `[out, in]`, LoRA `A [r, in]`, `B [out, r]`.
    Linear,
    /// `nn.Conv2d` with `groups = 1`: weight `[out, in, k, k]`, LoRA
    /// `A [r, in, k, k]`, `B [out, r, 1, 1]`.
    Conv2d(Conv2dGeometry),
}

/// A site as a model reports it, used to check that an adapter fits a model.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SiteInfo {
    /// PEFT module path (the checkpoint key path without `.weight`).
    pub path: String,
    /// Layer kind and geometry.
    pub kind: SiteKind,
    /// Input features (Linear) or input channels (Conv2d).
    pub in_features: usize,
    /// Output features (Linear) or output channels (Conv2d).
    pub out_features: usize,
}

/// The low-rank update of one site for one batch, in factored form.
///
/// Shapes, with `R` the total rank of all adapters present at the site and
/// `N` the batch size:
/// - `a`: `[R, in]` (Linear) or `[R, in, k, k]` (Conv2d),
/// - `b`: `[out, R]` (Linear) or `[out, R, 1, 1]` (Conv2d),
/// - `coeff`: `[N, R]`, or `[1, R]` to use one mixture for the whole batch.
///
/// `a` and `b` may be variables: gradients flow through them when training.
#[derive(Clone, Debug)]
pub struct FactoredSite {
    /// Stacked `A` factors, one block of rows per adapter.
    pub a: Tensor,
    /// Stacked `B` factors, one block of columns per adapter.
    pub b: Tensor,
    /// Per-image coefficient of each rank row (`w_{n,i} * s_i` for the rows of adapter `i`).
    pub coeff: Tensor,
}

impl FactoredSite {
    /// Stacks the factors of several adapters at one site.
    ///
    /// `parts[i] = (A_i, B_i, s_i)` with `s_i` the adapter's scaling, and
    /// `weights[n][i]` the weight of adapter `i` for image `n` (one row per
    /// image; a single row applies to the whole batch).
    pub fn stack(parts: &[(&Tensor, &Tensor, f64)], weights: &[Vec<f64>]) -> Result<Self> {
        let Some(first) = parts.first() else {
            candle_core::bail!("FactoredSite::stack: no adapter factors given")
        };
        let device = first.0.device().clone();
        let dtype = first.0.dtype();
        let ranks: Vec<usize> = parts
            .iter()
            .map(|(a, _, _)| a.dim(0))
            .collect::<Result<_>>()?;
        let total_rank: usize = ranks.iter().sum();
        let mut coeff = Vec::with_capacity(weights.len() * total_rank);
        for row in weights {
            if row.len() != parts.len() {
                candle_core::bail!(
                    "FactoredSite::stack: {} weights for {} adapters",
                    row.len(),
                    parts.len()
                )
            }
            for ((&w, &r), (_, _, s)) in row.iter().zip(&ranks).zip(parts) {
                coeff.extend(std::iter::repeat_n((w * s) as f32, r));
            }
        }
        let coeff =
            Tensor::from_vec(coeff, (weights.len(), total_rank), &device)?.to_dtype(dtype)?;
        let a = Tensor::cat(&parts.iter().map(|(a, _, _)| *a).collect::<Vec<_>>(), 0)?;
        let b = Tensor::cat(&parts.iter().map(|(_, b, _)| *b).collect::<Vec<_>>(), 1)?;
        Ok(Self { a, b, coeff })
    }

    /// The dense weight update for image `n` (or the shared mixture when
    /// `coeff` has one row): `B diag(coeff[n]) A`, shaped like the base weight
    /// (`[out, in]` or `[out, in, k, k]`).
    pub fn delta_weight(&self, n: usize) -> Result<Tensor> {
        let row = if self.coeff.dim(0)? == 1 { 0 } else { n };
        let coeff = self.coeff.get(row)?; // [R]
        let rank = self.a.dim(0)?;
        let a_dims = self.a.dims().to_vec();
        let a2 = self.a.reshape((rank, ()))?; // [R, in*k*k]
        let out = self.b.dim(0)?;
        let b2 = self
            .b
            .reshape((out, rank))?
            .broadcast_mul(&coeff.unsqueeze(0)?)?;
        let delta = b2.matmul(&a2)?; // [out, in*k*k]
        let mut shape = a_dims;
        shape[0] = out;
        delta.reshape(shape)
    }

    /// Whether this update is cheaper applied as a merged weight `W + ΔW` than in
    /// factored form, for a batch of `batch` images with `out_rows` output positions
    /// in all (tokens, or pixels of the output maps).
    ///
    /// Merging costs `out * fan_in * R` multiply-adds once per forward; the factored
    /// form costs `out_rows * R * (fan_in + out)`. Merging is only possible when the
    /// whole batch shares one mixture, and it is never used while the factors or
    /// coefficients carry gradients (training must see the factored graph). Both forms
    /// give the same result up to float rounding.
    ///
    /// Typical outcome: 1x1 convolutions on large feature maps merge (few weights,
    /// many pixels); transformer linears on a few hundred tokens stay factored.
    pub fn merge_is_cheaper(&self, batch: usize, out_rows: usize) -> Result<bool> {
        if self.coeff.dim(0)? != 1 && batch != 1 {
            return Ok(false);
        }
        if self.a.track_op() || self.b.track_op() || self.coeff.track_op() {
            return Ok(false);
        }
        let rank = self.a.dim(0)?;
        let fan_in = self.a.elem_count() / rank.max(1);
        let out = self.b.dim(0)?;
        let merge = out * fan_in * rank;
        let factored = out_rows * rank * (fan_in + out);
        Ok(merge < factored)
    }

    /// The updates of several Linear sites whose outputs are consecutive blocks
    /// of one wider layer (q, k, v projections computed by one stacked weight) as
    /// one update of that layer: `parts[i] = (first_output_row, site)` inside
    /// `out_features` outputs. `A`s stack by rows; each `B` fills its block of
    /// rows of a zero `[out_features, R_total]`; coefficients stack by columns
    /// (one shared row if every part has one, else one row per image).
    /// Gradients flow back to every part's factors.
    pub fn stack_outputs(parts: &[(usize, &FactoredSite)], out_features: usize) -> Result<Self> {
        if parts.is_empty() {
            candle_core::bail!("FactoredSite::stack_outputs: no site given")
        }
        let images = parts
            .iter()
            .map(|(_, site)| site.coeff.dim(0))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .max()
            .unwrap_or(1);
        let (mut a, mut b, mut coeff) = (Vec::new(), Vec::new(), Vec::new());
        for &(start, site) in parts {
            let (out, rank) = site.b.dims2()?;
            if start + out > out_features {
                candle_core::bail!(
                    "FactoredSite::stack_outputs: rows {start}..{} of {out_features}",
                    start + out
                )
            }
            let zeros = |rows| Tensor::zeros((rows, rank), site.b.dtype(), site.b.device());
            a.push(site.a.clone());
            b.push(Tensor::cat(
                &[
                    zeros(start)?,
                    site.b.clone(),
                    zeros(out_features - start - out)?,
                ],
                0,
            )?);
            coeff.push(site.coeff.broadcast_as((images, rank))?);
        }
        Ok(Self {
            a: Tensor::cat(&a, 0)?,
            b: Tensor::cat(&b, 1)?,
            coeff: Tensor::cat(&coeff, 1)?.contiguous()?,
        })
    }

    /// `base + ΔW` for the batch's one mixture, shaped and typed like `base`.
    pub fn merged_weight(&self, base: &Tensor) -> Result<Tensor> {
        let delta = self
            .delta_weight(0)?
            .to_dtype(base.dtype())?
            .reshape(base.shape())?;
        base + delta
    }
}

/// A set of site updates for one forward pass. `Adaptation::none()` runs the
/// base model.
#[derive(Clone, Debug, Default)]
pub struct Adaptation {
    sites: HashMap<String, FactoredSite>,
}

impl Adaptation {
    /// No adapter at all: the base model.
    pub fn none() -> Self {
        Self::default()
    }

    /// Sets the update of one site (replacing any previous one).
    pub fn insert(&mut self, path: impl Into<String>, site: FactoredSite) {
        self.sites.insert(path.into(), site);
    }

    /// The update of the site at `path`, if any.
    pub fn get(&self, path: &str) -> Option<&FactoredSite> {
        self.sites.get(path)
    }

    /// Whether no site is adapted.
    pub fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }

    /// Paths of the adapted sites, in no particular order.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.sites.keys().map(String::as_str)
    }

    /// The number of per-image mixtures: the rows of the coefficients (1 when one
    /// mixture serves the whole batch, or when nothing is adapted).
    pub fn mixtures(&self) -> Result<usize> {
        let mut rows = 1;
        for site in self.sites.values() {
            rows = rows.max(site.coeff.dim(0)?);
        }
        Ok(rows)
    }

    /// The mixture of image `n` alone, as one shared row (a single-row
    /// adaptation is returned unchanged): for a forward whose batch axis is not
    /// the images (CAT-Seg's text encoder runs one image's class prompts).
    pub fn for_image(&self, n: usize) -> Result<Self> {
        self.map_coefficients(|coeff| {
            if coeff.dim(0)? == 1 {
                Ok(coeff.clone())
            } else {
                coeff.narrow(0, n, 1)
            }
        })
    }

    /// Every image's mixture repeated for `k` consecutive batch rows (image `n`
    /// becomes rows `n*k .. n*k + k`): for a forward that splits each image into
    /// `k` views (CAT-Seg's sliding-window tiles).
    pub fn repeat_each(&self, k: usize) -> Result<Self> {
        self.map_coefficients(|coeff| {
            let (rows, rank) = coeff.dims2()?;
            if rows == 1 {
                Ok(coeff.clone())
            } else {
                coeff
                    .unsqueeze(1)?
                    .broadcast_as((rows, k, rank))?
                    .reshape((rows * k, rank))
            }
        })
    }

    /// The same factors with every site's coefficients `[N, R]` replaced by `f(coeff)`.
    fn map_coefficients(&self, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Self> {
        let mut sites = HashMap::with_capacity(self.sites.len());
        for (path, site) in &self.sites {
            sites.insert(
                path.clone(),
                FactoredSite {
                    a: site.a.clone(),
                    b: site.b.clone(),
                    coeff: f(&site.coeff)?,
                },
            );
        }
        Ok(Self { sites })
    }
}

/// A `Linear` layer with an adapter site. The base weight is a plain tensor
/// (never a `Var`), so it neither receives nor stores gradients.
#[derive(Clone, Debug)]
pub struct AdaptedLinear {
    path: String,
    /// `[out, in]`
    weight: Tensor,
    /// `[out]`
    bias: Option<Tensor>,
}

impl AdaptedLinear {
    /// A layer at module path `path` with weight `[out, in]` and optional bias `[out]`.
    pub fn new(path: impl Into<String>, weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            path: path.into(),
            weight,
            bias,
        }
    }

    /// Loads `<prefix>.weight` (and `<prefix>.bias` when `with_bias`) from a
    /// var builder positioned at the model root; the site's path is `prefix`.
    pub fn load(
        vb: &candle_nn::VarBuilder,
        prefix: &str,
        in_features: usize,
        out_features: usize,
        with_bias: bool,
    ) -> Result<Self> {
        let vb = vb.pp(prefix);
        let weight = vb.get((out_features, in_features), "weight")?;
        let bias = if with_bias {
            Some(vb.get(out_features, "bias")?)
        } else {
            None
        };
        Ok(Self::new(prefix, weight, bias))
    }

    /// The module path of this site.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Base weight `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Bias `[out]`, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Replaces the base weight (used to merge an adapter into the model).
    pub fn set_weight(&mut self, weight: Tensor) -> Result<()> {
        if weight.dims() != self.weight.dims() {
            candle_core::bail!(
                "site {}: new weight shape {:?} differs from {:?}",
                self.path,
                weight.dims(),
                self.weight.dims()
            )
        }
        self.weight = weight;
        Ok(())
    }

    /// Description of the site.
    pub fn info(&self) -> SiteInfo {
        let (out_features, in_features) = self.weight.dims2().unwrap_or((0, 0));
        SiteInfo {
            path: self.path.clone(),
            kind: SiteKind::Linear,
            in_features,
            out_features,
        }
    }

    /// `x`: `[N, ..., in]` -> `[N, ..., out]`, with the site's update from
    /// `adaptation` applied per image.
    pub fn forward(&self, x: &Tensor, adaptation: &Adaptation) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_features = dims[dims.len() - 1];
        let rows = x.elem_count() / in_features.max(1);
        // Rows in, rows out: no reshape node (each costs a pass in the backward).
        let flat = dims.len() == 2;
        let x2 = if flat {
            x.clone()
        } else {
            x.reshape((rows, in_features))?
        };
        let site = adaptation.get(&self.path);
        let merged = match site {
            Some(site) if site.merge_is_cheaper(dims[0], rows)? => {
                Some(site.merged_weight(&self.weight)?)
            }
            _ => None,
        };
        // One node for the base and the update where the kernel takes them.
        if let (Some(site), None) = (site, &merged)
            && let Some(y) =
                crate::frozen::adapted_linear(&x2, &self.weight, self.bias.as_ref(), site)?
        {
            if flat {
                return Ok(y);
            }
            let mut out_dims = dims;
            if let Some(last) = out_dims.last_mut() {
                *last = y.dim(1)?;
            }
            return y.reshape(out_dims.as_slice());
        }
        // Frozen path: during adapter training only `x` gets a gradient (see `frozen`).
        let y = crate::frozen::linear(
            &x2,
            merged.as_ref().unwrap_or(&self.weight),
            self.bias.as_ref(),
        )?;
        let out = y.dim(1)?;
        let mut out_dims = dims;
        if let Some(last) = out_dims.last_mut() {
            *last = out;
        }
        let y = if flat {
            y
        } else {
            y.reshape(out_dims.as_slice())?
        };
        match site {
            Some(site) if merged.is_none() => {
                let delta = linear_update(x, site)?;
                y + delta
            }
            _ => Ok(y),
        }
    }
}

/// The factored LoRA update of a Linear site: `x` `[N, ..., in]` -> `[N, ..., out]`
/// (or token rows `[N*L, in]` when the coefficients have one row per image).
fn linear_update(x: &Tensor, site: &FactoredSite) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    // The images: the coefficients' rows when there is one per image (token
    // rows `[N*L, in]` then fold into `[N, L, in]`), else the leading axis.
    let n = match site.coeff.dim(0)? {
        1 => dims[0],
        images => images,
    };
    let in_features = dims[dims.len() - 1];
    let out = site.b.dim(0)?;
    // [N, L, in] with every middle dimension folded into L.
    let x3 = x.reshape((n, (), in_features))?;
    let h = x3.broadcast_matmul(&site.a.t()?)?; // [N, L, R]
    let coeff = site.coeff.to_dtype(h.dtype())?.unsqueeze(1)?; // [N|1, 1, R]
    let h = h.broadcast_mul(&coeff)?;
    let delta = h.broadcast_matmul(&site.b.t()?)?; // [N, L, out]
    let mut out_dims = dims;
    if let Some(last) = out_dims.last_mut() {
        *last = out;
    }
    delta.reshape(out_dims.as_slice())
}

/// A `Conv2d` layer (groups = 1) with an adapter site.
#[derive(Clone, Debug)]
pub struct AdaptedConv2d {
    path: String,
    /// `[out, in, k, k]`
    weight: Tensor,
    /// `[out]`
    bias: Option<Tensor>,
    geometry: Conv2dGeometry,
}

impl AdaptedConv2d {
    /// A convolution at module path `path` with weight `[out, in, k, k]`.
    pub fn new(
        path: impl Into<String>,
        weight: Tensor,
        bias: Option<Tensor>,
        stride: usize,
        padding: usize,
        dilation: usize,
    ) -> Result<Self> {
        let (_, _, k, k2) = weight.dims4()?;
        if k != k2 {
            candle_core::bail!("only square kernels are supported, got {k}x{k2}")
        }
        let geometry = Conv2dGeometry {
            kernel_size: k,
            stride,
            padding,
            dilation,
        };
        Ok(Self {
            path: path.into(),
            weight,
            bias,
            geometry,
        })
    }

    /// The module path of this site.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Base weight `[out, in, k, k]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Bias `[out]`, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Kernel size, stride, padding and dilation.
    pub fn geometry(&self) -> Conv2dGeometry {
        self.geometry
    }

    /// Replaces the base weight (used to merge an adapter into the model).
    pub fn set_weight(&mut self, weight: Tensor) -> Result<()> {
        if weight.dims() != self.weight.dims() {
            candle_core::bail!(
                "site {}: new weight shape {:?} differs from {:?}",
                self.path,
                weight.dims(),
                self.weight.dims()
            )
        }
        self.weight = weight;
        Ok(())
    }

    /// Description of the site.
    pub fn info(&self) -> SiteInfo {
        let dims = self.weight.dims();
        SiteInfo {
            path: self.path.clone(),
            kind: SiteKind::Conv2d(self.geometry),
            in_features: dims.get(1).copied().unwrap_or(0),
            out_features: dims.first().copied().unwrap_or(0),
        }
    }

    /// `x`: `[N, in, H, W]` -> `[N, out, H', W']`, with the site's update from
    /// `adaptation` applied per image.
    pub fn forward(&self, x: &Tensor, adaptation: &Adaptation) -> Result<Tensor> {
        let g = self.geometry;
        let site = adaptation.get(&self.path);
        let merged = match site {
            Some(site) => {
                let (n, _, h, w) = x.dims4()?;
                let span = g.dilation * g.kernel_size.saturating_sub(1) + 1;
                let out_h = (h + 2 * g.padding).saturating_sub(span) / g.stride + 1;
                let out_w = (w + 2 * g.padding).saturating_sub(span) / g.stride + 1;
                if site.merge_is_cheaper(n, n * out_h * out_w)? {
                    Some(site.merged_weight(&self.weight)?)
                } else {
                    None
                }
            }
            None => None,
        };
        // Frozen path: during adapter training only `x` gets a gradient (see `frozen`).
        let y = crate::frozen::conv2d(
            x,
            merged.as_ref().unwrap_or(&self.weight),
            self.bias.as_ref(),
            g.padding,
            g.stride,
            g.dilation,
            1,
        )?;
        match site {
            None => Ok(y),
            Some(_) if merged.is_some() => Ok(y),
            Some(site) => {
                let h = x.conv2d(&site.a, g.padding, g.stride, g.dilation, 1)?; // [N, R, H', W']
                let coeff = site
                    .coeff
                    .to_dtype(h.dtype())?
                    .unsqueeze(D::Minus1)?
                    .unsqueeze(D::Minus1)?;
                let h = h.broadcast_mul(&coeff)?;
                let delta = h.conv2d(&site.b, 0, 1, 1, 1)?;
                y + delta
            }
        }
    }
}

/// Converts a tensor to f32 if it is not already (site factors are stored in f32).
pub fn as_f32(t: &Tensor) -> Result<Tensor> {
    if t.dtype() == DType::F32 {
        Ok(t.clone())
    } else {
        t.to_dtype(DType::F32)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use candle_core::Device;
    use semla_test_support::max_abs_diff;

    use semla_test_support::ramp;

    /// Sites placed at row blocks of a wider layer: the stacked update's dense
    /// weight is each site's own update in its block and zero elsewhere, for
    /// every image (one shared mixture mixed with a per-image one); a block past
    /// the end is an error.
    #[test]
    fn stacked_outputs_place_each_update_in_its_block() {
        let (inner, width) = (5, 4);
        let q = FactoredSite {
            a: ramp(&[2, inner], 1.0),
            b: ramp(&[width, 2], 2.0),
            coeff: Tensor::new(&[[0.5f32, 2.0]], &Device::Cpu).unwrap(),
        };
        let v = FactoredSite {
            a: ramp(&[3, inner], 0.7),
            b: ramp(&[width, 3], 1.3),
            coeff: Tensor::new(&[[1f32, 2.0, 3.0], [-1.0, 0.5, 0.25]], &Device::Cpu).unwrap(),
        };
        let stacked = FactoredSite::stack_outputs(&[(0, &q), (2 * width, &v)], 3 * width).unwrap();
        assert_eq!(stacked.coeff.dims(), [2, 5]);
        for image in 0..2 {
            let dense = stacked.delta_weight(image).unwrap(); // [3 * width, inner]
            let block = |i: usize| dense.narrow(0, i * width, width).unwrap();
            assert!(max_abs_diff(&block(0), &q.delta_weight(image).unwrap()) < 1e-6);
            assert!(
                max_abs_diff(
                    &block(1),
                    &Tensor::zeros((width, inner), DType::F32, &Device::Cpu).unwrap()
                ) == 0.0
            );
            assert!(max_abs_diff(&block(2), &v.delta_weight(image).unwrap()) < 1e-6);
        }
        assert!(FactoredSite::stack_outputs(&[(2 * width + 1, &v)], 3 * width).is_err());
        assert!(FactoredSite::stack_outputs(&[], 3 * width).is_err());
    }
}
