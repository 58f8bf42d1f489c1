//! Any bytes as a frame: the parser must not panic, must locate errors
//! inside the frame, must give both directions of a key the same hash, and
//! the writers must not panic on whatever the parser accepted.

#![no_main]

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use chaingate_fastpath::wire::rewrite::{self, End};
use chaingate_fastpath::wire::{FrameBuf, parse, parse_snapped};
use chaingate_fastpath::wire::{EtherType, Tci};
use chaingate_shared::VlanId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_snapped(data);
    let parsed = match parse(data) {
        Ok(p) => p,
        Err(e) => {
            assert!(e.offset() <= data.len());
            return;
        }
    };
    for layers in [Some(parsed.outer()), parsed.inner()].into_iter().flatten() {
        assert!(layers.end() <= data.len());
        if let Some(key) = layers.key() {
            assert_eq!(key.symmetric_hash(), key.reversed().symmetric_hash());
        }
        let mut frame = data.to_vec();
        let addr = if matches!(layers.network(), chaingate_fastpath::wire::Network::Ipv6(_)) {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        } else {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        };
        let _ = rewrite::set_addr(&mut frame, layers, End::Src, addr);
        let _ = rewrite::set_port(&mut frame, layers, End::Dst, 4242);
        let _ = rewrite::set_echo_ident(&mut frame, layers, 7);
    }
    let mut buf = vec![0u8; data.len() + 8];
    buf[4..4 + data.len()].copy_from_slice(data);
    if let Ok(mut fb) = FrameBuf::new(&mut buf, 4, data.len()) {
        let _ = fb.push_vlan(EtherType::Vlan, Tci::new(1, false, VlanId::from_tci(7)));
        let _ = fb.set_outer_vid(VlanId::from_tci(9));
        let _ = fb.pop_vlan();
        let _ = fb.pop_vlan();
    }
});
