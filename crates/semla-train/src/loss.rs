//! Pixel-wise losses with an ignore label: softmax cross-entropy and CAT-Seg's
//! per-class binary cross-entropy against one-hot targets.
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
    weighted_cross_entropy(logits, labels, ignore, None)
}

/// [`cross_entropy_with_ignore`] with each pixel's term multiplied by its
/// weight (`weights`: `[N, H, W]` f32, DACS' pseudo-label confidence), still
/// divided by the number of labelled pixels (so weights below 1 shrink the
/// loss, as DACS' weighted mean does).
pub fn weighted_cross_entropy(
    logits: &Tensor,
    labels: &Tensor,
    ignore: u32,
    weights: Option<&Tensor>,
) -> Result<Tensor> {
    let ((n, _, h, w), raw) = checked_labels(logits, labels, ignore)?;
    let pixel_weights = match weights {
        Some(t) => {
            if t.dims() != [n, h, w] {
                return Err(TrainError::Config(format!(
                    "loss weights are {:?}, the labels [{n}, {h}, {w}]",
                    t.dims()
                )));
            }
            let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            if let Some(bad) = values.iter().find(|v| !v.is_finite() || **v < 0.0) {
                return Err(TrainError::Config(format!(
                    "loss weights must be finite and non-negative, got {bad}"
                )));
            }
            Some(values)
        }
        None => None,
    };
    let mut targets = Vec::with_capacity(raw.len());
    let mut mask = Vec::with_capacity(raw.len());
    let mut counted = 0usize;
    for (i, &label) in raw.iter().enumerate() {
        if label == ignore {
            targets.push(0u32);
            mask.push(0f32);
        } else {
            targets.push(label);
            mask.push(pixel_weights.as_ref().map_or(1.0, |w| w[i]));
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

/// Mean binary cross-entropy with logits against one-hot targets (CAT-Seg's
/// training loss): every class of every pixel is one sigmoid, the target is 1
/// for the pixel's class and 0 for the others, and a pixel labelled `ignore`
/// gets an all-zero target but still counts (as the official code builds it).
///
/// `logits`: `[N, C, H, W]` (f32); `labels`: `[N, H, W]` class indices (u32).
/// Returns the scalar mean over all `N·C·H·W` terms. Uses the stable form
/// `max(x, 0) - x·t + log(1 + exp(-|x|))`.
pub fn binary_cross_entropy_one_hot(
    logits: &Tensor,
    labels: &Tensor,
    ignore: u32,
) -> Result<Tensor> {
    let ((n, c, h, w), raw) = checked_labels(logits, labels, ignore)?;
    let plane = h * w;
    let mut targets = vec![0f32; n * c * plane];
    for (index, &label) in raw.iter().enumerate() {
        if label == ignore {
            continue;
        }
        let (image, pixel) = (index / plane, index % plane);
        targets[(image * c + label as usize) * plane + pixel] = 1.0;
    }
    let targets =
        Tensor::from_vec(targets, (n, c, h, w), logits.device())?.to_dtype(logits.dtype())?;
    let softplus_of_minus_abs = logits.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    let terms = ((logits.relu()? - (logits * &targets)?)? + softplus_of_minus_abs)?;
    Ok(terms.mean_all()?)
}

/// `(N, C, H, W)`.
type Dims4 = (usize, usize, usize, usize);

/// The dimensions of `logits` `[N, C, H, W]` and the labels `[N, H, W]` read
/// as `u32`, every one of them a class below `C` or `ignore`.
fn checked_labels(logits: &Tensor, labels: &Tensor, ignore: u32) -> Result<(Dims4, Vec<u32>)> {
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
    if let Some(label) = raw.iter().find(|&&l| l != ignore && l as usize >= c) {
        return Err(TrainError::Config(format!(
            "label {label} is outside the model's {c} classes (ignore value is {ignore})"
        )));
    }
    Ok(((n, c, h, w), raw))
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
    fn weighted_loss_scales_each_pixel_and_divides_by_labelled_pixels() {
        // 2 classes, 1x3 pixels, labels (0, 1, ignore), weights (0.5, 2, 9).
        let logits = Tensor::from_vec(
            vec![1f32, 0.0, 4.0, 0.0, 3.0, 0.0],
            (1, 2, 1, 3),
            &Device::Cpu,
        )
        .unwrap();
        let labels = Tensor::from_vec(vec![0u32, 1, 9], (1, 1, 3), &Device::Cpu).unwrap();
        let weights = Tensor::from_vec(vec![0.5f32, 2.0, 9.0], (1, 1, 3), &Device::Cpu).unwrap();
        let loss = weighted_cross_entropy(&logits, &labels, 9, Some(&weights))
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // Class 0 holds (1, 0, 4), class 1 (0, 3, 0): pixel 0 picks 1 of
        // (1, 0), pixel 1 picks 3 of (0, 3).
        let ce0 = (1f64.exp() + 1.0).ln() - 1.0;
        let ce1 = (1.0 + 3f64.exp()).ln() - 3.0;
        let expected = (0.5 * ce0 + 2.0 * ce1) / 2.0;
        assert!(
            (f64::from(loss) - expected).abs() < 1e-6,
            "{loss} vs {expected}"
        );
        let plain = cross_entropy_with_ignore(&logits, &labels, 9).unwrap();
        let ones = Tensor::ones((1, 1, 3), DType::F32, &Device::Cpu).unwrap();
        let weighted_ones = weighted_cross_entropy(&logits, &labels, 9, Some(&ones)).unwrap();
        assert_eq!(
            plain.to_scalar::<f32>().unwrap(),
            weighted_ones.to_scalar::<f32>().unwrap()
        );
        let nan = Tensor::from_vec(vec![f32::NAN, 1.0, 1.0], (1, 1, 3), &Device::Cpu).unwrap();
        assert!(weighted_cross_entropy(&logits, &labels, 9, Some(&nan)).is_err());
        let wrong = Tensor::ones((1, 3, 1), DType::F32, &Device::Cpu).unwrap();
        assert!(weighted_cross_entropy(&logits, &labels, 9, Some(&wrong)).is_err());
    }

    #[test]
    fn rejects_labels_outside_the_classes() {
        let logits = Tensor::zeros((1, 2, 1, 1), DType::F32, &Device::Cpu).unwrap();
        let labels = Tensor::from_vec(vec![7u32], (1, 1, 1), &Device::Cpu).unwrap();
        assert!(cross_entropy_with_ignore(&logits, &labels, 255).is_err());
    }

    #[test]
    fn one_hot_bce_matches_hand_computation() {
        // One image, 2 classes, 1x2 pixels: label 1, then ignored.
        let x = [3.0f64, -1.0, -2.0, 0.5]; // class 0: (3, -1), class 1: (-2, 0.5)
        let logits = Tensor::from_vec(
            x.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            (1, 2, 1, 2),
            &Device::Cpu,
        )
        .unwrap();
        let labels = Tensor::from_vec(vec![1u32, 255], (1, 1, 2), &Device::Cpu).unwrap();
        let loss: f32 = binary_cross_entropy_one_hot(&logits, &labels, 255)
            .unwrap()
            .to_scalar()
            .unwrap();
        let sigmoid = |v: f64| 1.0 / (1.0 + (-v).exp());
        let bce = |v: f64, t: f64| -(t * sigmoid(v).ln() + (1.0 - t) * (1.0 - sigmoid(v)).ln());
        // pixel 0 (label 1): class 0 target 0, class 1 target 1; pixel 1 ignored: both 0.
        let expected = (bce(3.0, 0.0) + bce(-2.0, 1.0) + bce(-1.0, 0.0) + bce(0.5, 0.0)) / 4.0;
        assert!(
            (loss as f64 - expected).abs() < 1e-6,
            "{loss} vs {expected}"
        );
    }

    #[test]
    fn one_hot_bce_gradient_is_sigmoid_minus_target_and_stable() {
        let var = Var::from_vec(vec![80f32, -80.0], (1, 2, 1, 1), &Device::Cpu).unwrap();
        let labels = Tensor::from_vec(vec![1u32], (1, 1, 1), &Device::Cpu).unwrap();
        let loss = binary_cross_entropy_one_hot(var.as_tensor(), &labels, 255).unwrap();
        // Both terms are confidently wrong by 80: the loss is (80 + 80) / 2, finite.
        let value: f32 = loss.to_scalar().unwrap();
        assert!((value - 80.0).abs() < 1e-4, "{value}");
        let grads = loss.backward().unwrap();
        let g: Vec<f32> = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // d/dx = (sigmoid(x) - t) / (N·C·H·W): (1 - 0) / 2 and (0 - 1) / 2.
        assert!(
            (g[0] - 0.5).abs() < 1e-6 && (g[1] + 0.5).abs() < 1e-6,
            "{g:?}"
        );
        let outside = Tensor::from_vec(vec![2u32], (1, 1, 1), &Device::Cpu).unwrap();
        assert!(binary_cross_entropy_one_hot(var.as_tensor(), &outside, 255).is_err());
    }
}
