//! Small statistics of the paper's tables.

/// Harmonic mean of strictly positive values; `None` for an empty slice and
/// 0 as soon as one value is 0 or negative (the limit of the formula).
pub fn harmonic_mean(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    if values.iter().any(|&v| v <= 0.0) {
        return Some(0.0);
    }
    let inverse_sum: f64 = values.iter().map(|v| 1.0 / v).sum();
    Some(values.len() as f64 / inverse_sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harmonic_mean_by_hand() {
        assert_eq!(harmonic_mean(&[]), None);
        assert!((harmonic_mean(&[10.0, 40.0]).unwrap() - 16.0).abs() < 1e-12);
        assert_eq!(harmonic_mean(&[10.0, 0.0]), Some(0.0));
        assert_eq!(harmonic_mean(&[5.0]), Some(5.0));
    }
}
