//! The per-instance store data and the registry of capabilities it is made of: WASI and wasi:http
//! contexts, the resource table, memory limits, the current invocation, one state per capability.

use crate::capabilities::{
    crypto, documents, key_value, llm, messaging, mysql, outbound_http, outbound_mqtt,
    outbound_redis, postgres, register_capabilities, sqlite, variables, vectors,
};
use crate::invocation::Invocation;
use crate::telemetry::guest_output::RequestIdCell;
use anyhow::Result;
use wasmtime::StoreLimits;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

// The registry: one line per capability. Adding a capability is its folder under
// `capabilities/` plus one line here.
register_capabilities! {
    key_value: key_value::KeyValueCapability,
    variables: variables::VariablesCapability,
    outbound_http: outbound_http::OutboundHttpCapability,
    outbound_redis: outbound_redis::OutboundRedisCapability,
    outbound_mqtt: outbound_mqtt::OutboundMqttCapability,
    sqlite: sqlite::SqliteCapability,
    postgres: postgres::PostgresCapability,
    mysql: mysql::MysqlCapability,
    messaging: messaging::MessagingCapability,
    llm: llm::LlmCapability,
    documents: documents::DocumentsCapability,
    vectors: vectors::VectorsCapability,
    crypto: crypto::CryptoCapability,
}

/// What every component can import whatever it is granted: WASI and wasi:http, both 0.2 and 0.3.
pub const CORE_IMPORTS: &[&str] = &["WASI 0.2/0.3", "wasi:http 0.2/0.3"];

/// Runtime-config tables the host itself reads (the rest belong to capabilities).
pub const CORE_RUNTIME_CONFIG_SECTIONS: &[&str] = &["limits", "engine"];

/// Step 1 for the whole host, once per engine: WASI p2 + p3, wasi:http p2 + p3, then every
/// registered capability.
pub fn link(linker: &mut Linker<HostState>) -> Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    crate::capabilities::outbound_http::link_relative_p2_handle(linker)?;
    wasmtime_wasi::p3::add_to_linker(linker)?;
    wasmtime_wasi_http::p3::add_to_linker(linker)?;
    crate::capabilities::outbound_http::link_relative_p3_send(linker)?;
    crate::capabilities::outbound_http::link_middleware_next(linker)?;
    crate::dependencies::link(linker)?;
    AppCapabilities::link(linker)
}

/// Every runtime-config table moa understands: the core's and the capabilities'.
pub fn runtime_config_sections() -> Vec<&'static str> {
    let mut sections = CORE_RUNTIME_CONFIG_SECTIONS.to_vec();
    for (_, capability_sections, _, _) in CAPABILITIES {
        sections.extend_from_slice(capability_sections);
    }
    sections
}

/// Every `[component.<id>]` key the capabilities read (the manifest checks the rest are core keys).
pub fn manifest_keys() -> Vec<&'static str> {
    CAPABILITIES
        .iter()
        .flat_map(|(_, _, keys, _)| keys.iter().copied())
        .collect()
}

/// Every import moa offers, for link errors.
pub fn imports() -> Vec<&'static str> {
    let mut imports = CORE_IMPORTS.to_vec();
    for (_, _, _, capability_imports) in CAPABILITIES {
        imports.extend_from_slice(capability_imports);
    }
    imports
}

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
        self.capabilities.begin(&invocation);
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
