//! A real server on `127.0.0.1:0` and a client over TCP: multipart uploads,
//! `/metrics` over the wire, graceful shutdown draining the requests in
//! flight, and a bounded load test (fixed requests and seconds) asserting no
//! 5xx, 429s above `--max-concurrent`, and flat memory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use semla_serve::ServeConfig;
use semla_serve::client;
use serde_json::json;

use common::*;

struct Running {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), semla_serve::ServeError>>,
}

async fn run_server(config: ServeConfig) -> Running {
    let (listener, addr) = semla_serve::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(semla_serve::serve(listener, config, spec(), async move {
        let _ = stopped.await;
    }));
    let begun = Instant::now();
    loop {
        if let Ok(reply) = client::get(addr, "/health/ready").await
            && reply.status == 200
        {
            break;
        }
        assert!(
            begun.elapsed() < Duration::from_secs(60),
            "not ready after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Running { addr, stop, task }
}

/// Resident memory of this process, in bytes.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_over_tcp_metrics_and_a_graceful_shutdown() {
    let server = run_server(ServeConfig::default()).await;
    let addr = server.addr;
    let (content_type, body) = client::multipart(
        &photo_bytes("fog"),
        Some(&json!({"outputs": ["labels", "overlay"]})),
    );
    let reply = client::send(
        addr,
        "POST",
        "/v1/segment",
        &[("content-type", content_type.clone())],
        body.clone(),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200);
    let json = reply.json();
    assert_eq!(json["width"], 64);
    assert!(json["overlay_png"].as_str().unwrap().len() > 100);
    let page = client::get(addr, "/").await.unwrap();
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("id=\"adapters\""));
    let metrics = client::get(addr, "/metrics").await.unwrap();
    let text = String::from_utf8(metrics.body.to_vec()).unwrap();
    assert!(
        text.contains("semla_requests_total{route=\"/v1/segment\",status=\"200\"} 1"),
        "{text}"
    );
    // Requests under way when the shutdown comes are answered before the
    // server stops; a connection after it is refused.
    let mut pending = Vec::new();
    for _ in 0..6 {
        let (ct, body) = (content_type.clone(), body.clone());
        pending.push(tokio::spawn(async move {
            client::send(addr, "POST", "/v1/segment", &[("content-type", ct)], body).await
        }));
    }
    // Wait until the server has admitted at least one of them.
    let begun = Instant::now();
    loop {
        let text = client::get(addr, "/metrics").await.unwrap();
        let text = String::from_utf8_lossy(&text.body).into_owned();
        let in_flight_or_done = text
            .lines()
            .any(|l| l.starts_with("semla_in_flight ") && !l.ends_with(" 0"))
            || text.contains("semla_requests_total{route=\"/v1/segment\",status=\"200\"} 2");
        if in_flight_or_done || begun.elapsed() > Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    server.stop.send(()).unwrap();
    let mut answered = 0;
    for task in pending {
        if let Ok(reply) = task.await.unwrap() {
            assert_eq!(reply.status, 200, "{:?}", reply.json());
            answered += 1;
        }
    }
    assert!(answered >= 1, "no request in flight was answered");
    server.task.await.unwrap().unwrap();
    assert!(client::get(addr, "/health/live").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_bounded_load_no_5xx_429s_above_max_concurrent_and_flat_memory() {
    let config = ServeConfig {
        max_concurrent: 2,
        max_batch_size: 2,
        ..ServeConfig::default()
    };
    let server = run_server(config).await;
    let (content_type, body) = client::multipart(&photo_bytes("night"), None);
    let body = Arc::new(body);
    let limit = Duration::from_secs(30);
    // Warm-up: allocator pools and lazily created series settle.
    let warm = semla_serve::load::run(
        server.addr,
        "/v1/segment",
        &content_type,
        body.clone(),
        2,
        40,
        limit,
    )
    .await;
    assert_eq!(warm.count(200), 40, "{warm:?}");
    let before = resident_bytes();
    // Within the limit: every request served.
    let within = semla_serve::load::run(
        server.addr,
        "/v1/segment",
        &content_type,
        body.clone(),
        2,
        100,
        limit,
    )
    .await;
    assert_eq!(within.count(200), 100, "{within:?}");
    // Three times the limit: the excess is turned away with 429, never a 5xx.
    let over = semla_serve::load::run(
        server.addr,
        "/v1/segment",
        &content_type,
        body.clone(),
        6,
        300,
        limit,
    )
    .await;
    let after = resident_bytes();
    println!(
        "load: {} requests at 2 clients in {:.2} s: {:?}; p50 {:.1} ms p99 {:.1} ms",
        within.requests, within.seconds, within.statuses, within.p50_ms, within.p99_ms
    );
    println!(
        "load: {} requests at 6 clients over max-concurrent 2 in {:.2} s: {:?}; p50 {:.1} ms p99 {:.1} ms; resident {} -> {} MB",
        over.requests,
        over.seconds,
        over.statuses,
        over.p50_ms,
        over.p99_ms,
        before >> 20,
        after >> 20
    );
    assert_eq!(over.server_errors(), 0, "{over:?}");
    assert_eq!(over.requests, 300, "the run stopped early: {over:?}");
    assert!(over.count(429) > 0, "no 429 above max-concurrent: {over:?}");
    assert!(over.count(200) > 0, "{over:?}");
    assert_eq!(over.count(200) + over.count(429), over.requests, "{over:?}");
    let grown = after.saturating_sub(before);
    assert!(
        grown < 32 << 20,
        "resident memory grew by {} MB over the run",
        grown >> 20
    );
    server.stop.send(()).unwrap();
    server.task.await.unwrap().unwrap();
}
