//! FNV-1a (64 bits): the fingerprints in embedder and model identities.
//!
//! Not cryptographic; a fingerprint only has to change when weights change, so
//! that a library refuses queries from another embedder.

use std::io::Read as _;
use std::path::Path;

use crate::fs::FsError;

/// A running FNV-1a hash.
#[derive(Clone, Debug)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self::new()
    }
}

impl Fnv {
    /// The hash of nothing (the FNV offset basis).
    pub fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    /// Feeds `bytes`.
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// The hash so far.
    pub fn finish(&self) -> u64 {
        self.0
    }

    /// Feeds a length-prefixed string (so that concatenations cannot collide).
    pub fn write_str(&mut self, text: &str) {
        self.write(&(text.len() as u64).to_le_bytes());
        self.write(text.as_bytes());
    }

    /// Feeds the files directly in `dir` (following links; temporary names of
    /// writes in progress skipped), sorted by name: each one's name, size and
    /// contents. Sub-folders (training checkpoints) are not what a model or
    /// adapter loads, and are left out; paths are not hashed, so a folder
    /// copied elsewhere hashes the same.
    pub fn write_folder_files(&mut self, dir: &Path) -> Result<(), FsError> {
        let read = std::fs::read_dir(dir).map_err(|e| FsError::new(dir, e))?;
        let mut entries = Vec::new();
        for entry in read {
            let entry = entry.map_err(|e| FsError::new(dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !crate::fs::is_temporary_name(&name) {
                entries.push((name, entry.path()));
            }
        }
        entries.sort();
        for (name, path) in entries {
            let meta = std::fs::metadata(&path).map_err(|e| FsError::new(&path, e))?;
            if meta.is_file() {
                self.write_file(&path, &name)?;
            }
        }
        Ok(())
    }

    /// Feeds `relative` (the name the file is known by), the file's size and
    /// its contents, read in 1 MiB blocks.
    pub fn write_file(&mut self, path: &Path, relative: &str) -> Result<(), FsError> {
        let io = |e| FsError::new(path, e);
        let mut file = std::fs::File::open(path).map_err(io)?;
        self.write_str(relative);
        self.write(&file.metadata().map_err(io)?.len().to_le_bytes());
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(io)?;
            if n == 0 {
                return Ok(());
            }
            self.write(&buf[..n]);
        }
    }
}

/// The fingerprint (hex) of a model folder's files ([`Fnv::write_folder_files`]),
/// or of a single checkpoint file (CAT-Seg's `model_final.pth`): what shards and
/// the server report, so that runs on other weights show.
pub fn model_fingerprint(dir: &Path) -> Result<String, FsError> {
    let mut hash = Fnv::new();
    if dir.is_file() {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        hash.write_file(dir, &name)?;
        return Ok(format!("{:016x}", hash.finish()));
    }
    hash.write_folder_files(dir)?;
    Ok(format!("{:016x}", hash.finish()))
}

/// The fingerprint (hex) of the adapters `sources` of the library at `root`:
/// the files at its root (its embedder record), then each source's name and the
/// files of its folder (config, weights, prototype). Two libraries with the
/// same fingerprint fuse the same adapters with the same prototypes.
pub fn library_fingerprint(root: &Path, sources: &[String]) -> Result<String, FsError> {
    let mut hash = Fnv::new();
    hash.write_folder_files(root)?;
    for name in sources {
        hash.write_str(name);
        hash.write_folder_files(&root.join(name))?;
    }
    Ok(format!("{:016x}", hash.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_reference_values() {
        // Published FNV-1a 64 test vectors.
        let mut h = Fnv::new();
        assert_eq!(h.finish(), 0xcbf2_9ce4_8422_2325);
        h.write(b"a");
        assert_eq!(h.finish(), 0xaf63_dc4c_8601_ec8c);
        let mut h = Fnv::new();
        h.write(b"foobar");
        assert_eq!(h.finish(), 0x8594_4171_f739_67e8);
    }
}
