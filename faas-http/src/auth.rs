//! Basic auth credentials, read the OpenFaaS way, compared in constant time.

use std::path::Path;

use faas_core::{Error, Result};
use subtle::ConstantTimeEq;

/// A user and password for HTTP basic auth.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicAuth {
    user: String,
    password: String,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Default directory of the credential files (OpenFaaS's `secret_mount_path`).
pub const DEFAULT_SECRET_MOUNT_PATH: &str = "/var/secrets";

impl BasicAuth {
    /// Explicit credentials.
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Self {
        BasicAuth { user: user.into(), password: password.into() }
    }

    /// The user name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Reads `basic-auth-user` and `basic-auth-password` from `dir` (trailing newlines
    /// trimmed). A missing or empty file gives [`Error::InvalidSpec`] naming it.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let read = |name: &str| -> Result<String> {
            let p = dir.join(name);
            let s = std::fs::read_to_string(&p)
                .map_err(|e| Error::invalid(name, format!("reading {}: {e}", p.display())))?;
            let s = s.trim_end_matches(['\n', '\r']).to_string();
            if s.is_empty() {
                return Err(Error::invalid(name, format!("{} is empty", p.display())));
            }
            Ok(s)
        };
        Ok(BasicAuth::new(read("basic-auth-user")?, read("basic-auth-password")?))
    }

    /// OpenFaaS style: when env `basic_auth` is `true`, credentials come from env
    /// `basic_auth_user`/`basic_auth_password` if both are set, else from the files
    /// `basic-auth-user` and `basic-auth-password` under env `secret_mount_path`
    /// (default `/var/secrets`). `Ok(None)` when `basic_auth` is not `true`.
    pub fn from_env() -> Result<Option<Self>> {
        let on = std::env::var("basic_auth").map(|v| v.trim() == "true").unwrap_or(false);
        if !on {
            return Ok(None);
        }
        if let (Ok(u), Ok(p)) =
            (std::env::var("basic_auth_user"), std::env::var("basic_auth_password"))
        {
            if !u.is_empty() && !p.is_empty() {
                return Ok(Some(BasicAuth::new(u, p)));
            }
        }
        let dir = std::env::var("secret_mount_path")
            .unwrap_or_else(|_| DEFAULT_SECRET_MOUNT_PATH.to_string());
        BasicAuth::from_dir(Path::new(&dir)).map(Some)
    }

    /// Checks an `Authorization` header value in constant time (for equal lengths).
    pub fn check_header(&self, value: &[u8]) -> bool {
        let Some(b64) = value.strip_prefix(b"Basic ").or_else(|| value.strip_prefix(b"basic "))
        else {
            return false;
        };
        let Ok(b64) = std::str::from_utf8(b64) else { return false };
        let Ok(decoded) = faas_core::queue::base64_decode(b64.trim()) else { return false };
        let Some(colon) = decoded.iter().position(|&b| b == b':') else { return false };
        let (u, p) = (&decoded[..colon], &decoded[colon + 1..]);
        let user_ok = u.ct_eq(self.user.as_bytes());
        let pass_ok = p.ct_eq(self.password.as_bytes());
        bool::from(user_ok & pass_ok)
    }

    /// The `Authorization` header value for these credentials.
    pub fn header_value(&self) -> String {
        format!(
            "Basic {}",
            faas_core::queue::base64_encode(format!("{}:{}", self.user, self.password).as_bytes())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_rejects() {
        let a = BasicAuth::new("admin", "s3cret");
        assert!(a.check_header(a.header_value().as_bytes()));
        assert!(!a.check_header(BasicAuth::new("admin", "wrong").header_value().as_bytes()));
        assert!(!a.check_header(BasicAuth::new("admin", "s3cre").header_value().as_bytes()));
        assert!(!a.check_header(b"Bearer x"));
        assert!(!a.check_header(b"Basic !!!"));
        assert!(!a.check_header(b"Basic YWRtaW4="));
        assert!(!format!("{a:?}").contains("s3cret"));
    }

    #[test]
    fn from_dir_reads_files_and_names_missing_one() {
        let dir = std::env::temp_dir().join(format!("faas-http-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("basic-auth-user"), "admin\n").unwrap();
        let err = BasicAuth::from_dir(&dir).unwrap_err();
        assert!(err.to_string().contains("basic-auth-password"), "{err}");
        std::fs::write(dir.join("basic-auth-password"), "pw\n").unwrap();
        assert_eq!(BasicAuth::from_dir(&dir).unwrap(), BasicAuth::new("admin", "pw"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
