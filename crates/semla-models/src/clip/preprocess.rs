//! `CLIPImageProcessor`: resize the shortest side, centre crop, rescale and
//! normalise, reproducing transformers' slow (PIL-based) processor.
//!
//! The resize reproduces Pillow's `ImagingResample` on 8-bit images bit for
//! bit: convolution resampling whose filter support grows with the
//! downscale factor (antialiasing), bicubic kernel with `a = -0.5`, one
//! horizontal pass then one vertical pass, coefficients in 22-bit fixed point
//! and the intermediate image rounded and clipped to `u8`.

use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::Value;

use super::ClipError;

/// Resampling filter of the resize step (PIL's `resample` codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Resample {
    /// `PIL.Image.BILINEAR` (2): triangle filter, support 1.
    Bilinear,
    /// `PIL.Image.BICUBIC` (3): cubic filter with `a = -0.5`, support 2. CLIP's default.
    #[default]
    Bicubic,
}

impl Resample {
    fn support(self) -> f64 {
        match self {
            Resample::Bilinear => 1.0,
            Resample::Bicubic => 2.0,
        }
    }

    fn filter(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Resample::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Resample::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// `CLIPImageProcessor` settings. [`Default`] is CLIP's: shortest side 224,
/// bicubic, centre crop 224x224, rescale 1/255, CLIP mean and std.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageProcessor {
    /// Resize so that the shorter side has this length (`size.shortest_edge`); `None` skips resizing.
    pub shortest_edge: Option<usize>,
    /// Resampling filter.
    pub resample: Resample,
    /// Centre crop `(height, width)`; `None` skips cropping.
    pub crop_size: Option<(usize, usize)>,
    /// Multiplier applied to the `u8` values (1/255); `None` skips rescaling.
    pub rescale_factor: Option<f64>,
    /// Per-channel mean and std (RGB); `None` skips normalisation.
    pub normalize: Option<([f32; 3], [f32; 3])>,
}

/// CLIP's normalisation mean (RGB).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's normalisation std (RGB), written as in `preprocessor_config.json`
/// (rounded to f32 like numpy's cast).
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

impl Default for ImageProcessor {
    fn default() -> Self {
        Self::with_size(224)
    }
}

impl ImageProcessor {
    /// CLIP's processor at another resolution: shortest side and square crop `size`.
    pub fn with_size(size: usize) -> Self {
        Self {
            shortest_edge: Some(size),
            resample: Resample::Bicubic,
            crop_size: Some((size, size)),
            rescale_factor: Some(1.0 / 255.0),
            normalize: Some((CLIP_MEAN, CLIP_STD)),
        }
    }

    /// Reads a `preprocessor_config.json`; absent fields keep CLIP's defaults.
    pub fn from_file(path: &Path) -> Result<Self, ClipError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ClipError::Io {
            path: path.to_path_buf(),
            cause,
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|cause| ClipError::Json {
            path: path.to_path_buf(),
            cause,
        })?;
        Self::from_json(&value, path)
    }

    /// Builds the settings from the parsed JSON of a `preprocessor_config.json`.
    pub fn from_json(value: &Value, path: &Path) -> Result<Self, ClipError> {
        let bad = |message: String| ClipError::Config {
            path: path.to_path_buf(),
            message,
        };
        let flag = |key: &str| value.get(key).and_then(Value::as_bool).unwrap_or(true);
        let mut out = Self::default();
        // `size` is an int (old configs) or {"shortest_edge": n}.
        match value.get("size") {
            None => {}
            Some(Value::Number(n)) => out.shortest_edge = n.as_u64().map(|n| n as usize),
            Some(obj @ Value::Object(_)) => {
                let n = obj
                    .get("shortest_edge")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| {
                        bad(
                            "only size.shortest_edge is supported (CLIPImageProcessor semantics)"
                                .to_string(),
                        )
                    })?;
                out.shortest_edge = Some(n as usize);
            }
            Some(other) => return Err(bad(format!("unsupported size {other}"))),
        }
        match value.get("crop_size") {
            None => {}
            Some(Value::Number(n)) => {
                let n = n
                    .as_u64()
                    .ok_or_else(|| bad("crop_size must be a positive integer".into()))?
                    as usize;
                out.crop_size = Some((n, n));
            }
            Some(obj @ Value::Object(_)) => {
                let h = obj.get("height").and_then(Value::as_u64);
                let w = obj.get("width").and_then(Value::as_u64);
                match (h, w) {
                    (Some(h), Some(w)) => out.crop_size = Some((h as usize, w as usize)),
                    _ => return Err(bad("crop_size needs height and width".to_string())),
                }
            }
            Some(other) => return Err(bad(format!("unsupported crop_size {other}"))),
        }
        match value.get("resample").and_then(Value::as_u64) {
            None | Some(3) => out.resample = Resample::Bicubic,
            Some(2) => out.resample = Resample::Bilinear,
            Some(other) => {
                return Err(bad(format!(
                    "resample {other} is not supported (2 bilinear, 3 bicubic)"
                )));
            }
        }
        if let Some(f) = value.get("rescale_factor").and_then(Value::as_f64) {
            out.rescale_factor = Some(f);
        }
        let triple = |key: &str, default: [f32; 3]| -> Result<[f32; 3], ClipError> {
            match value.get(key) {
                None => Ok(default),
                Some(Value::Array(items)) if items.len() == 3 => {
                    let mut v = [0f32; 3];
                    for (slot, item) in v.iter_mut().zip(items) {
                        *slot = item
                            .as_f64()
                            .ok_or_else(|| bad(format!("{key} must hold numbers")))?
                            as f32;
                    }
                    Ok(v)
                }
                Some(other) => Err(bad(format!(
                    "{key} must be a list of 3 numbers, got {other}"
                ))),
            }
        };
        let mean = triple("image_mean", CLIP_MEAN)?;
        let std = triple("image_std", CLIP_STD)?;
        if std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
            return Err(bad(format!(
                "image_std {std:?} has a zero or non-finite entry"
            )));
        }
        out.normalize = Some((mean, std));
        if !flag("do_resize") {
            out.shortest_edge = None;
        }
        if !flag("do_center_crop") {
            out.crop_size = None;
        }
        if !flag("do_rescale") {
            out.rescale_factor = None;
        }
        if !flag("do_normalize") {
            out.normalize = None;
        }
        Ok(out)
    }

    /// Size `(height, width)` after the shortest-side resize, as transformers
    /// computes it: `new_long = int(size * long / short)`.
    pub fn resized_size(&self, height: usize, width: usize) -> (usize, usize) {
        let Some(size) = self.shortest_edge else {
            return (height, width);
        };
        let (short, long) = if height <= width {
            (height, width)
        } else {
            (width, height)
        };
        let new_long = ((size * long) as f64 / short.max(1) as f64) as usize;
        if height <= width {
            (size, new_long)
        } else {
            (new_long, size)
        }
    }

    /// The resized and centre-cropped `u8` image: `(rgb, height, width)`,
    /// `rgb` interleaved `[H, W, 3]`.
    pub fn resize_and_crop(
        &self,
        rgb: &[u8],
        height: usize,
        width: usize,
    ) -> Result<(Vec<u8>, usize, usize), ClipError> {
        if rgb.len() != height * width * 3 || height == 0 || width == 0 {
            return Err(ClipError::Input(format!(
                "image buffer of {} bytes does not hold a {height}x{width} RGB image",
                rgb.len()
            )));
        }
        let (mut img, mut h, mut w) = (rgb.to_vec(), height, width);
        if self.shortest_edge.is_some() {
            let (nh, nw) = self.resized_size(h, w);
            if nh == 0 || nw == 0 {
                return Err(ClipError::Input(format!(
                    "a {h}x{w} image resizes to an empty image"
                )));
            }
            img = pil_resize(&img, h, w, nh, nw, self.resample);
            (h, w) = (nh, nw);
        }
        if let Some((ch, cw)) = self.crop_size {
            (img, h, w) = center_crop(&img, h, w, ch, cw);
        }
        Ok((img, h, w))
    }

    /// The model input `[3, H, W]` (f32, CHW) for an interleaved RGB image.
    pub fn preprocess_rgb(
        &self,
        rgb: &[u8],
        height: usize,
        width: usize,
    ) -> Result<Tensor, ClipError> {
        let (img, h, w) = self.resize_and_crop(rgb, height, width)?;
        let plane = h * w;
        let mut chw = vec![0f32; 3 * plane];
        for (i, px) in img.chunks_exact(3).enumerate() {
            for c in 0..3 {
                // transformers rescales in float64 and casts to float32, then
                // normalises in float32.
                let mut v = match self.rescale_factor {
                    Some(f) => (px[c] as f64 * f) as f32,
                    None => px[c] as f32,
                };
                if let Some((mean, std)) = &self.normalize {
                    v = (v - mean[c]) / std[c];
                }
                chw[c * plane + i] = v;
            }
        }
        Ok(Tensor::from_vec(chw, (3, h, w), &Device::Cpu)?)
    }

    /// Decodes an image file (converted to RGB like PIL's `convert("RGB")`,
    /// alpha dropped, no EXIF rotation) and preprocesses it: `[3, H, W]`.
    ///
    /// JPEG decoders differ slightly between libjpeg (PIL) and the `image`
    /// crate, so JPEG inputs can differ from transformers by a level or so
    /// before the resize; PNG inputs are identical.
    pub fn preprocess_file(&self, path: &Path) -> Result<Tensor, ClipError> {
        let img = semla_data::image_io::read_rgb(path)?;
        let (w, h) = img.dimensions();
        self.preprocess_rgb(img.as_raw(), h as usize, w as usize)
    }
}

/// Pillow's fixed-point precision for 8-bit images.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output pixel: first input index, number of taps, and the fixed-point
/// weights (`ksize` slots each), as Pillow's `precompute_coeffs` +
/// `normalize_coeffs_8bpc`.
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

fn precompute_coeffs(in_size: usize, out_size: usize, resample: Resample) -> Coeffs {
    // Box (0, in_size); Pillow takes the box as floats.
    let scale = (in_size as f32 as f64) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = resample.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) cast truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let taps = xmax.saturating_sub(xmin).min(ksize);
        let mut ww = 0.0;
        for (x, slot) in k.iter_mut().enumerate().take(taps) {
            let w = resample.filter((x as f64 + xmin as f64 - center + 0.5) * ss);
            *slot = w;
            ww += w;
        }
        for (x, &kx) in k.iter().enumerate().take(taps) {
            let w = if ww != 0.0 { kx / ww } else { kx };
            let fixed = w * (1u32 << PRECISION_BITS) as f64;
            weights[xx * ksize + x] = if w < 0.0 {
                (-0.5 + fixed) as i32
            } else {
                (0.5 + fixed) as i32
            };
        }
        bounds.push((xmin, taps));
    }
    Coeffs {
        ksize,
        bounds,
        weights,
    }
}

/// Pillow's `clip8`: fixed point to `u8`, clamped.
fn clip8(acc: i64) -> u8 {
    if acc >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if acc <= 0 {
        0
    } else {
        (acc >> PRECISION_BITS) as u8
    }
}

/// Pillow's `Image.resize((out_w, out_h), resample)` on interleaved RGB8
/// (`reducing_gap=None`): a horizontal pass, then a vertical pass, each
/// skipped when that side keeps its size.
pub fn pil_resize(
    rgb: &[u8],
    h: usize,
    w: usize,
    out_h: usize,
    out_w: usize,
    resample: Resample,
) -> Vec<u8> {
    let mut img = rgb.to_vec();
    let mut cur_w = w;
    if out_w != w {
        let c = precompute_coeffs(w, out_w, resample);
        let mut out = vec![0u8; h * out_w * 3];
        for y in 0..h {
            let row = &img[y * w * 3..(y + 1) * w * 3];
            for (xx, &(xmin, taps)) in c.bounds.iter().enumerate() {
                let k = &c.weights[xx * c.ksize..xx * c.ksize + taps];
                for ch in 0..3 {
                    let mut acc: i64 = 1 << (PRECISION_BITS - 1);
                    for (x, &kx) in k.iter().enumerate() {
                        acc += row[(xmin + x) * 3 + ch] as i64 * kx as i64;
                    }
                    out[(y * out_w + xx) * 3 + ch] = clip8(acc);
                }
            }
        }
        img = out;
        cur_w = out_w;
    }
    if out_h != h {
        let c = precompute_coeffs(h, out_h, resample);
        let mut out = vec![0u8; out_h * cur_w * 3];
        for (yy, &(ymin, taps)) in c.bounds.iter().enumerate() {
            let k = &c.weights[yy * c.ksize..yy * c.ksize + taps];
            for x in 0..cur_w * 3 {
                let mut acc: i64 = 1 << (PRECISION_BITS - 1);
                for (y, &ky) in k.iter().enumerate() {
                    acc += img[(ymin + y) * cur_w * 3 + x] as i64 * ky as i64;
                }
                out[yy * cur_w * 3 + x] = clip8(acc);
            }
        }
        img = out;
    }
    img
}

/// transformers' `center_crop`: `top = (H - ch) // 2`, `left = (W - cw) // 2`;
/// an image smaller than the crop is zero-padded around its centre first.
fn center_crop(rgb: &[u8], h: usize, w: usize, ch: usize, cw: usize) -> (Vec<u8>, usize, usize) {
    // Pad (as transformers: new size max(crop, orig), image placed at
    // ceil((new - orig) / 2)) and crop in one go using signed offsets.
    let new_h = ch.max(h);
    let new_w = cw.max(w);
    let pad_top = (new_h - h).div_ceil(2) as i64;
    let pad_left = (new_w - w).div_ceil(2) as i64;
    let top = ((new_h - ch) / 2) as i64;
    let left = ((new_w - cw) / 2) as i64;
    let mut out = vec![0u8; ch * cw * 3];
    for y in 0..ch {
        let sy = y as i64 + top - pad_top;
        if sy < 0 || sy >= h as i64 {
            continue;
        }
        for x in 0..cw {
            let sx = x as i64 + left - pad_left;
            if sx < 0 || sx >= w as i64 {
                continue;
            }
            let src = (sy as usize * w + sx as usize) * 3;
            let dst = (y * cw + x) * 3;
            out[dst..dst + 3].copy_from_slice(&rgb[src..src + 3]);
        }
    }
    (out, ch, cw)
}
