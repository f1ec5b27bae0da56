//! The catalog a first start creates.

use std::collections::BTreeMap;

use super::stream::assign_numbers;
use super::{now_rfc3339, Stream};

/// The offline demo catalog created on first start: sluice's own `test://`
/// sources, so a new user can preview at once with no network.
pub fn demo_streams() -> Vec<Stream> {
    let now = now_rfc3339();
    let mk = |id: &str, name: &str, url: &str| Stream {
        id: id.into(),
        name: name.into(),
        url: url.into(),
        backup_urls: vec![],
        group: Some("Demo".into()),
        logo: None,
        tvg_id: Some(id.into()),
        provider: None,
        number: None,
        headers: BTreeMap::new(),
        attributes: BTreeMap::new(),
        enabled: true,
        created_at: now.clone(),
        updated_at: now.clone(),
    };
    let mut demo = vec![
        mk(
            "demo-smpte",
            "SMPTE bars 1080p30 with tone",
            "test://smpte?size=1920x1080&rate=30",
        ),
        mk(
            "demo-ball",
            "Bouncing ball 720p25",
            "test://ball?size=1280x720&rate=25&freq=660",
        ),
        mk(
            "demo-snow",
            "Snow 480p30",
            "test://snow?size=854x480&rate=30&audio=silence",
        ),
        mk(
            "demo-video-only",
            "Colour bars, no audio 720p30",
            "test://smpte75?size=1280x720&rate=30&audio=none",
        ),
    ];
    assign_numbers(&mut demo);
    demo
}
