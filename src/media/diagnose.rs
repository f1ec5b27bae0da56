//! Explains a network source failure in words a user can act on. GStreamer's
//! HTTP source reports a refused connection or an HTTP 404 only as "Internal
//! data stream error"; a short direct check of the server tells which it was.
//! Messages name host and port only, never paths or credentials.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// A reason for `uri` failing, if a direct check finds one.
pub async fn explain(uri: &str) -> Option<String> {
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
    let mut sock =
        match tokio::time::timeout(CHECK_TIMEOUT, tokio::net::TcpStream::connect(&target)).await {
            Err(_) => return Some(format!("connecting to {target} timed out")),
            Ok(Err(e)) => {
                return Some(format!(
                    "cannot connect to {target}: {}",
                    plain_io_error(&e)
                ))
            }
            Ok(Ok(s)) => s,
        };
    if scheme != "http" {
        return None;
    }
    let path = match url.query() {
        Some(q) => format!("{}?{}", url.path(), q),
        None => url.path().to_string(),
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: sluice\r\n\r\n"
    );
    let status = async {
        sock.write_all(request.as_bytes()).await.ok()?;
        let mut buf = vec![0u8; 256];
        let n = sock.read(&mut buf).await.ok()?;
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        head.lines().next().map(str::to_string)
    };
    match tokio::time::timeout(CHECK_TIMEOUT, status).await {
        Ok(Some(line)) => {
            let mut parts = line.splitn(3, ' ');
            let _version = parts.next();
            let code: u16 = parts.next()?.parse().ok()?;
            let text = parts.next().unwrap_or("").trim();
            (code >= 400).then(|| {
                format!("{target} answered HTTP {code} {text}")
                    .trim_end()
                    .to_string()
            })
        }
        Ok(None) => Some(format!("{target} closed the connection without answering")),
        Err(_) => Some(format!(
            "{target} accepted the connection but did not answer"
        )),
    }
}

fn plain_io_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::TimedOut => "timed out".into(),
        _ => e.to_string(),
    }
}
