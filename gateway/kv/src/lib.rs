//! The shared state of an edge bundle in the runtime's standard `wasi:keyvalue` store
//! (`store` and `atomics`, 0.2.0-draft2): every instance of the bundle that the runtime
//! connects to the same store sees the same rate limits, one-time values, sessions and
//! login state.
//!
//! `wasi:keyvalue` keeps values without expiry, so each value carries its own: an
//! [`envelope`] of a 4-byte tag, the expiry (Unix milliseconds, big-endian) and the value.
//! An expired value reads as absent. A runtime that knows the tag (`portcullis serve-wasm`)
//! also drops the entry when it expires; on others it stays until it is overwritten.
//!
//! Read-modify-write steps (one-time values, counters, rate limits) use compare-and-swap:
//! a swap that loses a race is never applied twice. A one-time value whose swap loses is
//! reported as seen (another instance recorded it at the same moment); a rate limit reads
//! its buckets again and retries the ones not yet counted.
//!
//! Shared by the components of a bundle that keep state: the bundle's gateway (its host
//! services) and the plugin services (the risk plugins' `portcullis:plugin/state`).
#![deny(unsafe_code)]

mod bindings {
    //! The `portcullis:bundle/keyvalue-client` world's imports (wit-bindgen).
    #![allow(missing_docs, unsafe_code, clippy::all)]
    wit_bindgen::generate!({
        path: "../../wit/bundle",
        world: "keyvalue-client",
        generate_all,
    });
}

use std::cell::RefCell;
use std::rc::Rc;

use portcullis_core::limits::{LimitCheck, LimitStatus, gcra};

use crate::bindings::wasi::keyvalue::atomics::{self, Cas, CasError};
use crate::bindings::wasi::keyvalue::store::{self, Bucket};

/// The store opened: the one every Spin application has (`default`); other runtimes map the
/// name to their own store.
pub const BUCKET: &str = "default";

/// The tag in front of every value this module writes.
pub const TAG: &[u8; 4] = b"pcx1";

/// How often a read-modify-write step is tried before the state counts as unavailable.
const ATTEMPTS: usize = 8;

thread_local! {
    static OPENED: RefCell<Option<Result<Rc<Bucket>, String>>> = const { RefCell::new(None) };
}

/// The store of this instance, opened on first use.
fn bucket() -> Result<Rc<Bucket>, String> {
    OPENED.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(
                store::open(BUCKET)
                    .map(Rc::new)
                    .map_err(|e| format!("wasi:keyvalue store `{BUCKET}`: {}", describe(&e))),
            );
        }
        slot.clone()
            .unwrap_or_else(|| Err("wasi:keyvalue store unavailable".into()))
    })
}

/// A store error in words.
fn describe(e: &store::Error) -> String {
    match e {
        store::Error::NoSuchStore => "no such store".to_owned(),
        store::Error::AccessDenied => "access denied".to_owned(),
        store::Error::Other(s) => s.clone(),
    }
}

fn failed(e: store::Error) -> String {
    format!("wasi:keyvalue: {}", describe(&e))
}

/// `value` wrapped with its expiry.
pub fn envelope(expires_ms: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(TAG.len() + 8 + value.len());
    out.extend_from_slice(TAG);
    out.extend_from_slice(&expires_ms.to_be_bytes());
    out.extend_from_slice(value);
    out
}

/// The value inside a stored envelope while it lives; `None` when expired. A value
/// without the tag was not written by a gateway: it reads as a value that never expires
/// (a one-time check then counts it as seen, which fails closed).
pub fn open_envelope(stored: &[u8], now_ms: u64) -> Option<&[u8]> {
    let Some(rest) = stored.strip_prefix(TAG.as_slice()) else {
        return Some(stored);
    };
    let (expiry, value) = rest.split_at_checked(8)?;
    let expires = u64::from_be_bytes(<[u8; 8]>::try_from(expiry).ok()?);
    (now_ms < expires).then_some(value)
}

/// The live value of `key`.
pub fn get(key: &str, now_ms: u64) -> Result<Option<Vec<u8>>, String> {
    let stored = bucket()?.get(key).map_err(failed)?;
    Ok(stored.and_then(|s| open_envelope(&s, now_ms).map(<[u8]>::to_vec)))
}

/// Stores `value` under `key` until `now_ms + ttl_ms`.
pub fn set(key: &str, value: &[u8], now_ms: u64, ttl_ms: u64) -> Result<(), String> {
    bucket()?
        .set(key, &envelope(now_ms.saturating_add(ttl_ms), value))
        .map_err(failed)
}

/// Removes `key`.
pub fn delete(key: &str) -> Result<(), String> {
    bucket()?.delete(key).map_err(failed)
}

/// A compare-and-swap handle on `key` and the live value it saw.
fn watch(bucket: &Bucket, key: &str, now_ms: u64) -> Result<(Cas, Option<Vec<u8>>), String> {
    let cas = Cas::new(bucket, key).map_err(failed)?;
    let current = cas.current().map_err(failed)?;
    let live = current.and_then(|c| open_envelope(&c, now_ms).map(<[u8]>::to_vec));
    Ok((cas, live))
}

/// What a swap did.
enum Swapped {
    Done,
    /// Another writer changed the value since it was read.
    Lost,
}

fn swap(cas: Cas, value: &[u8]) -> Result<Swapped, String> {
    match atomics::swap(cas, value) {
        Ok(()) => Ok(Swapped::Done),
        Err(CasError::CasFailed(_)) => Ok(Swapped::Lost),
        Err(CasError::StoreError(e)) => Err(failed(e)),
    }
}

/// True the first time `key` is recorded within `ttl_ms`.
pub fn first_use(key: &str, now_ms: u64, ttl_ms: u64) -> Result<bool, String> {
    let bucket = bucket()?;
    let (cas, live) = watch(&bucket, key, now_ms)?;
    if live.is_some() {
        return Ok(false);
    }
    // Losing the swap means another instance recorded the value since it was read.
    match swap(cas, &envelope(now_ms.saturating_add(ttl_ms), b"1"))? {
        Swapped::Done => Ok(true),
        Swapped::Lost => Ok(false),
    }
}

/// Adds `delta` to the 8-byte big-endian counter `key` (created at 0, living `ttl_ms`);
/// the new value.
pub fn increment(key: &str, delta: i64, now_ms: u64, ttl_ms: u64) -> Result<i64, String> {
    let bucket = bucket()?;
    for _ in 0..ATTEMPTS {
        let cas = Cas::new(&bucket, key).map_err(failed)?;
        let current = cas.current().map_err(failed)?;
        let (count, expires) = match current.as_deref().map(|c| (c, open_envelope(c, now_ms))) {
            Some((stored, Some(value))) => (
                <[u8; 8]>::try_from(value).map_or(0, i64::from_be_bytes),
                stored
                    .get(TAG.len()..TAG.len() + 8)
                    .and_then(|e| <[u8; 8]>::try_from(e).ok())
                    .map_or(now_ms.saturating_add(ttl_ms), u64::from_be_bytes),
            ),
            _ => (0, now_ms.saturating_add(ttl_ms)),
        };
        let next = count.saturating_add(delta);
        if let Swapped::Done = swap(cas, &envelope(expires, &next.to_be_bytes()))? {
            return Ok(next);
        }
    }
    Err(format!(
        "wasi:keyvalue: `{key}` changed on every one of {ATTEMPTS} tries"
    ))
}

/// GCRA over every check (see `portcullis_core::limits`) on the gateway's clock: the
/// request counts against the limits only when all of them allow it. Each bucket is
/// swapped on its own (the store has no multi-key transaction): when a swap loses a race,
/// the buckets not yet counted are read again and retried; a bucket already counted stays
/// counted even if a retried one then refuses (a request may, under a race, count against
/// an earlier limit that a later one refused).
pub fn rate_limit(checks: &[LimitCheck], now_us: u64) -> Result<Vec<LimitStatus>, String> {
    let bucket = bucket()?;
    let now_ms = now_us / 1000;
    let mut counted: Vec<Option<LimitStatus>> = vec![None; checks.len()];
    for _ in 0..ATTEMPTS {
        let mut pending = Vec::new();
        let mut refused = false;
        let mut statuses = Vec::with_capacity(checks.len());
        for (check, done) in checks.iter().zip(&counted) {
            if let Some(status) = done {
                statuses.push(*status);
                continue;
            }
            let (cas, live) = watch(&bucket, &check.key, now_ms)?;
            let tat = live
                .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                .map(u64::from_be_bytes);
            let (status, next) = gcra(tat, now_us, check);
            refused |= !status.allowed;
            statuses.push(status);
            pending.push((statuses.len() - 1, cas, next));
        }
        if refused {
            return Ok(statuses);
        }
        let mut lost = false;
        for (i, cas, next) in pending {
            let Some(tat) = next else { continue };
            // The bucket is full again (and the entry useless) once the TAT has passed.
            let stored = envelope(tat.div_ceil(1000), &tat.to_be_bytes());
            match swap(cas, &stored)? {
                Swapped::Done => {
                    if let (Some(slot), Some(status)) = (counted.get_mut(i), statuses.get(i)) {
                        *slot = Some(*status);
                    }
                }
                Swapped::Lost => {
                    lost = true;
                    break;
                }
            }
        }
        if !lost {
            return Ok(statuses);
        }
    }
    Err(format!(
        "wasi:keyvalue: rate-limit buckets changed on every one of {ATTEMPTS} tries"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_opens_until_it_expires() {
        let e = envelope(1_000, b"v");
        assert_eq!(open_envelope(&e, 999), Some(&b"v"[..]));
        assert_eq!(open_envelope(&e, 1_000), None);
    }

    #[test]
    fn a_value_without_the_tag_never_expires_and_a_cut_envelope_is_absent() {
        assert_eq!(open_envelope(b"raw", u64::MAX), Some(&b"raw"[..]));
        assert_eq!(open_envelope(b"pcx1\0\0", 0), None);
    }
}
