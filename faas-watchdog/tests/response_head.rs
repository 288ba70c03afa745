//! The response heads the watchdog's `http` mode reads from its upstream, through
//! [`parse_response_head`] (what the `watchdog_head` fuzz target drives): hostile or broken
//! heads are refused with a reason, never a panic.

use faas_watchdog::watchdog::{parse_response_head, BodyFraming};

#[test]
fn a_plain_head_gives_status_headers_framing_and_the_rest() {
    let h = parse_response_head(
        b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\nX-A: b\r\nConnection: close\r\n\r\nhello",
        false,
    )
    .unwrap();
    assert_eq!(h.response.status(), 201);
    assert_eq!(h.response.headers()["x-a"], "b");
    assert!(!h.response.headers().contains_key("connection"), "hop-by-hop kept");
    assert_eq!(h.framing, BodyFraming::Length(5));
    assert!(!h.keep_alive);
    assert_eq!(&h.rest[..], b"hello");
}

#[test]
fn interim_responses_are_skipped_and_chunked_wins_over_a_length() {
    let h = parse_response_head(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\
          Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        false,
    )
    .unwrap();
    assert_eq!(h.response.status(), 200);
    assert_eq!(h.framing, BodyFraming::Chunked);
    assert!(!h.response.headers().contains_key("content-length"));
    assert!(h.keep_alive);
    // No length and not chunked: the body runs until close, so the connection is not kept.
    let h = parse_response_head(b"HTTP/1.1 200 OK\r\n\r\n", false).unwrap();
    assert_eq!(h.framing, BodyFraming::UntilClose);
    assert!(!h.keep_alive);
    // After HEAD, and on 204 and 304, there is no body whatever the head says.
    for (head, is_head) in [
        (&b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"[..], true),
        (b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n", false),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n", false),
    ] {
        assert_eq!(parse_response_head(head, is_head).unwrap().framing, BodyFraming::Length(0));
    }
}

#[test]
fn hostile_heads_are_refused_naming_the_reason() {
    let cases: [(&[u8], &str); 8] = [
        (b"", "closed before a response"),
        (b"HTTP/1.1 200 OK\r\nContent-Le", "in the middle of a response"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "conflicting"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad content-length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n", "content-length"),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "switched protocols"),
        (b"HTTP/1.1 099 Nope\r\n\r\n", "bad status"),
        (b"NOT HTTP\r\n\r\n", "malformed response"),
    ];
    for (input, want) in cases {
        let err = parse_response_head(input, false).unwrap_err();
        assert!(err.contains(want), "{:?}: {err}", String::from_utf8_lossy(input));
    }
    // A head over 64 KiB is refused rather than buffered on and on.
    let mut big = b"HTTP/1.1 200 OK\r\nX-Filler: ".to_vec();
    big.resize(70 * 1024, b'a');
    assert!(parse_response_head(&big, false).unwrap_err().contains("too large"));
}
