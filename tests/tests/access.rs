//! Only those allowed read the node target (issue 9): a real Prometheus scrapes loupe over https,
//! with client certificates and basic auth (the web configuration), and with a bearer token that
//! the in-process API server reviews (`--authz kubernetes`); every refusal is asserted, with the
//! exact attributes loupe sent, and the namespace views, certificate rotation and a broken
//! reload. Requests from the tests go through curl (independent of loupe's rustls).
//! Needs root (pods are network namespaces); skipped with the reason otherwise.

use std::path::{Path, PathBuf};
use std::time::Duration;

use loupe_testkit::root;
use loupe_tests::certs::{self, Certs, Pair, SERVER_NAME};
use loupe_tests::https::{self, Https};
use loupe_tests::kubeapi::KubeApi;
use loupe_tests::loupe::{pod_with_app, Client, Loupe};
use loupe_tests::prometheus::Prometheus;
use loupe_tests::{http, wait_for, TempDir, TESTBED_NEEDS};
use serde_json::Value;

const SERIES: &str = "5";

/// `{__name__=~"app_.+"}` grouped by pod: the pods whose app series Prometheus stored.
fn stored_pods(prometheus: &Prometheus, at_least: usize) -> Vec<String> {
    let found = prometheus
        .query_until(
            r#"group by (namespace, pod) ({__name__=~"app_.+"})"#,
            at_least,
            Duration::from_secs(60),
        )
        .expect("app series stored");
    let mut pods: Vec<String> = found
        .iter()
        .map(|s| format!("{}/{}", s.labels["namespace"], s.labels["pod"]))
        .collect();
    pods.sort();
    pods
}

/// A Secret volume as the kubelet writes it: files behind `..data`, a symlink swapped whole.
struct SecretVolume {
    dir: TempDir,
    generation: u32,
}

impl SecretVolume {
    fn new(pair: &Pair) -> SecretVolume {
        let dir = TempDir::new("loupe-secret").unwrap();
        let mut volume = SecretVolume { dir, generation: 0 };
        volume.put(pair);
        for name in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), volume.path().join(name)).unwrap();
        }
        volume
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a new generation and swaps `..data` to it atomically (rename over the link).
    fn put(&mut self, pair: &Pair) {
        self.generation += 1;
        let generation = format!("..gen_{}", self.generation);
        let gen_dir = self.path().join(&generation);
        std::fs::create_dir(&gen_dir).unwrap();
        std::fs::copy(&pair.cert, gen_dir.join("tls.crt")).unwrap();
        std::fs::copy(&pair.key, gen_dir.join("tls.key")).unwrap();
        let tmp = self.path().join("..data_tmp");
        std::os::unix::fs::symlink(&generation, &tmp).unwrap();
        std::fs::rename(&tmp, self.path().join("..data")).unwrap();
    }
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

#[test]
fn https_with_client_certificates_and_basic_auth_rotation_and_a_broken_reload() {
    if !root::require(
        "https_with_client_certificates_and_basic_auth_rotation_and_a_broken_reload",
        TESTBED_NEEDS,
    ) {
        return;
    }
    let certs = Certs::new().unwrap();
    let other = TempDir::new("loupe-certs-rotated").unwrap();
    // The rotated certificate comes from another CA: which CA verifies tells which is served.
    let server_ext = format!("subjectAltName=DNS:{SERVER_NAME}\nextendedKeyUsage=serverAuth\n");
    let rotated =
        certs::signed(&other, "rotated", &certs.foreign_ca, "sidecar", &server_ext).unwrap();
    let mut secret = SecretVolume::new(&certs.server);

    let (_pod_a, _app_a, spec_a) = pod_with_app("cart", 8080, &["--series", SERIES]).unwrap();
    let (_pod_b, _app_b, mut spec_b) = pod_with_app("blog", 8080, &["--series", SERIES]).unwrap();
    spec_b.namespace = "web".into();

    let hash = bcrypt::hash("scrape-me", 4).unwrap();
    let web_config = secret.path().join("web.yml");
    let config_text = format!(
        "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n  min_version: TLS12\nbasic_auth_users:\n  prometheus: {hash}\nhttp_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n",
        certs.ca.cert.display()
    );
    std::fs::write(&web_config, &config_text).unwrap();
    let tls = Https {
        ca: Some(certs.ca.cert.clone()),
        server_name: Some(SERVER_NAME.into()),
        client: Some(certs.client.clone()),
    };
    let client = Client {
        tls: Some(tls.clone()),
        headers: vec![("Authorization".into(), basic("prometheus", "scrape-me"))],
    };
    let web_config_arg = web_config.to_string_lossy().into_owned();
    let loupe = Loupe::start_with_client(
        &[spec_a, spec_b],
        &["--web-config-file", &web_config_arg, "--capture", "off"],
        client.clone(),
    )
    .unwrap();

    // A real Prometheus, verifying loupe and presenting its client certificate.
    let password_file = secret.path().join("password");
    std::fs::write(&password_file, "scrape-me").unwrap();
    let settings = format!(
        "scheme: https\ntls_config:\n  ca_file: {}\n  cert_file: {}\n  key_file: {}\n  server_name: {SERVER_NAME}\nbasic_auth:\n  username: prometheus\n  password_file: {}\n",
        certs.ca.cert.display(),
        certs.client.cert.display(),
        certs.client.key.display(),
        password_file.display(),
    );
    let prometheus = Prometheus::start_with("loupe", &[&loupe.listen], &settings).unwrap();
    assert_eq!(stored_pods(&prometheus, 2), ["shop/cart", "web/blog"]);

    // The header of http_server_config is on every answer.
    let ok = loupe.get("/metrics", &[]).unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("x-content-type-options"), Some("nosniff"));
    // A namespace view needs no authz to work: only that namespace's pods, no agent-wide series.
    let web = loupe
        .get("/metrics?namespace=web", &[])
        .unwrap()
        .text()
        .unwrap();
    assert!(
        web.contains("pod=\"blog\"") && !web.contains("pod=\"cart\""),
        "{web}"
    );
    assert!(
        web.contains("loupe_target_up{") && !web.contains("loupe_scrapes_total"),
        "{web}"
    );

    // Refusals. Plain HTTP to the TLS port: Go's 400, no data.
    let plain = http::get(&loupe.listen, "/metrics", &[], Duration::from_secs(10)).unwrap();
    assert_eq!(plain.status, 400);
    assert!(plain.text().unwrap().contains("HTTPS server"));
    // No client certificate, and one from another CA: the handshake fails.
    let auth = [("Authorization", basic("prometheus", "scrape-me"))];
    let auth: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let no_cert = Https {
        client: None,
        ..tls.clone()
    };
    https::get(&loupe.listen, "/metrics", &no_cert, &auth)
        .expect_err("served without a client certificate");
    let foreign = Https {
        client: Some(certs.foreign_client.clone()),
        ..tls.clone()
    };
    https::get(&loupe.listen, "/metrics", &foreign, &auth)
        .expect_err("served to another CA's client");
    // Wrong password, and none.
    let wrong = https::get(
        &loupe.listen,
        "/metrics",
        &tls,
        &[("Authorization", &basic("prometheus", "guess"))],
    )
    .unwrap();
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.header("www-authenticate"), Some("Basic"));
    assert!(!wrong.text().unwrap().contains("app_"));
    assert_eq!(
        https::get(&loupe.listen, "/targets", &tls, &[])
            .unwrap()
            .status,
        401
    );
    // Probes need no credentials (over TLS).
    assert_eq!(
        https::get(&loupe.listen, "/healthz", &tls, &[])
            .unwrap()
            .status,
        200
    );

    // Rotation: the Secret's ..data swapped to the other CA's certificate; a new connection sees it.
    secret.put(&rotated);
    let rotated_tls = Https {
        ca: Some(certs.foreign_ca.cert.clone()),
        ..tls.clone()
    };
    wait_for(
        "the rotated certificate to be served",
        Duration::from_secs(15),
        || match https::get(&loupe.listen, "/metrics", &rotated_tls, &auth) {
            Ok(r) if r.status == 200 => Ok(Some(())),
            Ok(r) => Err(format!("status {}", r.status)),
            Err(e) => Err(e.to_string()),
        },
    )
    .unwrap();
    https::get(&loupe.listen, "/metrics", &tls, &auth)
        .expect_err("the old certificate still served");

    // A broken new config: logged, counted, and the previous one (the rotated certificate, the
    // same users) stays in force.
    std::fs::write(
        &web_config,
        config_text.replace("client_auth_type", "client_auth_typo"),
    )
    .unwrap();
    loupe
        .wait_log_line(
            &["client_auth_typo", "previous configuration stays"],
            Duration::from_secs(15),
        )
        .unwrap();
    let still = https::get(&loupe.listen, "/metrics", &rotated_tls, &auth).unwrap();
    assert_eq!(still.status, 200);
    let text = still.text().unwrap();
    let failures = text
        .lines()
        .find_map(|l| l.strip_prefix("loupe_web_config_reload_failures_total "))
        .expect("the reload failure counter");
    assert_eq!(failures.trim(), "1", "{text}");
    let reloads = text
        .lines()
        .find_map(|l| l.strip_prefix("loupe_web_config_reloads_total "))
        .expect("the reload counter");
    assert_eq!(reloads.trim(), "1");
    // Prometheus kept scraping through all of it: the new certificate's CA is not its CA, so
    // it now fails, as a real verifying scraper must.
    drop(prometheus);
}

/// The API server on its own runtime (the test body blocks), with a kubeconfig for loupe.
struct Cluster {
    api: KubeApi,
    kubeconfig: PathBuf,
    dir: TempDir,
    rt: tokio::runtime::Runtime,
}

impl Cluster {
    fn start() -> Cluster {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let api = rt.block_on(KubeApi::start()).unwrap();
        let dir = TempDir::new("loupe-authz").unwrap();
        let kubeconfig = api.write_kubeconfig(dir.path()).unwrap();
        Cluster {
            api,
            kubeconfig,
            dir,
            rt,
        }
    }

    fn token_file(&self, token: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{token}.token"));
        std::fs::write(&path, token).unwrap();
        path
    }
}

const PROMETHEUS_USER: &str = "system:serviceaccount:monitoring:prometheus";

fn reviews_for<'a>(reviews: &'a [Value], user: &str) -> Vec<&'a Value> {
    reviews
        .iter()
        .filter(|r| r["spec"]["user"] == user)
        .collect()
}

#[test]
fn kubernetes_authz_decides_each_view_and_fails_closed() {
    if !root::require(
        "kubernetes_authz_decides_each_view_and_fails_closed",
        TESTBED_NEEDS,
    ) {
        return;
    }
    let mut cluster = Cluster::start();
    let api = &cluster.api;
    api.add_token("prom-token", PROMETHEUS_USER, &["system:serviceaccounts"]);
    api.allow_non_resource(PROMETHEUS_USER, "/metrics", "get");
    api.add_token("shop-token", "shop-team", &["shop-devs"]);
    api.allow_namespace_pods_metrics("shop-team", "shop");
    api.add_token("status-token", "system:serviceaccount:loupe:loupe", &[]);
    api.allow_non_resource("system:serviceaccount:loupe:loupe", "/targets", "get");
    api.add_token("late-token", "late", &[]);
    api.allow_non_resource("late", "/metrics", "get");

    let (_pod_a, _app_a, spec_a) = pod_with_app("cart", 8080, &["--series", SERIES]).unwrap();
    let (_pod_b, _app_b, mut spec_b) = pod_with_app("blog", 8080, &["--series", SERIES]).unwrap();
    spec_b.namespace = "web".into();
    let kubeconfig = cluster.kubeconfig.to_string_lossy().into_owned();
    let tls = Https::default(); // the self-signed certificate: not verified
    let loupe = Loupe::start_with_client(
        &[spec_a, spec_b],
        &[
            "--authz",
            "kubernetes",
            "--kubeconfig",
            &kubeconfig,
            "--tls-self-signed",
            "--capture",
            "off",
        ],
        Client {
            tls: Some(tls.clone()),
            headers: vec![("Authorization".into(), "Bearer prom-token".into())],
        },
    )
    .unwrap();

    // The node view: Prometheus with its service-account token stores every pod.
    let prom_settings = format!(
        "scheme: https\ntls_config:\n  insecure_skip_verify: true\nauthorization:\n  credentials_file: {}\n",
        cluster.token_file("prom-token").display()
    );
    let node_prometheus =
        Prometheus::start_with("loupe", &[&loupe.listen], &prom_settings).unwrap();
    assert_eq!(stored_pods(&node_prometheus, 2), ["shop/cart", "web/blog"]);
    node_prometheus
        .query_until("loupe_scrapes_total", 1, Duration::from_secs(30))
        .unwrap();

    // A tenant's view: its namespace's pods and their loupe_target_* series, nothing else.
    let tenant_settings = format!(
        "scheme: https\ntls_config:\n  insecure_skip_verify: true\nauthorization:\n  credentials_file: {}\nparams:\n  namespace: [shop]\n",
        cluster.token_file("shop-token").display()
    );
    let tenant = Prometheus::start_with("shop", &[&loupe.listen], &tenant_settings).unwrap();
    assert_eq!(stored_pods(&tenant, 1), ["shop/cart"]);
    let up = tenant
        .query_until("loupe_target_up", 1, Duration::from_secs(30))
        .unwrap();
    assert!(up.iter().all(|s| s.labels["namespace"] == "shop"), "{up:?}");
    assert!(tenant.query("loupe_scrapes_total").unwrap().is_empty());
    assert!(tenant
        .query(r#"{__name__=~".+", namespace="web"}"#)
        .unwrap()
        .is_empty());

    // The exact reviews loupe sent.
    let token_reviews = api.token_reviews();
    assert!(token_reviews
        .iter()
        .any(|r| r["spec"]["token"] == "prom-token" && r["kind"] == "TokenReview"));
    let access = api.access_reviews();
    let prometheus_reviews = reviews_for(&access, PROMETHEUS_USER);
    let first = prometheus_reviews.first().expect("a review for Prometheus");
    assert_eq!(
        first["spec"]["nonResourceAttributes"],
        serde_json::json!({"path": "/metrics", "verb": "get"})
    );
    assert!(first["spec"]["resourceAttributes"].is_null());
    assert_eq!(
        first["spec"]["groups"],
        serde_json::json!(["system:serviceaccounts", "system:authenticated"])
    );
    assert!(first["spec"]["uid"].as_str().is_some_and(|u| !u.is_empty()));
    let shop_reviews = reviews_for(&access, "shop-team");
    assert_eq!(
        shop_reviews.first().expect("a review for the tenant")["spec"]["resourceAttributes"],
        serde_json::json!({"namespace": "shop", "verb": "get", "group": "metrics.k8s.io", "resource": "pods"})
    );
    // Remembered: scrapes every second, one TokenReview and one review of the node view.
    let prom_token_reviews = token_reviews
        .iter()
        .filter(|r| r["spec"]["token"] == "prom-token")
        .count();
    let node_reviews = prometheus_reviews.len();
    let scrapes = node_prometheus
        .query(r#"count_over_time(up{job="loupe"}[1h])"#)
        .unwrap();
    assert!(
        scrapes.first().is_some_and(|s| s.value >= 3.0),
        "{scrapes:?}"
    );
    assert!(
        prom_token_reviews <= 2 && node_reviews <= 2,
        "{prom_token_reviews} {node_reviews}"
    );

    // Every refusal, and never a byte of pod data in it.
    let get = |path: &str, authorization: Option<&str>| {
        let headers: Vec<(&str, &str)> = authorization
            .map(|a| ("Authorization", a))
            .into_iter()
            .collect();
        https::get(&loupe.listen, path, &tls, &headers).unwrap()
    };
    let refused = |path: &str, authorization: Option<&str>, status: u16| {
        let r = get(path, authorization);
        assert_eq!(
            r.status,
            status,
            "{path} with {authorization:?}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(
            !r.text().unwrap().contains("app_"),
            "{path}: pod data in a refusal"
        );
        r
    };
    let no_token = refused("/metrics", None, 401);
    assert_eq!(no_token.header("www-authenticate"), Some("Bearer"));
    refused("/metrics", Some("Bearer nobody-knows-me"), 401);
    refused("/metrics", Some("Basic cHJvbWV0aGV1czpzY3JhcGU="), 401);
    refused(
        "/metrics",
        Some(&format!("Bearer {}", "x".repeat(20_000))),
        401,
    );
    refused("/metrics", Some("Bearer shop-token"), 403);
    refused("/metrics?namespace=web", Some("Bearer shop-token"), 403);
    refused(
        "/metrics?namespace=shop&namespace=web",
        Some("Bearer shop-token"),
        403,
    );
    // The node view does not imply a namespace view: each is decided by its own attributes.
    refused("/metrics?namespace=shop", Some("Bearer prom-token"), 403);
    refused("/targets", Some("Bearer prom-token"), 403);
    refused(
        "/metrics?namespace=Not_A_Namespace",
        Some("Bearer prom-token"),
        400,
    );
    assert_eq!(get("/targets", Some("Bearer status-token")).status, 200);
    assert_eq!(get("/healthz", None).status, 200);
    assert_eq!(get("/readyz", None).status, 200);

    // A client that stalls mid-handshake holds only its own connection.
    let mut stalled = std::net::TcpStream::connect(&loupe.listen).unwrap();
    std::io::Write::write_all(&mut stalled, &[0x16, 0x03, 0x01]).unwrap();
    assert_eq!(get("/metrics", Some("Bearer prom-token")).status, 200);

    // `loupe status` inside the agent's pod: https to loopback, the pod's token.
    let status = std::process::Command::new(&loupe.bin)
        .args(["status", "--url", &format!("https://{}", loupe.listen)])
        .arg("--token-file")
        .arg(cluster.token_file("status-token"))
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{printed} {}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(
        printed.contains("cart") && printed.contains("blog"),
        "{printed}"
    );
    let status = std::process::Command::new(&loupe.bin)
        .args(["status", "--url", &format!("https://{}", loupe.listen)])
        .output()
        .unwrap();
    assert!(!status.status.success());
    assert!(String::from_utf8_lossy(&status.stderr).contains("401"));

    // The API server down: a token never reviewed is refused (503, closed); a remembered
    // decision still serves.
    cluster.rt.block_on(cluster.api.stop());
    let down = refused("/metrics", Some("Bearer late-token"), 503);
    assert!(down.text().unwrap().contains("authorization unavailable"));
    assert_eq!(get("/metrics", Some("Bearer prom-token")).status, 200);
    loupe
        .wait_log_line(
            &["authorization", "refusing the request"],
            Duration::from_secs(5),
        )
        .unwrap();
    cluster.rt.block_on(cluster.api.restart()).unwrap();
    assert_eq!(get("/metrics", Some("Bearer late-token")).status, 200);
    drop(stalled);
}
