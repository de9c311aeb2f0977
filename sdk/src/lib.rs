//! moa's guest SDK: typed Rust over moa's own WIT interfaces (`moa:messaging/producer`,
//! `moa:documents`, `moa:vectors`), for components built for wasm32-wasip2 beside spin-sdk, which covers Spin's.

mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "moa:host/guest-sdk",
        generate_all,
    });
}

/// Publishing messages to topics; the host decides which broker holds each topic.
pub mod messaging {
    use super::bindings::moa::messaging::{producer, types};

    pub use types::Error;

    /// A message to publish. Build it with [`Message::new`] and the `with_*` methods.
    #[derive(Debug, Clone)]
    pub struct Message {
        topic: String,
        key: Option<Vec<u8>>,
        payload: Vec<u8>,
        headers: Vec<(String, Vec<u8>)>,
    }

    impl Message {
        pub fn new(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
            Message {
                topic: topic.into(),
                key: None,
                payload: payload.into(),
                headers: Vec::new(),
            }
        }

        /// Messages with the same key keep their order.
        pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
            self.key = Some(key.into());
            self
        }

        pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
            self.headers.push((name.into(), value.into()));
            self
        }
    }

    impl From<Message> for types::Message {
        fn from(message: Message) -> Self {
            types::Message {
                topic: message.topic,
                key: message.key,
                payload: message.payload,
                headers: message
                    .headers
                    .into_iter()
                    .map(|(name, value)| types::Header { name, value })
                    .collect(),
            }
        }
    }

    /// Publishes `message`; returns once the broker has stored it.
    pub fn publish(message: Message) -> Result<(), Error> {
        producer::publish(&message.into())
    }

    /// Publishes `messages` together (all in flight at once); returns once the broker has stored
    /// every one. On error some may have been stored.
    pub fn publish_batch(messages: impl IntoIterator<Item = Message>) -> Result<(), Error> {
        let messages: Vec<types::Message> = messages.into_iter().map(Into::into).collect();
        producer::publish_batch(&messages)
    }
}

pub mod documents;
pub mod vectors;

/// The raw generated bindings of moa's interfaces, for a component's own `wit_bindgen::generate!`
/// to reuse with `with` (a job component's `moa:jobs` export takes a `moa:documents` transaction).
#[doc(hidden)]
pub mod wit {
    pub use crate::bindings::moa::*;
}
