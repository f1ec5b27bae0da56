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
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Header lines a request may carry at most (hyper is told the same).
pub const MAX_HEADERS: usize = 100;

/// Bytes read from the socket at a time while a head is collected.
const READ_CHUNK: usize = 8 * 1024;

mod chunks;
mod scan;

pub use chunks::{Chunks, Fed};
pub use scan::{Framing, HeadCheck, HeadScan, Refused};

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
mod tests;
