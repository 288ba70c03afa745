//! The few system calls std and tokio do not wrap: signalling process groups, asking the
//! kernel to kill a child when its parent dies, and the [`Reaper`] that kills fork mode's
//! process groups when the watchdog is killed outright.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// Sends `sig` to the process group `pgid`. Returns false if no such group exists.
pub(crate) fn kill_group(pgid: u32, sig: i32) -> bool {
    let Ok(pgid) = i32::try_from(pgid) else { return false };
    if pgid <= 1 {
        return false;
    }
    #[allow(unsafe_code)]
    // SAFETY: kill(2) with a negative pid only sends a signal; it touches no memory of ours.
    let rc = unsafe { libc::kill(-pgid, sig) };
    rc == 0
}

/// Sends `sig` to the process `pid`. Returns false if no such process exists.
pub(crate) fn kill_pid(pid: u32, sig: i32) -> bool {
    let Ok(pid) = i32::try_from(pid) else { return false };
    if pid <= 1 {
        return false;
    }
    #[allow(unsafe_code)]
    // SAFETY: kill(2) only sends a signal; it touches no memory of ours.
    let rc = unsafe { libc::kill(pid, sig) };
    rc == 0
}

/// Arranges for the child being spawned by `cmd` to receive `sig` when its parent dies, so
/// that killing a watchdog (or the process backend) never leaves its children behind.
pub(crate) fn die_with_parent(cmd: &mut tokio::process::Command, sig: i32) {
    die_with_parent_std(cmd.as_std_mut(), sig);
}

/// [`die_with_parent`] for std's `Command`.
pub(crate) fn die_with_parent_std(cmd: &mut std::process::Command, sig: i32) {
    use std::os::unix::process::CommandExt;
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl(2),
    // which is async-signal-safe and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

pub(crate) use libc::{SIGKILL, SIGTERM};

/// A small process, forked once, that SIGKILLs the process groups registered with it when the
/// watchdog dies, even by SIGKILL.
///
/// Fork mode starts a process per request. [`die_with_parent`] would make each die with the
/// watchdog, but its `pre_exec` hook needs fork + exec instead of `posix_spawn` (vfork): a
/// fork copies the page tables of the whole multi-threaded watchdog and both sides then take
/// copy-on-write faults, about a third of a request's CPU time with `cat` (BENCHMARKS.md). So
/// the children are spawned plainly ([`Spawner`]), each in a process group of its own,
/// and that group is registered here for as long as the request runs: the reaper holds the
/// read end of a pipe whose only write end is the watchdog's; when the watchdog is gone (the
/// pipe reaches end of file) it kills every group still registered and exits.
///
/// The reaper is the watchdog's child (reaped when the watchdog stops), runs in a process
/// group of its own (a kill of the watchdog's group does not end it before it has done its
/// work), ignores SIGTERM, SIGINT and SIGHUP, closes every other descriptor and only makes
/// async-signal-safe system calls on memory allocated before the fork. A group is registered
/// just after its spawn returns: a watchdog SIGKILLed between the two (microseconds) leaves
/// that one child behind.
pub(crate) struct Reaper {
    /// The write end of the pipe (non-blocking, close-on-exec); `None` once dropped.
    tx: Option<OwnedFd>,
    pid: libc::pid_t,
    /// Whether a failed registration was logged already.
    warned: AtomicBool,
}

impl Drop for Reaper {
    /// Closes the pipe (the reaper kills what is still registered and exits) and reaps the
    /// reaper, waiting at most 200 ms for it.
    fn drop(&mut self) {
        drop(self.tx.take());
        for _ in 0..200 {
            let mut status = 0;
            #[allow(unsafe_code)]
            // SAFETY: waitpid(2) on our own child, writing only `status`.
            let rc = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if rc != 0 {
                return; // reaped, or not ours to wait for any more
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

/// The reaper's process name (`/proc/PID/comm`).
pub(crate) const REAPER_NAME: &std::ffi::CStr = c"faas-reaper";

/// The largest process id on Linux (`PID_MAX_LIMIT` on 64-bit), the bitmap's default size.
const PID_MAX_LIMIT: usize = 1 << 22;

impl Reaper {
    /// Forks the reaper.
    pub(crate) fn start() -> std::io::Result<Reaper> {
        // One bit per possible process group id: zeroed memory the kernel maps lazily, so only
        // the pages of ids actually used cost anything.
        let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(PID_MAX_LIMIT)
            .clamp(1024, PID_MAX_LIMIT);
        let mut bits = vec![0u64; pid_max.div_ceil(64)];
        let (rx, tx) = pipe()?;
        #[allow(unsafe_code)]
        // SAFETY: the child of a multi-threaded process may only make async-signal-safe calls
        // until it execs or exits: the child calls only setpgid, prctl, signal, chdir,
        // close_range/close, read, nanosleep, kill and _exit, and touches only the stack and
        // `bits`, allocated before the fork. It never returns from this function.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if pid == 0 {
            #[allow(unsafe_code)]
            // SAFETY: see above.
            unsafe {
                reaper_main(rx.as_raw_fd(), &mut bits)
            }
        }
        drop(rx);
        #[allow(unsafe_code)]
        // SAFETY: fcntl(2) on a descriptor we own.
        unsafe {
            let fl = libc::fcntl(tx.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(tx.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        Ok(Reaper { tx: Some(tx), pid, warned: AtomicBool::new(false) })
    }

    /// Registers the process group `pgid`: the reaper kills it if the watchdog dies before
    /// [`Reaper::forget`]. Returns false if the message could not be sent (the reaper is gone,
    /// or its pipe is full).
    pub(crate) fn watch(&self, pgid: u32) -> bool {
        i32::try_from(pgid).is_ok_and(|p| p > 1 && self.send(p))
    }

    /// Unregisters the process group `pgid` (it ended, or was killed).
    pub(crate) fn forget(&self, pgid: u32) -> bool {
        i32::try_from(pgid).is_ok_and(|p| p > 1 && self.send(-p))
    }

    fn send(&self, msg: i32) -> bool {
        let Some(tx) = &self.tx else { return false };
        let b = msg.to_ne_bytes();
        #[allow(unsafe_code)]
        // SAFETY: write(2) from a 4-byte buffer on the stack; writes of at most PIPE_BUF bytes
        // to a pipe are atomic, so the reader never sees half a message.
        let n = unsafe { libc::write(tx.as_raw_fd(), b.as_ptr().cast(), b.len()) };
        let ok = n == 4;
        if !ok && !self.warned.swap(true, Ordering::Relaxed) {
            crate::watchdog::log(format!(
                "the reaper (pid {}) did not take a message ({}): function processes may \
                 outlive a killed watchdog",
                self.pid,
                std::io::Error::last_os_error()
            ));
        }
        ok
    }
}

/// The reaper's loop. Async-signal-safe calls only (it runs in the fork of a multi-threaded
/// process); never returns.
#[allow(unsafe_code)]
unsafe fn reaper_main(rx: libc::c_int, bits: &mut [u64]) -> ! {
    // SAFETY (the whole function): setpgid, prctl, signal, chdir, close_range, close, read, nanosleep,
    // kill and _exit are async-signal-safe system calls; memory is the stack and `bits`.
    unsafe {
        libc::setpgid(0, 0);
        // Named so that `ps` tells it from the watchdog it was forked from.
        libc::prctl(libc::PR_SET_NAME, REAPER_NAME.as_ptr(), 0, 0, 0);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGPIPE] {
            libc::signal(sig, libc::SIG_IGN);
        }
        // No descriptor but the pipe: not the listener (the port must close with the
        // watchdog), not the pipe's write end (it would never reach end of file), not the
        // standard ones (a reader of the watchdog's output would wait for this process).
        libc::chdir(c"/".as_ptr());
        let (lo, hi) = (rx as libc::c_uint, libc::c_uint::MAX);
        let closed = (rx == 0 || libc::syscall(libc::SYS_close_range, 0, lo - 1, 0) == 0)
            && libc::syscall(libc::SYS_close_range, lo + 1, hi, 0) == 0;
        if !closed {
            for fd in 0..65536 {
                if fd != rx {
                    libc::close(fd);
                }
            }
        }
        let mut buf = [0u8; 4096];
        let mut have = 0usize;
        loop {
            let n = libc::read(rx, buf.as_mut_ptr().add(have).cast(), buf.len() - have);
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            if n <= 0 {
                break;
            }
            have += n as usize;
            let whole = have - have % 4;
            for m in buf[..whole].chunks_exact(4) {
                let v = i32::from_ne_bytes([m[0], m[1], m[2], m[3]]);
                let (p, on) = (v.unsigned_abs() as usize, v > 0);
                if let Some(w) = bits.get_mut(p / 64) {
                    if on {
                        *w |= 1 << (p % 64);
                    } else {
                        *w &= !(1 << (p % 64));
                    }
                }
            }
            buf.copy_within(whole..have, 0);
            have -= whole;
            // Under load messages come thousands a second: waking once per 2 ms to read them
            // in batches keeps this process's share small (the pipe holds thousands).
            let pause = libc::timespec { tv_sec: 0, tv_nsec: 2_000_000 };
            libc::nanosleep(&pause, std::ptr::null_mut());
        }
        for (i, w) in bits.iter().enumerate() {
            let mut w = *w;
            while w != 0 {
                let b = w.trailing_zeros() as usize;
                w &= w - 1;
                libc::kill(-((i * 64 + b) as libc::pid_t), libc::SIGKILL);
            }
        }
        libc::_exit(0)
    }
}

// ---------------------------------------------------------------------------------------
// Fork mode's spawns

/// Creates a pipe with both ends close-on-exec: `(read end, write end)`.
pub(crate) fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    #[allow(unsafe_code)]
    // SAFETY: pipe2(2) writes two descriptors into the array it is given.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(unsafe_code)]
    // SAFETY: both descriptors were just created by pipe2 and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Makes a fresh pipe end non-blocking with one `fcntl`: `F_SETFL` replaces the status
/// flags, and a pipe end from [`pipe`] has none set.
pub(crate) fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: fcntl(2) on a descriptor we own.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Reaps the child `pid` if it has exited, without blocking.
pub(crate) fn try_wait(pid: u32) -> std::io::Result<Option<std::process::ExitStatus>> {
    use std::os::unix::process::ExitStatusExt;
    let pid = pid as libc::pid_t;
    loop {
        let mut status = 0;
        #[allow(unsafe_code)]
        // SAFETY: waitpid(2) on our own child, writing only `status`.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == pid {
            return Ok(Some(std::process::ExitStatus::from_raw(status)));
        }
        if rc == 0 {
            return Ok(None);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Reaps the child `pid`, blocking until it exits.
pub(crate) fn wait_blocking(pid: u32) {
    loop {
        let mut status = 0;
        #[allow(unsafe_code)]
        // SAFETY: waitpid(2) on our own child, writing only `status`.
        let rc = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
        if rc >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// A descriptor that turns readable when the child `pid` exits (`pidfd_open(2)`, Linux 5.3).
pub(crate) fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    #[allow(unsafe_code)]
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0 as libc::c_uint) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(unsafe_code)]
    // SAFETY: the descriptor was just created and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// [`pidfd_open`] registered with the current tokio runtime, to wait for readability.
pub(crate) fn async_pidfd(pid: u32) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    let fd = pidfd_open(pid)?;
    #[allow(unsafe_code)]
    // SAFETY: an `OwnedFd` is a valid open descriptor that stays open, and the same, until it
    // is dropped with the `AsyncFd`.
    let r = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    };
    r.map_err(std::io::Error::from)
}

/// The per-request environment variables of a fork-mode process, `NAME=value` strings laid
/// end to end in one buffer, each with its NUL.
#[derive(Default)]
pub(crate) struct EnvBlock {
    buf: Vec<u8>,
    /// Where each entry starts in `buf`.
    starts: Vec<usize>,
    /// Whether a value holds a NUL byte (the spawn then fails, as std's does).
    nul: bool,
}

impl EnvBlock {
    pub(crate) fn with_capacity(bytes: usize, vars: usize) -> Self {
        EnvBlock { buf: Vec::with_capacity(bytes), starts: Vec::with_capacity(vars), nul: false }
    }

    /// Adds `name=value`.
    pub(crate) fn push(&mut self, name: &str, value: &[u8]) {
        self.start();
        self.buf.extend_from_slice(name.as_bytes());
        self.end(value);
    }

    /// Adds the variable of header `name` (`x-test-a` -> `Http_X_Test_A`, Go's canonical
    /// form with `-` as `_`) set to `value`.
    pub(crate) fn push_header(&mut self, name: &str, value: &[u8]) {
        self.start();
        self.buf.extend_from_slice(b"Http_");
        let mut upper = true;
        for &c in name.as_bytes() {
            let c = match c {
                b'-' => {
                    upper = true;
                    b'_'
                }
                c if upper => {
                    upper = false;
                    c.to_ascii_uppercase()
                }
                c => c.to_ascii_lowercase(),
            };
            self.buf.push(c);
        }
        self.end(value);
    }

    fn start(&mut self) {
        self.starts.push(self.buf.len());
    }

    fn end(&mut self, value: &[u8]) {
        self.buf.push(b'=');
        self.nul |= value.contains(&0);
        self.buf.extend_from_slice(value);
        self.buf.push(0);
    }

    /// The entries, each `NAME=value` without its NUL.
    fn entries(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.starts.iter().map(|&s| {
            let e = &self.buf[s..];
            &e[..e.iter().position(|&b| b == 0).unwrap_or(e.len())]
        })
    }

    fn names(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.entries().map(|e| &e[..e.iter().position(|&b| b == b'=').unwrap_or(e.len())])
    }
}

/// Starts fork mode's processes with `posix_spawn(3)` (vfork + exec in glibc), the command
/// line, the watchdog's own environment and the spawn attributes prepared once: per request
/// only the request's variables ([`EnvBlock`]) and the three descriptors change.
///
/// std's `Command` captures and copies the whole environment into new strings for every
/// spawn once a variable is set, about a sixth of a request's CPU time in the watchdog with
/// `cat` (BENCHMARKS.md).
pub(crate) struct Spawner {
    program: std::ffi::CString,
    /// No `/` in the program: searched on `PATH` (`posix_spawnp`), as std does.
    search_path: bool,
    /// argv, NULL-terminated, pointing into `_args`.
    argv: Vec<*mut libc::c_char>,
    _args: Vec<std::ffi::CString>,
    /// The watchdog's environment as `NAME=value` strings, and pointers to them.
    env: Vec<std::ffi::CString>,
    envp: Vec<*mut libc::c_char>,
    /// Whether some variable of the watchdog's own environment starts with `Http_` (then a
    /// request's variable of the same name replaces it).
    env_has_http: bool,
    /// Reset the signal mask, SIGPIPE to its default (the watchdog ignores it), a process
    /// group of its own.
    attr: Box<libc::posix_spawnattr_t>,
}

// SAFETY: the raw pointers point into the `CString`s the `Spawner` owns and never changes
// after `new`; `attr` is only read after `new` (posix_spawn takes it by const pointer).
#[allow(unsafe_code)]
unsafe impl Send for Spawner {}
#[allow(unsafe_code)]
unsafe impl Sync for Spawner {}

impl Drop for Spawner {
    fn drop(&mut self) {
        #[allow(unsafe_code)]
        // SAFETY: initialised in `new`, destroyed once.
        unsafe {
            libc::posix_spawnattr_destroy(&mut *self.attr);
        }
    }
}

/// The error std's `Command` gives for a NUL byte in an argument or variable.
fn nul_error() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, "nul byte found in provided data")
}

fn cstring(b: &[u8]) -> std::io::Result<std::ffi::CString> {
    std::ffi::CString::new(b).map_err(|_| nul_error())
}

impl Spawner {
    /// Prepares `program` with `args`, and the process's environment as it is now.
    pub(crate) fn new(program: &std::ffi::OsStr, args: &[String]) -> std::io::Result<Spawner> {
        use std::os::unix::ffi::OsStrExt;
        let program_c = cstring(program.as_bytes())?;
        let mut args_c = vec![program_c.clone()];
        for a in args {
            args_c.push(cstring(a.as_bytes())?);
        }
        let mut argv: Vec<*mut libc::c_char> =
            args_c.iter().map(|a| a.as_ptr().cast_mut()).collect();
        argv.push(std::ptr::null_mut());
        let mut env = Vec::new();
        for (k, v) in std::env::vars_os() {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            if let Ok(c) = std::ffi::CString::new(kv) {
                env.push(c);
            }
        }
        let envp = env.iter().map(|e| e.as_ptr().cast_mut()).collect();
        let env_has_http = env.iter().any(|e| e.as_bytes().starts_with(b"Http_"));
        #[allow(unsafe_code)]
        // SAFETY: a zeroed posix_spawnattr_t is initialised by posix_spawnattr_init before
        // any other use; the setters only write into it; the sigsets are initialised by
        // sigemptyset before they are read.
        let attr = unsafe {
            let mut attr: Box<libc::posix_spawnattr_t> = Box::new(std::mem::zeroed());
            let rc = libc::posix_spawnattr_init(&mut *attr);
            if rc != 0 {
                return Err(std::io::Error::from_raw_os_error(rc));
            }
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::posix_spawnattr_setsigmask(&mut *attr, &set);
            libc::sigaddset(&mut set, libc::SIGPIPE);
            libc::posix_spawnattr_setsigdefault(&mut *attr, &set);
            libc::posix_spawnattr_setpgroup(&mut *attr, 0);
            let flags = libc::POSIX_SPAWN_SETPGROUP
                | libc::POSIX_SPAWN_SETSIGMASK
                | libc::POSIX_SPAWN_SETSIGDEF;
            libc::posix_spawnattr_setflags(&mut *attr, flags as libc::c_short);
            attr
        };
        Ok(Spawner {
            search_path: !program.as_bytes().contains(&b'/'),
            program: program_c,
            argv,
            _args: args_c,
            env,
            envp,
            env_has_http,
            attr,
        })
    }

    /// Starts the program in a process group of its own with `stdin`, `stdout` and `stderr`
    /// (`None`: the watchdog's own) and the watchdog's environment plus `vars`; returns its
    /// pid. With `die_with_parent` it is started by std with a parent-death SIGKILL instead
    /// (fork + exec: slower; for when the reaper could not be started).
    pub(crate) fn spawn(
        &self,
        vars: &EnvBlock,
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: Option<OwnedFd>,
        die_with_parent: bool,
    ) -> std::io::Result<u32> {
        if vars.nul {
            return Err(nul_error());
        }
        if die_with_parent {
            return self.spawn_std(vars, stdin, stdout, stderr);
        }
        let mut envp: Vec<*mut libc::c_char> =
            Vec::with_capacity(self.envp.len() + vars.starts.len() + 1);
        let mine: Vec<&[u8]> = vars.names().collect();
        if self.env_has_http {
            for (e, p) in self.env.iter().zip(&self.envp) {
                let b = e.as_bytes();
                let name = &b[..b.iter().position(|&c| c == b'=').unwrap_or(b.len())];
                if !mine.contains(&name) {
                    envp.push(*p);
                }
            }
        } else {
            envp.extend_from_slice(&self.envp);
        }
        for (i, &s) in vars.starts.iter().enumerate() {
            // A variable set again later (a repeated header, a header named like one of the
            // request's own variables) takes the later value, as std's `Command::env` does.
            if !mine[i + 1..].contains(&mine[i]) {
                envp.push(vars.buf[s..].as_ptr().cast::<libc::c_char>().cast_mut());
            }
        }
        envp.push(std::ptr::null_mut());
        let mut pid: libc::pid_t = 0;
        #[allow(unsafe_code)]
        // SAFETY: the file actions are initialised before use and destroyed after; argv and
        // envp are NULL-terminated arrays of NUL-terminated strings that outlive the call
        // (`self`, `vars`); the descriptors are open for the whole call.
        let rc = unsafe {
            let mut fa: libc::posix_spawn_file_actions_t = std::mem::zeroed();
            let mut rc = libc::posix_spawn_file_actions_init(&mut fa);
            if rc == 0 {
                let fds = [
                    Some(stdin.as_raw_fd()),
                    Some(stdout.as_raw_fd()),
                    stderr.as_ref().map(|e| e.as_raw_fd()),
                ];
                for (target, fd) in fds.iter().enumerate() {
                    if let (0, Some(fd)) = (rc, fd) {
                        rc = libc::posix_spawn_file_actions_adddup2(
                            &mut fa,
                            *fd,
                            target as libc::c_int,
                        );
                    }
                }
                if rc == 0 {
                    let spawn =
                        if self.search_path { libc::posix_spawnp } else { libc::posix_spawn };
                    rc = spawn(
                        &mut pid,
                        self.program.as_ptr(),
                        &fa,
                        &*self.attr,
                        self.argv.as_ptr(),
                        envp.as_ptr(),
                    );
                }
                libc::posix_spawn_file_actions_destroy(&mut fa);
            }
            rc
        };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        Ok(pid as u32)
    }

    fn spawn_std(
        &self,
        vars: &EnvBlock,
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: Option<OwnedFd>,
    ) -> std::io::Result<u32> {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::process::CommandExt;
        let os = |b: &[u8]| std::ffi::OsStr::from_bytes(b).to_os_string();
        let mut cmd = std::process::Command::new(os(self.program.as_bytes()));
        cmd.args(self._args[1..].iter().map(|a| os(a.as_bytes())));
        cmd.env_clear();
        for e in self.env.iter().map(|e| e.as_bytes()).chain(vars.entries()) {
            let eq = e.iter().position(|&c| c == b'=').unwrap_or(e.len());
            cmd.env(os(&e[..eq]), os(e.get(eq + 1..).unwrap_or_default()));
        }
        cmd.stdin(stdin).stdout(stdout);
        if let Some(e) = stderr {
            cmd.stderr(e);
        }
        cmd.process_group(0);
        die_with_parent_std(&mut cmd, libc::SIGKILL);
        // Dropping std's handle neither waits for the process nor kills it: the caller reaps it.
        Ok(cmd.spawn()?.id())
    }
}
