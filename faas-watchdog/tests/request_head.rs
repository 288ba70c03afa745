//! The request heads the watchdog's `http` mode reads itself, through
//! [`parse_request_head`] (what the `watchdog_request` fuzz target drives): which requests
//! are plain, what goes upstream for them, and that everything else is left to hyper.

use faas_watchdog::watchdog::{parse_request_head, RequestHead};

/// The upstream head of a plain request, as text, and the rest of what was parsed.
fn plain(bytes: &[u8]) -> (String, usize, usize, Option<bool>, bool) {
    match parse_request_head(bytes) {
        RequestHead::Plain { head_len, body_len, health, close, upstream_head } => {
            let up = String::from_utf8(upstream_head.to_vec()).unwrap();
            (up, head_len, body_len, health, close)
        }
        other => panic!("not plain: {other:?} for {:?}", String::from_utf8_lossy(bytes)),
    }
}

#[test]
fn a_plain_request_goes_upstream_under_the_prefix_without_hop_by_hop_headers() {
    let req = b"POST /fn/x?q=1 HTTP/1.1\r\nHost: wd\r\nContent-Length: 5\r\n\
        Connection: keep-alive, Close\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
        Proxy-Authorization: basic x\r\nX-A: 1\r\n\r\nhello";
    let (up, head_len, body_len, health, close) = plain(req);
    assert_eq!(up, "POST /base/fn/x?q=1 HTTP/1.1\r\nHost: wd\r\nContent-Length: 5\r\nX-A: 1\r\n");
    assert_eq!(head_len, req.len() - 5);
    assert_eq!(body_len, 5);
    assert_eq!(health, None);
    assert!(close, "`Connection: close` among other tokens, in any case");
}

#[test]
fn a_missing_host_is_supplied_and_the_health_endpoints_are_the_watchdogs() {
    let (up, _, body_len, health, close) = plain(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(up, "GET /base/ HTTP/1.1\r\nhost: 127.0.0.1:8081\r\n");
    assert_eq!((body_len, health, close), (0, None, false));
    assert_eq!(plain(b"GET /_/health HTTP/1.1\r\n\r\n").3, Some(false));
    assert_eq!(plain(b"GET /_/ready?x=1 HTTP/1.1\r\n\r\n").3, Some(true));
}

#[test]
fn an_unfinished_head_is_partial_until_it_is_too_large() {
    assert_eq!(parse_request_head(b""), RequestHead::Partial);
    assert_eq!(parse_request_head(b"GET / HTTP/1.1\r\nHost: w"), RequestHead::Partial);
    let mut huge = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    huge.resize(20 * 1024, b'a');
    assert_eq!(parse_request_head(&huge), RequestHead::Hyper);
}

#[test]
fn everything_that_is_not_plain_is_left_to_hyper() {
    let cases: &[(&str, &[u8])] = &[
        ("malformed", b"GET / HTTP/1.1\r\nno colon\r\n\r\n"),
        ("HTTP/1.0", b"GET / HTTP/1.0\r\n\r\n"),
        ("absolute form", b"GET http://x/ HTTP/1.1\r\n\r\n"),
        ("asterisk form", b"OPTIONS * HTTP/1.1\r\n\r\n"),
        ("CONNECT", b"CONNECT x:443 HTTP/1.1\r\n\r\n"),
        ("chunked", b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
        ("expect", b"POST / HTTP/1.1\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n"),
        ("upgrade", b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"),
        ("connection upgrade", b"GET / HTTP/1.1\r\nConnection: Upgrade\r\n\r\n"),
        ("large body", b"POST / HTTP/1.1\r\nContent-Length: 65537\r\n\r\n"),
        ("two lengths", b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n"),
        ("signed length", b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n"),
        ("empty length", b"POST / HTTP/1.1\r\nContent-Length: \r\n\r\n"),
        ("huge length", b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n"),
    ];
    for (what, bytes) in cases {
        assert_eq!(parse_request_head(bytes), RequestHead::Hyper, "{what}");
    }
    let mut many = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..65 {
        many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(parse_request_head(&many), RequestHead::Hyper, "more than 64 headers");
}

#[test]
fn the_largest_plain_body_is_64_kib() {
    let (_, _, body_len, _, _) = plain(b"PUT / HTTP/1.1\r\nContent-Length:  65536 \r\n\r\n");
    assert_eq!(body_len, 65536);
}
