//! Several bodies (the input split on 0xFF; each body's first byte picks its format and
//! identity), merged into both formats: the output is always valid, and exactly the bodies
//! that fail validation are rejected.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loupe_agent::decode::{merge, validate, Format, Identity, Source};

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
    }
});
