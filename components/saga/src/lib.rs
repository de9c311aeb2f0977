//! The order saga's orchestrator (a `[[trigger.kafka]]` on `orders.events`, `inventory.replies`
//! and `payment.replies`). Each order document is the saga's state; every message is handled in
//! one transaction: the inbox mark, the state change, and the next commands (outbox). A message
//! that does not fit the order's state (a redelivery, a late reply) changes nothing.
//!
//! ```text
//! PENDING --OrderCreated--> RESERVING --Reserved--> PAYING --Confirmed--> COMMITTING --Committed--> COMPLETED
//!              RESERVING --Rejected--> REJECTED_OUT_OF_STOCK
//!              PAYING --Declined--> RELEASING --Released--> PAYMENT_DECLINED
//! cancel: RESERVING/PAYING/COMMITTING are flagged and turn at their next reply;
//!         COMPLETED --CancelRequested--> CANCELLING (refund + restock) --both done--> CANCELLED_BY_CUSTOMER
//! ```

wit_bindgen::generate!({
    path: "../../wit",
    world: "moa:host/event-handler",
    generate_all,
});

use commerce::saga::{
    self, InventoryCommand, InventoryReply, OrderEvent, PaymentCommand, PaymentReply, SagaInput,
};
use exports::moa::messaging::handler::{Delivery, Guest};
use moa_sdk::documents::{self, Error, Ops, Store, Transaction};
use serde_json::{Value, json};

const ORDERS: &str = "orders";

struct Saga;

impl Guest for Saga {
    fn handle(delivery: Delivery) -> Result<(), String> {
        let id = documents::message_id(
            delivery
                .message
                .headers
                .iter()
                .map(|h| (h.name.as_str(), h.value.as_slice())),
            &delivery.id,
        );
        let input: SagaInput = serde_json::from_slice(&delivery.message.payload)
            .map_err(|e| format!("not a saga message on {}: {e}", delivery.message.topic))?;
        let store = Store::open("default").map_err(|e| format!("{e:?}"))?;
        store
            .transaction(|tx| {
                if !tx.first_time("saga", &id)? {
                    return Ok(());
                }
                step(tx, &input)
            })
            .map_err(|e| format!("{e:?}"))
    }
}

export!(Saga);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn order_id(input: &SagaInput) -> &str {
    match input {
        SagaInput::Order(event) => event.order_id(),
        SagaInput::Inventory(
            InventoryReply::Reserved { order_id }
            | InventoryReply::Rejected { order_id, .. }
            | InventoryReply::Released { order_id }
            | InventoryReply::Committed { order_id },
        ) => order_id,
        SagaInput::Payment(
            PaymentReply::Confirmed { order_id }
            | PaymentReply::Declined { order_id, .. }
            | PaymentReply::Canceled { order_id, .. },
        ) => order_id,
    }
}

/// What one message does to its order.
struct Change {
    set: serde_json::Map<String, Value>,
    inventory: Option<InventoryCommand>,
    payment: Option<PaymentCommand>,
}

impl Change {
    fn to(state: &str) -> Change {
        let mut set = serde_json::Map::new();
        set.insert("state".into(), json!(state));
        Change {
            set,
            inventory: None,
            payment: None,
        }
    }

    fn with(mut self, field: &str, value: Value) -> Change {
        self.set.insert(field.into(), value);
        self
    }
}

fn step(tx: &Transaction, input: &SagaInput) -> Result<(), Error> {
    let id = order_id(input).to_string();
    let Some(order) = tx.find_one::<Value>(ORDERS, json!({ "_id": id }))? else {
        // A reply for an order this store does not have: nothing to move.
        return Ok(());
    };
    let state = order["state"].as_str().unwrap_or_default();
    let cancel_requested = order["cancel_requested"] == true;
    let payment_key = order["payment_key"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let release = || InventoryCommand::Release {
        order_id: id.clone(),
    };
    let refund = |reason: &str| PaymentCommand::Cancel {
        order_id: id.clone(),
        payment_key: payment_key.clone(),
        reason: reason.to_string(),
    };
    let cancelling = || {
        let mut change = Change::to("CANCELLING")
            .with("refund_done", json!(false))
            .with("restock_done", json!(false));
        change.payment = Some(refund("cancelled by the customer"));
        change.inventory = Some(release());
        change
    };
    let change = match (input, state) {
        (
            SagaInput::Order(OrderEvent::OrderCreated {
                store_id, lines, ..
            }),
            "PENDING",
        ) => {
            let mut change = Change::to("RESERVING");
            change.inventory = Some(InventoryCommand::Reserve {
                order_id: id.clone(),
                store_id: store_id.clone(),
                lines: lines.clone(),
            });
            change
        }
        (SagaInput::Order(OrderEvent::CancelRequested { .. }), "COMPLETED") => cancelling(),
        (SagaInput::Inventory(InventoryReply::Reserved { .. }), "RESERVING")
            if cancel_requested =>
        {
            let mut change = Change::to("RELEASING").with("reason", json!("CANCELLED_BY_CUSTOMER"));
            change.inventory = Some(release());
            change
        }
        (SagaInput::Inventory(InventoryReply::Reserved { .. }), "RESERVING") => {
            let mut change = Change::to("PAYING");
            change.payment = Some(PaymentCommand::Confirm {
                order_id: id.clone(),
                payment_key: payment_key.clone(),
                amount: order["amount"].as_i64().unwrap_or(0),
            });
            change
        }
        (SagaInput::Inventory(InventoryReply::Rejected { reason, .. }), "RESERVING") => {
            let final_state = if cancel_requested {
                "CANCELLED_BY_CUSTOMER"
            } else {
                "REJECTED_OUT_OF_STOCK"
            };
            Change::to(final_state).with("reason", json!(reason))
        }
        (SagaInput::Payment(PaymentReply::Confirmed { .. }), "PAYING") if cancel_requested => {
            cancelling()
        }
        (SagaInput::Payment(PaymentReply::Confirmed { .. }), "PAYING") => {
            let mut change = Change::to("COMMITTING");
            change.inventory = Some(InventoryCommand::Commit {
                order_id: id.clone(),
            });
            change
        }
        (SagaInput::Payment(PaymentReply::Declined { code, message, .. }), "PAYING") => {
            let mut change = Change::to("RELEASING")
                .with("reason", json!("PAYMENT_DECLINED"))
                .with("payment_error", json!({ "code": code, "message": message }));
            change.inventory = Some(release());
            change
        }
        (SagaInput::Inventory(InventoryReply::Committed { .. }), "COMMITTING")
            if cancel_requested =>
        {
            cancelling()
        }
        (SagaInput::Inventory(InventoryReply::Committed { .. }), "COMMITTING") => {
            Change::to("COMPLETED")
        }
        (SagaInput::Inventory(InventoryReply::Released { .. }), "RELEASING") => {
            let final_state = order["reason"]
                .as_str()
                .unwrap_or("PAYMENT_DECLINED")
                .to_string();
            Change::to(&final_state)
        }
        (SagaInput::Inventory(InventoryReply::Released { .. }), "CANCELLING") => {
            if order["refund_done"] == true {
                Change::to("CANCELLED_BY_CUSTOMER").with("restock_done", json!(true))
            } else {
                Change::to("CANCELLING").with("restock_done", json!(true))
            }
        }
        (SagaInput::Payment(PaymentReply::Canceled { charged, .. }), "CANCELLING") => {
            let change = if order["restock_done"] == true {
                Change::to("CANCELLED_BY_CUSTOMER")
            } else {
                Change::to("CANCELLING")
            };
            change
                .with("refund_done", json!(true))
                .with("refunded", json!(charged))
        }
        // Anything else is a redelivery or a late message for a state already left: no change.
        _ => return Ok(()),
    };
    let mut set = change.set;
    set.insert("updated_at_ms".into(), json!(now_ms()));
    tx.update_one(ORDERS, json!({ "_id": id }), json!({ "$set": set }))?;
    if let Some(command) = change.inventory {
        tx.publish(saga::message(saga::INVENTORY_COMMANDS, &id, &command))?;
    }
    if let Some(command) = change.payment {
        tx.publish(saga::message(saga::PAYMENT_COMMANDS, &id, &command))?;
    }
    Ok(())
}
