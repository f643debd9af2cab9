//! SAM's pre- and post-processing as the official `SamPredictor` runs them
//! (`utils/transforms.py::ResizeLongestSide`, `Sam.preprocess`,
//! `Sam.postprocess_masks`): Pillow's 8-bit bilinear resize of the longest side
//! to 1024, normalisation, zero padding, the per-axis rescaling of prompt
//! coordinates, and the two bilinear resizes of the mask logits back to the
//! image, with source indices in f32 as PyTorch computes them.

use crate::clip::preprocess::{Resample, pil_resize};

use super::config::{IMAGE_SIZE, PIXEL_MEAN, PIXEL_STD};

/// `ResizeLongestSide.get_preprocess_shape`: `(h, w)` scaled so the longest
/// side is 1024, each side rounded half up (`int(x + 0.5)`).
pub fn resized_size(height: usize, width: usize) -> (usize, usize) {
    let scale = IMAGE_SIZE as f64 / height.max(width).max(1) as f64;
    let round = |side: usize| ((side as f64 * scale + 0.5) as usize).max(1);
    (round(height), round(width))
}

/// Scales a point given in the original image's pixels to the resized image
/// (`apply_coords`: per-axis ratios in f64, then f32 as the predictor casts).
pub fn scale_point(
    [x, y]: [f64; 2],
    (height, width): (usize, usize),
    (new_h, new_w): (usize, usize),
) -> [f32; 2] {
    [
        (x * (new_w as f64 / width as f64)) as f32,
        (y * (new_h as f64 / height as f64)) as f32,
    ]
}

/// `ResizeLongestSide.apply_image`: an RGB8 image resized so that its longer
/// side is 1024, with Pillow's bilinear filter (torchvision's `resize` of a PIL
/// image). Returns the resized RGB8 image and its (height, width).
pub fn resize_longest_side(rgb: &[u8], height: usize, width: usize) -> (Vec<u8>, (usize, usize)) {
    let (new_h, new_w) = resized_size(height, width);
    let resized = if (new_h, new_w) == (height, width) {
        rgb.to_vec()
    } else {
        pil_resize(rgb, height, width, new_h, new_w, Resample::Bilinear)
    };
    (resized, (new_h, new_w))
}

/// An RGB8 image (`height * width * 3`, interleaved) to the encoder's input
/// `[3, 1024, 1024]` (channel-major, row-major): resized with Pillow's bilinear
/// filter, normalised with SAM's mean and std, zero-padded right and bottom
/// (after normalisation, so the padding is 0). Returns the values and the
/// resized size.
pub fn preprocess(rgb: &[u8], height: usize, width: usize) -> (Vec<f32>, (usize, usize)) {
    let (resized, (new_h, new_w)) = resize_longest_side(rgb, height, width);
    let plane = IMAGE_SIZE * IMAGE_SIZE;
    let mut out = vec![0f32; 3 * plane];
    for y in 0..new_h {
        for x in 0..new_w {
            let px = &resized[(y * new_w + x) * 3..(y * new_w + x) * 3 + 3];
            for c in 0..3 {
                out[c * plane + y * IMAGE_SIZE + x] =
                    (f32::from(px[c]) - PIXEL_MEAN[c]) / PIXEL_STD[c];
            }
        }
    }
    (out, (new_h, new_w))
}

/// Per output index along one axis: the two source indices and their weights,
/// as PyTorch's `compute_indices_weights_linear` (align_corners=False): source
/// `scale * (i + 0.5) - 0.5` in f32, clamped at 0, the second tap clamped at the
/// edge.
fn linear_taps(input: usize, output: usize) -> Vec<(usize, usize, f32, f32)> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|i| {
            let real = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (real.floor() as usize).min(input - 1);
            let lambda = (real - i0 as f32).clamp(0.0, 1.0);
            let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
            (i0, i1, 1.0 - lambda, lambda)
        })
        .collect()
}

/// PyTorch's `F.interpolate(mode="bilinear", align_corners=False)` (no
/// antialias) of `planes` row-major planes of `in_h x in_w` values, reading the
/// top-left `crop_h x crop_w` of each plane (the input is that crop).
fn bilinear(
    values: &[f32],
    planes: usize,
    (in_h, in_w): (usize, usize),
    (crop_h, crop_w): (usize, usize),
    (out_h, out_w): (usize, usize),
) -> Vec<f32> {
    let rows = linear_taps(crop_h, out_h);
    let cols = linear_taps(crop_w, out_w);
    let mut out = vec![0f32; planes * out_h * out_w];
    for p in 0..planes {
        let plane = &values[p * in_h * in_w..(p + 1) * in_h * in_w];
        for (oy, &(y0, y1, wy0, wy1)) in rows.iter().enumerate() {
            let (r0, r1) = (&plane[y0 * in_w..], &plane[y1 * in_w..]);
            let dst = &mut out[(p * out_h + oy) * out_w..(p * out_h + oy + 1) * out_w];
            for (o, &(x0, x1, wx0, wx1)) in dst.iter_mut().zip(&cols) {
                let t0 = r0[x0] * wx0 + r0[x1] * wx1;
                let t1 = r1[x0] * wx0 + r1[x1] * wx1;
                *o = t0 * wy0 + t1 * wy1;
            }
        }
    }
    out
}

/// `Sam.postprocess_masks`: low-resolution logits `[M, lh, lw]` bilinearly to
/// 1024x1024, cropped to the resized size, then bilinearly to the original
/// size: `[M, height, width]`.
pub fn postprocess(
    low_res: &[f32],
    masks: usize,
    (low_h, low_w): (usize, usize),
    input: (usize, usize),
    original: (usize, usize),
) -> Vec<f32> {
    let full = bilinear(
        low_res,
        masks,
        (low_h, low_w),
        (low_h, low_w),
        (IMAGE_SIZE, IMAGE_SIZE),
    );
    bilinear(&full, masks, (IMAGE_SIZE, IMAGE_SIZE), input, original)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_side_rounds_half_up_as_the_official_transform() {
        // The sam notes' example: 1001 x 1999 -> 513 x 1024.
        assert_eq!(resized_size(1001, 1999), (513, 1024));
        assert_eq!(resized_size(480, 640), (768, 1024));
        assert_eq!(resized_size(1024, 1024), (1024, 1024));
    }

    #[test]
    fn bilinear_matches_hand_computed_values() {
        // 1x2 -> 1x4: scale 0.5, sources -0.25 (clamped to 0), 0.25, 0.75, 1.25 (edge).
        let out = bilinear(&[0.0, 4.0], 1, (1, 2), (1, 2), (1, 4));
        assert_eq!(out, vec![0.0, 1.0, 3.0, 4.0]);
    }

    #[test]
    fn padding_is_zero_after_normalisation() {
        let rgb = vec![200u8; 2 * 4 * 3];
        let (input, (h, w)) = preprocess(&rgb, 2, 4);
        assert_eq!((h, w), (512, 1024));
        let expected = (200.0 - PIXEL_MEAN[0]) / PIXEL_STD[0];
        assert!((input[0] - expected).abs() < 1e-6);
        assert_eq!(input[512 * IMAGE_SIZE], 0.0);
    }
}
