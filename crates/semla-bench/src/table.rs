//! The paper's Table 1 shape: one row per method, one column per target
//! domain, and the harmonic mean over domains ("h-mean") as the summary; the
//! gap closure of a method between zero-shot and oracle, and the paper's
//! figures for orientation. (Rendering: [`crate::present`].)

use semla_core::stats::harmonic_mean;
use serde::{Deserialize, Serialize};

/// mIoU (in percent) of several methods on several target domains.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ResultsTable {
    /// Target domain names, in column order.
    pub domains: Vec<String>,
    /// One row per method, in row order.
    pub rows: Vec<MethodRow>,
}

/// One method's scores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MethodRow {
    /// Method name (`zeroshot`, `uniform`, `semla`, `oracle`, ...).
    pub method: String,
    /// mIoU in percent per domain, aligned with [`ResultsTable::domains`];
    /// `None` where the method was not run on that domain.
    pub miou_percent: Vec<Option<f64>>,
}

impl ResultsTable {
    /// An empty table over `domains`.
    pub fn new(domains: Vec<String>) -> Self {
        Self {
            domains,
            rows: Vec::new(),
        }
    }

    /// Sets the score of `method` on `domain`, adding the row or column if needed.
    pub fn set(&mut self, method: &str, domain: &str, miou_percent: f64) {
        let column = match self.domains.iter().position(|d| d == domain) {
            Some(c) => c,
            None => {
                self.domains.push(domain.to_string());
                for row in &mut self.rows {
                    row.miou_percent.push(None);
                }
                self.domains.len() - 1
            }
        };
        let row = match self.rows.iter().position(|r| r.method == method) {
            Some(r) => r,
            None => {
                self.rows.push(MethodRow {
                    method: method.to_string(),
                    miou_percent: vec![None; self.domains.len()],
                });
                self.rows.len() - 1
            }
        };
        self.rows[row].miou_percent[column] = Some(miou_percent);
    }

    /// The score of `method` on `domain`.
    pub fn get(&self, method: &str, domain: &str) -> Option<f64> {
        let column = self.domains.iter().position(|d| d == domain)?;
        self.rows.iter().find(|r| r.method == method)?.miou_percent[column]
    }

    /// Harmonic mean of a method's scores over all domains, `None` if the
    /// method is missing or was not run on every domain.
    pub fn h_mean(&self, method: &str) -> Option<f64> {
        let row = self.rows.iter().find(|r| r.method == method)?;
        let values: Option<Vec<f64>> = row.miou_percent.iter().copied().collect();
        harmonic_mean(&values?)
    }

    /// Fraction of the zero-shot-to-oracle gap (in h-mean) that `method`
    /// closes: `(m - zeroshot) / (oracle - zeroshot)`. `None` when a row is
    /// missing or the gap is not positive.
    pub fn gap_closure(&self, method: &str) -> Option<f64> {
        let zero = self.h_mean("zeroshot")?;
        let oracle = self.h_mean("oracle")?;
        let value = self.h_mean(method)?;
        let gap = oracle - zero;
        (gap > 0.0).then(|| (value - zero) / gap)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harmonic_mean_by_hand() {
        // 2 / (1/40 + 1/60) = 48
        assert!((harmonic_mean(&[40.0, 60.0]).unwrap() - 48.0).abs() < 1e-12);
        assert_eq!(harmonic_mean(&[]), None);
        assert_eq!(harmonic_mean(&[10.0, 0.0]), Some(0.0));
    }

    #[test]
    fn gap_closure_matches_the_paper_figure() {
        // Paper h-means: zero-shot 39.4, SemLA 54.2, oracle 61.1 -> 68 %.
        let mut table = ResultsTable::new(vec!["all".into()]);
        table.set("zeroshot", "all", 39.4);
        table.set("semla", "all", 54.2);
        table.set("oracle", "all", 61.1);
        let closure = table.gap_closure("semla").unwrap();
        assert!((closure - 0.682).abs() < 1e-3, "{closure}");
    }

    #[test]
    fn missing_cells_render_as_dash_and_have_no_h_mean() {
        let mut table = ResultsTable::new(vec!["fog".into(), "night".into()]);
        table.set("semla", "fog", 50.0);
        table.set("semla", "night", 25.0);
        table.set("oracle", "fog", 70.0);
        assert!((table.h_mean("semla").unwrap() - 100.0 / 3.0).abs() < 1e-12);
        assert_eq!(table.h_mean("oracle"), None);
        let text = table.render_text();
        assert!(text.contains("33.3"), "{text}");
        assert!(text.lines().nth(2).unwrap().contains('-'), "{text}");
    }
}
