//! Weighted fusion of adapters into one adapter, as PEFT's
//! `add_weighted_adapter` does it (with `s_i` the scaling of adapter `i` at
//! the site and `w_i` its weight):
//!
//! - [`Combination::Cat`] (exact): `A = vstack(w_i s_i A_i)`, `B = hstack(B_i)`,
//!   so `delta W = sum_i w_i s_i B_i A_i`. The merged rank is `sum_i r_i` and
//!   `alpha = r` (scaling 1).
//! - [`Combination::Linear`] (PEFT's "linear", equal ranks only):
//!   `A = sum_i sqrt(w_i s_i) A_i`, `B = sum_i sqrt(w_i s_i) B_i`. This is
//!   **not** a weighted sum of the adapters: `B A` has cross terms
//!   `sqrt(w_i s_i w_j s_j) B_i A_j`. It needs `w_i s_i >= 0`.
//! - [`Combination::Svd`]: the truncated SVD, to rank `k` (default `max r_i`),
//!   of the exact sum `sum_i w_i s_i B_i A_i`; `B = U diag(S)`, `A = Vh` as
//!   PEFT stores them. Computed from the factors (QR of the stacked factors,
//!   SVD of the small core), never from the dense delta.
//!
//! Differences from PEFT 0.13.2, on purpose:
//! - PEFT's "svd" multiplies `get_delta_weight(adapter)`, which already
//!   includes `s_i`, by `w_i s_i` again: it truncates `sum_i w_i s_i^2 B_i A_i`.
//!   That is only the weighted sum when every `s_i = 1`. semla truncates the
//!   exact sum (the fixture test shows both facts). PEFT's optional
//!   `svd_clamp` (quantile clamping) is not implemented (its default is off).
//! - PEFT copies the first adapter's config into the merged one, including
//!   `use_rslora`, `rank_pattern` and `alpha_pattern`, which changes the
//!   merged scaling when the first adapter uses them. semla writes
//!   `use_rslora = false` and a `rank_pattern` / `alpha_pattern` entry (equal
//!   values, scaling 1) for every site whose merged rank differs from `r`.
//! - PEFT turns a one-adapter "cat" into "linear"; semla keeps "cat" exact
//!   (so a negative single weight works).
//!
//! A site missing from some adapters is merged from the adapters that have it.

// Index loops read better than iterator chains in this matrix code.
#![allow(clippy::needless_range_loop)]

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};

use crate::adapter::{Adapter, LoraSite};
use crate::config::{LoraConfig, TargetModules};
use crate::error::{AdapterError, Result};
use crate::linalg::{Matrix, low_rank_svd};

/// How to combine adapters (see the module docs); PEFT's `combination_type`.
/// Only the types semla fuses exactly or documents are accepted (PEFT's
/// `ties`, `dare_*` and `magnitude_prune*` are rejected).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Combination {
    /// Exact: stacked factors, rank `sum r_i` (SemLA's choice).
    #[default]
    Cat,
    /// PEFT's "linear": factors mixed separately (equal ranks, not exact).
    Linear,
    /// Truncated SVD of the exact sum.
    Svd,
}

impl std::str::FromStr for Combination {
    type Err = AdapterError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cat" => Ok(Self::Cat),
            "linear" => Ok(Self::Linear),
            "svd" => Ok(Self::Svd),
            other => Err(AdapterError::InvalidArgument(format!(
                "unknown combination {other:?}: expected cat, linear or svd"
            ))),
        }
    }
}

impl std::fmt::Display for Combination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Cat => "cat",
            Self::Linear => "linear",
            Self::Svd => "svd",
        })
    }
}

/// Checks a weight list against a number of adapters: same length, not
/// empty, every weight finite.
pub fn check_weights(weights: &[f64], adapters: usize) -> Result<()> {
    if weights.is_empty() || adapters == 0 {
        return Err(AdapterError::InvalidArgument(
            "the list of adapters and weights is empty".into(),
        ));
    }
    if weights.len() != adapters {
        return Err(AdapterError::InvalidArgument(format!(
            "{} weights given for {} adapters",
            weights.len(),
            adapters
        )));
    }
    if let Some((i, w)) = weights.iter().enumerate().find(|(_, w)| !w.is_finite()) {
        return Err(AdapterError::InvalidArgument(format!(
            "weight {i} is not finite: {w}"
        )));
    }
    Ok(())
}

/// One adapter's factors at one site, on the host in `f64`.
struct Part {
    /// `[r, in * k * k]`
    a: Matrix,
    /// `[out, r]`
    b: Matrix,
    /// `w_i * s_i`
    coeff: f64,
    /// Shape of `A` as stored (`[r, in]` or `[r, in, k, k]`).
    a_dims: Vec<usize>,
}

fn to_matrix(t: &Tensor, rows: usize) -> Result<Matrix> {
    let data: Vec<f64> = t
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(f64::from)
        .collect();
    let cols = data.len().checked_div(rows).unwrap_or(0);
    Ok(Matrix::from_rows(rows, cols, data))
}

fn to_tensor(m: &Matrix, shape: Vec<usize>) -> Result<Tensor> {
    let data: Vec<f32> = m.data.iter().map(|&x| x as f32).collect();
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
}

/// Merges `adapters` with `weights` into one adapter named `"merged"` (set
/// `name` afterwards as needed). `svd_rank` is only used by
/// [`Combination::Svd`] (default: the largest configured `r`).
pub fn merge(
    adapters: &[&Adapter],
    weights: &[f64],
    combination: Combination,
    svd_rank: Option<usize>,
) -> Result<Adapter> {
    check_weights(weights, adapters.len())?;
    let mut paths: Vec<&String> = adapters.iter().flat_map(|a| a.sites.keys()).collect();
    paths.sort();
    paths.dedup();
    let svd_rank =
        svd_rank.unwrap_or_else(|| adapters.iter().map(|a| a.config.r).max().unwrap_or(1));
    if svd_rank == 0 {
        return Err(AdapterError::InvalidArgument(
            "svd rank must be at least 1".into(),
        ));
    }
    let mut sites = BTreeMap::new();
    for path in paths {
        let mut parts = Vec::new();
        for (adapter, &w) in adapters.iter().zip(weights) {
            let Some(site) = adapter.sites.get(path) else {
                continue;
            };
            let shape = site.shape().map_err(|m| AdapterError::Mismatch {
                adapter: adapter.name.clone(),
                message: format!("site {path}: {m}"),
            })?;
            parts.push((
                adapter.name.as_str(),
                shape,
                Part {
                    a: to_matrix(&site.a, shape.rank)?,
                    b: to_matrix(&site.b, shape.out_features)?,
                    coeff: w * adapter.scale_for(path),
                    a_dims: site.a.dims().to_vec(),
                },
            ));
        }
        let (first_name, first_shape, _) = &parts[0];
        for (name, shape, _) in &parts[1..] {
            if (shape.in_features, shape.out_features, shape.kernel_size)
                != (
                    first_shape.in_features,
                    first_shape.out_features,
                    first_shape.kernel_size,
                )
            {
                return Err(AdapterError::InvalidArgument(format!(
                    "site {path}: adapters {first_name} and {name} have different layer shapes"
                )));
            }
        }
        let parts: Vec<Part> = parts.into_iter().map(|(_, _, p)| p).collect();
        let site = match combination {
            Combination::Cat => merge_cat(&parts)?,
            Combination::Linear => merge_linear(&parts, path, adapters)?,
            Combination::Svd => merge_svd(&parts, svd_rank)?,
        };
        sites.insert(path.clone(), site);
    }
    let config = merged_config(adapters, &sites, combination, svd_rank)?;
    Ok(Adapter {
        name: "merged".into(),
        config,
        sites,
    })
}

fn merge_cat(parts: &[Part]) -> Result<LoraSite> {
    let rank: usize = parts.iter().map(|p| p.a.rows).sum();
    let (in_dim, out) = (parts[0].a.cols, parts[0].b.rows);
    let mut a = Matrix::zeros(rank, in_dim);
    let mut b = Matrix::zeros(out, rank);
    let mut offset = 0;
    for p in parts {
        for i in 0..p.a.rows {
            for j in 0..in_dim {
                *a.at_mut(offset + i, j) = p.coeff * p.a.at(i, j);
            }
            for o in 0..out {
                *b.at_mut(o, offset + i) = p.b.at(o, i);
            }
        }
        offset += p.a.rows;
    }
    build_site(&a, &b, &parts[0].a_dims)
}

fn merge_linear(parts: &[Part], path: &str, adapters: &[&Adapter]) -> Result<LoraSite> {
    let rank = parts[0].a.rows;
    if parts.iter().any(|p| p.a.rows != rank) {
        let ranks: Vec<String> = adapters
            .iter()
            .filter_map(|a| {
                a.sites
                    .get(path)
                    .map(|s| format!("{}: {}", a.name, s.rank()))
            })
            .collect();
        return Err(AdapterError::InvalidArgument(format!(
            "linear combination needs equal ranks, site {path} has ranks {}",
            ranks.join(", ")
        )));
    }
    let mut a = Matrix::zeros(rank, parts[0].a.cols);
    let mut b = Matrix::zeros(parts[0].b.rows, rank);
    for p in parts {
        if p.coeff < 0.0 {
            return Err(AdapterError::InvalidArgument(format!(
                "linear combination takes sqrt(weight * scale), which is negative ({}) at site {path}; use cat or svd",
                p.coeff
            )));
        }
        let f = p.coeff.sqrt();
        for (x, y) in a.data.iter_mut().zip(&p.a.data) {
            *x += f * y;
        }
        for (x, y) in b.data.iter_mut().zip(&p.b.data) {
            *x += f * y;
        }
    }
    build_site(&a, &b, &parts[0].a_dims)
}

fn merge_svd(parts: &[Part], rank: usize) -> Result<LoraSite> {
    let total: usize = parts.iter().map(|p| p.a.rows).sum();
    let (in_dim, out) = (parts[0].a.cols, parts[0].b.rows);
    let mut acat = Matrix::zeros(total, in_dim);
    let mut bcat = Matrix::zeros(out, total);
    let mut coeff = Vec::with_capacity(total);
    let mut offset = 0;
    for p in parts {
        acat.data[offset * in_dim..(offset + p.a.rows) * in_dim].copy_from_slice(&p.a.data);
        for o in 0..out {
            for i in 0..p.a.rows {
                *bcat.at_mut(o, offset + i) = p.b.at(o, i);
            }
        }
        coeff.extend(std::iter::repeat_n(p.coeff, p.a.rows));
        offset += p.a.rows;
    }
    let (u, s, vt) = low_rank_svd(&bcat, &coeff, &acat);
    // Keep the first `rank` components; pad with zeros when the sum has fewer.
    let mut a = Matrix::zeros(rank, in_dim);
    let mut b = Matrix::zeros(out, rank);
    for k in 0..rank.min(s.len()) {
        for j in 0..in_dim {
            *a.at_mut(k, j) = vt.at(k, j);
        }
        for o in 0..out {
            *b.at_mut(o, k) = u.at(o, k) * s[k];
        }
    }
    build_site(&a, &b, &parts[0].a_dims)
}

/// Tensors in PEFT layout from `A` `[r, in*k*k]` and `B` `[out, r]`.
fn build_site(a: &Matrix, b: &Matrix, a_dims: &[usize]) -> Result<LoraSite> {
    let mut a_shape = a_dims.to_vec();
    a_shape[0] = a.rows;
    let b_shape = if a_dims.len() == 4 {
        vec![b.rows, b.cols, 1, 1]
    } else {
        vec![b.rows, b.cols]
    };
    Ok(LoraSite {
        a: to_tensor(a, a_shape)?,
        b: to_tensor(b, b_shape)?,
    })
}

/// The merged config: the first adapter's config (like PEFT) with `r = alpha`
/// = the merged rank, no rsLoRA, per-site patterns where ranks differ, and
/// the union of the target modules.
fn merged_config(
    adapters: &[&Adapter],
    sites: &BTreeMap<String, LoraSite>,
    combination: Combination,
    svd_rank: usize,
) -> Result<LoraConfig> {
    let global_rank = match combination {
        Combination::Cat => adapters.iter().map(|a| a.config.r).sum(),
        Combination::Linear => adapters[0].config.r,
        Combination::Svd => svd_rank,
    };
    let mut config = adapters[0].config.clone();
    config.r = global_rank;
    config.lora_alpha = global_rank as f64;
    config.use_rslora = false;
    config.rank_pattern.clear();
    config.alpha_pattern.clear();
    for (path, site) in sites {
        let r = site.rank();
        if r != global_rank {
            config.rank_pattern.push((path.clone(), r));
            config.alpha_pattern.push((path.clone(), r as f64));
        }
    }
    let all_lists: Option<Vec<&Vec<String>>> = adapters
        .iter()
        .map(|a| match &a.config.target_modules {
            Some(TargetModules::List(v)) => Some(v),
            _ => None,
        })
        .collect();
    config.target_modules = Some(TargetModules::List(match all_lists {
        Some(lists) => {
            let mut union: Vec<String> = Vec::new();
            for name in lists.into_iter().flatten() {
                if !union.contains(name) {
                    union.push(name.clone());
                }
            }
            union
        }
        // Regex or missing targets: name every merged site exactly.
        None => sites.keys().cloned().collect(),
    }));
    // The patterns must give every site scaling 1 (a key could also match a
    // longer path ending in it: refuse rather than write a wrong adapter).
    for (path, site) in sites {
        let (r, alpha) = config.rank_and_alpha(path);
        if r != site.rank() || alpha != r as f64 {
            return Err(AdapterError::InvalidArgument(format!(
                "cannot express the merged rank {} of site {path} in rank_pattern (got r = {r}, alpha = {alpha})",
                site.rank()
            )));
        }
    }
    Ok(config)
}
