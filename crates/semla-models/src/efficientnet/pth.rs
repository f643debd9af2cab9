//! Reading PyTorch state dicts, including the legacy (pre-1.6, non-zip)
//! `torch.save` format that `candle_core::pickle::read_all` does not accept.
//!
//! Legacy layout: five things back to back:
//! 1. a pickle of the magic number `0x1950a86a20f9469cfc6c`,
//! 2. a pickle of the protocol version (1001),
//! 3. a pickle of a `sys_info` dict (endianness, type sizes),
//! 4. the pickle of the object itself, whose tensors refer to storages by a
//!    persistent id `('storage', <type>, <key>, <location>, <numel>, ...)`,
//! 5. a pickle of the list of storage keys, then for each key in that order
//!    its element count (little-endian i64) and its raw little-endian bytes.

use std::collections::HashMap;
use std::io::{BufRead, Cursor, Read};
use std::path::Path;

use candle_core::pickle::{Object, Stack};
use candle_core::{Device, Result, Tensor};

/// The first two pickles of a legacy file: magic number (protocol 2, LONG1
/// of 10 bytes) and protocol version 1001.
const LEGACY_PREFIX: [u8; 21] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e, 0x80,
    0x02, 0x4d, 0xe9, 0x03, 0x2e,
];

/// Reads every tensor of a `.pth` state dict (zip or legacy format), on `device`.
pub fn read_state_dict(path: &Path, device: &Device) -> Result<Vec<(String, Tensor)>> {
    let bytes = std::fs::read(path)?;
    if bytes.starts_with(b"PK") {
        let all = candle_core::pickle::read_all(path)?;
        return all
            .into_iter()
            .map(|(k, t)| t.to_device(device).map(|t| (k, t)))
            .collect();
    }
    if !bytes.starts_with(&LEGACY_PREFIX) {
        candle_core::bail!("neither a zip nor a legacy torch.save file (unknown header)")
    }
    read_legacy(&bytes[LEGACY_PREFIX.len()..], device)
}

fn read_pickle(r: &mut Cursor<&[u8]>) -> Result<Object> {
    let mut stack = Stack::empty();
    stack.read_loop(r)?;
    stack.finalize()
}

fn read_legacy(bytes: &[u8], device: &Device) -> Result<Vec<(String, Tensor)>> {
    let mut r = Cursor::new(bytes);
    let _sys_info = read_pickle(&mut r)?;
    let Object::Dict(entries) = read_pickle(&mut r)? else {
        candle_core::bail!("the file does not hold a state dict")
    };
    let mut infos = Vec::new();
    for (name, value) in entries {
        if let Some(info) = value.into_tensor_info(name, Path::new(""))? {
            infos.push(info);
        }
    }
    // storage key -> element size, from the tensors that use it
    let storage_key = |path: &str| path.trim_start_matches('/').to_string();
    let elem_sizes: HashMap<String, usize> = infos
        .iter()
        .map(|i| (storage_key(&i.path), i.dtype.size_in_bytes()))
        .collect();
    let keys = match read_pickle(&mut r)? {
        Object::List(keys) => keys
            .into_iter()
            .map(String::try_from)
            .collect::<std::result::Result<Vec<_>, _>>()?,
        other => candle_core::bail!("expected the list of storage keys, found {other:?}"),
    };
    let mut storages: HashMap<String, &[u8]> = HashMap::new();
    for key in keys {
        let mut count = [0u8; 8];
        r.read_exact(&mut count)?;
        let numel = usize::try_from(i64::from_le_bytes(count))
            .map_err(|_| candle_core::Error::Msg(format!("storage {key}: negative size")))?;
        let Some(&elem) = elem_sizes.get(&key) else {
            candle_core::bail!("storage {key} is used by no tensor, its element size is unknown")
        };
        let start = r.position() as usize;
        let len = numel.saturating_mul(elem);
        if len > bytes.len() - start.min(bytes.len()) {
            candle_core::bail!(
                "truncated file: storage {key} needs {numel} elements at byte {start}"
            )
        }
        storages.insert(key, &bytes[start..start + len]);
        r.consume(len);
    }
    let mut out = Vec::new();
    for info in infos {
        let key = storage_key(&info.path);
        let Some(data) = storages.get(&key) else {
            candle_core::bail!("tensor {} refers to missing storage {key}", info.name)
        };
        let elem = info.dtype.size_in_bytes();
        let numel = data.len() / elem;
        let storage = Tensor::from_raw_buffer(data, info.dtype, &[numel], device)?;
        let layout = &info.layout;
        let shape = layout.shape().clone();
        let offset = layout.start_offset() / elem;
        // element offsets of the view in its storage (any strides, e.g. a transposed weight)
        let mut index = Vec::with_capacity(shape.elem_count());
        let dims = shape.dims();
        let strides = layout.stride();
        let mut pos = vec![0usize; dims.len()];
        for _ in 0..shape.elem_count() {
            let at = offset + pos.iter().zip(strides).map(|(p, s)| p * s).sum::<usize>();
            if at >= numel {
                candle_core::bail!("tensor {} lies outside its storage", info.name)
            }
            index.push(at as u32);
            for d in (0..dims.len()).rev() {
                pos[d] += 1;
                if pos[d] < dims[d] {
                    break;
                }
                pos[d] = 0;
            }
        }
        let t = if layout.is_contiguous() {
            storage
                .narrow(0, offset, shape.elem_count())?
                .reshape(shape)?
        } else {
            let index = Tensor::from_vec(index, shape.elem_count(), device)?;
            storage.index_select(&index, 0)?.reshape(shape)?
        };
        out.push((info.name, t));
    }
    Ok(out)
}
