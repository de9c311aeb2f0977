//! Prometheus metrics of the model runtime: queue depth, batch sizes in texts and padded tokens,
//! tokenization / queue / inference durations, texts served and errors by reason.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ErrorLabels {
    pub reason: &'static str,
}

/// The runtime's metrics in their own registry (prefix `moa_embed`), so the standalone server and
/// a host running the runtime in-process expose the same series.
pub struct RuntimeMetrics {
    registry: Registry,
    pub(crate) queue_texts: Gauge,
    pub(crate) batch_texts: Histogram,
    pub(crate) batch_tokens: Histogram,
    pub(crate) tokenize_seconds: Histogram,
    pub(crate) queue_seconds: Histogram,
    pub(crate) inference_seconds: Histogram,
    pub(crate) texts: Counter,
    pub(crate) errors: Family<ErrorLabels, Counter>,
}

impl Default for RuntimeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl RuntimeMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("moa_embed");
        // 10 µs .. ~10 s
        let seconds = || Histogram::new(exponential_buckets(0.00001, 2.0, 21));
        let metrics = RuntimeMetrics {
            queue_texts: Gauge::default(),
            batch_texts: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            batch_tokens: Histogram::new(exponential_buckets(16.0, 2.0, 12)),
            tokenize_seconds: seconds(),
            queue_seconds: seconds(),
            inference_seconds: seconds(),
            texts: Counter::default(),
            errors: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "queue_texts",
            "Texts waiting for a batch",
            metrics.queue_texts.clone(),
        );
        registry.register(
            "batch_texts",
            "Texts per inference batch",
            metrics.batch_texts.clone(),
        );
        registry.register(
            "batch_tokens",
            "Padded tokens (texts x longest text) per inference batch",
            metrics.batch_tokens.clone(),
        );
        registry.register(
            "tokenize_seconds",
            "Time to tokenize one request",
            metrics.tokenize_seconds.clone(),
        );
        registry.register(
            "queue_seconds",
            "Time texts waited for their batch",
            metrics.queue_seconds.clone(),
        );
        registry.register(
            "inference_seconds",
            "Time of one ONNX Runtime batch, pooling included",
            metrics.inference_seconds.clone(),
        );
        registry.register("texts", "Texts embedded", metrics.texts.clone());
        registry.register(
            "errors",
            "Refused or failed requests by reason (invalid_input, overloaded, deadline, unavailable, internal)",
            metrics.errors.clone(),
        );
        RuntimeMetrics {
            registry,
            ..metrics
        }
    }

    /// Appends the series in the text exposition format, without the closing `# EOF`.
    pub fn encode(&self, out: &mut String) -> std::fmt::Result {
        prometheus_client::encoding::text::encode_registry(out, &self.registry)
    }

    /// The whole exposition (`/metrics` of the standalone server).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts one refused or failed request.
    pub fn error(&self, reason: &'static str) {
        self.errors.get_or_create(&ErrorLabels { reason }).inc();
    }
}
