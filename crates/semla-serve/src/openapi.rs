//! `GET /openapi.json`: the OpenAPI 3.1 description of the routes (written
//! here by hand; a test checks that it lists exactly the router's routes).

use serde_json::{Value, json};

/// Every route as (method, path); the router and the document must agree.
pub const ROUTES: [(&str, &str); 10] = [
    ("get", "/"),
    ("get", "/v1/sample.png"),
    ("get", "/health/live"),
    ("get", "/health/ready"),
    ("get", "/openapi.json"),
    ("post", "/v1/segment"),
    ("get", "/v1/adapters"),
    ("post", "/v1/library/reload"),
    ("get", "/info"),
    ("get", "/metrics"),
];

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

fn json_ok(description: &str) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": { "type": "object" } } } })
}

/// The document.
pub fn document() -> Value {
    let params = json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "mode": { "type": "string", "enum": ["semla", "zeroshot", "uniform", "adapters"], "default": "semla" },
            "adapters": { "type": "array", "items": {
                "type": "object", "required": ["name", "weight"], "additionalProperties": false,
                "properties": { "name": { "type": "string" }, "weight": { "type": "number" } } } },
            "combination": { "type": "string", "enum": ["cat", "linear", "svd"] },
            "fusion": { "type": "string", "enum": ["weights", "outputs"] },
            "top_k": { "type": "integer", "minimum": 1 },
            "temperature": { "type": "number", "minimum": 0 },
            "metric": { "type": "string", "enum": ["euclidean", "cosine"] },
            "exclude": { "type": "array", "items": { "type": "string" } },
            "classes": { "type": "array", "items": { "type": "string" },
                "description": "Class names for open-vocabulary models (422 on a fixed-class model)" },
            "outputs": { "type": "array", "items": { "type": "string",
                "enum": ["labels", "overlay", "confidence", "probabilities"] }, "default": ["labels"] }
        }
    });
    let segment_response = json!({
        "type": "object",
        "required": ["width", "height", "classes", "present_classes", "explanation"],
        "properties": {
            "width": { "type": "integer" },
            "height": { "type": "integer" },
            "labels_png": { "type": "string", "contentEncoding": "base64",
                "description": "Grey PNG of class ids (8-bit; 16-bit past 256 classes)" },
            "overlay_png": { "type": "string", "contentEncoding": "base64" },
            "confidence_png": { "type": "string", "contentEncoding": "base64",
                "description": "Grey PNG of the top-1 probability x 255" },
            "probabilities": { "type": "object", "description": "float32 [C, H, W] as a base64 .npy" },
            "classes": { "type": "array", "items": { "type": "object", "properties": {
                "id": { "type": "integer" }, "name": { "type": "string" },
                "color": { "type": "array", "items": { "type": "integer" } } } } },
            "present_classes": { "type": "array", "items": { "type": "object", "properties": {
                "id": { "type": "integer" }, "name": { "type": "string" }, "pixels": { "type": "integer" } } } },
            "explanation": { "type": "object", "properties": {
                "mode": { "type": "string" },
                "adapters": { "type": "array", "items": { "type": "object", "properties": {
                    "name": { "type": "string" }, "distance": { "type": ["number", "null"] },
                    "similarity": { "type": ["number", "null"] }, "weight": { "type": "number" } } } },
                "retrieval": { "type": ["object", "null"] },
                "combination": { "type": "string" },
                "fusion": { "type": "string" },
                "batch_size": { "type": "integer" },
                "timings_ms": { "type": "object" },
                "model_fingerprint": { "type": "string" },
                "library_fingerprint": { "type": "string" } } }
        }
    });
    let errors = |codes: &[(&str, &str)]| -> Value {
        let mut map = serde_json::Map::new();
        for (code, what) in codes {
            map.insert((*code).to_string(), error_response(what));
        }
        Value::Object(map)
    };
    let mut segment_responses = errors(&[
        ("400", "Malformed request, corrupt image or no image"),
        ("401", "Missing or wrong API key"),
        ("413", "Body or image over a limit"),
        ("415", "Not PNG/JPEG, or an unsupported Content-Type"),
        ("422", "Unknown adapter, invalid settings, too many classes"),
        ("429", "Over --max-concurrent (Retry-After)"),
        ("503", "Not ready, or over --request-timeout"),
    ]);
    segment_responses["200"] = json!({
        "description": "The segmentation and its explanation (or the label PNG itself with Accept: image/png)",
        "content": {
            "application/json": { "schema": segment_response },
            "image/png": { "schema": { "type": "string", "format": "binary" } }
        }
    });
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "semla serve",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "SemLA adaptive segmentation: per-image retrieval and fusion of LoRA adapters, with an explanation of every choice."
        },
        "paths": {
            "/": { "get": { "summary": "The web page", "responses": { "200": { "description": "HTML" } } } },
            "/v1/sample.png": { "get": { "summary": "A sample photo (synthetic world)", "responses": { "200": { "description": "PNG" } } } },
            "/health/live": { "get": { "summary": "The process is up", "responses": { "200": json_ok("live") } } },
            "/health/ready": { "get": { "summary": "Model, library and prototypes loaded and a warm-up forward passed",
                "responses": { "200": json_ok("ready"), "503": error_response("Not ready") } } },
            "/openapi.json": { "get": { "summary": "This document", "responses": { "200": json_ok("OpenAPI") } } },
            "/v1/segment": { "post": {
                "summary": "Segment one image with SemLA (or a static mode) and explain the choice",
                "parameters": [ { "name": "mode", "in": "query", "schema": { "type": "string" },
                    "description": "Raw image bodies take the params as query keys: mode, adapters=NAME:W,..., combination, fusion, top_k, temperature, metric, exclude=A,B, classes, outputs=labels,overlay" } ],
                "requestBody": { "required": true, "content": {
                    "multipart/form-data": { "schema": { "type": "object", "required": ["image"], "properties": {
                        "image": { "type": "string", "format": "binary" },
                        "params": params.clone() } } },
                    "image/png": { "schema": { "type": "string", "format": "binary" } },
                    "image/jpeg": { "schema": { "type": "string", "format": "binary" } },
                    "application/json": { "schema": { "allOf": [ params, { "type": "object", "required": ["image"],
                        "properties": { "image": { "type": "string", "contentEncoding": "base64" } } } ] } }
                } },
                "responses": segment_responses
            } },
            "/v1/adapters": { "get": { "summary": "Every adapter of the library (rank, alpha, sites matched, prototype, times selected) and the broken entries",
                "responses": { "200": json_ok("adapters"), "503": error_response("Not ready") } } },
            "/v1/library/reload": { "post": { "summary": "Re-read the library and swap it in atomically (--allow-runtime-updates)",
                "responses": { "200": json_ok("reloaded"), "403": error_response("Reloads are off"),
                    "422": error_response("The new library is unusable; the old one is still served") } } },
            "/info": { "get": { "summary": "Model, library, fingerprints, limits, compiled features", "responses": { "200": json_ok("info") } } },
            "/metrics": { "get": { "summary": "Prometheus metrics (text exposition)", "responses": { "200": { "description": "OpenMetrics text" } } } }
        },
        "components": {
            "schemas": {
                "Error": { "type": "object", "required": ["error", "type"], "properties": {
                    "error": { "type": "string" }, "type": { "type": "string" } } }
            },
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } }
        }
    })
}
