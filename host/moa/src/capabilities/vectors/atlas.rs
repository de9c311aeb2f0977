//! The Atlas backend: one MongoDB collection whose documents are `{_id: id, <path>: vector,
//! ...metadata}`, searched with `$vectorSearch` (the filter goes into the stage, so Atlas applies it
//! inside the search). Upserts of several items run in one transaction.
//!
//! The operator creates the Atlas Vector Search index (see docs/vectors.md for its definition);
//! moa checks that filters use only the fields the runtime config declares as filter fields.

use super::{
    IndexInfo, MAX_CANDIDATES, Metric, SearchRequest, VectorBackend, VectorError, VectorItem,
    VectorMatch, check_vector,
};
use crate::capabilities::documents::{DocumentError, mongo_error, to_bson, to_json};
use async_trait::async_trait;
use futures::TryStreamExt as _;
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::ClientOptions;
use mongodb::{Client, Collection};
use serde_json::{Map, Value};
use std::time::Duration;

/// `[vector_index.<label>]` with `type = "atlas"`, resolved.
#[derive(Debug, Clone)]
pub struct AtlasSettings {
    pub url: String,
    pub database: String,
    pub collection: String,
    pub index: String,
    pub path: String,
    pub dimensions: usize,
    pub metric: Metric,
    pub filter_fields: Vec<String>,
    pub timeout: Duration,
}

/// The field that carries a match's score out of the pipeline.
const SCORE_FIELD: &str = "_moa_score";

/// Builds the aggregation pipeline of a search: `$vectorSearch` (with `numCandidates` of 20 ×
/// limit unless asked, capped at 10,000, and the filter inside), the score, and the projection.
pub fn search_pipeline(settings: &AtlasSettings, request: &SearchRequest) -> Vec<Document> {
    let limit = request.limit as i64;
    let candidates = request
        .candidates
        .map(|c| c as i64)
        .unwrap_or(limit * 20)
        .clamp(limit, MAX_CANDIDATES as i64);
    let mut stage = doc! {
        "index": &settings.index,
        "path": &settings.path,
        "queryVector": request.vector.iter().map(|v| Bson::Double(f64::from(*v))).collect::<Vec<_>>(),
        "numCandidates": candidates,
        "limit": limit,
    };
    if let Some((raw, _)) = &request.filter
        && let Bson::Document(filter) = to_bson(raw)
        && !filter.is_empty()
    {
        stage.insert("filter", filter);
    }
    let projection = if request.include_metadata {
        doc! { &settings.path: 0 }
    } else {
        doc! { "_id": 1, SCORE_FIELD: 1 }
    };
    vec![
        doc! { "$vectorSearch": stage },
        doc! { "$set": { SCORE_FIELD: { "$meta": "vectorSearchScore" } } },
        doc! { "$project": projection },
    ]
}

/// Every field path a filter tests (operators and logic left out).
fn filter_paths(filter: &Value, out: &mut Vec<String>) {
    if let Value::Object(fields) = filter {
        for (key, value) in fields {
            match key.as_str() {
                "$and" | "$or" | "$nor" => {
                    if let Value::Array(items) = value {
                        items.iter().for_each(|f| filter_paths(f, out));
                    }
                }
                op if op.starts_with('$') => {}
                path => out.push(path.to_string()),
            }
        }
    }
}

/// Refuses a filter on a field the index does not declare as a filter field (Atlas would fail
/// the whole search).
pub fn check_filter_fields(settings: &AtlasSettings, filter: &Value) -> Result<(), VectorError> {
    let mut paths = Vec::new();
    filter_paths(filter, &mut paths);
    if let Some(missing) = paths
        .iter()
        .find(|p| !settings.filter_fields.iter().any(|f| f == *p))
    {
        return Err(VectorError::InvalidFilter(format!(
            "`{missing}` is not a filter field of Atlas index `{}` (it declares {:?}); add {{\"type\": \"filter\", \"path\": \"{missing}\"}} to the index definition and to filter_fields",
            settings.index, settings.filter_fields
        )));
    }
    Ok(())
}

/// An item as the document Atlas stores.
pub fn item_document(settings: &AtlasSettings, item: &VectorItem) -> Document {
    let mut document = Document::new();
    document.insert("_id", &item.id);
    for (key, value) in &item.metadata {
        document.insert(key.clone(), to_bson(value));
    }
    document.insert(
        settings.path.clone(),
        item.vector
            .iter()
            .map(|v| Bson::Double(f64::from(*v)))
            .collect::<Vec<_>>(),
    );
    document
}

/// The document back as an item (or a match's metadata): `_id` and the vector field taken out.
fn split_document(
    settings: &AtlasSettings,
    mut document: Document,
) -> (String, Vec<f32>, Map<String, Value>) {
    let id = match document.remove("_id") {
        Some(Bson::String(id)) => id,
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let vector = match document.remove(&settings.path) {
        Some(Bson::Array(values)) => values
            .iter()
            .filter_map(|v| match v {
                Bson::Double(d) => Some(*d as f32),
                Bson::Int32(i) => Some(*i as f32),
                Bson::Int64(i) => Some(*i as f32),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    document.remove(SCORE_FIELD);
    let metadata = match to_json(document) {
        Value::Object(fields) => fields,
        _ => Map::new(),
    };
    (id, vector, metadata)
}

fn from_document_error(error: DocumentError) -> VectorError {
    match error {
        DocumentError::Unavailable(m) | DocumentError::WriteConflict(m) => {
            VectorError::Unavailable(m)
        }
        other => VectorError::Other(other.to_string()),
    }
}

/// One Atlas collection and its vector search index.
pub struct AtlasIndex {
    settings: AtlasSettings,
    client: Client,
    collection: Collection<Document>,
}

impl AtlasIndex {
    pub async fn connect(settings: AtlasSettings) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let mut options = ClientOptions::parse(&settings.url)
            .await
            .context("cannot parse the MongoDB URL")?;
        options.app_name.get_or_insert_with(|| "moa".to_string());
        options.server_selection_timeout = Some(settings.timeout);
        options.connect_timeout = Some(settings.timeout);
        let client = Client::with_options(options).context("cannot set up the MongoDB client")?;
        let database = client.database(&settings.database);
        database.run_command(doc! { "ping": 1 }).await.context(
            "MongoDB did not answer a ping\n  help: check the URL and that the deployment runs",
        )?;
        let collection = database.collection(&settings.collection);
        Ok(AtlasIndex {
            settings,
            client,
            collection,
        })
    }
}

#[async_trait]
impl VectorBackend for AtlasIndex {
    async fn upsert(&self, items: Vec<VectorItem>) -> Result<(), VectorError> {
        for item in &items {
            check_vector(&item.vector, Some(self.settings.dimensions))?;
            if item.metadata.contains_key(&self.settings.path) {
                return Err(VectorError::InvalidArgument(format!(
                    "metadata field `{}` is where this index keeps vectors",
                    self.settings.path
                )));
            }
        }
        let error = |e| from_document_error(mongo_error(e));
        if let [item] = items.as_slice() {
            self.collection
                .replace_one(
                    doc! { "_id": &item.id },
                    item_document(&self.settings, item),
                )
                .upsert(true)
                .await
                .map_err(error)?;
            return Ok(());
        }
        let mut session = self.client.start_session().await.map_err(error)?;
        session.start_transaction().await.map_err(error)?;
        for item in &items {
            self.collection
                .replace_one(
                    doc! { "_id": &item.id },
                    item_document(&self.settings, item),
                )
                .upsert(true)
                .session(&mut session)
                .await
                .map_err(error)?;
        }
        session.commit_transaction().await.map_err(error)?;
        Ok(())
    }

    async fn delete(&self, ids: Vec<String>) -> Result<u64, VectorError> {
        let result = self
            .collection
            .delete_many(doc! { "_id": { "$in": ids } })
            .await
            .map_err(|e| from_document_error(mongo_error(e)))?;
        Ok(result.deleted_count)
    }

    async fn get(&self, id: &str) -> Result<Option<VectorItem>, VectorError> {
        let found = self
            .collection
            .find_one(doc! { "_id": id })
            .await
            .map_err(|e| from_document_error(mongo_error(e)))?;
        Ok(found.map(|document| {
            let (id, vector, metadata) = split_document(&self.settings, document);
            VectorItem {
                id,
                vector,
                metadata,
            }
        }))
    }

    async fn search(&self, request: SearchRequest) -> Result<Vec<VectorMatch>, VectorError> {
        check_vector(&request.vector, Some(self.settings.dimensions))?;
        if let Some((raw, _)) = &request.filter {
            check_filter_fields(&self.settings, raw)?;
        }
        let pipeline = search_pipeline(&self.settings, &request);
        let cursor = self
            .collection
            .aggregate(pipeline)
            .await
            .map_err(|e| from_document_error(mongo_error(e)))?;
        let documents: Vec<Document> = cursor
            .try_collect()
            .await
            .map_err(|e| from_document_error(mongo_error(e)))?;
        Ok(documents
            .into_iter()
            .map(|document| {
                let score = document
                    .get(SCORE_FIELD)
                    .and_then(Bson::as_f64)
                    .unwrap_or(0.0) as f32;
                let (id, _, metadata) = split_document(&self.settings, document);
                VectorMatch {
                    id,
                    score,
                    metadata: request.include_metadata.then_some(metadata),
                }
            })
            .collect())
    }

    async fn info(&self) -> Result<IndexInfo, VectorError> {
        let count = self
            .collection
            .estimated_document_count()
            .await
            .map_err(|e| from_document_error(mongo_error(e)))?;
        Ok(IndexInfo {
            dimensions: self.settings.dimensions,
            metric: self.settings.metric,
            count,
            backend: "atlas",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::vectors::parse_search;

    fn settings() -> AtlasSettings {
        AtlasSettings {
            url: "mongodb+srv://example".into(),
            database: "moa".into(),
            collection: "reviews".into(),
            index: "reviews_vector".into(),
            path: "embedding".into(),
            dimensions: 2,
            metric: Metric::Cosine,
            filter_fields: vec!["store_id".into(), "sentiment".into()],
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn the_pipeline_puts_the_filter_inside_vector_search() {
        let request = parse_search(
            vec![0.5, -0.25],
            10,
            Some(r#"{"store_id": "10001", "sentiment": {"$in": ["positive", "negative"]}}"#),
            None,
            true,
        )
        .expect("request parses");
        let pipeline = search_pipeline(&settings(), &request);
        assert_eq!(
            pipeline[0],
            doc! { "$vectorSearch": {
                "index": "reviews_vector",
                "path": "embedding",
                "queryVector": [0.5, -0.25],
                "numCandidates": 200_i64,
                "limit": 10_i64,
                "filter": { "store_id": "10001", "sentiment": { "$in": ["positive", "negative"] } },
            }}
        );
        assert_eq!(
            pipeline[1],
            doc! { "$set": { "_moa_score": { "$meta": "vectorSearchScore" } } }
        );
        assert_eq!(pipeline[2], doc! { "$project": { "embedding": 0 } });
        assert_eq!(pipeline.len(), 3);
    }

    #[test]
    fn candidates_stay_between_limit_and_ten_thousand() {
        let big = parse_search(vec![1.0, 0.0], 1000, None, None, false).expect("parses");
        let pipeline = search_pipeline(&settings(), &big);
        let stage = pipeline[0].get_document("$vectorSearch").expect("stage");
        assert_eq!(stage.get_i64("numCandidates"), Ok(10_000));
        assert!(stage.get("filter").is_none());
        assert_eq!(
            pipeline[2],
            doc! { "$project": { "_id": 1, "_moa_score": 1 } }
        );
        let asked = parse_search(vec![1.0, 0.0], 5, None, Some(77), false).expect("parses");
        let stage = search_pipeline(&settings(), &asked)[0]
            .get_document("$vectorSearch")
            .expect("stage")
            .clone();
        assert_eq!(stage.get_i64("numCandidates"), Ok(77));
    }

    #[test]
    fn filters_on_undeclared_fields_are_refused() {
        let ok = serde_json::json!({"$or": [{"store_id": "1"}, {"sentiment": "positive"}]});
        assert!(check_filter_fields(&settings(), &ok).is_ok());
        let bad = serde_json::json!({"store_id": "1", "$and": [{"rating": {"$gte": 9}}]});
        let error = check_filter_fields(&settings(), &bad).expect_err("rating is not declared");
        assert!(matches!(error, VectorError::InvalidFilter(m) if m.contains("`rating`")));
    }

    #[test]
    fn items_round_trip_through_documents() {
        let item = VectorItem {
            id: "r1".into(),
            vector: vec![0.5, 0.25],
            metadata: serde_json::from_str(r#"{"store_id": "10001", "rating": 9}"#).expect("json"),
        };
        let document = item_document(&settings(), &item);
        assert_eq!(document.get_str("_id"), Ok("r1"));
        let (id, vector, metadata) = split_document(&settings(), document);
        assert_eq!(
            (id, vector, metadata),
            (item.id, item.vector, item.metadata)
        );
    }
}
