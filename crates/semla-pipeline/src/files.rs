//! SemLA on image files (`semla segment`): per file, decode once, segment with
//! the file's own mixture, and write a coloured mask and an overlay.

use std::path::{Path, PathBuf};

use semla_core::Progress;
use semla_data::Sample;
use semla_data::image_io::write_rgb_png;
use serde::Serialize;

use crate::error::{PipelineError, Result};
use crate::mixture::AdapterChoice;
use crate::render::{colour_mask, overlay, palette_for};
use crate::semla::{Request, Semla, StageTimings};

/// The result for one image file.
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
    /// Seconds per stage (decoding included in `decode_s`).
    #[serde(skip)]
    pub timings: StageTimings,
    /// Seconds to read and decode the file.
    #[serde(skip)]
    pub decode_s: f64,
}

/// Segments `images` with `request` and writes `<stem>_mask.png` and
/// `<stem>_overlay.png` into `out_dir`. `resize` = `(height, width)` scales each
/// image before the model (the pictures are then at that size).
pub fn segment_files(
    semla: &Semla,
    request: &Request,
    images: &[PathBuf],
    out_dir: &Path,
    resize: Option<(usize, usize)>,
    progress: &mut dyn Progress,
) -> Result<Vec<SegmentedImage>> {
    std::fs::create_dir_all(out_dir).map_err(|e| PipelineError::io(out_dir, e))?;
    let palette = palette_for(semla.model().as_ref());
    let num_classes = semla.model().num_classes();
    let mut out = Vec::with_capacity(images.len());
    progress.begin("segmenting", images.len() as u64);
    for (i, path) in images.iter().enumerate() {
        let started = std::time::Instant::now();
        let photo = semla_data::image_io::read_rgb(path)?;
        let decode_s = started.elapsed().as_secs_f64();
        let (prediction, photo) = match resize {
            None => (semla.segment(&photo, request)?, photo),
            Some((h, w)) => {
                let sample = semla_data::samples::resize(&Sample::from_photo(&photo), h, w, 0);
                let mut predictions = semla.segment_samples(&[&sample], request)?;
                let prediction = predictions
                    .pop()
                    .ok_or_else(|| PipelineError::Invalid("the model returned nothing".into()))?;
                (prediction, sample.to_photo()?)
            }
        };
        let (w, h) = (prediction.width, prediction.height);
        let mask = colour_mask(&prediction.labels, w, h, &palette)?;
        let blended = overlay(&mask, &photo)?;
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
        write_rgb_png(&mask_path, &mask)?;
        write_rgb_png(&overlay_path, &blended)?;
        out.push(SegmentedImage {
            image: path.clone(),
            mask: mask_path,
            overlay: overlay_path,
            width: w,
            height: h,
            class_pixels: prediction.class_pixels(num_classes),
            adapters: prediction.adapters,
            timings: prediction.timings,
            decode_s,
        });
        progress.set(i as u64 + 1);
    }
    progress.end();
    Ok(out)
}
