//! The standard `wasi:keyvalue` interfaces (0.2.0-draft2: `store`, `atomics`, `batch`)
//! over the host's shared state, for `portcullis serve-wasm`: every instance of every
//! component the process runs sees one store (in memory), and every process pointed at one
//! Redis server shares it. A plain host interface, nothing Portcullis-specific — except
//! that a value written with an edge bundle's expiry tag ([`expiry`]) lives until that
//! expiry; any other value lives for the configured retention after its last write.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker, Resource, ResourceTable};

use crate::state::{Store, StoreError};

mod bindings {
    //! The host side of `wasi:keyvalue/imports@0.2.0-draft2`.
    #![allow(missing_docs, clippy::all)]
    wasmtime::component::bindgen!({
        path: "../../wit/bundle/deps/keyvalue",
        world: "imports",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": super::Bucket,
            "wasi:keyvalue/atomics.cas": super::Cas,
        },
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};

/// The tag an edge bundle puts in front of the values it writes: 4 bytes, then the expiry
/// in Unix milliseconds (8 bytes, big-endian), then the value (`gateway/kv`).
const TAG: &[u8; 4] = b"pcx1";

/// How long a value stays: until the expiry its tag names (at least 1 ms), or `retention`.
pub fn expiry(value: &[u8], now_ms: u64, retention: Duration) -> Duration {
    value
        .strip_prefix(TAG.as_slice())
        .and_then(|rest| rest.get(..8))
        .and_then(|e| <[u8; 8]>::try_from(e).ok())
        .map_or(retention, |e| {
            Duration::from_millis(u64::from_be_bytes(e).saturating_sub(now_ms).max(1))
        })
}

/// The store every instance shares, and how long untagged values live.
pub struct KeyValue {
    /// The shared state (keys are `kv/<store name>/<key>`).
    pub store: Arc<Store>,
    /// Lifetime of a value without an expiry tag, from its last write.
    pub retention: Duration,
}

/// An opened store (`wasi:keyvalue/store.bucket`).
pub struct Bucket {
    prefix: String,
}

/// A compare-and-swap handle: the key and the value it saw.
pub struct Cas {
    key: String,
    current: Option<Vec<u8>>,
}

/// One instance's view of the key-value store.
pub struct KeyValueHost {
    shared: Arc<KeyValue>,
    table: ResourceTable,
}

impl KeyValueHost {
    /// A view for one instance.
    pub fn new(shared: Arc<KeyValue>) -> Self {
        Self {
            shared,
            table: ResourceTable::new(),
        }
    }

    fn bucket(&self, b: &Resource<Bucket>) -> wasmtime::Result<String> {
        Ok(self.table.get(b)?.prefix.clone())
    }

    fn ttl(&self, value: &[u8]) -> Duration {
        expiry(
            value,
            crate::keys::now().unix_millis(),
            self.shared.retention,
        )
    }
}

/// Links the three interfaces to `host`'s view.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    host: fn(&mut T) -> &mut KeyValueHost,
) -> wasmtime::Result<()> {
    store::add_to_linker::<_, HasSelf<KeyValueHost>>(linker, host)?;
    atomics::add_to_linker::<_, HasSelf<KeyValueHost>>(linker, host)?;
    batch::add_to_linker::<_, HasSelf<KeyValueHost>>(linker, host)
}

fn failed(e: StoreError) -> store::Error {
    tracing::warn!(error = %e, "wasi:keyvalue operation failed");
    store::Error::Other(e.0)
}

/// A store name: what `open` accepts (a label a key prefix can hold).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl store::Host for KeyValueHost {
    async fn open(
        &mut self,
        identifier: String,
    ) -> wasmtime::Result<Result<Resource<Bucket>, store::Error>> {
        if !valid_name(&identifier) {
            return Ok(Err(store::Error::NoSuchStore));
        }
        let bucket = Bucket {
            prefix: format!("kv/{identifier}/"),
        };
        Ok(Ok(self.table.push(bucket)?))
    }
}

impl store::HostBucket for KeyValueHost {
    async fn get(
        &mut self,
        b: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, store::Error>> {
        let key = self.bucket(&b)? + &key;
        Ok(self.shared.store.get(&key).await.map_err(failed))
    }

    async fn set(
        &mut self,
        b: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let key = self.bucket(&b)? + &key;
        let ttl = self.ttl(&value);
        Ok(self
            .shared
            .store
            .set(&key, value, ttl)
            .await
            .map_err(failed))
    }

    async fn delete(
        &mut self,
        b: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let key = self.bucket(&b)? + &key;
        Ok(self.shared.store.delete(&key).await.map_err(failed))
    }

    async fn exists(
        &mut self,
        b: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<bool, store::Error>> {
        let key = self.bucket(&b)? + &key;
        Ok(self
            .shared
            .store
            .get(&key)
            .await
            .map(|v| v.is_some())
            .map_err(failed))
    }

    async fn list_keys(
        &mut self,
        b: Resource<Bucket>,
        cursor: Option<String>,
    ) -> wasmtime::Result<Result<store::KeyResponse, store::Error>> {
        let prefix = self.bucket(&b)?;
        let page = self.shared.store.keys(&prefix, cursor.as_deref()).await;
        Ok(page
            .map_err(failed)
            .map(|(keys, cursor)| store::KeyResponse {
                keys: keys
                    .into_iter()
                    .filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned))
                    .collect(),
                cursor,
            }))
    }

    async fn drop(&mut self, b: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(b)?;
        Ok(())
    }
}

impl atomics::Host for KeyValueHost {
    async fn increment(
        &mut self,
        b: Resource<Bucket>,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, store::Error>> {
        let key = self.bucket(&b)? + &key;
        let retention = self.shared.retention;
        Ok(self
            .shared
            .store
            .increment(&key, delta, retention)
            .await
            .map_err(failed))
    }

    async fn swap(
        &mut self,
        cas: Resource<Cas>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), atomics::CasError>> {
        let ttl = self.ttl(&value);
        let held = self.table.delete(cas)?;
        let swapped = self
            .shared
            .store
            .compare_and_swap(&held.key, held.current.as_deref(), value, ttl)
            .await;
        Ok(match swapped {
            Ok(true) => Ok(()),
            // The handle comes back with the value now stored, for a retry.
            Ok(false) => {
                let current = self.shared.store.get(&held.key).await.map_err(failed);
                match current {
                    Ok(current) => Err(atomics::CasError::CasFailed(self.table.push(Cas {
                        key: held.key,
                        current,
                    })?)),
                    Err(e) => Err(atomics::CasError::StoreError(e)),
                }
            }
            Err(e) => Err(atomics::CasError::StoreError(failed(e))),
        })
    }
}

impl atomics::HostCas for KeyValueHost {
    async fn new(
        &mut self,
        b: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Resource<Cas>, store::Error>> {
        let key = self.bucket(&b)? + &key;
        match self.shared.store.get(&key).await {
            Ok(current) => Ok(Ok(self.table.push(Cas { key, current })?)),
            Err(e) => Ok(Err(failed(e))),
        }
    }

    async fn current(
        &mut self,
        cas: Resource<Cas>,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, store::Error>> {
        Ok(Ok(self.table.get(&cas)?.current.clone()))
    }

    async fn drop(&mut self, cas: Resource<Cas>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}

impl batch::Host for KeyValueHost {
    async fn get_many(
        &mut self,
        b: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<Option<(String, Vec<u8>)>>, store::Error>> {
        let prefix = self.bucket(&b)?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            match self.shared.store.get(&format!("{prefix}{key}")).await {
                Ok(v) => out.push(v.map(|v| (key, v))),
                Err(e) => return Ok(Err(failed(e))),
            }
        }
        Ok(Ok(out))
    }

    async fn set_many(
        &mut self,
        b: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let prefix = self.bucket(&b)?;
        for (key, value) in key_values {
            let ttl = self.ttl(&value);
            let key = format!("{prefix}{key}");
            if let Err(e) = self.shared.store.set(&key, value, ttl).await {
                return Ok(Err(failed(e)));
            }
        }
        Ok(Ok(()))
    }

    async fn delete_many(
        &mut self,
        b: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let prefix = self.bucket(&b)?;
        for key in keys {
            if let Err(e) = self.shared.store.delete(&format!("{prefix}{key}")).await {
                return Ok(Err(failed(e)));
            }
        }
        Ok(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tagged_value_lives_until_its_expiry_and_others_for_the_retention() {
        let day = Duration::from_secs(86_400);
        let mut tagged = TAG.to_vec();
        tagged.extend_from_slice(&5_000u64.to_be_bytes());
        tagged.extend_from_slice(b"v");
        assert_eq!(expiry(&tagged, 2_000, day), Duration::from_millis(3_000));
        assert_eq!(expiry(&tagged, 9_000, day), Duration::from_millis(1));
        assert_eq!(expiry(b"plain", 0, day), day);
        assert_eq!(expiry(b"pcx1\0", 0, day), day);
    }

    #[test]
    fn store_names_are_labels() {
        assert!(valid_name("default"));
        assert!(!valid_name(""));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(&"x".repeat(65)));
    }
}
