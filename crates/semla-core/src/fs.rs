//! Writes that are never seen half-done.
//!
//! - [`write_atomic`]: one file, through a uniquely named temporary file in the
//!   same folder, flushed to disk, then renamed over the target. Readers see the
//!   old file or the whole new one.
//! - [`StagedDir`]: a whole folder (an adapter: config, weights and prototype; a
//!   model: config and weights), written into a staging folder beside the target
//!   and swapped in by one rename. On Linux an existing target is exchanged
//!   atomically (`renameat2(RENAME_EXCHANGE)`); elsewhere it is moved aside first.
//!   A staging folder that is dropped without [`StagedDir::commit`] is removed.
//!
//! Temporary names start with a dot and carry the process id and a counter, so
//! two writers never share one and a listing of the folder can skip them
//! ([`is_temporary_name`]).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// An I/O error on a path.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct FsError {
    /// The file or folder the operation was about (the user's path, not a
    /// temporary name).
    pub path: PathBuf,
    /// The underlying error.
    #[source]
    pub source: std::io::Error,
}

impl FsError {
    /// An error on `path`.
    pub fn new(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self {
            path: path.into(),
            source,
        }
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The marker inside every temporary name this module makes.
const TEMPORARY_MARKER: &str = ".semla-tmp-";

/// `dir/.<name>.semla-tmp-<pid>-<n>`: a fresh temporary sibling of `path`.
fn temporary_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(
        ".{name}{TEMPORARY_MARKER}{}-{n}",
        std::process::id()
    ))
}

/// Whether a file name is one of this module's temporary names (a listing of a
/// folder that a writer may be writing into skips them).
pub fn is_temporary_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(TEMPORARY_MARKER)
}

/// The folder `path` is in (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writes `bytes` to `path` so that readers see either the old file or the
/// complete new one: a temporary file in the same folder, `fsync`, rename.
/// The folder is created if needed. On error the temporary file is removed and
/// the error names `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FsError> {
    let dir = parent_of(path);
    std::fs::create_dir_all(dir).map_err(|e| FsError::new(dir, e))?;
    if path.file_name().is_none() {
        return Err(FsError::new(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
        ));
    }
    let tmp = temporary_sibling(path);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(FsError::new(path, e));
    }
    Ok(())
}

/// A folder being written: everything goes into [`path`](Self::path), a
/// staging folder beside the target, and [`commit`](Self::commit) swaps it in
/// whole. Dropped uncommitted (an error, a panic), it is removed and the target
/// is untouched.
#[derive(Debug)]
pub struct StagedDir {
    target: PathBuf,
    staging: PathBuf,
    committed: bool,
}

impl StagedDir {
    /// Starts writing the folder `target` (its parent is created if needed).
    pub fn new(target: &Path) -> Result<Self, FsError> {
        if target.file_name().is_none() {
            return Err(FsError::new(
                target,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a folder path"),
            ));
        }
        let parent = parent_of(target);
        std::fs::create_dir_all(parent).map_err(|e| FsError::new(parent, e))?;
        let staging = temporary_sibling(target);
        std::fs::create_dir(&staging).map_err(|e| FsError::new(target, e))?;
        Ok(Self {
            target: target.to_path_buf(),
            staging,
            committed: false,
        })
    }

    /// Where to write the folder's files.
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// The folder this will become.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Swaps the staged folder in for the target (which may or may not exist;
    /// an existing target must be a folder) and removes the old content.
    pub fn commit(mut self) -> Result<(), FsError> {
        sync_folder(&self.staging).map_err(|e| FsError::new(&self.target, e))?;
        match std::fs::symlink_metadata(&self.target) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::rename(&self.staging, &self.target)
                    .map_err(|e| FsError::new(&self.target, e))?;
            }
            Err(e) => return Err(FsError::new(&self.target, e)),
            Ok(meta) if !meta.is_dir() => {
                return Err(FsError::new(
                    &self.target,
                    std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "exists and is not a folder",
                    ),
                ));
            }
            Ok(_) => {
                // After the swap, the staging path holds the old content.
                swap_folders(&self.staging, &self.target)
                    .map_err(|e| FsError::new(&self.target, e))?;
                let _ = std::fs::remove_dir_all(&self.staging);
            }
        }
        self.committed = true;
        let _ = sync_folder(parent_of(&self.target));
        Ok(())
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}

/// Flushes a folder's entries (its files' renames) to disk; a no-op where
/// folders cannot be opened for syncing.
fn sync_folder(dir: &Path) -> std::io::Result<()> {
    match std::fs::File::open(dir) {
        Ok(f) => f.sync_all().or(Ok(())),
        Err(_) => Ok(()),
    }
}

/// Exchanges two existing folders in one atomic step.
#[cfg(target_os = "linux")]
fn swap_folders(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in path"))
    };
    let (ca, cb) = (c(a)?, c(b)?);
    // SAFETY: both pointers are valid NUL-terminated strings for the call's duration.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    // File systems without RENAME_EXCHANGE: fall back to two renames.
    match err.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => swap_by_moving(a, b),
        _ => Err(err),
    }
}

#[cfg(not(target_os = "linux"))]
fn swap_folders(a: &Path, b: &Path) -> std::io::Result<()> {
    swap_by_moving(a, b)
}

/// `b` moved aside, `a` renamed to `b`, the old `b` moved to `a`: not atomic
/// (between the first two renames `b` does not exist), but never loses either.
fn swap_by_moving(a: &Path, b: &Path) -> std::io::Result<()> {
    let aside = temporary_sibling(b);
    std::fs::rename(b, &aside)?;
    if let Err(e) = std::fs::rename(a, b) {
        let _ = std::fs::rename(&aside, b);
        return Err(e);
    }
    std::fs::rename(&aside, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/a.txt");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(names(&dir.path().join("sub")), ["a.txt"]);
        // A folder in the way: the error names the path, no temporary is left.
        std::fs::create_dir(dir.path().join("sub/b")).unwrap();
        let err = write_atomic(&dir.path().join("sub/b"), b"x").unwrap_err();
        assert!(err.to_string().contains("sub/b"), "{err}");
        assert_eq!(names(&dir.path().join("sub")), ["a.txt", "b"]);
    }

    #[test]
    fn staged_folder_appears_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("adapter");
        // A new folder.
        let staged = StagedDir::new(&target).unwrap();
        std::fs::write(staged.path().join("a"), "1").unwrap();
        assert!(!target.exists());
        staged.commit().unwrap();
        assert_eq!(names(&target), ["a"]);
        // Replacing it: the old content goes, nothing temporary stays.
        let staged = StagedDir::new(&target).unwrap();
        std::fs::write(staged.path().join("b"), "2").unwrap();
        assert_eq!(names(&target), ["a"], "untouched until commit");
        staged.commit().unwrap();
        assert_eq!(names(&target), ["b"]);
        assert_eq!(names(dir.path()), ["adapter"]);
        // Dropped without commit: the target keeps its content.
        {
            let staged = StagedDir::new(&target).unwrap();
            std::fs::write(staged.path().join("c"), "3").unwrap();
        }
        assert_eq!(names(&target), ["b"]);
        assert_eq!(names(dir.path()), ["adapter"]);
        // A file in the way is an error, and stays.
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let err = StagedDir::new(&file).unwrap().commit().unwrap_err();
        assert!(err.to_string().contains("not a folder"), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
        assert_eq!(names(dir.path()), ["adapter", "file"]);
    }

    #[test]
    fn fallback_swap_exchanges_two_folders() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        std::fs::write(a.join("from_a"), "").unwrap();
        std::fs::write(b.join("from_b"), "").unwrap();
        swap_by_moving(&a, &b).unwrap();
        assert_eq!(names(&a), ["from_b"]);
        assert_eq!(names(&b), ["from_a"]);
        assert!(is_temporary_name(
            temporary_sibling(&a).file_name().unwrap().to_str().unwrap()
        ));
        assert!(!is_temporary_name("from_a"));
    }
}
