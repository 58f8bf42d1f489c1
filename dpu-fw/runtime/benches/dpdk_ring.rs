//! What DPDK I/O costs the data path: dpu-fw's engine forwarding
//! established sessions between two net_ring ports (software path, 64-byte
//! frames), against the fast path deciding the same packets in memory, in
//! the same run.
//!
//! A net_ring port's transmit ring is its receive ring, so a frame the
//! engine sends out of `wan` comes back in on `wan`, goes out of `lan` as
//! the reply direction of the same session, comes back in on `lan`, and so
//! on: 512 frames injected once keep the engine busy, every pass an
//! established-session forward.
//!
//! `cargo bench -p dpu-fw --features dpdk --bench dpdk_ring` (as root).

#![allow(missing_docs, clippy::cast_precision_loss)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chaingate_fastpath::datapath::{Datapath, Options};
use chaingate_fastpath::offload::Refusing;
use chaingate_proto::dpu;
use chaingate_shared::config::{PortRole, Uplink};
use chaingate_shared::{Config, Generation, Nanos};
use dpu_fw::config::RuntimeConfig;
use dpu_fw::daemon::open_ports;
use dpu_fw::dpdk::Eal;
use dpu_fw::engine::{Engine, Outputs, SLOT};
use dpu_fw::io::RxBatch;
use dpu_fw::io::afpacket::BATCH;
use tokio::sync::{broadcast, watch};

const FLOWS: u32 = 512;
const RUN: Duration = Duration::from_secs(3);

fn frame(i: u32) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    let src = 0x0A00_0000 + i;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&46u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.to_be_bytes());
    ip[16..20].copy_from_slice(&[192, 0, 2, 1]);
    let mut sum: u32 = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0x13, 0x88, 0x00, 0x35, 0, 26, 0, 0]);
    f.resize(64, 0);
    f
}

fn config() -> Config {
    let mut b = Config::builder(Generation(1));
    b.add_port("lan", PortRole::Uplink(Uplink::Lan)).unwrap();
    b.add_port("wan", PortRole::Uplink(Uplink::Wan)).unwrap();
    b.build().unwrap()
}

fn main() {
    let prefix = format!("cgbench{}", std::process::id());
    let runtime = RuntimeConfig::parse(&format!(
        "ports:\n  - {{ name: lan, io: 'dpdk:net_ring0', role: lan }}\n  - {{ name: wan, io: 'dpdk:net_ring1', role: wan }}\n\
         sessions: 65536\noffload: {{ backend: refuse }}\n\
         dpdk: {{ eal: ['--no-huge', '--no-pci', '--no-shconf', '--no-telemetry', '-m', '512', '-l', '0',\
         '--log-level=lib.eal:error', '--file-prefix={prefix}', '--vdev=net_ring0', '--vdev=net_ring1'] }}"
    ))
    .unwrap();
    let mut ports = open_ports(&runtime).expect("net_ring ports (run as root)");
    ports.start(&runtime).expect("net_ring ports start");
    let frames: Vec<Vec<u8>> = (0..FLOWS).map(frame).collect();
    // Into lan's receive ring, through its own transmit ring.
    for f in &frames {
        ports.io[0].send(f);
    }
    ports.io[0].flush();
    let (telemetry, _) = watch::channel(Arc::new(dpu::Telemetry::default()));
    let (scale, _) = broadcast::channel(16);
    let mut engine = Engine::new(
        &runtime,
        ports.io,
        Refusing::default(),
        0,
        Outputs { telemetry, scale },
    );
    engine.apply(config()).unwrap();
    let mut batch = RxBatch::new(BATCH, SLOT);
    let rx = |e: &Engine<Refusing>| e.stats().ports.iter().map(|p| p.rx_packets).sum::<u64>();
    // Warm up: the first pass opens the sessions.
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(300) {
        engine.turn(&mut batch);
    }
    let before = rx(&engine);
    let t = Instant::now();
    while t.elapsed() < RUN {
        for _ in 0..64 {
            engine.turn(&mut batch);
        }
        engine.housekeeping();
    }
    let engine_pps = (rx(&engine) - before) as f64 / t.elapsed().as_secs_f64();
    let stats = engine.stats();
    let fast = stats.fast_path.unwrap();
    assert_eq!(stats.sessions.unwrap().active, u64::from(FLOWS));
    assert!(fast.dropped.values().all(|d| *d == 0), "{:?}", fast.dropped);
    drop(engine);

    // The same established packets, decided in memory.
    let mut dp = Datapath::new(
        config(),
        &Options {
            sessions: 65_536,
            ..Options::default()
        },
    );
    let lan = chaingate_shared::PortId::from_index(0);
    for f in &frames {
        dp.process(lan, f, Nanos(1));
    }
    let mut n = 0u64;
    let t = Instant::now();
    while t.elapsed() < RUN {
        for f in &frames {
            black_box(dp.process(lan, black_box(f), Nanos(2)));
        }
        n += u64::from(FLOWS);
    }
    let memory_pps = n as f64 / t.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(Eal::runtime_dir(&prefix));
    println!(
        "dpu-fw on net_ring (established, 64-byte frames, software path): {:.2} Mpps = {:.0} ns/packet",
        engine_pps / 1e6,
        1e9 / engine_pps
    );
    println!(
        "the fast path alone on the same packets, same run: {:.2} Mpps = {:.0} ns/packet",
        memory_pps / 1e6,
        1e9 / memory_pps
    );
    println!(
        "DPDK I/O and the engine loop cost {:.0} ns/packet: the engine runs at {:.2}x the fast path",
        1e9 / engine_pps - 1e9 / memory_pps,
        engine_pps / memory_pps
    );
}
