//! The order saga's messages: the events, commands and replies the order, saga, inventory and
//! payment components exchange over the broker, JSON with a `type` tag, keyed by order id.
//!
//! OrderCreated → Reserve → Reserved → Confirm → Confirmed → Commit → Committed: COMPLETED.
//! Rejected → REJECTED_OUT_OF_STOCK; Declined → Release → PAYMENT_DECLINED.

use serde::{Deserialize, Serialize};

pub const ORDER_EVENTS: &str = "orders.events";
pub const INVENTORY_COMMANDS: &str = "inventory.commands";
pub const INVENTORY_REPLIES: &str = "inventory.replies";
pub const PAYMENT_COMMANDS: &str = "payment.commands";
pub const PAYMENT_REPLIES: &str = "payment.replies";
/// Where the host puts commands that failed every attempt; the saga reads them.
pub const INVENTORY_COMMANDS_DLQ: &str = "inventory.commands.dlq";
pub const PAYMENT_COMMANDS_DLQ: &str = "payment.commands.dlq";

/// How long a new order may wait for the saga to take its `OrderCreated`.
pub const PENDING_TIMEOUT_MS: u64 = 30_000;

/// States an order never leaves (but `COMPLETED`, which a cancellation may still refund).
/// `FAILED`: a step did not finish in time and was compensated; `COMPENSATION_FAILED`: a
/// compensation itself failed every attempt and needs an operator (its command is dead-lettered).
pub const TERMINAL_STATES: &[&str] = &[
    "COMPLETED",
    "REJECTED_OUT_OF_STOCK",
    "PAYMENT_DECLINED",
    "CANCELLED_BY_CUSTOMER",
    "FAILED",
    "COMPENSATION_FAILED",
];

/// Where the saga announces how each order ended: `orders.outcome.<outcome>`, one topic per
/// outcome, so the host's per-topic count (`moa_messages_published_total`) is the outcome rate.
pub const OUTCOME_TOPIC_PREFIX: &str = "orders.outcome.";

/// The outcome of a terminal state (its topic suffix), and whether reaching it took a
/// compensation (a release, a refund, a restock), or `None` for a state that is not terminal.
pub fn outcome_of(state: &str) -> Option<(&'static str, bool)> {
    Some(match state {
        "COMPLETED" => ("completed", false),
        "REJECTED_OUT_OF_STOCK" => ("rejected", false),
        "PAYMENT_DECLINED" => ("declined", true),
        "CANCELLED_BY_CUSTOMER" => ("cancelled", true),
        "FAILED" => ("failed", true),
        "COMPENSATION_FAILED" => ("compensation_failed", true),
        _ => return None,
    })
}

/// How an order ended, published once when its saga reaches a terminal state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type")]
pub enum OrderOutcome {
    OrderEnded {
        order_id: String,
        state: String,
        /// A compensation ran (reservation released, payment refunded, stock restocked).
        compensated: bool,
        reason: Option<String>,
    },
}

/// One order line, priced by the server from the store's menu.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Line {
    pub item_id: String,
    pub name: String,
    pub quantity: u32,
    /// KRW.
    pub unit_price: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum OrderEvent {
    OrderCreated {
        order_id: String,
        store_id: String,
        lines: Vec<Line>,
        amount: i64,
        payment_key: String,
    },
    CancelRequested {
        order_id: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum InventoryCommand {
    Reserve {
        order_id: String,
        store_id: String,
        lines: Vec<Line>,
    },
    Release {
        order_id: String,
    },
    Commit {
        order_id: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum InventoryReply {
    Reserved { order_id: String },
    Rejected { order_id: String, reason: String },
    Released { order_id: String },
    Committed { order_id: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum PaymentCommand {
    Confirm {
        order_id: String,
        payment_key: String,
        amount: i64,
    },
    Cancel {
        order_id: String,
        payment_key: String,
        reason: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum PaymentReply {
    Confirmed {
        order_id: String,
    },
    Declined {
        order_id: String,
        code: String,
        message: String,
    },
    /// The payment was refunded (or nothing had been charged: `charged` false).
    Canceled {
        order_id: String,
        charged: bool,
    },
}

/// A command the host dead-lettered after its last attempt (read from `*.commands.dlq`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DeadCommand {
    Inventory(InventoryCommand),
    Payment(PaymentCommand),
}

impl DeadCommand {
    pub fn order_id(&self) -> &str {
        match self {
            DeadCommand::Inventory(
                InventoryCommand::Reserve { order_id, .. }
                | InventoryCommand::Release { order_id }
                | InventoryCommand::Commit { order_id },
            )
            | DeadCommand::Payment(
                PaymentCommand::Confirm { order_id, .. } | PaymentCommand::Cancel { order_id, .. },
            ) => order_id,
        }
    }
}

/// Any message the saga reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SagaInput {
    Order(OrderEvent),
    Inventory(InventoryReply),
    Payment(PaymentReply),
}

impl OrderEvent {
    pub fn order_id(&self) -> &str {
        match self {
            OrderEvent::OrderCreated { order_id, .. }
            | OrderEvent::CancelRequested { order_id } => order_id,
        }
    }
}

/// The message to publish: `value` as JSON on `topic`, keyed by `order_id`.
pub fn message<T: Serialize>(
    topic: &str,
    order_id: &str,
    value: &T,
) -> moa_sdk::messaging::Message {
    moa_sdk::messaging::Message::new(topic, serde_json::to_vec(value).unwrap_or_default())
        .with_key(order_id.as_bytes().to_vec())
}
