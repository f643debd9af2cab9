//! What a `POST /v1/segment` carries: the image (multipart `image` field, a raw
//! `image/png|jpeg` body, or base64 in JSON) and its parameters (multipart
//! `params` JSON, the query string of a raw body, or the other keys of the
//! JSON), checked and turned into a pipeline [`Request`].

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use semla_adapters::Combination;
use semla_data::RgbImage;
use semla_pipeline::{AdapterChoice, Fusion, Mode, Request};
use semla_retrieval::SimilarityMeasure;
use serde::Deserialize;

use crate::error::{ApiError, ApiResult, ErrorKind};
use crate::loaded::Loaded;

/// The outputs a request may ask for.
pub const OUTPUTS: [&str; 4] = ["labels", "overlay", "confidence", "probabilities"];

/// One adapter of an explicit mixture.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WeightedAdapter {
    /// Adapter name.
    pub name: String,
    /// Its weight.
    pub weight: f64,
}

/// The parameters of a segmentation (every field optional).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SegmentParams {
    /// `semla` (default), `zeroshot`, `uniform` or `adapters`.
    pub mode: Option<String>,
    /// The mixture of `mode: adapters`.
    pub adapters: Option<Vec<WeightedAdapter>>,
    /// `cat` (default, exact), `linear` or `svd`.
    pub combination: Option<String>,
    /// `weights` (default) or `outputs` (late fusion).
    pub fusion: Option<String>,
    /// Adapters SemLA fuses (mode `semla`).
    pub top_k: Option<usize>,
    /// Softmax temperature (mode `semla`).
    pub temperature: Option<f64>,
    /// `euclidean` (default) or `cosine` (mode `semla`).
    pub metric: Option<String>,
    /// Adapters left out of the candidates (leave-one-out).
    pub exclude: Option<Vec<String>>,
    /// Class names, for open-vocabulary models.
    pub classes: Option<Vec<String>>,
    /// Outputs wanted (default `["labels"]`).
    pub outputs: Option<Vec<String>>,
}

impl SegmentParams {
    /// Parameters from a JSON text (a multipart `params` field).
    pub fn from_json(text: &[u8]) -> ApiResult<Self> {
        if text.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        serde_json::from_slice(text)
            .map_err(|e| ApiError::bad_request(format!("the params are not valid: {e}")))
    }

    /// Parameters from a query string (a raw image body):
    /// `mode=adapters&adapters=fog:0.7,night:0.3&outputs=labels,overlay`.
    pub fn from_query(query: &str) -> ApiResult<Self> {
        let mut params = Self::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value)?;
            let list = || -> Vec<String> {
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            };
            let number = |what: &str| -> ApiResult<f64> {
                value.parse::<f64>().map_err(|_| {
                    ApiError::bad_request(format!("`{what}` must be a number, not `{value}`"))
                })
            };
            match key {
                "mode" => params.mode = Some(value.clone()),
                "combination" => params.combination = Some(value.clone()),
                "fusion" => params.fusion = Some(value.clone()),
                "metric" => params.metric = Some(value.clone()),
                "top_k" => {
                    params.top_k = Some(value.parse().map_err(|_| {
                        ApiError::bad_request(format!(
                            "`top_k` must be a whole number, not `{value}`"
                        ))
                    })?);
                }
                "temperature" => params.temperature = Some(number("temperature")?),
                "exclude" => params.exclude = Some(list()),
                "classes" => params.classes = Some(list()),
                "outputs" => params.outputs = Some(list()),
                "adapters" => {
                    let mut adapters = Vec::new();
                    for item in list() {
                        let (name, weight) = item.rsplit_once(':').ok_or_else(|| {
                            ApiError::bad_request(format!(
                                "`adapters` items are NAME:WEIGHT, not `{item}`"
                            ))
                        })?;
                        let weight = weight.parse::<f64>().map_err(|_| {
                            ApiError::bad_request(format!(
                                "the weight of `{name}` must be a number, not `{weight}`"
                            ))
                        })?;
                        adapters.push(WeightedAdapter {
                            name: name.to_string(),
                            weight,
                        });
                    }
                    params.adapters = Some(adapters);
                }
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unknown query parameter `{other}` (expected mode, adapters, combination, \
                         fusion, top_k, temperature, metric, exclude, classes, outputs)"
                    )));
                }
            }
        }
        Ok(params)
    }

    /// The outputs asked for (checked).
    pub fn outputs(&self) -> ApiResult<Vec<String>> {
        let outputs = self
            .outputs
            .clone()
            .unwrap_or_else(|| vec!["labels".to_string()]);
        for o in &outputs {
            if !OUTPUTS.contains(&o.as_str()) {
                return Err(ApiError::validation(format!(
                    "unknown output `{o}` (expected {})",
                    OUTPUTS.join(", ")
                )));
            }
        }
        Ok(outputs)
    }

    /// The pipeline request these parameters describe, checked against what
    /// is served: adapters the library has, settings in range, classes only
    /// for open-vocabulary models.
    pub fn to_request(&self, loaded: &Loaded, max_classes: usize) -> ApiResult<Request> {
        let library = loaded.semla.library();
        let known = |name: &str, what: &str| -> ApiResult<()> {
            if library.sources().iter().any(|s| s == name) {
                return Ok(());
            }
            Err(ApiError::validation(format!(
                "{what} `{name}` is not an adapter of this library (candidates: {})",
                library.sources().join(", ")
            )))
        };
        if let Some(classes) = &self.classes {
            if classes.len() > max_classes {
                return Err(ApiError::validation(format!(
                    "{} classes asked for, more than the limit of {max_classes} (--max-classes)",
                    classes.len()
                )));
            }
            return Err(ApiError::validation(format!(
                "this model has a fixed class list ({} classes); `classes` is for \
                 open-vocabulary models",
                loaded.classes.len()
            )));
        }
        let mode_name = self.mode.as_deref().unwrap_or("semla");
        let mode = match mode_name {
            "semla" => Mode::Semla,
            "zeroshot" => Mode::ZeroShot,
            "uniform" => Mode::Uniform,
            "adapters" => {
                let adapters = self.adapters.as_deref().unwrap_or_default();
                if adapters.is_empty() {
                    return Err(ApiError::validation(
                        "mode `adapters` needs `adapters`: [{name, weight}, ...]",
                    ));
                }
                let mut choices = Vec::with_capacity(adapters.len());
                for a in adapters {
                    known(&a.name, "adapter")?;
                    if !a.weight.is_finite() {
                        return Err(ApiError::validation(format!(
                            "the weight of `{}` is not a finite number",
                            a.name
                        )));
                    }
                    if choices.iter().any(|c: &AdapterChoice| c.name == a.name) {
                        return Err(ApiError::validation(format!(
                            "adapter `{}` is listed twice",
                            a.name
                        )));
                    }
                    choices.push(AdapterChoice::weighted(a.name.clone(), a.weight));
                }
                Mode::Adapters(choices)
            }
            other => {
                return Err(ApiError::validation(format!(
                    "unknown mode `{other}` (expected semla, zeroshot, uniform or adapters)"
                )));
            }
        };
        if self.adapters.is_some() && mode_name != "adapters" {
            return Err(ApiError::validation(
                "`adapters` is for mode `adapters` only",
            ));
        }
        let retrieval_given =
            self.top_k.is_some() || self.temperature.is_some() || self.metric.is_some();
        let retrieval = if retrieval_given {
            if mode_name != "semla" {
                return Err(ApiError::validation(
                    "`top_k`, `temperature` and `metric` are for mode `semla` only",
                ));
            }
            let mut params = loaded.semla.settings().retrieval;
            if let Some(k) = self.top_k {
                params.top_k = k;
            }
            if let Some(t) = self.temperature {
                params.temperature = t;
            }
            if let Some(m) = &self.metric {
                params.similarity = m
                    .parse::<SimilarityMeasure>()
                    .map_err(|e| ApiError::validation(format!("`metric`: {e}")))?;
            }
            params
                .validate()
                .map_err(|e| ApiError::validation(e.to_string()))?;
            Some(params)
        } else {
            None
        };
        let exclude = self.exclude.clone().unwrap_or_default();
        for name in &exclude {
            known(name, "excluded adapter")?;
        }
        if !exclude.is_empty() && !matches!(mode, Mode::Semla | Mode::Uniform) {
            return Err(ApiError::validation(
                "`exclude` is for modes `semla` and `uniform` only",
            ));
        }
        let combination = self
            .combination
            .as_deref()
            .map(|c| {
                c.parse::<Combination>()
                    .map_err(|e| ApiError::validation(e.to_string()))
            })
            .transpose()?;
        let fusion = self
            .fusion
            .as_deref()
            .map(|f| f.parse::<Fusion>().map_err(ApiError::validation))
            .transpose()?;
        let outputs = self.outputs()?;
        Ok(Request {
            mode,
            exclude,
            retrieval,
            combination,
            fusion,
            probabilities: outputs
                .iter()
                .any(|o| o == "confidence" || o == "probabilities"),
        })
    }
}

/// `%XX` and `+` decoding of one query value.
fn percent_decode(value: &str) -> ApiResult<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("bad percent-encoding in `{value}`"))
                    })?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out)
        .map_err(|_| ApiError::bad_request(format!("`{value}` is not UTF-8 once decoded")))
}

/// The image and parameters of a JSON body `{"image": BASE64, ...params}`.
pub fn from_json_body(body: &[u8]) -> ApiResult<(Vec<u8>, SegmentParams)> {
    let mut object: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!(
                "the body is not a JSON object {{\"image\": BASE64, ...}}: {e}"
            ))
        })?;
    let image = match object.remove("image") {
        Some(serde_json::Value::String(text)) => text,
        Some(_) => return Err(ApiError::bad_request("`image` must be a base64 string")),
        None => return Err(ApiError::bad_request("the JSON body has no `image`")),
    };
    // A data URL (`data:image/png;base64,...`) is accepted as is.
    let data = image
        .split_once(";base64,")
        .map_or(image.as_str(), |(_, d)| d);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| ApiError::bad_request(format!("`image` is not valid base64: {e}")))?;
    let params: SegmentParams =
        serde_json::from_value(serde_json::Value::Object(object.into_iter().collect()))
            .map_err(|e| ApiError::bad_request(format!("the params are not valid: {e}")))?;
    Ok((bytes, params))
}

/// Decodes an uploaded image: PNG or JPEG (else 415), at most `max_pixels`
/// read from the header before any pixel is decoded (else 413), and whole
/// (else 400, naming what is wrong).
pub fn decode_image(bytes: &[u8], max_pixels: u64) -> ApiResult<RgbImage> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request("the image is empty"));
    }
    let format = image::guess_format(bytes).ok();
    if !matches!(
        format,
        Some(image::ImageFormat::Png | image::ImageFormat::Jpeg)
    ) {
        let what = format.map_or("not an image format semla knows".to_string(), |f| {
            format!("{f:?}")
        });
        return Err(ApiError::new(
            ErrorKind::UnsupportedMediaType,
            format!("the image must be PNG or JPEG ({what})"),
        ));
    }
    let header = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ApiError::bad_request(format!("the image: {e}")))?;
    let (width, height) = header
        .into_dimensions()
        .map_err(|e| ApiError::bad_request(format!("the image's header is corrupt: {e}")))?;
    semla_core::limits::check_pixels_under(
        u64::from(width),
        u64::from(height),
        max_pixels,
        "the image",
    )
    .map_err(|m| ApiError::new(ErrorKind::TooLarge, m))?;
    semla_data::image_io::decode_rgb(bytes, Path::new("the uploaded image"), max_pixels)
        .map_err(|e| ApiError::bad_request(e.to_string()))
}
