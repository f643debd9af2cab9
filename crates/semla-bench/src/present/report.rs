//! A self-contained HTML report: the results table, a grouped bar chart per
//! domain and method (inline SVG), and sample images with their predicted
//! masks and the adapters SemLA chose for them. Images are embedded as
//! base64 data URIs so the file can be opened anywhere, offline.

use std::fmt::Write as _;

use crate::table::ResultsTable;

/// One example image shown in the report.
#[derive(Clone, Debug)]
pub struct ReportSample {
    /// Target domain of the image.
    pub domain: String,
    /// Image identifier (file name or index).
    pub image_id: String,
    /// PNG bytes of the input image.
    pub image_png: Vec<u8>,
    /// PNG bytes of pictures to show next to it, each with a caption
    /// (ground truth, zero-shot mask, SemLA mask, ...).
    pub panels: Vec<(String, Vec<u8>)>,
    /// Adapters SemLA selected for this image, with their weights.
    pub adapters: Vec<(String, f64)>,
}

/// Everything the report shows.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Page title.
    pub title: String,
    /// Free text shown under the title (setup, timings).
    pub notes: Vec<String>,
    /// The results.
    pub table: ResultsTable,
    /// Example images.
    pub samples: Vec<ReportSample>,
    /// Class colours of the masks: `(class name, RGB)`, shown above the samples.
    pub legend: Vec<(String, [u8; 3])>,
}

/// Colours of the methods in the bar chart, in row order.
const METHOD_COLOURS: [&str; 8] = [
    "#9e9e9e", "#64b5f6", "#e53935", "#43a047", "#ffb300", "#8e24aa", "#00897b", "#6d4c41",
];

/// Standard base64 (RFC 4648, with padding).
pub fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let symbols = [(n >> 18) & 63, (n >> 12) & 63, (n >> 6) & 63, n & 63];
        for (i, s) in symbols.iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[*s as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Escapes text for HTML element content and attribute values.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The grouped bar chart: for each domain (and the h-mean), one bar per method.
fn bar_chart_svg(table: &ResultsTable) -> String {
    let mut groups: Vec<(String, Vec<Option<f64>>)> = table
        .domains
        .iter()
        .enumerate()
        .map(|(c, d)| {
            (
                d.clone(),
                table.rows.iter().map(|r| r.miou_percent[c]).collect(),
            )
        })
        .collect();
    groups.push((
        "h-mean".into(),
        table.rows.iter().map(|r| table.h_mean(&r.method)).collect(),
    ));
    let methods = table.rows.len().max(1);
    let bar_width = 14.0;
    let group_width = bar_width * methods as f64 + 18.0;
    let chart_height = 220.0;
    let left = 40.0;
    let top = 30.0;
    let width = left + group_width * groups.len() as f64 + 10.0;
    let height = top + chart_height + 60.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    for tick in (0..=100).step_by(20) {
        let y = top + chart_height * (1.0 - f64::from(tick) / 100.0);
        let _ = write!(
            svg,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{tick}</text>",
            width - 10.0,
            left - 4.0,
            y + 4.0
        );
    }
    for (g, (name, values)) in groups.iter().enumerate() {
        let x0 = left + g as f64 * group_width + 9.0;
        for (m, value) in values.iter().enumerate() {
            let Some(v) = value else { continue };
            let h = chart_height * v.clamp(0.0, 100.0) / 100.0;
            let x = x0 + m as f64 * bar_width;
            let colour = METHOD_COLOURS[m % METHOD_COLOURS.len()];
            let _ = write!(
                svg,
                r#"<rect x="{x}" y="{}" width="{}" height="{h}" fill="{colour}"><title>{}: {v:.1}</title></rect>"#,
                top + chart_height - h,
                bar_width - 2.0,
                escape(&table.rows[m].method)
            );
        }
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            x0 + bar_width * methods as f64 / 2.0,
            top + chart_height + 16.0,
            escape(name)
        );
    }
    for (m, row) in table.rows.iter().enumerate() {
        let x = left + m as f64 * 110.0;
        let y = top + chart_height + 38.0;
        let colour = METHOD_COLOURS[m % METHOD_COLOURS.len()];
        let _ = write!(
            svg,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{colour}"/><text x="{}" y="{}">{}</text>"#,
            y - 10.0,
            x + 16.0,
            y,
            escape(&row.method)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{left}" y="16" font-size="13">mIoU (%) per target domain</text></svg>"#
    );
    svg
}

impl Report {
    /// Renders the whole report as one HTML document.
    pub fn to_html(&self) -> String {
        let mut html = String::new();
        let title = escape(&self.title);
        let _ = write!(
            html,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
             <style>body{{font-family:sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse}}\
             td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th:first-child,td:first-child{{text-align:left}}\
             .sample{{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start;margin:12px 0}}figure{{margin:0}}\
             figcaption{{font-size:12px;color:#555}}img{{image-rendering:pixelated;width:160px}}</style></head><body>\
             <h1>{title}</h1>"
        );
        for note in &self.notes {
            let _ = write!(html, "<p>{}</p>", escape(note));
        }
        html.push_str("<h2>Results</h2><table><tr><th>method</th>");
        for domain in &self.table.domains {
            let _ = write!(html, "<th>{}</th>", escape(domain));
        }
        html.push_str("<th>h-mean</th></tr>");
        for row in &self.table.rows {
            let _ = write!(html, "<tr><td>{}</td>", escape(&row.method));
            for value in row
                .miou_percent
                .iter()
                .copied()
                .chain([self.table.h_mean(&row.method)])
            {
                match value {
                    Some(v) => {
                        let _ = write!(html, "<td>{v:.1}</td>");
                    }
                    None => html.push_str("<td>-</td>"),
                }
            }
            html.push_str("</tr>");
        }
        html.push_str("</table>");
        if let Some(closure) = self.table.gap_closure("semla") {
            let _ = write!(
                html,
                "<p>SemLA closes {:.0} % of the zero-shot to oracle gap (h-mean).</p>",
                closure * 100.0
            );
        }
        html.push_str("<h2>Chart</h2>");
        html.push_str(&bar_chart_svg(&self.table));
        if !self.samples.is_empty() {
            html.push_str("<h2>Samples</h2>");
        }
        if !self.legend.is_empty() {
            html.push_str("<p>");
            for (name, [r, g, b]) in &self.legend {
                let _ = write!(
                    html,
                    "<span style=\"display:inline-block;margin-right:12px\"><span style=\"display:inline-block;width:12px;height:12px;background:rgb({r},{g},{b});margin-right:4px\"></span>{}</span>",
                    escape(name)
                );
            }
            html.push_str("</p>");
        }
        for sample in &self.samples {
            let _ = write!(
                html,
                "<h3>{} / {}</h3><div class=\"sample\"><figure><img alt=\"input\" src=\"data:image/png;base64,{}\"><figcaption>input</figcaption></figure>",
                escape(&sample.domain),
                escape(&sample.image_id),
                base64_encode(&sample.image_png)
            );
            for (caption, png) in &sample.panels {
                let _ = write!(
                    html,
                    "<figure><img alt=\"{0}\" src=\"data:image/png;base64,{1}\"><figcaption>{0}</figcaption></figure>",
                    escape(caption),
                    base64_encode(png)
                );
            }
            html.push_str("<figure><figcaption>adapters chosen by SemLA</figcaption><table>");
            for (name, weight) in &sample.adapters {
                let _ = write!(
                    html,
                    "<tr><td>{}</td><td>{weight:.3}</td></tr>",
                    escape(name)
                );
            }
            html.push_str("</table></figure></div>");
        }
        html.push_str("</body></html>\n");
        html
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, expected) in cases {
            assert_eq!(base64_encode(input.as_bytes()), expected, "{input}");
        }
    }

    #[test]
    fn html_contains_table_chart_and_escaped_names() {
        let mut table = ResultsTable::new(vec!["fog".into()]);
        table.set("zeroshot", "fog", 30.0);
        table.set("semla", "fog", 45.0);
        table.set("oracle", "fog", 50.0);
        let report = Report {
            title: "demo <synthetic>".into(),
            notes: vec![],
            table,
            samples: vec![ReportSample {
                domain: "fog".into(),
                image_id: "0".into(),
                image_png: vec![1, 2, 3],
                panels: vec![("semla".into(), vec![4, 5])],
                adapters: vec![("night".into(), 0.75)],
            }],
            legend: vec![("road".into(), [128, 64, 128])],
        };
        let html = report.to_html();
        assert!(html.contains("demo &lt;synthetic&gt;"));
        assert!(html.contains("<td>45.0</td>"));
        assert!(html.contains("closes 75 %"), "gap closure (45-30)/(50-30)");
        assert!(html.contains("<svg"));
        assert!(html.contains("data:image/png;base64,AQID"));
        assert!(html.contains("<td>0.750</td>"));
        assert!(html.contains("rgb(128,64,128)"));
    }
}
