//! Implicit providers: a stream without an explicit `provider` belongs to
//! the account its URL names — scheme, host, port and the credential in
//! the URL (userinfo, a `username=` query value, or the Xtream
//! `/live/USER/PASS/ID` path segment). Two URLs of one Xtream account share
//! a key; the same host under another account does not.
//!
//! The key's id is a hash, so it is stable across restarts and never shows
//! the credential; the name a user sees is the host and port only.

use url::Url;

/// Prefix of every implicit provider id (explicit ids may not use it).
pub const IMPLICIT_PREFIX: &str = "implicit-";

/// Path prefixes of Xtream Codes style URLs: `/<kind>/<user>/<pass>/<id>`.
const XTREAM_KINDS: &[&str] = &["live", "movie", "series", "timeshift", "play"];

/// What groups URLs into one implicit provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImplicitKey {
    pub scheme: String,
    pub host: String,
    pub port: Option<u16>,
    /// The account name found in the URL; never shown.
    account: Option<String>,
}

impl ImplicitKey {
    /// The stable id: [`IMPLICIT_PREFIX`] and 12 hex digits of a hash of
    /// scheme, host, port and account.
    pub fn id(&self) -> String {
        let text = format!(
            "{}\n{}\n{}\n{}",
            self.scheme,
            self.host,
            self.port.map(|p| p.to_string()).unwrap_or_default(),
            self.account.as_deref().unwrap_or("")
        );
        format!("{IMPLICIT_PREFIX}{:012x}", fnv1a(text.as_bytes()) >> 16)
    }

    /// `host[:port]`, what the provider is called (no credential).
    pub fn host_port(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.host),
            None => self.host.clone(),
        }
    }
}

/// FNV-1a, 64 bit: stable across builds and platforms (std's hasher is not
/// promised to be).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The implicit provider of a source URL; None for sources that open no
/// connection to anyone's account (`test://`, `file://`) or do not parse.
pub fn key_of(url: &str) -> Option<ImplicitKey> {
    let url = url.trim();
    // A URL wrapped in another scheme (`hls://https://host/...`): the
    // inner one is what is connected to.
    let inner = url
        .split_once("://")
        .and_then(|(_, rest)| rest.contains("://").then_some(rest))
        .filter(|rest| {
            rest.split_once("://").is_some_and(|(s, _)| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
            })
        });
    let parsed = Url::parse(inner.unwrap_or(url)).ok()?;
    let scheme = parsed.scheme().to_ascii_lowercase();
    if matches!(scheme.as_str(), "test" | "file") {
        return None;
    }
    let host = parsed.host_str()?.to_ascii_lowercase();
    let account = Some(parsed.username().to_string())
        .filter(|u| !u.is_empty())
        .or_else(|| {
            parsed
                .query_pairs()
                .find(|(k, v)| k.eq_ignore_ascii_case("username") && !v.is_empty())
                .map(|(_, v)| v.into_owned())
        })
        .or_else(|| xtream_user(parsed.path()));
    Some(ImplicitKey {
        scheme,
        host,
        port: parsed.port_or_known_default(),
        account,
    })
}

/// The user of an Xtream path: `/<kind>/<user>/<pass>/<id>`, or the short
/// form `/<user>/<pass>/<numeric id>[.ext]`.
fn xtream_user(path: &str) -> Option<String> {
    let segs: Vec<&str> = path.split('/').collect();
    let n = segs.len();
    for i in 0..n {
        if XTREAM_KINDS.contains(&segs[i].to_ascii_lowercase().as_str())
            && i + 3 < n
            && !segs[i + 1].is_empty()
            && !segs[i + 2].is_empty()
        {
            return Some(segs[i + 1].to_string());
        }
    }
    let numeric = |s: &str| {
        let stem = s.split('.').next().unwrap_or("");
        !stem.is_empty() && stem.bytes().all(|b| b.is_ascii_digit())
    };
    if n == 4
        && segs[0].is_empty()
        && !segs[1].is_empty()
        && !segs[2].is_empty()
        && numeric(segs[3])
    {
        return Some(segs[1].to_string());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(url: &str) -> String {
        key_of(url).expect("a provider").id()
    }

    #[test]
    fn xtream_urls_of_one_account_share_a_provider() {
        let a = id("http://iptv.example:8080/live/alice/secret/101.ts");
        assert_eq!(a, id("http://iptv.example:8080/live/alice/secret/102.ts"));
        assert_eq!(a, id("http://IPTV.example:8080/alice/secret/103"));
        assert_ne!(a, id("http://iptv.example:8080/live/bob/secret/101.ts"));
        assert_ne!(a, id("http://iptv.example:8081/live/alice/secret/101.ts"));
        assert_ne!(a, id("https://iptv.example:8080/live/alice/secret/101.ts"));
        assert!(a.starts_with(IMPLICIT_PREFIX) && a.len() == IMPLICIT_PREFIX.len() + 12);
    }

    #[test]
    fn userinfo_and_username_queries_are_accounts() {
        assert_ne!(
            id("rtsp://cam:pw@10.0.0.5/stream"),
            id("rtsp://other:pw@10.0.0.5/stream")
        );
        assert_eq!(
            id("http://p.example/get.php?username=u1&password=x&type=ts&stream=1"),
            id("http://p.example/get.php?password=y&username=u1&stream=2")
        );
        assert_ne!(
            id("http://p.example/get.php?username=u1&password=x"),
            id("http://p.example/get.php?username=u2&password=x")
        );
        // Without a credential a host is one provider.
        assert_eq!(
            id("http://h.example/a.m3u8"),
            id("http://h.example:80/b.ts")
        );
    }

    #[test]
    fn wrapped_schemes_key_on_the_inner_url_and_local_sources_have_none() {
        assert_eq!(
            id("hls://https://h.example/live/u/p/1.m3u8"),
            id("https://h.example/live/u/p/2.ts")
        );
        assert!(key_of("test://smpte").is_none());
        assert!(key_of("file:///media/a.ts").is_none());
        let k = key_of("http://alice:pw@h.example:8080/live/alice/pw/1.ts").unwrap();
        assert_eq!(k.host_port(), "h.example:8080");
        assert!(!k.id().contains("alice"));
    }
}
