//! loupe's life around its pods: nothing stays attached after SIGTERM or after kill -9 and a
//! restart; apps that misbehave are marked down without hurting the others; a broken pods file is
//! rejected with its line and field named while the previous pods stay served.

use std::time::Duration;

use loupe_testkit::root;
use loupe_tests::attached;
use loupe_tests::expo::{self, Exposition};
use loupe_tests::loupe::{pod_with_app, pods_yaml, EndpointSpec, Loupe, NetnsRef, PodSpec};
use loupe_tests::pod::Pod;
use loupe_tests::wait_for;
use loupe_tests::TESTBED_NEEDS;

const PORT: u16 = 8080;

fn app_count(exp: &Exposition, pod: &str) -> usize {
    exp.samples
        .iter()
        .filter(|s| s.name.starts_with("app_") && s.label("pod") == Some(pod))
        .count()
}

fn wait_attached(pods: &[&Pod]) -> Vec<Vec<String>> {
    pods.iter()
        .map(|p| {
            wait_for(
                &format!("loupe's programs on lo in {}", p.name),
                Duration::from_secs(30),
                || {
                    let found = attached::in_pod(p, "lo").map_err(|e| e.to_string())?;
                    Ok((!found.is_empty()).then_some(found))
                },
            )
            .unwrap()
        })
        .collect()
}

fn assert_nothing_attached(pods: &[&Pod], when: &str) {
    for p in pods {
        let found = attached::in_pod(p, "lo").unwrap();
        assert!(
            found.is_empty(),
            "{when}: still attached in {}: {found:?}",
            p.name
        );
    }
}

#[test]
fn sigterm_leaves_nothing_attached() {
    if !root::require("sigterm_leaves_nothing_attached", TESTBED_NEEDS) {
        return;
    }
    let (pod_a, _app_a, spec_a) = pod_with_app("a", PORT, &["--series", "20"]).unwrap();
    let (pod_b, _app_b, spec_b) = pod_with_app("b", PORT, &["--series", "20"]).unwrap();
    let mut loupe = Loupe::start(&[spec_a, spec_b], &[]).unwrap();
    wait_attached(&[&pod_a, &pod_b]);
    let status = loupe.stop(libc::SIGTERM).unwrap();
    assert!(status.success(), "loupe exited with {status} on SIGTERM");
    assert_nothing_attached(&[&pod_a, &pod_b], "after SIGTERM");
}

#[test]
fn kill_9_then_restart_then_stop_leaves_nothing_attached() {
    if !root::require(
        "kill_9_then_restart_then_stop_leaves_nothing_attached",
        TESTBED_NEEDS,
    ) {
        return;
    }
    let (pod_a, _app_a, spec_a) = pod_with_app("a", PORT, &["--series", "20"]).unwrap();
    let (pod_b, _app_b, spec_b) = pod_with_app("b", PORT, &["--series", "20"]).unwrap();
    let mut loupe = Loupe::start(&[spec_a, spec_b], &[]).unwrap();
    let first = wait_attached(&[&pod_a, &pod_b]);
    loupe.stop(libc::SIGKILL).unwrap();
    // A crashed run may leave netlink filters behind; the next start must clear them and attach
    // exactly once again.
    loupe.spawn().unwrap();
    let second = wait_attached(&[&pod_a, &pod_b]);
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(
            a.len(),
            b.len(),
            "attachments before kill {a:?}, after restart {b:?}"
        );
    }
    loupe
        .metrics_until(
            "both pods served after the restart",
            Duration::from_secs(60),
            |exp| app_count(exp, "a") == 20 && app_count(exp, "b") == 20,
        )
        .unwrap();
    let status = loupe.stop(libc::SIGTERM).unwrap();
    assert!(status.success(), "loupe exited with {status} on SIGTERM");
    assert_nothing_attached(&[&pod_a, &pod_b], "after kill -9, restart and SIGTERM");
}

#[test]
fn misbehaving_apps_are_down_and_every_other_pod_is_still_served() {
    if !root::require(
        "misbehaving_apps_are_down_and_every_other_pod_is_still_served",
        TESTBED_NEEDS,
    ) {
        return;
    }
    let modes = ["garbage", "status500", "invalid-utf8", "cut", "hang"];
    // What the log line must say of each, besides the pod and the endpoint.
    let reasons = [
        "unparsable body: line 1, column 1: invalid metric name",
        "HTTP status 500",
        "invalid UTF-8",
        "end of file before message length reached",
        "no complete response within 2s",
    ];
    let mut pods = Vec::new();
    let mut specs = Vec::new();
    for (i, mode) in modes.iter().enumerate() {
        let pod = Pod::new().unwrap();
        // Each bad app on its own port, so a log line naming the endpoint names exactly one.
        let port = 9101 + i as u16;
        let app = pod
            .spawn_app(port, &["--series", "50", "--mode", mode])
            .unwrap();
        specs.push(PodSpec {
            namespace: "shop".into(),
            name: format!("bad-{mode}"),
            netns: NetnsRef::Path(pod.netns_path()),
            endpoints: vec![EndpointSpec::port(port)],
        });
        pods.push((pod, app));
    }
    let (_good_pod, _good_app, good) = pod_with_app("good", PORT, &["--series", "50"]).unwrap();
    specs.push(good);
    let loupe = Loupe::start(&specs, &["--fetch-timeout", "2"]).unwrap();

    let up = |exp: &Exposition, pod: &str| {
        exp.find("loupe_target_up", &[("pod", pod)])
            .map(|s| s.value)
            .next()
    };
    let (text, exp) = loupe
        .metrics_until(
            "good pods up, bad pods down",
            Duration::from_secs(90),
            |exp| {
                app_count(exp, "good") == 50
                    && up(exp, "good") == Some(1.0)
                    && modes
                        .iter()
                        .all(|m| up(exp, &format!("bad-{m}")) == Some(0.0))
            },
        )
        .unwrap();
    expo::promtool_check(&text).unwrap();
    for (i, mode) in modes.iter().enumerate() {
        let pod = format!("bad-{mode}");
        // Nothing from a bad app is published.
        assert_eq!(app_count(&exp, &pod), 0, "{pod}");
        let port = (9101 + i).to_string();
        let reason = reasons[i];
        loupe
            .wait_log_line(&[&pod, &port, reason], Duration::from_secs(10))
            .unwrap_or_else(|e| {
                panic!("no log line naming {pod}, endpoint {port} and \"{reason}\": {e}")
            });
    }

    // `loupe status` tells the same without the log: every bad pod down with its reason.
    let status = loupe_tests::run(
        &loupe.bin.to_string_lossy(),
        &["status", "--url", &format!("http://{}", loupe.listen)],
    )
    .unwrap();
    let lines: Vec<&str> = status.lines().collect();
    assert!(lines[0].starts_with("capture: observing"), "{status}");
    assert_eq!(lines.len(), 2 + modes.len() + 1, "{status}");
    for (mode, reason) in modes.iter().zip(reasons) {
        let pod = format!("bad-{mode}");
        let line = lines
            .iter()
            .find(|l| l.contains(&format!(" {pod} ")))
            .unwrap_or_else(|| panic!("{pod} not in loupe status:\n{status}"));
        assert!(line.contains(" down ") && line.contains(reason), "{line}");
    }
    let good = lines.iter().find(|l| l.contains(" good ")).unwrap();
    assert!(good.contains(" up ") && good.contains(" 50"), "{good}");
}

#[test]
fn a_broken_pods_file_is_rejected_with_line_and_field_and_previous_pods_kept() {
    if !root::require(
        "a_broken_pods_file_is_rejected_with_line_and_field_and_previous_pods_kept",
        TESTBED_NEEDS,
    ) {
        return;
    }
    let (_pod, _app, spec) = pod_with_app("keeper", PORT, &["--series", "25"]).unwrap();
    let loupe = Loupe::start(std::slice::from_ref(&spec), &[]).unwrap();
    loupe
        .metrics_until("the first pod", Duration::from_secs(60), |exp| {
            app_count(exp, "keeper") == 25
        })
        .unwrap();

    // A second pod whose port is not a number.
    let (_new_pod, _new_app, mut newcomer) =
        pod_with_app("newcomer", PORT, &["--series", "25"]).unwrap();
    newcomer.name = "newcomer".into();
    let good_yaml = pods_yaml(&[spec.clone(), newcomer]);
    let lines: Vec<&str> = good_yaml.lines().collect();
    let bad_line = lines
        .iter()
        .rposition(|l| l.contains("port: 8080"))
        .unwrap();
    let bad_yaml: String = lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let l = if i == bad_line {
                l.replace("8080", "eighty")
            } else {
                l.to_string()
            };
            l + "\n"
        })
        .collect();
    let line_no = format!("line {}", bad_line + 1);
    loupe.write_pods(&bad_yaml).unwrap();
    let line = loupe
        .wait_log_line(&[&line_no, "port"], Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", loupe.log()));
    assert!(
        line.contains(&loupe.pods_file.display().to_string()) || line.contains("pods"),
        "{line}"
    );

    // The previous pods stay; the newcomer from the broken file does not appear.
    for _ in 0..3 {
        let text = loupe.metrics().unwrap();
        let exp = expo::check_all(&text).unwrap();
        assert_eq!(app_count(&exp, "keeper"), 25);
        assert_eq!(app_count(&exp, "newcomer"), 0);
        std::thread::sleep(Duration::from_millis(300));
    }

    // A missing required field is named as well.
    let no_name = good_yaml.replacen("    name: newcomer\n", "", 1);
    loupe.write_pods(&no_name).unwrap();
    loupe
        .wait_log_line(&["missing field"], Duration::from_secs(30))
        .or_else(|_| loupe.wait_log_line(&["`name`"], Duration::from_secs(1)))
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", loupe.log()));

    // Fixed file: the newcomer is picked up, so reloading works at all.
    loupe.write_pods(&good_yaml).unwrap();
    loupe
        .metrics_until(
            "the newcomer after the fix",
            Duration::from_secs(60),
            |exp| app_count(exp, "keeper") == 25 && app_count(exp, "newcomer") == 25,
        )
        .unwrap();
}
