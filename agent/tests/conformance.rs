//! The OpenMetrics conformance suite (211 cases of the OpenMetrics project's parser tests, Apache-2.0):
//! every `shouldParse: true` case parses and round-trips through the merge (OpenMetrics →
//! OpenMetrics, → text → OpenMetrics); every `shouldParse: false` case is rejected whole.
//!
//! The cases are not copied into this repository: they are read from
//! `../shared/conformance/openmetrics` beside the project root (present on CI and developer
//! machines), or from `LOUPE_CONFORMANCE_DIR`. Where neither exists the test says so and skips;
//! under `CI=true` that is a failure.

use std::path::{Path, PathBuf};

use loupe_agent::decode::{merge, validate, Format, Source};
use loupe_testkit::root;

struct Case {
    name: String,
    body: Vec<u8>,
    should_parse: bool,
}

fn conformance_dir(test: &str) -> Option<PathBuf> {
    let dir = match std::env::var_os("LOUPE_CONFORMANCE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/openmetrics"),
    };
    if dir.is_dir() {
        return Some(dir);
    }
    root::skip(
        test,
        &format!(
            "the OpenMetrics conformance cases are not at {} (set LOUPE_CONFORMANCE_DIR)",
            dir.display()
        ),
    );
    None
}

fn cases(dir: &Path) -> Vec<Case> {
    let mut out = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for d in dirs {
        let json = std::fs::read_to_string(d.join("test.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["type"], "text", "{}", d.display());
        let file = v["file"].as_str().unwrap();
        out.push(Case {
            name: d.file_name().unwrap().to_string_lossy().into_owned(),
            body: std::fs::read(d.join(file)).unwrap(),
            should_parse: v["shouldParse"].as_bool().unwrap(),
        });
    }
    out
}

fn merged(body: &[u8], from: Format, to: Format) -> (Vec<u8>, u64) {
    let (chunks, st) = merge(&[Source::new(None, body, from)], to);
    assert!(st.rejected.is_empty(), "{:?}", st.rejected);
    (chunks.concat(), st.duplicate_series)
}

#[test]
fn all_211_cases() {
    let Some(dir) = conformance_dir("all_211_cases") else {
        return;
    };
    let cases = cases(&dir);
    assert_eq!(cases.len(), 211, "expected the 211 conformance cases");
    let mut failures = Vec::new();
    for c in &cases {
        let r = validate(&c.body, Format::OpenMetrics);
        match (c.should_parse, &r) {
            (true, Err(e)) => failures.push(format!("{}: rejected: {e}", c.name)),
            (false, Ok(_)) => failures.push(format!("{}: accepted", c.name)),
            _ => {}
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn good_cases_round_trip() {
    let Some(dir) = conformance_dir("good_cases_round_trip") else {
        return;
    };
    for c in cases(&dir).iter().filter(|c| c.should_parse) {
        let n = validate(&c.body, Format::OpenMetrics).unwrap().samples;
        // OpenMetrics → OpenMetrics keeps every sample (repeated samples of a series count as
        // duplicates) and is a fixed point.
        let (om, dups) = merged(&c.body, Format::OpenMetrics, Format::OpenMetrics);
        let s = validate(&om, Format::OpenMetrics)
            .unwrap_or_else(|e| panic!("{}: output invalid: {e}", c.name));
        assert_eq!(s.samples as u64 + dups, n as u64, "{}", c.name);
        let (again, _) = merged(&om, Format::OpenMetrics, Format::OpenMetrics);
        assert_eq!(
            String::from_utf8_lossy(&again),
            String::from_utf8_lossy(&om),
            "{}",
            c.name
        );
        // → text → OpenMetrics keeps the sample count and stays valid.
        let (text, _) = merged(&c.body, Format::OpenMetrics, Format::Text);
        let t = validate(&text, Format::Text)
            .unwrap_or_else(|e| panic!("{}: text output invalid: {e}", c.name));
        assert_eq!(t.samples, s.samples, "{}", c.name);
        // Text has no `_created`, only gauges of that name: a counter's folds back into the
        // counter, a histogram's or summary's clashes in OpenMetrics and is dropped (see the
        // decode module's rules).
        let created = count_created(&om);
        let (back, _) = merged(&text, Format::Text, Format::OpenMetrics);
        let b = validate(&back, Format::OpenMetrics)
            .unwrap_or_else(|e| panic!("{}: output invalid: {e}", c.name));
        assert!(
            b.samples <= s.samples && b.samples + created >= s.samples,
            "{}",
            c.name
        );
        if c.name == "counter_unit" {
            assert_eq!(b.samples, s.samples, "a counter's _created comes back");
        }
    }
}

#[test]
fn bad_cases_contribute_nothing_to_a_merge() {
    let Some(dir) = conformance_dir("bad_cases_contribute_nothing_to_a_merge") else {
        return;
    };
    for c in cases(&dir).iter().filter(|c| !c.should_parse) {
        let (chunks, st) = merge(
            &[Source::new(None, &c.body, Format::OpenMetrics)],
            Format::OpenMetrics,
        );
        assert_eq!(st.rejected.len(), 1, "{}", c.name);
        assert_eq!(chunks.concat(), b"# EOF\n", "{}", c.name);
    }
}

fn count_created(body: &[u8]) -> usize {
    String::from_utf8_lossy(body)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let name: String = l.chars().take_while(|c| *c != '{' && *c != ' ').collect();
            name.ends_with("_created")
        })
        .count()
}
