//! The shape of every host capability (Spin's "factor"): link its WIT once per engine, configure
//! once per app load (runtime-config section + each component's grants), build cheap per-instance state.
//!
//! A capability is a type implementing [`Capability`], registered with one line in
//! [`super::registry`]; the registry derives the runtime-config sections and manifest keys moa accepts,
//! the import list in link errors, and the per-instance state, so nothing else names capabilities.

use crate::invocation::Invocation;
use crate::runtime_config::RuntimeConfig;
use crate::telemetry::Metrics;
use anyhow::Result;
use moa_manifest::{Component, LoadedManifest};
use std::path::Path;
use std::sync::Arc;
use wasmtime::component::{Linker, ResourceTable};

use super::outbound_http::AllowedHosts;
use super::variables::AppVariables;

/// What step 2 (configure) sees: the runtime config, the app, and the core services every
/// capability may use (resolved variables, metrics, the state directory of embedded backends).
pub struct ConfigureContext<'a> {
    pub runtime_config: &'a RuntimeConfig,
    pub state_dir: &'a Path,
    pub app: &'a LoadedManifest,
    pub metrics: &'a Arc<Metrics>,
    pub variables: &'a AppVariables,
    /// The app-wide state of the capabilities registered (and so configured) before this one.
    pub configured: &'a ConfiguredCapabilities,
}

impl ConfigureContext<'_> {
    /// The app-wide state of capability `C`, when `C` is registered before the one configuring
    /// now (e.g. documents' outbox relay publishes through messaging's brokers).
    pub fn app_state<C: Capability>(&self) -> Option<Arc<C::AppState>> {
        self.configured.get::<C>()
    }
}

/// The app-wide states configured so far, by capability type.
#[derive(Default)]
pub struct ConfiguredCapabilities(
    std::collections::HashMap<std::any::TypeId, Box<dyn std::any::Any + Send + Sync>>,
);

impl ConfiguredCapabilities {
    pub fn insert<C: Capability>(&mut self, state: Arc<C::AppState>) {
        self.0.insert(std::any::TypeId::of::<C>(), Box::new(state));
    }

    pub fn get<C: Capability>(&self) -> Option<Arc<C::AppState>> {
        self.0
            .get(&std::any::TypeId::of::<C>())
            .and_then(|state| state.downcast_ref::<Arc<C::AppState>>())
            .cloned()
    }
}

/// What a capability sees of one component when it computes that component's grant.
pub struct ComponentContext<'a> {
    pub app: &'a LoadedManifest,
    pub component: &'a Component,
    pub metrics: &'a Arc<Metrics>,
    pub variables: &'a AppVariables,
    /// The component's parsed `allowed_outbound_hosts` (outbound networking is core: HTTP, Redis
    /// and the coming database clients all check it).
    pub allowed_hosts: &'a Arc<AllowedHosts>,
}

impl ComponentContext<'_> {
    /// The component's setting `key` as a list of strings (its grant, e.g. store labels); a
    /// setting of the wrong shape is an error naming the manifest line.
    pub fn strings(&self, key: &str) -> Result<Vec<String>> {
        Ok(self
            .component
            .string_list(&self.app.path, key)?
            .into_iter()
            .map(|item| item.value)
            .collect())
    }
}

/// The parts of an instance's store data a capability's host code works with.
pub struct InstanceParts<'a, S> {
    /// This capability's own per-instance state.
    pub state: &'a mut S,
    /// The instance's resource table (for WIT resources such as open stores).
    pub table: &'a mut ResourceTable,
    /// The request or delivery the instance works on now.
    pub invocation: &'a Invocation,
}

/// Store data that carries capability `C` (implemented for [`crate::state::HostState`] by the registry).
pub trait HasCapability<C: Capability> {
    fn capability_view(&mut self) -> C::View<'_>;
}

/// One host capability.
pub trait Capability: Sized + 'static {
    /// Name in messages, e.g. `key-value`.
    const NAME: &'static str;
    /// Top-level runtime-config tables this capability reads.
    const RUNTIME_CONFIG_SECTIONS: &'static [&'static str] = &[];
    /// `[component.<id>]` keys of spin.toml this capability reads (its grants).
    const MANIFEST_KEYS: &'static [&'static str] = &[];
    /// The WIT interfaces it gives components, for the help text of link errors.
    const IMPORTS: &'static [&'static str];

    /// Shared by every instance of the app (backends, connections).
    type AppState: Send + Sync + 'static;
    /// What one component may use, computed once at load.
    type ComponentState: Send + Sync + 'static;
    /// Per instance, built from the component state (cheap: clones of `Arc`s).
    type InstanceState: Send + 'static;
    /// What the generated host traits are implemented on.
    type View<'a>;

    /// Step 1, once per engine: add the WIT imports to the linker; `T::capability_view` projects
    /// the store data onto [`Self::View`].
    fn link<T: HasCapability<Self> + Send + 'static>(linker: &mut Linker<T>) -> Result<()>;

    /// Step 2, once per app load: read the runtime-config section, connect or open backends, check
    /// every component's grants. Errors name the file, the key and the fix.
    fn configure(cx: &ConfigureContext<'_>) -> impl Future<Output = Result<Self::AppState>> + Send;

    /// Step 2, per component: its grant.
    fn component(app: &Self::AppState, cx: &ComponentContext<'_>) -> Result<Self::ComponentState>;

    /// Step 3, per instance.
    fn instance(component: &Self::ComponentState) -> Self::InstanceState;

    /// Projects an instance's parts onto the view the host traits use.
    fn view<'a>(parts: InstanceParts<'a, Self::InstanceState>) -> Self::View<'a>;

    /// Called when the instance starts an invocation (also a reused one).
    fn begin(_state: &mut Self::InstanceState, _invocation: &Invocation) {}
}

/// Composes the registered capabilities: the app-wide, per-component and per-instance state structs
/// (one field per capability), linking, configuring, and the lists derived from the registrations.
macro_rules! register_capabilities {
    ($($field:ident: $capability:ty),* $(,)?) => {
        /// Step 2's result: every capability's app-wide state.
        pub struct AppCapabilities {
            $(pub $field: std::sync::Arc<<$capability as $crate::capabilities::Capability>::AppState>,)*
        }

        /// What one component may use, per capability; cloned cheaply into every instance.
        #[derive(Clone)]
        pub struct ComponentGrants {
            $($field: std::sync::Arc<<$capability as $crate::capabilities::Capability>::ComponentState>,)*
        }

        /// Per-instance capability state held in the store.
        pub struct CapabilityState {
            $(pub $field: <$capability as $crate::capabilities::Capability>::InstanceState,)*
        }

        /// Every capability, in registration order: (name, runtime-config sections, manifest keys, imports).
        pub const CAPABILITIES: &[(&str, &[&str], &[&str], &[&str])] = &[
            $((
                <$capability as $crate::capabilities::Capability>::NAME,
                <$capability as $crate::capabilities::Capability>::RUNTIME_CONFIG_SECTIONS,
                <$capability as $crate::capabilities::Capability>::MANIFEST_KEYS,
                <$capability as $crate::capabilities::Capability>::IMPORTS,
            ),)*
        ];

        impl AppCapabilities {
            /// Step 1: every capability's imports.
            pub fn link(
                linker: &mut wasmtime::component::Linker<$crate::state::HostState>,
            ) -> anyhow::Result<()> {
                $(<$capability as $crate::capabilities::Capability>::link(linker)?;)*
                Ok(())
            }

            /// Step 2: every capability, in registration order; each sees the states configured
            /// before it.
            pub async fn configure(
                cx: &$crate::capabilities::ConfigureContext<'_>,
            ) -> anyhow::Result<Self> {
                let mut configured = $crate::capabilities::ConfiguredCapabilities::default();
                $(
                    let $field = std::sync::Arc::new(
                        <$capability as $crate::capabilities::Capability>::configure(
                            &$crate::capabilities::ConfigureContext { configured: &configured, ..*cx },
                        )
                        .await?,
                    );
                    configured.insert::<$capability>($field.clone());
                )*
                Ok(AppCapabilities { $($field,)* })
            }

            /// Step 2, per component.
            pub fn grants_for(
                &self,
                cx: &$crate::capabilities::ComponentContext<'_>,
            ) -> anyhow::Result<ComponentGrants> {
                Ok(ComponentGrants {
                    $($field: std::sync::Arc::new(
                        <$capability as $crate::capabilities::Capability>::component(&self.$field, cx)?,
                    ),)*
                })
            }
        }

        impl ComponentGrants {
            /// Step 3.
            pub fn instance_state(&self) -> CapabilityState {
                CapabilityState {
                    $($field: <$capability as $crate::capabilities::Capability>::instance(&self.$field),)*
                }
            }
        }

        impl CapabilityState {
            /// Tells every capability that the instance starts `invocation`.
            pub fn begin(&mut self, invocation: &$crate::invocation::Invocation) {
                $(<$capability as $crate::capabilities::Capability>::begin(&mut self.$field, invocation);)*
            }
        }

        $(
            impl $crate::capabilities::HasCapability<$capability> for $crate::state::HostState {
                fn capability_view(
                    &mut self,
                ) -> <$capability as $crate::capabilities::Capability>::View<'_> {
                    <$capability as $crate::capabilities::Capability>::view(
                        $crate::capabilities::InstanceParts {
                            state: &mut self.capabilities.$field,
                            table: &mut self.table,
                            invocation: &self.invocation,
                        },
                    )
                }
            }
        )*
    };
}

pub(crate) use register_capabilities;
