//! `TRUST_PROXY`: which proxies in front of sluice name the client.

use std::net::IpAddr;

/// Which proxies in front of sluice are believed when they name the client
/// (SPEC §8). The client is the rightmost forwarded address that is not a
/// trusted proxy, as nginx's realip (`real_ip_recursive on`) and Express's
/// `trust proxy` find it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustProxy {
    /// Forwarding headers are ignored: the client is the TCP peer.
    Off,
    /// This many proxies (counted from sluice outwards, the TCP peer first)
    /// are trusted, whatever their addresses.
    Hops(u32),
    /// Proxies at these addresses are trusted.
    Networks(Vec<IpNet>),
}

impl TrustProxy {
    /// Parses `false`, `true` (1 hop), a hop count, or a comma list of
    /// addresses and CIDRs (`10.0.0.0/8,127.0.0.1,fd00::/8`).
    pub fn parse(s: &str) -> Result<TrustProxy, String> {
        const FORM: &str = "expected false, true (1 hop), a hop count such as 2, \
                            or a comma list of proxy addresses/CIDRs such as 10.0.0.0/8,127.0.0.1";
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "false" | "no" | "off" | "0" | "" => return Ok(TrustProxy::Off),
            "true" | "yes" | "on" => return Ok(TrustProxy::Hops(1)),
            _ => {}
        }
        if t.bytes().all(|b| b.is_ascii_digit()) {
            return t
                .parse::<u32>()
                .map(TrustProxy::Hops)
                .map_err(|_| FORM.to_string());
        }
        t.split(',')
            .map(|part| {
                IpNet::parse(part.trim()).ok_or_else(|| format!("'{}': {FORM}", part.trim()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(TrustProxy::Networks)
    }

    /// Whether forwarding headers are looked at at all.
    pub fn enabled(&self) -> bool {
        !matches!(self, TrustProxy::Off)
    }

    /// Whether the address `hop` proxies away from sluice (0: the TCP peer)
    /// is a trusted proxy.
    pub fn trusts(&self, ip: IpAddr, hop: usize) -> bool {
        match self {
            TrustProxy::Off => false,
            TrustProxy::Hops(n) => hop < *n as usize,
            TrustProxy::Networks(nets) => nets.iter().any(|n| n.contains(ip)),
        }
    }
}

/// An address block: `10.0.0.0/8`, `fd00::/8`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `addr/prefix` or a bare address; IPv4-mapped IPv6 becomes IPv4.
    pub fn parse(s: &str) -> Option<IpNet> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().ok()?;
        let mapped = matches!(addr, IpAddr::V6(_)) && addr.to_canonical().is_ipv4();
        let addr = addr.to_canonical();
        let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                let p: u8 = p.parse().ok()?;
                // ::ffff:10.0.0.0/104 is 10.0.0.0/8.
                let p = if mapped { p.checked_sub(96)? } else { p };
                (p <= max).then_some(p)?
            }
            Some(_) => return None,
        };
        Some(IpNet { addr, prefix })
    }

    /// Whether `ip` (canonicalised) lies in the block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}
