//! # semla-test-support
//!
//! What semla's tests share, written once (a dev-dependency only):
//!
//! - [`max_abs_diff`], [`max_abs`]: the largest absolute difference of two
//!   tensors, the largest absolute value of one;
//! - [`shared`]: the `../shared` folder of real data and weights, with the
//!   skip message tests print when it is absent;
//! - [`cli`]: running the `semla` binary of the workspace.
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
