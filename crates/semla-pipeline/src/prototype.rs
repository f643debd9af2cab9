//! Domain prototypes: the mean embedding of a source domain's training images,
//! stored beside its adapter as `<name>/<name>_statistics.npz`
//! (`train_average_embedding`, `(1, D)` float32, the official format) with the
//! library's record of the embedder that made them. This is the one prototype
//! builder (`semla library embed`, `semla adapter train`, the demo and the
//! benchmarks use it).

use std::path::{Path, PathBuf};

use candle_core::Device;
use semla_adapters::{AdapterLibrary, EmbedderRecord};
use semla_core::Progress;
use semla_data::domains::{Domain, Split};
use semla_data::{DomainSource, Sample, SampleSource};

use crate::embed::{Embed, identity};
use crate::error::{PipelineError, Result};

/// How many images a prototype averages, and how.
#[derive(Clone, Copy, Debug)]
pub struct EmbedOptions {
    /// Average at most this many images (default: all).
    pub limit: Option<usize>,
    /// Resize samples to `(height, width)` (the size the segmenter sees); only
    /// used when samples (not files) are embedded.
    pub resize: Option<(usize, usize)>,
    /// Images embedded per forward pass (default 8).
    pub batch_size: usize,
}

impl Default for EmbedOptions {
    fn default() -> Self {
        Self {
            limit: None,
            resize: None,
            batch_size: 8,
        }
    }
}

/// Running mean of embeddings, accumulated in f64.
struct MeanAccumulator<'a> {
    sum: Vec<f64>,
    count: usize,
    what: &'a str,
}

impl<'a> MeanAccumulator<'a> {
    fn new(what: &'a str) -> Self {
        Self {
            sum: Vec::new(),
            count: 0,
            what,
        }
    }

    fn add(&mut self, e: &[f32]) -> Result<()> {
        if self.sum.is_empty() {
            self.sum.resize(e.len(), 0.0);
        }
        if e.len() != self.sum.len() {
            return Err(PipelineError::Invalid(format!(
                "embedding dimension changed from {} to {} within {}",
                self.sum.len(),
                e.len(),
                self.what
            )));
        }
        if let Some(i) = e.iter().position(|v| !v.is_finite()) {
            return Err(PipelineError::Invalid(format!(
                "non-finite embedding value at index {i} in {}",
                self.what
            )));
        }
        for (s, v) in self.sum.iter_mut().zip(e) {
            *s += f64::from(*v);
        }
        self.count += 1;
        Ok(())
    }

    fn mean(self) -> Result<(Vec<f32>, usize)> {
        if self.count == 0 {
            return Err(PipelineError::Invalid(format!(
                "{} has no training image to build a prototype from",
                self.what
            )));
        }
        let n = self.count as f64;
        Ok((
            self.sum.iter().map(|s| (s / n) as f32).collect(),
            self.count,
        ))
    }
}

/// The mean embedding `[D]` of the first `limit` samples of `source` (as
/// the segmenter sees them), and the number of samples averaged. `label`
/// names the source in progress and errors.
pub fn source_prototype(
    embedder: &dyn Embed,
    source: &dyn SampleSource,
    options: &EmbedOptions,
    label: &str,
    device: &Device,
    progress: &mut dyn Progress,
) -> Result<(Vec<f32>, usize)> {
    let mut acc = MeanAccumulator::new(label);
    let total = source.len().min(options.limit.unwrap_or(usize::MAX));
    let batch_size = options.batch_size.max(1);
    semla_core::limits::check_batch(batch_size as u64, "an embedding batch")
        .map_err(PipelineError::Invalid)?;
    progress.begin(&format!("embedding {label}"), total as u64);
    let mut batch: Vec<Sample> = Vec::new();
    for index in 0..total {
        let sample = source.sample(index)?;
        sample.check(&source.describe(index))?;
        let same_size = batch
            .first()
            .is_none_or(|b| (b.height, b.width) == (sample.height, sample.width));
        if !same_size || batch.len() == batch_size {
            for e in embedder.embed_samples(&batch.iter().collect::<Vec<_>>(), device)? {
                acc.add(&e)?;
            }
            batch.clear();
        }
        batch.push(sample);
        progress.set(index as u64 + 1);
    }
    for e in embedder.embed_samples(&batch.iter().collect::<Vec<_>>(), device)? {
        acc.add(&e)?;
    }
    progress.end();
    acc.mean()
}

/// The prototype of a domain: the mean embedding of its training images,
/// `[D]`, and the number of images averaged.
///
/// Embedders that prefer photos (CLIP) embed the domain's prototype images
/// ([`Domain::train_images`], the official "embedding dir") from their files
/// when they exist on disk; the others (and CLIP on generated domains) embed
/// the training split's samples as the segmenter sees them. The mean is
/// accumulated in f64 (numpy's float32 mean differs by float rounding only).
pub fn domain_prototype(
    embedder: &dyn Embed,
    domain: &Domain,
    options: &EmbedOptions,
    device: &Device,
    progress: &mut dyn Progress,
) -> Result<(Vec<f32>, usize)> {
    let limit = options.limit.unwrap_or(usize::MAX);
    let files: Vec<PathBuf> = if embedder.prefers_photos() {
        domain.train_images()?.into_iter().take(limit).collect()
    } else {
        Vec::new()
    };
    let what = format!("domain {}", domain.name);
    if !files.is_empty() && files.iter().all(|p| p.is_file()) {
        let mut acc = MeanAccumulator::new(&what);
        progress.begin(&format!("embedding {}", domain.name), files.len() as u64);
        for (i, file) in files.iter().enumerate() {
            let photo = semla_data::image_io::read_rgb(file)?;
            acc.add(&embedder.embed_photo(&photo, device)?)?;
            progress.set(i as u64 + 1);
        }
        progress.end();
        return acc.mean();
    }
    let source = DomainSource::new(domain.clone(), Split::Train, options.resize)?;
    source_prototype(embedder, &source, options, &what, device, progress)
}

/// Writes prototypes `(adapter name, prototype, images averaged)` made by
/// `embedder` into the library at `root` and records the embedder
/// ([`AdapterLibrary::set_prototypes`]).
pub fn record_prototypes(
    root: &Path,
    prototypes: &[(String, Vec<f32>, usize)],
    embedder: &dyn Embed,
) -> Result<EmbedderRecord> {
    let mut library = AdapterLibrary::open(root)?;
    Ok(library
        .set_prototypes(&identity(embedder, root), prototypes)?
        .clone())
}

/// Computes the prototypes of `sources` (`(adapter name, domain)` pairs) with
/// [`domain_prototype`] and writes them with [`record_prototypes`].
pub fn embed_library(
    root: &Path,
    sources: &[(String, Domain)],
    embedder: &dyn Embed,
    options: &EmbedOptions,
    device: &Device,
    progress: &mut dyn Progress,
) -> Result<EmbedderRecord> {
    let library = AdapterLibrary::open(root)?;
    for (name, _) in sources {
        library.entry(name)?;
    }
    let mut prototypes = Vec::with_capacity(sources.len());
    for (name, domain) in sources {
        let (prototype, count) = domain_prototype(embedder, domain, options, device, progress)?;
        prototypes.push((name.clone(), prototype, count));
    }
    record_prototypes(root, &prototypes, embedder)
}
