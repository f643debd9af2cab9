//! The model thread: one OS thread runs every forward (as text-embeddings-
//! inference's backend thread does), fed by a bounded queue. It batches
//! what is already queued (never waiting for more) up to `max_batch_size`
//! images of one size and one request, each image keeping its own mixture in
//! the one forward, and skips requests whose client has gone.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use semla_data::RgbImage;
use semla_pipeline::{Prediction, Request};
use tokio::sync::{mpsc, oneshot};

use crate::error::{ApiError, ErrorKind};
use crate::loaded::Loaded;
use crate::metrics::Metrics;

/// The pipeline being served: `None` until the first load and warm-up passed;
/// a reload replaces it whole (batches in progress finish on the old one).
pub type Current = Arc<RwLock<Option<Arc<Loaded>>>>;

/// The pipeline now being served, if any.
pub fn current(current: &Current) -> Option<Arc<Loaded>> {
    match current.read() {
        Ok(guard) => guard.clone(),
        // A writer never panics while holding the lock (it only assigns).
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// Swaps in a new pipeline.
pub fn replace(current: &Current, loaded: Arc<Loaded>) {
    match current.write() {
        Ok(mut guard) => *guard = Some(loaded),
        Err(poisoned) => *poisoned.into_inner() = Some(loaded),
    }
}

/// One image to segment.
pub struct Job {
    /// The decoded photo.
    pub photo: Arc<RgbImage>,
    /// What to do with it.
    pub request: Request,
    /// Where the outcome goes (dropped by a client that left).
    pub respond: oneshot::Sender<Outcome>,
    /// When it was queued.
    pub queued: Instant,
}

/// A segmented image and what it ran on.
pub struct Done {
    /// The prediction (labels, mixture, stage timings of its batch).
    pub prediction: Prediction,
    /// The pipeline it ran on (its fingerprints go in the response).
    pub loaded: Arc<Loaded>,
    /// Seconds it waited in the queue.
    pub queue_s: f64,
    /// Images in its forward.
    pub batch_size: usize,
}

/// What the model thread answers.
pub type Outcome = Result<Done, ApiError>;

/// Starts the model thread on the jobs of `queue`. The thread ends when every
/// sender of the queue is gone (the server shut down) and the queue is drained.
pub fn spawn(
    queue: mpsc::Receiver<Job>,
    current: Current,
    metrics: Arc<Metrics>,
    max_batch_size: usize,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("semla-model".into())
        .spawn(move || run(queue, &current, &metrics, max_batch_size.max(1)))
}

fn run(mut queue: mpsc::Receiver<Job>, current: &Current, metrics: &Metrics, max_batch: usize) {
    let mut backlog: VecDeque<Job> = VecDeque::new();
    loop {
        if backlog.is_empty() {
            match queue.blocking_recv() {
                Some(job) => backlog.push_back(job),
                None => return,
            }
        }
        while let Ok(job) = queue.try_recv() {
            backlog.push_back(job);
        }
        backlog.retain(|job| {
            let gone = job.respond.is_closed();
            if gone {
                metrics.dropped.inc();
            }
            !gone
        });
        let batch = take_batch(&mut backlog, max_batch);
        metrics.queue_size.set((backlog.len() + queue.len()) as i64);
        if batch.is_empty() {
            continue;
        }
        let Some(loaded) = self::current(current) else {
            for job in batch {
                let _ = job.respond.send(Err(ApiError::new(
                    ErrorKind::Unavailable,
                    "the server has no library loaded yet",
                )));
            }
            continue;
        };
        run_batch(batch, &loaded, metrics);
    }
}

/// The first job of the backlog and the next ones that can share its forward
/// (same image size, same request), in queue order.
fn take_batch(backlog: &mut VecDeque<Job>, max_batch: usize) -> Vec<Job> {
    let Some(first) = backlog.pop_front() else {
        return Vec::new();
    };
    let mut batch = vec![first];
    let mut i = 0;
    while batch.len() < max_batch && i < backlog.len() {
        let fits = backlog[i].photo.dimensions() == batch[0].photo.dimensions()
            && backlog[i].request == batch[0].request;
        match fits.then(|| backlog.remove(i)).flatten() {
            Some(job) => batch.push(job),
            None => i += 1,
        }
    }
    batch
}

fn run_batch(batch: Vec<Job>, loaded: &Arc<Loaded>, metrics: &Metrics) {
    let started = Instant::now();
    let photos: Vec<&RgbImage> = batch.iter().map(|j| j.photo.as_ref()).collect();
    let result = segment_guarded(loaded, &photos, &batch[0].request);
    match result {
        Ok(predictions) if predictions.len() == batch.len() => {
            metrics.batch_size.observe(batch.len() as f64);
            let n = batch.len();
            for (job, prediction) in batch.into_iter().zip(predictions) {
                answer(job, prediction, loaded, n, started, metrics);
            }
        }
        // One bad image must not fail the others: each alone, for its own error.
        Err(_) if batch.len() > 1 => {
            for job in batch {
                run_batch(vec![job], loaded, metrics);
            }
        }
        Ok(_) => {
            for job in batch {
                let _ = job.respond.send(Err(ApiError::internal(
                    "the model returned a different number of predictions than images",
                )));
            }
        }
        Err(e) => {
            for job in batch {
                let _ = job.respond.send(Err(e.clone()));
            }
        }
    }
}

fn answer(
    job: Job,
    prediction: Prediction,
    loaded: &Arc<Loaded>,
    batch_size: usize,
    started: Instant,
    metrics: &Metrics,
) {
    for choice in &prediction.adapters {
        metrics.record_selection(&choice.name, choice.weight);
    }
    let queue_s = started.saturating_duration_since(job.queued).as_secs_f64();
    metrics.record_stage("queue", queue_s);
    metrics.record_stage("embed", prediction.timings.embed_s);
    metrics.record_stage("retrieve", prediction.timings.retrieve_s);
    metrics.record_stage("forward", prediction.timings.forward_s);
    metrics.record_stage("postprocess", prediction.timings.postprocess_s);
    let _ = job.respond.send(Ok(Done {
        prediction,
        loaded: loaded.clone(),
        queue_s,
        batch_size,
    }));
}

/// The forward, with a panic in the model code turned into an error: the
/// thread must outlive any one request.
fn segment_guarded(
    loaded: &Loaded,
    photos: &[&RgbImage],
    request: &Request,
) -> Result<Vec<Prediction>, ApiError> {
    std::panic::catch_unwind(AssertUnwindSafe(|| {
        loaded
            .semla
            .segment_photos(photos, request)
            .map_err(ApiError::from)
    }))
    .unwrap_or_else(|_| {
        Err(ApiError::internal(
            "the model thread caught a panic while segmenting (a bug: please report it)",
        ))
    })
}
