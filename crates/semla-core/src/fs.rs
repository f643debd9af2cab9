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
//! ([`is_temporary_name`]). Every temporary file and staging folder alive is
//! registered, so that [`remove_on_signals`] can delete them when the process is
//! interrupted (SIGINT, SIGTERM); a kill that cannot be caught leaves them, and
//! readers skip them.
//!
//! [`StagedDir::from_existing`] stages a copy of an existing folder made of hard
//! links (cheap for large weights), so that a change to a few files of a large
//! folder (a library's prototypes and record) is swapped in whole too. Files in
//! such a staging folder are shared with the live folder: they must be replaced
//! ([`write_atomic`]: a new file renamed over the link), never modified in place.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
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
    /// An error on `path` (named as the user knows it: [`user_path`]).
    pub fn new(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self {
            path: user_path(&path.into()),
            source,
        }
    }
}

/// `path` as the user knows it: every temporary name in it (a file being written,
/// a staging folder) replaced by the name it will get, so that errors never name
/// internal temporary files.
pub fn user_path(path: &Path) -> PathBuf {
    path.components()
        .map(|c| {
            let text = c.as_os_str().to_string_lossy();
            match temporary_target_name(&text) {
                Some(name) => std::ffi::OsString::from(name),
                None => c.as_os_str().to_os_string(),
            }
        })
        .collect()
}

/// The name a temporary name `.<name>.semla-tmp-<pid>-<n>` stands for.
fn temporary_target_name(text: &str) -> Option<&str> {
    let rest = text.strip_prefix('.')?;
    let (name, _) = rest.rsplit_once(TEMPORARY_MARKER)?;
    Some(name)
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Temporary files and staging folders alive now (removed on SIGINT / SIGTERM).
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn register(path: &Path) {
    if let Ok(mut live) = LIVE.lock() {
        live.push(path.to_path_buf());
    }
}

fn unregister(path: &Path) {
    if let Ok(mut live) = LIVE.lock()
        && let Some(i) = live.iter().position(|p| p == path)
    {
        live.swap_remove(i);
    }
}

/// Removes every registered temporary file and staging folder.
fn remove_live() {
    let paths = match LIVE.lock() {
        Ok(mut live) => std::mem::take(&mut *live),
        Err(_) => return,
    };
    for path in paths {
        if path.is_dir() {
            let _ = std::fs::remove_dir_all(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// On SIGINT or SIGTERM, removes the temporary files and staging folders of
/// writes in progress (the targets keep their previous content) and exits with
/// status `128 + signal`. Call once, at the start of a program.
#[cfg(unix)]
pub fn remove_on_signals() -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("semla-signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                remove_live();
                std::process::exit(128 + signal);
            }
        })?;
    Ok(())
}

/// Elsewhere, interrupted writes leave their (skipped) temporary names behind.
#[cfg(not(unix))]
pub fn remove_on_signals() -> std::io::Result<()> {
    Ok(())
}

/// Commit points (renames into place, folder swaps) since the start, and the one
/// that is to fail (`u64::MAX`: none); see [`fail_commit_after`].
static COMMITS: AtomicU64 = AtomicU64::new(0);
static FAIL_AT: AtomicU64 = AtomicU64::new(u64::MAX);

/// For tests of interrupted writes: the commit point `n` commit points from now
/// (0: the next one) fails as if the process had died there, leaving what is
/// written so far; `None` stops failing. A commit point is the rename of
/// [`write_atomic`] and the swap of [`StagedDir::commit`]. Process-wide: use it in
/// a test binary of its own.
#[doc(hidden)]
pub fn fail_commit_after(n: Option<u64>) {
    let at = match n {
        Some(n) => COMMITS.load(Ordering::SeqCst).saturating_add(n),
        None => u64::MAX,
    };
    FAIL_AT.store(at, Ordering::SeqCst);
}

fn commit_point() -> std::io::Result<()> {
    let n = COMMITS.fetch_add(1, Ordering::SeqCst);
    if n == FAIL_AT.load(Ordering::SeqCst) {
        return Err(std::io::Error::other("interrupted (injected by a test)"));
    }
    Ok(())
}

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
    register(&tmp);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        commit_point()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        unregister(&tmp);
        return Err(FsError::new(path, e));
    }
    unregister(&tmp);
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
        register(&staging);
        Ok(Self {
            target: target.to_path_buf(),
            staging,
            committed: false,
        })
    }

    /// Starts changing the folder `target`: the staging folder begins as a copy of
    /// it made of hard links (a copy where links are not possible), without its
    /// temporary names. Replace files in it ([`write_atomic`]); never modify one in
    /// place, as it is shared with the live folder.
    pub fn from_existing(target: &Path) -> Result<Self, FsError> {
        let staged = Self::new(target)?;
        if target.is_dir() {
            link_tree(target, &staged.staging).map_err(|e| FsError::new(target, e))?;
        }
        Ok(staged)
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
        commit_point().map_err(|e| FsError::new(&self.target, e))?;
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
        unregister(&self.staging);
        let _ = sync_folder(parent_of(&self.target));
        Ok(())
    }
}

/// Recreates the tree `from` under the existing folder `to` with hard links to
/// its files (copies where linking fails), skipping temporary names.
fn link_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if is_temporary_name(&name.to_string_lossy()) {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            std::fs::create_dir(&dst)?;
            link_tree(&src, &dst)?;
        } else if kind.is_symlink() {
            copy_link(&src, &dst)?;
        } else if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

#[cfg(unix)]
fn copy_link(src: &Path, dst: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(std::fs::read_link(src)?, dst)
}

#[cfg(not(unix))]
fn copy_link(src: &Path, dst: &Path) -> std::io::Result<()> {
    std::fs::copy(src, dst).map(|_| ())
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.staging);
            unregister(&self.staging);
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
    fn a_staged_copy_shares_files_until_they_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("library");
        std::fs::create_dir_all(target.join("a")).unwrap();
        std::fs::write(target.join("a/weights"), "w").unwrap();
        std::fs::write(target.join("a/proto"), "old").unwrap();
        std::fs::write(target.join(".x.semla-tmp-1-2"), "stale").unwrap();
        let staged = StagedDir::from_existing(&target).unwrap();
        assert_eq!(
            names(staged.path()),
            ["a"],
            "temporary names are not copied"
        );
        write_atomic(&staged.path().join("a/proto"), b"new").unwrap();
        write_atomic(&staged.path().join("record"), b"r").unwrap();
        // The live folder is untouched until the commit.
        assert_eq!(std::fs::read(target.join("a/proto")).unwrap(), b"old");
        assert!(!target.join("record").exists());
        staged.commit().unwrap();
        assert_eq!(std::fs::read(target.join("a/proto")).unwrap(), b"new");
        assert_eq!(std::fs::read(target.join("a/weights")).unwrap(), b"w");
        // Stale temporary names of the live folder go with the old content.
        assert_eq!(names(&target), ["a", "record"]);
        assert_eq!(names(dir.path()), ["library"]);
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
        let staged = temporary_sibling(&dir.path().join("lib"));
        assert_eq!(
            user_path(&staged.join("fog/fog_statistics.npz")),
            dir.path().join("lib/fog/fog_statistics.npz")
        );
    }
}
