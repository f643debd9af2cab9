//! Pixels as the models see them: a [`Sample`] is an image in `[0, 1]`,
//! channel-major `[3, H, W]` f32, with its label map; a [`SampleSource`] is an
//! indexed collection of them (a domain split on disk, samples in memory).
//!
//! Images become samples here and only here: an 8-bit photo is converted once
//! ([`Sample::from_rgb8`]), resized once ([`resize`]: bilinear image with pixel
//! centres aligned, nearest labels), and the models normalise it for their own
//! input (`semla_models::Normalization::batch`).

use crate::domains::{Domain, DomainError, ImagePair, Split};
use crate::image_io::RgbImage;

/// A sample that could not be produced, or is inconsistent.
#[derive(Debug, thiserror::Error)]
#[error("sample {sample}: {message}")]
pub struct SampleError {
    /// Which sample (a file name or an index).
    pub sample: String,
    /// What is wrong.
    pub message: String,
}

impl SampleError {
    /// An error about `sample`.
    pub fn new(sample: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            sample: sample.into(),
            message: message.into(),
        }
    }
}

/// One image with its label map.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// RGB values in `[0, 1]`, channel-major `[3, H, W]`.
    pub image: Vec<f32>,
    /// One class index per pixel `[H, W]`; the source's ignore value marks
    /// pixels without a label.
    pub labels: Vec<u32>,
    /// `H`.
    pub height: usize,
    /// `W`.
    pub width: usize,
}

impl Sample {
    /// Checks that the buffers match `height` and `width`; `name` identifies
    /// the sample in the error.
    pub fn check(&self, name: &str) -> Result<(), SampleError> {
        let pixels = self.height * self.width;
        if pixels == 0 || self.image.len() != 3 * pixels || self.labels.len() != pixels {
            return Err(SampleError::new(
                name,
                format!(
                    "{}x{} image with {} colour values and {} labels",
                    self.height,
                    self.width,
                    self.image.len(),
                    self.labels.len()
                ),
            ));
        }
        Ok(())
    }

    /// Builds a sample from an 8-bit RGB image (`rgb`: `H*W*3`, row-major
    /// interleaved) and its labels.
    pub fn from_rgb8(rgb: &[u8], labels: Vec<u32>, height: usize, width: usize) -> Self {
        let pixels = height * width;
        let mut image = vec![0f32; 3 * pixels];
        for (p, px) in rgb.chunks_exact(3).take(pixels).enumerate() {
            for c in 0..3 {
                image[c * pixels + p] = px[c] as f32 / 255.0;
            }
        }
        Self {
            image,
            labels,
            height,
            width,
        }
    }

    /// An unlabelled sample of a photo (every label 0).
    pub fn from_photo(photo: &RgbImage) -> Self {
        let (w, h) = (photo.width() as usize, photo.height() as usize);
        Self::from_rgb8(photo.as_raw(), vec![0; w * h], h, w)
    }

    /// The image as interleaved 8-bit RGB (`round(v * 255)`, clamped): exact
    /// for a sample made by [`from_rgb8`](Self::from_rgb8) and not resized.
    pub fn to_rgb8(&self) -> Vec<u8> {
        let pixels = self.height * self.width;
        let mut rgb = vec![0u8; 3 * pixels];
        for c in 0..3 {
            let plane = self.image.get(c * pixels..(c + 1) * pixels).unwrap_or(&[]);
            for (p, v) in plane.iter().enumerate() {
                rgb[3 * p + c] = (v * 255.0).round().clamp(0.0, 255.0) as u8;
            }
        }
        rgb
    }

    /// The image as an 8-bit RGB picture ([`to_rgb8`](Self::to_rgb8)).
    pub fn to_photo(&self) -> Result<RgbImage, SampleError> {
        RgbImage::from_raw(self.width as u32, self.height as u32, self.to_rgb8()).ok_or_else(|| {
            SampleError::new(
                "image",
                format!("{}x{} pixels do not fit", self.width, self.height),
            )
        })
    }
}

/// An indexed collection of samples (a dataset split, a synthetic world, ...).
pub trait SampleSource: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;

    /// Whether there is no sample.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sample `index` (`0..len()`).
    fn sample(&self, index: usize) -> Result<Sample, SampleError>;

    /// The value of unlabelled pixels.
    fn ignore_label(&self) -> u32;

    /// Number of classes the labels index.
    fn num_classes(&self) -> usize;

    /// Human-readable name of sample `index` (a file name), for errors.
    fn describe(&self, index: usize) -> String {
        format!("#{index}")
    }
}

/// Checks that `source` labels exactly the `model_classes` classes a model
/// predicts (so every label is a class the model scores, and every class the
/// model scores can be evaluated); `what` names the data in the error.
pub fn check_classes(
    source: &dyn SampleSource,
    model_classes: usize,
    what: &str,
) -> Result<(), String> {
    if source.num_classes() != model_classes {
        return Err(format!(
            "{what} has {} classes but the model predicts {model_classes}",
            source.num_classes()
        ));
    }
    Ok(())
}

/// Samples held in memory (tests, small generated tasks).
#[derive(Clone, Debug)]
pub struct InMemorySource {
    samples: Vec<Sample>,
    num_classes: usize,
    ignore_label: u32,
}

impl InMemorySource {
    /// A source over `samples` with `num_classes` classes and the given ignore value.
    pub fn new(samples: Vec<Sample>, num_classes: usize, ignore_label: u32) -> Self {
        Self {
            samples,
            num_classes,
            ignore_label,
        }
    }
}

impl InMemorySource {
    /// The same images with every label set to the ignore value: what a
    /// study that must not see a domain's labels trains on.
    pub fn into_unlabeled(mut self) -> Self {
        let ignore = self.ignore_label;
        for sample in &mut self.samples {
            sample.labels.fill(ignore);
        }
        self
    }
}

impl SampleSource for InMemorySource {
    fn len(&self) -> usize {
        self.samples.len()
    }

    fn sample(&self, index: usize) -> Result<Sample, SampleError> {
        self.samples.get(index).cloned().ok_or_else(|| {
            SampleError::new(
                format!("#{index}"),
                format!(
                    "index out of range (source has {} samples)",
                    self.samples.len()
                ),
            )
        })
    }

    fn ignore_label(&self) -> u32 {
        self.ignore_label
    }

    fn num_classes(&self) -> usize {
        self.num_classes
    }
}

/// Another source whose labels pass through a table (`map[label]` is the new
/// label; labels outside the table and the ignore label stay as they are):
/// coarse labels made from fine ones, as CSI's sources merge or drop the
/// classes a target splits.
pub struct RemappedSource<S> {
    inner: S,
    map: Vec<u32>,
}

impl<S: SampleSource> RemappedSource<S> {
    /// `inner` seen through `map`.
    pub fn new(inner: S, map: Vec<u32>) -> Self {
        Self { inner, map }
    }

    /// The source underneath.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: SampleSource> SampleSource for RemappedSource<S> {
    fn len(&self) -> usize {
        self.inner.len()
    }

    fn sample(&self, index: usize) -> Result<Sample, SampleError> {
        let mut sample = self.inner.sample(index)?;
        let ignore = self.inner.ignore_label();
        for l in &mut sample.labels {
            if *l != ignore
                && let Some(&to) = self.map.get(*l as usize)
            {
                *l = to;
            }
        }
        Ok(sample)
    }

    fn ignore_label(&self) -> u32 {
        self.inner.ignore_label()
    }

    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }

    fn describe(&self, index: usize) -> String {
        self.inner.describe(index)
    }
}

/// The (image, label) pairs of one split of a domain, read from disk on
/// demand, optionally resized to a fixed size.
#[derive(Clone, Debug)]
pub struct DomainSource {
    domain: Domain,
    pairs: Vec<ImagePair>,
    resize: Option<(usize, usize)>,
}

impl DomainSource {
    /// The pairs of `split` of `domain`; `resize` = `(height, width)` scales
    /// every sample to that size (bilinear image, nearest labels).
    pub fn new(
        domain: Domain,
        split: Split,
        resize: Option<(usize, usize)>,
    ) -> Result<Self, SampleError> {
        let what = || format!("domain {} ({split})", domain.name);
        if let Some((h, w)) = resize {
            semla_core::limits::check_pixels(h as u64, w as u64, "the resize size")
                .map_err(|e| SampleError::new(what(), e))?;
        }
        let pairs = domain
            .pairs(split)
            .map_err(|e| SampleError::new(what(), e.to_string()))?;
        if pairs.is_empty() {
            return Err(SampleError::new(
                what(),
                format!(
                    "has no image/label pairs; expected layout: {}",
                    domain.layout.describe()
                ),
            ));
        }
        Ok(Self {
            domain,
            pairs,
            resize,
        })
    }

    /// The domain.
    pub fn domain(&self) -> &Domain {
        &self.domain
    }
}

impl SampleSource for DomainSource {
    fn len(&self) -> usize {
        self.pairs.len()
    }

    fn sample(&self, index: usize) -> Result<Sample, SampleError> {
        let Some(pair) = self.pairs.get(index) else {
            return Err(SampleError::new(
                format!("#{index}"),
                format!("index out of range ({} samples)", self.pairs.len()),
            ));
        };
        let err =
            |e: DomainError| SampleError::new(pair.image.display().to_string(), e.to_string());
        let image = self.domain.load_image(pair).map_err(err)?;
        let labels = self.domain.load_label(pair).map_err(err)?;
        if (labels.width, labels.height) != image.dimensions() {
            return Err(SampleError::new(
                pair.label.display().to_string(),
                format!(
                    "label map is {}x{} but the image {} is {}x{}",
                    labels.width,
                    labels.height,
                    pair.image.display(),
                    image.width(),
                    image.height()
                ),
            ));
        }
        let (w, h) = (image.width() as usize, image.height() as usize);
        let labels = labels.values.iter().map(|&v| v as u32).collect();
        let sample = Sample::from_rgb8(image.as_raw(), labels, h, w);
        Ok(match self.resize {
            Some((rh, rw)) if (rh, rw) != (h, w) => resize(&sample, rh, rw, self.ignore_label()),
            _ => sample,
        })
    }

    fn ignore_label(&self) -> u32 {
        self.domain.ignore_value as u32
    }

    fn num_classes(&self) -> usize {
        self.domain.num_classes()
    }

    fn describe(&self, index: usize) -> String {
        self.pairs
            .get(index)
            .map(|p| p.image.display().to_string())
            .unwrap_or_else(|| format!("#{index}"))
    }
}

/// The images of a domain's split without their labels: for self-training on
/// an unlabeled domain. Only the photos are read (through the domain, so
/// corruptions and renderings apply); every pixel's label is the ignore value.
#[derive(Clone, Debug)]
pub struct UnlabeledSource {
    inner: DomainSource,
}

impl UnlabeledSource {
    /// The images of `split` of `domain`, resized as [`DomainSource::new`] does.
    pub fn new(
        domain: Domain,
        split: Split,
        resize: Option<(usize, usize)>,
    ) -> Result<Self, SampleError> {
        Ok(Self {
            inner: DomainSource::new(domain, split, resize)?,
        })
    }

    /// The domain.
    pub fn domain(&self) -> &Domain {
        self.inner.domain()
    }
}

impl SampleSource for UnlabeledSource {
    fn len(&self) -> usize {
        self.inner.len()
    }

    fn sample(&self, index: usize) -> Result<Sample, SampleError> {
        let inner = &self.inner;
        let Some(pair) = inner.pairs.get(index) else {
            return Err(SampleError::new(
                format!("#{index}"),
                format!("index out of range ({} samples)", inner.pairs.len()),
            ));
        };
        let image = inner
            .domain
            .load_image(pair)
            .map_err(|e| SampleError::new(pair.image.display().to_string(), e.to_string()))?;
        let (w, h) = (image.width() as usize, image.height() as usize);
        let ignore = self.ignore_label();
        let sample = Sample::from_rgb8(image.as_raw(), vec![ignore; w * h], h, w);
        Ok(match inner.resize {
            Some((rh, rw)) if (rh, rw) != (h, w) => resize(&sample, rh, rw, ignore),
            _ => sample,
        })
    }

    fn ignore_label(&self) -> u32 {
        self.inner.ignore_label()
    }

    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }

    fn describe(&self, index: usize) -> String {
        self.inner.describe(index)
    }
}

/// Resamples `sample` to `scaled` size (bilinear image with pixel centres
/// aligned, nearest labels), keeps the `out`-sized window at `offset` of it
/// (padding with 0 and `ignore` outside), and mirrors it horizontally if `flip`.
/// (Training's random scale, crop and flip is this with random arguments.)
pub fn resample(
    sample: &Sample,
    (scaled_h, scaled_w): (usize, usize),
    (out_h, out_w): (usize, usize),
    (top, left): (usize, usize),
    flip: bool,
    ignore: u32,
) -> Sample {
    let in_pixels = sample.height * sample.width;
    let out_pixels = out_h * out_w;
    let mut image = vec![0f32; 3 * out_pixels];
    let mut labels = vec![ignore; out_pixels];
    if in_pixels == 0 || sample.image.len() < 3 * in_pixels || sample.labels.len() < in_pixels {
        // Nothing to sample from (callers check samples first): all padding.
        return Sample {
            image,
            labels,
            height: out_h,
            width: out_w,
        };
    }
    let sy = sample.height as f64 / scaled_h as f64;
    let sx = sample.width as f64 / scaled_w as f64;
    for oy in 0..out_h {
        let y = oy + top;
        if y >= scaled_h {
            continue;
        }
        let fy = ((y as f64 + 0.5) * sy - 0.5).max(0.0);
        let y0 = (fy.floor() as usize).min(sample.height - 1);
        let y1 = (y0 + 1).min(sample.height - 1);
        let wy = (fy - y0 as f64) as f32;
        let ny = (((y as f64 + 0.5) * sy) as usize).min(sample.height - 1);
        for ox in 0..out_w {
            let x = ox + left;
            if x >= scaled_w {
                continue;
            }
            let fx = ((x as f64 + 0.5) * sx - 0.5).max(0.0);
            let x0 = (fx.floor() as usize).min(sample.width - 1);
            let x1 = (x0 + 1).min(sample.width - 1);
            let wx = (fx - x0 as f64) as f32;
            let nx = (((x as f64 + 0.5) * sx) as usize).min(sample.width - 1);
            let dst_x = if flip { out_w - 1 - ox } else { ox };
            let dst = oy * out_w + dst_x;
            for c in 0..3 {
                let plane = &sample.image[c * in_pixels..(c + 1) * in_pixels];
                let top_row =
                    plane[y0 * sample.width + x0] * (1.0 - wx) + plane[y0 * sample.width + x1] * wx;
                let bottom_row =
                    plane[y1 * sample.width + x0] * (1.0 - wx) + plane[y1 * sample.width + x1] * wx;
                image[c * out_pixels + dst] = top_row * (1.0 - wy) + bottom_row * wy;
            }
            labels[dst] = sample.labels[ny * sample.width + nx];
        }
    }
    Sample {
        image,
        labels,
        height: out_h,
        width: out_w,
    }
}

/// `sample` scaled to exactly `height x width` (bilinear image, nearest labels).
pub fn resize(sample: &Sample, height: usize, width: usize, ignore: u32) -> Sample {
    resample(
        sample,
        (height, width),
        (height, width),
        (0, 0),
        false,
        ignore,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(h: usize, w: usize) -> Sample {
        let pixels = h * w;
        let mut image = vec![0f32; 3 * pixels];
        let mut labels = vec![0u32; pixels];
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    image[c * pixels + y * w + x] = (x + 10 * y + 100 * c) as f32;
                }
                labels[y * w + x] = (x + 10 * y) as u32;
            }
        }
        Sample {
            image,
            labels,
            height: h,
            width: w,
        }
    }

    #[test]
    fn resize_halves_by_averaging_neighbours() {
        let s = ramp(4, 4);
        let out = resize(&s, 2, 2, 255);
        // Output pixel (0, 0) samples source (0.5, 0.5): mean of the 2x2 block.
        assert!((out.image[0] - (0.0 + 1.0 + 10.0 + 11.0) / 4.0).abs() < 1e-5);
        assert_eq!(out.labels, vec![11, 13, 31, 33]);
    }

    #[test]
    fn remapped_labels_pass_through_the_table_and_ignore_stays() {
        let sample = Sample {
            image: vec![0.5; 3 * 5],
            labels: vec![0, 1, 2, 9, 7],
            height: 1,
            width: 5,
        };
        let source = InMemorySource::new(vec![sample], 3, 9);
        // 1 -> 0 (merged), 2 -> 9 (dropped); 7 lies outside the table.
        let remapped = RemappedSource::new(source, vec![0, 0, 9]);
        assert_eq!(remapped.sample(0).unwrap().labels, vec![0, 0, 9, 9, 7]);
        assert_eq!(
            (
                remapped.len(),
                remapped.ignore_label(),
                remapped.num_classes()
            ),
            (1, 9, 3)
        );
    }

    #[test]
    fn rgb8_round_trip_is_exact() {
        let rgb: Vec<u8> = (0..2 * 3 * 3).map(|i| (i * 14) as u8).collect();
        let sample = Sample::from_rgb8(&rgb, vec![0; 6], 2, 3);
        assert_eq!(sample.to_rgb8(), rgb);
    }
}
