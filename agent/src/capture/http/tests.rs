use super::framing::parse_chunk_size;
use super::*;

const LIMITS: HttpLimits = HttpLimits {
    max_header_bytes: 4096,
    max_body_bytes: 1 << 20,
    max_pending_requests: 4,
};

fn request(method: &str, path: &str) -> PendingRequest {
    PendingRequest {
        method: method.to_owned(),
        path: path.to_owned(),
    }
}

/// Feeds `data` in pieces of `step` bytes to a response parser answering one GET.
fn responses(data: &[u8], step: usize) -> Result<Vec<Outcome>, HttpError> {
    let mut queue: VecDeque<PendingRequest> = (0..3).map(|_| request("GET", "/m")).collect();
    let mut p = ResponseParser::default();
    let mut out = Vec::new();
    for piece in data.chunks(step) {
        p.feed(piece, &mut queue, &LIMITS, &mut |o| out.push(o))?;
    }
    Ok(out)
}

fn body_of(o: &Outcome) -> &[u8] {
    match o {
        Outcome::Complete(r) => &r.body,
        other => panic!("expected a complete response, got {other:?}"),
    }
}

#[test]
fn request_start_needs_a_whole_request_line() {
    assert!(is_request_start(
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    ));
    assert!(is_request_start(b"POST /x?y=1 HTTP/1.0\n"));
    assert!(
        !is_request_start(b"GET /metrics HTTP/1.1"),
        "line end missing"
    );
    assert!(!is_request_start(b"GET /metrics HTTP/2.0\r\n"));
    assert!(!is_request_start(b"get /metrics HTTP/1.1\r\n"));
    assert!(!is_request_start(b"FOO /metrics HTTP/1.1\r\n"));
    assert!(!is_request_start(b"GET /a b HTTP/1.1\r\n"));
    assert!(!is_request_start(b"metric_total 1\nGET / HTTP/1.1\r\n"));
}

#[test]
fn response_start_needs_a_status_code() {
    assert!(is_response_start(b"HTTP/1.1 200 OK\r\n"));
    assert!(is_response_start(b"HTTP/1.0 404\r\n"));
    assert!(!is_response_start(b"HTTP/1.1 2x0 OK\r\n"));
    assert!(!is_response_start(b"HTTP/2 200\r\n"));
    assert!(!is_response_start(b"xHTTP/1.1 200 OK\r\n"));
    assert!(!is_response_start(b"HTTP/1.1 2000 OK"));
}

#[test]
fn chunk_size_lines() {
    assert_eq!(parse_chunk_size(b"1a\r"), Some(26));
    assert_eq!(parse_chunk_size(b"1A;name=\"v\";x\r"), Some(26));
    assert_eq!(parse_chunk_size(b"0 ; ext"), Some(0));
    assert_eq!(parse_chunk_size(b""), None);
    assert_eq!(parse_chunk_size(b"g\r"), None);
    assert_eq!(parse_chunk_size(b"-1\r"), None);
    assert_eq!(parse_chunk_size(b"11111111111111111\r"), None);
}

#[test]
fn transfer_encoding_wins_over_content_length() {
    let data =
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let out = responses(data, 5).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(body_of(&out[0]), b"abc");
}

#[test]
fn conflicting_content_lengths_are_rejected() {
    let err = responses(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        100,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            HttpError::ContentLength {
                what: "response",
                ..
            }
        ),
        "{err}"
    );
    // Repeated equal values are allowed (RFC 9110 8.6).
    let out = responses(b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nabc", 100).unwrap();
    assert_eq!(body_of(&out[0]), b"abc");
}

#[test]
fn unknown_transfer_coding_is_rejected() {
    let err = responses(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        100,
    )
    .unwrap_err();
    assert!(matches!(err, HttpError::TransferEncoding { .. }), "{err}");
}

#[test]
fn request_bodies_are_skipped_and_pipelining_is_bounded() {
    let mut queue = VecDeque::new();
    let mut p = RequestParser::default();
    let data = b"POST /a HTTP/1.1\r\nContent-Length: 4\r\n\r\nGET PUT /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\nGET /c HTTP/1.1\r\n\r\n";
    for piece in data.chunks(3) {
        p.feed(piece, &mut queue, &LIMITS).unwrap();
    }
    let paths: Vec<&str> = queue.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/a", "/b", "/c"]);
    assert_eq!(p.buffered(), 0);
    let err = p
        .feed(
            b"GET /d HTTP/1.1\r\n\r\nGET /e HTTP/1.1\r\n\r\n",
            &mut queue,
            &LIMITS,
        )
        .unwrap_err();
    assert!(
        matches!(err, HttpError::TooManyPending { limit: 4 }),
        "{err}"
    );
}

#[test]
fn request_head_is_bounded() {
    let mut queue = VecDeque::new();
    let mut p = RequestParser::default();
    p.feed(b"GET / HTTP/1.1\r\n", &mut queue, &LIMITS).unwrap();
    let mut result = Ok(());
    for _ in 0..1000 {
        result = p.feed(b"X-Filler: aaaaaaaaaaaaaaaaaaaa\r\n", &mut queue, &LIMITS);
        if result.is_err() {
            break;
        }
    }
    assert!(matches!(
        result,
        Err(HttpError::HeadTooLarge {
            what: "request",
            ..
        })
    ));
    assert!(p.buffered() <= LIMITS.max_header_bytes + 1);
}
