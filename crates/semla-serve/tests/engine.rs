//! The model thread: a batch of queued images of one size, each with its own
//! mixture, equals the images segmented one by one; a job whose client left
//! is skipped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

mod common;

use std::sync::Arc;
use std::time::Instant;

use semla_pipeline::Request;
use semla_serve::engine::{self, Job, Outcome};
use semla_serve::metrics::Metrics;
use tokio::sync::{mpsc, oneshot};

use common::*;

fn photo(name: &str) -> Arc<semla_data::RgbImage> {
    Arc::new(
        semla_data::image_io::read_rgb(&fixtures().join("images").join(format!("{name}.png")))
            .unwrap(),
    )
}

fn job(photo: &Arc<semla_data::RgbImage>, request: &Request) -> (Job, oneshot::Receiver<Outcome>) {
    let (respond, answer) = oneshot::channel();
    (
        Job {
            photo: photo.clone(),
            request: request.clone(),
            respond,
            queued: Instant::now(),
        },
        answer,
    )
}

#[test]
fn a_batch_with_a_mixture_per_image_equals_one_by_one() {
    let loaded = Arc::new(spec().load().unwrap());
    let current: engine::Current = Arc::default();
    engine::replace(&current, loaded.clone());
    let metrics = Arc::new(Metrics::new());
    let (queue, jobs) = mpsc::channel(16);
    let request = Request::semla();
    let photos = [photo("fog"), photo("night"), photo("night"), photo("fog")];
    // Queued before the thread starts: it finds all four and batches them.
    let answers: Vec<_> = photos
        .iter()
        .map(|p| {
            let (job, answer) = job(p, &request);
            assert!(queue.try_send(job).is_ok());
            answer
        })
        .collect();
    // A job of another request is queued between them: it runs in its own forward.
    let (other, other_answer) = job(&photos[0], &Request::mode(semla_pipeline::Mode::Uniform));
    assert!(queue.try_send(other).is_ok());
    let thread = engine::spawn(jobs, current, metrics.clone(), 4).unwrap();
    let mut mixtures = Vec::new();
    for (photo, answer) in photos.iter().zip(answers) {
        let done = answer.blocking_recv().unwrap().unwrap();
        assert_eq!(done.batch_size, 4);
        let alone = loaded.semla.segment(photo, &request).unwrap();
        assert_eq!(done.prediction.labels, alone.labels);
        assert_eq!(done.prediction.adapters.len(), alone.adapters.len());
        for (a, b) in done.prediction.adapters.iter().zip(&alone.adapters) {
            assert_eq!(a.name, b.name);
            assert!((a.weight - b.weight).abs() < 1e-12);
        }
        mixtures.push(done.prediction.adapters[0].name.clone());
    }
    // The fog and night photos chose different adapters first: the batch
    // really held different mixtures.
    assert_ne!(mixtures[0], mixtures[1]);
    let other = other_answer.blocking_recv().unwrap().unwrap();
    assert_eq!(other.batch_size, 1);
    assert_eq!(other.prediction.adapters.len(), 3);
    drop(queue);
    thread.join().unwrap();
    assert!(
        metrics.render().contains("semla_batch_size_count 2"),
        "{}",
        metrics.render()
    );
}

#[test]
fn a_job_whose_client_left_is_skipped() {
    let loaded = Arc::new(spec().load().unwrap());
    let current: engine::Current = Arc::default();
    engine::replace(&current, loaded);
    let metrics = Arc::new(Metrics::new());
    let (queue, jobs) = mpsc::channel(4);
    let fog = photo("fog");
    let (gone, answer) = job(&fog, &Request::semla());
    drop(answer);
    assert!(queue.try_send(gone).is_ok());
    let (kept, kept_answer) = job(&fog, &Request::semla());
    assert!(queue.try_send(kept).is_ok());
    let thread = engine::spawn(jobs, current, metrics.clone(), 4).unwrap();
    let done = kept_answer.blocking_recv().unwrap().unwrap();
    assert_eq!(done.batch_size, 1);
    drop(queue);
    thread.join().unwrap();
    assert_eq!(metrics.dropped.get(), 1);
    assert!(metrics.render().contains("semla_requests_dropped_total 1"));
}
