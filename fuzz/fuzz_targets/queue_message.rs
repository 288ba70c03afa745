//! Decoding a queued invocation (the JSON of a Kafka message, what a queue consumer gets) and
//! an activation record, and replaying the invocation; the same from the durable queue's
//! store (`faas_queue::codec`: its binary form or JSON).
//!
//! Whatever decodes rebuilds an invocation or fails naming a field, never panics, and
//! encodes back to the same value.
#![no_main]

use faas_core::queue::{AsyncActivation, QueuedInvocation};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(item) = serde_json::from_slice::<QueuedInvocation>(data) {
        let _ = item.to_invocation();
        let _ = faas_queue::memory::item_bytes(&item);
        let json = serde_json::to_vec(&item).expect("an invocation encodes");
        match serde_json::from_slice::<QueuedInvocation>(&json) {
            Ok(back) => assert_eq!(back, item, "the round trip changed the invocation"),
            Err(e) => panic!("an encoded invocation does not decode: {e}"),
        }
    }
    if let Ok(record) = serde_json::from_slice::<AsyncActivation>(data) {
        let json = serde_json::to_vec(&record).expect("a record encodes");
        if let Err(e) = serde_json::from_slice::<AsyncActivation>(&json) {
            panic!("an encoded record does not decode ({e}): {}", String::from_utf8_lossy(&json));
        }
    }
    if let Ok(item) = faas_queue::codec::decode_item(data) {
        let bin = faas_queue::codec::encode_item(&item).expect("an invocation encodes");
        let back = faas_queue::codec::decode_item(&bin).ok();
        assert_eq!(back, Some(item), "the binary round trip changed the invocation");
    }
    let _ = faas_queue::codec::decode_record(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(bytes) = faas_core::queue::base64_decode(text) {
            let again = faas_core::queue::base64_encode(&bytes);
            assert_eq!(faas_core::queue::base64_decode(&again).ok(), Some(bytes));
        }
    }
});
