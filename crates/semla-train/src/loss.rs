//! Pixel-wise cross-entropy with an ignore label.
//!
//! Built only from ops that have a backward pass in candle (no fused softmax /
//! log-softmax kernels, which would silently cut the gradient).

use candle_core::{DType, Tensor};

use crate::error::{Result, TrainError};

/// Mean cross-entropy over the pixels whose label is not `ignore`.
///
/// `logits`: `[N, C, H, W]` (f32); `labels`: `[N, H, W]` class indices (u32),
/// `ignore` marks pixels that do not count. Returns a scalar; when no pixel
/// counts, the loss is `0` (with a graph, so `backward` still works).
pub fn cross_entropy_with_ignore(logits: &Tensor, labels: &Tensor, ignore: u32) -> Result<Tensor> {
    let (n, c, h, w) = logits.dims4()?;
    let (ln, lh, lw) = labels.dims3()?;
    if (ln, lh, lw) != (n, h, w) {
        return Err(TrainError::Config(format!(
            "labels {:?} do not match logits {:?}",
            labels.dims(),
            logits.dims()
        )));
    }
    let raw: Vec<u32> = labels.to_dtype(DType::U32)?.flatten_all()?.to_vec1()?;
    let mut targets = Vec::with_capacity(raw.len());
    let mut mask = Vec::with_capacity(raw.len());
    let mut counted = 0usize;
    for &label in &raw {
        if label == ignore {
            targets.push(0u32);
            mask.push(0f32);
        } else if label as usize >= c {
            return Err(TrainError::Config(format!(
                "label {label} is outside the model's {c} classes (ignore value is {ignore})"
            )));
        } else {
            targets.push(label);
            mask.push(1f32);
            counted += 1;
        }
    }
    if counted == 0 {
        return Ok((logits.sum_all()? * 0.0)?);
    }
    let device = logits.device();
    // log_softmax over the class axis: x - max - log(sum(exp(x - max))).
    // The max only stabilises the exponent; its gradient cancels, so detach it.
    let max = logits.max_keepdim(1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let log_sum = shifted.exp()?.sum_keepdim(1)?.log()?;
    let log_probs = shifted.broadcast_sub(&log_sum)?;
    let targets = Tensor::from_vec(targets, (n, 1, h, w), device)?;
    let mask = Tensor::from_vec(mask, (n, 1, h, w), device)?.to_dtype(logits.dtype())?;
    let picked = log_probs.gather(&targets, 1)?; // [N, 1, H, W]
    let total = (picked * mask)?.sum_all()?;
    Ok((total * (-1.0 / counted as f64))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn matches_hand_computation_and_ignores_pixels() {
        // One image, 2 classes, 1x3 pixels; the last pixel is ignored.
        let logits = Tensor::from_vec(
            vec![0f32, 2.0, 5.0, 1.0, 0.0, -3.0],
            (1, 2, 1, 3),
            &Device::Cpu,
        )
        .unwrap();
        let labels = Tensor::from_vec(vec![0u32, 1, 255], (1, 1, 3), &Device::Cpu).unwrap();
        let loss: f32 = cross_entropy_with_ignore(&logits, &labels, 255)
            .unwrap()
            .to_scalar()
            .unwrap();
        // pixel 0: logits (0, 1), label 0 -> -log(e^0/(e^0+e^1)); pixel 1: (2, 0), label 1.
        let p0 = -(1.0f64 / (1.0 + 1f64.exp())).ln();
        let p1 = -(1.0f64 / (2f64.exp() + 1.0)).ln();
        assert!((loss as f64 - (p0 + p1) / 2.0).abs() < 1e-5, "{loss}");
    }

    #[test]
    fn gradient_is_softmax_minus_onehot() {
        let var = Var::from_vec(vec![0f32, 1.0, 2.0, 0.5], (1, 2, 1, 2), &Device::Cpu).unwrap();
        let labels = Tensor::from_vec(vec![1u32, 0], (1, 1, 2), &Device::Cpu).unwrap();
        let loss = cross_entropy_with_ignore(var.as_tensor(), &labels, 255).unwrap();
        let grads = loss.backward().unwrap();
        let g: Vec<f32> = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // pixel 0: logits (0, 2), label 1; pixel 1: logits (1, 0.5), label 0; mean over 2 pixels.
        let s0 = 1.0 / (1.0 + 2f32.exp()); // softmax class 0 at pixel 0
        let s1 = 1f32.exp() / (1f32.exp() + 0.5f32.exp()); // softmax class 0 at pixel 1
        let expected = [
            s0 / 2.0,
            (s1 - 1.0) / 2.0,
            (1.0 - s0 - 1.0) / 2.0,
            (1.0 - s1) / 2.0,
        ];
        for (a, b) in g.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{g:?} vs {expected:?}");
        }
    }

    #[test]
    fn rejects_labels_outside_the_classes() {
        let logits = Tensor::zeros((1, 2, 1, 1), DType::F32, &Device::Cpu).unwrap();
        let labels = Tensor::from_vec(vec![7u32], (1, 1, 1), &Device::Cpu).unwrap();
        assert!(cross_entropy_with_ignore(&logits, &labels, 255).is_err());
    }
}
