//! Fuzzes credential redaction: any text, never a panic; and a secret put
//! in any credential position of a URL never survives `redact_url` or
//! `redact_text`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::redact::{redact_text, redact_url};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = redact_url(&text);
    let _ = redact_text(&text);

    // Structured: the first line is a host/path, the second a secret.
    let mut parts = text.splitn(3, '\n');
    let (Some(host), Some(secret)) = (parts.next(), parts.next()) else {
        return;
    };
    let ok = |s: &str, min: usize| {
        s.len() >= min
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    };
    const TEMPLATES: &str = "http://user:@/s.ts https:///get.php?username=u&password=&type=m3u \
        /a.m3u8?token= /live/user//123.ts /user//123 error opening : refused ***";
    // Trailing punctuation reads as the end of a sentence in free text, so
    // a secret is taken to start and end with a letter or digit.
    let edges = |s: &str| {
        s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    if !ok(host, 1)
        || !ok(secret, 6)
        || !edges(secret)
        || host.contains(secret)
        || TEMPLATES.contains(secret)
    {
        return;
    }
    for url in [
        format!("http://user:{secret}@{host}/s.ts"),
        format!("https://{host}/get.php?username=u&password={secret}&type=m3u"),
        format!("https://{host}/a.m3u8?token={secret}"),
        format!("http://{host}/live/user/{secret}/123.ts"),
        format!("http://{host}/user/{secret}/123"),
    ] {
        let red = redact_url(&url);
        assert!(!red.contains(secret), "{url} -> {red}");
        let red = redact_text(&format!("error opening {url}: refused"));
        assert!(!red.contains(secret), "{url} -> {red}");
    }
});
