//! `firewall`: a stateful packet filter.
//!
//! Rules decide the first packet of a connection; the connection is then
//! tracked (both directions, one entry) and its later packets pass without
//! the rules, replies included. A TCP connection must begin with a SYN
//! (without ACK): any other first packet is invalid and dropped. A TCP RST
//! ends the connection; entries idle longer than their timeout (TCP 300 s,
//! others 60 s) are forgotten, and the table is bounded (the oldest goes).
//!
//! Rules, first match wins, from `--rule` (repeatable) or `--rules FILE`
//! (one per line, `#` comments), then `--default` (allow unless told):
//!
//! ```text
//! deny tcp to 192.0.2.0/24 port 23
//! allow udp from 10.0.0.0/8 port 53
//! deny from 2001:db8::/32
//! allow icmp
//! ```
//!
//! `port` is the destination port (`N` or `N-M`), `sport` the source port;
//! a protocol is `tcp`, `udp`, `icmp`, `icmpv6` or a number.

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use chaingate_fastpath::wire::parse;
use chaingate_shared::{FlowKey, IpProtocol};

use crate::wire::{Function, Verdict};

/// Most connections tracked.
pub const TABLE: usize = 65_536;

/// An address prefix.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    /// Whether `ip` is in it.
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(p), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(p) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(p), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(p) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Prefix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{s}` is not an address or prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = if len.is_empty() {
            max
        } else {
            len.parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("`{s}`: bad prefix length"))?
        };
        Ok(Self { addr, len })
    }
}

/// What a rule does.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Action {
    /// Pass, and track the connection.
    Allow,
    /// Drop.
    Deny,
}

/// One rule.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Rule {
    action: Action,
    proto: Option<IpProtocol>,
    from: Option<Prefix>,
    to: Option<Prefix>,
    sport: Option<(u16, u16)>,
    dport: Option<(u16, u16)>,
}

fn ports(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("`{s}` is not a port or a range N-M");
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    let (lo, hi) = (
        lo.parse::<u16>().map_err(|_| bad())?,
        hi.parse::<u16>().map_err(|_| bad())?,
    );
    if lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

impl FromStr for Rule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut words = s.split_whitespace().peekable();
        let action = match words.next() {
            Some("allow") => Action::Allow,
            Some("deny") => Action::Deny,
            _ => return Err(format!("`{s}`: a rule starts with allow or deny")),
        };
        let proto = match words.peek().copied() {
            Some("tcp") => Some(IpProtocol::Tcp),
            Some("udp") => Some(IpProtocol::Udp),
            Some("icmp") => Some(IpProtocol::Icmp),
            Some("icmpv6") => Some(IpProtocol::Icmpv6),
            Some(n) if n.parse::<u8>().is_ok() => {
                Some(IpProtocol::from(n.parse::<u8>().unwrap_or(0)))
            }
            _ => None,
        };
        if proto.is_some() {
            words.next();
        }
        let mut rule = Self {
            action,
            proto,
            from: None,
            to: None,
            sport: None,
            dport: None,
        };
        while let Some(key) = words.next() {
            let value = words
                .next()
                .ok_or_else(|| format!("`{s}`: `{key}` needs a value"))?;
            match key {
                "from" => rule.from = Some(value.parse()?),
                "to" => rule.to = Some(value.parse()?),
                "port" => rule.dport = Some(ports(value)?),
                "sport" => rule.sport = Some(ports(value)?),
                other => {
                    return Err(format!(
                        "`{s}`: unknown word `{other}` (from, to, port, sport)"
                    ));
                }
            }
        }
        Ok(rule)
    }
}

impl Rule {
    fn matches(&self, key: &FlowKey) -> bool {
        let within =
            |r: Option<(u16, u16)>, p: u16| r.is_none_or(|(lo, hi)| (lo..=hi).contains(&p));
        self.proto.is_none_or(|p| p == key.proto())
            && self.from.is_none_or(|p| p.contains(key.src()))
            && self.to.is_none_or(|p| p.contains(key.dst()))
            && within(self.sport, key.src_port())
            && within(self.dport, key.dst_port())
    }
}

/// Reads rules: one per line, `#` starts a comment.
///
/// # Errors
/// The line number and what is wrong.
pub fn parse_rules(text: &str) -> Result<Vec<Rule>, String> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i, l.split('#').next().unwrap_or("").trim()))
        .filter(|(_, l)| !l.is_empty())
        .map(|(i, l)| l.parse().map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

#[derive(Clone, Copy, Debug)]
struct Conn {
    last: Instant,
    tcp: bool,
}

/// The firewall function.
#[derive(Debug)]
pub struct Firewall {
    rules: Vec<Rule>,
    default: Action,
    conns: HashMap<FlowKey, Conn>,
    /// Connections denied by a rule.
    pub denied: u64,
    /// First packets that cannot begin a connection.
    pub invalid: u64,
}

impl Firewall {
    /// A firewall with `rules` and a `default` for what none matches.
    #[must_use]
    pub fn new(rules: Vec<Rule>, default: Action) -> Self {
        Self {
            rules,
            default,
            conns: HashMap::new(),
            denied: 0,
            invalid: 0,
        }
    }

    /// Connections tracked now.
    #[must_use]
    pub fn tracked(&self) -> usize {
        self.conns.len()
    }

    /// Decides one frame at `now`.
    pub fn decide(&mut self, frame: &[u8], now: Instant) -> Verdict {
        // What is not IP (ARP, ...) is not the firewall's business.
        let Ok(parsed) = parse(frame) else {
            return Verdict::Drop;
        };
        let layers = parsed.outer();
        let Some(key) = layers.key() else {
            return Verdict::Pass;
        };
        let tcp_flags = (key.proto() == IpProtocol::Tcp)
            .then(|| {
                layers
                    .transport_offset()
                    .and_then(|at| frame.get(at + 13))
                    .copied()
            })
            .flatten();
        // The outer tag is the DPU's segment tag, one per hop and
        // direction: a connection's answers come back under another one.
        let (norm, _) = key.with_vlans(key.vlans().without_outer()).normalised();
        if let Some(c) = self.conns.get_mut(&norm) {
            let timeout = if c.tcp {
                Duration::from_secs(300)
            } else {
                Duration::from_secs(60)
            };
            if now.duration_since(c.last) <= timeout {
                c.last = now;
                if tcp_flags.is_some_and(|f| f & 0x04 != 0) {
                    self.conns.remove(&norm);
                }
                return Verdict::Pass;
            }
            self.conns.remove(&norm);
        }
        // A new connection: TCP must open with SYN, no ACK.
        if let Some(flags) = tcp_flags
            && flags & 0x12 != 0x02
        {
            self.invalid += 1;
            return Verdict::Drop;
        }
        let action = self
            .rules
            .iter()
            .find(|r| r.matches(key))
            .map_or(self.default, |r| r.action);
        if action == Action::Deny {
            self.denied += 1;
            return Verdict::Drop;
        }
        if self.conns.len() >= TABLE
            && let Some(oldest) = self
                .conns
                .iter()
                .min_by_key(|(_, c)| c.last)
                .map(|(k, _)| *k)
        {
            self.conns.remove(&oldest);
        }
        self.conns.insert(
            norm,
            Conn {
                last: now,
                tcp: tcp_flags.is_some(),
            },
        );
        Verdict::Pass
    }
}

impl Function for Firewall {
    fn process(&mut self, frame: &mut [u8]) -> Verdict {
        self.decide(frame, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet + IPv4 + TCP/UDP frame, by hand.
    fn frame(proto: IpProtocol, src: ([u8; 4], u16), dst: ([u8; 4], u16), flags: u8) -> Vec<u8> {
        let tcp = proto == IpProtocol::Tcp;
        let l4_len = if tcp { 20 } else { 8 };
        let payload = b"payload";
        let total = 20 + l4_len + payload.len();
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&u16::try_from(total).unwrap().to_be_bytes());
        ip[8] = 64;
        ip[9] = if tcp { 6 } else { 17 };
        ip[12..16].copy_from_slice(&src.0);
        ip[16..20].copy_from_slice(&dst.0);
        let sum = chaingate_fastpath::wire::checksum::finish(
            chaingate_fastpath::wire::checksum::sum(&ip),
        );
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&src.1.to_be_bytes());
        f.extend_from_slice(&dst.1.to_be_bytes());
        if tcp {
            let mut rest = [0u8; 16];
            rest[8] = 0x50;
            rest[9] = flags;
            f.extend_from_slice(&rest);
        } else {
            f.extend_from_slice(&u16::try_from(8 + payload.len()).unwrap().to_be_bytes());
            f.extend_from_slice(&[0, 0]);
        }
        f.extend_from_slice(payload);
        f
    }

    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    const SYNACK: u8 = 0x12;
    const RST: u8 = 0x04;

    #[test]
    fn rules_parse_and_refuse_nonsense() {
        let rules = parse_rules(
            "# web only\ndeny tcp to 192.0.2.0/24 port 23\nallow udp from 10.0.0.0/8 port 53-54\n",
        )
        .unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].dport, Some((23, 23)));
        for (bad, want) in [
            ("permit tcp", "starts with allow or deny"),
            ("deny tcp port", "needs a value"),
            ("deny tcp port 9-1", "not a port"),
            ("deny to 10.0.0.0/33", "bad prefix length"),
            ("deny via x", "unknown word `via`"),
        ] {
            let e = parse_rules(bad).unwrap_err();
            assert!(e.starts_with("line 1:") && e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn replies_pass_because_the_connection_was_allowed() {
        let rules = parse_rules("allow tcp port 80\n").unwrap();
        let mut fw = Firewall::new(rules, Action::Deny);
        let t = Instant::now();
        let c = ([10, 0, 0, 1], 40000);
        let s = ([192, 0, 2, 80], 80);
        assert_eq!(
            fw.decide(&frame(IpProtocol::Tcp, c, s, SYN), t),
            Verdict::Pass
        );
        // The reply matches no rule (source port 80), but is tracked.
        assert_eq!(
            fw.decide(&frame(IpProtocol::Tcp, s, c, SYNACK), t),
            Verdict::Pass
        );
        assert_eq!(
            fw.decide(&frame(IpProtocol::Tcp, c, s, ACK), t),
            Verdict::Pass
        );
        assert_eq!(fw.tracked(), 1);
        // Another port: denied by default.
        assert_eq!(
            fw.decide(&frame(IpProtocol::Tcp, c, ([192, 0, 2, 80], 22), SYN), t),
            Verdict::Drop
        );
        assert_eq!(fw.denied, 1);
        // RST ends it; the next non-SYN is invalid.
        assert_eq!(
            fw.decide(&frame(IpProtocol::Tcp, s, c, RST), t),
            Verdict::Pass
        );
        assert_eq!(
            fw.decide(&frame(IpProtocol::Tcp, c, s, ACK), t),
            Verdict::Drop
        );
        assert_eq!(fw.invalid, 1);
    }

    /// `f` with an 802.1Q tag `vid` after the MAC addresses.
    fn tagged(f: &[u8], vid: u16) -> Vec<u8> {
        let mut t = f[..12].to_vec();
        t.extend_from_slice(&0x8100u16.to_be_bytes());
        t.extend_from_slice(&vid.to_be_bytes());
        t.extend_from_slice(&f[12..]);
        t
    }

    #[test]
    fn replies_under_another_segment_tag_are_the_same_connection() {
        let mut fw = Firewall::new(parse_rules("allow tcp port 80\n").unwrap(), Action::Deny);
        let t = Instant::now();
        let c = ([10, 0, 0, 1], 40000);
        let s = ([192, 0, 2, 80], 80);
        // The DPU tags lan-to-wan traffic of this hop 100, the answers 101.
        let syn = tagged(&frame(IpProtocol::Tcp, c, s, SYN), 100);
        assert_eq!(fw.decide(&syn, t), Verdict::Pass);
        let synack = tagged(&frame(IpProtocol::Tcp, s, c, SYNACK), 101);
        assert_eq!(fw.decide(&synack, t), Verdict::Pass);
        assert_eq!((fw.tracked(), fw.invalid), (1, 0));
    }

    #[test]
    fn first_match_wins_and_idle_connections_expire() {
        let rules = parse_rules("deny udp from 10.0.0.66\nallow udp from 10.0.0.0/24\n").unwrap();
        let mut fw = Firewall::new(rules, Action::Deny);
        let t = Instant::now();
        let dns = ([192, 0, 2, 53], 53);
        assert_eq!(
            fw.decide(&frame(IpProtocol::Udp, ([10, 0, 0, 66], 5000), dns, 0), t),
            Verdict::Drop
        );
        assert_eq!(
            fw.decide(&frame(IpProtocol::Udp, ([10, 0, 0, 7], 5000), dns, 0), t),
            Verdict::Pass
        );
        // A reply after 61 s idle is a new connection from outside: denied.
        let late = t + Duration::from_secs(61);
        assert_eq!(
            fw.decide(&frame(IpProtocol::Udp, dns, ([10, 0, 0, 7], 5000), 0), late),
            Verdict::Drop
        );
        assert_eq!(fw.tracked(), 0);
    }
}
