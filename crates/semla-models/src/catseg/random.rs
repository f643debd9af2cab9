//! CAT-Seg with random weights at any size (benchmarks at the real L and B
//! sizes, tests): every tensor generated from its checkpoint key with
//! [`semla_core::rng::named_values`], so a run is reproducible and nothing is
//! stored.

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;

use super::{CatSeg, CatSegConfig};

type Result<T> = candle_core::Result<T>;

/// The scale and offset of a tensor's uniform values: norm weights around 1,
/// small biases and embeddings, weights `sqrt(3 / fan_in)` (unit variance
/// through a layer); transposed convolutions and `x @ P` projections take their
/// fan-in from the first axis.
fn scale_offset(name: &str, dims: &[usize]) -> (f32, f32) {
    let last = name.rsplit('.').next().unwrap_or(name);
    let is_norm = ["ln_", "norm", "double_conv.1", "double_conv.4"]
        .iter()
        .any(|m| name.contains(m));
    if last == "bias" || last == "in_proj_bias" {
        return (0.02, 0.0);
    }
    if is_norm && dims.len() == 1 {
        return (0.02, 1.0);
    }
    if dims.len() < 2 || name.contains("embedding") || name.contains("padding_") {
        return (0.02, 0.0);
    }
    let first_axis = name.contains("upsample")
        || name.contains(".up.")
        || last == "proj"
        || last == "text_projection";
    let fan_in = if first_axis {
        dims[0]
    } else {
        dims[1..].iter().product()
    };
    ((3.0 / fan_in.max(1) as f32).sqrt(), 0.0)
}

struct NamedRandom;

impl candle_nn::var_builder::SimpleBackend for NamedRandom {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let (scale, offset) = scale_offset(name, s.dims());
        let values = semla_core::rng::named_values(name, s.elem_count(), scale, offset);
        Tensor::from_vec(values, s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
        candle_core::bail!("random CAT-Seg weights need a shape for {name}")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// CAT-Seg of `config` with random weights (see the module documentation).
pub fn random_catseg(config: &CatSegConfig, device: &Device) -> Result<CatSeg> {
    let backend: Box<dyn candle_nn::var_builder::SimpleBackend> = Box::new(NamedRandom);
    CatSeg::new(
        &VarBuilder::from_backend(backend, DType::F32, device.clone()),
        config,
    )
}
