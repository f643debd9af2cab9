//! A LoRA adapter being trained on a frozen base segmenter.
//!
//! Every targeted site gets `A` (Kaiming-uniform with `a = sqrt(5)`, as
//! `nn.Linear`/`nn.Conv2d` and PEFT initialise it) and `B` (zeros) as
//! variables; the forward pass adds `scale * B A x` through the site's
//! [`FactoredSite`] with `coeff = [1, r]` filled with the scale. The base
//! model's weights stay plain tensors and never enter the optimizer.

use candle_core::{DType, Device, Tensor, Var};
use semla_adapters::{
    Adaptation, Adapter, FactoredSite, LoraConfig, LoraSite, SiteInfo, SiteKind, TargetModules,
};

use crate::error::{Result, TrainError};
use semla_core::SplitMix64;

/// LoRA hyper-parameters (PEFT's `LoraConfig` fields of the same meaning).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraSettings {
    /// Rank `r`. Default 8.
    pub rank: usize,
    /// `lora_alpha`. Default 16.
    pub alpha: f64,
    /// Target module patterns (PEFT semantics: a site matches a pattern when
    /// its path equals it or ends with `.<pattern>`). Empty: every site.
    pub targets: Vec<String>,
    /// Scale `alpha / sqrt(r)` instead of `alpha / r`. Default false.
    pub use_rslora: bool,
}

impl Default for LoraSettings {
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            targets: Vec::new(),
            use_rslora: false,
        }
    }
}

impl LoraSettings {
    /// The LoRA scaling factor.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }
}

/// Whether the module at `path` is targeted by `patterns` (PEFT's list form:
/// exact name or `.`-separated suffix). An empty list targets everything.
pub fn is_targeted(path: &str, patterns: &[String]) -> bool {
    patterns.is_empty()
        || patterns.iter().any(|p| {
            path == p
                || (path.len() > p.len()
                    && path.ends_with(p.as_str())
                    && path.as_bytes()[path.len() - p.len() - 1] == b'.')
        })
}

/// The trainable factors of one site.
#[derive(Clone, Debug)]
pub struct LoraSiteVars {
    /// The site.
    pub site: SiteInfo,
    /// `A`: `[r, in]` or `[r, in, k, k]`.
    pub a: Var,
    /// `B`: `[out, r]` or `[out, r, 1, 1]`.
    pub b: Var,
}

/// A LoRA adapter under training.
#[derive(Clone, Debug)]
pub struct LoraTrainee {
    settings: LoraSettings,
    sites: Vec<LoraSiteVars>,
    adaptation: Adaptation,
}

/// PEFT key of a factor: `base_model.model.<path>.lora_A.weight`.
pub fn peft_key(path: &str, factor: &str) -> String {
    format!("base_model.model.{path}.lora_{factor}.weight")
}

impl LoraTrainee {
    /// Fresh factors for every site of `sites` that `settings.targets`
    /// selects. `seed` drives the initialisation of `A`.
    pub fn new(
        sites: &[SiteInfo],
        settings: &LoraSettings,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        if settings.rank == 0 {
            return Err(TrainError::Config("LoRA rank must be at least 1".into()));
        }
        let chosen: Vec<&SiteInfo> = sites
            .iter()
            .filter(|s| is_targeted(&s.path, &settings.targets))
            .collect();
        if chosen.is_empty() {
            let available: Vec<&str> = sites.iter().map(|s| s.path.as_str()).collect();
            return Err(TrainError::Config(format!(
                "no adapter site matches the targets {:?}; the model's sites are {available:?}",
                settings.targets
            )));
        }
        let r = settings.rank;
        // A rank above min(in, out) adds parameters and no expressiveness (the
        // update's rank is at most that), and a mistyped huge one would allocate
        // without bound.
        for site in &chosen {
            let fan_in = match site.kind {
                SiteKind::Linear => site.in_features,
                SiteKind::Conv2d(g) => site.in_features * g.kernel_size * g.kernel_size,
            };
            let max = fan_in.min(site.out_features);
            if r > max {
                return Err(TrainError::Config(format!(
                    "LoRA rank {r} is more than site {} can use: at most min({fan_in} inputs, {} outputs) = {max}",
                    site.path, site.out_features
                )));
            }
        }
        let coeff = Tensor::full(settings.scale() as f32, (1, r), device)?;
        let mut out = Vec::with_capacity(chosen.len());
        let mut adaptation = Adaptation::none();
        for (index, site) in chosen.into_iter().enumerate() {
            let (a_shape, b_shape, fan_in) = match site.kind {
                SiteKind::Linear => (
                    vec![r, site.in_features],
                    vec![site.out_features, r],
                    site.in_features,
                ),
                SiteKind::Conv2d(g) => (
                    vec![r, site.in_features, g.kernel_size, g.kernel_size],
                    vec![site.out_features, r, 1, 1],
                    site.in_features * g.kernel_size * g.kernel_size,
                ),
            };
            // kaiming_uniform_(a = sqrt(5)): bound = sqrt(6 / ((1 + a^2) fan_in)) = 1 / sqrt(fan_in).
            let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
            let mut rng = SplitMix64::for_step(seed, index as u64, 0x10EA);
            let count: usize = a_shape.iter().product();
            let values: Vec<f32> = (0..count)
                .map(|_| rng.uniform(-bound, bound) as f32)
                .collect();
            let a = Var::from_tensor(&Tensor::from_vec(values, a_shape, device)?)?;
            let b = Var::zeros(b_shape, DType::F32, device)?;
            adaptation.insert(
                site.path.clone(),
                FactoredSite {
                    a: a.as_tensor().clone(),
                    b: b.as_tensor().clone(),
                    coeff: coeff.clone(),
                },
            );
            out.push(LoraSiteVars {
                site: site.clone(),
                a,
                b,
            });
        }
        Ok(Self {
            settings: settings.clone(),
            sites: out,
            adaptation,
        })
    }

    /// The settings.
    pub fn settings(&self) -> &LoraSettings {
        &self.settings
    }

    /// The adapted sites and their factors.
    pub fn sites(&self) -> &[LoraSiteVars] {
        &self.sites
    }

    /// The adaptation to pass to the segmenter's forward. Its factors are the
    /// variables themselves, so it follows every optimizer update.
    pub fn adaptation(&self) -> &Adaptation {
        &self.adaptation
    }

    /// The trainable tensors under their PEFT keys.
    pub fn params(&self) -> Vec<(String, Var)> {
        let mut out = Vec::with_capacity(2 * self.sites.len());
        for s in &self.sites {
            out.push((peft_key(&s.site.path, "A"), s.a.clone()));
            out.push((peft_key(&s.site.path, "B"), s.b.clone()));
        }
        out
    }

    /// The trained adapter in PEFT form (config with `r`, `lora_alpha`,
    /// `use_rslora` and `target_modules`), named `name`.
    pub fn to_adapter(&self, name: &str) -> Result<Adapter> {
        let mut config = LoraConfig::new(self.settings.rank, self.settings.alpha);
        config.use_rslora = self.settings.use_rslora;
        let targets = if self.settings.targets.is_empty() {
            self.sites.iter().map(|s| s.site.path.clone()).collect()
        } else {
            self.settings.targets.clone()
        };
        config.target_modules = Some(TargetModules::List(targets));
        let mut sites = std::collections::BTreeMap::new();
        for s in &self.sites {
            let a =
                s.a.as_tensor()
                    .detach()
                    .to_device(&Device::Cpu)?
                    .contiguous()?;
            let b =
                s.b.as_tensor()
                    .detach()
                    .to_device(&Device::Cpu)?
                    .contiguous()?;
            sites.insert(s.site.path.clone(), LoraSite { a, b });
        }
        Ok(Adapter {
            name: name.to_string(),
            config,
            sites,
        })
    }

    /// The current factors as plain tensors `(path, A, B)`.
    pub fn factors(&self) -> Vec<(String, Tensor, Tensor)> {
        self.sites
            .iter()
            .map(|s| {
                (
                    s.site.path.clone(),
                    s.a.as_tensor().detach(),
                    s.b.as_tensor().detach(),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use semla_adapters::site::Conv2dGeometry;

    #[test]
    fn peft_target_matching() {
        let t = vec!["fc1".to_string(), "q_proj".to_string()];
        assert!(is_targeted("encoder.layers.0.mlp.fc1", &t));
        assert!(is_targeted("fc1", &t));
        assert!(!is_targeted("encoder.layers.0.mlp.xfc1", &t));
        assert!(!is_targeted("encoder.fc2", &t));
        assert!(is_targeted("anything", &[]));
    }

    #[test]
    fn init_follows_peft() {
        let sites = vec![SiteInfo {
            path: "head".into(),
            kind: SiteKind::Conv2d(Conv2dGeometry {
                kernel_size: 1,
                stride: 1,
                padding: 0,
                dilation: 1,
            }),
            in_features: 64,
            out_features: 5,
        }];
        let settings = LoraSettings {
            rank: 4,
            alpha: 8.0,
            ..Default::default()
        };
        let lora = LoraTrainee::new(&sites, &settings, 3, &Device::Cpu).unwrap();
        let a: Vec<f32> = lora.sites()[0]
            .a
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f32> = lora.sites()[0]
            .b
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(lora.sites()[0].a.dims(), &[4, 64, 1, 1]);
        assert_eq!(lora.sites()[0].b.dims(), &[5, 4, 1, 1]);
        assert!(b.iter().all(|&v| v == 0.0));
        let bound = 1.0 / 8.0;
        assert!(a.iter().all(|v| v.abs() <= bound));
        // Uniform on [-1/8, 1/8]: the mean absolute value is about 1/16.
        let mean_abs = a.iter().map(|v| v.abs()).sum::<f32>() / a.len() as f32;
        assert!((mean_abs - 0.0625).abs() < 0.01, "{mean_abs}");
        let coeff: Vec<Vec<f32>> = lora
            .adaptation()
            .get("head")
            .unwrap()
            .coeff
            .to_vec2()
            .unwrap();
        assert_eq!(coeff, vec![vec![2.0f32; 4]]);
    }

    #[test]
    fn ranks_beyond_the_smaller_side_of_a_site_are_refused() {
        let sites = vec![SiteInfo {
            path: "head".into(),
            kind: SiteKind::Linear,
            in_features: 16,
            out_features: 4,
        }];
        let with_rank = |rank| LoraSettings {
            rank,
            ..Default::default()
        };
        assert!(LoraTrainee::new(&sites, &with_rank(4), 0, &Device::Cpu).is_ok());
        let err = LoraTrainee::new(&sites, &with_rank(5), 0, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("rank 5") && err.contains("head"), "{err}");
    }
}
