//! How good a pseudo-label is: scored against the true labels it stands in
//! for, and drawn next to them.

use image::RgbImage;

/// A pseudo-label's agreement with the truth.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PseudoLabelScore {
    /// Mean IoU over the classes present in the truth; a pixel the
    /// pseudo-label leaves unsupervised counts as a miss (so dropping pixels
    /// is not free).
    pub miou: f64,
    /// Fraction of the truly labelled pixels the pseudo-label supervises.
    pub coverage: f64,
    /// Fraction of the supervised (and truly labelled) pixels it gets right.
    pub precision: f64,
}

/// Scores `pred` against `truth` (same length); `ignore` marks pixels without
/// a label in either (truth's are skipped, pred's are misses).
pub fn score_pseudo_label(pred: &[u16], truth: &[u16], ignore: u16) -> PseudoLabelScore {
    let mut inter = std::collections::BTreeMap::<u16, usize>::new();
    let mut union = std::collections::BTreeMap::<u16, usize>::new();
    let (mut labelled, mut covered, mut correct) = (0usize, 0usize, 0usize);
    for (&p, &t) in pred.iter().zip(truth) {
        if t == ignore {
            continue;
        }
        labelled += 1;
        *union.entry(t).or_default() += 1;
        if p == ignore {
            continue;
        }
        covered += 1;
        if p == t {
            correct += 1;
            *inter.entry(t).or_default() += 1;
        } else {
            *union.entry(p).or_default() += 1;
        }
    }
    let present: std::collections::BTreeSet<u16> =
        truth.iter().copied().filter(|&t| t != ignore).collect();
    let ious: Vec<f64> = present
        .iter()
        .map(|c| inter.get(c).copied().unwrap_or(0) as f64 / union[c] as f64)
        .collect();
    PseudoLabelScore {
        miou: ious.iter().sum::<f64>() / ious.len().max(1) as f64,
        coverage: covered as f64 / labelled.max(1) as f64,
        precision: correct as f64 / covered.max(1) as f64,
    }
}

/// The mean of several images' scores (zero for none).
pub fn mean_score(scores: &[PseudoLabelScore]) -> PseudoLabelScore {
    let n = scores.len().max(1) as f64;
    let sum = |f: fn(&PseudoLabelScore) -> f64| scores.iter().map(f).sum::<f64>() / n;
    PseudoLabelScore {
        miou: sum(|s| s.miou),
        coverage: sum(|s| s.coverage),
        precision: sum(|s| s.precision),
    }
}

/// `labels` (`height x width`) drawn in `colour(class)`, `ignore` black.
pub fn draw_labels(
    labels: &[u16],
    width: usize,
    height: usize,
    ignore: u16,
    colour: impl Fn(u16) -> [u8; 3],
) -> RgbImage {
    RgbImage::from_fn(width as u32, height as u32, |x, y| {
        let l = labels
            .get(y as usize * width + x as usize)
            .copied()
            .unwrap_or(ignore);
        image::Rgb(if l == ignore { [0, 0, 0] } else { colour(l) })
    })
}

/// `rows` of equally sized panels side by side, 4 white pixels between
/// panels and rows.
pub fn panel_grid(rows: &[Vec<RgbImage>]) -> RgbImage {
    let gap = 4u32;
    let width = rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|p| p.width() + gap)
                .sum::<u32>()
                .saturating_sub(gap)
        })
        .max()
        .unwrap_or(0);
    let heights: Vec<u32> = rows
        .iter()
        .map(|r| r.iter().map(|p| p.height()).max().unwrap_or(0))
        .collect();
    let height = (heights.iter().map(|h| h + gap).sum::<u32>()).saturating_sub(gap);
    let mut grid = RgbImage::from_pixel(width.max(1), height.max(1), image::Rgb([255, 255, 255]));
    let mut y = 0i64;
    for (row, h) in rows.iter().zip(&heights) {
        let mut x = 0i64;
        for panel in row {
            image::imageops::replace(&mut grid, panel, x, y);
            x += i64::from(panel.width() + gap);
        }
        y += i64::from(h + gap);
    }
    grid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_by_hand() {
        const I: u16 = 255;
        // truth: 0 0 0 1 1 1 I I ; pred: 0 0 1 1 I 1 0 I
        let truth = [0, 0, 0, 1, 1, 1, I, I];
        let pred = [0, 0, 1, 1, I, 1, 0, I];
        let s = score_pseudo_label(&pred, &truth, I);
        // class 0: inter 2, union 3 (truth) -> 2/3; class 1: inter 2, union
        // 3 (truth) + 1 (pred 1 on a truth-0 pixel) = 4 -> 1/2.
        assert!((s.miou - (2.0 / 3.0 + 0.5) / 2.0).abs() < 1e-12, "{s:?}");
        // 6 labelled, 5 covered, 4 right.
        assert!((s.coverage - 5.0 / 6.0).abs() < 1e-12);
        assert!((s.precision - 4.0 / 5.0).abs() < 1e-12);
        let perfect = score_pseudo_label(&truth, &truth, I);
        assert_eq!(
            perfect,
            PseudoLabelScore {
                miou: 1.0,
                coverage: 1.0,
                precision: 1.0
            }
        );
        let m = mean_score(&[s, perfect]);
        assert!((m.coverage - (5.0 / 6.0 + 1.0) / 2.0).abs() < 1e-12);
        assert_eq!(mean_score(&[]), PseudoLabelScore::default());
    }

    #[test]
    fn grid_places_panels_with_gaps() {
        let red = RgbImage::from_pixel(3, 2, image::Rgb([255, 0, 0]));
        let grid = panel_grid(&[vec![red.clone(), red.clone()], vec![red]]);
        assert_eq!((grid.width(), grid.height()), (3 + 4 + 3, 2 + 4 + 2));
        assert_eq!(grid.get_pixel(7, 0).0, [255, 0, 0]);
        assert_eq!(grid.get_pixel(5, 0).0, [255, 255, 255]);
        assert_eq!(grid.get_pixel(7, 7).0, [255, 255, 255]);
        let drawn = draw_labels(&[0, 255], 2, 1, 255, |_| [1, 2, 3]);
        assert_eq!(drawn.get_pixel(0, 0).0, [1, 2, 3]);
        assert_eq!(drawn.get_pixel(1, 0).0, [0, 0, 0]);
    }
}
