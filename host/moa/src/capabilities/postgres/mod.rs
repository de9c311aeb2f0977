//! Outbound PostgreSQL: Spin's `spin:postgres@4.2.0` (which also serves 4.0.0 and 4.1.0 imports) and
//! the older interfaces, to the servers a component's `postgres://host:port` entries name, pooled.

mod address;
#[allow(
    clippy::result_large_err,
    reason = "the WIT error type is the guest's return value"
)]
mod client;
#[allow(
    clippy::result_large_err,
    reason = "the WIT error type is the guest's return value"
)]
mod host;
#[allow(
    clippy::result_large_err,
    reason = "the WIT error type is the guest's return value"
)]
mod legacy;
mod types;

use super::outbound_http::AllowedHosts;
use crate::capabilities::{
    Capability, ComponentContext, ConfigureContext, HasCapability, InstanceParts,
};
use crate::invocation::Invocation;
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::Linker;

pub use host::PostgresView;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "moa:host/postgres",
        imports: { default: async | trappable },
        with: {
            "spin:postgres/postgres.connection": super::host::OpenConnection,
            "spin:postgres/postgres.connection-builder": super::host::ConnectionBuilder,
        },
    });
}

/// Most PostgreSQL connections one instance may hold open.
const MAX_CONNECTIONS: usize = 16;

/// Spin's outbound PostgreSQL, allowed per `postgres://` entry of `allowed_outbound_hosts`.
pub struct PostgresCapability;

/// One component's allow-list and pools.
pub struct PostgresGrant {
    allowed: Arc<AllowedHosts>,
    component: Arc<str>,
    pools: client::Pools,
}

/// Per instance: the grant, how many connections are open, and when statements are cancelled (a
/// tenth of the invocation's time before its deadline, so the component can still answer).
pub struct PostgresInstance {
    grant: Arc<PostgresGrant>,
    open: usize,
    deadline: Instant,
}

impl Capability for PostgresCapability {
    const NAME: &'static str = "outbound-pg";
    const IMPORTS: &'static [&'static str] = &[
        "spin:postgres@4.2.0",
        "spin:postgres@3.0.0",
        "fermyon:spin/postgres@2.0.0",
        "fermyon:spin/postgres",
    ];

    type AppState = ();
    type ComponentState = Arc<PostgresGrant>;
    type InstanceState = PostgresInstance;
    type View<'a> = PostgresView<'a>;

    fn link<T: HasCapability<Self> + Send + 'static>(linker: &mut Linker<T>) -> anyhow::Result<()> {
        host::add_to_linker(linker, T::capability_view)?;
        legacy::add_to_linker(linker, T::capability_view)?;
        Ok(())
    }

    async fn configure(_cx: &ConfigureContext<'_>) -> anyhow::Result<()> {
        Ok(())
    }

    fn component(_app: &(), cx: &ComponentContext<'_>) -> anyhow::Result<Arc<PostgresGrant>> {
        Ok(Arc::new(PostgresGrant {
            allowed: cx.allowed_hosts.clone(),
            component: cx.component.id.as_str().into(),
            pools: client::Pools::default(),
        }))
    }

    fn instance(grant: &Arc<PostgresGrant>) -> PostgresInstance {
        PostgresInstance {
            grant: grant.clone(),
            open: 0,
            deadline: Instant::now(),
        }
    }

    fn view<'a>(parts: InstanceParts<'a, PostgresInstance>) -> PostgresView<'a> {
        PostgresView {
            instance: parts.state,
            table: parts.table,
        }
    }

    fn begin(state: &mut PostgresInstance, invocation: &Invocation) {
        state.deadline = invocation.statement_deadline();
    }
}
