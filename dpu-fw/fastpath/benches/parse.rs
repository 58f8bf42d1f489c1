//! Flow-key extraction over a mixed frame set (IPv4/IPv6, TCP/UDP/ICMP,
//! VLAN and QinQ, VXLAN and Geneve, ICMP errors, fragments, some frames
//! truncated), against the baseline of etherparse's `SlicedPacket` reading
//! the same frames plus extracting the same key, measured in the same run.
//!
//! Two chaingate figures: `parse_into`, which fills a caller's per-packet
//! slot in place (what the data path does), and `parse`, which returns the
//! parsed frame by value.
//!
//! `cargo bench -p chaingate-fastpath --bench parse` prints criterion's
//! figures for all three, then the ratios from interleaved rounds.

#![allow(missing_docs)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::time::Instant;

use chaingate_fastpath::wire::{ParsedFrame, parse, parse_into};
use chaingate_shared::FlowKey;
use criterion::{Criterion, Throughput};
use support::etherparse::etherparse_key;
use support::{Rng, sample};

const FRAMES: usize = 2048;

fn frame_set() -> Vec<Vec<u8>> {
    let mut rng = Rng::new(0xBE7C_0001);
    (0..FRAMES)
        .map(|_| {
            let mut bytes = sample(&mut rng).bytes;
            if rng.chance(5) {
                let keep = rng.below(bytes.len() as u64) as usize;
                bytes.truncate(keep);
            }
            bytes
        })
        .collect()
}

fn fold(acc: u64, key: &FlowKey) -> u64 {
    acc.rotate_left(5) ^ u64::from(key.src_port()) ^ (u64::from(key.dst_port()) << 16)
}

fn fold_parsed(acc: u64, p: &ParsedFrame) -> u64 {
    let acc = p.key().map_or(acc, |k| fold(acc, k));
    p.inner_key().map_or(acc, |k| fold(acc, k))
}

fn chaingate_into(set: &[Vec<u8>]) -> u64 {
    let mut slot = ParsedFrame::EMPTY;
    let mut acc = 0;
    for f in set {
        if parse_into(f, &mut slot).is_ok() {
            acc = fold_parsed(acc, &slot);
        }
    }
    acc
}

fn chaingate(set: &[Vec<u8>]) -> u64 {
    let mut acc = 0;
    for f in set {
        if let Ok(p) = parse(f) {
            acc = fold_parsed(acc, &p);
        }
    }
    acc
}

fn etherparse(set: &[Vec<u8>]) -> u64 {
    let mut acc = 0;
    for f in set {
        if let Some((k, inner)) = etherparse_key(f) {
            acc = fold(acc, &k);
            if let Some((k, _)) = inner.and_then(etherparse_key) {
                acc = fold(acc, &k);
            }
        }
    }
    acc
}

fn per_frame_ns(f: fn(&[Vec<u8>]) -> u64, set: &[Vec<u8>]) -> f64 {
    let start = Instant::now();
    for _ in 0..20 {
        black_box(f(black_box(set)));
    }
    start.elapsed().as_nanos() as f64 / (20 * set.len()) as f64
}

fn main() {
    let set = frame_set();
    // Both read the same keys from the intact frames, so they do the same job.
    assert_eq!(chaingate(&set), etherparse(&set), "the two readings differ");
    assert_eq!(chaingate_into(&set), chaingate(&set));

    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("flow_key");
    group.throughput(Throughput::Elements(set.len() as u64));
    group.bench_function("chaingate_parse_into", |b| {
        b.iter(|| chaingate_into(black_box(&set)));
    });
    group.bench_function("chaingate_parse", |b| b.iter(|| chaingate(black_box(&set))));
    group.bench_function("etherparse", |b| b.iter(|| etherparse(black_box(&set))));
    group.finish();
    c.final_summary();

    // Interleaved rounds, median of each: the machine's noise hits all.
    let (mut into, mut by_value, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..15 {
        into.push(per_frame_ns(chaingate_into, &set));
        by_value.push(per_frame_ns(chaingate, &set));
        theirs.push(per_frame_ns(etherparse, &set));
    }
    let (i, v, t) = (median(into), median(by_value), median(theirs));
    println!(
        "flow key, {FRAMES} mixed frames: etherparse {t:.1} ns/frame (baseline); \
         chaingate parse_into {i:.1} ns/frame ({:.2}x faster), parse {v:.1} ns/frame ({:.2}x faster)",
        t / i,
        t / v
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
