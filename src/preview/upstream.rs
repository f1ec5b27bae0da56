//! The upstream side of a request: the channel it joins or opens under
//! its provider's connection limit, switching away from a channel only
//! this client watches when the limit is reached; and the URLs it opens.

use std::net::IpAddr;
use std::sync::Arc;

use crate::channels::{Channel, ChannelUse};
use crate::media::ingest::SourcePlan;
use crate::media::source::SourceUri;
use crate::media::EndReason;
use crate::AppState;

use super::{PreviewError, PreviewRequest, Wanted, SWITCH_WAIT};

/// The channel the request uses: joined when it runs; else opened under
/// its provider's limit, switching away from a channel of that provider
/// only this client watches (or nobody does) when the limit is reached.
pub(super) async fn channel(
    state: &Arc<AppState>,
    req: &PreviewRequest,
    wanted: &Wanted,
    deadline: tokio::time::Instant,
) -> Result<ChannelUse, PreviewError> {
    let s = &wanted.stream;
    let plan = || source_plan(state, s, wanted.source.clone(), &wanted.profile);
    let first = state
        .channels
        .join_or_create(&s.id, &s.name, &wanted.protocol(), || {
            let lease = state
                .providers
                .try_open(s)
                .map_err(PreviewError::ProviderBusy)?;
            Ok((plan(), lease))
        });
    let busy = match first {
        Err(PreviewError::ProviderBusy(busy)) => busy,
        other => return other,
    };
    match switchable(state, req.client_ip, &busy.id) {
        Some(victim) => {
            tracing::info!(stream_id = %s.id, from = %victim.stream_id, provider = %busy.id, client_ip = %req.client_ip, "switching channels: the provider is at its limit");
            victim.stop(EndReason::Switched);
        }
        // A channel that just ended (a client reopening what it closed) is
        // closing its connection: wait for it rather than refuse.
        None if state.providers.closing(&busy.id) > 0 => {}
        None => {
            tracing::info!(stream_id = %s.id, provider = %busy.id, limit = busy.limit, client_ip = %req.client_ip, "provider at its limit");
            return Err(PreviewError::ProviderBusy(busy));
        }
    }
    // The stopped channel gives its connection back once its pipeline is
    // down: the provider never sees both at once.
    let wait = deadline.min(tokio::time::Instant::now() + SWITCH_WAIT);
    let lease = state
        .providers
        .open_within(s, wait)
        .await
        .map_err(PreviewError::ProviderBusy)?;
    state
        .channels
        .join_or_create(&s.id, &s.name, &wanted.protocol(), || Ok((plan(), lease)))
}

/// A channel of `provider` that can make way: one whose viewers are all
/// `client`'s (the oldest first), else one nobody watches; never one a
/// request is still joining.
fn switchable(state: &AppState, client: IpAddr, provider: &str) -> Option<Arc<Channel>> {
    let client = client.to_string();
    let sessions = state.registry.all();
    let mut unwatched = None;
    for ch in state.channels.of_provider(provider) {
        if ch.pending_requests() > 0 || ch.ended().is_some() {
            continue;
        }
        let viewers: Vec<_> = sessions
            .iter()
            .filter(|e| e.stream_id == ch.stream_id)
            .collect();
        if viewers.is_empty() {
            if ch.renditions().iter().all(|r| r.viewers() == 0) {
                unwatched.get_or_insert(ch);
            }
        } else if viewers.iter().all(|e| e.client_ip == client) {
            return Some(ch);
        }
    }
    unwatched
}

/// The primary URL, then each usable backup URL, with the stream's headers,
/// the profile's bitrate as the variant hint for HLS/DASH, and the
/// configured reconnect budget.
fn source_plan(
    state: &AppState,
    stream: &crate::catalog::Stream,
    primary: SourceUri,
    profile: &crate::profiles::Profile,
) -> SourcePlan {
    let mut uris = vec![primary];
    for url in &stream.backup_urls {
        match SourceUri::parse(url, state.catalog.media_dir()) {
            Ok(u) => uris.push(u),
            Err(e) => {
                tracing::warn!(stream_id = %stream.id, error = %e, "backup URL skipped")
            }
        }
    }
    SourcePlan {
        uris,
        headers: stream.headers.clone(),
        // A quarter of headroom: variant bitrates count container overhead.
        connection_speed_kbps: (u64::from(profile.video_bitrate)
            + u64::from(profile.audio_bitrate))
            * 5
            / 4,
        reconnect_budget: state.settings.reconnect_timeout(),
    }
}
