//! Event component for tests and benchmarks: exports `moa:messaging/handler` (and
//! `batch-handler`, for triggers with `batch`) and acts on each delivery's payload (`fail...`,
//! `fail-first...`, `trap...`, `sleep:<ms>...`, anything else: ok).
//!
//! With the `RELAY_PREFIX` environment variable set, every handled message is published again to
//! `<RELAY_PREFIX><topic>` with its key and payload, plus headers `attempt`, `partition`, `offset`,
//! `id` and `instance-deliveries` (how many deliveries this instance has handled: 1 on a fresh
//! one), and `batch-size` (how many deliveries came in the call), so tests can read what was
//! delivered, in which order, how often, on which instance, in which batches.

wit_bindgen::generate!({
    path: "../../wit",
    world: "moa:host/batch-event-component",
    generate_all,
});

use exports::moa::messaging::batch_handler::{self, Delivery as BatchDelivery};
use exports::moa::messaging::handler::{Delivery, Guest};
use moa::messaging::producer;
use moa::messaging::types::{Header, Message};

struct Relay;

/// Deliveries this instance has handled, itself included: 1 on a fresh instance.
static HANDLED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Guest for Relay {
    fn handle(delivery: Delivery) -> Result<(), String> {
        let Delivery {
            message,
            partition,
            offset,
            id,
            attempt,
        } = delivery;
        relay(message, partition, offset, id, attempt, 1)
    }
}

impl batch_handler::Guest for Relay {
    /// Each delivery as `handle` does it, in order; a trap ends the whole call.
    fn handle_batch(deliveries: Vec<BatchDelivery>) -> Vec<Result<(), String>> {
        let size = deliveries.len();
        deliveries
            .into_iter()
            .map(|d| relay(d.message, d.partition, d.offset, d.id, d.attempt, size))
            .collect()
    }
}

fn relay(
    message: Message,
    partition: u32,
    offset: u64,
    id: String,
    attempt: u32,
    batch_size: usize,
) -> Result<(), String> {
    let handled = HANDLED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    let payload = String::from_utf8_lossy(&message.payload).into_owned();
    if payload.starts_with("fail-first") && attempt == 1 {
        return Err(format!("first attempt of {payload} fails"));
    } else if payload.starts_with("fail") && !payload.starts_with("fail-first") {
        return Err(format!("asked to fail: {payload}"));
    } else if payload.starts_with("trap") {
        panic!("asked to trap: {payload}");
    } else if let Some(rest) = payload.strip_prefix("sleep:") {
        let ms: u64 = rest
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|d| d.parse().ok())
            .unwrap_or(0);
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    if let Ok(prefix) = std::env::var("RELAY_PREFIX") {
        let mut headers = vec![
            header("attempt", attempt.to_string()),
            header("partition", partition.to_string()),
            header("offset", offset.to_string()),
            header("id", id),
            header("instance-deliveries", handled.to_string()),
            header("batch-size", batch_size.to_string()),
        ];
        headers.extend(
            message
                .headers
                .into_iter()
                .filter(|h| h.name == "traceparent"),
        );
        producer::publish(&Message {
            topic: format!("{prefix}{}", message.topic),
            key: message.key,
            payload: message.payload,
            headers,
        })
        .map_err(|err| format!("relay publish failed: {err:?}"))?;
    }
    Ok(())
}

fn header(name: &str, value: String) -> Header {
    Header {
        name: name.into(),
        value: value.into_bytes(),
    }
}

export!(Relay);
