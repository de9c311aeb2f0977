//! Event component for tests: the idempotent-consumer pattern. Each delivery's payload names an
//! order; in one transaction the component asks the inbox whether it processed the message before
//! (by its `moa-message-id`) and, the first time only, adds 1 to `effects.<order>.n`. Outside the
//! transaction it adds 1 to `seen.<order>.n`, so tests can tell repeated deliveries from repeated effects.

wit_bindgen::generate!({
    path: "../../wit",
    world: "moa:host/event-handler",
    generate_all,
});

use exports::moa::messaging::handler::{Delivery, Guest};
use moa_sdk::documents::{self, Ops, Store};
use serde_json::json;

struct Inbox;

impl Guest for Inbox {
    fn handle(delivery: Delivery) -> Result<(), String> {
        let order = String::from_utf8_lossy(&delivery.message.payload).into_owned();
        let id = documents::message_id(
            delivery
                .message
                .headers
                .iter()
                .map(|h| (h.name.as_str(), h.value.as_slice())),
            &delivery.id,
        );
        let store = Store::open("default").map_err(|e| format!("{e:?}"))?;
        store
            .upsert_one(
                "seen",
                json!({ "_id": order }),
                json!({ "$inc": { "n": 1 } }),
            )
            .map_err(|e| format!("{e:?}"))?;
        store
            .transaction(|tx| {
                if tx.first_time("effects", &id)? {
                    tx.upsert_one(
                        "effects",
                        json!({ "_id": order }),
                        json!({ "$inc": { "n": 1 } }),
                    )?;
                }
                Ok(())
            })
            .map_err(|e| format!("{e:?}"))
    }
}

export!(Inbox);
