//! Several bodies (the input split on 0xFF; each body's first byte picks its format and
//! identity), merged into both formats: the output is always valid, exactly the bodies that
//! fail validation are rejected, and the merge writes the same bytes and stats however the
//! sources come (bodies it parses, prepared bodies as ingest keeps them, quoted names
//! rewritten, and bodies rendered at ingest).
#![no_main]

use libfuzzer_sys::fuzz_target;
use loupe_agent::decode::{merge, prepare_escaped, validate, Format, IdentityLabels, Source};

const IDS: [Option<IdentityLabels<'static>>; 4] = [
    None,
    Some(IdentityLabels {
        namespace: "ns",
        pod: "p1",
        container: "c",
        endpoint: "m",
        job: "j",
        instance: "10.0.0.1:8080",
        pod_labels: &[],
    }),
    Some(IdentityLabels {
        namespace: "ns",
        pod: "p2",
        container: "",
        endpoint: "",
        job: "",
        instance: "",
        pod_labels: &[],
    }),
    Some(IdentityLabels {
        namespace: "ns",
        pod: "p1",
        container: "c",
        endpoint: "m",
        job: "j",
        instance: "10.0.0.1:8080",
        pod_labels: &[],
    }),
];

/// [`merge`]'s chunks joined.
fn merged(sources: &[Source<'_>], out: Format) -> (Vec<u8>, loupe_agent::decode::MergeStats) {
    let (chunks, stats) = merge(sources, out);
    (chunks.concat(), stats)
}

fuzz_target!(|data: &[u8]| {
    let sources: Vec<Source<'_>> = data
        .split(|&b| b == 0xFF)
        .take(8)
        .filter_map(|part| {
            let (&sel, body) = part.split_first()?;
            let format = if sel & 1 == 0 {
                Format::Text
            } else {
                Format::OpenMetrics
            };
            Some(Source::new(IDS[(sel as usize >> 1) % 4], body, format))
        })
        .collect();
    for out in [Format::Text, Format::OpenMetrics] {
        let (buf, st) = merged(&sources, out);
        if let Err(e) = validate(&buf, out) {
            panic!("invalid output ({e}):\n{}", String::from_utf8_lossy(&buf));
        }
        let rejected: Vec<usize> = st.rejected.iter().map(|r| r.0).collect();
        let expected: Vec<usize> = sources
            .iter()
            .enumerate()
            .filter(|(_, s)| validate(s.body, s.format).is_err())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(rejected, expected);

        // Prepared and rendered at ingest, merged at scrape: the same as merging the bodies
        // that were accepted.
        // As ingest keeps them: a body with quoted names as its rewrite, with the index.
        let prepared: Vec<_> = sources
            .iter()
            .filter_map(|s| Some((s, prepare_escaped(s.body, s.format, s.escaping).ok()?)))
            .collect();
        let psrcs: Vec<Source<'_>> = prepared
            .iter()
            .map(|(s, (rewritten, p))| {
                let body = rewritten.as_deref().unwrap_or(s.body);
                Source::prepared(s.identity, body, p).with_escaping(s.escaping)
            })
            .collect();
        let rendered: Vec<_> = psrcs.iter().map(|s| s.render(out)).collect();
        let rsrcs: Vec<Source<'_>> = psrcs
            .iter()
            .zip(&rendered)
            .map(|(s, r)| s.with_rendered(Some(r)))
            .collect();
        let accepted: Vec<Source<'_>> = prepared.iter().map(|(s, _)| **s).collect();
        let (w, sw) = merged(&accepted, out);
        let (x, sx) = merged(&psrcs, out);
        let (y, sy) = merged(&rsrcs, out);
        assert_eq!(
            (sw.family_conflicts, sw.duplicate_series),
            (st.family_conflicts, st.duplicate_series)
        );
        assert!(w == buf, "rejected bodies changed the output");
        assert_eq!(sw, sx);
        assert_eq!(sx, sy);
        assert!(w == x, "prepared bodies merge differently");
        assert!(x == y, "bodies rendered at ingest merge differently");
    }
});
