//! Felzenszwalb-Huttenlocher graph-based segmentation ("Efficient Graph-Based
//! Image Segmentation", IJCV 2004): the weight-free stand-in for SAM's masks
//! ([`crate::proposer::GraphSegments`]).

use crate::proposer::distance;

/// Segment id per pixel (`height x width`, row-major) of `colours` smoothed by
/// a 3x3 binomial filter, 4-neighbour edges weighted by RGB distance, merged
/// while an edge is no heavier than both sides' internal difference plus
/// `scale / size`; then segments smaller than `min_size` pixels are merged into
/// a neighbour. Ids are `0..count`, in the raster order of first pixels.
pub fn segment(
    colours: &[[f32; 3]],
    width: usize,
    height: usize,
    scale: f32,
    min_size: usize,
) -> Vec<u32> {
    let n = width * height;
    if colours.len() != n || n == 0 {
        return Vec::new();
    }
    let smooth = smooth(colours, width, height);
    let mut edges: Vec<(f32, u32, u32)> = Vec::with_capacity(2 * n);
    for y in 0..height {
        for x in 0..width {
            let p = y * width + x;
            if x + 1 < width {
                edges.push((distance(smooth[p], smooth[p + 1]), p as u32, (p + 1) as u32));
            }
            if y + 1 < height {
                edges.push((
                    distance(smooth[p], smooth[p + width]),
                    p as u32,
                    (p + width) as u32,
                ));
            }
        }
    }
    edges.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut sets = DisjointSets::new(n);
    let mut threshold = vec![scale; n];
    for &(w, a, b) in &edges {
        let (ra, rb) = (sets.find(a as usize), sets.find(b as usize));
        if ra != rb && w <= threshold[ra] && w <= threshold[rb] {
            let root = sets.union(ra, rb);
            threshold[root] = w + scale / sets.size[root] as f32;
        }
    }
    for &(_, a, b) in &edges {
        let (ra, rb) = (sets.find(a as usize), sets.find(b as usize));
        if ra != rb && (sets.size[ra] < min_size || sets.size[rb] < min_size) {
            sets.union(ra, rb);
        }
    }
    let mut ids = vec![u32::MAX; n];
    let mut out = Vec::with_capacity(n);
    let mut next = 0u32;
    for p in 0..n {
        let root = sets.find(p);
        if ids[root] == u32::MAX {
            ids[root] = next;
            next += 1;
        }
        out.push(ids[root]);
    }
    out
}

/// A 3x3 binomial filter (`[1 2 1] / 4` in each direction), edges replicated.
pub(crate) fn smooth(colours: &[[f32; 3]], width: usize, height: usize) -> Vec<[f32; 3]> {
    let pass = |input: &[[f32; 3]], dx: usize, dy: usize| -> Vec<[f32; 3]> {
        let mut out = vec![[0f32; 3]; input.len()];
        for y in 0..height {
            for x in 0..width {
                let p = y * width + x;
                let before = if dx == 1 {
                    y * width + x.saturating_sub(1)
                } else {
                    y.saturating_sub(dy) * width + x
                };
                let after = if dx == 1 {
                    y * width + (x + 1).min(width - 1)
                } else {
                    (y + dy).min(height - 1) * width + x
                };
                for k in 0..3 {
                    out[p][k] =
                        0.25 * input[before][k] + 0.5 * input[p][k] + 0.25 * input[after][k];
                }
            }
        }
        out
    };
    let horizontal = pass(colours, 1, 0);
    pass(&horizontal, 0, 1)
}

struct DisjointSets {
    parent: Vec<usize>,
    size: Vec<usize>,
}

impl DisjointSets {
    fn new(n: usize) -> Self {
        Self {
            parent: (0..n).collect(),
            size: vec![1; n],
        }
    }

    fn find(&mut self, mut p: usize) -> usize {
        while self.parent[p] != p {
            self.parent[p] = self.parent[self.parent[p]];
            p = self.parent[p];
        }
        p
    }

    /// Joins two roots; returns the new root.
    fn union(&mut self, a: usize, b: usize) -> usize {
        let (big, small) = if self.size[a] >= self.size[b] {
            (a, b)
        } else {
            (b, a)
        };
        self.parent[small] = big;
        self.size[big] += self.size[small];
        big
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_flat_regions_are_two_segments_and_small_bands_merge_away() {
        // Left half dark, right half bright, one odd pixel on the left.
        let (w, h) = (8, 6);
        let mut colours: Vec<[f32; 3]> = (0..w * h)
            .map(|p| if p % w < 4 { [20.0; 3] } else { [220.0; 3] })
            .collect();
        colours[2 * w + 1] = [60.0, 20.0, 20.0];
        // The smoothing makes each boundary column a 6-pixel band of its own;
        // below the minimum size it joins the side it is closest to.
        let ids = segment(&colours, w, h, 200.0, 7);
        let left = ids[0];
        let right = ids[w - 1];
        assert_ne!(left, right);
        for (p, &id) in ids.iter().enumerate() {
            assert_eq!(id, if p % w < 4 { left } else { right }, "pixel {p}");
        }
    }
}
