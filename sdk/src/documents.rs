//! Document stores (`moa:documents`): typed calls over JSON documents, transactions with a retry
//! helper, the transactional outbox (`Transaction::publish`) and the inbox (`Transaction::first_time`).
//!
//! ```ignore
//! use moa_sdk::documents::{Store, Ops};
//! use serde_json::json;
//!
//! let store = Store::open("default")?;
//! store.transaction(|tx| {
//!     if !tx.first_time("order-service", &message_id)? {
//!         return Ok(()); // a repeated delivery: its effects are committed already
//!     }
//!     tx.update_one("orders", json!({"_id": order_id}), json!({"$set": {"status": "paid"}}))?;
//!     tx.publish(Message::new("order.paid", payload).with_key(order_id))?;
//!     Ok(())
//! })?;
//! ```

use crate::bindings::moa::documents::{documents as wit, types};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use types::{Error, FindAndModifyOptions, FindOptions, ReturnDocument, UpdateResult};

/// How many times [`Store::transaction`] runs a transaction that hits a write conflict.
pub const TRANSACTION_ATTEMPTS: u32 = 10;

/// How often [`Store::transaction_per_batch`] runs a conflicting batch again before it runs each
/// input on its own (a conflict costs the whole batch's work, so fewer tries than one transaction).
pub const BATCH_ATTEMPTS: u32 = 3;

/// The error's kind as the WIT names it (`duplicate-key`, ...) and its message.
pub fn kind_and_message(error: &Error) -> (&'static str, &str) {
    match error {
        Error::AccessDenied(m) => ("access-denied", m),
        Error::InvalidFilter(m) => ("invalid-filter", m),
        Error::InvalidUpdate(m) => ("invalid-update", m),
        Error::InvalidArgument(m) => ("invalid-argument", m),
        Error::DuplicateKey(m) => ("duplicate-key", m),
        Error::WriteConflict(m) => ("write-conflict", m),
        Error::TooLarge(m) => ("too-large", m),
        Error::TransactionClosed(m) => ("transaction-closed", m),
        Error::Unavailable(m) => ("unavailable", m),
        Error::Other(m) => ("other", m),
    }
}

fn to_text<T: Serialize + ?Sized>(value: &T) -> Result<String, Error> {
    serde_json::to_string(value).map_err(|e| Error::InvalidArgument(e.to_string()))
}

fn from_text<T: DeserializeOwned>(text: &str) -> Result<T, Error> {
    serde_json::from_str(text).map_err(|e| Error::Other(format!("cannot read a document: {e}")))
}

/// Sort, skip, limit and projection of a find.
#[derive(Debug, Clone, Default)]
pub struct Find {
    pub sort: Option<Value>,
    pub skip: Option<u64>,
    pub limit: Option<u64>,
    pub projection: Option<Value>,
}

impl Find {
    pub fn sort(mut self, sort: Value) -> Self {
        self.sort = Some(sort);
        self
    }
    pub fn skip(mut self, skip: u64) -> Self {
        self.skip = Some(skip);
        self
    }
    pub fn limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }
    pub fn projection(mut self, projection: Value) -> Self {
        self.projection = Some(projection);
        self
    }

    fn into_wit(self) -> Result<types::FindOptions, Error> {
        Ok(types::FindOptions {
            sort: self.sort.as_ref().map(to_text).transpose()?,
            skip: self.skip,
            limit: self.limit,
            projection: self.projection.as_ref().map(to_text).transpose()?,
        })
    }
}

/// The WIT form of `find` (for [`RawOps::raw_find`]).
pub fn find_options(find: Find) -> Result<types::FindOptions, Error> {
    find.into_wit()
}

/// Options of `find_one_and_update`.
#[derive(Debug, Clone)]
pub struct FindAndModify {
    pub sort: Option<Value>,
    pub projection: Option<Value>,
    pub upsert: bool,
    pub return_document: ReturnDocument,
}

impl Default for FindAndModify {
    fn default() -> Self {
        FindAndModify {
            sort: None,
            projection: None,
            upsert: false,
            return_document: ReturnDocument::After,
        }
    }
}

/// The raw calls a [`Store`] and a [`Transaction`] both make (JSON text in and out).
pub trait RawOps {
    fn raw_insert_many(&self, collection: &str, documents: &[String])
    -> Result<Vec<String>, Error>;
    fn raw_find(
        &self,
        collection: &str,
        filter: &str,
        options: &types::FindOptions,
    ) -> Result<Vec<String>, Error>;
    fn raw_count(&self, collection: &str, filter: &str) -> Result<u64, Error>;
    fn raw_update(
        &self,
        collection: &str,
        filter: &str,
        update: &str,
        upsert: bool,
        many: bool,
    ) -> Result<UpdateResult, Error>;
    fn raw_replace_one(
        &self,
        collection: &str,
        filter: &str,
        replacement: &str,
        upsert: bool,
    ) -> Result<UpdateResult, Error>;
    fn raw_find_one_and_update(
        &self,
        collection: &str,
        filter: &str,
        update: &str,
        options: &types::FindAndModifyOptions,
    ) -> Result<Option<String>, Error>;
    fn raw_delete(&self, collection: &str, filter: &str, many: bool) -> Result<u64, Error>;
}

/// Typed document operations (serde in and out), for stores and transactions alike.
pub trait Ops: RawOps {
    /// Inserts `document`; returns its `_id` (the host adds one when the document has none).
    fn insert_one<T: Serialize>(&self, collection: &str, document: &T) -> Result<Value, Error> {
        let ids = self.raw_insert_many(collection, &[to_text(document)?])?;
        ids.first().map_or(Ok(Value::Null), |id| from_text(id))
    }

    fn insert_many<T: Serialize>(
        &self,
        collection: &str,
        documents: &[T],
    ) -> Result<Vec<Value>, Error> {
        let texts = documents
            .iter()
            .map(to_text)
            .collect::<Result<Vec<_>, _>>()?;
        self.raw_insert_many(collection, &texts)?
            .iter()
            .map(|id| from_text(id))
            .collect()
    }

    fn find<T: DeserializeOwned>(
        &self,
        collection: &str,
        filter: Value,
        options: Find,
    ) -> Result<Vec<T>, Error> {
        self.raw_find(collection, &to_text(&filter)?, &options.into_wit()?)?
            .iter()
            .map(|d| from_text(d))
            .collect()
    }

    fn find_one<T: DeserializeOwned>(
        &self,
        collection: &str,
        filter: Value,
    ) -> Result<Option<T>, Error> {
        let options = Find::default().limit(1).into_wit()?;
        self.raw_find(collection, &to_text(&filter)?, &options)?
            .first()
            .map(|d| from_text(d))
            .transpose()
    }

    fn count(&self, collection: &str, filter: Value) -> Result<u64, Error> {
        self.raw_count(collection, &to_text(&filter)?)
    }

    fn update_one(
        &self,
        collection: &str,
        filter: Value,
        update: Value,
    ) -> Result<UpdateResult, Error> {
        self.raw_update(
            collection,
            &to_text(&filter)?,
            &to_text(&update)?,
            false,
            false,
        )
    }

    /// Updates the first match, or inserts the filter's equalities with the update applied.
    fn upsert_one(
        &self,
        collection: &str,
        filter: Value,
        update: Value,
    ) -> Result<UpdateResult, Error> {
        self.raw_update(
            collection,
            &to_text(&filter)?,
            &to_text(&update)?,
            true,
            false,
        )
    }

    fn update_many(
        &self,
        collection: &str,
        filter: Value,
        update: Value,
    ) -> Result<UpdateResult, Error> {
        self.raw_update(
            collection,
            &to_text(&filter)?,
            &to_text(&update)?,
            false,
            true,
        )
    }

    fn replace_one<T: Serialize>(
        &self,
        collection: &str,
        filter: Value,
        replacement: &T,
        upsert: bool,
    ) -> Result<UpdateResult, Error> {
        self.raw_replace_one(
            collection,
            &to_text(&filter)?,
            &to_text(replacement)?,
            upsert,
        )
    }

    fn find_one_and_update<T: DeserializeOwned>(
        &self,
        collection: &str,
        filter: Value,
        update: Value,
        options: FindAndModify,
    ) -> Result<Option<T>, Error> {
        let wit_options = types::FindAndModifyOptions {
            sort: options.sort.as_ref().map(to_text).transpose()?,
            projection: options.projection.as_ref().map(to_text).transpose()?,
            upsert: options.upsert,
            return_document: options.return_document,
        };
        self.raw_find_one_and_update(
            collection,
            &to_text(&filter)?,
            &to_text(&update)?,
            &wit_options,
        )?
        .map(|d| from_text(&d))
        .transpose()
    }

    fn delete_one(&self, collection: &str, filter: Value) -> Result<u64, Error> {
        self.raw_delete(collection, &to_text(&filter)?, false)
    }

    fn delete_many(&self, collection: &str, filter: Value) -> Result<u64, Error> {
        self.raw_delete(collection, &to_text(&filter)?, true)
    }
}

impl<T: RawOps> Ops for T {}

macro_rules! raw_ops {
    ($type:ty) => {
        impl RawOps for $type {
            fn raw_insert_many(
                &self,
                collection: &str,
                documents: &[String],
            ) -> Result<Vec<String>, Error> {
                self.0.insert_many(collection, documents)
            }
            fn raw_find(
                &self,
                collection: &str,
                filter: &str,
                options: &types::FindOptions,
            ) -> Result<Vec<String>, Error> {
                self.0.find(collection, filter, options)
            }
            fn raw_count(&self, collection: &str, filter: &str) -> Result<u64, Error> {
                self.0.count(collection, filter)
            }
            fn raw_update(
                &self,
                collection: &str,
                filter: &str,
                update: &str,
                upsert: bool,
                many: bool,
            ) -> Result<UpdateResult, Error> {
                if many {
                    self.0.update_many(collection, filter, update, upsert)
                } else {
                    self.0.update_one(collection, filter, update, upsert)
                }
            }
            fn raw_replace_one(
                &self,
                collection: &str,
                filter: &str,
                replacement: &str,
                upsert: bool,
            ) -> Result<UpdateResult, Error> {
                self.0.replace_one(collection, filter, replacement, upsert)
            }
            fn raw_find_one_and_update(
                &self,
                collection: &str,
                filter: &str,
                update: &str,
                options: &types::FindAndModifyOptions,
            ) -> Result<Option<String>, Error> {
                self.0
                    .find_one_and_update(collection, filter, update, options)
            }
            fn raw_delete(&self, collection: &str, filter: &str, many: bool) -> Result<u64, Error> {
                if many {
                    self.0.delete_many(collection, filter)
                } else {
                    self.0.delete_one(collection, filter)
                }
            }
        }
    };
}

/// An open document store (each call atomic on its own).
pub struct Store(wit::Store);

/// An open transaction; dropping it without [`Transaction::commit`] aborts it.
pub struct Transaction(wit::Transaction);

/// A transaction the host lent this component (a job chunk's): reads and writes go into it;
/// the host commits it with the chunk's checkpoint, so do not commit or abort it.
pub struct LentTransaction<'a>(&'a wit::Transaction);

impl<'a> LentTransaction<'a> {
    pub fn new(tx: &'a wit::Transaction) -> Self {
        LentTransaction(tx)
    }

    /// Stores `message` with the chunk's writes (the transactional outbox).
    pub fn publish(&self, message: crate::messaging::Message) -> Result<String, Error> {
        let message: crate::bindings::moa::messaging::types::Message = message.into();
        self.0.publish(&message)
    }
}

raw_ops!(Store);
raw_ops!(Transaction);
raw_ops!(LentTransaction<'_>);

impl Store {
    /// Opens the store `label`, which the component's `document_stores` must list.
    pub fn open(label: &str) -> Result<Store, Error> {
        wit::Store::open(label).map(Store)
    }

    /// Starts a transaction.
    pub fn begin(&self) -> Result<Transaction, Error> {
        self.0.begin().map(Transaction)
    }

    /// Runs `work` in a transaction and commits it; on a write conflict (in `work` or at commit)
    /// runs it again, up to [`TRANSACTION_ATTEMPTS`] times. An `Err` from `work` aborts.
    pub fn transaction<T>(
        &self,
        mut work: impl FnMut(&Transaction) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut attempt = 1;
        loop {
            let tx = self.begin()?;
            let result = work(&tx).and_then(|value| tx.commit().map(|()| value));
            match result {
                Err(Error::WriteConflict(_)) if attempt < TRANSACTION_ATTEMPTS => {
                    backoff(attempt);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

impl Store {
    /// Runs `work` for every input in one transaction with one commit (a batch of deliveries,
    /// `moa:messaging/batch-handler`). An input that is already `Err` (a message the component
    /// could not read) keeps its error and is left out. On a write conflict the whole batch runs
    /// again, up to [`BATCH_ATTEMPTS`] times; when `work` fails for one input, or the
    /// conflicts go on, the transaction is aborted and every input runs in a transaction of its
    /// own ([`Store::transaction`]), so a failing message fails alone and the rest commit.
    /// Returns one result per input, in order.
    pub fn transaction_per_batch<T>(
        &self,
        inputs: &[Result<T, String>],
        mut work: impl FnMut(&Transaction, &T) -> Result<(), Error>,
    ) -> Vec<Result<(), String>> {
        let runnable = inputs.iter().filter(|input| input.is_ok()).count();
        if runnable > 1 {
            let mut attempt = 1;
            loop {
                let result = self.begin().and_then(|tx| {
                    for input in inputs.iter().flatten() {
                        work(&tx, input)?;
                    }
                    tx.commit()
                });
                match result {
                    Ok(()) => {
                        return inputs
                            .iter()
                            .map(|input| input.as_ref().map(|_| ()).map_err(Clone::clone))
                            .collect();
                    }
                    Err(Error::WriteConflict(_)) if attempt < BATCH_ATTEMPTS => {
                        backoff(attempt);
                        attempt += 1;
                    }
                    Err(_) => break,
                }
            }
        }
        inputs
            .iter()
            .map(|input| match input {
                Ok(input) => self
                    .transaction(|tx| work(tx, input))
                    .map_err(|e| format!("{e:?}")),
                Err(error) => Err(error.clone()),
            })
            .collect()
    }
}

impl Transaction {
    /// Stores `message` with this transaction's writes; the host publishes it after commit, with a
    /// `moa-message-id` header. Returns the message id.
    pub fn publish(&self, message: crate::messaging::Message) -> Result<String, Error> {
        let message: crate::bindings::moa::messaging::types::Message = message.into();
        self.0.publish(&message)
    }

    /// Marks `message_id` processed by `consumer` in this transaction; true the first time.
    pub fn first_time(&self, consumer: &str, message_id: &str) -> Result<bool, Error> {
        self.0.first_time(consumer, message_id)
    }

    pub fn commit(&self) -> Result<(), Error> {
        self.0.commit()
    }

    pub fn abort(&self) -> Result<(), Error> {
        self.0.abort()
    }
}

/// Waits before running a conflicted transaction again: 2^attempt ms (at most 200 ms), with
/// jitter from the clock so that conflicting instances spread out.
fn backoff(attempt: u32) {
    let base = (1u64 << attempt.min(8)).min(200);
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::from(d.subsec_nanos()) % (base + 1))
        .unwrap_or(0);
    std::thread::sleep(std::time::Duration::from_millis(base / 2 + jitter));
}

/// The id a consumer deduplicates a delivery on: the `moa-message-id` header an outbox message
/// carries, or else the broker's own id of the delivery (`delivery.id`).
pub fn message_id<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    broker_id: &str,
) -> String {
    headers
        .into_iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("moa-message-id"))
        .and_then(|(_, value)| std::str::from_utf8(value).ok().map(str::to_string))
        .unwrap_or_else(|| broker_id.to_string())
}
