//! NumPy `.npz` archives of float arrays: read plain (`np.savez`) and
//! compressed (`np.savez_compressed`) archives, write plain ones like
//! `np.savez`. SemLA stores each domain prototype as
//! `<name>_statistics.npz` holding `train_average_embedding`, float32 `(1, D)`.

use std::io::{Cursor, Read, Write};
use std::path::Path;

use crate::error::{AdapterError, Result};
use semla_core::fs::write_atomic;

/// One array read from an `.npy` member, as `f32` in C (row-major) order.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    /// Shape, e.g. `[1, 768]`.
    pub shape: Vec<usize>,
    /// Values in row-major order.
    pub data: Vec<f32>,
}

/// Reads array `name` (without `.npy`) from the `.npz` archive at `path`.
/// Accepts little-endian `f4` and `f8` (converted to `f32`) in C order.
pub fn read_npz_array(path: &Path, name: &str) -> Result<NpyArray> {
    let file = std::fs::File::open(path).map_err(|e| AdapterError::io(path, e))?;
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| AdapterError::invalid(path, format!("not a valid npz (zip) archive: {e}")))?;
    let member = format!("{name}.npy");
    let names: Vec<String> = archive
        .file_names()
        .filter_map(|n| n.ok())
        .map(|n| n.into_owned())
        .collect();
    if !names.iter().any(|n| n == &member) {
        let arrays: Vec<&str> = names.iter().map(|n| n.trim_end_matches(".npy")).collect();
        return Err(AdapterError::invalid(
            path,
            format!(
                "no array {name:?} in the archive (it holds: {})",
                arrays.join(", ")
            ),
        ));
    }
    let entry = archive
        .by_name(&member)
        .map_err(|e| AdapterError::invalid(path, format!("cannot open array {name:?}: {e}")))?;
    // A compressed member can declare, or inflate to, any size: read at most the
    // limit of a file read whole, whatever the archive claims.
    let max = semla_core::limits::max_file_bytes();
    semla_core::limits::check_file_bytes(entry.size(), &format!("array {name:?}"))
        .map_err(|msg| AdapterError::invalid(path, msg))?;
    let mut bytes = Vec::new();
    entry
        .take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| AdapterError::invalid(path, format!("cannot read array {name:?}: {e}")))?;
    if bytes.len() as u64 > max {
        return Err(AdapterError::invalid(
            path,
            format!("array {name:?} inflates past the limit of {max} bytes"),
        ));
    }
    parse_npy(&bytes).map_err(|msg| AdapterError::invalid(path, format!("array {name:?}: {msg}")))
}

/// Parses an `.npy` file (format versions 1, 2 and 3; float32, float64 or uint8,
/// read as `f32`).
pub fn parse_npy(bytes: &[u8]) -> std::result::Result<NpyArray, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not an .npy array (bad magic)".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = bytes
        .get(start..start.saturating_add(header_len))
        .ok_or("truncated .npy header")?;
    let header = std::str::from_utf8(header).map_err(|_| "header is not text")?;
    let descr = header_value(header, "descr").ok_or("header has no 'descr'")?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let fortran = header_value(header, "fortran_order").ok_or("header has no 'fortran_order'")?;
    let shape_text = header_value(header, "shape").ok_or("header has no 'shape'")?;
    let shape: Vec<usize> = shape_text
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad shape {shape_text}"))
        })
        .collect::<std::result::Result<_, _>>()?;
    let count = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("shape {shape_text} has more values than memory can hold"))?;
    if fortran.starts_with("True") && shape.iter().filter(|&&d| d > 1).count() > 1 {
        return Err("Fortran-ordered arrays are not supported".into());
    }
    let payload = &bytes[start + header_len..];
    let data: Vec<f32> = match descr {
        "<f4" => chunks(payload, 4, count)?
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        "<f8" => chunks(payload, 8, count)?
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        "|u1" => chunks(payload, 1, count)?
            .map(|c| f32::from(c[0]))
            .collect(),
        other => {
            return Err(format!(
                "dtype {other} is not a little-endian float32/float64 or uint8"
            ));
        }
    };
    Ok(NpyArray { shape, data })
}

fn chunks(
    payload: &[u8],
    size: usize,
    count: usize,
) -> std::result::Result<std::slice::ChunksExact<'_, u8>, String> {
    if count
        .checked_mul(size)
        .is_none_or(|bytes| payload.len() < bytes)
    {
        return Err(format!(
            "truncated data: {} bytes for {count} values of {size} bytes",
            payload.len()
        ));
    }
    Ok(payload[..size * count].chunks_exact(size))
}

/// The text after `'key':` in a Python dict literal, up to the next top-level comma.
fn header_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pos = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = header[pos + key.len() + 2..]
        .trim_start()
        .strip_prefix(':')?
        .trim_start();
    let mut depth = 0usize;
    for (i, c) in rest.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' | '}' if depth == 0 => return Some(rest[..i].trim()),
            _ => {}
        }
    }
    None
}

/// Encodes a float32 array as an `.npy` (version 1.0) file.
pub fn encode_npy(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let payload: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    npy_with_header("<f4", shape, &payload)
}

/// Encodes a uint8 array (masks) as an `.npy` (version 1.0) file.
pub fn encode_npy_u8(shape: &[usize], data: &[u8]) -> Vec<u8> {
    npy_with_header("|u1", shape, data)
}

/// The `.npy` header of `descr` and `shape`, then the little-endian `payload`.
fn npy_with_header(descr: &str, shape: &[usize], payload: &[u8]) -> Vec<u8> {
    let shape_text = match shape {
        [d] => format!("({d},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Pad so that the data starts on a 64-byte boundary, ending with '\n' (as numpy does).
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + payload.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(payload);
    out
}

/// Encodes float32 arrays `(name, shape, data)` as a plain (stored, like
/// `np.savez`) `.npz` archive; `path` only names the file in errors.
pub fn encode_npz(path: &Path, arrays: &[(&str, &[usize], &[f32])]) -> Result<Vec<u8>> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, shape, data) in arrays {
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            return Err(AdapterError::invalid(
                path,
                format!(
                    "array {name:?}: shape {shape:?} needs {expected} values, got {}",
                    data.len()
                ),
            ));
        }
        zip.start_file(format!("{name}.npy"), options)
            .map_err(|e| AdapterError::invalid(path, format!("cannot write zip entry: {e}")))?;
        zip.write_all(&encode_npy(shape, data))
            .map_err(|e| AdapterError::io(path, e))?;
    }
    Ok(zip
        .finish()
        .map_err(|e| AdapterError::invalid(path, format!("cannot finish zip archive: {e}")))?
        .into_inner())
}

/// Writes float32 arrays `(name, shape, data)` to a plain `.npz` archive at
/// `path` (see [`encode_npz`]), atomically.
pub fn write_npz(path: &Path, arrays: &[(&str, &[usize], &[f32])]) -> Result<()> {
    Ok(write_atomic(path, &encode_npz(path, arrays)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.npz");
        let data: Vec<f32> = (0..6).map(|i| i as f32 * 0.5 - 1.0).collect();
        write_npz(&path, &[("a", &[2, 3], &data), ("b", &[1], &[7.0])]).unwrap();
        assert_eq!(
            read_npz_array(&path, "a").unwrap(),
            NpyArray {
                shape: vec![2, 3],
                data
            }
        );
        assert_eq!(read_npz_array(&path, "b").unwrap().data, vec![7.0]);
        let err = read_npz_array(&path, "c").unwrap_err().to_string();
        assert!(
            err.contains("x.npz") && err.contains("no array \"c\"") && err.contains("a, b"),
            "{err}"
        );
    }

    #[test]
    fn header_is_64_aligned() {
        let bytes = encode_npy(&[1, 768], &vec![0.0; 768]);
        assert_eq!((bytes.len() - 768 * 4) % 64, 0);
        assert_eq!(parse_npy(&bytes).unwrap().shape, vec![1, 768]);
    }
}
