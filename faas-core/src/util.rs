//! Small helpers shared by every crate: Go-style durations, Kubernetes quantities, DNS-1123
//! names, a poison-tolerant mutex lock.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Locks a std mutex, taking the guard even if the mutex is poisoned.
///
/// A mutex is poisoned when a thread panicked while holding it. The mutexes of this
/// workspace guard plain bookkeeping (maps, counters, handles) that each critical section
/// leaves consistent before anything in it can panic, and none of them holds a lock across
/// user code, so the data is still valid: refusing it would turn one panicked request or
/// task into failures of every later caller, for example a gateway that answers 500 to
/// everything after one handler panicked.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Parses a Go-style duration as OpenFaaS writes them: `10s`, `1m30s`, `500ms`, `1.5s`, `2h`,
/// `250us`, `100ns`. A bare number is read as seconds (`"30"` = 30 s), as the OpenFaaS
/// watchdog does.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<f64>() {
        return secs_to_duration(secs, input);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration {input:?} is missing a unit (ns, us, ms, s, m, h)"))?;
        if num_end == 0 {
            return Err(format!("duration {input:?} is not a number followed by a unit"));
        }
        let value: f64 = rest[..num_end]
            .parse()
            .map_err(|_| format!("duration {input:?} has a malformed number"))?;
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => return Err(format!("duration {input:?} has unknown unit {other:?}")),
        };
        total += value * scale;
    }
    secs_to_duration(total, input)
}

fn secs_to_duration(secs: f64, input: &str) -> Result<Duration, String> {
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("duration {input:?} must be a non-negative finite number"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("duration {input:?} is out of range"))
}

/// Formats a duration the way [`parse_duration`] reads it back (`1.5s`, `250ms`, `2m`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if d.as_nanos() % 1_000_000 != 0 {
        format!("{}us", d.as_micros())
    } else if ms % 1000 != 0 {
        format!("{ms}ms")
    } else {
        let s = d.as_secs();
        if s != 0 && s % 3600 == 0 {
            format!("{}h", s / 3600)
        } else if s != 0 && s % 60 == 0 {
            format!("{}m", s / 60)
        } else {
            format!("{s}s")
        }
    }
}

/// Serde adapter for `Option<Duration>` written as a Go-style duration string (`"10s"`).
/// Numbers are read as seconds too.
pub mod opt_duration {
    use super::{format_duration, parse_duration};
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Serialises as `"10s"` or `null`.
    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_str(&format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    /// Reads `"10s"`, `10` (seconds) or `null`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            N(f64),
        }
        match Option::<Raw>::deserialize(d)? {
            None => Ok(None),
            Some(Raw::S(s)) => parse_duration(&s).map(Some).map_err(serde::de::Error::custom),
            Some(Raw::N(n)) => {
                parse_duration(&n.to_string()).map(Some).map_err(serde::de::Error::custom)
            }
        }
    }
}

/// Parses a Kubernetes memory quantity into bytes: `128Mi`, `1Gi`, `512M`, `1e6`, `1000`.
pub fn parse_memory(input: &str) -> Result<u64, String> {
    let s = input.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == 'E' || c == '+'))
        .unwrap_or(s.len());
    // A trailing 'E' alone is the exa suffix, not an exponent.
    let (num, suffix) = if s.ends_with('E') && split == s.len() {
        (&s[..s.len() - 1], "E")
    } else {
        (&s[..split], &s[split..])
    };
    if num.is_empty() {
        return Err(format!("memory quantity {input:?} must start with a number"));
    }
    let value: f64 =
        num.parse().map_err(|_| format!("memory quantity {input:?} has a malformed number"))?;
    let mult: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        other => {
            return Err(format!(
                "memory quantity {input:?} has unknown suffix {other:?} (use Ki, Mi, Gi, k, M, G)"
            ))
        }
    };
    let bytes = value * mult;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("memory quantity {input:?} is out of range"));
    }
    Ok(bytes.ceil() as u64)
}

/// Parses a Kubernetes CPU quantity into millicores: `0.5` = 500, `500m` = 500, `2` = 2000.
pub fn parse_cpu(input: &str) -> Result<u64, String> {
    let s = input.trim();
    let (num, scale) = match s.strip_suffix('m') {
        Some(n) => (n, 1.0),
        None => (s, 1000.0),
    };
    if num.is_empty() {
        return Err(format!("cpu quantity {input:?} must be a number such as 0.5 or 500m"));
    }
    let v: f64 = num
        .parse()
        .map_err(|_| format!("cpu quantity {input:?} must be a number such as 0.5 or 500m"))?;
    let milli = v * scale;
    if !milli.is_finite() || milli < 0.0 || milli > u64::MAX as f64 {
        return Err(format!("cpu quantity {input:?} is out of range"));
    }
    Ok(milli.ceil() as u64)
}

/// Checks a DNS-1123 label: 1 to 63 characters, lowercase letters, digits and `-`, starting
/// and ending with a letter or digit. Function, namespace and secret names must be such labels.
pub fn validate_dns1123_label(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 63 {
        return Err(format!("{name:?} is longer than 63 characters"));
    }
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if let Some(bad) = name.chars().find(|c| !ok_char(*c)) {
        return Err(format!(
            "{name:?} contains {bad:?}; use lowercase letters, digits and '-' (DNS-1123)"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(format!("{name:?} must start and end with a letter or digit (DNS-1123)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1)).exact();
        assert_eq!(b.delay(1), Duration::from_millis(100));
        assert_eq!(b.delay(3), Duration::from_millis(400));
        assert_eq!(b.delay(10), Duration::from_secs(1));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(1), "no overflow");
        let j = Backoff { jitter: true, ..b };
        for _ in 0..100 {
            let d = j.delay(2);
            assert!(d >= Duration::from_millis(100) && d <= Duration::from_millis(200), "{d:?}");
            assert!(j.delay(20) >= Duration::from_millis(500), "jitter keeps at least half");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("s").is_err());
        for d in [1500, 250, 60_000, 7_200_000, 3000] {
            let d = Duration::from_millis(d);
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_memory("128Mi").unwrap(), 128 * 1024 * 1024);
        assert_eq!(parse_memory("1G").unwrap(), 1_000_000_000);
        assert_eq!(parse_memory("1000").unwrap(), 1000);
        assert_eq!(parse_memory("1e3").unwrap(), 1000);
        assert!(parse_memory("12Qi").is_err());
        assert!(parse_memory("Mi").is_err());
        assert_eq!(parse_cpu("0.5").unwrap(), 500);
        assert_eq!(parse_cpu("500m").unwrap(), 500);
        assert_eq!(parse_cpu("2").unwrap(), 2000);
        assert!(parse_cpu("abc").is_err());
        assert!(parse_cpu("m").is_err());
    }

    #[test]
    fn names() {
        assert!(validate_dns1123_label("hello-world1").is_ok());
        assert!(validate_dns1123_label("Hello").is_err());
        assert!(validate_dns1123_label("-a").is_err());
        assert!(validate_dns1123_label("a_b").is_err());
        assert!(validate_dns1123_label(&"a".repeat(64)).is_err());
        assert!(validate_dns1123_label("").is_err());
    }
}

/// A fast, not DoS-resistant hasher (rustc's Fx hash, from `rustc-hash`) for maps whose keys
/// only trusted callers insert: looking up an attacker's key costs one hash, but only
/// inserted keys can collide. The gateway's and the in-memory backend's per-request lookups
/// use it.
pub type FastHasher = rustc_hash::FxHasher;

/// A [`std::hash::BuildHasher`] of [`FastHasher`].
pub type FastBuildHasher = rustc_hash::FxBuildHasher;

#[cfg(test)]
mod lock_tests {
    use super::*;

    #[test]
    fn lock_recovers_a_poisoned_mutex() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let panicked = std::thread::spawn(move || {
            let mut g = m2.lock().unwrap();
            *g = 2;
            panic!("poison the mutex");
        })
        .join();
        assert!(panicked.is_err());
        assert!(m.is_poisoned());
        assert_eq!(*lock(&m), 2, "the value written before the panic is kept");
        *lock(&m) = 3;
        assert_eq!(*lock(&m), 3);
    }
}

#[cfg(test)]
mod fast_hasher_tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn fast_hasher_tells_keys_apart_and_is_stable() {
        let b = FastBuildHasher::default();
        let h = |s: &str| b.hash_one(s);
        assert_eq!(h("hello.openfaas-fn"), h("hello.openfaas-fn"));
        let keys = ["", "a", "b", "ab", "ba", "a\0", "abcdefgh", "abcdefgi", "abcdefghi"];
        let hashes: std::collections::BTreeSet<u64> = keys.iter().map(|k| h(k)).collect();
        assert_eq!(hashes.len(), keys.len());
        let mut m: std::collections::HashMap<String, usize, FastBuildHasher> = Default::default();
        for (i, k) in keys.iter().enumerate() {
            m.insert(k.to_string(), i);
        }
        assert!(keys.iter().enumerate().all(|(i, k)| m.get(*k) == Some(&i)));
    }
}

/// Exponential backoff, the one used wherever faas-rs waits between tries (retries of an
/// invocation, async redeliveries and callbacks, readiness polls, restarts of a crashed
/// process): the `n`th wait is `initial * multiplier^(n-1)`, capped at `max`; with jitter, a
/// uniformly random time between half of that and all of it, so that waits spread out but
/// still grow and never pass `max`. (Written here rather than taken from `backon`, whose
/// jitter adds up to a whole delay on top, past the cap.)
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// The wait before the first retry.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
    /// Growth per retry (at least 1).
    pub multiplier: f64,
    /// Randomise each wait (between 50% and 100% of it).
    pub jitter: bool,
}

impl Default for Backoff {
    /// 100 ms doubling to 30 s, with jitter.
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(30))
    }
}

impl Backoff {
    /// Doubling from `initial` to `max`, with jitter.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff { initial, max, multiplier: 2.0, jitter: true }
    }

    /// The same without jitter.
    pub fn exact(self) -> Self {
        Backoff { jitter: false, ..self }
    }

    /// The wait before retry number `retry` (1 for the first retry).
    pub fn delay(&self, retry: u32) -> Duration {
        let exp = self.multiplier.max(1.0).powi(retry.saturating_sub(1).min(64) as i32);
        let secs = (self.initial.as_secs_f64() * exp).min(self.max.as_secs_f64());
        let secs = if self.jitter { secs * (0.5 + rand::random::<f64>() * 0.5) } else { secs };
        Duration::try_from_secs_f64(secs).unwrap_or(self.max)
    }
}
