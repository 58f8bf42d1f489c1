//! What the cluster inventory writes to etcd at rest (`ci/bench
//! etcd_at_rest`): `cargo bench -p chaingate-hw-tests --bench
//! etcd_at_rest`. Needs etcd and etcdctl, not root.
//!
//! Two hosts, `a` and `b`, each an [`Inventory`] with the default options
//! (lease TTL 10 s, renewed every third of it) publishing 4 instances of
//! 1 Gbit/s, on one etcd (`hw-tests/src/etcd.rs`). Once both see all 8,
//! each host is given its instances again every second, as the agent does
//! with fresh load, in three windows measured in the same run:
//!
//! - `at rest` (60 s): the same load every second;
//! - `load within 10%` (20 s): the load moves by 9% of the capacity
//!   every second, under the hysteresis
//!   ([`chaingate_agent::inventory::LOAD_HYSTERESIS_PERCENT`]);
//! - `load past 10%` (20 s), the baseline of the ratios: the load moves
//!   by 20% every second, so every instance's key is written every
//!   second (what each update would cost without the hysteresis).
//!
//! Per window, per instance per minute: keys etcd stored (its put and
//! delete counters), write transactions (its revision), bytes of keys and
//! values the inventories wrote, bytes etcd appended to its WAL, bytes of
//! gRPC requests etcd received (keepalives and watches included), and
//! keepalives (the inventories' answered ones; etcd's renewals). The
//! publication itself (from nothing to both hosts seen by both) is shown
//! once, as a whole.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use chaingate_agent::inventory::{HostInfo, InstanceInfo, Inventory, InventoryOptions};
use chaingate_hw_tests::etcd::{EtcdServer, require_etcd};

const HOSTS: [&str; 2] = ["a", "b"];
const PER_HOST: u64 = 4;
const GBIT: u64 = 1_000_000_000;
/// The load at rest: a quarter of the capacity.
const BASE_LOAD: u64 = GBIT / 4;

fn host(name: &str) -> HostInfo {
    HostInfo {
        host: name.into(),
        underlay: Ipv4Addr::new(10, 9, 0, if name == "a" { 1 } else { 2 }),
        mac: "02:00:00:09:00:01".into(),
        free_vfs: 4,
        layout: 0x5eed,
        using: Vec::new(),
    }
}

/// Host `h`'s instances (names unique in the cluster), all at `load`.
fn instances(h: usize, load: u64) -> Vec<InstanceInfo> {
    ["firewall", "ids", "nat", "firewall"]
        .iter()
        .enumerate()
        .map(|(k, service)| {
            let n = h * 2 + k / 3;
            InstanceInfo {
                name: format!("{service}-{n}"),
                service: (*service).into(),
                host: String::new(),
                port: format!("vf{k}"),
                slot: u16::try_from(3 + k).unwrap_or(u16::MAX),
                capacity_bps: GBIT,
                load_bps: load,
                state: "active".into(),
            }
        })
        .collect()
}

/// What etcd and the inventories counted at one moment.
#[derive(Clone, Copy, Debug, Default)]
struct Reading {
    /// etcd's revision: one per write transaction.
    revision: f64,
    /// Keys put and deleted (etcd's mvcc counters).
    keys: f64,
    /// Bytes etcd appended to its write-ahead log.
    wal_bytes: f64,
    /// Bytes of gRPC requests etcd received.
    grpc_in: f64,
    /// Leases etcd renewed.
    renewed: f64,
    /// Bytes of keys and values the inventories wrote.
    inv_bytes: f64,
    /// Keepalives etcd answered to the inventories.
    keepalives: f64,
    /// Keys the inventories put and deleted.
    inv_keys: f64,
}

impl std::ops::Sub for Reading {
    type Output = Self;
    fn sub(self, o: Self) -> Self {
        Self {
            revision: self.revision - o.revision,
            keys: self.keys - o.keys,
            wal_bytes: self.wal_bytes - o.wal_bytes,
            grpc_in: self.grpc_in - o.grpc_in,
            renewed: self.renewed - o.renewed,
            inv_bytes: self.inv_bytes - o.inv_bytes,
            keepalives: self.keepalives - o.keepalives,
            inv_keys: self.inv_keys - o.inv_keys,
        }
    }
}

/// etcd's Prometheus counters (`GET /metrics` on its client port).
fn metrics(addr: SocketAddr) -> Vec<(String, f64)> {
    let mut s = TcpStream::connect(addr).expect("etcd's metrics");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .expect("ask for metrics");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read metrics");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn revision(etcd: &EtcdServer) -> f64 {
    let out = etcd
        .etcdctl(&["endpoint", "status", "-w", "json"])
        .expect("etcdctl endpoint status");
    let json: serde_json::Value = serde_json::from_str(&out).expect("its JSON");
    json[0]["Status"]["header"]["revision"]
        .as_f64()
        .expect("a revision")
}

/// At a window's start, the revision is read first; at its end, last: the
/// etcdctl call's own gRPC bytes then stay out of the window.
fn read(etcd: &EtcdServer, invs: &[Inventory], revision: f64) -> Reading {
    let m = metrics(etcd.addr());
    let get = |name: &str| {
        m.iter()
            .find(|(n, _)| n == name)
            .map_or_else(|| panic!("etcd has no metric {name}"), |(_, v)| *v)
    };
    let stats: Vec<_> = invs.iter().map(Inventory::stats).collect();
    let sum = |f: &dyn Fn(&chaingate_agent::inventory::InventoryStats) -> u64| {
        stats.iter().map(f).sum::<u64>() as f64
    };
    Reading {
        revision,
        keys: get("etcd_mvcc_put_total") + get("etcd_mvcc_delete_total"),
        wal_bytes: get("etcd_disk_wal_write_bytes_total"),
        grpc_in: get("etcd_network_client_grpc_received_bytes_total"),
        renewed: get("etcd_debugging_lease_renewed_total"),
        inv_bytes: sum(&|s| s.bytes_written),
        keepalives: sum(&|s| s.keepalives),
        inv_keys: sum(&|s| s.puts + s.deletes),
    }
}

struct Window {
    name: &'static str,
    secs: f64,
    /// Per instance per minute.
    rate: Reading,
}

/// Gives every host its instances every second for `secs`, with the load
/// `load(second)`, and returns what was written per instance per minute.
fn window(
    name: &'static str,
    secs: u64,
    etcd: &EtcdServer,
    invs: &[Inventory],
    load: &dyn Fn(u64) -> u64,
) -> Window {
    let before = {
        let r = revision(etcd);
        read(etcd, invs, r)
    };
    let t0 = Instant::now();
    for n in 0..secs {
        for (h, inv) in invs.iter().enumerate() {
            inv.set_local(host(HOSTS[h]), instances(h, load(n)));
        }
        let next = Duration::from_secs(n + 1);
        std::thread::sleep(next.saturating_sub(t0.elapsed()));
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let mut after = read(etcd, invs, 0.0);
    after.revision = revision(etcd);
    let d = after - before;
    let per = (invs.len() as f64 * PER_HOST as f64) * elapsed / 60.0;
    let scale = |x: f64| x / per;
    eprintln!("measured: {name} {d:?}");
    Window {
        name,
        secs: elapsed,
        rate: Reading {
            revision: scale(d.revision),
            keys: scale(d.keys),
            wal_bytes: scale(d.wal_bytes),
            grpc_in: scale(d.grpc_in),
            renewed: scale(d.renewed),
            inv_bytes: scale(d.inv_bytes),
            keepalives: scale(d.keepalives),
            inv_keys: scale(d.inv_keys),
        },
    }
}

fn main() {
    if !require_etcd() {
        std::process::exit(2);
    }
    let etcd = EtcdServer::start().expect("etcd starts");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let r0 = revision(&etcd);
    let start = read(&etcd, &[], r0);
    let invs: Vec<Inventory> = HOSTS
        .iter()
        .map(|h| {
            Inventory::start(
                InventoryOptions::new(vec![etcd.endpoint()], *h),
                rt.handle(),
            )
        })
        .collect();
    for (h, inv) in invs.iter().enumerate() {
        inv.set_local(host(HOSTS[h]), instances(h, BASE_LOAD));
    }
    let all = HOSTS.len() * usize::try_from(PER_HOST).unwrap_or(0);
    rt.block_on(async {
        for inv in &invs {
            let mut w = inv.watch();
            tokio::time::timeout(
                Duration::from_secs(20),
                w.wait_for(|s| s.instances.len() == all && s.hosts.len() == HOSTS.len()),
            )
            .await
            .expect("both hosts publish within 20 s")
            .expect("the inventory runs");
        }
    });
    let mut published = read(&etcd, &invs, 0.0);
    published.revision = revision(&etcd);
    let published = published - start;

    let windows = [
        window("at rest", 60, &etcd, &invs, &|_| BASE_LOAD),
        window("load within 10%", 20, &etcd, &invs, &|n| {
            BASE_LOAD + (n % 2) * GBIT * 9 / 100
        }),
        window("load past 10%", 20, &etcd, &invs, &|n| {
            BASE_LOAD + (n % 2) * GBIT * 20 / 100
        }),
    ];
    rt.block_on(async {
        for inv in invs {
            inv.shutdown().await;
        }
    });

    println!(
        "\netcd at rest: 2 hosts x {PER_HOST} instances, lease TTL 10 s, instances given again \
         every second"
    );
    println!(
        "publication (both hosts, once): {} keys in {} transactions, {} bytes of keys and values, \
         {} WAL bytes, {} gRPC bytes in",
        published.keys,
        published.revision,
        published.inv_bytes,
        published.wal_bytes,
        published.grpc_in
    );
    let base = &windows[2].rate;
    println!(
        "\nper instance per minute (ratio: against `load past 10%` of this run)\n\
         {:<16} {:>5} {:>7} {:>7} {:>6} {:>9} {:>6} {:>9} {:>6} {:>9} {:>11}",
        "window",
        "secs",
        "keys",
        "txns",
        "ratio",
        "kv bytes",
        "ratio",
        "WAL bytes",
        "ratio",
        "gRPC in",
        "keepalives"
    );
    let ratio = |x: f64, b: f64| if b > 0.0 { x / b } else { f64::NAN };
    for w in &windows {
        let r = &w.rate;
        println!(
            "{:<16} {:>5.0} {:>7.2} {:>7.2} {:>5.2}x {:>9.0} {:>5.2}x {:>9.0} {:>5.2}x {:>9.0} {:>5.2}/{:.2}",
            w.name,
            w.secs,
            r.keys,
            r.revision,
            ratio(r.keys, base.keys),
            r.inv_bytes,
            ratio(r.inv_bytes, base.inv_bytes),
            r.wal_bytes,
            ratio(r.wal_bytes, base.wal_bytes),
            r.grpc_in,
            r.keepalives,
            r.renewed,
        );
    }
    println!(
        "(keys: etcd's put and delete counters, the inventories counted {}; keepalives: \
         answered to the inventories / leases etcd renewed)",
        windows
            .iter()
            .map(|w| format!("{:.2}", w.rate.inv_keys))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
