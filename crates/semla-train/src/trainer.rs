//! The training loop shared by base-model and adapter training: batches,
//! loss, backward, clipping, AdamW, schedule, progress, checkpoints, resume.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor, Var};
use semla_core::SplitMix64;
use semla_core::fs::write_atomic;
use semla_data::{Sample, SampleError, SampleSource};
use semla_models::{Normalization, TrainingObjective};

use crate::augment::{AugmentConfig, augment};
use crate::error::{Result, TrainError};
use crate::loss::{binary_cross_entropy_one_hot, weighted_cross_entropy};
use crate::optim::{AdamW, AdamWConfig, clip_factor};
use crate::schedule::WarmupCosine;

/// Everything that defines a training run.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    /// Total number of optimizer steps (the schedule spans them).
    pub steps: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate of the cosine decay. Default 0.
    pub min_lr: f64,
    /// Linear warmup steps. Default: 5 % of `steps`.
    pub warmup_steps: usize,
    /// AdamW hyper-parameters.
    pub optimizer: AdamWConfig,
    /// Clip gradients to this global L2 norm. Default `Some(1.0)`.
    pub max_grad_norm: Option<f64>,
    /// Random scale / crop / flip.
    pub augment: AugmentConfig,
    /// Seed of every random draw of the run (batches, augmentation).
    pub seed: u64,
    /// Write a checkpoint every this many steps (and at the end). `None`: only at the end.
    pub checkpoint_every: Option<usize>,
}

impl TrainConfig {
    /// A configuration with the documented defaults.
    pub fn new(steps: usize, batch_size: usize, lr: f64) -> Self {
        Self {
            steps,
            batch_size,
            lr,
            min_lr: 0.0,
            warmup_steps: steps / 20,
            optimizer: AdamWConfig::default(),
            max_grad_norm: Some(1.0),
            augment: AugmentConfig::default(),
            seed: 0,
            checkpoint_every: None,
        }
    }

    /// The learning-rate schedule of this run.
    pub fn schedule(&self) -> WarmupCosine {
        WarmupCosine {
            base_lr: self.lr,
            min_lr: self.min_lr,
            warmup_steps: self.warmup_steps,
            total_steps: self.steps,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.steps == 0 || self.batch_size == 0 {
            return Err(TrainError::Config(
                "steps and batch size must be at least 1".into(),
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(TrainError::Config(format!(
                "learning rate must be positive, got {}",
                self.lr
            )));
        }
        if self.augment.min_scale <= 0.0 || self.augment.max_scale < self.augment.min_scale {
            return Err(TrainError::Config(format!(
                "scale range [{}, {}] is invalid",
                self.augment.min_scale, self.augment.max_scale
            )));
        }
        Ok(())
    }
}

/// Normalised images `[N, 3, H, W]` -> logits `[N, C, H, W]`.
pub type ForwardFn<'a> = Box<dyn Fn(&Tensor) -> candle_core::Result<Tensor> + 'a>;

/// What is being trained: its trainable variables and how to get logits.
pub struct Trainee<'a> {
    /// Trainable tensors by checkpoint name. Everything else the forward
    /// uses must be a plain tensor.
    pub params: Vec<(String, Var)>,
    /// Normalised images `[N, 3, H, W]` -> logits `[N, C, H, W]`.
    pub forward: ForwardFn<'a>,
    /// How raw RGB in `[0, 1]` is normalised for `forward`.
    pub normalization: Normalization,
    /// The loss `forward`'s logits are trained with.
    pub objective: TrainingObjective,
    /// Device of the model.
    pub device: Device,
}

/// Reported after every step.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Progress {
    /// Steps completed (1-based after the first step).
    pub step: usize,
    /// Total steps of the run.
    pub total_steps: usize,
    /// Loss of the step just taken.
    pub loss: f32,
    /// Learning rate used for it.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Time spent in this session (since start or resume).
    pub elapsed: Duration,
    /// Steps run in this session.
    pub session_steps: usize,
}

/// The outcome of [`train`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrainSummary {
    /// Step the run started from (0, or the resumed checkpoint's step).
    pub start_step: usize,
    /// Steps completed at the end.
    pub end_step: usize,
    /// Loss of every step run in this session, in order.
    pub losses: Vec<f32>,
    /// Wall-clock seconds of this session.
    pub seconds: f64,
}

/// A batch ready for the model.
pub struct Batch {
    /// Normalised images `[N, 3, H, W]`.
    pub images: Tensor,
    /// Labels `[N, H, W]` (u32).
    pub labels: Tensor,
    /// Per-pixel loss weights `[N, H, W]` (f32; DACS' pseudo-label
    /// confidence); `None`: every labelled pixel weighs 1.
    pub weights: Option<Tensor>,
}

/// Where a run's batches come from, and the state it carries from step to
/// step besides the trainee and the optimizer (self-training's EMA teacher).
pub trait Steps {
    /// The batch of step `step` (0-based): a function of the run's seed and
    /// the step only, so that a resumed run sees the same batches.
    fn batch(&mut self, step: usize) -> Result<Batch>;

    /// The label value the loss skips.
    fn ignore_label(&self) -> u32;

    /// Called after the optimizer update of step `step` (0-based).
    fn after_update(&mut self, _step: usize) -> Result<()> {
        Ok(())
    }

    /// Tensors of the run's own state, saved with every checkpoint. Default: none.
    fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(Vec::new())
    }

    /// Restores what [`Steps::state_tensors`] saved (read from `path`).
    fn load_state(&mut self, _tensors: &HashMap<String, Tensor>, _path: &Path) -> Result<()> {
        Ok(())
    }
}

/// Supervised batches of a labelled source ([`make_batch`]).
pub struct SupervisedSteps<'a> {
    /// The labelled samples.
    pub source: &'a dyn SampleSource,
    /// The run (batch size, augmentation, seed).
    pub config: &'a TrainConfig,
    /// How the trainee normalises images.
    pub normalization: &'a Normalization,
    /// Where batches go.
    pub device: &'a Device,
}

impl Steps for SupervisedSteps<'_> {
    fn batch(&mut self, step: usize) -> Result<Batch> {
        make_batch(
            self.source,
            self.config,
            self.normalization,
            step,
            self.device,
        )
    }

    fn ignore_label(&self) -> u32 {
        self.source.ignore_label()
    }
}

/// The batch of step `step`: sample indices and augmentations drawn from
/// `(seed, step)` only, so any run (fresh or resumed) sees the same batches.
pub fn make_batch(
    source: &dyn SampleSource,
    config: &TrainConfig,
    normalization: &Normalization,
    step: usize,
    device: &Device,
) -> Result<Batch> {
    let samples = sample_batch(source, config, step)?;
    let (h, w) = samples.first().map_or((0, 0), |s| (s.height, s.width));
    let labels: Vec<u32> = samples
        .iter()
        .flat_map(|s| s.labels.iter().copied())
        .collect();
    let refs: Vec<_> = samples.iter().collect();
    Ok(Batch {
        images: normalization.batch(&refs, device)?,
        labels: Tensor::from_vec(labels, (samples.len(), h, w), device)?,
        weights: None,
    })
}

/// The augmented samples of [`make_batch`] before normalisation (DACS mixes
/// them into target images first); all of one size.
pub fn sample_batch(
    source: &dyn SampleSource,
    config: &TrainConfig,
    step: usize,
) -> Result<Vec<Sample>> {
    if source.is_empty() {
        return Err(TrainError::Config(
            "the training source has no samples".into(),
        ));
    }
    semla_core::limits::check_batch(config.batch_size as u64, "a training batch")
        .map_err(TrainError::Config)?;
    let mut rng = SplitMix64::for_step(config.seed, step as u64, 0);
    let mut samples: Vec<Sample> = Vec::with_capacity(config.batch_size);
    for _ in 0..config.batch_size {
        let index = rng.below(source.len());
        let name = source.describe(index);
        let sample = source.sample(index)?;
        sample.check(&name)?;
        let sample = augment(&sample, &config.augment, source.ignore_label(), &mut rng);
        if let Some(first) = samples.first()
            && (first.height, first.width) != (sample.height, sample.width)
        {
            return Err(SampleError::new(
                name,
                format!(
                    "is {}x{} but the batch is {}x{}: give a crop size to train on images of different sizes",
                    sample.height, sample.width, first.height, first.width
                ),
            )
            .into());
        }
        samples.push(sample);
    }
    Ok(samples)
}

/// Forward, loss and backward on one batch: `(loss, gradients)`.
pub fn loss_and_gradients(
    trainee: &Trainee<'_>,
    batch: &Batch,
    ignore: u32,
) -> Result<(f32, candle_core::backprop::GradStore)> {
    let logits = (trainee.forward)(&batch.images)?;
    let loss = match trainee.objective {
        TrainingObjective::SoftmaxCrossEntropy => {
            weighted_cross_entropy(&logits, &batch.labels, ignore, batch.weights.as_ref())?
        }
        TrainingObjective::SigmoidOneHot => {
            if batch.weights.is_some() {
                return Err(TrainError::Config(
                    "per-pixel loss weights need a softmax cross-entropy model".into(),
                ));
            }
            binary_cross_entropy_one_hot(&logits, &batch.labels, ignore)?
        }
    };
    let value = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
    let grads = loss.backward()?;
    Ok((value, grads))
}

const CHECKPOINT_FORMAT: &str = "semla-train-checkpoint";
const STEP_KEY: &str = "__checkpoint_step__";

/// `state.json` of a checkpoint.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CheckpointState {
    /// Always `semla-train-checkpoint`.
    pub format: String,
    /// Steps completed.
    pub step: usize,
    /// Seed of the run.
    pub seed: u64,
    /// AdamW update count.
    pub optimizer_updates: usize,
    /// The run's configuration.
    pub config: TrainConfig,
    /// Names of the trainable tensors, in order.
    pub params: Vec<String>,
}

/// The files of a checkpoint folder.
pub struct CheckpointPaths {
    /// Trainable tensors.
    pub params: PathBuf,
    /// Optimizer moments.
    pub optimizer: PathBuf,
    /// Step, seed, configuration.
    pub state: PathBuf,
    /// The run's own state ([`Steps::state_tensors`]), when it has any.
    pub run_state: PathBuf,
}

impl CheckpointPaths {
    /// The files inside checkpoint folder `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            params: dir.join("trainable.safetensors"),
            optimizer: dir.join("optimizer.safetensors"),
            state: dir.join("state.json"),
            run_state: dir.join("run_state.safetensors"),
        }
    }
}

/// Saves named tensors as safetensors atomically, with the
/// checkpoint step stored alongside (so a mixed set of files is detected).
pub fn save_tensors_atomic(
    path: &Path,
    tensors: &[(String, Tensor)],
    step: Option<usize>,
) -> Result<()> {
    let mut map: HashMap<String, Tensor> = tensors.iter().cloned().collect();
    if let Some(step) = step {
        map.insert(
            STEP_KEY.to_string(),
            Tensor::new(&[step as i64], &Device::Cpu)?,
        );
    }
    let bytes = semla_models::model_dir::safetensors_bytes(&map)?;
    Ok(write_atomic(path, &bytes)?)
}

fn load_tensors(path: &Path, device: &Device) -> Result<(HashMap<String, Tensor>, Option<usize>)> {
    let mut map = candle_core::safetensors::load(path, device)
        .map_err(|e| TrainError::checkpoint(path, format!("cannot read safetensors: {e}")))?;
    let step = match map.remove(STEP_KEY) {
        Some(t) => Some(t.to_vec1::<i64>()?.first().copied().unwrap_or(-1) as usize),
        None => None,
    };
    Ok((map, step))
}

fn save_checkpoint(
    dir: &Path,
    trainee: &Trainee<'_>,
    steps: &dyn Steps,
    optimizer: &AdamW,
    config: &TrainConfig,
    step: usize,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let paths = CheckpointPaths::new(dir);
    let params: Vec<(String, Tensor)> = trainee
        .params
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
        .collect();
    save_tensors_atomic(&paths.params, &params, Some(step))?;
    save_tensors_atomic(&paths.optimizer, &optimizer.state_tensors(), Some(step))?;
    let run_state = steps.state_tensors()?;
    if !run_state.is_empty() {
        save_tensors_atomic(&paths.run_state, &run_state, Some(step))?;
    }
    let state = CheckpointState {
        format: CHECKPOINT_FORMAT.to_string(),
        step,
        seed: config.seed,
        optimizer_updates: optimizer.updates(),
        config: config.clone(),
        params: trainee.params.iter().map(|(n, _)| n.clone()).collect(),
    };
    let text = serde_json::to_string_pretty(&state)
        .map_err(|e| TrainError::checkpoint(&paths.state, e.to_string()))?;
    // Written last: a checkpoint counts only once its state names the step
    // that the tensor files carry.
    Ok(write_atomic(&paths.state, text.as_bytes())?)
}

/// Whether `dir` holds a checkpoint.
pub fn has_checkpoint(dir: &Path) -> bool {
    CheckpointPaths::new(dir).state.is_file()
}

/// Reads a checkpoint's `state.json`.
pub fn read_checkpoint_state(dir: &Path) -> Result<CheckpointState> {
    let path = CheckpointPaths::new(dir).state;
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    let state: CheckpointState = serde_json::from_str(&text)
        .map_err(|e| TrainError::checkpoint(&path, format!("invalid JSON: {e}")))?;
    if state.format != CHECKPOINT_FORMAT {
        return Err(TrainError::checkpoint(
            &path,
            format!(
                "format is {:?}, expected {CHECKPOINT_FORMAT:?}",
                state.format
            ),
        ));
    }
    Ok(state)
}

fn load_checkpoint(
    dir: &Path,
    trainee: &Trainee<'_>,
    steps: &mut dyn Steps,
    optimizer: &mut AdamW,
    config: &TrainConfig,
) -> Result<usize> {
    let paths = CheckpointPaths::new(dir);
    let state = read_checkpoint_state(dir)?;
    if state.seed != config.seed || state.config.batch_size != config.batch_size {
        return Err(TrainError::checkpoint(
            &paths.state,
            format!(
                "was written with seed {} and batch {}, this run uses seed {} and batch {}",
                state.seed, state.config.batch_size, config.seed, config.batch_size
            ),
        ));
    }
    let (params, params_step) = load_tensors(&paths.params, &trainee.device)?;
    let (moments, optimizer_step) = load_tensors(&paths.optimizer, &trainee.device)?;
    let mut files = vec![
        (&paths.params, params_step),
        (&paths.optimizer, optimizer_step),
    ];
    let run_state = if steps.state_tensors()?.is_empty() {
        None
    } else {
        if !paths.run_state.is_file() {
            return Err(TrainError::checkpoint(
                &paths.run_state,
                "is missing: the checkpoint was written by a run without this state",
            ));
        }
        let (tensors, step) = load_tensors(&paths.run_state, &trainee.device)?;
        files.push((&paths.run_state, step));
        Some(tensors)
    };
    for (path, step) in files {
        if step != Some(state.step) {
            return Err(TrainError::checkpoint(
                path,
                format!(
                    "holds step {step:?} but state.json says step {}: incomplete checkpoint",
                    state.step
                ),
            ));
        }
    }
    for (name, var) in &trainee.params {
        let Some(saved) = params.get(name) else {
            return Err(TrainError::checkpoint(
                &paths.params,
                format!("missing tensor {name}"),
            ));
        };
        if saved.dims() != var.dims() {
            return Err(TrainError::checkpoint(
                &paths.params,
                format!(
                    "tensor {name} has shape {:?}, the model expects {:?}",
                    saved.dims(),
                    var.dims()
                ),
            ));
        }
        var.set(&saved.to_dtype(var.dtype())?)?;
    }
    optimizer.load_state(&moments, state.optimizer_updates, &paths.optimizer)?;
    if let Some(tensors) = run_state {
        steps.load_state(&tensors, &paths.run_state)?;
    }
    Ok(state.step)
}

/// Options of one call to [`train`] that are not part of the run's identity.
#[derive(Clone, Debug, Default)]
pub struct Session<'p> {
    /// Checkpoint folder; `None` writes none.
    pub checkpoint_dir: Option<&'p Path>,
    /// Continue from the checkpoint in `checkpoint_dir` when there is one.
    pub resume: bool,
    /// Stop after this many completed steps (the schedule still spans
    /// `config.steps`); `None`: run to the end.
    pub stop_at: Option<usize>,
}

/// Trains `trainee` on `source`. Calls `progress` after every step.
pub fn train(
    trainee: &Trainee<'_>,
    source: &dyn SampleSource,
    config: &TrainConfig,
    session: &Session<'_>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<TrainSummary> {
    let mut steps = SupervisedSteps {
        source,
        config,
        normalization: &trainee.normalization,
        device: &trainee.device,
    };
    train_steps(trainee, &mut steps, config, session, progress)
}

/// Trains `trainee` on the batches of `steps` (the one training loop: loss,
/// backward, clipping, AdamW, schedule, checkpoints, resume). Calls
/// `progress` after every step.
pub fn train_steps(
    trainee: &Trainee<'_>,
    steps: &mut dyn Steps,
    config: &TrainConfig,
    session: &Session<'_>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<TrainSummary> {
    config.validate()?;
    if trainee.params.is_empty() {
        return Err(TrainError::Config(
            "nothing to train: no trainable tensors".into(),
        ));
    }
    let mut optimizer = AdamW::new(&trainee.params, config.optimizer)?;
    let mut start_step = 0;
    if let (Some(dir), true) = (session.checkpoint_dir, session.resume)
        && has_checkpoint(dir)
    {
        start_step = load_checkpoint(dir, trainee, steps, &mut optimizer, config)?;
        tracing::info!("resumed from {} at step {start_step}", dir.display());
    }
    let end_step = session.stop_at.unwrap_or(config.steps).min(config.steps);
    let schedule = config.schedule();
    let ignore = steps.ignore_label();
    let started = Instant::now();
    let mut losses = Vec::new();
    for step in start_step..end_step {
        let batch = steps.batch(step)?;
        let (loss, grads) = loss_and_gradients(trainee, &batch, ignore)?;
        if !loss.is_finite() {
            return Err(TrainError::Diverged { step, loss });
        }
        let grad_norm = optimizer.grad_norm(&grads)?;
        let lr = schedule.lr(step);
        optimizer.step(&grads, lr, clip_factor(grad_norm, config.max_grad_norm))?;
        drop(grads);
        steps.after_update(step)?;
        losses.push(loss);
        let done = step + 1;
        if let (Some(dir), Some(every)) = (session.checkpoint_dir, config.checkpoint_every)
            && every > 0
            && done % every == 0
            && done < end_step
        {
            save_checkpoint(dir, trainee, &*steps, &optimizer, config, done)?;
        }
        progress(&Progress {
            step: done,
            total_steps: config.steps,
            loss,
            lr,
            grad_norm,
            elapsed: started.elapsed(),
            session_steps: done - start_step,
        });
    }
    if let Some(dir) = session.checkpoint_dir
        && (end_step > start_step || !has_checkpoint(dir))
    {
        save_checkpoint(dir, trainee, &*steps, &optimizer, config, end_step)?;
    }
    Ok(TrainSummary {
        start_step,
        end_step,
        losses,
        seconds: started.elapsed().as_secs_f64(),
    })
}
