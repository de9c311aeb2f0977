//! The payment component: the saga's adapter to Toss Payments v1, and a read-only HTTP view.
//!
//! - Events (`payment.commands`): `Confirm` calls `POST /v1/payments/confirm` and `Cancel` calls
//!   `POST /v1/payments/{paymentKey}/cancel`, each with the `Idempotency-Key` of its (order,
//!   action), so a retry after a timeout or a 409 never charges or refunds twice. A definite
//!   answer (approved, declined, refunded) is recorded with its reply in one transaction; an
//!   unknown one (timeout, 409 `IDEMPOTENT_REQUEST_PROCESSING`, 5xx, `PROVIDER_ERROR`) fails the
//!   delivery, so the trigger retries it later with the same key. A batch of commands makes its
//!   Toss calls one after the other, then records every definite answer in one transaction.
//! - HTTP: `GET /payments/:order` shows what was recorded for an order (its customer or an admin).
//!
//! Variables: `toss_base_url` (`https://api.tosspayments.com` in production), `toss_secret_key`,
//! `toss_timeout_ms` (default 10000).

mod commands;
mod http_api;
mod toss;

wit_bindgen::generate!({
    path: "../../wit",
    world: "moa:host/batch-event-handler-variables",
    // A synchronous handler may not block on async imports: variables are read synchronously,
    // and Toss is called with wasi:http 0.2's blocking pollables (see `toss.rs`).
    async: false,
    generate_all,
});

use exports::moa::messaging::batch_handler::{self, Delivery as BatchDelivery};
use exports::moa::messaging::handler::{Delivery, Guest};

struct Payment;

impl Guest for Payment {
    fn handle(delivery: Delivery) -> Result<(), String> {
        commands::handle(delivery)
    }
}

impl batch_handler::Guest for Payment {
    fn handle_batch(deliveries: Vec<BatchDelivery>) -> Vec<Result<(), String>> {
        commands::handle_batch(deliveries)
    }
}

export!(Payment);
