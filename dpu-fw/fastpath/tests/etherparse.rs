//! Cross-check against an independent parser: for thousands of generated
//! frames of every kind, the flow key (addresses, protocol, ports or echo
//! identifier, VLAN stack) must be what etherparse reads from the same
//! bytes (see `support/etherparse.rs` for how it is read).

mod support;

use chaingate_fastpath::wire::parse;
use support::etherparse::etherparse_key;
use support::{Rng, sample};

#[test]
fn keys_match_etherparse_on_every_kind_of_frame() {
    let mut rng = Rng::new(0x00E7_4E12);
    let mut kinds = std::collections::HashMap::new();
    for i in 0..8_000 {
        let s = sample(&mut rng);
        let parsed = parse(&s.bytes).unwrap_or_else(|e| panic!("frame {i}: {e}"));
        let (theirs, inner) = etherparse_key(&s.bytes).expect("etherparse reads it");
        assert_eq!(
            parsed.key(),
            Some(&theirs),
            "frame {i} {:?}: {:02x?}",
            s.kind,
            s.bytes
        );
        match inner {
            Some(inner) => {
                let (theirs, _) = etherparse_key(inner).expect("etherparse reads the inner frame");
                assert_eq!(parsed.inner_key(), Some(&theirs), "inner of frame {i}");
            }
            None => assert!(parsed.inner().is_none(), "frame {i}"),
        }
        *kinds
            .entry(format!("{:?}/{}", s.kind, s.inner.is_some()))
            .or_insert(0) += 1;
    }
    // Every kind was exercised, tunnels included.
    assert!(kinds.len() >= 9, "{kinds:?}");
    assert!(kinds.values().all(|&n| n >= 20), "{kinds:?}");
}
