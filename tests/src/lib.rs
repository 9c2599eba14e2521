//! The testbed: real parts, really started.
//!
//! Pods are network namespaces with a veth to the host, the sidecar is the real Envoy with strict
//! mTLS, the scraper is the real Prometheus, the agent is the real `loupe` binary. Every part is an
//! RAII guard: dropping it (also while a test panics) stops its processes and removes what it made.

pub mod app_body;
pub mod attached;
pub mod certs;
pub mod cgroup;
pub mod client;
pub mod envoy;
pub mod expo;
pub mod http;
pub mod https;
pub mod kubeapi;
pub mod loupe;
pub mod native_body;
pub mod pod;
pub mod podman;
pub mod prometheus;
pub mod seccomp;
pub mod testbed;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// What went wrong in the testbed, naming the part and the step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed (exit {code:?}): {stderr}")]
    Command {
        what: String,
        code: Option<i32>,
        stderr: String,
    },
    #[error("timed out after {after:?} waiting for {what}{}", last.as_deref().map(|l| format!(" (last: {l})")).unwrap_or_default())]
    Timeout {
        what: String,
        after: Duration,
        last: Option<String>,
    },
    #[error("{what}: {detail}")]
    Invalid { what: String, detail: String },
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Runs a command to completion; a non-zero exit is an error carrying its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let what = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(io_err(what.clone()))?;
    if !out.status.success() {
        return Err(Error::Command {
            what,
            code: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A name unique to this process and call, short enough for interface names when `prefix` is short.
pub fn unique_suffix() -> (u32, u32) {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    (std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Polls `probe` until it returns `Ok(Some(_))` or the deadline passes. The last error (or the
/// last "not yet" reason) is reported in the timeout.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> std::result::Result<Option<T>, String>,
) -> Result<T> {
    let start = Instant::now();
    let mut last = None;
    let mut pause = Duration::from_millis(10);
    loop {
        match probe() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = Some(e),
        }
        if start.elapsed() >= timeout {
            return Err(Error::Timeout {
                what: what.to_string(),
                after: timeout,
                last,
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// A free TCP port on the host's loopback (bound then released; good enough for tests).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io_err("binding a free port"))?;
    let port = l
        .local_addr()
        .map_err(io_err("reading a free port"))?
        .port();
    Ok(port)
}

/// The workspace root (the directory holding the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A test binary of this crate, built next to the test executables.
pub fn crate_bin(name: &str) -> Result<PathBuf> {
    // Integration tests live in target/<profile>/deps; the crate's binaries one level up.
    let exe = std::env::current_exe().map_err(io_err("locating the current executable"))?;
    let mut candidates = Vec::new();
    if let Some(dir) = exe.parent() {
        candidates.push(dir.join(name));
        if let Some(up) = dir.parent() {
            candidates.push(up.join(name));
        }
    }
    candidates.push(workspace_root().join("target/debug").join(name));
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| Error::Invalid {
            what: format!("binary {name}"),
            detail: "not found next to the test executable nor in target/debug; run `cargo build -p loupe-tests`".into(),
        })
}

/// What the testbed needs root for (pods are network namespaces with veths, loupe loads eBPF), as
/// the tests name it to `loupe_testkit::root::require`.
pub const TESTBED_NEEDS: &str = "network namespaces, veths, eBPF";

/// A temporary directory removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> Result<TempDir> {
        let (pid, n) = unique_suffix();
        let path = std::env::temp_dir().join(format!("{prefix}-{pid}-{n}"));
        std::fs::create_dir_all(&path).map_err(io_err(format!("creating {}", path.display())))?;
        Ok(TempDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A child process killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct Proc {
    pub what: String,
    pub child: std::process::Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: i32) -> Result<()> {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on a child we have not reaped yet, so the pid is still ours.
        let rc = unsafe { libc::kill(pid, sig) };
        if rc != 0 {
            return Err(Error::Io {
                what: format!("signal {sig} to {} (pid {pid})", self.what),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit; returns its status if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let what = format!("{} (pid {}) to exit", self.what, self.child.id());
        let child = &mut self.child;
        wait_for(&what, timeout, || match child.try_wait() {
            Ok(s) => Ok(s),
            Err(e) => Err(e.to_string()),
        })
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
