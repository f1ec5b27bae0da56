//! SSDP announcements of the emulated tuner (`HDHR_SSDP=true`), so media
//! servers on the LAN find it by themselves: sluice joins
//! 239.255.255.250:1900, answers `M-SEARCH` for
//! `urn:schemas-upnp-org:device:MediaServer:1`, `upnp:rootdevice`,
//! `ssdp:all` or its own `uuid:`, with the `device.xml` location, sends
//! `NOTIFY ssdp:alive` at start (and again every [`RENOTIFY`]) and
//! `ssdp:byebye` at shutdown.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket as StdUdpSocket};
use std::os::fd::FromRawFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::watch;

pub const GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 255, 250);
pub const PORT: u16 = 1900;
pub const DEVICE_TYPE: &str = "urn:schemas-upnp-org:device:MediaServer:1";
/// How long announcements are valid (CACHE-CONTROL max-age).
pub const MAX_AGE: Duration = Duration::from_secs(1800);
/// Alive announcements are repeated well within [`MAX_AGE`].
pub const RENOTIFY: Duration = Duration::from_secs(600);

/// What the announcements say about the device.
#[derive(Debug, Clone)]
pub struct Announce {
    pub device_id: String,
    /// `HDHR_BASE_URL`, else `None`: `http://<listen address>:<port>`, or
    /// with a wildcard listen address, the address of the interface that
    /// reaches the searcher.
    pub base_url: Option<String>,
    /// The HTTP listen address.
    pub addr: SocketAddr,
}

impl Announce {
    fn usn(&self, target: &str) -> String {
        let uuid = format!("uuid:{}", self.device_id);
        if target == uuid {
            uuid
        } else {
            format!("{uuid}::{target}")
        }
    }

    /// The device.xml location as seen from `peer` (the address of the
    /// interface that reaches it, when no base URL is configured).
    fn location(&self, peer: SocketAddr) -> String {
        let base = match &self.base_url {
            Some(b) => b.clone(),
            None if !self.addr.ip().is_unspecified() => format!("http://{}", self.addr),
            None => {
                let ip = StdUdpSocket::bind("0.0.0.0:0")
                    .and_then(|s| s.connect(peer).and_then(|_| s.local_addr()))
                    .map(|a| a.ip())
                    .ok()
                    .filter(|ip| !ip.is_unspecified())
                    .unwrap_or(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST));
                format!("http://{}", SocketAddr::new(ip, self.addr.port()))
            }
        };
        format!("{base}/device.xml")
    }

    fn notify(&self, nts: &str) -> String {
        let group = SocketAddr::V4(SocketAddrV4::new(GROUP, PORT));
        let location = if nts == "ssdp:alive" {
            format!("LOCATION: {}\r\n", self.location(group))
        } else {
            String::new()
        };
        format!(
            "NOTIFY * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nCACHE-CONTROL: max-age={}\r\n{location}NT: {DEVICE_TYPE}\r\nNTS: {nts}\r\nSERVER: {}\r\nUSN: {}\r\n\r\n",
            MAX_AGE.as_secs(),
            server(),
            self.usn(DEVICE_TYPE)
        )
    }

    /// The unicast answer to an `M-SEARCH`, or `None` when it does not ask
    /// for this device.
    pub fn answer(&self, request: &str, peer: SocketAddr) -> Option<String> {
        let mut lines = request.split("\r\n").flat_map(|l| l.split('\n'));
        let first = lines.next()?.trim();
        if !first.eq_ignore_ascii_case("M-SEARCH * HTTP/1.1") {
            return None;
        }
        let mut st = None;
        let mut man = false;
        for line in lines {
            if let Some((k, v)) = line.split_once(':') {
                let v = v.trim();
                match k.trim().to_ascii_uppercase().as_str() {
                    "ST" => st = Some(v.to_string()),
                    "MAN" => man = v.trim_matches('"').eq_ignore_ascii_case("ssdp:discover"),
                    _ => {}
                }
            }
        }
        let st = st?;
        let uuid = format!("uuid:{}", self.device_id);
        let target = match st.as_str() {
            "ssdp:all" | DEVICE_TYPE => DEVICE_TYPE,
            "upnp:rootdevice" => "upnp:rootdevice",
            s if s.eq_ignore_ascii_case(&uuid) => uuid.as_str(),
            _ => return None,
        };
        if !man {
            return None;
        }
        Some(format!(
            "HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age={}\r\nEXT:\r\nLOCATION: {}\r\nSERVER: {}\r\nST: {target}\r\nUSN: {}\r\n\r\n",
            MAX_AGE.as_secs(),
            self.location(peer),
            server(),
            self.usn(target)
        ))
    }
}

fn server() -> String {
    format!("Linux UPnP/1.0 sluice/{}", env!("CARGO_PKG_VERSION"))
}

/// A UDP socket on 0.0.0.0:1900 that other SSDP listeners on the host may
/// share (SO_REUSEADDR), in the multicast group.
fn bind() -> std::io::Result<StdUdpSocket> {
    // SAFETY: plain socket(2)/setsockopt(2) calls on a descriptor this
    // function owns; it is handed to `StdUdpSocket`, which closes it.
    let sock = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let sock = StdUdpSocket::from_raw_fd(fd);
        let one: libc::c_int = 1;
        for opt in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
            if libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: PORT.to_be(),
            sin_addr: libc::in_addr { s_addr: 0 },
            sin_zero: [0; 8],
        };
        if libc::bind(
            fd,
            &addr as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        sock
    };
    sock.join_multicast_v4(&GROUP, &Ipv4Addr::UNSPECIFIED)?;
    sock.set_multicast_loop_v4(true)?;
    sock.set_nonblocking(true)?;
    Ok(sock)
}

/// The running announcer; [`Announcer::stop`] says goodbye.
pub struct Announcer {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Announcer {
    /// Joins the group and announces the device. A failure (port 1900 held
    /// without SO_REUSEADDR, no multicast route) is returned for the caller
    /// to log: the tuner still works when added by address.
    pub fn start(announce: Announce) -> std::io::Result<Announcer> {
        let sock = Arc::new(UdpSocket::from_std(bind()?)?);
        let (stop, mut stopped) = watch::channel(false);
        let group = SocketAddr::V4(SocketAddrV4::new(GROUP, PORT));
        let task = tokio::spawn(async move {
            let mut renotify = tokio::time::interval(RENOTIFY);
            let mut buf = vec![0u8; 2048];
            loop {
                tokio::select! {
                    _ = renotify.tick() => {
                        if let Err(e) = sock.send_to(announce.notify("ssdp:alive").as_bytes(), group).await {
                            tracing::warn!(error = %e, "SSDP alive announcement failed");
                        }
                    }
                    r = sock.recv_from(&mut buf) => {
                        let Ok((n, peer)) = r else { continue };
                        let text = String::from_utf8_lossy(&buf[..n]);
                        if let Some(reply) = announce.answer(&text, peer) {
                            tracing::debug!(%peer, "SSDP search answered");
                            let _ = sock.send_to(reply.as_bytes(), peer).await;
                        }
                    }
                    _ = stopped.changed() => {
                        let _ = sock.send_to(announce.notify("ssdp:byebye").as_bytes(), group).await;
                        return;
                    }
                }
            }
        });
        Ok(Announcer { stop, task })
    }

    /// Sends `ssdp:byebye` and stops answering.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announce() -> Announce {
        Announce {
            device_id: "1010A7BD".into(),
            base_url: Some("http://nas.lan:3000".into()),
            addr: "0.0.0.0:3000".parse().unwrap(),
        }
    }

    #[test]
    fn searches_for_the_device_are_answered_with_its_location() {
        let peer: SocketAddr = "192.0.2.7:50000".parse().unwrap();
        let search = |st: &str| {
            format!("M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\nMX: 1\r\nST: {st}\r\n\r\n")
        };
        for (st, target) in [
            ("ssdp:all", DEVICE_TYPE),
            (DEVICE_TYPE, DEVICE_TYPE),
            ("upnp:rootdevice", "upnp:rootdevice"),
        ] {
            let a = announce().answer(&search(st), peer).expect(st);
            assert!(a.starts_with("HTTP/1.1 200 OK\r\n"), "{a}");
            assert!(
                a.contains("\r\nLOCATION: http://nas.lan:3000/device.xml\r\n"),
                "{a}"
            );
            assert!(a.contains(&format!("\r\nST: {target}\r\n")), "{a}");
            assert!(
                a.contains(&format!("\r\nUSN: uuid:1010A7BD::{target}\r\n")),
                "{a}"
            );
        }
        let a = announce().answer(&search("uuid:1010A7BD"), peer).unwrap();
        assert!(a.contains("\r\nUSN: uuid:1010A7BD\r\n"), "{a}");
        assert!(announce()
            .answer(&search("urn:schemas-upnp-org:device:Printer:1"), peer)
            .is_none());
        assert!(
            announce()
                .answer("M-SEARCH * HTTP/1.1\r\nST: ssdp:all\r\n\r\n", peer)
                .is_none(),
            "no MAN: ssdp:discover"
        );
        assert!(announce()
            .answer("NOTIFY * HTTP/1.1\r\n\r\n", peer)
            .is_none());
    }

    #[test]
    fn notifications_say_alive_with_a_location_and_byebye_without() {
        let alive = announce().notify("ssdp:alive");
        assert!(alive.starts_with("NOTIFY * HTTP/1.1\r\n"));
        assert!(alive.contains("\r\nNTS: ssdp:alive\r\n"));
        assert!(alive.contains("\r\nLOCATION: http://nas.lan:3000/device.xml\r\n"));
        let bye = announce().notify("ssdp:byebye");
        assert!(bye.contains("\r\nNTS: ssdp:byebye\r\n"));
        assert!(!bye.contains("LOCATION"));
        let local = Announce {
            base_url: None,
            ..announce()
        };
        let loc = local.location("127.0.0.1:1900".parse().unwrap());
        assert_eq!(loc, "http://127.0.0.1:3000/device.xml");
        let bound = Announce {
            base_url: None,
            addr: "192.0.2.5:8080".parse().unwrap(),
            ..announce()
        };
        assert_eq!(
            bound.location("127.0.0.1:1900".parse().unwrap()),
            "http://192.0.2.5:8080/device.xml",
            "the listen address when it is not a wildcard"
        );
    }
}
