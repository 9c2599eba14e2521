//! deploy/: every kustomization renders offline with `kubectl kustomize`, and the rendered
//! manifests pass `kubernetes-validate --strict` for Kubernetes 1.30. ServiceMonitor, PodMonitor,
//! PrometheusRule and cert-manager's Certificate, Issuer and ClusterIssuer are CRDs that
//! kubernetes-validate has no schema for: they are checked structurally here (selectors, ports,
//! secrets and issuers against the rendered objects that they name). The plain Prometheus scrape
//! config is checked structurally, and by `promtool check config --syntax-only` with its
//! `kubernetes_sd_configs` swapped for a static target: Debian's promtool is built without
//! Kubernetes service discovery, so it rejects `kubernetes_sd_configs` as an unknown field.
//! Tools missing: skipped with the reason (a failure when `CI=true`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use loupe_testkit::root;
use serde_json::{json, Value};

const KUSTOMIZATIONS: &[&str] = &[
    "base",
    "overlays/prometheus-operator",
    "overlays/all-nodes",
    "overlays/cert-manager",
];
const CRD_KINDS: &[&str] = &[
    "ServiceMonitor",
    "PodMonitor",
    "PrometheusRule",
    "Certificate",
    "Issuer",
    "ClusterIssuer",
];
/// The projected ServiceAccount token in every pod, which scrapers send as their bearer token.
const SA_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
const ALLOWED_CAPS: &[&str] = &["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Whether `tool` is installed; `test` is skipped otherwise.
fn have(test: &str, tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--help")
        .output()
        .is_ok_and(|o| o.status.success());
    found
        || root::skip(
            test,
            &format!("{tool} is not installed (scripts/setup.sh installs it)"),
        )
}

fn render(kustomization: &str) -> String {
    let dir = deploy_dir().join(kustomization);
    // kubectl must never reach for a cluster: a dummy kubeconfig makes that explicit.
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .env("KUBECONFIG", "/dev/null")
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 manifests")
}

fn documents(text: &str) -> Vec<Value> {
    let mut docs = Vec::new();
    let mut current = String::new();
    for line in text.lines().chain(std::iter::once("---")) {
        if line == "---" {
            if !current.trim().is_empty() {
                docs.push(serde_yaml::from_str::<Value>(&current).expect("valid YAML document"));
            }
            current.clear();
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    docs
}

fn to_yaml(docs: &[&Value]) -> String {
    docs.iter()
        .map(|d| serde_yaml::to_string(d).expect("yaml"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// A file removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(text: &str) -> TempFile {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("loupe-deploy-{}-{n}.yaml", std::process::id()));
        std::fs::write(&path, text).expect("write temp file");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `kubernetes-validate --strict -k 1.30`: (success, output).
fn validate(text: &str) -> (bool, String) {
    let file = TempFile::new(text);
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "-k", "1.30"])
        .arg(&file.0)
        .output()
        .expect("run kubernetes-validate");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && !output.contains("ERROR"), output)
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn one<'a>(docs: &'a [Value], k: &str) -> &'a Value {
    let found = kind(docs, k);
    assert_eq!(found.len(), 1, "exactly one {k}");
    found[0]
}

fn str_of<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{pointer} missing in {}", v["kind"]))
}

fn named<'a>(docs: &'a [Value], k: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == k && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {k} named {name}"))
}

fn container(ds: &Value) -> &Value {
    &ds["spec"]["template"]["spec"]["containers"][0]
}

/// The value of the container's env var `name`, if set by value.
fn env_var<'a>(c: &'a Value, name: &str) -> Option<&'a str> {
    let env = c["env"].as_array().expect("env");
    let found: Vec<&Value> = env.iter().filter(|e| e["name"] == name).collect();
    assert!(found.len() <= 1, "env {name} set {} times", found.len());
    found.first().and_then(|e| e["value"].as_str())
}

/// The ServiceAccounts (namespace, name) that a ClusterRoleBinding gives ClusterRole `role`.
fn bound_to(docs: &[Value], role: &str) -> Vec<(String, String)> {
    kind(docs, "ClusterRoleBinding")
        .into_iter()
        .filter(|b| b["roleRef"]["kind"] == "ClusterRole" && b["roleRef"]["name"] == role)
        .flat_map(|b| b["subjects"].as_array().expect("subjects").iter())
        .filter(|s| s["kind"] == "ServiceAccount")
        .map(|s| (str_of(s, "/namespace").into(), str_of(s, "/name").into()))
        .collect()
}

/// A monitor's tlsConfig either skips verification (loupe's in-memory self-signed certificate)
/// or verifies a name of a rendered Certificate against the CA of that Certificate's Secret.
/// Returns whether it verifies.
fn check_monitor_tls(tls: &Value, docs: &[Value]) -> bool {
    if tls["insecureSkipVerify"] == true {
        assert!(tls.get("ca").is_none(), "a CA and skipping verification");
        return false;
    }
    let server_name = tls["serverName"]
        .as_str()
        .expect("serverName or insecureSkipVerify");
    let secret = &tls["ca"]["secret"];
    assert_eq!(secret["key"], "ca.crt", "the CA of the serving certificate");
    let cert = kind(docs, "Certificate")
        .into_iter()
        .find(|c| c["spec"]["secretName"] == secret["name"])
        .unwrap_or_else(|| panic!("no Certificate writes the Secret {}", secret["name"]));
    let names = cert["spec"]["dnsNames"].as_array().expect("dnsNames");
    assert!(
        names.iter().any(|n| n == server_name),
        "serverName {server_name} not in the certificate's names {names:?}"
    );
    true
}

/// cert-manager objects: each Certificate's issuer is rendered, the CA Issuer signs with the
/// Secret of a CA Certificate, and a serving Certificate names the rendered Service.
fn check_cert_manager(crd: &Value, docs: &[Value]) {
    assert_eq!(str_of(crd, "/apiVersion"), "cert-manager.io/v1");
    let spec = &crd["spec"];
    match str_of(crd, "/kind") {
        "Certificate" => {
            assert_eq!(str_of(crd, "/metadata/namespace"), "loupe");
            assert!(spec["secretName"].is_string(), "secretName");
            let issuer = &spec["issuerRef"];
            let issuer_kind = issuer["kind"].as_str().unwrap_or("Issuer");
            named(docs, issuer_kind, str_of(issuer, "/name"));
            if spec["isCA"] != true {
                let svc = one(docs, "Service");
                let name = format!(
                    "{}.{}.svc",
                    str_of(svc, "/metadata/name"),
                    str_of(svc, "/metadata/namespace")
                );
                let names = spec["dnsNames"].as_array().expect("dnsNames");
                assert!(
                    names.iter().any(|n| n == name.as_str()),
                    "{name} in {names:?}"
                );
                assert!(
                    names
                        .iter()
                        .any(|n| *n == format!("{name}.cluster.local").as_str()),
                    "{name}.cluster.local in {names:?}"
                );
            }
        }
        k @ ("Issuer" | "ClusterIssuer") => {
            if k == "Issuer" {
                assert_eq!(str_of(crd, "/metadata/namespace"), "loupe");
            }
            let spec = spec.as_object().expect("spec");
            assert_eq!(spec.len(), 1, "one issuer type: {spec:?}");
            if let Some(ca) = spec.get("ca") {
                let secret = &ca["secretName"];
                assert!(
                    kind(docs, "Certificate")
                        .iter()
                        .any(|c| c["spec"]["isCA"] == true && &c["spec"]["secretName"] == secret),
                    "the CA Issuer's Secret {secret} comes from a CA Certificate"
                );
            } else {
                assert!(spec.contains_key("selfSigned"), "{spec:?}");
            }
        }
        k => panic!("unexpected kind {k}"),
    }
}

/// The PrometheusRule carries exactly the rules of deploy/prometheus/alerts.yaml (which promtool
/// checks and unit-tests, see `alerts_pass_promtool_and_their_unit_tests`).
fn check_rules(rule: &Value) {
    assert_eq!(str_of(rule, "/apiVersion"), "monitoring.coreos.com/v1");
    assert_eq!(str_of(rule, "/metadata/namespace"), "loupe");
    let text =
        std::fs::read_to_string(deploy_dir().join("prometheus/alerts.yaml")).expect("alerts");
    let plain: Value = serde_yaml::from_str(&text).expect("alerts.yaml is YAML");
    assert_eq!(
        rule["spec"], plain,
        "the PrometheusRule and deploy/prometheus/alerts.yaml differ"
    );
}

/// Checks a ServiceMonitor or PodMonitor against the rendered Service and DaemonSet.
fn check_monitor(monitor: &Value, docs: &[Value]) {
    assert_eq!(str_of(monitor, "/apiVersion"), "monitoring.coreos.com/v1");
    assert_eq!(str_of(monitor, "/metadata/namespace"), "loupe");
    let selector = monitor
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .expect("matchLabels");
    let (labels, endpoints) = if monitor["kind"] == "ServiceMonitor" {
        let service = one(docs, "Service");
        (
            &service["metadata"]["labels"],
            &monitor["spec"]["endpoints"],
        )
    } else {
        let ds = one(docs, "DaemonSet");
        (
            &ds["spec"]["template"]["metadata"]["labels"],
            &monitor["spec"]["podMetricsEndpoints"],
        )
    };
    for (k, v) in selector {
        assert_eq!(&labels[k], v, "{} selector {k} matches", monitor["kind"]);
    }
    let namespaces = &monitor["spec"]["namespaceSelector"]["matchNames"];
    assert_eq!(namespaces, &json!(["loupe"]));
    let endpoints = endpoints.as_array().expect("endpoints");
    assert!(!endpoints.is_empty());
    let verified_tls = !kind(docs, "Certificate").is_empty();
    for e in endpoints {
        assert_eq!(e["port"], "metrics");
        assert_eq!(e["path"], "/metrics");
        assert_eq!(e["honorLabels"], true, "the app pods' labels must win");
        assert_eq!(e["scheme"], "https", "loupe serves TLS");
        if monitor["kind"] == "ServiceMonitor" {
            // Prometheus' own token; the overlay binds loupe-scraper to some ServiceAccount.
            assert_eq!(e["bearerTokenFile"], SA_TOKEN);
            assert!(
                !bound_to(docs, "loupe-scraper").is_empty(),
                "nobody is bound to loupe-scraper"
            );
        } else {
            // A PodMonitor has no token file: a ServiceAccount token Secret, of an account
            // bound to loupe-scraper.
            let auth = &e["authorization"];
            assert_ne!(auth["type"], "Basic");
            assert_eq!(auth["credentials"]["key"], "token");
            let secret = named(docs, "Secret", str_of(auth, "/credentials/name"));
            assert_eq!(secret["type"], "kubernetes.io/service-account-token");
            let account = str_of(
                secret,
                "/metadata/annotations/kubernetes.io~1service-account.name",
            );
            named(docs, "ServiceAccount", account);
            assert!(
                bound_to(docs, "loupe-scraper").contains(&("loupe".into(), account.into())),
                "{account} is not bound to loupe-scraper"
            );
        }
        assert_eq!(
            check_monitor_tls(&e["tlsConfig"], docs),
            verified_tls,
            "{}: verify exactly when cert-manager makes the certificate",
            monitor["kind"]
        );
    }
}

#[test]
fn every_kustomization_renders_and_validates() {
    if !have("every_kustomization_renders_and_validates", "kubectl")
        || !have(
            "every_kustomization_renders_and_validates",
            "kubernetes-validate",
        )
    {
        return;
    }
    for k in KUSTOMIZATIONS {
        let docs = documents(&render(k));
        assert!(docs.len() >= 6, "{k}: {} documents", docs.len());
        let (crds, plain): (Vec<&Value>, Vec<&Value>) = docs
            .iter()
            .partition(|d| CRD_KINDS.iter().any(|c| d["kind"] == *c));
        let (ok, output) = validate(&to_yaml(&plain));
        assert!(ok, "{k}: kubernetes-validate failed:\n{output}");
        // Every resource was actually validated, none silently skipped.
        for d in &plain {
            let line = format!(
                "passed for resource {}/{}",
                str_of(d, "/kind").to_lowercase(),
                str_of(d, "/metadata/name")
            );
            assert!(output.contains(&line), "{k}: no '{line}' in:\n{output}");
        }
        for crd in crds {
            match crd["kind"].as_str() {
                Some("PrometheusRule") => check_rules(crd),
                Some("ServiceMonitor" | "PodMonitor") => check_monitor(crd, &docs),
                _ => check_cert_manager(crd, &docs),
            }
        }
    }
}

#[test]
fn validator_rejects_an_unknown_field() {
    if !have("validator_rejects_an_unknown_field", "kubectl")
        || !have("validator_rejects_an_unknown_field", "kubernetes-validate")
    {
        return;
    }
    let docs = documents(&render("base"));
    let mut ds = one(&docs, "DaemonSet").clone();
    ds["spec"]["template"]["spec"]["hostPIDs"] = Value::Bool(true);
    let (ok, output) = validate(&to_yaml(&[&ds]));
    assert!(
        !ok,
        "a misspelt field must fail strict validation:\n{output}"
    );
}

#[test]
fn daemonset_has_the_promised_properties() {
    if !have("daemonset_has_the_promised_properties", "kubectl") {
        return;
    }
    let docs = documents(&render("base"));
    let ds = one(&docs, "DaemonSet");
    assert_eq!(str_of(ds, "/metadata/namespace"), "loupe");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["nodeSelector"]["loupe.dev/enabled"], "true");
    assert_eq!(pod["hostPID"], true);
    assert_ne!(pod["hostNetwork"], true);
    assert!(pod.get("tolerations").is_none(), "tolerations are opt-in");
    assert_eq!(
        ds["spec"]["template"]["metadata"]["annotations"]["loupe.dev/scrape"], "false",
        "loupe does not scrape itself"
    );
    let sa = one(&docs, "ServiceAccount");
    assert_eq!(pod["serviceAccountName"], sa["metadata"]["name"]);

    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let sc = &c["securityContext"];
    assert_ne!(sc["privileged"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    for cap in sc["capabilities"]["add"].as_array().expect("added caps") {
        let cap = cap.as_str().expect("cap name");
        assert!(ALLOWED_CAPS.contains(&cap), "unexpected capability {cap}");
    }
    assert_ne!(
        sc["allowPrivilegeEscalation"], false,
        "the API server refuses allowPrivilegeEscalation: false with SYS_ADMIN"
    );
    let env = c["env"].as_array().expect("env");
    let node_name = env
        .iter()
        .find(|e| e["name"] == "NODE_NAME")
        .expect("NODE_NAME");
    assert_eq!(
        node_name["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    // TLS and token checks by default; the probes speak TLS too (they need no token).
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("arg"))
        .collect();
    assert!(
        args.windows(2).any(|w| w == ["--authz", "kubernetes"]),
        "--authz kubernetes in {args:?}"
    );
    assert_eq!(env_var(c, "LOUPE_TLS_SELF_SIGNED"), Some("true"));
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["scheme"], "HTTPS", "{probe}");
    }
    let port = c["ports"][0]["containerPort"].as_u64().expect("port");
    assert_eq!(
        env_var(c, "LOUPE_STATUS_URL"),
        Some(format!("https://127.0.0.1:{port}").as_str()),
        "loupe status asks its own pod over loopback"
    );
    assert_eq!(env_var(c, "LOUPE_STATUS_TOKEN_FILE"), Some(SA_TOKEN));
    for kind in ["requests", "limits"] {
        for res in ["cpu", "memory"] {
            assert!(c["resources"][kind][res].is_string(), "{kind}.{res} set");
        }
    }
    // Host paths, if any are ever added, are mounted read-only.
    let volumes = pod["volumes"].as_array().expect("volumes");
    for v in volumes {
        if v.get("hostPath").is_some() {
            let name = &v["name"];
            let mount = c["volumeMounts"]
                .as_array()
                .and_then(|m| m.iter().find(|m| &m["name"] == name))
                .expect("mount of host volume");
            assert_eq!(
                mount["readOnly"], true,
                "host path {name} mounted read-only"
            );
        }
    }

    // RBAC: reading pods, reviewing scrapers' tokens, and its own `loupe status`.
    let role = named(&docs, "ClusterRole", "loupe");
    let rules = role["rules"].as_array().expect("rules");
    assert_eq!(
        rules,
        &vec![
            json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}),
            json!({"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}),
            json!({"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]}),
            json!({"nonResourceURLs": ["/targets", "/metrics"], "verbs": ["get"]}),
        ]
    );
    assert_eq!(
        bound_to(&docs, "loupe"),
        [(
            "loupe".to_string(),
            str_of(sa, "/metadata/name").to_string()
        )]
    );
    // Scrapers get exactly `get` on /metrics: not /targets, nothing else.
    let scraper = named(&docs, "ClusterRole", "loupe-scraper");
    assert_eq!(
        scraper["rules"],
        json!([{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}])
    );
    assert_eq!(kind(&docs, "ClusterRole").len(), 2);

    // The NetworkPolicy admits the loupe pods' port from the monitoring namespace only.
    let policy = one(&docs, "NetworkPolicy");
    assert_eq!(str_of(policy, "/metadata/namespace"), "loupe");
    let selector = policy["spec"]["podSelector"]["matchLabels"]
        .as_object()
        .expect("podSelector");
    assert!(!selector.is_empty());
    for (k, v) in selector {
        assert_eq!(&ds["spec"]["template"]["metadata"]["labels"][k], v);
    }
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress"]));
    assert_eq!(
        policy["spec"]["ingress"],
        json!([{
            "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
            "ports": [{"protocol": "TCP", "port": port}],
        }])
    );

    // The headless Service selects the DaemonSet's pods and targets its named port.
    let svc = one(&docs, "Service");
    assert_eq!(svc["spec"]["clusterIP"], "None");
    for (k, v) in svc["spec"]["selector"].as_object().expect("selector") {
        assert_eq!(&ds["spec"]["template"]["metadata"]["labels"][k], v);
    }
    let target = &svc["spec"]["ports"][0]["targetPort"];
    assert!(c["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .any(|p| &p["name"] == target));
}

#[test]
fn each_overlay_adds_its_pieces() {
    if !have("each_overlay_adds_its_pieces", "kubectl") {
        return;
    }
    let docs = documents(&render("overlays/all-nodes"));
    let ds = one(&docs, "DaemonSet");
    assert_eq!(
        ds["spec"]["template"]["spec"]["tolerations"],
        json!([{"operator": "Exists"}])
    );
    assert_eq!(kind(&docs, "PodMonitor").len(), 1);
    let docs = documents(&render("overlays/prometheus-operator"));
    assert_eq!(kind(&docs, "ServiceMonitor").len(), 1);
    // kube-prometheus' Prometheus may scrape, from the namespace the NetworkPolicy admits.
    let policy = one(&docs, "NetworkPolicy");
    let admitted = str_of(
        policy,
        "/spec/ingress/0/from/0/namespaceSelector/matchLabels/kubernetes.io~1metadata.name",
    );
    assert_eq!(
        bound_to(&docs, "loupe-scraper"),
        [(admitted.to_string(), "prometheus-k8s".to_string())]
    );
}

#[test]
fn cert_manager_overlay_serves_the_certificate_through_the_web_config() {
    if !have(
        "cert_manager_overlay_serves_the_certificate_through_the_web_config",
        "kubectl",
    ) {
        return;
    }
    let docs = documents(&render("overlays/cert-manager"));
    let ds = one(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let c = container(ds);
    let volumes = pod["volumes"].as_array().expect("volumes");
    let mounts = c["volumeMounts"].as_array().expect("volumeMounts");
    // The directory where the volume `pred` picks is mounted, read-only and whole.
    let mount_of = |pred: &dyn Fn(&Value) -> bool| -> (&Value, String) {
        let volume = volumes.iter().find(|v| pred(v)).expect("volume");
        let mount = mounts
            .iter()
            .find(|m| m["name"] == volume["name"])
            .unwrap_or_else(|| panic!("{} not mounted", volume["name"]));
        assert_eq!(mount["readOnly"], true);
        assert!(
            mount.get("subPath").is_none(),
            "subPath mounts never update"
        );
        (volume, str_of(mount, "/mountPath").to_string())
    };

    // The serving Certificate's Secret is mounted.
    let served: Vec<&Value> = kind(&docs, "Certificate")
        .into_iter()
        .filter(|c| c["spec"]["isCA"] != true)
        .collect();
    assert_eq!(served.len(), 1, "one serving Certificate");
    let secret = str_of(served[0], "/spec/secretName");
    let (_, tls_dir) = mount_of(&|v| v["secret"]["secretName"] == secret);

    // LOUPE_WEB_CONFIG_FILE is a key of the mounted ConfigMap, and names that Secret's files.
    let file = env_var(c, "LOUPE_WEB_CONFIG_FILE").expect("LOUPE_WEB_CONFIG_FILE");
    let (dir, key) = file.rsplit_once('/').expect("a path");
    let (volume, web_dir) = mount_of(&|v| v.get("configMap").is_some());
    assert_eq!(dir, web_dir, "{file} is in the ConfigMap's mount");
    let cm = named(&docs, "ConfigMap", str_of(volume, "/configMap/name"));
    let text = cm["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("no key {key} in the ConfigMap"));
    let web: Value = serde_yaml::from_str(text).expect("web config is YAML");
    let tls = &web["tls_server_config"];
    assert_eq!(tls["cert_file"], format!("{tls_dir}/tls.crt").as_str());
    assert_eq!(tls["key_file"], format!("{tls_dir}/tls.key").as_str());
    // loupe refuses a web config's certificate together with the in-memory one.
    assert_eq!(env_var(c, "LOUPE_TLS_SELF_SIGNED"), Some("false"));
    // Still the base's authz, and the ServiceMonitor verifies (check_monitor_tls, via
    // every_kustomization_renders_and_validates).
    assert!(c["args"]
        .as_array()
        .expect("args")
        .contains(&json!("kubernetes")));
    assert_eq!(kind(&docs, "ServiceMonitor").len(), 1);
}

#[test]
fn plain_prometheus_scrape_config_finds_the_loupe_pods() {
    if !have(
        "plain_prometheus_scrape_config_finds_the_loupe_pods",
        "kubectl",
    ) {
        return;
    }
    let path = deploy_dir().join("prometheus/scrape-config.yaml");
    let text = std::fs::read_to_string(&path).expect("scrape config");
    let config: Value = serde_yaml::from_str(&text).expect("valid YAML");
    let jobs = config["scrape_configs"].as_array().expect("scrape_configs");
    let job = jobs
        .iter()
        .find(|j| j["job_name"] == "loupe")
        .expect("job loupe");
    assert_eq!(job["honor_labels"], true);
    assert_eq!(job["kubernetes_sd_configs"][0]["role"], "pod");
    // TLS (loupe's self-signed certificate by default) and Prometheus' own token.
    assert_eq!(job["scheme"], "https");
    assert_eq!(job["authorization"]["credentials_file"], SA_TOKEN);
    assert_eq!(job["tls_config"]["insecure_skip_verify"], true);
    let relabels = job["relabel_configs"].as_array().expect("relabel_configs");
    let keep = |label: &str| {
        relabels
            .iter()
            .find(|r| r["action"] == "keep" && r["source_labels"][0] == label)
            .and_then(|r| r["regex"].as_str())
            .unwrap_or_else(|| panic!("a keep rule on {label}"))
            .to_string()
    };
    // The kept label value and port name are the ones the DaemonSet really has.
    let docs = documents(&render("base"));
    let ds = one(&docs, "DaemonSet");
    assert_eq!(
        ds["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"],
        keep("__meta_kubernetes_pod_label_app_kubernetes_io_name").as_str()
    );
    let port = keep("__meta_kubernetes_pod_container_port_name");
    assert!(ds["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .any(|p| p["name"] == port.as_str()));
}

/// promtool checks everything but the service discovery, which Debian's promtool lacks: the
/// same job with a static target. `--syntax-only`, since the token file exists only in a pod.
#[test]
fn plain_prometheus_scrape_config_passes_promtool() {
    if !have("plain_prometheus_scrape_config_passes_promtool", "promtool") {
        return;
    }
    let path = deploy_dir().join("prometheus/scrape-config.yaml");
    let text = std::fs::read_to_string(&path).expect("scrape config");
    let mut config: Value = serde_yaml::from_str(&text).expect("valid YAML");
    for job in config["scrape_configs"]
        .as_array_mut()
        .expect("scrape_configs")
    {
        let job = job.as_object_mut().expect("a job");
        assert!(job.remove("kubernetes_sd_configs").is_some());
        job.insert(
            "static_configs".into(),
            json!([{"targets": ["10.0.0.1:9897"]}]),
        );
    }
    let file = TempFile::new(&serde_yaml::to_string(&config).expect("yaml"));
    let out = Command::new("promtool")
        .args(["check", "config", "--syntax-only"])
        .arg(&file.0)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool check config: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Also the per-pod `up` rules (`per-pod-up.yaml`), which the migration test runs in a real
/// Prometheus.
#[test]
fn alerts_pass_promtool_and_their_unit_tests() {
    if !have("alerts_pass_promtool_and_their_unit_tests", "promtool") {
        return;
    }
    let dir = deploy_dir().join("prometheus");
    for args in [
        ["check", "rules", "alerts.yaml"],
        ["test", "rules", "alerts-test.yaml"],
        ["check", "rules", "per-pod-up.yaml"],
        ["test", "rules", "per-pod-up-test.yaml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn alerts_name_only_series_loupe_serves() {
    if !root::require(
        "alerts_name_only_series_loupe_serves",
        loupe_tests::TESTBED_NEEDS,
    ) {
        return;
    }
    // A real agent's /metrics, with one pod whose namespace cannot be resolved (so that the
    // per-target families have a sample): every family it can serve is there.
    use loupe_tests::loupe::{EndpointSpec, Loupe, NetnsRef, PodSpec};
    let gone = PodSpec {
        namespace: "shop".into(),
        name: "gone".into(),
        netns: NetnsRef::Path("/var/run/netns/loupe-test-no-such-namespace".into()),
        endpoints: vec![EndpointSpec::port(8080)],
    };
    let loupe = Loupe::start(&[gone], &["--capture", "off"]).expect("start loupe");
    let (served, _) = loupe
        .metrics_until("the pod reported down", Duration::from_secs(30), |exp| {
            exp.value("loupe_target_up", &[("pod", "gone")]) == Some(0.0)
        })
        .expect("/metrics");
    let families: Vec<&str> = served
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let text =
        std::fs::read_to_string(deploy_dir().join("prometheus/alerts.yaml")).expect("alerts");
    let alerts: Value = serde_yaml::from_str(&text).expect("alerts.yaml is YAML");
    let rules = alerts["groups"][0]["rules"].as_array().expect("rules");
    assert!(!rules.is_empty());
    for rule in rules {
        let expr = rule["expr"].as_str().expect("expr");
        let names: Vec<&str> = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("loupe_"))
            .collect();
        assert!(!names.is_empty(), "{expr}");
        for name in names {
            assert!(
                families.contains(&name),
                "alert {} uses {name}, which loupe does not serve",
                rule["alert"]
            );
        }
    }
}
