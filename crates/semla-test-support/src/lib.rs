//! # semla-test-support
//!
//! What semla's tests share, written once (a dev-dependency only):
//!
//! - [`max_abs_diff`], [`max_abs`]: the largest absolute difference of two
//!   tensors, the largest absolute value of one;
//! - [`shared`]: the `../shared` folder of real data and weights, with the
//!   skip message tests print when it is absent;
//! - [`cli`]: running the `semla` binary of the workspace;
//! - [`files`]: snapshots of folders, leftover temporary names, and writes
//!   interrupted at every commit point;
//! - [`png`]: PNG chunk checksums, for files damaged on purpose;
//! - [`fuzz`]: byte mutations of valid files for property-based tests of the
//!   parsers of untrusted files, and [`fuzz::LargestAllocation`], a global
//!   allocator that tells the largest single allocation a parser asked for;
//! - [`reference_json`]: running a `tools/reference` script that prints one JSON
//!   line (the benchmarks' PyTorch baselines).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers fail loudly

use std::path::PathBuf;

use candle_core::{DType, Tensor};

/// `max |a - b|` over every element (both converted to f32); panics when the
/// shapes differ, so that a broadcast never hides a wrong shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// `max |t|` over every element (converted to f32).
pub fn max_abs(t: &Tensor) -> f32 {
    t.to_dtype(DType::F32)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// A deterministic CPU f32 tensor of `shape` with values spread over
/// `[-scale / 2, scale / 2)` in a scrambled order (`i * 37 mod 101`), for hand
/// checks that should not depend on a random generator.
pub fn ramp(shape: &[usize], scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|i| ((i * 37 % 101) as f32 / 101.0 - 0.5) * scale)
        .collect();
    Tensor::from_vec(values, shape, &candle_core::Device::Cpu).unwrap()
}

/// `max |a - b|` of two slices of equal length.
pub fn max_abs_diff_slices(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The `shared/` folder beside the repository (real data and weights, kept
/// out of the repository by their licences).
pub mod shared {
    use super::PathBuf;

    /// `<repository>/../shared`.
    pub fn root() -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared"))
    }

    /// `shared/<relative>` if it exists; otherwise prints why the calling test
    /// is skipped and returns `None`.
    pub fn path(relative: &str) -> Option<PathBuf> {
        let path = root().join(relative);
        if path.exists() {
            Some(path)
        } else {
            eprintln!("skipping: {} is absent", path.display());
            None
        }
    }

    /// The dataset root `shared/data` if it holds `dataset` (a folder name).
    pub fn data_root_with(dataset: &str) -> Option<PathBuf> {
        let root = root().join("data");
        if root.join(dataset).is_dir() {
            Some(root)
        } else {
            eprintln!("skipping: {} has no {dataset} folder", root.display());
            None
        }
    }
}

/// Running the workspace's `semla` binary from a test of the CLI crate.
pub mod cli {
    use std::path::Path;
    use std::process::{Command, Output};

    /// The `semla` binary next to the running test executable
    /// (`target/<profile>/semla`, built by cargo for the CLI's tests).
    pub fn binary() -> std::path::PathBuf {
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("the test executable lives in target/<profile>/deps");
        profile_dir.join(format!("semla{}", std::env::consts::EXE_SUFFIX))
    }

    fn command(args: &[&str]) -> Command {
        let mut cmd = Command::new(binary());
        // Results must not depend on the caller's environment.
        cmd.args(args)
            .env_remove("DETECTRON2_DATASETS")
            .env_remove("RUST_LOG");
        cmd
    }

    /// Runs `semla args...`.
    pub fn semla(args: &[&str]) -> Output {
        command(args).output().unwrap()
    }

    /// Runs `semla args...` in the folder `cwd`.
    pub fn semla_in(cwd: &Path, args: &[&str]) -> Output {
        command(args).current_dir(cwd).output().unwrap()
    }

    /// Runs `semla args...`: `(success, stdout, stderr)` as text.
    pub fn semla_text(args: &[&str]) -> (bool, String, String) {
        text(&semla(args))
    }

    /// Runs `semla args...` in the folder `cwd`: `(success, stdout, stderr)` as text.
    pub fn semla_text_in(cwd: &Path, args: &[&str]) -> (bool, String, String) {
        text(&semla_in(cwd, args))
    }

    /// Runs `semla --json args...`, which must succeed, and parses its stdout.
    pub fn semla_json(args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = semla(&all);
        assert!(
            out.status.success(),
            "semla {all:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Runs `semla args...`, which must fail, and returns its stderr.
    pub fn semla_error(args: &[&str]) -> String {
        let out = semla(args);
        assert!(
            !out.status.success(),
            "semla {args:?} unexpectedly succeeded"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `(success, stdout, stderr)` of an output, as text.
    pub fn text(out: &Output) -> (bool, String, String) {
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

pub mod fuzz {
    //! Property-based tests of parsers: a valid file, damaged at random.
    //!
    //! [`mutated`] yields copies of a valid file with a few bytes overwritten
    //! (often by `0x00` or `0xFF`, which turn declared sizes into huge ones, or by
    //! an 8-byte `u64::MAX`), a number written in ASCII grown by a run of `9`s
    //! (sizes in text headers and JSON made huge), cut short, or all of these. A test binary that installs
    //! [`LargestAllocation`] as its `#[global_allocator]` can then check with
    //! [`largest_allocation`] that no input made the parser ask for more memory
    //! than a bound.

    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    use proptest::prelude::*;

    /// Where an edit lands: formats keep their sizes in a header, so half of
    /// the edits land in the first 64 bytes.
    #[derive(Clone, Copy, Debug)]
    enum Place {
        /// Byte offset within the first 64.
        Head(usize),
        /// A fraction of the file's length.
        Anywhere(f64),
    }

    impl Place {
        /// The offset in a file of `len` bytes (`len > 0`).
        fn offset(self, len: usize) -> usize {
            let at = match self {
                Self::Head(i) => i,
                Self::Anywhere(f) => (f * len as f64) as usize,
            };
            at.min(len.saturating_sub(1))
        }
    }

    fn place() -> impl Strategy<Value = Place> {
        prop_oneof![
            (0..64usize).prop_map(Place::Head),
            (0.0..1.0f64).prop_map(Place::Anywhere),
        ]
    }

    /// One damage done to a file.
    #[derive(Clone, Debug)]
    enum Edit {
        /// Overwrite one byte.
        Byte(Place, u8),
        /// Overwrite 8 bytes with `u64::MAX` (a declared size or offset).
        Huge(Place),
        /// Insert this many `9`s after an ASCII digit (a number in a text header
        /// or JSON grows); the digit is picked among all of the file's digits,
        /// by this fraction.
        GrowNumber(f64, usize),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        let byte = prop_oneof![Just(0x00u8), Just(0xFF), any::<u8>()];
        prop_oneof![
            3 => (place(), byte).prop_map(|(at, b)| Edit::Byte(at, b)),
            1 => place().prop_map(Edit::Huge),
            2 => (0.0..1.0f64, 1..12usize).prop_map(|(at, n)| Edit::GrowNumber(at, n)),
        ]
    }

    /// Copies of `valid` with 1 to 8 edits and, one time in three, cut short.
    pub fn mutated(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
        let cut = prop_oneof![2 => Just(None), 1 => (0.0..1.0f64).prop_map(Some)];
        (prop::collection::vec(edit(), 1..8), cut).prop_map(move |(edits, cut)| {
            let mut bytes = valid.clone();
            for e in edits {
                match e {
                    Edit::Byte(at, b) if !bytes.is_empty() => {
                        let i = at.offset(bytes.len());
                        bytes[i] = b;
                    }
                    Edit::Huge(at) if bytes.len() >= 8 => {
                        let i = at.offset(bytes.len() - 7);
                        bytes[i..i + 8].copy_from_slice(&u64::MAX.to_le_bytes());
                    }
                    Edit::GrowNumber(f, n) => {
                        let digits: Vec<usize> = (0..bytes.len())
                            .filter(|&i| bytes[i].is_ascii_digit())
                            .collect();
                        if !digits.is_empty() {
                            let i = digits[Place::Anywhere(f).offset(digits.len())] + 1;
                            bytes.splice(i..i, std::iter::repeat_n(b'9', n));
                        }
                    }
                    _ => {}
                }
            }
            if let Some(f) = cut {
                bytes.truncate(Place::Anywhere(f).offset(bytes.len()));
            }
            bytes
        })
    }

    thread_local! {
        // Const-initialised and without a destructor: safe to touch from inside
        // the allocator.
        static LARGEST: Cell<usize> = const { Cell::new(0) };
    }

    fn record(size: usize) {
        let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
    }

    /// The system allocator, noting the largest single request of each thread.
    pub struct LargestAllocation;

    // SAFETY: every call is forwarded unchanged to `System`; recording touches
    // only a thread-local `Cell`.
    unsafe impl GlobalAlloc for LargestAllocation {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            record(layout.size());
            // SAFETY: the caller's contract is passed on unchanged.
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            record(layout.size());
            // SAFETY: as above.
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: as above.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            record(new_size);
            // SAFETY: as above.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    /// Runs `f` and returns its result with the largest single allocation (in
    /// bytes) this thread asked for meanwhile; meaningful only in a test binary
    /// whose `#[global_allocator]` is [`LargestAllocation`].
    pub fn largest_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
        LARGEST.with(|largest| largest.set(0));
        let result = f();
        (result, LARGEST.with(Cell::get))
    }
}

pub mod files {
    //! Folders before and after a write: what they hold, what a write left behind.

    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use semla_core::fs::{fail_commit_after, is_temporary_name};

    /// Every file under `dir` with its bytes, by path relative to `dir`.
    pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let rel = path.strip_prefix(dir).unwrap().to_path_buf();
                    out.insert(rel, std::fs::read(&path).unwrap());
                }
            }
        }
        out
    }

    /// Files and folders under `dir` (itself included) with a staging or
    /// temporary name.
    pub fn temporary_names(dir: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let entry = entry.unwrap();
                if is_temporary_name(&entry.file_name().to_string_lossy()) {
                    found.push(entry.path());
                }
                if entry.path().is_dir() {
                    stack.push(entry.path());
                }
            }
        }
        found
    }

    /// Runs `write` with the `n`-th commit point failing, for n = 0, 1, ... until
    /// it succeeds (it returns whether it did); after every failure the folder
    /// `watched` is as it was and no temporary name is left under `parent`.
    /// Returns how many commit points the write has. The failure injection is
    /// process-wide: call it from a test binary of its own.
    pub fn interrupt_everywhere(
        parent: &Path,
        watched: &Path,
        mut write: impl FnMut() -> bool,
    ) -> usize {
        let before = if watched.exists() {
            snapshot(watched)
        } else {
            BTreeMap::new()
        };
        for n in 0..64 {
            fail_commit_after(Some(n));
            let ok = write();
            fail_commit_after(None);
            assert_eq!(
                temporary_names(parent),
                Vec::<PathBuf>::new(),
                "after commit point {n}"
            );
            if ok {
                return n as usize;
            }
            let now = if watched.exists() {
                snapshot(watched)
            } else {
                BTreeMap::new()
            };
            assert!(
                now == before,
                "{} changed, interrupted at commit point {n}",
                watched.display()
            );
        }
        panic!("the write never completed");
    }
}

pub mod png {
    //! PNG files damaged on purpose still need valid chunk checksums to reach
    //! the decoder's size checks.

    /// CRC-32 (IEEE), as PNG chunks use, bit by bit.
    pub fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    /// Recomputes the CRC of every chunk whose length still fits the file, so
    /// that damage inside a chunk (a huge width in `IHDR`) reaches the decoder
    /// instead of failing the checksum.
    pub fn with_valid_crcs(mut bytes: Vec<u8>) -> Vec<u8> {
        let mut at = 8;
        while at + 12 <= bytes.len() {
            let len = u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
                as usize;
            let Some(end) = (at + 8)
                .checked_add(len)
                .filter(|&end| end + 4 <= bytes.len())
            else {
                break;
            };
            let crc = crc32(&bytes[at + 4..end]);
            bytes[end..end + 4].copy_from_slice(&crc.to_be_bytes());
            at = end + 4;
        }
        bytes
    }

    /// A valid PNG whose `IHDR` now claims `width x height` (checksum fixed).
    pub fn claiming_size(mut bytes: Vec<u8>, width: u32, height: u32) -> Vec<u8> {
        bytes[16..20].copy_from_slice(&width.to_be_bytes());
        bytes[20..24].copy_from_slice(&height.to_be_bytes());
        with_valid_crcs(bytes)
    }
}

/// The tensors a reference script's `keys_*.json` lists (`{"tensors": [{name,
/// shape, scale, offset}]}`), generated with the recipe the script used
/// ([`semla_core::rng::named_values`]): the weights of the tiny random models
/// whose outputs the official code wrote, without committing the weights.
pub fn tensors_from_keys(path: &std::path::Path) -> std::collections::HashMap<String, Tensor> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = std::collections::HashMap::new();
    for t in json["tensors"].as_array().into_iter().flatten() {
        let name = t["name"].as_str().unwrap_or_default();
        let shape: Vec<usize> = t["shape"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d.as_u64().map(|d| d as usize))
            .collect();
        let values = semla_core::rng::named_values(
            name,
            shape.iter().product(),
            t["scale"].as_f64().unwrap_or(0.0) as f32,
            t["offset"].as_f64().unwrap_or(0.0) as f32,
        );
        let tensor = Tensor::from_vec(values, shape, &candle_core::Device::Cpu)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        out.insert(name.to_string(), tensor);
    }
    out
}

/// A bench setting from the environment: `name` parsed as a number, else `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `python tools/reference/<script> <args>` and parses the one JSON line it
/// prints, or `None` (with a message saying why) when `python` is empty (the
/// caller's way to skip the baseline), the script fails, or it prints no JSON.
pub fn reference_json(python: &str, script: &str, args: &[String]) -> Option<serde_json::Value> {
    if python.is_empty() {
        return None;
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tools/reference")
        .join(script);
    let out = match std::process::Command::new(python)
        .arg(&path)
        .args(args)
        .output()
    {
        Ok(out) if out.status.success() => out,
        Ok(out) => {
            println!(
                "PyTorch baseline failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        Err(e) => {
            println!("PyTorch baseline not run ({python}: {e})");
            return None;
        }
    };
    let line = String::from_utf8_lossy(&out.stdout);
    let parsed = serde_json::from_str(line.trim());
    if parsed.is_err() {
        println!("PyTorch baseline printed no JSON line: {line}");
    }
    parsed.ok()
}
