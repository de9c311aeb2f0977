//! An OTLP/HTTP (protobuf) trace receiver for tests: it listens on a free 127.0.0.1 port in the
//! test's process and keeps every span an exporter sends to `OTEL_EXPORTER_OTLP_ENDPOINT`, decoded.

/// One span an [`OtlpReceiver`] got.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    /// String, integer and boolean attributes, as text.
    pub attributes: std::collections::BTreeMap<String, String>,
}

/// An OTLP/HTTP (protobuf) trace receiver on a free 127.0.0.1 port, in this process: what moa's
/// exporter sends to `OTEL_EXPORTER_OTLP_ENDPOINT`, decoded.
pub struct OtlpReceiver {
    pub url: String,
    pub spans: std::sync::Arc<std::sync::Mutex<Vec<ReceivedSpan>>>,
}

impl OtlpReceiver {
    pub fn start() -> OtlpReceiver {
        use http_body_util::{BodyExt, Full};
        use opentelemetry_proto::tonic::collector::trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
        };
        use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
        use prost::Message as _;
        // Its own thread and runtime (detached), so sync and async tests can both use it.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let url = format!("http://{}", listener.local_addr().expect("its address"));
        let spans: std::sync::Arc<std::sync::Mutex<Vec<ReceivedSpan>>> = Default::default();
        let sink = spans.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the receiver");
        let serve = async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let sink = sink.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: hyper::Request<hyper::body::Incoming>| {
                            let sink = sink.clone();
                            async move {
                                let path = request.uri().path().to_string();
                                let body = request.into_body().collect().await?.to_bytes();
                                if path == "/v1/traces" {
                                    let export = ExportTraceServiceRequest::decode(body)
                                        .expect("moa sends OTLP protobuf");
                                    let mut sink = sink.lock().unwrap();
                                    for resource in export.resource_spans {
                                        let service = resource
                                            .resource
                                            .iter()
                                            .flat_map(|r| &r.attributes)
                                            .find(|a| a.key == "service.name")
                                            .and_then(|a| a.value.as_ref()?.value.clone())
                                            .map(|v| match v {
                                                AnyValue::StringValue(s) => s,
                                                other => format!("{other:?}"),
                                            })
                                            .unwrap_or_default();
                                        for scope in resource.scope_spans {
                                            for span in scope.spans {
                                                let attributes = span
                                                    .attributes
                                                    .iter()
                                                    .filter_map(|a| {
                                                        let text = match a
                                                            .value
                                                            .as_ref()?
                                                            .value
                                                            .as_ref()?
                                                        {
                                                            AnyValue::StringValue(s) => s.clone(),
                                                            AnyValue::IntValue(i) => i.to_string(),
                                                            AnyValue::BoolValue(b) => b.to_string(),
                                                            AnyValue::DoubleValue(d) => {
                                                                d.to_string()
                                                            }
                                                            _ => return None,
                                                        };
                                                        Some((a.key.clone(), text))
                                                    })
                                                    .collect();
                                                sink.push(ReceivedSpan {
                                                    service: service.clone(),
                                                    trace_id: hex(&span.trace_id),
                                                    span_id: hex(&span.span_id),
                                                    parent_span_id: hex(&span.parent_span_id),
                                                    name: span.name,
                                                    attributes,
                                                });
                                            }
                                        }
                                    }
                                }
                                let reply = ExportTraceServiceResponse::default().encode_to_vec();
                                Ok::<_, hyper::Error>(
                                    hyper::Response::builder()
                                        .header("content-type", "application/x-protobuf")
                                        .body(Full::new(bytes::Bytes::from(reply)))
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        };
        std::thread::spawn(move || runtime.block_on(serve));
        OtlpReceiver { url, spans }
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
