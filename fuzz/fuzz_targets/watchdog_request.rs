//! The watchdog's reading of the request heads its `http` mode answers itself
//! ([`faas_watchdog::watchdog::parse_request_head`]): any input is partial, left to hyper, or
//! a plain request whose upstream head is itself a well-formed HTTP/1.1 request head.
#![no_main]

use faas_watchdog::watchdog::{parse_request_head, RequestHead};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let RequestHead::Plain { head_len, body_len, upstream_head, .. } = parse_request_head(data)
    else {
        return;
    };
    assert!(head_len > 0 && head_len <= data.len(), "a head of {head_len} bytes");
    assert!(body_len <= 64 * 1024, "a plain body of {body_len} bytes");
    let mut head = upstream_head.to_vec();
    head.extend_from_slice(b"\r\n");
    let mut hs = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut hs);
    match req.parse(&head) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, head.len(), "bytes after the head"),
        other => panic!("the upstream head does not parse: {other:?}"),
    }
    assert_eq!(req.version, Some(1));
    assert!(req.path.is_some_and(|p| p.starts_with("/base/")), "{:?}", req.path);
    for h in req.headers.iter() {
        for hop in ["connection", "transfer-encoding", "upgrade", "te", "keep-alive", "expect"] {
            assert!(!h.name.eq_ignore_ascii_case(hop), "{hop} went upstream");
        }
    }
    assert!(req.headers.iter().any(|h| h.name.eq_ignore_ascii_case("host")), "no host upstream");
});
