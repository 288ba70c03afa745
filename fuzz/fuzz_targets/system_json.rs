//! The JSON bodies of the management API (deploy, update, delete, scale, secrets) through the
//! whole gateway over an in-memory backend.
//!
//! Input: byte 0 picks the route (low 3 bits) and turns auth on (bit 3); the rest is the body.
//! Whatever the body, the answer is never a 5xx (a bad body is the caller's 4xx), and the
//! gateway still lists its functions and secrets afterwards.
#![no_main]

use bytes::Bytes;
use faas_fuzz::{with_gateway, Sender};
use libfuzzer_sys::fuzz_target;

const ROUTES: [(&str, &str); 8] = [
    ("POST", "/system/functions"),
    ("PUT", "/system/functions"),
    ("DELETE", "/system/functions"),
    ("POST", "/system/scale-function/echo"),
    ("POST", "/system/secrets"),
    ("PUT", "/system/secrets"),
    ("DELETE", "/system/secrets"),
    ("POST", "/system/scale-function/nope"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else { return };
    let (method, path) = ROUTES[usize::from(sel & 7)];
    let auth = sel & 8 != 0;
    let body = Bytes::copy_from_slice(body);
    with_gateway(auth, |g| async move {
        let a = g.send(Sender::request(method, path, body.clone(), auth)).await;
        assert!(
            !a.status.is_server_error(),
            "{method} {path} with {:?}: {} {:?}",
            String::from_utf8_lossy(&body),
            a.status,
            a.body.as_deref().map(String::from_utf8_lossy),
        );
        for list in ["/system/functions", "/system/secrets"] {
            let a = g.send(Sender::request("GET", list, Bytes::new(), auth)).await;
            assert_eq!(a.status, 200, "GET {list} after {method} {path}: {:?}", a.body);
            let body = a.body.unwrap_or_default();
            if let Err(e) = serde_json::from_slice::<serde_json::Value>(&body) {
                panic!("GET {list} is not JSON ({e}): {}", String::from_utf8_lossy(&body));
            }
        }
        let _ = g.send(Sender::request("GET", "/system/function/echo", Bytes::new(), auth)).await;
        let _ = g.send(Sender::request("POST", "/function/echo", Bytes::from("x"), auth)).await;
    });
});
