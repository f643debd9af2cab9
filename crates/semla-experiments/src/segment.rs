//! SemLA on individual images (`semla segment`): per image, embed, retrieve
//! and weight adapters, segment with the fused mixture, and write a coloured
//! mask and an overlay.

use std::path::{Path, PathBuf};

use candle_core::Device;
use semla_adapters::Adapter;
use semla_data::domains::Palette;
use semla_models::segmenter::Segmenter;
use semla_retrieval::RetrievalParams;
use semla_train::data::Sample;
use serde::Serialize;

use crate::embedder::{Embedder, normalized_batch};
use crate::error::{ExperimentError, Result};
use crate::progress::Progress;
use crate::prototypes::check_library_embedder;
use crate::render::{colour_mask, overlay, write_png};
use crate::run::{
    AdapterChoice, ExperimentKind, ExperimentSettings, Fusion, Mixer, SourceLibrary, argmax_maps,
    batch_mixture, mixture_scores,
};

/// The result for one image.
#[derive(Clone, Debug, Serialize)]
pub struct SegmentedImage {
    /// The input image.
    pub image: PathBuf,
    /// The coloured mask (PNG).
    pub mask: PathBuf,
    /// The mask blended over the photo (PNG).
    pub overlay: PathBuf,
    /// Image width.
    pub width: usize,
    /// Image height.
    pub height: usize,
    /// The adapters used, most similar first, with their weights.
    pub adapters: Vec<AdapterChoice>,
    /// Pixels per predicted class (index = class).
    pub class_pixels: Vec<usize>,
}

/// Display colours for a model's classes: the synthetic world's palette for
/// its 10 classes, the Cityscapes palette for 19 classes, CamVid's for 11,
/// otherwise generic colours.
pub fn palette_for(model: &dyn Segmenter) -> Vec<[u8; 3]> {
    let names = model.config().class_names().to_vec();
    let n = model.num_classes();
    let synthetic: Vec<String> = semla_data::synthetic::CLASS_NAMES
        .iter()
        .map(|s| s.to_string())
        .collect();
    if names == synthetic {
        return semla_data::synthetic::PALETTE.to_vec();
    }
    let palette = match n {
        19 => Palette::Cityscapes,
        11 => Palette::CamVid,
        _ => Palette::Generic,
    };
    (0..n).map(|c| palette.color(c as u16, None)).collect()
}

/// Segments `images` with SemLA's per-image mixture from `library` and
/// writes `<stem>_mask.png` and `<stem>_overlay.png` into `out_dir`.
/// `resize` = `(height, width)` scales each image before the model (the
/// pictures are then at that size).
#[allow(clippy::too_many_arguments)]
pub fn segment_images(
    model: &dyn Segmenter,
    library: &SourceLibrary,
    embedder: &Embedder<'_>,
    params: RetrievalParams,
    images: &[PathBuf],
    out_dir: &Path,
    resize: Option<(usize, usize)>,
    device: &Device,
    progress: &mut dyn Progress,
) -> Result<Vec<SegmentedImage>> {
    library.check_fits(model)?;
    std::fs::create_dir_all(out_dir).map_err(|e| ExperimentError::io(out_dir, e))?;
    let settings = ExperimentSettings {
        params,
        ..ExperimentSettings::new(ExperimentKind::Semla)
    };
    let mixer = Mixer::new(library, &settings);
    let palette = palette_for(model);
    let mut out = Vec::with_capacity(images.len());
    let mut checked = false;
    progress.begin("segmenting", images.len() as u64);
    for (i, path) in images.iter().enumerate() {
        let photo = semla_data::labels::read_rgb(path)
            .map_err(|e| ExperimentError::Invalid(format!("{}: {e}", path.display())))?;
        let (w, h) = (photo.width() as usize, photo.height() as usize);
        let mut sample = Sample::from_rgb8(photo.as_raw(), vec![0; w * h], h, w);
        if let Some((rh, rw)) = resize {
            sample = semla_train::augment::resize(&sample, rh, rw, 0);
        }
        let (h, w) = (sample.height, sample.width);
        let photo =
            image::RgbImage::from_raw(w as u32, h as u32, crate::embedder::sample_to_rgb8(&sample))
                .ok_or_else(|| ExperimentError::Invalid("bad image buffer".into()))?;
        let embedding = match embedder {
            Embedder::Clip(_) if resize.is_none() => embedder.embed_file(path, device)?,
            _ => embedder
                .embed_samples(&[&sample], device)?
                .pop()
                .ok_or_else(|| ExperimentError::Invalid("the embedder returned nothing".into()))?,
        };
        if !checked {
            check_library_embedder(library.root(), embedder, embedding.len())?;
            checked = true;
        }
        let mixture = mixer.retrieve("", &embedding)?;
        let (names, rows) = batch_mixture(&[mixture.as_slice()]);
        let adapters: Vec<&Adapter> = names
            .iter()
            .map(|n| library.adapter(n))
            .collect::<Result<_>>()?;
        let batch = normalized_batch(&[&sample], model.normalization(), device)?;
        let scores = mixture_scores(model, &batch, &adapters, &rows, Fusion::Weights)?;
        let classes = argmax_maps(&scores)?
            .pop()
            .ok_or_else(|| ExperimentError::Invalid("the model returned nothing".into()))?;
        let mut class_pixels = vec![0usize; model.num_classes()];
        for &c in &classes {
            if let Some(n) = class_pixels.get_mut(usize::from(c)) {
                *n += 1;
            }
        }
        let mask = colour_mask(&classes, w, h, &palette)?;
        let blended = overlay(&mask, &photo, 0.5)?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("image{i}"));
        // Two inputs with one stem (a/x.png, b/x.jpg) must not overwrite each other.
        let stem = if images[..i]
            .iter()
            .any(|p| p.file_stem() == path.file_stem())
        {
            format!("{stem}_{i}")
        } else {
            stem
        };
        let mask_path = out_dir.join(format!("{stem}_mask.png"));
        let overlay_path = out_dir.join(format!("{stem}_overlay.png"));
        write_png(&mask_path, &mask)?;
        write_png(&overlay_path, &blended)?;
        out.push(SegmentedImage {
            image: path.clone(),
            mask: mask_path,
            overlay: overlay_path,
            width: w,
            height: h,
            adapters: mixture,
            class_pixels,
        });
        progress.set(i as u64 + 1);
    }
    progress.end();
    Ok(out)
}
