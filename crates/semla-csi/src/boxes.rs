//! Boxes in pixel coordinates and CSI's detection post-processing: a box is
//! kept when its score is above its class's own detection threshold, then
//! class-agnostic NMS at IoU 0.3, then the survivors sorted by ascending
//! score (so that the highest-scoring box is pasted last and wins where
//! boxes overlap).

/// A box `[x0, x1) x [y0, y1)` in an image's pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct PixelBox {
    /// Left column.
    pub x0: usize,
    /// Top row.
    pub y0: usize,
    /// One past the right column.
    pub x1: usize,
    /// One past the bottom row.
    pub y1: usize,
}

impl PixelBox {
    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.x1.saturating_sub(self.x0)
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.y1.saturating_sub(self.y0)
    }

    /// Area in pixels.
    pub fn area(&self) -> usize {
        self.width() * self.height()
    }

    /// The box clipped to a `width x height` image.
    pub fn clipped(&self, width: usize, height: usize) -> Self {
        Self {
            x0: self.x0.min(width),
            y0: self.y0.min(height),
            x1: self.x1.min(width),
            y1: self.y1.min(height),
        }
    }

    /// Intersection over union with `other` (0 when both are empty).
    pub fn iou(&self, other: &Self) -> f32 {
        let w = self.x1.min(other.x1).saturating_sub(self.x0.max(other.x0));
        let h = self.y1.min(other.y1).saturating_sub(self.y0.max(other.y0));
        let inter = w * h;
        let union = self.area() + other.area() - inter;
        if union == 0 {
            0.0
        } else {
            inter as f32 / union as f32
        }
    }
}

/// One box a proposer found for a query.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Detection {
    /// Where.
    pub bbox: PixelBox,
    /// Index of the query (concept string) it answers.
    pub query: usize,
    /// Its score in `[0, 1]`.
    pub score: f32,
}

/// CSI's post-processing of raw detections: keep a box when its score is
/// strictly above the detection threshold of the class its query belongs to
/// (`threshold_of(query)`), then class-agnostic NMS (a box is dropped when it
/// overlaps a higher-scoring kept box by IoU above `nms_iou`), then sort by
/// ascending score.
pub fn postprocess(
    detections: Vec<Detection>,
    threshold_of: impl Fn(usize) -> f32,
    nms_iou: f32,
) -> Vec<Detection> {
    let mut candidates: Vec<Detection> = detections
        .into_iter()
        .filter(|d| d.score > threshold_of(d.query))
        .collect();
    // Highest score first; ties keep their order (a stable sort).
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Detection> = Vec::new();
    for d in candidates {
        if kept.iter().all(|k| k.bbox.iou(&d.bbox) <= nms_iou) {
            kept.push(d);
        }
    }
    kept.reverse();
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(x0: usize, y0: usize, x1: usize, y1: usize, query: usize, score: f32) -> Detection {
        Detection {
            bbox: PixelBox { x0, y0, x1, y1 },
            query,
            score,
        }
    }

    #[test]
    fn iou_by_hand() {
        let a = PixelBox {
            x0: 0,
            y0: 0,
            x1: 4,
            y1: 4,
        };
        let b = PixelBox {
            x0: 2,
            y0: 2,
            x1: 6,
            y1: 6,
        };
        // Intersection 2x2 = 4, union 16 + 16 - 4 = 28.
        assert!((a.iou(&b) - 4.0 / 28.0).abs() < 1e-7);
        assert_eq!(
            a.iou(&PixelBox {
                x0: 4,
                y0: 0,
                x1: 8,
                y1: 4
            }),
            0.0
        );
        assert_eq!(a.iou(&a), 1.0);
    }

    #[test]
    fn per_class_threshold_then_class_agnostic_nms_then_ascending() {
        // Query 0 belongs to a class with threshold 0.5, query 1 to one with 0.1.
        let threshold = |q: usize| if q == 0 { 0.5 } else { 0.1 };
        let out = postprocess(
            vec![
                det(0, 0, 10, 10, 0, 0.4),   // below its class's 0.5: dropped
                det(0, 0, 10, 10, 1, 0.3),   // kept (0.3 > 0.1)
                det(1, 1, 11, 11, 0, 0.9),   // kept, and suppresses the next (IoU 0.68)
                det(0, 0, 10, 10, 1, 0.2),   // overlaps the 0.9 box of another query: dropped
                det(30, 30, 40, 40, 1, 0.1), // not strictly above 0.1: dropped
                det(20, 0, 30, 10, 1, 0.6),  // far away: kept
            ],
            threshold,
            0.3,
        );
        // The 0.3 box overlaps the 0.9 one too (IoU 81/119 = 0.68): dropped.
        let scores: Vec<f32> = out.iter().map(|d| d.score).collect();
        assert_eq!(scores, vec![0.6, 0.9]);
        // Exactly at the NMS overlap is kept (suppression needs IoU > 0.3).
        let touching = postprocess(
            vec![det(0, 0, 10, 10, 1, 0.9), det(0, 0, 10, 3, 1, 0.5)],
            threshold,
            0.3,
        );
        assert_eq!(touching.len(), 2);
        assert_eq!(touching[0].score, 0.5);
    }
}
