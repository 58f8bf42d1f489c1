//! The capture reader against the formats as tcpdump, Wireshark and
//! dumpcap write them, and against damaged files: it reads what is there,
//! says where a file is broken, and never panics or trusts a length.

use dpu_fw::capture::{CaptureError, CaptureReader, CaptureWriter, LINKTYPE_ETHERNET, MAX_RECORD};
use proptest::prelude::*;
use support::{Ng, pcap};

mod support;

/// One record as read: (link type, interface, data, original length).
type Rec = (u16, u32, Vec<u8>, u32);

/// Every record of a capture.
fn records(bytes: &[u8]) -> Result<Vec<Rec>, CaptureError> {
    let mut r = CaptureReader::new(bytes)?;
    let mut out = Vec::new();
    while let Some(rec) = r.next_record()? {
        out.push((
            rec.link_type,
            rec.interface,
            rec.data.to_vec(),
            rec.orig_len,
        ));
    }
    Ok(out)
}

const F1: &[u8] = &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
const F2: &[u8] = &[0xAA; 61];

#[test]
fn pcap_in_both_byte_orders_and_precisions() {
    for big in [false, true] {
        for nanos in [false, true] {
            let file = pcap(big, nanos, 1, &[(F1, 15), (F2, 1500)]);
            let recs = records(&file).unwrap();
            assert_eq!(
                recs,
                vec![(1, 0, F1.to_vec(), 15), (1, 0, F2.to_vec(), 1500)],
                "big {big} nanos {nanos}"
            );
        }
    }
    // The FCS flags in the high half of the link type are not the link type.
    let file = pcap(false, false, 0x1000_0001, &[(F1, 15)]);
    assert_eq!(records(&file).unwrap()[0].0, 1);
}

#[test]
fn pcapng_sections_interfaces_and_packet_blocks() {
    let mut ng = Ng::section(false, Vec::new());
    ng.interface(1)
        .interface(113)
        .enhanced(0, F1, 15)
        .enhanced(1, F2, 61);
    ng.block(0x0000_0BAD, &[1, 2, 3]); // unknown block: skipped
    ng.simple(F2);
    // A second section in the other byte order starts a new interface list.
    let mut ng2 = Ng::section(true, ng.out);
    ng2.interface(1).enhanced(0, F1, 100);
    let recs = records(&ng2.out).unwrap();
    assert_eq!(
        recs,
        vec![
            (1, 0, F1.to_vec(), 15),
            (113, 1, F2.to_vec(), 61),
            (1, 0, F2.to_vec(), 61),
            (1, 0, F1.to_vec(), 100),
        ]
    );
}

#[test]
fn writer_output_reads_back() {
    let mut w = CaptureWriter::new(Vec::new(), LINKTYPE_ETHERNET, 40).unwrap();
    w.write(F1, 1_500_000).unwrap();
    w.write(F2, 1_600_000).unwrap();
    let file = w.finish().unwrap();
    let recs = records(&file).unwrap();
    assert_eq!(recs[0], (1, 0, F1.to_vec(), 15));
    assert_eq!(
        recs[1],
        (1, 0, F2[..40].to_vec(), 61),
        "cut to the snap length"
    );
}

#[test]
fn damaged_files_say_what_and_where() {
    assert!(matches!(
        CaptureReader::new(&b"GIF89a..."[..]),
        Err(CaptureError::NotACapture(_))
    ));
    assert!(matches!(
        CaptureReader::new(&b""[..]),
        Err(CaptureError::NotACapture(_))
    ));
    assert!(matches!(
        CaptureReader::new(&pcap(false, false, 1, &[])[..10]),
        Err(CaptureError::Truncated {
            what: "file header",
            ..
        })
    ));

    // Ends inside the second record.
    let file = pcap(false, false, 1, &[(F1, 15), (F2, 61)]);
    let cut = &file[..file.len() - 5];
    let mut r = CaptureReader::new(cut).unwrap();
    assert!(r.next_record().unwrap().is_some());
    let err = r.next_record().unwrap_err();
    assert!(
        matches!(
            err,
            CaptureError::Truncated {
                what: "record",
                offset: 55
            }
        ),
        "{err}"
    );
    assert_eq!(err.to_string(), "capture ends inside record at byte 55");

    // A record length no capture can have is corruption, not an allocation.
    let mut file = pcap(false, false, 1, &[(F1, 15)]);
    file[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = records(&file).unwrap_err();
    assert!(
        matches!(
            err,
            CaptureError::BadLength {
                what: "record length",
                ..
            }
        ),
        "{err}"
    );

    // pcapng: a block length that is not a multiple of 4.
    let mut ng = Ng::section(false, Vec::new());
    ng.interface(1).enhanced(0, F1, 15);
    let mut bad = ng.out.clone();
    let epb = bad.len() - (12 + 20 + 16);
    bad[epb + 4] = 45;
    let err = records(&bad).unwrap_err();
    assert!(
        matches!(
            err,
            CaptureError::BadLength {
                what: "block length",
                ..
            }
        ),
        "{err}"
    );

    // A packet of an interface never described.
    let mut ng = Ng::section(false, Vec::new());
    ng.interface(1).enhanced(3, F1, 15);
    let err = records(&ng.out).unwrap_err();
    assert!(
        matches!(err, CaptureError::UnknownInterface { interface: 3, .. }),
        "{err}"
    );

    // A captured length beyond its block.
    let mut ng = Ng::section(false, Vec::new());
    ng.interface(1).enhanced(0, F1, 15);
    let mut bad = ng.out.clone();
    let caplen_at = bad.len() - (12 + 20 + 16) + 8 + 12;
    bad[caplen_at..caplen_at + 4].copy_from_slice(&1000u32.to_le_bytes());
    let err = records(&bad).unwrap_err();
    assert!(
        matches!(
            err,
            CaptureError::BadLength {
                what: "captured length",
                ..
            }
        ),
        "{err}"
    );
}

fn valid_files() -> Vec<Vec<u8>> {
    let mut ng = Ng::section(false, Vec::new());
    ng.interface(1)
        .interface(1)
        .enhanced(0, F1, 15)
        .simple(F2)
        .enhanced(1, F2, 9000);
    let ng_big = {
        let mut n = Ng::section(true, Vec::new());
        n.interface(1).enhanced(0, F2, 61);
        n.out
    };
    vec![
        pcap(false, false, 1, &[(F1, 15), (F2, 61)]),
        pcap(true, true, 1, &[(F2, 61)]),
        ng.out,
        ng_big,
    ]
}

proptest! {
    #[test]
    fn damaged_captures_never_panic(
        which in 0usize..4,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut file = valid_files().swap_remove(which);
        for (at, v) in flips {
            let i = at.index(file.len());
            file[i] = v;
        }
        file.truncate(cut.index(file.len() + 1));
        if let Ok(mut r) = CaptureReader::new(&file[..]) {
            let mut n = 0;
            while let Ok(Some(rec)) = r.next_record() {
                prop_assert!(rec.data.len() <= MAX_RECORD);
                n += 1;
                prop_assert!(n < 1000);
            }
        }
    }
}
