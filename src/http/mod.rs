//! The HTTP layer: warp filters, handlers and the server loop. It parses
//! requests, calls into the library (catalog, preview, status) and shapes
//! JSON replies. It never touches GStreamer.

pub mod catalog;
pub mod cors;
pub mod encoders;
pub mod epg;
pub mod error;
pub mod extract;
pub mod hangup;
pub mod head;
pub mod health;
pub mod hls;
pub mod import;
pub mod limits;
pub mod log;
pub mod metrics;
pub mod preview;
pub mod providers;
pub mod ratelimit;
pub mod routes;
pub mod snapshot;
pub mod status;
pub mod tuner;
pub mod validate;
pub mod web;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use warp::{Filter, Rejection, Reply};

use crate::AppState;
use error::ApiError;
pub use extract::{admin_flag, client_ip, is_admin, require_admin, PeerAddr};

/// Largest catalog write body.
pub const MAX_CATALOG_BODY: u64 = 1024 * 1024;
/// Largest request head (request line + headers); see [`head`].
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Time a client has to send its request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long input is still read (and dropped) after a refused request head,
/// so the client gets to read the answer.
pub const REFUSED_LINGER: Duration = Duration::from_secs(2);

/// The query string as key/value pairs (empty when absent).
pub fn query_map() -> impl Filter<Extract = (HashMap<String, String>,), Error = Infallible> + Clone
{
    warp::query::raw()
        .or(warp::any().map(String::new))
        .unify()
        .map(|raw: String| {
            url::form_urlencoded::parse(raw.as_bytes())
                .into_owned()
                .collect()
        })
}

/// A JSON body of at most `limit` bytes, parsed with precise 400/413/415 errors.
pub fn json_body<T: serde::de::DeserializeOwned + Send>(
    limit: u64,
) -> impl Filter<Extract = (T,), Error = Rejection> + Clone {
    warp::header::optional::<String>("content-type")
        .and(limits::body(limit))
        .and_then(|ct: Option<String>, body: Bytes| async move {
            if let Some(ct) = ct {
                let mime = ct
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                if mime != "application/json" && !mime.ends_with("+json") {
                    return Err(warp::reject::custom(ApiError::new(
                        http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "unsupported_media_type",
                        format!("expected Content-Type application/json, got '{mime}'"),
                    )));
                }
            }
            serde_json::from_slice::<T>(&body).map_err(|e| {
                warp::reject::custom(ApiError::bad_request(format!("invalid JSON body: {e}")))
            })
        })
}

/// Every route, with JSON errors.
pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone {
    // Each group is boxed: the nested filter types of the whole table
    // otherwise overflow the compiler's query depth in release builds and
    // give symbols megabytes long.
    let api = preview::routes(state.clone())
        .boxed()
        .or(status::routes(state.clone()).boxed())
        .unify()
        .or(catalog::routes(state.clone()).boxed())
        .unify()
        .or(import::routes(state.clone()).boxed())
        .unify()
        .or(providers::routes(state.clone()).boxed())
        .unify()
        .or(validate::routes(state.clone()).boxed())
        .unify()
        .or(health::routes(state.clone()).boxed())
        .unify()
        .or(epg::routes(state.clone()).boxed())
        .unify()
        .or(web::routes(state.clone()).boxed())
        .unify()
        .or(metrics::routes(state.clone()).boxed())
        .unify()
        .or(tuner::routes(state.clone()).boxed())
        .unify()
        .or(snapshot::routes(state.clone()).boxed())
        .unify()
        .or(encoders::routes(state.clone()).boxed())
        .unify()
        .or(hls::routes(state.clone()).boxed())
        .unify()
        .boxed();
    // Rate limits come first (a refused request does no work); their
    // headers go on every limited answer, errors included. CORS wraps it all.
    let limited = ratelimit::filter(state.clone())
        .and(api.recover(error::recover).unify())
        .map(
            |grant: Option<ratelimit::Grant>, mut res: warp::reply::Response| {
                if let Some(g) = grant {
                    g.apply(&mut res);
                }
                res
            },
        )
        .recover(error::recover)
        .unify();
    // Request id, access log and request metrics see every answer.
    log::wrap(
        state.clone(),
        cors::wrap(state.settings.cors_origin.clone(), limited),
    )
}

pub fn json<T: serde::Serialize>(value: &T, status: http::StatusCode) -> warp::reply::Response {
    let mut res = warp::reply::with_status(warp::reply::json(value), status).into_response();
    res.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    res
}

/// Serves `routes` on `listener` until `stop` resolves; then stops
/// accepting. Open connections are left to finish (sessions are drained by
/// the shutdown sequence).
pub async fn serve<F>(
    listener: tokio::net::TcpListener,
    filter: F,
    stop: impl std::future::Future<Output = ()>,
) where
    F: Filter<Extract = (warp::reply::Response,), Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
{
    let svc = warp::service(filter);
    // On stop, open connections finish their current response, then close.
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let connections = Arc::new(limits::Connections::default());
    tokio::pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        };
        let Some(admitted) = connections.try_acquire(peer.ip()) else {
            tracing::debug!(%peer, "connection refused: too many open connections");
            tokio::spawn(limits::refuse(tcp));
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (tcp, hangup) = match hangup::watch(tcp) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "cannot set up connection");
                continue;
            }
        };
        let (tcp, gate) = head::HeadGate::new(tcp, MAX_HEADER_BYTES);
        let (refused, lingering) = (gate.clone(), hangup.clone());
        let svc = svc.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _admitted = admitted;
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    let refused = gate.refusal(&req);
                    req.extensions_mut().insert(PeerAddr(peer));
                    let call = limits::call_with_deadline(svc.clone(), req);
                    let hangup = hangup.clone();
                    async move {
                        if let Some(why) = refused {
                            let res = why.response();
                            tracing::info!(%peer, status = res.status().as_u16(), "request head refused");
                            return Ok(res);
                        }
                        let Some(hangup) = hangup else {
                            return call.await;
                        };
                        // A client gone before its response is ready cancels
                        // the handler: a queued or starting preview stops at once.
                        tokio::select! {
                            res = call => res,
                            _ = hangup.closed() => {
                                Ok(error::ApiError::new(http::StatusCode::BAD_REQUEST, "client_closed", "the client closed the connection").into_response())
                            }
                        }
                    }
                },
            );
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                // The gate checks heads first; these hold for heads it
                // leaves to hyper (after a body it cannot follow).
                .max_header_size(MAX_HEADER_BYTES)
                .max_headers(head::MAX_HEADERS)
                .max_buf_size(2 * MAX_HEADER_BYTES)
                .serve_connection(TokioIo::new(tcp), service);
            let conn = watcher.watch(conn);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            if let (true, Some(watch)) = (refused.refused(), lingering) {
                watch.linger(REFUSED_LINGER).await;
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
