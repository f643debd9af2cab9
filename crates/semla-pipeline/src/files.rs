//! SemLA on image files (`semla segment`): per file, decode once, segment with
//! the file's own mixture, and write a coloured mask and an overlay (and, if
//! asked, the raw label map that `semla metrics` scores).
//!
//! The output folders are staged and swapped in whole when the run ends
//! ([`semla_core::StagedDir`]): an interrupted or failed run leaves them as they
//! were. With `keep_going`, a file that cannot be segmented is reported and the
//! others still are.

use std::path::{Path, PathBuf};

use semla_core::{Progress, StagedDir};
use semla_data::Sample;
use semla_data::image_io::write_rgb_png;
use semla_data::labels::{LabelMap, write_label_map};
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
    /// The raw label map (grey PNG of class indices), when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<PathBuf>,
    /// Image width.
    pub width: usize,
    /// Image height.
    pub height: usize,
    /// The adapters used, most similar first, with their weights.
    pub adapters: Vec<AdapterChoice>,
    /// Pixels per predicted class (index = class).
    pub class_pixels: Vec<usize>,
    /// Seconds per stage.
    #[serde(skip)]
    pub timings: StageTimings,
    /// Seconds to read and decode the file.
    #[serde(skip)]
    pub decode_s: f64,
}

/// A file that could not be segmented (with `keep_going`).
#[derive(Clone, Debug, Serialize)]
pub struct FileError {
    /// The input image.
    pub image: PathBuf,
    /// What went wrong.
    pub error: String,
}

/// Where and how [`segment_files`] writes.
#[derive(Clone, Copy, Debug)]
pub struct FileOutputs<'a> {
    /// Folder of `<stem>_mask.png` and `<stem>_overlay.png`.
    pub out_dir: &'a Path,
    /// Folder of the raw label maps `<stem>.png`, if wanted (not `out_dir`).
    pub labels_dir: Option<&'a Path>,
    /// `(height, width)` every image is scaled to before the model (the
    /// pictures are then at that size).
    pub resize: Option<(usize, usize)>,
    /// Report a file that fails and go on with the others.
    pub keep_going: bool,
}

/// What [`segment_files`] did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SegmentRun {
    /// The images segmented, in input order.
    pub images: Vec<SegmentedImage>,
    /// The images that failed (only with `keep_going`).
    pub errors: Vec<FileError>,
}

/// Segments `images` with `request` and writes their pictures (see the module
/// documentation).
pub fn segment_files(
    semla: &Semla,
    request: &Request,
    images: &[PathBuf],
    outputs: &FileOutputs<'_>,
    progress: &mut dyn Progress,
) -> Result<SegmentRun> {
    if let Some((h, w)) = outputs.resize {
        semla_core::limits::check_pixels(h as u64, w as u64, "the resize size")
            .map_err(PipelineError::Invalid)?;
    }
    if outputs.labels_dir == Some(outputs.out_dir) {
        return Err(PipelineError::Invalid(
            "the label maps need a folder of their own (not the masks' folder)".into(),
        ));
    }
    let staged_out = StagedDir::from_existing(outputs.out_dir)?;
    let staged_labels = match outputs.labels_dir {
        Some(dir) => Some(StagedDir::from_existing(dir)?),
        None => None,
    };
    let mut run = SegmentRun::default();
    progress.begin("segmenting", images.len() as u64);
    for (i, path) in images.iter().enumerate() {
        // Two inputs with one stem (a/x.png, b/x.jpg) must not overwrite each other.
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("image{i}"));
        let stem = if images[..i]
            .iter()
            .any(|p| p.file_stem() == path.file_stem())
        {
            format!("{stem}_{i}")
        } else {
            stem
        };
        let result = segment_file(
            semla,
            request,
            path,
            &stem,
            outputs,
            &staged_out,
            staged_labels.as_ref(),
        );
        match result {
            Ok(image) => run.images.push(image),
            Err(e) if outputs.keep_going => run.errors.push(FileError {
                image: path.clone(),
                error: e.to_string(),
            }),
            Err(e) => return Err(e),
        }
        progress.set(i as u64 + 1);
    }
    progress.end();
    staged_out.commit()?;
    if let Some(staged) = staged_labels {
        staged.commit()?;
    }
    Ok(run)
}

/// Segments one file and writes its pictures into the staging folders
/// (reporting the paths they will have).
fn segment_file(
    semla: &Semla,
    request: &Request,
    path: &Path,
    stem: &str,
    outputs: &FileOutputs<'_>,
    staged_out: &StagedDir,
    staged_labels: Option<&StagedDir>,
) -> Result<SegmentedImage> {
    let started = std::time::Instant::now();
    let photo = semla_data::image_io::read_rgb(path)?;
    let decode_s = started.elapsed().as_secs_f64();
    let (prediction, photo) = match outputs.resize {
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
    let palette = palette_for(semla.model().as_ref());
    let mask = colour_mask(&prediction.labels, w, h, &palette)?;
    let blended = overlay(&mask, &photo)?;
    let (mask_name, overlay_name) = (format!("{stem}_mask.png"), format!("{stem}_overlay.png"));
    write_rgb_png(&staged_out.path().join(&mask_name), &mask)?;
    write_rgb_png(&staged_out.path().join(&overlay_name), &blended)?;
    let labels = match (staged_labels, outputs.labels_dir) {
        (Some(staged), Some(dir)) => {
            let name = format!("{stem}.png");
            let map = LabelMap {
                width: w as u32,
                height: h as u32,
                values: prediction.labels.clone(),
            };
            write_label_map(&staged.path().join(&name), &map)?;
            Some(dir.join(name))
        }
        _ => None,
    };
    Ok(SegmentedImage {
        image: path.to_path_buf(),
        mask: outputs.out_dir.join(mask_name),
        overlay: outputs.out_dir.join(overlay_name),
        labels,
        width: w,
        height: h,
        class_pixels: prediction.class_pixels(semla.model().num_classes()),
        adapters: prediction.adapters,
        timings: prediction.timings,
        decode_s,
    })
}
