//! The order saga's orchestrator. Each order document is the saga's state; every message is
//! handled in one transaction: the inbox mark, the state change, and the next commands (outbox).
//! A message that does not fit the order's state (a redelivery, a late reply) changes nothing.
//!
//! ```text
//! PENDING --OrderCreated--> RESERVING --Reserved--> PAYING --Confirmed--> COMMITTING --Committed--> COMPLETED
//!              RESERVING --Rejected--> REJECTED_OUT_OF_STOCK
//!              PAYING --Declined--> RELEASING --Released--> PAYMENT_DECLINED
//! cancel: RESERVING/PAYING/COMMITTING are flagged and turn at their next reply;
//!         COMPLETED --CancelRequested--> CANCELLING (refund + restock) --both done--> CANCELLED_BY_CUSTOMER
//! ```
//!
//! Two triggers call it. `[[trigger.kafka]]` brings the order events, the replies, and the
//! commands the host dead-lettered after their last attempt (`*.commands.dlq`): a forward step
//! that failed is compensated (the order ends `FAILED`), a compensation that failed ends the order
//! `COMPENSATION_FAILED`. `[[trigger.cron]]` runs the step deadlines ([`deadlines`]): a step
//! without an answer in time is sent again, then given up the same way.

mod deadlines;

mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "moa:host/event-and-cron-handler",
        generate_all,
    });
}

use bindings::exports::moa::messaging::batch_handler::{
    Delivery as BatchDelivery, Guest as BatchHandler,
};
use bindings::exports::moa::messaging::handler::{Delivery, Guest as MessageHandler};
use bindings::fermyon::spin_cron::cron_types::{Error as CronError, Metadata};
use bindings::moa::messaging::types::Header;
use bindings::{Guest as CronHandler, fermyon};
use commerce::saga::{
    self, DeadCommand, InventoryCommand, InventoryReply, OrderEvent, OrderOutcome, PaymentCommand,
    PaymentReply, SagaInput,
};
use moa_sdk::documents::{self, Error, Ops, Store, Transaction};
use serde_json::{Value, json};

const ORDERS: &str = "orders";

struct Saga;

impl MessageHandler for Saga {
    fn handle(delivery: Delivery) -> Result<(), String> {
        let input = Input::read(
            &delivery.message.topic,
            &delivery.message.payload,
            &delivery.message.headers,
            &delivery.id,
        )?;
        let store = Store::open("default").map_err(|e| format!("{e:?}"))?;
        let settings = Settings::from_variables();
        store
            .transaction(|tx| input.apply(tx, &settings))
            .map_err(|e| format!("{e:?}"))
    }
}

impl BatchHandler for Saga {
    /// A batch of messages (each of another order) in one transaction: one commit for all.
    fn handle_batch(deliveries: Vec<BatchDelivery>) -> Vec<Result<(), String>> {
        let inputs: Vec<Result<Input, String>> = deliveries
            .iter()
            .map(|d| {
                Input::read(
                    &d.message.topic,
                    &d.message.payload,
                    &d.message.headers,
                    &d.id,
                )
            })
            .collect();
        let store = match Store::open("default") {
            Ok(store) => store,
            Err(error) => return vec![Err(format!("{error:?}")); deliveries.len()],
        };
        let settings = Settings::from_variables();
        store.transaction_per_batch(&inputs, |tx, input| input.apply(tx, &settings))
    }
}

impl CronHandler for Saga {
    fn handle_cron_event(metadata: Metadata) -> Result<(), CronError> {
        deadlines::sweep(metadata.timestamp, &Settings::from_variables()).map_err(CronError::Other)
    }
}

bindings::export!(Saga with_types_in bindings);

/// One delivery as the saga reads it, with the id its inbox mark uses.
struct Input {
    id: String,
    kind: InputKind,
}

enum InputKind {
    Message(SagaInput),
    /// A command dead-lettered by the host, with its last error (`moa-error`).
    Dead(DeadCommand, String),
}

impl Input {
    fn read(
        topic: &str,
        payload: &[u8],
        headers: &[Header],
        broker_id: &str,
    ) -> Result<Input, String> {
        let id = documents::message_id(
            headers
                .iter()
                .map(|h| (h.name.as_str(), h.value.as_slice())),
            broker_id,
        );
        let kind = if topic == saga::INVENTORY_COMMANDS_DLQ || topic == saga::PAYMENT_COMMANDS_DLQ {
            let command: DeadCommand = serde_json::from_slice(payload)
                .map_err(|e| format!("not a saga command on {topic}: {e}"))?;
            let error = headers
                .iter()
                .find(|h| h.name == "moa-error")
                .map(|h| String::from_utf8_lossy(&h.value).into_owned())
                .unwrap_or_default();
            InputKind::Dead(command, error)
        } else {
            InputKind::Message(
                serde_json::from_slice(payload)
                    .map_err(|e| format!("not a saga message on {topic}: {e}"))?,
            )
        };
        Ok(Input { id, kind })
    }

    /// The message's effect in `tx`, once (the inbox mark).
    fn apply(&self, tx: &Transaction, settings: &Settings) -> Result<(), Error> {
        if !tx.first_time("saga", &self.id)? {
            return Ok(());
        }
        match &self.kind {
            InputKind::Message(message) => step(tx, message, settings),
            InputKind::Dead(command, error) => dead_letter(tx, command, error, settings),
        }
    }
}

/// The saga's deadlines, from variables (`saga_step_timeout_ms`, `saga_step_retries`).
pub struct Settings {
    /// How long a step may wait for its answer before it is sent again; doubles each time.
    pub step_timeout_ms: u64,
    /// How often a step is sent again before it is given up.
    pub step_retries: u32,
}

impl Settings {
    fn from_variables() -> Settings {
        let number = |name: &str| {
            fermyon::spin::variables::get(name)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        Settings {
            step_timeout_ms: number("saga_step_timeout_ms").unwrap_or(30_000).max(100),
            step_retries: number("saga_step_retries")
                .map(|n| n.min(20) as u32)
                .unwrap_or(5),
        }
    }

    /// When a step entered now (or sent again for the `retries`-th time) is due.
    pub fn deadline(&self, now: u64, retries: u32) -> u64 {
        now + self.step_timeout_ms.saturating_mul(1 << retries.min(10))
    }
}

pub fn now_ms() -> u64 {
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
pub struct Change {
    set: serde_json::Map<String, Value>,
    inventory: Option<InventoryCommand>,
    payment: Option<PaymentCommand>,
}

impl Change {
    pub fn to(state: &str) -> Change {
        let mut set = serde_json::Map::new();
        set.insert("state".into(), json!(state));
        Change {
            set,
            inventory: None,
            payment: None,
        }
    }

    pub fn with(mut self, field: &str, value: Value) -> Change {
        self.set.insert(field.into(), value);
        self
    }

    /// A change that ends the order keeps the reason an earlier step recorded (a decline's, a
    /// timeout's), so the outcome event names it.
    pub fn keeping_reason_of(mut self, order: &Value) -> Change {
        let ends = self.set["state"]
            .as_str()
            .is_some_and(|state| saga::TERMINAL_STATES.contains(&state));
        if ends
            && !self.set.contains_key("reason")
            && let Some(reason) = order["reason"].as_str()
        {
            self.set.insert("reason".into(), json!(reason));
        }
        self
    }

    /// Writes the change (with the state's deadline) and publishes its commands.
    pub fn apply(
        mut self,
        tx: &Transaction,
        id: &str,
        settings: &Settings,
        retries: u32,
    ) -> Result<(), Error> {
        let now = now_ms();
        let state = self.set["state"].as_str().unwrap_or_default().to_string();
        let deadline = if saga::TERMINAL_STATES.contains(&state.as_str()) {
            Value::Null
        } else {
            json!(settings.deadline(now, retries))
        };
        self.set.insert("deadline_at_ms".into(), deadline);
        self.set.insert("step_retries".into(), json!(retries));
        self.set.insert("updated_at_ms".into(), json!(now));
        tx.update_one(ORDERS, json!({ "_id": id }), json!({ "$set": self.set }))?;
        if let Some(command) = self.inventory {
            tx.publish(saga::message(saga::INVENTORY_COMMANDS, id, &command))?;
        }
        if let Some(command) = self.payment {
            tx.publish(saga::message(saga::PAYMENT_COMMANDS, id, &command))?;
        }
        if let Some((outcome, compensated)) = saga::outcome_of(&state) {
            let ended = OrderOutcome::OrderEnded {
                order_id: id.to_string(),
                state: state.clone(),
                compensated,
                reason: self
                    .set
                    .get("reason")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            };
            let topic = format!("{}{outcome}", saga::OUTCOME_TOPIC_PREFIX);
            tx.publish(saga::message(&topic, id, &ended))?;
        }
        Ok(())
    }
}

/// The commands of an order's saga, built from its document.
pub struct Commands<'a> {
    pub order: &'a Value,
    pub id: String,
}

impl<'a> Commands<'a> {
    pub fn of(order: &'a Value) -> Commands<'a> {
        Commands {
            order,
            id: order["_id"].as_str().unwrap_or_default().to_string(),
        }
    }

    fn payment_key(&self) -> String {
        self.order["payment_key"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn reserve(&self) -> InventoryCommand {
        InventoryCommand::Reserve {
            order_id: self.id.clone(),
            store_id: self.order["store_id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            lines: serde_json::from_value(self.order["lines"].clone()).unwrap_or_default(),
        }
    }

    pub fn release(&self) -> InventoryCommand {
        InventoryCommand::Release {
            order_id: self.id.clone(),
        }
    }

    pub fn commit(&self) -> InventoryCommand {
        InventoryCommand::Commit {
            order_id: self.id.clone(),
        }
    }

    pub fn confirm(&self) -> PaymentCommand {
        PaymentCommand::Confirm {
            order_id: self.id.clone(),
            payment_key: self.payment_key(),
            amount: self.order["amount"].as_i64().unwrap_or(0),
        }
    }

    pub fn refund(&self, reason: &str) -> PaymentCommand {
        PaymentCommand::Cancel {
            order_id: self.id.clone(),
            payment_key: self.payment_key(),
            reason: reason.to_string(),
        }
    }

    /// Refund what may have been charged and put the stock back, then end in `then`.
    pub fn compensate(&self, then: &str, reason: &str) -> Change {
        let mut change = Change::to("CANCELLING")
            .with("then", json!(then))
            .with("reason", json!(reason))
            .with("refund_done", json!(false))
            .with("restock_done", json!(false));
        change.payment = Some(self.refund(reason));
        change.inventory = Some(self.release());
        change
    }

    /// Put the reserved stock back (nothing was charged), then end in `then`.
    pub fn release_then(&self, then: &str, reason: &str) -> Change {
        let mut change = Change::to("RELEASING")
            .with("then", json!(then))
            .with("reason", json!(reason));
        change.inventory = Some(self.release());
        change
    }

    /// The commands the order's current step waits on, to send again after its deadline.
    pub fn pending(&self) -> (Option<InventoryCommand>, Option<PaymentCommand>) {
        match self.order["state"].as_str().unwrap_or_default() {
            "PENDING" | "RESERVING" => (Some(self.reserve()), None),
            "PAYING" => (None, Some(self.confirm())),
            "COMMITTING" => (Some(self.commit()), None),
            "RELEASING" => (Some(self.release()), None),
            "CANCELLING" => (
                (self.order["restock_done"] != true).then(|| self.release()),
                (self.order["refund_done"] != true)
                    .then(|| self.refund(self.order["reason"].as_str().unwrap_or("compensation"))),
            ),
            _ => (None, None),
        }
    }
}

fn step(tx: &Transaction, input: &SagaInput, settings: &Settings) -> Result<(), Error> {
    let id = order_id(input).to_string();
    let Some(order) = tx.find_one::<Value>(ORDERS, json!({ "_id": id }))? else {
        // A reply for an order this store does not have: nothing to move.
        return Ok(());
    };
    let state = order["state"].as_str().unwrap_or_default();
    let cancel_requested = order["cancel_requested"] == true;
    let commands = Commands::of(&order);
    let change = match (input, state) {
        (SagaInput::Order(OrderEvent::OrderCreated { .. }), "PENDING") => {
            let mut change = Change::to("RESERVING");
            change.inventory = Some(commands.reserve());
            change
        }
        (SagaInput::Order(OrderEvent::CancelRequested { .. }), "COMPLETED") => {
            commands.compensate("CANCELLED_BY_CUSTOMER", "cancelled by the customer")
        }
        (SagaInput::Inventory(InventoryReply::Reserved { .. }), "RESERVING")
            if cancel_requested =>
        {
            commands.release_then("CANCELLED_BY_CUSTOMER", "CANCELLED_BY_CUSTOMER")
        }
        (SagaInput::Inventory(InventoryReply::Reserved { .. }), "RESERVING") => {
            let mut change = Change::to("PAYING");
            change.payment = Some(commands.confirm());
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
            commands.compensate("CANCELLED_BY_CUSTOMER", "cancelled by the customer")
        }
        (SagaInput::Payment(PaymentReply::Confirmed { .. }), "PAYING") => {
            let mut change = Change::to("COMMITTING");
            change.inventory = Some(commands.commit());
            change
        }
        (SagaInput::Payment(PaymentReply::Declined { code, message, .. }), "PAYING") => commands
            .release_then("PAYMENT_DECLINED", "PAYMENT_DECLINED")
            .with("payment_error", json!({ "code": code, "message": message })),
        (SagaInput::Inventory(InventoryReply::Committed { .. }), "COMMITTING")
            if cancel_requested =>
        {
            commands.compensate("CANCELLED_BY_CUSTOMER", "cancelled by the customer")
        }
        (SagaInput::Inventory(InventoryReply::Committed { .. }), "COMMITTING") => {
            Change::to("COMPLETED")
        }
        (SagaInput::Inventory(InventoryReply::Released { .. }), "RELEASING") => {
            Change::to(then_state(&order, "PAYMENT_DECLINED"))
        }
        (SagaInput::Inventory(InventoryReply::Released { .. }), "CANCELLING") => {
            if order["refund_done"] == true {
                Change::to(then_state(&order, "CANCELLED_BY_CUSTOMER"))
                    .with("restock_done", json!(true))
            } else {
                Change::to("CANCELLING").with("restock_done", json!(true))
            }
        }
        (SagaInput::Payment(PaymentReply::Canceled { charged, .. }), "CANCELLING") => {
            let change = if order["restock_done"] == true {
                Change::to(then_state(&order, "CANCELLED_BY_CUSTOMER"))
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
    // A step that moves on gets a fresh deadline; one that stays (half of a compensation done)
    // keeps its retry count.
    let retries = if change.set["state"] == state {
        order["step_retries"].as_u64().unwrap_or(0) as u32
    } else {
        0
    };
    change
        .keeping_reason_of(&order)
        .apply(tx, &id, settings, retries)
}

/// The terminal state a compensation (RELEASING, CANCELLING) ends in.
fn then_state<'a>(order: &'a Value, default: &'a str) -> &'a str {
    order["then"]
        .as_str()
        .or_else(|| {
            order["reason"]
                .as_str()
                .filter(|r| saga::TERMINAL_STATES.contains(r))
        })
        .unwrap_or(default)
}

/// A command the host gave up on: a forward step is compensated, a compensation is surfaced.
fn dead_letter(
    tx: &Transaction,
    command: &DeadCommand,
    error: &str,
    settings: &Settings,
) -> Result<(), Error> {
    let id = command.order_id().to_string();
    let Some(order) = tx.find_one::<Value>(ORDERS, json!({ "_id": id }))? else {
        return Ok(());
    };
    let state = order["state"].as_str().unwrap_or_default();
    let commands = Commands::of(&order);
    let change = match (command, state) {
        (DeadCommand::Inventory(InventoryCommand::Reserve { .. }), "RESERVING") => {
            commands.release_then("FAILED", "RESERVATION_FAILED")
        }
        (DeadCommand::Payment(PaymentCommand::Confirm { .. }), "PAYING") => {
            commands.compensate("FAILED", "PAYMENT_FAILED")
        }
        (DeadCommand::Inventory(InventoryCommand::Commit { .. }), "COMMITTING") => {
            commands.compensate("FAILED", "COMMIT_FAILED")
        }
        (DeadCommand::Inventory(InventoryCommand::Release { .. }), "RELEASING" | "CANCELLING")
        | (DeadCommand::Payment(PaymentCommand::Cancel { .. }), "CANCELLING") => {
            compensation_failed(&order, command_name(command), error)
        }
        // A dead command for a step the order has left (a later copy got through): nothing.
        _ => return Ok(()),
    };
    change
        .with("last_error", json!(error))
        .apply(tx, &id, settings, 0)
}

fn command_name(command: &DeadCommand) -> &'static str {
    match command {
        DeadCommand::Inventory(InventoryCommand::Reserve { .. }) => "reserve",
        DeadCommand::Inventory(InventoryCommand::Release { .. }) => "release",
        DeadCommand::Inventory(InventoryCommand::Commit { .. }) => "commit",
        DeadCommand::Payment(PaymentCommand::Confirm { .. }) => "confirm",
        DeadCommand::Payment(PaymentCommand::Cancel { .. }) => "refund",
    }
}

/// The order's compensation could not finish: it ends `COMPENSATION_FAILED` for an operator,
/// keeping what it was compensating for.
pub fn compensation_failed(order: &Value, step: &str, error: &str) -> Change {
    Change::to("COMPENSATION_FAILED")
        .with("failed_step", json!(step))
        .with("failed_from", order["reason"].clone())
        .with("reason", json!(format!("{step} failed: {error}")))
}
