//! Where a message body ends (RFC 9112 section 6.3): Content-Length, chunked transfer coding
//! (section 7.1) or the connection's close, decided from the framing headers and then followed
//! byte by byte.

use super::HttpError;

/// A chunk-size line (size plus extensions) longer than this is malformed.
const MAX_CHUNK_LINE: usize = 4096;

/// How a message body ends (RFC 9112 section 6.3), from its framing headers. `None`: neither
/// Transfer-Encoding nor Content-Length present.
pub(super) fn body_framing(
    what: &'static str,
    headers: &[httparse::Header<'_>],
    max_trailer_bytes: usize,
) -> Result<Option<BodyFraming>, HttpError> {
    let mut length: Option<u64> = None;
    let mut transfer_codings = 0usize;
    let mut chunked_last = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            for coding in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if coding.is_empty() {
                    continue;
                }
                transfer_codings += 1;
                chunked_last = coding.eq_ignore_ascii_case(b"chunked");
                if !chunked_last {
                    return Err(HttpError::TransferEncoding {
                        what,
                        value: String::from_utf8_lossy(h.value).into_owned(),
                    });
                }
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            for v in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                let invalid = || HttpError::ContentLength {
                    what,
                    value: String::from_utf8_lossy(h.value).into_owned(),
                };
                if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
                    return Err(invalid());
                }
                let n = std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(invalid)?;
                if length.is_some_and(|l| l != n) {
                    return Err(invalid());
                }
                length = Some(n);
            }
        }
    }
    if transfer_codings > 0 {
        // Only "chunked" is accepted (checked above); Transfer-Encoding overrides Content-Length.
        if transfer_codings > 1 || !chunked_last {
            return Err(HttpError::TransferEncoding {
                what,
                value: "chunked applied more than once".to_owned(),
            });
        }
        return Ok(Some(BodyFraming::Chunked(Chunked::new(
            what,
            max_trailer_bytes,
        ))));
    }
    Ok(length.map(BodyFraming::Length))
}

pub(super) enum BodyFraming {
    /// This many body bytes remain.
    Length(u64),
    Chunked(Chunked),
    /// Until the connection closes.
    Close,
}

impl BodyFraming {
    /// Consumes body bytes from `data`, handing the payload to `sink`; returns the bytes used
    /// and whether the body is complete.
    pub(super) fn advance(
        &mut self,
        data: &[u8],
        sink: &mut impl FnMut(&[u8]),
    ) -> Result<(usize, bool), HttpError> {
        match self {
            BodyFraming::Length(remaining) => {
                let n = data
                    .len()
                    .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                sink(&data[..n]);
                *remaining -= n as u64;
                Ok((n, *remaining == 0))
            }
            BodyFraming::Close => {
                sink(data);
                Ok((data.len(), false))
            }
            BodyFraming::Chunked(c) => c.advance(data, sink),
        }
    }
}

/// Chunked transfer coding (RFC 9112 section 7.1): size lines with optional extensions, data,
/// CRLF, a last chunk, optional trailer fields, and an empty line.
pub(super) struct Chunked {
    what: &'static str,
    state: ChunkState,
    line: Vec<u8>,
    max_trailer_bytes: usize,
}

enum ChunkState {
    Size,
    Data(u64),
    DataEnd { cr: bool },
    Trailers { line_len: usize, total: usize },
}

impl Chunked {
    fn new(what: &'static str, max_trailer_bytes: usize) -> Self {
        Self {
            what,
            state: ChunkState::Size,
            line: Vec::new(),
            max_trailer_bytes,
        }
    }

    fn err(&self, reason: &'static str) -> HttpError {
        HttpError::Chunked {
            what: self.what,
            reason,
        }
    }

    fn advance(
        &mut self,
        data: &[u8],
        sink: &mut impl FnMut(&[u8]),
    ) -> Result<(usize, bool), HttpError> {
        let mut i = 0;
        while i < data.len() {
            match &mut self.state {
                ChunkState::Size => {
                    let rest = &data[i..];
                    let (piece, complete) = match rest.iter().position(|&b| b == b'\n') {
                        Some(p) => (&rest[..p], true),
                        None => (rest, false),
                    };
                    if self.line.len() + piece.len() > MAX_CHUNK_LINE {
                        return Err(self.err("chunk-size line too long"));
                    }
                    self.line.extend_from_slice(piece);
                    i += piece.len();
                    if complete {
                        i += 1;
                        let size = parse_chunk_size(&self.line)
                            .ok_or_else(|| self.err("invalid chunk size"))?;
                        self.line.clear();
                        self.state = if size == 0 {
                            ChunkState::Trailers {
                                line_len: 0,
                                total: 0,
                            }
                        } else {
                            ChunkState::Data(size)
                        };
                    }
                }
                ChunkState::Data(remaining) => {
                    let n = (data.len() - i).min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                    sink(&data[i..i + n]);
                    i += n;
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        self.state = ChunkState::DataEnd { cr: false };
                    }
                }
                ChunkState::DataEnd { cr } => {
                    let b = data[i];
                    i += 1;
                    match (b, *cr) {
                        (b'\r', false) => *cr = true,
                        (b'\n', _) => self.state = ChunkState::Size,
                        _ => return Err(self.err("chunk data not followed by CRLF")),
                    }
                }
                ChunkState::Trailers { line_len, total } => {
                    let b = data[i];
                    i += 1;
                    *total += 1;
                    if *total > self.max_trailer_bytes {
                        return Err(self.err("trailer section too large"));
                    }
                    match b {
                        b'\n' if *line_len == 0 => return Ok((i, true)),
                        b'\n' => *line_len = 0,
                        b'\r' => {}
                        _ => *line_len += 1,
                    }
                }
            }
        }
        Ok((i, false))
    }
}

/// `1*HEXDIG [ BWS ; extensions ] [CR]`, at most 16 hex digits.
pub(super) fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let size = match line.iter().position(|&b| b == b';') {
        Some(p) => &line[..p],
        None => line,
    }
    .trim_ascii();
    if size.is_empty() || size.len() > 16 {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(size).ok()?, 16).ok()
}
