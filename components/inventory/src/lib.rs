//! The inventory component: stock per menu item, and the saga's reservations.
//!
//! - HTTP, for the store's owner (or an admin): `PUT /inventory/:store/:item` `{quantity}` sets
//!   what is available; `GET /inventory/:store` lists every item's available, reserved and sold
//!   counts. The store and its menu are read from `http://store.spin.internal`.
//! - Events (`inventory.commands`): `Reserve`, `Release` and `Commit` per order id, each in one
//!   transaction with its reply (outbox) and the inbox mark, so a redelivered command changes
//!   nothing and answers the same. For every item, `available + reserved + sold = stocked`.

mod commands;
mod http_api;

wit_bindgen::generate!({
    path: "../../wit",
    world: "moa:host/event-handler",
    generate_all,
});

use exports::moa::messaging::handler::{Delivery, Guest};

struct Inventory;

impl Guest for Inventory {
    fn handle(delivery: Delivery) -> Result<(), String> {
        commands::handle(delivery)
    }
}

export!(Inventory);
