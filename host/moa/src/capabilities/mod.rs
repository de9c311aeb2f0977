//! Host capabilities, one folder each, all shaped like a Spin factor ([`Capability`]: link,
//! configure, per-instance state). Which capabilities the host runs is listed once, in [`crate::state`].

mod capability;
pub mod crypto;
pub mod documents;
pub mod key_value;
pub mod llm;
pub mod messaging;
pub mod mysql;
pub mod outbound_http;
pub mod outbound_mqtt;
pub mod outbound_redis;
pub mod postgres;
mod row_stream;
pub mod sqlite;
pub mod variables;
pub mod vectors;

pub(crate) use capability::register_capabilities;
pub use capability::{
    Capability, ComponentContext, ConfigureContext, ConfiguredCapabilities, HasCapability,
    InstanceParts,
};
use row_stream::ChannelRows;
