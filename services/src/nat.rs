//! `nat`: source NAT with port allocation, and the reverse translation.
//!
//! A packet from an address `--inside` to one outside gets the source
//! address `--to` and a port from `--ports` (TCP and UDP; the echo
//! identifier for ICMP echo), the same one for every packet of that
//! (protocol, source address, source port). A packet to `--to` whose
//! destination port is a mapping's gets the original address and port back.
//! Checksums are updated incrementally with the fast path's writers. Idle
//! mappings expire (TCP 300 s, others 60 s) and their ports return to the
//! pool; with the pool empty a new flow is dropped and counted.
//!
//! IPv4 only; other packets, and ICMP other than echo (an error's quote is
//! not translated), pass untouched.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use chaingate_fastpath::wire::rewrite::{End, set_addr, set_echo_ident, set_port};
use chaingate_fastpath::wire::{Network, parse};
use chaingate_shared::IpProtocol;

use crate::firewall::Prefix;
use crate::wire::{Function, Verdict};

type Inside = (IpProtocol, Ipv4Addr, u16);

#[derive(Clone, Copy, Debug)]
struct Mapping {
    port: u16,
    last: Instant,
}

/// The NAT function.
#[derive(Debug)]
pub struct Nat {
    inside: Prefix,
    outside: Ipv4Addr,
    ports: (u16, u16),
    out: HashMap<Inside, Mapping>,
    back: HashMap<(IpProtocol, u16), Inside>,
    next: u16,
    /// New flows dropped for want of a port.
    pub exhausted: u64,
}

impl Nat {
    /// A NAT from `inside` to the address `outside`, with ports in
    /// `ports` (inclusive).
    #[must_use]
    pub fn new(inside: Prefix, outside: Ipv4Addr, ports: (u16, u16)) -> Self {
        Self {
            inside,
            outside,
            ports,
            out: HashMap::new(),
            back: HashMap::new(),
            next: ports.0,
            exhausted: 0,
        }
    }

    /// Mappings now.
    #[must_use]
    pub fn mappings(&self) -> usize {
        self.out.len()
    }

    fn timeout(proto: IpProtocol) -> Duration {
        if proto == IpProtocol::Tcp {
            Duration::from_secs(300)
        } else {
            Duration::from_secs(60)
        }
    }

    /// A port for a new flow: the next free one of the pool, after
    /// forgetting idle mappings once if the pool is full.
    fn allocate(&mut self, proto: IpProtocol, now: Instant) -> Option<u16> {
        let size = u32::from(self.ports.1 - self.ports.0) + 1;
        for sweep in [false, true] {
            if sweep {
                let idle: Vec<Inside> = self
                    .out
                    .iter()
                    .filter(|(k, m)| now.duration_since(m.last) > Self::timeout(k.0))
                    .map(|(k, _)| *k)
                    .collect();
                for k in idle {
                    if let Some(m) = self.out.remove(&k) {
                        self.back.remove(&(k.0, m.port));
                    }
                }
            }
            for _ in 0..size {
                let port = self.next;
                self.next = if port >= self.ports.1 {
                    self.ports.0
                } else {
                    port + 1
                };
                if !self.back.contains_key(&(proto, port)) {
                    return Some(port);
                }
            }
        }
        None
    }

    /// Translates one frame in place at `now`.
    pub fn decide(&mut self, frame: &mut [u8], now: Instant) -> Verdict {
        let Ok(parsed) = parse(frame) else {
            return Verdict::Pass;
        };
        let layers = *parsed.outer();
        let (Network::Ipv4(_), Some(key)) = (layers.network(), layers.key().copied()) else {
            return Verdict::Pass;
        };
        let (IpAddr::V4(src), IpAddr::V4(dst)) = (key.src(), key.dst()) else {
            return Verdict::Pass;
        };
        let proto = key.proto();
        // The field that carries the flow: the port, or the echo identifier
        // (the parser puts it in the source port for echo).
        let echo = proto == IpProtocol::Icmp;
        // ICMPv4 echo request (8) or reply (0); other ICMP passes as it is.
        let is_echo = || {
            layers
                .transport_offset()
                .and_then(|at| frame.get(at))
                .is_some_and(|t| *t == 8 || *t == 0)
        };
        let ported = matches!(proto, IpProtocol::Tcp | IpProtocol::Udp);
        if !(ported || echo && is_echo()) {
            return Verdict::Pass;
        }
        let inside_src = self.inside.contains(IpAddr::V4(src));
        if inside_src && !self.inside.contains(IpAddr::V4(dst)) {
            let flow = (proto, src, key.src_port());
            let port = match self.out.get_mut(&flow) {
                Some(m) => {
                    m.last = now;
                    m.port
                }
                None => {
                    let Some(port) = self.allocate(proto, now) else {
                        self.exhausted += 1;
                        return Verdict::Drop;
                    };
                    self.out.insert(flow, Mapping { port, last: now });
                    self.back.insert((proto, port), flow);
                    port
                }
            };
            let field = if echo {
                set_echo_ident(frame, &layers, port)
            } else {
                set_port(frame, &layers, End::Src, port)
            };
            if field
                .and_then(|()| set_addr(frame, &layers, End::Src, IpAddr::V4(self.outside)))
                .is_err()
            {
                return Verdict::Drop;
            }
            return Verdict::Pass;
        }
        if dst == self.outside {
            // Echo replies carry the identifier where the request had it.
            let port = if echo { key.src_port() } else { key.dst_port() };
            let Some(&(_, addr, orig)) = self.back.get(&(proto, port)) else {
                return Verdict::Pass;
            };
            if let Some(m) = self.out.get_mut(&(proto, addr, orig)) {
                m.last = now;
            }
            let field = if echo {
                set_echo_ident(frame, &layers, orig)
            } else {
                set_port(frame, &layers, End::Dst, orig)
            };
            if field
                .and_then(|()| set_addr(frame, &layers, End::Dst, IpAddr::V4(addr)))
                .is_err()
            {
                return Verdict::Drop;
            }
        }
        Verdict::Pass
    }
}

impl Function for Nat {
    fn process(&mut self, frame: &mut [u8]) -> Verdict {
        self.decide(frame, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chaingate_fastpath::wire::checksum;

    /// Ethernet + IPv4 + UDP with correct checksums.
    fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) -> Vec<u8> {
        let udp_len = 8 + payload.len();
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&u16::try_from(20 + udp_len).unwrap().to_be_bytes());
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&src.0.octets());
        ip[16..20].copy_from_slice(&dst.0.octets());
        let sum = checksum::finish(checksum::sum(&ip));
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        f.extend_from_slice(&ip);
        let mut l4 = Vec::new();
        l4.extend_from_slice(&src.1.to_be_bytes());
        l4.extend_from_slice(&dst.1.to_be_bytes());
        l4.extend_from_slice(&u16::try_from(udp_len).unwrap().to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
        l4.extend_from_slice(payload);
        let len = u16::try_from(udp_len).unwrap();
        let sum = checksum::finish(
            checksum::pseudo_header_v4(src.0, dst.0, IpProtocol::Udp, len) + checksum::sum(&l4),
        );
        l4[6..8].copy_from_slice(&sum.to_be_bytes());
        f.extend_from_slice(&l4);
        f
    }

    /// The addresses and ports of a frame, and whether both checksums hold.
    fn read(f: &[u8]) -> ((Ipv4Addr, u16), (Ipv4Addr, u16), bool) {
        let ip = &f[14..34];
        let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        let l4 = &f[34..];
        let len = u16::try_from(l4.len()).unwrap();
        let ok = checksum::verifies(checksum::sum(ip))
            && checksum::verifies(
                checksum::pseudo_header_v4(src, dst, IpProtocol::Udp, len) + checksum::sum(l4),
            );
        let port = |at: usize| u16::from_be_bytes([l4[at], l4[at + 1]]);
        ((src, port(0)), (dst, port(2)), ok)
    }

    const PUBLIC: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    const SERVER: (Ipv4Addr, u16) = (Ipv4Addr::new(192, 0, 2, 53), 53);

    fn nat(ports: (u16, u16)) -> Nat {
        Nat::new("10.0.0.0/8".parse().unwrap(), PUBLIC, ports)
    }

    #[test]
    fn out_and_back_with_checksums_right() {
        let mut n = nat((20_000, 20_099));
        let t = Instant::now();
        let client = (Ipv4Addr::new(10, 1, 2, 3), 5555);
        let mut f = udp(client, SERVER, b"query");
        assert_eq!(n.decide(&mut f, t), Verdict::Pass);
        let (src, dst, ok) = read(&f);
        assert_eq!((src, dst, ok), ((PUBLIC, 20_000), SERVER, true));
        // The same flow keeps its port; another flow gets the next one.
        let mut again = udp(client, SERVER, b"again");
        n.decide(&mut again, t);
        assert_eq!(read(&again).0, (PUBLIC, 20_000));
        let mut other = udp((Ipv4Addr::new(10, 1, 2, 4), 5555), SERVER, b"x");
        n.decide(&mut other, t);
        assert_eq!(read(&other).0, (PUBLIC, 20_001));
        // The reply goes back to the client.
        let mut reply = udp(SERVER, (PUBLIC, 20_000), b"answer");
        assert_eq!(n.decide(&mut reply, t), Verdict::Pass);
        assert_eq!(read(&reply), (SERVER, client, true));
        // A packet to an unmapped port is left alone.
        let stray = udp(SERVER, (PUBLIC, 20_050), b"?");
        let mut s = stray.clone();
        n.decide(&mut s, t);
        assert_eq!(s, stray);
    }

    #[test]
    fn an_empty_pool_drops_new_flows_until_mappings_expire() {
        let mut n = nat((30_000, 30_001));
        let t = Instant::now();
        for i in 1..=2 {
            let mut f = udp((Ipv4Addr::new(10, 0, 0, i), 1000), SERVER, b"x");
            assert_eq!(n.decide(&mut f, t), Verdict::Pass);
        }
        let mut third = udp((Ipv4Addr::new(10, 0, 0, 3), 1000), SERVER, b"x");
        assert_eq!(n.decide(&mut third, t), Verdict::Drop);
        assert_eq!(n.exhausted, 1);
        // A minute and a bit later the first two are idle: their ports return.
        let later = t + Duration::from_secs(61);
        let mut third = udp((Ipv4Addr::new(10, 0, 0, 3), 1000), SERVER, b"x");
        assert_eq!(n.decide(&mut third, later), Verdict::Pass);
        assert_eq!(n.mappings(), 1);
    }

    #[test]
    fn inside_to_inside_and_outside_to_outside_pass_untouched() {
        let mut n = nat((40_000, 40_010));
        let t = Instant::now();
        let inner = udp(
            (Ipv4Addr::new(10, 0, 0, 1), 1),
            (Ipv4Addr::new(10, 0, 0, 2), 2),
            b"x",
        );
        let mut f = inner.clone();
        n.decide(&mut f, t);
        assert_eq!(f, inner);
        let outer = udp(SERVER, (Ipv4Addr::new(203, 0, 113, 9), 9), b"x");
        let mut f = outer.clone();
        n.decide(&mut f, t);
        assert_eq!(f, outer);
    }
}
