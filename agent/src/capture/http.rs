//! HTTP/1.x message parsing over a reassembled byte stream.
//! TEMPORARY STAND-IN.

use bytes::Bytes;
use std::io::Read;

#[derive(Debug, thiserror::Error)]
pub enum GunzipError {
    #[error("corrupt gzip data: {0}")]
    Corrupt(std::io::Error),
    #[error("decompressed body larger than {0} bytes")]
    TooLarge(usize),
}

pub fn gunzip_bounded(data: &[u8], limit: usize) -> Result<Bytes, GunzipError> {
    let mut out = Vec::new();
    let mut decoder = flate2::read::GzDecoder::new(data).take(limit as u64 + 1);
    decoder
        .read_to_end(&mut out)
        .map_err(GunzipError::Corrupt)?;
    if out.len() > limit {
        return Err(GunzipError::TooLarge(limit));
    }
    Ok(out.into())
}
