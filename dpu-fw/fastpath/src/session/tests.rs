extern crate std;
use std::collections::HashMap;
use std::vec::Vec;

use chaingate_shared::{FlowKey, IpProtocol, Nanos};
use core::net::Ipv4Addr;
use proptest::prelude::*;

use super::*;
use crate::wire::tcp::TcpFlags;

fn key(i: u32) -> FlowKey {
    FlowKey::v4(
        Ipv4Addr::from_bits(0x0A00_0000 + i),
        Ipv4Addr::new(192, 0, 2, 1),
        IpProtocol::Udp,
        1000,
        53,
    )
}

fn session(k: &FlowKey, now: Nanos) -> Session {
    Session::new(k, Uplink::Lan, SessionAction::Bypass, now)
}

fn add(t: &mut SessionTable, k: &FlowKey, hash: u64, now: Nanos) -> Result<SessionId, TableFull> {
    t.insert(hash, session(k, now), |_, _| {})
}

#[test]
fn both_directions_find_the_session() {
    let mut t = SessionTable::new(64, Admission::Refuse);
    let k = FlowKey::v4(
        Ipv4Addr::new(10, 0, 0, 9),
        Ipv4Addr::new(10, 0, 0, 1),
        IpProtocol::Tcp,
        5555,
        80,
    );
    let (n, dir, h) = k.normalised_with_hash();
    let id = add(&mut t, &k, h, Nanos(0)).unwrap();
    let (rn, rdir, rh) = k.reversed().normalised_with_hash();
    assert_eq!((rn, rh), (n, h));
    assert_ne!(rdir, dir);
    assert_eq!(t.find(&rn, rh), Some(id));
    let s = t.get(id).unwrap();
    assert!(s.from_opener(dir) && !s.from_opener(rdir));
    assert_eq!(s.origin(), Uplink::Lan);
}

#[derive(Clone, Debug)]
enum Op {
    Insert(u32),
    Remove(u32),
}

proptest! {
    /// Against a HashMap, with hashes squeezed into few values so that
    /// probe chains are long, collide and wrap around the index.
    #[test]
    fn agrees_with_a_map_under_heavy_collisions(
        ops in proptest::collection::vec(prop_oneof![(0u32..48).prop_map(Op::Insert), (0u32..48).prop_map(Op::Remove)], 1..400),
        spread in 1u64..6,
    ) {
        let mut t = SessionTable::new(32, Admission::Refuse);
        let mut model: HashMap<u32, SessionId> = HashMap::new();
        let hash = |i: u32| (u64::from(i) % spread).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x3F;
        for op in ops {
            match op {
                Op::Insert(i) if !model.contains_key(&i) => {
                    match add(&mut t, &key(i), hash(i), Nanos(0)) {
                        Ok(id) => { model.insert(i, id); }
                        Err(TableFull) => prop_assert_eq!(model.len(), 32),
                    }
                }
                Op::Insert(_) => {}
                Op::Remove(i) => {
                    if let Some(id) = model.remove(&i) {
                        prop_assert_eq!(t.remove(id).map(|s| *s.key()), Some(key(i).normalised().0));
                    }
                }
            }
            prop_assert_eq!(t.len(), model.len());
            for i in 0..48u32 {
                let k = key(i).normalised().0;
                prop_assert_eq!(t.find(&k, hash(i)), model.get(&i).copied(), "key {}", i);
            }
        }
        // The burst lookup agrees with the single one.
        let keys: Vec<(FlowKey, u64)> = (0..48u32).map(|i| (key(i).normalised().0, hash(i))).collect();
        let mut out = [None; 48];
        t.find_burst(&keys, &mut out);
        for (i, o) in out.iter().enumerate() {
            prop_assert_eq!(*o, model.get(&(i as u32)).copied());
        }
    }
}

#[test]
fn ended_sessions_leave_stale_ids_behind() {
    let mut t = SessionTable::new(4, Admission::Refuse);
    let k = key(1).normalised().0;
    let id = add(&mut t, &k, 7, Nanos(0)).unwrap();
    assert!(t.remove(id).is_some());
    assert!(t.remove(id).is_none());
    assert!(t.get(id).is_none());
    let again = add(&mut t, &k, 7, Nanos(0)).unwrap();
    assert_ne!(again, id, "a reused slot has a new generation");
    assert!(t.get(id).is_none() && t.get(again).is_some());
}

#[test]
fn a_full_table_refuses_or_evicts_the_oldest_idle() {
    let mut t = SessionTable::new(8, Admission::Refuse);
    for i in 0..8 {
        add(&mut t, &key(i), u64::from(i), Nanos(0)).unwrap();
    }
    assert_eq!(add(&mut t, &key(9), 9, Nanos(0)), Err(TableFull));
    assert_eq!(t.stats().refused, 1);

    let mut t = SessionTable::new(8, Admission::EvictOldestIdle);
    let mut ids = Vec::new();
    for i in 0..8u32 {
        ids.push(
            add(
                &mut t,
                &key(i),
                u64::from(i),
                Nanos::from_secs(u64::from(i) + 1),
            )
            .unwrap(),
        );
    }
    // Session 3 is the most idle: everyone else is touched later.
    for (i, id) in ids.iter().enumerate() {
        if i != 3 {
            t.get_mut(*id)
                .unwrap()
                .touch(Nanos::from_secs(100), TcpFlags(0), true, true);
        }
    }
    let mut evicted = None;
    let new = t
        .insert(99, session(&key(99), Nanos::from_secs(101)), |id, s| {
            evicted = Some((id, *s.key()));
        })
        .unwrap();
    assert_eq!(evicted, Some((ids[3], key(3).normalised().0)));
    assert!(t.get(ids[3]).is_none() && t.get(new).is_some());
    assert_eq!((t.len(), t.stats().evicted), (8, 1));
}

#[test]
fn idle_sessions_expire_by_protocol_and_state_in_bounded_sweeps() {
    let mut t = SessionTable::new(16, Admission::Refuse);
    let timeouts = Timeouts::default();
    let udp = add(&mut t, &key(1), 1, Nanos(0)).unwrap();
    let tcp_key = FlowKey::v4(
        Ipv4Addr::new(10, 0, 0, 1),
        Ipv4Addr::new(10, 0, 0, 2),
        IpProtocol::Tcp,
        1,
        2,
    );
    let tcp = t.insert(2, session(&tcp_key, Nanos(0)), |_, _| {}).unwrap();
    let s = t.get_mut(tcp).unwrap();
    s.touch(Nanos(0), TcpFlags::SYN, true, true);
    s.touch(Nanos(0), TcpFlags::SYN | TcpFlags::ACK, false, true);
    assert_eq!(s.conn(), ConnState::Established);

    let mut ended = Vec::new();
    // At 61 s UDP (60 s) is over, established TCP (300 s) is not.
    t.expire(Nanos::from_secs(61), &timeouts, 16, |id, _| ended.push(id));
    assert_eq!(ended, [udp]);
    // A FIN from each side: closing, 15 s.
    let s = t.get_mut(tcp).unwrap();
    s.touch(Nanos::from_secs(70), TcpFlags::FIN, true, true);
    s.touch(Nanos::from_secs(70), TcpFlags::FIN, false, true);
    t.expire(Nanos::from_secs(80), &timeouts, 16, |id, _| ended.push(id));
    assert_eq!(ended.len(), 1);
    // A small budget visits a few slots per call; the sweep goes round.
    let mut rounds = 0;
    while ended.len() < 2 {
        t.expire(Nanos::from_secs(86), &timeouts, 3, |id, _| ended.push(id));
        rounds += 1;
        assert!(rounds <= 6);
    }
    assert_eq!(ended[1], tcp);
    assert_eq!(t.stats().expired, 2);
}

#[test]
fn memory_per_session_stays_under_128_bytes() {
    let t = SessionTable::new(1 << 20, Admission::Refuse);
    let bytes = t.bytes_per_session();
    std::println!(
        "memory per session: {bytes} bytes (slot {} + index share)",
        size_of::<Slot>()
    );
    assert!(bytes <= 128, "{bytes}");
}

#[test]
fn slot_ranges_walk_the_table_in_parts() {
    let mut t = SessionTable::new(64, Admission::Refuse);
    let ids: Vec<SessionId> = (0..40)
        .map(|i| add(&mut t, &key(i), u64::from(i) * 0x9E37_79B9, Nanos(0)).unwrap())
        .collect();
    t.remove(ids[3]).unwrap();
    let whole: Vec<SessionId> = t.ids().collect();
    assert_eq!(whole.len(), 39);
    let mut parts = Vec::new();
    let mut at = 0;
    while at < t.capacity() {
        parts.extend(t.iter_slots(at..at + 7).map(|(id, _)| id));
        at += 7;
    }
    assert_eq!(parts, whole, "parts in order make the whole");
    assert_eq!(t.iter_slots(t.capacity()..usize::MAX).count(), 0);
    let (hi, lo) = (10, 5);
    assert_eq!(t.iter_slots(hi..lo).count(), 0, "a backwards range");
}
