//! The adapter library on disk, in SemLA's `loradb` layout:
//!
//! ```text
//! <lib>/<name>/adapter_config.json
//! <lib>/<name>/adapter_model.safetensors   (or adapter_model.bin)
//! <lib>/<name>/<name>_statistics.npz       (prototype: train_average_embedding, f32 (1, D))
//! ```
//!
//! and, at the root, `semla_library.json`: the record of which embedder made
//! the prototypes ([`EmbedderRecord`]), so that a query embedded differently is
//! refused. This module is the one owner of the format: adapters, prototypes and
//! the record are read and written here only, and prototypes are only written
//! together with the record ([`AdapterLibrary::set_prototypes`]).
//!
//! [`AdapterLibrary::open`] reads only the configs and the safetensors
//! headers (checking that factors pair up, chain, are float and match the
//! configured ranks); tensors are memory-mapped and read by
//! [`AdapterLibrary::load`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::adapter::{Adapter, SiteShape};
use crate::config::LoraConfig;
use crate::error::{AdapterError, Result};
use crate::npz::{read_npz_array, write_npz};
use crate::peft::{self, CONFIG_FILE, Factor};
use semla_core::StagedDir;
use semla_core::fs::write_atomic;

/// File name of the embedder record at a library's root.
pub const RECORD_FILE: &str = "semla_library.json";

/// Format tag (schema and version) of [`EmbedderRecord`] as written now:
/// folders in `embedder_spec` are relative to the library's root, so a library
/// can be moved and used from anywhere.
pub const RECORD_FORMAT: &str = "semla-library/2";

/// The first format, still read: folders in `embedder_spec` are as they were
/// given (relative to the working folder of the command that wrote them).
pub const RECORD_FORMAT_V1: &str = "semla-library/1";

/// Which embedder made a library's prototypes (`semla_library.json`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EmbedderRecord {
    /// [`RECORD_FORMAT`] (or [`RECORD_FORMAT_V1`] for a library written before).
    pub format: String,
    /// Embedder kind (`clip`, `backbone`, `style`, ...).
    pub embedder: String,
    /// Embedder identity: kind and a fingerprint of its weights (and settings).
    pub embedder_id: String,
    /// Prototype dimension `D`.
    pub dimension: usize,
    /// How the embedder was named when the prototypes were made (`style@2`,
    /// `clip:DIR`, a folder relative to the library's root), so that queries can be
    /// embedded the same way.
    #[serde(default)]
    pub embedder_spec: String,
    /// Number of images averaged into each prototype, by adapter name.
    #[serde(default)]
    pub images: BTreeMap<String, usize>,
}

/// The embedder a set of prototypes comes from, as the record stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbedderIdentity {
    /// Kind (`clip`, `style`, ...).
    pub kind: String,
    /// Identity (kind and fingerprint).
    pub id: String,
    /// Spec the embedder was named by.
    pub spec: String,
}

impl EmbedderRecord {
    /// Reads `<root>/semla_library.json`; `None` if the library has none
    /// (an official `loradb`).
    pub fn read(root: &Path) -> Result<Option<Self>> {
        let path = root.join(RECORD_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| AdapterError::io(&path, e))?;
        let record: Self = serde_json::from_str(&text)
            .map_err(|e| AdapterError::invalid(&path, format!("invalid JSON: {e}")))?;
        if record.format != RECORD_FORMAT && record.format != RECORD_FORMAT_V1 {
            return Err(AdapterError::invalid(
                &path,
                format!(
                    "unknown format `{}` (expected `{RECORD_FORMAT}`)",
                    record.format
                ),
            ));
        }
        Ok(Some(record))
    }

    /// Writes `<root>/semla_library.json` (atomic).
    fn write(&self, root: &Path) -> Result<PathBuf> {
        let path = root.join(RECORD_FILE);
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| AdapterError::invalid(&path, format!("cannot serialise: {e}")))?;
        write_atomic(&path, text.as_bytes())?;
        Ok(path)
    }

    /// Checks that a query embedding of dimension `dimension` by the embedder
    /// `embedder_id` (`None`: a precomputed embedding of unknown origin, only the
    /// dimension is checked) may be compared with these prototypes; `root`
    /// names the library in the error.
    pub fn check_query(
        &self,
        embedder_id: Option<&str>,
        dimension: usize,
        root: &Path,
    ) -> Result<()> {
        if let Some(id) = embedder_id
            && id != self.embedder_id
        {
            return Err(AdapterError::InvalidArgument(format!(
                "the prototypes of {} were made by the embedder {} ({}), but the query is embedded by {id}; \
                 re-run `semla library embed` with this embedder or pass the matching --embedder",
                root.display(),
                self.embedder_id,
                self.embedder_spec,
            )));
        }
        if self.dimension != dimension {
            return Err(AdapterError::InvalidArgument(format!(
                "the prototypes of {} have dimension {} ({}), but the query embedding has dimension {dimension}",
                root.display(),
                self.dimension,
                self.embedder_spec
            )));
        }
        Ok(())
    }
}

/// Array name of a prototype inside `<name>_statistics.npz`.
pub const PROTOTYPE_ARRAY: &str = "train_average_embedding";

/// File name of the prototype of adapter `name`.
pub fn prototype_file_name(name: &str) -> String {
    format!("{name}_statistics.npz")
}

/// Shapes of `lora_A`, `lora_B` and the dtype of one site, from a header.
type HeaderPair = (Option<Vec<usize>>, Option<Vec<usize>>, String);

/// What the library knows about one site without reading tensors.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SiteSummary {
    /// Module path.
    pub path: String,
    /// Rank, dimensions and kernel size.
    #[serde(flatten)]
    pub shape: SiteShape,
    /// Scaling `alpha / r` (or `alpha / sqrt(r)`).
    pub scale: f64,
    /// Stored dtype (`F32`, `F16`, ...).
    pub dtype: String,
}

/// One adapter of a library, from its config and weights header.
#[derive(Clone, Debug)]
pub struct LibraryEntry {
    /// Adapter name (its folder name).
    pub name: String,
    /// Its folder.
    pub dir: PathBuf,
    /// Parsed `adapter_config.json`.
    pub config: LoraConfig,
    /// The weights file (safetensors or bin).
    pub weights_file: PathBuf,
    /// Sites, by module path.
    pub sites: Vec<SiteSummary>,
    /// The prototype file, if present.
    pub prototype_file: Option<PathBuf>,
}

impl LibraryEntry {
    /// Number of LoRA parameters.
    pub fn parameter_count(&self) -> usize {
        self.sites.iter().map(|s| s.shape.parameter_count()).sum()
    }

    /// Whether the adapter has a prototype file.
    pub fn has_prototype(&self) -> bool {
        self.prototype_file.is_some()
    }

    /// Reads the entry of the adapter folder `dir` (config and weights header only).
    pub fn read(dir: &Path, name: &str) -> Result<Self> {
        let config = LoraConfig::read(&dir.join(CONFIG_FILE))?;
        let weights_file = peft::weights_file(dir)?;
        let mut halves: BTreeMap<String, HeaderPair> = BTreeMap::new();
        for (key, dtype, shape) in peft::read_tensor_shapes(&weights_file)? {
            let Some((path, factor)) = peft::parse_key(&key) else {
                return Err(AdapterError::invalid(
                    &weights_file,
                    format!("tensor {key:?} is not a LoRA factor"),
                ));
            };
            if !matches!(dtype.as_str(), "F32" | "F16" | "BF16" | "F64") {
                return Err(AdapterError::invalid(
                    &weights_file,
                    format!("tensor {key:?} has non-float dtype {dtype}"),
                ));
            }
            let entry = halves.entry(path).or_insert((None, None, dtype));
            match factor {
                Factor::A => entry.0 = Some(shape),
                Factor::B => entry.1 = Some(shape),
            }
        }
        if halves.is_empty() {
            return Err(AdapterError::invalid(
                &weights_file,
                "the adapter has no LoRA site",
            ));
        }
        let mut sites = Vec::with_capacity(halves.len());
        for (path, (a, b, dtype)) in halves {
            let (a, b) = match (a, b) {
                (Some(a), Some(b)) => (a, b),
                (None, _) => {
                    return Err(AdapterError::invalid(
                        &weights_file,
                        format!("site {path}: lora_A is missing"),
                    ));
                }
                (_, None) => {
                    return Err(AdapterError::invalid(
                        &weights_file,
                        format!("site {path}: lora_B is missing"),
                    ));
                }
            };
            let shape = SiteShape::from_shapes(&a, &b)
                .map_err(|m| AdapterError::invalid(&weights_file, format!("site {path}: {m}")))?;
            let (r, _) = config.rank_and_alpha(&path);
            if shape.rank != r {
                return Err(AdapterError::invalid(
                    &weights_file,
                    format!(
                        "site {path}: factors have rank {} but the config gives r = {r}",
                        shape.rank
                    ),
                ));
            }
            let scale = config.scale_for(&path);
            sites.push(SiteSummary {
                path,
                shape,
                scale,
                dtype,
            });
        }
        let proto = dir.join(prototype_file_name(name));
        let prototype_file = proto.is_file().then_some(proto);
        Ok(Self {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            config,
            weights_file,
            sites,
            prototype_file,
        })
    }
}

/// An adapter folder of a library that cannot be used (a corrupt config or
/// weights file), listed so that the rest of the library stays usable.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BrokenEntry {
    /// Adapter name (its folder name).
    pub name: String,
    /// Its folder.
    pub dir: PathBuf,
    /// What is wrong, naming the file.
    pub error: String,
}

/// An adapter library folder, listed at [`open`](Self::open).
#[derive(Clone, Debug)]
pub struct AdapterLibrary {
    root: PathBuf,
    entries: BTreeMap<String, LibraryEntry>,
    broken: BTreeMap<String, BrokenEntry>,
    record: Option<EmbedderRecord>,
}

impl AdapterLibrary {
    /// Lists the adapters of `root`: every sub-folder holding an
    /// `adapter_config.json` (temporary folders of writes in progress are
    /// skipped). Reads configs and weights headers only; a corrupt adapter is
    /// listed as broken ([`broken`](Self::broken)) with the error naming its file,
    /// and only using it fails.
    pub fn open(root: &Path) -> Result<Self> {
        let read = std::fs::read_dir(root).map_err(|e| AdapterError::io(root, e))?;
        let mut entries = BTreeMap::new();
        let mut broken = BTreeMap::new();
        for item in read {
            let item = item.map_err(|e| AdapterError::io(root, e))?;
            let dir = item.path();
            let file_name = item.file_name();
            let name = file_name.to_string_lossy();
            if semla_core::fs::is_temporary_name(&name)
                || !dir.is_dir()
                || !dir.join(CONFIG_FILE).is_file()
            {
                continue;
            }
            let name = name.into_owned();
            let read = match file_name.to_str() {
                Some(_) => LibraryEntry::read(&dir, &name),
                None => Err(AdapterError::invalid(
                    &dir,
                    "adapter folder name is not valid UTF-8",
                )),
            };
            match read {
                Ok(entry) => {
                    entries.insert(name, entry);
                }
                Err(e) => {
                    broken.insert(
                        name.clone(),
                        BrokenEntry {
                            name,
                            dir,
                            error: e.to_string(),
                        },
                    );
                }
            }
        }
        let record = EmbedderRecord::read(root)?;
        Ok(Self {
            root: root.to_path_buf(),
            entries,
            broken,
            record,
        })
    }

    /// The adapters that cannot be used, with their errors, sorted by name.
    pub fn broken(&self) -> impl Iterator<Item = &BrokenEntry> {
        self.broken.values()
    }

    /// The record of which embedder made the prototypes, if the library has one.
    pub fn record(&self) -> Option<&EmbedderRecord> {
        self.record.as_ref()
    }

    /// Checks a query embedding of dimension `dimension` by `embedder_id` (see
    /// [`EmbedderRecord::check_query`]); a library without a record (an official
    /// `loradb`) only gets a warning, the dimension is checked at retrieval.
    pub fn check_query(&self, embedder_id: Option<&str>, dimension: usize) -> Result<()> {
        match &self.record {
            Some(record) => record.check_query(embedder_id, dimension, &self.root),
            None => {
                tracing::warn!(
                    "{} has no {RECORD_FILE}: cannot check which embedder made its prototypes",
                    self.root.display()
                );
                Ok(())
            }
        }
    }

    /// Writes the prototypes `(adapter name, prototype, images averaged)` made by
    /// `embedder` and records it in `semla_library.json`.
    ///
    /// If the record names another embedder, every adapter that has a prototype
    /// must be among the new ones (so that no stale prototype of the other
    /// embedder survives); otherwise it is an error and nothing is written.
    pub fn set_prototypes(
        &mut self,
        embedder: &EmbedderIdentity,
        prototypes: &[(String, Vec<f32>, usize)],
    ) -> Result<&EmbedderRecord> {
        let Some(dimension) = prototypes.first().map(|p| p.1.len()) else {
            return Err(AdapterError::InvalidArgument(
                "no source domain to embed".into(),
            ));
        };
        for (name, prototype, _) in prototypes {
            self.entry(name)?;
            if prototype.len() != dimension {
                return Err(AdapterError::InvalidArgument(format!(
                    "prototype of {name} has dimension {} but the first has {dimension}",
                    prototype.len()
                )));
            }
        }
        let mut images = BTreeMap::new();
        match &self.record {
            Some(prev) if prev.embedder_id == embedder.id => images = prev.images.clone(),
            previous => {
                let stale: Vec<&str> = self
                    .entries()
                    .filter(|e| {
                        e.has_prototype() && !prototypes.iter().any(|(n, _, _)| n == &e.name)
                    })
                    .map(|e| e.name.as_str())
                    .collect();
                if !stale.is_empty() {
                    return Err(AdapterError::InvalidArgument(format!(
                        "{}: the prototypes of {} were made by {}; embed every adapter of the library \
                         with the new embedder (add them to the sources) or remove their statistics files",
                        self.root.display(),
                        stale.join(", "),
                        previous
                            .as_ref()
                            .map(|p| p.embedder_id.as_str())
                            .unwrap_or("an unrecorded embedder")
                    )));
                }
            }
        }
        // The prototypes and the record change together: staged in a copy of the
        // library (hard links) and swapped in whole, so an interrupted write
        // leaves the old prototypes with the old record.
        let staged = StagedDir::from_existing(&self.root)?;
        for (name, prototype, count) in prototypes {
            write_prototype(&staged.path().join(name), name, prototype)?;
            images.insert(name.clone(), *count);
        }
        let record = EmbedderRecord {
            format: RECORD_FORMAT.into(),
            embedder: embedder.kind.clone(),
            embedder_id: embedder.id.clone(),
            dimension,
            embedder_spec: embedder.spec.clone(),
            images,
        };
        record.write(staged.path())?;
        staged.commit()?;
        for (name, _, _) in prototypes {
            if let Some(entry) = self.entries.get_mut(name) {
                entry.prototype_file = Some(entry.dir.join(prototype_file_name(name)));
            }
        }
        Ok(self.record.insert(record))
    }

    /// The library folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Adapter names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.entries.keys().map(String::as_str).collect()
    }

    /// Number of adapters.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the library holds no adapter.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All entries, sorted by name.
    pub fn entries(&self) -> impl Iterator<Item = &LibraryEntry> {
        self.entries.values()
    }

    /// The entry of `name`; a broken adapter is its error, an unknown name an
    /// error listing the available ones.
    pub fn entry(&self, name: &str) -> Result<&LibraryEntry> {
        if let Some(broken) = self.broken.get(name) {
            return Err(AdapterError::invalid(
                &broken.dir,
                format!("adapter {name} is unusable: {}", broken.error),
            ));
        }
        self.entries
            .get(name)
            .ok_or_else(|| AdapterError::UnknownAdapter {
                name: name.to_string(),
                library: self.root.clone(),
                available: self.entries.keys().cloned().collect(),
            })
    }

    /// Whether the library holds an adapter folder `name` (usable or broken).
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name) || self.broken.contains_key(name)
    }

    /// Loads the tensors of adapter `name` (memory-mapped, copied to f32).
    pub fn load(&self, name: &str) -> Result<Adapter> {
        let entry = self.entry(name)?;
        peft::load_adapter_named(&entry.dir, name)
    }

    /// The prototype of `name`: `train_average_embedding`, `(1, D)` or `(D,)`,
    /// as `D` finite values.
    pub fn prototype(&self, name: &str) -> Result<Vec<f32>> {
        let entry = self.entry(name)?;
        let Some(path) = &entry.prototype_file else {
            return Err(AdapterError::invalid(
                entry.dir.join(prototype_file_name(name)),
                "the adapter has no prototype file",
            ));
        };
        read_prototype(path)
    }

    /// Saves `adapter` as a new folder `<root>/<adapter.name>/` (PEFT format),
    /// with its prototype if given, and adds it to the listing. An existing
    /// adapter of that name is an error ([`replace`](Self::replace) it instead).
    ///
    /// A prototype of unknown origin can only join a library without an embedder
    /// record (an official `loradb`); where the library records its embedder,
    /// prototypes are written with [`set_prototypes`](Self::set_prototypes).
    pub fn add(&mut self, adapter: &Adapter, prototype: Option<&[f32]>) -> Result<()> {
        if self.contains(&adapter.name) {
            return Err(AdapterError::InvalidArgument(format!(
                "the library {} already holds an adapter {:?}; replace it explicitly (--force)",
                self.root.display(),
                adapter.name
            )));
        }
        self.write_entry(adapter, prototype)
    }

    /// Saves `adapter` as `<root>/<adapter.name>/`, replacing the whole folder of
    /// an adapter of that name (its old prototype goes with it), with the new
    /// prototype if given.
    pub fn replace(&mut self, adapter: &Adapter, prototype: Option<&[f32]>) -> Result<()> {
        self.write_entry(adapter, prototype)
    }

    /// Writes the folder of `adapter` whole: staged beside it, swapped in.
    fn write_entry(&mut self, adapter: &Adapter, prototype: Option<&[f32]>) -> Result<()> {
        if let (Some(_), Some(record)) = (prototype, &self.record) {
            return Err(AdapterError::InvalidArgument(format!(
                "{}: the library records its embedder ({}); a prototype of unknown origin \
                 cannot join it",
                self.root.display(),
                record.embedder_spec
            )));
        }
        if adapter.name.is_empty()
            || adapter.name.contains(['/', '\\'])
            || adapter.name.starts_with('.')
        {
            return Err(AdapterError::InvalidArgument(format!(
                "{:?} is not a valid adapter name",
                adapter.name
            )));
        }
        let dir = self.root.join(&adapter.name);
        let staged = StagedDir::new(&dir)?;
        peft::write_adapter_files(staged.path(), adapter)?;
        if let Some(p) = prototype {
            write_prototype(staged.path(), &adapter.name, p)?;
        }
        staged.commit()?;
        let entry = LibraryEntry::read(&dir, &adapter.name)?;
        self.broken.remove(&adapter.name);
        self.entries.insert(adapter.name.clone(), entry);
        Ok(())
    }
}

/// Reads a prototype npz: array `train_average_embedding`, shape `(1, D)` or
/// `(D,)`, all finite.
pub fn read_prototype(path: &Path) -> Result<Vec<f32>> {
    let array = read_npz_array(path, PROTOTYPE_ARRAY)?;
    let ok_shape = matches!(array.shape.as_slice(), [1, d] | [d] if *d > 0);
    if !ok_shape {
        return Err(AdapterError::invalid(
            path,
            format!(
                "{PROTOTYPE_ARRAY} has shape {:?}, expected (1, D)",
                array.shape
            ),
        ));
    }
    if let Some(i) = array.data.iter().position(|x| !x.is_finite()) {
        return Err(AdapterError::invalid(
            path,
            format!("{PROTOTYPE_ARRAY} has a NaN or infinite value at index {i}"),
        ));
    }
    Ok(array.data)
}

/// Writes `<dir>/<name>_statistics.npz` holding `train_average_embedding`
/// `(1, D)` float32, like SemLA's `np.savez` (atomic). Returns its path.
pub fn write_prototype(dir: &Path, name: &str, prototype: &[f32]) -> Result<PathBuf> {
    let path = dir.join(prototype_file_name(name));
    if prototype.is_empty() {
        return Err(AdapterError::invalid(&path, "empty prototype"));
    }
    if let Some(i) = prototype.iter().position(|x| !x.is_finite()) {
        return Err(AdapterError::invalid(
            &path,
            format!("prototype has a NaN or infinite value at index {i}"),
        ));
    }
    write_npz(
        &path,
        &[(PROTOTYPE_ARRAY, &[1, prototype.len()], prototype)],
    )?;
    Ok(path)
}
