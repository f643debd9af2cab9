//! The official `CATSeg.inference_sliding_window` (kernel 384, overlap 0.333,
//! output 640): the image resized to 640 x 640, four 384 tiles with stride 256
//! and a global view of the original image, each resized to the CLIP input; the
//! logits resized to 384 before the sigmoid, the tiles folded and averaged by
//! their overlap count, averaged 50/50 with the global view, and resized to the
//! record's size. Every resize is bilinear, `align_corners=False`, no antialias.

use candle_core::Tensor;

type Result<T> = candle_core::Result<T>;

/// Tile side of the official sliding window.
pub const KERNEL: usize = 384;
/// The official overlap (`stride = int(384 * (1 - 0.333)) = 256`).
pub const OVERLAP: f64 = 0.333;
/// Side of the resized image the tiles cover.
pub const OUT_RES: usize = 640;

/// The tile stride: `int(KERNEL * (1 - OVERLAP))`.
pub fn stride() -> usize {
    (KERNEL as f64 * (1.0 - OVERLAP)) as usize
}

/// Top-left offsets of the tiles, row-major (as `nn.Unfold`).
pub fn tile_offsets() -> Vec<(usize, usize)> {
    let s = stride();
    let per_axis: Vec<usize> = (0..)
        .map(|i| i * s)
        .take_while(|o| o + KERNEL <= OUT_RES)
        .collect();
    per_axis
        .iter()
        .flat_map(|&y| per_axis.iter().map(move |&x| (y, x)))
        .collect()
}

/// Bilinear resize `[N, C, H, W]` -> `[N, C, h, w]` (`align_corners=False`).
pub fn resize(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let x = x.contiguous()?;
    let (_, _, ih, iw) = x.dims4()?;
    if (ih, iw) == (h, w) {
        return Ok(x);
    }
    x.upsample_bilinear2d(h, w, false)
}

/// The views of one image `[3, H, W]` (normalised): the tiles of its 640 x 640
/// resize, then the 384 x 384 resize of the original, all resized to
/// `clip_resolution`: `[tiles + 1, 3, S, S]`.
pub fn views(image: &Tensor, clip_resolution: usize) -> Result<Tensor> {
    let image = image.unsqueeze(0)?;
    let big = resize(&image, OUT_RES, OUT_RES)?;
    let mut views = Vec::new();
    for (y, x) in tile_offsets() {
        views.push(
            big.narrow(2, y, KERNEL)?
                .narrow(3, x, KERNEL)?
                .contiguous()?,
        );
    }
    views.push(resize(&image, KERNEL, KERNEL)?);
    let views = Tensor::cat(&views, 0)?;
    resize(&views, clip_resolution, clip_resolution)
}

/// The views' logits `[tiles + 1, T, g, g]` -> per-class probabilities
/// `[T, out_h, out_w]`.
pub fn combine(logits: &Tensor, out: (usize, usize)) -> Result<Tensor> {
    let offsets = tile_offsets();
    let (v, t, _, _) = logits.dims4()?;
    if v != offsets.len() + 1 {
        candle_core::bail!("{v} views for {} tiles and the global view", offsets.len());
    }
    let probs = candle_nn::ops::sigmoid(&resize(logits, KERNEL, KERNEL)?)?;
    let global = resize(&probs.narrow(0, v - 1, 1)?, OUT_RES, OUT_RES)?.squeeze(0)?;
    // nn.Fold: the tiles summed into the canvas, and the per-pixel tile count.
    let tiles: Vec<f32> = probs
        .narrow(0, 0, offsets.len())?
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    let mut canvas = vec![0f32; t * OUT_RES * OUT_RES];
    let mut count = vec![0f32; OUT_RES * OUT_RES];
    let plane = KERNEL * KERNEL;
    for (i, &(y, x)) in offsets.iter().enumerate() {
        for class in 0..t {
            let tile = &tiles[(i * t + class) * plane..(i * t + class + 1) * plane];
            let dst = &mut canvas[class * OUT_RES * OUT_RES..(class + 1) * OUT_RES * OUT_RES];
            for (r, row) in tile.chunks_exact(KERNEL).enumerate() {
                let start = (y + r) * OUT_RES + x;
                for (d, &v) in dst[start..start + KERNEL].iter_mut().zip(row) {
                    *d += v;
                }
            }
        }
        for row in y..y + KERNEL {
            for c in &mut count[row * OUT_RES + x..row * OUT_RES + x + KERNEL] {
                *c += 1.0;
            }
        }
    }
    if count.contains(&0.0) {
        candle_core::bail!("the tiles leave pixels of the {OUT_RES} canvas uncovered");
    }
    let canvas =
        Tensor::from_vec(canvas, (t, OUT_RES, OUT_RES), probs.device())?.to_dtype(probs.dtype())?;
    let count =
        Tensor::from_vec(count, (1, OUT_RES, OUT_RES), probs.device())?.to_dtype(probs.dtype())?;
    let averaged = ((canvas.broadcast_div(&count)? + global)? / 2.0)?;
    resize(&averaged.unsqueeze(0)?, out.0, out.1)?.squeeze(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_official_window_gives_four_tiles_that_cover_the_canvas() {
        assert_eq!(stride(), 256);
        assert_eq!(tile_offsets(), [(0, 0), (0, 256), (256, 0), (256, 256)]);
    }

    #[test]
    fn constant_logits_give_their_sigmoid_everywhere() {
        let logits = Tensor::full(0.5f32, (5, 2, 96, 96), &candle_core::Device::Cpu).unwrap();
        let p = combine(&logits, (30, 40)).unwrap();
        assert_eq!(p.dims(), &[2, 30, 40]);
        let want = 1.0 / (1.0 + (-0.5f32).exp());
        let values: Vec<f32> = p.flatten_all().unwrap().to_vec1().unwrap();
        assert!(values.iter().all(|v| (v - want).abs() < 1e-6));
    }
}
