//! loupe's image run under podman the way the DaemonSet runs it on a node.
//!
//! [`ContainerSpec::from_daemonset`] reads what the rendered DaemonSet asks of its container
//! (securityContext, hostPID, args, env, probes, volumes, resources); [`Container::run`] turns
//! exactly that into podman flags. The only other flags are the kubelet's part (the pod's
//! network namespace, the service account volume and `KUBERNETES_SERVICE_*`, `NODE_NAME` from the
//! downward API, the emptyDir's directory) and this machine's (runc, cgroupfs under our own
//! memory cgroup, ulimits: shared notes `testbed.md`). Every container, and every cgroup directory
//! podman makes for it, is removed on drop.
//!
//! Longer than 600 lines: the manifest reading and the flag translation belong together, so that
//! a field the DaemonSet gains is either translated or refused here.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::{io_err, run, unique_suffix, wait_for, Error, Result, TempDir};

/// The image the tests run: `$LOUPE_IMAGE`, else `localhost/loupe:<workspace version>`, built
/// (or brought up to date) once per test process by `scripts/image.sh`.
pub fn image() -> Result<String> {
    if let Ok(image) = std::env::var("LOUPE_IMAGE") {
        return Ok(image);
    }
    static BUILT: std::sync::OnceLock<std::result::Result<String, String>> =
        std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let script = crate::workspace_root().join("scripts/image.sh");
            let out = Command::new(&script)
                .output()
                .map_err(|e| format!("running {}: {e}", script.display()))?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() {
                return Err(format!(
                    "{} failed: {}{stdout}",
                    script.display(),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            stdout
                .lines()
                .find_map(|l| l.strip_prefix("image: "))
                .and_then(|l| l.split_whitespace().next())
                .map(str::to_string)
                .ok_or_else(|| format!("no `image:` line in the output of image.sh: {stdout}"))
        })
        .clone()
        .map_err(|detail| Error::Invalid {
            what: "loupe image".into(),
            detail,
        })
}

/// Whether the image tests can run here: root and podman. Skips with the reason, except under
/// `CI=true`, where that panics.
pub fn available(test: &str) -> bool {
    if !loupe_testkit::root::require(test, "podman, network namespaces, cgroups, eBPF") {
        return false;
    }
    if run("podman", &["--version"]).is_ok() {
        return true;
    }
    loupe_testkit::root::skip(test, "needs podman (scripts/setup.sh installs it)")
}

/// An environment variable of the container.
#[derive(Clone, Debug, PartialEq)]
pub enum EnvVar {
    Value(String, String),
    /// `valueFrom.fieldRef.fieldPath`, filled by the kubelet.
    Field(String, String),
}

/// An HTTP probe: path and the container port it names.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpProbe {
    pub path: String,
    pub port: u16,
    /// `scheme: HTTPS`: the kubelet speaks TLS, without verifying the certificate.
    pub https: bool,
    pub timeout: Duration,
}

/// A volume mount: an emptyDir (its medium and sizeLimit) at a path.
#[derive(Clone, Debug, PartialEq)]
pub struct EmptyDirMount {
    pub path: String,
    pub read_only: bool,
    pub memory: bool,
    pub size_limit: Option<String>,
}

/// What the DaemonSet's (only) container asks for.
#[derive(Clone, Debug)]
pub struct ContainerSpec {
    pub args: Vec<String>,
    pub env: Vec<EnvVar>,
    pub host_pid: bool,
    pub host_network: bool,
    pub privileged: bool,
    pub allow_privilege_escalation: Option<bool>,
    pub run_as_user: Option<u64>,
    pub read_only_root: bool,
    /// `RuntimeDefault`, `Unconfined` or `Localhost:<profile path>`.
    pub seccomp: String,
    pub cap_drop: Vec<String>,
    pub cap_add: Vec<String>,
    pub liveness: HttpProbe,
    pub readiness: HttpProbe,
    pub mounts: Vec<EmptyDirMount>,
    pub memory_limit: Option<String>,
    pub memory_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub cpu_request: Option<String>,
    pub grace_seconds: u64,
    pub automount_token: bool,
}

fn invalid(what: &str, detail: impl Into<String>) -> Error {
    Error::Invalid {
        what: format!("DaemonSet {what}"),
        detail: detail.into(),
    }
}

fn strings(v: &Value, what: &str) -> Result<Vec<String>> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| invalid(what, format!("not a string: {i}")))
            })
            .collect(),
        other => Err(invalid(what, format!("not a list: {other}"))),
    }
}

/// Memory quantities as podman wants them (`256Mi` -> `256m`); Ki/Mi/Gi only.
fn memory_flag(q: &str) -> Result<String> {
    for (suffix, unit) in [("Ki", "k"), ("Mi", "m"), ("Gi", "g")] {
        if let Some(n) = q.strip_suffix(suffix) {
            return Ok(format!("{n}{unit}"));
        }
    }
    Err(invalid("memory quantity", q))
}

/// Millicores of a CPU quantity (`50m`, `1`, `0.5`).
fn millicores(q: &str) -> Result<u64> {
    if let Some(m) = q.strip_suffix('m') {
        return m.parse().map_err(|_| invalid("cpu quantity", q));
    }
    let cores: f64 = q.parse().map_err(|_| invalid("cpu quantity", q))?;
    Ok((cores * 1000.0).round() as u64)
}

impl ContainerSpec {
    /// Reads the DaemonSet (a rendered manifest document) of one container.
    pub fn from_daemonset(ds: &Value) -> Result<ContainerSpec> {
        let pod = &ds["spec"]["template"]["spec"];
        let containers = pod["containers"].as_array().cloned().unwrap_or_default();
        let [c] = containers.as_slice() else {
            return Err(invalid(
                "containers",
                format!("want one, got {}", containers.len()),
            ));
        };
        let sc = &c["securityContext"];
        let ports: Vec<(String, u16)> = c["ports"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|p| {
                Some((
                    p["name"].as_str()?.to_string(),
                    p["containerPort"].as_u64()? as u16,
                ))
            })
            .collect();
        let probe = |which: &str| -> Result<HttpProbe> {
            let get = &c[which]["httpGet"];
            let port = match &get["port"] {
                Value::Number(n) => n.as_u64().map(|n| n as u16),
                Value::String(name) => ports.iter().find(|(n, _)| n == name).map(|(_, p)| *p),
                _ => None,
            }
            .ok_or_else(|| invalid(which, format!("no port in {get}")))?;
            Ok(HttpProbe {
                path: get["path"].as_str().unwrap_or("/").to_string(),
                port,
                https: get["scheme"].as_str() == Some("HTTPS"),
                timeout: Duration::from_secs(c[which]["timeoutSeconds"].as_u64().unwrap_or(1)),
            })
        };
        let spec = ContainerSpec {
            args: strings(&c["args"], "args")?,
            env: env_vars(&c["env"])?,
            host_pid: pod["hostPID"].as_bool().unwrap_or(false),
            host_network: pod["hostNetwork"].as_bool().unwrap_or(false),
            privileged: sc["privileged"].as_bool().unwrap_or(false),
            allow_privilege_escalation: sc["allowPrivilegeEscalation"].as_bool(),
            run_as_user: sc["runAsUser"].as_u64(),
            read_only_root: sc["readOnlyRootFilesystem"].as_bool().unwrap_or(false),
            seccomp: match sc["seccompProfile"]["type"].as_str() {
                Some("Localhost") => format!(
                    "Localhost:{}",
                    sc["seccompProfile"]["localhostProfile"]
                        .as_str()
                        .unwrap_or_default()
                ),
                other => other.unwrap_or("RuntimeDefault").to_string(),
            },
            cap_drop: strings(&sc["capabilities"]["drop"], "capabilities.drop")?,
            cap_add: strings(&sc["capabilities"]["add"], "capabilities.add")?,
            liveness: probe("livenessProbe")?,
            readiness: probe("readinessProbe")?,
            mounts: mounts(c, pod)?,
            memory_limit: c["resources"]["limits"]["memory"]
                .as_str()
                .map(str::to_string),
            memory_request: c["resources"]["requests"]["memory"]
                .as_str()
                .map(str::to_string),
            cpu_limit: c["resources"]["limits"]["cpu"].as_str().map(str::to_string),
            cpu_request: c["resources"]["requests"]["cpu"]
                .as_str()
                .map(str::to_string),
            grace_seconds: pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30),
            automount_token: pod["automountServiceAccountToken"]
                .as_bool()
                .unwrap_or(true),
        };
        refuse_unknown(c, CONTAINER_KEYS, "container")?;
        refuse_unknown(sc, SECURITY_CONTEXT_KEYS, "securityContext")?;
        refuse_unknown(pod, POD_KEYS, "pod spec")?;
        Ok(spec)
    }
}

/// The fields read above, or with nothing to run here (scheduling, naming). Any other field is
/// refused, so that a setting the manifest gains is never silently left out of the run.
const CONTAINER_KEYS: &[&str] = &[
    "name",
    "image",
    "args",
    "env",
    "ports",
    "livenessProbe",
    "readinessProbe",
    "resources",
    "securityContext",
    "volumeMounts",
    "imagePullPolicy",
    "terminationMessagePath",
    "terminationMessagePolicy",
];
const SECURITY_CONTEXT_KEYS: &[&str] = &[
    "privileged",
    "allowPrivilegeEscalation",
    "runAsUser",
    "readOnlyRootFilesystem",
    "seccompProfile",
    "capabilities",
];
const POD_KEYS: &[&str] = &[
    "containers",
    "volumes",
    "hostPID",
    "hostNetwork",
    "serviceAccountName",
    "nodeSelector",
    "tolerations",
    "terminationGracePeriodSeconds",
    "automountServiceAccountToken",
    "priorityClassName",
    "affinity",
];

fn refuse_unknown(object: &Value, known: &[&str], what: &str) -> Result<()> {
    let unknown: Vec<&String> = object
        .as_object()
        .map(|o| o.keys().filter(|k| !known.contains(&k.as_str())).collect())
        .unwrap_or_default();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(invalid(
            what,
            format!("fields not run by this test: {unknown:?}"),
        ))
    }
}

fn env_vars(env: &Value) -> Result<Vec<EnvVar>> {
    let mut out = Vec::new();
    for e in env.as_array().cloned().unwrap_or_default() {
        let name = e["name"]
            .as_str()
            .ok_or_else(|| invalid("env", e.to_string()))?;
        if let Some(v) = e["value"].as_str() {
            out.push(EnvVar::Value(name.into(), v.into()));
        } else if let Some(f) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            out.push(EnvVar::Field(name.into(), f.into()));
        } else {
            return Err(invalid("env", format!("unsupported source in {e}")));
        }
    }
    Ok(out)
}

fn mounts(c: &Value, pod: &Value) -> Result<Vec<EmptyDirMount>> {
    let volumes = pod["volumes"].as_array().cloned().unwrap_or_default();
    let mut out = Vec::new();
    for m in c["volumeMounts"].as_array().cloned().unwrap_or_default() {
        let name = m["name"].as_str().unwrap_or_default();
        let volume = volumes
            .iter()
            .find(|v| v["name"] == name)
            .ok_or_else(|| invalid("volumeMounts", format!("no volume {name}")))?;
        let empty = &volume["emptyDir"];
        if !empty.is_object() {
            return Err(invalid(
                "volumes",
                format!("only emptyDir is run here: {volume}"),
            ));
        }
        out.push(EmptyDirMount {
            path: m["mountPath"].as_str().unwrap_or_default().to_string(),
            read_only: m["readOnly"].as_bool().unwrap_or(false),
            memory: empty["medium"] == "Memory",
            size_limit: empty["sizeLimit"].as_str().map(str::to_string),
        });
    }
    Ok(out)
}

/// The kubelet's part: where the pod runs and what it is given.
#[derive(Clone, Debug)]
pub struct PodEnv {
    /// Fills `fieldRef: spec.nodeName`.
    pub node_name: String,
    /// The pod's network namespace (a testbed pod's `/var/run/netns/NAME`).
    pub netns: PathBuf,
    /// The service account volume's directory (token, ca.crt, namespace), if mounted.
    pub service_account: Option<PathBuf>,
    /// `KUBERNETES_SERVICE_HOST` and `_PORT`.
    pub api_server: Option<(String, u16)>,
    /// The kubelet's seccomp root, for `Localhost` profiles.
    pub seccomp_root: Option<PathBuf>,
}

/// The service account mount point every pod gets.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The podman flags of a container spec in a pod environment, without the image and args.
/// `volumes` holds the emptyDir directories (one per mount, in order).
pub fn run_flags(spec: &ContainerSpec, env: &PodEnv, volumes: &[PathBuf]) -> Result<Vec<String>> {
    let mut f: Vec<String> = Vec::new();
    f.extend(spec.cap_drop.iter().map(|c| format!("--cap-drop={c}")));
    f.extend(spec.cap_add.iter().map(|c| format!("--cap-add={c}")));
    if spec.privileged {
        f.push("--privileged".into());
    }
    if spec.allow_privilege_escalation == Some(false) {
        f.push("--security-opt=no-new-privileges".into());
    }
    if let Some(uid) = spec.run_as_user {
        f.push(format!("--user={uid}"));
    }
    if spec.read_only_root {
        // Kubernetes mounts nothing writable by itself; podman would add tmpfs on /tmp and /run.
        f.extend(["--read-only".into(), "--read-only-tmpfs=false".into()]);
    }
    match spec.seccomp.as_str() {
        // podman's default profile is the runtime's default.
        "RuntimeDefault" => {}
        "Unconfined" => f.push("--security-opt=seccomp=unconfined".into()),
        other => {
            let profile = other
                .strip_prefix("Localhost:")
                .ok_or_else(|| invalid("seccompProfile", other))?;
            let root = env
                .seccomp_root
                .as_ref()
                .ok_or_else(|| invalid("seccompProfile", "no seccomp root"))?;
            f.push(format!(
                "--security-opt=seccomp={}",
                root.join(profile).display()
            ));
        }
    }
    if spec.host_pid {
        f.push("--pid=host".into());
    }
    f.push(if spec.host_network {
        "--network=host".into()
    } else {
        format!("--network=ns:{}", env.netns.display())
    });
    for e in &spec.env {
        match e {
            EnvVar::Value(k, v) => f.push(format!("--env={k}={v}")),
            EnvVar::Field(k, path) if path == "spec.nodeName" => {
                f.push(format!("--env={k}={}", env.node_name))
            }
            EnvVar::Field(_, path) => return Err(invalid("env fieldRef", path.clone())),
        }
    }
    if let Some((host, port)) = &env.api_server {
        f.push(format!("--env=KUBERNETES_SERVICE_HOST={host}"));
        f.push(format!("--env=KUBERNETES_SERVICE_PORT={port}"));
        f.push(format!("--env=KUBERNETES_PORT=tcp://{host}:{port}"));
    }
    if let (true, Some(dir)) = (spec.automount_token, &env.service_account) {
        f.push(format!(
            "--mount=type=bind,source={},destination={SERVICE_ACCOUNT_DIR},ro",
            dir.display()
        ));
    }
    for (m, dir) in spec.mounts.iter().zip(volumes) {
        let ro = if m.read_only { ",ro" } else { "" };
        if m.memory {
            let size = m.size_limit.as_deref().map(memory_flag).transpose()?;
            let size = size.map(|s| format!(",tmpfs-size={s}")).unwrap_or_default();
            f.push(format!(
                "--mount=type=tmpfs,destination={}{size}{ro}",
                m.path
            ));
        } else {
            f.push(format!(
                "--mount=type=bind,source={},destination={}{ro}",
                dir.display(),
                m.path
            ));
        }
    }
    if let Some(q) = &spec.memory_limit {
        f.push(format!("--memory={}", memory_flag(q)?));
    }
    if let Some(q) = &spec.memory_request {
        f.push(format!("--memory-reservation={}", memory_flag(q)?));
    }
    if let Some(q) = &spec.cpu_limit {
        f.push(format!("--cpus={}", millicores(q)? as f64 / 1000.0));
    }
    if let Some(q) = &spec.cpu_request {
        // The kubelet's conversion of a CPU request to cpu.shares.
        f.push(format!(
            "--cpu-shares={}",
            (millicores(q)? * 1024 / 1000).max(2)
        ));
    }
    Ok(f)
}

/// The podman global flags and run flags this machine needs (shared notes `testbed.md`).
fn machine_flags(cgroup_parent: &str) -> Result<(Vec<String>, Vec<String>)> {
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .map_err(io_err("reading /proc/sys/kernel/pid_max"))?
        .trim()
        .parse()
        .unwrap_or(32768);
    let mut nproc = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    unsafe { libc::getrlimit(libc::RLIMIT_NPROC, &mut nproc) };
    let nproc = pid_max.min(nproc.rlim_max);
    let mut nofile = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as above.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut nofile) };
    let nofile = nofile.rlim_max.min(1 << 20);
    let global = vec!["--runtime=runc".into(), "--cgroup-manager=cgroupfs".into()];
    let run = vec![
        format!("--ulimit=nofile={nofile}:{nofile}"),
        format!("--ulimit=nproc={nproc}:{nproc}"),
        format!("--cgroup-parent={cgroup_parent}"),
    ];
    Ok((global, run))
}

/// Every cgroup hierarchy's mount point.
fn cgroup_roots() -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() > 2 && (f[2] == "cgroup" || f[2] == "cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .collect()
}

/// A podman container of the image, removed (with its cgroups) on drop.
#[derive(Debug)]
pub struct Container {
    pub name: String,
    pub image: String,
    global: Vec<String>,
    /// Cgroup directories podman made for it, shallowest first (removed deepest first).
    cgroups: Vec<PathBuf>,
    _volumes: Vec<TempDir>,
    pub grace_seconds: u64,
}

impl Container {
    /// Starts the image detached with the spec's flags in the pod environment.
    pub fn run(image: &str, spec: &ContainerSpec, env: &PodEnv) -> Result<Container> {
        let (pid, n) = unique_suffix();
        let name = format!("loupe-image-{pid}-{n}");
        let parent = format!(
            "{}/{name}",
            crate::cgroup::own_memory_cgroup()?.trim_end_matches('/')
        );
        let before = ancestors(&parent);
        let (global, machine) = machine_flags(&parent)?;
        let mut volumes = Vec::new();
        for _ in &spec.mounts {
            volumes.push(TempDir::new("loupe-emptydir")?);
        }
        let dirs: Vec<PathBuf> = volumes.iter().map(|v| v.path().to_path_buf()).collect();
        let flags = run_flags(spec, env, &dirs)?;
        let mut container = Container {
            name: name.clone(),
            image: image.to_string(),
            global: global.clone(),
            cgroups: Vec::new(),
            _volumes: volumes,
            grace_seconds: spec.grace_seconds,
        };
        let mut args: Vec<String> = global;
        args.extend(["run".into(), "--detach".into(), format!("--name={name}")]);
        args.extend(machine);
        args.extend(flags);
        args.push(image.to_string());
        args.extend(spec.args.iter().cloned());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let started = run("podman", &refs);
        // Whatever podman made, also when it failed.
        container.cgroups = made_dirs(&parent, &before);
        started?;
        Ok(container)
    }

    fn podman(&self, args: &[&str]) -> Result<String> {
        let mut all: Vec<&str> = self.global.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        run("podman", &all)
    }

    /// `podman inspect --format`.
    pub fn inspect(&self, format: &str) -> Result<String> {
        Ok(self
            .podman(&["inspect", "--format", format, &self.name])?
            .trim()
            .to_string())
    }

    /// The container's main process, as the host sees it.
    pub fn pid(&self) -> Result<u32> {
        let pid = self.inspect("{{.State.Pid}}")?;
        pid.parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| Error::Invalid {
                what: format!("pid of container {}", self.name),
                detail: pid,
            })
    }

    pub fn running(&self) -> bool {
        self.inspect("{{.State.Running}}")
            .is_ok_and(|s| s == "true")
    }

    /// The exit code once it stopped.
    pub fn exit_code(&self) -> Result<i32> {
        let code = self.inspect("{{.State.ExitCode}}")?;
        code.parse().map_err(|_| Error::Invalid {
            what: format!("exit code of container {}", self.name),
            detail: code,
        })
    }

    /// Its output so far (stdout and stderr).
    pub fn logs(&self) -> String {
        let mut all: Vec<&str> = self.global.iter().map(String::as_str).collect();
        all.extend_from_slice(&["logs", &self.name]);
        Command::new("podman")
            .args(&all)
            .output()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default()
    }

    /// Waits until a log line contains every needle; returns it.
    pub fn wait_log_line(&self, needles: &[&str], timeout: Duration) -> Result<String> {
        wait_for(
            &format!("a log line of {} with {needles:?}", self.name),
            timeout,
            || {
                Ok(self
                    .logs()
                    .lines()
                    .find(|l| needles.iter().all(|n| l.contains(n)))
                    .map(str::to_string))
            },
        )
    }

    /// `podman exec` of loupe itself (the image has nothing else): (exit code, stdout).
    pub fn exec(&self, args: &[&str]) -> Result<(i32, String)> {
        let mut all: Vec<&str> = self.global.iter().map(String::as_str).collect();
        all.extend_from_slice(&["exec", &self.name]);
        all.extend_from_slice(args);
        let out = Command::new("podman")
            .args(&all)
            .output()
            .map_err(io_err("podman exec"))?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    }

    /// `podman stop` with the pod's grace period (SIGTERM, then SIGKILL); returns the exit code.
    pub fn stop(&self) -> Result<i32> {
        self.podman(&[
            "stop",
            "--time",
            &self.grace_seconds.to_string(),
            &self.name,
        ])?;
        self.exit_code()
    }
}

/// The ancestors of `parent` (a cgroup path) that exist now in every hierarchy.
fn ancestors(parent: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for root in cgroup_roots() {
        let mut dir = root.join(parent.trim_start_matches('/'));
        while dir.pop() && dir.starts_with(&root) && dir != root {
            if dir.is_dir() {
                found.push(dir.clone());
            }
        }
    }
    found
}

/// What podman made for a container whose `--cgroup-parent` is `parent` (unique to it): the
/// ancestors that did not exist `before`, and everything from `parent` down, in every
/// hierarchy; shallowest first.
fn made_dirs(parent: &str, before: &[PathBuf]) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = ancestors(parent)
        .into_iter()
        .filter(|d| !before.contains(d))
        .collect();
    for root in cgroup_roots() {
        let mut stack = vec![root.join(parent.trim_start_matches('/'))];
        while let Some(dir) = stack.pop() {
            if !dir.is_dir() {
                continue;
            }
            if let Ok(entries) = std::fs::read_dir(&dir) {
                stack.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
            }
            found.push(dir);
        }
    }
    found.sort_by_key(|p| p.components().count());
    found.dedup();
    found
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- container {} ({}) log ---\n{}",
                self.name,
                self.image,
                self.logs()
            );
        }
        let _ = self.podman(&["rm", "--force", "--time", "2", &self.name]);
        for dir in self.cgroups.iter().rev() {
            let _ = wait_for(
                &format!("removing cgroup {}", dir.display()),
                Duration::from_secs(2),
                || match std::fs::remove_dir(dir) {
                    Ok(()) => Ok(Some(())),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Some(())),
                    Err(e) => Err(e.to_string()),
                },
            );
        }
    }
}
