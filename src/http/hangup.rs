//! Notices a client hanging up while its request is still being handled.
//! hyper only learns of a closed connection when it next reads or writes,
//! so a preview that is queued or still starting would run on for a client
//! that is gone. A duplicate of the socket, only ever peeked at, tells.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

/// A peek-only view of a connection's socket.
#[derive(Clone)]
pub struct HangupWatch(Arc<TcpStream>);

/// Splits `tcp` into the stream hyper serves and a watch on the same socket.
pub fn watch(tcp: TcpStream) -> std::io::Result<(TcpStream, Option<HangupWatch>)> {
    let std = tcp.into_std()?;
    let dup = std.try_clone().and_then(TcpStream::from_std).ok();
    Ok((
        TcpStream::from_std(std)?,
        dup.map(|d| HangupWatch(Arc::new(d))),
    ))
}

impl HangupWatch {
    /// Resolves when the peer has closed (or reset) the connection. If the
    /// peer sends more data instead (a pipelined request), it never resolves.
    pub async fn closed(&self) {
        let mut byte = [0u8; 1];
        loop {
            if self.0.readable().await.is_err() {
                return;
            }
            match self.0.peek(&mut byte).await {
                Ok(0) | Err(_) => return,
                Ok(_) => std::future::pending::<()>().await,
            }
        }
    }

    /// Reads and drops whatever the peer still sends, for at most `limit`
    /// or until it closes: closing a socket with unread input resets the
    /// connection, which can destroy an early answer before the client
    /// reads it.
    pub async fn linger(&self, limit: Duration) {
        let drain = async {
            let mut buf = [0u8; 8192];
            loop {
                if self.0.readable().await.is_err() {
                    return;
                }
                match self.0.try_read(&mut buf) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        };
        let _ = tokio::time::timeout(limit, drain).await;
    }
}
