//! The observing path: while another client inside the pod scrapes the app (over 127.0.0.1 or
//! ::1), loupe serves what it saw on the pod's loopback and sends nothing of its own; 20 MB arrive
//! intact; with a tiny ring buffer torn replies are discarded, counted, and never published.

use std::net::{Ipv6Addr, SocketAddr};
use std::time::Duration;

use loupe_testkit::root;
use loupe_tests::client::ClientLoop;
use loupe_tests::expo::{self, Exposition};
use loupe_tests::loupe::{EndpointSpec, Loupe, NetnsRef, PodSpec};
use loupe_tests::pod::Pod;
use loupe_tests::testbed::{app_series, IDENTITY};
use loupe_tests::TESTBED_NEEDS;

const PORT: u16 = 8080;

/// These tests measure what loupe sees under load; run them one at a time so that they do not
/// starve each other of the two cores.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A pod with the test app serving `series` series on 127.0.0.1, and the URL a client inside the
/// pod scrapes it at.
fn app_pod(series: usize) -> (Pod, loupe_tests::Proc, String) {
    let pod = Pod::new().unwrap();
    let app = pod
        .spawn_app(PORT, &["--series", &series.to_string()])
        .unwrap();
    (pod, app, format!("http://127.0.0.1:{PORT}/metrics"))
}

fn spec(pod: &Pod, name: &str) -> PodSpec {
    PodSpec {
        namespace: "shop".into(),
        name: name.into(),
        netns: NetnsRef::Path(pod.netns_path()),
        endpoints: vec![EndpointSpec::port(PORT).container("app")],
    }
}

fn who(name: &str) -> [(&'static str, &str); 4] {
    [
        ("namespace", "shop"),
        ("pod", name),
        ("container", "app"),
        ("endpoint", "8080"),
    ]
}

fn observed(exp: &Exposition, name: &str) -> bool {
    let who = who(name);
    let mut with = who.to_vec();
    with.push(("source", "observed"));
    exp.value("loupe_target_info", &with) == Some(1.0)
}

fn counter(exp: &Exposition, name: &str) -> f64 {
    exp.find(name, &[]).map(|s| s.value).sum()
}

#[test]
fn observed_replies_are_served_and_loupe_sends_none_of_its_own() {
    if !root::require(
        "observed_replies_are_served_and_loupe_sends_none_of_its_own",
        TESTBED_NEEDS,
    ) {
        return;
    }
    let _serial = serial();
    let (pod, _app, url) = app_pod(300);
    let client = ClientLoop::start(&pod, &url, "0.2", "").unwrap();
    let loupe = Loupe::start(&[spec(&pod, "obs")], &[]).unwrap();

    // Phase 1: until loupe has seen a reply (it may ask itself meanwhile).
    loupe
        .metrics_until("an observed reply", Duration::from_secs(60), |exp| {
            observed(exp, "obs")
        })
        .unwrap();
    let seen_by_client = client.stop().unwrap();
    let app_before = pod.app_requests(PORT).unwrap();
    let own_before = app_before - seen_by_client;

    // Phase 2: the client keeps scraping; every loupe scrape serves observed replies, and the app
    // answers no request but the client's.
    let client = ClientLoop::start(&pod, &url, "0.2", "").unwrap();
    client.wait_count(1, Duration::from_secs(30)).unwrap();
    let want = app_series(300, None).unwrap();
    let mut fetched_before = None;
    for round in 0..8 {
        let text = loupe.metrics().unwrap();
        let exp = expo::check_all(&text).unwrap();
        assert!(observed(&exp, "obs"), "round {round}: not observed");
        assert_eq!(exp.value("loupe_capture_active", &[]), Some(1.0));
        let mut got = exp.series_where(&who("obs"), &IDENTITY);
        got.retain(|k, _| k.starts_with("app_"));
        let diff = expo::diff(&want, &got);
        assert!(diff.is_empty(), "round {round}: {diff:?}");
        let fetched = counter(&exp, "loupe_responses_fetched_total");
        assert!(counter(&exp, "loupe_responses_observed_total") >= 1.0);
        assert_eq!(
            *fetched_before.get_or_insert(fetched),
            fetched,
            "loupe fetched in round {round}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let seen_by_client = client.stop().unwrap();
    let app_after = pod.app_requests(PORT).unwrap();
    assert_eq!(
        app_after - app_before,
        seen_by_client,
        "the app answered {} requests the in-pod client did not send (loupe's own; {own_before} before observation)",
        (app_after - app_before).saturating_sub(seen_by_client)
    );
}

#[test]
fn replies_over_the_ipv6_loopback_are_observed() {
    if !root::require("replies_over_the_ipv6_loopback_are_observed", TESTBED_NEEDS) {
        return;
    }
    let _serial = serial();
    let pod = Pod::new().unwrap();
    // `[::]` also takes 127.0.0.1 (dual-stack), where app_requests asks and loupe would fetch.
    let listen = SocketAddr::from((Ipv6Addr::UNSPECIFIED, PORT));
    let _app = pod.spawn_app_at(listen, &["--series", "50"]).unwrap();
    let url = format!("http://[::1]:{PORT}/metrics");
    let client = ClientLoop::start(&pod, &url, "0.2", "-g").unwrap();
    let loupe = Loupe::start(&[spec(&pod, "v6")], &[]).unwrap();
    loupe
        .metrics_until(
            "a reply observed over ::1",
            Duration::from_secs(30),
            |exp| observed(exp, "v6"),
        )
        .unwrap();
    client.stop().unwrap();
    let app_before = pod.app_requests(PORT).unwrap();

    // Only the client's requests reach the app while loupe keeps serving what it observed.
    let client = ClientLoop::start(&pod, &url, "0.2", "-g").unwrap();
    client.wait_count(1, Duration::from_secs(10)).unwrap();
    let want = app_series(50, None).unwrap();
    for round in 0..4 {
        let exp = expo::check_all(&loupe.metrics().unwrap()).unwrap();
        assert!(observed(&exp, "v6"), "round {round}: not observed");
        let mut got = exp.series_where(&who("v6"), &IDENTITY);
        got.retain(|k, _| k.starts_with("app_"));
        let diff = expo::diff(&want, &got);
        assert!(diff.is_empty(), "round {round}: {diff:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let seen_by_client = client.stop().unwrap();
    let app_after = pod.app_requests(PORT).unwrap();
    assert_eq!(
        app_after - app_before,
        seen_by_client,
        "the app answered requests the in-pod client did not send (loupe's own)"
    );
}

#[test]
fn twenty_megabytes_arrive_intact_through_the_observed_path() {
    if !root::require(
        "twenty_megabytes_arrive_intact_through_the_observed_path",
        TESTBED_NEEDS,
    ) {
        return;
    }
    let _serial = serial();
    const N: usize = 160_000;
    let (pod, _app, url) = app_pod(N);
    let direct = pod.curl(&["-sf", &url]).unwrap();
    assert!(
        direct.len() >= 20_000_000,
        "direct scrape only {} bytes",
        direct.len()
    );
    let want = expo::parse_strict(&direct).unwrap().series();
    assert_eq!(want.len(), N);

    let client = ClientLoop::start(&pod, &url, "1", "").unwrap();
    // A ring buffer larger than one reply: this test is about integrity, not drain speed.
    let loupe = Loupe::start(&[spec(&pod, "big")], &["--ring-bytes", "67108864"]).unwrap();
    let (text, exp) = loupe
        .metrics_until(
            "the 20 MB reply observed",
            Duration::from_secs(120),
            |exp| observed(exp, "big"),
        )
        .unwrap();
    expo::promtool_check(&text).unwrap();
    let mut got = exp.series_where(&who("big"), &IDENTITY);
    got.retain(|k, _| k.starts_with("app_"));
    let diff = expo::diff(&want, &got);
    assert!(diff.is_empty(), "{diff:?}");
    assert_eq!(
        exp.value("loupe_target_samples", &who("big")),
        Some(N as f64)
    );
    assert_eq!(
        exp.value("loupe_target_body_bytes", &who("big")),
        Some(direct.len() as f64)
    );
    drop(client);
}

#[test]
fn a_tiny_ring_buffer_discards_torn_replies_and_never_publishes_them() {
    if !root::require(
        "a_tiny_ring_buffer_discards_torn_replies_and_never_publishes_them",
        TESTBED_NEEDS,
    ) {
        return;
    }
    let _serial = serial();
    const N: usize = 20_000;
    let (pod, _app, url) = app_pod(N);
    let client = ClientLoop::start(&pod, &url, "0.1", "").unwrap();
    let loupe = Loupe::start(&[spec(&pod, "torn")], &["--ring-bytes", "4096"]).unwrap();
    let want = app_series(N, None).unwrap();
    let (_, exp) = loupe
        .metrics_until(
            "torn replies discarded and counted",
            Duration::from_secs(60),
            |exp| {
                counter(exp, "loupe_responses_discarded_gap_total") >= 1.0
                    && counter(exp, "loupe_ringbuf_dropped_events_total") >= 1.0
            },
        )
        .unwrap();
    let _ = exp;
    // Whatever loupe publishes for the pod is the whole reply or nothing (a fetched reply may fill
    // in), never a torn one; and it never claims an observed source it could not have.
    for round in 0..5 {
        let text = loupe.metrics().unwrap();
        let exp = expo::check_all(&text).unwrap();
        let mut got = exp.series_where(&who("torn"), &IDENTITY);
        got.retain(|k, _| k.starts_with("app_"));
        if !got.is_empty() {
            let diff = expo::diff(&want, &got);
            assert!(
                diff.is_empty(),
                "round {round}: torn reply published: {diff:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(client.count() >= 1);
    drop(client);
}

#[test]
fn loupe_capture_prints_what_the_probe_sees_in_one_pod_and_detaches() {
    if !root::require(
        "loupe_capture_prints_what_the_probe_sees_in_one_pod_and_detaches",
        TESTBED_NEEDS,
    ) {
        return;
    }
    let _serial = serial();
    let (pod, _app, url) = app_pod(40);
    let client = ClientLoop::start(&pod, &url, "0.2", "").unwrap();
    let netns = pod.netns_path();
    let out = loupe_tests::run(
        &loupe_tests::loupe::loupe_bin().unwrap().to_string_lossy(),
        &[
            "capture",
            "--netns",
            &netns.to_string_lossy(),
            "--port",
            &PORT.to_string(),
            "--seconds",
            "2",
        ],
    )
    .unwrap();
    let sent = client.stop().unwrap();
    let replies: Vec<&str> = out
        .lines()
        .filter(|l| l.contains(" GET /metrics -> 200, "))
        .collect();
    assert!(replies.len() >= 2, "{sent} requests sent, output:\n{out}");
    for line in &replies {
        assert!(line.contains(": valid Text: "), "{line}");
        assert!(line.contains(" samples in "), "{line}");
    }
    let summary = out.lines().last().unwrap_or_default();
    assert!(
        summary.starts_with(&format!(
            "{} replies observed; discarded: none",
            replies.len()
        )),
        "{out}"
    );
    // Nothing stays attached once it has exited.
    let found = loupe_tests::attached::in_pod(&pod, "lo").unwrap();
    assert!(found.is_empty(), "still attached: {found:?}");
}
