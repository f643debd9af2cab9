//! Connected components of a class mask and the random point prompts drawn in
//! them, as CLOUDS' `separate_shapes_list` and `get_fixed_points` make them
//! (scipy's `label` with its default 4-connectivity; points uniformly at
//! random without replacement, as `(x, y)`).

use semla_core::SplitMix64;

/// A 4-connected component of a binary mask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Component {
    /// Its pixels as row-major indices `y * width + x`, ascending.
    pub pixels: Vec<usize>,
}

impl Component {
    /// Number of pixels.
    pub fn area(&self) -> usize {
        self.pixels.len()
    }
}

/// The 4-connected components of `mask` (`height x width`, row-major), in the
/// raster order of their first pixel (scipy's label order).
///
/// A `mask` whose length is not `height * width` has no components.
pub fn components(mask: &[bool], height: usize, width: usize) -> Vec<Component> {
    if mask.len() != height * width {
        return Vec::new();
    }
    let mut seen = vec![false; mask.len()];
    let mut out = Vec::new();
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        let mut pixels = Vec::new();
        while let Some(p) = stack.pop() {
            pixels.push(p);
            let (y, x) = (p / width, p % width);
            let mut visit = |q: usize| {
                if mask[q] && !seen[q] {
                    seen[q] = true;
                    stack.push(q);
                }
            };
            if x > 0 {
                visit(p - 1);
            }
            if x + 1 < width {
                visit(p + 1);
            }
            if y > 0 {
                visit(p - width);
            }
            if y + 1 < height {
                visit(p + width);
            }
        }
        pixels.sort_unstable();
        out.push(Component { pixels });
    }
    out
}

/// `count` distinct pixels of `component` drawn uniformly without replacement
/// from `rng`, as `(x, y)`; `None` when it has fewer pixels than `count` (the
/// official code skips such a component).
pub fn sample_points(
    component: &Component,
    count: usize,
    width: usize,
    rng: &mut SplitMix64,
) -> Option<Vec<(usize, usize)>> {
    let n = component.pixels.len();
    if count == 0 || n < count || width == 0 {
        return None;
    }
    // A partial Fisher-Yates shuffle over the indices: the first `count` are a
    // uniform draw without replacement.
    let mut order: Vec<usize> = (0..n).collect();
    for i in 0..count {
        let j = i + rng.below(n - i);
        order.swap(i, j);
    }
    Some(
        order[..count]
            .iter()
            .map(|&i| {
                let p = component.pixels[i];
                (p % width, p / width)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(rows: &[&str]) -> (Vec<bool>, usize, usize) {
        let h = rows.len();
        let w = rows[0].len();
        let m = rows
            .iter()
            .flat_map(|r| r.bytes().map(|b| b == b'#'))
            .collect();
        (m, h, w)
    }

    #[test]
    fn four_connectivity_splits_diagonal_neighbours() {
        let (m, h, w) = mask(&["##..#", "#..#.", "..##.", "#...."]);
        let c = components(&m, h, w);
        // {0,1,5}, {4}, {8,12,13}: the (0,4)-(1,3) diagonal does not join; then {15}.
        let areas: Vec<usize> = c.iter().map(Component::area).collect();
        assert_eq!(areas, vec![3, 1, 3, 1]);
        assert_eq!(c[0].pixels, vec![0, 1, 5]);
        assert_eq!(c[1].pixels, vec![4]);
        assert_eq!(c[2].pixels, vec![8, 12, 13]);
        assert_eq!(c[3].pixels, vec![15]);
    }

    #[test]
    fn points_are_distinct_in_the_component_xy_and_seeded() {
        let (m, h, w) = mask(&["....", ".##.", ".##.", "...#"]);
        let c = components(&m, h, w);
        let draw = |seed| sample_points(&c[0], 4, w, &mut SplitMix64::new(seed)).unwrap();
        let points = draw(7);
        let mut sorted = points.clone();
        sorted.sort_unstable();
        // All four pixels of the 2x2 block, each once, as (x, y).
        assert_eq!(sorted, vec![(1, 1), (1, 2), (2, 1), (2, 2)]);
        assert_eq!(draw(7), points);
        // Too few pixels for the points: no prompt.
        assert!(sample_points(&c[1], 2, w, &mut SplitMix64::new(7)).is_none());
        // Another seed draws another order at least once over a few seeds.
        assert!((0..8).any(|s| draw(s) != points));
    }
}
