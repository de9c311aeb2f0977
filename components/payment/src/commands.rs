//! The saga's payment commands: confirm a payment, cancel (refund) it. The Toss call happens
//! outside any transaction (it is idempotent by key); its definite outcome is recorded together
//! with the reply and the inbox mark.

use crate::exports::moa::messaging::batch_handler::Delivery as BatchDelivery;
use crate::exports::moa::messaging::handler::Delivery;
use crate::moa::messaging::types::Header;
use crate::toss::{Answer, Toss};
use commerce::saga::{self, PaymentCommand, PaymentReply};
use moa_sdk::documents::{self, Error, Ops, Store, Transaction};
use serde_json::{Value, json};

pub const PAYMENTS: &str = "payments";

/// A command's definite answer from Toss, ready to be recorded, with its inbox id.
pub struct Answered {
    id: String,
    outcome: Outcome,
}

/// Reads a delivery's command and asks Toss; an error when the message is not a command or the
/// answer is not definite (the delivery is retried with the same idempotency key).
fn answer(
    toss: &Toss,
    payload: &[u8],
    headers: &[Header],
    broker_id: &str,
) -> Result<Answered, String> {
    let id = documents::message_id(
        headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_slice())),
        broker_id,
    );
    let command: PaymentCommand =
        serde_json::from_slice(payload).map_err(|e| format!("not a payment command: {e}"))?;
    let outcome = match &command {
        PaymentCommand::Confirm {
            order_id,
            payment_key,
            amount,
        } => confirm(toss, order_id, payment_key, *amount)?,
        PaymentCommand::Cancel {
            order_id,
            payment_key,
            reason,
        } => cancel(toss, order_id, payment_key, reason)?,
    };
    Ok(Answered { id, outcome })
}

pub fn handle(delivery: Delivery) -> Result<(), String> {
    let toss = Toss::from_variables()?;
    let answered = answer(
        &toss,
        &delivery.message.payload,
        &delivery.message.headers,
        &delivery.id,
    )?;
    let store = Store::open("default").map_err(|e| format!("{e:?}"))?;
    store
        .transaction(|tx| record_once(tx, &answered))
        .map_err(|e| format!("{e:?}"))
}

/// Several commands: their Toss calls one after the other, then one transaction for all answers.
pub fn handle_batch(deliveries: Vec<BatchDelivery>) -> Vec<Result<(), String>> {
    let toss = match Toss::from_variables() {
        Ok(toss) => toss,
        Err(error) => return vec![Err(error); deliveries.len()],
    };
    let answers: Vec<Result<Answered, String>> = deliveries
        .iter()
        .map(|d| answer(&toss, &d.message.payload, &d.message.headers, &d.id))
        .collect();
    match Store::open("default") {
        Ok(store) => store.transaction_per_batch(&answers, record_once),
        Err(error) => vec![Err(format!("{error:?}")); answers.len()],
    }
}

/// Records a definite answer with its reply, once (the inbox mark).
fn record_once(tx: &Transaction, answered: &Answered) -> Result<(), Error> {
    if !tx.first_time("payment", &answered.id)? {
        return Ok(());
    }
    let (order_id, record, reply) = &answered.outcome;
    tx.upsert_one(
        PAYMENTS,
        json!({ "_id": order_id }),
        json!({ "$set": record }),
    )?;
    tx.publish(saga::message(saga::PAYMENT_REPLIES, order_id, reply))?;
    Ok(())
}

type Outcome = (String, Value, PaymentReply);

fn confirm(toss: &Toss, order_id: &str, payment_key: &str, amount: i64) -> Result<Outcome, String> {
    let body = json!({ "paymentKey": payment_key, "orderId": order_id, "amount": amount });
    let answer = toss.post(
        "/v1/payments/confirm",
        &format!("confirm-{order_id}"),
        &body,
    );
    let confirmed = |payment: &Value| {
        (
            order_id.to_string(),
            json!({ "state": "CONFIRMED", "payment_key": payment_key, "amount": amount,
                    "approved_at": payment["approvedAt"], "toss_status": payment["status"] }),
            PaymentReply::Confirmed {
                order_id: order_id.to_string(),
            },
        )
    };
    match answer {
        Answer::Ok(payment) => Ok(confirmed(&payment)),
        // Confirmed before under another key (or by hand): Toss has it; check it is this order's.
        Answer::Refused { code, .. } if code == "ALREADY_PROCESSED_PAYMENT" => {
            match toss.get(&format!("/v1/payments/{payment_key}")) {
                Answer::Ok(payment)
                    if payment["orderId"] == order_id
                        && payment["totalAmount"] == amount
                        && payment["status"] == "DONE" =>
                {
                    Ok(confirmed(&payment))
                }
                Answer::Ok(payment) => Ok(declined(
                    order_id,
                    "PAYMENT_MISMATCH",
                    &format!(
                        "payment {payment_key} belongs to order {} ({} KRW, {})",
                        payment["orderId"], payment["totalAmount"], payment["status"]
                    ),
                )),
                Answer::Refused { code, message, .. } => Ok(declined(order_id, &code, &message)),
                Answer::Unknown(why) => Err(why),
            }
        }
        Answer::Refused {
            status: 401,
            code,
            message,
        } => Err(format!(
            "Toss refused the secret key ({code}: {message}); check toss_secret_key"
        )),
        Answer::Refused { code, message, .. } => Ok(declined(order_id, &code, &message)),
        Answer::Unknown(why) => Err(why),
    }
}

fn declined(order_id: &str, code: &str, message: &str) -> Outcome {
    (
        order_id.to_string(),
        json!({ "state": "DECLINED", "code": code, "message": message }),
        PaymentReply::Declined {
            order_id: order_id.to_string(),
            code: code.to_string(),
            message: message.to_string(),
        },
    )
}

fn cancel(toss: &Toss, order_id: &str, payment_key: &str, reason: &str) -> Result<Outcome, String> {
    let answer = toss.post(
        &format!("/v1/payments/{payment_key}/cancel"),
        &format!("cancel-{order_id}"),
        &json!({ "cancelReason": reason }),
    );
    let canceled = |charged: bool, detail: Value| {
        (
            order_id.to_string(),
            json!({ "state": "CANCELED", "refunded": charged, "detail": detail }),
            PaymentReply::Canceled {
                order_id: order_id.to_string(),
                charged,
            },
        )
    };
    match answer {
        Answer::Ok(payment) => Ok(canceled(true, payment["status"].clone())),
        Answer::Refused { code, .. } if code == "ALREADY_CANCELED_PAYMENT" => {
            Ok(canceled(true, json!("ALREADY_CANCELED_PAYMENT")))
        }
        Answer::Refused { code, .. } if code == "NOT_FOUND_PAYMENT" => {
            Ok(canceled(false, json!("NOT_FOUND_PAYMENT")))
        }
        Answer::Refused { code, message, .. } => {
            Err(format!("Toss refused the cancel: {code}: {message}"))
        }
        Answer::Unknown(why) => Err(why),
    }
}
