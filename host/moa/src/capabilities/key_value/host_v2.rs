//! `fermyon:spin/key-value@2.0.0` (Spin 2.x, spin-sdk <= 5) over the same stores and grants as
//! `spin:key-value@3.0.0`: synchronous functions for the guest, async on the host.

use super::bindings::spin::key_value::key_value::Error as ErrorV3;
use super::bindings_v2::fermyon::spin::key_value::{self, Error};
use super::host::{KeyValueView, OpenStore};
use wasmtime::component::{HasData, Linker, Resource};

/// Marker type naming this interface in the linker.
struct KeyValueV2;

impl HasData for KeyValueV2 {
    type Data<'a> = KeyValueView<'a>;
}

/// Adds `fermyon:spin/key-value@2.0.0` to the linker; `view` projects the store data.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> KeyValueView<'_>,
) -> wasmtime::Result<()> {
    key_value::add_to_linker::<T, KeyValueV2>(linker, view)
}

fn v2(error: ErrorV3) -> Error {
    match error {
        ErrorV3::StoreTableFull => Error::StoreTableFull,
        ErrorV3::NoSuchStore => Error::NoSuchStore,
        ErrorV3::AccessDenied => Error::AccessDenied,
        ErrorV3::Other(message) => Error::Other(message),
    }
}

fn other(err: impl std::fmt::Display) -> Error {
    Error::Other(err.to_string())
}

impl KeyValueView<'_> {
    fn backend_of(
        &self,
        handle: &Resource<OpenStore>,
    ) -> wasmtime::Result<(String, std::sync::Arc<dyn super::KeyValueBackend>)> {
        let store = self.table.get(handle)?;
        Ok((store.label.clone(), store.backend.clone()))
    }
}

impl key_value::Host for KeyValueView<'_> {}

impl key_value::HostStore for KeyValueView<'_> {
    async fn open(
        &mut self,
        label: String,
    ) -> wasmtime::Result<Result<Resource<OpenStore>, Error>> {
        let backend = match self.grant.open(&label) {
            Ok(backend) => backend,
            Err(err) => return Ok(Err(v2(err))),
        };
        Ok(self
            .table
            .push(OpenStore { label, backend })
            .map_err(|_| Error::StoreTableFull))
    }

    async fn get(
        &mut self,
        store: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        let (label, backend) = self.backend_of(&store)?;
        Ok(backend.get(&label, &key).await.map_err(other))
    }

    async fn set(
        &mut self,
        store: Resource<OpenStore>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let (label, backend) = self.backend_of(&store)?;
        Ok(backend.set(&label, &key, value).await.map_err(other))
    }

    async fn delete(
        &mut self,
        store: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<(), Error>> {
        let (label, backend) = self.backend_of(&store)?;
        Ok(backend.delete(&label, &key).await.map_err(other))
    }

    async fn exists(
        &mut self,
        store: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<bool, Error>> {
        let (label, backend) = self.backend_of(&store)?;
        Ok(backend.exists(&label, &key).await.map_err(other))
    }

    async fn get_keys(
        &mut self,
        store: Resource<OpenStore>,
    ) -> wasmtime::Result<Result<Vec<String>, Error>> {
        let (label, backend) = self.backend_of(&store)?;
        Ok(backend.get_keys(&label).await.map_err(other))
    }

    async fn drop(&mut self, store: Resource<OpenStore>) -> wasmtime::Result<()> {
        self.table.delete(store)?;
        Ok(())
    }
}
