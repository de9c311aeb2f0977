//! The operations a document backend runs, parsed and checked once from the component's JSON (so a
//! bad filter, update, sort or projection is the same typed error on every backend), and their results.

use super::query::Filter;
use super::shape::{Projection, Sort};
use super::update::Update;
use serde_json::{Map, Value};

/// The largest document a store accepts (MongoDB's BSON limit).
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;

/// Collections whose names start with this prefix belong to the host (outbox, inbox, relay lease).
pub const INTERNAL_PREFIX: &str = "_moa_";

/// Why a document operation failed (the WIT `error` variant, host side).
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum DocumentError {
    #[error("access denied: {0}")]
    AccessDenied(String),
    #[error("invalid filter: {0}")]
    InvalidFilter(String),
    #[error("invalid update: {0}")]
    InvalidUpdate(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("duplicate key: {0}")]
    DuplicateKey(String),
    #[error("write conflict: {0}")]
    WriteConflict(String),
    #[error("too large: {0}")]
    TooLarge(String),
    #[error("transaction closed: {0}")]
    TransactionClosed(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Other(String),
}

/// A filter: the component's JSON (sent as it is to MongoDB) and its parsed form.
#[derive(Debug, Clone)]
pub struct Query {
    pub raw: Value,
    pub parsed: Filter,
}

impl Query {
    pub fn parse(text: &str) -> Result<Self, DocumentError> {
        let raw: Value = parse_json(text).map_err(DocumentError::InvalidFilter)?;
        let parsed = Filter::parse(&raw).map_err(DocumentError::InvalidFilter)?;
        Ok(Query { raw, parsed })
    }

    pub fn from_value(raw: Value) -> Result<Self, DocumentError> {
        let parsed = Filter::parse(&raw).map_err(DocumentError::InvalidFilter)?;
        Ok(Query { raw, parsed })
    }

    /// The `_id` the filter pins, when it has a top-level `_id` equality.
    pub fn pinned_id(&self) -> Option<&Value> {
        self.parsed
            .equalities()
            .into_iter()
            .find(|(path, _)| *path == "_id")
            .map(|(_, value)| value)
    }
}

/// An update: the component's JSON and its parsed form.
#[derive(Debug, Clone)]
pub struct UpdateSpec {
    pub raw: Value,
    pub parsed: Update,
}

impl UpdateSpec {
    pub fn parse(text: &str) -> Result<Self, DocumentError> {
        let raw: Value = parse_json(text).map_err(DocumentError::InvalidUpdate)?;
        Self::from_value(raw)
    }

    pub fn from_value(raw: Value) -> Result<Self, DocumentError> {
        let parsed = Update::parse(&raw).map_err(DocumentError::InvalidUpdate)?;
        Ok(UpdateSpec { raw, parsed })
    }
}

/// Sort, skip, limit and projection of a find.
#[derive(Debug, Clone, Default)]
pub struct FindSpec {
    pub sort: Option<(Value, Sort)>,
    pub skip: u64,
    pub limit: Option<u64>,
    pub projection: Option<(Value, Projection)>,
}

impl FindSpec {
    pub fn parse(
        sort: Option<&str>,
        skip: Option<u64>,
        limit: Option<u64>,
        projection: Option<&str>,
    ) -> Result<Self, DocumentError> {
        let sort = sort
            .map(|text| {
                let raw = parse_json(text).map_err(DocumentError::InvalidArgument)?;
                let parsed = Sort::parse(&raw).map_err(DocumentError::InvalidArgument)?;
                Ok::<_, DocumentError>((raw, parsed))
            })
            .transpose()?;
        let projection = projection
            .map(|text| {
                let raw = parse_json(text).map_err(DocumentError::InvalidArgument)?;
                let parsed = Projection::parse(&raw).map_err(DocumentError::InvalidArgument)?;
                Ok::<_, DocumentError>((raw, parsed))
            })
            .transpose()?;
        Ok(FindSpec {
            sort,
            skip: skip.unwrap_or(0),
            limit: limit.filter(|l| *l > 0),
            projection,
        })
    }

    pub fn sorted(raw: Value) -> Result<Self, DocumentError> {
        let parsed = Sort::parse(&raw).map_err(DocumentError::InvalidArgument)?;
        Ok(FindSpec {
            sort: Some((raw, parsed)),
            ..FindSpec::default()
        })
    }
}

/// One operation on one collection.
#[derive(Debug, Clone)]
pub enum Op {
    Insert {
        collection: String,
        documents: Vec<Map<String, Value>>,
    },
    Find {
        collection: String,
        filter: Query,
        spec: FindSpec,
    },
    Count {
        collection: String,
        filter: Query,
    },
    Update {
        collection: String,
        filter: Query,
        update: UpdateSpec,
        upsert: bool,
        many: bool,
    },
    Replace {
        collection: String,
        filter: Query,
        replacement: Map<String, Value>,
        upsert: bool,
    },
    FindOneAndUpdate {
        collection: String,
        filter: Query,
        update: UpdateSpec,
        sort: Option<(Value, Sort)>,
        projection: Option<(Value, Projection)>,
        upsert: bool,
        return_after: bool,
    },
    Delete {
        collection: String,
        filter: Query,
        many: bool,
    },
}

impl Op {
    pub fn collection(&self) -> &str {
        match self {
            Op::Insert { collection, .. }
            | Op::Find { collection, .. }
            | Op::Count { collection, .. }
            | Op::Update { collection, .. }
            | Op::Replace { collection, .. }
            | Op::FindOneAndUpdate { collection, .. }
            | Op::Delete { collection, .. } => collection,
        }
    }

    pub fn writes(&self) -> bool {
        !matches!(self, Op::Find { .. } | Op::Count { .. })
    }
}

/// What an operation returns.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Inserted `_id`s, in order.
    Ids(Vec<Value>),
    Documents(Vec<Value>),
    Count(u64),
    Updated(UpdateOutcome),
    Document(Option<Value>),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpdateOutcome {
    pub matched: u64,
    pub modified: u64,
    pub upserted_id: Option<Value>,
}

/// Parses JSON text, with the parser's message.
pub fn parse_json(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))
}

/// Parses a document for insert or replace: a JSON object, within the size limit, with a valid
/// `_id` (added when `add_id` and missing).
pub fn parse_document(text: &str, add_id: bool) -> Result<Map<String, Value>, DocumentError> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(DocumentError::TooLarge(format!(
            "a document of {} bytes is over the {MAX_DOCUMENT_BYTES}-byte limit",
            text.len()
        )));
    }
    let value = parse_json(text).map_err(DocumentError::InvalidArgument)?;
    let Value::Object(mut document) = value else {
        return Err(DocumentError::InvalidArgument(
            "a document is a JSON object".into(),
        ));
    };
    check_field_names(&document)?;
    match document.get("_id") {
        Some(id) => {
            super::values::id_key(id).map_err(DocumentError::InvalidArgument)?;
        }
        None if add_id => {
            document.insert("_id".into(), Value::String(super::values::new_object_id()));
        }
        None => {}
    }
    Ok(document)
}

/// Field names may not start with `$` or contain `.` (MongoDB would refuse or misread them).
fn check_field_names(fields: &Map<String, Value>) -> Result<(), DocumentError> {
    for (name, value) in fields {
        if name.starts_with('$') || name.contains('.') || name.contains('\0') {
            return Err(DocumentError::InvalidArgument(format!(
                "field name `{name}`: names may not start with `$` or contain `.`"
            )));
        }
        check_nested(value)?;
    }
    Ok(())
}

fn check_nested(value: &Value) -> Result<(), DocumentError> {
    match value {
        Value::Object(fields) => check_field_names(fields),
        Value::Array(items) => items.iter().try_for_each(check_nested),
        _ => Ok(()),
    }
}

/// A collection name components may use: 1-120 letters, digits, `_`, `-`, `.`; not the host's.
pub fn check_collection(name: &str) -> Result<(), DocumentError> {
    if name.starts_with(INTERNAL_PREFIX) {
        return Err(DocumentError::AccessDenied(format!(
            "collection `{name}`: names starting with `{INTERNAL_PREFIX}` belong to the host"
        )));
    }
    check_collection_name(name)
}

/// The name rule itself (also for the host's own collections).
pub fn check_collection_name(name: &str) -> Result<(), DocumentError> {
    let valid = !name.is_empty()
        && name.len() <= 120
        && !name.starts_with("system.")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if valid {
        Ok(())
    } else {
        Err(DocumentError::InvalidArgument(format!(
            "collection `{name}`: use 1-120 letters, digits, `_`, `-` and `.` (not `system.`)"
        )))
    }
}
