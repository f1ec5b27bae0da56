//! Explains a network source failure in words a user can act on. GStreamer's
//! HTTP source reports a refused connection or an HTTP 404 only as "Internal
//! data stream error"; a short direct check of the server tells which it was.
//! HTTP(S) sources are asked with the same HTTP client sluice uses elsewhere
//! and with the stream's own headers (a server that wants a token or a
//! Referer answers differently without them); other network sources get a
//! TCP connect. Messages name host and port only, never paths or credentials.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// A reason for `uri` failing, if a direct check finds one. `headers` are
/// the stream's HTTP headers, sent on the check as on the source's requests.
pub async fn explain(uri: &str, headers: &BTreeMap<String, String>) -> Option<String> {
    let url = url::Url::parse(uri).ok()?;
    let scheme = url.scheme();
    let tcp = matches!(
        scheme,
        "http" | "https" | "rtsp" | "rtsps" | "rtmp" | "rtmps"
    );
    if !tcp {
        return None;
    }
    let host = url.host_str()?.to_string();
    let port = url.port_or_known_default().or(match scheme {
        "rtsp" => Some(554),
        "rtsps" => Some(322),
        "rtmp" => Some(1935),
        "rtmps" => Some(443),
        _ => None,
    })?;
    let target = format!("{host}:{port}");
    if matches!(scheme, "http" | "https") {
        return http_status(url, &target, headers).await;
    }
    match tokio::time::timeout(CHECK_TIMEOUT, tokio::net::TcpStream::connect(&target)).await {
        Err(_) => Some(format!("connecting to {target} timed out")),
        Ok(Err(e)) => Some(format!(
            "cannot connect to {target}: {}",
            plain_io_error(&e)
        )),
        Ok(Ok(_)) => None,
    }
}

/// The request headers of a check: the stream's, minus any that are not
/// valid HTTP (the source element would not send those either).
fn header_map(headers: &BTreeMap<String, String>) -> HeaderMap {
    headers
        .iter()
        .filter_map(|(k, v)| {
            Some((
                HeaderName::from_bytes(k.as_bytes()).ok()?,
                HeaderValue::from_str(v).ok()?,
            ))
        })
        .collect()
}

/// Asks an HTTP(S) source for its status; a reason when it is an error or
/// the server cannot be asked.
async fn http_status(
    url: url::Url,
    target: &str,
    headers: &BTreeMap<String, String>,
) -> Option<String> {
    let client = reqwest::Client::builder()
        .connect_timeout(CHECK_TIMEOUT)
        .timeout(CHECK_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(5))
        .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
        .build()
        .ok()?;
    // Only the status line and headers are read; the body is never asked for.
    let sent = client.get(url).headers(header_map(headers)).send().await;
    match sent {
        Ok(resp) => {
            let status = resp.status();
            (status.as_u16() >= 400).then(|| {
                format!(
                    "{target} answered HTTP {} {}",
                    status.as_u16(),
                    status.canonical_reason().unwrap_or("")
                )
                .trim_end()
                .to_string()
            })
        }
        Err(e) if e.is_connect() => Some(match io_cause(&e) {
            Some(io) => format!("cannot connect to {target}: {}", plain_io_error(io)),
            None if e.is_timeout() => format!("connecting to {target} timed out"),
            None => format!("cannot connect to {target}: {}", innermost(&e)),
        }),
        Err(e) if e.is_timeout() => Some(format!(
            "{target} accepted the connection but did not answer"
        )),
        Err(e) if e.is_request() || e.is_body() => {
            Some(format!("{target} closed the connection without answering"))
        }
        Err(e) => Some(format!("{target}: {}", innermost(&e))),
    }
}

/// The I/O error under a reqwest error, if there is one.
fn io_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        cur = err.source();
    }
    None
}

/// The deepest cause's text (reqwest's own says only "error sending request").
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn plain_io_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::TimedOut => "timed out".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_that_are_not_http_are_left_out() {
        let headers = BTreeMap::from([
            ("Referer".to_string(), "https://tv.example/".to_string()),
            ("X-Token".to_string(), "abc".to_string()),
            ("Bad Name".to_string(), "x".to_string()),
            ("X-Newline".to_string(), "a\nb".to_string()),
        ]);
        let map = header_map(&headers);
        assert_eq!(map.len(), 2);
        assert_eq!(map["referer"], "https://tv.example/");
        assert_eq!(map["x-token"], "abc");
    }
}
