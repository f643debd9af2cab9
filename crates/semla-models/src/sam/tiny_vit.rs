//! MobileSAM's image encoder, `TinyViT` (`mobile_sam/modeling/tiny_vit_sam.py`;
//! `image_encoder.*` in `mobile_sam.pt`): a two-convolution patch embedding to
//! a 256x256 grid, a stage of MBConv blocks, three stages of windowed attention
//! blocks (attention with learned per-offset biases, a depthwise convolution,
//! an MLP) joined by `PatchMerging` convolutions, and SAM's neck.
//!
//! Every `Conv2d_BN` (a convolution without bias followed by a `BatchNorm2d`)
//! is folded into one convolution with bias at load, as the official `fuse()`
//! does; the statistics are the checkpoint's running ones (eval mode).

use std::collections::HashMap;

use candle_core::{D, DType, Tensor};
use candle_nn::VarBuilder;

use super::common::{Linear, Neck, window_partition, window_unpartition};
use super::config::TinyVitConfig;
use crate::efficientnet::depthwise_conv2d;
use crate::kernels::FusedAttention;
use crate::layers::{Kernels, LayerNorm, bias_gelu_erf_owned, gelu_erf_owned, softmax_last_dim};

type Result<T> = candle_core::Result<T>;

/// `nn.BatchNorm2d`'s default epsilon, which TinyViT keeps.
const BN_EPS: f64 = 1e-5;
/// `nn.LayerNorm`'s default epsilon, which TinyViT's attention and MLP norms keep.
const LN_EPS: f64 = 1e-5;

/// The TinyViT encoder.
#[derive(Clone, Debug)]
pub struct TinyVit {
    patch_embed: [ConvBn; 2],
    mbconv: Vec<MbConv>,
    /// `layers.{i}.downsample` after stages 0, 1 and 2.
    merges: Vec<PatchMerging>,
    /// The attention blocks of stages 1, 2 and 3.
    stages: Vec<Vec<Block>>,
    neck: Neck,
}

impl TinyVit {
    pub(crate) fn load(vb: &VarBuilder, config: &TinyVitConfig) -> Result<Self> {
        let args = &config.args;
        let dims = &args.embed_dims;
        let (d0, half) = (dims[0], dims[0] / 2);
        let seq = vb.pp("patch_embed.seq");
        let patch_embed = [
            ConvBn::load(&seq.pp("0"), 3, half, 3, 2, false)?,
            ConvBn::load(&seq.pp("2"), half, d0, 3, 2, false)?,
        ];
        let hidden = config.hidden_widths[0];
        let mbconv = (0..args.depths[0])
            .map(|i| MbConv::load(&vb.pp(format!("layers.0.blocks.{i}")), d0, hidden))
            .collect::<Result<Vec<_>>>()?;
        let merges = (0..dims.len() - 1)
            .map(|stage| {
                PatchMerging::load(
                    &vb.pp(format!("layers.{stage}.downsample")),
                    dims[stage],
                    dims[stage + 1],
                    args.merge_stride(stage),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let stages = (1..dims.len())
            .map(|stage| {
                (0..args.depths[stage])
                    .map(|i| {
                        Block::load(
                            &vb.pp(format!("layers.{stage}.blocks.{i}")),
                            dims[stage],
                            args.num_heads[stage],
                            args.window_sizes[stage],
                            config.hidden_widths[stage],
                            args.local_conv_size,
                        )
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            patch_embed,
            mbconv,
            merges,
            stages,
            neck: Neck::load(&vb.pp("neck"), dims[dims.len() - 1], config.out_chans)?,
        })
    }

    /// `x` `[B, 3, 1024, 1024]` (normalised, padded) -> the image embedding
    /// `[B, 256, 64, 64]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let [first, second] = &self.patch_embed;
        let mut x = second.conv(&first.conv(x, true)?, false)?; // [B, d0, 256, 256]
        for block in &self.mbconv {
            x = block.forward(&x)?;
        }
        // From here on channels-last `[B, H, W, C]`, as TinyViT's `[B, H * W, C]` tokens.
        let Some(first_merge) = self.merges.first() else {
            candle_core::bail!("TinyViT: no PatchMerging after stage 0")
        };
        let mut x = first_merge.forward_nchw(&x)?;
        for (stage, blocks) in self.stages.iter().enumerate() {
            for block in blocks {
                x = block.forward(&x)?;
            }
            if let Some(merge) = self.merges.get(stage + 1) {
                x = merge.forward_channels_last(&x)?;
            }
        }
        self.neck.forward(&x)
    }
}

/// `Conv2d_BN` folded: the convolution's weight scaled by `gamma / sqrt(var + eps)`
/// per output channel, the bias `beta - mean * gamma / sqrt(var + eps)`.
#[derive(Clone, Debug)]
struct ConvBn {
    /// `[out, in / groups, k, k]`.
    weight: Tensor,
    /// `[out]`.
    bias: Tensor,
    stride: usize,
    kernel: usize,
}

impl ConvBn {
    /// `depthwise`: one group per channel (`cin == cout`); padding is `k / 2`.
    fn load(
        vb: &VarBuilder,
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        depthwise: bool,
    ) -> Result<Self> {
        let per_group = if depthwise { 1 } else { cin };
        let weight = vb.get((cout, per_group, kernel, kernel), "c.weight")?;
        let bn = vb.pp("bn");
        let gamma = bn.get(cout, "weight")?;
        let beta = bn.get(cout, "bias")?;
        let mean = bn.get(cout, "running_mean")?;
        let var = bn.get(cout, "running_var")?;
        // A negative variance would turn every later value into NaN without a word.
        if var.min_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()? < 0.0 {
            candle_core::bail!("{}.running_var: a negative variance", bn.prefix())
        }
        let scale = (gamma / (var + BN_EPS)?.sqrt()?)?;
        Ok(Self {
            weight: weight.broadcast_mul(&scale.reshape((cout, 1, 1, 1))?)?,
            bias: (beta - (mean * &scale)?)?,
            stride,
            kernel,
        })
    }

    /// The bias added on axis `axis` of `y`, then GELU if `gelu`.
    /// (`y` is a fresh result: GELU overwrites it in place.)
    fn bias_then(&self, y: Tensor, axis: usize, gelu: bool) -> Result<Tensor> {
        if gelu {
            return bias_gelu_erf_owned(y, &self.bias, axis, Kernels::Fused);
        }
        let mut shape = vec![1; y.rank()];
        shape[axis] = self.bias.elem_count();
        y.broadcast_add(&self.bias.reshape(shape)?)
    }

    /// A dense convolution `[B, in, H, W]` -> `[B, out, H', W']` (padding `k / 2`),
    /// GELU after it if `gelu`: per image, the weight matrix `[out, in * k * k]`
    /// times the image's patch columns `[in * k * k, H' * W']` (im2col), which
    /// is the NCHW output itself.
    fn conv(&self, x: &Tensor, gelu: bool) -> Result<Tensor> {
        let (b, _, _, _) = x.dims4()?;
        let (k, stride) = (self.kernel, self.stride);
        let matrix = self.weight.flatten_from(1)?;
        let images = (0..b)
            .map(|i| {
                let image = x.get(i)?.contiguous()?;
                let (_, h, w) = image.dims3()?;
                let (oh, ow) = (
                    (h + 2 * (k / 2) - k) / stride + 1,
                    (w + 2 * (k / 2) - k) / stride + 1,
                );
                let columns = image.apply_op1_no_bwd(&Im2Col { kernel: k, stride })?;
                matrix.matmul(&columns)?.reshape(((), oh, ow))
            })
            .collect::<Result<Vec<_>>>()?;
        self.bias_then(Tensor::stack(&images, 0)?, 1, gelu)
    }

    /// A depthwise convolution `[B, C, H, W]` -> `[B, C, H', W']`, GELU after it if `gelu`.
    fn depthwise(&self, x: &Tensor, gelu: bool) -> Result<Tensor> {
        let pad = self.kernel / 2;
        let y = depthwise_conv2d(x, &self.weight, &self.bias, self.stride, [pad; 4])?;
        if gelu {
            gelu_erf_owned(y, Kernels::Fused)
        } else {
            Ok(y)
        }
    }

    /// A 1x1 convolution on `[B, in, H, W]` (the weight matrix times each image's
    /// `[in, H * W]`), GELU after it if `gelu`.
    fn pointwise_nchw(&self, x: &Tensor, gelu: bool) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let y = self
            .weight
            .flatten_from(1)?
            .broadcast_matmul(&x.reshape((b, c, h * w))?)?;
        self.bias_then(y, 1, gelu)?.reshape((b, (), h, w))
    }

    /// A 1x1 convolution on channels-last `[..., in]` -> `[..., out]`, GELU after it if `gelu`.
    fn pointwise_channels_last(&self, x: &Tensor, gelu: bool) -> Result<Tensor> {
        let y = crate::layers::linear(x, &self.weight.flatten_from(1)?, None)?;
        let last = y.rank() - 1;
        self.bias_then(y, last, gelu)
    }
}

/// The patch columns of one image for a `k x k` convolution with padding
/// `k / 2`: `[C, H, W]` -> `[C * k * k, H' * W']`, row `(c, ky, kx)` holding
/// `x[c, oy * s + ky - k / 2, ox * s + kx - k / 2]` (zero outside the image).
struct Im2Col {
    kernel: usize,
    stride: usize,
}

impl candle_core::CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let image = semla_adapters::host::contiguous_f32("im2col", storage, layout)?;
        let [c, h, w] = layout.dims() else {
            candle_core::bail!(
                "im2col: expected a [C, H, W] image, got {:?}",
                layout.dims()
            )
        };
        let (c, h, w) = (*c, *h, *w);
        let (k, s, pad) = (self.kernel, self.stride, self.kernel / 2);
        if h + 2 * pad < k || w + 2 * pad < k || s == 0 {
            candle_core::bail!("im2col: a {h}x{w} image does not fit kernel {k} / stride {s}")
        }
        let (oh, ow) = ((h + 2 * pad - k) / s + 1, (w + 2 * pad - k) / s + 1);
        let mut out = vec![0f32; c * k * k * oh * ow];
        crate::kernels::parallel_chunks(&mut out, oh * ow, |offset, chunk| {
            for (r, row) in chunk.chunks_mut(oh * ow).enumerate() {
                let index = offset / (oh * ow) + r;
                let (channel, ky, kx) = (index / (k * k), index / k % k, index % k);
                let plane = &image[channel * h * w..(channel + 1) * h * w];
                for (oy, out_row) in row.chunks_mut(ow).enumerate() {
                    let Some(iy) = (oy * s + ky).checked_sub(pad).filter(|&iy| iy < h) else {
                        continue;
                    };
                    let input = &plane[iy * w..(iy + 1) * w];
                    for (ox, v) in out_row.iter_mut().enumerate() {
                        if let Some(ix) = (ox * s + kx).checked_sub(pad).filter(|&ix| ix < w) {
                            *v = input[ix];
                        }
                    }
                }
            }
        });
        Ok((
            candle_core::CpuStorage::F32(out),
            candle_core::Shape::from((c * k * k, oh * ow)),
        ))
    }
}

/// `MBConv` (stage 0, `[B, C, H, W]`): 1x1 expansion, GELU, 3x3 depthwise,
/// GELU, 1x1 projection, the shortcut added, GELU.
#[derive(Clone, Debug)]
struct MbConv {
    conv1: ConvBn,
    conv2: ConvBn,
    conv3: ConvBn,
}

impl MbConv {
    fn load(vb: &VarBuilder, dim: usize, hidden: usize) -> Result<Self> {
        Ok(Self {
            conv1: ConvBn::load(&vb.pp("conv1"), dim, hidden, 1, 1, false)?,
            conv2: ConvBn::load(&vb.pp("conv2"), hidden, hidden, 3, 1, true)?,
            conv3: ConvBn::load(&vb.pp("conv3"), hidden, dim, 1, 1, false)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.pointwise_nchw(x, true)?;
        let h = self.conv2.depthwise(&h, true)?;
        let h = self.conv3.pointwise_nchw(&h, false)?;
        gelu_erf_owned((h + x)?, Kernels::Fused)
    }
}

/// `PatchMerging`: 1x1 convolution, GELU, 3x3 depthwise convolution (stride 2,
/// or 1 into widths 320/448/576), GELU, 1x1 convolution; out channels-last.
#[derive(Clone, Debug)]
struct PatchMerging {
    conv1: ConvBn,
    conv2: ConvBn,
    conv3: ConvBn,
}

impl PatchMerging {
    fn load(vb: &VarBuilder, dim: usize, out: usize, stride: usize) -> Result<Self> {
        Ok(Self {
            conv1: ConvBn::load(&vb.pp("conv1"), dim, out, 1, 1, false)?,
            conv2: ConvBn::load(&vb.pp("conv2"), out, out, 3, stride, true)?,
            conv3: ConvBn::load(&vb.pp("conv3"), out, out, 1, 1, false)?,
        })
    }

    /// `[B, C, H, W]` (after the MBConv stage) -> `[B, H', W', out]`.
    fn forward_nchw(&self, x: &Tensor) -> Result<Tensor> {
        self.finish(&self.conv1.pointwise_nchw(x, true)?)
    }

    /// `[B, H, W, C]` -> `[B, H', W', out]`.
    fn forward_channels_last(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.pointwise_channels_last(x, true)?;
        self.finish(&h.permute((0, 3, 1, 2))?.contiguous()?)
    }

    /// The depthwise convolution and the last 1x1 on `[B, out, H, W]`.
    fn finish(&self, h: &Tensor) -> Result<Tensor> {
        let h = self.conv2.depthwise(h, true)?;
        let h = h.permute((0, 2, 3, 1))?.contiguous()?;
        self.conv3.pointwise_channels_last(&h, false)
    }
}

/// `TinyViTBlock` on `[B, H, W, C]`: windowed attention (its norm inside, the
/// windows zero-padded before it), the residual, a depthwise convolution, then
/// the MLP (its norm inside) with its residual.
#[derive(Clone, Debug)]
struct Block {
    attn: Attention,
    local_conv: ConvBn,
    mlp_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    window: usize,
}

impl Block {
    fn load(
        vb: &VarBuilder,
        dim: usize,
        heads: usize,
        window: usize,
        hidden: usize,
        local_conv: usize,
    ) -> Result<Self> {
        let mlp = vb.pp("mlp");
        Ok(Self {
            attn: Attention::load(&vb.pp("attn"), dim, heads, window)?,
            local_conv: ConvBn::load(&vb.pp("local_conv"), dim, dim, local_conv, 1, true)?,
            mlp_norm: LayerNorm::load(&mlp, "norm", dim, LN_EPS)?,
            fc1: Linear::load(&mlp, "fc1", dim, hidden)?,
            fc2: Linear::load(&mlp, "fc2", hidden, dim)?,
            window,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let ws = self.window;
        let attended = if h == ws && w == ws {
            self.attn.forward(&x.reshape((b, h * w, c))?)?
        } else {
            let (windows, padded) = window_partition(x, ws)?;
            let n = windows.dim(0)?;
            let out = self.attn.forward(&windows.reshape((n, ws * ws, c))?)?;
            window_unpartition(&out.reshape((n, ws, ws, c))?, ws, padded, (h, w))?
        };
        let x = (x + attended.reshape((b, h, w, c))?)?;
        let conv = self
            .local_conv
            .depthwise(&x.permute((0, 3, 1, 2))?.contiguous()?, false)?;
        let x = conv.permute((0, 2, 3, 1))?.contiguous()?;
        let m = self.mlp_norm.forward(&x, Kernels::Fused)?;
        let m = self.fc2.forward(&self.fc1.forward_gelu(&m)?)?;
        x + m
    }
}

/// TinyViT's `Attention`: layer norm, one qkv projection whose output holds
/// each head's q, k and v side by side, softmax of `q k^T / sqrt(d)` plus a
/// learned bias per head and (|dy|, |dx|) offset, the output projection.
#[derive(Clone, Debug)]
struct Attention {
    norm: LayerNorm,
    qkv: Linear,
    proj: Linear,
    heads: usize,
    /// `attention_biases[:, attention_bias_idxs]`, `[heads, N, N]` for the window's N tokens.
    bias: Tensor,
    /// The same values, row-major, for the fused attention kernel.
    bias_values: Vec<f32>,
}

impl Attention {
    fn load(vb: &VarBuilder, dim: usize, heads: usize, window: usize) -> Result<Self> {
        let (index, offsets) = offset_index(window);
        let biases = vb.get((heads, offsets), "attention_biases")?;
        let n = window * window;
        let index = Tensor::from_vec(index, n * n, biases.device())?;
        let bias = biases.index_select(&index, 1)?.reshape((heads, n, n))?;
        Ok(Self {
            norm: LayerNorm::load(vb, "norm", dim, LN_EPS)?,
            qkv: Linear::load(vb, "qkv", dim, 3 * dim)?,
            proj: Linear::load(vb, "proj", dim, dim)?,
            heads,
            bias_values: bias.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?,
            bias,
        })
    }

    /// `[B, N, C]` -> `[B, N, C]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let heads = self.heads;
        let hd = c / heads;
        let qkv = self
            .qkv
            .forward(&self.norm.forward(x, Kernels::Fused)?)?
            .reshape((b, n, heads, 3, hd))?
            .permute((3, 0, 2, 1, 4))?
            .contiguous()?; // [3, B, heads, N, hd]
        let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
        let scale = (hd as f64).powf(-0.5);
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            let out = q.apply_op3_no_bwd(
                &k,
                &v,
                &FusedAttention {
                    scale: scale as f32,
                    bias: Some(&self.bias_values),
                },
            )?; // [B, N, C]
            return self.proj.forward(&out);
        }
        let scores = q
            .affine(scale, 0.0)?
            .matmul(&k.transpose(D::Minus2, D::Minus1)?)?
            .broadcast_add(&self.bias)?;
        let out = softmax_last_dim(&scores, Kernels::Fused)?
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, n, c))?;
        self.proj.forward(&out)
    }
}

/// The official `attention_bias_idxs` of a `window x window` window: for every
/// (query, key) pair of positions in row-major order, the index of its offset
/// `(|dy|, |dx|)` numbered by first appearance; and the number of offsets.
fn offset_index(window: usize) -> (Vec<u32>, usize) {
    let points: Vec<(usize, usize)> = (0..window)
        .flat_map(|y| (0..window).map(move |x| (y, x)))
        .collect();
    let mut offsets: HashMap<(usize, usize), u32> = HashMap::new();
    let mut index = Vec::with_capacity(points.len() * points.len());
    for p in &points {
        for q in &points {
            let offset = (p.0.abs_diff(q.0), p.1.abs_diff(q.1));
            let next = offsets.len() as u32;
            index.push(*offsets.entry(offset).or_insert(next));
        }
    }
    (index, offsets.len())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use candle_core::{Device, Tensor};

    use super::{ConvBn, offset_index};

    #[test]
    fn the_im2col_convolution_equals_candles_conv2d() {
        let device = Device::Cpu;
        for (cin, cout, h, w, stride) in [(3, 4, 9, 7, 2), (2, 5, 6, 8, 1), (4, 3, 1, 5, 2)] {
            let n = 2 * cin * h * w;
            let values: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
                .collect();
            let x = Tensor::from_vec(values, (2, cin, h, w), &device).unwrap();
            let weight = Tensor::randn(0f32, 0.5, (cout, cin, 3, 3), &device).unwrap();
            let bias = Tensor::randn(0f32, 0.5, cout, &device).unwrap();
            let conv = ConvBn {
                weight: weight.clone(),
                bias: bias.clone(),
                stride,
                kernel: 3,
            };
            let want = x
                .conv2d(&weight, 1, stride, 1, 1)
                .unwrap()
                .broadcast_add(&bias.reshape((1, cout, 1, 1)).unwrap())
                .unwrap();
            for gelu in [false, true] {
                let got = conv.conv(&x, gelu).unwrap();
                assert_eq!(got.dims(), want.dims());
                let want = if gelu {
                    want.gelu_erf().unwrap()
                } else {
                    want.clone()
                };
                let diff = semla_test_support::max_abs_diff(&got, &want);
                assert!(diff < 1e-5, "{cin}->{cout} {h}x{w} stride {stride}: {diff}");
            }
        }
    }

    #[test]
    fn offsets_are_numbered_by_first_appearance() {
        // A 2x2 window: points (0,0), (0,1), (1,0), (1,1); from (0,0) the offsets
        // (0,0), (0,1), (1,0), (1,1) appear first, so every later pair reuses them.
        let (index, count) = offset_index(2);
        assert_eq!(count, 4);
        assert_eq!(index, vec![0, 1, 2, 3, 1, 0, 3, 2, 2, 3, 0, 1, 3, 2, 1, 0]);
        let (index, count) = offset_index(7);
        assert_eq!(count, 49);
        // Query (3, 3) against key (0, 6): offset (3, 3), first seen from (0, 0) to (3, 3).
        assert_eq!(index[(3 * 7 + 3) * 49 + 6], 3 * 7 + 3);
    }
}
