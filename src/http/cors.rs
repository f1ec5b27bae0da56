//! CORS (SPEC §8): which browser origins may call the API, from
//! `CORS_ORIGIN` (a comma list). `https://*.example.com` matches subdomains
//! of example.com only: never `example.com` itself (unless listed too) and
//! never `example.com.evil.test`. `*` allows every origin.
//!
//! With `CORS_ORIGIN` unset, or for an origin not on the list, no
//! `Access-Control-*` header is sent at all. Preflights (`OPTIONS` with
//! `Access-Control-Request-Method`) from an allowed origin are answered
//! here with 204 and cached by the browser for [`PREFLIGHT_MAX_AGE_SECS`].
//!
//! This module owns the CORS headers of every response; handlers must not
//! set `Access-Control-*` themselves.

use std::convert::Infallible;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Filter;

/// How long a browser may cache a preflight answer.
pub const PREFLIGHT_MAX_AGE_SECS: u32 = 3600;
pub const ALLOW_METHODS: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS";
pub const ALLOW_HEADERS: &str =
    "X-Admin-Key, Authorization, Content-Type, X-Request-Id, Last-Event-ID, Range";
pub const EXPOSE_HEADERS: &str = "X-Session-Id, X-Sluice-Mode, X-Sluice-Quality, X-Request-Id, \
     Retry-After, X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Exact(String),
    /// `*.example.com`, stored as `.example.com`.
    Subdomains(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    scheme: String,
    host: Host,
    port: Option<u16>,
}

/// The allowed origins, parsed from `CORS_ORIGIN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsOrigins {
    any: bool,
    patterns: Vec<Pattern>,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

fn valid_host(host: &str) -> bool {
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// Splits `scheme://host[:port]` into lowercase parts; `None` if it is not
/// an origin (paths, queries, userinfo and bad hosts are refused). A `*.`
/// host prefix is kept for the caller to interpret.
fn split_origin(origin: &str) -> Option<(String, String, Option<u16>)> {
    let lower = origin.trim().to_ascii_lowercase();
    let (scheme, rest) = lower.split_once("://")?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_lowercase())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
    if !scheme_ok || rest.is_empty() || rest.contains(['/', '?', '#', '@', '\\', ' ']) {
        return None;
    }
    let (host, port) = match rest.rfind(':') {
        Some(i) if !rest[i + 1..].contains(']') => {
            let port: u16 = rest[i + 1..].parse().ok()?;
            (&rest[..i], Some(port))
        }
        _ => (rest, None),
    };
    let port = port.filter(|p| Some(*p) != default_port(scheme));
    Some((scheme.to_string(), host.to_string(), port))
}

impl CorsOrigins {
    /// Parses a comma list such as
    /// `https://app.example.com, https://*.example.org, http://localhost:8080`.
    pub fn parse(list: &str) -> Result<CorsOrigins, String> {
        let mut out = CorsOrigins {
            any: false,
            patterns: Vec::new(),
        };
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if item == "*" {
                out.any = true;
                continue;
            }
            let bad = || {
                format!(
                    "'{item}' is not an origin: expected scheme://host[:port], \
                     e.g. https://app.example.com or https://*.example.com"
                )
            };
            let (scheme, host, port) = split_origin(item.trim_end_matches('/')).ok_or_else(bad)?;
            let host = match host.strip_prefix("*.") {
                Some(suffix) if valid_host(suffix) && !suffix.starts_with('[') => {
                    Host::Subdomains(format!(".{suffix}"))
                }
                Some(_) => return Err(bad()),
                None if valid_host(&host) => Host::Exact(host),
                None => return Err(bad()),
            };
            out.patterns.push(Pattern { scheme, host, port });
        }
        if !out.any && out.patterns.is_empty() {
            return Err("expected a comma list of origins such as https://app.example.com".into());
        }
        Ok(out)
    }

    /// Whether a browser's `Origin` header value is allowed.
    pub fn allows(&self, origin: &str) -> bool {
        if origin == "null" {
            return false;
        }
        let Some((scheme, host, port)) = split_origin(origin) else {
            return false;
        };
        if host.starts_with('*') || !valid_host(&host) {
            return false;
        }
        if self.any {
            return true;
        }
        self.patterns.iter().any(|p| {
            p.scheme == scheme
                && p.port == port
                && match &p.host {
                    Host::Exact(h) => *h == host,
                    Host::Subdomains(suffix) => {
                        host.len() > suffix.len() && host.ends_with(suffix.as_str())
                    }
                }
        })
    }

    /// The value of `Access-Control-Allow-Origin` for an allowed origin.
    fn allow_origin_value(&self, origin: &str) -> Option<HeaderValue> {
        if !self.allows(origin) {
            return None;
        }
        if self.any {
            Some(HeaderValue::from_static("*"))
        } else {
            HeaderValue::from_str(origin).ok()
        }
    }
}

fn origin_of(headers: &HeaderMap) -> Option<&str> {
    headers.get(http::header::ORIGIN)?.to_str().ok()
}

/// The 204 answer to a preflight from an allowed origin, or `None`.
pub fn preflight(origins: &CorsOrigins, headers: &HeaderMap) -> Option<Response> {
    headers.get(http::header::ACCESS_CONTROL_REQUEST_METHOD)?;
    let allow = origins.allow_origin_value(origin_of(headers)?)?;
    let mut res = Response::new(Default::default());
    *res.status_mut() = StatusCode::NO_CONTENT;
    let h = res.headers_mut();
    h.insert(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
    h.insert(
        http::header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(ALLOW_METHODS),
    );
    h.insert(
        http::header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(ALLOW_HEADERS),
    );
    h.insert(
        http::header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from(PREFLIGHT_MAX_AGE_SECS),
    );
    if headers
        .get("access-control-request-private-network")
        .is_some_and(|v| v == "true")
    {
        h.insert(
            "access-control-allow-private-network",
            HeaderValue::from_static("true"),
        );
    }
    h.insert(
        http::header::VARY,
        HeaderValue::from_static(
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        ),
    );
    Some(res)
}

/// Adds (or strips) CORS headers on an ordinary response.
pub fn decorate(origins: Option<&CorsOrigins>, headers: &HeaderMap, res: &mut Response) {
    let h = res.headers_mut();
    h.remove(http::header::ACCESS_CONTROL_EXPOSE_HEADERS);
    h.remove(http::header::ACCESS_CONTROL_ALLOW_ORIGIN);
    let Some(origins) = origins else {
        return;
    };
    h.append(http::header::VARY, HeaderValue::from_static("Origin"));
    if let Some(allow) = origin_of(headers).and_then(|o| origins.allow_origin_value(o)) {
        h.insert(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        h.insert(
            http::header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE_HEADERS),
        );
    }
}

/// Wraps the whole API: answers preflights, decorates everything else.
pub fn wrap<F>(
    origins: Option<CorsOrigins>,
    inner: F,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone
where
    F: Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    let origins = Arc::new(origins);
    let o = origins.clone();
    let answer_preflight = warp::options()
        .and(warp::header::headers_cloned())
        .and_then(move |headers: HeaderMap| {
            let o = o.clone();
            async move {
                match o.as_ref().as_ref().and_then(|o| preflight(o, &headers)) {
                    Some(res) => Ok(res),
                    None => Err(warp::reject::not_found()),
                }
            }
        });
    let normal = warp::header::headers_cloned().and(inner).map(
        move |headers: HeaderMap, mut res: Response| {
            decorate(origins.as_ref().as_ref(), &headers, &mut res);
            res
        },
    );
    answer_preflight.or(normal).unify()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_wildcard_origins() {
        let c = CorsOrigins::parse(
            "https://app.example.com, https://*.example.org ,http://localhost:8080/",
        )
        .unwrap();
        assert!(c.allows("https://app.example.com"));
        assert!(c.allows("https://APP.example.com"));
        assert!(c.allows("https://app.example.com:443"));
        assert!(!c.allows("http://app.example.com"));
        assert!(!c.allows("https://app.example.com:8443"));
        assert!(!c.allows("https://evil.app.example.com"));
        assert!(c.allows("https://tv.example.org"));
        assert!(c.allows("https://a.b.example.org"));
        assert!(!c.allows("https://example.org"));
        assert!(!c.allows("https://example.org.evil.test"));
        assert!(!c.allows("https://evilexample.org"));
        assert!(!c.allows("https://.example.org"));
        assert!(!c.allows("https://*.example.org"));
        assert!(c.allows("http://localhost:8080"));
        assert!(!c.allows("http://localhost"));
        assert!(!c.allows("null"));
        assert!(!c.allows("https://app.example.com/path"));
        assert!(!c.allows("https://user@app.example.com"));
        assert!(!c.allows(""));
    }

    #[test]
    fn a_listed_apex_is_allowed_alongside_its_wildcard() {
        let c = CorsOrigins::parse("https://*.example.com,https://example.com").unwrap();
        assert!(c.allows("https://example.com"));
        assert!(c.allows("https://www.example.com"));
        assert!(!c.allows("https://www.example.com.evil.test"));
    }

    #[test]
    fn star_allows_any_real_origin() {
        let c = CorsOrigins::parse("*").unwrap();
        assert!(c.allows("https://anything.test"));
        assert!(c.allows("http://[::1]:3000"));
        assert!(!c.allows("null"));
    }

    #[test]
    fn bad_lists_are_refused_with_the_reason() {
        for bad in [
            "",
            " , ",
            "example.com",
            "https://",
            "https://exa mple.com",
            "https://example.com/app",
            "https://*",
            "https://*.",
            "https://foo.*.example.com",
            "https://example.com:99999",
        ] {
            let err = CorsOrigins::parse(bad).unwrap_err();
            assert!(err.contains("origin"), "{bad}: {err}");
        }
    }

    #[test]
    fn preflight_needs_an_allowed_origin_and_a_method() {
        let c = CorsOrigins::parse("https://*.example.com").unwrap();
        let mut h = HeaderMap::new();
        h.insert("origin", HeaderValue::from_static("https://tv.example.com"));
        assert!(preflight(&c, &h).is_none());
        h.insert(
            "access-control-request-method",
            HeaderValue::from_static("POST"),
        );
        let res = preflight(&c, &h).unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            res.headers()["access-control-allow-origin"],
            "https://tv.example.com"
        );
        assert!(res.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("X-Admin-Key"));
        h.insert(
            "origin",
            HeaderValue::from_static("https://example.com.evil.test"),
        );
        assert!(preflight(&c, &h).is_none());
    }
}
