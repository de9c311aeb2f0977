//! The generated `spin:key-value` host traits, implemented over a component's [`KeyValueGrant`]:
//! `open` checks the grant, each store handle is a resource holding its backend.

use super::bindings::spin::key_value::key_value::{self, Error};
use super::{KeyValueBackend, KeyValueGrant};
use std::sync::Arc;
use wasmtime::component::{
    Accessor, FutureReader, HasData, Linker, Resource, ResourceTable, StreamReader,
};

/// The value behind a `store` resource handle.
pub struct OpenStore {
    pub(super) label: String,
    pub(super) backend: Arc<dyn KeyValueBackend>,
}

/// Marker type naming this capability in the linker.
pub struct KeyValue;

impl HasData for KeyValue {
    type Data<'a> = KeyValueView<'a>;
}

/// What the host traits see of an instance's state.
pub struct KeyValueView<'a> {
    pub grant: &'a KeyValueGrant,
    pub table: &'a mut ResourceTable,
}

/// Adds `spin:key-value@3.0.0` to the linker; `view` projects the store data.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> KeyValueView<'_>,
) -> wasmtime::Result<()> {
    key_value::add_to_linker::<T, KeyValue>(linker, view)
}

fn other(err: impl std::fmt::Display) -> Error {
    Error::Other(err.to_string())
}

fn store_of<T>(
    accessor: &Accessor<T, KeyValue>,
    handle: &Resource<OpenStore>,
) -> wasmtime::Result<(String, Arc<dyn KeyValueBackend>)> {
    accessor.with(|mut access| {
        let view = access.get();
        let store = view.table.get(handle)?;
        Ok((store.label.clone(), store.backend.clone()))
    })
}

impl key_value::Host for KeyValueView<'_> {}

impl key_value::HostStore for KeyValueView<'_> {
    fn drop(&mut self, handle: Resource<OpenStore>) -> wasmtime::Result<()> {
        self.table.delete(handle)?;
        Ok(())
    }
}

impl<T: Send> key_value::HostStoreWithStore<T> for KeyValue {
    async fn open(
        accessor: &Accessor<T, Self>,
        label: String,
    ) -> wasmtime::Result<Result<Resource<OpenStore>, Error>> {
        accessor.with(|mut access| {
            let view = access.get();
            let backend = match view.grant.open(&label) {
                Ok(backend) => backend,
                Err(err) => return Ok(Err(err)),
            };
            match view.table.push(OpenStore { label, backend }) {
                Ok(handle) => Ok(Ok(handle)),
                Err(_) => Ok(Err(Error::StoreTableFull)),
            }
        })
    }

    async fn get(
        accessor: &Accessor<T, Self>,
        self_: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        let (label, backend) = store_of(accessor, &self_)?;
        Ok(backend.get(&label, &key).await.map_err(other))
    }

    async fn set(
        accessor: &Accessor<T, Self>,
        self_: Resource<OpenStore>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let (label, backend) = store_of(accessor, &self_)?;
        Ok(backend.set(&label, &key, value).await.map_err(other))
    }

    async fn delete(
        accessor: &Accessor<T, Self>,
        self_: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<(), Error>> {
        let (label, backend) = store_of(accessor, &self_)?;
        Ok(backend.delete(&label, &key).await.map_err(other))
    }

    async fn exists(
        accessor: &Accessor<T, Self>,
        self_: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<bool, Error>> {
        let (label, backend) = store_of(accessor, &self_)?;
        Ok(backend.exists(&label, &key).await.map_err(other))
    }

    async fn get_keys(
        accessor: &Accessor<T, Self>,
        self_: Resource<OpenStore>,
    ) -> wasmtime::Result<(StreamReader<String>, FutureReader<Result<(), Error>>)> {
        let (label, backend) = store_of(accessor, &self_)?;
        let (keys, result) = match backend.get_keys(&label).await {
            Ok(keys) => (keys, Ok(())),
            Err(err) => (Vec::new(), Err(other(err))),
        };
        accessor.with(|mut access| {
            let stream = StreamReader::new(&mut access, keys)?;
            let future =
                FutureReader::new(&mut access, async move { Ok::<_, wasmtime::Error>(result) })?;
            Ok((stream, future))
        })
    }
}
