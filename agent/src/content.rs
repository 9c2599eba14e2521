//! HTTP content codings (`Content-Encoding`: gzip, deflate, identity), removed with a bound on
//! the decoded size. One implementation for both paths that read bodies: capture's response
//! parser and fetch's client.

use crate::memory::{Exceeded, Reservation};
use bytes::{Bytes, BytesMut};
use std::io::Read;

/// The response body's content coding could not be removed.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("decoding the {coding} body failed: {source}")]
    Decode {
        coding: &'static str,
        source: std::io::Error,
    },
    #[error("the body exceeds {limit} bytes once decoded")]
    TooLarge { limit: usize },
    #[error("unsupported Content-Encoding {0:?}")]
    Unsupported(String),
    #[error(transparent)]
    Memory(#[from] Exceeded),
}

/// The response's content coding (Content-Encoding), removed before publishing.
pub enum Coding {
    Identity,
    Gzip,
    Deflate,
    Unsupported(String),
}

impl Coding {
    pub fn from_headers(values: &[&[u8]]) -> Self {
        let applied: Vec<&[u8]> = values
            .iter()
            .flat_map(|v| v.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case(b"identity"))
            .collect();
        match applied.as_slice() {
            [] => Coding::Identity,
            [c] if c.eq_ignore_ascii_case(b"gzip") || c.eq_ignore_ascii_case(b"x-gzip") => {
                Coding::Gzip
            }
            [c] if c.eq_ignore_ascii_case(b"deflate") => Coding::Deflate,
            _ => Coding::Unsupported(
                applied
                    .iter()
                    .map(|c| String::from_utf8_lossy(c))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        }
    }

    /// Removes the coding, producing at most `max` bytes (more is a decompression bomb), held
    /// in memory reserved by `room` as it grows when given.
    pub fn decode(
        self,
        body: BytesMut,
        max: usize,
        room: Option<&mut Reservation>,
    ) -> Result<Bytes, ContentError> {
        match self {
            Coding::Identity => Ok(body.freeze()),
            coding => coding.decode_slice(&body, max, room),
        }
    }

    fn decode_slice(
        self,
        body: &[u8],
        max: usize,
        room: Option<&mut Reservation>,
    ) -> Result<Bytes, ContentError> {
        match self {
            Coding::Identity => Ok(Bytes::copy_from_slice(body)),
            Coding::Gzip => {
                let reader = flate2::read::MultiGzDecoder::new(body);
                read_bounded("gzip", reader, max, room)
            }
            Coding::Deflate => {
                read_bounded("deflate", flate2::read::ZlibDecoder::new(body), max, room)
            }
            Coding::Unsupported(name) => Err(ContentError::Unsupported(name)),
        }
    }
}

/// Removes a `Content-Encoding` (gzip, deflate, identity) from a whole body, producing at most
/// `max` bytes: what the fetch path does with its replies.
pub fn decode_content(
    content_encoding: &[u8],
    body: &Bytes,
    max: usize,
    room: Option<&mut Reservation>,
) -> Result<Bytes, ContentError> {
    match Coding::from_headers(&[content_encoding]) {
        Coding::Identity => Ok(body.clone()),
        coding => coding.decode_slice(body, max, room),
    }
}

/// Output grows by at least this much at a time (and reserves it first).
const GROWTH_STEP: usize = 1 << 20;

fn read_bounded(
    coding: &'static str,
    reader: impl Read,
    max: usize,
    mut room: Option<&mut Reservation>,
) -> Result<Bytes, ContentError> {
    let mut reader = reader.take(max as u64 + 1);
    let mut out: Vec<u8> = Vec::new();
    loop {
        if out.len() == out.capacity() {
            let mut grow = out.capacity().max(GROWTH_STEP).min(max + 1 - out.len());
            if let Some(room) = room.as_deref_mut() {
                // As far as the budget lets a body go; one byte past it is refused.
                grow = grow.min(room.body_room()).max(1);
                room.grow_body("decoding this body", grow)?;
            }
            let grow = grow.max(1);
            out.reserve_exact(grow);
        }
        let spare = (out.capacity() - out.len()) as u64;
        let read = reader
            .by_ref()
            .take(spare)
            .read_to_end(&mut out)
            .map_err(|source| ContentError::Decode { coding, source })?;
        if out.len() > max {
            return Err(ContentError::TooLarge { limit: max });
        }
        if read == 0 {
            return Ok(Bytes::from(out));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_codings() {
        let data = b"hello world";
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, data).unwrap();
        let gz = gz.finish().unwrap();
        let mut zl = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut zl, data).unwrap();
        let zl = zl.finish().unwrap();
        for (header, encoded) in [("GZIP", &gz), ("x-gzip", &gz), ("deflate", &zl)] {
            let c = Coding::from_headers(&[header.as_bytes()]);
            let decoded = c.decode(BytesMut::from(&encoded[..]), 100, None).unwrap();
            assert_eq!(&decoded[..], data, "{header}");
        }
        let c = Coding::from_headers(&[b"identity".as_slice()]);
        assert_eq!(
            &c.decode(BytesMut::from(&b"raw"[..]), 100, None).unwrap()[..],
            b"raw"
        );
        let c = Coding::from_headers(&[b"br".as_slice()]);
        assert!(matches!(
            c.decode(BytesMut::new(), 100, None),
            Err(ContentError::Unsupported(name)) if name == "br"
        ));
        // Exactly at the limit is fine; one more byte is a bomb.
        let c = Coding::from_headers(&[b"gzip".as_slice()]);
        assert!(c.decode(BytesMut::from(&gz[..]), data.len(), None).is_ok());
        let c = Coding::from_headers(&[b"gzip".as_slice()]);
        assert!(matches!(
            c.decode(BytesMut::from(&gz[..]), data.len() - 1, None),
            Err(ContentError::TooLarge { .. })
        ));
    }

    #[test]
    fn decoding_reserves_its_output_and_stops_where_the_budget_does() {
        let data = "a 1\n".repeat(10_000); // 40,000 bytes
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, data.as_bytes()).unwrap();
        let gz = Bytes::from(gz.finish().unwrap());
        // Room for a 50,000-byte body (a quarter of the budget): decoded, and reserved.
        let budget = crate::memory::Budget::new(200_000);
        let mut room = budget.reserve("test", 0, 0).unwrap();
        let decoded = decode_content(b"gzip", &gz, 1 << 20, Some(&mut room)).unwrap();
        assert_eq!(decoded.len(), data.len());
        assert!(room.bytes() >= data.len() && room.bytes() <= 50_000);
        // Room for 25,000: refused by the budget, before the size limit.
        let budget = crate::memory::Budget::new(100_000);
        let mut room = budget.reserve("test", 0, 0).unwrap();
        let refused = decode_content(b"gzip", &gz, 1 << 20, Some(&mut room)).unwrap_err();
        assert!(
            refused
                .to_string()
                .starts_with("memory budget: decoding this body"),
            "{refused}"
        );
        assert!(budget.held() <= 25_000);
    }
}
