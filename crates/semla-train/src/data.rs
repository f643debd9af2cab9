//! Where training and evaluation samples come from.

use crate::error::Result;

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
    pub fn check(&self, name: &str) -> Result<()> {
        let pixels = self.height * self.width;
        if pixels == 0 || self.image.len() != 3 * pixels || self.labels.len() != pixels {
            return Err(crate::TrainError::Sample {
                sample: name.to_string(),
                message: format!(
                    "{}x{} image with {} colour values and {} labels",
                    self.height,
                    self.width,
                    self.image.len(),
                    self.labels.len()
                ),
            });
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
    fn sample(&self, index: usize) -> Result<Sample>;

    /// The value of unlabelled pixels.
    fn ignore_label(&self) -> u32;

    /// Number of classes the labels index.
    fn num_classes(&self) -> usize;

    /// Human-readable name of sample `index` (a file name), for errors.
    fn describe(&self, index: usize) -> String {
        format!("#{index}")
    }
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

impl SampleSource for InMemorySource {
    fn len(&self) -> usize {
        self.samples.len()
    }

    fn sample(&self, index: usize) -> Result<Sample> {
        self.samples
            .get(index)
            .cloned()
            .ok_or_else(|| crate::TrainError::Sample {
                sample: format!("#{index}"),
                message: format!(
                    "index out of range (source has {} samples)",
                    self.samples.len()
                ),
            })
    }

    fn ignore_label(&self) -> u32 {
        self.ignore_label
    }

    fn num_classes(&self) -> usize {
        self.num_classes
    }
}

/// The (image, label) pairs of one split of a `semla-data` domain, read from
/// disk on demand, optionally resized to a fixed size.
#[derive(Clone, Debug)]
pub struct DomainSource {
    domain: semla_data::domains::Domain,
    pairs: Vec<semla_data::domains::Sample>,
    resize: Option<(usize, usize)>,
}

impl DomainSource {
    /// The pairs of `split` of `domain`; `resize` = `(height, width)` scales
    /// every sample to that size (bilinear image, nearest labels).
    pub fn new(
        domain: semla_data::domains::Domain,
        split: semla_data::domains::Split,
        resize: Option<(usize, usize)>,
    ) -> Result<Self> {
        let pairs = domain.pairs(split).map_err(|e| crate::TrainError::Sample {
            sample: format!("domain {} ({split})", domain.name),
            message: e.to_string(),
        })?;
        if pairs.is_empty() {
            return Err(crate::TrainError::Sample {
                sample: format!("domain {} ({split})", domain.name),
                message: format!(
                    "has no image/label pairs; expected layout: {}",
                    domain.layout.describe()
                ),
            });
        }
        Ok(Self {
            domain,
            pairs,
            resize,
        })
    }

    /// The domain.
    pub fn domain(&self) -> &semla_data::domains::Domain {
        &self.domain
    }
}

impl SampleSource for DomainSource {
    fn len(&self) -> usize {
        self.pairs.len()
    }

    fn sample(&self, index: usize) -> Result<Sample> {
        let Some(pair) = self.pairs.get(index) else {
            return Err(crate::TrainError::Sample {
                sample: format!("#{index}"),
                message: format!("index out of range ({} samples)", self.pairs.len()),
            });
        };
        let err = |e: semla_data::domains::DomainError| crate::TrainError::Sample {
            sample: pair.image.display().to_string(),
            message: e.to_string(),
        };
        let image = self.domain.load_image(pair).map_err(err)?;
        let labels = self.domain.load_label(pair).map_err(err)?;
        if (labels.width, labels.height) != image.dimensions() {
            return Err(crate::TrainError::Sample {
                sample: pair.label.display().to_string(),
                message: format!(
                    "label map is {}x{} but the image {} is {}x{}",
                    labels.width,
                    labels.height,
                    pair.image.display(),
                    image.width(),
                    image.height()
                ),
            });
        }
        let (w, h) = (image.width() as usize, image.height() as usize);
        let labels = labels.values.iter().map(|&v| v as u32).collect();
        let sample = Sample::from_rgb8(image.as_raw(), labels, h, w);
        Ok(match self.resize {
            Some((rh, rw)) if (rh, rw) != (h, w) => {
                crate::augment::resize(&sample, rh, rw, self.ignore_label())
            }
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
