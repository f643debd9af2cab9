//! Markdown tables of the results: methods x domains with the harmonic mean,
//! SemLA's gap closure, and the paper's figures next to ours.

use crate::table::{ResultsTable, summarise};
use crate::tuning::{TUNE_TEMPERATURES, TUNE_TOP_K, Tuning};

/// A Markdown table: one row per method, one column per domain, h-mean, gap closure and
/// the paper's h-mean.
pub fn render_markdown(table: &ResultsTable) -> String {
    render_table(table, true)
}

/// [`render_markdown`], with the paper's h-mean column only when `with_paper`
/// (a study whose rows are not the paper's).
pub fn render_table(table: &ResultsTable, with_paper: bool) -> String {
    let mut out = String::from("| method |");
    for domain in &table.domains {
        out.push_str(&format!(" {domain} |"));
    }
    out.push_str(if with_paper {
        " h-mean | gap closed | paper h-mean |\n|---|"
    } else {
        " h-mean | gap closed |\n|---|"
    });
    for _ in &table.domains {
        out.push_str("---:|");
    }
    out.push_str(if with_paper {
        "---:|---:|---:|\n"
    } else {
        "---:|---:|\n"
    });
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
        out.push_str(&format!(" **{}** | {closure} |", cell(summary.h_mean)));
        if with_paper {
            out.push_str(&format!(" {} |", cell(summary.paper_h_mean)));
        }
        out.push('\n');
    }
    out
}

/// The tuning grid as a Markdown table: h-mean on the tuning frames per top-k
/// (rows) and temperature (columns), the chosen point in bold.
pub fn render_tuning(tuning: &Tuning) -> String {
    let mut out = format!(
        "SemLA h-mean (%) on {} tuning frames per domain (train frames no adapter was trained on; leave-one-out; top-1 does not depend on T):\n\n| top-k |",
        tuning.images
    );
    for t in TUNE_TEMPERATURES {
        out.push_str(&format!(" T = {t} |"));
    }
    out.push_str("\n|---|");
    for _ in TUNE_TEMPERATURES {
        out.push_str("---:|");
    }
    out.push('\n');
    for k in TUNE_TOP_K {
        out.push_str(&format!("| {k} |"));
        for t in TUNE_TEMPERATURES {
            let found =
                tuning.points.iter().enumerate().find(|(_, p)| {
                    p.top_k == k && (p.temperature == t || (k == 1 && p.top_k == 1))
                });
            match found {
                // Top-1 is one point shown under every temperature; bold it once.
                Some((i, p)) if i == tuning.best && p.temperature == t => {
                    out.push_str(&format!(" **{:.1}** |", p.h_mean))
                }
                Some((_, p)) => out.push_str(&format!(" {:.1} |", p.h_mean)),
                None => out.push_str(" - |"),
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::assemble;

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
