//! deploy/: every kustomization renders offline with `kubectl kustomize`, and the rendered
//! manifests pass `kubernetes-validate --strict` for Kubernetes 1.30. ServiceMonitor and PodMonitor
//! are CRDs that kubernetes-validate has no schema for: they are checked structurally here (their
//! selectors and ports against the rendered Service and DaemonSet). The plain Prometheus scrape
//! config is checked structurally too: Debian's promtool is built without Kubernetes service
//! discovery, so it rejects `kubernetes_sd_configs` as an unknown field.
//! Tools missing: skipped with the reason (a failure when `CI=true`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use loupe_testkit::root;
use serde_json::Value;

const KUSTOMIZATIONS: &[&str] = &["base", "overlays/prometheus-operator", "overlays/all-nodes"];
const CRD_KINDS: &[&str] = &["ServiceMonitor", "PodMonitor", "PrometheusRule"];
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
    assert_eq!(namespaces, &serde_json::json!(["loupe"]));
    let endpoints = endpoints.as_array().expect("endpoints");
    assert!(!endpoints.is_empty());
    for e in endpoints {
        assert_eq!(e["port"], "metrics");
        assert_eq!(e["path"], "/metrics");
        assert_eq!(e["honorLabels"], true, "the app pods' labels must win");
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
                _ => check_monitor(crd, &docs),
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
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
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

    // RBAC: only reading pods.
    let role = one(&docs, "ClusterRole");
    let rules = role["rules"].as_array().expect("rules");
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0]["resources"], serde_json::json!(["pods"]));
    assert_eq!(
        rules[0]["verbs"],
        serde_json::json!(["get", "list", "watch"])
    );
    let binding = one(&docs, "ClusterRoleBinding");
    assert_eq!(binding["subjects"][0]["name"], sa["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["namespace"], "loupe");

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
fn tolerations_are_in_the_all_nodes_overlay() {
    if !have("tolerations_are_in_the_all_nodes_overlay", "kubectl") {
        return;
    }
    let docs = documents(&render("overlays/all-nodes"));
    let ds = one(&docs, "DaemonSet");
    assert_eq!(
        ds["spec"]["template"]["spec"]["tolerations"],
        serde_json::json!([{"operator": "Exists"}])
    );
    assert_eq!(kind(&docs, "PodMonitor").len(), 1);
    let docs = documents(&render("overlays/prometheus-operator"));
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

#[test]
fn alerts_pass_promtool_and_their_unit_tests() {
    if !have("alerts_pass_promtool_and_their_unit_tests", "promtool") {
        return;
    }
    let dir = deploy_dir().join("prometheus");
    for args in [
        ["check", "rules", "alerts.yaml"],
        ["test", "rules", "alerts-test.yaml"],
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
