//! Host capabilities, each shaped like a Spin factor: `link` (add its WIT imports to the linker),
//! `configure` (runtime config + per-component grants at load), and a cheap per-instance state.

pub mod key_value;
pub mod llm;
pub mod messaging;
pub mod outbound_http;
pub mod outbound_redis;
pub mod variables;

use crate::invocation::Invocation;
use crate::runtime_config::RuntimeConfig;
use crate::state::HostState;
use crate::telemetry::Metrics;
use anyhow::Result;
use key_value::{KeyValueGrant, KeyValueStores};
use llm::{AiModels, AiModelsGrant};
use messaging::{MessagingBrokers, MessagingGrant};
use moa_manifest::{Component, LoadedManifest};
use outbound_http::{AllowedHosts, InternalHttpSlot, OutboundHttpHooks};
use outbound_redis::RedisConnections;
use std::path::Path;
use std::sync::Arc;
use variables::{AppVariables, ComponentVariables};
use wasmtime::component::Linker;

/// Step 1, once per engine: every import moa offers (WASI p2 + p3, wasi:http p2 + p3, Spin's,
/// moa's messaging).
pub fn link(linker: &mut Linker<HostState>) -> Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    wasmtime_wasi::p3::add_to_linker(linker)?;
    wasmtime_wasi_http::p3::add_to_linker(linker)?;
    key_value::add_to_linker(linker, |state| key_value::KeyValueView {
        grant: &state.capabilities.key_value,
        table: &mut state.table,
    })?;
    key_value::add_v2_to_linker(linker, |state| key_value::KeyValueView {
        grant: &state.capabilities.key_value,
        table: &mut state.table,
    })?;
    variables::add_to_linker(linker, |state| &state.capabilities.variables)?;
    outbound_redis::add_to_linker(linker, |state| outbound_redis::OutboundRedisView {
        allowed: &state.capabilities.outbound_http.allowed,
        connections: &state.capabilities.redis,
        table: &mut state.table,
    })?;
    messaging::add_to_linker(linker, |state| &mut state.capabilities.messaging)?;
    llm::add_to_linker(linker, |state| &state.capabilities.ai_models)?;
    Ok(())
}

/// Step 2, once per app load: the app-wide backends, checked against the manifest.
pub struct AppCapabilities {
    key_value: KeyValueStores,
    messaging: Arc<MessagingBrokers>,
    variables: AppVariables,
    internal_http: InternalHttpSlot,
    redis: RedisConnections,
    ai_models: AiModels,
    metrics: Arc<Metrics>,
}

impl AppCapabilities {
    pub fn configure(
        runtime_config: &RuntimeConfig,
        state_dir: &Path,
        app: &LoadedManifest,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        Ok(AppCapabilities {
            key_value: KeyValueStores::configure(runtime_config, state_dir, app)?,
            messaging: MessagingBrokers::configure(runtime_config, state_dir, app)?,
            variables: AppVariables::resolve(runtime_config, app)?,
            internal_http: Default::default(),
            redis: Default::default(),
            ai_models: {
                let ai_models = AiModels::configure(runtime_config, app)?;
                if let Some(runtime_metrics) = ai_models.metrics() {
                    metrics.attach(runtime_metrics);
                }
                ai_models
            },
            metrics,
        })
    }

    /// Where `generate-embeddings` goes (`None`: no component lists `ai_models`).
    pub fn ai_models(&self) -> &AiModels {
        &self.ai_models
    }

    /// The app's brokers (event triggers consume from them and dead-letter into them).
    pub fn messaging(&self) -> &Arc<MessagingBrokers> {
        &self.messaging
    }

    /// The slot the HTTP trigger fills with its router, for `http://self` and `*.spin.internal`.
    pub fn internal_http(&self) -> &InternalHttpSlot {
        &self.internal_http
    }

    /// One component's grants, computed once at load.
    pub fn grants_for(
        &self,
        app: &LoadedManifest,
        component: &Component,
    ) -> Result<ComponentGrants> {
        let stores = component
            .key_value_stores
            .iter()
            .map(|s| s.value.clone())
            .collect::<Vec<_>>();
        Ok(ComponentGrants {
            component_id: component.id.as_str().into(),
            key_value: self.key_value.grant(&stores),
            messaging: self.messaging.grant(
                component
                    .allowed_publish_topics
                    .iter()
                    .map(|t| t.value.clone())
                    .collect(),
            ),
            variables: self.variables.for_component(component)?,
            allowed_hosts: Arc::new(outbound_http::configure(app, component, &self.variables)?),
            internal_http: self.internal_http.clone(),
            redis: self.redis.clone(),
            ai_models: self.ai_models.grant(
                &component
                    .ai_models
                    .iter()
                    .map(|m| m.value.clone())
                    .collect::<Vec<_>>(),
            ),
            metrics: self.metrics.clone(),
        })
    }
}

/// What one component may use; cloned cheaply into every instance.
#[derive(Clone)]
pub struct ComponentGrants {
    component_id: Arc<str>,
    key_value: KeyValueGrant,
    messaging: MessagingGrant,
    variables: ComponentVariables,
    allowed_hosts: Arc<AllowedHosts>,
    internal_http: InternalHttpSlot,
    redis: RedisConnections,
    ai_models: AiModelsGrant,
    metrics: Arc<Metrics>,
}

impl ComponentGrants {
    /// Step 3, per instance.
    pub fn instance_state(&self) -> CapabilityState {
        CapabilityState {
            key_value: self.key_value.clone(),
            messaging: self.messaging.clone(),
            variables: self.variables.clone(),
            redis: self.redis.clone(),
            ai_models: self.ai_models.clone(),
            outbound_http: OutboundHttpHooks {
                component_id: self.component_id.clone(),
                allowed: self.allowed_hosts.clone(),
                internal: self.internal_http.clone(),
                metrics: self.metrics.clone(),
                caller: Invocation::new("-", std::time::Duration::ZERO),
            },
        }
    }
}

/// Per-instance capability state held in the store.
pub struct CapabilityState {
    pub key_value: KeyValueGrant,
    pub messaging: MessagingGrant,
    pub variables: ComponentVariables,
    pub redis: RedisConnections,
    pub ai_models: AiModelsGrant,
    pub outbound_http: OutboundHttpHooks,
}
