//! The adapter library on disk, in SemLA's `loradb` layout:
//!
//! ```text
//! <lib>/<name>/adapter_config.json
//! <lib>/<name>/adapter_model.safetensors   (or adapter_model.bin)
//! <lib>/<name>/<name>_statistics.npz       (prototype: train_average_embedding, f32 (1, D))
//! ```
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

/// An adapter library folder, listed at [`open`](Self::open).
#[derive(Clone, Debug)]
pub struct AdapterLibrary {
    root: PathBuf,
    entries: BTreeMap<String, LibraryEntry>,
}

impl AdapterLibrary {
    /// Lists the adapters of `root`: every sub-folder holding an
    /// `adapter_config.json`. Reads configs and weights headers only; a
    /// corrupt adapter is an error naming its file.
    pub fn open(root: &Path) -> Result<Self> {
        let read = std::fs::read_dir(root).map_err(|e| AdapterError::io(root, e))?;
        let mut entries = BTreeMap::new();
        for item in read {
            let item = item.map_err(|e| AdapterError::io(root, e))?;
            let dir = item.path();
            if !dir.is_dir() || !dir.join(CONFIG_FILE).is_file() {
                continue;
            }
            let Some(name) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
                return Err(AdapterError::invalid(
                    &dir,
                    "adapter folder name is not valid UTF-8",
                ));
            };
            let entry = LibraryEntry::read(&dir, &name)?;
            entries.insert(name, entry);
        }
        Ok(Self {
            root: root.to_path_buf(),
            entries,
        })
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

    /// The entry of `name`; an unknown name is an error listing the available ones.
    pub fn entry(&self, name: &str) -> Result<&LibraryEntry> {
        self.entries
            .get(name)
            .ok_or_else(|| AdapterError::UnknownAdapter {
                name: name.to_string(),
                library: self.root.clone(),
                available: self.entries.keys().cloned().collect(),
            })
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

    /// Writes the prototype of `name` (see [`write_prototype`]) and records it.
    pub fn set_prototype(&mut self, name: &str, prototype: &[f32]) -> Result<()> {
        let dir = self.entry(name)?.dir.clone();
        let path = write_prototype(&dir, name, prototype)?;
        if let Some(entry) = self.entries.get_mut(name) {
            entry.prototype_file = Some(path);
        }
        Ok(())
    }

    /// Saves `adapter` as `<root>/<adapter.name>/` (PEFT format, atomic
    /// files), with its prototype if given, and adds it to the listing.
    pub fn add(&mut self, adapter: &Adapter, prototype: Option<&[f32]>) -> Result<()> {
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
        peft::save_adapter(&dir, adapter)?;
        if let Some(p) = prototype {
            write_prototype(&dir, &adapter.name, p)?;
        }
        let entry = LibraryEntry::read(&dir, &adapter.name)?;
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
