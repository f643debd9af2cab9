//! Two ways to apply a mixture of adapters to a model:
//!
//! - **factored** ([`Adaptation::from_adapters`]): the model keeps its base
//!   weights and adds `sum_i w_{n,i} s_i B_i (A_i x_n)` at each site, with a
//!   different mixture `w_n` for every image `n` of one batch;
//! - **merged** ([`merge_into`]): `delta W = sum_i w_i s_i B_i A_i` is added
//!   to a layer's weight (one mixture for the whole batch).
//!
//! Both compute PEFT's exact `cat` fusion and agree to float rounding.

use std::collections::BTreeMap;

use candle_core::Tensor;

use crate::adapter::Adapter;
use crate::error::{AdapterError, Result};
use crate::fusion::check_weights;
use crate::site::{Adaptation, AdaptedConv2d, AdaptedLinear, FactoredSite, SiteInfo};

impl Adaptation {
    /// The factored form of a per-image mixture: `weights_per_image[n][i]`
    /// is the weight of `adapters[i]` for image `n` of the batch (a single
    /// row applies to the whole batch). Every site of every adapter gets a
    /// [`FactoredSite`] stacking the adapters that have it, with coefficients
    /// `w_{n,i} * s_i`.
    pub fn from_adapters(adapters: &[&Adapter], weights_per_image: &[Vec<f64>]) -> Result<Self> {
        if weights_per_image.is_empty() {
            return Err(AdapterError::InvalidArgument(
                "no weights given (zero images)".into(),
            ));
        }
        for (n, row) in weights_per_image.iter().enumerate() {
            check_weights(row, adapters.len())
                .map_err(|e| AdapterError::InvalidArgument(format!("weights of image {n}: {e}")))?;
        }
        let mut paths: Vec<&String> = adapters.iter().flat_map(|a| a.sites.keys()).collect();
        paths.sort();
        paths.dedup();
        let mut adaptation = Adaptation::none();
        for path in paths {
            let present: Vec<usize> = (0..adapters.len())
                .filter(|&i| adapters[i].sites.contains_key(path))
                .collect();
            let parts: Vec<(&Tensor, &Tensor, f64)> = present
                .iter()
                .map(|&i| {
                    let site = &adapters[i].sites[path];
                    (&site.a, &site.b, adapters[i].scale_for(path))
                })
                .collect();
            let weights: Vec<Vec<f64>> = weights_per_image
                .iter()
                .map(|row| present.iter().map(|&i| row[i]).collect())
                .collect();
            adaptation.insert(path.clone(), FactoredSite::stack(&parts, &weights)?);
        }
        Ok(adaptation)
    }
}

/// Shorthand for [`Adaptation::from_adapters`].
pub fn adaptation_for(adapters: &[&Adapter], weights_per_image: &[Vec<f64>]) -> Result<Adaptation> {
    Adaptation::from_adapters(adapters, weights_per_image)
}

/// The exact mixed update `delta W = sum_i w_i s_i B_i A_i` of every site any
/// adapter touches, shaped like the base weights (`[out, in]` or
/// `[out, in, k, k]`, f32).
pub fn delta_weights(adapters: &[&Adapter], weights: &[f64]) -> Result<BTreeMap<String, Tensor>> {
    check_weights(weights, adapters.len())?;
    // One matmul per site: the stacked factors `B_cat diag(w_i s_i) A_cat`
    // (the factored form's shared-mixture delta) instead of one per adapter.
    let adaptation = Adaptation::from_adapters(adapters, &[weights.to_vec()])?;
    let mut out = BTreeMap::new();
    for path in adaptation.paths() {
        if let Some(site) = adaptation.get(path) {
            out.insert(path.to_string(), site.delta_weight(0)?);
        }
    }
    Ok(out)
}

/// A layer whose base weight a merge can change.
pub trait MergeTarget {
    /// Module path of the site.
    fn site_path(&self) -> &str;
    /// Current weight.
    fn current_weight(&self) -> &Tensor;
    /// Replaces the weight.
    fn replace_weight(&mut self, weight: Tensor) -> candle_core::Result<()>;
}

impl MergeTarget for AdaptedLinear {
    fn site_path(&self) -> &str {
        self.path()
    }
    fn current_weight(&self) -> &Tensor {
        self.weight()
    }
    fn replace_weight(&mut self, weight: Tensor) -> candle_core::Result<()> {
        self.set_weight(weight)
    }
}

impl MergeTarget for AdaptedConv2d {
    fn site_path(&self) -> &str {
        self.path()
    }
    fn current_weight(&self) -> &Tensor {
        self.weight()
    }
    fn replace_weight(&mut self, weight: Tensor) -> candle_core::Result<()> {
        self.set_weight(weight)
    }
}

/// Adds the delta of its site from `deltas` (see [`delta_weights`]) to the
/// layer's weight, in the weight's dtype and device. Returns whether the
/// layer had an entry. A delta of the wrong shape is an error.
pub fn merge_into<L: MergeTarget>(
    layer: &mut L,
    deltas: &BTreeMap<String, Tensor>,
) -> Result<bool> {
    let Some(delta) = deltas.get(layer.site_path()) else {
        return Ok(false);
    };
    let weight = layer.current_weight();
    if delta.dims() != weight.dims() {
        return Err(AdapterError::InvalidArgument(format!(
            "site {}: delta {:?} does not match weight {:?}",
            layer.site_path(),
            delta.dims(),
            weight.dims()
        )));
    }
    let delta = delta.to_device(weight.device())?.to_dtype(weight.dtype())?;
    let merged = (weight + delta)?;
    layer.replace_weight(merged)?;
    Ok(true)
}

/// Checks that every adapter fits a model with sites `model_sites` (each
/// site exists, with the kind and shape of the model's layer).
pub fn check_adapters_fit(adapters: &[&Adapter], model_sites: &[SiteInfo]) -> Result<()> {
    adapters.iter().try_for_each(|a| a.check_fits(model_sites))
}
