//! Any bytes as a delimited protobuf body: reading never panics; a body it accepts is what
//! prost decodes from the same bytes (the reader is hand-written over the wire format, prost
//! the reference), and encoded again (each family after its length) it is accepted and reads
//! to the same families. Families are compared as their encoding, so that NaNs stay equal.
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

fn prost_decode(mut b: &[u8]) -> Vec<MetricFamily> {
    let mut out = Vec::new();
    while !b.is_empty() {
        match MetricFamily::decode_length_delimited(&mut b) {
            Ok(f) => out.push(f),
            Err(e) => panic!("accepted by the reader, refused by prost: {e}"),
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(families) = decode(data) else {
        return;
    };
    let body = encode(&families);
    assert!(
        encode(&prost_decode(data)) == body,
        "the reader and prost read other families"
    );
    let again = decode(&body).unwrap_or_else(|e| panic!("re-encoded body rejected: {e}"));
    assert_eq!(again.len(), families.len());
    assert!(
        encode(&again) == body,
        "re-encoded body decodes to other families"
    );
});
