//! `wasi:keyvalue@0.2.0-draft2` (store, atomics, batch) as Spin 3+ serves it, over the same stores
//! and grants as `spin:key-value`: a bucket is an open store, a `cas` remembers the value it read.

use super::KeyValueBackend;
use super::bindings::spin::key_value::key_value::Error as SpinError;
use super::bindings_wasi::wasi::keyvalue::{atomics, batch, store};
use super::host::{KeyValueView, OpenStore};
use std::sync::Arc;
use store::{Error, KeyResponse};
use wasmtime::component::{HasData, Linker, Resource};

/// The value behind a `cas` resource handle: the key and the value it held when the handle was made.
pub struct CasHandle {
    label: String,
    backend: Arc<dyn KeyValueBackend>,
    key: String,
    current: Option<Vec<u8>>,
}

/// Marker type naming these interfaces in the linker.
struct WasiKeyValue;

impl HasData for WasiKeyValue {
    type Data<'a> = KeyValueView<'a>;
}

/// Adds the three `wasi:keyvalue` interfaces to the linker; `view` projects the store data.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> KeyValueView<'_>,
) -> wasmtime::Result<()> {
    store::add_to_linker::<T, WasiKeyValue>(linker, view)?;
    atomics::add_to_linker::<T, WasiKeyValue>(linker, view)?;
    batch::add_to_linker::<T, WasiKeyValue>(linker, view)?;
    Ok(())
}

fn other(err: impl std::fmt::Display) -> Error {
    Error::Other(err.to_string())
}

impl KeyValueView<'_> {
    fn bucket(
        &self,
        handle: &Resource<OpenStore>,
    ) -> wasmtime::Result<(String, Arc<dyn KeyValueBackend>)> {
        let store = self.table.get(handle)?;
        Ok((store.label.clone(), store.backend.clone()))
    }
}

impl store::Host for KeyValueView<'_> {
    async fn open(
        &mut self,
        identifier: String,
    ) -> wasmtime::Result<Result<Resource<OpenStore>, Error>> {
        let backend = match self.grant.open(&identifier) {
            Ok(backend) => backend,
            Err(SpinError::AccessDenied) => return Ok(Err(Error::AccessDenied)),
            Err(SpinError::NoSuchStore) => return Ok(Err(Error::NoSuchStore)),
            Err(err) => return Ok(Err(other(format!("{err:?}")))),
        };
        Ok(self
            .table
            .push(OpenStore {
                label: identifier,
                backend,
            })
            .map_err(|_| other("too many open buckets in this instance")))
    }
}

impl store::HostBucket for KeyValueView<'_> {
    async fn get(
        &mut self,
        bucket: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        let (label, backend) = self.bucket(&bucket)?;
        Ok(backend.get(&label, &key).await.map_err(other))
    }

    async fn set(
        &mut self,
        bucket: Resource<OpenStore>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let (label, backend) = self.bucket(&bucket)?;
        Ok(backend.set(&label, &key, value).await.map_err(other))
    }

    async fn delete(
        &mut self,
        bucket: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<(), Error>> {
        let (label, backend) = self.bucket(&bucket)?;
        Ok(backend.delete(&label, &key).await.map_err(other))
    }

    async fn exists(
        &mut self,
        bucket: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<bool, Error>> {
        let (label, backend) = self.bucket(&bucket)?;
        Ok(backend.exists(&label, &key).await.map_err(other))
    }

    /// Every key in one response (no cursor), as Spin answers it.
    async fn list_keys(
        &mut self,
        bucket: Resource<OpenStore>,
        _cursor: Option<String>,
    ) -> wasmtime::Result<Result<KeyResponse, Error>> {
        let (label, backend) = self.bucket(&bucket)?;
        Ok(backend
            .get_keys(&label)
            .await
            .map(|keys| KeyResponse { keys, cursor: None })
            .map_err(other))
    }

    async fn drop(&mut self, bucket: Resource<OpenStore>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for KeyValueView<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<OpenStore>,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, Error>> {
        let (label, backend) = self.bucket(&bucket)?;
        Ok(backend.increment(&label, &key, delta).await.map_err(other))
    }

    async fn swap(
        &mut self,
        cas: Resource<CasHandle>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), atomics::CasError>> {
        let handle = self.table.delete(cas)?;
        let swapped = handle
            .backend
            .compare_and_swap(&handle.label, &handle.key, handle.current.clone(), value)
            .await;
        Ok(match swapped {
            Ok(true) => Ok(()),
            Ok(false) => {
                // The value changed since the handle read it: hand back a fresh handle to retry with.
                let current = match handle.backend.get(&handle.label, &handle.key).await {
                    Ok(current) => current,
                    Err(err) => return Ok(Err(atomics::CasError::StoreError(other(err)))),
                };
                let fresh = CasHandle { current, ..handle };
                match self.table.push(fresh) {
                    Ok(fresh) => Err(atomics::CasError::CasFailed(fresh)),
                    Err(err) => Err(atomics::CasError::StoreError(other(err))),
                }
            }
            Err(err) => Err(atomics::CasError::StoreError(other(err))),
        })
    }
}

impl atomics::HostCas for KeyValueView<'_> {
    async fn new(
        &mut self,
        bucket: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<Resource<CasHandle>, Error>> {
        let (label, backend) = self.bucket(&bucket)?;
        let current = match backend.get(&label, &key).await {
            Ok(current) => current,
            Err(err) => return Ok(Err(other(err))),
        };
        Ok(self
            .table
            .push(CasHandle {
                label,
                backend,
                key,
                current,
            })
            .map_err(other))
    }

    async fn current(
        &mut self,
        cas: Resource<CasHandle>,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        Ok(Ok(self.table.get(&cas)?.current.clone()))
    }

    async fn drop(&mut self, cas: Resource<CasHandle>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}

impl batch::Host for KeyValueView<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<OpenStore>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<(String, Option<Vec<u8>>)>, Error>> {
        let (label, backend) = self.bucket(&bucket)?;
        let mut found = Vec::with_capacity(keys.len());
        for key in keys {
            match backend.get(&label, &key).await {
                Ok(value) => found.push((key, value)),
                Err(err) => return Ok(Err(other(err))),
            }
        }
        Ok(Ok(found))
    }

    async fn set_many(
        &mut self,
        bucket: Resource<OpenStore>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let (label, backend) = self.bucket(&bucket)?;
        for (key, value) in key_values {
            if let Err(err) = backend.set(&label, &key, value).await {
                return Ok(Err(other(err)));
            }
        }
        Ok(Ok(()))
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<OpenStore>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let (label, backend) = self.bucket(&bucket)?;
        for key in keys {
            if let Err(err) = backend.delete(&label, &key).await {
                return Ok(Err(other(err)));
            }
        }
        Ok(Ok(()))
    }
}
