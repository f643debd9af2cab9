//! `semla.LoraConfig`, `semla.Adapter`, `semla.AdapterLibrary` and
//! `semla.add_weighted_adapter`: PEFT's names where they are right, semla's
//! documented differences where PEFT's maths is not (see `Combination`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use semla_adapters::{Adapter as RustAdapter, AdapterLibrary as RustLibrary, Combination};
use semla_adapters::{LoraConfig as RustConfig, TargetModules};
use semla_retrieval::{RetrievalParams, SimilarityMeasure};

use crate::arrays::{to_numpy, vector_arg};
use crate::errors::{Failure, Kind, Outcome};
use crate::runtime::run;

/// PEFT's `LoraConfig` as read from `adapter_config.json` (read-only).
#[pyclass(module = "semla", frozen)]
pub struct LoraConfig {
    pub(crate) inner: RustConfig,
}

#[pymethods]
impl LoraConfig {
    /// Default rank `r`.
    #[getter]
    fn r(&self) -> usize {
        self.inner.r
    }

    /// Default `lora_alpha`.
    #[getter]
    fn lora_alpha(&self) -> f64 {
        self.inner.lora_alpha
    }

    /// rsLoRA scaling (`alpha / sqrt(r)`).
    #[getter]
    fn use_rslora(&self) -> bool {
        self.inner.use_rslora
    }

    /// The targeted modules: a list of names, one regular expression, or None.
    #[getter]
    fn target_modules<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(match &self.inner.target_modules {
            Some(TargetModules::List(names)) => PyList::new(py, names)?.into_any(),
            Some(TargetModules::Regex(pattern)) => pattern.into_pyobject(py)?.into_any(),
            None => py.None().into_bound(py),
        })
    }

    /// Per-module rank overrides, `{pattern: r}` in file order.
    #[getter]
    fn rank_pattern<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (pattern, r) in &self.inner.rank_pattern {
            dict.set_item(pattern, r)?;
        }
        Ok(dict)
    }

    /// Per-module alpha overrides, `{pattern: alpha}` in file order.
    #[getter]
    fn alpha_pattern<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (pattern, alpha) in &self.inner.alpha_pattern {
            dict.set_item(pattern, alpha)?;
        }
        Ok(dict)
    }

    /// The scaling of the module at `module_path` (`alpha / r`, or
    /// `alpha / sqrt(r)` with rsLoRA; the patterns applied as PEFT applies them).
    fn scaling(&self, module_path: &str) -> f64 {
        self.inner.scale_for(module_path)
    }

    /// The whole `adapter_config.json`, as a dict.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        py.import("json")?
            .call_method1("loads", (self.inner.to_json_string(),))
    }

    fn __repr__(&self) -> String {
        format!(
            "LoraConfig(r={}, lora_alpha={}, use_rslora={}, target_modules={})",
            self.inner.r,
            self.inner.lora_alpha,
            if self.inner.use_rslora {
                "True"
            } else {
                "False"
            },
            match &self.inner.target_modules {
                Some(TargetModules::List(names)) => format!("[{} modules]", names.len()),
                Some(TargetModules::Regex(pattern)) => format!("{pattern:?}"),
                None => "None".into(),
            }
        )
    }
}

/// A LoRA adapter in memory: its config and the factors of each site (module
/// path). Tensor shapes follow PEFT: Linear `A [r, in]`, `B [out, r]`; Conv2d
/// `A [r, in, k, k]`, `B [out, r, 1, 1]`.
#[pyclass(module = "semla", frozen)]
pub struct Adapter {
    pub(crate) inner: Arc<RustAdapter>,
}

impl Adapter {
    fn site(&self, site: &str) -> PyResult<&semla_adapters::LoraSite> {
        self.inner.sites.get(site).ok_or_else(|| {
            pyo3::exceptions::PyKeyError::new_err(format!(
                "adapter {} has no site {site:?}; its sites: {}",
                self.inner.name,
                self.inner
                    .sites
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }
}

fn tensor_to_numpy<'py>(py: Python<'py>, t: &candle_core::Tensor) -> PyResult<Bound<'py, PyAny>> {
    let values = t
        .flatten_all()
        .and_then(|f| f.to_vec1::<f32>())
        .map_err(Failure::from)?;
    to_numpy(py, values, t.dims())
}

#[pymethods]
impl Adapter {
    /// Loads the PEFT adapter folder `path` (`adapter_config.json` and
    /// `adapter_model.safetensors` or `.bin`), named `adapter_name` or after
    /// the folder.
    #[staticmethod]
    #[pyo3(signature = (path, adapter_name=None))]
    pub fn from_pretrained(
        py: Python<'_>,
        path: PathBuf,
        adapter_name: Option<String>,
    ) -> PyResult<Self> {
        let adapter = run(py, move || -> Outcome<RustAdapter> {
            Ok(match adapter_name {
                Some(name) => semla_adapters::peft::load_adapter_named(&path, &name)?,
                None => semla_adapters::peft::load_adapter(&path)?,
            })
        })?;
        Ok(Self {
            inner: Arc::new(adapter),
        })
    }

    /// The adapter's name.
    #[getter]
    fn name(&self) -> &str {
        &self.inner.name
    }

    /// Its PEFT config.
    #[getter]
    fn config(&self) -> LoraConfig {
        LoraConfig {
            inner: self.inner.config.clone(),
        }
    }

    /// The module paths it adapts, sorted.
    #[getter]
    fn sites(&self) -> Vec<String> {
        self.inner.sites.keys().cloned().collect()
    }

    /// Number of LoRA parameters.
    #[getter]
    fn num_parameters(&self) -> usize {
        self.inner.parameter_count()
    }

    /// The down projection `A` of `site`, float32.
    #[pyo3(name = "lora_A")]
    fn lora_a<'py>(&self, py: Python<'py>, site: &str) -> PyResult<Bound<'py, PyAny>> {
        tensor_to_numpy(py, &self.site(site)?.a)
    }

    /// The up projection `B` of `site`, float32.
    #[pyo3(name = "lora_B")]
    fn lora_b<'py>(&self, py: Python<'py>, site: &str) -> PyResult<Bound<'py, PyAny>> {
        tensor_to_numpy(py, &self.site(site)?.b)
    }

    /// `scaling * B @ A` of `site` in the weight's shape (PEFT's
    /// `get_delta_weight`), float32.
    fn get_delta_weight<'py>(&self, py: Python<'py>, site: &str) -> PyResult<Bound<'py, PyAny>> {
        let delta = self
            .site(site)?
            .delta_weight(self.inner.scale_for(site))
            .map_err(Failure::from)?;
        tensor_to_numpy(py, &delta)
    }

    /// `{site: get_delta_weight(site)}` for every site.
    fn delta_weights<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let adapter = Arc::clone(&self.inner);
        let deltas = run(
            py,
            move || -> Outcome<BTreeMap<String, candle_core::Tensor>> {
                let mut out = BTreeMap::new();
                for (path, site) in &adapter.sites {
                    out.insert(path.clone(), site.delta_weight(adapter.scale_for(path))?);
                }
                Ok(out)
            },
        )?;
        let dict = PyDict::new(py);
        for (path, delta) in &deltas {
            dict.set_item(path, tensor_to_numpy(py, delta)?)?;
        }
        Ok(dict)
    }

    /// Writes the adapter as the PEFT folder `path` (what
    /// `peft.PeftModel.from_pretrained` loads), whole: staged beside it and
    /// swapped in, replacing a folder of that name.
    fn save_pretrained(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let adapter = Arc::clone(&self.inner);
        run(py, move || {
            Ok(semla_adapters::peft::save_adapter(&path, &adapter)?)
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "Adapter(name={:?}, r={}, sites={}, parameters={})",
            self.inner.name,
            self.inner.config.r,
            self.inner.sites.len(),
            self.inner.parameter_count()
        )
    }
}

/// Merges `adapters` with `weights` into one adapter, as PEFT's
/// `add_weighted_adapter` does: `cat` (exact, SemLA's choice), `linear` (PEFT's
/// cross-term mix, equal ranks) or `svd` (truncated to `svd_rank`, default the
/// largest `r`, of the exact weighted sum; PEFT 0.13 truncates a sum with the
/// scalings squared, which is only the same when every scaling is 1).
#[pyfunction]
#[pyo3(signature = (adapters, weights, combination_type="cat", svd_rank=None, adapter_name="merged"))]
pub fn add_weighted_adapter(
    py: Python<'_>,
    adapters: Vec<PyRef<'_, Adapter>>,
    weights: Vec<f64>,
    combination_type: &str,
    svd_rank: Option<usize>,
    adapter_name: &str,
) -> PyResult<Adapter> {
    let combination: Combination = combination_type.parse().map_err(Failure::from)?;
    let parts: Vec<Arc<RustAdapter>> = adapters.iter().map(|a| Arc::clone(&a.inner)).collect();
    let name = adapter_name.to_string();
    let merged = run(py, move || -> Outcome<RustAdapter> {
        let refs: Vec<&RustAdapter> = parts.iter().map(Arc::as_ref).collect();
        let mut merged = semla_adapters::merge(&refs, &weights, combination, svd_rank)?;
        merged.name = name;
        Ok(merged)
    })?;
    Ok(Adapter {
        inner: Arc::new(merged),
    })
}

/// A retrieval record `(name, distance, similarity, weight)` (the Python
/// named tuple `semla.Retrieval`).
pub fn retrieval_record<'py>(
    py: Python<'py>,
    name: &str,
    distance: Option<f64>,
    similarity: Option<f64>,
    weight: f64,
) -> PyResult<Bound<'py, PyAny>> {
    py.import("semla._records")?
        .getattr("Retrieval")?
        .call1((name, distance, similarity, weight))
}

/// Retrieval settings from keyword arguments, checked.
pub fn retrieval_params(
    top_k: usize,
    temperature: f64,
    similarity: &str,
) -> PyResult<RetrievalParams> {
    let similarity: SimilarityMeasure = similarity
        .parse()
        .map_err(|e: semla_retrieval::similarity::UnknownMeasure| Failure::of(Kind::Semla, &e))?;
    let params = RetrievalParams {
        similarity,
        top_k,
        temperature,
    };
    params.validate().map_err(Failure::from)?;
    Ok(params)
}

/// SemLA's adapter library (`loradb`): PEFT adapter folders, each with its
/// prototype `<name>/<name>_statistics.npz`, and `semla_library.json`, the
/// record of the embedder that made the prototypes. Opening reads configs and
/// weight headers only; a corrupt adapter is listed in `broken` and only using
/// it fails.
#[pyclass(module = "semla", frozen)]
pub struct AdapterLibrary {
    pub(crate) inner: Arc<RustLibrary>,
}

impl AdapterLibrary {
    fn entry(&self, name: &str) -> PyResult<&semla_adapters::LibraryEntry> {
        self.inner.entry(name).map_err(|e| Failure::from(e).into())
    }
}

#[pymethods]
impl AdapterLibrary {
    /// Opens the library folder `path`.
    #[staticmethod]
    pub fn open(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let library = run(py, move || Ok(RustLibrary::open(&path)?))?;
        Ok(Self {
            inner: Arc::new(library),
        })
    }

    /// The library folder.
    #[getter]
    fn root(&self) -> PathBuf {
        self.inner.root().to_path_buf()
    }

    /// The usable adapters' names, sorted.
    #[getter]
    fn names(&self) -> Vec<String> {
        self.inner.names().into_iter().map(str::to_string).collect()
    }

    /// The adapters that cannot be used: `(name, what is wrong)`.
    #[getter]
    fn broken(&self) -> Vec<(String, String)> {
        self.inner
            .broken()
            .map(|b| (b.name.clone(), b.error.clone()))
            .collect()
    }

    /// The record of the embedder that made the prototypes (`semla_library.json`),
    /// as a dict, or None for a library without one (an official `loradb`).
    #[getter]
    fn embedder<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let Some(record) = self.inner.record() else {
            return Ok(None);
        };
        let text =
            serde_json::to_string(record).map_err(|e| Failure::new(Kind::Semla, e.to_string()))?;
        Ok(Some(py.import("json")?.call_method1("loads", (text,))?))
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __contains__(&self, name: &str) -> bool {
        self.inner.contains(name)
    }

    /// Loads the adapter `name` (raises `semla.UnknownAdapterError`, a
    /// `KeyError`, for a name the library does not hold).
    fn __getitem__(&self, py: Python<'_>, name: String) -> PyResult<Adapter> {
        self.entry(&name)?;
        let library = Arc::clone(&self.inner);
        let adapter = run(py, move || Ok(library.load(&name)?))?;
        Ok(Adapter {
            inner: Arc::new(adapter),
        })
    }

    /// The config of adapter `name` (without loading its weights).
    fn config(&self, name: &str) -> PyResult<LoraConfig> {
        Ok(LoraConfig {
            inner: self.entry(name)?.config.clone(),
        })
    }

    /// The prototype `[D]` (float32) of adapter `name`, or None if it has none.
    fn prototype<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
        if !self.entry(name)?.has_prototype() {
            return Ok(None);
        }
        let library = Arc::clone(&self.inner);
        let name = name.to_string();
        let values = run(py, move || Ok(library.prototype(&name)?))?;
        let n = values.len();
        Ok(Some(to_numpy(py, values, &[n])?))
    }

    /// `{name: prototype}` for every usable adapter that has one.
    #[getter]
    fn prototypes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for entry in self.inner.entries().filter(|e| e.has_prototype()) {
            if let Some(p) = self.prototype(py, &entry.name)? {
                dict.set_item(&entry.name, p)?;
            }
        }
        Ok(dict)
    }

    /// SemLA's retrieval for one query `embedding` (`[D]` or `[1, D]`): the
    /// `top_k` nearest prototypes among `sources` (default: every adapter, by
    /// name; source order breaks ties) less `exclude`, weighted by a softmax of
    /// their similarities at `temperature`. Returns `semla.Retrieval` records
    /// `(name, distance, similarity, weight)`, most similar first; what
    /// `semla library retrieve` prints.
    #[pyo3(signature = (embedding, top_k=5, temperature=0.05, similarity="euclidean", exclude=None, sources=None))]
    #[allow(clippy::too_many_arguments)] // Python keyword arguments
    fn retrieve<'py>(
        &self,
        py: Python<'py>,
        embedding: &Bound<'py, PyAny>,
        top_k: usize,
        temperature: f64,
        similarity: &str,
        exclude: Option<Vec<String>>,
        sources: Option<Vec<String>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let query = vector_arg(embedding, "the query embedding")?;
        let params = retrieval_params(top_k, temperature, similarity)?;
        let names = sources.unwrap_or_else(|| self.names());
        let exclude = exclude.unwrap_or_default();
        let library = Arc::clone(&self.inner);
        let selections = run(py, move || -> Outcome<_> {
            if names.is_empty() {
                return Err(Failure::new(
                    Kind::Library,
                    format!(
                        "the adapter library {} holds no adapter",
                        library.root().display()
                    ),
                ));
            }
            // Without an embedder to compare, only the dimension is checked.
            library
                .check_query(None, query.len())
                .map_err(|e| Failure::of(Kind::Shape, &e))?;
            let prototypes = semla_pipeline::library::load_prototypes(&library, &names)?;
            let exclude: Vec<&str> = exclude.iter().map(String::as_str).collect();
            Ok(prototypes.retrieve(&query, &params, &exclude)?)
        })?;
        let records = selections
            .iter()
            .map(|s| retrieval_record(py, &s.name, Some(s.distance), Some(s.similarity), s.weight))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, records)
    }

    fn __repr__(&self) -> String {
        format!(
            "AdapterLibrary({:?}, adapters={}, broken={})",
            self.inner.root().display().to_string(),
            self.inner.len(),
            self.inner.broken().count()
        )
    }
}
