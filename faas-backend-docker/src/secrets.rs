//! Secrets as files under the backend's secrets directory, bind-mounted read-only into
//! containers at `/var/openfaas/secrets/<name>`.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};

use faas_core::{util, Error, Result, Secret, SecretInfo};

use crate::inner::Inner;

fn io_err(what: &str, e: std::io::Error) -> Error {
    Error::internal(format!("{what}: {e}"))
}

impl Inner {
    fn check_secret(&self, namespace: &str, name: &str) -> Result<()> {
        util::validate_dns1123_label(namespace).map_err(|r| Error::invalid("namespace", r))?;
        self.check_namespace(namespace)?;
        faas_core::spec::validate_secret_name(name).map_err(|r| Error::invalid("name", r))
    }

    pub(crate) fn list_secrets(&self, namespace: &str) -> Result<Vec<SecretInfo>> {
        self.check_namespace(namespace)?;
        let dir = self.settings.secrets_dir.join(namespace);
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("listing secrets", e)),
        };
        let mut out: Vec<SecretInfo> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
            .filter_map(|e| e.file_name().into_string().ok())
            .map(|name| SecretInfo { name, namespace: namespace.to_string() })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub(crate) fn create_secret(&self, s: &Secret) -> Result<()> {
        self.check_secret(&s.namespace, &s.name)?;
        let dir = self.settings.secrets_dir.join(&s.namespace);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| io_err("creating the secrets directory", e))?;
        let mut file = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(dir.join(&s.name))
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::AlreadyExists { kind: "secret", name: s.name.clone() })
            }
            Err(e) => return Err(io_err("creating the secret", e)),
        };
        file.write_all(&s.value).map_err(|e| io_err("writing the secret", e))
    }

    /// Rewrites the file in place (same inode) so running containers see the new value
    /// through their bind mounts.
    pub(crate) fn update_secret(&self, s: &Secret) -> Result<()> {
        self.check_secret(&s.namespace, &s.name)?;
        let path = self.secret_path(&s.namespace, &s.name);
        let mut file = match std::fs::OpenOptions::new().write(true).truncate(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound { kind: "secret", name: s.name.clone() })
            }
            Err(e) => return Err(io_err("opening the secret", e)),
        };
        file.write_all(&s.value).map_err(|e| io_err("writing the secret", e))
    }

    pub(crate) fn remove_secret(&self, namespace: &str, name: &str) -> Result<()> {
        self.check_secret(namespace, name)?;
        match std::fs::remove_file(self.secret_path(namespace, name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::NotFound { kind: "secret", name: name.to_string() })
            }
            Err(e) => Err(io_err("removing the secret", e)),
        }
    }
}
