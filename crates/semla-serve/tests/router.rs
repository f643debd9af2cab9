//! The routes driven without a socket (`tower::ServiceExt::oneshot`): every
//! status code, limit and error body, the explanation against the pipeline
//! itself, the OpenAPI document against the router, the metrics text.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt as _;
use semla_pipeline::Request as PipelineRequest;
use semla_serve::{ServeConfig, Started};
use serde_json::{Value, json};
use tower::ServiceExt as _;

use common::*;

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// Asserts an error reply: its status and `type`, and that the message
    /// holds `says`.
    fn assert_error(&self, status: u16, kind: &str, says: &str) {
        let body = self.json();
        assert_eq!(self.status.as_u16(), status, "{body}");
        assert_eq!(body["type"], kind, "{body}");
        let message = body["error"].as_str().unwrap();
        assert!(message.contains(says), "`{message}` does not say `{says}`");
    }
}

async fn call(server: &Started, request: Request<Body>) -> Reply {
    let response = server.router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn post(path: &str, content_type: &str, body: Vec<u8>) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body))
        .unwrap()
}

fn multipart(image: &[u8], params: Option<Value>) -> Request<Body> {
    let (content_type, body) = semla_serve::client::multipart(image, params.as_ref());
    post("/v1/segment", &content_type, body)
}

async fn server() -> Started {
    started(ServeConfig::default(), spec()).await
}

#[tokio::test]
async fn a_multipart_upload_is_segmented_as_the_pipeline_segments_it_and_explained() {
    let server = server().await;
    let reply = call(
        &server,
        multipart(
            &photo_bytes("fog"),
            Some(json!({"outputs": ["labels", "overlay", "confidence", "probabilities"]})),
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    // The pipeline itself, on the same photo.
    let loaded = semla_serve::engine::current(&server.state.current).unwrap();
    let photo =
        semla_data::image_io::decode_rgb(&photo_bytes("fog"), std::path::Path::new("fog"), 1 << 30)
            .unwrap();
    let expected = loaded
        .semla
        .segment(&photo, &PipelineRequest::semla())
        .unwrap();
    let (w, h, labels) = decode_labels(&unbase64(body["labels_png"].as_str().unwrap()));
    assert_eq!((w as usize, h as usize), (expected.width, expected.height));
    assert_eq!(labels, expected.labels);
    let explanation = &body["explanation"];
    assert_eq!(explanation["mode"], "semla");
    let adapters = explanation["adapters"].as_array().unwrap();
    assert_eq!(adapters.len(), expected.adapters.len());
    for (got, want) in adapters.iter().zip(&expected.adapters) {
        assert_eq!(got["name"], want.name.as_str());
        assert!((got["weight"].as_f64().unwrap() - want.weight).abs() < 1e-12);
        assert!((got["distance"].as_f64().unwrap() - want.distance.unwrap()).abs() < 1e-12);
    }
    let total: f64 = adapters.iter().map(|a| a["weight"].as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-9);
    assert_eq!(explanation["retrieval"]["top_k"], 5);
    assert_eq!(explanation["retrieval"]["metric"], "euclidean");
    assert_eq!(
        explanation["library_fingerprint"],
        loaded.library_fingerprint.as_str()
    );
    assert_eq!(explanation["model_fingerprint"], "test-model");
    for stage in [
        "decode",
        "queue",
        "embed",
        "retrieve",
        "forward",
        "postprocess",
        "encode",
    ] {
        assert!(
            explanation["timings_ms"][stage].as_f64().unwrap() >= 0.0,
            "{stage}"
        );
    }
    // Present classes count the label map's pixels.
    let mut counts = [0u64; 10];
    for &l in &labels {
        counts[usize::from(l)] += 1;
    }
    for present in body["present_classes"].as_array().unwrap() {
        let id = present["id"].as_u64().unwrap() as usize;
        assert_eq!(present["pixels"].as_u64().unwrap(), counts[id]);
    }
    assert_eq!(
        body["present_classes"].as_array().unwrap().len(),
        counts.iter().filter(|&&c| c > 0).count()
    );
    assert_eq!(body["classes"].as_array().unwrap().len(), 10);
    // The overlay is the photo's size; the confidence is the top-1 probability.
    let overlay =
        image::load_from_memory(&unbase64(body["overlay_png"].as_str().unwrap())).unwrap();
    assert_eq!((overlay.width(), overlay.height()), (w, h));
    let confidence =
        image::load_from_memory(&unbase64(body["confidence_png"].as_str().unwrap())).unwrap();
    let confidence = confidence.to_luma8();
    let probabilities = body["probabilities"].clone();
    assert_eq!(probabilities["shape"], json!([10, h, w]));
    let npy =
        semla_adapters::npz::parse_npy(&unbase64(probabilities["data"].as_str().unwrap())).unwrap();
    let pixels = (w * h) as usize;
    for p in [0, pixels / 2, pixels - 1] {
        let column: Vec<f32> = (0..10).map(|c| npy.data[c * pixels + p]).collect();
        let sum: f32 = column.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4, "probabilities sum to {sum}");
        let (best, top) = column
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |a, (i, &v)| if v > a.1 { (i, v) } else { a });
        assert_eq!(usize::from(labels[p]), best);
        let grey = confidence.as_raw()[p];
        assert_eq!(grey, (top * 255.0).round() as u8);
    }
}

#[tokio::test]
async fn raw_and_base64_bodies_and_png_replies() {
    let server = server().await;
    let photo = photo_bytes("night");
    let raw = call(
        &server,
        post(
            "/v1/segment?mode=adapters&adapters=fog:0.25,night:0.75",
            "image/png",
            photo.clone(),
        ),
    )
    .await;
    assert_eq!(raw.status, StatusCode::OK);
    let raw = raw.json();
    assert_eq!(raw["explanation"]["mode"], "adapters");
    assert_eq!(raw["explanation"]["adapters"][1]["weight"], 0.75);
    assert!(raw["explanation"]["retrieval"].is_null());
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(&photo);
    let body = json!({"image": encoded, "mode": "adapters",
        "adapters": [{"name": "fog", "weight": 0.25}, {"name": "night", "weight": 0.75}]});
    let json_reply = call(
        &server,
        post(
            "/v1/segment",
            "application/json",
            body.to_string().into_bytes(),
        ),
    )
    .await;
    assert_eq!(json_reply.status, StatusCode::OK);
    assert_eq!(json_reply.json()["labels_png"], raw["labels_png"]);
    let data_url = json!({"image": format!("data:image/png;base64,{encoded}"), "mode": "zeroshot"});
    let zero = call(
        &server,
        post(
            "/v1/segment",
            "application/json",
            data_url.to_string().into_bytes(),
        ),
    )
    .await;
    assert_eq!(zero.status, StatusCode::OK);
    assert_eq!(zero.json()["explanation"]["adapters"], json!([]));
    // Accept: image/png: the label PNG itself, the mixture in headers.
    let request = Request::post("/v1/segment?mode=uniform")
        .header(header::CONTENT_TYPE, "image/png")
        .header(header::ACCEPT, "image/png")
        .body(Body::from(photo))
        .unwrap();
    let png_reply = call(&server, request).await;
    assert_eq!(png_reply.status, StatusCode::OK);
    assert_eq!(png_reply.headers[header::CONTENT_TYPE], "image/png");
    let (w, h, _) = decode_labels(&png_reply.body);
    assert_eq!((w, h), (64, 48));
    let mixture = png_reply.headers["x-semla-adapters"].to_str().unwrap();
    assert_eq!(mixture, "clear=0.333333;fog=0.333333;night=0.333333");
    assert!(
        png_reply
            .headers
            .contains_key("x-semla-library-fingerprint")
    );
}

#[tokio::test]
async fn leave_one_out_and_request_settings_change_the_mixture() {
    let server = server().await;
    let reply = call(
        &server,
        multipart(
            &photo_bytes("fog"),
            Some(json!({"exclude": ["fog"], "top_k": 1, "temperature": 0.5})),
        ),
    )
    .await;
    let body = reply.json();
    assert_eq!(reply.status, StatusCode::OK, "{body}");
    let adapters = body["explanation"]["adapters"].as_array().unwrap();
    assert_eq!(adapters.len(), 1);
    assert_ne!(adapters[0]["name"], "fog");
    assert_eq!(adapters[0]["weight"], 1.0);
    assert_eq!(body["explanation"]["retrieval"]["exclude"], json!(["fog"]));
    assert_eq!(body["explanation"]["retrieval"]["temperature"], 0.5);
}

#[tokio::test]
async fn bad_requests_get_400_with_what_is_wrong() {
    let server = server().await;
    let fog = photo_bytes("fog");
    let cases: Vec<(Request<Body>, &str)> = vec![
        (
            multipart(&fog[..fog.len() / 2], None),
            "truncated or corrupt PNG",
        ),
        (
            post("/v1/segment", "image/png", Vec::new()),
            "the image is empty",
        ),
        (
            post("/v1/segment", "application/json", b"{not json".to_vec()),
            "not a JSON object",
        ),
        (
            post(
                "/v1/segment",
                "application/json",
                br#"{"mode": "semla"}"#.to_vec(),
            ),
            "has no `image`",
        ),
        (
            post(
                "/v1/segment",
                "application/json",
                br#"{"image": "%%%"}"#.to_vec(),
            ),
            "not valid base64",
        ),
        (
            post("/v1/segment?top_k=two", "image/png", fog.clone()),
            "`top_k` must be a whole number",
        ),
        (
            post("/v1/segment?colour=red", "image/png", fog.clone()),
            "unknown query parameter `colour`",
        ),
        (
            {
                let (ct, mut body) = semla_serve::client::multipart(&fog, None);
                body.truncate(body.len() - 10);
                post("/v1/segment", &ct, body)
            },
            "multipart",
        ),
        (
            {
                let (ct, body) = semla_serve::client::multipart(&fog, None);
                let text =
                    String::from_utf8_lossy(&body).replace("name=\"image\"", "name=\"picture\"");
                post("/v1/segment", &ct, text.into_bytes())
            },
            "",
        ),
    ];
    for (request, says) in cases {
        let reply = call(&server, request).await;
        reply.assert_error(400, "bad_request", says);
    }
    let bad_params = {
        let (ct, body) = semla_serve::client::multipart(&fog, None);
        let text = String::from_utf8_lossy(&body).into_owned();
        let text = text.replace(
            "--semla-boundary-7d1f0c9a--",
            "--semla-boundary-7d1f0c9a\r\nContent-Disposition: form-data; name=\"params\"\r\n\r\n{\"top_k\": \"x\"}\r\n--semla-boundary-7d1f0c9a--",
        );
        post("/v1/segment", &ct, text.into_bytes())
    };
    call(&server, bad_params)
        .await
        .assert_error(400, "bad_request", "the params are not valid");
    let unknown_key = multipart(&fog, Some(json!({"topk": 2})));
    call(&server, unknown_key)
        .await
        .assert_error(400, "bad_request", "unknown field `topk`");
}

#[tokio::test]
async fn requests_that_cannot_be_served_get_422() {
    let server = server().await;
    let fog = photo_bytes("fog");
    let cases = [
        (json!({"mode": "magic"}), "unknown mode `magic`"),
        (json!({"mode": "adapters"}), "needs `adapters`"),
        (
            json!({"mode": "adapters", "adapters": [{"name": "snow", "weight": 1.0}]}),
            "`snow` is not an adapter of this library",
        ),
        (
            json!({"mode": "adapters", "adapters": [{"name": "fog", "weight": 1.0}, {"name": "fog", "weight": 1.0}]}),
            "listed twice",
        ),
        (json!({"top_k": 0}), "top"),
        (json!({"temperature": -1.0}), "temperature"),
        (json!({"metric": "manhattan"}), "metric"),
        (
            json!({"mode": "zeroshot", "top_k": 2}),
            "for mode `semla` only",
        ),
        (json!({"exclude": ["rain"]}), "`rain` is not an adapter"),
        (json!({"combination": "ties"}), "unknown combination"),
        (json!({"fusion": "late"}), "unknown fusion"),
        (
            json!({"outputs": ["labels", "heatmap"]}),
            "unknown output `heatmap`",
        ),
        (json!({"classes": ["road", "car"]}), "fixed class list"),
    ];
    for (params, says) in cases {
        call(&server, multipart(&fog, Some(params.clone())))
            .await
            .assert_error(422, "validation", says);
    }
    // Weights that are not finite cannot come through JSON; the query can say NaN.
    call(
        &server,
        post(
            "/v1/segment?mode=adapters&adapters=fog:NaN",
            "image/png",
            fog.clone(),
        ),
    )
    .await
    .assert_error(422, "validation", "not a finite number");
    let small = ServeConfig {
        max_classes: 2,
        max_probability_values: 1000,
        ..ServeConfig::default()
    };
    let limited = started(small, spec()).await;
    call(
        &limited,
        multipart(&fog, Some(json!({"classes": ["a", "b", "c"]}))),
    )
    .await
    .assert_error(422, "validation", "more than the limit of 2");
    call(
        &limited,
        multipart(&fog, Some(json!({"outputs": ["probabilities"]}))),
    )
    .await
    .assert_error(422, "validation", "more than the limit of 1000");
}

#[tokio::test]
async fn limits_unsupported_types_keys_and_routes() {
    let fog = photo_bytes("fog");
    let config = ServeConfig {
        max_body_bytes: 8000,
        max_pixels: 64 * 48,
        api_key: Some("sesame".into()),
        ..ServeConfig::default()
    };
    let server = started(config, spec()).await;
    let with_key = |mut request: Request<Body>| {
        request
            .headers_mut()
            .insert(header::AUTHORIZATION, "Bearer sesame".parse().unwrap());
        request
    };
    // 401 without the key; the probes and the page stay open.
    call(&server, post("/v1/segment", "image/png", fog.clone()))
        .await
        .assert_error(401, "unauthorized", "Bearer");
    let mut wrong = post("/v1/segment", "image/png", fog.clone());
    wrong
        .headers_mut()
        .insert(header::AUTHORIZATION, "Bearer open".parse().unwrap());
    call(&server, wrong)
        .await
        .assert_error(401, "unauthorized", "");
    for open in [
        "/",
        "/health/live",
        "/health/ready",
        "/openapi.json",
        "/v1/sample.png",
    ] {
        assert_eq!(
            call(&server, get(open)).await.status,
            StatusCode::OK,
            "{open}"
        );
    }
    assert_eq!(
        call(&server, get("/info")).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(
            &server,
            with_key(post("/v1/segment", "image/png", fog.clone()))
        )
        .await
        .status,
        StatusCode::OK
    );
    // 413: a body over --max-body-bytes, an image over --max-pixels (from its header).
    let big = vec![0u8; 9000];
    call(&server, with_key(post("/v1/segment", "image/png", big)))
        .await
        .assert_error(413, "too_large", "8000 bytes");
    let wide = semla_data::image_io::rgb_png_bytes(&semla_data::RgbImage::new(65, 48)).unwrap();
    call(&server, with_key(post("/v1/segment", "image/png", wide)))
        .await
        .assert_error(413, "too_large", "65x48 = 3120 pixels");
    // A PNG header claiming a huge size is refused before any pixel is decoded.
    let bomb = semla_test_support::png::claiming_size(fog.clone(), 100_000, 100_000);
    call(&server, with_key(post("/v1/segment", "image/png", bomb)))
        .await
        .assert_error(413, "too_large", "100000x100000");
    // 415: not PNG/JPEG, or a content type the route does not take.
    let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec();
    call(&server, with_key(post("/v1/segment", "image/png", gif)))
        .await
        .assert_error(415, "unsupported_media_type", "PNG or JPEG");
    call(
        &server,
        with_key(post("/v1/segment", "text/plain", fog.clone())),
    )
    .await
    .assert_error(415, "unsupported_media_type", "text/plain");
    // 403: reloads are off by default; 404 and 405 as JSON.
    call(
        &server,
        with_key(post("/v1/library/reload", "application/json", Vec::new())),
    )
    .await
    .assert_error(403, "forbidden", "--allow-runtime-updates");
    call(&server, get("/v2/segment"))
        .await
        .assert_error(404, "not_found", "/v2/segment");
    call(&server, get("/v1/segment"))
        .await
        .assert_error(405, "method_not_allowed", "GET");
}

#[tokio::test]
async fn over_max_concurrent_is_429_with_retry_after_and_a_timeout_is_503() {
    let config = ServeConfig {
        max_concurrent: 2,
        ..ServeConfig::default()
    };
    let server = started(config, spec()).await;
    // Both permits taken, as two requests in flight would take them.
    let held = server
        .state
        .permits
        .clone()
        .acquire_many_owned(2)
        .await
        .unwrap();
    let reply = call(
        &server,
        post("/v1/segment", "image/png", photo_bytes("fog")),
    )
    .await;
    reply.assert_error(429, "overloaded", "more than 2 requests in flight");
    assert_eq!(reply.headers[header::RETRY_AFTER], "1");
    drop(held);
    assert_eq!(
        call(
            &server,
            post("/v1/segment", "image/png", photo_bytes("fog"))
        )
        .await
        .status,
        StatusCode::OK
    );
    let hurried = ServeConfig {
        request_timeout: Duration::from_nanos(1),
        ..ServeConfig::default()
    };
    let server = started(hurried, spec()).await;
    let reply = call(
        &server,
        post("/v1/segment", "image/png", photo_bytes("fog")),
    )
    .await;
    reply.assert_error(503, "unavailable", "--request-timeout");
    assert!(reply.headers.contains_key(header::RETRY_AFTER));
}

#[tokio::test]
async fn not_ready_until_loaded_and_a_failed_load_says_why() {
    let missing = tempfile::tempdir().unwrap();
    let spec = spec_with_library(&missing.path().join("no-library"));
    let mut server = semla_serve::start(ServeConfig::default(), spec).unwrap();
    assert_eq!(
        call(&server, get("/health/live")).await.status,
        StatusCode::OK
    );
    let outcome = (&mut server.loading).await.unwrap();
    assert!(outcome.is_err());
    call(&server, get("/health/ready"))
        .await
        .assert_error(503, "unavailable", "loading failed");
    call(
        &server,
        post("/v1/segment", "image/png", photo_bytes("fog")),
    )
    .await
    .assert_error(503, "unavailable", "no-library");
    call(&server, get("/v1/adapters"))
        .await
        .assert_error(503, "unavailable", "not ready");
    let info = call(&server, get("/info")).await.json();
    assert_eq!(info["ready"], false);
}

#[tokio::test]
async fn adapters_info_openapi_and_metrics() {
    let server = server().await;
    for _ in 0..2 {
        assert_eq!(
            call(
                &server,
                post("/v1/segment", "image/png", photo_bytes("fog"))
            )
            .await
            .status,
            StatusCode::OK
        );
    }
    let adapters = call(&server, get("/v1/adapters")).await.json();
    let list = adapters["adapters"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    for a in list {
        assert_eq!(a["rank"], 2);
        assert_eq!(a["alpha"], 400.0);
        assert_eq!(a["sites"], a["sites_matched"]);
        assert_eq!(a["prototype"], true);
        assert_eq!(a["candidate"], true);
        // top-5 of 3 candidates: every image's mixture holds all three.
        assert_eq!(a["times_selected"], 2, "{a}");
    }
    assert_eq!(adapters["broken"], json!([]));
    let info = call(&server, get("/info")).await.json();
    assert_eq!(info["ready"], true);
    assert_eq!(
        info["served"]["candidates"],
        json!(["clear", "fog", "night"])
    );
    assert_eq!(info["limits"]["max_concurrent"], 32);
    assert_eq!(
        info["served"]["library_fingerprint"],
        adapters["library_fingerprint"]
    );

    // The document lists exactly the routes, and each route exists.
    let doc = call(&server, get("/openapi.json")).await.json();
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.push((method.clone(), path.clone()));
        }
    }
    documented.sort();
    let mut routes: Vec<(String, String)> = semla_serve::openapi::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    routes.sort();
    assert_eq!(documented, routes);
    for (method, path) in &routes {
        let request = Request::builder()
            .method(method.to_uppercase().as_str())
            .uri(path.as_str())
            .body(Body::empty())
            .unwrap();
        let status = call(&server, request).await.status;
        assert!(
            status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {status}"
        );
    }

    let reply = call(&server, get("/metrics")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let text = String::from_utf8(reply.body).unwrap();
    let samples = parse_metrics(&text);
    let value = |name: &str, labels: &str| -> f64 {
        samples
            .iter()
            .find(|(n, l, _)| n == name && l == labels)
            .map(|s| s.2)
            .unwrap_or_else(|| panic!("no {name}{{{labels}}} in\n{text}"))
    };
    assert_eq!(
        value(
            "semla_requests_total",
            "route=\"/v1/segment\",status=\"200\""
        ),
        2.0
    );
    assert_eq!(
        value("semla_adapter_selected_total", "adapter=\"fog\""),
        2.0
    );
    assert_eq!(value("semla_batch_size_count", ""), 2.0);
    assert_eq!(value("semla_in_flight", ""), 0.0);
    assert_eq!(
        value("semla_stage_duration_seconds_count", "stage=\"forward\""),
        2.0
    );
    assert!(text.trim_end().ends_with("# EOF"));
}

/// Parses the text exposition into (name, labels, value), failing on any line
/// that is neither a comment nor a sample.
fn parse_metrics(text: &str) -> Vec<(String, String, f64)> {
    let mut samples = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (
                name,
                rest.strip_suffix('}')
                    .unwrap_or_else(|| panic!("bad labels in {line}")),
            ),
            None => (series, ""),
        };
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad name in {line}"
        );
        samples.push((name.to_string(), labels.to_string(), value));
    }
    samples
}

#[tokio::test]
async fn a_reload_swaps_in_the_new_library_whole_and_a_broken_one_keeps_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let library = dir.path().join("library");
    copy_dir(&fixtures().join("library"), &library);
    let config = ServeConfig {
        allow_runtime_updates: true,
        ..ServeConfig::default()
    };
    let server = started(config, spec_with_library(&library)).await;
    let before = call(&server, get("/health/ready")).await.json()["library_fingerprint"].clone();
    // One adapter's config is damaged: it is reported, the others still serve.
    std::fs::write(library.join("night/adapter_config.json"), b"{ broken").unwrap();
    let reply = call(
        &server,
        post("/v1/library/reload", "application/json", Vec::new()),
    )
    .await;
    let body = reply.json();
    assert_eq!(reply.status, StatusCode::OK, "{body}");
    assert_eq!(body["candidates"], json!(["clear", "fog"]));
    assert_eq!(body["broken"][0]["name"], "night");
    assert!(
        body["broken"][0]["error"]
            .as_str()
            .unwrap()
            .contains("adapter_config.json")
    );
    assert_eq!(body["previous_library_fingerprint"], before);
    assert_ne!(body["library_fingerprint"], before);
    let ready = call(&server, get("/health/ready")).await.json();
    assert_eq!(ready["library_fingerprint"], body["library_fingerprint"]);
    let adapters = call(&server, get("/v1/adapters")).await.json();
    assert_eq!(adapters["broken"][0]["name"], "night");
    let segment = call(
        &server,
        post("/v1/segment", "image/png", photo_bytes("night")),
    )
    .await
    .json();
    let names: Vec<&str> = segment["explanation"]["adapters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert!(!names.contains(&"night"));
    // A library that cannot be read at all: 422, and the previous one still serves.
    std::fs::remove_dir_all(&library).unwrap();
    call(
        &server,
        post("/v1/library/reload", "application/json", Vec::new()),
    )
    .await
    .assert_error(422, "validation", "the previous one is still served");
    let ready = call(&server, get("/health/ready")).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(
        ready.json()["library_fingerprint"],
        body["library_fingerprint"]
    );
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test]
async fn a_jpeg_upload_is_decoded_as_the_cli_decodes_it_and_a_cut_one_is_refused() {
    let server = server().await;
    let photo = semla_data::image_io::read_rgb(&fixtures().join("images/fog.png")).unwrap();
    let mut jpeg = std::io::Cursor::new(Vec::new());
    photo.write_to(&mut jpeg, image::ImageFormat::Jpeg).unwrap();
    let jpeg = jpeg.into_inner();
    let reply = call(
        &server,
        post("/v1/segment?mode=zeroshot", "image/jpeg", jpeg.clone()),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let (_, _, labels) = decode_labels(&unbase64(reply.json()["labels_png"].as_str().unwrap()));
    // The same bytes through the CLI's decoder and the pipeline.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fog.jpg");
    std::fs::write(&file, &jpeg).unwrap();
    let decoded = semla_data::image_io::read_rgb(&file).unwrap();
    let loaded = semla_serve::engine::current(&server.state.current).unwrap();
    let expected = loaded
        .semla
        .segment(
            &decoded,
            &PipelineRequest::mode(semla_pipeline::Mode::ZeroShot),
        )
        .unwrap();
    assert_eq!(labels, expected.labels);
    call(
        &server,
        post(
            "/v1/segment",
            "image/jpeg",
            jpeg[..jpeg.len() * 2 / 3].to_vec(),
        ),
    )
    .await
    .assert_error(400, "bad_request", "truncated or corrupt JPEG");
}
