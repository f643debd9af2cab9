//! The two training runs semla offers: a whole segmenter (every weight a
//! variable) and a LoRA adapter on a frozen segmenter.

use candle_core::{Device, Var};
use candle_nn::VarMap;
use semla_models::Segmenter;

use crate::error::{Result, TrainError};
use crate::lora::LoraTrainee;
use crate::trainer::{Progress, Session, TrainConfig, TrainSummary, Trainee, train};
use semla_data::SampleSource;

/// The variables of `varmap` sorted by name (a stable order for the
/// optimizer and checkpoints).
pub fn varmap_params(varmap: &VarMap) -> Result<Vec<(String, Var)>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| TrainError::Config("the variable map's lock is poisoned".into()))?;
    let mut params: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(params)
}

/// Trains every weight of `model`, which must have been built over `varmap`
/// (so that its weights are the map's variables).
pub fn train_base(
    model: &dyn Segmenter,
    varmap: &VarMap,
    device: &Device,
    source: &dyn SampleSource,
    config: &TrainConfig,
    session: &Session<'_>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<TrainSummary> {
    semla_data::samples::check_classes(source, model.num_classes(), "the training data")
        .map_err(TrainError::Config)?;
    let trainee = Trainee {
        params: varmap_params(varmap)?,
        forward: Box::new(|images| {
            model.training_logits(images, &semla_adapters::Adaptation::none())
        }),
        normalization: model.normalization(),
        objective: model.training_objective(),
        device: device.clone(),
    };
    train(&trainee, source, config, session, progress)
}

/// Trains the factors of `lora` on the frozen `base`; nothing of the base
/// changes (its weights are plain tensors, and only `lora`'s variables reach
/// the optimizer).
pub fn train_adapter(
    base: &dyn Segmenter,
    lora: &LoraTrainee,
    device: &Device,
    source: &dyn SampleSource,
    config: &TrainConfig,
    session: &Session<'_>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<TrainSummary> {
    semla_data::samples::check_classes(source, base.num_classes(), "the training data")
        .map_err(TrainError::Config)?;
    let trainee = adapter_trainee(base, lora, device);
    train(&trainee, source, config, session, progress)
}

/// The [`Trainee`] of adapter training (also used by gradient checks and benchmarks).
pub fn adapter_trainee<'a>(
    base: &'a dyn Segmenter,
    lora: &'a LoraTrainee,
    device: &Device,
) -> Trainee<'a> {
    Trainee {
        params: lora.params(),
        forward: Box::new(move |images| base.training_logits(images, lora.adaptation())),
        normalization: base.normalization(),
        objective: base.training_objective(),
        device: device.clone(),
    }
}

/// Makes the freshly initialised variables of `varmap` reproducible from `seed`.
///
/// candle's CPU random generator cannot be seeded, so the initial values a
/// `VarMap` draws differ from run to run. This redraws every variable of rank
/// 2 or more whose name is not in `keep` (pretrained weights loaded before the
/// model was built) from a seeded Kaiming-normal distribution (fan-in mode,
/// ReLU gain: `std = sqrt(2 / fan_in)`, the models' own default). Vectors
/// (biases, norm scales) are initialised to constants and stay as they are.
pub fn reseed_varmap(
    varmap: &VarMap,
    seed: u64,
    keep: &std::collections::HashSet<String>,
) -> Result<()> {
    for (index, (name, var)) in varmap_params(varmap)?.into_iter().enumerate() {
        if keep.contains(&name) || var.rank() < 2 {
            continue;
        }
        let fan_in: usize = var.dims()[1..].iter().product();
        let std = (2.0 / fan_in.max(1) as f64).sqrt();
        let mut rng = semla_core::SplitMix64::for_step(seed, index as u64, 0x1417);
        let fresh: Vec<f32> = (0..var.elem_count())
            .map(|_| {
                // Box-Muller transform.
                let u1 = rng.next_f64().max(f64::MIN_POSITIVE);
                let u2 = rng.next_f64();
                (std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
            })
            .collect();
        let t = candle_core::Tensor::from_vec(fresh, var.dims(), var.device())?
            .to_dtype(var.dtype())?;
        var.set(&t)?;
    }
    Ok(())
}

/// A segmenter of `config` whose every weight is a variable of the returned
/// map, ready for [`train_base`]. With `pretrained`, the map starts from
/// those variables (e.g. [`semla_models::efficientnet::pretrained_varmap`])
/// and only the weights the model adds are initialised, from `seed`.
pub fn build_trainable(
    config: &semla_models::SegmenterConfig,
    pretrained: Option<VarMap>,
    seed: u64,
    device: &Device,
) -> Result<(Box<dyn Segmenter>, VarMap)> {
    let varmap = pretrained.unwrap_or_else(VarMap::new);
    let keep: std::collections::HashSet<String> = varmap_params(&varmap)?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let vb = candle_nn::VarBuilder::from_varmap(&varmap, candle_core::DType::F32, device);
    let model = config.build(&vb)?;
    reseed_varmap(&varmap, seed, &keep)?;
    Ok((model, varmap))
}

/// A model and its trainable variables (sorted by name).
pub type PartlyTrainable = (Box<dyn Segmenter>, Vec<(String, Var)>);

/// A copy of `model` (same configuration, same weight values, fresh storage)
/// whose weights named by `trains` are variables and every other weight a
/// plain tensor: to train one part (say, the head, see
/// [`semla_models::SegmenterConfig::is_head_weight`]) with the rest frozen,
/// so that no gradient is computed for the frozen part's weights. Returns the
/// copy and its variables sorted by name; an error when `trains` selects
/// nothing.
pub fn with_trainable_part(
    model: &dyn Segmenter,
    trains: &dyn Fn(&str) -> bool,
    device: &Device,
) -> Result<PartlyTrainable> {
    let mut tensors = std::collections::HashMap::new();
    let mut params = Vec::new();
    for (name, tensor) in model.named_tensors() {
        // A copy: the optimizer updates a variable in place, and neither the
        // original nor another copy may change with it.
        let fresh = tensor.detach().copy()?;
        if trains(&name) {
            let var = Var::from_tensor(&fresh)?;
            tensors.insert(name.clone(), var.as_tensor().clone());
            params.push((name, var));
        } else {
            tensors.insert(name, fresh);
        }
    }
    if params.is_empty() {
        return Err(TrainError::Config(
            "no weight of the model is selected for training".into(),
        ));
    }
    params.sort_by(|a, b| a.0.cmp(&b.0));
    let vb = candle_nn::VarBuilder::from_tensors(tensors, candle_core::DType::F32, device);
    let copy = model.config().build(&vb)?;
    Ok((copy, params))
}
