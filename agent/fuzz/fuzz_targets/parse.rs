//! Any bytes, either format: validation never panics, and a body it accepts merges (alone,
//! without identity) into a valid body of both formats with every sample kept or counted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loupe_agent::decode::{merge, validate, Format, Source};

fuzz_target!(|data: &[u8]| {
    for format in [Format::Text, Format::OpenMetrics] {
        let Ok(summary) = validate(data, format) else {
            continue;
        };
        for out in [Format::Text, Format::OpenMetrics] {
            let (chunks, st) = merge(&[Source::new(None, data, format)], out);
            let buf = chunks.concat();
            assert!(st.rejected.is_empty());
            let merged = validate(&buf, out).unwrap_or_else(|e| {
                panic!("invalid output ({e}):\n{}", String::from_utf8_lossy(&buf))
            });
            if format == out && st.family_conflicts == 0 {
                assert_eq!(
                    merged.samples as u64 + st.duplicate_series,
                    summary.samples as u64
                );
            }
        }
    }
});
