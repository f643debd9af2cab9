//! The results table as fixed-width text for the terminal.

use crate::table::ResultsTable;

impl ResultsTable {
    /// A fixed-width text rendering for the terminal: one row per method,
    /// one column per domain, then `h-mean`.
    pub fn render_text(&self) -> String {
        let method_width = self
            .rows
            .iter()
            .map(|r| r.method.len())
            .max()
            .unwrap_or(6)
            .max(6);
        let column_widths: Vec<usize> = self.domains.iter().map(|d| d.len().max(6)).collect();
        let mut out = String::new();
        out.push_str(&format!("{:<method_width$}", "method"));
        for (domain, width) in self.domains.iter().zip(&column_widths) {
            out.push_str(&format!("  {domain:>width$}"));
        }
        out.push_str("  h-mean\n");
        for row in &self.rows {
            out.push_str(&format!("{:<method_width$}", row.method));
            for (value, width) in row.miou_percent.iter().zip(&column_widths) {
                match value {
                    Some(v) => out.push_str(&format!("  {v:>width$.1}")),
                    None => out.push_str(&format!("  {:>width$}", "-")),
                }
            }
            match self.h_mean(&row.method) {
                Some(h) => out.push_str(&format!("  {h:>6.1}\n")),
                None => out.push_str(&format!("  {:>6}\n", "-")),
            }
        }
        out
    }
}
