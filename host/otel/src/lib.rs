//! OTLP span export for moa's processes, configured the standard way: on when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set, named by `OTEL_SERVICE_NAME`.

use opentelemetry_sdk::trace::SdkTracerProvider;

/// Why export could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up OTLP export (check OTEL_EXPORTER_OTLP_ENDPOINT): {0}")]
pub struct ExportError(#[from] opentelemetry_otlp::ExporterBuildError);

/// A batch-exporting tracer provider (OTLP over HTTP/protobuf) when the environment asks for
/// export, `None` otherwise. `default_service` names the service when `OTEL_SERVICE_NAME` is unset.
/// Installs the W3C trace-context propagator, so `traceparent` headers are read and written.
pub fn tracer_provider_from_env(
    default_service: &str,
) -> Result<Option<SdkTracerProvider>, ExportError> {
    let wanted = std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || std::env::var_os("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some();
    if !wanted {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| default_service.into());
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    Ok(Some(provider))
}
