//! The saga's commands: reserve every line of an order or none, release a reservation, commit it
//! as sold. Each command runs in one transaction with the inbox mark and its reply.

use crate::exports::moa::messaging::handler::Delivery;
use crate::moa::messaging::types::Header;
use commerce::saga::{self, InventoryCommand, InventoryReply, Line};
use moa_sdk::documents::{self, Error, Ops, Store, Transaction};
use serde::{Deserialize, Serialize};
use serde_json::json;

pub const STOCK: &str = "stock";
const RESERVATIONS: &str = "reservations";

#[derive(Debug, Serialize, Deserialize)]
struct Reservation {
    #[serde(rename = "_id")]
    order_id: String,
    store_id: String,
    lines: Vec<Line>,
    /// RESERVED, REJECTED, RELEASED or COMMITTED.
    state: String,
    #[serde(default)]
    reason: Option<String>,
}

pub fn stock_id(store: &str, item: &str) -> String {
    format!("{store}/{item}")
}

/// A command as read from its delivery, with the id its inbox mark uses.
pub struct Command {
    id: String,
    command: InventoryCommand,
}

/// Reads a delivery's command; an error for a message that is not one (it will never succeed,
/// so it is dead-lettered).
pub fn read(payload: &[u8], headers: &[Header], broker_id: &str) -> Result<Command, String> {
    let id = documents::message_id(
        headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_slice())),
        broker_id,
    );
    match serde_json::from_slice(payload) {
        Ok(command) => Ok(Command { id, command }),
        Err(error) => Err(format!("not an inventory command: {error}")),
    }
}

pub fn handle(delivery: Delivery) -> Result<(), String> {
    let command = read(
        &delivery.message.payload,
        &delivery.message.headers,
        &delivery.id,
    )?;
    let store = Store::open("default").map_err(|e| format!("{e:?}"))?;
    store
        .transaction(|tx| apply_once(tx, &command))
        .map_err(|e| format!("{e:?}"))
}

/// Several commands (each of another order) in one transaction.
pub fn handle_batch(commands: &[Result<Command, String>]) -> Vec<Result<(), String>> {
    match Store::open("default") {
        Ok(store) => store.transaction_per_batch(commands, apply_once),
        Err(error) => vec![Err(format!("{error:?}")); commands.len()],
    }
}

/// The command's effect and its reply in `tx`, once (the inbox mark).
fn apply_once(tx: &Transaction, command: &Command) -> Result<(), Error> {
    if !tx.first_time("inventory", &command.id)? {
        return Ok(());
    }
    let reply = apply(tx, &command.command)?;
    let order_id = match &reply {
        InventoryReply::Reserved { order_id }
        | InventoryReply::Rejected { order_id, .. }
        | InventoryReply::Released { order_id }
        | InventoryReply::Committed { order_id } => order_id.clone(),
    };
    tx.publish(saga::message(saga::INVENTORY_REPLIES, &order_id, &reply))?;
    Ok(())
}

fn apply(tx: &Transaction, command: &InventoryCommand) -> Result<InventoryReply, Error> {
    match command {
        InventoryCommand::Reserve {
            order_id,
            store_id,
            lines,
        } => reserve(tx, order_id, store_id, lines),
        InventoryCommand::Release { order_id } => release(tx, order_id),
        InventoryCommand::Commit { order_id } => commit(tx, order_id),
    }
}

fn reservation(tx: &Transaction, order_id: &str) -> Result<Option<Reservation>, Error> {
    tx.find_one(RESERVATIONS, json!({ "_id": order_id }))
}

/// The answer a reservation in `state` gives to another Reserve (a redelivery).
fn reserve_answer(reservation: &Reservation) -> InventoryReply {
    let order_id = reservation.order_id.clone();
    match reservation.state.as_str() {
        "REJECTED" => InventoryReply::Rejected {
            order_id,
            reason: reservation.reason.clone().unwrap_or_default(),
        },
        "RELEASED" => InventoryReply::Released { order_id },
        "COMMITTED" => InventoryReply::Committed { order_id },
        _ => InventoryReply::Reserved { order_id },
    }
}

fn reserve(
    tx: &Transaction,
    order_id: &str,
    store_id: &str,
    lines: &[Line],
) -> Result<InventoryReply, Error> {
    if let Some(existing) = reservation(tx, order_id)? {
        return Ok(reserve_answer(&existing));
    }
    // All or nothing: check every line first, then take them.
    let mut short = Vec::new();
    for line in lines {
        let stock: Option<serde_json::Value> =
            tx.find_one(STOCK, json!({ "_id": stock_id(store_id, &line.item_id) }))?;
        let available = stock
            .as_ref()
            .and_then(|s| s["available"].as_i64())
            .unwrap_or(0);
        if available < i64::from(line.quantity) {
            short.push(format!(
                "{} ({available} left, {} asked)",
                line.item_id, line.quantity
            ));
        }
    }
    let rejected = !short.is_empty();
    if !rejected {
        for line in lines {
            let q = i64::from(line.quantity);
            tx.update_one(
                STOCK,
                json!({ "_id": stock_id(store_id, &line.item_id), "available": { "$gte": q } }),
                json!({ "$inc": { "available": -q, "reserved": q } }),
            )?;
        }
    }
    let reason = rejected.then(|| format!("out of stock: {}", short.join(", ")));
    tx.insert_one(
        RESERVATIONS,
        &Reservation {
            order_id: order_id.to_string(),
            store_id: store_id.to_string(),
            lines: lines.to_vec(),
            state: if rejected { "REJECTED" } else { "RESERVED" }.into(),
            reason: reason.clone(),
        },
    )?;
    Ok(match reason {
        Some(reason) => InventoryReply::Rejected {
            order_id: order_id.to_string(),
            reason,
        },
        None => InventoryReply::Reserved {
            order_id: order_id.to_string(),
        },
    })
}

/// Moves each line's quantity: `from` loses it, `to` gains it.
fn shift(tx: &Transaction, reservation: &Reservation, from: &str, to: &str) -> Result<(), Error> {
    for line in &reservation.lines {
        let q = i64::from(line.quantity);
        tx.update_one(
            STOCK,
            json!({ "_id": stock_id(&reservation.store_id, &line.item_id) }),
            json!({ "$inc": { from: -q, to: q } }),
        )?;
    }
    Ok(())
}

fn set_state(tx: &Transaction, order_id: &str, state: &str) -> Result<(), Error> {
    tx.update_one(
        RESERVATIONS,
        json!({ "_id": order_id }),
        json!({ "$set": { "state": state } }),
    )?;
    Ok(())
}

fn release(tx: &Transaction, order_id: &str) -> Result<InventoryReply, Error> {
    match reservation(tx, order_id)? {
        Some(r) if r.state == "RESERVED" => {
            shift(tx, &r, "reserved", "available")?;
            set_state(tx, order_id, "RELEASED")?;
        }
        // A cancelled completed order: what was sold goes back on the shelf.
        Some(r) if r.state == "COMMITTED" => {
            shift(tx, &r, "sold", "available")?;
            set_state(tx, order_id, "RELEASED")?;
        }
        // Rejected, already released, or never reserved: nothing is held.
        Some(_) => {}
        None => {
            tx.insert_one(
                RESERVATIONS,
                &Reservation {
                    order_id: order_id.to_string(),
                    store_id: String::new(),
                    lines: Vec::new(),
                    state: "RELEASED".into(),
                    reason: Some("released before it was reserved".into()),
                },
            )?;
        }
    }
    Ok(InventoryReply::Released {
        order_id: order_id.to_string(),
    })
}

fn commit(tx: &Transaction, order_id: &str) -> Result<InventoryReply, Error> {
    match reservation(tx, order_id)? {
        Some(r) if r.state == "RESERVED" => {
            shift(tx, &r, "reserved", "sold")?;
            set_state(tx, order_id, "COMMITTED")?;
            Ok(InventoryReply::Committed {
                order_id: order_id.to_string(),
            })
        }
        Some(r) if r.state == "COMMITTED" => Ok(InventoryReply::Committed {
            order_id: order_id.to_string(),
        }),
        Some(r) => Err(Error::InvalidArgument(format!(
            "cannot commit order {order_id}: its reservation is {}",
            r.state
        ))),
        None => Err(Error::InvalidArgument(format!(
            "cannot commit order {order_id}: nothing is reserved"
        ))),
    }
}
