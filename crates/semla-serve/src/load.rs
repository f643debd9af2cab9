//! A bounded load generator: `clients` concurrent connections post one image
//! until `requests` are sent or `duration` has passed, recording every status
//! and latency (`semla bench serve` and the load test use it).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// What a load run measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadReport {
    /// Concurrent clients.
    pub clients: usize,
    /// Requests sent (answered or not).
    pub requests: usize,
    /// Responses by status (0: no response: connection error).
    pub statuses: BTreeMap<u16, usize>,
    /// Wall-clock seconds of the run.
    pub seconds: f64,
    /// Successful responses per second.
    pub ok_per_second: f64,
    /// Latency percentiles of the 200s, in milliseconds.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
}

impl LoadReport {
    /// Responses with status `status`.
    pub fn count(&self, status: u16) -> usize {
        self.statuses.get(&status).copied().unwrap_or_default()
    }

    /// Responses with a 5xx status or no response at all.
    pub fn server_errors(&self) -> usize {
        self.statuses
            .iter()
            .filter(|(s, _)| **s == 0 || **s >= 500)
            .map(|(_, n)| n)
            .sum()
    }
}

/// The `q`-quantile (0..1) of sorted values (nearest rank).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Posts `body` (with `content_type`) to `path` from `clients` concurrent
/// clients, `requests` in all, stopping early after `duration`.
pub async fn run(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    body: Arc<Vec<u8>>,
    clients: usize,
    requests: usize,
    duration: Duration,
) -> LoadReport {
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients.max(1) {
        let (next, body, path, content_type) = (
            next.clone(),
            body.clone(),
            path.to_string(),
            content_type.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < requests && started.elapsed() < duration {
                let sent = Instant::now();
                let status = match crate::client::send(
                    addr,
                    "POST",
                    &path,
                    &[("content-type", content_type.clone())],
                    body.as_ref().clone(),
                )
                .await
                {
                    Ok(reply) => reply.status,
                    Err(_) => 0,
                };
                seen.push((status, sent.elapsed().as_secs_f64() * 1e3));
            }
            seen
        }));
    }
    let mut report = LoadReport {
        clients,
        ..LoadReport::default()
    };
    let mut latencies = Vec::new();
    for task in tasks {
        for (status, ms) in task.await.unwrap_or_default() {
            report.requests += 1;
            *report.statuses.entry(status).or_default() += 1;
            if status == 200 {
                latencies.push(ms);
            }
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    report.ok_per_second = latencies.len() as f64 / report.seconds.max(1e-9);
    report.p50_ms = quantile(&latencies, 0.50);
    report.p95_ms = quantile(&latencies, 0.95);
    report.p99_ms = quantile(&latencies, 0.99);
    report
}
