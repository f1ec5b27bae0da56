//! Fuzzes the M3U parser: any text, never a panic; every entry and error
//! points at a real line, and entries come in line order.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let lines = text.split('\n').count();
    let mut last = 0;
    for item in sluice::m3u::parse(&text) {
        let line = match &item {
            Ok(entry) => {
                assert!(!entry.url.is_empty());
                assert!(entry.name.chars().count() <= sluice::m3u::MAX_NAME_CHARS);
                entry.line
            }
            Err(e) => e.line,
        };
        assert!((1..=lines).contains(&line), "line {line} of {lines}");
        assert!(line >= last, "out of order");
        last = line;
    }
});
