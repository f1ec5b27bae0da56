//! The request-head gate: every request head (request line and headers) is
//! read and checked here before hyper sees a byte of it, so an oversized or
//! malformed head gets a JSON answer like every other error (hyper's own are
//! empty): 431 `request_header_too_large` beyond [`super::MAX_HEADER_BYTES`]
//! or [`MAX_HEADERS`] header lines, 400 `bad_request` for a broken request
//! line or header line. Either closes the connection.
//!
//! [`HeadGate`] wraps the connection. While a head is expected it holds the
//! bytes back until the blank line that ends the head, then hands them over
//! at once; a refused head is replaced by a one-off request to a
//! per-connection marker path that the service answers with the error
//! ([`GateHandle::refusal`]), so the answer is written in order, after any
//! response still in flight. The head says where the body ends
//! (`Content-Length`, chunked, or no body): the body passes through to its
//! end, and the next head is checked the same way, pipelined or on a
//! keep-alive connection. A body whose end cannot be told (another transfer
//! coding, a `CONNECT` tunnel, broken chunks, which hyper refuses anyway)
//! ends the gating for the connection; later heads there are left to hyper,
//! whose `max_header_size` is set to the same cap.
//!
//! This module only frames and checks heads; it never parses them for the
//! routes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderValue, StatusCode};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use warp::reply::Response;
use warp::Reply;

use super::error::ApiError;

/// Header lines a request may carry at most (hyper is told the same).
pub const MAX_HEADERS: usize = 100;

/// Bytes read from the socket at a time while a head is collected.
const READ_CHUNK: usize = 8 * 1024;

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

/// Where a chunked body ends (RFC 9112 §7.1): chunk-size lines, chunk data
/// and its CRLF, the last (zero) chunk, then trailer lines up to a blank one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunks {
    /// In a chunk-size line: the size so far, whether a digit was seen, and
    /// whether the extensions after it began.
    Size { size: u64, digits: bool, ext: bool },
    /// In chunk data: this many bytes to go.
    Data(u64),
    /// After chunk data: the CRLF (`true`: the CR was seen).
    DataEnd(bool),
    /// In the trailers: bytes on the current line (CR aside).
    Trailer(usize),
}

/// What feeding bytes to [`Chunks`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fed {
    /// The body goes on past these bytes.
    More,
    /// The body ends after this many of them.
    Done(usize),
    /// Not a chunked body hyper would accept; tracking stops.
    Lost,
}

impl Default for Chunks {
    fn default() -> Self {
        Chunks::Size {
            size: 0,
            digits: false,
            ext: false,
        }
    }
}

impl Chunks {
    /// Follows the body through `bytes`.
    pub fn feed(&mut self, bytes: &[u8]) -> Fed {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match self {
                Chunks::Data(left) => {
                    let take = (*left).min((bytes.len() - i) as u64);
                    *left -= take;
                    i += take as usize;
                    if *left == 0 {
                        *self = Chunks::DataEnd(false);
                    }
                    continue;
                }
                Chunks::Size { size, digits, ext } => match b {
                    b'\n' => {
                        if !*digits {
                            return Fed::Lost;
                        }
                        *self = if *size == 0 {
                            Chunks::Trailer(0)
                        } else {
                            Chunks::Data(*size)
                        };
                    }
                    _ if *ext => {}
                    b';' | b' ' | b'\t' | b'\r' => *ext = true,
                    _ => match (b as char).to_digit(16) {
                        Some(d) => {
                            let Some(next) = size.checked_mul(16).map(|v| v + u64::from(d)) else {
                                return Fed::Lost;
                            };
                            *size = next;
                            *digits = true;
                        }
                        None => return Fed::Lost,
                    },
                },
                Chunks::DataEnd(cr) => match b {
                    b'\r' if !*cr => *cr = true,
                    b'\n' => *self = Chunks::default(),
                    _ => return Fed::Lost,
                },
                Chunks::Trailer(len) => match b {
                    b'\n' if *len == 0 => return Fed::Done(i + 1),
                    b'\n' => *len = 0,
                    b'\r' => {}
                    _ => *len += 1,
                },
            }
            i += 1;
        }
        Fed::More
    }
}

/// A refused head: the marker path standing in for it, and why.
type Refusal = Mutex<Option<(String, Refused)>>;

/// The service's side of a [`HeadGate`].
#[derive(Clone, Default)]
pub struct GateHandle(Arc<Refusal>);

impl GateHandle {
    /// The error answer when `req` stands in for a refused head.
    pub fn refusal<B>(&self, req: &http::Request<B>) -> Option<Refused> {
        let slot = self.0.lock();
        slot.as_ref()
            .filter(|(marker, _)| req.uri().path() == marker)
            .map(|(_, why)| why.clone())
    }

    /// Whether a head on this connection was refused.
    pub fn refused(&self) -> bool {
        self.0.lock().is_some()
    }
}

enum State {
    /// Collecting a head; nothing of it has been handed over yet. `unchecked`:
    /// `buf` holds bytes (pipelined after the last request) not yet looked at.
    Head {
        buf: BytesMut,
        scan: HeadScan,
        unchecked: bool,
    },
    /// Handing over a checked head (and what follows it), then `then`.
    Release {
        buf: Bytes,
        then: Box<State>,
    },
    /// This many body bytes still pass straight through.
    Body {
        remaining: u64,
    },
    /// A chunked body passes through, followed to its end.
    Chunked(Chunks),
    /// Everything passes straight through (a body whose end is not tracked).
    Pass,
    /// After a refusal: whatever else the client sends is read and dropped
    /// (so closing does not reset the connection under the answer), and
    /// hyper is never told of an end (which would cut the answer short).
    Drain,
    Eof,
}

impl State {
    fn head(buf: BytesMut) -> State {
        State::Head {
            unchecked: !buf.is_empty(),
            buf,
            scan: HeadScan::default(),
        }
    }
}

/// A connection whose request heads are checked before hyper reads them.
pub struct HeadGate<T> {
    io: T,
    cap: usize,
    state: State,
    handle: GateHandle,
}

impl<T> HeadGate<T> {
    /// Gates `io` with a head cap of `cap` bytes.
    pub fn new(io: T, cap: usize) -> (Self, GateHandle) {
        let handle = GateHandle::default();
        let gate = HeadGate {
            io,
            cap,
            state: State::head(BytesMut::new()),
            handle: handle.clone(),
        };
        (gate, handle)
    }

    fn refuse(&mut self, why: Refused) {
        let marker = format!("/.refused-head/{}", uuid::Uuid::new_v4().simple());
        let request =
            format!("GET {marker} HTTP/1.1\r\nhost: refused\r\nconnection: close\r\n\r\n");
        *self.handle.0.lock() = Some((marker, why));
        self.state = State::Release {
            buf: Bytes::from(request),
            then: Box::new(State::Drain),
        };
    }
}

/// What to hand over for a checked head of `len` bytes at the start of
/// `buf`, and what comes after.
fn after_head(mut buf: BytesMut, len: usize, body: Framing) -> State {
    let mut out = buf.split_to(len);
    let then = match body {
        Framing::None => State::head(buf),
        Framing::Unknown => {
            out.unsplit(buf);
            State::Pass
        }
        Framing::Chunked => {
            let mut chunks = Chunks::default();
            match chunks.feed(&buf) {
                Fed::Done(n) => {
                    out.unsplit(buf.split_to(n));
                    State::head(buf)
                }
                Fed::More => {
                    out.unsplit(buf);
                    State::Chunked(chunks)
                }
                Fed::Lost => {
                    out.unsplit(buf);
                    State::Pass
                }
            }
        }
        Framing::Length(n) => {
            let here = (buf.len() as u64).min(n) as usize;
            out.unsplit(buf.split_to(here));
            if here as u64 == n {
                State::head(buf)
            } else {
                State::Body {
                    remaining: n - here as u64,
                }
            }
        }
    };
    State::Release {
        buf: out.freeze(),
        then: Box::new(then),
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for HeadGate<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Eof => return Poll::Ready(Ok(())),
                State::Pass => return Pin::new(&mut this.io).poll_read(cx, out),
                State::Release { buf, then } => {
                    let n = buf.len().min(out.remaining());
                    out.put_slice(&buf[..n]);
                    buf.advance(n);
                    if buf.is_empty() {
                        this.state = std::mem::replace(then.as_mut(), State::Eof);
                    }
                    return Poll::Ready(Ok(()));
                }
                State::Body { remaining } => {
                    let n = if out.remaining() as u64 <= *remaining {
                        // All hyper asks for is body: read straight into it.
                        let before = out.filled().len();
                        ready!(Pin::new(&mut this.io).poll_read(cx, out))?;
                        out.filled().len() - before
                    } else {
                        // The body ends within this read: stop at its end.
                        let max = (*remaining).min(READ_CHUNK as u64) as usize;
                        let mut chunk = [0u8; READ_CHUNK];
                        let mut rb = ReadBuf::new(&mut chunk[..max]);
                        ready!(Pin::new(&mut this.io).poll_read(cx, &mut rb))?;
                        out.put_slice(rb.filled());
                        rb.filled().len()
                    };
                    *remaining -= n as u64;
                    if n == 0 {
                        this.state = State::Eof;
                    } else if *remaining == 0 {
                        this.state = State::head(BytesMut::new());
                    }
                    return Poll::Ready(Ok(()));
                }
                State::Chunked(chunks) => {
                    let max = out.remaining().min(READ_CHUNK);
                    let mut chunk = [0u8; READ_CHUNK];
                    let mut rb = ReadBuf::new(&mut chunk[..max]);
                    ready!(Pin::new(&mut this.io).poll_read(cx, &mut rb))?;
                    let got = rb.filled();
                    if got.is_empty() {
                        this.state = State::Eof;
                        return Poll::Ready(Ok(()));
                    }
                    match chunks.feed(got) {
                        Fed::More => out.put_slice(got),
                        Fed::Lost => {
                            out.put_slice(got);
                            this.state = State::Pass;
                        }
                        Fed::Done(n) => {
                            // What follows the body is the next head.
                            out.put_slice(&got[..n]);
                            this.state = State::head(BytesMut::from(&got[n..]));
                        }
                    }
                    return Poll::Ready(Ok(()));
                }
                State::Drain => {
                    let mut scratch = [0u8; READ_CHUNK];
                    let mut rb = ReadBuf::new(&mut scratch);
                    match Pin::new(&mut this.io).poll_read(cx, &mut rb) {
                        Poll::Ready(Ok(())) if !rb.filled().is_empty() => continue,
                        // Ended or failed: nothing more will come; the
                        // answer is on its way and hyper closes after it.
                        Poll::Ready(_) => return Poll::Pending,
                        Poll::Pending => return Poll::Pending,
                    }
                }
                State::Head {
                    buf,
                    scan,
                    unchecked,
                } => {
                    if !std::mem::take(unchecked) {
                        let mut chunk = [0u8; READ_CHUNK];
                        let mut rb = ReadBuf::new(&mut chunk);
                        ready!(Pin::new(&mut this.io).poll_read(cx, &mut rb))?;
                        if rb.filled().is_empty() {
                            // The peer is done: hand over any unfinished head
                            // (hyper sees it is incomplete), then the end.
                            this.state = if buf.is_empty() {
                                State::Eof
                            } else {
                                State::Release {
                                    buf: buf.split().freeze(),
                                    then: Box::new(State::Eof),
                                }
                            };
                            continue;
                        }
                        buf.extend_from_slice(rb.filled());
                    }
                    match scan.check(buf, this.cap) {
                        HeadCheck::Incomplete => {}
                        HeadCheck::Complete { len, body } => {
                            this.state = after_head(buf.split(), len, body);
                        }
                        HeadCheck::Refused(why) => this.refuse(why),
                    }
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HeadGate<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const CAP: usize = 1024;

    fn check(head: &[u8]) -> HeadCheck {
        HeadScan::default().check(head, CAP)
    }

    fn complete(len: usize, body: Framing) -> HeadCheck {
        HeadCheck::Complete { len, body }
    }

    #[test]
    fn good_heads_are_complete_at_the_blank_line() {
        let h = b"GET /live HTTP/1.1\r\nHost: x\r\n\r\nBODY";
        assert_eq!(check(h), complete(h.len() - 4, Framing::None));
        assert_eq!(
            check(b"\r\nGET / HTTP/1.0\n\n"),
            complete(18, Framing::None)
        );
        let obs = b"GET /a?b=%ff HTTP/1.1\r\nX-Bin: \xc3\xa9\t!\r\n\r\n";
        assert_eq!(check(obs), complete(obs.len(), Framing::None));
        assert_eq!(
            check(b"OPTIONS * HTTP/1.1\r\n\r\n"),
            complete(22, Framing::None)
        );
    }

    #[test]
    fn the_head_says_how_the_body_is_framed() {
        let framing =
            |headers: &str| match check(format!("POST / HTTP/1.1\r\n{headers}\r\n").as_bytes()) {
                HeadCheck::Complete { body, .. } => body,
                other => panic!("{headers}: {other:?}"),
            };
        assert_eq!(framing("Content-Length: 12\r\n"), Framing::Length(12));
        assert_eq!(framing("content-length:7, 7\r\n"), Framing::Length(7));
        assert_eq!(framing("Content-Length: 0\r\n"), Framing::None);
        assert_eq!(framing("Transfer-Encoding: chunked\r\n"), Framing::Chunked);
        assert_eq!(
            framing("Content-Length: 3\r\nTransfer-Encoding: gzip, Chunked\r\n"),
            Framing::Chunked
        );
        assert_eq!(framing("Transfer-Encoding: gzip\r\n"), Framing::Unknown);
        for bad in [
            "Content-Length: 1, 2\r\n",
            "Content-Length: -1\r\n",
            "Content-Length: \r\n",
        ] {
            let head = format!("POST / HTTP/1.1\r\n{bad}\r\n");
            assert!(
                matches!(
                    check(head.as_bytes()),
                    HeadCheck::Refused(Refused::Malformed(_))
                ),
                "{bad}"
            );
        }
        let tunnel = check(b"CONNECT example.test:443 HTTP/1.1\r\n\r\n");
        assert_eq!(tunnel, complete(37, Framing::Unknown));
    }

    #[test]
    fn partial_heads_wait_and_resume() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut scan = HeadScan::default();
        for n in 1..head.len() {
            assert_eq!(scan.check(&head[..n], CAP), HeadCheck::Incomplete, "{n}");
        }
        assert_eq!(scan.check(head, CAP), complete(head.len(), Framing::None));
    }

    #[test]
    fn heads_over_the_cap_are_refused() {
        let mut head = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
        head.extend(vec![b'a'; CAP]);
        assert!(matches!(
            check(&head),
            HeadCheck::Refused(Refused::TooLarge(_))
        ));
        head.extend(b"\r\n\r\n");
        assert!(matches!(
            check(&head),
            HeadCheck::Refused(Refused::TooLarge(_))
        ));
        // Exactly at the cap is fine.
        let mut exact = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
        exact.extend(vec![b'a'; CAP - exact.len() - 4]);
        exact.extend(b"\r\n\r\n");
        assert_eq!(check(&exact), complete(CAP, Framing::None));
        let many: String = (0..=MAX_HEADERS)
            .map(|i| format!("X-{i}: {i}\r\n"))
            .collect();
        let head = format!("GET / HTTP/1.1\r\n{many}\r\n");
        let verdict = HeadScan::default().check(head.as_bytes(), 1 << 20);
        assert!(matches!(verdict, HeadCheck::Refused(Refused::TooLarge(_))));
    }

    #[test]
    fn broken_request_and_header_lines_are_malformed() {
        for bad in [
            &b"GARBAGE\r\n\r\n"[..],
            b"GET /\r\n\r\n",
            b"GET / HTTP/9.9\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header Name: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: \x01\r\n\r\n",
        ] {
            assert!(
                matches!(check(bad), HeadCheck::Refused(Refused::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // A broken request line is refused before the head is complete.
        assert!(matches!(
            check(b"GARBAGE\r\nX: y"),
            HeadCheck::Refused(Refused::Malformed(_))
        ));
    }

    /// Reads from the gate until `want` bytes came, or it stalls for 50 ms.
    async fn take(gate: &mut HeadGate<tokio::io::DuplexStream>, want: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while got.len() < want {
            let read =
                tokio::time::timeout(std::time::Duration::from_millis(50), gate.read(&mut buf));
            match read.await {
                Ok(Ok(n)) if n > 0 => got.extend(&buf[..n]),
                _ => break,
            }
        }
        got
    }

    fn marker_of(handle: &GateHandle, got: &[u8]) -> Option<Refused> {
        let text = String::from_utf8_lossy(got);
        let path = text.strip_prefix("GET ")?.split(' ').next()?;
        handle.refusal(&http::Request::get(path).body(()).unwrap())
    }

    #[tokio::test]
    async fn the_gate_holds_a_head_back_then_passes_exactly_the_body() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (mut gate, handle) = HeadGate::new(server, CAP);
        let (_rd, mut wr) = tokio::io::split(client);
        wr.write_all(b"POST / HTTP/1.1\r\nContent-Length: 8\r\n")
            .await
            .unwrap();
        assert!(
            take(&mut gate, 1).await.is_empty(),
            "nothing before the head is complete"
        );
        // The body may look like anything, a blank line included.
        wr.write_all(b"\r\nab\r\n\r\n").await.unwrap();
        let first = b"POST / HTTP/1.1\r\nContent-Length: 8\r\n\r\nab\r\n\r\n";
        assert_eq!(take(&mut gate, first.len()).await, first);
        wr.write_all(b"cd").await.unwrap();
        assert_eq!(take(&mut gate, 2).await, b"cd");
        // The body ended: the next head is checked too, even split mid-line.
        wr.write_all(b"GET /a HT").await.unwrap();
        assert!(take(&mut gate, 1).await.is_empty());
        wr.write_all(b"TP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(take(&mut gate, 19).await, b"GET /a HTTP/1.1\r\n\r\n");
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(vec![b'a'; CAP * 2]);
        wr.write_all(&big).await.unwrap();
        // The head is replaced by a marker request; the rest is dropped, and
        // the gate reports no end (hyper would cut the answer short).
        let got = take(&mut gate, 4096).await;
        assert!(got.ends_with(b"\r\n\r\n"), "{got:?}");
        assert!(matches!(
            marker_of(&handle, &got),
            Some(Refused::TooLarge(_))
        ));
        wr.write_all(b"more junk").await.unwrap();
        assert!(take(&mut gate, 1).await.is_empty());
        assert!(handle.refused());
        let other = http::Request::get("/.refused-head/x").body(()).unwrap();
        assert_eq!(handle.refusal(&other), None);
    }

    #[tokio::test]
    async fn pipelined_heads_are_checked_one_by_one() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (mut gate, handle) = HeadGate::new(server, CAP);
        let (_rd, mut wr) = tokio::io::split(client);
        let one = b"GET /1 HTTP/1.1\r\n\r\n";
        let two = b"POST /2 HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyz";
        let mut all = one.to_vec();
        all.extend(two);
        all.extend(b"BROKEN\r\n\r\n");
        wr.write_all(&all).await.unwrap();
        assert_eq!(take(&mut gate, one.len()).await, one);
        assert_eq!(take(&mut gate, two.len()).await, two);
        let got = take(&mut gate, 4096).await;
        assert!(
            matches!(marker_of(&handle, &got), Some(Refused::Malformed(_))),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn a_long_body_passes_in_reads_of_any_size_and_the_next_head_is_gated() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (mut gate, handle) = HeadGate::new(server, CAP);
        let (_rd, mut wr) = tokio::io::split(client);
        let head = b"PUT /x HTTP/1.1\r\nContent-Length: 5000\r\n\r\n";
        wr.write_all(head).await.unwrap();
        assert_eq!(take(&mut gate, head.len()).await, head);
        // The body arrives after the head, so it is passed on as it comes.
        let body = vec![b'\n'; 5000];
        wr.write_all(&body).await.unwrap();
        assert_eq!(take(&mut gate, body.len()).await, body);
        wr.write_all(b"nonsense\r\n\r\n").await.unwrap();
        let got = take(&mut gate, 4096).await;
        assert!(
            matches!(marker_of(&handle, &got), Some(Refused::Malformed(_))),
            "{got:?}"
        );
    }

    #[test]
    fn chunked_bodies_end_after_the_last_chunk_and_trailers() {
        let body = b"3\r\nabc\r\n10;ext=\"x\"\r\n0123456789abcdef\r\n0\r\nX-Sum: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        assert_eq!(Chunks::default().feed(body), Fed::Done(end));
        // Byte by byte, the same end.
        let mut c = Chunks::default();
        for (i, b) in body.iter().enumerate() {
            match c.feed(std::slice::from_ref(b)) {
                Fed::More => assert!(i + 1 < end, "{i}"),
                Fed::Done(1) => {
                    assert_eq!(i + 1, end);
                    break;
                }
                other => panic!("{i}: {other:?}"),
            }
        }
        assert_eq!(Chunks::default().feed(b"0\n\n"), Fed::Done(3));
        assert_eq!(Chunks::default().feed(b"5\r\nab"), Fed::More);
        for bad in [
            &b"zz\r\n"[..],
            b"\r\n",
            b"1\r\naXY",
            b"fffffffffffffffff\r\n",
        ] {
            assert_eq!(Chunks::default().feed(bad), Fed::Lost, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_chunked_body_is_followed_to_its_end() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (mut gate, handle) = HeadGate::new(server, CAP);
        let (_rd, mut wr) = tokio::io::split(client);
        let head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n";
        wr.write_all(head).await.unwrap();
        assert_eq!(take(&mut gate, head.len()).await, head);
        // The rest arrives later, with the next (broken) head behind it.
        wr.write_all(b"4\r\n\r\n\r\n\r\n0\r\n\r\nJUNK\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(take(&mut gate, 14).await, b"4\r\n\r\n\r\n\r\n0\r\n\r\n");
        let got = take(&mut gate, 4096).await;
        assert!(
            matches!(marker_of(&handle, &got), Some(Refused::Malformed(_))),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn an_unknown_transfer_coding_ends_the_gating() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (mut gate, handle) = HeadGate::new(server, CAP);
        let (_rd, mut wr) = tokio::io::split(client);
        let req = b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\nJUNK\r\n\r\n";
        wr.write_all(req).await.unwrap();
        assert_eq!(take(&mut gate, req.len()).await, req);
        assert!(!handle.refused());
    }
}
