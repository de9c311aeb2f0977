//! The HTTP trigger: a hyper server that routes each request (Spin's rules), sets the `spin-*`
//! headers, runs it in a fresh component instance and turns traps, deadlines and limits into JSON errors.

mod admission;
mod completion;
pub mod config;
mod instances;
mod router;

pub use router::{Route, RouteMatch, Router};

use super::{RunningTrigger, Trigger, TriggerContext};
use crate::app::App;
use crate::capabilities::outbound_http::{InternalHttp, InternalTarget};
use crate::invocation::Invocation;
use crate::state::HostState;
use crate::telemetry::{self, Metrics};
use admission::{ActivityGuard, Admission, ConnectionActivity, Guarded, IdleTimeoutIo};
use anyhow::{Context as _, Result};
use bytes::Bytes;
use config::HttpConfig;
use futures::future::BoxFuture;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use instances::ComponentInstances;
use moa_manifest::{LoadedManifest, ManifestError};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use wasmtime_wasi_http::handler::ProxyPre;
use wasmtime_wasi_http::handler::{
    ExpirationError, InstantiationError, ProxyHandler, TrapOrPanicError,
};
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

type Handler = ProxyHandler<ComponentInstances>;

/// `[[trigger.http]]`: requests routed by Spin's rules to `wasi:http` components.
pub struct HttpTrigger;

/// Which `wasi:http` world a component exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpWorld {
    /// `wasi:http/incoming-handler@0.2.x` (wit-bindgen, spin-sdk <= 5).
    P2,
    /// `wasi:http/handler@0.3.0` (spin-sdk 7).
    P3,
}

impl HttpWorld {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpWorld::P2 => "wasi:http@0.2",
            HttpWorld::P3 => "wasi:http@0.3",
        }
    }
}

/// A component's `wasi:http` export, ready to instantiate.
pub struct HttpExport {
    pub pre: ProxyPre<HostState>,
    pub world: HttpWorld,
}

/// The HTTP section and the export of every component it routes to.
pub struct PreparedHttp {
    config: HttpConfig,
    exports: BTreeMap<String, Arc<HttpExport>>,
}

impl Trigger for HttpTrigger {
    const KINDS: &'static [&'static str] = &["http"];
    type Config = HttpConfig;
    type Prepared = PreparedHttp;

    fn configure(app: &LoadedManifest) -> Result<HttpConfig, ManifestError> {
        HttpConfig::from_manifest(app)
    }

    fn prepare(config: HttpConfig, app: &App) -> Result<PreparedHttp> {
        let mut exports = BTreeMap::new();
        let named = config.triggers.iter().flat_map(|trigger| {
            trigger
                .middleware
                .iter()
                .map(|id| (id, true))
                .chain([(&trigger.component, false)])
        });
        for (id, is_middleware) in named {
            if exports.contains_key(id) {
                continue;
            }
            let component = app.component(id)?;
            let export = match wasmtime_wasi_http::p3::bindings::ServicePre::new(
                component.pre.clone(),
            ) {
                Ok(pre) => HttpExport {
                    pre: ProxyPre::P3(pre),
                    world: HttpWorld::P3,
                },
                Err(_) => {
                    match wasmtime_wasi_http::p2::bindings::ProxyPre::new(component.pre.clone()) {
                        Ok(pre) => HttpExport {
                            pre: ProxyPre::P2(pre),
                            world: HttpWorld::P2,
                        },
                        Err(_) => anyhow::bail!(
                            "component `{}` ({}) is named by an HTTP trigger but is not an HTTP component: it exports neither wasi:http/handler@0.3.0 nor wasi:http/incoming-handler@0.2.x\n  help: build it with spin-sdk's #[http_service] or wit-bindgen's wasi:http/proxy world",
                            component.id,
                            component.source.display()
                        ),
                    }
                }
            };
            if is_middleware && export.world != HttpWorld::P3 {
                anyhow::bail!(
                    "component `{}` ({}) is used as HTTP middleware but exports wasi:http/incoming-handler@0.2: middleware must export and import wasi:http/handler@0.3.0\n  help: build it with spin-sdk 7's `http-middleware` feature (#[http_service], spin_sdk::http::next)",
                    component.id,
                    component.source.display()
                );
            }
            exports.insert(id.clone(), Arc::new(export));
        }
        Ok(PreparedHttp { config, exports })
    }

    fn export_of(prepared: &PreparedHttp, id: &str) -> Option<&'static str> {
        prepared.exports.get(id).map(|export| export.world.as_str())
    }

    async fn start(
        prepared: PreparedHttp,
        app: &Arc<App>,
        cx: &TriggerContext,
    ) -> Result<Option<Box<dyn RunningTrigger>>> {
        if prepared.config.triggers.is_empty() {
            return Ok(None);
        }
        let server = HttpServer::new(app, prepared, cx);
        let listener = bind(cx.listen).await?;
        let address = listener.local_addr()?;
        Ok(Some(Box::new(RunningHttp {
            server,
            listener,
            address,
            drain: cx.drain,
        })))
    }
}

struct RunningHttp {
    server: Arc<HttpServer>,
    listener: tokio::net::TcpListener,
    address: SocketAddr,
    drain: Duration,
}

#[async_trait::async_trait]
impl RunningTrigger for RunningHttp {
    fn banner(&self) -> Vec<String> {
        let address = self.address;
        let mut lines = vec![
            format!("Serving http://{address}"),
            "Available Routes:".to_string(),
        ];
        for route in self.server.router().routes() {
            let (path, note) = match route.full.strip_suffix("/...") {
                Some(prefix) => (prefix.to_string(), " (wildcard)"),
                None if route.full == "/..." => ("/".to_string(), " (wildcard)"),
                None => (route.full.clone(), ""),
            };
            lines.push(format!(
                "  {}: http://{address}{path}{note}",
                route.component
            ));
        }
        lines
    }

    async fn run(self: Box<Self>, shutdown: CancellationToken) -> Result<()> {
        let RunningHttp {
            server,
            listener,
            drain,
            ..
        } = *self;
        server
            .serve(listener, shutdown.cancelled_owned(), drain)
            .await
    }
}

/// How deep in-app calls (`http://self`, `*.spin.internal`) may nest before 508.
const MAX_IN_APP_DEPTH: u32 = 10;

/// The HTTP server of one app.
pub struct HttpServer {
    router: Router,
    /// The middleware of the first trigger naming each component, for `<id>.spin.internal` calls.
    component_middleware: BTreeMap<String, Vec<String>>,
    handlers: BTreeMap<String, Handler>,
    metrics: Arc<Metrics>,
    base: String,
    max_body_bytes: u64,
    timeouts: BTreeMap<String, Duration>,
    /// Components whose instances serve more than one request (they live on after a response).
    reused: std::collections::BTreeSet<String>,
    admission: Admission,
    traces_exported: bool,
    header_timeout: Duration,
    idle_timeout: Duration,
}

/// Why a request got an error response instead of the component's.
enum Failure {
    BadRequest(String),
    LoopDetected,
    NotFound,
    BodyTooLarge,
    Deadline(Duration),
    Unavailable(String),
    /// Admission control turned the request away (`requests`, `instances`).
    Busy(&'static str),
    Trap(String),
}

impl Failure {
    fn status(&self) -> StatusCode {
        match self {
            Failure::BadRequest(_) => StatusCode::BAD_REQUEST,
            Failure::LoopDetected => StatusCode::LOOP_DETECTED,
            Failure::NotFound => StatusCode::NOT_FOUND,
            Failure::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Failure::Deadline(_) => StatusCode::GATEWAY_TIMEOUT,
            Failure::Unavailable(_) | Failure::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            Failure::Trap(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Request facts shared by the outside and the in-app paths.
struct Incoming {
    request_id: String,
    client: Option<SocketAddr>,
    /// Set when the body went over the limit while the component read it.
    body_overflow: Arc<AtomicBool>,
    /// The W3C trace context to carry into messages the component publishes.
    traceparent: Option<String>,
    /// 0 for a request from outside; n for the n-th nested in-app call.
    depth: u32,
    /// An in-app call ends no later than the request that made it.
    caller_deadline: Option<std::time::Instant>,
    /// Position in the route's middleware chain: 0 is the outermost middleware (or the component
    /// when there is none).
    hop: usize,
}

/// Where a middleware's `next` goes: the same route, one hop further in (carried on the
/// middleware's invocation, see [`Invocation::next`]).
struct NextHop {
    component: String,
    middleware: Vec<String>,
    matched_route: String,
    raw_route: String,
    component_route: String,
    path_info: String,
    params: Vec<(String, String)>,
    hop: usize,
}

impl NextHop {
    fn new(matched: &RouteMatch<'_>, hop: usize) -> Self {
        NextHop {
            component: matched.component.to_string(),
            middleware: matched.middleware.to_vec(),
            matched_route: matched.matched_route.to_string(),
            raw_route: matched.raw_route.to_string(),
            component_route: matched.component_route.clone(),
            path_info: matched.path_info.clone(),
            params: matched.params.clone(),
            hop,
        }
    }

    fn route(&self) -> RouteMatch<'_> {
        RouteMatch {
            component: &self.component,
            middleware: &self.middleware,
            matched_route: &self.matched_route,
            raw_route: &self.raw_route,
            component_route: self.component_route.clone(),
            path_info: self.path_info.clone(),
            params: self.params.clone(),
        }
    }
}

/// Headers only middleware may set (`x-moa-auth-subject`, ...): removed from every request that
/// comes from outside or from another component's in-app call, so no client can forge them.
const MIDDLEWARE_HEADER_PREFIX: &str = "x-moa-auth-";

fn strip_middleware_headers(headers: &mut http::HeaderMap) {
    let forged: Vec<http::HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with(MIDDLEWARE_HEADER_PREFIX))
        .cloned()
        .collect();
    for name in forged {
        headers.remove(name);
    }
}

impl HttpServer {
    /// Builds the server for `app`, and registers it as the app's in-app HTTP dispatcher.
    fn new(app: &App, prepared: PreparedHttp, cx: &TriggerContext) -> Arc<Self> {
        let (engine, metrics) = (cx.engine.clone(), cx.metrics.clone());
        let router = Router::new(&prepared.config.base, &prepared.config.triggers);
        let handlers = prepared
            .exports
            .iter()
            .filter_map(|(id, export)| {
                let component = app.components.get(id)?.clone();
                let handler = ProxyHandler::new(ComponentInstances {
                    component,
                    export: export.clone(),
                    engine: engine.clone(),
                    metrics: metrics.clone(),
                });
                Some((id.clone(), handler))
            })
            .collect();
        let timeouts = app
            .components
            .iter()
            .map(|(id, c)| (id.clone(), c.request_timeout))
            .collect();
        let reused = app
            .components
            .iter()
            .filter(|(_, c)| c.max_instance_reuse > 1)
            .map(|(id, _)| id.clone())
            .collect();
        let mut component_middleware = BTreeMap::new();
        for trigger in &prepared.config.triggers {
            component_middleware
                .entry(trigger.component.clone())
                .or_insert_with(|| trigger.middleware.clone());
        }
        let trigger = Arc::new(HttpServer {
            router,
            component_middleware,
            handlers,
            metrics,
            base: prepared.config.base.clone(),
            max_body_bytes: app.limits.max_request_body_bytes,
            timeouts,
            reused,
            admission: Admission::new(
                app.limits.max_connections,
                app.limits.max_concurrent_requests,
            ),
            traces_exported: cx.traces_exported,
            header_timeout: Duration::from_millis(app.limits.http_header_timeout_ms),
            idle_timeout: Duration::from_millis(app.limits.http_idle_timeout_ms),
        });
        let _ = app
            .capabilities
            .outbound_http
            .set(Arc::new(InternalDispatcher(Arc::downgrade(&trigger))));
        trigger
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Serves connections from `listener` until `shutdown` resolves, then lets in-flight
    /// requests finish (up to `drain`).
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()>,
        drain: Duration,
    ) -> Result<()> {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        // Without a timer hyper applies no header-read timeout: a slow client would hold its
        // connection forever. Idle connections (both versions) end through `IdleTimeoutIo`.
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(self.header_timeout);
        builder
            .http2()
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Some(self.idle_timeout))
            .keep_alive_timeout(self.header_timeout)
            .max_concurrent_streams(256);
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let (stream, client) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let Some(slot) = self.admission.connection() else {
                self.metrics.http_rejected("connections");
                tokio::spawn(refuse_connection(stream, self.header_timeout));
                continue;
            };
            let open = self.metrics.connection_open();
            let activity = ConnectionActivity::default();
            let io = IdleTimeoutIo::new(stream, activity.clone(), self.idle_timeout);
            let trigger = self.clone();
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let trigger = trigger.clone();
                    let active = activity.start();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            trigger.handle_outside(request, client, active).await,
                        )
                    }
                });
            let connection = builder
                .serve_connection(TokioIo::new(io), service)
                .into_owned();
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    tracing::debug!(error = %err, "connection ended with an error");
                }
                drop((slot, open));
            });
        }
        tracing::info!("shutting down: waiting for in-flight requests");
        if tokio::time::timeout(drain, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                drain_ms = drain.as_millis() as u64,
                "in-flight requests did not finish in time"
            );
        }
        Ok(())
    }

    /// A request from outside: routed over public routes, logged and counted.
    async fn handle_outside(
        &self,
        request: Request<hyper::body::Incoming>,
        client: SocketAddr,
        active: ActivityGuard,
    ) -> Response<WasiBody> {
        let started = Instant::now();
        let request_id = request_id(request.headers());
        // A span per request only when traces are exported: the log line below carries the same
        // fields, and building a span costs more than the rest of the host's per-request work.
        let span = if self.traces_exported {
            let span = tracing::info_span!("http.request", request_id = %request_id, method = %request.method(), path = %request.uri().path());
            telemetry::link_parent_trace(&span, request.headers());
            span
        } else {
            tracing::Span::none()
        };
        let _in_flight = self.metrics.in_flight();
        let method = request.method().clone();
        let path = request.uri().path().to_string();

        let incoming = Incoming {
            request_id: request_id.clone(),
            client: Some(client),
            body_overflow: Arc::new(AtomicBool::new(false)),
            traceparent: telemetry::traceparent(&span, request.headers()),
            depth: 0,
            caller_deadline: None,
            hop: 0,
        };
        let mut request = request;
        strip_middleware_headers(request.headers_mut());
        let permit = self.admission.request();
        let forged_internal = request
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| h.split(':').next().unwrap_or("").to_ascii_lowercase())
            .is_some_and(|h| h.ends_with(crate::capabilities::outbound_http::INTERNAL_HOST_SUFFIX));
        let (component, route, result) = async {
            if permit.is_none() {
                return (None, None, Err(Failure::Busy("requests")));
            }
            if forged_internal {
                return (
                    None,
                    None,
                    Err(Failure::BadRequest(
                        "the Host header names an in-app (*.spin.internal) address".into(),
                    )),
                );
            }
            let Some(matched) = self.router.route(&path) else {
                return (None, None, Err(Failure::NotFound));
            };
            let component = matched.component.to_string();
            let route = matched.matched_route.to_string();
            let request = self.limit_body(request, &incoming.body_overflow);
            let request = match request {
                Ok(request) => request,
                Err(failure) => return (Some(component), Some(route), Err(failure)),
            };
            let result = self.call(&matched, request, &incoming).await;
            (Some(component), Some(route), result)
        }
        .instrument(span.clone())
        .await;

        let component_name = component.as_deref().unwrap_or("-");
        let mut response = match result {
            Ok(response) => response,
            Err(failure) => {
                match &failure {
                    Failure::Trap(error) => {
                        self.metrics.trapped(component_name);
                        let (trace_id, _) = telemetry::trace_ids(incoming.traceparent.as_deref());
                        tracing::error!(parent: &span, request_id = %request_id, trace_id, component = component_name, error = %error, "component trapped");
                    }
                    Failure::Deadline(_) => self.metrics.deadline_hit(component_name),
                    Failure::Busy(reason) => self.metrics.http_rejected(reason),
                    _ => {}
                }
                error_response(&failure, &request_id, component.as_deref(), &path)
            }
        };
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert("x-request-id", value);
        }
        let status = response.status().as_u16();
        let elapsed = started.elapsed();
        self.metrics
            .request_finished(component_name, status, elapsed);
        // The request's span when traces are exported, else the caller's: Loki lines link to traces.
        let (trace_id, span_id) = telemetry::trace_ids(incoming.traceparent.as_deref());
        tracing::info!(
            target: "moa::http",
            parent: &span,
            request_id = %request_id,
            trace_id,
            span_id,
            method = %method,
            path = %path,
            route = route.as_deref().unwrap_or("-"),
            component = component_name,
            status,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            "request"
        );
        response.map(|body| Guarded::new(body, permit, active).boxed_unsync())
    }

    /// Rejects a declared oversize body at once; caps a streamed body at the limit.
    fn limit_body<B>(
        &self,
        request: Request<B>,
        overflow: &Arc<AtomicBool>,
    ) -> Result<Request<WasiBody>, Failure>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let max = self.max_body_bytes;
        let declared = request
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > max) {
            return Err(Failure::BodyTooLarge);
        }
        let overflow = overflow.clone();
        let limit = usize::try_from(max).unwrap_or(usize::MAX);
        Ok(request.map(move |body| {
            http_body_util::Limited::new(body, limit)
                .map_err(move |err| {
                    if err.is::<http_body_util::LengthLimitError>() {
                        overflow.store(true, Ordering::Relaxed);
                        return HttpError::HttpRequestBodySize(Some(max));
                    }
                    match err.downcast::<HttpError>() {
                        Ok(code) => *code,
                        Err(other) => HttpError::InternalError(Some(other.to_string())),
                    }
                })
                .boxed_unsync()
        }))
    }

    /// Runs a routed request in its component.
    async fn call(
        &self,
        matched: &RouteMatch<'_>,
        mut request: Request<WasiBody>,
        incoming: &Incoming,
    ) -> Result<Response<WasiBody>, Failure> {
        // The hop's middleware, or the route's component after the last one.
        let component = matched
            .middleware
            .get(incoming.hop)
            .map(String::as_str)
            .unwrap_or(matched.component);
        let Some(handler) = self.handlers.get(component) else {
            return Err(Failure::Unavailable(format!(
                "component `{component}` is not loaded"
            )));
        };
        self.set_spin_headers(&mut request, matched, incoming.client);
        let timeout = self.timeouts.get(component).copied().unwrap_or_default();
        let (listener, outcome) = tokio::sync::oneshot::channel();
        if incoming.depth > MAX_IN_APP_DEPTH {
            return Err(Failure::LoopDetected);
        }
        let mut invocation = Invocation::new(incoming.request_id.as_str(), timeout)
            .with_traceparent(incoming.traceparent.clone())
            .with_depth(incoming.depth);
        if let Some(caller_deadline) = incoming.caller_deadline {
            invocation.deadline = invocation.deadline.min(caller_deadline);
        }
        if incoming.hop < matched.middleware.len() {
            invocation.next = Some(Arc::new(NextHop::new(matched, incoming.hop + 1)));
        }
        let context = instances::RequestContext {
            outcome: listener,
            invocation,
        };
        let started = Instant::now();
        let result = handler.handle(context, request).await;
        if incoming.body_overflow.load(Ordering::Relaxed) {
            return Err(Failure::BodyTooLarge);
        }
        // Whatever error a component that ran past its deadline ends with (an interrupt, the
        // instance torn down while a host call held the store, a p2 response never set), the
        // client's answer is the deadline.
        if result.is_err() && started.elapsed() >= timeout {
            return Err(Failure::Deadline(timeout));
        }
        match result {
            // The body ends with an error if the instance traps while it streams.
            Ok(response) => {
                let wait = if self.reused.contains(component) {
                    Duration::ZERO
                } else {
                    completion::OUTCOME_WAIT
                };
                let report = completion::CutReport {
                    component: component.to_string(),
                    request_id: incoming.request_id.clone(),
                    metrics: self.metrics.clone(),
                };
                Ok(response.map(|body| {
                    completion::CompletionCheck::new(body, outcome, wait, report).boxed_unsync()
                }))
            }
            // The instance itself failed (e.g. interrupted at its deadline); it reports why as
            // it is torn down.
            Err(error) if error.downcast_ref::<TrapOrPanicError>().is_some() => {
                match tokio::time::timeout(Duration::from_secs(1), outcome).await {
                    Ok(Ok(cause)) => Err(classify(cause, timeout)),
                    _ => Err(classify(error, timeout)),
                }
            }
            Err(error) => Err(classify(error, timeout)),
        }
    }

    /// Makes the URI absolute and adds the headers Spin gives components.
    fn set_spin_headers(
        &self,
        request: &mut Request<WasiBody>,
        matched: &RouteMatch<'_>,
        client: Option<SocketAddr>,
    ) {
        let host = request
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| request.uri().authority().map(|a| a.to_string()))
            .unwrap_or_else(|| "localhost".into());
        let path_and_query = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string();
        let full_url = format!("http://{host}{path_and_query}");
        if let Ok(uri) = full_url.parse() {
            *request.uri_mut() = uri;
        }
        let headers = request.headers_mut();
        // The `spin-*` headers are the host's word; a client's own are dropped, not passed on.
        let forged: Vec<http::HeaderName> = headers
            .keys()
            .filter(|name| name.as_str().starts_with("spin-"))
            .cloned()
            .collect();
        for name in forged {
            headers.remove(name);
        }
        let mut set = |name: &str, value: &str| {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.insert(name, value);
            }
        };
        set("spin-full-url", &full_url);
        set("spin-path-info", &matched.path_info);
        set("spin-matched-route", matched.matched_route);
        set("spin-raw-component-route", matched.raw_route);
        set("spin-component-route", &matched.component_route);
        set("spin-base-path", &self.base);
        if let Some(client) = client {
            set("spin-client-addr", &client.to_string());
        }
        for (name, value) in &matched.params {
            set(&format!("spin-path-match-{name}"), value);
        }
    }
}

/// Maps a handler error to what the client sees.
fn classify(error: wasmtime::Error, timeout: Duration) -> Failure {
    if error.downcast_ref::<ExpirationError>().is_some() || instances::is_interrupt(&error) {
        return Failure::Deadline(timeout);
    }
    if let Some(instantiation) =
        error.downcast_ref::<InstantiationError<instances::RequestContext>>()
    {
        if crate::engine::is_pool_exhausted(&instantiation.error) {
            return Failure::Busy("instances");
        }
        return Failure::Trap(format!("instantiation failed: {:#}", instantiation.error));
    }
    Failure::Trap(format!("{error:#}"))
}

fn error_response(
    failure: &Failure,
    request_id: &str,
    component: Option<&str>,
    path: &str,
) -> Response<WasiBody> {
    let message = match failure {
        Failure::BadRequest(why) => why.clone(),
        Failure::LoopDetected => format!("in-app calls nested deeper than {MAX_IN_APP_DEPTH}"),
        Failure::NotFound => format!("no route matches {path}"),
        Failure::BodyTooLarge => {
            "request body is larger than the host's max_request_body_bytes".into()
        }
        Failure::Deadline(timeout) => format!(
            "the component did not finish within its {} ms deadline",
            timeout.as_millis()
        ),
        Failure::Unavailable(why) => why.clone(),
        Failure::Busy("instances") => {
            "every instance slot is in use (engine.max_instances); retry shortly".into()
        }
        Failure::Busy(_) => {
            "the host is handling as many requests as it allows (limits.max_concurrent_requests); retry shortly".into()
        }
        Failure::Trap(_) => "the component failed while handling the request".into(),
    };
    let body = serde_json::json!({
        "error": message,
        "status": failure.status().as_u16(),
        "request_id": request_id,
        "component": component,
    });
    let mut response = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = failure.status();
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if failure.status() == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(
            http::header::RETRY_AFTER,
            HeaderValue::from(admission::RETRY_AFTER_SECONDS),
        );
    }
    response
}

/// Answers every request on a connection over the cap with 503 and closes it.
async fn refuse_connection(stream: tokio::net::TcpStream, timeout: Duration) {
    let service = hyper::service::service_fn(|_request: Request<hyper::body::Incoming>| async {
        let failure = Failure::Busy("connections");
        let body = serde_json::json!({
            "error": "the host has as many open connections as it allows (limits.max_connections); retry shortly",
            "status": 503,
        });
        let mut response = error_response(&failure, "-", None, "");
        *response.body_mut() = Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed_unsync();
        Ok::<_, std::convert::Infallible>(response)
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(timeout, connection).await;
}

/// Takes the caller's `x-request-id` when it is short and plain, else makes a new one.
fn request_id(headers: &http::HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        })
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}

/// In-app requests (`http://self`, `http://<id>.spin.internal`) from components' outbound HTTP.
struct InternalDispatcher(Weak<HttpServer>);

impl InternalHttp for InternalDispatcher {
    fn dispatch(
        &self,
        target: InternalTarget,
        request: Request<WasiBody>,
        caller: Invocation,
    ) -> BoxFuture<'static, Result<Response<WasiBody>, HttpError>> {
        let trigger = self.0.clone();
        Box::pin(async move {
            let Some(trigger) = trigger.upgrade() else {
                return Err(HttpError::DestinationUnavailable);
            };
            let path = request.uri().path().to_string();
            // The caller's request id and trace context follow the call unless it set its own.
            let request_id = match request.headers().get("x-request-id") {
                Some(_) => request_id(request.headers()),
                None => caller.request_id.to_string(),
            };
            let traceparent = telemetry::traceparent(&tracing::Span::none(), request.headers())
                .or(caller.traceparent.clone());
            let mut request = request;
            let next = match &target {
                InternalTarget::Next => {
                    let next = caller
                        .next
                        .clone()
                        .and_then(|next| next.downcast::<NextHop>().ok());
                    if next.is_none() {
                        // A component that imports wasi:http/handler but is not in a chain.
                        return Err(HttpError::DestinationNotFound);
                    }
                    next
                }
                _ => {
                    strip_middleware_headers(request.headers_mut());
                    None
                }
            };
            let incoming = Incoming {
                request_id,
                client: None,
                body_overflow: Arc::new(AtomicBool::new(false)),
                traceparent,
                depth: caller.depth + 1,
                caller_deadline: Some(caller.deadline),
                hop: next.as_ref().map_or(0, |next| next.hop),
            };
            let request = match trigger.limit_body(request, &incoming.body_overflow) {
                Ok(request) => request,
                Err(failure) => {
                    return Ok(error_response(&failure, &incoming.request_id, None, &path));
                }
            };
            let route = match &target {
                InternalTarget::Next => {
                    let Some(next) = &next else {
                        return Err(HttpError::DestinationNotFound);
                    };
                    let route = next.route();
                    let component = route
                        .middleware
                        .get(next.hop)
                        .map_or(route.component, String::as_str)
                        .to_string();
                    return trigger.call(&route, request, &incoming).await.or_else(|f| {
                        Ok(error_response(
                            &f,
                            &incoming.request_id,
                            Some(&component),
                            &path,
                        ))
                    });
                }
                InternalTarget::App => trigger.router.route(&path),
                InternalTarget::Component(id) => {
                    let route = RouteMatch {
                        component: id,
                        middleware: trigger
                            .component_middleware
                            .get(id.as_str())
                            .map_or(&[], Vec::as_slice),
                        matched_route: "/...",
                        raw_route: "/...",
                        component_route: String::new(),
                        path_info: path.clone(),
                        params: Vec::new(),
                    };
                    // Borrow-checker friendly: route from an owned id below.
                    return match trigger.handlers.contains_key(id.as_str()) {
                        true => trigger.call(&route, request, &incoming).await.or_else(|f| {
                            Ok(error_response(&f, &incoming.request_id, Some(id), &path))
                        }),
                        false => Err(HttpError::DestinationNotFound),
                    };
                }
            };
            let Some(route) = route else {
                return Ok(error_response(
                    &Failure::NotFound,
                    &incoming.request_id,
                    None,
                    &path,
                ));
            };
            let component = route.component.to_string();
            trigger.call(&route, request, &incoming).await.or_else(|f| {
                Ok(error_response(
                    &f,
                    &incoming.request_id,
                    Some(&component),
                    &path,
                ))
            })
        })
    }
}

/// Binds the listener, with a message that says what to do when the address is taken.
pub async fn bind(address: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await.with_context(|| {
        format!("cannot listen on {address}: is another server using it? pick another with --listen 127.0.0.1:PORT")
    })
}
