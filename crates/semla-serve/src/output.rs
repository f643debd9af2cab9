//! A segmentation's response: the label PNG (8-bit grey, 16-bit past 256
//! classes), the wanted extra outputs, the classes, the present classes with
//! their pixel counts, and the explanation (adapters with similarity and
//! weight, retrieval settings, stage timings, fingerprints).

use base64::Engine as _;
use semla_data::RgbImage;
use semla_data::labels::LabelMap;
use semla_pipeline::render::{colour_mask, overlay};
use semla_pipeline::{Mode, Request};
use serde_json::{Value, json};

use crate::engine::Done;
use crate::error::{ApiError, ApiResult};

/// The encoded outputs of one prediction.
pub struct Encoded {
    /// The label PNG.
    pub labels_png: Vec<u8>,
    /// The response JSON (without the label PNG when it goes as the body).
    pub json: Value,
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn mode_name(mode: &Mode) -> &'static str {
    match mode {
        Mode::Semla => "semla",
        Mode::ZeroShot => "zeroshot",
        Mode::Uniform => "uniform",
        Mode::Adapters(_) => "adapters",
    }
}

/// Encodes `done` for a request that asked for `outputs`; `decode_s` is the
/// time the upload took to decode. Runs off the model thread.
pub fn encode(
    done: &Done,
    photo: &RgbImage,
    request: &Request,
    outputs: &[String],
    decode_s: f64,
) -> ApiResult<Encoded> {
    let started = std::time::Instant::now();
    let prediction = &done.prediction;
    let loaded = &done.loaded;
    let (width, height) = (prediction.width, prediction.height);
    let map = LabelMap {
        width: width as u32,
        height: height as u32,
        values: prediction.labels.clone(),
    };
    let labels_png = semla_data::labels::label_map_png_bytes(&map)
        .map_err(|e| ApiError::internal(format!("encoding the label PNG: {e}")))?;
    let mut body = serde_json::Map::new();
    body.insert("width".into(), json!(width));
    body.insert("height".into(), json!(height));
    let wants = |o: &str| outputs.iter().any(|x| x == o);
    if wants("labels") {
        body.insert("labels_png".into(), json!(base64(&labels_png)));
    }
    if wants("overlay") {
        let palette: Vec<[u8; 3]> = loaded.classes.iter().map(|c| c.color).collect();
        let mask = colour_mask(&prediction.labels, width, height, &palette)?;
        let picture = overlay(&mask, photo)?;
        let png = semla_data::image_io::rgb_png_bytes(&picture)
            .map_err(|e| ApiError::internal(format!("encoding the overlay: {e}")))?;
        body.insert("overlay_png".into(), json!(base64(&png)));
    }
    let probabilities = prediction.probabilities.as_deref();
    let classes = loaded.classes.len();
    if wants("confidence") {
        let probabilities = probabilities
            .ok_or_else(|| ApiError::internal("the model returned no probabilities"))?;
        let pixels = width * height;
        let confidence: Vec<u8> = (0..pixels)
            .map(|p| {
                let top = (0..classes)
                    .filter_map(|c| probabilities.get(c * pixels + p))
                    .fold(0.0f32, |a, &b| a.max(b));
                (top.clamp(0.0, 1.0) * 255.0).round() as u8
            })
            .collect();
        let png = semla_data::image_io::png_bytes(
            width as u32,
            height as u32,
            png::ColorType::Grayscale,
            png::BitDepth::Eight,
            &confidence,
        )
        .map_err(|e| ApiError::internal(format!("encoding the confidence PNG: {e}")))?;
        body.insert("confidence_png".into(), json!(base64(&png)));
    }
    if wants("probabilities") {
        let probabilities = probabilities
            .ok_or_else(|| ApiError::internal("the model returned no probabilities"))?;
        let shape = [classes, height, width];
        let npy = semla_adapters::npz::encode_npy(&shape, probabilities);
        body.insert(
            "probabilities".into(),
            json!({ "format": "npy", "dtype": "float32", "shape": shape, "data": base64(&npy) }),
        );
    }
    body.insert("classes".into(), json!(loaded.classes));
    let present: Vec<Value> = prediction
        .class_pixels(classes)
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(id, n)| {
            let name = loaded.classes.get(id).map_or("", |c| c.name.as_str());
            json!({ "id": id, "name": name, "pixels": n })
        })
        .collect();
    body.insert("present_classes".into(), Value::Array(present));
    let settings = loaded.semla.settings();
    let retrieval = request.retrieval.unwrap_or(settings.retrieval);
    let t = prediction.timings;
    let encode_s = started.elapsed().as_secs_f64();
    let ms = |s: f64| (s * 1e6).round() / 1e3;
    body.insert(
        "explanation".into(),
        json!({
            "mode": mode_name(&request.mode),
            "adapters": prediction.adapters,
            "retrieval": (request.mode == Mode::Semla).then(|| json!({
                "embedder": loaded.embedder,
                "metric": retrieval.similarity.to_string(),
                "top_k": retrieval.top_k,
                "temperature": retrieval.temperature,
                "exclude": request.exclude,
                "candidates": loaded.semla.library().sources(),
            })),
            "combination": request.combination.unwrap_or(settings.combination).to_string(),
            "fusion": request.fusion.unwrap_or(settings.fusion).as_str(),
            "batch_size": done.batch_size,
            "timings_ms": {
                "decode": ms(decode_s),
                "queue": ms(done.queue_s),
                "embed": ms(t.embed_s),
                "retrieve": ms(t.retrieve_s),
                "forward": ms(t.forward_s),
                "postprocess": ms(t.postprocess_s),
                "encode": ms(encode_s),
            },
            "model_fingerprint": loaded.model_fingerprint,
            "library_fingerprint": loaded.library_fingerprint,
        }),
    );
    Ok(Encoded {
        labels_png,
        json: Value::Object(body),
    })
}
