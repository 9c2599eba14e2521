//! Per-endpoint scrape limits (issue 10 item 1), with Prometheus' names: an endpoint past its
//! limit is down with the limit named (`/targets`, `loupe status`'s source), the others are
//! untouched, and a pod's own limit (pods file `limits:`, or `loupe.dev/*-limit` annotations)
//! overrides the agent's default. Needs root (pods are network namespaces).

use std::time::Duration;

use loupe_testkit::root;
use loupe_tests::loupe::{pod_with_app, pods_yaml, Loupe};
use loupe_tests::TESTBED_NEEDS;
use serde_json::Value;

fn app_samples(exp: &loupe_tests::expo::Exposition, pod: &str) -> usize {
    exp.samples
        .iter()
        .filter(|s| s.name.starts_with("app_") && s.label("pod") == Some(pod))
        .count()
}

#[test]
fn an_endpoint_past_its_limit_is_down_with_the_limit_named_and_no_other_is_touched() {
    if !root::require(
        "an_endpoint_past_its_limit_is_down_with_the_limit_named_and_no_other_is_touched",
        TESTBED_NEEDS,
    ) {
        return;
    }
    let (_pod_big, _app_big, big) = pod_with_app("big", 8080, &["--series", "40"]).unwrap();
    let (_pod_small, _app_small, small) = pod_with_app("small", 8080, &["--series", "5"]).unwrap();
    let (_pod_roomy, _app_roomy, roomy) = pod_with_app("roomy", 8080, &["--series", "40"]).unwrap();
    let specs = [big, small, roomy];
    let loupe = Loupe::start(
        &specs,
        &[
            "--capture",
            "off",
            "--sample-limit",
            "30",
            "--freshness",
            "0.5",
        ],
    )
    .unwrap();
    // The roomy pod raises its own limit.
    let yaml = pods_yaml(&specs).replace(
        "    name: roomy\n",
        "    name: roomy\n    limits:\n      sample_limit: 1000\n",
    );
    loupe.write_pods(&yaml).unwrap();
    let (_, exp) = loupe
        .metrics_until(
            "small and roomy served, big down",
            Duration::from_secs(30),
            |exp| {
                app_samples(exp, "small") > 0
                    && app_samples(exp, "roomy") > 30
                    && exp
                        .find("loupe_target_up", &[("pod", "big")])
                        .any(|s| s.value == 0.0)
            },
        )
        .unwrap();
    assert_eq!(
        app_samples(&exp, "big"),
        0,
        "a body past the limit is withheld whole"
    );
    assert!(exp
        .value("loupe_target_limit_exceeded_total", &[])
        .is_some_and(|v| v >= 1.0));

    let targets: Value = serde_json::from_slice(&loupe.get("/targets", &[]).unwrap().body).unwrap();
    let reason = |pod: &str| {
        targets["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["pod"] == pod)
            .map(|t| t["error"].clone())
            .unwrap()
    };
    let big_reason = reason("big");
    assert!(
        big_reason
            .as_str()
            .is_some_and(|r| r.starts_with("sample_limit exceeded") && r.contains("above 30")),
        "{big_reason}"
    );
    assert!(
        reason("small").is_null() && reason("roomy").is_null(),
        "{targets}"
    );
}

#[test]
fn a_body_past_the_memory_budget_is_refused_whole_and_the_others_are_kept() {
    if !root::require(
        "a_body_past_the_memory_budget_is_refused_whole_and_the_others_are_kept",
        TESTBED_NEEDS,
    ) {
        return;
    }
    // About 1 MB of body, which would hold 4 MB kept: past a 2 MB budget (half of 4 MB).
    let (_pod_big, _app_big, big) = pod_with_app("big", 8080, &["--series", "20000"]).unwrap();
    let (_pod_small, _app_small, small) = pod_with_app("small", 8080, &["--series", "5"]).unwrap();
    let loupe = Loupe::start(
        &[big, small],
        &[
            "--capture",
            "off",
            "--memory-limit",
            "4000000",
            "--freshness",
            "0.5",
        ],
    )
    .unwrap();
    let (_, exp) = loupe
        .metrics_until("small served, big down", Duration::from_secs(30), |exp| {
            app_samples(exp, "small") > 0
                && exp
                    .find("loupe_target_up", &[("pod", "big")])
                    .any(|s| s.value == 0.0)
        })
        .unwrap();
    assert_eq!(app_samples(&exp, "big"), 0);
    assert_eq!(
        exp.value("loupe_memory_budget_bytes", &[]),
        Some(2_000_000.0)
    );
    let held = exp.value("loupe_memory_held_bytes", &[]).unwrap();
    assert!(held > 0.0 && held <= 2_000_000.0, "{held}");
    let targets: Value = serde_json::from_slice(&loupe.get("/targets", &[]).unwrap().body).unwrap();
    let big_error = targets["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["pod"] == "big")
        .map(|t| t["error"].clone())
        .unwrap();
    assert!(
        big_error
            .as_str()
            .is_some_and(|e| e.starts_with("memory budget:")),
        "{big_error}"
    );
}
