//! [`Semla`]: a segmenter, a library of adapters with prototypes, and an
//! embedder. For every image: embed it, find the nearest domain prototypes,
//! weight the top-k adapters by a temperature softmax, fuse them and segment.
//!
//! One batch may hold images with different mixtures (each image keeps its
//! own); the static modes ([`Mode::ZeroShot`], [`Mode::Uniform`],
//! [`Mode::Adapters`]) and the fusion can be chosen per [`Request`].

use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use semla_adapters::{Adapter, Combination};
use semla_data::{RgbImage, Sample};
use semla_models::Segmenter;
use semla_retrieval::RetrievalParams;
use serde::Serialize;

use crate::embed::{BuildContext, Embed, EmbedderSpec};
use crate::error::{PipelineError, Result};
use crate::library::SourceLibrary;
use crate::mixture::{
    AdapterChoice, Fusion, Mode, argmax_maps, batch_mixture, class_probabilities, merged_scores,
    mixture_scores, retrieve, uniform,
};

/// How SemLA fuses by default (a [`Request`] may override each).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct SemlaSettings {
    /// Similarity, top-k and temperature (official: euclidean, 5, 0.05).
    pub retrieval: RetrievalParams,
    /// How the selected adapters' weights are combined (official: `cat`).
    pub combination: Combination,
    /// Weight-space fusion (official) or late fusion of the outputs.
    pub fusion: Fusion,
}

/// What to do with one image or batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Request {
    /// How the adapters are chosen (default: SemLA's retrieval).
    pub mode: Mode,
    /// Adapters left out of the candidates (e.g. the target's own: leave-one-out).
    pub exclude: Vec<String>,
    /// Retrieval settings for this request (default: the pipeline's).
    pub retrieval: Option<RetrievalParams>,
    /// Combination for this request (default: the pipeline's).
    pub combination: Option<Combination>,
    /// Fusion for this request (default: the pipeline's).
    pub fusion: Option<Fusion>,
    /// Whether to return the class probabilities `[C, H, W]`.
    pub probabilities: bool,
}

impl Request {
    /// SemLA's retrieval, the pipeline's settings.
    pub fn semla() -> Self {
        Self::default()
    }

    /// A request in `mode` with the pipeline's settings.
    pub fn mode(mode: Mode) -> Self {
        Self {
            mode,
            ..Self::default()
        }
    }
}

/// Seconds spent in each stage for the batch an image was segmented in
/// (`images` images shared them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct StageTimings {
    /// Images in the batch.
    pub images: usize,
    /// The query embedding.
    pub embed_s: f64,
    /// Retrieval and weights.
    pub retrieve_s: f64,
    /// Normalisation, fusion and the adapted forward.
    pub forward_s: f64,
    /// Arg-max (and probabilities).
    pub postprocess_s: f64,
}

/// The segmentation of one image.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Prediction {
    /// Class per pixel, `[H, W]` row-major.
    pub labels: Vec<u16>,
    /// `H`.
    pub height: usize,
    /// `W`.
    pub width: usize,
    /// The adapters used, most similar first, with their weights (empty: the base model).
    pub adapters: Vec<AdapterChoice>,
    /// Class probabilities `[C, H, W]`, when asked for.
    #[serde(skip)]
    pub probabilities: Option<Vec<f32>>,
    /// Where the time went.
    pub timings: StageTimings,
}

impl Prediction {
    /// Pixels per class (index = class; `num_classes` entries).
    pub fn class_pixels(&self, num_classes: usize) -> Vec<usize> {
        let mut counts = vec![0usize; num_classes];
        for &c in &self.labels {
            if let Some(n) = counts.get_mut(usize::from(c)) {
                *n += 1;
            }
        }
        counts
    }
}

/// Fails when scores `[N, C, H, W]` hold a NaN or infinite value, naming the
/// adapters the images ran with: a model or adapter out of range must not give a
/// plausible-looking segmentation.
fn check_finite(scores: &Tensor, mixtures: &[Vec<AdapterChoice>]) -> Result<()> {
    let values: Vec<f32> = scores.flatten_all()?.to_vec1()?;
    if values.iter().all(|v| v.is_finite()) {
        return Ok(());
    }
    let mut names: Vec<&str> = mixtures.iter().flatten().map(|c| c.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let with = if names.is_empty() {
        "without adapters".to_string()
    } else {
        format!("with the adapters {}", names.join(", "))
    };
    Err(PipelineError::Invalid(format!(
        "the model's output {with} is not finite (NaN or infinite): the weights of the model or of an adapter are out of range"
    )))
}

/// SemLA on one segmenter with one library (see the module documentation).
pub struct Semla {
    model: Arc<dyn Segmenter>,
    library: SourceLibrary,
    embedder: Option<Box<dyn Embed>>,
    settings: SemlaSettings,
    device: Device,
}

impl Semla {
    /// Puts the pieces together and checks them: every adapter fits the model's
    /// sites, the settings are valid, and the embedder (needed by
    /// [`Mode::Semla`] only) is the one the library's record names.
    pub fn new(
        model: Arc<dyn Segmenter>,
        library: SourceLibrary,
        embedder: Option<Box<dyn Embed>>,
        settings: SemlaSettings,
        device: &Device,
    ) -> Result<Self> {
        library.check_fits(model.as_ref())?;
        settings.retrieval.validate()?;
        if let Some(embedder) = &embedder {
            match library.record() {
                Some(record) if record.embedder_id != embedder.id() => {
                    return Err(PipelineError::Invalid(format!(
                        "the prototypes of {} were made by the embedder {} ({}), but the query is embedded by {}; \
                         re-run `semla library embed` with this embedder or pass the matching --embedder",
                        library.root().display(),
                        record.embedder_id,
                        record.embedder_spec,
                        embedder.id()
                    )));
                }
                Some(_) => {}
                None => tracing::warn!(
                    "{} has no {}: cannot check which embedder made its prototypes",
                    library.root().display(),
                    semla_adapters::library::RECORD_FILE
                ),
            }
        }
        Ok(Self {
            model,
            library,
            embedder,
            settings,
            device: device.clone(),
        })
    }

    /// [`new`](Self::new) with the embedder a spec names, chosen as a library's
    /// queries must be: the explicit spec, else the one recorded with the
    /// library's prototypes (its folder relative to the library; when that folder
    /// is gone, `model` itself if it is the recorded embedder's segmenter), else
    /// `backbone` (built on `model` when the spec names no segmenter folder).
    pub fn with_embedder_spec(
        model: Arc<dyn Segmenter>,
        library: SourceLibrary,
        spec: Option<&EmbedderSpec>,
        settings: SemlaSettings,
        device: &Device,
    ) -> Result<Self> {
        let explicit = spec.is_some();
        let spec = EmbedderSpec::resolve(spec, library.record(), library.root());
        let ctx = BuildContext {
            device,
            model: Some(&model),
        };
        let embedder = match spec.build(&ctx) {
            Ok(embedder) => embedder,
            // The recorded segmenter folder is gone (the library was moved without
            // it): the command's model serves if it is the one the record names.
            Err(e) if !explicit && spec.dir.as_ref().is_some_and(|d| !d.exists()) => {
                let own = EmbedderSpec {
                    dir: None,
                    ..spec.clone()
                }
                .build(&ctx);
                match (own, library.record()) {
                    (Ok(own), Some(record)) if record.embedder_id == own.id() => own,
                    _ => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        Self::new(model, library, Some(embedder), settings, device)
    }

    /// The segmenter.
    pub fn model(&self) -> &Arc<dyn Segmenter> {
        &self.model
    }

    /// The candidate adapters.
    pub fn library(&self) -> &SourceLibrary {
        &self.library
    }

    /// The query embedder, if any.
    pub fn embedder(&self) -> Option<&dyn Embed> {
        self.embedder.as_deref()
    }

    /// The query embedding `[D]` of one photo, as [`segment`](Self::segment)
    /// computes it: from the photo as decoded for embedders that prefer photos
    /// (CLIP), else from the photo as a sample.
    pub fn embed(&self, photo: &RgbImage) -> Result<Vec<f32>> {
        let embedder = self
            .embedder
            .as_deref()
            .ok_or_else(|| PipelineError::Invalid("this pipeline has no embedder".into()))?;
        if embedder.prefers_photos() {
            return embedder.embed_photo(photo, &self.device);
        }
        embedder
            .embed_samples(&[&Sample::from_photo(photo)], &self.device)?
            .pop()
            .ok_or_else(|| PipelineError::Invalid("the embedder returned nothing".into()))
    }

    /// The default settings.
    pub fn settings(&self) -> &SemlaSettings {
        &self.settings
    }

    /// Segments one photo at its own size. Embedders that work on the photo
    /// as decoded (CLIP) get it; the others get it as a sample.
    pub fn segment(&self, photo: &RgbImage, request: &Request) -> Result<Prediction> {
        self.segment_photos(&[photo], request)?
            .pop()
            .ok_or_else(|| PipelineError::Invalid("the model returned nothing".into()))
    }

    /// Segments photos of one size in one batch, each with its own mixture, at
    /// their own size (what [`segment`](Self::segment) does for one). Embedders
    /// that work on photos embed each alone, so an image's mixture does not depend
    /// on the batch it came in.
    pub fn segment_photos(
        &self,
        photos: &[&RgbImage],
        request: &Request,
    ) -> Result<Vec<Prediction>> {
        if let Some(first) = photos.first()
            && let Some(other) = photos.iter().find(|p| p.dimensions() != first.dimensions())
        {
            return Err(PipelineError::Invalid(format!(
                "the images of a batch must have one size: {}x{} and {}x{} (width x height)",
                first.width(),
                first.height(),
                other.width(),
                other.height()
            )));
        }
        let samples: Vec<Sample> = photos.iter().map(|p| Sample::from_photo(p)).collect();
        let refs: Vec<&Sample> = samples.iter().collect();
        let started = Instant::now();
        let embeddings = match (&request.mode, &self.embedder) {
            (Mode::Semla, Some(embedder)) if embedder.prefers_photos() => Some(
                photos
                    .iter()
                    .map(|p| self.embed(p))
                    .collect::<Result<Vec<_>>>()?,
            ),
            _ => None,
        };
        let embed_s = started.elapsed().as_secs_f64();
        let mut out = self.segment_embedded(self.model.as_ref(), &refs, embeddings, request)?;
        for prediction in &mut out {
            prediction.timings.embed_s += embed_s;
        }
        Ok(out)
    }

    /// Segments a batch of samples (one size), each image with its own mixture.
    pub fn segment_samples(
        &self,
        samples: &[&Sample],
        request: &Request,
    ) -> Result<Vec<Prediction>> {
        self.segment_embedded(self.model.as_ref(), samples, None, request)
    }

    /// [`segment_samples`](Self::segment_samples) with another segmenter of the
    /// same adapter sites: an open-vocabulary model (CAT-Seg) set to a target's
    /// own class list, while the library, embedder and settings stay this
    /// pipeline's. Checks that the library's adapters fit `model`.
    pub fn segment_samples_with(
        &self,
        model: &dyn Segmenter,
        samples: &[&Sample],
        request: &Request,
    ) -> Result<Vec<Prediction>> {
        self.library.check_fits(model)?;
        self.segment_embedded(model, samples, None, request)
    }

    /// The mixture of each sample (embedding them when the mode retrieves).
    pub fn mixtures(
        &self,
        samples: &[&Sample],
        request: &Request,
    ) -> Result<Vec<Vec<AdapterChoice>>> {
        let (mixtures, _, _) = self.choose(samples, None, request)?;
        Ok(mixtures)
    }

    fn choose(
        &self,
        samples: &[&Sample],
        embeddings: Option<Vec<Vec<f32>>>,
        request: &Request,
    ) -> Result<(Vec<Vec<AdapterChoice>>, f64, f64)> {
        let exclude: Vec<&str> = request.exclude.iter().map(String::as_str).collect();
        let n = samples.len();
        Ok(match &request.mode {
            Mode::ZeroShot => (vec![Vec::new(); n], 0.0, 0.0),
            Mode::Uniform => (vec![uniform(&self.library, &exclude)?; n], 0.0, 0.0),
            Mode::Adapters(choices) => {
                for c in choices {
                    self.library.adapter(&c.name)?;
                }
                (vec![choices.clone(); n], 0.0, 0.0)
            }
            Mode::Semla => {
                let (Some(embedder), Some(prototypes)) =
                    (&self.embedder, self.library.prototypes())
                else {
                    return Err(PipelineError::Invalid(
                        "semla needs an embedder and the library's prototypes".into(),
                    ));
                };
                let started = Instant::now();
                let embeddings = match embeddings {
                    Some(e) => e,
                    None => embedder.embed_samples(samples, &self.device)?,
                };
                let embed_s = started.elapsed().as_secs_f64();
                let started = Instant::now();
                let params = request.retrieval.unwrap_or(self.settings.retrieval);
                let mut mixtures = Vec::with_capacity(n);
                for embedding in &embeddings {
                    self.library
                        .check_query(Some(embedder.id()), embedding.len())?;
                    mixtures.push(retrieve(prototypes, embedding, &params, &exclude)?);
                }
                (mixtures, embed_s, started.elapsed().as_secs_f64())
            }
        })
    }

    fn segment_embedded(
        &self,
        model: &dyn Segmenter,
        samples: &[&Sample],
        embeddings: Option<Vec<Vec<f32>>>,
        request: &Request,
    ) -> Result<Vec<Prediction>> {
        if samples.is_empty() {
            return Ok(Vec::new());
        }
        let (mixtures, embed_s, retrieve_s) = self.choose(samples, embeddings, request)?;
        let started = Instant::now();
        let fusion = request.fusion.unwrap_or(self.settings.fusion);
        let combination = request.combination.unwrap_or(self.settings.combination);
        let images = model.normalization().batch(samples, &self.device)?;
        let refs: Vec<&[AdapterChoice]> = mixtures.iter().map(Vec::as_slice).collect();
        let scores = match (fusion, combination) {
            (Fusion::Weights, Combination::Linear | Combination::Svd) => {
                merged_scores(model, &images, &self.library, &refs, combination)?
            }
            _ => {
                let (names, rows) = batch_mixture(&refs);
                let adapters: Vec<&Adapter> = names
                    .iter()
                    .map(|n| self.library.adapter(n))
                    .collect::<Result<_>>()?;
                mixture_scores(model, &images, &adapters, &rows, fusion)?
            }
        };
        let forward_s = started.elapsed().as_secs_f64();
        let timings = StageTimings {
            images: samples.len(),
            embed_s,
            retrieve_s,
            forward_s,
            postprocess_s: 0.0,
        };
        predictions(
            samples,
            &scores,
            mixtures,
            fusion,
            request.probabilities,
            timings,
        )
    }
}

/// Segments samples of one size with `adapters` fused by `weights`, the same
/// mixture for every image (none: the base model): the PEFT-shaped path, for
/// adapters held in memory (a merge made by the caller) rather than in a
/// library. The fusion is exact (`cat`, applied factored).
pub fn segment_with_adapters(
    model: &dyn Segmenter,
    samples: &[&Sample],
    adapters: &[&Adapter],
    weights: &[f64],
    probabilities: bool,
    device: &Device,
) -> Result<Vec<Prediction>> {
    if samples.is_empty() {
        return Ok(Vec::new());
    }
    if !adapters.is_empty() || !weights.is_empty() {
        semla_adapters::fusion::check_weights(weights, adapters.len())?;
    }
    semla_adapters::apply::check_adapters_fit(adapters, &model.sites())?;
    let started = Instant::now();
    let images = model.normalization().batch(samples, device)?;
    let scores = mixture_scores(
        model,
        &images,
        adapters,
        &[weights.to_vec()],
        Fusion::Weights,
    )?;
    let timings = StageTimings {
        images: samples.len(),
        forward_s: started.elapsed().as_secs_f64(),
        ..StageTimings::default()
    };
    let mixture: Vec<AdapterChoice> = adapters
        .iter()
        .zip(weights)
        .map(|(a, &w)| AdapterChoice::weighted(a.name.clone(), w))
        .collect();
    let mixtures = vec![mixture; samples.len()];
    predictions(
        samples,
        &scores,
        mixtures,
        Fusion::Weights,
        probabilities,
        timings,
    )
}

/// The predictions of a batch from its scores `[N, C, H, W]` (logits, or
/// probabilities with late fusion): checked finite, arg-max labels, optional
/// probabilities, the post-processing time added to `timings`.
fn predictions(
    samples: &[&Sample],
    scores: &Tensor,
    mixtures: Vec<Vec<AdapterChoice>>,
    fusion: Fusion,
    probabilities: bool,
    mut timings: StageTimings,
) -> Result<Vec<Prediction>> {
    check_finite(scores, &mixtures)?;
    let started = Instant::now();
    let maps = argmax_maps(scores)?;
    let probabilities: Option<Tensor> = match (probabilities, fusion) {
        (false, _) => None,
        (true, Fusion::Outputs) => Some(scores.clone()),
        (true, Fusion::Weights) => Some(class_probabilities(scores)?),
    };
    timings.postprocess_s = started.elapsed().as_secs_f64();
    let mut out = Vec::with_capacity(samples.len());
    for (i, ((sample, labels), adapters)) in samples.iter().zip(maps).zip(mixtures).enumerate() {
        let probabilities = match &probabilities {
            Some(p) => Some(p.get(i)?.flatten_all()?.to_vec1::<f32>()?),
            None => None,
        };
        out.push(Prediction {
            labels,
            height: sample.height,
            width: sample.width,
            adapters,
            probabilities,
            timings,
        });
    }
    Ok(out)
}
