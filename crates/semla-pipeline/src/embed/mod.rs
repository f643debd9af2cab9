//! Query embedders: what turns an image into the vector compared with the
//! domain prototypes.
//!
//! Every embedder implements [`Embed`] and is named on the command line (and in
//! a library's record) by a spec `KIND[:DIR][@F]` ([`EmbedderSpec`]):
//!
//! - `clip:DIR` ([`clip`]): the official embedder, a Hugging Face `CLIPModel`
//!   folder; `get_image_features` (projected CLS token, not normalised) after
//!   `CLIPImageProcessor` preprocessing.
//! - `backbone[:DIR][@F]` ([`segmenter`]): a segmenter's own pooled base
//!   features, on the image exactly as the segmenter sees it.
//! - `style[:DIR][@F]` ([`segmenter`]): the same segmenter's early-layer channel
//!   statistics: what a shift does to an image (contrast, colour, noise, blur)
//!   more than what the image shows, for a fraction of a forward pass.
//!
//! `DIR` names the segmenter folder (without it, the model the command runs);
//! `@F` average-pools the image by `F` in each direction first.
//!
//! Every embedder has an identity ([`Embed::id`]) that changes with its weights
//! and settings, so a library refuses queries from another embedder.
//!
//! **Adding an embedder** is one file here (a type implementing [`Embed`] and an
//! [`EmbedderKind`]) and one line in [`EMBEDDERS`].

pub mod clip;
pub mod fingerprint;
pub mod segmenter;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use semla_adapters::{EmbedderIdentity, EmbedderRecord};
use semla_data::{RgbImage, Sample};
use semla_models::Segmenter;

use crate::error::{PipelineError, Result};

/// An image embedder (see the module documentation).
pub trait Embed: Send + Sync {
    /// The kind (`clip`, `backbone`, `style`): the spec's prefix.
    fn kind(&self) -> &'static str;

    /// The identity recorded with a library's prototypes: the kind and a
    /// fingerprint of the weights, and settings that change the embedding
    /// (`style:0123abcd...@2`).
    fn id(&self) -> &str;

    /// The spec this embedder was built from (recorded with prototypes, so that
    /// queries are embedded the same way).
    fn spec(&self) -> &EmbedderSpec;

    /// Embeds a batch of samples (`[3, H, W]` RGB in `[0, 1]` each, as the
    /// segmenter sees them), one vector `[D]` per sample. Embedders that need
    /// one size per batch say so in their errors.
    fn embed_samples(&self, samples: &[&Sample], device: &Device) -> Result<Vec<Vec<f32>>>;

    /// Embeds a photo at its own size, as decoded from its file: what the
    /// official code embeds for CLIP. By default, the photo as a sample.
    fn embed_photo(&self, photo: &RgbImage, device: &Device) -> Result<Vec<f32>> {
        self.embed_samples(&[&Sample::from_photo(photo)], device)?
            .pop()
            .ok_or_else(|| {
                PipelineError::Invalid(format!("the {} embedder returned nothing", self.kind()))
            })
    }

    /// Whether a domain's prototype is made from its image files as they are on
    /// disk ([`embed_photo`](Self::embed_photo)), as the official code does for
    /// CLIP, rather than from the samples the segmenter sees.
    fn prefers_photos(&self) -> bool {
        false
    }
}

/// The identity a library at `library_root` records for prototypes made by
/// `embedder`: its folder, if any, written relative to the library's root.
pub fn identity(embedder: &dyn Embed, library_root: &Path) -> EmbedderIdentity {
    let mut spec = embedder.spec().clone();
    if let Some(dir) = &spec.dir
        && let Some(relative) = relative_to(dir, library_root)
    {
        spec.dir = Some(relative);
    }
    EmbedderIdentity {
        kind: embedder.kind().to_string(),
        id: embedder.id().to_string(),
        spec: spec.to_string(),
    }
}

/// `path` relative to `base` (both resolved on disk), or `None` where they cannot
/// be resolved or share no root.
fn relative_to(path: &Path, base: &Path) -> Option<PathBuf> {
    let path = path.canonicalize().ok()?;
    let base = base.canonicalize().ok()?;
    let (p, b): (Vec<_>, Vec<_>) = (path.components().collect(), base.components().collect());
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    if common == 0 {
        return None;
    }
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &p[common..] {
        out.push(c);
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    Some(out)
}

/// An embedder as named on the command line: `KIND[:DIR][@F]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbedderSpec {
    /// The kind, one of [`EMBEDDERS`].
    pub kind: &'static str,
    /// The folder after `:` (a CLIP folder, a segmenter folder), if any.
    pub dir: Option<PathBuf>,
    /// The downscale factor after `@` (1: the image as given).
    pub downscale: usize,
}

/// What a build of an embedder may use besides its spec.
#[derive(Clone, Copy)]
pub struct BuildContext<'a> {
    /// The device the embedder runs on.
    pub device: &'a Device,
    /// The segmenter the command runs (`backbone` without a folder embeds with it).
    pub model: Option<&'a Arc<dyn Segmenter>>,
}

/// One kind of embedder: its name, what its spec may hold, and how to build it.
pub struct EmbedderKind {
    /// The spec prefix (`clip`).
    pub name: &'static str,
    /// How the spec is written, for help and errors (`clip:DIR`).
    pub usage: &'static str,
    /// Whether `:DIR` is required.
    pub needs_dir: bool,
    /// Whether `@F` is understood (otherwise `@` is part of the folder name).
    pub takes_downscale: bool,
    /// Builds the embedder a spec of this kind names.
    pub build: fn(&EmbedderSpec, &BuildContext<'_>) -> Result<Box<dyn Embed>>,
}

/// Every embedder kind (the registry: one line per kind).
pub const EMBEDDERS: &[EmbedderKind] = &[clip::KIND, segmenter::BACKBONE, segmenter::STYLE];

/// The registry entry of `name`.
pub fn kind(name: &str) -> Option<&'static EmbedderKind> {
    EMBEDDERS.iter().find(|k| k.name == name)
}

fn usages() -> String {
    let all: Vec<&str> = EMBEDDERS.iter().map(|k| k.usage).collect();
    match all.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => all.join(""),
    }
}

impl EmbedderSpec {
    /// `backbone`: the command's own model, full resolution (the default
    /// embedder of a library without a record).
    pub fn backbone() -> Self {
        Self {
            kind: segmenter::BACKBONE.name,
            dir: None,
            downscale: 1,
        }
    }

    /// The registry entry of this spec's kind.
    pub fn registry(&self) -> Result<&'static EmbedderKind> {
        kind(self.kind)
            .ok_or_else(|| PipelineError::Invalid(format!("unknown embedder kind `{}`", self.kind)))
    }

    /// Builds the embedder this spec names.
    pub fn build(&self, ctx: &BuildContext<'_>) -> Result<Box<dyn Embed>> {
        (self.registry()?.build)(self, ctx)
    }

    /// This spec with `dir` as its folder when it names none (a command's
    /// `--model` for `backbone`); kinds that need a folder always name one.
    pub fn with_default_dir(mut self, dir: Option<&Path>) -> Self {
        if self.dir.is_none() {
            self.dir = dir.map(Path::to_path_buf);
        }
        self
    }

    /// The spec to embed queries of a library with: the explicit one, else the
    /// one recorded with the library's prototypes (its folder relative to the
    /// library's root `library_root`), else `backbone`.
    pub fn resolve(
        explicit: Option<&EmbedderSpec>,
        record: Option<&EmbedderRecord>,
        library_root: &Path,
    ) -> Self {
        explicit
            .cloned()
            .or_else(|| record.and_then(|r| Self::recorded(r, library_root)))
            .unwrap_or_else(Self::backbone)
    }

    /// The spec a library's record names, its folder resolved: relative to the
    /// library's root (records of format 2), or as written (format 1).
    pub fn recorded(record: &EmbedderRecord, library_root: &Path) -> Option<Self> {
        let mut spec: Self = record.embedder_spec.parse().ok()?;
        if record.format != semla_adapters::library::RECORD_FORMAT_V1
            && let Some(dir) = &spec.dir
            && dir.is_relative()
        {
            spec.dir = Some(library_root.join(dir));
        }
        Some(spec)
    }
}

impl std::str::FromStr for EmbedderSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let unknown = || format!("unknown embedder `{s}` (expected {})", usages());
        let name_end = s.find([':', '@']).unwrap_or(s.len());
        let Some(entry) = kind(&s[..name_end]) else {
            return Err(unknown());
        };
        let rest = &s[name_end..];
        let (body, downscale) = match rest.rsplit_once('@') {
            Some((body, factor)) if entry.takes_downscale => match factor.parse::<usize>() {
                Ok(f) if f >= 1 => (body, f),
                _ => {
                    return Err(format!(
                        "`{s}`: the downscale factor after `@` must be a whole number >= 1"
                    ));
                }
            },
            _ => (rest, 1),
        };
        let dir = match body.strip_prefix(':') {
            Some("") => return Err(format!("`{s}`: `{}:` needs a folder", entry.name)),
            Some(dir) => Some(PathBuf::from(dir)),
            None if body.is_empty() => None,
            None => return Err(unknown()),
        };
        if entry.needs_dir && dir.is_none() {
            return Err(format!("`{s}`: expected {}", entry.usage));
        }
        Ok(Self {
            kind: entry.name,
            dir,
            downscale,
        })
    }
}

impl std::fmt::Display for EmbedderSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind)?;
        if let Some(dir) = &self.dir {
            write!(f, ":{}", dir.display())?;
        }
        if self.downscale > 1 {
            write!(f, "@{}", self.downscale)?;
        }
        Ok(())
    }
}

/// Runs of embeddings `[N, D]` as one vector per row.
pub(crate) fn rows(t: &candle_core::Tensor) -> Result<Vec<Vec<f32>>> {
    let t = t
        .to_dtype(candle_core::DType::F32)?
        .to_device(&Device::Cpu)?;
    let (n, _) = t.dims2()?;
    (0..n).map(|i| Ok(t.get(i)?.to_vec1::<f32>()?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print_back() {
        for text in [
            "backbone",
            "backbone:models/base",
            "clip:weights/clip",
            "backbone@4",
            "backbone:models/base@2",
            "style",
            "style@2",
            "style:models/base",
        ] {
            let spec: EmbedderSpec = text.parse().unwrap();
            assert_eq!(spec.to_string(), text);
        }
        assert_eq!(
            "backbone:m@4".parse::<EmbedderSpec>().unwrap(),
            EmbedderSpec {
                kind: "backbone",
                dir: Some(PathBuf::from("m")),
                downscale: 4,
            }
        );
        assert!("backbone@0".parse::<EmbedderSpec>().is_err());
        assert!("backbone@x".parse::<EmbedderSpec>().is_err());
        assert!("backbone:".parse::<EmbedderSpec>().is_err());
        assert!("backbones".parse::<EmbedderSpec>().is_err());
        assert!("styles".parse::<EmbedderSpec>().is_err());
        assert!("clip:".parse::<EmbedderSpec>().is_err());
        assert!("resnet".parse::<EmbedderSpec>().is_err());
    }

    #[test]
    fn clip_folders_may_hold_an_at_sign_and_need_a_folder() {
        let spec: EmbedderSpec = "clip:weights@v2".parse().unwrap();
        assert_eq!(spec.dir, Some(PathBuf::from("weights@v2")));
        assert_eq!(spec.downscale, 1);
        let err = "clip".parse::<EmbedderSpec>().unwrap_err();
        assert!(err.contains("clip:DIR"), "{err}");
        let err = "resnet:x".parse::<EmbedderSpec>().unwrap_err();
        assert!(
            err.contains("clip:DIR") && err.contains("backbone"),
            "{err}"
        );
    }

    #[test]
    fn the_default_is_the_record_then_backbone() {
        let record = EmbedderRecord {
            format: semla_adapters::library::RECORD_FORMAT.into(),
            embedder: "style".into(),
            embedder_id: "style:00@2".into(),
            dimension: 4,
            embedder_spec: "style@2".into(),
            images: Default::default(),
        };
        let explicit: EmbedderSpec = "clip:c".parse().unwrap();
        assert_eq!(
            EmbedderSpec::resolve(Some(&explicit), Some(&record), Path::new("lib")),
            explicit
        );
        assert_eq!(
            EmbedderSpec::resolve(None, Some(&record), Path::new("lib")).to_string(),
            "style@2"
        );
        assert_eq!(
            EmbedderSpec::resolve(None, None, Path::new("lib")),
            EmbedderSpec::backbone()
        );
        // Recorded folders are relative to the library (format 2) or as given (1).
        let moved = EmbedderRecord {
            embedder_spec: "style:../models/m@2".into(),
            ..record.clone()
        };
        assert_eq!(
            EmbedderSpec::resolve(None, Some(&moved), Path::new("/data/lib")).dir,
            Some(PathBuf::from("/data/lib/../models/m"))
        );
        let old = EmbedderRecord {
            format: semla_adapters::library::RECORD_FORMAT_V1.into(),
            ..moved
        };
        assert_eq!(
            EmbedderSpec::resolve(None, Some(&old), Path::new("/data/lib")).dir,
            Some(PathBuf::from("../models/m"))
        );
        assert_eq!(
            EmbedderSpec::backbone()
                .with_default_dir(Some(Path::new("m")))
                .to_string(),
            "backbone:m"
        );
        assert_eq!(
            explicit.with_default_dir(Some(Path::new("m"))).to_string(),
            "clip:c"
        );
    }
}
