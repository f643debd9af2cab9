//! The service's Prometheus metrics (`GET /metrics`, text exposition format),
//! kept in one registry per server so that servers in one process (tests) stay
//! apart.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label pairs of one series.
type Labels = Vec<(String, String)>;

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 33 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

fn weight_histogram() -> Histogram {
    Histogram::new([0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
}

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    /// `semla_requests_total{route, status}`.
    pub requests: Family<Labels, Counter>,
    /// `semla_request_duration_seconds{route}`.
    pub request_duration: Family<Labels, Histogram>,
    /// `semla_stage_duration_seconds{stage}`: decode, queue, embed, retrieve,
    /// forward, postprocess, encode.
    pub stage_duration: Family<Labels, Histogram>,
    /// `semla_queue_size`: requests waiting for the model thread.
    pub queue_size: Gauge,
    /// `semla_batch_size`: images per forward.
    pub batch_size: Histogram,
    /// `semla_in_flight`: requests admitted and not yet answered.
    pub in_flight: Gauge,
    /// `semla_adapter_selected_total{adapter}`: images whose mixture held it.
    pub adapter_selected: Family<Labels, Counter>,
    /// `semla_adapter_weight{adapter}`: its weight in those mixtures.
    pub adapter_weight: Family<Labels, Histogram>,
    /// `semla_requests_dropped_total`: requests whose client left before the
    /// model thread reached them.
    pub dropped: Counter,
    /// `semla_library_reloads_total{result}`.
    pub reloads: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<Labels, Counter>::default();
        let request_duration =
            Family::<Labels, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        let stage_duration =
            Family::<Labels, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        let queue_size = Gauge::default();
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 8));
        let in_flight = Gauge::default();
        let adapter_selected = Family::<Labels, Counter>::default();
        let adapter_weight =
            Family::<Labels, Histogram>::new_with_constructor(weight_histogram as fn() -> _);
        let dropped = Counter::default();
        let reloads = Family::<Labels, Counter>::default();
        registry.register(
            "semla_requests",
            "Requests by route and status",
            requests.clone(),
        );
        registry.register(
            "semla_request_duration_seconds",
            "Time from arrival to response, by route",
            request_duration.clone(),
        );
        registry.register(
            "semla_stage_duration_seconds",
            "Time per stage of a segmentation",
            stage_duration.clone(),
        );
        registry.register(
            "semla_queue_size",
            "Requests waiting for the model thread",
            queue_size.clone(),
        );
        registry.register("semla_batch_size", "Images per forward", batch_size.clone());
        registry.register(
            "semla_in_flight",
            "Requests admitted and not yet answered",
            in_flight.clone(),
        );
        registry.register(
            "semla_adapter_selected",
            "Images whose mixture held the adapter",
            adapter_selected.clone(),
        );
        registry.register(
            "semla_adapter_weight",
            "The adapter's weight in the mixtures that held it",
            adapter_weight.clone(),
        );
        registry.register(
            "semla_requests_dropped",
            "Requests whose client left before the model thread reached them",
            dropped.clone(),
        );
        registry.register(
            "semla_library_reloads",
            "Library reloads by result",
            reloads.clone(),
        );
        Self {
            registry,
            requests,
            request_duration,
            stage_duration,
            queue_size,
            batch_size,
            in_flight,
            adapter_selected,
            adapter_weight,
            dropped,
            reloads,
        }
    }

    /// Records one finished request.
    pub fn record_request(&self, route: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&vec![
                ("route".into(), route.into()),
                ("status".into(), status.to_string()),
            ])
            .inc();
        self.request_duration
            .get_or_create(&vec![("route".into(), route.into())])
            .observe(seconds);
    }

    /// Records the time of one stage.
    pub fn record_stage(&self, stage: &str, seconds: f64) {
        self.stage_duration
            .get_or_create(&vec![("stage".into(), stage.into())])
            .observe(seconds);
    }

    /// Records that an image's mixture held `adapter` with `weight`.
    pub fn record_selection(&self, adapter: &str, weight: f64) {
        let labels = vec![("adapter".into(), adapter.into())];
        self.adapter_selected.get_or_create(&labels).inc();
        self.adapter_weight.get_or_create(&labels).observe(weight);
    }

    /// Images whose mixture held `adapter` so far.
    pub fn times_selected(&self, adapter: &str) -> u64 {
        self.adapter_selected
            .get_or_create(&vec![("adapter".into(), adapter.into())])
            .get()
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}
