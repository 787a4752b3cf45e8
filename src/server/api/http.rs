//! HTTP/1.1 as the API speaks it, sans-io: bytes in, whole requests out
//! (or the status that refuses them), and responses as bytes. `httparse`
//! reads the head; the bounds are ours: a head of at most `MAX_HEAD`, a
//! body of at most `MAX_BODY` with a `Content-Length` (no chunked bodies:
//! our clients send small JSON or YAML), one request at a time per
//! connection (a pipelined second one waits in the buffer).

use std::fmt::Write as _;

/// The most a request's head (request line and headers) may take.
pub const MAX_HEAD: usize = 16 << 10;
/// The most a request's body may take: an orchestration's YAML, as the
/// control socket takes it.
pub const MAX_BODY: usize = crate::wire::MAX_REQUEST;
/// Headers read at most.
const MAX_HEADERS: usize = 48;

/// One request, whole.
#[derive(Debug, PartialEq)]
pub struct Request {
    pub method: String,
    /// The path, without its query.
    pub path: String,
    /// The query's `key=value` pairs, percent-decoded.
    pub query: Vec<(String, String)>,
    /// The bearer token, if an `Authorization: Bearer` header came.
    pub bearer: Option<String>,
    pub last_event_id: Option<String>,
    /// The client closes after this one (`Connection: close`, or HTTP/1.0
    /// without keep-alive).
    pub close: bool,
    pub body: Vec<u8>,
}

impl Request {
    /// The value of query parameter `key`, if given.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Is query flag `key` set (`?key`, `?key=1`, `?key=true`)?
    pub fn flag(&self, key: &str) -> bool {
        matches!(self.param(key), Some("" | "1" | "true" | "yes"))
    }
}

/// Why bytes are not a request: answered with this status and message,
/// and the connection closed.
#[derive(Debug, PartialEq)]
pub struct Refused {
    pub status: u16,
    pub message: String,
}

fn refused(status: u16, message: impl Into<String>) -> Refused {
    Refused {
        status,
        message: message.into(),
    }
}

/// Bytes read from one connection, and the requests in them.
#[derive(Default)]
pub struct Reader {
    buf: Vec<u8>,
}

impl Reader {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Are bytes of a request not yet whole held?
    pub fn is_partial(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Bytes held.
    pub fn held(&self) -> usize {
        self.buf.len()
    }

    /// While a request's body is still arriving: its bearer token (the
    /// caller checks it before buffering megabytes for a stranger).
    pub fn body_pending(&self) -> Option<Option<String>> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(head_len)) = req.parse(&self.buf) else {
            return None;
        };
        if self.buf.len() <= head_len {
            return None;
        }
        let bearer = req.headers.iter().find_map(|h| {
            if !h.name.eq_ignore_ascii_case("authorization") {
                return None;
            }
            let v = std::str::from_utf8(h.value).ok()?.trim();
            let (scheme, token) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_owned())
        });
        Some(bearer)
    }

    /// The next whole request, if the buffer holds one.
    pub fn next(&mut self) -> Result<Option<Request>, Refused> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let head_len = match req.parse(&self.buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if self.buf.len() > MAX_HEAD {
                    return Err(refused(431, format!("request head over {MAX_HEAD} bytes")));
                }
                return Ok(None);
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(refused(431, format!("more than {MAX_HEADERS} headers")))
            }
            Err(e) => return Err(refused(400, format!("malformed request: {e}"))),
        };
        if head_len > MAX_HEAD {
            return Err(refused(431, format!("request head over {MAX_HEAD} bytes")));
        }
        let method = req.method.unwrap_or_default().to_owned();
        let target = req.path.unwrap_or_default().to_owned();
        let http10 = req.version == Some(0);
        let mut length = 0usize;
        let mut bearer = None;
        let mut last_event_id = None;
        let mut close = http10;
        for h in req.headers.iter() {
            let value = std::str::from_utf8(h.value)
                .map_err(|_| refused(400, format!("header '{}' is not UTF-8", h.name)))?;
            let value = value.trim();
            match h.name.to_ascii_lowercase().as_str() {
                "content-length" => {
                    length = value.parse().map_err(|_| {
                        refused(400, format!("Content-Length '{value}' is not a number"))
                    })?;
                    if length > MAX_BODY {
                        return Err(refused(
                            413,
                            format!("body of {length} bytes is over the limit of {MAX_BODY}"),
                        ));
                    }
                }
                "transfer-encoding" => {
                    return Err(refused(
                        411,
                        "chunked bodies are not taken: send a Content-Length",
                    ))
                }
                "authorization" => {
                    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
                    if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() {
                        bearer = Some(token.trim().to_owned());
                    }
                }
                "last-event-id" => last_event_id = Some(value.to_owned()),
                "connection" => {
                    let v = value.to_ascii_lowercase();
                    if v.contains("close") {
                        close = true;
                    } else if v.contains("keep-alive") {
                        close = false;
                    }
                }
                _ => {}
            }
        }
        if self.buf.len() < head_len + length {
            return Ok(None);
        }
        let body = self.buf[head_len..head_len + length].to_vec();
        self.buf.drain(..head_len + length);
        let (path, query) = split_target(&target)?;
        Ok(Some(Request {
            method,
            path,
            query,
            bearer,
            last_event_id,
            close,
            body,
        }))
    }
}

/// A request target's path and query, percent-decoded.
fn split_target(target: &str) -> Result<(String, Vec<(String, String)>), Refused> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if !path.starts_with('/') {
        return Err(refused(
            400,
            format!("request target '{target}' is not a path"),
        ));
    }
    let path = decode(path).ok_or_else(|| refused(400, "bad percent-encoding in the path"))?;
    let mut pairs = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let k = decode(&k.replace('+', " "));
        let v = decode(&v.replace('+', " "));
        match (k, v) {
            (Some(k), Some(v)) => pairs.push((k, v)),
            _ => return Err(refused(400, "bad percent-encoding in the query")),
        }
    }
    Ok((path, pairs))
}

/// Percent-decode `s`; `None` if an escape is bad or the result not UTF-8.
pub fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        _ => "Status",
    }
}

/// A whole response: status line, our headers, the body.
pub fn response(status: u16, content_type: &str, body: &[u8], close: bool) -> Vec<u8> {
    response_with(status, content_type, body, close, "")
}

/// A response with `extra` header lines (each ending in CRLF).
pub fn response_with(
    status: u16,
    content_type: &str,
    body: &[u8],
    close: bool,
    extra: &str,
) -> Vec<u8> {
    let mut head = String::with_capacity(256);
    let _ = write!(
        head,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n",
        reason(status),
        body.len()
    );
    if status == 401 {
        head.push_str("WWW-Authenticate: Bearer realm=\"director\"\r\n");
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str(extra);
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// A JSON error body: `{"error": "..."}`, one line.
pub fn error_body(message: &str) -> Vec<u8> {
    let mut body = serde_json::json!({ "error": message })
        .to_string()
        .into_bytes();
    body.push(b'\n');
    body
}

/// The head of a server-sent event stream (the events follow, unframed).
pub fn event_stream_head() -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\nX-Accel-Buffering: no\r\nConnection: keep-alive\r\n\r\n".to_vec()
}

/// One server-sent event: `id`, `event` name, and JSON `data` on one line.
pub fn event(id: u64, name: &str, data: &str) -> Vec<u8> {
    debug_assert!(!data.contains('\n'), "one data line per event");
    format!("id: {id}\nevent: {name}\ndata: {data}\n\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(bytes: &[u8]) -> Result<Option<Request>, Refused> {
        let mut r = Reader::default();
        r.push(bytes);
        r.next()
    }

    #[test]
    fn a_request_is_read_whole_with_its_query_token_and_body() {
        let req = one(b"POST /api/v1/exec?wait=1&x=a%20b HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer abc\r\nContent-Length: 4\r\n\r\nbody")
            .unwrap()
            .unwrap();
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/api/v1/exec");
        assert!(req.flag("wait"));
        assert_eq!(req.param("x"), Some("a b"));
        assert_eq!(req.bearer.as_deref(), Some("abc"));
        assert_eq!(req.body, b"body");
        assert!(!req.close);
    }

    #[test]
    fn a_request_in_pieces_waits_and_two_in_one_read_come_one_by_one() {
        let mut r = Reader::default();
        r.push(b"GET /a HTTP/1.1\r\nHost:");
        assert_eq!(r.next().unwrap(), None);
        r.push(b" h\r\n\r\nGET /b HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert_eq!(r.next().unwrap().unwrap().path, "/a");
        let b = r.next().unwrap().unwrap();
        assert_eq!(b.path, "/b");
        assert!(b.close);
        assert_eq!(r.next().unwrap(), None);
        assert!(!r.is_partial());
    }

    #[test]
    fn oversized_and_malformed_requests_are_refused_with_their_status() {
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(one(big.as_bytes()).unwrap_err().status, 431);
        let huge = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert_eq!(one(huge.as_bytes()).unwrap_err().status, 413);
        assert_eq!(
            one(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n")
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            one(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
                .unwrap_err()
                .status,
            411
        );
        assert_eq!(one(b"\x00\x01garbage\r\n\r\n").unwrap_err().status, 400);
        assert_eq!(one(b"GET /%zz HTTP/1.1\r\n\r\n").unwrap_err().status, 400);
        assert_eq!(
            one(b"GET http://x/ HTTP/1.1\r\n\r\n").unwrap_err().status,
            400
        );
    }

    #[test]
    fn responses_carry_their_length_and_errors_are_one_json_line() {
        let r = String::from_utf8(response(
            404,
            "application/json",
            &error_body("no such job"),
            false,
        ))
        .unwrap();
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{r}");
        assert!(r.contains("Content-Length: 24\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\n{\"error\":\"no such job\"}\n"), "{r}");
    }
}
