//! Step deadlines, run by `[[trigger.cron]]`: an order whose step got no answer by its
//! `deadline_at_ms` has the step's commands sent again (the receivers are idempotent per order),
//! with a doubling deadline, up to `saga_step_retries` times; then the step is given up: a
//! forward step is compensated (`FAILED`), a compensation ends `COMPENSATION_FAILED`.

use crate::{Change, Commands, ORDERS, Settings, compensation_failed, now_ms};
use moa_sdk::documents::{self, Error, Find, Ops, Store, Transaction};
use serde_json::{Value, json};

/// Orders looked at per run; the next run takes the rest.
const PER_RUN: u64 = 100;
/// A run stops starting transactions after this long, well inside the component's deadline (a run
/// interrupted at its deadline would abort the transaction it is in), and about the schedule's
/// period: on a slow store the next run goes on where this one stopped.
const RUN_BUDGET: std::time::Duration = std::time::Duration::from_secs(4);

/// Moves every order past its deadline. Another host moving the same order at the same time is
/// not an error (the order is looked at again next run).
pub fn sweep(_scheduled_at: u64, settings: &Settings) -> Result<(), String> {
    let store = Store::open("default").map_err(|e| format!("{e:?}"))?;
    let now = now_ms();
    let due: Vec<Value> = store
        .find(
            ORDERS,
            json!({ "deadline_at_ms": { "$lt": now } }),
            Find::default()
                .limit(PER_RUN)
                .projection(json!({ "_id": 1 })),
        )
        .map_err(|e| format!("{e:?}"))?;
    let started = std::time::Instant::now();
    let mut failures = Vec::new();
    for order in &due {
        if started.elapsed() > RUN_BUDGET {
            break;
        }
        let Some(id) = order["_id"].as_str() else {
            continue;
        };
        match store.transaction(|tx| expire(tx, id, now, settings)) {
            Ok(()) => {}
            Err(error) => {
                let (kind, message) = documents::kind_and_message(&error);
                if kind != "write-conflict" {
                    failures.push(format!("{id}: {kind}: {message}"));
                }
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} of {} overdue orders not moved: {}",
            failures.len(),
            due.len(),
            failures.join("; ")
        ))
    }
}

fn expire(tx: &Transaction, id: &str, now: u64, settings: &Settings) -> Result<(), Error> {
    let Some(order) = tx.find_one::<Value>(ORDERS, json!({ "_id": id }))? else {
        return Ok(());
    };
    match order["deadline_at_ms"].as_u64() {
        Some(due) if due < now => {}
        // Moved on since the query: not overdue any more.
        _ => return Ok(()),
    }
    let state = order["state"].as_str().unwrap_or_default();
    let retries = order["step_retries"].as_u64().unwrap_or(0) as u32;
    let commands = Commands::of(&order);
    if state == "PENDING" {
        // The saga has not seen OrderCreated in time: it starts the order itself (a late
        // OrderCreated then finds it RESERVING and changes nothing).
        let mut change = Change::to("RESERVING");
        change.inventory = Some(commands.reserve());
        return change.apply(tx, id, settings, 0);
    }
    if retries < settings.step_retries {
        let (inventory, payment) = commands.pending();
        let mut change = Change::to(state);
        change.inventory = inventory;
        change.payment = payment;
        return change.apply(tx, id, settings, retries + 1);
    }
    let why = format!(
        "no answer to the {} step after {} sends",
        state.to_lowercase(),
        retries + 1
    );
    eprintln!("order {id}: {why}; giving the step up");
    let change = match state {
        "RESERVING" => commands.release_then("FAILED", "RESERVATION_TIMEOUT"),
        // The charge's outcome is unknown: refund whatever was charged (same idempotency key).
        "PAYING" => commands.compensate("FAILED", "PAYMENT_TIMEOUT"),
        "COMMITTING" => commands.compensate("FAILED", "COMMIT_TIMEOUT"),
        "RELEASING" => compensation_failed(&order, "release", &why),
        "CANCELLING" if order["refund_done"] != true => compensation_failed(&order, "refund", &why),
        "CANCELLING" => compensation_failed(&order, "release", &why),
        _ => return Ok(()),
    };
    change
        .with("last_error", json!(why))
        .apply(tx, id, settings, 0)
}
