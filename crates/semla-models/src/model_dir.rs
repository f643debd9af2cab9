//! Model folders and the registry of segmenter kinds.
//!
//! A trained segmenter is stored as a model folder `M/` holding `config.json`
//! (a [`SegmenterConfig`], tagged by `"kind"`) and `model.safetensors` (the
//! [`Segmenter::named_tensors`]); [`save_segmenter`] writes one and
//! [`load_segmenter`] reads any kind back. A new kind is one variant of
//! [`SegmenterConfig`] (in [`crate::config`]) and one arm of
//! [`SegmenterConfig::build`] here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use crate::config::SegmenterConfig;
use crate::efficientnet::EfficientLiteSeg;
use crate::segmenter::Segmenter;
use crate::tiny::TinySeg;

impl SegmenterConfig {
    /// Builds the model of this configuration from `vb` (frozen tensors or a `VarMap`).
    pub fn build(&self, vb: &VarBuilder) -> Result<Box<dyn Segmenter>> {
        Ok(match self {
            Self::EfficientLite0(c) => Box::new(EfficientLiteSeg::new(vb, c)?),
            Self::Tiny(c) => Box::new(TinySeg::new(vb, c)?),
            Self::CatSeg(c) => Box::new(crate::catseg::CatSeg::new(vb, c)?),
        })
    }
}

/// A segmenter of `config` with freshly initialised weights (Kaiming-normal
/// convolutions, zero biases), held as frozen plain tensors: for benchmarks
/// and tests that do not depend on trained weights.
pub fn random_segmenter(config: &SegmenterConfig, device: &Device) -> Result<Box<dyn Segmenter>> {
    let map = candle_nn::VarMap::new();
    config.build(&VarBuilder::from_varmap(&map, DType::F32, device))?;
    let tensors: HashMap<String, Tensor> = {
        let data = map
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
        data.iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect()
    };
    config.build(&VarBuilder::from_tensors(tensors, DType::F32, device))
}

/// File name of the configuration in a model folder.
pub const CONFIG_FILE: &str = "config.json";
/// File name of the weights in a model folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// Errors of reading or writing a model folder.
#[derive(Debug, thiserror::Error)]
pub enum ModelDirError {
    /// A file could not be read or written.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// `config.json` is not a valid segmenter configuration.
    #[error("{path}: invalid segmenter configuration: {cause}")]
    Config {
        /// The file.
        path: PathBuf,
        /// The parse error.
        cause: serde_json::Error,
    },
    /// `config.json` parses but declares something out of range (no classes,
    /// more classes than `--max-classes`).
    #[error("{path}: {message}")]
    OutOfRange {
        /// The file.
        path: PathBuf,
        /// What is out of range, and the flag that raises a limit.
        message: String,
    },
    /// The weights are unreadable or do not fit the configuration.
    #[error("{path}: {cause}")]
    Weights {
        /// The file.
        path: PathBuf,
        /// What is wrong (missing tensor, shape mismatch, corrupt file, ...).
        cause: candle_core::Error,
    },
}

/// Reads `dir/config.json`.
pub fn read_segmenter_config(dir: &Path) -> std::result::Result<SegmenterConfig, ModelDirError> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|cause| ModelDirError::Io {
        path: path.clone(),
        cause,
    })?;
    let config: SegmenterConfig =
        serde_json::from_str(&text).map_err(|cause| ModelDirError::Config {
            path: path.clone(),
            cause,
        })?;
    let classes = config.num_classes();
    // CAT-Seg's classes are an input: its folder may name none.
    let open_vocabulary = matches!(config, SegmenterConfig::CatSeg(_));
    if classes == 0 && !open_vocabulary {
        return Err(ModelDirError::OutOfRange {
            path,
            message: "num_classes is 0: a segmenter needs at least one class".into(),
        });
    }
    semla_core::limits::check_classes(classes as u64, "the model")
        .map_err(|message| ModelDirError::OutOfRange { path, message })?;
    Ok(config)
}

/// Loads a model folder (`config.json` + `model.safetensors`) as frozen tensors
/// and builds the segmenter its `kind` names.
pub fn load_segmenter(
    dir: &Path,
    device: &Device,
) -> std::result::Result<Box<dyn Segmenter>, ModelDirError> {
    let config = read_segmenter_config(dir)?;
    let path = dir.join(WEIGHTS_FILE);
    if !path.is_file() {
        return Err(ModelDirError::Io {
            path,
            cause: std::io::Error::new(std::io::ErrorKind::NotFound, "model weights not found"),
        });
    }
    let tensors =
        candle_core::safetensors::load(&path, device).map_err(|cause| ModelDirError::Weights {
            path: path.clone(),
            cause,
        })?;
    let tensors: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, v)| v.to_dtype(DType::F32).map(|v| (k, v)))
        .collect::<Result<_>>()
        .map_err(|cause| ModelDirError::Weights {
            path: path.clone(),
            cause,
        })?;
    // A NaN or infinite weight would make every prediction garbage, silently.
    for (name, tensor) in &tensors {
        let values: Vec<f32> = tensor
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .map_err(|cause| ModelDirError::Weights {
                path: path.clone(),
                cause,
            })?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(ModelDirError::Weights {
                path,
                cause: candle_core::Error::Msg(format!(
                    "tensor {name} has a NaN or infinite value at index {i}"
                )),
            });
        }
    }
    let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
    config
        .build(&vb)
        .map_err(|cause| ModelDirError::Weights { path, cause })
}

/// The safetensors encoding of named tensors (what `model.safetensors` and the
/// training checkpoints hold), in memory, so that it can be written atomically.
pub fn safetensors_bytes(tensors: &HashMap<String, Tensor>) -> Result<Vec<u8>> {
    safetensors::tensor::serialize(tensors, None)
        .map_err(|e| candle_core::Error::Msg(format!("cannot encode safetensors: {e}")))
}

/// Writes `model` as the model folder `dir`: `model.safetensors` and
/// `config.json` change together, staged in a copy of the folder (other files,
/// such as training checkpoints, stay) and swapped in whole
/// ([`semla_core::StagedDir::from_existing`]).
pub fn save_segmenter(model: &dyn Segmenter, dir: &Path) -> std::result::Result<(), ModelDirError> {
    let io = |cause: semla_core::FsError| ModelDirError::Io {
        path: cause.path,
        cause: cause.source,
    };
    let tensors: HashMap<String, Tensor> = model.named_tensors().into_iter().collect();
    let bytes = safetensors_bytes(&tensors).map_err(|cause| ModelDirError::Weights {
        path: dir.join(WEIGHTS_FILE),
        cause,
    })?;
    let text =
        serde_json::to_string_pretty(&model.config()).map_err(|cause| ModelDirError::Config {
            path: dir.join(CONFIG_FILE),
            cause,
        })?;
    let staged = semla_core::StagedDir::from_existing(dir).map_err(io)?;
    semla_core::fs::write_atomic(&staged.path().join(WEIGHTS_FILE), &bytes).map_err(io)?;
    semla_core::fs::write_atomic(&staged.path().join(CONFIG_FILE), text.as_bytes()).map_err(io)?;
    staged.commit().map_err(io)
}
