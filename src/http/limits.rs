//! Request limits (SPEC §8): body sizes, per-request deadlines and
//! connection caps, so that large, slow or half-sent requests cannot tie the
//! server up.
//!
//! - Bodies: [`body`] reads at most a given number of bytes, with or without
//!   `Content-Length` (chunked uploads are counted as they arrive), and
//!   refuses more with 413 `payload_too_large`. Catalog writes use
//!   [`super::MAX_CATALOG_BODY`] (1 MiB), M3U imports [`MAX_IMPORT_BODY`]
//!   (50 MiB).
//! - Deadlines: every non-streaming request (handler and body upload alike)
//!   must complete within [`REQUEST_TIMEOUT`] (imports: [`IMPORT_TIMEOUT`],
//!   50 MiB need time), else the client gets 408 `request_timeout` and the
//!   connection is closed. The handler itself runs on to completion in its
//!   own task, so a catalog write is never cut in half. Preview bodies and
//!   the events feed stream for as long as the client wants and have no
//!   deadline (the preview start has its own `timeout`).
//! - Connections: at most [`MAX_CONNECTIONS`] open, [`MAX_CONNECTIONS_PER_IP`]
//!   from one TCP peer; the rest get a bare 503 JSON answer and are closed.
//!   The request head is bounded in size by [`super::head`] and in time by
//!   the hyper settings in [`super::serve`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::StreamExt;
use http::{HeaderValue, Method, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::error::ApiError;

/// Largest M3U import body (`POST /api/streams/import`).
pub const MAX_IMPORT_BODY: u64 = 50 * 1024 * 1024;
/// Deadline of a non-streaming request, body upload included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of an M3U import (up to 50 MiB of body, or a playlist fetch).
pub const IMPORT_TIMEOUT: Duration = Duration::from_secs(60);
/// Open connections at most.
pub const MAX_CONNECTIONS: usize = 2048;
/// Open connections from one TCP peer at most.
pub const MAX_CONNECTIONS_PER_IP: usize = 256;

fn human_size(bytes: u64) -> String {
    if bytes >= 1024 * 1024 && bytes.is_multiple_of(1024 * 1024) {
        format!("{} MiB", bytes / (1024 * 1024))
    } else if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} bytes")
    }
}

fn too_large(limit: u64) -> Rejection {
    warp::reject::custom(ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!(
            "the request body is larger than {} (the limit for this route)",
            human_size(limit)
        ),
    ))
}

/// The request body, at most `limit` bytes; 413 JSON beyond that, whether
/// announced by `Content-Length` or found while reading a chunked body.
pub fn body(limit: u64) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .and_then(move |length: Option<u64>, stream| collect(stream, length, limit))
}

async fn collect<S, B>(stream: S, length: Option<u64>, limit: u64) -> Result<Bytes, Rejection>
where
    S: futures::Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    if length.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let mut stream = std::pin::pin!(stream);
    let mut buf = BytesMut::with_capacity(length.unwrap_or(0) as usize);
    while let Some(chunk) = stream.next().await {
        let mut chunk = chunk.map_err(|e| {
            warp::reject::custom(ApiError::bad_request(format!(
                "the request body could not be read: {e}"
            )))
        })?;
        if buf.len() as u64 + chunk.remaining() as u64 > limit {
            return Err(too_large(limit));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let n = part.len();
            buf.extend_from_slice(part);
            chunk.advance(n);
        }
    }
    Ok(buf.freeze())
}

/// How long a request may take: `None` for streaming routes.
pub fn deadline_for(method: &Method, path: &str) -> Option<Duration> {
    use super::routes::Deadline;
    match super::routes::find(path).map(|r| r.deadline) {
        Some(Deadline::Streaming) => None,
        Some(Deadline::Import) if *method == Method::POST => Some(IMPORT_TIMEOUT),
        _ => Some(REQUEST_TIMEOUT),
    }
}

fn timeout_response(limit: Duration) -> Response {
    let mut res = ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        format!(
            "the request was not completed within {} s (a slow or unfinished upload, \
             or the server is overloaded); try again",
            limit.as_secs()
        ),
    )
    .into_response();
    res.headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    res
}

/// A request body that records when it has been read to the end, so a
/// timed-out request can tell "still uploading" from "handler at work".
pub struct TrackedBody<B> {
    inner: B,
    done: Arc<AtomicBool>,
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.done.store(true, Ordering::Release);
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

/// Calls the service under the route's deadline, in its own task. On
/// timeout the client is answered at once and the connection closed. A
/// handler still waiting for its body is stopped (nothing has happened
/// yet); one whose body has fully arrived is left to finish and its answer
/// dropped, so a catalog write is never abandoned half-way.
pub async fn call_with_deadline<S, B>(
    mut svc: S,
    req: http::Request<B>,
) -> Result<Response, Infallible>
where
    S: tower_service::Service<
        http::Request<TrackedBody<B>>,
        Response = Response,
        Error = Infallible,
    >,
    S::Future: Send + 'static,
    B: Body + Unpin,
{
    let limit = deadline_for(req.method(), req.uri().path());
    let done = Arc::new(AtomicBool::new(req.body().is_end_stream()));
    let req = req.map(|inner| TrackedBody {
        inner,
        done: done.clone(),
    });
    let Some(limit) = limit else {
        return svc.call(req).await;
    };
    let mut task = tokio::spawn(svc.call(req));
    match tokio::time::timeout(limit, &mut task).await {
        Ok(Ok(res)) => res,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "request handler failed");
            Ok(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the request failed inside the server",
            )
            .into_response())
        }
        Err(_) => {
            let uploading = !done.load(Ordering::Acquire);
            if uploading {
                task.abort();
            }
            tracing::info!(limit_s = limit.as_secs(), uploading, "request timed out");
            Ok(timeout_response(limit))
        }
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Open connections, in total and per TCP peer.
pub struct Connections {
    max_total: usize,
    max_per_ip: usize,
    counts: Mutex<Counts>,
}

/// One admitted connection; dropping it frees the slot.
#[must_use]
pub struct ConnectionGuard {
    owner: Arc<Connections>,
    ip: IpAddr,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut c = self.owner.counts.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

impl Default for Connections {
    fn default() -> Self {
        Self::new(MAX_CONNECTIONS, MAX_CONNECTIONS_PER_IP)
    }
}

impl Connections {
    pub fn new(max_total: usize, max_per_ip: usize) -> Self {
        Self {
            max_total,
            max_per_ip,
            counts: Mutex::new(Counts::default()),
        }
    }

    /// Admits a connection from `ip`, or `None` when a cap is reached.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionGuard> {
        let ip = ip.to_canonical();
        let mut c = self.counts.lock();
        let from_ip = c.per_ip.get(&ip).copied().unwrap_or(0);
        if c.total >= self.max_total || from_ip >= self.max_per_ip {
            return None;
        }
        c.total += 1;
        c.per_ip.insert(ip, from_ip + 1);
        Some(ConnectionGuard {
            owner: self.clone(),
            ip,
        })
    }

    pub fn open(&self) -> usize {
        self.counts.lock().total
    }
}

/// Answers a connection over the caps with 503 JSON and closes it.
pub async fn refuse(mut tcp: tokio::net::TcpStream) {
    let body = r#"{"error":"too_many_connections","message":"too many open connections; try again shortly"}"#;
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         cache-control: no-store\r\nretry-after: 1\r\nconnection: close\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    );
    let write = async {
        tcp.write_all(head.as_bytes()).await?;
        tcp.write_all(body.as_bytes()).await?;
        tcp.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), write).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_routes_have_no_deadline() {
        assert_eq!(deadline_for(&Method::GET, "/streams/preview/x"), None);
        assert_eq!(
            deadline_for(&Method::GET, "/api/streams/transcoding/events"),
            None
        );
        assert_eq!(
            deadline_for(&Method::GET, "/api/streams"),
            Some(REQUEST_TIMEOUT)
        );
        assert_eq!(
            deadline_for(&Method::POST, "/api/streams/import"),
            Some(IMPORT_TIMEOUT)
        );
        // Only routes that exist stream.
        assert_eq!(
            deadline_for(&Method::GET, "/metrics/stream"),
            Some(REQUEST_TIMEOUT)
        );
        assert_eq!(
            deadline_for(&Method::GET, "/streams/preview/a/b"),
            Some(REQUEST_TIMEOUT)
        );
    }

    /// A body that is complete from the start, or one that never arrives.
    struct TestBody(bool);

    impl Body for TestBody {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            if self.0 {
                Poll::Ready(None)
            } else {
                Poll::Pending
            }
        }
        fn is_end_stream(&self) -> bool {
            self.0
        }
    }

    /// Reads its body to the end, then works for `work`, then notes it finished.
    #[derive(Clone)]
    struct SlowService {
        work: Duration,
        finished: Arc<AtomicBool>,
    }

    impl tower_service::Service<http::Request<TrackedBody<TestBody>>> for SlowService {
        type Response = Response;
        type Error = Infallible;
        type Future = std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Response, Infallible>> + Send>,
        >;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: http::Request<TrackedBody<TestBody>>) -> Self::Future {
            let (work, finished) = (self.work, self.finished.clone());
            Box::pin(async move {
                let mut body = std::pin::pin!(req.into_body());
                while std::future::poll_fn(|cx| body.as_mut().poll_frame(cx))
                    .await
                    .is_some()
                {}
                tokio::time::sleep(work).await;
                finished.store(true, Ordering::SeqCst);
                Ok(Response::new(Default::default()))
            })
        }
    }

    fn request(path: &str, body_done: bool) -> http::Request<TestBody> {
        http::Request::post(path).body(TestBody(body_done)).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_handler_gets_408_but_finishes_its_work() {
        let finished = Arc::new(AtomicBool::new(false));
        let svc = SlowService {
            work: Duration::from_secs(30),
            finished: finished.clone(),
        };
        let res = call_with_deadline(svc, request("/api/streams", true))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(res.headers()["connection"], "close");
        assert!(!finished.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(
            finished.load(Ordering::SeqCst),
            "the write ran to completion"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_upload_is_stopped_at_the_deadline() {
        let finished = Arc::new(AtomicBool::new(false));
        let svc = SlowService {
            work: Duration::ZERO,
            finished: finished.clone(),
        };
        let started = tokio::time::Instant::now();
        let res = call_with_deadline(svc, request("/api/streams", false))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(started.elapsed(), REQUEST_TIMEOUT);
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(!finished.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn streaming_routes_are_not_cut() {
        let finished = Arc::new(AtomicBool::new(false));
        let svc = SlowService {
            work: Duration::from_secs(300),
            finished: finished.clone(),
        };
        let res = call_with_deadline(svc, request("/streams/preview/x", true))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(finished.load(Ordering::SeqCst));
    }

    #[test]
    fn connection_caps_hold_and_free_on_drop() {
        let c = Arc::new(Connections::new(3, 2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let g1 = c.try_acquire(a).unwrap();
        let _g2 = c.try_acquire(a).unwrap();
        assert!(c.try_acquire(a).is_none(), "per-IP cap");
        let _g3 = c.try_acquire(b).unwrap();
        assert!(c.try_acquire(b).is_none(), "total cap");
        drop(g1);
        assert_eq!(c.open(), 2);
        assert!(c.try_acquire(a).is_some());
    }

    #[test]
    fn sizes_are_named_for_humans() {
        assert_eq!(human_size(MAX_IMPORT_BODY), "50 MiB");
        assert_eq!(human_size(super::super::MAX_CATALOG_BODY), "1 MiB");
        assert_eq!(human_size(1000), "1000 bytes");
    }
}
