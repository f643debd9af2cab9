//! `PromptEncoder` (`prompt_encoder.*`): points, boxes and a mask input to
//! sparse and dense prompt embeddings, with random Fourier positions.

use candle_core::{D, Device, Tensor};
use candle_nn::VarBuilder;

use super::common::{Conv2d, LayerNorm2d};
use super::config::{IMAGE_SIZE, SamConfig};

type Result<T> = candle_core::Result<T>;

/// The prompts of one decoder call, in the padded 1024 input's pixels (the
/// predictor has already rescaled them).
#[derive(Clone, Debug, Default)]
pub struct EncodedPrompts {
    /// Point coordinates `[B, P, 2]` as (x, y), or none.
    pub points: Option<Tensor>,
    /// Point labels `[B, P]` (1 foreground, 0 background, -1 padding), with `points`.
    pub labels: Option<Vec<Vec<i32>>>,
    /// Boxes `[B, 4]` as (x0, y0, x1, y1), or none.
    pub boxes: Option<Tensor>,
    /// Low-resolution mask logits `[B, 1, 256, 256]` (a previous prediction), or none.
    pub masks: Option<Tensor>,
}

/// The prompt encoder.
#[derive(Clone, Debug)]
pub struct PromptEncoder {
    /// `[2, C/2]`: the random Gaussian matrix of the Fourier positions.
    gaussian: Tensor,
    /// `point_embeddings.{0..3}`: background, foreground, box corner 0 and 1; `[1, C]` each.
    point_embeddings: Vec<Tensor>,
    not_a_point: Tensor,
    no_mask: Tensor,
    mask_conv1: Conv2d,
    mask_norm1: LayerNorm2d,
    mask_conv2: Conv2d,
    mask_norm2: LayerNorm2d,
    mask_conv3: Conv2d,
    embed_dim: usize,
    grid: usize,
}

impl PromptEncoder {
    pub(crate) fn load(vb: &VarBuilder, config: &SamConfig) -> Result<Self> {
        let c = config.prompt_embed_dim;
        let m = config.mask_in_chans;
        let point_embeddings = (0..4)
            .map(|i| vb.get((1, c), &format!("point_embeddings.{i}.weight")))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            gaussian: vb.get((2, c / 2), "pe_layer.positional_encoding_gaussian_matrix")?,
            point_embeddings,
            not_a_point: vb.get((1, c), "not_a_point_embed.weight")?,
            no_mask: vb.get((1, c), "no_mask_embed.weight")?,
            mask_conv1: Conv2d::load(vb, "mask_downscaling.0", 1, m / 4, 2, 2, 0, true)?,
            mask_norm1: LayerNorm2d::load(vb, "mask_downscaling.1", m / 4)?,
            mask_conv2: Conv2d::load(vb, "mask_downscaling.3", m / 4, m, 2, 2, 0, true)?,
            mask_norm2: LayerNorm2d::load(vb, "mask_downscaling.4", m)?,
            mask_conv3: Conv2d::load(vb, "mask_downscaling.6", m, c, 1, 1, 0, true)?,
            embed_dim: c,
            grid: config.encoder.grid(),
        })
    }

    /// `coords` `[..., 2]` in `[0, 1]` -> `[..., C]`: `[sin, cos](2 pi (2c - 1) G)`.
    fn fourier(&self, coords: &Tensor) -> Result<Tensor> {
        let dims = coords.dims().to_vec();
        let rows = coords.elem_count() / 2;
        let projected = coords
            .affine(2.0, -1.0)?
            .reshape((rows, 2))?
            .matmul(&self.gaussian)?
            .affine(2.0 * std::f64::consts::PI, 0.0)?;
        let out = Tensor::cat(&[projected.sin()?, projected.cos()?], D::Minus1)?;
        let mut out_dims = dims;
        if let Some(last) = out_dims.last_mut() {
            *last = self.embed_dim;
        }
        out.reshape(out_dims)
    }

    /// The positions of the image embedding's grid, `[1, C, 64, 64]`
    /// (`get_dense_pe`): cell centres `(i + 0.5) / 64`, stacked (x, y).
    pub fn dense_positions(&self, device: &Device) -> Result<Tensor> {
        let g = self.grid;
        let mut coords = Vec::with_capacity(g * g * 2);
        for y in 0..g {
            for x in 0..g {
                // cumsum(ones) - 0.5, divided by the side, in f32 as torch.
                coords.push((x as f32 + 1.0 - 0.5) / g as f32);
                coords.push((y as f32 + 1.0 - 0.5) / g as f32);
            }
        }
        let coords = Tensor::from_vec(coords, (g, g, 2), device)?;
        self.fourier(&coords)?
            .permute((2, 0, 1))?
            .contiguous()?
            .unsqueeze(0)
    }

    /// Sparse `[B, T, C]` and dense `[B, C, 64, 64]` embeddings of a batch of
    /// prompts (`B` from whichever prompt is given; 1 when none is).
    pub fn forward(&self, prompts: &EncodedPrompts, device: &Device) -> Result<(Tensor, Tensor)> {
        let batch = match (&prompts.points, &prompts.boxes, &prompts.masks) {
            (Some(p), _, _) => p.dim(0)?,
            (None, Some(b), _) => b.dim(0)?,
            (None, None, Some(m)) => m.dim(0)?,
            (None, None, None) => 1,
        };
        let mut sparse = Vec::new();
        if let Some(points) = &prompts.points {
            let labels = prompts
                .labels
                .as_ref()
                .ok_or_else(|| candle_core::Error::Msg("points without labels".into()))?;
            sparse.push(self.embed_points(points, labels, prompts.boxes.is_none())?);
        }
        if let Some(boxes) = &prompts.boxes {
            sparse.push(self.embed_boxes(boxes)?);
        }
        let sparse = if sparse.is_empty() {
            Tensor::zeros((batch, 0, self.embed_dim), candle_core::DType::F32, device)?
        } else {
            Tensor::cat(&sparse, 1)?
        };
        let g = self.grid;
        let dense = match &prompts.masks {
            Some(masks) => self.embed_masks(masks)?,
            None => self
                .no_mask
                .reshape((1, self.embed_dim, 1, 1))?
                .broadcast_as((batch, self.embed_dim, g, g))?
                .contiguous()?,
        };
        Ok((sparse, dense))
    }

    /// `_embed_points`: +0.5, a padding point (label -1) when there is no box,
    /// the Fourier position (zeroed for padding), plus the label's embedding.
    fn embed_points(&self, points: &Tensor, labels: &[Vec<i32>], pad: bool) -> Result<Tensor> {
        let (b, p, _) = points.dims3()?;
        let mut points = (points + 0.5)?;
        let mut labels = labels.to_vec();
        if pad {
            let zeros = Tensor::zeros((b, 1, 2), points.dtype(), points.device())?;
            points = Tensor::cat(&[&points, &zeros], 1)?;
            for row in &mut labels {
                row.push(-1);
            }
        }
        let n = p + usize::from(pad);
        if labels.len() != b || labels.iter().any(|row| row.len() != n) {
            candle_core::bail!("point labels do not match the points ({b} x {p})");
        }
        let positions = self.fourier(&(points / IMAGE_SIZE as f64)?)?; // [B, N, C]
        let mut rows = Vec::with_capacity(b * n);
        for (i, row) in labels.iter().enumerate() {
            for (j, &label) in row.iter().enumerate() {
                let position = positions.get(i)?.get(j)?.unsqueeze(0)?;
                rows.push(match label {
                    -1 => self.not_a_point.clone(),
                    0 => (position + &self.point_embeddings[0])?,
                    1 => (position + &self.point_embeddings[1])?,
                    // Other labels keep the bare position, as the official code.
                    _ => position,
                });
            }
        }
        Tensor::cat(&rows, 0)?.reshape((b, n, self.embed_dim))
    }

    /// `_embed_boxes`: both corners (+0.5) with the corner embeddings.
    fn embed_boxes(&self, boxes: &Tensor) -> Result<Tensor> {
        let b = boxes.dim(0)?;
        let corners = ((boxes + 0.5)? / IMAGE_SIZE as f64)?.reshape((b, 2, 2))?;
        let positions = self.fourier(&corners)?; // [B, 2, C]
        let first = positions
            .narrow(1, 0, 1)?
            .broadcast_add(&self.point_embeddings[2])?;
        let second = positions
            .narrow(1, 1, 1)?
            .broadcast_add(&self.point_embeddings[3])?;
        Tensor::cat(&[first, second], 1)
    }

    /// `_embed_masks`: `[B, 1, 256, 256]` -> `[B, C, 64, 64]`.
    fn embed_masks(&self, masks: &Tensor) -> Result<Tensor> {
        let x = self.mask_conv1.forward(masks)?;
        let x = self.mask_norm1.forward(&x)?.gelu_erf()?;
        let x = self.mask_conv2.forward(&x)?;
        let x = self.mask_norm2.forward(&x)?.gelu_erf()?;
        self.mask_conv3.forward(&x)
    }
}
