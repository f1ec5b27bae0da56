//! The route table: every path sluice serves, once. The warp filters match
//! paths built from it ([`Route::path`], [`Route::with_param`]), the access
//! log and request metrics label requests with its templates, the rate
//! limiter takes each route's class from it, and the request deadlines
//! which routes stream.
//!
//! Templates use `:name` for one path segment (always the last one), or
//! end with `*` for one or more remaining segments (HLS files).
//! Literal routes come before templated ones of the same shape.
//!
//! This module describes routes; handlers live in the sibling modules.

use http::Method;
use warp::filters::BoxedFilter;
use warp::Filter;

/// Which rate-limit bucket a route's requests draw from (SPEC §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Never limited (health, readiness, status, events, metrics).
    Unlimited,
    /// The preview bucket.
    Preview,
    /// The API bucket, whatever the method (a probe changes nothing).
    Api,
    /// Reads (GET, HEAD, OPTIONS) from the API bucket, anything else from
    /// the stricter admin bucket.
    ByMethod,
}

/// How long a request on a route may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// The usual deadline for a non-streaming request.
    Request,
    /// The longer deadline of an M3U import.
    Import,
    /// A response that streams for as long as the client wants: none.
    Streaming,
}

/// One route: its path template, rate-limit class and deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub template: &'static str,
    pub limit: Limit,
    pub deadline: Deadline,
}

const fn route(template: &'static str, limit: Limit, deadline: Deadline) -> Route {
    Route {
        template,
        limit,
        deadline,
    }
}

use Deadline::{Import, Request, Streaming};
use Limit::{Api, ByMethod, Preview, Unlimited};

pub const INDEX: Route = route("/", ByMethod, Request);
pub const ASSET: Route = route("/assets/:file", ByMethod, Request);
pub const LIVE: Route = route("/live", Unlimited, Request);
pub const READY: Route = route("/ready", Unlimited, Request);
pub const HEALTH: Route = route("/health", Unlimited, Request);
pub const API_HEALTH: Route = route("/api/health", Unlimited, Request);
pub const API_HEALTH_LIVE: Route = route("/api/health/live", Unlimited, Request);
pub const API_HEALTH_READY: Route = route("/api/health/ready", Unlimited, Request);
pub const METRICS: Route = route("/metrics", Unlimited, Request);
pub const PLAYLIST: Route = route("/playlist.m3u", ByMethod, Request);
// The XMLTV guide and what is on now (SPEC §14).
pub const EPG_XML: Route = route("/epg.xml", Api, Request);
pub const EPG_STATUS: Route = route("/api/epg/status", Unlimited, Request);
pub const EPG_NOW: Route = route("/api/epg/now", Api, Request);
pub const PROFILES: Route = route("/api/profiles", ByMethod, Request);
pub const ENCODERS: Route = route("/api/encoders", Api, Request);
pub const STREAMS: Route = route("/api/streams", ByMethod, Request);
pub const STREAM_IMPORT: Route = route("/api/streams/import", ByMethod, Import);
pub const STREAM_VALIDATE: Route = route("/api/streams/validate", Api, Request);
pub const STREAM: Route = route("/api/streams/:id", ByMethod, Request);
// Upstream accounts and their connection limits (SPEC §13).
pub const PROVIDERS: Route = route("/api/providers", ByMethod, Request);
pub const PROVIDER: Route = route("/api/providers/:id", ByMethod, Request);
pub const STATUS: Route = route("/api/streams/transcoding/status", Unlimited, Request);
pub const EVENTS: Route = route("/api/streams/transcoding/events", Unlimited, Streaming);
pub const SESSION: Route = route(
    "/api/streams/transcoding/sessions/:sessionId",
    ByMethod,
    Request,
);
pub const CHANNEL: Route = route(
    "/api/streams/transcoding/channels/:streamId",
    ByMethod,
    Request,
);
pub const PREVIEW: Route = route("/streams/preview/:id", Preview, Streaming);
// Cached and cheap to poll: a channel grid draws from the API bucket.
pub const SNAPSHOT: Route = route("/streams/snapshot/:id.jpg", Api, Request);
// HLS (SPEC §12): players fetch playlists, parts and segments several times
// a second, so these draw on no bucket; starting a client is admitted like
// a preview, and each wait is bounded by the handler (start timeout, three
// target durations). `*` is `:id/master.m3u8` or `:id/:quality/<file>`.
pub const HLS: Route = route("/streams/hls/*", Unlimited, Streaming);

// HDHomeRun tuner emulation (SPEC §14): media servers poll these.
pub const HDHR_DISCOVER: Route = route("/discover.json", Api, Request);
pub const HDHR_LINEUP_STATUS: Route = route("/lineup_status.json", Api, Request);
pub const HDHR_LINEUP: Route = route("/lineup.json", Api, Request);
pub const HDHR_LINEUP_POST: Route = route("/lineup.post", Api, Request);
pub const HDHR_DEVICE: Route = route("/device.xml", Api, Request);

/// Every route sluice serves.
pub const ROUTES: &[Route] = &[
    INDEX,
    LIVE,
    READY,
    HEALTH,
    METRICS,
    PLAYLIST,
    API_HEALTH,
    API_HEALTH_LIVE,
    API_HEALTH_READY,
    PROFILES,
    ENCODERS,
    STREAMS,
    STREAM_IMPORT,
    STREAM_VALIDATE,
    STREAM,
    PROVIDERS,
    PROVIDER,
    STATUS,
    EVENTS,
    SESSION,
    CHANNEL,
    PREVIEW,
    SNAPSHOT,
    HLS,
    EPG_XML,
    EPG_STATUS,
    EPG_NOW,
    ASSET,
    // HDHomeRun tuner emulation.
    HDHR_DISCOVER,
    HDHR_LINEUP_STATUS,
    HDHR_LINEUP,
    HDHR_LINEUP_POST,
    HDHR_DEVICE,
];

impl Route {
    fn segments(&self) -> impl Iterator<Item = &'static str> {
        let t: &'static str = self.template;
        t.split('/').filter(|s| !s.is_empty())
    }

    /// Whether `path` has this route's shape (a `:name` segment matches any
    /// non-empty segment).
    pub fn matches(&self, path: &str) -> bool {
        let tpl: Vec<&str> = self.template.trim_start_matches('/').split('/').collect();
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        if let Some((&"*", lit)) = tpl.split_last() {
            return segs.len() > lit.len()
                && lit.iter().zip(&segs).all(|(t, s)| t == s)
                && segs[lit.len()..].iter().all(|s| !s.is_empty());
        }
        tpl.len() == segs.len()
            && tpl.iter().zip(&segs).all(|(t, s)| {
                if t.starts_with(':') {
                    !s.is_empty()
                } else {
                    t == s
                }
            })
    }

    /// The warp filter for a route without parameters.
    pub fn path(&'static self) -> BoxedFilter<()> {
        debug_assert!(!self.template.contains(':'), "{}", self.template);
        self.segments()
            .fold(warp::any().boxed(), |f, seg| f.and(warp::path(seg)).boxed())
            .and(warp::path::end())
            .boxed()
    }

    /// The warp filter for a route ending in `*`: it extracts the
    /// remaining segments.
    pub fn with_tail(&'static self) -> BoxedFilter<(Vec<String>,)> {
        let segs: Vec<&'static str> = self.segments().collect();
        let (last, literal) = segs.split_last().expect("a route with a tail");
        debug_assert!(*last == "*", "{}", self.template);
        literal
            .iter()
            .fold(warp::any().boxed(), |f, seg| {
                f.and(warp::path(*seg)).boxed()
            })
            .and(warp::path::tail())
            .map(|t: warp::path::Tail| t.as_str().split('/').map(str::to_string).collect())
            .boxed()
    }

    /// The warp filter for a route whose last segment is a parameter; it
    /// extracts that segment.
    pub fn with_param(&'static self) -> BoxedFilter<(String,)> {
        let segs: Vec<&'static str> = self.segments().collect();
        let (last, literal) = segs.split_last().expect("a route with a parameter");
        debug_assert!(last.starts_with(':'), "{}", self.template);
        literal
            .iter()
            .fold(warp::any().boxed(), |f, seg| {
                f.and(warp::path(*seg)).boxed()
            })
            .and(warp::path::param::<String>())
            .and(warp::path::end())
            .boxed()
    }
}

impl Limit {
    /// The bucket a request with `method` draws from: [`Limit::ByMethod`]
    /// becomes [`Limit::Api`] for reads and stays as it is (the admin
    /// bucket) for anything else.
    pub fn for_method(self, method: &Method) -> Limit {
        match self {
            ByMethod if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) => Api,
            other => other,
        }
    }
}

/// The route `path` was served by, or `None` when no route has that shape.
pub fn find(path: &str) -> Option<&'static Route> {
    ROUTES.iter().find(|r| r.matches(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_well_formed_and_distinct() {
        for (i, r) in ROUTES.iter().enumerate() {
            assert!(r.template.starts_with('/'), "{}", r.template);
            let params = r.template.matches(':').count();
            assert!(params <= 1, "{}", r.template);
            if params == 1 {
                assert!(
                    r.template.rsplit('/').next().unwrap().starts_with(':'),
                    "{}",
                    r.template
                );
            }
            assert!(
                ROUTES[..i].iter().all(|o| o.template != r.template),
                "{} twice",
                r.template
            );
        }
    }

    #[test]
    fn paths_find_their_route() {
        assert_eq!(find("/api/streams/import"), Some(&STREAM_IMPORT));
        assert_eq!(find("/api/streams/abc"), Some(&STREAM));
        assert_eq!(find("/streams/preview/x"), Some(&PREVIEW));
        assert_eq!(find("/"), Some(&INDEX));
        assert_eq!(find("/streams/preview/"), None);
        assert_eq!(find("/metrics/stream"), None);
        assert_eq!(find("/streams/hls/a/master.m3u8"), Some(&HLS));
        assert_eq!(find("/streams/hls/a/low/seg-3.m4s"), Some(&HLS));
        assert_eq!(find("/streams/hls/"), None);
        assert_eq!(find("/streams/hls/a//x"), None);
    }

    /// The status `filter` answers `path` with (404 when it does not match).
    async fn status<F>(filter: F, path: &str) -> u16
    where
        F: Filter + Clone + Send + Sync + 'static,
        F::Extract: warp::Reply,
    {
        use tower_service::Service;
        let mut svc = warp::service(filter);
        let req = http::Request::get(path).body(String::new()).unwrap();
        svc.call(req).await.unwrap().status().as_u16()
    }

    #[tokio::test]
    async fn filters_match_exactly_the_template() {
        let by_id = || {
            STREAM.with_param().map(|id: String| {
                let code = if id == "abc" { 200 } else { 418 };
                warp::reply::with_status("", http::StatusCode::from_u16(code).unwrap())
            })
        };
        assert_eq!(status(by_id(), "/api/streams/abc").await, 200);
        assert_eq!(status(by_id(), "/api/streams/xyz").await, 418);
        for miss in ["/api/streams", "/api/streams/a/b", "/api/stream/abc"] {
            assert_eq!(status(by_id(), miss).await, 404, "{miss}");
        }
        let ok = |r: &'static Route| r.path().map(warp::reply);
        assert_eq!(
            status(ok(&STATUS), "/api/streams/transcoding/status").await,
            200
        );
        assert_eq!(
            status(ok(&STATUS), "/api/streams/transcoding/status/x").await,
            404
        );
        assert_eq!(status(ok(&INDEX), "/").await, 200);
        assert_eq!(status(ok(&INDEX), "/x").await, 404);
    }
}
