//! What several of moa's test suites start: an OTLP/HTTP receiver for exported spans and a
//! private OCI registry, and a probe for a child's port. Test-only; never in shipped binaries.

pub mod oci_registry;
pub mod otlp;
pub mod port;
