//! The per-instance store data: WASI and wasi:http contexts, the resource table, memory limits,
//! the current invocation and the capability state of the component the instance belongs to.

use crate::capabilities::CapabilityState;
use crate::invocation::Invocation;
use crate::telemetry::guest_output::RequestIdCell;
use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// Store data of one component instance.
pub struct HostState {
    pub wasi: WasiCtx,
    pub http: WasiHttpCtx,
    pub table: ResourceTable,
    pub limits: StoreLimits,
    pub capabilities: CapabilityState,
    /// The request or delivery the instance works on now.
    pub invocation: Invocation,
    /// The request id the guest's stdout/stderr lines are tagged with.
    pub output_request_id: RequestIdCell,
}

impl HostState {
    /// Starts an invocation on this instance (a fresh one or a reused one): every trigger calls
    /// this before it calls the guest, so capabilities see the right request id, trace context,
    /// depth and deadline.
    pub fn begin(&mut self, invocation: Invocation) {
        if let Ok(mut id) = self.output_request_id.lock() {
            *id = invocation.request_id.clone();
        }
        self.capabilities.ai_models.traceparent = invocation.traceparent.clone();
        self.capabilities
            .messaging
            .set_traceparent(invocation.traceparent.clone());
        self.capabilities.outbound_http.caller = invocation.clone();
        self.invocation = invocation;
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.capabilities.outbound_http,
        }
    }
}
