//! The HTTP routes and the layers around them (panic backstop, metrics,
//! API key). Handlers check and decode off the model thread, queue the image
//! for the engine and encode its answer on the blocking pool.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::{Mutex, Semaphore, mpsc, oneshot};

use crate::config::ServeConfig;
use crate::engine::{self, Current, Job};
use crate::error::{ApiError, ApiResult, ErrorKind};
use crate::input::{SegmentParams, decode_image, from_json_body};
use crate::loaded::{LoadSpec, Loaded};
use crate::metrics::Metrics;

/// What every handler shares.
pub struct AppState {
    /// The server's settings.
    pub config: ServeConfig,
    /// Where the library comes from (for reloads).
    pub spec: LoadSpec,
    /// The pipeline being served.
    pub current: Current,
    /// The model thread's queue.
    pub queue: mpsc::Sender<Job>,
    /// Admission: one permit per request in flight (`--max-concurrent`).
    pub permits: Arc<Semaphore>,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// One reload at a time.
    pub reload_lock: Mutex<()>,
    /// Why the first load failed, if it did.
    pub load_error: std::sync::RwLock<Option<String>>,
}

impl AppState {
    fn loaded(&self) -> ApiResult<Arc<Loaded>> {
        engine::current(&self.current).ok_or_else(|| {
            let why = match self.load_error.read() {
                Ok(e) => e.clone(),
                Err(_) => None,
            };
            ApiError::new(
                ErrorKind::Unavailable,
                why.map_or("not ready: the model and library are loading".into(), |e| {
                    format!("not ready: loading failed: {e}")
                }),
            )
            .retry_after(1)
        })
    }
}

/// The router of a server (no socket: tests drive it with `oneshot`).
pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.config.max_body_bytes;
    let protected = Router::new()
        .route("/v1/segment", post(segment))
        .route("/v1/adapters", get(adapters))
        .route("/v1/library/reload", post(reload))
        .route("/info", get(info))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .route("/", get(page))
        .route("/v1/sample.png", get(sample))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/openapi.json", get(openapi))
        .merge(protected)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // The body is read whole below its own limit (413 as JSON); multipart
        // parsing must not apply axum's 2 MB default on top.
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), record))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .with_state(state)
}

/// A panic that escaped a handler (a bug): a JSON 500, and the server goes on.
fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::internal("the server hit a bug handling this request (a panic was caught)")
        .into_response()
}

async fn record(
    State(state): State<Arc<AppState>>,
    matched: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let route = matched.map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    state.metrics.record_request(
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

async fn require_key(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.config.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return ApiError::new(
                ErrorKind::Unauthorized,
                "this server needs `Authorization: Bearer <key>`",
            )
            .into_response();
        }
    }
    next.run(request).await
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        format!(
            "no route {} (GET /openapi.json lists them)",
            request.uri().path()
        ),
    )
}

async fn method_not_allowed(request: Request) -> Response {
    let body = json!({
        "error": format!("{} is not allowed on {}", request.method(), request.uri().path()),
        "type": "method_not_allowed",
    });
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}

async fn live() -> Json<serde_json::Value> {
    Json(json!({ "status": "live" }))
}

async fn ready(State(state): State<Arc<AppState>>) -> ApiResult<Json<serde_json::Value>> {
    let loaded = state.loaded()?;
    Ok(Json(json!({
        "status": "ready",
        "model_fingerprint": loaded.model_fingerprint,
        "library_fingerprint": loaded.library_fingerprint,
    })))
}

async fn page() -> Html<&'static str> {
    Html(crate::page::HTML)
}

async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi::document())
}

async fn sample() -> ApiResult<Response> {
    let png = tokio::task::spawn_blocking(|| -> ApiResult<Vec<u8>> {
        let photo = crate::loaded::sample_photo().map_err(|e| ApiError::from(*e))?;
        semla_data::image_io::rgb_png_bytes(&photo)
            .map_err(|e| ApiError::internal(format!("encoding the sample: {e}")))
    })
    .await
    .map_err(|e| ApiError::internal(format!("the sample task failed: {e}")))??;
    Ok(([(header::CONTENT_TYPE, "image/png")], png).into_response())
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn info(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let loaded = engine::current(&state.current);
    let served = loaded.as_ref().map(|l| {
        let settings = l.semla.settings();
        json!({
            "model": l.model_name,
            "model_fingerprint": l.model_fingerprint,
            "library": l.semla.library().root(),
            "library_fingerprint": l.library_fingerprint,
            "embedder": l.embedder,
            "candidates": l.semla.library().sources(),
            "classes": l.classes,
            "retrieval": settings.retrieval,
            "combination": settings.combination.to_string(),
            "fusion": settings.fusion.as_str(),
            "loaded_unix_s": l.loaded_at
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default(),
            "load_s": l.load_s,
        })
    });
    Json(json!({
        "name": "semla",
        "version": env!("CARGO_PKG_VERSION"),
        "ready": loaded.is_some(),
        "served": served,
        "limits": state.config.limits_json(),
        "device": "cpu",
        "features": crate::COMPILED_FEATURES,
        "open_vocabulary": false,
    }))
}

async fn adapters(State(state): State<Arc<AppState>>) -> ApiResult<Json<serde_json::Value>> {
    let loaded = state.loaded()?;
    let adapters: Vec<_> = loaded
        .adapters
        .iter()
        .map(|a| {
            let mut a = a.clone();
            a.times_selected = state.metrics.times_selected(&a.name);
            a
        })
        .collect();
    Ok(Json(json!({
        "library": loaded.semla.library().root(),
        "library_fingerprint": loaded.library_fingerprint,
        "adapters": adapters,
        "broken": loaded.broken,
    })))
}

async fn reload(State(state): State<Arc<AppState>>) -> ApiResult<Json<serde_json::Value>> {
    if !state.config.allow_runtime_updates {
        return Err(ApiError::new(
            ErrorKind::Forbidden,
            "library reloads are off (start the server with --allow-runtime-updates)",
        ));
    }
    let _one_at_a_time = state.reload_lock.lock().await;
    let spec = state.spec.clone();
    let outcome = tokio::task::spawn_blocking(move || spec.load())
        .await
        .map_err(|e| ApiError::internal(format!("the reload task failed: {e}")))?;
    match outcome {
        Ok(loaded) => {
            let loaded = Arc::new(loaded);
            let previous = engine::current(&state.current).map(|l| l.library_fingerprint.clone());
            engine::replace(&state.current, loaded.clone());
            state
                .metrics
                .reloads
                .get_or_create(&vec![("result".into(), "ok".into())])
                .inc();
            Ok(Json(json!({
                "reloaded": true,
                "previous_library_fingerprint": previous,
                "library_fingerprint": loaded.library_fingerprint,
                "candidates": loaded.semla.library().sources(),
                "broken": loaded.broken,
                "load_s": loaded.load_s,
            })))
        }
        Err(e) => {
            state
                .metrics
                .reloads
                .get_or_create(&vec![("result".into(), "failed".into())])
                .inc();
            Err(ApiError::validation(format!(
                "the library could not be reloaded; the previous one is still served: {e}"
            )))
        }
    }
}

/// An admitted request: holds a permit and counts in `semla_in_flight`.
struct Admission {
    _permit: tokio::sync::OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
    }
}

fn admit(state: &AppState) -> ApiResult<Admission> {
    let permit = state.permits.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            ErrorKind::Overloaded,
            format!(
                "more than {} requests in flight; retry later",
                state.config.max_concurrent
            ),
        )
        .retry_after(state.config.retry_after_s)
    })?;
    state.metrics.in_flight.inc();
    Ok(Admission {
        _permit: permit,
        metrics: state.metrics.clone(),
    })
}

/// The image bytes and parameters of a segment request, by content type.
async fn read_upload(state: &AppState, request: Request) -> ApiResult<(Bytes, SegmentParams)> {
    let limit = state.config.max_body_bytes;
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let (parts, body) = request.into_parts();
    let too_large = || {
        ApiError::new(
            ErrorKind::TooLarge,
            format!("the body is larger than the limit of {limit} bytes (--max-body-bytes)"),
        )
    };
    if let Some(length) = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && length > limit as u64
    {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())?;
    match essence.as_str() {
        "image/png" | "image/jpeg" | "image/jpg" => Ok((bytes, SegmentParams::from_query(&query)?)),
        "application/json" => {
            let (image, params) = from_json_body(&bytes)?;
            Ok((Bytes::from(image), params))
        }
        "multipart/form-data" => {
            let request = Request::from_parts(parts, Body::from(bytes));
            let mut multipart = axum::extract::Multipart::from_request(request, &())
                .await
                .map_err(|e| ApiError::bad_request(format!("the multipart body: {e}")))?;
            let mut image = None;
            let mut params = SegmentParams::default();
            while let Some(field) = multipart
                .next_field()
                .await
                .map_err(|e| ApiError::bad_request(format!("the multipart body: {e}")))?
            {
                let name = field.name().unwrap_or("").to_string();
                let data = field.bytes().await.map_err(|e| {
                    ApiError::bad_request(format!("the multipart field `{name}`: {e}"))
                })?;
                match name.as_str() {
                    "image" => image = Some(data),
                    "params" => params = SegmentParams::from_json(&data)?,
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "unknown multipart field `{other}` (expected image and params)"
                        )));
                    }
                }
            }
            let image =
                image.ok_or_else(|| ApiError::bad_request("the multipart body has no `image`"))?;
            Ok((image, params))
        }
        "" => Err(ApiError::new(
            ErrorKind::UnsupportedMediaType,
            "no Content-Type: send multipart/form-data, image/png, image/jpeg or application/json",
        )),
        other => Err(ApiError::new(
            ErrorKind::UnsupportedMediaType,
            format!(
                "Content-Type `{other}` is not taken: send multipart/form-data, image/png, \
                 image/jpeg or application/json"
            ),
        )),
    }
}

async fn segment(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    request: Request,
) -> ApiResult<Response> {
    let arrived = Instant::now();
    let _admission = admit(&state)?;
    let loaded = state.loaded()?;
    let deadline = arrived + state.config.request_timeout;
    let (bytes, params) = read_upload(&state, request).await?;
    let request = params.to_request(&loaded, state.config.max_classes)?;
    let outputs = params.outputs()?;
    let max_pixels = state.config.max_pixels;
    let decode_started = Instant::now();
    let photo = tokio::task::spawn_blocking(move || decode_image(&bytes, max_pixels))
        .await
        .map_err(|e| ApiError::internal(format!("the decode task failed: {e}")))??;
    let decode_s = decode_started.elapsed().as_secs_f64();
    state.metrics.record_stage("decode", decode_s);
    if request.probabilities && outputs.iter().any(|o| o == "probabilities") {
        let values = (loaded.classes.len() as u64)
            .saturating_mul(u64::from(photo.width()))
            .saturating_mul(u64::from(photo.height()));
        if values > state.config.max_probability_values {
            return Err(ApiError::validation(format!(
                "the probabilities would hold {values} values, more than the limit of {} \
                 (send a smaller image, or ask for `confidence`)",
                state.config.max_probability_values
            )));
        }
    }
    let photo = Arc::new(photo);
    let (respond, answer) = oneshot::channel();
    let job = Job {
        photo: photo.clone(),
        request: request.clone(),
        respond,
        queued: Instant::now(),
    };
    state.queue.try_send(job).map_err(|_| {
        ApiError::new(
            ErrorKind::Overloaded,
            "the model queue is full; retry later",
        )
        .retry_after(state.config.retry_after_s)
    })?;
    let timed_out = || {
        ApiError::new(
            ErrorKind::Unavailable,
            format!(
                "the request took longer than {:.1} s (--request-timeout)",
                state.config.request_timeout.as_secs_f64()
            ),
        )
        .retry_after(state.config.retry_after_s)
    };
    // Dropping `answer` on timeout (or when the client leaves and this future
    // is dropped) tells the model thread to skip the job.
    let done = tokio::time::timeout_at(deadline.into(), answer)
        .await
        .map_err(|_| timed_out())?
        .map_err(|_| ApiError::new(ErrorKind::Unavailable, "the model thread has stopped"))??;
    // The timer fires at millisecond grain and only when polled: an answer that
    // arrived past the deadline is late all the same.
    if Instant::now() > deadline {
        return Err(timed_out());
    }
    let wants_png = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("image/png") && !a.contains("application/json"));
    let metrics = state.metrics.clone();
    let encoded = tokio::task::spawn_blocking(move || {
        crate::output::encode(&done, &photo, &request, &outputs, decode_s).map(|e| {
            (
                e,
                done.loaded.library_fingerprint.clone(),
                done.prediction.adapters,
            )
        })
    })
    .await
    .map_err(|e| ApiError::internal(format!("the encode task failed: {e}")))?;
    let (encoded, library_fingerprint, adapters) = encoded?;
    if let Some(ms) = encoded.json["explanation"]["timings_ms"]["encode"].as_f64() {
        metrics.record_stage("encode", ms / 1e3);
    }
    if wants_png {
        let mixture: Vec<String> = adapters
            .iter()
            .map(|a| format!("{}={:.6}", a.name, a.weight))
            .collect();
        let mut response =
            ([(header::CONTENT_TYPE, "image/png")], encoded.labels_png).into_response();
        let headers = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&mixture.join(";")) {
            headers.insert("x-semla-adapters", v);
        }
        if let Ok(v) = HeaderValue::from_str(&library_fingerprint) {
            headers.insert("x-semla-library-fingerprint", v);
        }
        return Ok(response);
    }
    Ok(Json(encoded.json).into_response())
}
