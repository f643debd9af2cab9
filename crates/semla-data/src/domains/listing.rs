//! File-system helpers shared by the layouts: sorted listings and naming-rule pairing.

use std::path::{Path, PathBuf};

use super::{DomainError, ImagePair};
use crate::labels::LabelEncoding;

/// Fails with [`DomainError::MissingFolder`] unless `dir` is a folder.
pub(crate) fn require_dir(dir: &Path, layout: &str) -> Result<(), DomainError> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(DomainError::MissingFolder {
            path: dir.to_path_buf(),
            layout: layout.to_string(),
        })
    }
}

/// The entries of `dir` (files and folders), sorted by name.
pub(crate) fn sorted_entries(dir: &Path, layout: &str) -> Result<Vec<PathBuf>, DomainError> {
    require_dir(dir, layout)?;
    let io = |source| DomainError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        entries.push(entry.map_err(io)?.path());
    }
    entries.sort();
    Ok(entries)
}

/// Every image file (`.png`, `.jpg`, `.jpeg`, any case) under `dir`, recursively, sorted.
pub(crate) fn images_recursive(dir: &Path, layout: &str) -> Result<Vec<PathBuf>, DomainError> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    require_dir(dir, layout)?;
    while let Some(current) = stack.pop() {
        for path in sorted_entries(&current, layout)? {
            if path.is_dir() {
                stack.push(path);
            } else if is_image(&path) {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        .unwrap_or(false)
}

/// Label name endings with their encodings; the first existing file wins.
pub(crate) type LabelCandidates<'a> = &'a [(&'a str, LabelEncoding)];

/// A naming rule: image `<base><image suffix>` in `image_dir` pairs with
/// `<base><label suffix>` in `label_dir`, trying that image suffix's label candidates
/// in order.
pub(crate) struct PairRule<'a> {
    /// Folder of the images.
    pub image_dir: PathBuf,
    /// Folder of the label maps.
    pub label_dir: PathBuf,
    /// `true`: both folders hold one sub-folder per city/sequence with the files inside.
    pub nested: bool,
    /// Accepted image name endings, each with its label candidates; files matching
    /// none are skipped.
    pub naming: &'a [(&'a str, LabelCandidates<'a>)],
    /// The layout in words, for errors.
    pub layout: &'a str,
}

impl PairRule<'_> {
    /// Pairs every image with its label map, sorted by image path. A missing label map is
    /// an error naming the image and the expected label path.
    pub(crate) fn pairs(&self) -> Result<Vec<ImagePair>, DomainError> {
        require_dir(&self.image_dir, self.layout)?;
        require_dir(&self.label_dir, self.layout)?;
        let mut folders = vec![(self.image_dir.clone(), self.label_dir.clone())];
        if self.nested {
            folders.clear();
            for sub in sorted_entries(&self.image_dir, self.layout)? {
                if let Some(name) = sub.file_name().filter(|_| sub.is_dir()) {
                    folders.push((sub.clone(), self.label_dir.join(name)));
                }
            }
        }
        let mut samples = Vec::new();
        for (image_dir, label_dir) in folders {
            for image in sorted_entries(&image_dir, self.layout)? {
                let Some(name) = image.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                let Some((base, candidates)) = self
                    .naming
                    .iter()
                    .find_map(|(suffix, labels)| Some((name.strip_suffix(suffix)?, *labels)))
                else {
                    continue;
                };
                if !image.is_file() {
                    continue;
                }
                samples.push(self.label_for(&image, base, &label_dir, candidates)?);
            }
        }
        samples.sort_by(|a, b| a.image.cmp(&b.image));
        Ok(samples)
    }

    fn label_for(
        &self,
        image: &Path,
        base: &str,
        label_dir: &Path,
        candidates: LabelCandidates<'_>,
    ) -> Result<ImagePair, DomainError> {
        for (suffix, encoding) in candidates {
            let label = label_dir.join(format!("{base}{suffix}"));
            if label.is_file() {
                return Ok(ImagePair {
                    image: image.to_path_buf(),
                    label,
                    encoding: *encoding,
                });
            }
        }
        let first = candidates.first().map_or("", |c| c.0);
        Err(DomainError::MissingLabel {
            image: image.to_path_buf(),
            label: label_dir.join(format!("{base}{first}")),
            layout: self.layout.to_string(),
        })
    }
}
