//! The MongoDB document backend (`mongodb` driver): operations go to the server as the component
//! wrote them (after moa checked them), transactions are driver sessions; server errors become the
//! typed errors (duplicate key by code 11000, write conflicts by code 112 or the transient label).

use super::ops::{DocumentError, Op, Output, UpdateOutcome};
use super::outbox::{Staged, collections};
use super::{DocumentBackend, DocumentTransaction, IndexSpec};
use crate::capabilities::messaging::OutgoingMessage;
use async_trait::async_trait;
use futures::TryStreamExt as _;
use mongodb::bson::{Bson, Document, RawDocumentBuf};
use mongodb::error::{Error as MongoError, ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions, ReturnDocument};
use mongodb::{Client, ClientSession, Collection, Database, IndexModel};
use serde_json::{Map, Value};
use std::time::Duration;

/// The most a find brings into the host (the embedded store holds the same bound).
const MAX_RESULT_BYTES: usize = 64 * 1024 * 1024;

/// How to reach one MongoDB database.
pub struct MongoSettings {
    pub url: String,
    pub database: String,
    pub pool_size: Option<u32>,
    pub timeout: Duration,
}

/// One store: a database on a MongoDB deployment (a replica set, for transactions).
pub struct MongoStore {
    client: Client,
    database: Database,
}

impl MongoStore {
    /// Parses the URL and builds the client (connections open lazily; `ping` checks the server).
    pub async fn connect(settings: &MongoSettings) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let mut options = ClientOptions::parse(&settings.url)
            .await
            .context("cannot parse the MongoDB URL")?;
        options.app_name.get_or_insert_with(|| "moa".to_string());
        if let Some(size) = settings.pool_size {
            options.max_pool_size = Some(size);
        }
        options.server_selection_timeout = Some(settings.timeout);
        options.connect_timeout = Some(settings.timeout);
        let client = Client::with_options(options).context("cannot set up the MongoDB client")?;
        let database = client.database(&settings.database);
        database
            .run_command(mongodb::bson::doc! { "ping": 1 })
            .await
            .with_context(|| {
                format!("MongoDB at {} did not answer a ping", redact(&settings.url))
            })?;
        Ok(MongoStore { client, database })
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[async_trait]
impl DocumentBackend for MongoStore {
    fn kind(&self) -> &'static str {
        "mongodb"
    }

    async fn run(&self, op: Op) -> Result<Output, DocumentError> {
        execute(&self.database, None, op).await
    }

    async fn begin(&self) -> Result<Box<dyn DocumentTransaction>, DocumentError> {
        let mut session = self.client.start_session().await.map_err(map_error)?;
        session.start_transaction().await.map_err(map_error)?;
        Ok(Box::new(MongoTransaction {
            database: self.database.clone(),
            session,
        }))
    }

    async fn create_index(&self, index: &IndexSpec) -> Result<(), DocumentError> {
        let mut keys = Document::new();
        for (path, ascending) in &index.keys {
            keys.insert(path.clone(), if *ascending { 1 } else { -1 });
        }
        let model = IndexModel::builder()
            .keys(keys)
            .options(
                IndexOptions::builder()
                    .unique(index.unique)
                    .name(index.name.clone())
                    .build(),
            )
            .build();
        self.database
            .collection::<Document>(&index.collection)
            .create_index(model)
            .await
            .map(drop)
            .map_err(map_error)
    }

    async fn outbox_pending(&self, limit: usize) -> Result<Vec<Staged>, DocumentError> {
        collections::pending(self, limit).await
    }

    async fn outbox_lease(&self, holder: &str, for_ms: i64) -> Result<bool, DocumentError> {
        collections::lease(self, holder, for_ms).await
    }

    async fn outbox_remove(
        &self,
        published: &[Staged],
        holder: &str,
        for_ms: i64,
    ) -> Result<(), DocumentError> {
        collections::remove(self, published, holder, for_ms).await
    }

    async fn outbox_backlog(&self) -> Result<u64, DocumentError> {
        collections::backlog(self).await
    }

    async fn inbox_prune(&self, before_ms: i64) -> Result<u64, DocumentError> {
        collections::prune_inbox(self, before_ms).await
    }
}

struct MongoTransaction {
    database: Database,
    session: ClientSession,
}

#[async_trait]
impl DocumentTransaction for MongoTransaction {
    async fn run(&mut self, op: Op) -> Result<Output, DocumentError> {
        execute(&self.database, Some(&mut self.session), op).await
    }

    async fn stage(&mut self, message: OutgoingMessage) -> Result<String, DocumentError> {
        collections::stage(self, message).await
    }

    async fn first_time(
        &mut self,
        consumer: &str,
        message_id: &str,
    ) -> Result<bool, DocumentError> {
        collections::first_time(self, consumer, message_id).await
    }

    async fn commit(mut self: Box<Self>) -> Result<(), DocumentError> {
        self.session.commit_transaction().await.map_err(map_error)
    }

    async fn abort(mut self: Box<Self>) -> Result<(), DocumentError> {
        self.session.abort_transaction().await.map_err(map_error)
    }
}

/// JSON to BSON: integers as Int32 when they fit, else Int64; other numbers as doubles.
pub(crate) fn to_bson(value: &Value) -> Bson {
    match value {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => match i32::try_from(i) {
                Ok(small) => Bson::Int32(small),
                Err(_) => Bson::Int64(i),
            },
            None => Bson::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Bson::String(s.clone()),
        Value::Array(items) => Bson::Array(items.iter().map(to_bson).collect()),
        Value::Object(fields) => Bson::Document(to_document(fields)),
    }
}

fn to_document(fields: &Map<String, Value>) -> Document {
    fields
        .iter()
        .map(|(k, v)| (k.clone(), to_bson(v)))
        .collect()
}

fn value_document(value: &Value) -> Document {
    match value {
        Value::Object(fields) => to_document(fields),
        _ => Document::new(),
    }
}

/// BSON to JSON (relaxed extended JSON for types JSON lacks, e.g. `{"$oid": ...}`).
pub(crate) fn to_json(document: Document) -> Value {
    Bson::Document(document).into_relaxed_extjson()
}

async fn execute(
    database: &Database,
    mut session: Option<&mut ClientSession>,
    op: Op,
) -> Result<Output, DocumentError> {
    let collection: Collection<Document> = database.collection(op.collection());
    match op {
        Op::Insert { documents, .. } => {
            let ids: Vec<Value> = documents
                .iter()
                .map(|d| d.get("_id").cloned().unwrap_or(Value::Null))
                .collect();
            let documents: Vec<Document> = documents.iter().map(to_document).collect();
            let result = match session {
                Some(s) => {
                    collection
                        .insert_many(documents)
                        .ordered(true)
                        .session(s)
                        .await
                }
                None => collection.insert_many(documents).ordered(true).await,
            };
            result.map_err(map_error)?;
            Ok(Output::Ids(ids))
        }
        Op::Find { filter, spec, .. } => {
            // Raw documents, so that the result's size is known as it arrives: a find that would
            // hold more than MAX_RESULT_BYTES in the host stops with `too-large`.
            let raw: Collection<RawDocumentBuf> = collection.clone_with_type();
            let mut find = raw.find(value_document(&filter.raw));
            if let Some((raw, _)) = &spec.sort {
                find = find.sort(value_document(raw));
            }
            if spec.skip > 0 {
                find = find.skip(spec.skip);
            }
            if let Some(limit) = spec.limit {
                find = find.limit(i64::try_from(limit).unwrap_or(i64::MAX));
            }
            if let Some((raw, _)) = &spec.projection {
                find = find.projection(value_document(raw));
            }
            let mut documents = Vec::new();
            let mut bytes = 0usize;
            let mut take = |document: RawDocumentBuf| -> Result<(), DocumentError> {
                bytes += document.as_bytes().len();
                if bytes > MAX_RESULT_BYTES {
                    return Err(DocumentError::TooLarge(format!(
                        "the result is over {} MiB: narrow the filter, add a limit or a projection",
                        MAX_RESULT_BYTES >> 20
                    )));
                }
                let document = document
                    .to_document()
                    .map_err(|e| DocumentError::Other(format!("cannot read a document: {e}")))?;
                documents.push(to_json(document));
                Ok(())
            };
            match session.as_deref_mut() {
                Some(s) => {
                    let mut cursor = find.session(&mut *s).await.map_err(map_error)?;
                    while let Some(document) =
                        cursor.next(s).await.transpose().map_err(map_error)?
                    {
                        take(document)?;
                    }
                }
                None => {
                    let mut cursor = find.await.map_err(map_error)?;
                    while let Some(document) = cursor.try_next().await.map_err(map_error)? {
                        take(document)?;
                    }
                }
            }
            Ok(Output::Documents(documents))
        }
        Op::Count { filter, .. } => {
            let count = collection.count_documents(value_document(&filter.raw));
            let n = match session {
                Some(s) => count.session(s).await,
                None => count.await,
            }
            .map_err(map_error)?;
            Ok(Output::Count(n))
        }
        Op::Update {
            filter,
            update,
            upsert,
            many,
            ..
        } => {
            let mut update_doc = value_document(&update.raw);
            if upsert && filter.pinned_id().is_none() {
                add_id_on_insert(&mut update_doc);
            }
            let filter = value_document(&filter.raw);
            let result = if many {
                let action = collection.update_many(filter, update_doc).upsert(upsert);
                match session {
                    Some(s) => action.session(s).await,
                    None => action.await,
                }
            } else {
                let action = collection.update_one(filter, update_doc).upsert(upsert);
                match session {
                    Some(s) => action.session(s).await,
                    None => action.await,
                }
            }
            .map_err(map_error)?;
            Ok(Output::Updated(UpdateOutcome {
                matched: result.matched_count,
                modified: result.modified_count,
                upserted_id: result.upserted_id.map(Bson::into_relaxed_extjson),
            }))
        }
        Op::Replace {
            filter,
            mut replacement,
            upsert,
            ..
        } => {
            if upsert && !replacement.contains_key("_id") && filter.pinned_id().is_none() {
                replacement.insert("_id".into(), Value::String(super::values::new_object_id()));
            }
            let action = collection
                .replace_one(value_document(&filter.raw), to_document(&replacement))
                .upsert(upsert);
            let result = match session {
                Some(s) => action.session(s).await,
                None => action.await,
            }
            .map_err(map_error)?;
            Ok(Output::Updated(UpdateOutcome {
                matched: result.matched_count,
                modified: result.modified_count,
                upserted_id: result.upserted_id.map(Bson::into_relaxed_extjson),
            }))
        }
        Op::FindOneAndUpdate {
            filter,
            update,
            sort,
            projection,
            upsert,
            return_after,
            ..
        } => {
            let mut update_doc = value_document(&update.raw);
            if upsert && filter.pinned_id().is_none() {
                add_id_on_insert(&mut update_doc);
            }
            let mut action = collection
                .find_one_and_update(value_document(&filter.raw), update_doc)
                .upsert(upsert)
                .return_document(if return_after {
                    ReturnDocument::After
                } else {
                    ReturnDocument::Before
                });
            if let Some((raw, _)) = &sort {
                action = action.sort(value_document(raw));
            }
            if let Some((raw, _)) = &projection {
                action = action.projection(value_document(raw));
            }
            let found = match session {
                Some(s) => action.session(s).await,
                None => action.await,
            }
            .map_err(map_error)?;
            Ok(Output::Document(found.map(to_json)))
        }
        Op::Delete { filter, many, .. } => {
            let filter = value_document(&filter.raw);
            let result = if many {
                let action = collection.delete_many(filter);
                match session {
                    Some(s) => action.session(s).await,
                    None => action.await,
                }
            } else {
                let action = collection.delete_one(filter);
                match session {
                    Some(s) => action.session(s).await,
                    None => action.await,
                }
            }
            .map_err(map_error)?;
            Ok(Output::Count(result.deleted_count))
        }
    }
}

/// An upserted document gets an ObjectId-style string `_id` from moa, as on the embedded store,
/// unless the update sets one itself.
fn add_id_on_insert(update: &mut Document) {
    let on_insert = update
        .entry("$setOnInsert".to_string())
        .or_insert_with(|| Bson::Document(Document::new()));
    if let Bson::Document(fields) = on_insert
        && !fields.contains_key("_id")
    {
        fields.insert("_id", Bson::String(super::values::new_object_id()));
    }
}

/// The server's error code, wherever the driver put it.
fn error_code(error: &MongoError) -> Option<i32> {
    match error.kind.as_ref() {
        ErrorKind::Command(command) => Some(command.code),
        ErrorKind::Write(WriteFailure::WriteError(write)) => Some(write.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(concern)) => Some(concern.code),
        ErrorKind::InsertMany(insert) => insert
            .write_errors
            .as_ref()
            .and_then(|errors| errors.first())
            .map(|e| e.code),
        _ => None,
    }
}

/// Maps a driver error to the typed error the component sees.
pub fn map_error(error: MongoError) -> DocumentError {
    let code = error_code(&error);
    // The server's own message (the driver's Display adds the raw response bytes).
    let message = match error.kind.as_ref() {
        ErrorKind::Command(command) => format!("{} (code {})", command.message, command.code),
        ErrorKind::Write(WriteFailure::WriteError(write)) => {
            format!("{} (code {})", write.message, write.code)
        }
        ErrorKind::InsertMany(insert) => insert
            .write_errors
            .as_ref()
            .and_then(|errors| errors.first())
            .map_or_else(
                || error.to_string(),
                |e| format!("{} (code {})", e.message, e.code),
            ),
        _ => error.to_string(),
    };
    match code {
        Some(11000) => return DocumentError::DuplicateKey(message),
        Some(112) => return DocumentError::WriteConflict(message),
        Some(10334 | 17419 | 17420 | 2 | 9 | 52 | 14) if message.contains("too large") => {
            return DocumentError::TooLarge(message);
        }
        Some(251) => return DocumentError::TransactionClosed(message),
        _ => {}
    }
    if error.contains_label("TransientTransactionError") {
        return DocumentError::WriteConflict(message);
    }
    match error.kind.as_ref() {
        ErrorKind::ServerSelection { .. }
        | ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. } => DocumentError::Unavailable(message),
        ErrorKind::Transaction { .. } => DocumentError::TransactionClosed(message),
        _ => DocumentError::Other(message),
    }
}
