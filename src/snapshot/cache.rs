//! Pictures by (stream, width): fresh for the TTL, then kept a while
//! longer to stand in when a new capture cannot be made. Bounded: the
//! oldest pictures go first.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use parking_lot::Mutex;

/// Pictures kept at most (a grid of thumbnails at a few widths).
const MAX_PICTURES: usize = 2_048;
/// How many TTLs an expired picture is kept to stand in for a failed capture.
const STALE_TTLS: u32 = 20;

/// One JPEG and when it was taken.
#[derive(Debug, Clone)]
pub struct Picture {
    pub jpeg: Bytes,
    pub etag: String,
    /// Wall-clock time of the capture.
    pub taken_at: SystemTime,
    /// The source picture's size (width, height), when its caps said.
    pub source_size: Option<(u32, u32)>,
    taken: Instant,
}

impl Picture {
    /// Time since the capture.
    pub fn age(&self) -> Duration {
        self.taken.elapsed()
    }
}

pub(super) struct PictureCache {
    ttl: Duration,
    map: Mutex<HashMap<(String, u32), Picture>>,
}

impl PictureCache {
    pub(super) fn new(ttl: Duration) -> Self {
        PictureCache {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The picture of (stream, width) while younger than the TTL.
    pub(super) fn fresh(&self, stream: &str, width: u32) -> Option<Picture> {
        let map = self.map.lock();
        let p = map.get(&(stream.to_string(), width))?;
        (p.age() < self.ttl).then(|| p.clone())
    }

    /// The last picture of (stream, width), however old.
    pub(super) fn latest(&self, stream: &str, width: u32) -> Option<Picture> {
        self.map.lock().get(&(stream.to_string(), width)).cloned()
    }

    pub(super) fn insert(
        &self,
        stream: &str,
        width: u32,
        jpeg: Bytes,
        taken_at: SystemTime,
        source_size: Option<(u32, u32)>,
    ) -> Picture {
        let picture = Picture {
            etag: super::etag_of(&jpeg),
            jpeg,
            taken_at,
            source_size,
            taken: Instant::now(),
        };
        let mut map = self.map.lock();
        let keep = self.ttl * STALE_TTLS;
        map.retain(|_, p| p.age() < keep);
        if map.len() >= MAX_PICTURES {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, p)| p.taken)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert((stream.to_string(), width), picture.clone());
        picture
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_picture_is_fresh_for_the_ttl_then_only_stands_in() {
        let cache = PictureCache::new(Duration::from_millis(50));
        let p = cache.insert(
            "a",
            320,
            Bytes::from_static(b"jpeg"),
            SystemTime::now(),
            None,
        );
        assert_eq!(cache.fresh("a", 320).unwrap().etag, p.etag);
        assert!(cache.fresh("a", 640).is_none());
        std::thread::sleep(Duration::from_millis(60));
        assert!(cache.fresh("a", 320).is_none());
        assert_eq!(cache.latest("a", 320).unwrap().etag, p.etag);
    }

    #[test]
    fn different_pictures_have_different_tags() {
        let cache = PictureCache::new(Duration::from_secs(1));
        let a = cache.insert(
            "a",
            320,
            Bytes::from_static(b"one"),
            SystemTime::now(),
            None,
        );
        let b = cache.insert(
            "a",
            320,
            Bytes::from_static(b"two"),
            SystemTime::now(),
            None,
        );
        assert_ne!(a.etag, b.etag);
    }

    #[test]
    fn the_oldest_picture_goes_when_the_cache_is_full() {
        let cache = PictureCache::new(Duration::from_secs(60));
        for i in 0..=MAX_PICTURES {
            let jpeg = Bytes::from(format!("picture {i}"));
            cache.insert(&format!("s{i}"), 320, jpeg, SystemTime::now(), None);
        }
        assert!(cache.latest("s0", 320).is_none(), "the oldest went");
        assert!(cache.latest("s1", 320).is_some());
        assert!(cache.latest(&format!("s{MAX_PICTURES}"), 320).is_some());
        assert_eq!(cache.map.lock().len(), MAX_PICTURES);
    }
}
