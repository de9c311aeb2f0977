//! Logging, tracing and metrics set-up: JSON log lines (one per request) for Fluent Bit/Loki,
//! OTLP trace export when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, Prometheus metrics.

mod admin;
pub mod guest_output;
mod health;
mod log_writer;
mod metrics;

pub use admin::serve_admin;
pub use health::Health;

pub use metrics::Metrics;

use anyhow::Result;
use opentelemetry::trace::TracerProvider as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (for Fluent Bit / Loki).
    Json,
    /// Human-readable text.
    Text,
}

/// Keeps the OTLP pipeline and the log writer alive; flushes pending spans and lines when dropped.
pub struct TelemetryGuard {
    /// Whether spans are exported (OTLP): triggers build per-request spans only then.
    pub traces_exported: bool,
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    _log_writer: log_writer::FlushGuard,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global tracing subscriber. `MOA_LOG` (or `RUST_LOG`) sets the filter, default `info`.
pub fn init(format: LogFormat) -> Result<TelemetryGuard> {
    let filter = std::env::var("MOA_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info,wasmtime=warn,cranelift=warn".into());
    let filter = EnvFilter::try_new(&filter)
        .map_err(|e| anyhow::anyhow!("invalid MOA_LOG filter `{filter}`: {e}"))?;

    // Lines are formatted on the request path and appended to one buffer that a flusher thread
    // writes to stderr in batches (log_writer.rs): no request waits on a write(2), nothing is lost.
    let (writer, log_writer) = log_writer::batched_stderr();
    let fmt_layer = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(writer)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(writer).boxed(),
    };

    let provider = moa_otel::tracer_provider_from_env("moa")?;
    let otel_layer = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("moa")));

    TRACES_EXPORTED.store(provider.is_some(), std::sync::atomic::Ordering::Relaxed);
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))?;
    Ok(TelemetryGuard {
        traces_exported: provider.is_some(),
        provider,
        _log_writer: log_writer,
    })
}

static TRACES_EXPORTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether spans are exported (OTLP configured): hops build their spans only then.
pub fn traces_exported() -> bool {
    TRACES_EXPORTED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Makes `span` a child of the W3C `parent` (when well-formed) and returns the `traceparent` to pass
/// on to the next hop: the span's own context when traces are exported, else `parent` unchanged.
pub fn continue_trace(span: &tracing::Span, parent: Option<&str>) -> Option<String> {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let parent = parent.filter(|p| is_traceparent(p));
    if let Some(parent) = parent
        && !span.is_none()
    {
        let carrier =
            std::collections::HashMap::from([("traceparent".to_string(), parent.to_string())]);
        let context = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
        let _ = span.set_parent(context);
    }
    own_traceparent(span).or_else(|| parent.map(str::to_string))
}

/// `span`'s own W3C `traceparent`, when it is exported.
fn own_traceparent(span: &tracing::Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        )
    })
}

/// Makes the span of an incoming request a child of the caller's W3C `traceparent`, if any.
pub fn link_parent_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    struct Extractor<'a>(&'a http::HeaderMap);
    impl opentelemetry::propagation::Extractor for Extractor<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(|k| k.as_str()).collect()
        }
    }
    if headers.contains_key("traceparent") {
        let parent =
            opentelemetry::global::get_text_map_propagator(|p| p.extract(&Extractor(headers)));
        let _ = span.set_parent(parent);
    }
}

/// The W3C `traceparent` for work done on behalf of a request: the request span's own context
/// when traces are exported, else the caller's `traceparent` passed through (if well-formed).
pub fn traceparent(span: &tracing::Span, headers: &http::HeaderMap) -> Option<String> {
    if let Some(own) = own_traceparent(span) {
        return Some(own);
    }
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_traceparent(v))
        .map(str::to_string)
}

/// The trace id and span id of a W3C `traceparent`, for log lines (Loki to trace correlation).
pub fn trace_ids(traceparent: Option<&str>) -> (Option<&str>, Option<&str>) {
    match traceparent.filter(|t| is_traceparent(t)) {
        Some(t) => (t.get(3..35), t.get(36..52)),
        None => (None, None),
    }
}

/// `00-<32 hex>-<16 hex>-<2 hex>`.
fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    parts.len() == 4
        && hex(parts[0], 2)
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
}
