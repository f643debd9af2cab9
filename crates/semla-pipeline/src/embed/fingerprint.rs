//! Fingerprints that make an embedder's identity change with its weights.

use std::io::{Read as _, Seek as _};
use std::path::{Path, PathBuf};

use candle_core::DType;
use semla_core::hash::Fnv;
use semla_models::Segmenter;

use crate::error::{PipelineError, Result};

/// A fingerprint of every weight of a segmenter (names, shapes and values).
pub fn model_fingerprint(model: &dyn Segmenter) -> Result<u64> {
    let mut tensors = model.named_tensors();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut hash = Fnv::new();
    for (name, tensor) in tensors {
        hash.write(name.as_bytes());
        for d in tensor.dims() {
            hash.write(&(*d as u64).to_le_bytes());
        }
        let values: Vec<f32> = tensor.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        for v in values {
            hash.write(&v.to_le_bytes());
        }
    }
    Ok(hash.finish())
}

/// A fingerprint of a model folder: `config.json`, and for each weights file
/// its name, size and first and last MiB (cheap for multi-GB checkpoints).
pub fn folder_fingerprint(dir: &Path) -> Result<u64> {
    let mut hash = Fnv::new();
    let config = dir.join("config.json");
    let text = std::fs::read(&config).map_err(|e| PipelineError::io(&config, e))?;
    hash.write(&text);
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| PipelineError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    const CHUNK: u64 = 1 << 20;
    for file in files {
        let io = |e| PipelineError::io(&file, e);
        let mut f = std::fs::File::open(&file).map_err(io)?;
        let len = f.metadata().map_err(io)?.len();
        hash.write(
            file.file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or_default(),
        );
        hash.write(&len.to_le_bytes());
        let mut buf = Vec::new();
        (&mut f).take(CHUNK).read_to_end(&mut buf).map_err(io)?;
        if len > 2 * CHUNK {
            f.seek(std::io::SeekFrom::Start(len - CHUNK)).map_err(io)?;
            f.take(CHUNK).read_to_end(&mut buf).map_err(io)?;
        }
        hash.write(&buf);
    }
    Ok(hash.finish())
}
