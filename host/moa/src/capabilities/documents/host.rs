//! The generated `moa:documents` host traits: `open` checks the grant, a `store` resource runs each
//! call atomically on its backend, a `transaction` resource holds an open backend transaction.

use super::bindings::moa::documents::documents::{self, Message};
use super::bindings::moa::documents::types::{
    self, Error, FindAndModifyOptions, FindOptions, ReturnDocument, UpdateResult,
};
use super::ops::{self, DocumentError, FindSpec, Op, Output, Query, UpdateSpec, parse_document};
use super::{DocumentStore, DocumentTransaction, DocumentsGrant};
use crate::capabilities::messaging::{OutgoingMessage, Refusal, check_outgoing};
use crate::invocation::Invocation;
use serde_json::Value;
use std::sync::Arc;
use wasmtime::component::{HasData, Resource, ResourceTable};

/// The value behind a `store` handle.
pub struct OpenStore {
    store: Arc<DocumentStore>,
}

/// The value behind a `transaction` handle.
pub struct OpenTransaction {
    store: Arc<DocumentStore>,
    /// `None` once committed or aborted (or, when lent, until first used).
    tx: Option<Box<dyn DocumentTransaction>>,
    /// A lent transaction that begins on its first operation.
    begin_on_use: bool,
    staged: usize,
    /// Marks the store as having an open transaction in this instance until the end.
    mark: Option<OpenMark>,
}

/// The stores an instance has a transaction open on, for the re-entrant write check: a write
/// through the store while its own transaction is open is a mistake (on the embedded store it
/// would also wait for nothing it could ever get before optimistic transactions).
#[derive(Default)]
pub struct OpenTransactions(std::sync::Mutex<Vec<String>>);

impl OpenTransactions {
    fn mark(self: &Arc<Self>, label: &str) -> OpenMark {
        if let Ok(mut open) = self.0.lock() {
            open.push(label.to_string());
        }
        OpenMark {
            open: self.clone(),
            label: label.to_string(),
        }
    }

    fn is_open(&self, label: &str) -> bool {
        self.0
            .lock()
            .is_ok_and(|open| open.iter().any(|l| l == label))
    }
}

/// One open transaction's entry in [`OpenTransactions`]; removed when dropped.
struct OpenMark {
    open: Arc<OpenTransactions>,
    label: String,
}

impl Drop for OpenMark {
    fn drop(&mut self) {
        if let Ok(mut open) = self.open.0.lock()
            && let Some(at) = open.iter().position(|l| *l == self.label)
        {
            open.swap_remove(at);
        }
    }
}

/// What a component left of a lent transaction.
pub enum Lent {
    /// It used the transaction: the host commits (or aborts) it.
    Open(Box<dyn DocumentTransaction>),
    /// It never touched it (nothing began).
    Unused,
    /// It committed or aborted it itself.
    Ended,
}

impl OpenTransaction {
    /// A transaction the host lends to a component (a job chunk's). It begins on the component's
    /// first operation, so work before its first read or write (an embedding call, say) does not
    /// hold a snapshot (or, on MongoDB, a server-side transaction). The host takes it back with
    /// [`OpenTransaction::finish`].
    pub fn lend(store: Arc<DocumentStore>) -> Self {
        OpenTransaction {
            store,
            tx: None,
            begin_on_use: true,
            staged: 0,
            mark: None,
        }
    }

    /// What is left of the lent transaction, and the store whose outbox relay to wake after
    /// committing, when outbox messages were staged.
    pub fn finish(self) -> (Lent, Option<Arc<DocumentStore>>) {
        let wake = (self.staged > 0).then(|| self.store.clone());
        let lent = match (self.tx, self.begin_on_use) {
            (Some(tx), _) => Lent::Open(tx),
            (None, true) => Lent::Unused,
            (None, false) => Lent::Ended,
        };
        (lent, wake)
    }

    /// The open transaction, begun now if it is lent and unused.
    async fn active(&mut self) -> Result<&mut Box<dyn DocumentTransaction>, DocumentError> {
        if self.tx.is_none() && self.begin_on_use {
            self.tx = Some(self.store.backend.begin().await?);
            self.begin_on_use = false;
        }
        self.tx.as_mut().ok_or_else(closed)
    }

    /// Takes the transaction to end it (a lent one that was never used ends as nothing).
    fn take(&mut self) -> Option<Box<dyn DocumentTransaction>> {
        self.begin_on_use = false;
        self.mark = None;
        self.tx.take()
    }
}

/// Marker type naming this capability in the linker.
pub struct Documents;

impl HasData for Documents {
    type Data<'a> = DocumentsView<'a>;
}

/// What the host traits see of an instance.
pub struct DocumentsView<'a> {
    pub(super) grant: &'a DocumentsGrant,
    pub(super) table: &'a mut ResourceTable,
    pub(super) invocation: &'a Invocation,
}

impl From<DocumentError> for Error {
    fn from(error: DocumentError) -> Self {
        match error {
            DocumentError::AccessDenied(m) => Error::AccessDenied(m),
            DocumentError::InvalidFilter(m) => Error::InvalidFilter(m),
            DocumentError::InvalidUpdate(m) => Error::InvalidUpdate(m),
            DocumentError::InvalidArgument(m) => Error::InvalidArgument(m),
            DocumentError::DuplicateKey(m) => Error::DuplicateKey(m),
            DocumentError::WriteConflict(m) => Error::WriteConflict(m),
            DocumentError::TooLarge(m) => Error::TooLarge(m),
            DocumentError::TransactionClosed(m) => Error::TransactionClosed(m),
            DocumentError::Unavailable(m) => Error::Unavailable(m),
            DocumentError::Other(m) => Error::Other(m),
        }
    }
}

/// Where an operation runs: on the store (atomic on its own) or inside an open transaction.
enum Target<'a> {
    Store(&'a Arc<DocumentStore>),
    Transaction(&'a mut OpenTransaction),
}

impl Target<'_> {
    async fn run(self, op: Op) -> Result<Output, DocumentError> {
        match self {
            Target::Store(store) => store.backend.run(op).await,
            Target::Transaction(open) => open.active().await?.run(op).await,
        }
    }
}

fn closed() -> DocumentError {
    DocumentError::TransactionClosed("the transaction was committed or aborted".into())
}

fn json_text(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

fn find_spec(options: &FindOptions) -> Result<FindSpec, DocumentError> {
    FindSpec::parse(
        options.sort.as_deref(),
        options.skip,
        options.limit,
        options.projection.as_deref(),
    )
}

fn update_result(output: Output) -> UpdateResult {
    match output {
        Output::Updated(outcome) => UpdateResult {
            matched: outcome.matched,
            modified: outcome.modified,
            upserted_id: outcome.upserted_id.as_ref().map(json_text),
        },
        _ => UpdateResult {
            matched: 0,
            modified: 0,
            upserted_id: None,
        },
    }
}

// One function per operation, shared by `store` and `transaction`.

async fn insert_many(
    target: Target<'_>,
    collection: String,
    documents: Vec<String>,
) -> Result<Vec<String>, DocumentError> {
    ops::check_collection(&collection)?;
    let documents = documents
        .iter()
        .map(|text| parse_document(text, true))
        .collect::<Result<Vec<_>, _>>()?;
    match target
        .run(Op::Insert {
            collection,
            documents,
        })
        .await?
    {
        Output::Ids(ids) => Ok(ids.iter().map(json_text).collect()),
        _ => Ok(Vec::new()),
    }
}

async fn find(
    target: Target<'_>,
    collection: String,
    filter: String,
    options: FindOptions,
) -> Result<Vec<String>, DocumentError> {
    ops::check_collection(&collection)?;
    let op = Op::Find {
        collection,
        filter: Query::parse(&filter)?,
        spec: find_spec(&options)?,
    };
    match target.run(op).await? {
        Output::Documents(documents) => Ok(documents.iter().map(json_text).collect()),
        _ => Ok(Vec::new()),
    }
}

async fn count(
    target: Target<'_>,
    collection: String,
    filter: String,
) -> Result<u64, DocumentError> {
    ops::check_collection(&collection)?;
    let op = Op::Count {
        collection,
        filter: Query::parse(&filter)?,
    };
    match target.run(op).await? {
        Output::Count(n) => Ok(n),
        _ => Ok(0),
    }
}

async fn update(
    target: Target<'_>,
    collection: String,
    filter: String,
    update: String,
    upsert: bool,
    many: bool,
) -> Result<UpdateResult, DocumentError> {
    ops::check_collection(&collection)?;
    let op = Op::Update {
        collection,
        filter: Query::parse(&filter)?,
        update: UpdateSpec::parse(&update)?,
        upsert,
        many,
    };
    Ok(update_result(target.run(op).await?))
}

async fn replace_one(
    target: Target<'_>,
    collection: String,
    filter: String,
    replacement: String,
    upsert: bool,
) -> Result<UpdateResult, DocumentError> {
    ops::check_collection(&collection)?;
    let op = Op::Replace {
        collection,
        filter: Query::parse(&filter)?,
        replacement: parse_document(&replacement, false)?,
        upsert,
    };
    Ok(update_result(target.run(op).await?))
}

async fn find_one_and_update(
    target: Target<'_>,
    collection: String,
    filter: String,
    update: String,
    options: FindAndModifyOptions,
) -> Result<Option<String>, DocumentError> {
    ops::check_collection(&collection)?;
    let spec = FindSpec::parse(
        options.sort.as_deref(),
        None,
        None,
        options.projection.as_deref(),
    )?;
    let op = Op::FindOneAndUpdate {
        collection,
        filter: Query::parse(&filter)?,
        update: UpdateSpec::parse(&update)?,
        sort: spec.sort,
        projection: spec.projection,
        upsert: options.upsert,
        return_after: matches!(options.return_document, ReturnDocument::After),
    };
    match target.run(op).await? {
        Output::Document(document) => Ok(document.as_ref().map(json_text)),
        _ => Ok(None),
    }
}

async fn delete(
    target: Target<'_>,
    collection: String,
    filter: String,
    many: bool,
) -> Result<u64, DocumentError> {
    ops::check_collection(&collection)?;
    let op = Op::Delete {
        collection,
        filter: Query::parse(&filter)?,
        many,
    };
    match target.run(op).await? {
        Output::Count(n) => Ok(n),
        _ => Ok(0),
    }
}

impl DocumentsView<'_> {
    fn store(&self, handle: &Resource<OpenStore>) -> wasmtime::Result<Arc<DocumentStore>> {
        Ok(self.table.get(handle)?.store.clone())
    }

    /// The store for a write outside a transaction; refused at once while this instance has a
    /// transaction open on it (not transient: running it again cannot help).
    fn store_to_write(
        &self,
        handle: &Resource<OpenStore>,
    ) -> wasmtime::Result<Result<Arc<DocumentStore>, DocumentError>> {
        let store = self.store(handle)?;
        if self.grant.open.is_open(&store.label) {
            return Ok(Err(DocumentError::Other(format!(
                "re-entrant write: this call writes to document store `{}` outside the transaction it has open on that store; write through the transaction (tx.insert_one, tx.update_one, ...) or commit it first",
                store.label
            ))));
        }
        Ok(Ok(store))
    }

    /// Checks an outbox message as `moa:messaging/producer` checks a publish, and adds the
    /// invocation's trace context.
    fn outgoing(&self, message: Message) -> Result<OutgoingMessage, DocumentError> {
        let outgoing = OutgoingMessage {
            topic: message.topic,
            key: message.key,
            payload: message.payload,
            headers: message
                .headers
                .into_iter()
                .map(|h| (h.name, h.value))
                .collect(),
        };
        check_outgoing(&self.grant.topics, self.invocation, outgoing).map_err(|refusal| {
            match refusal {
                Refusal::InvalidTopic(m) => DocumentError::InvalidArgument(m),
                Refusal::AccessDenied(m) => DocumentError::AccessDenied(m),
            }
        })
    }
}

type Answer<T> = wasmtime::Result<Result<T, Error>>;

/// The guest's answer; a transient failure (write conflict, store unavailable) is noted on the
/// invocation, so an event delivery that fails because of it does not spend an attempt, and a
/// success clears the note.
fn answer<T>(invocation: &Invocation, result: Result<T, DocumentError>) -> Answer<T> {
    match &result {
        Err(DocumentError::WriteConflict(_) | DocumentError::Unavailable(_)) => {
            invocation.transient.record()
        }
        Ok(_) => invocation.transient.resolve(),
        Err(_) => {}
    }
    Ok(result.map_err(Error::from))
}

impl types::Host for DocumentsView<'_> {}
impl documents::Host for DocumentsView<'_> {}

impl documents::HostStore for DocumentsView<'_> {
    async fn open(&mut self, label: String) -> Answer<Resource<OpenStore>> {
        let store = match self.grant.store(&label) {
            Ok(store) => store,
            Err(error) => return answer(self.invocation, Err(error)),
        };
        Ok(Ok(self.table.push(OpenStore { store })?))
    }

    async fn insert_one(
        &mut self,
        handle: Resource<OpenStore>,
        collection: String,
        document: String,
    ) -> Answer<String> {
        let store = match self.store_to_write(&handle)? {
            Ok(store) => store,
            Err(error) => return answer(self.invocation, Err(error)),
        };
        let ids = insert_many(Target::Store(&store), collection, vec![document]).await;
        answer(
            self.invocation,
            ids.map(|ids| ids.into_iter().next().unwrap_or_default()),
        )
    }

    async fn insert_many(
        &mut self,
        handle: Resource<OpenStore>,
        collection: String,
        documents: Vec<String>,
    ) -> Answer<Vec<String>> {
        let store = match self.store_to_write(&handle)? {
            Ok(store) => store,
            Err(error) => return answer(self.invocation, Err(error)),
        };
        answer(
            self.invocation,
            insert_many(Target::Store(&store), collection, documents).await,
        )
    }

    async fn find(
        &mut self,
        handle: Resource<OpenStore>,
        collection: String,
        filter: String,
        options: FindOptions,
    ) -> Answer<Vec<String>> {
        let store = self.store(&handle)?;
        answer(
            self.invocation,
            find(Target::Store(&store), collection, filter, options).await,
        )
    }

    async fn find_one(
        &mut self,
        handle: Resource<OpenStore>,
        collection: String,
        filter: String,
        mut options: FindOptions,
    ) -> Answer<Option<String>> {
        let store = self.store(&handle)?;
        options.limit = Some(1);
        answer(
            self.invocation,
            find(Target::Store(&store), collection, filter, options)
                .await
                .map(|d| d.into_iter().next()),
        )
    }

    async fn count(
        &mut self,
        handle: Resource<OpenStore>,
        collection: String,
        filter: String,
    ) -> Answer<u64> {
        let store = self.store(&handle)?;
        answer(
            self.invocation,
            count(Target::Store(&store), collection, filter).await,
        )
    }

    async fn update_one(
        &mut self,
        handle: Resource<OpenStore>,
        collection: String,
        filter: String,
        change: String,
        upsert: bool,
    ) -> Answer<UpdateResult> {
        let store = match self.store_to_write(&handle)? {
            Ok(store) => store,
            Err(error) => return answer(self.invocation, Err(error)),
        };
        answer(
            self.invocation,
            update(
                Target::Store(&store),
                collection,
                filter,
                change,
                upsert,
                false,
            )
            .await,
        )
    }

    async fn update_many(
        &mut self,
        handle: Resource<OpenStore>,
        collection: String,
        filter: String,
        change: String,
        upsert: bool,
    ) -> Answer<UpdateResult> {
        let store = match self.store_to_write(&handle)? {
            Ok(store) => store,
            Err(error) => return answer(self.invocation, Err(error)),
        };
        answer(
            self.invocation,
            update(
                Target::Store(&store),
                collection,
                filter,
                change,
                upsert,
                true,
            )
            .await,
        )
    }

    async fn replace_one(
        &mut self,
        handle: Resource<OpenStore>,
        collection: String,
        filter: String,
        replacement: String,
        upsert: bool,
    ) -> Answer<UpdateResult> {
        let store = match self.store_to_write(&handle)? {
            Ok(store) => store,
            Err(error) => return answer(self.invocation, Err(error)),
        };
        answer(
            self.invocation,
            replace_one(
                Target::Store(&store),
                collection,
                filter,
                replacement,
                upsert,
            )
            .await,
        )
    }

    async fn find_one_and_update(
        &mut self,
        handle: Resource<OpenStore>,
        collection: String,
        filter: String,
        change: String,
        options: FindAndModifyOptions,
    ) -> Answer<Option<String>> {
        let store = match self.store_to_write(&handle)? {
            Ok(store) => store,
            Err(error) => return answer(self.invocation, Err(error)),
        };
        answer(
            self.invocation,
            find_one_and_update(Target::Store(&store), collection, filter, change, options).await,
        )
    }

    async fn delete_one(
        &mut self,
        handle: Resource<OpenStore>,
        collection: String,
        filter: String,
    ) -> Answer<u64> {
        let store = match self.store_to_write(&handle)? {
            Ok(store) => store,
            Err(error) => return answer(self.invocation, Err(error)),
        };
        answer(
            self.invocation,
            delete(Target::Store(&store), collection, filter, false).await,
        )
    }

    async fn delete_many(
        &mut self,
        handle: Resource<OpenStore>,
        collection: String,
        filter: String,
    ) -> Answer<u64> {
        let store = match self.store_to_write(&handle)? {
            Ok(store) => store,
            Err(error) => return answer(self.invocation, Err(error)),
        };
        answer(
            self.invocation,
            delete(Target::Store(&store), collection, filter, true).await,
        )
    }

    async fn begin(&mut self, handle: Resource<OpenStore>) -> Answer<Resource<OpenTransaction>> {
        let store = self.store(&handle)?;
        let tx = match store.backend.begin().await {
            Ok(tx) => tx,
            Err(error) => return answer(self.invocation, Err(error)),
        };
        let mark = Some(self.grant.open.mark(&store.label));
        Ok(Ok(self.table.push(OpenTransaction {
            store,
            tx: Some(tx),
            begin_on_use: false,
            staged: 0,
            mark,
        })?))
    }

    async fn drop(&mut self, handle: Resource<OpenStore>) -> wasmtime::Result<()> {
        self.table.delete(handle)?;
        Ok(())
    }
}

impl documents::HostTransaction for DocumentsView<'_> {
    async fn insert_one(
        &mut self,
        handle: Resource<OpenTransaction>,
        collection: String,
        document: String,
    ) -> Answer<String> {
        let open = self.table.get_mut(&handle)?;
        let ids = insert_many(Target::Transaction(open), collection, vec![document]).await;
        answer(
            self.invocation,
            ids.map(|ids| ids.into_iter().next().unwrap_or_default()),
        )
    }

    async fn insert_many(
        &mut self,
        handle: Resource<OpenTransaction>,
        collection: String,
        documents: Vec<String>,
    ) -> Answer<Vec<String>> {
        let open = self.table.get_mut(&handle)?;
        answer(
            self.invocation,
            insert_many(Target::Transaction(open), collection, documents).await,
        )
    }

    async fn find(
        &mut self,
        handle: Resource<OpenTransaction>,
        collection: String,
        filter: String,
        options: FindOptions,
    ) -> Answer<Vec<String>> {
        let open = self.table.get_mut(&handle)?;
        answer(
            self.invocation,
            find(Target::Transaction(open), collection, filter, options).await,
        )
    }

    async fn find_one(
        &mut self,
        handle: Resource<OpenTransaction>,
        collection: String,
        filter: String,
        mut options: FindOptions,
    ) -> Answer<Option<String>> {
        let open = self.table.get_mut(&handle)?;
        options.limit = Some(1);
        answer(
            self.invocation,
            find(Target::Transaction(open), collection, filter, options)
                .await
                .map(|d| d.into_iter().next()),
        )
    }

    async fn count(
        &mut self,
        handle: Resource<OpenTransaction>,
        collection: String,
        filter: String,
    ) -> Answer<u64> {
        let open = self.table.get_mut(&handle)?;
        answer(
            self.invocation,
            count(Target::Transaction(open), collection, filter).await,
        )
    }

    async fn update_one(
        &mut self,
        handle: Resource<OpenTransaction>,
        collection: String,
        filter: String,
        change: String,
        upsert: bool,
    ) -> Answer<UpdateResult> {
        let open = self.table.get_mut(&handle)?;
        answer(
            self.invocation,
            update(
                Target::Transaction(open),
                collection,
                filter,
                change,
                upsert,
                false,
            )
            .await,
        )
    }

    async fn update_many(
        &mut self,
        handle: Resource<OpenTransaction>,
        collection: String,
        filter: String,
        change: String,
        upsert: bool,
    ) -> Answer<UpdateResult> {
        let open = self.table.get_mut(&handle)?;
        answer(
            self.invocation,
            update(
                Target::Transaction(open),
                collection,
                filter,
                change,
                upsert,
                true,
            )
            .await,
        )
    }

    async fn replace_one(
        &mut self,
        handle: Resource<OpenTransaction>,
        collection: String,
        filter: String,
        replacement: String,
        upsert: bool,
    ) -> Answer<UpdateResult> {
        let open = self.table.get_mut(&handle)?;
        answer(
            self.invocation,
            replace_one(
                Target::Transaction(open),
                collection,
                filter,
                replacement,
                upsert,
            )
            .await,
        )
    }

    async fn find_one_and_update(
        &mut self,
        handle: Resource<OpenTransaction>,
        collection: String,
        filter: String,
        change: String,
        options: FindAndModifyOptions,
    ) -> Answer<Option<String>> {
        let open = self.table.get_mut(&handle)?;
        answer(
            self.invocation,
            find_one_and_update(
                Target::Transaction(open),
                collection,
                filter,
                change,
                options,
            )
            .await,
        )
    }

    async fn delete_one(
        &mut self,
        handle: Resource<OpenTransaction>,
        collection: String,
        filter: String,
    ) -> Answer<u64> {
        let open = self.table.get_mut(&handle)?;
        answer(
            self.invocation,
            delete(Target::Transaction(open), collection, filter, false).await,
        )
    }

    async fn delete_many(
        &mut self,
        handle: Resource<OpenTransaction>,
        collection: String,
        filter: String,
    ) -> Answer<u64> {
        let open = self.table.get_mut(&handle)?;
        answer(
            self.invocation,
            delete(Target::Transaction(open), collection, filter, true).await,
        )
    }

    async fn publish(
        &mut self,
        handle: Resource<OpenTransaction>,
        message: Message,
    ) -> Answer<String> {
        let outgoing = match self.outgoing(message) {
            Ok(outgoing) => outgoing,
            Err(error) => return answer(self.invocation, Err(error)),
        };
        let open = self.table.get_mut(&handle)?;
        let tx = match open.active().await {
            Ok(tx) => tx,
            Err(error) => return answer(self.invocation, Err(error)),
        };
        let staged = tx.stage(outgoing).await;
        if staged.is_ok() {
            open.staged += 1;
        }
        answer(self.invocation, staged)
    }

    async fn first_time(
        &mut self,
        handle: Resource<OpenTransaction>,
        consumer: String,
        message_id: String,
    ) -> Answer<bool> {
        let open = self.table.get_mut(&handle)?;
        let tx = match open.active().await {
            Ok(tx) => tx,
            Err(error) => return answer(self.invocation, Err(error)),
        };
        answer(self.invocation, tx.first_time(&consumer, &message_id).await)
    }

    async fn commit(&mut self, handle: Resource<OpenTransaction>) -> Answer<()> {
        let open = self.table.get_mut(&handle)?;
        let Some(tx) = open.take() else {
            return answer(self.invocation, Err(closed()));
        };
        let result = tx.commit().await;
        if result.is_ok() && open.staged > 0 {
            open.store.outbox.committed();
        }
        answer(self.invocation, result)
    }

    async fn abort(&mut self, handle: Resource<OpenTransaction>) -> Answer<()> {
        let open = self.table.get_mut(&handle)?;
        let Some(tx) = open.take() else {
            return answer(self.invocation, Err(closed()));
        };
        answer(self.invocation, tx.abort().await)
    }

    async fn drop(&mut self, handle: Resource<OpenTransaction>) -> wasmtime::Result<()> {
        let open = self.table.delete(handle)?;
        if let Some(tx) = open.tx {
            // Dropped without commit: abort, as the WIT promises.
            let _ = tx.abort().await;
        }
        Ok(())
    }
}
