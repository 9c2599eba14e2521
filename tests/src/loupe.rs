//! The real `loupe` binary, started on a pods file, scraped over HTTP, stopped with a signal.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::http::{self, Response};
use crate::{free_port, io_err, wait_for, workspace_root, Error, Proc, Result, TempDir};

/// One endpoint of a pod in the pods file.
#[derive(Debug, Clone, Default)]
pub struct EndpointSpec {
    pub port: u16,
    pub path: Option<String>,
    pub container: Option<String>,
    pub name: Option<String>,
}

impl EndpointSpec {
    pub fn port(port: u16) -> EndpointSpec {
        EndpointSpec {
            port,
            ..EndpointSpec::default()
        }
    }

    pub fn container(mut self, c: &str) -> EndpointSpec {
        self.container = Some(c.to_string());
        self
    }

    pub fn name(mut self, n: &str) -> EndpointSpec {
        self.name = Some(n.to_string());
        self
    }

    pub fn path(mut self, p: &str) -> EndpointSpec {
        self.path = Some(p.to_string());
        self
    }

    /// The `endpoint` label loupe gives it: the name, else the port number.
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.port.to_string())
    }
}

/// How loupe finds the pod's network namespace.
#[derive(Debug, Clone)]
pub enum NetnsRef {
    Path(PathBuf),
    Pid(u32),
}

/// One pod in the pods file.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub netns: NetnsRef,
    pub endpoints: Vec<EndpointSpec>,
}

/// Renders the pods file (format in design.md).
/// A pod with the test app on 127.0.0.1:`port` (started with `app_args`), and its pods-file entry
/// in namespace `shop` with one endpoint on that port, container `app`.
pub fn pod_with_app(
    name: &str,
    port: u16,
    app_args: &[&str],
) -> Result<(crate::pod::Pod, Proc, PodSpec)> {
    let pod = crate::pod::Pod::new()?;
    let app = pod.spawn_app(port, app_args)?;
    let spec = PodSpec {
        namespace: "shop".into(),
        name: name.into(),
        netns: NetnsRef::Path(pod.netns_path()),
        endpoints: vec![EndpointSpec::port(port).container("app")],
    };
    Ok((pod, app, spec))
}

pub fn pods_yaml(pods: &[PodSpec]) -> String {
    let mut y = String::from("pods:\n");
    if pods.is_empty() {
        return "pods: []\n".into();
    }
    for p in pods {
        let _ = writeln!(y, "  - namespace: {}\n    name: {}", p.namespace, p.name);
        match &p.netns {
            NetnsRef::Path(path) => {
                let _ = writeln!(y, "    netns: {}", path.display());
            }
            NetnsRef::Pid(pid) => {
                let _ = writeln!(y, "    pid: {pid}");
            }
        }
        let _ = writeln!(y, "    endpoints:");
        for e in &p.endpoints {
            let _ = writeln!(y, "      - port: {}", e.port);
            if let Some(v) = &e.path {
                let _ = writeln!(y, "        path: {v}");
            }
            if let Some(v) = &e.container {
                let _ = writeln!(y, "        container: {v}");
            }
            if let Some(v) = &e.name {
                let _ = writeln!(y, "        name: {v}");
            }
        }
    }
    y
}

/// The loupe binary: `$LOUPE_BIN`, else the workspace's debug build, brought up to date first.
pub fn loupe_bin() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("LOUPE_BIN") {
        return Ok(PathBuf::from(bin));
    }
    // `cargo test -p loupe-tests` does not build another package's binary: build it once per
    // test process, so that a test never runs a loupe older than the sources (a no-op when it
    // is up to date).
    static BUILT: std::sync::OnceLock<std::result::Result<PathBuf, String>> =
        std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let out = Command::new(cargo)
                .args(["build", "--quiet", "-p", "loupe-agent", "--bin", "loupe"])
                .current_dir(workspace_root())
                .output()
                .map_err(|e| format!("running cargo build: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "cargo build -p loupe-agent --bin loupe failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace_root().join("target"));
            Ok(target.join("debug/loupe"))
        })
        .clone()
        .map_err(|detail| Error::Invalid {
            what: "loupe binary".into(),
            detail,
        })
}

/// How the tests' requests reach loupe.
#[derive(Debug, Clone, Default)]
pub struct Client {
    /// `Some`: loupe serves TLS.
    pub tls: Option<crate::https::Https>,
    /// Sent with every request (e.g. `Authorization`).
    pub headers: Vec<(String, String)>,
}

impl Client {
    /// `GET path` on `addr` with the client's headers, then `extra`.
    pub fn get(&self, addr: &str, path: &str, extra: &[(&str, &str)]) -> Result<Response> {
        let mut headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        headers.extend_from_slice(extra);
        match &self.tls {
            Some(tls) => crate::https::get(addr, path, tls, &headers),
            None => http::get(addr, path, &headers, Duration::from_secs(30)),
        }
    }
}

/// A running (or stopped) loupe agent with its own pods file, log file and listen port.
#[derive(Debug)]
pub struct Loupe {
    pub bin: PathBuf,
    pub listen: String,
    pub pods_file: PathBuf,
    pub log_file: PathBuf,
    pub args: Vec<String>,
    /// Whether `--pods-file` is passed; false when `args` name another discovery source.
    uses_pods_file: bool,
    /// Whether the process runs with bpf(2) denied ([`crate::seccomp::deny_bpf`]).
    deny_bpf: bool,
    /// How requests reach it: TLS (when loupe serves it) and headers sent with every request.
    pub client: Client,
    /// `cgroup.procs` of the memory cgroup it starts in (before its first instruction).
    cgroup_procs: Option<PathBuf>,
    proc: Option<Proc>,
    dir: TempDir,
}

impl Loupe {
    /// Writes the pods file and starts loupe with `extra_args`; returns once `/readyz` is 200.
    pub fn start(pods: &[PodSpec], extra_args: &[&str]) -> Result<Loupe> {
        let mut loupe = Loupe::new(extra_args, true)?;
        loupe.write_pods(&pods_yaml(pods))?;
        loupe.spawn()?;
        Ok(loupe)
    }

    /// Like [`Loupe::start`], with every bpf(2) call failing with EPERM (as under a container
    /// runtime's default seccomp profile): the probe cannot load, fetching still works.
    pub fn start_denying_bpf(pods: &[PodSpec], extra_args: &[&str]) -> Result<Loupe> {
        let mut loupe = Loupe::new(extra_args, true)?;
        loupe.deny_bpf = true;
        loupe.write_pods(&pods_yaml(pods))?;
        loupe.spawn()?;
        Ok(loupe)
    }

    /// Starts loupe with bpf(2) denied and waits up to `timeout` for it to exit by itself;
    /// returns its exit status and log.
    pub fn exit_denying_bpf(
        pods: &[PodSpec],
        extra_args: &[&str],
        timeout: Duration,
    ) -> Result<(std::process::ExitStatus, String)> {
        let mut loupe = Loupe::new(extra_args, true)?;
        loupe.deny_bpf = true;
        loupe.write_pods(&pods_yaml(pods))?;
        loupe.launch()?;
        let proc = loupe.proc.as_mut().ok_or_else(|| Error::Invalid {
            what: "loupe".into(),
            detail: "not started".into(),
        })?;
        let status = proc.wait_exit(timeout)?;
        Ok((status, loupe.log()))
    }

    /// Like [`Loupe::start`], reached through `client` (TLS, credentials).
    pub fn start_with_client(
        pods: &[PodSpec],
        extra_args: &[&str],
        client: Client,
    ) -> Result<Loupe> {
        let mut loupe = Loupe::new(extra_args, true)?;
        loupe.client = client;
        loupe.write_pods(&pods_yaml(pods))?;
        loupe.spawn()?;
        Ok(loupe)
    }

    /// Like [`Loupe::start`], inside `cgroup` from its first instruction (so it reads that
    /// cgroup's memory limit at start, as in a container).
    pub fn start_in(
        cgroup: &crate::cgroup::MemoryCgroup,
        pods: &[PodSpec],
        extra_args: &[&str],
    ) -> Result<Loupe> {
        let mut loupe = Loupe::new(extra_args, true)?;
        loupe.cgroup_procs = Some(cgroup.procs_file());
        loupe.write_pods(&pods_yaml(pods))?;
        loupe.spawn()?;
        Ok(loupe)
    }

    /// Starts loupe without a pods file, its discovery given by `args` (e.g. `--kubernetes
    /// --node-name n1 --kubeconfig FILE`); returns once `/readyz` is 200.
    pub fn start_with_args(args: &[&str]) -> Result<Loupe> {
        let mut loupe = Loupe::new(args, false)?;
        loupe.spawn()?;
        Ok(loupe)
    }

    /// A loupe not started yet, with its own directory and a free port.
    fn new(args: &[&str], uses_pods_file: bool) -> Result<Loupe> {
        let dir = TempDir::new("loupe-agent")?;
        Ok(Loupe {
            bin: loupe_bin()?,
            listen: format!("127.0.0.1:{}", free_port()?),
            pods_file: dir.path().join("pods.yaml"),
            log_file: dir.path().join("loupe.log"),
            args: args.iter().map(|s| s.to_string()).collect(),
            uses_pods_file,
            deny_bpf: false,
            client: Client::default(),
            cgroup_procs: None,
            proc: None,
            dir,
        })
    }

    /// Whether the loupe process still runs.
    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Proc::running)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Replaces the pods file's content (atomically, by rename).
    pub fn write_pods(&self, yaml: &str) -> Result<()> {
        let tmp = self.pods_file.with_extension("tmp");
        std::fs::write(&tmp, yaml).map_err(io_err(format!("writing {}", tmp.display())))?;
        std::fs::rename(&tmp, &self.pods_file)
            .map_err(io_err(format!("renaming to {}", self.pods_file.display())))
    }

    /// Starts the process (appending to the log) and waits for `/readyz`.
    pub fn spawn(&mut self) -> Result<()> {
        self.launch()?;
        self.wait_ready()
    }

    /// Starts the process, appending to the log.
    fn launch(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .map_err(io_err(format!("opening {}", self.log_file.display())))?;
        let log2 = log
            .try_clone()
            .map_err(io_err("duplicating the log handle"))?;
        let pods = self.pods_file.to_string_lossy().into_owned();
        let mut command = match &self.cgroup_procs {
            // The shell moves itself into the cgroup, then becomes loupe (same pid).
            Some(procs) => {
                let mut c = Command::new("sh");
                c.args(["-c", "echo $$ > \"$0\" && exec \"$@\""])
                    .arg(procs)
                    .arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        command.args(["run", "--listen", &self.listen]);
        if self.uses_pods_file {
            command.args(["--pods-file", &pods]);
        }
        if self.deny_bpf {
            crate::seccomp::deny_bpf(&mut command);
        }
        let child = command
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(io_err(format!("starting {}", self.bin.display())))?;
        self.proc = Some(Proc {
            what: format!("loupe on {}", self.listen),
            child,
        });
        Ok(())
    }

    fn wait_ready(&mut self) -> Result<()> {
        let listen = self.listen.clone();
        let log_file = self.log_file.clone();
        let client = self.client.clone();
        let mut proc = self.proc.as_mut();
        wait_for(
            &format!("loupe on {listen} to be ready"),
            Duration::from_secs(30),
            || {
                if let Some(p) = proc.as_mut() {
                    if !p.running() {
                        return Err(format!(
                            "loupe exited; log:\n{}",
                            std::fs::read_to_string(&log_file).unwrap_or_default()
                        ));
                    }
                }
                match client.get(&listen, "/readyz", &[]) {
                    Ok(r) if r.status == 200 => Ok(Some(())),
                    Ok(r) => Err(format!("/readyz answered {}", r.status)),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// `GET path` on loupe.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Result<Response> {
        self.client.get(&self.listen, path, headers)
    }

    /// `/metrics` as text; a non-200 answer is an error.
    pub fn metrics(&self) -> Result<String> {
        let r = self.get("/metrics", &[])?;
        if r.status != 200 {
            return Err(Error::Invalid {
                what: format!("GET http://{}/metrics", self.listen),
                detail: format!("status {}: {}", r.status, String::from_utf8_lossy(&r.body)),
            });
        }
        r.text()
    }

    /// Scrapes `/metrics` until `pred` holds on the strictly parsed output; returns that output.
    pub fn metrics_until(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&crate::expo::Exposition) -> bool,
    ) -> Result<(String, crate::expo::Exposition)> {
        wait_for(what, timeout, || {
            let text = self.metrics().map_err(|e| e.to_string())?;
            let exp = crate::expo::parse_strict(&text).map_err(|e| e.to_string())?;
            if pred(&exp) {
                Ok(Some((text, exp)))
            } else {
                let up: Vec<String> = exp
                    .find("loupe_target_up", &[])
                    .map(|s| {
                        format!(
                            "{}/{}={}",
                            s.label("pod").unwrap_or("?"),
                            s.label("endpoint").unwrap_or("?"),
                            s.value
                        )
                    })
                    .collect();
                let mut per_pod = std::collections::BTreeMap::new();
                for s in exp.samples.iter().filter(|s| !s.name.starts_with("loupe_")) {
                    *per_pod.entry(s.label("pod").unwrap_or("-")).or_insert(0) += 1;
                }
                Err(format!(
                    "{} samples, condition not met; loupe_target_up: {}; other samples per pod: {per_pod:?}",
                    exp.samples.len(),
                    up.join(" ")
                ))
            }
        })
    }

    /// Sends `sig` and waits for the exit.
    pub fn stop(&mut self, sig: i32) -> Result<std::process::ExitStatus> {
        let mut proc = self.proc.take().ok_or_else(|| Error::Invalid {
            what: "loupe".into(),
            detail: "not running".into(),
        })?;
        proc.signal(sig)?;
        proc.wait_exit(Duration::from_secs(20))
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    /// Waits until the log contains every one of `needles` on one line; returns that line.
    pub fn wait_log_line(&self, needles: &[&str], timeout: Duration) -> Result<String> {
        wait_for(
            &format!("a loupe log line with {needles:?}"),
            timeout,
            || {
                Ok(self
                    .log()
                    .lines()
                    .find(|l| needles.iter().all(|n| l.contains(n)))
                    .map(str::to_string))
            },
        )
    }
}

impl Drop for Loupe {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.signal(libc::SIGTERM);
            if p.wait_exit(Duration::from_secs(10)).is_err() {
                let _ = p.signal(libc::SIGKILL);
                let _ = p.wait_exit(Duration::from_secs(5));
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "--- loupe log ({}) ---\n{}",
                self.log_file.display(),
                self.log()
            );
        }
    }
}
