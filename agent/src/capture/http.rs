//! HTTP/1.x message parsing over a reassembled byte stream: request heads (so each response is
//! known to answer a given method and path) and complete responses (Content-Length, chunked,
//! close-delimited, no-body cases; gzip/deflate content coding). Incremental: bytes arrive in
//! arbitrary pieces. A head that arrives whole in one piece is parsed in place; otherwise it is
//! buffered up to `max_header_bytes`. No I/O, no counters: outcomes go back to [`super::flow`],
//! which counts them.

mod framing;

use crate::content::{Coding, ContentError};
use bytes::{Bytes, BytesMut};
use framing::{body_framing, BodyFraming};
use std::collections::VecDeque;

/// Header lines per message beyond which the message is malformed (httparse needs a fixed array).
const MAX_HEADERS: usize = 128;
/// The request line of a resync point must end within this many bytes of a segment's start.
const MAX_REQUEST_LINE: usize = 8192;
/// Methods accepted at a request resync point (RFC 9110 plus PATCH).
const METHODS: &[&[u8]] = &[
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH",
];

#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    pub max_pending_requests: usize,
}

/// The stream is not HTTP/1.x (or not one this parser accepts): the current message is lost and
/// the stream must resynchronize.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{what} head is not valid HTTP/1.x: {source}")]
    Head {
        what: &'static str,
        source: httparse::Error,
    },
    #[error("{what} head exceeds the {limit}-byte header limit")]
    HeadTooLarge { what: &'static str, limit: usize },
    #[error("{what} has an invalid Content-Length {value:?}")]
    ContentLength { what: &'static str, value: String },
    #[error("{what} has an unsupported Transfer-Encoding {value:?}")]
    TransferEncoding { what: &'static str, value: String },
    #[error("{what} body has invalid chunked coding: {reason}")]
    Chunked {
        what: &'static str,
        reason: &'static str,
    },
    #[error("more than {limit} requests are awaiting a response")]
    TooManyPending { limit: usize },
}

/// What a response answers: its request's method and target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingRequest {
    pub method: String,
    pub path: String,
}

impl PendingRequest {
    fn is_head(&self) -> bool {
        self.method == "HEAD"
    }

    fn is_connect(&self) -> bool {
        self.method == "CONNECT"
    }
}

/// A complete response with the request it answers; the body has its codings removed.
#[derive(Debug)]
pub struct Response {
    pub request: PendingRequest,
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// Why a response that was framed correctly is not published.
#[derive(Debug)]
pub enum Discard {
    /// The body exceeded `max_body_bytes` on the wire.
    TooLarge,
    /// Its content coding failed or was too large once decoded.
    Content(ContentError),
    /// No request was known for it.
    Unmatched,
    /// The connection ended (FIN, RST, idle) before the response did.
    Truncated,
}

#[derive(Debug)]
pub enum Outcome {
    Complete(Response),
    Discarded(Discard),
    /// 101 Switching Protocols or an accepted CONNECT: the rest of the connection is not HTTP/1.x.
    Upgraded,
}

/// Is this segment's payload the start of an HTTP/1.x request: a known method, SP, a target, SP,
/// `HTTP/1.0` or `HTTP/1.1`, and the line's end, all within the payload? Used to resynchronize a
/// request stream whose start was not seen.
pub fn is_request_start(payload: &[u8]) -> bool {
    let window = &payload[..payload.len().min(MAX_REQUEST_LINE)];
    let Some(eol) = window.iter().position(|&b| b == b'\n') else {
        return false;
    };
    let line = window[..eol].strip_suffix(b"\r").unwrap_or(&window[..eol]);
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    METHODS.contains(&method)
        && !target.is_empty()
        && target.iter().all(|&b| b.is_ascii_graphic())
        && (version == b"HTTP/1.1" || version == b"HTTP/1.0")
}

/// Is this segment's payload the start of an HTTP/1.x response (`HTTP/1.x NNN`)?
pub fn is_response_start(payload: &[u8]) -> bool {
    payload.len() >= 12
        && (payload.starts_with(b"HTTP/1.1 ") || payload.starts_with(b"HTTP/1.0 "))
        && payload[9..12].iter().all(u8::is_ascii_digit)
        && payload.get(12).is_none_or(|&b| b == b' ' || b == b'\r')
}

/// Parses the request stream: queues what each request asks, skips request bodies.
#[derive(Default)]
pub struct RequestParser {
    head: Vec<u8>,
    body: Option<BodyFraming>,
}

impl RequestParser {
    pub fn feed(
        &mut self,
        mut data: &[u8],
        queue: &mut VecDeque<PendingRequest>,
        limits: &HttpLimits,
    ) -> Result<(), HttpError> {
        while !data.is_empty() {
            if let Some(body) = &mut self.body {
                let (used, done) = body.advance(data, &mut |_| {})?;
                data = &data[used..];
                if done {
                    self.body = None;
                }
                continue;
            }
            let used = self.parse_head(data, queue, limits)?;
            data = &data[used..];
        }
        Ok(())
    }

    /// Parses (or buffers) a request head from `data`; returns how many bytes of `data` it used.
    fn parse_head(
        &mut self,
        data: &[u8],
        queue: &mut VecDeque<PendingRequest>,
        limits: &HttpLimits,
    ) -> Result<usize, HttpError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let max = limits.max_header_bytes;
        let used = match feed_head("request", &mut self.head, data, max, |b| req.parse(b))? {
            HeadStep::Partial(used) => return Ok(used),
            HeadStep::Complete(used) => used,
        };
        let request = PendingRequest {
            method: req.method.unwrap_or_default().to_owned(),
            path: req.path.unwrap_or_default().to_owned(),
        };
        let framing = match body_framing("request", req.headers, limits.max_header_bytes)? {
            Some(BodyFraming::Length(0)) | None => None,
            // A request without Content-Length or chunked coding has no body (RFC 9112 6.3).
            Some(BodyFraming::Close) => None,
            Some(f) => Some(f),
        };
        if queue.len() >= limits.max_pending_requests {
            return Err(HttpError::TooManyPending {
                limit: limits.max_pending_requests,
            });
        }
        queue.push_back(request);
        self.body = framing;
        clear_head(&mut self.head);
        Ok(used)
    }

    /// Bytes held for a head not yet complete.
    pub fn buffered(&self) -> usize {
        self.head.len()
    }

    pub fn reset(&mut self) {
        self.head = Vec::new();
        self.body = None;
    }
}

/// Parses the response stream into [`Outcome`]s, matching each final response to the oldest
/// pending request (HTTP/1.x answers in order).
#[derive(Default)]
pub struct ResponseParser {
    head: Vec<u8>,
    state: ResponseState,
    /// The request stream lost sync: after the response in progress, responses cannot be matched.
    stop_after_current: bool,
}

#[derive(Default)]
enum ResponseState {
    #[default]
    Head,
    Body(Box<InProgress>),
    /// Stopped on purpose (see `stop_after_current`) or tunnelled: ignores all further bytes.
    Stopped,
}

struct InProgress {
    request: Option<PendingRequest>,
    status: u16,
    content_type: Option<String>,
    coding: Coding,
    framing: BodyFraming,
    body: BytesMut,
    over_limit: bool,
}

impl ResponseParser {
    pub fn feed(
        &mut self,
        mut data: &[u8],
        queue: &mut VecDeque<PendingRequest>,
        limits: &HttpLimits,
        emit: &mut impl FnMut(Outcome),
    ) -> Result<(), HttpError> {
        while !data.is_empty() {
            match &mut self.state {
                ResponseState::Stopped => return Ok(()),
                ResponseState::Body(msg) => {
                    let InProgress {
                        framing,
                        body,
                        over_limit,
                        ..
                    } = &mut **msg;
                    let (used, done) = framing.advance(data, &mut |piece| {
                        append_bounded(body, over_limit, piece, limits.max_body_bytes)
                    })?;
                    data = &data[used..];
                    if done {
                        self.complete(limits, emit);
                    }
                }
                ResponseState::Head => {
                    let used = self.parse_head(data, queue, limits, emit)?;
                    data = &data[used..];
                }
            }
        }
        Ok(())
    }

    fn parse_head(
        &mut self,
        data: &[u8],
        queue: &mut VecDeque<PendingRequest>,
        limits: &HttpLimits,
        emit: &mut impl FnMut(Outcome),
    ) -> Result<usize, HttpError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let max = limits.max_header_bytes;
        let used = match feed_head("response", &mut self.head, data, max, |b| resp.parse(b))? {
            HeadStep::Partial(used) => return Ok(used),
            HeadStep::Complete(used) => used,
        };
        let code = resp.code.unwrap_or_default();
        if (100..200).contains(&code) {
            clear_head(&mut self.head);
            if code == 101 {
                self.state = ResponseState::Stopped;
                emit(Outcome::Upgraded);
            }
            // Other 1xx are interim: the final response still answers the same request.
            return Ok(used);
        }
        let request = queue.pop_front();
        if code / 100 == 2 && request.as_ref().is_some_and(PendingRequest::is_connect) {
            clear_head(&mut self.head);
            self.state = ResponseState::Stopped;
            emit(Outcome::Upgraded);
            return Ok(used);
        }
        let no_body =
            code == 204 || code == 304 || request.as_ref().is_some_and(PendingRequest::is_head);
        let framing = if no_body {
            BodyFraming::Length(0)
        } else {
            body_framing("response", resp.headers, limits.max_header_bytes)?
                .unwrap_or(BodyFraming::Close)
        };
        let mut content_type = None;
        let mut encodings: Vec<&[u8]> = Vec::new();
        for h in resp.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-type") {
                content_type = Some(String::from_utf8_lossy(h.value).trim().to_owned());
            } else if h.name.eq_ignore_ascii_case("content-encoding") {
                encodings.push(h.value);
            }
        }
        let coding = Coding::from_headers(&encodings);
        let mut over_limit = false;
        let body = match framing {
            BodyFraming::Length(n) if n > limits.max_body_bytes as u64 => {
                over_limit = true;
                BytesMut::new()
            }
            BodyFraming::Length(n) => BytesMut::with_capacity(n as usize),
            _ => BytesMut::new(),
        };
        let done = matches!(framing, BodyFraming::Length(0));
        clear_head(&mut self.head);
        self.state = ResponseState::Body(Box::new(InProgress {
            request,
            status: code,
            content_type,
            coding,
            framing,
            body,
            over_limit,
        }));
        if done {
            self.complete(limits, emit);
        }
        Ok(used)
    }

    /// The body is complete: decode it and emit the outcome.
    fn complete(&mut self, limits: &HttpLimits, emit: &mut impl FnMut(Outcome)) {
        let next = if self.stop_after_current {
            ResponseState::Stopped
        } else {
            ResponseState::Head
        };
        let ResponseState::Body(msg) = std::mem::replace(&mut self.state, next) else {
            return;
        };
        let InProgress {
            request,
            status,
            content_type,
            coding,
            body,
            over_limit,
            ..
        } = *msg;
        let outcome = match request {
            None => Outcome::Discarded(Discard::Unmatched),
            Some(_) if over_limit => Outcome::Discarded(Discard::TooLarge),
            Some(request) => match coding.decode(body, limits.max_body_bytes, None) {
                Ok(body) => Outcome::Complete(Response {
                    request,
                    status,
                    content_type,
                    body,
                }),
                Err(e) => Outcome::Discarded(Discard::Content(e)),
            },
        };
        emit(outcome);
    }

    /// The stream ended cleanly (FIN with nothing missing): a close-delimited body is complete,
    /// anything else in progress is truncated.
    pub fn finish(&mut self, limits: &HttpLimits, emit: &mut impl FnMut(Outcome)) {
        match &self.state {
            ResponseState::Body(msg) if matches!(msg.framing, BodyFraming::Close) => {
                self.complete(limits, emit)
            }
            _ => {
                if self.in_message() {
                    emit(Outcome::Discarded(Discard::Truncated));
                }
                self.reset();
            }
        }
    }

    /// After the response in progress (or right away when none is), stop parsing: the stream
    /// must resynchronize before further responses can be matched to requests.
    pub fn stop_after_current(&mut self) {
        if self.in_message() {
            self.stop_after_current = true;
        } else {
            self.state = ResponseState::Stopped;
        }
    }

    pub fn is_stopped(&self) -> bool {
        matches!(self.state, ResponseState::Stopped)
    }

    /// Is a response partly parsed (head or body)?
    pub fn in_message(&self) -> bool {
        !self.head.is_empty() || matches!(self.state, ResponseState::Body(_))
    }

    /// Bytes held for the response in progress (partial head, body so far).
    pub fn buffered(&self) -> usize {
        let body = match &self.state {
            ResponseState::Body(msg) => msg.body.len(),
            _ => 0,
        };
        self.head.len() + body
    }

    /// Drops the body gathered so far (memory pressure); the response is framed to its end and
    /// then discarded as too large. Returns the bytes released.
    pub fn drop_body(&mut self) -> usize {
        match &mut self.state {
            ResponseState::Body(msg) => {
                msg.over_limit = true;
                std::mem::take(&mut msg.body).len()
            }
            _ => 0,
        }
    }

    pub fn reset(&mut self) {
        self.head = Vec::new();
        self.state = ResponseState::Head;
        self.stop_after_current = false;
    }
}

/// Where a head stands after a piece of the stream ([`feed_head`]).
enum HeadStep {
    /// Not complete: this many bytes of the piece were buffered.
    Partial(usize),
    /// Complete and parsed: it ends this many bytes into the piece.
    Complete(usize),
}

/// Gathers a head that may span pieces and runs `parse` (the direction's httparse message) over
/// it once it may be complete: over the piece itself when nothing is buffered, else over the
/// buffer with the piece appended up to one byte past the limit. A piece without a line end is
/// not parsed (no quadratic re-parsing of a head trickling in). One function for both
/// directions, generic over `parse` because the message borrows the head it parsed; the caller
/// clears `head` when done with the message.
fn feed_head<'a>(
    what: &'static str,
    head: &'a mut Vec<u8>,
    data: &'a [u8],
    max: usize,
    parse: impl FnOnce(&'a [u8]) -> httparse::Result<usize>,
) -> Result<HeadStep, HttpError> {
    let buffered = head.len();
    let (status, used) = if buffered == 0 {
        let status = if data.contains(&b'\n') {
            parse(data)
        } else {
            Ok(httparse::Status::Partial)
        };
        // Kept for the next piece unless it already fails below (parsed from `data`, not
        // `head`, so `head` is still free to grow here).
        if matches!(status, Ok(httparse::Status::Partial)) && data.len() <= max {
            head.extend_from_slice(data);
        }
        (status, data.len())
    } else {
        let take = data.len().min((max + 1).saturating_sub(buffered));
        head.extend_from_slice(&data[..take]);
        let status = if data[..take].contains(&b'\n') {
            parse(&head[..])
        } else {
            Ok(httparse::Status::Partial)
        };
        (status, take)
    };
    let too_large = || HttpError::HeadTooLarge { what, limit: max };
    match status.map_err(|source| HttpError::Head { what, source })? {
        httparse::Status::Partial if buffered + used > max => Err(too_large()),
        httparse::Status::Partial => Ok(HeadStep::Partial(used)),
        httparse::Status::Complete(len) if len > max => Err(too_large()),
        httparse::Status::Complete(len) => Ok(HeadStep::Complete(len - buffered)),
    }
}

/// Empties a head buffer, releasing it when a large head grew it (so idle flows hold little).
fn clear_head(head: &mut Vec<u8>) {
    if head.capacity() > 4096 {
        *head = Vec::new();
    } else {
        head.clear();
    }
}

fn append_bounded(body: &mut BytesMut, over_limit: &mut bool, piece: &[u8], max: usize) {
    if *over_limit {
        return;
    }
    if body.len() + piece.len() > max {
        *over_limit = true;
        *body = BytesMut::new();
        return;
    }
    body.extend_from_slice(piece);
}

#[cfg(test)]
mod tests;
