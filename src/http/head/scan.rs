//! Checking one request head: the request line, each header line, the
//! caps, and where the body that follows ends.

use http::{HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Reply;

use super::super::error::ApiError;
use super::MAX_HEADERS;

/// Why a head was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// More than the byte cap, or more than [`MAX_HEADERS`] header lines.
    TooLarge(String),
    /// Not `METHOD target HTTP/1.x`, or a header line that is not `name: value`.
    Malformed(String),
}

impl Refused {
    /// The JSON answer, with `Connection: close`.
    pub fn response(&self) -> Response {
        let err = match self {
            Refused::TooLarge(m) => ApiError::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request_header_too_large",
                m.clone(),
            ),
            Refused::Malformed(m) => ApiError::bad_request(m.clone()),
        };
        let mut res = err.into_response();
        res.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        res
    }
}

/// What a (partly) received head amounts to so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadCheck {
    /// No blank line yet, and nothing wrong so far.
    Incomplete,
    /// A good head of `len` bytes (leading empty lines included), followed
    /// by a body framed as `body` says.
    Complete {
        len: usize,
        body: Framing,
    },
    Refused(Refused),
}

/// How the body after a head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: the next byte starts the next head.
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`: chunks up to the last one and trailers.
    Chunked,
    /// Another transfer coding, or a tunnel: its end is not tracked here.
    Unknown,
}

/// Finds and checks one head, resuming where the last call stopped (so a
/// head trickled in byte by byte costs linear time).
#[derive(Debug, Default)]
pub struct HeadScan {
    scanned: usize,
    line_checked: bool,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn too_large(cap: usize) -> Refused {
    Refused::TooLarge(format!(
        "the request head (request line and headers) is larger than {} KiB",
        cap / 1024
    ))
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Checks `METHOD SP request-target SP HTTP/1.x`.
fn check_request_line(line: &[u8]) -> Result<(), Refused> {
    let bad = || {
        Refused::Malformed(
            "the request line is not 'METHOD /path HTTP/1.1' (HTTP/1.0 and 1.1 are served)"
                .to_string(),
        )
    };
    let mut parts = strip_cr(line).split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(bad());
    }
    if target.is_empty() || http::Uri::try_from(target).is_err() {
        return Err(bad());
    }
    if version != b"HTTP/1.1" && version != b"HTTP/1.0" {
        return Err(bad());
    }
    Ok(())
}

/// Checks one `name: value` header line.
fn check_header_line(line: &[u8]) -> Result<(), Refused> {
    let line = strip_cr(line);
    let ok = match line.iter().position(|&b| b == b':') {
        Some(colon) => {
            let (name, value) = (&line[..colon], &line[colon + 1..]);
            !name.is_empty()
                && name.iter().all(|&b| is_tchar(b))
                && value
                    .iter()
                    .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
        }
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Refused::Malformed(
            "a header line is not 'Name: value' (a token, a colon, printable text)".to_string(),
        ))
    }
}

impl HeadScan {
    /// Looks at `buf` (all bytes received for this head so far).
    pub fn check(&mut self, buf: &[u8], cap: usize) -> HeadCheck {
        // Empty lines before the request line are allowed (RFC 9112 §2.2).
        let start = buf
            .iter()
            .position(|&b| b != b'\r' && b != b'\n')
            .unwrap_or(buf.len());
        if !self.line_checked {
            if let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
                if let Err(r) = check_request_line(&buf[start..start + nl]) {
                    return HeadCheck::Refused(r);
                }
                self.line_checked = true;
            }
        }
        // The head ends at the first "\n\n" or "\n\r\n" after the request line.
        let from = self.scanned.max(start);
        let end = buf[from..]
            .iter()
            .enumerate()
            .filter(|(_, &b)| b == b'\n')
            .find_map(|(i, _)| {
                let at = from + i;
                match buf.get(at + 1..) {
                    Some([b'\n', ..]) => Some(at + 2),
                    Some([b'\r', b'\n', ..]) => Some(at + 3),
                    _ => None,
                }
            });
        let Some(end) = end else {
            if buf.len() > cap {
                return HeadCheck::Refused(too_large(cap));
            }
            // Resume just before the tail: a terminator may straddle reads.
            self.scanned = buf.len().saturating_sub(2).max(start);
            return HeadCheck::Incomplete;
        };
        if end > cap {
            return HeadCheck::Refused(too_large(cap));
        }
        let mut lines = buf[start..end].split(|&b| b == b'\n');
        let tunnel = lines.next().is_some_and(|l| l.starts_with(b"CONNECT "));
        let mut count = 0;
        let mut length: Option<u64> = None;
        // The last transfer coding named, if any.
        let mut coding: Option<&[u8]> = None;
        for line in lines.map(strip_cr).filter(|l| !l.is_empty()) {
            count += 1;
            if count > MAX_HEADERS {
                return HeadCheck::Refused(Refused::TooLarge(format!(
                    "the request has more than {MAX_HEADERS} header lines"
                )));
            }
            if let Err(r) = check_header_line(line) {
                return HeadCheck::Refused(r);
            }
            let (name, value) = line.split_at(line.iter().position(|&b| b == b':').unwrap_or(0));
            if name.eq_ignore_ascii_case(b"transfer-encoding") {
                coding = value[1..]
                    .rsplit(|&b| b == b',')
                    .next()
                    .map(<[u8]>::trim_ascii);
            } else if name.eq_ignore_ascii_case(b"content-length") {
                for v in value[1..].split(|&b| b == b',') {
                    let v = v.trim_ascii();
                    let n = std::str::from_utf8(v)
                        .ok()
                        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                        .and_then(|v| v.parse::<u64>().ok());
                    match (n, length) {
                        (Some(n), None) => length = Some(n),
                        (Some(n), Some(m)) if n == m => {}
                        _ => {
                            return HeadCheck::Refused(Refused::Malformed(
                                "Content-Length is not one whole number of bytes".to_string(),
                            ))
                        }
                    }
                }
            }
        }
        *self = HeadScan::default();
        let body = match (coding, length) {
            _ if tunnel => Framing::Unknown,
            (Some(c), _) if c.eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
            (Some(_), _) => Framing::Unknown,
            (None, Some(n)) if n > 0 => Framing::Length(n),
            (None, _) => Framing::None,
        };
        HeadCheck::Complete { len: end, body }
    }
}
