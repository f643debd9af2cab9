//! PEFT's adapter folder: `adapter_config.json` plus `adapter_model.safetensors`
//! (or the older pickled `adapter_model.bin`).
//!
//! Tensor keys are `base_model.model.<module path>.lora_A.weight` and
//! `...lora_B.weight`; the safetensors metadata is `{"format": "pt"}`. A folder
//! written by [`save_adapter`] loads in Python with `PeftModel.from_pretrained`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::adapter::{Adapter, LoraSite};
use crate::config::LoraConfig;
use crate::error::{AdapterError, Result};
use semla_core::fs::write_atomic;

/// File name of the config.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// File name of the safetensors weights.
pub const SAFETENSORS_FILE: &str = "adapter_model.safetensors";
/// File name of the pickled weights (older PEFT).
pub const BIN_FILE: &str = "adapter_model.bin";
/// Prefix PEFT puts before every module path.
pub const KEY_PREFIX: &str = "base_model.model.";

/// Which factor a tensor key holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Factor {
    /// `lora_A`
    A,
    /// `lora_B`
    B,
}

/// Splits a PEFT key into module path and factor:
/// `base_model.model.x.y.lora_A.weight` -> `("x.y", A)`. Also accepts keys
/// that still carry the adapter name (`x.y.lora_A.default.weight`).
pub fn parse_key(key: &str) -> Option<(String, Factor)> {
    let body = key.strip_prefix(KEY_PREFIX).unwrap_or(key);
    let body = body.strip_suffix(".weight")?;
    for (marker, factor) in [(".lora_A", Factor::A), (".lora_B", Factor::B)] {
        if let Some(path) = body.strip_suffix(marker) {
            return Some((path.to_string(), factor));
        }
        // `<path>.lora_A.<adapter name>`
        if let Some(pos) = body.rfind(&format!("{marker}.")) {
            let rest = &body[pos + marker.len() + 1..];
            if !rest.contains('.') && !rest.is_empty() {
                return Some((body[..pos].to_string(), factor));
            }
        }
    }
    None
}

/// The weights file of an adapter folder: safetensors if present, else the pickle.
pub fn weights_file(dir: &Path) -> Result<PathBuf> {
    let st = dir.join(SAFETENSORS_FILE);
    if st.is_file() {
        return Ok(st);
    }
    let bin = dir.join(BIN_FILE);
    if bin.is_file() {
        return Ok(bin);
    }
    Err(AdapterError::invalid(
        dir,
        format!("neither {SAFETENSORS_FILE} nor {BIN_FILE} found"),
    ))
}

/// Loads the adapter in `dir`, named after the folder.
pub fn load_adapter(dir: &Path) -> Result<Adapter> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    load_adapter_named(dir, &name)
}

/// Loads the adapter in `dir` under `name`. Tensors are memory-mapped from
/// the safetensors file and copied into `f32` CPU tensors (f16, bf16 and f64
/// are converted; integer tensors are an error). The adapter is validated
/// ([`Adapter::validate`]): errors name the file and the problem.
pub fn load_adapter_named(dir: &Path, name: &str) -> Result<Adapter> {
    let config = LoraConfig::read(&dir.join(CONFIG_FILE))?;
    let file = weights_file(dir)?;
    let tensors = if file.extension().is_some_and(|e| e == "bin") {
        read_bin(&file)?
    } else {
        read_safetensors(&file)?
    };
    let adapter = assemble(name, config, tensors, &file)?;
    adapter.validate(&file)?;
    Ok(adapter)
}

/// Pairs `lora_A` / `lora_B` tensors into sites.
fn assemble(
    name: &str,
    config: LoraConfig,
    tensors: Vec<(String, Tensor)>,
    file: &Path,
) -> Result<Adapter> {
    let mut halves: BTreeMap<String, (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
    for (key, tensor) in tensors {
        let Some((path, factor)) = parse_key(&key) else {
            return Err(AdapterError::invalid(
                file,
                format!(
                    "tensor {key:?} is not a LoRA factor (expected <path>.lora_A.weight or .lora_B.weight)"
                ),
            ));
        };
        let tensor = to_f32(tensor, &key, file)?;
        let entry = halves.entry(path).or_default();
        let slot = match factor {
            Factor::A => &mut entry.0,
            Factor::B => &mut entry.1,
        };
        if slot.replace(tensor).is_some() {
            return Err(AdapterError::invalid(
                file,
                format!("tensor {key:?} appears twice"),
            ));
        }
    }
    let mut sites = BTreeMap::new();
    for (path, pair) in halves {
        match pair {
            (Some(a), Some(b)) => {
                sites.insert(path, LoraSite { a, b });
            }
            (None, _) => {
                return Err(AdapterError::invalid(
                    file,
                    format!("site {path}: lora_A is missing"),
                ));
            }
            (_, None) => {
                return Err(AdapterError::invalid(
                    file,
                    format!("site {path}: lora_B is missing"),
                ));
            }
        }
    }
    Ok(Adapter {
        name: name.to_string(),
        config,
        sites,
    })
}

fn to_f32(tensor: Tensor, key: &str, file: &Path) -> Result<Tensor> {
    match tensor.dtype() {
        DType::F32 => Ok(tensor),
        DType::F16 | DType::BF16 | DType::F64 => Ok(tensor.to_dtype(DType::F32)?),
        other => Err(AdapterError::invalid(
            file,
            format!("tensor {key:?} has non-float dtype {other:?}"),
        )),
    }
}

fn read_safetensors(file: &Path) -> Result<Vec<(String, Tensor)>> {
    // SAFETY: the file is mapped read-only and only read while the map lives
    // (each tensor is copied out by `load`). A concurrent writer replaces the
    // file by rename, which leaves this mapping intact.
    let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(file) }.map_err(|e| {
        AdapterError::invalid(file, format!("not a readable safetensors file: {e}"))
    })?;
    let mut out = Vec::new();
    for (key, view) in st.tensors() {
        use safetensors::Dtype as S;
        if !matches!(view.dtype(), S::F32 | S::F16 | S::BF16 | S::F64) {
            return Err(AdapterError::invalid(
                file,
                format!("tensor {key:?} has non-float dtype {:?}", view.dtype()),
            ));
        }
        let t = st
            .load(&key, &Device::Cpu)
            .map_err(|e| AdapterError::invalid(file, format!("tensor {key:?}: {e}")))?;
        out.push((key, t));
    }
    Ok(out)
}

fn read_bin(file: &Path) -> Result<Vec<(String, Tensor)>> {
    candle_core::pickle::read_all(file)
        .map_err(|e| AdapterError::invalid(file, format!("not a readable PyTorch pickle: {e}")))
}

/// Tensor names, dtypes and shapes of a weights file without reading the
/// tensors (the safetensors header, or the pickle's tensor table).
pub fn read_tensor_shapes(file: &Path) -> Result<Vec<(String, String, Vec<usize>)>> {
    if file.extension().is_some_and(|e| e == "bin") {
        let infos = candle_core::pickle::read_pth_tensor_info(file, false, None).map_err(|e| {
            AdapterError::invalid(file, format!("not a readable PyTorch pickle: {e}"))
        })?;
        return Ok(infos
            .into_iter()
            .map(|i| {
                (
                    i.name,
                    format!("{:?}", i.dtype).to_uppercase(),
                    i.layout.dims().to_vec(),
                )
            })
            .collect());
    }
    use std::io::Read;
    let mut f = std::fs::File::open(file).map_err(|e| AdapterError::io(file, e))?;
    let len = f.metadata().map_err(|e| AdapterError::io(file, e))?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n)
        .map_err(|_| AdapterError::invalid(file, "truncated safetensors file (no header)"))?;
    let n = u64::from_le_bytes(n);
    if n > 100_000_000 || n + 8 > len {
        return Err(AdapterError::invalid(
            file,
            format!("corrupt safetensors header length {n} (file has {len} bytes)"),
        ));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)
        .map_err(|e| AdapterError::io(file, e))?;
    #[derive(serde::Deserialize)]
    struct Info {
        dtype: String,
        shape: Vec<usize>,
        data_offsets: (u64, u64),
    }
    let map: HashMap<String, serde_json::Value> = serde_json::from_slice(&header).map_err(|e| {
        AdapterError::invalid(file, format!("safetensors header is not valid JSON: {e}"))
    })?;
    let mut out = Vec::new();
    for (key, value) in map {
        if key == "__metadata__" {
            continue;
        }
        let info: Info = serde_json::from_value(value).map_err(|e| {
            AdapterError::invalid(file, format!("safetensors header entry {key:?}: {e}"))
        })?;
        if info.data_offsets.1 > len - 8 - n {
            return Err(AdapterError::invalid(
                file,
                format!("tensor {key:?} lies past the end of the file (truncated?)"),
            ));
        }
        out.push((key, info.dtype, info.shape));
    }
    out.sort();
    Ok(out)
}

/// Writes `adapter` as the PEFT folder `dir`, whole: staged beside it and swapped
/// in, replacing any folder of that name ([`write_adapter_files`] inside).
pub fn save_adapter(dir: &Path, adapter: &Adapter) -> Result<()> {
    let staged = semla_core::StagedDir::new(dir)?;
    write_adapter_files(staged.path(), adapter)?;
    Ok(staged.commit()?)
}

/// Writes `adapter`'s files into the folder `dir` in PEFT format
/// (`adapter_model.safetensors` with metadata `{"format": "pt"}`, then
/// `adapter_config.json`), each file atomically. Creates `dir` if needed. The
/// adapter is validated first. A config without `target_modules` is written with
/// the list of site paths.
pub fn write_adapter_files(dir: &Path, adapter: &Adapter) -> Result<()> {
    adapter.validate(&dir.join(SAFETENSORS_FILE))?;
    std::fs::create_dir_all(dir).map_err(|e| AdapterError::io(dir, e))?;
    let mut buffers: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (path, site) in &adapter.sites {
        for (factor, t) in [("lora_A", &site.a), ("lora_B", &site.b)] {
            let data = t.flatten_all()?.to_vec1::<f32>()?;
            let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
            buffers.push((
                format!("{KEY_PREFIX}{path}.{factor}.weight"),
                t.dims().to_vec(),
                bytes,
            ));
        }
    }
    let file = dir.join(SAFETENSORS_FILE);
    let views = buffers
        .iter()
        .map(|(k, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (k.clone(), v))
                .map_err(|e| AdapterError::invalid(&file, format!("tensor {k}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    let bytes = safetensors::tensor::serialize(views, metadata)
        .map_err(|e| AdapterError::invalid(&file, format!("cannot serialise: {e}")))?;
    write_atomic(&file, &bytes)?;
    // Python peft needs target_modules to rebuild the model: name every site
    // exactly when the config has none.
    let mut config = adapter.config.clone();
    if config.target_modules.is_none() {
        config.target_modules = Some(crate::config::TargetModules::List(
            adapter.sites.keys().cloned().collect(),
        ));
    }
    // Like peft: 2-space indent, sorted keys, no trailing newline.
    let text = config.to_json_string();
    Ok(write_atomic(&dir.join(CONFIG_FILE), text.as_bytes())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(
            parse_key("base_model.model.a.b.lora_A.weight"),
            Some(("a.b".into(), Factor::A))
        );
        assert_eq!(
            parse_key("base_model.model.fc.lora_B.weight"),
            Some(("fc".into(), Factor::B))
        );
        assert_eq!(
            parse_key("base_model.model.fc.lora_B.default.weight"),
            Some(("fc".into(), Factor::B))
        );
        assert_eq!(parse_key("base_model.model.fc.weight"), None);
        assert_eq!(parse_key("base_model.model.fc.lora_magnitude_vector"), None);
    }
}
