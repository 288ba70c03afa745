//! Helpers shared by the tests that run `faas up` as a process: the running process, and
//! bounded polls.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `faas up`: killed when dropped.
pub struct Up {
    /// The process, until it exited.
    pub child: Option<Child>,
    /// Its URL.
    pub base: String,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl Up {
    /// What it wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends it signal `name` (`TERM`, `KILL`...).
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(Command::new("kill").args([&format!("-{name}"), &pid]).status().unwrap().success());
    }

    /// Waits (bounded) for the process to exit and returns its status.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                return st;
            }
            assert!(Instant::now() < deadline, "faas up still running; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it with SIGTERM and checks it exits 0.
    pub fn stop(mut self) {
        self.signal("TERM");
        let st = self.wait_exit(Duration::from_secs(30));
        assert!(st.success(), "{st:?}; log:\n{}", self.log());
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `f` every 50 ms until it answers `Some`, for at most `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    tokio::time::timeout(Duration::from_secs(secs), async {
        loop {
            if let Some(v) = f().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not within {secs} s"))
}

/// A directory of its own for one `faas up`: the stack file and the state directory.
pub struct Sandbox {
    root: PathBuf,
}

impl Sandbox {
    /// A fresh directory `faas-PREFIX-NAME-PID` holding `stack` as `stack.yml`.
    pub fn new(prefix: &str, stack: &str, name: &str) -> Sandbox {
        let root =
            std::env::temp_dir().join(format!("faas-{prefix}-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("stack.yml"), stack).unwrap();
        Sandbox { root }
    }

    /// Its state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }

    /// Starts `faas up` on a free port with the sandbox's state directory.
    pub fn up(&self) -> Up {
        self.up_with(&[])
    }

    /// [`Sandbox::up`] with more arguments.
    pub fn up_with(&self, args: &[&str]) -> Up {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let n = std::fs::read_dir(&self.root).unwrap().count();
        let log = self.root.join(format!("up-{n}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_faas"))
            .env("HOME", self.root.join("home"))
            .env("XDG_STATE_HOME", self.root.join("xdg-state"))
            .env("XDG_CONFIG_HOME", self.root.join("config"))
            .env("RUST_LOG", "info")
            .env_remove("FAAS_QUEUE")
            .env_remove("basic_auth")
            .args(["up", "-f"])
            .arg(self.root.join("stack.yml"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--state-dir"])
            .arg(self.state_dir())
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start faas up");
        Up { child: Some(child), base: format!("http://127.0.0.1:{port}"), log }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
