//! Prometheus metrics of the host (requests, latency, instantiation time, traps, deadline hits,
//! denied outbound calls), rendered in the text exposition format on the admin listener.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ComponentLabels {
    component: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    component: String,
    topic: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CronLabels {
    component: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabels {
    trigger: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LagLabels {
    trigger: String,
    topic: String,
    partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    component: String,
    status: u16,
}

/// 5 µs .. ~0.3 s in steps of 1.5×: instantiation is tens of microseconds.
fn fine_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_005, 1.5, 28))
}

/// Batch sizes: 1, 2, 4 ... 1024.
fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 11))
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~26 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// All host metrics; one per process, passed to whoever records.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<ComponentLabels, Histogram, fn() -> Histogram>,
    instantiation_duration: Family<ComponentLabels, Histogram, fn() -> Histogram>,
    traps: Family<ComponentLabels, Counter>,
    deadline_exceeded: Family<ComponentLabels, Counter>,
    outbound_denied: Family<ComponentLabels, Counter>,
    in_flight: Gauge,
    events: Family<EventLabels, Counter>,
    event_duration: Family<ComponentLabels, Histogram, fn() -> Histogram>,
    event_batch_size: Family<ComponentLabels, Histogram, fn() -> Histogram>,
    embedding: std::sync::OnceLock<std::sync::Arc<moa_model_runtime::RuntimeMetrics>>,
    /// Registries capabilities add (e.g. the documents outbox).
    sources: std::sync::Mutex<Vec<std::sync::Arc<Registry>>>,
    guest_output_dropped: Family<ComponentLabels, Counter>,
    http_rejected: Family<ReasonLabels, Counter>,
    http_connections: Gauge,
    trigger_failures: Family<TriggerLabels, Counter>,
    event_pool_waits: Family<ComponentLabels, Counter>,
    event_commits: Family<TriggerLabels, Counter>,
    cron_runs: Family<CronLabels, Counter>,
    cron_duration: Family<ComponentLabels, Histogram, fn() -> Histogram>,
    consumer_lag: Family<LagLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("moa");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration =
            Family::<ComponentLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram as fn() -> Histogram,
            );
        let instantiation_duration =
            Family::<ComponentLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                fine_histogram as fn() -> Histogram,
            );
        let traps = Family::<ComponentLabels, Counter>::default();
        let deadline_exceeded = Family::<ComponentLabels, Counter>::default();
        let outbound_denied = Family::<ComponentLabels, Counter>::default();
        let in_flight = Gauge::default();
        let events = Family::<EventLabels, Counter>::default();
        let event_duration =
            Family::<ComponentLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram as fn() -> Histogram,
            );
        registry.register(
            "events",
            "Event deliveries by component, topic and outcome (ok, retry, dead_letter)",
            events.clone(),
        );
        let event_batch_size =
            Family::<ComponentLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                batch_histogram as fn() -> Histogram,
            );
        registry.register(
            "event_batch_size",
            "Deliveries per call of moa:messaging/batch-handler (triggers with `batch`)",
            event_batch_size.clone(),
        );
        registry.register(
            "event_handle_duration_seconds",
            "Time to instantiate a component and run its handler for one delivery",
            event_duration.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests served, by component and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from request received to response head sent",
            request_duration.clone(),
        );
        registry.register(
            "instantiation_duration_seconds",
            "Time to instantiate a component from its pre-instantiated form",
            instantiation_duration.clone(),
        );
        registry.register(
            "traps",
            "Component traps (the request got a 500)",
            traps.clone(),
        );
        registry.register(
            "deadline_exceeded",
            "Requests whose component ran past its deadline and was interrupted",
            deadline_exceeded.clone(),
        );
        registry.register(
            "outbound_http_denied",
            "Outbound HTTP requests denied by allowed_outbound_hosts",
            outbound_denied.clone(),
        );
        registry.register(
            "http_requests_in_flight",
            "Requests being handled now",
            in_flight.clone(),
        );
        let guest_output_dropped = Family::<ComponentLabels, Counter>::default();
        registry.register(
            "guest_output_dropped_bytes",
            "Guest stdout/stderr bytes dropped because the component logged over its rate limit",
            guest_output_dropped.clone(),
        );
        let http_rejected = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "http_rejected",
            "HTTP requests answered 503 by admission control (connections, requests, instances)",
            http_rejected.clone(),
        );
        let http_connections = Gauge::default();
        registry.register(
            "http_connections_open",
            "Open client connections",
            http_connections.clone(),
        );
        let trigger_failures = Family::<TriggerLabels, Counter>::default();
        registry.register(
            "trigger_failures",
            "Triggers that stopped working at run time (the host reports not ready)",
            trigger_failures.clone(),
        );
        let event_pool_waits = Family::<ComponentLabels, Counter>::default();
        registry.register(
            "event_instance_waits",
            "Event deliveries that waited for a free instance slot (not counted as attempts)",
            event_pool_waits.clone(),
        );
        let event_commits = Family::<TriggerLabels, Counter>::default();
        registry.register(
            "event_commits",
            "Messages committed after handling or dead-lettering (Kafka offset stored, XACK, embedded log offset)",
            event_commits.clone(),
        );
        let cron_runs = Family::<CronLabels, Counter>::default();
        registry.register(
            "cron_runs",
            "Scheduled [[trigger.cron]] runs by component and outcome (ok, error, trap, deadline)",
            cron_runs.clone(),
        );
        let cron_duration =
            Family::<ComponentLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram as fn() -> Histogram,
            );
        registry.register(
            "cron_run_duration_seconds",
            "Time to instantiate a component and run its handle-cron-event",
            cron_duration.clone(),
        );
        let consumer_lag = Family::<LagLabels, Gauge>::default();
        registry.register(
            "event_consumer_lag",
            "Messages in a trigger's partition past its committed offset (Kafka: librdkafka's consumer_lag, sampled every statistics.interval.ms)",
            consumer_lag.clone(),
        );
        Metrics {
            registry,
            consumer_lag,
            cron_runs,
            cron_duration,
            event_commits,
            guest_output_dropped,
            http_rejected,
            http_connections,
            trigger_failures,
            event_pool_waits,
            requests,
            request_duration,
            instantiation_duration,
            traps,
            deadline_exceeded,
            outbound_denied,
            in_flight,
            events,
            event_duration,
            event_batch_size,
            embedding: Default::default(),
            sources: Default::default(),
        }
    }

    /// One delivery attempt finished: `outcome` is `ok`, `retry` or `dead_letter`.
    pub fn event_attempt(
        &self,
        component: &str,
        topic: &str,
        outcome: &'static str,
        elapsed: Duration,
    ) {
        self.events
            .get_or_create(&EventLabels {
                component: component.to_string(),
                topic: topic.to_string(),
                outcome,
            })
            .inc();
        self.event_duration
            .get_or_create(&Self::labels(component))
            .observe(elapsed.as_secs_f64());
    }

    /// One call of a batch handler took `deliveries`.
    pub fn event_batch(&self, component: &str, deliveries: usize) {
        self.event_batch_size
            .get_or_create(&Self::labels(component))
            .observe(deliveries as f64);
    }

    /// One scheduled run finished: `outcome` is `ok`, `error`, `trap` or `deadline`.
    pub fn cron_run(&self, component: &str, outcome: &'static str, elapsed: Duration) {
        self.cron_runs
            .get_or_create(&CronLabels {
                component: component.to_string(),
                outcome,
            })
            .inc();
        self.cron_duration
            .get_or_create(&Self::labels(component))
            .observe(elapsed.as_secs_f64());
    }

    fn labels(component: &str) -> ComponentLabels {
        ComponentLabels {
            component: component.to_string(),
        }
    }

    pub fn request_finished(&self, component: &str, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                component: component.to_string(),
                status,
            })
            .inc();
        self.request_duration
            .get_or_create(&Self::labels(component))
            .observe(elapsed.as_secs_f64());
    }

    pub fn instantiated(&self, component: &str, elapsed: Duration) {
        self.instantiation_duration
            .get_or_create(&Self::labels(component))
            .observe(elapsed.as_secs_f64());
    }

    pub fn trapped(&self, component: &str) {
        self.traps.get_or_create(&Self::labels(component)).inc();
    }

    pub fn deadline_hit(&self, component: &str) {
        self.deadline_exceeded
            .get_or_create(&Self::labels(component))
            .inc();
    }

    pub fn outbound_denied(&self, component: &str) {
        self.outbound_denied
            .get_or_create(&Self::labels(component))
            .inc();
    }

    pub fn guest_output_dropped(&self, component: &str, bytes: usize) {
        self.guest_output_dropped
            .get_or_create(&Self::labels(component))
            .inc_by(bytes as u64);
    }

    /// A request refused by admission control: `connections`, `requests` or `instances`.
    pub fn http_rejected(&self, reason: &'static str) {
        self.http_rejected
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts an open connection until the guard drops.
    pub fn connection_open(&self) -> InFlight {
        self.http_connections.inc();
        InFlight(self.http_connections.clone())
    }

    pub fn trigger_failed(&self, trigger: &str) {
        self.trigger_failures
            .get_or_create(&TriggerLabels {
                trigger: trigger.to_string(),
            })
            .inc();
    }

    /// `count` messages of `trigger` committed.
    /// A partition's consumer lag, as the broker client last measured it.
    pub fn consumer_lag(&self, trigger: &str, topic: &str, partition: i32, lag: i64) {
        self.consumer_lag
            .get_or_create(&LagLabels {
                trigger: trigger.to_string(),
                topic: topic.to_string(),
                partition: partition.to_string(),
            })
            .set(lag);
    }

    /// The partition moved to another consumer: its lag is theirs to report.
    pub fn forget_consumer_lag(&self, trigger: &str, topic: &str, partition: i32) {
        self.consumer_lag.remove(&LagLabels {
            trigger: trigger.to_string(),
            topic: topic.to_string(),
            partition: partition.to_string(),
        });
    }

    pub fn events_committed(&self, trigger: &str, count: u64) {
        self.event_commits
            .get_or_create(&TriggerLabels {
                trigger: trigger.to_string(),
            })
            .inc_by(count);
    }

    pub fn event_instance_wait(&self, component: &str) {
        self.event_pool_waits
            .get_or_create(&Self::labels(component))
            .inc();
    }

    /// Counts a request as in flight until the guard drops.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let encoded = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry)
            .and_then(|()| match self.embedding.get() {
                Some(embedding) => embedding.encode(&mut out),
                None => Ok(()),
            })
            .and_then(|()| {
                let sources = self.sources.lock().map(|s| s.clone()).unwrap_or_default();
                sources.iter().try_for_each(|source| {
                    prometheus_client::encoding::text::encode_registry(&mut out, source)
                })
            })
            .and_then(|()| prometheus_client::encoding::text::encode_eof(&mut out));
        if encoded.is_err() {
            out.clear();
        }
        out
    }

    /// Adds a capability's own registry (its series appear on /metrics beside the host's).
    pub fn add_source(&self, registry: std::sync::Arc<Registry>) {
        if let Ok(mut sources) = self.sources.lock() {
            sources.push(registry);
        }
    }

    /// Adds the in-process model runtime's series (`moa_embed_*`) to /metrics.
    pub fn attach(&self, embedding: std::sync::Arc<moa_model_runtime::RuntimeMetrics>) {
        let _ = self.embedding.set(embedding);
    }
}

/// Decrements the in-flight gauge when dropped.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}
