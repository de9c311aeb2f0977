//! Outbound MySQL (and MariaDB): Spin's `spin:mysql@3.0.0` (spin-sdk 7) and the older interfaces,
//! to the servers a component's `mysql://host:port` allow-list entries name, through pooled sessions.

mod client;
mod host;
mod legacy;

use super::outbound_http::AllowedHosts;
use crate::capabilities::{
    Capability, ComponentContext, ConfigureContext, HasCapability, InstanceParts,
};
use crate::invocation::Invocation;
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::Linker;

pub use host::MysqlView;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "moa:host/mysql",
        imports: { default: async | trappable },
        with: {
            "spin:mysql/mysql.connection": super::host::OpenConnection,
        },
    });
}

/// Most MySQL connections one instance may hold open.
const MAX_CONNECTIONS: usize = 16;

/// Spin's outbound MySQL, allowed per `mysql://` entry of `allowed_outbound_hosts`.
pub struct MysqlCapability;

/// One component's allow-list and pools.
pub struct MysqlGrant {
    allowed: Arc<AllowedHosts>,
    component: Arc<str>,
    pools: client::Pools,
}

/// Per instance: the grant, how many connections are open, and when statements are cancelled (a
/// tenth of the invocation's time before its deadline, so the component can still answer).
pub struct MysqlInstance {
    grant: Arc<MysqlGrant>,
    open: usize,
    deadline: Instant,
}

impl Capability for MysqlCapability {
    const NAME: &'static str = "outbound-mysql";
    const IMPORTS: &'static [&'static str] = &[
        "spin:mysql@3.0.0",
        "fermyon:spin/mysql@2.0.0",
        "fermyon:spin/mysql",
    ];

    type AppState = ();
    type ComponentState = Arc<MysqlGrant>;
    type InstanceState = MysqlInstance;
    type View<'a> = MysqlView<'a>;

    fn link<T: HasCapability<Self> + Send + 'static>(linker: &mut Linker<T>) -> anyhow::Result<()> {
        host::add_to_linker(linker, T::capability_view)?;
        legacy::add_to_linker(linker, T::capability_view)?;
        Ok(())
    }

    async fn configure(_cx: &ConfigureContext<'_>) -> anyhow::Result<()> {
        Ok(())
    }

    fn component(_app: &(), cx: &ComponentContext<'_>) -> anyhow::Result<Arc<MysqlGrant>> {
        Ok(Arc::new(MysqlGrant {
            allowed: cx.allowed_hosts.clone(),
            component: cx.component.id.as_str().into(),
            pools: client::Pools::default(),
        }))
    }

    fn instance(grant: &Arc<MysqlGrant>) -> MysqlInstance {
        MysqlInstance {
            grant: grant.clone(),
            open: 0,
            deadline: Instant::now(),
        }
    }

    fn view<'a>(parts: InstanceParts<'a, MysqlInstance>) -> MysqlView<'a> {
        MysqlView {
            instance: parts.state,
            table: parts.table,
        }
    }

    fn begin(state: &mut MysqlInstance, invocation: &Invocation) {
        state.deadline = invocation.statement_deadline();
    }
}
