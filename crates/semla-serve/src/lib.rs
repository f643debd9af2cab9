//! # semla-serve
//!
//! `semla serve`: SemLA behind HTTP (axum + tokio, HTTP/1, no TLS). For every
//! uploaded frame the service embeds it, retrieves and weights the nearest
//! domains' adapters, fuses them and segments, and says why: the adapters with
//! their similarity and weight, the retrieval settings, per-stage timings and
//! the model and library fingerprints.
//!
//! The path of one request:
//!
//! 1. [`routes`]: admission (`--max-concurrent` permits, else 429), the body
//!    read whole under `--max-body-bytes` and split by content type
//!    ([`input`]: multipart, raw PNG/JPEG, JSON base64), parameters checked
//!    into a pipeline [`semla_pipeline::Request`], the image decoded on the
//!    blocking pool (its size checked from the header first).
//! 2. [`engine`]: the bounded queue to the one model thread, which batches
//!    queued images of one size and request (each keeps its own mixture) and
//!    skips requests whose client left.
//! 3. [`output`]: the label PNG, overlay, confidence and probabilities, the
//!    classes and the explanation, encoded on the blocking pool.
//!
//! Around it: [`loaded`] (what is served, loaded whole and warmed up before it
//! is swapped in), [`metrics`] (Prometheus), [`page`] (the web page),
//! [`openapi`] and [`client`] (a minimal HTTP/1 client for tests and the
//! `semla bench serve` load generator in [`load`]).

pub mod client;
pub mod config;
pub mod engine;
pub mod error;
pub mod input;
pub mod load;
pub mod loaded;
pub mod metrics;
pub mod openapi;
pub mod output;
pub mod page;
pub mod routes;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

pub use config::ServeConfig;
pub use error::{ApiError, ErrorKind};
pub use loaded::{LoadSpec, Loaded};
pub use routes::{AppState, router};

/// Cargo features this build was compiled with (`GET /info`).
pub const COMPILED_FEATURES: &[&str] = &[];

/// Why a server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The settings cannot work.
    #[error("{0}")]
    Config(String),
    /// The address could not be bound or the server failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The first load of the model and library failed.
    #[error("loading the library failed: {0}")]
    Load(String),
}

/// A started server: its state and the model thread.
pub struct Started {
    /// What the handlers share.
    pub state: Arc<AppState>,
    /// The router over that state.
    pub router: axum::Router,
    /// The model thread (ends once every queue sender is gone).
    pub engine: std::thread::JoinHandle<()>,
    /// Completes when the first load finished: `Ok` once ready.
    pub loading: tokio::task::JoinHandle<Result<(), String>>,
}

/// Builds the state, starts the model thread and the first load (in the
/// background: `/health/live` answers at once, `/health/ready` once loaded).
/// Must run inside a tokio runtime.
pub fn start(config: ServeConfig, spec: LoadSpec) -> Result<Started, ServeError> {
    config.validate().map_err(ServeError::Config)?;
    let metrics = Arc::new(metrics::Metrics::new());
    let current: engine::Current = Arc::default();
    let (queue, jobs) = tokio::sync::mpsc::channel(config.max_concurrent);
    let engine = engine::spawn(
        jobs,
        current.clone(),
        metrics.clone(),
        config.max_batch_size,
    )
    .map_err(|source| ServeError::Io {
        what: "starting the model thread".into(),
        source,
    })?;
    let state = Arc::new(AppState {
        permits: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent)),
        config,
        spec,
        current,
        queue,
        metrics,
        reload_lock: tokio::sync::Mutex::new(()),
        load_error: std::sync::RwLock::new(None),
    });
    let loading = {
        let state = state.clone();
        tokio::spawn(async move {
            let spec = state.spec.clone();
            let outcome = tokio::task::spawn_blocking(move || spec.load())
                .await
                .map_err(|e| format!("the load task failed: {e}"))
                .and_then(|r| r.map_err(|e| e.to_string()));
            match outcome {
                Ok(loaded) => {
                    tracing::info!(
                        "ready: {} adapters, library {} (loaded in {:.1} s)",
                        loaded.semla.library().sources().len(),
                        loaded.library_fingerprint,
                        loaded.load_s
                    );
                    engine::replace(&state.current, Arc::new(loaded));
                    Ok(())
                }
                Err(e) => {
                    if let Ok(mut slot) = state.load_error.write() {
                        *slot = Some(e.clone());
                    }
                    Err(e)
                }
            }
        })
    };
    let router = router(state.clone());
    Ok(Started {
        state,
        router,
        engine,
        loading,
    })
}

/// Serves on `listener` until `shutdown` completes, then drains the requests
/// in flight (graceful shutdown). Fails when the first load fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: ServeConfig,
    spec: LoadSpec,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let Started {
        state,
        router,
        engine,
        loading,
    } = start(config, spec)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<String>();
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        // A dropped sender (the first load succeeded) is no reason to stop.
        let load_failed = async {
            if stopped.await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = shutdown => {}
            () = load_failed => {}
        }
    });
    let watcher = tokio::spawn(async move {
        if let Ok(Err(e)) = loading.await {
            let _ = stop.send(e.clone());
            return Some(e);
        }
        None
    });
    let served = server.await.map_err(|source| ServeError::Io {
        what: "serving".into(),
        source,
    });
    let load_failure = if watcher.is_finished() {
        watcher.await.ok().flatten()
    } else {
        watcher.abort();
        None
    };
    // The queue's last sender goes with the state: the model thread drains and ends.
    drop(state);
    let _ = tokio::task::spawn_blocking(move || engine.join()).await;
    served?;
    match load_failure {
        Some(e) => Err(ServeError::Load(e)),
        None => Ok(()),
    }
}

/// Binds `addr` (port 0: any free port) and returns the listener and the address.
pub async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), ServeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Io {
            what: format!("binding {addr}"),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| ServeError::Io {
        what: format!("reading the address bound for {addr}"),
        source,
    })?;
    Ok((listener, local))
}

/// Completes on SIGTERM or Ctrl-C (SIGINT).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down: draining the requests in flight");
}
