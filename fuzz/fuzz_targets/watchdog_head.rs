//! The watchdog's parsing of the response heads its `http` mode reads from the upstream
//! ([`faas_watchdog::watchdog::parse_response_head`]).
//!
//! Input: byte 0 says whether the request was a `HEAD` (bit 0); the rest is what the
//! upstream sent.
#![no_main]

use faas_watchdog::watchdog::{parse_response_head, BodyFraming};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else { return };
    let head_request = sel & 1 != 0;
    let Ok(head) = parse_response_head(bytes, head_request) else { return };
    assert!(head.rest.len() < bytes.len(), "a head took no bytes");
    assert!(bytes.ends_with(&head.rest), "the rest is not what follows the head");
    let status = head.response.status();
    assert!(!status.is_informational(), "a 1xx returned as the final response");
    if head_request || status == 204 || status == 304 {
        assert_eq!(head.framing, BodyFraming::Length(0), "a body after HEAD, 204 or 304");
    }
    if head.framing == BodyFraming::UntilClose {
        assert!(!head.keep_alive, "a body until close on a kept connection");
    }
    for (name, _) in head.response.headers() {
        assert_ne!(name, http::header::TRANSFER_ENCODING);
        assert_ne!(name, http::header::CONNECTION);
    }
    if head.framing == BodyFraming::Chunked {
        assert!(!head.response.headers().contains_key(http::header::CONTENT_LENGTH));
    }
});
