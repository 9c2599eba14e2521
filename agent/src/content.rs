//! HTTP content codings (`Content-Encoding`: gzip, deflate, identity), removed with a bound on
//! the decoded size. One implementation for both paths that read bodies: capture's response
//! parser and fetch's client.

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

    /// Removes the coding, producing at most `max` bytes (more is a decompression bomb).
    pub fn decode(self, body: BytesMut, max: usize) -> Result<Bytes, ContentError> {
        match self {
            Coding::Identity => Ok(body.freeze()),
            Coding::Gzip => read_bounded("gzip", flate2::read::MultiGzDecoder::new(&body[..]), max),
            Coding::Deflate => {
                read_bounded("deflate", flate2::read::ZlibDecoder::new(&body[..]), max)
            }
            Coding::Unsupported(name) => Err(ContentError::Unsupported(name)),
        }
    }
}

/// Removes a `Content-Encoding` (gzip, deflate, identity) from a whole body, producing at most
/// `max` bytes: what the fetch path does with its replies.
pub fn decode_content(
    content_encoding: &[u8],
    body: &[u8],
    max: usize,
) -> Result<Bytes, ContentError> {
    Coding::from_headers(&[content_encoding]).decode(BytesMut::from(body), max)
}

fn read_bounded(
    coding: &'static str,
    reader: impl Read,
    max: usize,
) -> Result<Bytes, ContentError> {
    let mut out = Vec::new();
    reader
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|source| ContentError::Decode { coding, source })?;
    if out.len() > max {
        return Err(ContentError::TooLarge { limit: max });
    }
    Ok(Bytes::from(out))
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
            let decoded = c.decode(BytesMut::from(&encoded[..]), 100).unwrap();
            assert_eq!(&decoded[..], data, "{header}");
        }
        let c = Coding::from_headers(&[b"identity".as_slice()]);
        assert_eq!(
            &c.decode(BytesMut::from(&b"raw"[..]), 100).unwrap()[..],
            b"raw"
        );
        let c = Coding::from_headers(&[b"br".as_slice()]);
        assert!(matches!(
            c.decode(BytesMut::new(), 100),
            Err(ContentError::Unsupported(name)) if name == "br"
        ));
        // Exactly at the limit is fine; one more byte is a bomb.
        let c = Coding::from_headers(&[b"gzip".as_slice()]);
        assert!(c.decode(BytesMut::from(&gz[..]), data.len()).is_ok());
        let c = Coding::from_headers(&[b"gzip".as_slice()]);
        assert!(matches!(
            c.decode(BytesMut::from(&gz[..]), data.len() - 1),
            Err(ContentError::TooLarge { .. })
        ));
    }
}
