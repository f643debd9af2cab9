//! The benchmark's Table-1 summary: methods x domains with the harmonic mean,
//! SemLA's gap closure, and the paper's figures next to ours.

use serde::Serialize;

use crate::table::ResultsTable;

/// The SemLA paper's Table 1 h-means (mIoU %, CVPR 2025), for orientation only: other
/// domains, another model and a far larger training budget than this benchmark's.
pub const PAPER_H_MEAN: [(&str, f64); 4] = [
    ("zeroshot", 39.4),
    ("uniform", 51.9),
    ("semla", 54.2),
    ("oracle", 61.1),
];

/// The method rows of the benchmark, in table order.
pub const METHODS: [&str; 5] = ["zeroshot", "uniform", "semla-outputs", "semla", "oracle"];

/// A method's summary line.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MethodSummary {
    /// Method name.
    pub method: String,
    /// Harmonic mean over domains (`None` if a domain is missing).
    pub h_mean: Option<f64>,
    /// Fraction of the zero-shot-to-oracle h-mean gap closed.
    pub gap_closure: Option<f64>,
    /// The paper's h-mean for this method, if it reports one.
    pub paper_h_mean: Option<f64>,
}

/// Builds the table from `(method, [(domain, mIoU %)])` results, with columns in
/// `domains` order (domains missing from the results stay empty).
pub fn assemble(domains: &[String], results: &[(String, Vec<(String, f64)>)]) -> ResultsTable {
    let mut table = ResultsTable::new(domains.to_vec());
    for (method, scores) in results {
        for (domain, miou) in scores {
            table.set(method, domain, *miou);
        }
    }
    table
}

/// One summary line per row of `table`.
pub fn summarise(table: &ResultsTable) -> Vec<MethodSummary> {
    table
        .rows
        .iter()
        .map(|row| MethodSummary {
            method: row.method.clone(),
            h_mean: table.h_mean(&row.method),
            gap_closure: table.gap_closure(&row.method),
            paper_h_mean: PAPER_H_MEAN
                .iter()
                .find(|(m, _)| *m == row.method)
                .map(|(_, v)| *v),
        })
        .collect()
}

/// A Markdown table: one row per method, one column per domain, h-mean, gap closure and
/// the paper's h-mean.
pub fn render_markdown(table: &ResultsTable) -> String {
    let mut out = String::from("| method |");
    for domain in &table.domains {
        out.push_str(&format!(" {domain} |"));
    }
    out.push_str(" h-mean | gap closed | paper h-mean |\n|---|");
    for _ in &table.domains {
        out.push_str("---:|");
    }
    out.push_str("---:|---:|---:|\n");
    let cell = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into());
    for (row, summary) in table.rows.iter().zip(summarise(table)) {
        out.push_str(&format!("| {} |", row.method));
        for value in &row.miou_percent {
            out.push_str(&format!(" {} |", cell(*value)));
        }
        let closure = summary
            .gap_closure
            .map(|c| format!("{:.0} %", 100.0 * c))
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            " **{}** | {closure} | {} |\n",
            cell(summary.h_mean),
            cell(summary.paper_h_mean)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results() -> Vec<(String, Vec<(String, f64)>)> {
        let row = |m: &str, a: f64, b: f64| {
            (
                m.to_string(),
                vec![
                    ("camvid/fog3".to_string(), a),
                    ("camvid/dusk".to_string(), b),
                ],
            )
        };
        vec![
            row("zeroshot", 20.0, 30.0),
            row("semla", 30.0, 40.0),
            row("oracle", 40.0, 60.0),
        ]
    }

    #[test]
    fn table_follows_the_domain_order_and_fills_every_cell() {
        let domains = vec!["camvid/dusk".to_string(), "camvid/fog3".to_string()];
        let table = assemble(&domains, &results());
        assert_eq!(table.domains, domains);
        assert_eq!(table.get("semla", "camvid/dusk"), Some(40.0));
        assert_eq!(table.rows[0].miou_percent, vec![Some(30.0), Some(20.0)]);
    }

    #[test]
    fn summary_has_hand_computed_h_means_and_gap_closure() {
        let domains = vec!["camvid/fog3".to_string(), "camvid/dusk".to_string()];
        let table = assemble(&domains, &results());
        let summary = summarise(&table);
        // h-mean(20, 30) = 2 / (1/20 + 1/30) = 24; (30, 40) -> 240/7; (40, 60) -> 48.
        assert!((summary[0].h_mean.unwrap() - 24.0).abs() < 1e-12);
        assert!((summary[1].h_mean.unwrap() - 240.0 / 7.0).abs() < 1e-12);
        assert!((summary[2].h_mean.unwrap() - 48.0).abs() < 1e-12);
        let closure = (240.0 / 7.0 - 24.0) / (48.0 - 24.0);
        assert!((summary[1].gap_closure.unwrap() - closure).abs() < 1e-12);
        assert_eq!(summary[1].paper_h_mean, Some(54.2));
        let md = render_markdown(&table);
        assert!(md.contains("| semla | 30.0 | 40.0 | **34.3** | 43 % | 54.2 |"));
    }

    #[test]
    fn a_missing_domain_leaves_the_h_mean_undefined() {
        let domains = vec![
            "camvid/fog3".to_string(),
            "camvid/dusk".to_string(),
            "camvid/snow3".to_string(),
        ];
        let table = assemble(&domains, &results());
        assert_eq!(table.h_mean("semla"), None);
        assert!(render_markdown(&table).contains("| semla | 30.0 | 40.0 | - | **-** |"));
    }
}
