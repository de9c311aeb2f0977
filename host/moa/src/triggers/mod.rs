//! Triggers turn outside events into component calls, one folder per kind. HTTP is here;
//! the event backbone adds Kafka and Redis Streams beside it.

pub mod http;
