//! Fetch-only mode: with `--capture off`, or `--capture auto` where the probe cannot load, loupe
//! still serves every pod (fetched), says why, and reports `loupe_capture_active 0`; with
//! `--capture on` the same failure is fatal. The failure is real: loupe runs under a seccomp
//! filter that fails bpf(2) with EPERM, as container runtimes' default profiles do.

use std::time::Duration;

use loupe_testkit::root;
use loupe_tests::attached;
use loupe_tests::expo::Exposition;
use loupe_tests::loupe::{loupe_bin, pod_with_app, Loupe};
use loupe_tests::pod::Pod;
use loupe_tests::{seccomp, TESTBED_NEEDS};

const PORT: u16 = 8080;
const SERIES: usize = 20;

fn who(name: &str) -> [(&'static str, &str); 4] {
    [
        ("namespace", "shop"),
        ("pod", name),
        ("container", "app"),
        ("endpoint", "8080"),
    ]
}

fn source_is(exp: &Exposition, name: &str, source: &str) -> bool {
    let mut with = who(name).to_vec();
    with.push(("source", source));
    exp.value("loupe_target_info", &with) == Some(1.0)
}

fn app_count(exp: &Exposition, pod: &str) -> usize {
    exp.samples
        .iter()
        .filter(|s| s.name.starts_with("app_") && s.label("pod") == Some(pod))
        .count()
}

/// Every pod's series served, fetched, and the gauge saying capture is off.
fn assert_served_fetched_only(loupe: &Loupe, names: &[&str]) {
    let (_, exp) = loupe
        .metrics_until(
            "every pod served from fetched bodies",
            Duration::from_secs(30),
            |exp| {
                names
                    .iter()
                    .all(|n| app_count(exp, n) == SERIES && source_is(exp, n, "fetched"))
            },
        )
        .unwrap();
    assert_eq!(exp.value("loupe_capture_active", &[]), Some(0.0));
    for name in names {
        assert!(!source_is(&exp, name, "observed"), "{name} observed");
    }
}

fn assert_nothing_attached(pods: &[&Pod]) {
    for pod in pods {
        let found = attached::in_pod(pod, "lo").unwrap();
        assert!(found.is_empty(), "attached in {}: {found:?}", pod.name);
    }
}

#[test]
fn capture_off_serves_every_pod_fetched_and_attaches_nothing() {
    if !root::require(
        "capture_off_serves_every_pod_fetched_and_attaches_nothing",
        TESTBED_NEEDS,
    ) {
        return;
    }
    let (pod_a, _app_a, spec_a) =
        pod_with_app("a", PORT, &["--series", &SERIES.to_string()]).unwrap();
    let (pod_b, _app_b, spec_b) =
        pod_with_app("b", PORT, &["--series", &SERIES.to_string()]).unwrap();
    let loupe = Loupe::start(
        &[spec_a, spec_b],
        &["--capture", "off", "--freshness", "0.2"],
    )
    .unwrap();
    assert_served_fetched_only(&loupe, &["a", "b"]);
    assert_nothing_attached(&[&pod_a, &pod_b]);
    loupe
        .wait_log_line(&["--capture off", "fetched bodies only"], Duration::ZERO)
        .unwrap();
    let status = loupe_tests::run(
        &loupe.bin.to_string_lossy(),
        &["status", "--url", &format!("http://{}", loupe.listen)],
    )
    .unwrap();
    assert!(status.starts_with("capture: fetch-only"), "{status}");

    // The cost: a scrape after the freshness window is one more request to each app.
    let before = [
        pod_a.app_requests(PORT).unwrap(),
        pod_b.app_requests(PORT).unwrap(),
    ];
    std::thread::sleep(Duration::from_millis(300));
    loupe.metrics().unwrap();
    let after = [
        pod_a.app_requests(PORT).unwrap(),
        pod_b.app_requests(PORT).unwrap(),
    ];
    for (pod, (b, a)) in ["a", "b"].iter().zip(before.iter().zip(&after)) {
        assert!(a > b, "pod {pod}: the app answered {b} then {a} requests");
    }
}

#[test]
fn capture_auto_falls_back_to_fetching_when_the_probe_cannot_load() {
    if !root::require(
        "capture_auto_falls_back_to_fetching_when_the_probe_cannot_load",
        TESTBED_NEEDS,
    ) {
        return;
    }
    let (pod_a, _app_a, spec_a) =
        pod_with_app("a", PORT, &["--series", &SERIES.to_string()]).unwrap();
    let (pod_b, _app_b, spec_b) =
        pod_with_app("b", PORT, &["--series", &SERIES.to_string()]).unwrap();
    let loupe = Loupe::start_denying_bpf(&[spec_a, spec_b], &["--capture", "auto"]).unwrap();
    let line = loupe
        .wait_log_line(
            &["WARN", "cannot load the eBPF probe", "fetched bodies only"],
            Duration::ZERO,
        )
        .unwrap();
    assert!(
        line.contains("Operation not permitted"),
        "the warning does not name the kernel's refusal: {line}"
    );
    assert_served_fetched_only(&loupe, &["a", "b"]);
    assert_nothing_attached(&[&pod_a, &pod_b]);
}

#[test]
fn capture_on_exits_naming_the_cause_when_the_probe_cannot_load() {
    if !root::require(
        "capture_on_exits_naming_the_cause_when_the_probe_cannot_load",
        TESTBED_NEEDS,
    ) {
        return;
    }
    let (status, log) =
        Loupe::exit_denying_bpf(&[], &["--capture", "on"], Duration::from_secs(20)).unwrap();
    assert!(!status.success(), "loupe exited with {status}; log:\n{log}");
    let line = log
        .lines()
        .find(|l| l.contains("ERROR") && l.contains("cannot load the eBPF probe"))
        .unwrap_or_else(|| panic!("no error line about the probe; log:\n{log}"));
    assert!(
        line.contains("--capture on") && line.contains("Operation not permitted"),
        "{line}"
    );
}

#[test]
fn doctor_says_run_falls_back_to_fetch_only_when_the_probe_cannot_load() {
    if !root::require(
        "doctor_says_run_falls_back_to_fetch_only_when_the_probe_cannot_load",
        TESTBED_NEEDS,
    ) {
        return;
    }
    let mut command = std::process::Command::new(loupe_bin().unwrap());
    command.arg("doctor");
    seccomp::deny_bpf(&mut command);
    let out = command.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "doctor passed with bpf(2) denied:\n{text}"
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("[FAIL] eBPF"))
        .unwrap_or_else(|| panic!("no failed eBPF check:\n{text}"));
    assert!(
        line.contains("Operation not permitted")
            && line.contains("fetch-only")
            && line.contains("--capture auto"),
        "{line}"
    );
}
