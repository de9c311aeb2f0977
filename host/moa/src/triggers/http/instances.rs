//! Per-component instance management on top of wasmtime-wasi-http's `ProxyHandler`: a fresh
//! instance per request (or bounded reuse), instantiation metrics and request deadlines.

use super::{HttpExport, HttpWorld};
use crate::app::AppComponent;
use crate::engine::MoaEngine;
use crate::invocation::Invocation;
use crate::state::HostState;
use crate::telemetry::Metrics;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use wasmtime::component::GuestTaskId;
use wasmtime::{Store, StoreContextMut};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::handler::{
    HandlerState, Instance, ShouldAccept, WorkerExpiration, WorkerState, WorkerStatus,
};

/// How many requests one reused WASIp3 instance serves at once (as `wasmtime serve` does).
const MAX_CONCURRENT_PER_P3_INSTANCE: usize = 16;

/// How long a reusable instance may sit idle before it is dropped.
const IDLE_INSTANCE_TIMEOUT: Duration = Duration::from_secs(10);

/// Creates instances of one component for the `ProxyHandler`.
pub struct ComponentInstances {
    pub component: Arc<AppComponent>,
    pub export: Arc<HttpExport>,
    pub engine: Arc<MoaEngine>,
    pub metrics: Arc<Metrics>,
}

impl HandlerState for ComponentInstances {
    type StoreData = HostState;
    type WorkerExpiration = Expiration;
    type WorkerState = InstanceWorker;

    async fn instantiate(
        &self,
    ) -> wasmtime::Result<Instance<HostState, Expiration, InstanceWorker>> {
        let started = Instant::now();
        // The request's own invocation replaces this one in `on_request_start`.
        let mut store = self
            .component
            .new_store(
                &self.engine,
                Invocation::new("-", self.component.request_timeout),
            )
            .map_err(wasmtime::Error::from_anyhow)?;
        let http = &self.export;
        let proxy = http.pre.instantiate_async(&mut store).await?;
        self.metrics
            .instantiated(&self.component.id, started.elapsed());
        Ok(Instance {
            store,
            proxy,
            view: <HostState as WasiHttpView>::http,
            expiration: Expiration {
                request_timeout: self.component.request_timeout,
                sleep: Box::pin(tokio::time::sleep(Duration::MAX / 4)),
            },
            state: InstanceWorker {
                max_reuse: self.component.max_instance_reuse,
                // A WASIp3 instance can take requests concurrently when it is reused at all.
                max_concurrent: match http.world {
                    HttpWorld::P3 if self.component.max_instance_reuse > 1 => {
                        MAX_CONCURRENT_PER_P3_INSTANCE
                    }
                    _ => 1,
                },
                outcome_listeners: Mutex::new(Vec::new()),
            },
        })
    }
}

/// Ends an instance that runs past its request deadline (guest waiting on I/O included; pure
/// CPU loops are also stopped by the epoch deadline) or idles too long.
pub struct Expiration {
    request_timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl WorkerExpiration for Expiration {
    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        status: WorkerStatus,
        start: Instant,
    ) -> Poll<()> {
        let me = self.get_mut();
        let timeout = match status {
            WorkerStatus::Idle => IDLE_INSTANCE_TIMEOUT,
            WorkerStatus::Requests | WorkerStatus::PostReturn => me.request_timeout,
        };
        let Some(deadline) = start.checked_add(timeout) else {
            return Poll::Pending;
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        if me.sleep.deadline() != deadline {
            me.sleep.as_mut().reset(deadline);
        }
        me.sleep.as_mut().poll(cx)
    }
}

/// Receives the error that ended an instance, when the instance (not just one request) failed:
/// a trap outside the request's own call, such as an epoch interruption.
pub type OutcomeListener = tokio::sync::oneshot::Sender<wasmtime::Error>;

/// What the trigger hands the instance with each request.
pub struct RequestContext {
    pub outcome: OutcomeListener,
    /// The request's id, trace context, depth and deadline.
    pub invocation: Invocation,
}

/// Decides whether an instance takes another request, and reports how the instance ended.
pub struct InstanceWorker {
    max_reuse: usize,
    max_concurrent: usize,
    outcome_listeners: Mutex<Vec<OutcomeListener>>,
}

impl WorkerState for InstanceWorker {
    type StoreData = HostState;
    type RequestData = RequestContext;

    fn should_accept_request(&self, concurrent_count: usize, total_count: usize) -> ShouldAccept {
        if total_count >= self.max_reuse {
            ShouldAccept::Never
        } else if concurrent_count >= self.max_concurrent {
            ShouldAccept::No
        } else {
            ShouldAccept::Yes
        }
    }

    fn on_request_start(
        &self,
        mut store: StoreContextMut<'_, HostState>,
        context: RequestContext,
        _task: GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + Sync + 'static>> {
        if let Ok(mut listeners) = self.outcome_listeners.lock() {
            listeners.retain(|listener| !listener.is_closed());
            listeners.push(context.outcome);
        }
        // The deadline counts from this request's start, also on a reused instance. With
        // concurrent requests on one instance the last request's context wins.
        let remaining = context.invocation.remaining();
        store.data_mut().begin(context.invocation);
        Box::pin(tokio::time::sleep(remaining))
    }

    fn drop(&self, store: Store<HostState>, result: wasmtime::Result<()>) {
        drop(store);
        let listeners = self
            .outcome_listeners
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default();
        if let Err(error) = result {
            tracing::debug!(error = %error, "instance ended with an error");
            let message = format!("{error:#}");
            let interrupted = is_interrupt(&error);
            for listener in listeners {
                let error = if interrupted {
                    wasmtime::Error::new(wasmtime::Trap::Interrupt)
                } else {
                    wasmtime::format_err!("{message}")
                };
                let _ = listener.send(error);
            }
        }
    }
}

/// Whether `error` comes from an epoch interruption (the request deadline).
pub fn is_interrupt(error: &wasmtime::Error) -> bool {
    error
        .chain()
        .any(|cause| cause.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt))
}
