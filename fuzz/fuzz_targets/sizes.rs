//! Fuzzes the setting parsers: sizes (`512MB`, `1.5GiB`), rates (`30/15min`)
//! and CORS origin lists. Never a panic; accepted values are sane.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::http::cors::CorsOrigins;
use sluice::http::ratelimit::Rate;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(bytes) = sluice::config::parse_size(&text) {
        assert!(bytes >= 1);
    }
    if let Ok(Rate::Limit { count, period }) = Rate::parse(&text) {
        assert!(count >= 1 && !period.is_zero());
    }
    // An origin list and an origin from the same input, split at a newline.
    let (list, origin) = text
        .split_once('\n')
        .unwrap_or((&text, "https://a.example.com"));
    if let Ok(origins) = CorsOrigins::parse(list) {
        let allowed = origins.allows(origin);
        if allowed {
            assert!(origin.contains("://"), "{origin:?}");
        }
    }
});
