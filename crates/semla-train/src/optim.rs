//! AdamW (decoupled weight decay, Loshchilov & Hutter) with global-norm
//! gradient clipping, and a state that can be saved and restored.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::error::{Result, TrainError};

/// AdamW hyper-parameters (PyTorch's defaults except `weight_decay`).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    /// First-moment decay. Default 0.9.
    pub beta1: f64,
    /// Second-moment decay. Default 0.999.
    pub beta2: f64,
    /// Denominator epsilon. Default 1e-8.
    pub eps: f64,
    /// Decoupled weight decay, applied as `w -= lr * weight_decay * w`. Default 0.01.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// One trainable tensor and its moment estimates.
struct Slot {
    name: String,
    var: Var,
    first_moment: Tensor,
    second_moment: Tensor,
}

/// AdamW over a named set of variables.
pub struct AdamW {
    config: AdamWConfig,
    slots: Vec<Slot>,
    /// Number of updates applied so far (PyTorch's `step` counter).
    updates: usize,
}

impl AdamW {
    /// An optimizer for `params` (name, variable), moments at zero.
    pub fn new(params: &[(String, Var)], config: AdamWConfig) -> Result<Self> {
        let slots = params
            .iter()
            .map(|(name, var)| {
                Ok(Slot {
                    name: name.clone(),
                    var: var.clone(),
                    first_moment: var.as_tensor().zeros_like()?,
                    second_moment: var.as_tensor().zeros_like()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config,
            slots,
            updates: 0,
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> AdamWConfig {
        self.config
    }

    /// Number of updates applied so far.
    pub fn updates(&self) -> usize {
        self.updates
    }

    /// Global L2 norm of the gradients of all variables (missing gradients count as zero).
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut total = 0f64;
        for slot in &self.slots {
            if let Some(g) = grads.get(slot.var.as_tensor()) {
                total += g
                    .sqr()?
                    .sum_all()?
                    .to_dtype(candle_core::DType::F64)?
                    .to_scalar::<f64>()?;
            }
        }
        Ok(total.sqrt())
    }

    /// One AdamW update with learning rate `lr`. Gradients are first scaled by
    /// `grad_scale` (the clipping factor; 1 for none). A variable without a
    /// gradient is left unchanged (and its moments too).
    pub fn step(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        self.updates += 1;
        let c = self.config;
        let t = self.updates as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2 = 1.0 - c.beta2.powi(t);
        for slot in &mut self.slots {
            let Some(grad) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            // Gradients of frozen-weight matmuls carry the backward graph
            // (their ops track the weights they were computed from); a moment
            // built on them would keep every step's activations alive, one
            // chain through the whole run (the demo grew by 10 MB a step).
            let grad = grad.detach();
            let grad = if grad_scale == 1.0 {
                grad
            } else {
                (grad * grad_scale)?
            };
            let m = ((&slot.first_moment * c.beta1)? + (&grad * (1.0 - c.beta1))?)?;
            let v = ((&slot.second_moment * c.beta2)? + (grad.sqr()? * (1.0 - c.beta2))?)?;
            let m_hat = (&m / bias1)?;
            let v_hat = (&v / bias2)?;
            let theta = slot.var.as_tensor().detach();
            let decayed = (&theta * (1.0 - lr * c.weight_decay))?;
            let update = (m_hat / (v_hat.sqrt()? + c.eps)?)?;
            let next = (decayed - (update * lr)?)?;
            slot.var.set(&next)?;
            slot.first_moment = m;
            slot.second_moment = v;
        }
        Ok(())
    }

    /// The moments as named tensors (`<name>.exp_avg`, `<name>.exp_avg_sq`), for checkpoints.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.slots.len());
        for slot in &self.slots {
            out.push((format!("{}.exp_avg", slot.name), slot.first_moment.clone()));
            out.push((
                format!("{}.exp_avg_sq", slot.name),
                slot.second_moment.clone(),
            ));
        }
        out
    }

    /// Restores the moments saved by [`AdamW::state_tensors`] and the update count.
    /// `source` names the checkpoint file in errors.
    pub fn load_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        updates: usize,
        source: &std::path::Path,
    ) -> Result<()> {
        for slot in &mut self.slots {
            for (suffix, target) in [
                ("exp_avg", &mut slot.first_moment),
                ("exp_avg_sq", &mut slot.second_moment),
            ] {
                let key = format!("{}.{suffix}", slot.name);
                let Some(t) = tensors.get(&key) else {
                    return Err(TrainError::checkpoint(
                        source,
                        format!("missing optimizer tensor {key}"),
                    ));
                };
                if t.dims() != target.dims() {
                    return Err(TrainError::checkpoint(
                        source,
                        format!(
                            "optimizer tensor {key} has shape {:?}, expected {:?}",
                            t.dims(),
                            target.dims()
                        ),
                    ));
                }
                *target = t.to_dtype(target.dtype())?.to_device(target.device())?;
            }
        }
        self.updates = updates;
        Ok(())
    }
}

/// The factor that scales gradients of global norm `norm` down to `max_norm`
/// (1 when already within, or when clipping is off).
pub fn clip_factor(norm: f64, max_norm: Option<f64>) -> f64 {
    match max_norm {
        Some(max) if norm.is_finite() && norm > max => max / (norm + 1e-6),
        _ => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The moments must hold values, not graphs: a gradient computed from a
    /// variable tracks its ops, and a moment built on it would chain every
    /// step's backward graph (and its activations) through the run.
    #[test]
    fn moments_keep_no_graph() {
        let w = Var::from_vec(vec![1.0f32, -2.0], 2, &Device::Cpu).unwrap();
        let mut opt = AdamW::new(&[("w".to_string(), w.clone())], AdamWConfig::default()).unwrap();
        for _ in 0..2 {
            let loss = w.as_tensor().sqr().unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            assert!(
                grads.get(w.as_tensor()).unwrap().track_op(),
                "the premise: gradients track ops"
            );
            opt.step(&grads, 0.1, 0.5).unwrap();
            for (name, moment) in opt.state_tensors() {
                assert!(!moment.track_op(), "{name} keeps a graph");
            }
        }
    }

    /// Two AdamW steps on f(w) = sum(w^2)/2 (gradient = w), checked against
    /// the update rule written out by hand (PyTorch's AdamW algorithm).
    #[test]
    fn matches_hand_written_adamw() {
        let w = Var::from_vec(vec![1.0f32, -2.0], 2, &Device::Cpu).unwrap();
        let cfg = AdamWConfig {
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut opt = AdamW::new(&[("w".to_string(), w.clone())], cfg).unwrap();
        let lr = 0.1;
        let mut expected = [1.0f64, -2.0];
        let mut m = [0f64; 2];
        let mut v = [0f64; 2];
        for t in 1..=2 {
            let loss = (w.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5).unwrap();
            let grads = loss.backward().unwrap();
            opt.step(&grads, lr, 1.0).unwrap();
            for i in 0..2 {
                let g = expected[i];
                expected[i] *= 1.0 - lr * cfg.weight_decay;
                m[i] = cfg.beta1 * m[i] + (1.0 - cfg.beta1) * g;
                v[i] = cfg.beta2 * v[i] + (1.0 - cfg.beta2) * g * g;
                let m_hat = m[i] / (1.0 - cfg.beta1.powi(t));
                let v_hat = v[i] / (1.0 - cfg.beta2.powi(t));
                expected[i] -= lr * m_hat / (v_hat.sqrt() + cfg.eps);
            }
        }
        let got: Vec<f32> = w.as_tensor().to_vec1().unwrap();
        for (g, e) in got.iter().zip(expected) {
            assert!((*g as f64 - e).abs() < 1e-6, "{got:?} vs {expected:?}");
        }
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        assert_eq!(clip_factor(0.5, Some(1.0)), 1.0);
        assert!((clip_factor(4.0, Some(1.0)) * 4.0 - 1.0).abs() < 1e-6);
        assert_eq!(clip_factor(4.0, None), 1.0);
    }
}
