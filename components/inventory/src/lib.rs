//! The inventory component: stock per menu item, and the saga's reservations.
//!
//! - HTTP, for the store's owner (or an admin): `PUT /inventory/:store/:item` `{quantity}` sets
//!   what is available; `GET /inventory/:store` lists every item's available, reserved and sold
//!   counts. The store and its menu are read from `http://store.spin.internal`.
//! - Events (`inventory.commands`): `Reserve`, `Release` and `Commit` per order id, each in one
//!   transaction with its reply (outbox) and the inbox mark, so a redelivered command changes
//!   nothing and answers the same; a batch of commands (`batch` on the trigger) shares one. For every item, `available + reserved + sold = stocked`.

mod commands;
mod http_api;

wit_bindgen::generate!({
    path: "../../wit",
    world: "moa:host/event-and-batch-handler",
    generate_all,
});

use exports::moa::messaging::batch_handler::{self, Delivery as BatchDelivery};
use exports::moa::messaging::handler::{Delivery, Guest};

struct Inventory;

impl Guest for Inventory {
    fn handle(delivery: Delivery) -> Result<(), String> {
        commands::handle(delivery)
    }
}

impl batch_handler::Guest for Inventory {
    fn handle_batch(deliveries: Vec<BatchDelivery>) -> Vec<Result<(), String>> {
        let commands: Vec<_> = deliveries
            .iter()
            .map(|d| commands::read(&d.message.payload, &d.message.headers, &d.id))
            .collect();
        commands::handle_batch(&commands)
    }
}

export!(Inventory);
