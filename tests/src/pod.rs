//! A "pod": a network namespace with `lo` up and a veth pair to the host carrying a /30 from
//! 198.19.0.0/16 (inside 198.18.0.0/15, the range set aside for test networks), one per pod.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::{io_err, run, unique_suffix, wait_for, Proc, Result, TempDir};

static POD_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace with a veth to the host. Dropping it kills every process inside and removes
/// the namespace and the veth.
#[derive(Debug)]
pub struct Pod {
    pub name: String,
    pub host_if: String,
    pub host_ip: Ipv4Addr,
    pub pod_ip: Ipv4Addr,
    logs: TempDir,
}

impl Pod {
    /// Creates the namespace `loupe-<pid>-<n>` with `lo` up and `eth0` at the pod address.
    pub fn new() -> Result<Pod> {
        let (pid, n) = unique_suffix();
        let name = format!("loupe-{pid}-{n}");
        // Interface names are limited to 15 bytes; a counter of pods only (not of every unique
        // name) keeps the short suffix from wrapping onto a pod that still exists.
        let k = POD_COUNTER.fetch_add(1, Ordering::Relaxed) % 10_000;
        let host_if = format!("lp{}x{k}", pid % 10_000_000);
        let peer_if = format!("lq{}x{k}", pid % 10_000_000);
        let (host_ip, pod_ip) = free_slash30(pid, n)?;
        let logs = TempDir::new(&format!("{name}-logs"))?;
        run("ip", &["netns", "add", &name])?;
        // From here on Drop cleans up whatever the rest manages to create.
        let pod = Pod {
            name,
            host_if,
            host_ip,
            pod_ip,
            logs,
        };
        pod.setup(&peer_if)?;
        Ok(pod)
    }

    fn setup(&self, peer_if: &str) -> Result<()> {
        let ns = self.name.as_str();
        let host_cidr = format!("{}/30", self.host_ip);
        let pod_cidr = format!("{}/30", self.pod_ip);
        run(
            "ip",
            &["netns", "exec", ns, "ip", "link", "set", "lo", "up"],
        )?;
        run(
            "ip",
            &[
                "link",
                "add",
                &self.host_if,
                "type",
                "veth",
                "peer",
                "name",
                peer_if,
            ],
        )?;
        run("ip", &["link", "set", peer_if, "netns", ns])?;
        run(
            "ip",
            &[
                "netns", "exec", ns, "ip", "link", "set", peer_if, "name", "eth0",
            ],
        )?;
        run(
            "ip",
            &[
                "netns", "exec", ns, "ip", "addr", "add", &pod_cidr, "dev", "eth0",
            ],
        )?;
        run(
            "ip",
            &["netns", "exec", ns, "ip", "link", "set", "eth0", "up"],
        )?;
        run("ip", &["addr", "add", &host_cidr, "dev", &self.host_if])?;
        run("ip", &["link", "set", &self.host_if, "up"])?;
        Ok(())
    }

    /// The namespace's bind-mount path, as the pods file's `netns:` wants it.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// Where `spawn`ed processes write stderr (`<what>.log`).
    pub fn log_path(&self, what: &str) -> PathBuf {
        self.logs.path().join(format!("{what}.log"))
    }

    /// Starts `program args` inside the namespace (`ip netns exec` execs it, so the returned pid is
    /// the program's own). Stdout is discarded, stderr goes to `log_path(what)`.
    pub fn spawn(&self, what: &str, program: &str, args: &[&str]) -> Result<Proc> {
        let log = std::fs::File::create(self.log_path(what)).map_err(io_err(format!(
            "creating the log of {what} in pod {}",
            self.name
        )))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(io_err(format!("starting {what} in pod {}", self.name)))?;
        Ok(Proc {
            what: format!("{what} in pod {}", self.name),
            child,
        })
    }

    /// Starts the test app (`metrics-app`) inside the pod on 127.0.0.1:`port` and waits until it
    /// answers `/requests`.
    pub fn spawn_app(&self, port: u16, extra: &[&str]) -> Result<Proc> {
        self.spawn_app_at(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), extra)
    }

    /// Starts the test app listening on `listen` (e.g. `[::]:8080`) and waits until it answers
    /// `/requests` there (on the loopback of that family when `listen` is a wildcard).
    pub fn spawn_app_at(&self, listen: SocketAddr, extra: &[&str]) -> Result<Proc> {
        self.spawn_test_app("metrics-app", listen, extra)
    }

    /// Starts the native-histogram test app (`native-app`, its metrics in
    /// [`crate::native_body`]) listening on `listen` (e.g. `0.0.0.0:8080`, to be reached on the
    /// pod's address too) and waits until it answers `/requests`.
    pub fn spawn_native_app(&self, listen: SocketAddr, extra: &[&str]) -> Result<Proc> {
        self.spawn_test_app("native-app", listen, extra)
    }

    /// Starts the test app binary `name` with `--listen listen` and `extra`, and waits until it
    /// answers `/requests`.
    fn spawn_test_app(&self, name: &str, listen: SocketAddr, extra: &[&str]) -> Result<Proc> {
        let bin = crate::crate_bin(name)?;
        let listen_arg = listen.to_string();
        let mut args = vec!["--listen", listen_arg.as_str()];
        args.extend_from_slice(extra);
        let port = listen.port();
        let what = format!("{name}-{port}");
        let mut proc = self.spawn(&what, &bin.to_string_lossy(), &args)?;
        let mut ready_at = listen;
        if listen.ip().is_unspecified() {
            ready_at.set_ip(match listen.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        let url = format!("http://{ready_at}/requests");
        wait_for(
            &format!("{what} in pod {} to answer", self.name),
            Duration::from_secs(20),
            || {
                if !proc.running() {
                    return Err(format!(
                        "exited: {}",
                        std::fs::read_to_string(self.log_path(&what)).unwrap_or_default()
                    ));
                }
                // -g: the brackets of an IPv6 address are not a curl URL glob.
                Ok(self.curl(&["-sfg", "-o", "/dev/null", &url]).ok())
            },
        )?;
        Ok(proc)
    }

    /// The `/metrics` requests the test app on 127.0.0.1:`port` has answered so far, read from
    /// inside the pod (`/requests` itself is not counted).
    pub fn app_requests(&self, port: u16) -> Result<u64> {
        let out = self.curl(&["-sf", &format!("http://127.0.0.1:{port}/requests")])?;
        out.lines()
            .find_map(|l| l.strip_prefix("app_requests_total{path=\"/metrics\"} "))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| crate::Error::Invalid {
                what: format!("/requests of the app in pod {}", self.name),
                detail: out.clone(),
            })
    }

    /// Runs a command inside the namespace to completion and returns its stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut full = vec!["netns", "exec", self.name.as_str(), program];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// `curl` inside the pod, stdout returned (the caller passes `-s`, `-f` as it needs).
    pub fn curl(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["--max-time", "10"];
        full.extend_from_slice(args);
        self.exec("curl", &full)
    }

    /// Pids of every process in the namespace.
    pub fn pids(&self) -> Vec<i32> {
        run("ip", &["netns", "pids", &self.name])
            .map(|out| {
                out.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A /30 in 198.19.0.0/16 (the upper half of the test range 198.18.0.0/15; others' tests tend to
/// use the lower one) not yet on any host interface: `.1` for the host side, `.2` for the pod.
fn free_slash30(pid: u32, n: u32) -> Result<(Ipv4Addr, Ipv4Addr)> {
    let in_use = run("ip", &["-4", "-o", "addr", "show"])?;
    let base = u32::from(Ipv4Addr::new(198, 19, 0, 0));
    let first = (pid % 512) * 32 + n % 32;
    for i in 0..16384 {
        let slot = (first + i * 7) % 16384;
        let net = base + slot * 4;
        let taken = (0..4).any(|k| in_use.contains(&format!(" {}/", Ipv4Addr::from(net + k))));
        if !taken {
            return Ok((Ipv4Addr::from(net + 1), Ipv4Addr::from(net + 2)));
        }
    }
    Err(crate::Error::Invalid {
        what: "pod addresses".into(),
        detail: "every /30 of 198.19.0.0/16 is in use".into(),
    })
}

impl Drop for Pod {
    fn drop(&mut self) {
        // Whatever still runs inside (spawned helpers, shell loops): SIGKILL.
        for pid in self.pids() {
            // SAFETY: kill(2) with a pid just listed for our namespace; at worst it is gone already.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = wait_for("pod processes to exit", Duration::from_secs(5), || {
            Ok(self.pids().is_empty().then_some(()))
        });
        let _ = run("ip", &["netns", "del", &self.name]);
        let _ = run("ip", &["link", "del", &self.host_if]);
    }
}
