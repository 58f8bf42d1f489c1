//! The cluster inventory against a real etcd: two hosts, "a" and "b",
//! publish their instances and see each other's; a host that dies vanishes
//! after its lease's TTL; an etcd outage keeps what was seen and resyncs;
//! nothing is written at rest; locks and instance numbers are cluster-wide.
//!
//! Every test starts its own etcd on free ports and is bounded in time.
//! Without etcd the tests step aside (they fail instead with
//! `CHAINGATE_REQUIRE_ETCD=1`).

use std::collections::BTreeSet;
use std::future::Future;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use chaingate_agent::inventory::{
    HostInfo, InstanceInfo, Inventory, InventoryError, InventoryOptions, Snapshot,
};
use chaingate_hw_tests::etcd::{EtcdLink, EtcdServer, require_etcd};
use tokio::runtime::Handle;
use tokio::sync::watch;

/// The shortest lease etcd grants with its default timings.
const TTL: Duration = Duration::from_secs(2);
/// Ample for any one wait in these tests.
const WAIT: Duration = Duration::from_secs(15);

fn etcd() -> Option<EtcdServer> {
    require_etcd().then(|| EtcdServer::start().expect("etcd starts"))
}

fn options(endpoint: String, host: &str) -> InventoryOptions {
    let mut o = InventoryOptions::new(vec![endpoint], host);
    o.ttl = TTL;
    o.retry = Duration::from_millis(250);
    o
}

fn start(etcd: &EtcdServer, host: &str) -> Inventory {
    Inventory::start(options(etcd.endpoint(), host), &Handle::current())
}

fn host(name: &str) -> HostInfo {
    HostInfo {
        host: name.into(),
        underlay: Ipv4Addr::new(10, 0, 0, if name == "a" { 1 } else { 2 }),
        mac: "02:00:00:00:00:01".into(),
        free_vfs: 6,
        layout: 0x5eed,
        using: Vec::new(),
    }
}

fn instance(name: &str, load_bps: u64, state: &str) -> InstanceInfo {
    InstanceInfo {
        name: name.into(),
        service: name.split('-').next().unwrap_or(name).into(),
        host: String::new(),
        port: format!("vf-{name}"),
        slot: 1,
        capacity_bps: 1_000_000_000,
        load_bps,
        state: state.into(),
    }
}

/// Runs a test's body within `secs` seconds.
async fn within(secs: u64, body: impl Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(secs), body)
        .await
        .unwrap_or_else(|_| panic!("the test took more than {secs} s"));
}

/// Waits until the snapshot satisfies `ready`, and returns it.
async fn until(
    rx: &mut watch::Receiver<Snapshot>,
    what: &str,
    ready: impl FnMut(&Snapshot) -> bool,
) -> Snapshot {
    let found = tokio::time::timeout(WAIT, rx.wait_for(ready))
        .await
        .map(|s| s.map(|s| s.clone()));
    match found {
        Ok(Ok(s)) => s,
        _ => panic!("{what}: not within {WAIT:?}; last seen {:#?}", *rx.borrow()),
    }
}

/// The leases of the keys `etcdctl get ARGS` finds.
fn leases(etcd: &EtcdServer, args: &[&str]) -> Vec<i64> {
    let mut cmd = vec!["get", "-w", "json"];
    cmd.extend(args);
    let json: serde_json::Value = serde_json::from_str(&etcd.etcdctl(&cmd).unwrap()).unwrap();
    json["kvs"]
        .as_array()
        .map(|kvs| {
            kvs.iter()
                .map(|kv| kv["lease"].as_i64().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default()
}

fn names(s: &Snapshot) -> Vec<&str> {
    s.instances.keys().map(String::as_str).collect()
}

/// Host a with firewall-0 and nat-0, host b with ids-0, both published and
/// seen by both.
async fn two_hosts(etcd: &EtcdServer) -> (Inventory, Inventory) {
    let a = start(etcd, "a");
    let b = start(etcd, "b");
    a.set_local(
        host("a"),
        vec![
            instance("firewall-0", 100, "active"),
            instance("nat-0", 100, "active"),
        ],
    );
    b.set_local(host("b"), vec![instance("ids-0", 100, "active")]);
    for inv in [&a, &b] {
        until(&mut inv.watch(), "both hosts' instances", |s| {
            names(s) == ["firewall-0", "ids-0", "nat-0"] && s.hosts.len() == 2
        })
        .await;
    }
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_see_each_other() {
    let Some(etcd) = etcd() else { return };
    within(30, async {
        let (a, b) = two_hosts(&etcd).await;
        let seen = b.watch().borrow().clone();
        assert!(seen.connected);
        assert!(seen.revision > 0);
        assert_eq!(seen.hosts["a"], host("a"));
        let fw = &seen.instances["firewall-0"];
        assert_eq!(fw.host, "a", "the host field is the publisher's");
        assert_eq!(fw.service, "firewall");
        assert_eq!(seen.instances["ids-0"].host, "b", "our own are there too");
        assert_eq!(a.watch().borrow().instances, seen.instances);

        // The layout in etcd, as the module documents it.
        let keys = etcd
            .etcdctl(&["get", "--prefix", "--keys-only", "/chaingate/"])
            .unwrap();
        let keys: BTreeSet<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(
            keys,
            BTreeSet::from([
                "/chaingate/hosts/a",
                "/chaingate/hosts/b",
                "/chaingate/instances/a/firewall-0",
                "/chaingate/instances/a/nat-0",
                "/chaingate/instances/b/ids-0",
            ])
        );
        assert_eq!(a.stats().lease_grants, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_and_deletions_propagate() {
    let Some(etcd) = etcd() else { return };
    within(30, async {
        let (a, b) = two_hosts(&etcd).await;
        let mut seen = b.watch();
        let before = a.stats();
        // firewall-0 drains, nat-0 is gone, firewall-1 starts.
        a.set_local(
            host("a"),
            vec![
                instance("firewall-0", 100, "draining"),
                instance("firewall-1", 0, "starting"),
            ],
        );
        let changed = |s: &Snapshot| names(s) == ["firewall-0", "firewall-1", "ids-0"];
        let s = until(&mut seen, "a's changes at b", changed).await;
        // a counts its writes before it sees them come back.
        until(&mut a.watch(), "a's changes at a", changed).await;
        assert_eq!(s.instances["firewall-0"].state, "draining");
        assert_eq!(s.instances["firewall-1"].state, "starting");
        let after = a.stats();
        assert_eq!(after.puts - before.puts, 2, "only the two changed keys");
        assert_eq!(after.deletes - before.deletes, 1);

        // The host's own record changes too.
        let mut fewer = host("a");
        fewer.free_vfs = 5;
        a.set_local(fewer, vec![instance("firewall-1", 0, "active")]);
        let s = until(&mut seen, "a's host record", |s| {
            s.hosts["a"].free_vfs == 5 && names(s) == ["firewall-1", "ids-0"]
        })
        .await;
        assert_eq!(s.instances["firewall-1"].state, "active");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_host_vanishes_after_its_ttl() {
    let Some(etcd) = etcd() else { return };
    within(30, async {
        let (a, b) = two_hosts(&etcd).await;
        let mut seen = a.watch();
        b.abandon();
        let died = Instant::now();
        // Not revoked: still there right after the death...
        tokio::time::sleep(Duration::from_millis(200)).await;
        let s = seen.borrow().clone();
        assert!(s.instances.contains_key("ids-0"), "gone before its TTL");
        assert!(s.hosts.contains_key("b"));
        // ...and gone once the lease expired.
        let gone = tokio::time::timeout(
            TTL * 3,
            seen.wait_for(|s| !s.instances.contains_key("ids-0") && !s.hosts.contains_key("b")),
        )
        .await
        .is_ok_and(|s| s.is_ok());
        assert!(gone, "b still there {:?} after its death", TTL * 3);
        eprintln!(
            "b vanished from a's snapshot {:?} after its death (TTL {TTL:?})",
            died.elapsed()
        );
        assert_eq!(names(&seen.borrow()), ["firewall-0", "nat-0"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_stopped_cleanly_vanishes_at_once() {
    let Some(etcd) = etcd() else { return };
    within(30, async {
        let (a, b) = two_hosts(&etcd).await;
        let stopped = Instant::now();
        b.shutdown().await;
        until(&mut a.watch(), "b gone", |s| !s.hosts.contains_key("b")).await;
        assert!(
            stopped.elapsed() < TTL,
            "revoked, not left to expire ({:?})",
            stopped.elapsed()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_keeps_the_snapshot_and_resyncs_when_back() {
    let Some(mut etcd) = etcd() else { return };
    within(60, async {
        let (a, b) = two_hosts(&etcd).await;
        let mut at_a = a.watch();
        let mut at_b = b.watch();
        let revision = at_b.borrow().revision;

        tokio::task::block_in_place(|| etcd.stop());
        for rx in [&mut at_a, &mut at_b] {
            let s = until(rx, "disconnected", |s| !s.connected).await;
            assert_eq!(
                names(&s),
                ["firewall-0", "ids-0", "nat-0"],
                "kept, not emptied"
            );
            assert_eq!(s.hosts.len(), 2);
            assert_eq!(s.revision, revision);
        }
        // A change while etcd is away, and a few more reconnection
        // attempts: the snapshot stays as it was.
        a.set_local(host("a"), vec![instance("firewall-0", 100, "draining")]);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(names(&at_b.borrow()), ["firewall-0", "ids-0", "nat-0"]);
        assert!(!at_b.borrow().connected);

        tokio::task::block_in_place(|| etcd.restart()).expect("etcd restarts");
        let s = until(&mut at_b, "a's change after the resync", |s| {
            s.connected
                && names(s) == ["firewall-0", "ids-0"]
                && s.instances["firewall-0"].state == "draining"
        })
        .await;
        assert!(s.revision > revision);
        until(&mut at_a, "a connected", |s| s.connected).await;
        for inv in [&a, &b] {
            let st = inv.stats();
            assert!(st.reconnects >= 1, "{st:?}");
            assert!(st.resyncs >= 1, "{st:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_lease_is_replaced_and_everything_republished() {
    let Some(etcd) = etcd() else { return };
    within(30, async {
        let (a, b) = two_hosts(&etcd).await;
        let mut at_b = b.watch();
        let [lease] = leases(&etcd, &["/chaingate/hosts/a"])[..] else {
            panic!("a's host key")
        };
        let revision = at_b.borrow().revision;
        etcd.etcdctl(&["lease", "revoke", &format!("{lease:x}")])
            .unwrap();

        // The revocation deletes a's keys at revision + 1; a puts them
        // back later, under a new lease.
        until(&mut at_b, "a's keys back", |s| {
            s.revision > revision + 1
                && names(s) == ["firewall-0", "ids-0", "nat-0"]
                && s.hosts.contains_key("a")
        })
        .await;
        // Back, every one of them under a new lease (b noticed nothing
        // else).
        let mut now = leases(&etcd, &["/chaingate/hosts/a"]);
        now.extend(leases(&etcd, &["--prefix", "/chaingate/instances/a/"]));
        assert_eq!(now.len(), 3, "{now:?}");
        assert!(now.iter().all(|l| *l != 0 && *l != lease), "{now:?}");
        assert_eq!(a.stats().lease_grants, 2);
        assert_eq!(b.stats().lease_grants, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cut_off_past_its_ttl_vanishes_and_comes_back() {
    let Some(etcd) = etcd() else { return };
    within(40, async {
        let link = EtcdLink::start(etcd.addr()).unwrap();
        let a = Inventory::start(options(link.endpoint(), "a"), &Handle::current());
        let b = start(&etcd, "b");
        a.set_local(host("a"), vec![instance("firewall-0", 100, "active")]);
        b.set_local(host("b"), vec![instance("ids-0", 100, "active")]);
        let mut at_a = a.watch();
        let mut at_b = b.watch();
        for rx in [&mut at_a, &mut at_b] {
            until(rx, "a and b seen", |s| names(s) == ["firewall-0", "ids-0"]).await;
        }

        // A partition: etcd runs on, a's lease expires, b sees a vanish;
        // a keeps what it saw.
        link.cut();
        until(&mut at_b, "a gone at b", |s| !s.hosts.contains_key("a")).await;
        let s = until(&mut at_a, "a disconnected", |s| !s.connected).await;
        assert_eq!(names(&s), ["firewall-0", "ids-0"]);

        // The link is back: a finds its lease gone, takes a new one and
        // publishes everything again.
        link.restore();
        until(&mut at_b, "a back at b", |s| {
            names(s) == ["firewall-0", "ids-0"]
        })
        .await;
        until(&mut at_a, "a connected", |s| s.connected).await;
        assert_eq!(a.stats().lease_grants, 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_written_at_rest() {
    let Some(etcd) = etcd() else { return };
    within(30, async {
        let (a, _b) = two_hosts(&etcd).await;
        let before = a.stats();
        // The agent sends fresh load every 250 ms; it wobbles by 5 % of
        // the capacity, under the hysteresis.
        let rest = Duration::from_secs(3);
        let t0 = Instant::now();
        let mut n = 0_u64;
        while t0.elapsed() < rest {
            let load = 100 + (n % 2) * 50_000_000;
            a.set_local(
                host("a"),
                vec![
                    instance("firewall-0", load, "active"),
                    instance("nat-0", load, "active"),
                ],
            );
            n += 1;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let after = a.stats();
        assert_eq!(after.puts, before.puts, "{before:?} -> {after:?}");
        assert_eq!(after.deletes, before.deletes);
        assert_eq!(after.bytes_written, before.bytes_written);
        // Keepalives every TTL/3: about 4 in 3 s.
        assert!(
            after.keepalives - before.keepalives >= 2,
            "{before:?} -> {after:?}"
        );
        let per_minute = |x: u64| x as f64 * 60.0 / rest.as_secs_f64() / 2.0;
        eprintln!(
            "at rest over {rest:?}: {:.1} keys and {:.0} bytes written per instance per minute, {} keepalives",
            per_minute(after.puts - before.puts),
            per_minute(after.bytes_written - before.bytes_written),
            after.keepalives - before.keepalives
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_is_written_past_ten_percent_of_capacity_and_state_at_once() {
    let Some(etcd) = etcd() else { return };
    within(30, async {
        let (a, b) = two_hosts(&etcd).await;
        let mut at_b = b.watch();
        let others = || instance("nat-0", 100, "active");
        let gbit = 1_000_000_000_u64;

        // 100 bps -> 9 % of capacity: not written.
        let puts = a.stats().puts;
        a.set_local(
            host("a"),
            vec![
                instance("firewall-0", 100 + gbit * 9 / 100, "active"),
                others(),
            ],
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(a.stats().puts, puts);
        assert_eq!(at_b.borrow().instances["firewall-0"].load_bps, 100);

        // -> 20 %: more than 10 % since last written (100 bps): written.
        a.set_local(
            host("a"),
            vec![instance("firewall-0", gbit / 5, "active"), others()],
        );
        let written = |s: &Snapshot| s.instances["firewall-0"].load_bps == gbit / 5;
        until(&mut at_b, "load written", written).await;
        // a counts its writes before it sees them come back.
        until(&mut a.watch(), "load written, at a", written).await;
        assert_eq!(a.stats().puts, puts + 1);

        // A state change is written at once, whatever the load did.
        a.set_local(
            host("a"),
            vec![instance("firewall-0", gbit / 5 + 1, "draining"), others()],
        );
        let draining = |s: &Snapshot| s.instances["firewall-0"].state == "draining";
        let s = until(&mut at_b, "state written", draining).await;
        until(&mut a.watch(), "state written, at a", draining).await;
        assert_eq!(s.instances["firewall-0"].load_bps, gbit / 5 + 1);
        assert_eq!(a.stats().puts, puts + 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_excludes_a_second_holder_until_released() {
    let Some(etcd) = etcd() else { return };
    within(30, async {
        let (a, b) = two_hosts(&etcd).await;
        let held = a.lock("scale/firewall", WAIT).await.unwrap();
        assert_eq!(held.name(), "scale/firewall");

        let refused = b.lock("scale/firewall", Duration::from_millis(500)).await;
        match refused {
            Err(InventoryError::LockTimeout { holder, .. }) => assert_eq!(holder, "a"),
            other => panic!("b took a held lock: {other:?}"),
        }
        // Another name is another lock.
        let other = b.lock("scale/ids", Duration::from_secs(2)).await.unwrap();
        // Two holders in one host (one lease) exclude each other too.
        assert!(
            a.lock("scale/firewall", Duration::from_millis(300))
                .await
                .is_err()
        );

        let b = std::sync::Arc::new(b);
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.lock("scale/firewall", WAIT).await }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!waiter.is_finished(), "b got the lock while a held it");
        held.unlock().await.unwrap();
        let taken = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("b takes the lock once a released it")
            .unwrap()
            .unwrap();
        // Dropping a guard releases it too.
        drop(taken);
        let again = a.lock("scale/firewall", WAIT).await.unwrap();
        drop((again, other));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_goes_with_its_dead_holder() {
    let Some(etcd) = etcd() else { return };
    within(30, async {
        let (a, b) = two_hosts(&etcd).await;
        let held = b.lock("scale/firewall", WAIT).await.unwrap();
        // b dies holding it: no destructor runs, the lease is not revoked.
        std::mem::forget(held);
        b.abandon();
        assert!(
            a.lock("scale/firewall", Duration::from_millis(300))
                .await
                .is_err(),
            "released before b's lease expired"
        );
        let t0 = Instant::now();
        let lock = a.lock("scale/firewall", TTL * 3).await;
        assert!(
            lock.is_ok(),
            "still held {:?} after b died: {lock:?}",
            TTL * 3
        );
        eprintln!("a took the dead holder's lock after {:?}", t0.elapsed());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_numbers_are_unique_across_hosts() {
    let Some(etcd) = etcd() else { return };
    within(60, async {
        let (a, b) = two_hosts(&etcd).await;
        let (a, b) = (std::sync::Arc::new(a), std::sync::Arc::new(b));
        let mut tasks = Vec::new();
        for i in 0..16 {
            let inv = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for _ in 0..8 {
                    got.push(inv.next_number("firewall").await.unwrap());
                }
                got
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort_unstable();
        let expected: Vec<u64> = (0..128).collect();
        assert_eq!(all, expected, "each number once, none skipped");
        // Another service counts on its own.
        assert_eq!(a.next_number("ids").await.unwrap(), 0);
        assert_eq!(
            etcd.etcdctl(&["get", "--print-value-only", "/chaingate/numbers/firewall"])
                .unwrap()
                .trim(),
            "128"
        );
    })
    .await;
}
