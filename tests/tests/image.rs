//! loupe's image, run as deployed: `kubectl kustomize deploy/base` is rendered, the DaemonSet's
//! container (securityContext, hostPID, args, env, probes, volumes, resources) is read from it
//! and the image built by `scripts/image.sh` runs under podman with exactly those settings
//! (tests/src/podman.rs), configured the in-cluster way: a service account token, CA and
//! namespace at /var/run/secrets/kubernetes.io/serviceaccount, `KUBERNETES_SERVICE_HOST/PORT`,
//! the in-process API server over TLS checking the token. The pods are testbed pods (network
//! namespaces, kubelet-style cgroups) that the agent finds through the host's /proc (hostPID).
//!
//! Also: each added capability is needed (without it, the test shows what fails), `loupe doctor`
//! inside says what it says on the host, and bad input (no token, no API server, read-only /tmp,
//! a seccomp profile denying bpf()) gives a clear log line and the documented fallback.
//!
//! Needs root and podman (skipped with the reason otherwise, a failure when `CI=true`).
//!
//! Longer than 600 lines: one harness (pods, TLS API server, kubelet-style prober) shared by the
//! scenarios, each of which is a container run; splitting it would only move the harness.

use std::path::PathBuf;
use std::time::Duration;

use loupe_tests::certs::{self_signed, signed};
use loupe_tests::cgroup::{new_container_id, new_pod_uid, KubeCgroups, Layout};
use loupe_tests::client::ClientLoop;
use loupe_tests::expo::{self, Exposition};
use loupe_tests::https::{self, Https};
use loupe_tests::kubeapi::{running_pod, KubeApi, TlsOptions};
use loupe_tests::pod::Pod;
use loupe_tests::podman::{self, Container, ContainerSpec, HttpProbe, PodEnv};
use loupe_tests::{attached, http, run, unique_suffix, wait_for, Proc, TempDir};
use serde_json::{json, Value};

const NODE: &str = "n1";
const APP_PORT: u16 = 8080;
const SERIES: usize = 10;
const WAIT: Duration = Duration::from_secs(60);

/// One container at a time: each loads the probe and the machine has two cores.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The DaemonSet of `kubectl kustomize deploy/base`.
fn daemonset() -> Value {
    let dir = loupe_tests::workspace_root().join("deploy/base");
    let out = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .env("KUBECONFIG", "/dev/null")
        .output()
        .expect("run kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    text.split("\n---\n")
        .map(|doc| serde_yaml::from_str::<Value>(doc).expect("YAML document"))
        .find(|doc| doc["kind"] == "DaemonSet")
        .expect("a DaemonSet in deploy/base")
}

fn spec() -> ContainerSpec {
    ContainerSpec::from_daemonset(&daemonset()).expect("the DaemonSet's container")
}

/// The capability bits of `/proc/PID/status` lines like `CapEff`.
fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The CapEff mask of capability names (include/uapi/linux/capability.h).
fn cap_mask(caps: &[String]) -> u64 {
    caps.iter()
        .map(|c| match c.trim_start_matches("CAP_") {
            "NET_ADMIN" => 12,
            "SYS_PTRACE" => 19,
            "SYS_ADMIN" => 21,
            "SYS_RESOURCE" => 24,
            "PERFMON" => 38,
            "BPF" => 39,
            other => panic!("capability {other} not known to this test"),
        })
        .fold(0, |m, bit| m | 1 << bit)
}

/// A testbed pod running the test app on APP_PORT, its process in kubelet-style cgroups under a
/// container ID. Fields drop in order: the app, its cgroups, the namespace.
struct AppPod {
    name: String,
    _app: Proc,
    cgroups: KubeCgroups,
    netns: Pod,
}

impl AppPod {
    fn start(name: &str) -> AppPod {
        let netns = Pod::new().expect("pod network namespace");
        let app = netns
            .spawn_app(APP_PORT, &["--series", &SERIES.to_string()])
            .expect("metrics-app");
        let (p, n) = unique_suffix();
        let cgroups = KubeCgroups::place_in(
            app.pid(),
            &[Layout::V2Systemd],
            Some(&format!("loupe-image-{p}-{n}")),
            "burstable",
            &new_pod_uid(),
            &new_container_id(),
        )
        .expect("kubelet-style cgroups");
        AppPod {
            name: name.into(),
            _app: app,
            cgroups,
            netns,
        }
    }

    fn json(&self) -> Value {
        let id = format!("containerd://{}", self.cgroups.container_id);
        let annotations =
            json!({"prometheus.io/scrape": "true", "prometheus.io/port": APP_PORT.to_string()});
        let mut pod = running_pod(
            "shop",
            &self.name,
            NODE,
            &[("app", id.as_str())],
            annotations,
        );
        pod["metadata"]["uid"] = json!(self.cgroups.pod_uid);
        // The declared port makes `app` the endpoint's container.
        pod["spec"]["containers"][0]["ports"] =
            json!([{"containerPort": APP_PORT, "protocol": "TCP"}]);
        pod
    }

    fn attachments(&self) -> Vec<String> {
        attached::in_pod(&self.netns, "lo").expect("listing attachments")
    }
}

/// The agent's pod network (a namespace whose veth's host side the API server listens on), the
/// API server over TLS, and the service account volume. Fields drop in order.
struct Cluster {
    api: KubeApi,
    /// The DaemonSet serves TLS (its probes say `scheme: HTTPS`).
    https: bool,
    agent_net: Pod,
    service_account: TempDir,
    _certs: TempDir,
    rt: tokio::runtime::Runtime,
}

const TOKEN: &str = "loupe-image-test-token";
/// The agent's own service account (TOKEN), which `loupe status` inside uses.
const AGENT_USER: &str = "system:serviceaccount:loupe:loupe";
/// Prometheus' token and user: bound to the loupe-scraper ClusterRole (get /metrics).
const SCRAPER_TOKEN: &str = "loupe-image-test-scraper-token";
const SCRAPER_USER: &str = "system:serviceaccount:monitoring:prometheus-k8s";

impl Cluster {
    fn start() -> Cluster {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let agent_net = Pod::new().expect("the agent pod's network namespace");
        let certs = TempDir::new("loupe-image-certs").expect("temp dir");
        let ca = self_signed(&certs, "ca", "kubernetes").expect("CA");
        let ext = format!(
            "subjectAltName=IP:{}\nextendedKeyUsage=serverAuth\n",
            agent_net.host_ip
        );
        let server =
            signed(&certs, "apiserver", &ca, "kube-apiserver", &ext).expect("server certificate");
        let api = rt
            .block_on(KubeApi::start_tls(TlsOptions {
                ip: agent_net.host_ip.into(),
                cert: server.cert,
                key: server.key,
                token: TOKEN.into(),
            }))
            .expect("API server");
        // RBAC as deploy/ grants it: the scraper may get /metrics, the agent /targets.
        api.add_token(SCRAPER_TOKEN, SCRAPER_USER, &["system:serviceaccounts"]);
        api.allow_non_resource(SCRAPER_USER, "/metrics", "get");
        api.add_token(TOKEN, AGENT_USER, &["system:serviceaccounts"]);
        api.allow_non_resource(AGENT_USER, "/targets", "get");
        let service_account = TempDir::new("loupe-image-sa").expect("temp dir");
        let sa = service_account.path();
        std::fs::write(sa.join("token"), TOKEN).expect("token");
        std::fs::copy(&ca.cert, sa.join("ca.crt")).expect("ca.crt");
        std::fs::write(sa.join("namespace"), "loupe").expect("namespace");
        Cluster {
            api,
            https: spec().readiness.https,
            agent_net,
            service_account,
            _certs: certs,
            rt,
        }
    }

    /// What the kubelet gives the agent's pod.
    fn env(&self) -> PodEnv {
        PodEnv {
            node_name: NODE.into(),
            netns: self.agent_net.netns_path(),
            service_account: Some(self.service_account.path().to_path_buf()),
            api_server: Some((self.agent_net.host_ip.to_string(), self.api.addr().port())),
            seccomp_root: None,
        }
    }

    fn create(&self, pod: &AppPod) {
        let _rt = self.rt.enter();
        self.api.create_pod(pod.json()).expect("create pod");
    }

    /// `host:port` of a container port on the agent's pod IP.
    fn agent_addr(&self, port: u16) -> String {
        format!("{}:{port}", self.agent_net.pod_ip)
    }

    /// A probe as the kubelet makes it: GET on the pod IP, its User-Agent, the probe's timeout.
    fn probe(&self, probe: &HttpProbe) -> Result<u16, String> {
        let headers = [("User-Agent", "kube-probe/1.30"), ("Accept", "*/*")];
        let addr = self.agent_addr(probe.port);
        match probe.https {
            true => https::get(&addr, &probe.path, &Https::default(), &headers),
            false => http::get(
                &addr,
                &probe.path,
                &headers,
                probe.timeout.max(Duration::from_secs(1)),
            ),
        }
        .map(|r| r.status)
        .map_err(|e| e.to_string())
    }

    fn wait_probe(&self, probe: &HttpProbe, want: u16) {
        wait_for(
            &format!("{} to answer {want}", probe.path),
            WAIT,
            || match self.probe(probe) {
                Ok(s) if s == want => Ok(Some(())),
                Ok(s) => Err(format!("answered {s}")),
                Err(e) => Err(e),
            },
        )
        .unwrap();
    }

    /// `/metrics` as Prometheus gets it: its service-account token, over TLS when served (the
    /// default certificate is self-signed: not verified, as deploy/'s monitors do).
    fn scrape(&self, port: u16) -> Result<Exposition, String> {
        let addr = self.agent_addr(port);
        let bearer = format!("Bearer {SCRAPER_TOKEN}");
        let headers = [("Authorization", bearer.as_str())];
        let r = match self.https {
            true => https::get(&addr, "/metrics", &Https::default(), &headers),
            false => http::get(&addr, "/metrics", &headers, Duration::from_secs(20)),
        }
        .map_err(|e| e.to_string())?;
        if r.status != 200 {
            return Err(format!(
                "status {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ));
        }
        let text = r.text().map_err(|e| e.to_string())?;
        expo::check_all(&text).map_err(|e| e.to_string())
    }

    fn metrics_until(
        &self,
        port: u16,
        what: &str,
        pred: impl Fn(&Exposition) -> bool,
    ) -> Exposition {
        wait_for(what, WAIT, || {
            let exp = self.scrape(port)?;
            if pred(&exp) {
                return Ok(Some(exp));
            }
            let seen: Vec<String> = exp
                .samples
                .iter()
                .filter(|s| s.name == "loupe_target_up" || s.name == "loupe_target_info")
                .map(|s| {
                    format!(
                        "{}{{pod={:?},source={:?}}}={}",
                        s.name,
                        s.label("pod"),
                        s.label("source"),
                        s.value
                    )
                })
                .collect();
            Err(format!("not yet: {seen:?}"))
        })
        .unwrap()
    }
}

fn target(exp: &Exposition, pod: &str) -> Option<f64> {
    exp.value(
        "loupe_target_up",
        &[("pod", pod), ("namespace", "shop"), ("container", "app")],
    )
}

fn source_is(exp: &Exposition, pod: &str, source: &str) -> bool {
    exp.value("loupe_target_info", &[("pod", pod), ("source", source)]) == Some(1.0)
}

fn app_samples(exp: &Exposition, pod: &str) -> usize {
    exp.samples
        .iter()
        .filter(|s| s.name.starts_with("app_") && s.label("pod") == Some(pod))
        .count()
}

/// (check, level) of each `loupe doctor` line: `[ok  ] CAP_BPF: ...` -> ("CAP_BPF", "ok").
fn doctor_levels(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix('[')?;
            let (level, rest) = rest.split_once(']')?;
            let (check, _) = rest.trim().split_once(':')?;
            Some((check.to_string(), level.trim().to_string()))
        })
        .collect()
}

/// The static binary the image was packed from (scripts/image.sh).
fn static_binary() -> PathBuf {
    let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    loupe_tests::workspace_root()
        .join("target/static")
        .join(triple)
        .join("release/loupe")
}

fn image_label(image: &str, label: &str) -> String {
    let format = format!("{{{{index .Labels \"{label}\"}}}}");
    run("podman", &["image", "inspect", "--format", &format, image])
        .expect("podman image inspect")
        .trim()
        .to_string()
}

#[test]
fn image_runs_as_the_daemonset_says_against_testbed_pods_and_the_api_server_over_tls() {
    if !podman::available("image_runs_as_the_daemonset_says") {
        return;
    }
    let image = podman::image().unwrap();
    let _serial = serial();
    let spec = spec();
    // The settings this test runs with are the manifest's; these are the ones it relies on.
    assert!(
        spec.host_pid && !spec.host_network && !spec.privileged,
        "{spec:?}"
    );
    assert!(
        spec.read_only_root && spec.run_as_user == Some(0),
        "{spec:?}"
    );
    assert_eq!(spec.cap_drop, ["ALL"]);
    assert!(
        spec.args.contains(&"--kubernetes".to_string()),
        "{:?}",
        spec.args
    );

    let cluster = Cluster::start();
    let observed = AppPod::start("observed");
    let fetched = AppPod::start("fetched");
    // Another scraper inside the `observed` pod: its replies cross the pod's loopback.
    let url = format!("http://127.0.0.1:{APP_PORT}/metrics");
    let client = ClientLoop::start(&observed.netns, &url, "0.3", "").expect("in-pod client");
    cluster.create(&observed);
    cluster.create(&fetched);

    let container = Container::run(&image, &spec, &cluster.env()).expect("podman run");
    cluster.wait_probe(&spec.readiness, 200);
    cluster.wait_probe(&spec.liveness, 200);

    // What the process got: exactly the added capabilities, uid 0, the runtime's seccomp filter,
    // the host's PID namespace, the pod's network namespace, a read-only root.
    let pid = container.pid().unwrap();
    let cap_eff = u64::from_str_radix(&status_field(pid, "CapEff"), 16).unwrap();
    assert_eq!(
        cap_eff,
        cap_mask(&spec.cap_add),
        "CapEff {cap_eff:016x} vs {:?}",
        spec.cap_add
    );
    assert_eq!(
        status_field(pid, "Uid").split_whitespace().next(),
        Some("0")
    );
    assert_eq!(
        status_field(pid, "Seccomp"),
        "2",
        "RuntimeDefault: a seccomp filter"
    );
    let ns = |p: &str| {
        std::fs::read_link(p)
            .map(|l| l.display().to_string())
            .unwrap()
    };
    assert_eq!(
        ns(&format!("/proc/{pid}/ns/pid")),
        ns("/proc/self/ns/pid"),
        "hostPID"
    );
    let netns_ino = std::fs::metadata(cluster.agent_net.netns_path())
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    assert_eq!(
        ns(&format!("/proc/{pid}/ns/net")),
        format!("net:[{netns_ino}]"),
        "the pod's network"
    );
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mounts")).unwrap();
    let root = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some("/"))
        .expect("root mount");
    assert!(
        root.split(' ')
            .nth(3)
            .is_some_and(|o| o.split(',').any(|f| f == "ro")),
        "root: {root}"
    );

    let port = spec.readiness.port;
    let exp = cluster.metrics_until(port, "both pods served, one observed, one fetched", |exp| {
        [&observed, &fetched]
            .iter()
            .all(|p| target(exp, &p.name) == Some(1.0) && app_samples(exp, &p.name) > 0)
            && source_is(exp, "observed", "observed")
            && source_is(exp, "fetched", "fetched")
    });
    assert_eq!(exp.value("loupe_capture_active", &[]), Some(1.0));
    assert_eq!(app_samples(&exp, "observed"), app_samples(&exp, "fetched"));
    assert!(client.failures() == 0, "the in-pod client failed");
    assert!(!observed.attachments().is_empty() && !fetched.attachments().is_empty());
    container
        .wait_log_line(&["kubernetes: watching pods on node n1"], WAIT)
        .unwrap();
    // In-cluster config: every request carried the service account token, over TLS.
    assert_eq!(cluster.api.unauthorized(), 0);
    let requests = cluster.api.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.contains("watch=true") && r.contains("spec.nodeName%3Dn1")),
        "{requests:?}"
    );

    // Who may read: the scraper's token was reviewed for exactly get /metrics; no token, no data.
    let reviews = cluster.api.access_reviews();
    assert!(
        reviews.iter().any(|r| r["spec"]["user"] == SCRAPER_USER
            && r["spec"]["nonResourceAttributes"] == json!({"path": "/metrics", "verb": "get"})),
        "{reviews:?}"
    );
    if cluster.https {
        let anonymous = https::get(
            &cluster.agent_addr(port),
            "/metrics",
            &Https::default(),
            &[],
        )
        .unwrap();
        assert_eq!(anonymous.status, 401);
    }
    // `kubectl exec ds/loupe -- loupe status`: the pod's env and token are enough.
    let (code, status) = container.exec(&["loupe", "status"]).unwrap();
    assert_eq!(code, 0, "{status}");
    assert!(
        status.contains("observed") && status.contains("fetched"),
        "{status}"
    );

    doctor_and_version_match_the_host(&container, &image);

    let code = container.stop().unwrap();
    assert_eq!(
        code,
        0,
        "exit code after podman stop; log:\n{}",
        container.logs()
    );
    container
        .wait_log_line(&["detaching from every pod namespace"], WAIT)
        .unwrap();
    for pod in [&observed, &fetched] {
        assert!(
            pod.attachments().is_empty(),
            "left attached in {}: {:?}",
            pod.name,
            pod.attachments()
        );
    }
    drop(client);
}

/// `loupe doctor` inside says what it says on the host (same level for every check); `loupe
/// --version` inside shows the image's version and revision labels.
fn doctor_and_version_match_the_host(container: &Container, image: &str) {
    let (code_in, inside) = container.exec(&["loupe", "doctor"]).unwrap();
    let out = std::process::Command::new(static_binary())
        .arg("doctor")
        .output()
        .expect("host doctor");
    let on_host = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        doctor_levels(&inside),
        doctor_levels(&on_host),
        "doctor inside:\n{inside}\non the host:\n{on_host}"
    );
    assert!(!doctor_levels(&inside).is_empty(), "{inside}");
    assert_eq!(
        code_in,
        out.status.code().unwrap_or(-1),
        "doctor's exit code:\n{inside}"
    );

    let (_, version) = container.exec(&["loupe", "--version"]).unwrap();
    let want_version = image_label(image, "org.opencontainers.image.version");
    let want_revision = image_label(image, "org.opencontainers.image.revision");
    assert!(
        !want_revision.is_empty() && want_revision != "unknown",
        "revision label {want_revision:?}"
    );
    assert_eq!(
        version.trim(),
        format!("loupe {want_version} (git {want_revision})")
    );
}

/// Runs the image with `spec` against one fetched pod; returns the container and the pod.
fn run_with(spec: &ContainerSpec, cluster: &Cluster, env: &PodEnv) -> (Container, AppPod) {
    let pod = AppPod::start("app");
    cluster.create(&pod);
    let image = podman::image().unwrap();
    (Container::run(&image, spec, env).expect("podman run"), pod)
}

/// The running kernel's (major, minor).
fn kernel() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Log lines (each a set of needles) and (pod served, probe loaded, probe attached in the pod).
type Outcome = (Vec<&'static [&'static str]>, (bool, bool, bool));

/// What running without one capability must show.
fn without(cap: &str) -> Outcome {
    match cap {
        // setns() fails, so nothing is fetched; bpf() fails too (it wants BPF or SYS_ADMIN,
        // and the runtime's seccomp profile allows it to SYS_ADMIN only): fetch-only mode.
        "SYS_ADMIN" => (
            vec![
                &["cannot enter network namespace", "Operation not permitted"],
                &["fetch-only mode: cannot load the eBPF probe"],
            ],
            (false, false, false),
        ),
        // /proc/PID/ns/net of a process with capabilities loupe lacks: ptrace access check.
        "SYS_PTRACE" => (
            vec![&["cannot open network namespace", "Permission denied"]],
            (false, true, false),
        ),
        // TCX links (6.6+) need no NET_ADMIN; netlink clsact filters (older kernels) do.
        "NET_ADMIN" if kernel() >= (6, 6) => (Vec::new(), (true, true, true)),
        "NET_ADMIN" => (vec![&["cannot attach", "netlink"]], (true, true, false)),
        other => panic!("no expectation for running without {other}: add one"),
    }
}

#[test]
fn every_added_capability_is_needed_and_its_absence_names_the_failing_call() {
    if !podman::available("every_added_capability_is_needed") {
        return;
    }
    podman::image().unwrap();
    let _serial = serial();
    let full = spec();
    for cap in &full.cap_add {
        let mut spec = full.clone();
        spec.cap_add.retain(|c| c != cap);
        let cluster = Cluster::start();
        let (container, pod) = run_with(&spec, &cluster, &cluster.env());
        cluster.wait_probe(&spec.readiness, 200);
        let (lines, want) = without(cap);
        for needles in lines {
            let line = container
                .wait_log_line(needles, WAIT)
                .unwrap_or_else(|e| panic!("without {cap}: {e}\n{}", container.logs()));
            eprintln!("without {cap}: {line}");
        }
        let exp = cluster.metrics_until(spec.readiness.port, "the pod's target reported", |exp| {
            target(exp, "app").is_some()
        });
        let up = target(&exp, "app") == Some(1.0);
        let capturing = exp.value("loupe_capture_active", &[]) == Some(1.0);
        let attached = !pod.attachments().is_empty();
        assert_eq!(
            (up, capturing, attached),
            want,
            "without {cap}: (served, probe loaded, attached); log:\n{}",
            container.logs()
        );
        eprintln!(
            "without {cap} on kernel {:?}: (served, probe loaded, attached) = {want:?}",
            kernel()
        );
        drop((container, pod));
    }
}

/// Podman's default seccomp profile (what `RuntimeDefault` is here) with bpf() taken out of every
/// rule that allows it: bpf() then fails with EPERM, as under stricter runtime profiles.
fn profile_denying_bpf(dir: &std::path::Path) -> String {
    let default = std::fs::read_to_string("/usr/share/containers/seccomp.json")
        .expect("podman's default seccomp profile");
    let mut profile: Value = serde_json::from_str(&default).expect("JSON profile");
    for rule in profile["syscalls"].as_array_mut().expect("syscalls") {
        if rule["action"] == "SCMP_ACT_ALLOW" {
            if let Some(names) = rule["names"].as_array_mut() {
                names.retain(|n| n != "bpf");
            }
        }
    }
    profile["syscalls"]
        .as_array_mut()
        .expect("syscalls")
        .push(json!({"names": ["bpf"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}));
    let name = "deny-bpf.json";
    std::fs::write(dir.join(name), profile.to_string()).expect("write profile");
    format!("Localhost:{name}")
}

#[test]
fn a_seccomp_profile_denying_bpf_gives_fetch_only_mode_with_the_reason() {
    if !podman::available("a_seccomp_profile_denying_bpf") {
        return;
    }
    podman::image().unwrap();
    let _serial = serial();
    let cluster = Cluster::start();
    let profiles = TempDir::new("loupe-image-seccomp").unwrap();
    let mut spec = spec();
    spec.seccomp = profile_denying_bpf(profiles.path());
    let mut env = cluster.env();
    env.seccomp_root = Some(profiles.path().to_path_buf());
    let (container, pod) = run_with(&spec, &cluster, &env);
    cluster.wait_probe(&spec.readiness, 200);
    let line = container
        .wait_log_line(
            &[
                "fetch-only mode: cannot load the eBPF probe",
                "Operation not permitted",
            ],
            WAIT,
        )
        .unwrap();
    eprintln!("seccomp denying bpf(): {line}");
    let exp = cluster.metrics_until(spec.readiness.port, "the pod served, fetched", |exp| {
        target(exp, "app") == Some(1.0) && source_is(exp, "app", "fetched")
    });
    assert_eq!(exp.value("loupe_capture_active", &[]), Some(0.0));
    assert_eq!(app_samples(&exp, "app"), app_samples(&exp, "app").max(1));
    assert!(pod.attachments().is_empty(), "{:?}", pod.attachments());
    assert!(container.running(), "log:\n{}", container.logs());
}

#[test]
fn a_read_only_tmp_changes_nothing_since_loupe_writes_no_file() {
    if !podman::available("a_read_only_tmp_changes_nothing") {
        return;
    }
    podman::image().unwrap();
    let _serial = serial();
    let cluster = Cluster::start();
    let mut spec = spec();
    let tmp = spec
        .mounts
        .iter_mut()
        .find(|m| m.path == "/tmp")
        .expect("the DaemonSet mounts /tmp");
    tmp.read_only = true;
    let (container, pod) = run_with(&spec, &cluster, &cluster.env());
    cluster.wait_probe(&spec.readiness, 200);
    let exp = cluster.metrics_until(spec.readiness.port, "the pod served", |exp| {
        target(exp, "app") == Some(1.0)
    });
    assert_eq!(exp.value("loupe_capture_active", &[]), Some(1.0));
    assert!(!pod.attachments().is_empty());
    let logs = container.logs();
    assert!(!logs.contains("ERROR") && !logs.contains("WARN"), "{logs}");
}

#[test]
fn an_unreachable_api_server_is_retried_until_it_answers() {
    if !podman::available("an_unreachable_api_server_is_retried") {
        return;
    }
    podman::image().unwrap();
    let _serial = serial();
    let mut cluster = Cluster::start();
    cluster.rt.block_on(cluster.api.stop());
    let spec = spec();
    let (container, pod) = run_with(&spec, &cluster, &cluster.env());
    let line = container
        .wait_log_line(&["watching pods of node n1 failed", "retrying"], WAIT)
        .unwrap();
    eprintln!("API server away: {line}");
    // Alive, not ready: the kubelet keeps it running and out of the Service's endpoints.
    cluster.wait_probe(&spec.liveness, 200);
    assert_eq!(cluster.probe(&spec.readiness), Ok(503));
    std::thread::sleep(Duration::from_secs(3));
    assert!(container.running(), "log:\n{}", container.logs());
    let api = &mut cluster.api;
    cluster.rt.block_on(api.restart()).expect("API server back");
    cluster.wait_probe(&spec.readiness, 200);
    cluster.metrics_until(spec.readiness.port, "the pod served", |exp| {
        target(exp, "app") == Some(1.0)
    });
    drop(pod);
}

#[test]
fn a_missing_token_is_named_in_the_log() {
    if !podman::available("a_missing_token_is_named_in_the_log") {
        return;
    }
    podman::image().unwrap();
    let _serial = serial();
    let cluster = Cluster::start();
    std::fs::remove_file(cluster.service_account.path().join("token")).unwrap();
    let spec = spec();
    let (container, _pod) = run_with(&spec, &cluster, &cluster.env());
    let line = container.wait_log_line(&["token"], WAIT).unwrap();
    eprintln!("no token: {line}");
    assert!(
        line.contains(podman::SERVICE_ACCOUNT_DIR),
        "the file is named: {line}"
    );
    // Then it exits with that reason (the kubelet restarts it; `kubectl logs --previous` shows
    // the line): not a silent crash loop.
    wait_for("the agent to exit", WAIT, || {
        Ok((!container.running()).then_some(()))
    })
    .unwrap();
    assert_eq!(container.exit_code().unwrap(), 1, "{}", container.logs());
    // With --authz kubernetes the reviews' client fails first, before any pod is touched;
    // without it, discovery does.
    let last = if spec.args.iter().any(|a| a == "--authz") {
        "cannot build the Kubernetes client"
    } else {
        "discovery stopped (see the error above)"
    };
    container.wait_log_line(&[last], WAIT).unwrap();
    assert_eq!(
        cluster.api.unauthorized(),
        0,
        "no request without a token reached the API"
    );
}

/// No root needed: the DaemonSet's settings become exactly these podman flags (and the kubelet's
/// part, marked), so a change to the manifest shows here first.
#[test]
fn the_daemonset_becomes_exactly_these_podman_flags() {
    let spec = spec();
    let env = PodEnv {
        node_name: NODE.into(),
        netns: PathBuf::from("/var/run/netns/agent"),
        service_account: Some(PathBuf::from("/sa")),
        api_server: Some(("198.19.0.1".into(), 6443)),
        seccomp_root: None,
    };
    let flags = podman::run_flags(&spec, &env, &[PathBuf::from("/emptydir")]).unwrap();
    let want = [
        // securityContext (seccomp RuntimeDefault: podman's default profile, no flag)
        "--cap-drop=ALL",
        "--cap-add=SYS_ADMIN",
        "--cap-add=NET_ADMIN",
        "--cap-add=SYS_PTRACE",
        "--user=0",
        "--read-only",
        "--read-only-tmpfs=false",
        // hostPID; not hostNetwork: the pod's own namespace (kubelet)
        "--pid=host",
        "--network=ns:/var/run/netns/agent",
        // env: NODE_NAME from the downward API (kubelet); TLS made in memory; how `loupe
        // status` reaches this pod; RUST_LOG
        "--env=NODE_NAME=n1",
        "--env=LOUPE_TLS_SELF_SIGNED=true",
        "--env=LOUPE_STATUS_URL=https://127.0.0.1:9897",
        "--env=LOUPE_STATUS_TOKEN_FILE=/var/run/secrets/kubernetes.io/serviceaccount/token",
        "--env=RUST_LOG=info",
        // the kubelet's in-cluster environment and service account volume
        "--env=KUBERNETES_SERVICE_HOST=198.19.0.1",
        "--env=KUBERNETES_SERVICE_PORT=6443",
        "--env=KUBERNETES_PORT=tcp://198.19.0.1:6443",
        "--mount=type=bind,source=/sa,destination=/var/run/secrets/kubernetes.io/serviceaccount,ro",
        // the /tmp emptyDir
        "--mount=type=bind,source=/emptydir,destination=/tmp",
        // resources
        "--memory=256m",
        "--memory-reservation=64m",
        "--cpus=1",
        "--cpu-shares=51",
    ];
    assert_eq!(flags, want);
    assert_eq!(spec.args, ["run", "--kubernetes", "--authz", "kubernetes"]);
    assert_eq!(
        (
            spec.liveness.path.as_str(),
            spec.liveness.port,
            spec.liveness.https
        ),
        ("/healthz", 9897, true)
    );
    assert_eq!(
        (
            spec.readiness.path.as_str(),
            spec.readiness.port,
            spec.readiness.https
        ),
        ("/readyz", 9897, true)
    );
    assert_eq!(spec.grace_seconds, 30);
}
