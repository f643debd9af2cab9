//! A generated toy segmentation task and model helpers shared by the tests.

#![allow(dead_code)]

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use semla_core::SplitMix64;
use semla_data::{InMemorySource, Sample};
use semla_models::tiny::TinySegConfig;
use semla_models::{Segmenter, SegmenterConfig};

pub const IGNORE: u32 = 255;

/// Colours of the toy classes: background grey, red, green, blue.
const COLOURS: [[f32; 3]; 4] = [
    [0.5, 0.5, 0.5],
    [0.9, 0.1, 0.1],
    [0.1, 0.8, 0.1],
    [0.1, 0.2, 0.9],
];

/// `count` images of `size`x`size`: a grey background with two or three
/// coloured rectangles (the class is the colour), pixel noise, and a band of
/// ignored pixels along the top. `tint` shifts every colour (a domain shift).
pub fn toy_task(count: usize, size: usize, seed: u64, tint: [f32; 3]) -> InMemorySource {
    let mut rng = SplitMix64::new(seed);
    let pixels = size * size;
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let mut labels = vec![0u32; pixels];
        for _ in 0..2 + rng.below(2) {
            let class = 1 + rng.below(3) as u32;
            let (h, w) = (
                size / 4 + rng.below(size / 3),
                size / 4 + rng.below(size / 3),
            );
            let (top, left) = (rng.below(size - h), rng.below(size - w));
            for y in top..top + h {
                for x in left..left + w {
                    labels[y * size + x] = class;
                }
            }
        }
        let mut image = vec![0f32; 3 * pixels];
        for p in 0..pixels {
            let colour = COLOURS[labels[p] as usize];
            for c in 0..3 {
                let noise = rng.uniform(-0.08, 0.08) as f32;
                image[c * pixels + p] = (colour[c] + tint[c] + noise).clamp(0.0, 1.0);
            }
        }
        for label in labels.iter_mut().take(size) {
            *label = IGNORE;
        }
        samples.push(Sample {
            image,
            labels,
            height: size,
            width: size,
        });
    }
    InMemorySource::new(samples, 4, IGNORE)
}

pub fn tiny_config(width: usize) -> SegmenterConfig {
    SegmenterConfig::Tiny(TinySegConfig {
        num_classes: 4,
        width,
        class_names: Vec::new(),
    })
}

/// A tiny segmenter whose weights are variables of a fresh `VarMap`.
pub fn trainable_tiny(width: usize, seed: u64) -> (Box<dyn Segmenter>, VarMap) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = tiny_config(width).build(&vb).unwrap();
    semla_train::runs::reseed_varmap(&varmap, seed, &Default::default()).unwrap();
    (model, varmap)
}

/// Rebuilds `model`'s weights as plain (frozen) tensors.
pub fn frozen_copy(model: &dyn Segmenter) -> Box<dyn Segmenter> {
    let tensors: HashMap<String, Tensor> = model
        .named_tensors()
        .into_iter()
        .map(|(k, v)| (k, v.detach().copy().unwrap()))
        .collect();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    model.config().build(&vb).unwrap()
}

/// Bit patterns of every weight of `model`, by name.
pub fn weight_bits(model: &dyn Segmenter) -> Vec<(String, Vec<u32>)> {
    let mut out: Vec<(String, Vec<u32>)> = model
        .named_tensors()
        .into_iter()
        .map(|(k, v)| {
            let bits = v
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect();
            (k, bits)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}
