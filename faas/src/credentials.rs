//! Where the client subcommands find the gateway's credentials, and where `faas up` keeps
//! its own.
//!
//! - `faas up` keeps `basic-auth-user` and `basic-auth-password` (OpenFaaS's file names) in
//!   its state directory: `--state-dir`, else [`default_state_dir`].
//! - `faas login` saves credentials per gateway URL in [`saved_file`] (mode 0600).
//! - A client subcommand sends, in this order: `--password`/`OPENFAAS_PASSWORD`; what
//!   `faas login` saved for that gateway; for a gateway on this machine (a loopback
//!   address or `localhost`), the password `faas up` keeps in the default state directory.

use std::path::{Path, PathBuf};

use faas_core::{Error, Result};
use faas_http::BasicAuth;
use serde::{Deserialize, Serialize};

/// The directory of `faas up`'s state when `--state-dir` is not given:
/// `$XDG_STATE_HOME/faas-rs` (`~/.local/state/faas-rs`), or the platform's local data
/// directory where there is no state directory (macOS, Windows).
pub fn default_state_dir() -> Option<PathBuf> {
    dirs::state_dir().or_else(dirs::data_local_dir).map(|d| d.join("faas-rs"))
}

/// The file `faas login` saves credentials in: `$XDG_CONFIG_HOME/faas-rs/credentials.json`
/// (`~/.config/faas-rs/credentials.json`).
pub fn saved_file() -> Option<PathBuf> {
    dirs::config_dir().map(|d| d.join("faas-rs").join("credentials.json"))
}

/// The contents of [`saved_file`].
#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    #[serde(default)]
    auths: Vec<SavedAuth>,
}

/// Credentials saved for one gateway.
#[derive(Debug, Serialize, Deserialize)]
struct SavedAuth {
    gateway: String,
    user: String,
    password: String,
}

/// A gateway URL as credentials are filed under: no trailing slash, lower case.
fn key(gateway: &str) -> String {
    gateway.trim_end_matches('/').to_ascii_lowercase()
}

fn read_saved(path: &Path) -> Result<Saved> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| {
            Error::invalid(
                "credentials",
                format!(
                    "{} is not valid ({e}); remove it and run `faas login` again",
                    path.display()
                ),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Saved::default()),
        Err(e) => Err(Error::invalid("credentials", format!("reading {}: {e}", path.display()))),
    }
}

/// Writes `saved` to `path` with mode 0600 (its directory 0700 when created), whole or
/// not at all: written under a temporary name, then renamed over the old file.
fn write_saved(path: &Path, saved: &Saved) -> Result<()> {
    use std::io::Write;
    let err = |what: &str, p: &Path, e: std::io::Error| {
        Error::invalid("credentials", format!("{what} {}: {e}", p.display()))
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|e| err("creating", dir, e))?;
    let body = serde_json::to_vec_pretty(saved).map_err(|e| Error::internal(e.to_string()))?;
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let written = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(|e| err("writing", path, e))
}

/// Saves `auth` for `gateway` in [`saved_file`], replacing what was saved for it.
pub fn save(gateway: &str, auth: &BasicAuth) -> Result<PathBuf> {
    let path = saved_file().ok_or_else(|| {
        Error::invalid("credentials", "no configuration directory (is HOME set?)")
    })?;
    let mut saved = read_saved(&path)?;
    let k = key(gateway);
    saved.auths.retain(|a| key(&a.gateway) != k);
    saved.auths.push(SavedAuth {
        gateway: k,
        user: auth.user().to_string(),
        password: auth.password().to_string(),
    });
    write_saved(&path, &saved)?;
    Ok(path)
}

/// Forgets what was saved for `gateway`; returns whether there was anything.
pub fn forget(gateway: &str) -> Result<bool> {
    let Some(path) = saved_file() else { return Ok(false) };
    let mut saved = read_saved(&path)?;
    let k = key(gateway);
    let before = saved.auths.len();
    saved.auths.retain(|a| key(&a.gateway) != k);
    if saved.auths.len() == before {
        return Ok(false);
    }
    write_saved(&path, &saved)?;
    Ok(true)
}

/// What `faas login` saved for `gateway`.
pub fn saved(gateway: &str) -> Result<Option<BasicAuth>> {
    let Some(path) = saved_file() else { return Ok(None) };
    let k = key(gateway);
    Ok(read_saved(&path)?
        .auths
        .into_iter()
        .find(|a| key(&a.gateway) == k)
        .map(|a| BasicAuth::new(a.user, a.password)))
}

/// Whether `gateway` is on this machine: its host a loopback address or `localhost`.
pub fn is_local(gateway: &str) -> bool {
    let Ok(uri) = gateway.parse::<http::Uri>() else { return false };
    let Some(host) = uri.host() else { return false };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

/// The password `faas up` keeps in the default state directory, for a gateway on this
/// machine only (it is never sent anywhere else). `None` when there is none or it cannot
/// be read.
pub fn local_default(gateway: &str) -> Option<BasicAuth> {
    if !is_local(gateway) {
        return None;
    }
    BasicAuth::from_dir(&default_state_dir()?).ok()
}

/// The credentials a client subcommand sends to `gateway` (see the module docs).
pub fn resolve(
    gateway: &str,
    user: Option<&str>,
    password: Option<&str>,
) -> Result<Option<BasicAuth>> {
    if let Some(p) = password {
        return Ok(Some(BasicAuth::new(user.unwrap_or(faas_http::auth::DEFAULT_USER), p)));
    }
    if let Some(a) = saved(gateway)? {
        return Ok(Some(a));
    }
    Ok(local_default(gateway))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_gateways_are_local() {
        for g in [
            "http://127.0.0.1:8080",
            "http://localhost:8080/",
            "http://[::1]:80",
            "http://127.9.9.9",
        ] {
            assert!(is_local(g), "{g}");
        }
        for g in [
            "http://10.0.0.1:8080",
            "http://faas.example.com",
            "http://localhost.evil.example",
            "nonsense",
        ] {
            assert!(!is_local(g), "{g}");
        }
    }

    #[test]
    fn keys_ignore_case_and_trailing_slash() {
        assert_eq!(key("HTTP://127.0.0.1:8080/"), key("http://127.0.0.1:8080"));
    }
}
