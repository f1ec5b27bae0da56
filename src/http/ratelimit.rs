//! Per-client rate limits (SPEC §8): one token bucket per client IP and
//! route class, `governor`'s GCRA doing the arithmetic.
//!
//! Classes (each route's is in [`super::routes`]): preview
//! (`/streams/preview/*`, `RATE_LIMIT_PREVIEW`), mutating requests (any
//! non-GET/HEAD/OPTIONS method, `RATE_LIMIT_ADMIN`), and the rest of the API
//! (`RATE_LIMIT_API`). Health, readiness, transcoding status, the events feed
//! and metrics are never limited. A refused request gets
//! 429 `rate_limited` with `Retry-After`; every limited response carries
//! `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`.
//!
//! State is bounded: at most [`MAX_TRACKED_CLIENTS`] buckets per class. When
//! the table is full, buckets that have refilled completely (they are
//! indistinguishable from new ones) are dropped first, then the least
//! recently seen tenth. IPv6 clients are keyed by their /64, since one host
//! usually owns a whole /64 and could otherwise mint fresh buckets at will.
//!
//! This module owns the limiter state and its headers; it never looks at
//! request bodies or touches the catalog.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use http::{HeaderValue, Method, StatusCode};
use parking_lot::Mutex;
use warp::{Filter, Rejection};

use super::client_ip;
use super::error::ApiError;
use super::routes::Limit;
use crate::AppState;

/// Buckets kept per route class before old ones are evicted.
pub const MAX_TRACKED_CLIENTS: usize = 10_000;

/// A configured rate: `count` requests per `period`, or no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    Off,
    Limit { count: u32, period: Duration },
}

impl Rate {
    /// Parses `N/min`, `N/15min`, `N/s`, `N/10s`, `N/h` or `off`.
    pub fn parse(s: &str) -> Result<Rate, String> {
        const FORM: &str = "expected N/min, N/15min, N/s, N/h (N at least 1) or off";
        let t = s.trim().to_ascii_lowercase();
        if matches!(t.as_str(), "off" | "none" | "unlimited" | "0") {
            return Ok(Rate::Off);
        }
        let (count, per) = t.split_once('/').ok_or_else(|| FORM.to_string())?;
        let count: u32 = count.trim().parse().map_err(|_| FORM.to_string())?;
        let per = per.trim();
        let split = per
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| FORM.to_string())?;
        let (mult, unit) = per.split_at(split);
        let mult: u64 = if mult.is_empty() {
            1
        } else {
            mult.parse().map_err(|_| FORM.to_string())?
        };
        let unit_secs = match unit {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3600,
            _ => return Err(FORM.into()),
        };
        if count == 0 || mult == 0 || mult > 24 * 3600 {
            return Err(FORM.into());
        }
        Ok(Rate::Limit {
            count,
            period: Duration::from_secs(mult * unit_secs),
        })
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rate::Off => f.write_str("off"),
            Rate::Limit { count, period } => write!(f, "{count}/{}s", period.as_secs()),
        }
    }
}

/// The route classes of SPEC §8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    Preview,
    Admin,
    Api,
    Unlimited,
}

/// Which bucket a request draws from: its route's class; a path that is no
/// route counts as API when it reads and as a mutation otherwise.
pub fn classify(method: &Method, path: &str) -> RouteClass {
    let limit = super::routes::find(path).map_or(Limit::ByMethod, |r| r.limit);
    match limit.for_method(method) {
        Limit::Unlimited => RouteClass::Unlimited,
        Limit::Preview => RouteClass::Preview,
        Limit::Api => RouteClass::Api,
        Limit::ByMethod => RouteClass::Admin,
    }
}

/// The bucket key of a client: its IPv4 address, or its IPv6 /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

type Bucket<C> = RateLimiter<NotKeyed, InMemoryState, C, StateInformationMiddleware>;

struct Slot<C: Clock> {
    bucket: Arc<Bucket<C>>,
    last_seen: C::Instant,
}

/// What a request learned about its bucket; becomes `X-RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
}

impl Grant {
    /// Adds the `X-RateLimit-*` headers to a response.
    pub fn apply(&self, res: &mut warp::reply::Response) {
        let h = res.headers_mut();
        h.insert("x-ratelimit-limit", HeaderValue::from(self.limit));
        h.insert("x-ratelimit-remaining", HeaderValue::from(self.remaining));
        h.insert("x-ratelimit-reset", HeaderValue::from(self.reset_secs));
    }
}

/// A refusal: the headers to send, and when to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub grant: Grant,
    pub retry_after_secs: u64,
}

/// Buckets of one route class, bounded in number.
pub struct ClientLimiter<C: Clock + Clone = DefaultClock> {
    count: u32,
    period: Duration,
    quota: Quota,
    clock: C,
    cap: usize,
    slots: Mutex<HashMap<IpAddr, Slot<C>>>,
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl ClientLimiter<DefaultClock> {
    /// A limiter for `rate`, or `None` when the rate is `off`.
    pub fn new(rate: Rate) -> Option<Self> {
        Self::with_clock(rate, DefaultClock::default(), MAX_TRACKED_CLIENTS)
    }
}

impl<C: Clock + Clone> ClientLimiter<C> {
    pub fn with_clock(rate: Rate, clock: C, cap: usize) -> Option<Self> {
        let Rate::Limit { count, period } = rate else {
            return None;
        };
        let burst = NonZeroU32::new(count)?;
        let quota = Quota::with_period(period / count)?.allow_burst(burst);
        Some(Self {
            count,
            period,
            quota,
            clock,
            cap: cap.max(1),
            slots: Mutex::new(HashMap::new()),
        })
    }

    /// Buckets currently held.
    pub fn tracked(&self) -> usize {
        self.slots.lock().len()
    }

    fn bucket(&self, key: IpAddr) -> Arc<Bucket<C>> {
        let now = self.clock.now();
        let mut slots = self.slots.lock();
        if let Some(slot) = slots.get_mut(&key) {
            slot.last_seen = now;
            return slot.bucket.clone();
        }
        if slots.len() >= self.cap {
            self.evict(&mut slots, now);
        }
        let bucket = Arc::new(
            RateLimiter::direct_with_clock(self.quota, self.clock.clone())
                .with_middleware::<StateInformationMiddleware>(),
        );
        slots.insert(
            key,
            Slot {
                bucket: bucket.clone(),
                last_seen: now,
            },
        );
        bucket
    }

    /// Drops refilled buckets; if none are, the least recently seen tenth.
    fn evict(&self, slots: &mut HashMap<IpAddr, Slot<C>>, now: C::Instant) {
        let period = self.period;
        slots.retain(|_, s| Duration::from(now.duration_since(s.last_seen)) < period);
        if slots.len() < self.cap {
            return;
        }
        let mut seen: Vec<(C::Instant, IpAddr)> =
            slots.iter().map(|(k, s)| (s.last_seen, *k)).collect();
        let drop = (self.cap / 10).clamp(1, seen.len());
        seen.select_nth_unstable(drop - 1);
        for (_, key) in &seen[..drop] {
            slots.remove(key);
        }
        slots.shrink_to(self.cap);
    }

    /// Takes one token for `ip`.
    pub fn check(&self, ip: IpAddr) -> Result<Grant, Refusal> {
        let bucket = self.bucket(client_key(ip));
        let per_token = self.period / self.count;
        match bucket.check() {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                Ok(Grant {
                    limit: self.count,
                    remaining,
                    reset_secs: ceil_secs(per_token * (self.count - remaining)),
                })
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Err(Refusal {
                    grant: Grant {
                        limit: self.count,
                        remaining: 0,
                        reset_secs: ceil_secs(wait + per_token * (self.count - 1)),
                    },
                    retry_after_secs: ceil_secs(wait).max(1),
                })
            }
        }
    }
}

/// The three limiters, built from settings.
pub struct RateLimits {
    pub preview: Option<ClientLimiter>,
    pub admin: Option<ClientLimiter>,
    pub api: Option<ClientLimiter>,
}

impl RateLimits {
    pub fn new(preview: Rate, admin: Rate, api: Rate) -> Self {
        Self {
            preview: ClientLimiter::new(preview),
            admin: ClientLimiter::new(admin),
            api: ClientLimiter::new(api),
        }
    }

    fn limiter(&self, class: RouteClass) -> Option<&ClientLimiter> {
        match class {
            RouteClass::Preview => self.preview.as_ref(),
            RouteClass::Admin => self.admin.as_ref(),
            RouteClass::Api => self.api.as_ref(),
            RouteClass::Unlimited => None,
        }
    }

    /// `Ok(None)` when the class is not limited.
    pub fn check(&self, class: RouteClass, ip: IpAddr) -> Result<Option<Grant>, ApiError> {
        let Some(limiter) = self.limiter(class) else {
            return Ok(None);
        };
        limiter.check(ip).map(Some).map_err(|r| {
            let mut err = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "too many requests: at most {} per {} s for this kind of request; retry in {} s",
                    r.grant.limit,
                    limiter.period.as_secs(),
                    r.retry_after_secs
                ),
            )
            .retry(r.retry_after_secs);
            err.headers.extend([
                ("x-ratelimit-limit", r.grant.limit.to_string()),
                ("x-ratelimit-remaining", "0".to_string()),
                ("x-ratelimit-reset", r.grant.reset_secs.to_string()),
            ]);
            err
        })
    }
}

/// Draws a token for the request's class and client; rejects with 429.
pub fn filter(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Option<Grant>,), Error = Rejection> + Clone {
    let limits = Arc::new(RateLimits::new(
        state.settings.rate_limit_preview,
        state.settings.rate_limit_admin,
        state.settings.rate_limit_api,
    ));
    warp::method()
        .and(warp::path::full())
        .and(client_ip(state))
        .and_then(
            move |method: Method, path: warp::path::FullPath, ip: IpAddr| {
                let limits = limits.clone();
                async move {
                    limits
                        .check(classify(&method, path.as_str()), ip)
                        .map_err(warp::reject::custom)
                }
            },
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn rates_parse_in_every_documented_form() {
        let min = |n, m: u64| Rate::Limit {
            count: n,
            period: Duration::from_secs(60 * m),
        };
        assert_eq!(Rate::parse("60/min"), Ok(min(60, 1)));
        assert_eq!(Rate::parse("30/15min"), Ok(min(30, 15)));
        assert_eq!(Rate::parse(" 300/MIN "), Ok(min(300, 1)));
        assert_eq!(
            Rate::parse("5/s"),
            Ok(Rate::Limit {
                count: 5,
                period: Duration::from_secs(1)
            })
        );
        assert_eq!(Rate::parse("100/h"), Ok(min(100, 60)));
        assert_eq!(Rate::parse("off"), Ok(Rate::Off));
        for bad in [
            "",
            "60",
            "0/min",
            "x/min",
            "60/fortnight",
            "60/0min",
            "-1/min",
            "60/min/2",
        ] {
            assert!(Rate::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn routes_fall_into_the_spec_classes() {
        use RouteClass::*;
        let get = Method::GET;
        for p in [
            "/live",
            "/ready",
            "/health",
            "/api/health",
            "/api/health/live",
            "/api/health/ready",
            "/metrics",
            "/api/streams/transcoding/status",
            "/api/streams/transcoding/events",
        ] {
            assert_eq!(classify(&get, p), Unlimited, "{p}");
        }
        assert_eq!(classify(&get, "/streams/preview/x"), Preview);
        assert_eq!(classify(&get, "/api/streams"), Api);
        assert_eq!(classify(&Method::POST, "/api/streams"), Admin);
        assert_eq!(classify(&Method::POST, "/api/streams/import"), Admin);
        assert_eq!(classify(&Method::DELETE, "/api/streams/x"), Admin);
        assert_eq!(
            classify(&Method::DELETE, "/api/streams/transcoding/sessions/x"),
            Admin
        );
        assert_eq!(classify(&Method::POST, "/api/streams/validate"), Api);
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        assert_eq!(
            client_key(ip("2001:db8:1:2:aaaa::1")),
            client_key(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            client_key(ip("2001:db8:1:2::1")),
            client_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(client_key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
    }

    #[test]
    fn a_bucket_empties_refuses_and_refills() {
        let clock = FakeRelativeClock::default();
        let rate = Rate::parse("3/min").unwrap();
        let l = ClientLimiter::with_clock(rate, clock.clone(), 100).unwrap();
        let a = ip("192.0.2.1");
        let remaining: Vec<u32> = (0..3).map(|_| l.check(a).unwrap().remaining).collect();
        assert_eq!(remaining, vec![2, 1, 0]);
        assert_eq!(l.check(a).unwrap_err().retry_after_secs, 20);
        // Another client is unaffected.
        assert_eq!(l.check(ip("192.0.2.2")).unwrap().remaining, 2);
        clock.advance(Duration::from_secs(20));
        let g = l.check(a).unwrap();
        assert_eq!((g.limit, g.remaining, g.reset_secs), (3, 0, 60));
        clock.advance(Duration::from_secs(60));
        assert_eq!(l.check(a).unwrap().remaining, 2);
    }

    #[test]
    fn state_stays_bounded_under_many_clients() {
        let clock = FakeRelativeClock::default();
        let rate = Rate::parse("2/min").unwrap();
        let l = ClientLimiter::with_clock(rate, clock.clone(), 100).unwrap();
        let busy = ip("198.51.100.7");
        l.check(busy).unwrap();
        l.check(busy).unwrap();
        for i in 0..5_000u32 {
            clock.advance(Duration::from_millis(1));
            let addr = IpAddr::from((0x0a00_0000u32 + i).to_be_bytes());
            l.check(addr).unwrap();
            assert!(l.tracked() <= 100);
            if i % 50 == 0 {
                // The busy client keeps being seen, so it is never evicted.
                assert!(l.check(busy).is_err());
            }
        }
        // Idle buckets that refilled are dropped first.
        clock.advance(Duration::from_secs(120));
        l.check(ip("203.0.113.1")).unwrap();
        assert!(l.tracked() <= 100);
    }

    #[test]
    fn off_means_no_limiter() {
        let limits = RateLimits::new(Rate::Off, Rate::Off, Rate::parse("1/min").unwrap());
        let a = ip("192.0.2.9");
        for _ in 0..100 {
            assert_eq!(limits.check(RouteClass::Preview, a).unwrap(), None);
        }
        assert!(limits.check(RouteClass::Api, a).unwrap().is_some());
        let err = limits.check(RouteClass::Api, a).unwrap_err();
        assert_eq!(err.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(err.code, "rate_limited");
        assert_eq!(limits.check(RouteClass::Unlimited, a).unwrap(), None);
    }
}
