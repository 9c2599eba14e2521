use super::*;
use crate::Format::{OpenMetrics, Text};

const GOOD: &str =
    "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 1\na_total{x=\"2\"} 2\n\
# TYPE h histogram\nh_bucket{le=\"1\"} 0\nh_bucket{le=\"+Inf\"} 1\nh_sum 3\nh_count 1\n\
g{a=\"q\\\"\\\\\\n\",b=\"\"} NaN 123\n";

fn fails(body: &str, format: Format) -> Vec<String> {
    match check(body, format) {
        Ok(_) => panic!("accepted {body:?} as {format:?}"),
        Err(e) => e,
    }
}

#[test]
fn accepts_well_formed_text() {
    let exp = check(GOOD, Text).unwrap();
    assert_eq!(exp.samples.len(), 7);
    assert_eq!(exp.families["h"].samples, 4);
    assert_eq!(exp.families["a_total"].help.as_deref(), Some("A."));
    assert_eq!(exp.samples[6].label("a"), Some("q\"\\\n"));
    assert_eq!(exp.samples[6].timestamp, Some(123.0));
    assert_eq!(exp.samples[6].rest, "NaN 123");
    assert_eq!(exp.value("a_total", &[("x", "2")]), Some(2.0));
    check("", Text).unwrap();
    check(
        "# HELP a x\n# TYPE a gauge\na{x=\"1\"} 1\na{x=\"2\"} 1\n",
        Text,
    )
    .unwrap();
}

#[test]
fn accepts_well_formed_openmetrics() {
    let body = "# TYPE c counter\n# UNIT c seconds\n# HELP c Say \\\"hi\\\".\n\
c_total{a=\"1\"} 1 1700000000.5 # {trace_id=\"x\"} 1 1700000000\nc_created{a=\"1\"} 17\n\
# TYPE i info\ni_info{v=\"1\"} 1\n# TYPE gh gaugehistogram\ngh_bucket{le=\"+Inf\"} 2\n\
gh_gcount 2\ngh_gsum 1\n# EOF\n";
    let exp = check(body, OpenMetrics).unwrap();
    assert_eq!(exp.families["c"].samples, 2);
    assert_eq!(exp.families["c"].unit.as_deref(), Some("seconds"));
    assert_eq!(exp.samples[0].timestamp, Some(1_700_000_000.5));
    assert_eq!(exp.samples.len(), 6);
    check("# EOF\n", OpenMetrics).unwrap();
}

#[test]
fn rejects_what_promtool_misses() {
    let split = "# TYPE a gauge\na 1\nb 1\na{x=\"1\"} 2\n";
    assert!(fails(split, Text)[0].contains("split group"));
    let dup = "a{x=\"1\",y=\"2\"} 1\na{y=\"2\",x=\"1\"} 2\n";
    assert!(fails(dup, Text)[0].contains("duplicated series"));
    let two_type = "# TYPE a gauge\n# TYPE a gauge\na 1\n";
    assert!(fails(two_type, Text)[0].contains("second TYPE"));
    let late_type = "a 1\n# TYPE a gauge\n";
    assert!(fails(late_type, Text)[0].contains("after its samples"));
    let bucket = "# TYPE h histogram\nh_bucket 1\n";
    assert!(fails(bucket, Text)[0].contains("without le"));
}

#[test]
fn rejects_bad_lines() {
    for bad in [
        "a{x=1} 1\n",
        "a{x=\"1\" 1\n",
        "a{x=\"1\",x=\"2\"} 1\n",
        "a{1x=\"1\"} 1\n",
        "a{x =\"1\"} 1\n",
        "a one\n",
        "a 1",
        "9a 1\n",
        "a{x=\"\\q\"} 1\n",
        "a 1 2 3\n",
        "a 1 1.5\n",
        "a  1\n",
        "a inf\n",
        "a 1 # {t=\"1\"} 1\n",
        "a 1\n\nb 1\n",
        "# a plain comment\n",
        "#HELP a x\n",
        "# EOF\n",
    ] {
        assert!(check(bad, Text).is_err(), "accepted {bad:?}");
    }
}

/// What the merge's property tests rely on the checker to catch.
#[test]
fn catches_what_the_merge_must_never_write() {
    let bad_text = [
        "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\na 2\n", // family twice
        "a{x=\"1\"} 1\na{x=\"1\"} 2\n",                    // duplicate series
        "a{x=\"1\",y=\"2\"} 1\na{y=\"2\",x=\"1\"} 2\n",    // same, other order
        "# TYPE a gauge\na 1\n# HELP a late\n",            // metadata after samples
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\n# TYPE h_sum gauge\nh_sum 1\n", // owned name
        "a{x=\"1\",x=\"2\"} 1\n",                          // label twice
    ];
    for b in bad_text {
        assert!(check(b, Text).is_err(), "{b}");
    }
    assert!(check("a 1\n", OpenMetrics).is_err(), "missing # EOF");
    assert!(check(
        "# TYPE c counter\nc_total 1\n# TYPE c_created gauge\nc_created 1\n# EOF\n",
        OpenMetrics
    )
    .is_err());
}

#[test]
fn openmetrics_rules() {
    for bad in [
        "a 1\n# EOF\nb 1\n# EOF\n",                             // EOF inside
        "# TYPE a untyped\na 1\n# EOF\n",                       // text type
        "a{x=\"1\",} 1\n# EOF\n",                               // trailing comma
        "# TYPE c counter\nc 1\n# EOF\n",                       // counter sample without _total
        "a 1 # {t=\"1\"}\n# EOF\n",                             // exemplar without value
        "a 1 # t 1\n# EOF\n",                                   // exemplar without labels
        "# TYPE a gauge\n# UNIT a s\n# UNIT a s\na 1\n# EOF\n", // second UNIT
        "a 1\n# EOF",                                           // no final newline
    ] {
        assert!(check(bad, OpenMetrics).is_err(), "accepted {bad:?}");
    }
    assert!(
        check("# UNIT a seconds\na 1\n", Text).is_err(),
        "UNIT in text"
    );
    // A trailing comma is text's own leniency.
    check("m{a=\"1\",} 1\n", Text).unwrap();
}

#[test]
fn series_keys_ignore_label_order() {
    let a = parse_sample("m{b=\"2\",a=\"1\"} 1", Text).unwrap();
    let b = parse_sample("m{a=\"1\",b=\"2\",} 1", Text).unwrap();
    assert_eq!(a.series_key(), b.series_key());
}

#[test]
fn every_problem_is_reported_with_its_line() {
    let errs = fails("a 1\na 1\nb x\n", Text);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs[0].starts_with("line 2:"), "{errs:?}");
    assert!(errs[1].starts_with("line 3:"), "{errs:?}");
}

#[test]
fn diff_names_missing_changed_and_unexpected_series() {
    let want = check("a 1\nb 2\nc NaN\n", Text).unwrap().series();
    let got = check("b 3\nc NaN\nd 4\n", Text).unwrap().series();
    assert_eq!(
        diff(&want, &got),
        ["missing a{}", "b{}: want 2, got 3", "unexpected d{}"]
    );
    assert!(diff(&want, &want).is_empty());
}
