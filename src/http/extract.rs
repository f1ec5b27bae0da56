//! Who is asking: the client IP behind any trusted proxies, and whether the
//! request carries admin rights (SPEC §8).
//!
//! The forwarding chain is the `X-Forwarded-For` entries (else the `for=`
//! values of `Forwarded`, else `X-Real-IP`) followed by the TCP peer. With
//! `TRUST_PROXY` set, the chain is walked from the right, past trusted proxies
//! (a hop count, or addresses in the configured networks); the client is the
//! first address that is not one. A malformed entry stops the walk at the last
//! good address. Entries the client wrote itself sit on the left, so they can
//! never stand in for the client.
//!
//! A request that carries any forwarding header never gets the loopback admin
//! rights that apply when no `ADMIN_API_KEY` is set: behind a proxy on the
//! same host every request comes from loopback.
//!
//! This module reads request headers only; it holds no state.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::HeaderMap;
use warp::{Filter, Rejection};

use super::error::ApiError;
use crate::config::TrustProxy;
use crate::AppState;

/// Headers a proxy uses to name the client.
pub const FORWARDING_HEADERS: [&str; 3] = ["forwarded", "x-forwarded-for", "x-real-ip"];

/// The TCP peer of a request, put there by the server loop.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// The client of a request, as far as sluice can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// The client's IP (IPv4-mapped IPv6 shown as IPv4).
    pub ip: IpAddr,
    /// The request carries `Forwarded`, `X-Forwarded-For` or `X-Real-IP`.
    pub forwarded: bool,
    /// The TCP peer is a proxy `TRUST_PROXY` trusts.
    pub peer_trusted: bool,
}

/// One forwarded address: `198.51.100.7`, `198.51.100.7:4711`, `2001:db8::1`,
/// `[2001:db8::1]:4711`, optionally quoted. `None` when it is not an address
/// (`unknown`, an obfuscated `_name`, junk).
pub fn parse_forwarded_addr(entry: &str) -> Option<IpAddr> {
    let t = entry.trim().trim_matches('"').trim();
    if let Some(rest) = t.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port_ok = after.is_empty()
            || after
                .strip_prefix(':')
                .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        return port_ok
            .then(|| inside.parse::<IpAddr>().ok())
            .flatten()
            .map(|ip| ip.to_canonical());
    }
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    t.parse::<SocketAddr>()
        .ok()
        .filter(SocketAddr::is_ipv4)
        .map(|a| a.ip())
}

/// The addresses the proxies forwarded, leftmost (furthest) first; `None`
/// marks an entry that is not an address. Empty when no header is present.
pub fn forwarded_chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    };
    let xff = values("x-forwarded-for");
    if !xff.is_empty() {
        return xff
            .iter()
            .flat_map(|v| v.split(','))
            .map(parse_forwarded_addr)
            .collect();
    }
    let fwd = values("forwarded");
    if !fwd.is_empty() {
        return fwd
            .iter()
            .flat_map(|v| v.split(','))
            .map(|element| {
                element
                    .split(';')
                    .filter_map(|pair| pair.split_once('='))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                    .and_then(|(_, v)| parse_forwarded_addr(v))
            })
            .collect();
    }
    values("x-real-ip")
        .iter()
        .map(|v| parse_forwarded_addr(v))
        .collect()
}

/// The client IP: the rightmost address of `chain` + `peer` that is not a
/// trusted proxy (all trusted: the leftmost; a malformed entry: the last
/// good address before it).
pub fn resolve_client(peer: IpAddr, chain: &[Option<IpAddr>], trust: &TrustProxy) -> IpAddr {
    let mut client = peer.to_canonical();
    if !trust.trusts(client, 0) {
        return client;
    }
    for (hop, entry) in chain.iter().rev().enumerate() {
        let Some(ip) = entry else {
            return client;
        };
        client = ip.to_canonical();
        if !trust.trusts(client, hop + 1) {
            return client;
        }
    }
    client
}

/// Works out the [`Client`] from the TCP peer and the request headers.
pub fn identify(peer: IpAddr, headers: &HeaderMap, trust: &TrustProxy) -> Client {
    let forwarded = FORWARDING_HEADERS.iter().any(|h| headers.contains_key(*h));
    let peer = peer.to_canonical();
    let ip = if forwarded && trust.enabled() {
        resolve_client(peer, &forwarded_chain(headers), trust)
    } else {
        peer
    };
    Client {
        ip,
        forwarded,
        peer_trusted: trust.trusts(peer, 0),
    }
}

/// The request's [`Client`].
pub fn client(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Client,), Error = Infallible> + Clone {
    warp::ext::optional::<PeerAddr>()
        .and(warp::header::headers_cloned())
        .map(move |peer: Option<PeerAddr>, headers: HeaderMap| {
            let peer = peer
                .map(|p| p.0.ip())
                .unwrap_or(IpAddr::from([127, 0, 0, 1]));
            identify(peer, &headers, &state.settings.trust_proxy)
        })
}

/// The client's IP (see [`resolve_client`]).
pub fn client_ip(
    state: Arc<AppState>,
) -> impl Filter<Extract = (IpAddr,), Error = Infallible> + Clone {
    client(state).map(|c: Client| c.ip)
}

/// Whether a request may mutate: the admin key when one is configured,
/// otherwise a loopback client that came through no proxy.
pub fn is_admin(
    state: &AppState,
    client: &Client,
    key_header: Option<&str>,
    bearer: Option<&str>,
) -> bool {
    match &state.settings.admin_api_key {
        Some(key) => {
            let given = key_header
                .or_else(|| {
                    bearer.and_then(|b| {
                        b.strip_prefix("Bearer ")
                            .or_else(|| b.strip_prefix("bearer "))
                    })
                })
                .map(str::trim)
                .unwrap_or("");
            use subtle::ConstantTimeEq;
            let (a, b) = (given.as_bytes(), key.as_bytes());
            a.len() == b.len() && bool::from(a.ct_eq(b))
        }
        None => !client.forwarded && client.ip.is_loopback(),
    }
}

/// Whether the request carries admin rights (without refusing it).
pub fn admin_flag(
    state: Arc<AppState>,
) -> impl Filter<Extract = (bool,), Error = Rejection> + Clone {
    client(state.clone())
        .and(warp::header::optional::<String>("x-admin-key"))
        .and(warp::header::optional::<String>("authorization"))
        .map(
            move |c: Client, key: Option<String>, auth: Option<String>| {
                is_admin(&state, &c, key.as_deref(), auth.as_deref())
            },
        )
}

/// Refuses non-admin requests with 401.
pub fn require_admin(state: Arc<AppState>) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    let keyed = state.settings.admin_api_key.is_some();
    admin_flag(state)
        .and_then(move |ok: bool| async move {
            if ok {
                Ok(())
            } else if keyed {
                Err(warp::reject::custom(ApiError::new(
                    http::StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "this route needs the admin key (X-Admin-Key or Authorization: Bearer)",
                )))
            } else {
                Err(warp::reject::custom(ApiError::new(
                    http::StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "no ADMIN_API_KEY is configured, so changes are accepted only from loopback \
                     clients that come through no proxy; start sluice with ADMIN_API_KEY set \
                     and send it as X-Admin-Key",
                )))
            }
        })
        .untuple_one()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn who(peer: &str, pairs: &[(&str, &str)], trust: &str) -> IpAddr {
        identify(
            ip(peer),
            &headers(pairs),
            &TrustProxy::parse(trust).unwrap(),
        )
        .ip
    }

    const XFF: &str = "x-forwarded-for";

    #[test]
    fn without_trust_the_peer_is_the_client() {
        let c = identify(
            ip("127.0.0.1"),
            &headers(&[(XFF, "198.51.100.7")]),
            &TrustProxy::Off,
        );
        assert_eq!(c.ip, ip("127.0.0.1"));
        assert!(c.forwarded);
        assert!(!c.peer_trusted);
    }

    #[test]
    fn one_hop_takes_the_rightmost_entry_not_the_spoofable_leftmost() {
        let spoof = [(XFF, "127.0.0.1, 198.51.100.7")];
        assert_eq!(who("127.0.0.1", &spoof, "true"), ip("198.51.100.7"));
        assert_eq!(who("127.0.0.1", &spoof, "1"), ip("198.51.100.7"));
        // Two header lines are one list.
        let split = [(XFF, "127.0.0.1"), (XFF, "198.51.100.7")];
        assert_eq!(who("127.0.0.1", &split, "1"), ip("198.51.100.7"));
        // No header: the peer.
        assert_eq!(who("203.0.113.1", &[], "1"), ip("203.0.113.1"));
    }

    #[test]
    fn hop_counts_walk_from_the_right() {
        let chain = [(XFF, "203.0.113.50, 198.51.100.7, 10.0.0.2")];
        assert_eq!(who("10.0.0.1", &chain, "1"), ip("10.0.0.2"));
        assert_eq!(who("10.0.0.1", &chain, "2"), ip("198.51.100.7"));
        assert_eq!(who("10.0.0.1", &chain, "3"), ip("203.0.113.50"));
        // More hops trusted than there are: the leftmost.
        assert_eq!(who("10.0.0.1", &chain, "9"), ip("203.0.113.50"));
    }

    #[test]
    fn networks_skip_trusted_proxies_only() {
        let chain = [(XFF, "127.0.0.1, 198.51.100.7, 10.1.2.3")];
        let trust = "10.0.0.0/8,127.0.0.1";
        assert_eq!(who("127.0.0.1", &chain, trust), ip("198.51.100.7"));
        // A peer outside the trusted set is the client, whatever it forwards.
        assert_eq!(who("192.0.2.9", &chain, trust), ip("192.0.2.9"));
        // All trusted: the leftmost.
        let inner = [(XFF, "10.9.9.9, 10.1.2.3")];
        assert_eq!(who("127.0.0.1", &inner, trust), ip("10.9.9.9"));
        // IPv6 proxies and IPv4-mapped peers.
        let v6 = [(XFF, "2001:db8::7, fd00::2")];
        assert_eq!(who("fd00::1", &v6, "fd00::/8"), ip("2001:db8::7"));
        assert_eq!(
            who("::ffff:127.0.0.1", &[(XFF, "198.51.100.7")], "127.0.0.1"),
            ip("198.51.100.7")
        );
        assert_eq!(who("::ffff:192.0.2.1", &[], "false"), ip("192.0.2.1"));
    }

    #[test]
    fn malformed_entries_stop_the_walk_at_the_last_good_address() {
        let junk = [(XFF, "198.51.100.1, not-an-ip, 198.51.100.7")];
        assert_eq!(who("127.0.0.1", &junk, "3"), ip("198.51.100.7"));
        assert_eq!(
            who("127.0.0.1", &junk, "127.0.0.1,198.51.100.7"),
            ip("198.51.100.7")
        );
        let bad_right = [(XFF, "198.51.100.1, garbage")];
        assert_eq!(who("127.0.0.1", &bad_right, "1"), ip("127.0.0.1"));
        assert_eq!(who("127.0.0.1", &[(XFF, "")], "1"), ip("127.0.0.1"));
    }

    #[test]
    fn forwarded_and_x_real_ip_are_read_too() {
        let fwd = [(
            "forwarded",
            "for=127.0.0.1;proto=https, for=\"[2001:db8::7]:4711\";by=10.0.0.1",
        )];
        assert_eq!(who("127.0.0.1", &fwd, "1"), ip("2001:db8::7"));
        let port = [("forwarded", "For=198.51.100.7:8080")];
        assert_eq!(who("127.0.0.1", &port, "1"), ip("198.51.100.7"));
        let hidden = [("forwarded", "for=_hidden")];
        assert_eq!(who("127.0.0.1", &hidden, "1"), ip("127.0.0.1"));
        let real = [("x-real-ip", "198.51.100.9")];
        assert_eq!(who("127.0.0.1", &real, "1"), ip("198.51.100.9"));
        // X-Forwarded-For wins over the others.
        let both = [(XFF, "198.51.100.1"), ("x-real-ip", "198.51.100.9")];
        assert_eq!(who("127.0.0.1", &both, "1"), ip("198.51.100.1"));
    }

    #[test]
    fn addresses_parse_in_their_usual_spellings() {
        assert_eq!(parse_forwarded_addr(" 192.0.2.1 "), Some(ip("192.0.2.1")));
        assert_eq!(parse_forwarded_addr("192.0.2.1:80"), Some(ip("192.0.2.1")));
        assert_eq!(parse_forwarded_addr("2001:db8::1"), Some(ip("2001:db8::1")));
        assert_eq!(
            parse_forwarded_addr("[2001:db8::1]"),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(
            parse_forwarded_addr("\"[::ffff:192.0.2.1]:443\""),
            Some(ip("192.0.2.1"))
        );
        for bad in [
            "unknown",
            "",
            "[2001:db8::1]x",
            "[2001:db8::1]:",
            "1.2.3",
            "a:b",
        ] {
            assert_eq!(parse_forwarded_addr(bad), None, "{bad}");
        }
    }
}
