//! Reading what CAT-Seg users have: the official `model_final.pth` (a
//! detectron2 checkpoint: a zip pickle whose `"model"` entry is the state
//! dict), a `.safetensors` file of the same keys, or a converted model folder
//! (`config.json` + `model.safetensors`, written by `semla model convert`).
//! The tensor reading itself is [`crate::checkpoint`]'s.

use std::path::{Path, PathBuf};

use candle_core::Device;

use super::CatSeg;
use super::config::{CatSegConfig, CatSegConfigError};
pub use crate::checkpoint::{CheckpointError, read_shapes, read_tensors};
use crate::config::SegmenterConfig;

/// Errors loading a CAT-Seg model.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The checkpoint is unreadable.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The configuration is unreadable or does not fit the checkpoint.
    #[error(transparent)]
    Config(#[from] CatSegConfigError),
    /// A model folder is unreadable.
    #[error(transparent)]
    Folder(#[from] crate::ModelDirError),
    /// The tensors do not fit the configuration.
    #[error("{path}: {cause}")]
    Model {
        /// The checkpoint.
        path: PathBuf,
        /// The missing or misshapen tensor.
        cause: candle_core::Error,
    },
}

/// CAT-Seg from what a user has: the official `model_final.pth` (or a
/// `.safetensors` file of its keys) with the official YAML (`yaml`; without
/// one, every dimension comes from the tensors' shapes), or a converted model
/// folder (`config.json` of kind `catseg` + `model.safetensors`).
pub fn load(path: &Path, yaml: Option<&Path>, device: &Device) -> Result<CatSeg, LoadError> {
    if path.is_dir() {
        let config = crate::read_segmenter_config(path)?;
        let SegmenterConfig::CatSeg(config) = config else {
            return Err(LoadError::Config(CatSegConfigError::Invalid {
                path: path.join(crate::model_dir::CONFIG_FILE),
                message: "not a CAT-Seg model folder (its kind is not \"catseg\")".into(),
            }));
        };
        let mut config = *config;
        let weights = path.join(crate::model_dir::WEIGHTS_FILE);
        let tensors = read_tensors(&weights, device)?;
        if let Some(yaml) = yaml {
            let shapes = tensors
                .iter()
                .map(|(k, v)| (k.clone(), v.dims().to_vec()))
                .collect();
            let classes = std::mem::take(&mut config.class_names);
            config = CatSegConfig::from_yaml(yaml, &shapes)?;
            config.class_names = classes;
        }
        return super::from_tensors(tensors, &config, device).map_err(|cause| LoadError::Model {
            path: weights,
            cause,
        });
    }
    let shapes = read_shapes(path)?;
    let config = match yaml {
        Some(yaml) => CatSegConfig::from_yaml(yaml, &shapes)?,
        None => CatSegConfig::from_checkpoint(&shapes).map_err(|e| match e {
            CatSegConfigError::Checkpoint(message) => CatSegConfigError::Invalid {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })?,
    };
    let tensors = read_tensors(path, device)?;
    super::from_tensors(tensors, &config, device).map_err(|cause| LoadError::Model {
        path: path.to_path_buf(),
        cause,
    })
}
