//! What a server serves: a [`Semla`] (the model, the candidate adapters and
//! their prototypes, the embedder), the listing of the library behind it and the
//! fingerprints that every response carries. Loaded whole, warmed up with a
//! forward, then swapped in: a reload never serves a half-read library.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use semla_adapters::AdapterLibrary;
use semla_data::synthetic::{Split, SyntheticWorld};
use semla_models::Segmenter;
use semla_pipeline::render::palette_for;
use semla_pipeline::{EmbedderSpec, PipelineError, Request, Semla, SemlaSettings, SourceLibrary};
use serde::Serialize;

/// One class of the model, as every response lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassInfo {
    /// Class index (the value in the label PNG).
    pub id: usize,
    /// Class name (`class <id>` when the model has none).
    pub name: String,
    /// Display colour (as in the overlay).
    pub color: [u8; 3],
}

/// One adapter of the library, as `GET /v1/adapters` lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AdapterInfo {
    /// Adapter (domain) name.
    pub name: String,
    /// LoRA rank `r`.
    pub rank: usize,
    /// `lora_alpha`.
    pub alpha: f64,
    /// Whether the scaling is rsLoRA's `alpha / sqrt(r)`.
    pub use_rslora: bool,
    /// LoRA sites in the adapter's weights.
    pub sites: usize,
    /// Of those, the sites the model has (an adapter is only loaded when all match).
    pub sites_matched: usize,
    /// Whether it has a prototype (`<name>_statistics.npz`).
    pub prototype: bool,
    /// Whether retrieval may choose it (loaded with a readable prototype).
    pub candidate: bool,
    /// Times it was in an image's mixture since the server started.
    pub times_selected: u64,
}

/// An adapter folder that cannot be used, with what is wrong.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BrokenInfo {
    /// Adapter (folder) name.
    pub name: String,
    /// What is wrong, naming the file.
    pub error: String,
}

/// Where a library and its embedder come from; [`load`](Self::load) reads
/// them (again, for a reload).
#[derive(Clone)]
pub struct LoadSpec {
    /// The segmenter (loaded once; reloads keep it).
    pub model: Arc<dyn Segmenter>,
    /// The model folder's fingerprint ([`semla_core::hash::model_fingerprint`]).
    pub model_fingerprint: String,
    /// What `/info` calls the model (its folder).
    pub model_name: String,
    /// The adapter library folder.
    pub library: PathBuf,
    /// Candidate adapters (default: every adapter with a readable prototype).
    pub sources: Option<Vec<String>>,
    /// Query embedder (default: the one recorded with the library).
    pub embedder: Option<EmbedderSpec>,
    /// Default retrieval, combination and fusion.
    pub settings: SemlaSettings,
    /// Where the model runs.
    pub device: candle_core::Device,
}

/// A loaded, warmed-up pipeline with its library listing.
pub struct Loaded {
    /// The pipeline.
    pub semla: Semla,
    /// Every adapter folder of the library (candidates and the rest).
    pub adapters: Vec<AdapterInfo>,
    /// Folders that could not be read.
    pub broken: Vec<BrokenInfo>,
    /// The model's classes.
    pub classes: Vec<ClassInfo>,
    /// The model folder's fingerprint (hex).
    pub model_fingerprint: String,
    /// What `/info` calls the model.
    pub model_name: String,
    /// Fingerprint of the candidate adapters and prototypes
    /// ([`semla_core::hash::library_fingerprint`], as shards record it).
    pub library_fingerprint: String,
    /// The query embedder's spec (empty: none).
    pub embedder: String,
    /// When it was loaded.
    pub loaded_at: SystemTime,
    /// Seconds the load and warm-up took.
    pub load_s: f64,
}

impl LoadSpec {
    /// Reads the library, builds the pipeline and runs one warm-up forward
    /// (SemLA's full path on a small synthetic photo), so that a server that
    /// says it is ready has served once.
    pub fn load(&self) -> Result<Loaded, Box<PipelineError>> {
        let started = Instant::now();
        let library = AdapterLibrary::open(&self.library).map_err(PipelineError::from)?;
        let candidates = match &self.sources {
            Some(names) => SourceLibrary::from_library(&library, names, true)?,
            None => SourceLibrary::open_with_prototypes(&self.library)?,
        };
        let names = candidates.sources().to_vec();
        let fingerprint = semla_core::hash::library_fingerprint(&self.library, &names)
            .map_err(|e| PipelineError::io(e.path, e.source))?;
        let semla = Semla::with_embedder_spec(
            self.model.clone(),
            candidates,
            self.embedder.as_ref(),
            self.settings,
            &self.device,
        )?;
        let model_sites: std::collections::BTreeSet<String> =
            self.model.sites().into_iter().map(|s| s.path).collect();
        let adapters = library
            .entries()
            .map(|entry| AdapterInfo {
                name: entry.name.clone(),
                rank: entry.config.r,
                alpha: entry.config.lora_alpha,
                use_rslora: entry.config.use_rslora,
                sites: entry.sites.len(),
                sites_matched: entry
                    .sites
                    .iter()
                    .filter(|s| model_sites.contains(&s.path))
                    .count(),
                prototype: entry.has_prototype(),
                candidate: names.contains(&entry.name),
                times_selected: 0,
            })
            .collect();
        let broken = library
            .broken()
            .map(|b| BrokenInfo {
                name: b.name.clone(),
                error: b.error.clone(),
            })
            .collect();
        let names_of_classes = self.model.config().class_names().to_vec();
        let classes = palette_for(self.model.as_ref())
            .into_iter()
            .enumerate()
            .map(|(id, color)| ClassInfo {
                id,
                name: names_of_classes
                    .get(id)
                    .cloned()
                    .unwrap_or_else(|| format!("class {id}")),
                color,
            })
            .collect();
        warm_up(&semla)?;
        let embedder = semla
            .embedder()
            .map(|e| e.spec().to_string())
            .unwrap_or_default();
        Ok(Loaded {
            semla,
            adapters,
            broken,
            classes,
            model_fingerprint: self.model_fingerprint.clone(),
            model_name: self.model_name.clone(),
            library_fingerprint: fingerprint,
            embedder,
            loaded_at: SystemTime::now(),
            load_s: started.elapsed().as_secs_f64(),
        })
    }
}

/// The photo `GET /v1/sample.png` serves and the warm-up segments: a scene of
/// the embedded synthetic world (deterministic).
pub fn sample_photo() -> Result<semla_data::RgbImage, Box<PipelineError>> {
    let sample = SyntheticWorld::generate_named("fog", Split::Val, 0, 160, 120).map_err(|e| {
        Box::new(PipelineError::Invalid(format!(
            "rendering the sample photo: {e}"
        )))
    })?;
    Ok(sample.image)
}

/// One forward on the sample photo, SemLA's full path.
fn warm_up(semla: &Semla) -> Result<(), Box<PipelineError>> {
    let photo = sample_photo()?;
    let request = if semla.embedder().is_some() && semla.library().prototypes().is_some() {
        Request::semla()
    } else {
        Request::mode(semla_pipeline::Mode::ZeroShot)
    };
    semla.segment(&photo, &request).map(|_| ()).map_err(|e| {
        Box::new(PipelineError::Invalid(format!(
            "the warm-up forward failed: {e}"
        )))
    })
}
