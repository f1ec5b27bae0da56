//! The web page (SPEC §6 "Web"): `GET /` plus its assets (`/assets/*.js`
//! modules and `/assets/app.css`), embedded in the binary so there is
//! no build step, no CDN and nothing to install next to the server; and
//! `GET /api/profiles`, the quality profiles the page offers in its picker.
//! The page itself only talks to the public JSON/SSE/preview routes; this
//! module owns no state and never touches the catalog or the media engine.

use std::sync::Arc;

use http::{HeaderValue, StatusCode};
use serde::Serialize;
use warp::{Filter, Rejection};

use super::error::ApiError;
use super::json;
use crate::AppState;

const INDEX_HTML: &str = include_str!("../../assets/index.html");

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// `/assets/<name>`: the page's script modules and stylesheet.
const ASSETS: &[(&str, &str, &str)] = &[
    ("app.js", include_str!("../../assets/app.js"), JS),
    ("util.js", include_str!("../../assets/util.js"), JS),
    ("catalog.js", include_str!("../../assets/catalog.js"), JS),
    (
        "channelview.js",
        include_str!("../../assets/channelview.js"),
        JS,
    ),
    ("player.js", include_str!("../../assets/player.js"), JS),
    ("format.js", include_str!("../../assets/format.js"), JS),
    (
        "dashboard.js",
        include_str!("../../assets/dashboard.js"),
        JS,
    ),
    ("app.css", include_str!("../../assets/app.css"), CSS),
];

/// Scripts and styles only from this server; media from this server or the
/// page's own MediaSource blobs; logos from anywhere (catalogs point at
/// provider CDNs) and snapshots the page fetched itself (blobs), but never
/// scripts, frames or plugins from elsewhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src * data: blob:; media-src 'self' blob:; connect-src 'self'; \
     object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One profile as the quality picker shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ProfileView<'a> {
    name: &'a str,
    width: u32,
    height: u32,
    /// kbit/s
    video_bitrate: u32,
    /// kbit/s
    audio_bitrate: u32,
}

#[derive(Debug, Serialize)]
struct ProfilesDoc<'a> {
    profiles: Vec<ProfileView<'a>>,
    default: &'a str,
}

/// An embedded text asset with its type; revalidated on every load so a
/// new binary's page is never mixed with an old cached script.
fn asset(body: &'static str, content_type: &'static str) -> warp::reply::Response {
    let mut res = warp::reply::Response::new(body.into());
    let h = res.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    res
}

fn page() -> warp::reply::Response {
    let mut res = asset(INDEX_HTML, "text/html; charset=utf-8");
    let h = res.headers_mut();
    h.insert(
        http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        http::header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        http::header::X_FRAME_OPTIONS,
        HeaderValue::from_static("DENY"),
    );
    res
}

/// GET, or HEAD for uptime checkers (hyper sends no body for HEAD).
fn get_or_head() -> impl Filter<Extract = (), Error = Rejection> + Copy {
    warp::get().or(warp::head()).unify()
}

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let index = super::routes::INDEX.path().and(get_or_head()).map(page);
    let assets = super::routes::ASSET
        .with_param()
        .and(get_or_head())
        .and_then(|name: String| async move {
            ASSETS
                .iter()
                .find(|(n, _, _)| *n == name)
                .map(|(_, body, ty)| asset(body, ty))
                .ok_or_else(|| {
                    warp::reject::custom(ApiError::not_found("not_found", "no such asset"))
                })
        });
    let profiles = super::routes::PROFILES
        .path()
        .and(warp::get())
        .map(move || {
            let doc = ProfilesDoc {
                profiles: state
                    .profiles
                    .all()
                    .iter()
                    .map(|p| ProfileView {
                        name: &p.name,
                        width: p.width,
                        height: p.height,
                        video_bitrate: p.video_bitrate,
                        audio_bitrate: p.audio_bitrate,
                    })
                    .collect(),
                default: &state.settings.default_quality,
            };
            json(&doc, StatusCode::OK)
        });
    index.or(assets).unify().or(profiles).unify()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `/assets/...` the page names and every module a script imports
    /// is served, so the page never loads with a missing piece.
    #[test]
    fn every_referenced_asset_is_served() {
        let served = |name: &str| ASSETS.iter().any(|(n, _, _)| *n == name);
        let mut referenced = Vec::new();
        for part in INDEX_HTML.split("\"/assets/").skip(1) {
            referenced.push(part.split('"').next().unwrap_or_default().to_string());
        }
        for (_, body, _) in ASSETS {
            for part in body.split("from './").skip(1) {
                referenced.push(part.split('\'').next().unwrap_or_default().to_string());
            }
        }
        assert!(referenced.iter().any(|r| r == "app.js"));
        assert!(referenced.iter().any(|r| r == "player.js"));
        for r in &referenced {
            assert!(served(r), "{r} is referenced but not served");
        }
        for (name, _, _) in ASSETS {
            assert!(
                referenced.iter().any(|r| r == name),
                "{name} is served but nothing loads it"
            );
        }
    }

    /// Catalog strings must never be parsed as HTML by the page.
    #[test]
    fn scripts_never_parse_html() {
        for (name, body, _) in ASSETS {
            for banned in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
            ] {
                assert!(!body.contains(banned), "{name} uses {banned}");
            }
        }
    }
}
