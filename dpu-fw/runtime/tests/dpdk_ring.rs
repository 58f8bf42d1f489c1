//! DPDK ports on net_ring (its transmit ring is its receive ring): frames
//! go out and come back byte for byte, VLAN tags and all, over thousands of
//! bursts, and every mbuf is back in its pool afterwards.
//!
//! EAL starts once per process, so this file holds one test.

#![cfg(feature = "dpdk")]

use std::sync::Arc;

use dpu_fw::dpdk::{DpdkIo, Eal, EthPort, Mempool};
use dpu_fw::io::{PacketIo, RxBatch};

fn eal_args() -> Vec<String> {
    [
        "--no-huge",
        "--no-pci",
        "--no-shconf",
        "-m",
        "256",
        "-l",
        "0",
        "--log-level=lib.eal:error",
        "--no-telemetry",
        "--vdev=net_ring0",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain([format!("--file-prefix={}", prefix())])
    .collect()
}

fn prefix() -> String {
    format!("cgring{}", std::process::id())
}

/// Removes EAL's run-time files when the test ends, however it ends.
struct RuntimeFiles;

impl Drop for RuntimeFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(Eal::runtime_dir(&prefix()));
    }
}

fn frame(n: u32, tagged: bool) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    if tagged {
        f.extend_from_slice(&[0x81, 0x00, 0x00, 0x2A]);
    }
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&n.to_be_bytes());
    f.resize(60 + (n as usize % 200), u8::try_from(n % 251).unwrap());
    f
}

#[test]
fn bursts_round_trip_without_losing_an_mbuf() {
    let _files = RuntimeFiles;
    let eal = Eal::init(&eal_args()).expect("EAL starts on net_ring");
    assert!(
        Eal::init(&["--other".to_owned()]).is_err(),
        "EAL starts once"
    );
    let pool = Arc::new(Mempool::new(eal, "ringtest", 4095).unwrap());
    let mut port = EthPort::open(eal, "net_ring0", Arc::clone(&pool), 256).unwrap();
    assert_eq!(port.name(), "net_ring0");
    port.start().unwrap();
    assert!(
        EthPort::open(eal, "net_ring9", Arc::clone(&pool), 256)
            .unwrap_err()
            .to_string()
            .contains("ports: net_ring0"),
        "an unknown port names the ones there are"
    );
    let mut io = DpdkIo::new(port);
    // The port holds some mbufs in its receive ring set-up; the count that
    // matters is the one after set-up.
    let baseline = pool.available();
    let mut batch = RxBatch::new(32, 9280);
    let mut sent = 0u32;
    for round in 0..5000u32 {
        let frames: Vec<Vec<u8>> = (0..32).map(|i| frame(round * 32 + i, i % 3 == 0)).collect();
        for f in &frames {
            io.send(f);
        }
        io.flush();
        sent += 32;
        let n = io.recv(&mut batch).unwrap();
        assert_eq!(n, 32, "round {round}");
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(
                batch.frame(i).unwrap(),
                f.as_slice(),
                "round {round}, frame {i}"
            );
        }
    }
    let c = io.counters();
    assert_eq!(
        (c.tx_packets, c.rx_packets),
        (u64::from(sent), u64::from(sent))
    );
    assert_eq!((c.tx_dropped, c.rx_errors), (0, 0));
    assert_eq!(
        pool.available(),
        baseline,
        "every mbuf went back to the pool"
    );

    // A frame longer than an mbuf's room is refused at send, counted, and
    // costs no mbuf.
    io.send(&vec![0u8; 4000]);
    io.flush();
    assert_eq!(io.counters().tx_dropped, 1);
    assert_eq!(pool.available(), baseline);
}
