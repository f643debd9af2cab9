//! The candidate adapters of a run, loaded once: the sources (in candidate
//! order: source order breaks retrieval ties), their tensors, their prototypes
//! and the library's record of the embedder that made them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use semla_adapters::apply::check_adapters_fit;
use semla_adapters::{Adapter, AdapterLibrary, EmbedderRecord};
use semla_models::Segmenter;
use semla_retrieval::{Prototype, PrototypeSet};

use crate::error::{PipelineError, Result};

/// The candidate adapters of a run (see the module documentation).
pub struct SourceLibrary {
    root: PathBuf,
    sources: Vec<String>,
    adapters: BTreeMap<String, Adapter>,
    prototypes: Option<PrototypeSet>,
    record: Option<EmbedderRecord>,
}

impl SourceLibrary {
    /// Loads the adapters `sources` (in candidate order) of the library at
    /// `root`, and their prototypes when `with_prototypes`.
    pub fn open(root: &Path, sources: &[String], with_prototypes: bool) -> Result<Self> {
        let library = AdapterLibrary::open(root)?;
        Self::from_library(&library, sources, with_prototypes)
    }

    /// Every usable adapter of the library at `root` that has a readable
    /// prototype, sorted by name, with the prototypes (what `semla segment` fuses
    /// from by default). Broken adapters and prototypes are left out with a
    /// warning naming them.
    pub fn open_with_prototypes(root: &Path) -> Result<Self> {
        let library = AdapterLibrary::open(root)?;
        for broken in library.broken() {
            tracing::warn!("left out: {}", broken.error);
        }
        let mut names = Vec::new();
        for entry in library.entries().filter(|e| e.has_prototype()) {
            match library.prototype(&entry.name) {
                Ok(_) => names.push(entry.name.clone()),
                Err(e) => tracing::warn!("left out {}: {e}", entry.name),
            }
        }
        Self::from_library(&library, &names, true)
    }

    /// The adapters `sources` of an open library (see [`open`](Self::open)).
    pub fn from_library(
        library: &AdapterLibrary,
        sources: &[String],
        with_prototypes: bool,
    ) -> Result<Self> {
        let root = library.root();
        if sources.is_empty() {
            return Err(PipelineError::Invalid(format!(
                "no source domain given for the library {}",
                root.display()
            )));
        }
        let mut adapters = BTreeMap::new();
        for name in sources {
            if adapters.contains_key(name) {
                return Err(PipelineError::Invalid(format!(
                    "source `{name}` is listed twice"
                )));
            }
            adapters.insert(name.clone(), library.load(name)?);
        }
        let prototypes = if with_prototypes {
            Some(load_prototypes(library, sources)?)
        } else {
            None
        };
        Ok(Self {
            root: root.to_path_buf(),
            sources: sources.to_vec(),
            adapters,
            prototypes,
            record: library.record().cloned(),
        })
    }

    /// The library folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Source names in candidate order.
    pub fn sources(&self) -> &[String] {
        &self.sources
    }

    /// The adapter `name`.
    pub fn adapter(&self, name: &str) -> Result<&Adapter> {
        self.adapters.get(name).ok_or_else(|| {
            PipelineError::Invalid(format!(
                "adapter `{name}` is not among the sources ({})",
                self.sources.join(", ")
            ))
        })
    }

    /// The prototypes (if loaded).
    pub fn prototypes(&self) -> Option<&PrototypeSet> {
        self.prototypes.as_ref()
    }

    /// The library's record of the embedder that made its prototypes, if any.
    pub fn record(&self) -> Option<&EmbedderRecord> {
        self.record.as_ref()
    }

    /// Checks a query embedding of dimension `dimension` by `embedder_id`
    /// against the record (a library without one, an official `loradb`, has
    /// nothing to check: the dimension is checked at retrieval).
    pub fn check_query(&self, embedder_id: Option<&str>, dimension: usize) -> Result<()> {
        match &self.record {
            Some(record) => Ok(record.check_query(embedder_id, dimension, &self.root)?),
            None => Ok(()),
        }
    }

    /// Checks that every adapter fits the model's sites.
    pub fn check_fits(&self, model: &dyn Segmenter) -> Result<()> {
        let adapters: Vec<&Adapter> = self.adapters.values().collect();
        Ok(check_adapters_fit(&adapters, &model.sites())?)
    }
}

/// The prototypes of `names` (in that order) from a library.
pub fn load_prototypes(library: &AdapterLibrary, names: &[String]) -> Result<PrototypeSet> {
    let mut prototypes = Vec::with_capacity(names.len());
    for name in names {
        prototypes.push(Prototype::new(name.clone(), library.prototype(name)?));
    }
    Ok(PrototypeSet::new(prototypes)?)
}
