//! Any bytes as a delimited protobuf body: decoding never panics, and a body it accepts, encoded
//! again (each family after its length), is accepted and decodes to the same families (compared
//! as their encoding, so that NaNs stay equal).
#![no_main]

use libfuzzer_sys::fuzz_target;
use loupe_agent::decode::proto::{decode, schema::MetricFamily};
use prost::Message;

fn encode(families: &[MetricFamily]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in families {
        f.encode_length_delimited(&mut out)
            .expect("a Vec grows as needed");
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(families) = decode(data) else {
        return;
    };
    let body = encode(&families);
    let again = decode(&body).unwrap_or_else(|e| panic!("re-encoded body rejected: {e}"));
    assert_eq!(again.len(), families.len());
    assert!(
        encode(&again) == body,
        "re-encoded body decodes to other families"
    );
});
