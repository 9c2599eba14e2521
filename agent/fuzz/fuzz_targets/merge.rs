//! Several bodies (the input split on 0xFF; each body's first byte picks its format and
//! identity), merged into both formats: the output is always valid, exactly the bodies that
//! fail validation are rejected, and the merge of bodies rendered at ingest (`merge_rendered`)
//! writes the same bytes and stats as `merge_prepared`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loupe_agent::decode::{
    merge, merge_prepared, merge_rendered, prepare, validate, Format, Identity, PreparedSource,
    RenderedSource, Source,
};

const IDS: [Option<Identity<'static>>; 4] = [
    None,
    Some(Identity {
        namespace: "ns",
        pod: "p1",
        container: "c",
        endpoint: "m",
    }),
    Some(Identity {
        namespace: "ns",
        pod: "p2",
        container: "",
        endpoint: "",
    }),
    Some(Identity {
        namespace: "ns",
        pod: "p1",
        container: "c",
        endpoint: "m",
    }),
];

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
            Some(Source {
                identity: IDS[(sel as usize >> 1) % 4],
                body,
                format,
            })
        })
        .collect();
    for out in [Format::Text, Format::OpenMetrics] {
        let mut buf = Vec::new();
        let st = merge(&sources, out, &mut buf);
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

        // Rendered at ingest, merged at scrape: the same as merging the prepared bodies.
        let prepared: Vec<_> = sources
            .iter()
            .filter_map(|s| Some((s, prepare(s.body, s.format).ok()?)))
            .collect();
        let psrcs: Vec<PreparedSource<'_>> = prepared
            .iter()
            .map(|(s, p)| PreparedSource::new(s.identity, s.body, p))
            .collect();
        let rendered: Vec<_> = psrcs.iter().map(|s| s.render(out)).collect();
        let rsrcs: Vec<RenderedSource<'_>> = psrcs
            .iter()
            .zip(&rendered)
            .map(|(s, r)| s.with_rendered(Some(r)))
            .collect();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        let sx = merge_prepared(&psrcs, out, &mut x);
        let sy = merge_rendered(&rsrcs, out, &mut y);
        assert_eq!(sx, sy);
        assert!(x == y, "merge_rendered differs from merge_prepared");
    }
});
