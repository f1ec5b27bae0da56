//! Credential redaction: the one function every log line, error message,
//! status field, metric label and catalog read goes through before a source
//! URL leaves the process (SPEC §8). IPTV URLs carry paid credentials in
//! userinfo, in query values and in Xtream-style paths.

/// Replacement for anything secret.
pub const MASK: &str = "***";

/// Query parameter names whose values are secrets (matched case-insensitively,
/// also as a suffix such as `api_key`, `access_token`, `x-amz-signature`).
const SECRET_PARAMS: &[&str] = &[
    "password",
    "passwd",
    "pass",
    "pwd",
    "token",
    "key",
    "auth",
    "sig",
    "signature",
    "secret",
    "session",
    "sessionid",
    "apikey",
    "credential",
    "credentials",
    "hash",
];

/// Path prefixes of Xtream Codes style URLs: `/<kind>/<user>/<pass>/<id>`.
const XTREAM_KINDS: &[&str] = &["live", "movie", "series", "timeshift", "play"];

fn is_secret_param(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let lower = lower.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    SECRET_PARAMS.iter().any(|s| {
        lower == *s
            || lower.ends_with(&format!("_{s}"))
            || lower.ends_with(&format!("-{s}"))
            || lower.ends_with(&format!(".{s}"))
            || (s.len() >= 4 && lower.ends_with(s))
    })
}

/// Returns `url` with userinfo, secret query values and Xtream credentials
/// masked. Works on anything URL-shaped, including text that does not parse.
pub fn redact_url(url: &str) -> String {
    // A URL wrapped in another scheme (`hls://https://user:pw@host/...`).
    if let Some(i) = url.find("://") {
        let rest = &url[i + 3..];
        if let Some(j) = rest.find("://") {
            let inner = &rest[..j];
            if !inner.is_empty()
                && inner
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
            {
                return format!("{}{}", &url[..i + 3], redact_url(rest));
            }
        }
    }
    // The fragment is split off and redacted like a query (players put
    // tokens there too).
    let (main, fragment) = match url.find('#') {
        Some(i) => (&url[..i], Some(&url[i..])),
        None => (url, None),
    };
    let (before_query, query) = match main.find('?') {
        Some(i) => (&main[..i], Some(&main[i + 1..])),
        None => (main, None),
    };
    let mut out = String::with_capacity(url.len());
    match before_query.find("://") {
        Some(scheme_end) => {
            let scheme = &before_query[..scheme_end + 3];
            let rest = &before_query[scheme_end + 3..];
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, ""),
            };
            out.push_str(scheme);
            match authority.rfind('@') {
                Some(at) => {
                    out.push_str(MASK);
                    out.push_str(&authority[at..]);
                }
                None => out.push_str(authority),
            }
            out.push_str(&redact_path(path));
        }
        None => out.push_str(&redact_path(before_query)),
    }
    if let Some(q) = query {
        out.push('?');
        out.push_str(&redact_params(q));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(&redact_params(&f[1..]));
    }
    out
}

/// Masks the values of secret `name=value` pairs in an `&`-list.
fn redact_params(list: &str) -> String {
    let parts: Vec<String> = list
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if is_secret_param(k) && !v.is_empty() => format!("{k}={MASK}"),
            _ => pair.to_string(),
        })
        .collect();
    parts.join("&")
}

/// Masks Xtream credentials: `/live/<user>/<pass>/<id>.<ext>` and the short
/// form `/<user>/<pass>/<id>` where `<id>` is numeric (optionally with an
/// extension), as IPTV panels serve them.
fn redact_path(path: &str) -> String {
    let segs: Vec<&str> = path.split('/').collect();
    // segs[0] is "" for an absolute path.
    let mut out: Vec<String> = segs.iter().map(|s| s.to_string()).collect();
    let is_stream_id = |s: &str| {
        let stem = s.split('.').next().unwrap_or("");
        !stem.is_empty() && stem.bytes().all(|b| b.is_ascii_digit())
    };
    let n = segs.len();
    for i in 0..n {
        if XTREAM_KINDS.contains(&segs[i].to_ascii_lowercase().as_str())
            && i + 3 < n
            && !segs[i + 1].is_empty()
            && !segs[i + 2].is_empty()
        {
            out[i + 1] = MASK.into();
            out[i + 2] = MASK.into();
            return out.join("/");
        }
    }
    // Short form: exactly /<user>/<pass>/<numeric id>[.ext] at the end.
    if n >= 4 && segs[0].is_empty() && is_stream_id(segs[n - 1]) {
        let (u, p) = (segs[n - 3], segs[n - 2]);
        if !u.is_empty() && !p.is_empty() && n == 4 {
            out[n - 3] = MASK.into();
            out[n - 2] = MASK.into();
        }
    }
    out.join("/")
}

/// `msg: cause: cause` for an error and its sources (each cause once),
/// with credentials redacted.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut src = e.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        src = s.source();
    }
    redact_text(&parts.join(": "))
}

/// Redacts every URL-looking token inside free text (GStreamer error
/// messages quote the URI they failed on).
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        // Walk back to the start of the scheme.
        let start = rest[..pos]
            .char_indices()
            .rev()
            .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.'))
            .map(|(i, c)| i + c.len_utf8())
            .unwrap_or(0);
        let mut end = rest[pos..]
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '<' || c == '>')
            .map(|i| pos + i)
            .unwrap_or(rest.len());
        // Punctuation closing a sentence is not part of the URL
        // ("... /user/pass/123: connection refused").
        while end > pos + 3 && rest[..end].ends_with(['.', ',', ';', ':', ')', ']', '}', '!', '?'])
        {
            end -= 1;
        }
        out.push_str(&rest[..start]);
        out.push_str(&redact_url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Whether `url` holds anything [`redact_url`] would mask.
pub fn has_credentials(url: &str) -> bool {
    redact_url(url) != url
}

/// Header names whose values are secrets in stream `headers`.
pub fn is_secret_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower == "cookie"
        || lower == "authorization"
        || lower == "proxy-authorization"
        || lower.contains("token")
        || lower.contains("key")
        || lower.contains("auth")
        || lower.contains("secret")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_masked() {
        assert_eq!(
            redact_url("http://bob:hunter2@iptv.example.com:8080/stream.ts"),
            "http://***@iptv.example.com:8080/stream.ts"
        );
        assert_eq!(
            redact_url("rtsp://admin@cam.local/live"),
            "rtsp://***@cam.local/live"
        );
    }

    #[test]
    fn secret_query_values_are_masked() {
        assert_eq!(
            redact_url("https://x.test/get.php?username=bob&password=hunter2&type=m3u"),
            "https://x.test/get.php?username=bob&password=***&type=m3u"
        );
        assert_eq!(
            redact_url("https://cdn.test/a.m3u8?token=abc&sig=def&api_key=k&x=1#frag"),
            "https://cdn.test/a.m3u8?token=***&sig=***&api_key=***&x=1#frag"
        );
        assert_eq!(
            redact_url("http://x.test/p?PWD=1&auth=2&pass=3"),
            "http://x.test/p?PWD=***&auth=***&pass=***"
        );
    }

    #[test]
    fn xtream_paths_are_masked() {
        assert_eq!(
            redact_url("http://panel.test:8080/live/bob/hunter2/1234.ts"),
            "http://panel.test:8080/live/***/***/1234.ts"
        );
        assert_eq!(
            redact_url("http://panel.test/bob/hunter2/1234"),
            "http://panel.test/***/***/1234"
        );
        assert_eq!(
            redact_url("http://panel.test/movie/u/p/99.mkv"),
            "http://panel.test/movie/***/***/99.mkv"
        );
        // Ordinary paths stay readable.
        assert_eq!(
            redact_url("http://cdn.test/hls/channel1/index.m3u8"),
            "http://cdn.test/hls/channel1/index.m3u8"
        );
        assert_eq!(
            redact_url("test://smpte?size=1920x1080&rate=30"),
            "test://smpte?size=1920x1080&rate=30"
        );
    }

    #[test]
    fn every_userinfo_form_is_masked() {
        for (url, want) in [
            ("http://bob@h.test/x", "http://***@h.test/x"),
            ("http://bob:@h.test/x", "http://***@h.test/x"),
            ("http://:pw@h.test/x", "http://***@h.test/x"),
            (
                "https://b%40x:p%3Aw@h.test:8443/x",
                "https://***@h.test:8443/x",
            ),
            (
                "rtsp://admin:12345@10.0.0.2:554/s1",
                "rtsp://***@10.0.0.2:554/s1",
            ),
            (
                "rtmp://u:p@live.test/app/key",
                "rtmp://***@live.test/app/key",
            ),
            ("srt://u:p@h.test:9000", "srt://***@h.test:9000"),
            ("HTTP://U:P@H.TEST", "HTTP://***@H.TEST"),
            (
                "hls://https://u:pw@cdn.test/a.m3u8",
                "hls://https://***@cdn.test/a.m3u8",
            ),
        ] {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }

    #[test]
    fn every_secret_query_name_is_masked() {
        for name in [
            "password",
            "Password",
            "passwd",
            "pass",
            "pwd",
            "token",
            "access_token",
            "auth",
            "auth_key",
            "key",
            "api_key",
            "apikey",
            "api-key",
            "sig",
            "signature",
            "X-Amz-Signature",
            "secret",
            "client_secret",
            "hash",
            "session",
            "credentials",
        ] {
            let url = format!("https://h.test/p?ch=5&{name}=hunter2&x=1");
            let red = redact_url(&url);
            assert_eq!(
                red,
                format!("https://h.test/p?ch=5&{name}=***&x=1"),
                "{name}"
            );
        }
        // Names that merely contain a short secret word stay readable.
        for name in ["monkey", "signal", "keyframe", "authority2"] {
            let url = format!("https://h.test/p?{name}=1");
            assert_eq!(redact_url(&url), url, "{name}");
        }
        // Empty values have nothing to hide; fragments are vetted too.
        assert_eq!(redact_url("http://h/p?token="), "http://h/p?token=");
        assert_eq!(
            redact_url("http://h/p#token=abc&t=5"),
            "http://h/p#token=***&t=5"
        );
    }

    #[test]
    fn every_xtream_form_is_masked() {
        for (url, want) in [
            (
                "http://p.test/live/u1/p1/77.ts",
                "http://p.test/live/***/***/77.ts",
            ),
            (
                "http://p.test/live/u1/p1/77.m3u8",
                "http://p.test/live/***/***/77.m3u8",
            ),
            (
                "http://p.test/live/u1/p1/77",
                "http://p.test/live/***/***/77",
            ),
            (
                "http://p.test/LIVE/u1/p1/77",
                "http://p.test/LIVE/***/***/77",
            ),
            (
                "http://p.test/movie/u1/p1/9.mp4",
                "http://p.test/movie/***/***/9.mp4",
            ),
            (
                "http://p.test/series/u1/p1/9.mkv",
                "http://p.test/series/***/***/9.mkv",
            ),
            (
                "http://p.test/timeshift/u1/p1/60/2024-01-01:20-00/9.ts",
                "http://p.test/timeshift/***/***/60/2024-01-01:20-00/9.ts",
            ),
            (
                "http://p.test:25461/u1/p1/77",
                "http://p.test:25461/***/***/77",
            ),
            ("http://p.test/u1/p1/77.ts", "http://p.test/***/***/77.ts"),
            ("/live/u1/p1/77.ts", "/live/***/***/77.ts"),
        ] {
            assert_eq!(redact_url(url), want, "{url}");
        }
        for plain in [
            "http://cdn.test/hls/1080/index.m3u8",
            "http://cdn.test/a/b/c/123.ts",
            "http://cdn.test/channel/5",
        ] {
            assert_eq!(redact_url(plain), plain);
        }
    }

    #[test]
    fn urls_inside_text_are_masked_up_to_trailing_punctuation() {
        let red = redact_text(
            "Resource not found (http://p.test/u1/s3cr3t/77): also rtsp://a:s3cr3t@cam/x, \
             'https://h/a?token=s3cr3t'.",
        );
        assert!(!red.contains("s3cr3t"), "{red}");
        assert!(red.contains("(http://p.test/***/***/77):"), "{red}");
        assert!(red.contains("rtsp://***@cam/x,"), "{red}");
        assert!(has_credentials("http://u:p@h/x"));
        assert!(!has_credentials("test://smpte?size=1280x720"));
    }

    #[test]
    fn non_ascii_text_around_urls_is_kept_whole() {
        // Found by fuzzing: a multi-byte character right before the scheme.
        assert_eq!(redact_text("t\u{fffd}p://--/"), "t\u{fffd}p://--/");
        assert_eq!(
            redact_text("échec: «http://u:pw@h/x» ✓"),
            "échec: «http://***@h/x» ✓"
        );
    }

    #[test]
    fn secret_headers_are_recognised() {
        for h in [
            "Cookie",
            "Authorization",
            "X-Api-Key",
            "X-Auth-Token",
            "Proxy-Authorization",
        ] {
            assert!(is_secret_header(h), "{h}");
        }
        for h in ["User-Agent", "Referer", "Origin"] {
            assert!(!is_secret_header(h), "{h}");
        }
    }

    #[test]
    fn text_with_urls_is_masked() {
        let msg =
            "Could not open resource for reading: http://bob:pw@h.test/live/bob/pw/1.ts (refused)";
        let red = redact_text(msg);
        assert!(!red.contains("pw"), "{red}");
        assert!(red.contains("(refused)"));
        assert_eq!(redact_text("no urls here"), "no urls here");
    }
}
