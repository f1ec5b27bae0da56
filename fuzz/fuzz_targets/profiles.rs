//! Fuzzes the quality profile loader: any TOML-ish text, never a panic;
//! errors are messages, accepted files have valid profile names.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match sluice::profiles::Profiles::parse(&text) {
        Ok(profiles) => {
            for name in profiles.names() {
                assert!(sluice::profiles::valid_name(&name), "{name}");
            }
        }
        Err(message) => assert!(!message.is_empty()),
    }
});
