//! What a server is started with: where it listens, its limits and its
//! batching, each with a documented default.

use std::net::SocketAddr;
use std::time::Duration;

/// Settings of one server (the `semla serve` flags).
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Address to listen on. Default `127.0.0.1:8080`: loopback only, since
    /// the server has no TLS; put a TLS proxy in front to expose it.
    pub bind: SocketAddr,
    /// When set, every route but `/`, the health probes and `/openapi.json`
    /// needs `Authorization: Bearer <key>`. Default: none.
    pub api_key: Option<String>,
    /// Largest request body, in bytes. Default 16 MiB.
    pub max_body_bytes: usize,
    /// Largest image, in pixels, read from its header before decoding.
    /// Default 16 M (a 4K frame is 8.3 M).
    pub max_pixels: u64,
    /// Most class names an open-vocabulary request may give. Default 512.
    pub max_classes: usize,
    /// Largest `probabilities` output, in values (`C x H x W`). Default 16 M
    /// (64 MB of float32 before base64).
    pub max_probability_values: u64,
    /// Most images in one forward. Default 4: on a CPU, batching gains little
    /// and only already-queued requests are batched (no waiting for more).
    pub max_batch_size: usize,
    /// Most requests admitted at once (decoding, queued or running); one more
    /// gets 429 with `Retry-After`. Default 32.
    pub max_concurrent: usize,
    /// How long a request may wait and run before it gets 503. Default 30 s.
    pub request_timeout: Duration,
    /// Whether `POST /v1/library/reload` may swap in a re-read library.
    /// Default false (vLLM and TorchServe also keep runtime updates off unless asked).
    pub allow_runtime_updates: bool,
    /// The `Retry-After` of a 429, in seconds. Default 1.
    pub retry_after_s: u64,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            api_key: None,
            max_body_bytes: 16 << 20,
            max_pixels: 16_000_000,
            max_classes: 512,
            max_probability_values: 16_000_000,
            max_batch_size: 4,
            max_concurrent: 32,
            request_timeout: Duration::from_secs(30),
            allow_runtime_updates: false,
            retry_after_s: 1,
        }
    }
}

impl ServeConfig {
    /// Checks that the settings can work.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_batch_size == 0 {
            return Err("--max-batch-size must be at least 1".into());
        }
        if self.max_concurrent == 0 {
            return Err("--max-concurrent must be at least 1".into());
        }
        if self.max_body_bytes == 0 || self.max_pixels == 0 {
            return Err("--max-body-bytes and --max-pixels must be positive".into());
        }
        if self.request_timeout.is_zero() {
            return Err("--request-timeout must be positive".into());
        }
        if self.api_key.as_deref().is_some_and(str::is_empty) {
            return Err("the API key must not be empty".into());
        }
        Ok(())
    }

    /// The limits as `GET /info` reports them.
    pub fn limits_json(&self) -> serde_json::Value {
        serde_json::json!({
            "max_body_bytes": self.max_body_bytes,
            "max_pixels": self.max_pixels,
            "max_classes": self.max_classes,
            "max_probability_values": self.max_probability_values,
            "max_batch_size": self.max_batch_size,
            "max_concurrent": self.max_concurrent,
            "request_timeout_s": self.request_timeout.as_secs_f64(),
            "allow_runtime_updates": self.allow_runtime_updates,
        })
    }
}
