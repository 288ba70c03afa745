//! Small helpers: query strings, percent decoding, route names, JSON bodies.

use bytes::Bytes;
use faas_core::{Body, Error, Result};
use serde::de::DeserializeOwned;

/// Parses a query string (`application/x-www-form-urlencoded`) into decoded pairs: `+` is a
/// space, a malformed `%` escape stays as it is, invalid UTF-8 becomes U+FFFD, a pair
/// without `=` has an empty value.
pub(crate) fn parse_query(q: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(q.unwrap_or("").as_bytes()).into_owned().collect()
}

/// The first value of `key` in a parsed query.
pub(crate) fn query_get<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Whether `s` is a routable function name: `[-a-zA-Z_0-9.]+`.
pub(crate) fn valid_route_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.')
}

/// Reads a JSON body up to `limit` bytes; a malformed body gives 400 naming the field.
pub(crate) async fn read_json<T: DeserializeOwned>(body: Body, limit: usize) -> Result<T> {
    let bytes = body.collect_limited(limit).await?;
    parse_json(&bytes)
}

/// Parses JSON; the error names the offending field path.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &Bytes) -> Result<T> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(Error::invalid("body", "expected a JSON object, got an empty body"));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = inner.to_string();
        let path = if inner.is_syntax() || inner.is_eof() || path.starts_with('?') {
            ".".to_string()
        } else {
            path
        };
        // serde reports a missing field in the message, with the path of its parent.
        let field = match msg.strip_prefix("missing field `") {
            Some(rest) => {
                let name = rest.split('`').next().unwrap_or("");
                if path == "." || path.is_empty() {
                    name.to_string()
                } else {
                    format!("{path}.{name}")
                }
            }
            None if path == "." || path.is_empty() => "body".to_string(),
            None => path,
        };
        Error::invalid(field, format!("malformed JSON: {msg}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_names() {
        let q = parse_query(Some("name=a%2Eb&since=2026-01-01T00%3A00%3A00Z&x&p=a+b&bad=%zz%"));
        assert_eq!(query_get(&q, "name"), Some("a.b"));
        assert_eq!(query_get(&q, "since"), Some("2026-01-01T00:00:00Z"));
        assert_eq!(query_get(&q, "x"), Some(""));
        assert_eq!(query_get(&q, "p"), Some("a b"));
        assert_eq!(query_get(&q, "bad"), Some("%zz%"));
        assert!(valid_route_name("echo.openfaas-fn_1"));
        assert!(!valid_route_name("a/b"));
        assert!(!valid_route_name(""));
        // Edge cases of the form decoding: `+`, short and bad escapes, invalid UTF-8, a
        // second `=`, empty and repeated pairs.
        let q = parse_query(Some("a=x+y%2Bz&&b=%41%4a%4B&c=%&d=%4&e=%+1&f=%FF%C3%A9&g=1=2&a=2"));
        let expected = [("a", "x y+z"), ("b", "AJK"), ("c", "%"), ("d", "%4"), ("e", "% 1")];
        for (k, v) in expected.into_iter().chain([("f", "\u{FFFD}\u{e9}"), ("g", "1=2")]) {
            assert_eq!(query_get(&q, k), Some(v), "{k}");
        }
        assert_eq!(q.len(), 8, "empty pairs are skipped, repeated keys kept: {q:?}");
        assert!(parse_query(None).is_empty());
        assert_eq!(parse_query(Some("%6E%61me=v")), vec![("name".into(), "v".into())]);
    }

    #[test]
    fn json_errors_name_the_field() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct S {
            service: String,
            inner: Inner,
        }
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Inner {
            replicas: u32,
        }
        let e = parse_json::<S>(&Bytes::from(r#"{"service":"a","inner":{"replicas":"x"}}"#))
            .unwrap_err();
        assert!(matches!(&e, Error::InvalidSpec { field, .. } if field == "inner.replicas"), "{e}");
        let e = parse_json::<S>(&Bytes::from(r#"{"inner":{"replicas":1}}"#)).unwrap_err();
        assert!(matches!(&e, Error::InvalidSpec { field, .. } if field == "service"), "{e}");
        let e = parse_json::<S>(&Bytes::from("{not json")).unwrap_err();
        assert!(matches!(&e, Error::InvalidSpec { .. }), "{e}");
        let e = parse_json::<S>(&Bytes::from("")).unwrap_err();
        assert!(matches!(&e, Error::InvalidSpec { field, .. } if field == "body"), "{e}");
    }
}
