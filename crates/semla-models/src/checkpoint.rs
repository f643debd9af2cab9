//! Reading PyTorch checkpoints as users have them: a `.pth` zip pickle (a
//! detectron2 checkpoint whose `"model"` entry is the state dict, or a plain
//! state dict such as SAM's `sam_vit_b_01ec64.pth`) or a `.safetensors` file of
//! the same keys.
//!
//! Like detectron2's loader this takes `"model"` when present (else the whole
//! dict), strips a `module.` prefix, and honours storage offsets and
//! transposed storage. Unlike it, a tensor whose declared size exceeds its
//! stored data is an error before anything is allocated, and a shape that does
//! not fit the model is an error naming the key (fvcore skips it with a warning).

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

/// Errors reading a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file could not be read.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// The file is not a readable PyTorch or safetensors checkpoint.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// The shapes of a checkpoint's tensors, without reading their data.
pub fn read_shapes(path: &Path) -> Result<HashMap<String, Vec<usize>>, CheckpointError> {
    if is_safetensors(path) {
        let bytes = std::fs::read(path).map_err(|cause| CheckpointError::Io {
            path: path.to_path_buf(),
            cause,
        })?;
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| invalid(path, e))?;
        return Ok(meta
            .tensors()
            .into_iter()
            .map(|(name, info)| (strip_module(&name), info.shape.clone()))
            .collect());
    }
    Ok(pth_infos(path)?
        .into_iter()
        .map(|info| (strip_module(&info.name), info.layout.dims().to_vec()))
        .collect())
}

/// Every tensor of a checkpoint file (`.pth` or `.safetensors`) as f32 on `device`.
pub fn read_tensors(
    path: &Path,
    device: &Device,
) -> Result<HashMap<String, Tensor>, CheckpointError> {
    let tensors: Vec<(String, Tensor)> = if is_safetensors(path) {
        candle_core::safetensors::load(path, device)
            .map_err(|e| invalid(path, e))?
            .into_iter()
            .collect()
    } else {
        read_pth(path)?
    };
    let mut out = HashMap::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let tensor = tensor
            .to_dtype(DType::F32)
            .and_then(|t| t.to_device(device))
            .map_err(|e| invalid(path, format!("tensor {name}: {e}")))?;
        let values: Vec<f32> = tensor
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .map_err(|e| invalid(path, format!("tensor {name}: {e}")))?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(invalid(
                path,
                format!("tensor {name} has a NaN or infinite value at index {i}"),
            ));
        }
        out.insert(strip_module(&name), tensor);
    }
    Ok(out)
}

fn is_safetensors(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "safetensors")
}

fn strip_module(name: &str) -> String {
    name.strip_prefix("module.").unwrap_or(name).to_string()
}

fn invalid(path: &Path, message: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::Invalid {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// The tensor records of a `.pth`: those under `"model"` when the top-level dict
/// has it (a detectron2 checkpoint), else the top-level dict's.
fn pth_infos(path: &Path) -> Result<Vec<candle_core::pickle::TensorInfo>, CheckpointError> {
    if !path.is_file() {
        return Err(CheckpointError::Io {
            path: path.to_path_buf(),
            cause: std::io::Error::new(std::io::ErrorKind::NotFound, "checkpoint not found"),
        });
    }
    let what = |e: candle_core::Error| {
        invalid(
            path,
            format!("not a readable PyTorch checkpoint (zip pickle): {e}"),
        )
    };
    match candle_core::pickle::read_pth_tensor_info(path, false, Some("model")) {
        Ok(infos) if !infos.is_empty() => Ok(infos),
        // No "model" entry: the whole dict is the state dict.
        _ => {
            let infos =
                candle_core::pickle::read_pth_tensor_info(path, false, None).map_err(what)?;
            if infos.is_empty() {
                return Err(invalid(
                    path,
                    "the checkpoint holds no tensors (neither under \"model\" nor at the top)",
                ));
            }
            Ok(infos)
        }
    }
}

/// Reads every tensor of a `.pth`, checking each record against the stored
/// data first: the data file must hold the bytes its layout addresses.
fn read_pth(path: &Path) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    let infos = pth_infos(path)?;
    let file = std::fs::File::open(path).map_err(|cause| CheckpointError::Io {
        path: path.to_path_buf(),
        cause,
    })?;
    let mut zip =
        zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| invalid(path, e))?;
    let mut out = Vec::with_capacity(infos.len());
    for info in infos {
        // candle's pickle reader records the storage offset in bytes.
        let size = info.dtype.size_in_bytes();
        if info.layout.start_offset() % size != 0 {
            return Err(invalid(
                path,
                format!("tensor {}: misaligned storage offset", info.name),
            ));
        }
        let layout = &candle_core::Layout::new(
            info.layout.shape().clone(),
            info.layout.stride().to_vec(),
            info.layout.start_offset() / size,
        );
        let dims = layout.dims();
        let elems: usize = dims.iter().product();
        // The last element addressed, in elements from the storage start.
        let span = if elems == 0 {
            0
        } else {
            layout.start_offset()
                + dims
                    .iter()
                    .zip(layout.stride())
                    .map(|(&d, &s)| (d - 1) * s)
                    .sum::<usize>()
                + 1
        };
        let needed = span as u64 * size as u64;
        let mut entry = zip.by_name(&info.path).map_err(|e| {
            invalid(
                path,
                format!(
                    "tensor {}: its data {} is missing: {e}",
                    info.name, info.path
                ),
            )
        })?;
        if entry.size() < needed {
            return Err(invalid(
                path,
                format!(
                    "tensor {} declares {dims:?} ({needed} bytes) but its data holds {} bytes",
                    info.name,
                    entry.size()
                ),
            ));
        }
        let mut bytes = Vec::with_capacity(needed as usize);
        (&mut entry)
            .take(needed)
            .read_to_end(&mut bytes)
            .map_err(|e| invalid(path, format!("tensor {}: {e}", info.name)))?;
        let storage = Tensor::from_raw_buffer(&bytes, info.dtype, &[span], &Device::Cpu)
            .map_err(|e| invalid(path, format!("tensor {}: {e}", info.name)))?;
        let tensor = gather(&storage, layout)
            .map_err(|e| invalid(path, format!("tensor {}: {e}", info.name)))?;
        out.push((info.name.clone(), tensor));
    }
    Ok(out)
}

/// The tensor a strided view of a flat storage addresses (any offset and strides).
fn gather(storage: &Tensor, layout: &candle_core::Layout) -> candle_core::Result<Tensor> {
    let dims = layout.dims();
    let strides = layout.stride();
    if dims.is_empty() {
        return storage.narrow(0, layout.start_offset(), 1)?.reshape(());
    }
    if layout.is_contiguous() {
        let elems: usize = dims.iter().product();
        return storage
            .narrow(0, layout.start_offset(), elems)?
            .reshape(dims);
    }
    // Flat indices of every element in row-major order.
    let elems: usize = dims.iter().product();
    let mut index = Vec::with_capacity(elems);
    let mut coords = vec![0usize; dims.len()];
    for _ in 0..elems {
        let offset: usize = layout.start_offset()
            + coords
                .iter()
                .zip(strides)
                .map(|(c, s)| c * s)
                .sum::<usize>();
        index.push(offset as u32);
        for axis in (0..dims.len()).rev() {
            coords[axis] += 1;
            if coords[axis] < dims[axis] {
                break;
            }
            coords[axis] = 0;
        }
    }
    let index = Tensor::from_vec(index, elems, storage.device())?;
    storage.index_select(&index, 0)?.reshape(dims)
}
