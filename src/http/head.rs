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
//! response still in flight. Bytes after a head (the body) pass straight
//! through until the request body has been read to its end, when the next
//! head is expected again: later requests on a keep-alive connection are
//! checked the same way. (Bytes a client pipelines before its previous body
//! has been read are left to hyper, whose `max_header_size` is set to the
//! same cap.)
//!
//! This module only frames and checks heads; it never parses them for the
//! routes.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderValue, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
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
    /// A good head of this many bytes (leading empty lines included).
    Complete(usize),
    Refused(Refused),
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
        lines.next(); // the request line, checked above
        let mut count = 0;
        for line in lines.filter(|l| !strip_cr(l).is_empty()) {
            count += 1;
            if count > MAX_HEADERS {
                return HeadCheck::Refused(Refused::TooLarge(format!(
                    "the request has more than {MAX_HEADERS} header lines"
                )));
            }
            if let Err(r) = check_header_line(line) {
                return HeadCheck::Refused(r);
            }
        }
        *self = HeadScan::default();
        HeadCheck::Complete(end)
    }
}

#[derive(Default)]
struct Shared {
    /// The request body has been read to its end: the next bytes are a head.
    head_next: AtomicBool,
    /// A refused head: the marker path standing in for it, and why.
    refusal: Mutex<Option<(String, Refused)>>,
}

/// The service's side of a [`HeadGate`].
#[derive(Clone, Default)]
pub struct GateHandle(Arc<Shared>);

impl GateHandle {
    /// The error answer when `req` stands in for a refused head.
    pub fn refusal<B>(&self, req: &http::Request<B>) -> Option<Refused> {
        let slot = self.0.refusal.lock();
        slot.as_ref()
            .filter(|(marker, _)| req.uri().path() == marker)
            .map(|(_, why)| why.clone())
    }

    /// Whether a head on this connection was refused.
    pub fn refused(&self) -> bool {
        self.0.refusal.lock().is_some()
    }

    /// Wraps a request body so that its end re-arms the gate.
    pub fn watch_body<B: Body>(&self, inner: B) -> GateBody<B> {
        if inner.is_end_stream() {
            self.0.head_next.store(true, Ordering::Release);
        }
        GateBody {
            inner,
            gate: self.clone(),
        }
    }
}

/// A request body that tells the gate when it has been read to its end.
pub struct GateBody<B> {
    inner: B,
    gate: GateHandle,
}

impl<B: Body + Unpin> Body for GateBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) {
            this.gate.0.head_next.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

enum State {
    /// Collecting a head; nothing of it has been handed over yet.
    Head {
        buf: BytesMut,
        scan: HeadScan,
    },
    /// Handing over a checked head, or (`then_drain`) a refusal's marker
    /// request.
    Release {
        buf: Bytes,
        then_drain: bool,
    },
    /// Body bytes: straight through.
    Pass,
    /// After a refusal: whatever else the client sends is read and dropped
    /// (so closing does not reset the connection under the answer), and
    /// hyper is never told of an end (which would cut the answer short).
    Drain,
    Eof,
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
            state: State::Head {
                buf: BytesMut::new(),
                scan: HeadScan::default(),
            },
            handle: handle.clone(),
        };
        (gate, handle)
    }

    fn refuse(&mut self, why: Refused) {
        let marker = format!("/.refused-head/{}", uuid::Uuid::new_v4().simple());
        let request =
            format!("GET {marker} HTTP/1.1\r\nhost: refused\r\nconnection: close\r\n\r\n");
        *self.handle.0.refusal.lock() = Some((marker, why));
        self.state = State::Release {
            buf: Bytes::from(request),
            then_drain: true,
        };
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
                State::Pass => {
                    if this.handle.0.head_next.swap(false, Ordering::AcqRel) {
                        this.state = State::Head {
                            buf: BytesMut::new(),
                            scan: HeadScan::default(),
                        };
                        continue;
                    }
                    return Pin::new(&mut this.io).poll_read(cx, out);
                }
                State::Release { buf, then_drain } => {
                    let n = buf.len().min(out.remaining());
                    out.put_slice(&buf[..n]);
                    buf.advance(n);
                    if buf.is_empty() {
                        this.state = if *then_drain {
                            State::Drain
                        } else {
                            State::Pass
                        };
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
                State::Head { buf, scan } => {
                    let mut chunk = [0u8; READ_CHUNK];
                    let mut rb = ReadBuf::new(&mut chunk);
                    ready!(Pin::new(&mut this.io).poll_read(cx, &mut rb))?;
                    if rb.filled().is_empty() {
                        // The peer is done: hand over what there is (hyper
                        // sees an incomplete head and closes), then EOF.
                        if buf.is_empty() {
                            this.state = State::Eof;
                        } else {
                            // An unfinished head: hyper gets it, then the end.
                            let partial = buf.split().freeze();
                            this.state = State::Eof;
                            let n = partial.len().min(out.remaining());
                            out.put_slice(&partial[..n]);
                            if n < partial.len() {
                                this.state = State::Release {
                                    buf: partial.slice(n..),
                                    then_drain: false,
                                };
                            }
                            return Poll::Ready(Ok(()));
                        }
                        continue;
                    }
                    buf.extend_from_slice(rb.filled());
                    match scan.check(buf, this.cap) {
                        HeadCheck::Incomplete => {}
                        HeadCheck::Complete(_) => {
                            this.state = State::Release {
                                buf: buf.split().freeze(),
                                then_drain: false,
                            };
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

    #[test]
    fn good_heads_are_complete_at_the_blank_line() {
        let h = b"GET /live HTTP/1.1\r\nHost: x\r\n\r\nBODY";
        assert_eq!(check(h), HeadCheck::Complete(h.len() - 4));
        assert_eq!(check(b"\r\nGET / HTTP/1.0\n\n"), HeadCheck::Complete(18));
        let obs = b"GET /a?b=%ff HTTP/1.1\r\nX-Bin: \xc3\xa9\t!\r\n\r\n";
        assert_eq!(check(obs), HeadCheck::Complete(obs.len()));
        assert_eq!(
            check(b"OPTIONS * HTTP/1.1\r\n\r\n"),
            HeadCheck::Complete(22)
        );
    }

    #[test]
    fn partial_heads_wait_and_resume() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut scan = HeadScan::default();
        for n in 1..head.len() {
            assert_eq!(scan.check(&head[..n], CAP), HeadCheck::Incomplete, "{n}");
        }
        assert_eq!(scan.check(head, CAP), HeadCheck::Complete(head.len()));
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
        assert_eq!(check(&exact), HeadCheck::Complete(CAP));
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

    #[tokio::test]
    async fn the_gate_holds_a_head_back_then_passes_the_body() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (mut gate, handle) = HeadGate::new(server, CAP);
        let (_rd, mut wr) = tokio::io::split(client);
        wr.write_all(b"POST / HTTP/1.1\r\nContent-Length: 4\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let early =
            tokio::time::timeout(std::time::Duration::from_millis(50), gate.read(&mut buf)).await;
        assert!(early.is_err(), "nothing before the head is complete");
        wr.write_all(b"\r\nbody").await.unwrap();
        let n = gate.read(&mut buf).await.unwrap();
        assert_eq!(
            &buf[..n],
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody"
        );
        // The body ended: the next head is checked too.
        drop(handle.watch_body(EmptyBody));
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(vec![b'a'; CAP * 2]);
        wr.write_all(&big).await.unwrap();
        // The head is replaced by a marker request; the rest is dropped.
        let mut got = Vec::new();
        while !got.ends_with(b"\r\n\r\n") {
            let n = gate.read(&mut buf).await.unwrap();
            assert!(n > 0);
            got.extend(&buf[..n]);
        }
        wr.write_all(b"more junk").await.unwrap();
        let later =
            tokio::time::timeout(std::time::Duration::from_millis(50), gate.read(&mut buf)).await;
        assert!(later.is_err(), "nothing after the marker, not even an end");
        assert!(handle.refused());
        let text = String::from_utf8(got).unwrap();
        let path = text
            .strip_prefix("GET ")
            .and_then(|t| t.split(' ').next())
            .unwrap();
        let req = http::Request::get(path).body(()).unwrap();
        assert!(matches!(handle.refusal(&req), Some(Refused::TooLarge(_))));
        let other = http::Request::get("/.refused-head/x").body(()).unwrap();
        assert_eq!(handle.refusal(&other), None);
    }

    /// A body that is over before it starts.
    struct EmptyBody;

    impl Body for EmptyBody {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(None)
        }
        fn is_end_stream(&self) -> bool {
            true
        }
    }
}
