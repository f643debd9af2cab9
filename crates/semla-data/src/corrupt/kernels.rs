//! Float images and the filters the corruptions share (2D convolution with
//! reflected borders, the defocus disk, centre zoom).

use image::RgbImage;

/// An image in `f32`, interleaved channels, values nominally in `[0, 1]`.
/// `data` is `[height, width, channels]` row-major.
#[derive(Clone, Debug)]
pub(crate) struct FloatImage {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub data: Vec<f32>,
}

impl FloatImage {
    pub fn zeros(width: usize, height: usize, channels: usize) -> Self {
        Self {
            width,
            height,
            channels,
            data: vec![0.0; width * height * channels],
        }
    }

    /// `u8` RGB to `f32 / 255`.
    pub fn from_rgb(image: &RgbImage) -> Self {
        let (w, h) = image.dimensions();
        Self {
            width: w as usize,
            height: h as usize,
            channels: 3,
            data: image
                .as_raw()
                .iter()
                .map(|&v| f32::from(v) / 255.0)
                .collect(),
        }
    }

    /// Back to `u8`: clip to `[0, 1]`, scale by 255 and round.
    pub fn to_rgb(&self) -> RgbImage {
        let raw: Vec<u8> = self
            .data
            .iter()
            .map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
            .collect();
        // The buffer length always matches width * height * 3 by construction.
        RgbImage::from_raw(self.width as u32, self.height as u32, raw)
            .unwrap_or_else(|| RgbImage::new(self.width as u32, self.height as u32))
    }

    /// Offset of pixel `(x, y)`'s first channel in `data`.
    #[inline]
    pub fn index(&self, x: usize, y: usize) -> usize {
        (y * self.width + x) * self.channels
    }

    /// Correlation with a square `kernel` (odd side, row-major), borders
    /// reflected without repeating the edge (OpenCV `BORDER_REFLECT_101`, the
    /// default of `cv2.filter2D` used by ImageNet-C).
    pub fn convolve(&self, kernel: &Kernel) -> FloatImage {
        let r = (kernel.size / 2) as i64;
        let taps: Vec<(i64, i64, f32)> = (0..kernel.size)
            .flat_map(|ky| (0..kernel.size).map(move |kx| (ky, kx)))
            .filter_map(|(ky, kx)| {
                let w = kernel.weights[ky * kernel.size + kx];
                (w.abs() > 1e-8).then_some((ky as i64 - r, kx as i64 - r, w))
            })
            .collect();
        // Reflected column indices for every horizontal offset.
        let cols: Vec<Vec<usize>> = (-r..=r)
            .map(|dx| {
                (0..self.width as i64)
                    .map(|x| reflect101(x + dx, self.width))
                    .collect()
            })
            .collect();
        let mut out = FloatImage::zeros(self.width, self.height, self.channels);
        let ch = self.channels;
        for y in 0..self.height {
            let row_out = y * self.width * ch;
            for &(dy, dx, w) in &taps {
                let sy = reflect101(y as i64 + dy, self.height);
                let row_in = sy * self.width * ch;
                let col = &cols[(dx + r) as usize];
                for (x, &sx) in col.iter().enumerate() {
                    let si = row_in + sx * ch;
                    let oi = row_out + x * ch;
                    for c in 0..ch {
                        out.data[oi + c] += w * self.data[si + c];
                    }
                }
            }
        }
        out
    }

    /// ImageNet-C `clipped_zoom` generalised to rectangles (as in the
    /// `imagecorruptions` package): crop the centre `ceil(h / z) x ceil(w / z)`
    /// and enlarge it back to `h x w` with bilinear interpolation.
    pub fn clipped_zoom(&self, zoom: f32) -> FloatImage {
        let (w, h) = (self.width, self.height);
        let ch = (h as f32 / zoom).ceil() as usize;
        let cw = (w as f32 / zoom).ceil() as usize;
        let top = (h.saturating_sub(ch) / 2) as f32;
        let left = (w.saturating_sub(cw) / 2) as f32;
        let mut out = FloatImage::zeros(w, h, self.channels);
        for y in 0..h {
            let sy = (top + (y as f32 + 0.5) / zoom - 0.5).clamp(0.0, (h - 1) as f32);
            let y0 = sy.floor() as usize;
            let y1 = (y0 + 1).min(h - 1);
            let fy = sy - y0 as f32;
            for x in 0..w {
                let sx = (left + (x as f32 + 0.5) / zoom - 0.5).clamp(0.0, (w - 1) as f32);
                let x0 = sx.floor() as usize;
                let x1 = (x0 + 1).min(w - 1);
                let fx = sx - x0 as f32;
                let o = self.index(x, y);
                for c in 0..self.channels {
                    let a = self.data[self.index(x0, y0) + c];
                    let b = self.data[self.index(x1, y0) + c];
                    let d = self.data[self.index(x0, y1) + c];
                    let e = self.data[self.index(x1, y1) + c];
                    out.data[o + c] =
                        (a * (1.0 - fx) + b * fx) * (1.0 - fy) + (d * (1.0 - fx) + e * fx) * fy;
                }
            }
        }
        out
    }
}

/// Mirror index `i` into `0..n` without repeating the border sample.
#[inline]
pub(crate) fn reflect101(mut i: i64, n: usize) -> usize {
    let n = n as i64;
    if n == 1 {
        return 0;
    }
    loop {
        if i < 0 {
            i = -i;
        } else if i >= n {
            i = 2 * n - 2 - i;
        } else {
            return i as usize;
        }
    }
}

/// A square convolution kernel, row-major.
#[derive(Clone, Debug)]
pub(crate) struct Kernel {
    pub size: usize,
    pub weights: Vec<f32>,
}

/// ImageNet-C `disk(radius, alias_blur)`: the indicator of
/// `x^2 + y^2 <= radius^2` on a grid `[-8, 8]^2` (or `[-radius, radius]^2` for
/// radius above 8), normalised to sum 1, then smoothed by a Gaussian of sigma
/// `alias_blur` (3x3 for the small grid, 5x5 otherwise) to anti-alias it. We
/// renormalise after smoothing so the blur preserves the mean exactly.
pub(crate) fn disk_kernel(radius: u32, alias_blur: f32) -> Kernel {
    let (half, gauss_size) = if radius <= 8 {
        (8i64, 3usize)
    } else {
        (radius as i64, 5usize)
    };
    let size = (2 * half + 1) as usize;
    let r2 = i64::from(radius) * i64::from(radius);
    let mut disk: Vec<f32> = Vec::with_capacity(size * size);
    for y in -half..=half {
        for x in -half..=half {
            disk.push(if x * x + y * y <= r2 { 1.0 } else { 0.0 });
        }
    }
    let total: f32 = disk.iter().sum();
    disk.iter_mut().for_each(|v| *v /= total);
    let gauss = gaussian_kernel_1d(gauss_size, alias_blur);
    let g = gauss_size as i64 / 2;
    let mut smooth = vec![0.0f32; size * size];
    for y in 0..size {
        for x in 0..size {
            let mut acc = 0.0;
            for (j, gy) in gauss.iter().enumerate() {
                for (i, gx) in gauss.iter().enumerate() {
                    let sy = reflect101(y as i64 + j as i64 - g, size);
                    let sx = reflect101(x as i64 + i as i64 - g, size);
                    acc += gy * gx * disk[sy * size + sx];
                }
            }
            smooth[y * size + x] = acc;
        }
    }
    let total: f32 = smooth.iter().sum();
    smooth.iter_mut().for_each(|v| *v /= total);
    Kernel {
        size,
        weights: smooth,
    }
}

/// Normalised sampled Gaussian of `size` taps (OpenCV `getGaussianKernel`).
pub(crate) fn gaussian_kernel_1d(size: usize, sigma: f32) -> Vec<f32> {
    let centre = (size as f32 - 1.0) / 2.0;
    let mut k: Vec<f32> = (0..size)
        .map(|i| (-((i as f32 - centre).powi(2)) / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= total);
    k
}
