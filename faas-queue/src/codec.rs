//! How the durable queue ([`crate::StoredQueue`]) keeps its values in a
//! [`faas_core::state::StateStore`]: queued items and activation records in a compact
//! binary form ([postcard](https://docs.rs/postcard)), behind a format byte.
//!
//! - `0x01` then the postcard encoding of the fields below, in their order: the form
//!   written. Encoding one costs a copy of its strings and body (JSON cost several times
//!   that: base64 of the body, escaping, and for a record building its whole OpenWhisk
//!   activation first; measured in BENCHMARKS.md).
//! - `{`: JSON, as [`QueuedInvocation`] and [`AsyncActivation`] serialize (what earlier
//!   versions wrote, read as before). A record the binary form does not hold (one with a
//!   callback outcome, or written whole with its activation) is still written this way.
//!
//! Anything else is refused (a later format this version does not know), naming the byte.
//! The binary form is versioned by that byte: a change of its fields is a new byte, and
//! the old one stays readable.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use faas_core::error::StatusCode;
use faas_core::invocation::{InvocationMeta, StartKind};
use faas_core::queue::{AsyncActivation, AsyncState, FinalAttempt, QueuedInvocation};
use faas_core::InvocationId;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The format byte of the binary form, version 1.
pub const BINARY_V1: u8 = 1;

/// Bytes encoded as one length-prefixed run (serde's default for a slice is a sequence of
/// numbers), read back borrowed from the value.
#[derive(Debug, Clone, Copy)]
struct Raw<'a>(&'a [u8]);

impl Serialize for Raw<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Raw<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&'a [u8]>::deserialize(d).map(Raw)
    }
}

/// A [`QueuedInvocation`], version 1.
#[derive(Serialize, Deserialize)]
struct ItemV1<'a> {
    call_id: &'a str,
    function: &'a str,
    namespace: &'a str,
    method: &'a str,
    path: &'a str,
    query: &'a str,
    headers: Cow<'a, [(String, String)]>,
    #[serde(borrow)]
    body: Raw<'a>,
    #[serde(borrow)]
    callback_url: Option<&'a str>,
    attempt: u32,
    queued_at: u64,
}

/// An activation record without callback outcome or stored activation, version 1: the
/// activation is made of `outcome` when it is read, as the in-memory store does.
#[derive(Serialize, Deserialize)]
struct RecordV1<'a> {
    call_id: &'a str,
    function: &'a str,
    namespace: &'a str,
    state: AsyncState,
    attempts: u32,
    queued_at: u64,
    updated_at: u64,
    status: Option<u16>,
    #[serde(borrow)]
    error: Option<&'a str>,
    #[serde(borrow)]
    callback_url: Option<&'a str>,
    #[serde(borrow)]
    outcome: Option<OutcomeV1<'a>>,
}

/// A [`FinalAttempt`], version 1.
#[derive(Serialize, Deserialize)]
struct OutcomeV1<'a> {
    status: u16,
    #[serde(borrow)]
    error: Option<(StatusCode, &'a str)>,
    #[serde(borrow)]
    body: Option<Raw<'a>>,
    start: u64,
    end: u64,
    #[serde(borrow)]
    meta: Option<MetaV1<'a>>,
    attempts: u32,
}

/// An [`InvocationMeta`], version 1.
#[derive(Serialize, Deserialize)]
struct MetaV1<'a> {
    instance: &'a str,
    start: StartKind,
    wait_time: Duration,
    init_time: Option<Duration>,
}

/// What an activation record is made of, borrowed from where it is kept: the fields of
/// [`AsyncActivation`] without its call id, callback outcome and activation, and the last
/// attempt that activation is made of.
#[derive(Debug, Clone, Copy)]
pub struct RecordParts<'a> {
    /// The function.
    pub function: &'a str,
    /// Its namespace.
    pub namespace: &'a str,
    /// Where the call is.
    pub state: AsyncState,
    /// Attempts started.
    pub attempts: u32,
    /// When it was queued (milliseconds since the Unix epoch).
    pub queued_at: u64,
    /// When the record was written (milliseconds since the Unix epoch).
    pub updated_at: u64,
    /// The last attempt's HTTP status.
    pub status: Option<u16>,
    /// The last error.
    pub error: Option<&'a str>,
    /// The callback URL.
    pub callback_url: Option<&'a str>,
    /// The last attempt, once finished.
    pub outcome: Option<&'a FinalAttempt>,
}

/// Appends `value` to `buf` (a `Vec` growing from the capacity given it).
fn put<T: Serialize>(what: &str, value: &T, buf: Vec<u8>) -> faas_core::Result<Vec<u8>> {
    postcard::to_extend(value, buf)
        .map_err(|e| faas_core::Error::internal(format!("encoding {what}: {e}")))
}

/// `item` in the binary form.
pub fn encode_item(item: &QueuedInvocation) -> faas_core::Result<Vec<u8>> {
    let headers: usize = item.headers.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
    let strings = item.call_id.as_str().len()
        + item.function.len()
        + item.namespace.len()
        + item.method.len()
        + item.path.len()
        + item.query.len()
        + item.callback_url.as_ref().map_or(0, String::len);
    let mut buf = Vec::with_capacity(1 + item.body.len() + headers + strings + 48);
    buf.push(BINARY_V1);
    let v = ItemV1 {
        call_id: item.call_id.as_str(),
        function: &item.function,
        namespace: &item.namespace,
        method: &item.method,
        path: &item.path,
        query: &item.query,
        headers: Cow::Borrowed(&item.headers),
        body: Raw(&item.body),
        callback_url: item.callback_url.as_deref(),
        attempt: item.attempt,
        queued_at: item.queued_at,
    };
    put("a queued item", &v, buf)
}

/// The version byte's payload decoded whole (bytes left over are damage).
fn take<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, String> {
    match postcard::take_from_bytes::<T>(payload) {
        Ok((v, [])) => Ok(v),
        Ok((_, rest)) => Err(format!("{} bytes after the value", rest.len())),
        Err(e) => Err(e.to_string()),
    }
}

/// An item as [`encode_item`] or JSON has it.
pub fn decode_item(value: &[u8]) -> Result<QueuedInvocation, String> {
    match value.split_first() {
        Some((b'{', _)) => serde_json::from_slice(value).map_err(|e| e.to_string()),
        Some((&BINARY_V1, payload)) => {
            let v: ItemV1<'_> = take(payload)?;
            Ok(QueuedInvocation {
                call_id: InvocationId::from_string(v.call_id),
                function: v.function.to_string(),
                namespace: v.namespace.to_string(),
                method: v.method.to_string(),
                path: v.path.to_string(),
                query: v.query.to_string(),
                headers: v.headers.into_owned(),
                body: Bytes::copy_from_slice(v.body.0),
                callback_url: v.callback_url.map(str::to_string),
                attempt: v.attempt,
                queued_at: v.queued_at,
            })
        }
        Some((b, _)) => Err(format!("unknown format byte {b:#04x}")),
        None => Err("empty value".into()),
    }
}

/// The record of `call_id` made of `parts`, in the binary form.
pub fn encode_record(
    call_id: &InvocationId,
    parts: &RecordParts<'_>,
) -> faas_core::Result<Vec<u8>> {
    let (body, error, instance) = parts.outcome.map_or((0, 0, 0), |o| {
        let body = o.body.as_ref().map_or(0, Bytes::len);
        let error = o.error.as_ref().map_or(0, |(_, m)| m.len());
        (body, error, o.meta.as_ref().map_or(0, |m| m.instance.len()))
    });
    let strings = call_id.as_str().len()
        + parts.function.len()
        + parts.namespace.len()
        + parts.error.map_or(0, str::len)
        + parts.callback_url.map_or(0, str::len);
    let mut buf = Vec::with_capacity(1 + strings + body + error + instance + 96);
    buf.push(BINARY_V1);
    let outcome = parts.outcome.map(|o| OutcomeV1 {
        status: o.status,
        error: o.error.as_ref().map(|(code, m)| (*code, m.as_str())),
        body: o.body.as_deref().map(Raw),
        start: o.start,
        end: o.end,
        meta: o.meta.as_ref().map(|m| MetaV1 {
            instance: &m.instance,
            start: m.start,
            wait_time: m.wait_time,
            init_time: m.init_time,
        }),
        attempts: o.attempts,
    });
    let v = RecordV1 {
        call_id: call_id.as_str(),
        function: parts.function,
        namespace: parts.namespace,
        state: parts.state,
        attempts: parts.attempts,
        queued_at: parts.queued_at,
        updated_at: parts.updated_at,
        status: parts.status,
        error: parts.error,
        callback_url: parts.callback_url,
        outcome,
    };
    put("an activation record", &v, buf)
}

/// `record` as JSON, for what the binary form does not hold.
pub fn encode_record_json(record: &AsyncActivation) -> faas_core::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(768);
    serde_json::to_writer(&mut buf, record)
        .map_err(|e| faas_core::Error::internal(format!("encoding an activation record: {e}")))?;
    Ok(buf)
}

/// A record as [`encode_record`] or JSON has it (a binary record's activation made of its
/// last attempt).
pub fn decode_record(value: &[u8]) -> Result<AsyncActivation, String> {
    match value.split_first() {
        Some((b'{', _)) => serde_json::from_slice(value).map_err(|e| e.to_string()),
        Some((&BINARY_V1, payload)) => {
            let v: RecordV1<'_> = take(payload)?;
            let call_id = InvocationId::from_string(v.call_id);
            let activation = v.outcome.map(|o| {
                let attempt = FinalAttempt {
                    status: o.status,
                    error: o.error.map(|(code, m)| (code, m.to_string())),
                    body: o.body.map(|b| Bytes::copy_from_slice(b.0)),
                    start: o.start,
                    end: o.end,
                    meta: o.meta.map(|m| InvocationMeta {
                        instance: m.instance.to_string(),
                        start: m.start,
                        wait_time: m.wait_time,
                        init_time: m.init_time,
                    }),
                    attempts: o.attempts,
                };
                Box::new(attempt.activation(&call_id, v.function, v.namespace))
            });
            Ok(AsyncActivation {
                call_id,
                function: v.function.to_string(),
                namespace: v.namespace.to_string(),
                state: v.state,
                attempts: v.attempts,
                queued_at: v.queued_at,
                updated_at: v.updated_at,
                status: v.status,
                error: v.error.map(str::to_string),
                callback_url: v.callback_url.map(str::to_string),
                callback: None,
                activation,
            })
        }
        Some((b, _)) => Err(format!("unknown format byte {b:#04x}")),
        None => Err("empty value".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::example_item;
    use crate::store::MemoryActivationStore;
    use faas_core::queue::RecordUpdate;

    fn full_item() -> QueuedInvocation {
        let mut item = example_item();
        item.method = "PUT".into();
        item.path = "/a/b".into();
        item.query = "x=1&y=é".into();
        item.headers =
            vec![("content-type".into(), "text/plain".into()), ("x-a".into(), String::new())];
        item.body = Bytes::from((0..=255u8).cycle().take(70_000).collect::<Vec<u8>>());
        item.callback_url = Some("http://127.0.0.1:1/cb".into());
        item.attempt = 3;
        item.queued_at = u64::MAX - 1;
        item
    }

    /// Items come back as they were, in the binary form and from the JSON earlier versions
    /// wrote; the binary form is smaller than the JSON (no base64).
    #[test]
    fn items_round_trip_in_both_forms() {
        for item in [example_item(), full_item()] {
            let bin = encode_item(&item).unwrap();
            assert_eq!(bin[0], BINARY_V1);
            assert_eq!(decode_item(&bin).unwrap(), item);
            let json = serde_json::to_vec(&item).unwrap();
            assert_eq!(decode_item(&json).unwrap(), item);
            assert!(bin.len() < json.len(), "{} >= {}", bin.len(), json.len());
        }
    }

    /// A record written from the in-memory store's compact form reads back as the store
    /// reads it (the activation made of the last attempt); one with a callback outcome is
    /// written as JSON and reads back too.
    #[test]
    fn records_round_trip_as_the_store_reads_them() {
        let store = MemoryActivationStore::new(10);
        let item = full_item();
        let update = RecordUpdate {
            state: AsyncState::Failed,
            attempts: 2,
            status: Some(502),
            error: Some("bad gateway".into()),
            outcome: Some(FinalAttempt {
                status: 502,
                error: Some((StatusCode::DeveloperError, "upstream closed".into())),
                body: Some(Bytes::from_static(b"partial")),
                start: 10,
                end: 12,
                meta: Some(InvocationMeta {
                    instance: "echo-1".into(),
                    start: StartKind::Cold,
                    wait_time: Duration::from_micros(1500),
                    init_time: Some(Duration::from_millis(3)),
                }),
                attempts: 2,
            }),
            updated_at: 99,
        };
        store.put_update_now(&item, update);
        let (queued_at, value) = store.encode_now(&item.call_id).unwrap();
        let value = value.unwrap();
        assert_eq!(queued_at, item.queued_at);
        assert_eq!(value[0], BINARY_V1);
        let expected = store.get_now(&item.call_id).unwrap();
        assert!(expected.activation.is_some());
        assert_eq!(decode_record(&value).unwrap(), expected);

        // With a callback outcome: JSON.
        let mut with_callback = expected.clone();
        with_callback.callback = Some(faas_core::queue::CallbackOutcome {
            delivered: true,
            attempts: 1,
            status: Some(200),
            error: None,
        });
        store.put_now(with_callback.clone());
        let value = store.encode_now(&item.call_id).unwrap().1.unwrap();
        assert_eq!(value[0], b'{');
        assert_eq!(decode_record(&value).unwrap(), with_callback);

        // A `queued` record (no outcome).
        let other = example_item();
        store.put_queued_now(std::slice::from_ref(&other));
        let value = store.encode_now(&other.call_id).unwrap().1.unwrap();
        assert_eq!(decode_record(&value).unwrap(), store.get_now(&other.call_id).unwrap());
    }

    /// Damage is an error naming it, never a panic or a wrong value: an unknown format
    /// byte, a value cut short, bytes after the value, nothing.
    #[test]
    fn damaged_values_are_refused() {
        let bin = encode_item(&full_item()).unwrap();
        let e = decode_item(&[7, 1, 2]).unwrap_err();
        assert!(e.contains("unknown format byte 0x07"), "{e}");
        assert!(decode_item(&[]).is_err());
        for cut in [1, 2, 10, bin.len() / 2, bin.len() - 1] {
            assert!(decode_item(&bin[..cut]).is_err(), "cut at {cut} decoded");
        }
        let mut longer = bin.clone();
        longer.push(0);
        assert!(decode_item(&longer).unwrap_err().contains("after the value"));
        assert!(decode_record(&bin[..bin.len() / 2]).is_err());
    }
}
