//! The admin listener: Prometheus `/metrics`, a `/healthz` liveness probe and a `/readyz`
//! readiness probe (503 while a trigger is down), on its own port so it is never routed to components.

use super::{Health, Metrics};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::Arc;

/// Serves admin requests on `listener` until the process ends.
pub async fn serve_admin(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (metrics, health) = (metrics.clone(), health.clone());
        let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            let (metrics, health) = (metrics.clone(), health.clone());
            async move { Ok::<_, std::convert::Infallible>(respond(&request, &metrics, &health)) }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}

fn respond(
    request: &Request<hyper::body::Incoming>,
    metrics: &Metrics,
    health: &Health,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match request.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            let failures = health.failures();
            let status = if failures.is_empty() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let body = serde_json::json!({
                "ready": failures.is_empty(),
                "failed_triggers": failures
                    .iter()
                    .map(|(trigger, error)| serde_json::json!({"trigger": trigger, "error": error}))
                    .collect::<Vec<_>>(),
            });
            (status, "application/json", format!("{body}\n"))
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "admin endpoints: /metrics, /healthz, /readyz\n".into(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, value);
    }
    response
}
