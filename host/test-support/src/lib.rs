//! What several of moa's test suites start: an OTLP/HTTP receiver for exported spans and a
//! private OCI registry. Test-only; never a dependency of the shipped binaries.

pub mod oci_registry;
pub mod otlp;
