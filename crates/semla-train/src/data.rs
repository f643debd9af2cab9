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
