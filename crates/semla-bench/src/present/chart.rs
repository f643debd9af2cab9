//! Grouped bar charts as PNG, drawn pixel by pixel with a built-in 5x7 bitmap font
//! (no font file, no plotting dependency).

use image::{Rgb, RgbImage};

use crate::error::{BenchError, Result};
use crate::speed::{ReferenceTiming, Timing};
use crate::table::ResultsTable;

/// A grouped bar chart: one group per category, one bar per series.
#[derive(Clone, Debug)]
pub struct BarChart {
    /// Title, drawn on top.
    pub title: String,
    /// Label of the value axis (drawn under the title).
    pub unit: String,
    /// Category names (groups), left to right.
    pub groups: Vec<String>,
    /// Series names with their values per group (`None`: no bar).
    pub series: Vec<(String, Vec<Option<f64>>)>,
    /// Decimals of the value printed above each bar.
    pub decimals: usize,
}

/// Colours of the series, in order.
pub const COLOURS: [[u8; 3]; 8] = [
    [150, 150, 150],
    [86, 180, 233],
    [240, 228, 66],
    [0, 158, 115],
    [213, 94, 0],
    [204, 121, 167],
    [0, 114, 178],
    [230, 159, 0],
];

const SCALE: u32 = 2;
const GLYPH_W: u32 = 6 * SCALE;

/// 5x7 glyphs, one byte per row (low 5 bits, bit 4 = leftmost column).
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        ',' => [0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '_' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        '=' => [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00],
        '+' => [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00],
        _ => [0x00; 7],
    }
}

/// Width in pixels of `text` drawn by [`draw_text`].
pub fn text_width(text: &str) -> u32 {
    text.chars().count() as u32 * GLYPH_W
}

/// Draws `text` with its top-left corner at `(x, y)`; pixels outside are clipped.
pub fn draw_text(img: &mut RgbImage, x: i64, y: i64, text: &str, colour: [u8; 3]) {
    for (i, c) in text.chars().enumerate() {
        let rows = glyph(c);
        for (row, bits) in rows.iter().enumerate() {
            for col in 0..5u32 {
                if bits & (0x10 >> col) == 0 {
                    continue;
                }
                for dy in 0..SCALE {
                    for dx in 0..SCALE {
                        let px = x + (i as u32 * GLYPH_W + col * SCALE + dx) as i64;
                        let py = y + (row as u32 * SCALE + dy) as i64;
                        if px >= 0
                            && py >= 0
                            && (px as u32) < img.width()
                            && (py as u32) < img.height()
                        {
                            img.put_pixel(px as u32, py as u32, Rgb(colour));
                        }
                    }
                }
            }
        }
    }
}

fn fill(img: &mut RgbImage, x0: u32, y0: u32, x1: u32, y1: u32, colour: [u8; 3]) {
    for y in y0.min(img.height())..y1.min(img.height()) {
        for x in x0.min(img.width())..x1.min(img.width()) {
            img.put_pixel(x, y, Rgb(colour));
        }
    }
}

impl BarChart {
    /// Renders the chart (white background, value axis from 0 to the largest value).
    pub fn render(&self) -> Result<RgbImage> {
        if self.groups.is_empty() || self.series.is_empty() {
            return Err(BenchError::Invalid(
                "a bar chart needs groups and series".into(),
            ));
        }
        if let Some((name, _)) = self
            .series
            .iter()
            .find(|(_, v)| v.len() != self.groups.len())
        {
            return Err(BenchError::Invalid(format!(
                "series {name} has not one value per group ({} groups)",
                self.groups.len()
            )));
        }
        let max = self
            .series
            .iter()
            .flat_map(|(_, v)| v.iter().flatten())
            .fold(0.0f64, |m, &v| m.max(v));
        let max = if max > 0.0 { max * 1.12 } else { 1.0 };
        let bar_w = 14 * SCALE;
        let group_gap = 12 * SCALE;
        let group_w = bar_w * self.series.len() as u32 + group_gap;
        let label_w = self.groups.iter().map(|g| text_width(g)).max().unwrap_or(0);
        // Wide enough for the widest tick label (the top one), at least 60 px.
        let widest_tick = text_width(&format!("{:.*}", self.decimals.min(1), max / 1.12));
        let left = (widest_tick + 12).max(60);
        // The tallest bar's value is drawn upwards from its top, which is about 32 px
        // below the plot's top: room for it below the title and unit lines.
        let widest_value = text_width(&format!("{:.*}", self.decimals, max / 1.12));
        let top = (widest_value + 30).max(70);
        let plot_h = 300u32;
        let bottom = label_w + 20;
        let legend_w = self
            .series
            .iter()
            .map(|(n, _)| text_width(n) + 60)
            .max()
            .unwrap_or(0);
        let width = (left + group_w * self.groups.len() as u32 + 20 + legend_w)
            .max(text_width(&self.title) + 40);
        let height = top + plot_h + bottom;
        let mut img = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
        draw_text(&mut img, 20, 10, &self.title, [0, 0, 0]);
        draw_text(&mut img, 20, 34, &self.unit, [90, 90, 90]);
        // Axis and grid lines at quarters.
        let y_of = |v: f64| top + plot_h - ((v / max) * plot_h as f64).round() as u32;
        for q in 0..=4 {
            let v = max / 1.12 * q as f64 / 4.0;
            let y = y_of(v);
            fill(
                &mut img,
                left,
                y,
                left + group_w * self.groups.len() as u32,
                y + 1,
                [225, 225, 225],
            );
            let text = format!("{:.*}", self.decimals.min(1), v);
            draw_text(
                &mut img,
                left as i64 - text_width(&text) as i64 - 6,
                y as i64 - 7,
                &text,
                [90, 90, 90],
            );
        }
        fill(&mut img, left, top, left + 1, top + plot_h + 1, [0, 0, 0]);
        fill(
            &mut img,
            left,
            top + plot_h,
            left + group_w * self.groups.len() as u32,
            top + plot_h + 1,
            [0, 0, 0],
        );
        for (g, group) in self.groups.iter().enumerate() {
            let gx = left + group_gap / 2 + g as u32 * group_w;
            for (s, (_, values)) in self.series.iter().enumerate() {
                let Some(v) = values[g] else { continue };
                let x0 = gx + s as u32 * bar_w;
                let y0 = y_of(v.max(0.0));
                fill(
                    &mut img,
                    x0 + 1,
                    y0,
                    x0 + bar_w - 1,
                    top + plot_h,
                    COLOURS[s % COLOURS.len()],
                );
            }
            // Group labels run downwards under the bars, so long names need no room
            // between groups.
            draw_vertical(
                &mut img,
                gx as i64 + (bar_w * self.series.len() as u32) as i64 / 2 - 7,
                (top + plot_h + 8) as i64,
                group,
            );
        }
        // Values on top of bars, drawn after all bars so that they stay visible.
        for (g, _) in self.groups.iter().enumerate() {
            let gx = left + group_gap / 2 + g as u32 * group_w;
            for (s, (_, values)) in self.series.iter().enumerate() {
                let Some(v) = values[g] else { continue };
                let x0 = gx + s as u32 * bar_w;
                let y0 = y_of(v.max(0.0));
                let text = format!("{v:.*}", self.decimals);
                draw_vertical(
                    &mut img,
                    x0 as i64 + (bar_w as i64 - 14) / 2,
                    y0 as i64 - 6 - text_width(&text) as i64,
                    &text,
                );
            }
        }
        // Legend.
        let lx = left + group_w * self.groups.len() as u32 + 20;
        for (s, (name, _)) in self.series.iter().enumerate() {
            let y = top + s as u32 * 26;
            fill(&mut img, lx, y, lx + 20, y + 16, COLOURS[s % COLOURS.len()]);
            draw_text(&mut img, lx as i64 + 28, y as i64 + 1, name, [0, 0, 0]);
        }
        Ok(img)
    }

    /// Renders and writes the chart as PNG (atomically).
    pub fn write_png(&self, path: &std::path::Path) -> Result<()> {
        Ok(semla_data::image_io::write_rgb_png(path, &self.render()?)?)
    }
}

/// Draws `text` rotated by 90 degrees clockwise (reading top to bottom), with its
/// top-left corner at `(x, y)`.
fn draw_vertical(img: &mut RgbImage, x: i64, y: i64, text: &str) {
    for (i, c) in text.chars().enumerate() {
        let rows = glyph(c);
        for (row, bits) in rows.iter().enumerate() {
            for col in 0..5u32 {
                if bits & (0x10 >> col) == 0 {
                    continue;
                }
                for dy in 0..SCALE {
                    for dx in 0..SCALE {
                        // Rotate: glyph column -> vertical offset, glyph row -> leftwards.
                        let px = x + ((6 - row as u32) * SCALE + dx) as i64;
                        let py = y + (i as u32 * GLYPH_W + col * SCALE + dy) as i64;
                        if px >= 0
                            && py >= 0
                            && (px as u32) < img.width()
                            && (py as u32) < img.height()
                        {
                            img.put_pixel(px as u32, py as u32, Rgb([0, 0, 0]));
                        }
                    }
                }
            }
        }
    }
}

/// The benchmark's bar chart: one group per domain plus the h-mean, one bar per method.
pub fn camvid_chart(table: &ResultsTable, split: &str) -> BarChart {
    let mut groups = table.domains.clone();
    groups.push("h-mean".into());
    let series = table
        .rows
        .iter()
        .map(|row| {
            let mut values = row.miou_percent.clone();
            values.push(table.h_mean(&row.method));
            (row.method.clone(), values)
        })
        .collect();
    BarChart {
        title: format!("SemLA on CamVid domain shifts ({split} frames, leave-one-out)"),
        unit: "mIoU %".into(),
        groups,
        series,
        decimals: 1,
    }
}

/// Charts of the per-image timings: milliseconds per path (ours, and PyTorch where a
/// reference timing is given), one chart per model.
pub fn speed_charts(timings: &[Timing], reference: &[ReferenceTiming]) -> Vec<(String, BarChart)> {
    let mut models: Vec<&str> = timings.iter().map(|t| t.model.as_str()).collect();
    models.dedup();
    models
        .into_iter()
        .map(|model| {
            let paths: Vec<String> = timings
                .iter()
                .filter(|t| t.model == model)
                .map(|t| t.path.clone())
                .collect();
            let ours: Vec<Option<f64>> = paths
                .iter()
                .map(|p| {
                    timings
                        .iter()
                        .find(|t| t.model == model && &t.path == p)
                        .map(|t| 1e3 * t.median_s)
                })
                .collect();
            let mut series = vec![("semla (candle)".to_string(), ours)];
            let theirs: Vec<Option<f64>> = paths
                .iter()
                .map(|p| {
                    reference
                        .iter()
                        .find(|t| t.model == model && &t.path == p)
                        .map(|t| 1e3 * t.median_s)
                })
                .collect();
            if theirs.iter().any(Option::is_some) {
                series.push(("PyTorch + peft".to_string(), theirs));
            }
            (
                model.to_string(),
                BarChart {
                    title: format!("Per-image latency, {model}, batch 1"),
                    unit: "milliseconds (median)".into(),
                    groups: paths,
                    series,
                    decimals: 0,
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_as_tall_as_their_values() {
        let chart = BarChart {
            title: "t".into(),
            unit: "u".into(),
            groups: vec!["a".into(), "b".into()],
            series: vec![("s".into(), vec![Some(10.0), Some(5.0)])],
            decimals: 1,
        };
        let img = chart.render().unwrap();
        // Count the series colour in each group's column band.
        let colour = Rgb(COLOURS[0]);
        let heights: Vec<u32> = (0..2)
            .map(|g| {
                let x = 60 + 12 + g * (14 * 2 + 24) + 14;
                (0..img.height())
                    .filter(|&y| *img.get_pixel(x, y) == colour)
                    .count() as u32
            })
            .collect();
        assert!(heights[0] > 0);
        let ratio = heights[0] as f64 / heights[1] as f64;
        assert!((ratio - 2.0).abs() < 0.05, "{heights:?}");
    }

    #[test]
    fn mismatched_series_are_refused() {
        let chart = BarChart {
            title: "t".into(),
            unit: "u".into(),
            groups: vec!["a".into(), "b".into()],
            series: vec![("s".into(), vec![Some(1.0)])],
            decimals: 1,
        };
        assert!(chart.render().is_err());
    }
}
