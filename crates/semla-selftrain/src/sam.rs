//! SAM as the [`MaskProposer`] CLOUDS prompts: the image is embedded once
//! (`SamPredictor.set_image`), each prompt is one `predict(...,
//! multimask_output=True)`, whose three masks (logits above 0) and predicted
//! IoUs become the [`Proposals`].

use image::RgbImage;
use semla_models::sam::{ImageEmbedding, Prompt, Sam};

use crate::error::{RefineError, Result};
use crate::proposer::{MaskProposer, Proposals};

/// A loaded SAM ([`Sam::load`] reads the released `.pth` checkpoints).
pub struct SamProposer {
    sam: Sam,
}

impl SamProposer {
    /// Wraps a loaded model; it must decode three masks (every released SAM does).
    pub fn new(sam: Sam) -> Result<Self> {
        let masks = sam.config().decoder.num_multimask_outputs;
        if masks != 3 {
            return Err(RefineError::Proposer(format!(
                "this SAM decodes {masks} masks per prompt; refinement picks the best of 3"
            )));
        }
        Ok(Self { sam })
    }
}

impl MaskProposer for SamProposer {
    type Prepared = ImageEmbedding;

    fn prepare(&self, image: &RgbImage) -> Result<ImageEmbedding> {
        self.sam
            .set_image(
                image.as_raw(),
                image.height() as usize,
                image.width() as usize,
            )
            .map_err(|e| RefineError::Proposer(e.to_string()))
    }

    fn predict(
        &self,
        prepared: &ImageEmbedding,
        points: &[(f32, f32)],
        labels: &[u8],
    ) -> Result<Proposals> {
        let prompt = Prompt {
            points: points
                .iter()
                .map(|&(x, y)| [f64::from(x), f64::from(y)])
                .collect(),
            labels: labels.iter().map(|&l| i32::from(l)).collect(),
            ..Prompt::default()
        };
        let prediction = self
            .sam
            .predict(prepared, &prompt, true)
            .map_err(|e| RefineError::Proposer(e.to_string()))?;
        let plane = prediction.height * prediction.width;
        let mask = |m: usize| -> Vec<bool> {
            prediction.logits[m * plane..(m + 1) * plane]
                .iter()
                .map(|&v| v > 0.0)
                .collect()
        };
        let score = |m: usize| prediction.iou.get(m).copied().unwrap_or(f32::NEG_INFINITY);
        if prediction.masks != 3 {
            return Err(RefineError::Proposer(format!(
                "SAM returned {} masks, expected 3",
                prediction.masks
            )));
        }
        Ok(Proposals {
            masks: [mask(0), mask(1), mask(2)],
            scores: [score(0), score(1), score(2)],
        })
    }
}
