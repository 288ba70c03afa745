//! A real image registry on loopback for the pull tests: Debian's `docker-registry` (the
//! CNCF distribution registry) serving a temporary directory on 127.0.0.1 and a free port.
//! `scripts/test.sh` installs it when missing; without it the tests fail, never skip.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's package installs the registry.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A running registry, stopped (and its storage removed) on drop, with the image tags the
/// test pushed or pulled through it.
pub struct Registry {
    child: Option<Child>,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    dir: PathBuf,
    tags: Vec<String>,
}

fn answers(addr: &str) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.") && &buf[9..12] == b"200"
}

/// Starts a registry on 127.0.0.1 and a free port, storing into a fresh temporary directory,
/// and waits (bounded) until it answers `GET /v2/`.
pub fn start() -> Registry {
    assert!(
        std::path::Path::new(REGISTRY_BIN).is_file(),
        "{REGISTRY_BIN} is missing: apt-get install docker-registry (scripts/test.sh does)"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let dir = std::env::temp_dir().join(format!("faas-rs-registry-{port}-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("storage")).unwrap();
    let config = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
         delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
        dir.join("storage").display()
    );
    std::fs::write(dir.join("config.yml"), config).unwrap();
    let log = std::fs::File::create(dir.join("registry.log")).unwrap();
    let child = Command::new(REGISTRY_BIN)
        .arg("serve")
        .arg(dir.join("config.yml"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("starting docker-registry");
    let mut r = Registry { child: Some(child), addr, dir, tags: Vec::new() };
    let t0 = Instant::now();
    while !answers(&r.addr) {
        if let Some(st) = r.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            panic!("docker-registry exited ({st}): {}", r.log());
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "registry not answering: {}", r.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    r
}

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker").args(args).output().expect("running docker")
}

impl Registry {
    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// A reference to `name` (`repo:tag`) in this registry.
    pub fn reference(&mut self, name: &str) -> String {
        let r = format!("{}/{name}", self.addr);
        self.tags.push(r.clone());
        r
    }

    /// Pushes the local image `local` as `name` and removes the pushed tag from the engine
    /// again (the image itself stays under its other tags): the engine lacks the reference
    /// until it pulls it.
    pub fn push(&mut self, local: &str, name: &str) -> String {
        let r = self.reference(name);
        let out = docker(&["tag", local, &r]);
        assert!(out.status.success(), "docker tag: {}", String::from_utf8_lossy(&out.stderr));
        let out = docker(&["push", &r]);
        assert!(out.status.success(), "docker push: {}", String::from_utf8_lossy(&out.stderr));
        let out = docker(&["rmi", &r]);
        assert!(out.status.success(), "docker rmi: {}", String::from_utf8_lossy(&out.stderr));
        r
    }

    /// Stops the registry (a registry gone after a deploy).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether the engine has `image`.
pub fn present(image: &str) -> bool {
    docker(&["image", "inspect", image]).status.success()
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
        for t in &self.tags {
            let _ = docker(&["rmi", t]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
