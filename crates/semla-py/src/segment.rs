//! `semla.Segmenter`, `semla.SemLA` and `semla.Segmentation`: a model folder,
//! SemLA on it with a library, and what one image's segmentation returns.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use image::RgbImage;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use semla_adapters::Combination;
use semla_data::Sample;
use semla_models::Segmenter as RustSegmenter;
use semla_pipeline::render::{colour_mask, overlay as blend_overlay, palette_for};
use semla_pipeline::semla::segment_with_adapters;
use semla_pipeline::{AdapterChoice, EmbedderSpec, Fusion, Mode, Prediction, Request, Semla};
use semla_pipeline::{SemlaSettings, SourceLibrary};

use crate::adapters::{Adapter, AdapterLibrary, retrieval_params, retrieval_record};
use crate::arrays::{ImageArg, image_arg, labels_arg, shape_error, to_numpy};
use crate::errors::{Failure, Kind, Outcome};
use crate::runtime::run;

/// The segmentation of one image.
#[pyclass(module = "semla", frozen)]
pub struct Segmentation {
    labels: Py<PyAny>,
    probabilities: Option<Py<PyAny>>,
    adapters: Py<PyList>,
    timings: Py<PyDict>,
    height: usize,
    width: usize,
    num_classes: usize,
}

#[pymethods]
impl Segmentation {
    /// Class per pixel, `numpy.uint16 [H, W]`.
    #[getter]
    fn labels(&self, py: Python<'_>) -> Py<PyAny> {
        self.labels.clone_ref(py)
    }

    /// Class probabilities `numpy.float32 [C, H, W]`, when asked for
    /// (`return_probs=True`), else None.
    #[getter]
    fn probabilities(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.probabilities.as_ref().map(|p| p.clone_ref(py))
    }

    /// The adapters used, most similar first: `semla.Retrieval` records
    /// `(name, distance, similarity, weight)` (distance and similarity are None
    /// where the adapters were not retrieved). Empty: the base model.
    #[getter]
    fn adapters(&self, py: Python<'_>) -> Py<PyList> {
        self.adapters.clone_ref(py)
    }

    /// Seconds per stage (`decode_s`, `embed_s`, `retrieve_s`, `forward_s`,
    /// `postprocess_s`) for the batch the image was in (`images` images).
    #[getter]
    fn timings(&self, py: Python<'_>) -> Py<PyDict> {
        self.timings.clone_ref(py)
    }

    /// `H`.
    #[getter]
    fn height(&self) -> usize {
        self.height
    }

    /// `W`.
    #[getter]
    fn width(&self) -> usize {
        self.width
    }

    /// Pixels per class, `numpy.int64 [C]`.
    fn class_pixels<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let np = py.import("numpy")?;
        np.call_method1(
            "bincount",
            (
                self.labels.bind(py).call_method0("ravel")?,
                py.None(),
                self.num_classes,
            ),
        )
    }

    fn __repr__(&self) -> String {
        format!(
            "Segmentation({}x{}, {} classes)",
            self.height, self.width, self.num_classes
        )
    }
}

fn segmentation(
    py: Python<'_>,
    prediction: Prediction,
    decode_s: f64,
    num_classes: usize,
) -> PyResult<Segmentation> {
    let (h, w) = (prediction.height, prediction.width);
    let labels = to_numpy(py, prediction.labels, &[h, w])?.unbind();
    let probabilities = match prediction.probabilities {
        Some(p) => {
            let classes = p.len() / (h * w).max(1);
            Some(to_numpy(py, p, &[classes, h, w])?.unbind())
        }
        None => None,
    };
    let records = prediction
        .adapters
        .iter()
        .map(|a| retrieval_record(py, &a.name, a.distance, a.similarity, a.weight))
        .collect::<PyResult<Vec<_>>>()?;
    let t = prediction.timings;
    let timings = PyDict::new(py);
    timings.set_item("images", t.images)?;
    timings.set_item("decode_s", decode_s)?;
    timings.set_item("embed_s", t.embed_s)?;
    timings.set_item("retrieve_s", t.retrieve_s)?;
    timings.set_item("forward_s", t.forward_s)?;
    timings.set_item("postprocess_s", t.postprocess_s)?;
    Ok(Segmentation {
        labels,
        probabilities,
        adapters: PyList::new(py, records)?.unbind(),
        timings: timings.unbind(),
        height: h,
        width: w,
        num_classes,
    })
}

/// Image arguments, decoded (files) off the GIL; with the decoding time.
fn load_images(args: Vec<ImageArg>) -> Outcome<(Vec<RgbImage>, f64)> {
    let started = Instant::now();
    let photos = args
        .into_iter()
        .map(ImageArg::load)
        .collect::<Outcome<Vec<_>>>()?;
    Ok((photos, started.elapsed().as_secs_f64()))
}

fn image_args(images: &Bound<'_, PyAny>) -> PyResult<Vec<ImageArg>> {
    if images.is_instance_of::<pyo3::types::PyString>() {
        return Err(shape_error(
            "expected a list of images; for one image call segment(image)",
        ));
    }
    let mut out = Vec::new();
    for item in images.try_iter()? {
        out.push(image_arg(&item?)?);
    }
    Ok(out)
}

/// Indices of `photos` grouped by size, in order of first appearance.
fn size_groups(photos: &[RgbImage]) -> Vec<Vec<usize>> {
    let mut groups: Vec<((u32, u32), Vec<usize>)> = Vec::new();
    for (i, p) in photos.iter().enumerate() {
        match groups.iter_mut().find(|(size, _)| *size == p.dimensions()) {
            Some((_, members)) => members.push(i),
            None => groups.push((p.dimensions(), vec![i])),
        }
    }
    groups.into_iter().map(|(_, members)| members).collect()
}

/// A semantic segmentation model folder (`config.json`, `model.safetensors`).
#[pyclass(module = "semla", frozen)]
pub struct Segmenter {
    pub(crate) inner: Arc<dyn RustSegmenter>,
    /// Where its weights live and it runs.
    pub(crate) device: Device,
}

/// Opens `device` (`cpu`, `cuda`, `cuda:N`, `auto`; see `semla_models::device`).
fn open_device(device: &str) -> PyResult<Device> {
    let spec: semla_models::device::DeviceSpec = device
        .parse()
        .map_err(|e: semla_models::device::DeviceError| Failure::new(Kind::Semla, e.to_string()))?;
    Ok(spec
        .open()
        .map_err(|e| Failure::new(Kind::Semla, e.to_string()))?)
}

#[pymethods]
impl Segmenter {
    /// Loads the model folder `model_dir` onto `device` (`auto`: a CUDA GPU
    /// when this build has the `cuda` feature and one answers, else the CPU).
    #[staticmethod]
    #[pyo3(signature = (model_dir, device="auto"))]
    pub fn from_pretrained(py: Python<'_>, model_dir: PathBuf, device: &str) -> PyResult<Self> {
        let device = open_device(device)?;
        let on = device.clone();
        let model = run(py, move || {
            Ok(semla_models::load_segmenter(&model_dir, &on)?)
        })?;
        Ok(Self {
            inner: Arc::from(model),
            device,
        })
    }

    /// The device it runs on (`cpu`, `cuda:0`).
    #[getter]
    fn device(&self) -> String {
        semla_models::device::device_name(&self.device)
    }

    /// Number of classes `C`.
    #[getter]
    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }

    /// The class names (index = class id), empty when the config has none.
    #[getter]
    fn class_names(&self) -> Vec<String> {
        self.inner.config().class_names().to_vec()
    }

    /// The adapter sites (PEFT module paths), in a stable order.
    #[getter]
    fn sites(&self) -> Vec<String> {
        self.inner.sites().into_iter().map(|s| s.path).collect()
    }

    /// Segments one image (a `uint8 [H, W, 3]` RGB array or a PNG/JPEG path)
    /// with the base model, or with `adapters` (`semla.Adapter`s, e.g. from
    /// `add_weighted_adapter`) fused exactly by `weights` (default 1 each).
    #[pyo3(signature = (image, adapters=None, weights=None, return_probs=false))]
    fn segment(
        &self,
        py: Python<'_>,
        image: &Bound<'_, PyAny>,
        adapters: Option<Vec<PyRef<'_, Adapter>>>,
        weights: Option<Vec<f64>>,
        return_probs: bool,
    ) -> PyResult<Segmentation> {
        let arg = image_arg(image)?;
        let adapters: Vec<Arc<semla_adapters::Adapter>> = adapters
            .unwrap_or_default()
            .iter()
            .map(|a| Arc::clone(&a.inner))
            .collect();
        let weights = weights.unwrap_or_else(|| vec![1.0; adapters.len()]);
        let model = Arc::clone(&self.inner);
        let device = self.device.clone();
        let (prediction, decode_s) = run(py, move || -> Outcome<_> {
            let (photos, decode_s) = load_images(vec![arg])?;
            let samples: Vec<Sample> = photos.iter().map(Sample::from_photo).collect();
            let refs: Vec<&Sample> = samples.iter().collect();
            let adapter_refs: Vec<&semla_adapters::Adapter> =
                adapters.iter().map(Arc::as_ref).collect();
            let mut out = segment_with_adapters(
                model.as_ref(),
                &refs,
                &adapter_refs,
                &weights,
                return_probs,
                &device,
            )?;
            let prediction = out
                .pop()
                .ok_or_else(|| Failure::new(Kind::Semla, "the model returned nothing"))?;
            Ok((prediction, decode_s))
        })?;
        segmentation(py, prediction, decode_s, self.inner.num_classes())
    }

    /// The label map coloured with the model's palette, `uint8 [H, W, 3]`.
    fn colorize<'py>(
        &self,
        py: Python<'py>,
        labels: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (values, shape) = labels_arg(labels, "labels")?;
        let [h, w] = shape[..] else {
            return Err(shape_error(format!(
                "labels: expected [H, W], got shape {shape:?}"
            )));
        };
        let palette = palette_for(self.inner.as_ref());
        let mask = colour_mask(&values, w, h, &palette).map_err(Failure::from)?;
        to_numpy(py, mask.into_raw(), &[h, w, 3])
    }

    /// The coloured label map blended half and half over `image` (same size),
    /// `uint8 [H, W, 3]`: what `semla segment` writes as `<stem>_overlay.png`.
    fn overlay<'py>(
        &self,
        py: Python<'py>,
        image: &Bound<'py, PyAny>,
        labels: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let arg = image_arg(image)?;
        let photo = run(py, move || arg.load())?;
        let (values, shape) = labels_arg(labels, "labels")?;
        if shape[..] != [photo.height() as usize, photo.width() as usize] {
            return Err(shape_error(format!(
                "labels of shape {shape:?} for an image of {}x{} (H x W)",
                photo.height(),
                photo.width()
            )));
        }
        let palette = palette_for(self.inner.as_ref());
        let (h, w) = (photo.height() as usize, photo.width() as usize);
        let mask = colour_mask(&values, w, h, &palette).map_err(Failure::from)?;
        let blended = blend_overlay(&mask, &photo).map_err(Failure::from)?;
        to_numpy(py, blended.into_raw(), &[h, w, 3])
    }

    fn __repr__(&self) -> String {
        format!(
            "Segmenter(classes={}, sites={})",
            self.inner.num_classes(),
            self.inner.sites().len()
        )
    }
}

/// The request of a `segment` call's keyword arguments.
#[allow(clippy::too_many_arguments)] // Python keyword arguments
fn request(
    defaults: &SemlaSettings,
    mode: &str,
    adapters: Option<Vec<(String, f64)>>,
    exclude: Option<Vec<String>>,
    top_k: Option<usize>,
    temperature: Option<f64>,
    return_probs: bool,
) -> PyResult<Request> {
    let mode = match (mode, adapters) {
        ("semla", None) => Mode::Semla,
        ("zeroshot", None) => Mode::ZeroShot,
        ("uniform", None) => Mode::Uniform,
        ("adapters", Some(list)) => Mode::Adapters(
            list.into_iter()
                .map(|(name, weight)| AdapterChoice::weighted(name, weight))
                .collect(),
        ),
        ("adapters", None) => {
            return Err(Failure::new(
                Kind::Semla,
                "mode=\"adapters\" needs adapters=[(name, weight), ...]",
            )
            .into());
        }
        (_, Some(_)) => {
            return Err(Failure::new(
                Kind::Semla,
                "adapters=[...] is given with mode=\"adapters\" only",
            )
            .into());
        }
        (other, None) => {
            return Err(Failure::new(
                Kind::Semla,
                format!("unknown mode {other:?}: expected semla, zeroshot, uniform or adapters"),
            )
            .into());
        }
    };
    let retrieval = match (top_k, temperature) {
        (None, None) => None,
        (k, t) => {
            let base = defaults.retrieval;
            let mut params = base;
            params.top_k = k.unwrap_or(base.top_k);
            params.temperature = t.unwrap_or(base.temperature);
            params.validate().map_err(Failure::from)?;
            Some(params)
        }
    };
    Ok(Request {
        mode,
        exclude: exclude.unwrap_or_default(),
        retrieval,
        combination: None,
        fusion: None,
        probabilities: return_probs,
    })
}

/// SemLA on a segmenter with a library: for every image, embed it, find the
/// nearest domain prototypes, weight the `top_k` adapters by a softmax at
/// `temperature`, fuse them and segment. The embedder defaults to the one the
/// library records (`semla library embed`); `sources` limits the candidates
/// (default: every adapter with a prototype).
#[pyclass(module = "semla", frozen, name = "SemLA")]
pub struct SemLA {
    semla: Arc<Semla>,
    device: Device,
}

#[pymethods]
impl SemLA {
    #[new]
    #[pyo3(signature = (model, library, embedder=None, top_k=5, temperature=0.05, similarity="euclidean", combination_type="cat", fusion="weights", sources=None, device="auto"))]
    #[allow(clippy::too_many_arguments)] // Python keyword arguments
    fn new(
        py: Python<'_>,
        model: &Bound<'_, PyAny>,
        library: &Bound<'_, PyAny>,
        embedder: Option<String>,
        top_k: usize,
        temperature: f64,
        similarity: &str,
        combination_type: &str,
        fusion: &str,
        sources: Option<Vec<String>>,
        device: &str,
    ) -> PyResult<Self> {
        // A loaded Segmenter keeps its own device; `device` places a model
        // loaded from a path.
        let (model, device): (Arc<dyn RustSegmenter>, Device) = match model.cast::<Segmenter>() {
            Ok(m) => (Arc::clone(&m.get().inner), m.get().device.clone()),
            Err(_) => {
                let dir: PathBuf = model.extract().map_err(|_| {
                    shape_error("model: expected a semla.Segmenter or the path of a model folder")
                })?;
                let loaded = Segmenter::from_pretrained(py, dir, device)?;
                (loaded.inner, loaded.device)
            }
        };
        let on = device.clone();
        let library: Arc<semla_adapters::AdapterLibrary> = match library.cast::<AdapterLibrary>() {
            Ok(l) => Arc::clone(&l.get().inner),
            Err(_) => {
                let dir: PathBuf = library.extract().map_err(|_| {
                    shape_error(
                        "library: expected a semla.AdapterLibrary or the path of a library folder",
                    )
                })?;
                AdapterLibrary::open(py, dir)?.inner
            }
        };
        let spec: Option<EmbedderSpec> = match embedder {
            Some(text) => Some(
                text.parse()
                    .map_err(|e: String| Failure::new(Kind::Semla, e))?,
            ),
            None => None,
        };
        let settings = SemlaSettings {
            retrieval: retrieval_params(top_k, temperature, similarity)?,
            combination: combination_type
                .parse::<Combination>()
                .map_err(Failure::from)?,
            fusion: fusion
                .parse::<Fusion>()
                .map_err(|e| Failure::new(Kind::Semla, e))?,
        };
        let semla = run(py, move || -> Outcome<Semla> {
            let sources = match sources {
                Some(names) => SourceLibrary::from_library(&library, &names, true)?,
                None => SourceLibrary::open_with_prototypes(library.root())?,
            };
            Ok(Semla::with_embedder_spec(
                model,
                sources,
                spec.as_ref(),
                settings,
                &on,
            )?)
        })?;
        Ok(Self {
            semla: Arc::new(semla),
            device,
        })
    }

    /// The segmenter.
    #[getter]
    fn model(&self) -> Segmenter {
        Segmenter {
            inner: Arc::clone(self.semla.model()),
            device: self.device.clone(),
        }
    }

    /// The candidate adapters, in candidate order.
    #[getter]
    fn sources(&self) -> Vec<String> {
        self.semla.library().sources().to_vec()
    }

    /// The query embedder's spec (`style:DIR@2`, `clip:DIR`, ...).
    #[getter]
    fn embedder(&self) -> Option<String> {
        self.semla.embedder().map(|e| e.spec().to_string())
    }

    /// The default number of adapters fused.
    #[getter]
    fn top_k(&self) -> usize {
        self.semla.settings().retrieval.top_k
    }

    /// The default softmax temperature.
    #[getter]
    fn temperature(&self) -> f64 {
        self.semla.settings().retrieval.temperature
    }

    /// The query embedding `float32 [D]` of one image, as the library's
    /// prototypes were made (`library.retrieve(embedding)` gives the mixture).
    fn embed<'py>(
        &self,
        py: Python<'py>,
        image: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let arg = image_arg(image)?;
        let semla = Arc::clone(&self.semla);
        let embedding = run(py, move || -> Outcome<Vec<f32>> {
            let photo = arg.load()?;
            Ok(semla.embed(&photo)?)
        })?;
        let n = embedding.len();
        to_numpy(py, embedding, &[n])
    }

    /// Segments one image (a `uint8 [H, W, 3]` RGB array or a PNG/JPEG path):
    /// what `semla segment` does for it. `mode`: `semla` (retrieval),
    /// `zeroshot` (the base model), `uniform` (every candidate, equal
    /// weights) or `adapters` (the given `[(name, weight), ...]`); `exclude`
    /// leaves adapters out of the candidates (leave-one-out).
    #[pyo3(signature = (image, mode="semla", adapters=None, exclude=None, top_k=None, temperature=None, return_probs=false))]
    #[allow(clippy::too_many_arguments)] // Python keyword arguments
    fn segment(
        &self,
        py: Python<'_>,
        image: &Bound<'_, PyAny>,
        mode: &str,
        adapters: Option<Vec<(String, f64)>>,
        exclude: Option<Vec<String>>,
        top_k: Option<usize>,
        temperature: Option<f64>,
        return_probs: bool,
    ) -> PyResult<Segmentation> {
        let request = request(
            self.semla.settings(),
            mode,
            adapters,
            exclude,
            top_k,
            temperature,
            return_probs,
        )?;
        let arg = image_arg(image)?;
        let semla = Arc::clone(&self.semla);
        let (prediction, decode_s) = run(py, move || -> Outcome<_> {
            let (photos, decode_s) = load_images(vec![arg])?;
            let photo = photos
                .first()
                .ok_or_else(|| Failure::new(Kind::Semla, "no image"))?;
            Ok((semla.segment(photo, &request)?, decode_s))
        })?;
        segmentation(py, prediction, decode_s, self.semla.model().num_classes())
    }

    /// Segments a list of images, each with its own mixture; images of one size
    /// share a forward pass. Returns the segmentations in input order.
    #[pyo3(signature = (images, mode="semla", adapters=None, exclude=None, top_k=None, temperature=None, return_probs=false))]
    #[allow(clippy::too_many_arguments)] // Python keyword arguments
    fn segment_batch(
        &self,
        py: Python<'_>,
        images: &Bound<'_, PyAny>,
        mode: &str,
        adapters: Option<Vec<(String, f64)>>,
        exclude: Option<Vec<String>>,
        top_k: Option<usize>,
        temperature: Option<f64>,
        return_probs: bool,
    ) -> PyResult<Vec<Segmentation>> {
        let request = request(
            self.semla.settings(),
            mode,
            adapters,
            exclude,
            top_k,
            temperature,
            return_probs,
        )?;
        let args = image_args(images)?;
        semla_core::limits::check_batch(args.len() as u64, "a segment_batch call")
            .map_err(shape_error)?;
        let semla = Arc::clone(&self.semla);
        let (predictions, decode_s) = run(py, move || -> Outcome<_> {
            let (photos, decode_s) = load_images(args)?;
            let mut out: Vec<Option<Prediction>> = vec![None; photos.len()];
            for group in size_groups(&photos) {
                let refs: Vec<&RgbImage> = group.iter().map(|&i| &photos[i]).collect();
                for (i, p) in group.iter().zip(semla.segment_photos(&refs, &request)?) {
                    out[*i] = Some(p);
                }
            }
            let out = out
                .into_iter()
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| Failure::new(Kind::Semla, "the model returned too few images"))?;
            Ok((out, decode_s))
        })?;
        let classes = self.semla.model().num_classes();
        predictions
            .into_iter()
            .map(|p| segmentation(py, p, decode_s, classes))
            .collect()
    }

    fn __repr__(&self) -> String {
        format!(
            "SemLA(sources={}, embedder={:?}, top_k={}, temperature={})",
            self.semla.library().sources().len(),
            self.embedder().unwrap_or_default(),
            self.top_k(),
            self.temperature()
        )
    }
}

/// Reads a PNG or JPEG as `uint8 [H, W, 3]` RGB, decoded as `semla segment` decodes it.
#[pyfunction]
pub fn read_image<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyAny>> {
    let photo = run(py, move || ImageArg::File(path).load())?;
    let (w, h) = photo.dimensions();
    to_numpy(py, photo.into_raw(), &[h as usize, w as usize, 3])
}

/// Reads a label map PNG (8- or 16-bit grey: class index per pixel) as `uint16 [H, W]`.
#[pyfunction]
pub fn read_label_map<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyAny>> {
    let map = run(py, move || {
        semla_data::labels::read_label_map(&path).map_err(|e| Failure::of(Kind::Dataset, &e))
    })?;
    to_numpy(py, map.values, &[map.height as usize, map.width as usize])
}

/// Writes a `uint8 [H, W, 3]` RGB array as a PNG file (atomically).
#[pyfunction]
pub fn write_image(py: Python<'_>, path: PathBuf, image: &Bound<'_, PyAny>) -> PyResult<()> {
    let ImageArg::Pixels(photo) = image_arg(image)? else {
        return Err(shape_error("write_image: expected a uint8 array [H, W, 3]"));
    };
    run(py, move || {
        semla_data::image_io::write_rgb_png(&path, &photo).map_err(|e| Failure::of(Kind::Image, &e))
    })
}
