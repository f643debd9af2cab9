//! An adapter in memory: its config and the LoRA factors of each site.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::config::LoraConfig;
use crate::error::{AdapterError, Result};
use crate::site::{SiteInfo, SiteKind};

/// The largest entry an adapter's update `delta W` may have. LoRA updates are
/// small corrections (typically below 1); this bound only keeps the sums of
/// several adapters far from f32 overflow.
pub const MAX_DELTA: f64 = 1e6;

/// The LoRA factors of one site, as `f32` tensors on the CPU.
///
/// - Linear: `a` `[r, in]`, `b` `[out, r]`,
/// - Conv2d: `a` `[r, in, k, k]`, `b` `[out, r, 1, 1]`.
///
/// The update of the site is `delta W = scale * B A` with the scale of the
/// adapter's config ([`Adapter::scale_for`]).
#[derive(Clone, Debug)]
pub struct LoraSite {
    /// Down projection `A`.
    pub a: Tensor,
    /// Up projection `B`.
    pub b: Tensor,
}

/// Shape facts of a site, checked to chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SiteShape {
    /// Rank `r` (rows of `A`).
    pub rank: usize,
    /// Input features or channels.
    pub in_features: usize,
    /// Output features or channels.
    pub out_features: usize,
    /// Kernel size for a Conv2d site, `None` for Linear.
    pub kernel_size: Option<usize>,
}

impl SiteShape {
    /// Checks that `A` and `B` shapes (PEFT layout) chain, and returns the facts.
    pub fn from_shapes(a: &[usize], b: &[usize]) -> std::result::Result<Self, String> {
        match (a, b) {
            (&[r, i], &[o, rb]) => {
                if r != rb {
                    return Err(format!(
                        "lora_A {a:?} and lora_B {b:?} do not chain: A has {r} rows, B {rb} columns"
                    ));
                }
                Ok(Self {
                    rank: r,
                    in_features: i,
                    out_features: o,
                    kernel_size: None,
                })
            }
            (&[r, i, k, k2], &[o, rb, 1, 1]) => {
                if r != rb {
                    return Err(format!(
                        "lora_A {a:?} and lora_B {b:?} do not chain: A has {r} rows, B {rb} columns"
                    ));
                }
                if k != k2 {
                    return Err(format!("lora_A {a:?} has a non-square kernel"));
                }
                Ok(Self {
                    rank: r,
                    in_features: i,
                    out_features: o,
                    kernel_size: Some(k),
                })
            }
            _ => Err(format!(
                "lora_A {a:?} and lora_B {b:?} are neither Linear ([r, in], [out, r]) nor Conv2d ([r, in, k, k], [out, r, 1, 1])"
            )),
        }
    }

    /// Number of LoRA parameters of the site (`A` and `B`).
    pub fn parameter_count(&self) -> usize {
        let k2 = self.kernel_size.map_or(1, |k| k * k);
        self.rank * (self.in_features * k2 + self.out_features)
    }
}

impl LoraSite {
    /// Shape facts of the site (fails if the factors do not chain).
    pub fn shape(&self) -> std::result::Result<SiteShape, String> {
        SiteShape::from_shapes(self.a.dims(), self.b.dims())
    }

    /// Rank `r` (rows of `A`).
    pub fn rank(&self) -> usize {
        self.a.dims().first().copied().unwrap_or(0)
    }

    /// `scale * B A` shaped like the base weight: `[out, in]` or `[out, in, k, k]`.
    pub fn delta_weight(&self, scale: f64) -> Result<Tensor> {
        let rank = self.rank();
        let out = self.b.dim(0)?;
        let a2 = self.a.reshape((rank, ()))?;
        let b2 = self.b.reshape((out, rank))?;
        let delta = (b2.matmul(&a2)? * scale)?;
        let mut shape = self.a.dims().to_vec();
        shape[0] = out;
        Ok(delta.reshape(shape)?)
    }
}

/// A LoRA adapter: a config and the factors of each site, keyed by PEFT
/// module path (e.g. `vision_model.encoder.layers.0.mlp.fc1`).
#[derive(Clone, Debug)]
pub struct Adapter {
    /// Name (the library folder name, or the merged adapter's name).
    pub name: String,
    /// PEFT config.
    pub config: LoraConfig,
    /// Factors of each site, by module path.
    pub sites: BTreeMap<String, LoraSite>,
}

impl Adapter {
    /// Scaling of the site at `path` (`alpha / r` or `alpha / sqrt(r)`, with
    /// `rank_pattern` / `alpha_pattern` applied).
    pub fn scale_for(&self, path: &str) -> f64 {
        self.config.scale_for(path)
    }

    /// Total number of LoRA parameters.
    pub fn parameter_count(&self) -> usize {
        self.sites
            .values()
            .map(|s| s.a.elem_count() + s.b.elem_count())
            .sum()
    }

    /// Checks every site: float factors whose shapes chain, a rank equal to the
    /// config's rank for that module, finite values. `source` names the file
    /// the adapter came from in errors.
    pub fn validate(&self, source: &Path) -> Result<()> {
        if self.sites.is_empty() {
            return Err(AdapterError::invalid(
                source,
                "the adapter has no LoRA site",
            ));
        }
        for (path, site) in &self.sites {
            let shape = site
                .shape()
                .map_err(|msg| AdapterError::invalid(source, format!("site {path}: {msg}")))?;
            let (r, _) = self.config.rank_and_alpha(path);
            if shape.rank != r {
                return Err(AdapterError::invalid(
                    source,
                    format!(
                        "site {path}: factors have rank {} but the config gives r = {r} for this module",
                        shape.rank
                    ),
                ));
            }
            let mut largest = [0f64; 2];
            for (i, (which, t)) in [("lora_A", &site.a), ("lora_B", &site.b)]
                .into_iter()
                .enumerate()
            {
                if t.dtype() != DType::F32 {
                    return Err(AdapterError::invalid(
                        source,
                        format!("site {path}: {which} is {:?}, expected f32", t.dtype()),
                    ));
                }
                let values = t.flatten_all()?.to_vec1::<f32>()?;
                let bad = values.iter().filter(|x| !x.is_finite()).count();
                if bad > 0 {
                    return Err(AdapterError::invalid(
                        source,
                        format!("site {path}: {which} has {bad} NaN or infinite values"),
                    ));
                }
                largest[i] = values.iter().fold(0f64, |m, v| m.max(f64::from(v.abs())));
            }
            // |delta W_ij| <= scale * r * max|A| * max|B|: finite factors can still
            // overflow f32 once multiplied and summed over adapters.
            let bound = self.config.scale_for(path).abs() * r as f64 * largest[0] * largest[1];
            // NaN (inf x 0) is out of range too.
            if bound.is_nan() || bound > MAX_DELTA {
                return Err(AdapterError::invalid(
                    source,
                    format!(
                        "site {path}: the update can reach {bound:.3e} (scale {:.3e} x rank {r} x max|A| {:.3e} x max|B| {:.3e}), \
                         more than {MAX_DELTA:.0e}: the factors or lora_alpha are out of range",
                        self.config.scale_for(path),
                        largest[0],
                        largest[1]
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Checks that the adapter fits a model whose sites are `model_sites`:
    /// every adapted module exists in the model with the same kind and shape.
    pub fn check_fits(&self, model_sites: &[SiteInfo]) -> Result<()> {
        for (path, site) in &self.sites {
            let mismatch = |message: String| AdapterError::Mismatch {
                adapter: self.name.clone(),
                message,
            };
            let Some(info) = model_sites.iter().find(|s| &s.path == path) else {
                let mut known: Vec<&str> = model_sites.iter().map(|s| s.path.as_str()).collect();
                known.truncate(8);
                return Err(mismatch(format!(
                    "site {path} does not exist in the model (model sites include: {}{})",
                    known.join(", "),
                    if model_sites.len() > 8 { ", ..." } else { "" }
                )));
            };
            let shape = site
                .shape()
                .map_err(|m| mismatch(format!("site {path}: {m}")))?;
            let expected_kernel = match info.kind {
                SiteKind::Linear => None,
                SiteKind::Conv2d(g) => Some(g.kernel_size),
            };
            if shape.in_features != info.in_features
                || shape.out_features != info.out_features
                || shape.kernel_size != expected_kernel
            {
                return Err(mismatch(format!(
                    "site {path}: factors lora_A {:?} / lora_B {:?} do not fit the model's {:?} layer with {} inputs and {} outputs",
                    site.a.dims(),
                    site.b.dims(),
                    info.kind,
                    info.in_features,
                    info.out_features
                )));
            }
        }
        Ok(())
    }

    /// Builds an adapter from host data: `sites` maps a module path to
    /// `(A data, A shape, B data, B shape)`. Used by fusion and tests.
    pub fn from_host(
        name: impl Into<String>,
        config: LoraConfig,
        sites: impl IntoIterator<Item = (String, (Vec<f32>, Vec<usize>, Vec<f32>, Vec<usize>))>,
    ) -> Result<Self> {
        let mut out = BTreeMap::new();
        for (path, (a, a_shape, b, b_shape)) in sites {
            let a = Tensor::from_vec(a, a_shape, &Device::Cpu)?;
            let b = Tensor::from_vec(b, b_shape, &Device::Cpu)?;
            out.insert(path, LoraSite { a, b });
        }
        Ok(Self {
            name: name.into(),
            config,
            sites: out,
        })
    }

    /// A random rank-`rank` adapter on `sites` (Linear and Conv2d), `alpha = 2 r`,
    /// factors uniform in `[-0.05, 0.05)` from a SplitMix64 seeded with `seed`:
    /// for benchmarks and tests that need adapters of a model's shape.
    pub fn random(
        name: impl Into<String>,
        sites: &[crate::site::SiteInfo],
        rank: usize,
        seed: u64,
    ) -> Result<Self> {
        let mut rng = semla_core::SplitMix64::new(seed);
        let mut parts = Vec::new();
        for site in sites {
            let (a_shape, b_shape) = match site.kind {
                crate::site::SiteKind::Linear => {
                    (vec![rank, site.in_features], vec![site.out_features, rank])
                }
                crate::site::SiteKind::Conv2d(geometry) => (
                    vec![
                        rank,
                        site.in_features,
                        geometry.kernel_size,
                        geometry.kernel_size,
                    ],
                    vec![site.out_features, rank, 1, 1],
                ),
            };
            let a = rng.signed_values(a_shape.iter().product(), 0.05);
            let b = rng.signed_values(b_shape.iter().product(), 0.05);
            parts.push((site.path.clone(), (a, a_shape, b, b_shape)));
        }
        Self::from_host(name, LoraConfig::new(rank, 2.0 * rank as f64), parts)
    }
}
