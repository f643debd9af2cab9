//! Domain prototypes: the mean embedding of a source domain's training
//! images, stored beside its adapter as `<name>/<name>_statistics.npz`
//! (`train_average_embedding`, `(1, D)` float32, the official format), and
//! the record of which embedder made them (`semla_library.json` at the
//! library root), so that a query embedded differently is refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use semla_adapters::AdapterLibrary;
use semla_data::domains::{Domain, Split};
use semla_retrieval::{Prototype, PrototypeSet};
use semla_train::data::{DomainSource, Sample, SampleSource};
use serde::{Deserialize, Serialize};

use crate::embedder::Embedder;
use crate::error::{ExperimentError, Result, write_atomic};
use crate::progress::Progress;

/// File name of the embedder record at a library's root.
pub const LIBRARY_RECORD_FILE: &str = "semla_library.json";

/// Format tag of [`LibraryRecord`].
pub const LIBRARY_RECORD_FORMAT: &str = "semla-library/1";

/// Which embedder made a library's prototypes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LibraryRecord {
    /// [`LIBRARY_RECORD_FORMAT`].
    pub format: String,
    /// Embedder kind: `clip` or `backbone`.
    pub embedder: String,
    /// Embedder identity ([`Embedder::id`]): kind and weights fingerprint.
    pub embedder_id: String,
    /// Prototype dimension `D`.
    pub dimension: usize,
    /// How the embedder was named when the prototypes were made (informative).
    #[serde(default)]
    pub embedder_spec: String,
    /// Number of images averaged into each prototype, by adapter name.
    #[serde(default)]
    pub images: BTreeMap<String, usize>,
}

impl LibraryRecord {
    /// Reads `<root>/semla_library.json`; `None` if the library has none
    /// (an official `loradb`).
    pub fn read(root: &Path) -> Result<Option<Self>> {
        let path = root.join(LIBRARY_RECORD_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| ExperimentError::io(&path, e))?;
        let record: Self = serde_json::from_str(&text).map_err(|source| ExperimentError::Json {
            path: path.clone(),
            source,
        })?;
        if record.format != LIBRARY_RECORD_FORMAT {
            return Err(ExperimentError::Invalid(format!(
                "{}: unknown format `{}` (expected `{LIBRARY_RECORD_FORMAT}`)",
                path.display(),
                record.format
            )));
        }
        Ok(Some(record))
    }

    /// Writes `<root>/semla_library.json` (atomic).
    pub fn write(&self, root: &Path) -> Result<PathBuf> {
        let path = root.join(LIBRARY_RECORD_FILE);
        let text = serde_json::to_string_pretty(self).map_err(|source| ExperimentError::Json {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, text.as_bytes())?;
        Ok(path)
    }

    /// Checks that queries of `embedder` with dimension `dimension` may be
    /// compared with these prototypes; `root` names the library in the error.
    pub fn check_query(
        &self,
        embedder: &Embedder<'_>,
        dimension: usize,
        root: &Path,
    ) -> Result<()> {
        if self.embedder_id != embedder.id() {
            return Err(ExperimentError::Invalid(format!(
                "the prototypes of {} were made by the embedder {} ({}), but the query is embedded by {}; \
                 re-run `semla library embed` with this embedder or pass the matching --embedder",
                root.display(),
                self.embedder_id,
                self.embedder_spec,
                embedder.id()
            )));
        }
        if self.dimension != dimension {
            return Err(ExperimentError::Invalid(format!(
                "the prototypes of {} have dimension {}, but the query embedding has dimension {dimension}",
                root.display(),
                self.dimension
            )));
        }
        Ok(())
    }
}

/// Checks a query embedder against a library (its record if any, else only
/// the prototypes' dimension, checked at retrieval).
pub fn check_library_embedder(
    root: &Path,
    embedder: &Embedder<'_>,
    dimension: usize,
) -> Result<()> {
    match LibraryRecord::read(root)? {
        Some(record) => record.check_query(embedder, dimension, root),
        None => {
            tracing::warn!(
                "{} has no {LIBRARY_RECORD_FILE}: cannot check which embedder made its prototypes",
                root.display()
            );
            Ok(())
        }
    }
}

/// Checks a query against a library's record when only the embedder's
/// identity is known (`embedder_id`, `None` for a precomputed embedding whose
/// origin is unknown: then only the dimension is checked).
pub fn check_query_identity(
    root: &Path,
    embedder_id: Option<&str>,
    dimension: usize,
) -> Result<()> {
    let Some(record) = LibraryRecord::read(root)? else {
        return Ok(());
    };
    if let Some(id) = embedder_id
        && id != record.embedder_id
    {
        return Err(ExperimentError::Invalid(format!(
            "the prototypes of {} were made by the embedder {} ({}), but the query is embedded by {id}",
            root.display(),
            record.embedder_id,
            record.embedder_spec
        )));
    }
    if record.dimension != dimension {
        return Err(ExperimentError::Invalid(format!(
            "the prototypes of {} have dimension {} ({}), but the query embedding has dimension {dimension}",
            root.display(),
            record.dimension,
            record.embedder_spec
        )));
    }
    Ok(())
}

/// The prototypes of `names` (in that order) from a library.
pub fn load_prototypes(library: &AdapterLibrary, names: &[String]) -> Result<PrototypeSet> {
    let mut prototypes = Vec::with_capacity(names.len());
    for name in names {
        prototypes.push(Prototype::new(name.clone(), library.prototype(name)?));
    }
    Ok(PrototypeSet::new(prototypes)?)
}

/// Options of [`domain_prototype`].
#[derive(Clone, Copy, Debug, Default)]
pub struct EmbedOptions {
    /// Average at most this many images (default: all).
    pub limit: Option<usize>,
    /// Resize samples to `(height, width)` (the size the segmenter sees); only
    /// used when samples (not files) are embedded.
    pub resize: Option<(usize, usize)>,
    /// Images embedded per forward pass (default 8).
    pub batch_size: usize,
}

/// Running mean of embeddings, accumulated in f64.
struct MeanAccumulator<'a> {
    sum: Vec<f64>,
    count: usize,
    what: &'a str,
}

impl MeanAccumulator<'_> {
    fn add(&mut self, e: &[f32]) -> Result<()> {
        if self.sum.is_empty() {
            self.sum.resize(e.len(), 0.0);
        }
        if e.len() != self.sum.len() {
            return Err(ExperimentError::Invalid(format!(
                "embedding dimension changed from {} to {} within {}",
                self.sum.len(),
                e.len(),
                self.what
            )));
        }
        if let Some(i) = e.iter().position(|v| !v.is_finite()) {
            return Err(ExperimentError::Invalid(format!(
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
            return Err(ExperimentError::Invalid(format!(
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
    embedder: &Embedder<'_>,
    source: &dyn SampleSource,
    options: &EmbedOptions,
    label: &str,
    device: &Device,
    progress: &mut dyn Progress,
) -> Result<(Vec<f32>, usize)> {
    let mut acc = MeanAccumulator {
        sum: Vec::new(),
        count: 0,
        what: label,
    };
    let total = source.len().min(options.limit.unwrap_or(usize::MAX));
    let batch_size = if options.batch_size == 0 {
        8
    } else {
        options.batch_size
    };
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
/// CLIP embeds the domain's prototype images ([`Domain::train_images`], the
/// official "embedding dir") from their files when they exist on disk; the
/// backbone (and CLIP on generated domains) embeds the training split's
/// samples as the segmenter sees them. The mean is accumulated in f64
/// (numpy's float32 mean differs by float rounding only).
pub fn domain_prototype(
    embedder: &Embedder<'_>,
    domain: &Domain,
    options: &EmbedOptions,
    device: &Device,
    progress: &mut dyn Progress,
) -> Result<(Vec<f32>, usize)> {
    let limit = options.limit.unwrap_or(usize::MAX);
    let files: Vec<PathBuf> = if matches!(embedder, Embedder::Clip(_)) {
        domain.train_images()?.into_iter().take(limit).collect()
    } else {
        Vec::new()
    };
    if !files.is_empty() && files.iter().all(|p| p.is_file()) {
        let what = format!("domain {}", domain.name);
        let mut acc = MeanAccumulator {
            sum: Vec::new(),
            count: 0,
            what: &what,
        };
        progress.begin(&format!("embedding {}", domain.name), files.len() as u64);
        for (i, file) in files.iter().enumerate() {
            acc.add(&embedder.embed_file(file, device)?)?;
            progress.set(i as u64 + 1);
        }
        progress.end();
        return acc.mean();
    }
    let source = DomainSource::new(domain.clone(), Split::Train, options.resize)?;
    source_prototype(
        embedder,
        &source,
        options,
        &format!("domain {}", domain.name),
        device,
        progress,
    )
}

/// Writes prototypes `(adapter name, prototype, images averaged)` into the
/// library at `root` and records the embedder in `semla_library.json`.
///
/// If the library's record names another embedder, every adapter that has a
/// prototype must be among the new ones (so that no stale prototype of the
/// other embedder survives); otherwise it is an error and nothing is written.
pub fn record_prototypes(
    root: &Path,
    prototypes: &[(String, Vec<f32>, usize)],
    embedder: &Embedder<'_>,
    embedder_spec: &str,
) -> Result<LibraryRecord> {
    let mut library = AdapterLibrary::open(root)?;
    let Some(dimension) = prototypes.first().map(|p| p.1.len()) else {
        return Err(ExperimentError::Invalid("no source domain to embed".into()));
    };
    for (name, prototype, _) in prototypes {
        library.entry(name)?;
        if prototype.len() != dimension {
            return Err(ExperimentError::Invalid(format!(
                "prototype of {name} has dimension {} but the first has {dimension}",
                prototype.len()
            )));
        }
    }
    let previous = LibraryRecord::read(root)?;
    let mut images = BTreeMap::new();
    match &previous {
        Some(prev) if prev.embedder_id == embedder.id() => images = prev.images.clone(),
        _ => {
            let stale: Vec<&str> = library
                .entries()
                .filter(|e| e.has_prototype() && !prototypes.iter().any(|(n, _, _)| n == &e.name))
                .map(|e| e.name.as_str())
                .collect();
            if !stale.is_empty() {
                return Err(ExperimentError::Invalid(format!(
                    "{}: the prototypes of {} were made by {}; embed every adapter of the library \
                     with the new embedder (add them to the sources) or remove their statistics files",
                    root.display(),
                    stale.join(", "),
                    previous
                        .as_ref()
                        .map(|p| p.embedder_id.as_str())
                        .unwrap_or("an unrecorded embedder")
                )));
            }
        }
    }
    for (name, prototype, count) in prototypes {
        library.set_prototype(name, prototype)?;
        images.insert(name.clone(), *count);
    }
    let record = LibraryRecord {
        format: LIBRARY_RECORD_FORMAT.into(),
        embedder: embedder.kind().into(),
        embedder_id: embedder.id().into(),
        dimension,
        embedder_spec: embedder_spec.into(),
        images,
    };
    record.write(root)?;
    Ok(record)
}

/// Computes the prototypes of `sources` (`(adapter name, domain)` pairs) with
/// [`domain_prototype`] and writes them with [`record_prototypes`].
pub fn embed_library(
    root: &Path,
    sources: &[(String, Domain)],
    embedder: &Embedder<'_>,
    embedder_spec: &str,
    options: &EmbedOptions,
    device: &Device,
    progress: &mut dyn Progress,
) -> Result<LibraryRecord> {
    let library = AdapterLibrary::open(root)?;
    for (name, _) in sources {
        library.entry(name)?;
    }
    let mut prototypes = Vec::with_capacity(sources.len());
    for (name, domain) in sources {
        let (prototype, count) = domain_prototype(embedder, domain, options, device, progress)?;
        prototypes.push((name.clone(), prototype, count));
    }
    record_prototypes(root, &prototypes, embedder, embedder_spec)
}
