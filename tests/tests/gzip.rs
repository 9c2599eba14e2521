//! The gzip answer (issue 14): loupe answers `Accept-Encoding: gzip` with one gzip member made of
//! deflate segments compressed apart (the stored segments of the renderings' blocks, and those
//! made at the scrape).
//! A real Prometheus (2.42 always asks for gzip) stores exactly the series and values of loupe's
//! plain answer; `curl --compressed` and Python's `gzip` read it as the same answer; a client
//! that asks for no compression gets plain bytes. Needs root (pods are network namespaces);
//! skipped with the reason otherwise.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use loupe_testkit::root;
use loupe_testkit::strict::series_key;
use loupe_tests::expo::{parse_strict, Exposition};
use loupe_tests::loupe::{pod_with_app, Loupe};
use loupe_tests::prometheus::Prometheus;
use loupe_tests::TESTBED_NEEDS;

/// The apps' series (not loupe's own, which move between scrapes) -> value.
fn apps(exp: &Exposition) -> BTreeMap<String, f64> {
    exp.series()
        .into_iter()
        .filter(|(k, _)| k.starts_with("app_"))
        .collect()
}

fn curl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("curl").args(args).output().expect("curl runs");
    assert!(out.status.success(), "curl {args:?}: {:?}", out.status);
    out.stdout
}

/// Python's `gzip.decompress` of `data`, and the number of gzip members it holds (each
/// decompressed on its own with zlib).
fn python_gunzip(data: &[u8]) -> (Vec<u8>, usize) {
    let script = "import gzip, sys, zlib\n\
d = sys.stdin.buffer.read()\n\
out = gzip.decompress(d)\n\
n = 0\n\
while d: o = zlib.decompressobj(31); o.decompress(d); d = o.unused_data; n += 1\n\
sys.stderr.write(str(n))\n\
sys.stdout.buffer.write(out)\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(data)
        .expect("write");
    let out = child.wait_with_output().expect("python3");
    assert!(
        out.status.success(),
        "python3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let members = String::from_utf8_lossy(&out.stderr)
        .trim()
        .parse()
        .expect("member count");
    (out.stdout, members)
}

#[test]
fn prometheus_curl_and_python_read_the_gzip_answer_as_the_plain_one() {
    if !root::require(
        "prometheus_curl_and_python_read_the_gzip_answer_as_the_plain_one",
        TESTBED_NEEDS,
    ) {
        return;
    }
    let (_pod_a, _app_a, spec_a) = pod_with_app("cart", 8080, &["--series", "300"]).unwrap();
    let (_pod_b, _app_b, spec_b) = pod_with_app("blog", 8080, &["--series", "300"]).unwrap();
    let loupe = Loupe::start(&[spec_a, spec_b], &["--capture", "off"]).unwrap();
    let (_, plain) = loupe
        .metrics_until("both pods up", Duration::from_secs(60), |e| {
            e.find("loupe_target_up", &[])
                .filter(|s| s.value == 1.0)
                .count()
                == 2
        })
        .unwrap();
    let want = apps(&plain);
    assert!(want.len() >= 600, "{} app series", want.len());
    let url = format!("http://{}/metrics", loupe.listen);

    // A client that asks for no compression gets plain bytes.
    let head = String::from_utf8(curl(&["-s", "-D", "-", "-o", "/dev/null", &url])).unwrap();
    assert!(
        !head.to_ascii_lowercase().contains("content-encoding"),
        "{head}"
    );
    let head = String::from_utf8(curl(&[
        "-s",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-H",
        "Accept-Encoding: gzip",
        &url,
    ]))
    .unwrap();
    assert!(
        head.to_ascii_lowercase().contains("content-encoding: gzip"),
        "{head}"
    );

    // curl --compressed: the same answer.
    for _ in 0..2 {
        let text = String::from_utf8(curl(&["-s", "--compressed", &url])).unwrap();
        assert_eq!(apps(&parse_strict(&text).unwrap()), want);
    }
    // Python's gzip, on the raw stream.
    let raw = curl(&["-s", "-H", "Accept-Encoding: gzip", &url]);
    let (text, members) = python_gunzip(&raw);
    let text = String::from_utf8(text).unwrap();
    assert_eq!(apps(&parse_strict(&text).unwrap()), want);
    assert_eq!(members, 1, "one gzip member (curl reads no more)");

    // A real Prometheus (it asks for gzip) stores exactly the plain answer's series (with
    // `honor_labels`, as deployed: each pod's `job`; these pods have no IP, so no `instance`
    // of their own).
    let prometheus =
        Prometheus::start_with("loupe", &[&loupe.listen], "honor_labels: true").unwrap();
    let stored = prometheus
        .query_until(
            r#"{__name__=~"app_.+"}"#,
            want.len(),
            Duration::from_secs(60),
        )
        .unwrap();
    let got: BTreeMap<String, f64> = stored
        .iter()
        .map(|s| {
            let mut labels: Vec<(String, String)> = s
                .labels
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "__name__" | "instance"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.sort();
            (series_key(&s.labels["__name__"], &labels), s.value)
        })
        .collect();
    let diff = loupe_tests::expo::diff(&want, &got);
    assert!(diff.is_empty(), "stored differs: {diff:?}");
    let up = prometheus.query("up").unwrap();
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].value, 1.0, "Prometheus' scrape of loupe is up");
}
