//! SoMA (Singular value decomposed Minor components Adaptation): LoRA
//! factors initialised from the *smallest* singular triplets of each adapted
//! weight, trained on the frozen principal residual; plus the two adapter tools
//! that go with it, [`bake`] (merge an adapter into the base weights) and
//! [`extract`] (the best rank-`R` adapter of a fully fine-tuned model).
//!
//! # Initialisation
//!
//! For an adapted weight `W` (`[out, in]` for a Linear site; for a Conv2d site
//! the `[out, in, k, k]` kernel read as the matrix `[out, in*k*k]`, the same
//! flattening PEFT's Conv2d LoRA uses, so a 1x1 convolution is its `[out, in]`
//! matrix) with scale `s = alpha / r`, the exact thin SVD `W = U diag(sigma) V^T`
//! (f64: Householder QR, then one-sided Jacobi on the triangular factor) gives
//! the last `r` triplets (the minor components) and
//!
//! - `A0 = diag(sqrt(sigma_r / s)) V_r^T`: `[r, in]`, reshaped to `[r, in, k, k]` for a Conv2d;
//! - `B0 = U_r diag(sqrt(sigma_r / s))`: `[out, r]` (`[out, r, 1, 1]` for a Conv2d);
//! - the frozen residual `W_res = W - s B0 A0` (the principal part of `W`)
//!   replaces `W` in a copy of the model.
//!
//! So `W_res + s B0 A0 = W` and the model at step 0 is the base model. The
//! factors are trained; the residual, every other weight, and the adapted
//! layers' biases stay frozen (SoMA also trains those biases, `bias="all"`;
//! semla's LoRA trainee has no bias variables, so this is not done here).
//!
//! # Frozen blocks
//!
//! `freeze_blocks = N` puts no adapter on sites inside the first `N` blocks
//! ([`block_index`]): EfficientNet's `_blocks.K` with `K < N` (and any model
//! whose paths hold `blocks.K` / `layers.K`); for the tiny segmenter the blocks
//! are its stages in forward order, `stem` 0, `down1` 1, `down2` 2, `head` 3.
//! Sites outside every block (decoders, classifiers, `_conv_head`) are never
//! frozen by this option.
//!
//! # Storage that fuses
//!
//! A library holds adapters relative to the *original* base weights. A SoMA
//! adapter with trained `A`, `B` changes the base by
//! `delta W = s (B A - B0 A0)`, which is stored ([`SomaTrainee::to_adapter`])
//! as an exact standard LoRA of rank `2r`: `A' = [A; -A0]`, `B' = [B, B0]`,
//! with `r = 2r` and `lora_alpha = 2 r s` so that PEFT's scale `lora_alpha / r`
//! is `s` again. It loads in PEFT and fuses like any other LoRA.
//!
//! # Weight-decay annealing
//!
//! [`WeightDecayAnneal`] is mmengine's `CosineAnnealingParamScheduler` on the
//! weight decay, `lambda(t) = end + (start - end) (1 + cos(pi t / T)) / 2`
//! (default 0.05 to 1e-5 over the run). [`train_annealed`] (and
//! [`train_soma`]) run the shared trainer with AdamW's own decay off and apply
//! the decoupled decay `theta <- theta (1 - lr_t lambda_t)` right after each
//! optimizer step (the trainer has no per-step decay hook). PyTorch's AdamW
//! decays before adding the update `-lr_t m/(sqrt(v)+eps)`; the two orders
//! differ by `lr_t lambda_t` times that update (5e-5 of it at lr 1e-3 and
//! lambda 0.05), not by anything of the size of the decay itself.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use semla_adapters::linalg::{self, Matrix};
use semla_adapters::{Adapter, AdapterError, LoraConfig, LoraSite, SiteInfo, TargetModules};
use semla_models::{Segmenter, SegmenterConfig};

use crate::error::{Result, TrainError};
use crate::lora::{LoraSettings, LoraTrainee, is_targeted};
use crate::runs::adapter_trainee;
use crate::trainer::{
    CheckpointPaths, Progress, Session, TrainConfig, TrainSummary, Trainee, save_tensors_atomic,
    train,
};
use semla_data::SampleSource;

// ---------------------------------------------------------------------------
// Linear algebra
// ---------------------------------------------------------------------------

/// Thin SVD of a dense matrix `m` `[rows, cols]`: `U` `[rows, k]`, `sigma`
/// `[k]` descending, `V` `[cols, k]`, `k = min(rows, cols)`. A QR step first
/// reduces the tall side, so Jacobi runs on a `k x k` triangle.
pub fn thin_svd(m: &Matrix) -> (Matrix, Vec<f64>, Matrix) {
    if m.rows < m.cols {
        let (u, s, v) = thin_svd(&m.transpose());
        return (v, s, u);
    }
    let (q, r) = linalg::qr(m);
    let (ur, s, v) = linalg::svd(&r);
    (q.matmul(&ur), s, v)
}

/// A weight tensor as the matrix SoMA decomposes: `[out, in]` stays, a
/// `[out, in, k, k]` kernel becomes `[out, in*k*k]`.
pub fn weight_matrix(weight: &Tensor) -> Result<Matrix> {
    let dims = weight.dims().to_vec();
    if dims.len() != 2 && dims.len() != 4 {
        return Err(TrainError::Config(format!(
            "an adapted weight must be [out, in] or [out, in, k, k], got {dims:?}"
        )));
    }
    let rows = dims[0];
    let cols: usize = dims[1..].iter().product();
    let data: Vec<f64> = weight
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1()?;
    Ok(Matrix::from_rows(rows, cols, data))
}

fn matrix_to_tensor(m: &Matrix, shape: &[usize]) -> Result<Tensor> {
    let data: Vec<f32> = (0..m.rows)
        .flat_map(|i| (0..m.cols).map(move |j| (i, j)))
        .map(|(i, j)| m.at(i, j) as f32)
        .collect();
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
}

/// Shapes of the LoRA factors of a site whose weight has shape `dims`, at rank `r`.
fn factor_shapes(dims: &[usize], r: usize) -> (Vec<usize>, Vec<usize>) {
    let mut a_shape = dims.to_vec();
    a_shape[0] = r;
    let b_shape = if dims.len() == 4 {
        vec![dims[0], r, 1, 1]
    } else {
        vec![dims[0], r]
    };
    (a_shape, b_shape)
}

/// The SoMA split of one weight (all tensors f32 on the CPU).
#[derive(Clone, Debug)]
pub struct MinorComponents {
    /// Every singular value of the weight matrix, descending (`[k]`, f64).
    pub singular_values: Vec<f64>,
    /// `A0 = diag(sqrt(sigma_r / s)) V_r^T`: `[r, in]` or `[r, in, k, k]`.
    pub a0: Tensor,
    /// `B0 = U_r diag(sqrt(sigma_r / s))`: `[out, r]` or `[out, r, 1, 1]`.
    pub b0: Tensor,
    /// `W - s B0 A0` (computed in f64), shaped like the weight.
    pub residual: Tensor,
}

/// Splits `weight` (`[out, in]` or `[out, in, k, k]`) into its `rank`
/// smallest singular triplets, as LoRA factors of scale `scale`, and the
/// principal residual.
pub fn minor_components(weight: &Tensor, rank: usize, scale: f64) -> Result<MinorComponents> {
    let m = weight_matrix(weight)?;
    let k = m.rows.min(m.cols);
    if rank == 0 || rank > k {
        return Err(TrainError::Config(format!(
            "SoMA rank {rank} is not in 1..={k} for a weight of shape {:?}",
            weight.dims()
        )));
    }
    if !(scale.is_finite() && scale > 0.0) {
        return Err(TrainError::Config(format!(
            "SoMA needs a positive LoRA scale, got {scale}"
        )));
    }
    let (u, sigma, v) = thin_svd(&m);
    let mut a0 = Matrix::zeros(rank, m.cols);
    let mut b0 = Matrix::zeros(m.rows, rank);
    let mut residual = m.clone();
    for (j, index) in (k - rank..k).enumerate() {
        let root = (sigma[index] / scale).max(0.0).sqrt();
        for c in 0..m.cols {
            *a0.at_mut(j, c) = root * v.at(c, index);
        }
        for row in 0..m.rows {
            *b0.at_mut(row, j) = u.at(row, index) * root;
        }
        // s * B0[:, j] A0[j, :] = sigma u v^T, removed from W.
        for row in 0..m.rows {
            let left = sigma[index] * u.at(row, index);
            for c in 0..m.cols {
                *residual.at_mut(row, c) -= left * v.at(c, index);
            }
        }
    }
    let (a_shape, b_shape) = factor_shapes(weight.dims(), rank);
    Ok(MinorComponents {
        singular_values: sigma,
        a0: matrix_to_tensor(&a0, &a_shape)?,
        b0: matrix_to_tensor(&b0, &b_shape)?,
        residual: matrix_to_tensor(&residual, weight.dims())?,
    })
}

// ---------------------------------------------------------------------------
// Blocks
// ---------------------------------------------------------------------------

/// The block a site belongs to, for `freeze_blocks` (see the module docs):
/// the tiny segmenter's stages `stem`, `down1`, `down2`, `head` are blocks
/// 0..=3; any other model's block is the number after a `_blocks`, `blocks`
/// or `layers` path component. `None`: the site is outside every block.
pub fn block_index(config: &SegmenterConfig, path: &str) -> Option<usize> {
    if let SegmenterConfig::Tiny(_) = config {
        return ["stem", "down1", "down2", "head"]
            .iter()
            .position(|stage| path == *stage || path.starts_with(&format!("{stage}.")));
    }
    let parts: Vec<&str> = path.split('.').collect();
    parts.windows(2).find_map(|w| {
        matches!(w[0], "_blocks" | "blocks" | "layers")
            .then(|| w[1].parse::<usize>().ok())
            .flatten()
    })
}

/// Whether `path` lies in one of the first `freeze_blocks` blocks.
pub fn in_frozen_blocks(config: &SegmenterConfig, path: &str, freeze_blocks: usize) -> bool {
    block_index(config, path).is_some_and(|b| b < freeze_blocks)
}

/// The sites of `model` that an adapter with `targets` covers once the first
/// `freeze_blocks` blocks are left alone.
pub fn adapted_sites(
    model: &dyn Segmenter,
    targets: &[String],
    freeze_blocks: usize,
) -> Vec<SiteInfo> {
    let config = model.config();
    model
        .sites()
        .into_iter()
        .filter(|s| is_targeted(&s.path, targets))
        .filter(|s| !in_frozen_blocks(&config, &s.path, freeze_blocks))
        .collect()
}

// ---------------------------------------------------------------------------
// Weight-decay annealing
// ---------------------------------------------------------------------------

/// Cosine annealing of the weight decay from `start` to `end` over
/// `total_steps` (mmengine's `CosineAnnealingParamScheduler`, `eta_min = end`).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WeightDecayAnneal {
    /// Decay at step 0. Default 0.05 (SoMA's AdamW decay).
    pub start: f64,
    /// Decay reached at `total_steps`. Default 1e-5.
    pub end: f64,
    /// Length `T` of the cosine (the run's steps).
    pub total_steps: usize,
}

impl WeightDecayAnneal {
    /// SoMA's schedule (0.05 to 1e-5) over `total_steps`.
    pub fn soma(total_steps: usize) -> Self {
        Self {
            start: 0.05,
            end: 1e-5,
            total_steps,
        }
    }

    /// `lambda(t) = end + (start - end) (1 + cos(pi t / T)) / 2`, `t` clamped to `T`.
    pub fn at(&self, step: usize) -> f64 {
        let t = step.min(self.total_steps) as f64 / self.total_steps.max(1) as f64;
        self.end + (self.start - self.end) * (1.0 + (std::f64::consts::PI * t).cos()) / 2.0
    }
}

// ---------------------------------------------------------------------------
// The trainee
// ---------------------------------------------------------------------------

/// SoMA hyper-parameters.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SomaSettings {
    /// Rank, alpha (scale `s = alpha / r`, or `alpha / sqrt(r)` with rsLoRA)
    /// and target patterns, as for plain LoRA.
    pub lora: LoraSettings,
    /// Leave the first `freeze_blocks` blocks without adapters. Default 0.
    pub freeze_blocks: usize,
}

/// The initial factors of one SoMA site.
#[derive(Clone, Debug)]
pub struct SomaInit {
    /// `A0`, f32 on the model's device.
    pub a0: Tensor,
    /// `B0`, f32 on the model's device.
    pub b0: Tensor,
    /// Every singular value of the original weight, descending.
    pub singular_values: Vec<f64>,
}

/// A SoMA adapter under training: a copy of the base model whose adapted
/// weights are the principal residuals, and LoRA variables starting at the
/// minor components.
pub struct SomaTrainee {
    model: Box<dyn Segmenter>,
    lora: LoraTrainee,
    init: BTreeMap<String, SomaInit>,
    scale: f64,
}

impl SomaTrainee {
    /// Decomposes every site of `base` that `settings` adapts and builds the
    /// residual model on `device`. `seed` only matters to [`LoraTrainee::new`]
    /// (its random `A` is overwritten by `A0`).
    pub fn new(
        base: &dyn Segmenter,
        settings: &SomaSettings,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let sites = adapted_sites(base, &settings.lora.targets, settings.freeze_blocks);
        if sites.is_empty() {
            let available: Vec<String> = base.sites().into_iter().map(|s| s.path).collect();
            return Err(TrainError::Config(format!(
                "no adapter site is left for SoMA with targets {:?} and {} frozen blocks; the model's sites are {available:?}",
                settings.lora.targets, settings.freeze_blocks
            )));
        }
        let scale = settings.lora.scale();
        let mut tensors: HashMap<String, Tensor> = base.named_tensors().into_iter().collect();
        let mut init = BTreeMap::new();
        for site in &sites {
            let key = format!("{}.weight", site.path);
            let Some(weight) = tensors.get(&key) else {
                return Err(TrainError::Config(format!(
                    "the model has a site {} but no tensor {key}",
                    site.path
                )));
            };
            let parts = minor_components(weight, settings.lora.rank, scale)
                .map_err(|e| TrainError::Config(format!("site {}: {e}", site.path)))?;
            let residual = parts.residual.to_device(device)?;
            tensors.insert(key, residual);
            init.insert(
                site.path.clone(),
                SomaInit {
                    a0: parts.a0.to_device(device)?,
                    b0: parts.b0.to_device(device)?,
                    singular_values: parts.singular_values,
                },
            );
        }
        let tensors = tensors
            .into_iter()
            .map(|(k, v)| Ok((k, v.detach().to_dtype(DType::F32)?.to_device(device)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let model = base.config().build(&vb)?;
        let lora = LoraTrainee::new(&sites, &settings.lora, seed, device)?;
        for vars in lora.sites() {
            let Some(start) = init.get(&vars.site.path) else {
                continue;
            };
            vars.a.set(&start.a0)?;
            vars.b.set(&start.b0)?;
        }
        Ok(Self {
            model,
            lora,
            init,
            scale,
        })
    }

    /// The model to train on: the base with every adapted weight replaced by
    /// its principal residual.
    pub fn model(&self) -> &dyn Segmenter {
        self.model.as_ref()
    }

    /// The LoRA variables (starting at `A0`, `B0`) and their adaptation.
    pub fn lora(&self) -> &LoraTrainee {
        &self.lora
    }

    /// The initial factors of every adapted site, by path.
    pub fn init(&self) -> &BTreeMap<String, SomaInit> {
        &self.init
    }

    /// The LoRA scale `s`.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The trained adapter relative to the *original* base, as an exact rank-`2r`
    /// LoRA: `A' = [A; -A0]`, `B' = [B, B0]`, `r' = 2r`, `lora_alpha = 2 r s`
    /// (so PEFT's scale is `s`), `target_modules` = the adapted paths.
    pub fn to_adapter(&self, name: &str) -> Result<Adapter> {
        let mut sites = BTreeMap::new();
        for vars in self.lora.sites() {
            let path = &vars.site.path;
            let Some(start) = self.init.get(path) else {
                return Err(TrainError::Config(format!(
                    "site {path} has no SoMA initial factors"
                )));
            };
            let site = storage_site(vars.a.as_tensor(), vars.b.as_tensor(), &start.a0, &start.b0)?;
            sites.insert(path.clone(), site);
        }
        let config = storage_config(
            self.lora.settings().rank,
            self.scale,
            sites.keys().cloned().collect(),
        );
        Ok(Adapter {
            name: name.to_string(),
            config,
            sites,
        })
    }
}

/// The rank-`2r` factors that store a trained SoMA site relative to the
/// original weight: `A' = [A; -A0]` (rows), `B' = [B, B0]` (columns), f32 on
/// the CPU, so that `s B' A' = s (B A - B0 A0)`.
pub fn storage_site(a: &Tensor, b: &Tensor, a0: &Tensor, b0: &Tensor) -> Result<LoraSite> {
    let cpu = |t: &Tensor| -> Result<Tensor> {
        Ok(t.detach().to_device(&Device::Cpu)?.to_dtype(DType::F32)?)
    };
    let a = Tensor::cat(&[cpu(a)?, cpu(a0)?.neg()?], 0)?.contiguous()?;
    let b = Tensor::cat(&[cpu(b)?, cpu(b0)?], 1)?.contiguous()?;
    Ok(LoraSite { a, b })
}

/// The PEFT config of a stored SoMA adapter of training rank `rank` and scale
/// `scale`: `r = 2 rank`, `lora_alpha = 2 rank scale` (PEFT's scale
/// `lora_alpha / r` is `scale` exactly), no rsLoRA, `target_modules` = `paths`.
pub fn storage_config(rank: usize, scale: f64, paths: Vec<String>) -> LoraConfig {
    let stored_rank = 2 * rank;
    let mut config = LoraConfig::new(stored_rank, scale * stored_rank as f64);
    config.target_modules = Some(TargetModules::List(paths));
    config
}

/// Trains a SoMA adapter on `source` with the shared trainer; `decay` as in
/// [`train_annealed`] (`None`: AdamW's constant decay of `config`).
pub fn train_soma(
    soma: &SomaTrainee,
    device: &Device,
    source: &dyn SampleSource,
    config: &TrainConfig,
    decay: Option<WeightDecayAnneal>,
    session: &Session<'_>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<TrainSummary> {
    semla_data::samples::check_classes(source, soma.model().num_classes(), "the training data")
        .map_err(TrainError::Config)?;
    let trainee = adapter_trainee(soma.model(), soma.lora(), device);
    train_annealed(&trainee, source, config, decay, session, progress)
}

/// Runs the shared trainer on `trainee`. With `decay`, AdamW's constant decay
/// is replaced by the annealed one, applied to every trainable tensor after
/// each step (see the module docs); checkpoints written during the run are
/// rewritten after the decay so that a resumed run matches an uninterrupted
/// one. Without it, this is [`train`].
pub fn train_annealed(
    trainee: &Trainee<'_>,
    source: &dyn SampleSource,
    config: &TrainConfig,
    decay: Option<WeightDecayAnneal>,
    session: &Session<'_>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<TrainSummary> {
    let Some(decay) = decay else {
        return train(trainee, source, config, session, progress);
    };
    let mut run_config = config.clone();
    run_config.optimizer.weight_decay = 0.0;
    let params = trainee.params.clone();
    let end_step = session.stop_at.unwrap_or(config.steps).min(config.steps);
    let mut failure: Option<TrainError> = None;
    let mut hook = |p: &Progress| {
        if failure.is_none()
            && let Err(e) = apply_decay(&params, p, &decay, config, session, end_step)
        {
            failure = Some(e);
        }
        progress(p);
    };
    let summary = train(trainee, source, &run_config, session, &mut hook)?;
    match failure {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}

fn apply_decay(
    params: &[(String, candle_core::Var)],
    p: &Progress,
    decay: &WeightDecayAnneal,
    config: &TrainConfig,
    session: &Session<'_>,
    end_step: usize,
) -> Result<()> {
    let step = p.step.saturating_sub(1);
    let factor = 1.0 - p.lr * decay.at(step);
    for (_, var) in params {
        let next = (var.as_tensor().detach() * factor)?;
        var.set(&next)?;
    }
    // The trainer wrote this step's checkpoint before calling us: rewrite its
    // trainable tensors so that they include the decay.
    if let (Some(dir), Some(every)) = (session.checkpoint_dir, config.checkpoint_every)
        && every > 0
        && p.step.is_multiple_of(every)
        && p.step < end_step
    {
        let tensors: Vec<(String, Tensor)> = params
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
            .collect();
        save_tensors_atomic(&CheckpointPaths::new(dir).params, &tensors, Some(p.step))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Bake and extract
// ---------------------------------------------------------------------------

/// Merges `adapter` into `model`'s base weights (`W <- W + s B A` at every
/// site it touches), after checking that it fits.
pub fn bake(model: &mut dyn Segmenter, adapter: &Adapter) -> semla_adapters::Result<()> {
    adapter.check_fits(&model.sites())?;
    for (path, site) in &adapter.sites {
        let delta = site.delta_weight(adapter.scale_for(path))?;
        model
            .merge_delta(path, &delta)
            .map_err(|e| AdapterError::Mismatch {
                adapter: adapter.name.clone(),
                message: format!("site {path}: {e}"),
            })?;
    }
    Ok(())
}

/// What [`extract`] found at one site.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ExtractedSite {
    /// Module path.
    pub path: String,
    /// Frobenius norm of `W_tuned - W_base`.
    pub delta_norm: f64,
    /// Frobenius norm of what the rank-`R` adapter misses (`sqrt` of the sum
    /// of the discarded squared singular values).
    pub residual_norm: f64,
    /// Number of non-zero components kept (`min(R, out, in*k*k)`).
    pub kept_rank: usize,
}

/// A weight that differs between the two models but is not an adapter site
/// (the adapter cannot carry it).
#[derive(Clone, Debug, serde::Serialize)]
pub struct UncapturedWeight {
    /// Checkpoint key.
    pub key: String,
    /// Largest absolute difference.
    pub max_abs_diff: f64,
}

/// The outcome of [`extract`].
#[derive(Clone, Debug)]
pub struct Extraction {
    /// The adapter (rank `R`, `lora_alpha = R`, i.e. scale 1).
    pub adapter: Adapter,
    /// Per adapted site.
    pub sites: Vec<ExtractedSite>,
    /// Non-site weights that differ (reported, not carried).
    pub uncaptured: Vec<UncapturedWeight>,
}

/// The best rank-`rank` adapter (Eckart-Young: truncated SVD of `W_tuned -
/// W_base`, split `B = U_R diag(sqrt sigma)`, `A = diag(sqrt sigma) V_R^T`)
/// at every site where the models differ by more than `tolerance` (max
/// absolute difference). Where `rank` exceeds the site's `min(out, in*k*k)`
/// the factors are padded with zeros so that every site has rank `rank`.
pub fn extract(
    base: &dyn Segmenter,
    tuned: &dyn Segmenter,
    rank: usize,
    tolerance: f64,
    name: &str,
) -> semla_adapters::Result<Extraction> {
    if rank == 0 {
        return Err(AdapterError::InvalidArgument(
            "extract: the rank must be at least 1".into(),
        ));
    }
    let base_config = base.config();
    if base_config != tuned.config() {
        return Err(AdapterError::InvalidArgument(
            "extract: the two models have different configurations (kind, classes or width)".into(),
        ));
    }
    let base_tensors: BTreeMap<String, Tensor> = base.named_tensors().into_iter().collect();
    let tuned_tensors: HashMap<String, Tensor> = tuned.named_tensors().into_iter().collect();
    let site_keys: std::collections::HashSet<String> = base
        .sites()
        .iter()
        .map(|s| format!("{}.weight", s.path))
        .collect();
    let mut sites = BTreeMap::new();
    let mut report = Vec::new();
    let mut uncaptured = Vec::new();
    for (key, w0) in &base_tensors {
        let Some(w1) = tuned_tensors.get(key) else {
            return Err(AdapterError::InvalidArgument(format!(
                "extract: the tuned model has no tensor {key}"
            )));
        };
        if w0.dims() != w1.dims() {
            return Err(AdapterError::InvalidArgument(format!(
                "extract: tensor {key} is {:?} in the base and {:?} in the tuned model",
                w0.dims(),
                w1.dims()
            )));
        }
        let diff = (w1.to_dtype(DType::F64)? - w0.to_dtype(DType::F64)?)?;
        let max_abs = diff
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f64>()
            .unwrap_or(0.0);
        if !max_abs.is_finite() {
            return Err(AdapterError::InvalidArgument(format!(
                "extract: tensor {key} has NaN or infinite values"
            )));
        }
        if max_abs <= tolerance {
            continue;
        }
        if !site_keys.contains(key) {
            uncaptured.push(UncapturedWeight {
                key: key.clone(),
                max_abs_diff: max_abs,
            });
            continue;
        }
        let path = key.trim_end_matches(".weight").to_string();
        let m = weight_matrix(&diff).map_err(|e| AdapterError::InvalidArgument(e.to_string()))?;
        let (u, sigma, v) = thin_svd(&m);
        let kept = rank.min(sigma.len());
        let mut a = Matrix::zeros(rank, m.cols);
        let mut b = Matrix::zeros(m.rows, rank);
        for (j, value) in sigma.iter().enumerate().take(kept) {
            let root = value.sqrt();
            for c in 0..m.cols {
                *a.at_mut(j, c) = root * v.at(c, j);
            }
            for row in 0..m.rows {
                *b.at_mut(row, j) = u.at(row, j) * root;
            }
        }
        let total: f64 = sigma.iter().map(|s| s * s).sum();
        let missed: f64 = sigma[kept..].iter().map(|s| s * s).sum();
        let (a_shape, b_shape) = factor_shapes(w0.dims(), rank);
        let to_tensor = |m: &Matrix, shape: &[usize]| {
            matrix_to_tensor(m, shape).map_err(|e| AdapterError::InvalidArgument(e.to_string()))
        };
        sites.insert(
            path.clone(),
            LoraSite {
                a: to_tensor(&a, &a_shape)?,
                b: to_tensor(&b, &b_shape)?,
            },
        );
        report.push(ExtractedSite {
            path,
            delta_norm: total.sqrt(),
            residual_norm: missed.sqrt(),
            kept_rank: sigma[..kept].iter().filter(|s| **s > 0.0).count(),
        });
    }
    if sites.is_empty() {
        return Err(AdapterError::InvalidArgument(format!(
            "extract: no adapter site differs between the two models by more than {tolerance}"
        )));
    }
    let mut config = LoraConfig::new(rank, rank as f64);
    config.target_modules = Some(TargetModules::List(sites.keys().cloned().collect()));
    Ok(Extraction {
        adapter: Adapter {
            name: name.to_string(),
            config,
            sites,
        },
        sites: report,
        uncaptured,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_decay_schedule_hits_its_ends_and_midpoint() {
        let s = WeightDecayAnneal::soma(100);
        assert!((s.at(0) - 0.05).abs() < 1e-15);
        assert!((s.at(50) - (0.05 + 1e-5) / 2.0).abs() < 1e-15);
        assert!((s.at(100) - 1e-5).abs() < 1e-15);
        assert!((s.at(1000) - 1e-5).abs() < 1e-15);
        for t in 0..100 {
            assert!(s.at(t + 1) < s.at(t));
        }
    }

    #[test]
    fn thin_svd_reconstructs_wide_and_tall_matrices() {
        for (rows, cols) in [(7, 4), (3, 9), (5, 5)] {
            let data: Vec<f64> = (0..rows * cols)
                .map(|i| ((i * 37 % 11) as f64 - 5.0) / 3.0 + (i as f64).sin())
                .collect();
            let m = Matrix::from_rows(rows, cols, data);
            let (u, s, v) = thin_svd(&m);
            let k = rows.min(cols);
            assert_eq!(s.len(), k);
            for i in 1..k {
                assert!(s[i - 1] >= s[i]);
            }
            for i in 0..rows {
                for j in 0..cols {
                    let rebuilt: f64 = (0..k).map(|t| u.at(i, t) * s[t] * v.at(j, t)).sum();
                    assert!((rebuilt - m.at(i, j)).abs() < 1e-12);
                }
            }
        }
    }

    #[test]
    fn qr_then_jacobi_agrees_with_jacobi_alone() {
        let n = 24;
        let data: Vec<f64> = (0..n * n)
            .map(|i| {
                ((i * 7919 % 101) as f64 / 50.0 - 1.0) * if i % n >= i / n { 1.0 } else { 0.0 }
            })
            .collect();
        let m = Matrix::from_rows(n, n, data);
        let (u0, s0, v0) = linalg::svd(&m);
        let (u1, s1, v1) = thin_svd(&m);
        for k in 0..n {
            assert!(
                (s0[k] - s1[k]).abs() < 1e-12 * s0[0],
                "{k}: {} vs {}",
                s0[k],
                s1[k]
            );
        }
        // Rank-one parts u s v^T agree (sign-invariant), for distinct values.
        for k in 0..n {
            for i in 0..n {
                for j in 0..n {
                    let a = u0.at(i, k) * s0[k] * v0.at(j, k);
                    let b = u1.at(i, k) * s1[k] * v1.at(j, k);
                    assert!((a - b).abs() < 1e-9, "component {k}");
                }
            }
        }
    }

    #[test]
    fn tiny_and_efficientnet_blocks() {
        let tiny = SegmenterConfig::Tiny(semla_models::tiny::TinySegConfig::new(4));
        assert_eq!(block_index(&tiny, "head"), Some(3));
        assert_eq!(block_index(&tiny, "stem"), Some(0));
        assert_eq!(block_index(&tiny, "classifier"), None);
        assert!(in_frozen_blocks(&tiny, "head", 4));
        assert!(!in_frozen_blocks(&tiny, "head", 3));
        assert!(!in_frozen_blocks(&tiny, "skip", 99));
        // Any other kind: the number after `_blocks`.
        let eff = SegmenterConfig::EfficientLite0(
            semla_models::efficientnet::EfficientLiteSegConfig::new(11),
        );
        assert_eq!(block_index(&eff, "_blocks.12._expand_conv"), Some(12));
        assert_eq!(block_index(&eff, "_conv_head"), None);
        assert_eq!(block_index(&eff, "decoder.cbr"), None);
        assert!(in_frozen_blocks(&eff, "_blocks.3._project_conv", 4));
        assert!(!in_frozen_blocks(&eff, "_blocks.4._project_conv", 4));
    }
}
