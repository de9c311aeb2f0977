//! The moa host as a library: load a Spin-style app (manifest, runtime config, components) and
//! serve its triggers. The `moa` binary (`main.rs`) is a thin command line over this.

pub mod app;
pub mod capabilities;
pub mod dependencies;
pub mod engine;
pub mod invocation;
pub mod redis_client;
pub mod runtime_config;
pub mod state;
pub mod telemetry;
pub mod triggers;
