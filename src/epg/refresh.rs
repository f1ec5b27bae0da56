//! The guide's background work: fetching it when due (streamed to a file,
//! size-capped), filtering it again when the catalog changes, and
//! publishing each result with its state.

use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::filter::render;
use super::xmltv::unix_now;
use super::{
    write_atomic, Guide, Meta, CATALOG_POLL, FETCH_TIMEOUT, MAX_GUIDE_BYTES, META_FILE, RAW_FILE,
    RENDERED_FILE, RETRY_AFTER,
};
use crate::catalog::Stream;
use crate::redact::{error_chain, redact_text, redact_url};
use crate::AppState;

/// Starts the refresher: fetches when due, filters again when the catalog
/// changes; stops at shutdown.
pub fn spawn(state: Arc<AppState>) {
    tokio::spawn(async move {
        let stop = state.shutdown.clone();
        tokio::select! {
            _ = refresher(state) => {}
            _ = stop.wait() => {}
        }
    });
}

async fn refresher(state: Arc<AppState>) {
    let guide = &state.guide;
    // After a failed fetch or read, no new attempt before this.
    let mut retry_at: Option<SystemTime> = None;
    loop {
        let wanted = guide.wanted_url();
        let meta = guide.meta.read().clone();
        let streams = enabled(&state.catalog.snapshot());
        let print = fingerprint(&streams);
        let now = SystemTime::now();
        let due = fetch_due(wanted.as_deref(), &meta, guide.refresh, retry_at, now);
        if let (true, Some(url)) = (due, wanted.clone()) {
            let outcome = match fetch(&guide.dir, &url).await {
                Ok(bytes) => {
                    let fetched = FetchInfo {
                        url: url.clone(),
                        at: now,
                        bytes,
                    };
                    render_now(guide, streams, print, Some(fetched)).await
                }
                Err(e) => {
                    tracing::warn!(url = %redact_url(&url), error = %e, "fetching the guide failed");
                    if meta.fingerprint != print {
                        let _ = render_now(guide, streams, print, None).await;
                    }
                    let mut m = (**guide.meta.read()).clone();
                    m.status.url = Some(redact_url(&url));
                    m.status.error = Some(e);
                    publish(guide, m, false);
                    Err(())
                }
            };
            retry_at = outcome
                .is_err()
                .then(|| now + RETRY_AFTER.min(guide.refresh));
        } else if meta.fingerprint != print || wanted.is_none() && meta.source.is_some() {
            let _ = render_now(guide, streams, print, None).await;
        }
        tokio::select! {
            _ = guide.wake.notified() => {}
            _ = tokio::time::sleep(CATALOG_POLL) => {}
        }
    }
}

/// Whether the guide must be fetched now: a guide is wanted and either it
/// is not the one cached, or the cached one is `refresh` old; never before
/// `retry_at` (set after a failure).
fn fetch_due(
    wanted: Option<&str>,
    meta: &Meta,
    refresh: Duration,
    retry_at: Option<SystemTime>,
    now: SystemTime,
) -> bool {
    let due = match (wanted, meta.source.as_deref()) {
        (None, _) => false,
        (Some(w), Some(s)) if w == s => meta
            .fetched_at
            .map(|t| UNIX_EPOCH + Duration::from_secs(t) + refresh)
            .is_none_or(|next| next <= now),
        (Some(_), _) => true,
    };
    due && retry_at.is_none_or(|r| r <= now)
}

struct FetchInfo {
    url: String,
    at: SystemTime,
    bytes: u64,
}

/// Filters the raw guide (the fresh download in `fetched`, else the cached
/// one while it is still the wanted guide) for `streams` and publishes the
/// result. On failure the previous render stays (or, when there is none,
/// the catalog's channels are rendered with filler only).
async fn render_now(
    guide: &Guide,
    streams: Vec<Stream>,
    print: u64,
    fetched: Option<FetchInfo>,
) -> Result<(), ()> {
    let dir = guide.dir.clone();
    let old = guide.meta.read().clone();
    let wanted = guide.wanted_url();
    let new_raw = dir.join(format!("{RAW_FILE}.new"));
    let use_raw = fetched.is_some() || (old.source.is_some() && old.source == wanted);
    let raw = match &fetched {
        Some(_) => new_raw.clone(),
        None => dir.join(RAW_FILE),
    };
    let raw = use_raw.then_some(raw).filter(|p| p.is_file());
    let refresh = guide.refresh;
    let for_render = streams;
    let joined = tokio::task::spawn_blocking(move || {
        let now = unix_now();
        let until = now + (refresh + Duration::from_secs(12 * 3600)).as_secs() as i64;
        let out = render(&dir, raw.as_deref(), &for_render, now, until);
        match out {
            Err(e) if old_render_missing(&dir) => {
                // Nothing to fall back on: serve the channels with filler.
                render(&dir, None, &for_render, now, until).map(|o| (o, Some(e)))
            }
            other => other.map(|o| (o, None)),
        }
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    let mut meta = (*old).clone();
    meta.status.url = wanted.as_deref().map(redact_url);
    let rendered = joined.is_ok();
    let result = match joined {
        Ok((out, failure)) => {
            match (&fetched, &failure) {
                (Some(f), None) => {
                    if let Err(e) = std::fs::rename(&new_raw, guide.dir.join(RAW_FILE)) {
                        // The guide is served; a catalog change re-fetches it.
                        tracing::warn!(error = %e, "cannot keep the fetched guide");
                    }
                    meta.source = Some(f.url.clone());
                    meta.fetched_at = f.at.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs());
                    meta.status.last_fetch =
                        Some(humantime::format_rfc3339_seconds(f.at).to_string());
                    meta.status.bytes = f.bytes;
                }
                _ if !use_raw || failure.is_some() => {
                    meta.source = None;
                    meta.fetched_at = None;
                    meta.status.last_fetch = None;
                    meta.status.bytes = 0;
                }
                _ => {}
            }
            meta.status.channels = out.channels;
            meta.status.channels_matched = out.matched;
            meta.status.guide_channels = out.guide_channels;
            meta.status.programmes = out.programmes;
            meta.status.error = failure.clone();
            meta.fingerprint = print;
            meta.filler = out.filler;
            meta.listings = out.listings;
            tracing::info!(
                channels = out.channels,
                matched = out.matched,
                programmes = out.programmes,
                fetched = fetched.is_some(),
                "guide filtered for the catalog"
            );
            if failure.is_some() {
                Err(())
            } else {
                Ok(())
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "the guide could not be read: serving the previous one");
            meta.status.error = Some(e);
            Err(())
        }
    };
    if result.is_err() {
        let _ = std::fs::remove_file(&new_raw);
    }
    publish(guide, meta, rendered);
    result
}

fn old_render_missing(dir: &Path) -> bool {
    !dir.join(RENDERED_FILE).is_file()
}

/// Makes `meta` current; with `rendered`, installs the new rendered file
/// with it (under the same lock, so requests see the file and its filler
/// together).
fn publish(guide: &Guide, meta: Meta, rendered: bool) {
    let body = serde_json::to_vec(&meta);
    {
        let mut slot = guide.meta.write();
        if rendered {
            let tmp = guide.dir.join(format!(".{RENDERED_FILE}.tmp"));
            if let Err(e) = std::fs::rename(&tmp, guide.dir.join(RENDERED_FILE)) {
                tracing::warn!(error = %e, "cannot install the filtered guide");
                return;
            }
        }
        *slot = Arc::new(meta);
    }
    if let Ok(body) = body {
        if let Err(e) = write_atomic(&guide.dir.join(META_FILE), &body) {
            tracing::warn!(error = %e, "cannot save the guide state");
        }
    }
}

/// Downloads `url` to `<dir>/guide.raw.new`; returns the bytes transferred.
async fn fetch(dir: &Path, url: &str) -> Result<u64, String> {
    use tokio::io::AsyncWriteExt;
    let client = reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(Duration::from_secs(15))
        .redirect(reqwest::redirect::Policy::limited(5))
        .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| redact_text(&e.to_string()))?;
    let mut resp = client
        .get(url)
        .header(http::header::ACCEPT_ENCODING, "gzip")
        .send()
        .await
        .map_err(|e| error_chain(&e))?;
    if !resp.status().is_success() {
        return Err(format!("the guide server answered {}", resp.status()));
    }
    if resp.content_length().is_some_and(|n| n > MAX_GUIDE_BYTES) {
        return Err(too_large());
    }
    let tmp = dir.join(format!("{RAW_FILE}.new"));
    let mut file = tokio::fs::File::create(&tmp)
        .await
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    let mut total = 0u64;
    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(error_chain(&e));
            }
        };
        total += chunk.len() as u64;
        if total > MAX_GUIDE_BYTES {
            drop(file);
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(too_large());
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    }
    file.sync_all().await.map_err(|e| e.to_string())?;
    Ok(total)
}

fn too_large() -> String {
    format!(
        "the guide is larger than {} MiB: it was not loaded",
        MAX_GUIDE_BYTES / (1024 * 1024)
    )
}

/// The streams that appear in the guide: the enabled ones.
fn enabled(streams: &[Stream]) -> Vec<Stream> {
    streams.iter().filter(|s| s.enabled).cloned().collect()
}

/// What the rendered guide depends on in the catalog (never 0).
fn fingerprint(streams: &[Stream]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for s in streams {
        (&s.id, &s.name, &s.number, &s.tvg_id, &s.logo).hash(&mut h);
    }
    h.finish().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guide_is_fetched_when_new_or_refresh_old_and_not_before_a_retry() {
        let h = |n: u64| Duration::from_secs(n * 3600);
        let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
        let fetched = Meta {
            source: Some("http://g/a.xml".into()),
            fetched_at: Some(1_000_000),
            ..Meta::default()
        };
        let due = |wanted, meta: &Meta, retry, now| fetch_due(wanted, meta, h(6), retry, now);
        let a = Some("http://g/a.xml");
        // Nothing configured: never.
        assert!(!due(None, &fetched, None, at(9_000_000)));
        // Never fetched, or another URL wanted: at once.
        assert!(due(a, &Meta::default(), None, at(1)));
        assert!(due(Some("http://g/b.xml"), &fetched, None, at(1_000_001)));
        // The cached guide: when EPG_REFRESH has passed since the fetch.
        assert!(!due(
            a,
            &fetched,
            None,
            at(1_000_000) + h(6) - Duration::from_secs(1)
        ));
        assert!(due(a, &fetched, None, at(1_000_000) + h(6)));
        // After a failure, not before the retry time.
        let retry = Some(at(2_000_000));
        assert!(!due(Some("http://g/b.xml"), &fetched, retry, at(1_999_999)));
        assert!(due(Some("http://g/b.xml"), &fetched, retry, at(2_000_000)));
    }
}
