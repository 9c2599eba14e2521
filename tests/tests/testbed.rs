//! The testbed's own parts, proven without loupe: pods, cgroups, the strict-mTLS sidecar, the test
//! app's modes, Prometheus, and the attachment lister.

use std::time::Duration;

use loupe_testkit::root;
use loupe_tests::app_body;
use loupe_tests::attached;
use loupe_tests::cgroup::{self, KubeCgroups};
use loupe_tests::envoy::{scrape_from_host, ClientAuth};
use loupe_tests::expo;
use loupe_tests::http;
use loupe_tests::pod::Pod;
use loupe_tests::prometheus::Prometheus;
use loupe_tests::testbed::{Mesh, APP_PORT, SIDECAR_PORT};
use loupe_tests::{run, TESTBED_NEEDS};

#[test]
fn pod_has_its_own_loopback_and_is_removed_on_drop() {
    if !root::require(
        "pod_has_its_own_loopback_and_is_removed_on_drop",
        TESTBED_NEEDS,
    ) {
        return;
    }
    let pod = Pod::new().unwrap();
    let name = pod.name.clone();
    let host_if = pod.host_if.clone();
    let app = pod.spawn_app(APP_PORT, &["--series", "10"]).unwrap();
    // The app listens on the pod's loopback only: not reachable on the host's.
    let from_host = http::get(
        &format!("127.0.0.1:{APP_PORT}"),
        "/requests",
        &[],
        Duration::from_secs(2),
    );
    assert!(
        from_host
            .map(|r| !r.text().unwrap_or_default().contains("app_requests_total"))
            .unwrap_or(true),
        "the pod's app answered on the host loopback"
    );
    // The veth reaches the pod from the host.
    run("ping", &["-c", "1", "-W", "2", &pod.pod_ip.to_string()])
        .or_else(|_| pod.exec("ip", &["addr", "show", "eth0"]))
        .unwrap();
    assert!(pod.pids().contains(&(app.pid() as i32)));
    drop(app);
    drop(pod);
    let netns = run("ip", &["netns", "list"]).unwrap();
    assert!(!netns.contains(&name), "netns {name} left behind");
    assert!(
        run("ip", &["link", "show", &host_if]).is_err(),
        "veth {host_if} left behind"
    );
}

#[test]
fn cgroups_look_like_the_kubelets_and_are_removed() {
    if !root::require(
        "cgroups_look_like_the_kubelets_and_are_removed",
        TESTBED_NEEDS,
    ) {
        return;
    }
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let uid = cgroup::new_pod_uid();
    let cid = cgroup::new_container_id();
    assert_eq!(cid.len(), 64);
    let guard = KubeCgroups::place(child.id(), "burstable", &uid, &cid).unwrap();
    let text = cgroup::proc_cgroup(child.id()).unwrap();
    let v2 = format!(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{cid}.scope",
        uid.replace('-', "_")
    );
    assert!(text.lines().any(|l| l == v2), "{text}");
    let v1 = format!("/kubepods/burstable/pod{uid}/{cid}");
    assert!(
        text.lines()
            .any(|l| l.contains(":pids:") && l.ends_with(&v1)),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains(":cpu:") && l.ends_with(&v1)),
        "{text}"
    );
    assert!(!text
        .lines()
        .any(|l| l.contains(":memory:") && l.contains("kubepods")));
    let leaves: Vec<_> = guard.leaves().map(|p| p.to_path_buf()).collect();
    let _ = child.kill();
    let _ = child.wait();
    drop(guard);
    for leaf in leaves {
        assert!(!leaf.exists(), "{} left behind", leaf.display());
    }
}

#[test]
fn sidecar_enforces_strict_mtls() {
    if !root::require("sidecar_enforces_strict_mtls", TESTBED_NEEDS) {
        return;
    }
    let mesh = Mesh::new(1, &["--series", "50"]).unwrap();
    let mp = &mesh.pods[0];
    let scrape = |auth| scrape_from_host(&mp.pod, &mesh.certs, SIDECAR_PORT, "/metrics", auth);
    assert!(
        scrape(ClientAuth::Plaintext).is_err(),
        "plaintext got through"
    );
    assert!(
        scrape(ClientAuth::NoCert).is_err(),
        "TLS without a client cert got through"
    );
    assert!(
        scrape(ClientAuth::ForeignCert).is_err(),
        "a foreign CA's cert got through"
    );
    let body = scrape(ClientAuth::MeshCert).unwrap();
    assert!(
        body.as_bytes() == app_body::text(50, None).as_slice(),
        "body through Envoy differs"
    );
    // Inside the pod the app speaks plaintext on loopback.
    let inside = mp
        .pod
        .curl(&["-sf", &format!("http://127.0.0.1:{APP_PORT}/metrics")])
        .unwrap();
    assert_eq!(inside, body);
    assert_eq!(mp.app_requests().unwrap(), 2);
}

#[test]
fn app_modes_misbehave_as_asked() {
    if !root::require("app_modes_misbehave_as_asked", TESTBED_NEEDS) {
        return;
    }
    let pod = Pod::new().unwrap();
    let url = |port: u16| format!("http://127.0.0.1:{port}/metrics");
    let want = app_body::text(300, None);
    let mut procs = Vec::new();
    for (i, mode) in [
        "chunked",
        "gzip",
        "openmetrics",
        "garbage",
        "status500",
        "invalid-utf8",
        "cut",
        "hang",
    ]
    .iter()
    .enumerate()
    {
        let port = 9100 + i as u16;
        procs.push(
            pod.spawn_app(port, &["--series", "300", "--mode", mode])
                .unwrap(),
        );
        let res = pod.exec(
            "curl",
            &[
                "-s",
                "--max-time",
                "2",
                "--compressed",
                "-w",
                "\n%{http_code} %{content_type}",
                &url(port),
            ],
        );
        match *mode {
            "chunked" | "gzip" => {
                let out = res.unwrap();
                let (body, status) = out.rsplit_once('\n').unwrap();
                assert!(
                    body.as_bytes() == want.as_slice(),
                    "{mode}: body differs ({} bytes)",
                    body.len()
                );
                assert!(
                    status.starts_with("200 text/plain; version=0.0.4"),
                    "{mode}: {status}"
                );
            }
            "openmetrics" => {
                let out = res.unwrap();
                assert!(out.contains("# EOF\n"));
                assert!(out.ends_with("application/openmetrics-text; version=1.0.0; charset=utf-8"));
            }
            "garbage" => assert!(expo::check_strict(&res.unwrap()).is_err()),
            "status500" => assert!(res.unwrap().ends_with("500 text/plain")),
            "invalid-utf8" => {
                let raw = std::process::Command::new("ip")
                    .args(["netns", "exec", &pod.name, "curl", "-s", &url(port)])
                    .output()
                    .unwrap();
                assert!(String::from_utf8(raw.stdout).is_err());
            }
            // curl: 18 = partial file, 28 = timeout.
            "cut" => assert!(res.unwrap_err().to_string().contains("exit Some(18)")),
            "hang" => assert!(res.unwrap_err().to_string().contains("exit Some(28)")),
            _ => unreachable!(),
        }
    }
}

#[test]
fn app_serves_about_20_mb_identically_every_time() {
    if !root::require(
        "app_serves_about_20_mb_identically_every_time",
        TESTBED_NEEDS,
    ) {
        return;
    }
    let pod = Pod::new().unwrap();
    let _app = pod.spawn_app(APP_PORT, &["--series", "160000"]).unwrap();
    let url = format!("http://127.0.0.1:{APP_PORT}/metrics");
    let a = pod.curl(&["-sf", &url]).unwrap();
    let b = pod.curl(&["-sf", &url]).unwrap();
    assert!(a.len() > 20_000_000, "only {} bytes", a.len());
    assert!(a == b, "two scrapes differ");
    assert_eq!(expo::parse_strict(&a).unwrap().samples.len(), 160_000);
}

#[test]
fn prometheus_scrapes_and_answers_queries() {
    if !root::require("prometheus_scrapes_and_answers_queries", TESTBED_NEEDS) {
        return;
    }
    // Prometheus runs on the host; a host-side app stands in for loupe here.
    let port = loupe_tests::free_port().unwrap();
    let bin = loupe_tests::crate_bin("metrics-app").unwrap();
    let child = std::process::Command::new(bin)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--series",
            "20",
            "--extra-label",
            "pod=p1",
        ])
        .spawn()
        .unwrap();
    let _app = loupe_tests::Proc {
        what: "metrics-app".into(),
        child,
    };
    let target = format!("127.0.0.1:{port}");
    let prom = Prometheus::start("app", &[&target]).unwrap();
    let got = prom
        .query_until("app_queue_bytes{pod=\"p1\"}", 1, Duration::from_secs(30))
        .unwrap();
    assert!(got.iter().all(|s| s.labels["job"] == "app"));
    let targets = prom.targets().unwrap();
    assert_eq!(targets.len(), 1);
    assert_eq!(targets[0].1, "up", "{targets:?}");
}

#[test]
fn attachment_lister_sees_a_tc_filter_and_its_removal() {
    if !root::require(
        "attachment_lister_sees_a_tc_filter_and_its_removal",
        TESTBED_NEEDS,
    ) {
        return;
    }
    let pod = Pod::new().unwrap();
    assert_eq!(attached::in_pod(&pod, "lo").unwrap(), Vec::<String>::new());
    // A classic (non-BPF) filter stands in for a netlink-attached classifier.
    pod.exec("tc", &["qdisc", "add", "dev", "lo", "clsact"])
        .unwrap();
    pod.exec(
        "tc",
        &[
            "filter", "add", "dev", "lo", "egress", "protocol", "ip", "prio", "1", "u32", "match",
            "u32", "0", "0",
        ],
    )
    .unwrap();
    let found = attached::in_pod(&pod, "lo").unwrap();
    assert!(
        found.iter().any(|l| l.starts_with("tc/egress")),
        "{found:?}"
    );
    pod.exec("tc", &["qdisc", "del", "dev", "lo", "clsact"])
        .unwrap();
    assert_eq!(attached::in_pod(&pod, "lo").unwrap(), Vec::<String>::new());
}

#[test]
fn attachment_lister_sees_a_tcx_link_and_its_removal() {
    if !root::require(
        "attachment_lister_sees_a_tcx_link_and_its_removal",
        TESTBED_NEEDS,
    ) {
        return;
    }
    use std::io::BufRead;
    let pod = Pod::new().unwrap();
    let bin = loupe_tests::crate_bin("loupe-testbed").unwrap();
    let mut holder = std::process::Command::new("ip")
        .args(["netns", "exec", &pod.name])
        .arg(&bin)
        .args(["tcx-hold", "lo"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ATTACHED");
    let found = attached::in_pod(&pod, "lo").unwrap();
    assert!(
        found.len() == 1
            && found[0].starts_with("tcx/egress")
            && found[0].contains(attached::PROBE_NAME),
        "{found:?}"
    );
    // Another namespace's lo (same ifindex 1) does not see it.
    let other = Pod::new().unwrap();
    assert_eq!(
        attached::in_pod(&other, "lo").unwrap(),
        Vec::<String>::new()
    );
    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());
    assert_eq!(attached::in_pod(&pod, "lo").unwrap(), Vec::<String>::new());
}
