//! Outbound HTTP capability: `wasi:http` outgoing requests (p2 and p3) restricted to the
//! component's `allowed_outbound_hosts`; denied requests fail in the guest, never connect.

mod allowed_hosts;

pub use allowed_hosts::{AllowedHost, AllowedHosts};

use crate::capabilities::variables::AppVariables;
use crate::capabilities::{
    Capability, ComponentContext, ConfigureContext, HasCapability, InstanceParts,
};
use crate::invocation::Invocation;
use anyhow::{Result, anyhow};
use futures::future::BoxFuture;
use moa_manifest::{Component, LoadedManifest};
use std::sync::{Arc, OnceLock};
use wasmtime::component::Linker;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// Suffix of hosts that name another component of this app (Spin's local service chaining).
pub const INTERNAL_HOST_SUFFIX: &str = ".spin.internal";

/// Where an in-app request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InternalTarget {
    /// `http://self/...` or a relative URI: routed by the app's HTTP router (public routes).
    App,
    /// `http://<id>.spin.internal/...`: straight to component `<id>`, private or not.
    Component(String),
    /// A middleware's `wasi:http/handler` call: the next component in its chain.
    Next,
}

/// Serves in-app requests; implemented by the HTTP trigger.
pub trait InternalHttp: Send + Sync {
    /// `caller` is the invocation that makes the call (its depth, trace context and deadline).
    fn dispatch(
        &self,
        target: InternalTarget,
        request: http::Request<WasiBody>,
        caller: Invocation,
    ) -> BoxFuture<'static, Result<http::Response<WasiBody>, HttpError>>;
}

/// Late-bound handle to the app's internal dispatcher (the router exists only after every
/// component is loaded).
pub type InternalHttpSlot = Arc<OnceLock<Arc<dyn InternalHttp>>>;

/// Outgoing `wasi:http` requests (p2 and p3; linked with WASI by the host core), checked against
/// each component's `allowed_outbound_hosts`, and in-app calls (`http://self`, `*.spin.internal`).
pub struct OutboundHttpCapability;

impl Capability for OutboundHttpCapability {
    const NAME: &'static str = "outbound-http";
    const IMPORTS: &'static [&'static str] =
        &["wasi:http/outgoing-handler (allowed_outbound_hosts)"];

    /// Filled by the HTTP trigger with its router once every component is loaded.
    type AppState = InternalHttpSlot;
    type ComponentState = OutboundHttpHooks;
    type InstanceState = OutboundHttpHooks;
    type View<'a> = &'a mut OutboundHttpHooks;

    fn link<T: HasCapability<Self> + Send + 'static>(_linker: &mut Linker<T>) -> Result<()> {
        // wasi:http is linked with WASI by the core; the hooks reach it through `WasiHttpView`.
        Ok(())
    }

    async fn configure(_cx: &ConfigureContext<'_>) -> Result<InternalHttpSlot> {
        Ok(InternalHttpSlot::default())
    }

    fn component(
        internal: &InternalHttpSlot,
        cx: &ComponentContext<'_>,
    ) -> Result<OutboundHttpHooks> {
        Ok(OutboundHttpHooks {
            component_id: cx.component.id.as_str().into(),
            allowed: cx.allowed_hosts.clone(),
            internal: internal.clone(),
            metrics: cx.metrics.clone(),
            caller: Invocation::new("-", std::time::Duration::ZERO),
            next_pending: false,
        })
    }

    fn instance(hooks: &OutboundHttpHooks) -> OutboundHttpHooks {
        OutboundHttpHooks {
            component_id: hooks.component_id.clone(),
            allowed: hooks.allowed.clone(),
            internal: hooks.internal.clone(),
            metrics: hooks.metrics.clone(),
            caller: hooks.caller.clone(),
            next_pending: false,
        }
    }

    fn view<'a>(parts: InstanceParts<'a, OutboundHttpHooks>) -> &'a mut OutboundHttpHooks {
        parts.state
    }

    fn begin(hooks: &mut OutboundHttpHooks, invocation: &Invocation) {
        hooks.caller = invocation.clone();
    }
}

/// Parses each component's allow-list (rendering `{{ var }}` templates) at load time.
pub fn configure(
    app: &LoadedManifest,
    component: &Component,
    variables: &AppVariables,
) -> Result<AllowedHosts> {
    let mut entries = Vec::new();
    for entry in &component.allowed_outbound_hosts {
        let rendered = variables.render(&entry.value)?;
        let host = AllowedHost::parse(&rendered).map_err(|why| {
            anyhow!(
                "{}:{}: component `{}` has an invalid allowed_outbound_hosts entry: {why}",
                app.path.display(),
                entry.position,
                component.id
            )
        })?;
        entries.push(host);
    }
    Ok(AllowedHosts::new(entries))
}

/// Per-instance hooks given to wasmtime-wasi-http: the allow-list check and in-app dispatch.
pub struct OutboundHttpHooks {
    pub component_id: Arc<str>,
    pub allowed: Arc<AllowedHosts>,
    pub internal: InternalHttpSlot,
    pub metrics: Arc<crate::telemetry::Metrics>,
    /// The invocation this instance serves (set per request by [`crate::state::HostState::begin`]).
    pub caller: Invocation,
    /// Set by the `wasi:http/handler` import just before it sends: that request goes to the next
    /// component of the middleware chain, not out.
    pub next_pending: bool,
}

type SendResult = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ),
    HttpError,
>;

impl OutboundHttpHooks {
    fn internal_target(&self, uri: &http::Uri) -> Option<Result<InternalTarget, ()>> {
        let host = uri.host().map(str::to_ascii_lowercase);
        match host.as_deref() {
            None | Some("self") | Some("self.alt") => Some(if self.allowed.allows_self() {
                Ok(InternalTarget::App)
            } else {
                Err(())
            }),
            Some(host) => {
                let id = host.strip_suffix(INTERNAL_HOST_SUFFIX)?;
                Some(if self.allowed.allows_internal(id) {
                    Ok(InternalTarget::Component(id.to_string()))
                } else {
                    Err(())
                })
            }
        }
    }
}

impl WasiHttpHooks for OutboundHttpHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        drop(fut);
        let uri = request.uri().clone();
        let metrics = self.metrics.clone();
        let denied = |component: &str| {
            tracing::warn!(component, %uri, "outbound request denied: not in allowed_outbound_hosts");
            metrics.outbound_denied(component);
        };
        let target = match std::mem::take(&mut self.next_pending) {
            true => Some(Ok(InternalTarget::Next)),
            false => self.internal_target(&uri),
        };
        match target {
            Some(Ok(target)) => {
                let caller = self.caller.clone();
                let Some(internal) = self.internal.get().cloned() else {
                    return Box::new(async {
                        Err(HttpError::InternalError(Some(
                            "app router not ready".into(),
                        )))
                    });
                };
                return Box::new(async move {
                    let response = internal.dispatch(target, request, caller).await?;
                    Ok((
                        response,
                        Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
                    ))
                });
            }
            Some(Err(())) => {
                denied(&self.component_id);
                return Box::new(async { Err(HttpError::HttpRequestDenied) });
            }
            None => {}
        }
        if !self.allowed.allows_uri(&uri) {
            denied(&self.component_id);
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        // A client span for the call, and its context in the request's `traceparent` (unless the
        // component set one itself).
        let mut request = request;
        let span = if crate::telemetry::traces_exported() {
            tracing::info_span!(
                "http.client",
                otel.name = %format!("{} {}", request.method(), uri.host().unwrap_or("-")),
                otel.kind = "client",
                component = %self.component_id,
                http.request.method = %request.method(),
                url.full = %uri,
                http.response.status_code = tracing::field::Empty,
            )
        } else {
            tracing::Span::none()
        };
        if let Some(traceparent) =
            crate::telemetry::continue_trace(&span, self.caller.traceparent.as_deref())
            && !request.headers().contains_key("traceparent")
            && let Ok(value) = http::HeaderValue::from_str(&traceparent)
        {
            request.headers_mut().insert("traceparent", value);
        }
        let send = async move {
            use http_body_util::BodyExt;
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            tracing::Span::current()
                .record("http.response.status_code", response.status().as_u16());
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = Result<(), HttpError>> + Send>,
            ))
        };
        Box::new(tracing::Instrument::instrument(send, span))
    }
}

/// wasmtime-wasi-http's WASIp3 `send` (which hands the request to [`OutboundHttpHooks`]), with
/// its error split into the guest's error code and a trap.
async fn send_p3(
    accessor: &wasmtime::component::Accessor<crate::state::HostState>,
    request: wasmtime::component::Resource<wasmtime_wasi_http::p3::Request>,
) -> wasmtime::Result<
    Result<
        wasmtime::component::Resource<wasmtime_wasi_http::p3::Response>,
        wasmtime_wasi_http::p3::bindings::http::types::ErrorCode,
    >,
> {
    use crate::state::HostState;
    use wasmtime_wasi_http::p3::bindings::http::client::HostWithStore;
    use wasmtime_wasi_http::{WasiHttp, WasiHttpView};
    let http = accessor.with_getter::<WasiHttp>(<HostState as WasiHttpView>::http);
    match <WasiHttp as HostWithStore<HostState>>::send(&http, request).await {
        Ok(response) => Ok(Ok(response)),
        Err(error) => Ok(Err(error.downcast()?)),
    }
}

/// Links `wasi:http/handler@0.3.0` as an import, which middleware components (spin-sdk's
/// `http-middleware`, Spin's `wasi:http/middleware` world) call to pass a request on: it is
/// `wasi:http/client`'s `send`, routed to the next component of the caller's chain.
pub fn link_middleware_next(linker: &mut Linker<crate::state::HostState>) -> Result<()> {
    use crate::state::HostState;
    use wasmtime::component::{Accessor, Resource};
    use wasmtime_wasi_http::p3::Request;
    linker
        .instance("wasi:http/handler@0.3.0")?
        .func_wrap_concurrent(
            "handle",
            |accessor: &Accessor<HostState>, (request,): (Resource<Request>,)| {
                Box::pin(async move {
                    // `send` hands the request to the hooks before its first await, so no other
                    // request of this instance can take the flag.
                    accessor.with(|mut store| {
                        store.get().capabilities.outbound_http.next_pending = true
                    });
                    let result = send_p3(accessor, request).await;
                    accessor.with(|mut store| {
                        store.get().capabilities.outbound_http.next_pending = false
                    });
                    Ok((result?,))
                })
            },
        )?;
    Ok(())
}

/// Re-links `wasi:http/client@0.3.0`'s `send` so that a request without an authority (a relative
/// URI such as `/hello`, as spin-sdk 7's `send` makes it) reaches the app itself, as it does from
/// WASIp2. wasmtime-wasi-http would otherwise refuse it (`HttpRequestUriInvalid`) while building
/// the URI, before the hooks see it. It is given the authority `self` and goes through the same
/// check as `http://self` (the caller needs that `allowed_outbound_hosts` entry).
pub fn link_relative_p3_send(linker: &mut Linker<crate::state::HostState>) -> Result<()> {
    use crate::state::HostState;
    use wasmtime::component::{Accessor, Resource};
    use wasmtime_wasi_http::p3::Request;
    linker.allow_shadowing(true);
    let linked = linker
        .instance("wasi:http/client@0.3.0")
        .and_then(|mut client| {
            client.func_wrap_concurrent(
                "send",
                |accessor: &Accessor<HostState>, (request,): (Resource<Request>,)| {
                    Box::pin(async move {
                        accessor.with(|mut store| -> wasmtime::Result<()> {
                            let request = store.get().table.get_mut(&request)?;
                            if request.authority.is_none() {
                                request.authority = Some(http::uri::Authority::from_static("self"));
                                request.scheme.get_or_insert(http::uri::Scheme::HTTP);
                            }
                            Ok(())
                        })?;
                        Ok((send_p3(accessor, request).await?,))
                    })
                },
            )
        });
    linker.allow_shadowing(false);
    linked?;
    Ok(())
}

/// The WASIp2 side of [`link_relative_p3_send`]: `wasi:http/outgoing-handler`'s `handle`, re-linked
/// so that an outgoing request with no authority goes to `self` instead of failing as
/// `HttpRequestUriInvalid` in wasmtime-wasi-http's URI building.
pub fn link_relative_p2_handle(linker: &mut Linker<crate::state::HostState>) -> Result<()> {
    use crate::state::HostState;
    use wasmtime::component::Resource;
    use wasmtime_wasi_http::WasiHttpView;
    use wasmtime_wasi_http::p2::bindings::http::outgoing_handler::Host as _;
    use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;
    use wasmtime_wasi_http::p2::types::{HostFutureIncomingResponse, HostOutgoingRequest};
    type Handled = Result<Resource<HostFutureIncomingResponse>, ErrorCode>;
    linker.allow_shadowing(true);
    let linked = linker
        .instance("wasi:http/outgoing-handler@0.2.12")
        .and_then(|mut handler| {
            handler.func_wrap(
                "handle",
                |mut store: wasmtime::StoreContextMut<'_, HostState>,
                 (request, options): (
                    Resource<HostOutgoingRequest>,
                    Option<Resource<wasmtime_wasi_http::RequestOptions>>,
                )|
                 -> wasmtime::Result<(Handled,)> {
                    let mut http = store.data_mut().http();
                    let outgoing = http.table.get_mut(&request)?;
                    if outgoing.authority.is_none() {
                        outgoing.authority = Some("self".to_string());
                    }
                    let handled = match http.handle(request, options) {
                        Ok(response) => Ok(response),
                        Err(error) => Err(error.downcast()?),
                    };
                    Ok((handled,))
                },
            )
        });
    linker.allow_shadowing(false);
    linked?;
    Ok(())
}
