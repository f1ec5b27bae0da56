//! The guide's routes (SPEC §14):
//!
//! - `GET /epg.xml`: XMLTV for the catalog's enabled streams, channel ids
//!   equal to their channel numbers; the pre-rendered guide plus filler
//!   programmes for now..now+48h.
//! - `GET /api/epg/status`: `{url, lastFetch, bytes, channels,
//!   channelsMatched, guideChannels, programmes, error}`.
//! - `GET /api/epg/now`: `[{streamId, now, next}]` for channels with guide
//!   data (`now`/`next` are `{title, start, stop}` or `null`).
//!
//! Fetching and filtering are [`crate::epg`]; this module moves bytes.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use tokio::io::AsyncReadExt;
use warp::{Filter, Rejection, Reply};

use super::json;
use crate::epg::unix_now;
use crate::AppState;

/// Content-Type of `/epg.xml`.
pub const XMLTV_CONTENT_TYPE: &str = "application/xml; charset=utf-8";
const CHUNK: usize = 64 * 1024;

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let st = state.clone();
    let xml = super::routes::EPG_XML
        .path()
        .and(warp::get())
        .map(move || xmltv(&st));
    let st = state.clone();
    let status = super::routes::EPG_STATUS
        .path()
        .and(warp::get())
        .map(move || json(&st.guide.status(), StatusCode::OK));
    let st = state;
    let now = super::routes::EPG_NOW
        .path()
        .and(warp::get())
        .map(move || json(&st.guide.now_next(unix_now()), StatusCode::OK));
    xml.or(status).unify().or(now).unify()
}

/// Streams the rendered guide, then the filler and the closing tag.
fn xmltv(state: &Arc<AppState>) -> warp::reply::Response {
    let (rendered, filler) = state.guide.for_request(unix_now());
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        match rendered {
            Some(file) => {
                let mut file = tokio::fs::File::from_std(file);
                loop {
                    let mut buf = vec![0u8; CHUNK];
                    match file.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => {
                            buf.truncate(n);
                            if tx.send(Ok(Bytes::from(buf))).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    }
                }
            }
            // Before the first render (just after the first start): the
            // header alone; the channels follow within seconds.
            None => {
                if tx
                    .send(Ok(Bytes::from_static(crate::epg::XMLTV_HEAD.as_bytes())))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        let mut tail = filler;
        tail.push_str("</tv>\n");
        let _ = tx.send(Ok(Bytes::from(tail))).await;
    });
    let body = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut res = warp::reply::stream(body).into_response();
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(XMLTV_CONTENT_TYPE),
    );
    res.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    res
}
