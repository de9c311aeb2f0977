//! Triggers turn outside events into component calls, one folder per kind: HTTP requests, and
//! events (Kafka, Redis Streams, the embedded log) delivered to `moa:messaging/handler`.

pub mod events;
pub mod http;
