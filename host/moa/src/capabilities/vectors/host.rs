//! The generated `moa:vectors` host traits: `open` checks the grant, an `index` resource runs each
//! call on its backend after the checks every backend shares (ids, vectors, metadata, filters).

use super::bindings::moa::vectors::types::{
    self, Error, IndexInfo, Item, Match, Metric as WitMetric, SearchRequest,
};
use super::bindings::moa::vectors::vectors;
use super::{
    Metric, VectorBackend, VectorError, VectorItem, VectorsGrant, check_id, check_vector,
    parse_metadata, parse_search,
};
use crate::invocation::Invocation;
use std::sync::Arc;
use wasmtime::component::{HasData, Resource, ResourceTable};

/// The value behind an `index` handle.
pub struct OpenIndex {
    backend: Arc<dyn VectorBackend>,
}

/// Marker type naming this capability in the linker.
pub struct Vectors;

impl HasData for Vectors {
    type Data<'a> = VectorsView<'a>;
}

/// What the host traits see of an instance.
pub struct VectorsView<'a> {
    pub(super) grant: &'a VectorsGrant,
    pub(super) table: &'a mut ResourceTable,
    pub(super) invocation: &'a Invocation,
}

impl From<VectorError> for Error {
    fn from(error: VectorError) -> Self {
        match error {
            VectorError::AccessDenied(m) => Error::AccessDenied(m),
            VectorError::DimensionMismatch(m) => Error::DimensionMismatch(m),
            VectorError::InvalidFilter(m) => Error::InvalidFilter(m),
            VectorError::InvalidArgument(m) => Error::InvalidArgument(m),
            VectorError::Unavailable(m) => Error::Unavailable(m),
            VectorError::Other(m) => Error::Other(m),
        }
    }
}

type Answer<T> = wasmtime::Result<Result<T, Error>>;

/// The guest's answer; an unavailable backend is noted on the invocation, so an event delivery
/// that fails because of it does not spend an attempt.
fn answer<T>(invocation: &Invocation, result: Result<T, VectorError>) -> Answer<T> {
    match &result {
        Err(VectorError::Unavailable(_)) => invocation.transient.record(),
        Ok(_) => invocation.transient.resolve(),
        Err(_) => {}
    }
    Ok(result.map_err(Error::from))
}

fn metadata_text(metadata: &serde_json::Map<String, serde_json::Value>) -> String {
    serde_json::to_string(metadata).unwrap_or_else(|_| "{}".into())
}

impl VectorsView<'_> {
    fn backend(&self, handle: &Resource<OpenIndex>) -> wasmtime::Result<Arc<dyn VectorBackend>> {
        Ok(self.table.get(handle)?.backend.clone())
    }
}

impl types::Host for VectorsView<'_> {}
impl vectors::Host for VectorsView<'_> {}

impl vectors::HostIndex for VectorsView<'_> {
    async fn open(&mut self, label: String) -> Answer<Resource<OpenIndex>> {
        match self.grant.index(&label) {
            Ok(backend) => Ok(Ok(self.table.push(OpenIndex { backend })?)),
            Err(error) => answer(self.invocation, Err(error)),
        }
    }

    async fn upsert(&mut self, handle: Resource<OpenIndex>, items: Vec<Item>) -> Answer<()> {
        let backend = self.backend(&handle)?;
        let checked = items
            .into_iter()
            .map(|item| {
                check_id(&item.id)?;
                check_vector(&item.vector, None)?;
                Ok(VectorItem {
                    metadata: parse_metadata(&item.metadata)?,
                    id: item.id,
                    vector: item.vector,
                })
            })
            .collect::<Result<Vec<_>, VectorError>>();
        let result = match checked {
            Ok(items) => backend.upsert(items).await,
            Err(error) => Err(error),
        };
        answer(self.invocation, result)
    }

    async fn delete(&mut self, handle: Resource<OpenIndex>, ids: Vec<String>) -> Answer<u64> {
        let backend = self.backend(&handle)?;
        let result = match ids.iter().try_for_each(|id| check_id(id)) {
            Ok(()) => backend.delete(ids).await,
            Err(error) => Err(error),
        };
        answer(self.invocation, result)
    }

    async fn get(&mut self, handle: Resource<OpenIndex>, id: String) -> Answer<Option<Item>> {
        let backend = self.backend(&handle)?;
        let result = backend.get(&id).await.map(|found| {
            found.map(|item| Item {
                metadata: metadata_text(&item.metadata),
                id: item.id,
                vector: item.vector,
            })
        });
        answer(self.invocation, result)
    }

    async fn search(
        &mut self,
        handle: Resource<OpenIndex>,
        request: SearchRequest,
    ) -> Answer<Vec<Match>> {
        let backend = self.backend(&handle)?;
        let parsed = parse_search(
            request.vector,
            request.limit,
            request.filter.as_deref(),
            request.candidates,
            request.include_metadata,
        );
        let result = match parsed {
            Ok(request) => backend.search(request).await.map(|found| {
                found
                    .into_iter()
                    .map(|m| Match {
                        id: m.id,
                        score: m.score,
                        metadata: m.metadata.as_ref().map(metadata_text),
                    })
                    .collect()
            }),
            Err(error) => Err(error),
        };
        answer(self.invocation, result)
    }

    async fn info(&mut self, handle: Resource<OpenIndex>) -> Answer<IndexInfo> {
        let backend = self.backend(&handle)?;
        let result = backend.info().await.map(|info| IndexInfo {
            dimensions: info.dimensions as u32,
            metric: match info.metric {
                Metric::Cosine => WitMetric::Cosine,
                Metric::Dot => WitMetric::Dot,
                Metric::Euclidean => WitMetric::Euclidean,
            },
            count: info.count,
            backend: info.backend.to_string(),
        });
        answer(self.invocation, result)
    }

    async fn drop(&mut self, handle: Resource<OpenIndex>) -> wasmtime::Result<()> {
        self.table.delete(handle)?;
        Ok(())
    }
}
