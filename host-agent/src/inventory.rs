//! The cluster inventory in etcd: what this host publishes about itself and
//! its service instances, and what it sees of every host (§6a).
//!
//! A background task keeps a lease, publishes this host's keys under it,
//! and watches everyone's. A host that dies stops renewing its lease; etcd
//! deletes its keys when the lease expires, and they vanish from every
//! other host's [`Snapshot`]. Nothing here needs an operator: the task
//! connects, and reconnects, by itself.
//!
//! # Key layout
//!
//! All keys live under a prefix (`/chaingate` by default); values are JSON.
//!
//! | key | value | lease |
//! |---|---|---|
//! | `{prefix}/hosts/{host}` | [`HostInfo`] | the host's |
//! | `{prefix}/instances/{host}/{name}` | [`InstanceInfo`] | the host's |
//! | `{prefix}/locks/{name}` | the holder's host name | the holder's |
//! | `{prefix}/numbers/{service}` | the next instance number, decimal | none |
//! | `{prefix}/asks/{host}/{service}` | instances `host` is asked to run, decimal | none |
//!
//! Host and instance names must not contain `/`; lock names may
//! (`scale/firewall`).
//!
//! Locks are a key created in a transaction (`create_revision == 0`)
//! under the holder's lease, not etcd's lock service: that service names
//! its key after the lease, so two holders sharing one lease (two tasks of
//! one agent) would both "hold" the lock. A txn-created key excludes them,
//! names its holder for `etcdctl get --prefix /chaingate/locks`, and goes
//! with the holder's lease when the holder dies. Waiters watch the key for
//! its deletion; there is no queue (no fairness), which suits a handful of
//! hosts taking one scaling decision at a time.
//!
//! # Invariants
//!
//! - Lease: TTL [`InventoryOptions::ttl`] (rounded up to whole seconds;
//!   etcd raises it to its minimum, 2 s with default timings), renewed
//!   every TTL/3. A keepalive still unanswered when the next one is due ends the
//!   session (etcd is treated as unreachable). A lease found gone (expired
//!   while this host was cut off, or revoked) is replaced by a new one and
//!   everything is published again.
//! - Watch: from the revision of the session's initial Get plus one, so
//!   the [`Snapshot`] misses no event and applies none twice.
//! - While etcd is unreachable the last snapshot is kept, with
//!   `connected == false`; it is never emptied. When etcd answers again the
//!   task resyncs (a fresh Get and a watch from its revision) and writes
//!   whatever of this host's keys differ from what etcd holds (they may
//!   have expired, or [`Inventory::set_local`] changed them meanwhile).
//! - Writes: only keys whose value changed are put, and this host's keys
//!   that are no longer wanted are deleted. An instance's load alone is
//!   written only when it moved by more than
//!   [`LOAD_HYSTERESIS_PERCENT`] % of the instance's capacity since it was
//!   last written; any other change (its state above all) is written at
//!   once. At rest, then, nothing is written: only keepalives go to etcd,
//!   even when [`Inventory::set_local`] is called every second with fresh
//!   load. One of this host's keys changed or deleted by someone else is
//!   written back.
//! - Stopping: dropping the [`Inventory`] (or [`Inventory::shutdown`])
//!   revokes the lease, so this host's keys vanish at once;
//!   [`Inventory::abandon`] leaves them to expire, as a crash does.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue,
    LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
    WatchStream,
};
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// An instance's load is written again only when it moved by more than
/// this share of its capacity (percent) since it was last written.
pub const LOAD_HYSTERESIS_PERCENT: u64 = 10;

/// Time allowed for one call to etcd (a Get, a transaction, opening a
/// stream).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Operations per transaction; etcd refuses more than 128 by default.
const TXN_OPS: usize = 64;

/// Where etcd is and how this host appears in it.
#[derive(Clone, Debug)]
pub struct InventoryOptions {
    /// etcd's client URLs (`http://10.0.0.1:2379`).
    pub endpoints: Vec<String>,
    /// The prefix of every key (`/chaingate`).
    pub prefix: String,
    /// This host's name; its keys are named after it.
    pub host: String,
    /// The lease's time to live: how long a dead host's instances stay
    /// visible to the others.
    pub ttl: Duration,
    /// The pause between attempts to reach etcd (at least 100 ms).
    pub retry: Duration,
}

impl InventoryOptions {
    /// Options for `host` with etcd at `endpoints`, and the defaults: prefix
    /// `/chaingate`, TTL 10 s, a retry every second.
    #[must_use]
    pub fn new(endpoints: Vec<String>, host: impl Into<String>) -> Self {
        Self {
            endpoints,
            prefix: "/chaingate".into(),
            host: host.into(),
            ttl: Duration::from_secs(10),
            retry: Duration::from_secs(1),
        }
    }
}

/// What a host publishes about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    /// Its name, as in its keys.
    pub host: String,
    /// Its DPU's underlay address (the tunnel endpoint).
    pub underlay: Ipv4Addr,
    /// Its DPU's underlay MAC address (`aa:bb:cc:dd:ee:ff`).
    pub mac: String,
    /// VFs still free for new instances.
    pub free_vfs: u32,
    /// A fingerprint of the chains it runs; opaque here.
    pub layout: u64,
    /// Other hosts' instances its DPU has sessions on, by name, sorted
    /// (a draining instance waits until no DPU uses it). Changes only when
    /// an instance starts or stops being used: nothing is written at rest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub using: Vec<String>,
}

/// What a host publishes about one of its service instances.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// Its name, unique in the cluster (`firewall-3`).
    pub name: String,
    /// The service it belongs to.
    pub service: String,
    /// The host it runs on.
    pub host: String,
    /// The DPU port it is attached to.
    pub port: String,
    /// That port's index on its DPU.
    pub slot: u16,
    /// What it can carry, bits per second.
    pub capacity_bps: u64,
    /// What it carries, bits per second, as last written (see
    /// [`LOAD_HYSTERESIS_PERCENT`]).
    pub load_bps: u64,
    /// `starting`, `active`, `draining` or `down`.
    pub state: String,
}

/// The cluster as last seen in etcd.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Every host, by name, this one included.
    pub hosts: BTreeMap<String, HostInfo>,
    /// Every host's instances, this host's included, by instance name.
    pub instances: BTreeMap<String, InstanceInfo>,
    /// Instances hosts are asked to run (a scale-out placed on a host
    /// with a free VF by another), by (host, service).
    pub asks: BTreeMap<(String, String), u64>,
    /// etcd answers and the watch is current. While false, the rest is
    /// what was seen last.
    pub connected: bool,
    /// The etcd revision this snapshot reflects (0: none seen yet).
    pub revision: i64,
}

/// What the inventory did, since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InventoryStats {
    /// Keys put (publication, locks, counters).
    pub puts: u64,
    /// Keys deleted.
    pub deletes: u64,
    /// Bytes written: keys and values of puts, keys of deletes.
    pub bytes_written: u64,
    /// Leases granted.
    pub lease_grants: u64,
    /// Keepalives etcd answered.
    pub keepalives: u64,
    /// Times etcd answered again after being unreachable.
    pub reconnects: u64,
    /// Full reads after the first (after a reconnection, a lost lease or a
    /// cancelled watch).
    pub resyncs: u64,
}

/// Why an inventory call failed.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// etcd answered with an error, or the connection broke.
    #[error("etcd at {endpoints}: {what} failed")]
    Etcd {
        /// The endpoints tried.
        endpoints: String,
        /// The operation.
        what: String,
        /// What etcd or the connection said.
        #[source]
        source: etcd_client::Error,
    },
    /// etcd did not answer in time.
    #[error("etcd at {endpoints}: no answer to {what} within {timeout:?}")]
    Timeout {
        /// The endpoints tried.
        endpoints: String,
        /// The operation.
        what: String,
        /// The time allowed.
        timeout: Duration,
    },
    /// No session with etcd (or no lease yet) within the time allowed.
    #[error("etcd at {endpoints}: not connected (waited {waited:?})")]
    NotConnected {
        /// The endpoints tried.
        endpoints: String,
        /// The time waited.
        waited: Duration,
    },
    /// The lock stayed held by someone else.
    #[error("lock {name}: still held by host {holder} after {waited:?}")]
    LockTimeout {
        /// The lock's name.
        name: String,
        /// The holder, as its key names it.
        holder: String,
        /// The time waited.
        waited: Duration,
    },
    /// A counter key holds something other than a number.
    #[error("etcd key {key} holds {value:?}, not an instance number")]
    BadCounter {
        /// The key.
        key: String,
        /// What it holds.
        value: String,
    },
}

/// The cluster inventory: publishes this host, watches everyone. The
/// background task stops when this is dropped, revoking the lease so that
/// this host's keys vanish at once (see [`Inventory::abandon`] for a death).
pub struct Inventory {
    keys: Keys,
    endpoints: String,
    desired: watch::Sender<Option<Arc<Local>>>,
    snapshot: watch::Receiver<Snapshot>,
    session: watch::Receiver<Option<Session>>,
    counters: Arc<Counters>,
    runtime: Handle,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Inventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inventory")
            .field("endpoints", &self.endpoints)
            .field("host", &self.keys.host)
            .field("snapshot", &*self.snapshot.borrow())
            .finish_non_exhaustive()
    }
}

impl Inventory {
    /// Starts the background task on `runtime`. It never fails: it
    /// connects, and retries every [`InventoryOptions::retry`], in the
    /// background.
    #[must_use]
    pub fn start(options: InventoryOptions, runtime: &Handle) -> Self {
        let keys = Keys::new(&options.prefix, &options.host);
        let endpoints = options.endpoints.join(",");
        let (desired, desired_rx) = watch::channel(None);
        let (snapshot_tx, snapshot) = watch::channel(Snapshot::default());
        let (session_tx, session) = watch::channel(None);
        let (stop, stop_rx) = oneshot::channel();
        let counters = Arc::new(Counters::default());
        let task = Task {
            keys: keys.clone(),
            endpoints: endpoints.clone(),
            options,
            desired: desired_rx,
            desired_open: true,
            snapshot: snapshot_tx,
            session: session_tx,
            counters: counters.clone(),
            lease: None,
            cluster: BTreeMap::new(),
            own: BTreeMap::new(),
            sessions: 0,
            unreachable: false,
        };
        let task = runtime.spawn(task.run(stop_rx));
        Self {
            keys,
            endpoints,
            desired,
            snapshot,
            session,
            counters,
            runtime: runtime.clone(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Sets what this host publishes, replacing the previous set. The
    /// `host` fields are set to this inventory's host. The task writes
    /// only what changed (see the module's docs for the load hysteresis)
    /// and deletes this host's instances that are gone.
    pub fn set_local(&self, mut host: HostInfo, instances: Vec<InstanceInfo>) {
        host.host.clone_from(&self.keys.host);
        let instances = instances
            .into_iter()
            .map(|mut i| {
                i.host.clone_from(&self.keys.host);
                (i.name.clone(), i)
            })
            .collect();
        self.desired
            .send_replace(Some(Arc::new(Local { host, instances })));
    }

    /// The cluster as last seen, this host's keys included, as it changes.
    #[must_use]
    pub fn watch(&self) -> watch::Receiver<Snapshot> {
        self.snapshot.clone()
    }

    /// What the inventory did so far.
    #[must_use]
    pub fn stats(&self) -> InventoryStats {
        self.counters.get()
    }

    /// Takes the cluster-wide lock `name` (`scale/firewall`), waiting up
    /// to `wait` for it. The lock is held until the guard is dropped or
    /// [`InventoryLock::unlock`]ed, and lives under this host's lease: if
    /// this host dies, or loses its lease, the lock is released.
    ///
    /// # Errors
    /// [`InventoryError::LockTimeout`] when someone else still holds it
    /// after `wait`; [`InventoryError::NotConnected`] when etcd was not
    /// reachable during `wait`; others when etcd fails.
    pub async fn lock(&self, name: &str, wait: Duration) -> Result<InventoryLock, InventoryError> {
        let deadline = Instant::now() + wait;
        let Session { mut client, lease } = self.session(deadline, wait).await?;
        let key = self.keys.lock(name);
        let mut holder = String::from("(unknown)");
        loop {
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.clone(),
                    self.keys.host.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(key.clone(), None)]);
            let what = format!("taking lock {name}");
            let reply = self.call(&what, client.txn(txn)).await?;
            let revision = reply.header().map_or(0, |h| h.revision());
            if reply.succeeded() {
                self.counters.put(key.len() + self.keys.host.len());
                tracing::info!(lock = %key, revision, "lock taken");
                return Ok(InventoryLock {
                    name: name.to_owned(),
                    key,
                    revision,
                    client: Some(client),
                    endpoints: self.endpoints.clone(),
                    counters: self.counters.clone(),
                    runtime: self.runtime.clone(),
                });
            }
            if let Some(kv) = first_kv(&reply) {
                holder = String::from_utf8_lossy(kv.value()).into_owned();
            }
            // Wait for its deletion, from the revision just read: a
            // release between the read and the watch is not missed.
            let deleted = self.deleted(&mut client, &key, revision + 1);
            match tokio::time::timeout_at(deadline, deleted).await {
                Ok(result) => result?,
                Err(_) => {
                    return Err(InventoryError::LockTimeout {
                        name: name.to_owned(),
                        holder,
                        waited: wait,
                    });
                }
            }
        }
    }

    /// The next number for a new instance of `service`, unique in the
    /// cluster: the counter `{prefix}/numbers/{service}` is incremented in
    /// a transaction that compares its mod revision, retried on conflict.
    /// The first number is 0. A number is never returned twice (one lost in
    /// a broken call is skipped, not reused).
    ///
    /// # Errors
    /// etcd not reachable, failing, or the counter holding something else
    /// than a number.
    pub async fn next_number(&self, service: &str) -> Result<u64, InventoryError> {
        let deadline = Instant::now() + CALL_TIMEOUT;
        let Session { mut client, .. } = self.session(deadline, CALL_TIMEOUT).await?;
        let key = self.keys.number(service);
        let what = format!("reading counter {key}");
        let reply = self.call(&what, client.get(key.clone(), None)).await?;
        let mut current = reply.kvs().first().cloned();
        let what = format!("incrementing counter {key}");
        loop {
            let (number, revision) = match &current {
                Some(kv) => (parse_counter(&key, kv.value())?, kv.mod_revision()),
                None => (0, 0),
            };
            let next = (number + 1).to_string();
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    revision,
                )])
                .and_then([TxnOp::put(key.clone(), next.clone(), None)])
                .or_else([TxnOp::get(key.clone(), None)]);
            let reply = self.call(&what, client.txn(txn)).await?;
            if reply.succeeded() {
                self.counters.put(key.len() + next.len());
                return Ok(number);
            }
            current = first_kv(&reply);
            if Instant::now() >= deadline {
                return Err(InventoryError::Timeout {
                    endpoints: self.endpoints.clone(),
                    what,
                    timeout: CALL_TIMEOUT,
                });
            }
        }
    }

    /// Asks `host` to run `count` instances of `service` (a scale-out
    /// another host decided and placed there): `{prefix}/asks/{host}/{service}`,
    /// without a lease, until that host takes it away.
    ///
    /// # Errors
    /// etcd not reachable or failing.
    pub async fn ask(&self, host: &str, service: &str, count: u64) -> Result<(), InventoryError> {
        let deadline = Instant::now() + CALL_TIMEOUT;
        let Session { mut client, .. } = self.session(deadline, CALL_TIMEOUT).await?;
        let key = self.keys.ask(host, service);
        let value = count.to_string();
        let what = format!("asking at {key}");
        self.call(&what, client.put(key.clone(), value.clone(), None))
            .await?;
        self.counters.put(key.len() + value.len());
        Ok(())
    }

    /// Takes away what this host was asked to run of `service` (it has
    /// taken the request in).
    ///
    /// # Errors
    /// etcd not reachable or failing.
    pub async fn answered(&self, service: &str) -> Result<(), InventoryError> {
        let deadline = Instant::now() + CALL_TIMEOUT;
        let Session { mut client, .. } = self.session(deadline, CALL_TIMEOUT).await?;
        let key = self.keys.ask(&self.keys.host, service);
        let what = format!("deleting {key}");
        self.call(&what, client.delete(key.clone(), None)).await?;
        self.counters.delete(key.len());
        Ok(())
    }

    /// Stops the task and revokes the lease, so that this host's keys
    /// vanish from everyone's snapshot now; waits until it is done.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Stops the task as if this process died: the lease is not revoked,
    /// and this host's keys (and locks) stay until it expires, one TTL
    /// later.
    pub fn abandon(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        // Dropped unsent: the task, were it still running, stops
        // without revoking.
        drop(self.stop.take());
    }

    async fn session(&self, deadline: Instant, wait: Duration) -> Result<Session, InventoryError> {
        let mut session = self.session.clone();
        let found = tokio::time::timeout_at(deadline, session.wait_for(Option::is_some)).await;
        found
            .ok()
            .and_then(|s| s.ok().and_then(|s| s.clone()))
            .ok_or_else(|| InventoryError::NotConnected {
                endpoints: self.endpoints.clone(),
                waited: wait,
            })
    }

    /// Waits until `key` is deleted, watching from `revision`.
    async fn deleted(
        &self,
        client: &mut Client,
        key: &str,
        revision: i64,
    ) -> Result<(), InventoryError> {
        let what = format!("watching lock {key}");
        let options = WatchOptions::new().with_start_revision(revision);
        let mut stream = self.call(&what, client.watch(key, Some(options))).await?;
        loop {
            match stream.message().await {
                Ok(Some(r))
                    if r.events()
                        .iter()
                        .any(|e| e.event_type() == EventType::Delete) =>
                {
                    return Ok(());
                }
                Ok(Some(r)) if r.canceled() => {
                    return Err(
                        self.failed(&what, format!("watch cancelled: {}", r.cancel_reason()))
                    );
                }
                Ok(Some(_)) => {}
                Ok(None) => return Err(self.failed(&what, "etcd ended the watch".into())),
                Err(e) => return Err(self.failed(&what, e.to_string())),
            }
        }
    }

    async fn call<T>(
        &self,
        what: &str,
        f: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, InventoryError> {
        call(&self.endpoints, what, f).await
    }

    fn failed(&self, what: &str, reason: String) -> InventoryError {
        InventoryError::Etcd {
            endpoints: self.endpoints.clone(),
            what: what.to_owned(),
            source: etcd_client::Error::WatchError(reason),
        }
    }
}

impl Drop for Inventory {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A cluster-wide lock, held until dropped or [`InventoryLock::unlock`]ed.
/// It lives under the holder's lease: a holder that loses its lease (dies,
/// or is cut off from etcd for a TTL) loses the lock too.
pub struct InventoryLock {
    name: String,
    key: String,
    revision: i64,
    client: Option<Client>,
    endpoints: String,
    counters: Arc<Counters>,
    runtime: Handle,
}

impl std::fmt::Debug for InventoryLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InventoryLock")
            .field("key", &self.key)
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

impl InventoryLock {
    /// The lock's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The etcd revision at which it was taken.
    #[must_use]
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Releases the lock now.
    ///
    /// # Errors
    /// etcd did not confirm; the lock is then released when the lease
    /// expires at the latest.
    pub async fn unlock(mut self) -> Result<(), InventoryError> {
        match self.client.take() {
            Some(client) => release(client, self.release_args()).await,
            None => Ok(()),
        }
    }

    fn release_args(&self) -> Release {
        Release {
            key: self.key.clone(),
            revision: self.revision,
            endpoints: self.endpoints.clone(),
            counters: self.counters.clone(),
        }
    }
}

impl Drop for InventoryLock {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let args = self.release_args();
            self.runtime.spawn(async move {
                if let Err(e) = release(client, args).await {
                    tracing::warn!(
                        error = chain(&e),
                        "lock not released; it goes with the lease"
                    );
                }
            });
        }
    }
}

struct Release {
    key: String,
    revision: i64,
    endpoints: String,
    counters: Arc<Counters>,
}

/// Deletes the lock key if it is still the one taken at `revision` (after
/// a lost lease someone else may hold it now).
async fn release(mut client: Client, r: Release) -> Result<(), InventoryError> {
    let txn = Txn::new()
        .when([Compare::create_revision(
            r.key.clone(),
            CompareOp::Equal,
            r.revision,
        )])
        .and_then([TxnOp::delete(r.key.clone(), None)]);
    let what = format!("releasing lock {}", r.key);
    let reply = call(&r.endpoints, &what, client.txn(txn)).await?;
    if reply.succeeded() {
        r.counters.delete(r.key.len());
        tracing::info!(lock = %r.key, "lock released");
    } else {
        tracing::warn!(lock = %r.key, "lock already gone (its lease expired or was revoked)");
    }
    Ok(())
}

async fn call<T>(
    endpoints: &str,
    what: &str,
    f: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, InventoryError> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(source)) => Err(InventoryError::Etcd {
            endpoints: endpoints.to_owned(),
            what: what.to_owned(),
            source,
        }),
        Err(_) => Err(InventoryError::Timeout {
            endpoints: endpoints.to_owned(),
            what: what.to_owned(),
            timeout: CALL_TIMEOUT,
        }),
    }
}

fn first_kv(reply: &etcd_client::TxnResponse) -> Option<KeyValue> {
    reply.op_responses().into_iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => g.kvs().first().cloned(),
        _ => None,
    })
}

fn parse_counter(key: &str, value: &[u8]) -> Result<u64, InventoryError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| InventoryError::BadCounter {
            key: key.to_owned(),
            value: String::from_utf8_lossy(value).into_owned(),
        })
}

/// Whether `new` must be written over `old`, last written: anything but
/// the load changed, or the load moved by more than
/// [`LOAD_HYSTERESIS_PERCENT`] % of the capacity.
fn instance_changed(old: &InstanceInfo, new: &InstanceInfo) -> bool {
    let same_but_load = InstanceInfo {
        load_bps: old.load_bps,
        ..new.clone()
    } == *old;
    let moved = u128::from(old.load_bps.abs_diff(new.load_bps));
    !same_but_load
        || moved * 100 > u128::from(new.capacity_bps) * u128::from(LOAD_HYSTERESIS_PERCENT)
}

/// The names of keys.
#[derive(Clone, Debug)]
struct Keys {
    /// `{prefix}/`.
    root: String,
    host: String,
    /// This host's host key.
    own_host: String,
    /// The prefix of this host's instance keys.
    own_instances: String,
}

impl Keys {
    fn new(prefix: &str, host: &str) -> Self {
        let root = format!("{}/", prefix.trim_end_matches('/'));
        Self {
            own_host: format!("{root}hosts/{host}"),
            own_instances: format!("{root}instances/{host}/"),
            root,
            host: host.to_owned(),
        }
    }

    fn instance(&self, name: &str) -> String {
        format!("{}{name}", self.own_instances)
    }

    fn lock(&self, name: &str) -> String {
        format!("{}locks/{name}", self.root)
    }

    fn number(&self, service: &str) -> String {
        format!("{}numbers/{service}", self.root)
    }

    fn ask(&self, host: &str, service: &str) -> String {
        format!("{}asks/{host}/{service}", self.root)
    }

    fn is_own(&self, key: &str) -> bool {
        key == self.own_host || key.starts_with(&self.own_instances)
    }

    /// What a key under the root holds, if it is a host or an instance.
    fn parse(&self, key: &str, value: &[u8]) -> Option<Result<Entry, serde_json::Error>> {
        let rest = key.strip_prefix(&self.root)?;
        if let Some(host) = rest.strip_prefix("hosts/") {
            (!host.contains('/')).then(|| serde_json::from_slice(value).map(Entry::Host))
        } else if let Some(rest) = rest.strip_prefix("instances/") {
            let (host, name) = rest.split_once('/')?;
            (!host.is_empty() && !name.is_empty() && !name.contains('/'))
                .then(|| serde_json::from_slice(value).map(Entry::Instance))
        } else if let Some(rest) = rest.strip_prefix("asks/") {
            let (host, service) = rest.split_once('/')?;
            let count = core::str::from_utf8(value).ok()?.trim().parse().ok()?;
            (!host.is_empty() && !service.is_empty() && !service.contains('/')).then(|| {
                Ok(Entry::Ask {
                    host: host.to_owned(),
                    service: service.to_owned(),
                    count,
                })
            })
        } else {
            None
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Entry {
    Host(HostInfo),
    Instance(InstanceInfo),
    Ask {
        host: String,
        service: String,
        count: u64,
    },
}

/// What this host publishes.
#[derive(Debug)]
struct Local {
    host: HostInfo,
    instances: BTreeMap<String, InstanceInfo>,
}

/// A connection to etcd with this host's lease, while the task has one.
#[derive(Clone)]
struct Session {
    client: Client,
    lease: i64,
}

#[derive(Debug, Default)]
struct Counters {
    puts: AtomicU64,
    deletes: AtomicU64,
    bytes_written: AtomicU64,
    lease_grants: AtomicU64,
    keepalives: AtomicU64,
    reconnects: AtomicU64,
    resyncs: AtomicU64,
}

impl Counters {
    fn put(&self, bytes: usize) {
        self.puts.fetch_add(1, Ordering::Relaxed);
        self.bytes(bytes);
    }

    fn delete(&self, bytes: usize) {
        self.deletes.fetch_add(1, Ordering::Relaxed);
        self.bytes(bytes);
    }

    fn bytes(&self, n: usize) {
        self.bytes_written
            .fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self) -> InventoryStats {
        InventoryStats {
            puts: self.puts.load(Ordering::Relaxed),
            deletes: self.deletes.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            lease_grants: self.lease_grants.load(Ordering::Relaxed),
            keepalives: self.keepalives.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            resyncs: self.resyncs.load(Ordering::Relaxed),
        }
    }
}

/// One of this host's keys as etcd holds it, to our knowledge.
#[derive(Debug)]
struct Written {
    value: Vec<u8>,
    lease: i64,
    /// The revision that wrote it: older news about the key is ignored.
    revision: i64,
}

/// Why a session with etcd ended.
enum End {
    /// etcd unreachable or failing: wait, then try again.
    Lost(String),
    /// The lease is gone: a new one, everything published again, now.
    LeaseLost,
    /// The watch cannot go on (compacted): read everything again, now.
    Resync(String),
}

impl From<InventoryError> for End {
    /// The reason, without the endpoints: the log line names them.
    fn from(e: InventoryError) -> Self {
        Self::Lost(match e {
            InventoryError::Etcd { what, source, .. } => format!("{what} failed: {source}"),
            InventoryError::Timeout { what, timeout, .. } => {
                format!("no answer to {what} within {timeout:?}")
            }
            e => chain(&e),
        })
    }
}

/// An error and its sources, for a log line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

struct Task {
    keys: Keys,
    endpoints: String,
    options: InventoryOptions,
    desired: watch::Receiver<Option<Arc<Local>>>,
    desired_open: bool,
    snapshot: watch::Sender<Snapshot>,
    session: watch::Sender<Option<Session>>,
    counters: Arc<Counters>,
    /// This host's lease and its granted TTL, while it is believed alive.
    lease: Option<(i64, Duration)>,
    /// Every host and instance key, as of `snapshot.revision`.
    cluster: BTreeMap<String, Entry>,
    /// This host's keys in etcd.
    own: BTreeMap<String, Written>,
    /// Sessions that reached etcd.
    sessions: u64,
    /// etcd was found unreachable, and has not answered since.
    unreachable: bool,
}

impl Task {
    async fn run(mut self, stop: oneshot::Receiver<()>) {
        let revoke = tokio::select! {
            () = self.sessions() => false,
            stop = stop => stop.is_ok(),
        };
        if revoke {
            self.revoke().await;
        }
    }

    async fn revoke(&mut self) {
        let Some(Session { mut client, lease }) = self.session.send_replace(None) else {
            tracing::info!(
                etcd = %self.endpoints,
                host = %self.keys.host,
                "stopped while etcd was out of reach: this host's keys go when the lease expires"
            );
            return;
        };
        match tokio::time::timeout(Duration::from_secs(1), client.lease_revoke(lease)).await {
            Ok(Ok(_)) => tracing::info!(
                etcd = %self.endpoints,
                host = %self.keys.host,
                "lease revoked: this host's keys are gone from etcd"
            ),
            _ => tracing::warn!(
                etcd = %self.endpoints,
                host = %self.keys.host,
                ttl = ?self.options.ttl,
                "lease not revoked: this host's keys go when it expires"
            ),
        }
    }

    async fn sessions(&mut self) {
        loop {
            let end = self.session().await;
            self.session.send_replace(None);
            match end {
                End::LeaseLost => {
                    tracing::warn!(
                        etcd = %self.endpoints,
                        host = %self.keys.host,
                        "lease lost (expired or revoked): granting a new one and publishing this host again"
                    );
                    self.lease = None;
                }
                End::Resync(why) => {
                    tracing::info!(etcd = %self.endpoints, %why, "reading the inventory again");
                }
                End::Lost(why) => {
                    self.snapshot.send_modify(|s| s.connected = false);
                    let revision = self.snapshot.borrow().revision;
                    let retry = self.options.retry.max(Duration::from_millis(100));
                    if self.unreachable {
                        tracing::debug!(etcd = %self.endpoints, %why, "still unreachable");
                    } else if revision == 0 {
                        tracing::warn!(
                            "etcd at {}: unreachable ({why}); no inventory yet, retrying every {retry:?}",
                            self.endpoints
                        );
                    } else {
                        tracing::warn!(
                            "etcd at {}: unreachable ({why}); keeping the inventory seen at revision {revision}, retrying every {retry:?}",
                            self.endpoints
                        );
                    }
                    self.unreachable = true;
                    tokio::time::sleep(retry).await;
                }
            }
        }
    }

    async fn session(&mut self) -> End {
        let options = ConnectOptions::new().with_connect_timeout(CALL_TIMEOUT);
        let connect = Client::connect(&self.options.endpoints, Some(options));
        let mut client = match self.call("connecting", connect).await {
            Ok(c) => c,
            Err(e) => return e.into(),
        };
        let (mut keeper, mut keepalive, ttl) = match self.lease(&mut client).await {
            Ok(l) => l,
            Err(e) => return e,
        };
        let lease = keeper.id();

        let get = client.get(
            self.keys.root.clone(),
            Some(GetOptions::new().with_prefix()),
        );
        let reply = match self.call("reading the inventory", get).await {
            Ok(r) => r,
            Err(e) => return e.into(),
        };
        let revision = reply.header().map_or(0, |h| h.revision());
        self.cluster.clear();
        self.own.clear();
        for kv in reply.kvs() {
            self.saw_put(kv);
        }
        self.publish_snapshot(revision);
        if self.sessions > 0 {
            Counters::bump(&self.counters.resyncs);
        }
        if self.unreachable {
            self.unreachable = false;
            if self.sessions > 0 {
                Counters::bump(&self.counters.reconnects);
            }
            tracing::info!(
                "etcd at {}: reachable again; inventory read at revision {revision}",
                self.endpoints
            );
        }
        self.sessions += 1;

        let watch = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let watch = client.watch(self.keys.root.clone(), Some(watch));
        let mut watch = match self.call("watching the inventory", watch).await {
            Ok(w) => w,
            Err(e) => return e.into(),
        };
        self.session.send_replace(Some(Session {
            client: client.clone(),
            lease,
        }));
        if let Err(e) = self.publish(&mut client, lease).await {
            return e;
        }
        self.follow(
            &mut client,
            lease,
            ttl,
            &mut keeper,
            &mut keepalive,
            &mut watch,
        )
        .await
    }

    /// Keeps the lease, follows the watch and publishes changes, until
    /// something breaks.
    async fn follow(
        &mut self,
        client: &mut Client,
        lease: i64,
        ttl: Duration,
        keeper: &mut LeaseKeeper,
        keepalive: &mut LeaseKeepAliveStream,
        watch: &mut WatchStream,
    ) -> End {
        let period = ttl / 3;
        let mut tick = tokio::time::interval_at(Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut unanswered = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if unanswered {
                        return End::Lost(format!("no answer to a lease keepalive within {period:?}"));
                    }
                    if let Err(e) = keeper.keep_alive().await {
                        return End::Lost(format!("lease keepalive: {e}"));
                    }
                    unanswered = true;
                }
                reply = keepalive.message() => match reply {
                    Ok(Some(r)) if r.ttl() > 0 => {
                        unanswered = false;
                        Counters::bump(&self.counters.keepalives);
                    }
                    Ok(Some(_)) => return End::LeaseLost,
                    Ok(None) => return End::Lost("etcd ended the keepalive stream".into()),
                    Err(e) => return End::Lost(format!("lease keepalive: {e}")),
                },
                reply = watch.message() => {
                    let reply = match reply {
                        Ok(Some(r)) => r,
                        Ok(None) => return End::Lost("etcd ended the watch".into()),
                        Err(e) => return End::Lost(format!("watch: {e}")),
                    };
                    if reply.canceled() {
                        return End::Resync(format!(
                            "watch cancelled ({}; compacted at {})",
                            reply.cancel_reason(),
                            reply.compact_revision()
                        ));
                    }
                    let mut own_changed = false;
                    for event in reply.events() {
                        let Some(kv) = event.kv() else { continue };
                        own_changed |= match event.event_type() {
                            EventType::Put => self.saw_put(kv),
                            EventType::Delete => self.saw_delete(kv),
                        };
                    }
                    let revision = reply.header().map_or(0, |h| h.revision());
                    self.publish_snapshot(revision);
                    if own_changed {
                        tracing::warn!(
                            etcd = %self.endpoints,
                            host = %self.keys.host,
                            "this host's keys were deleted or changed by someone else (lease revoked, etcdctl, another agent named {}?); writing them back",
                            self.keys.host
                        );
                        if let Err(e) = self.publish(client, lease).await {
                            return e;
                        }
                    }
                }
                changed = self.desired.changed(), if self.desired_open => {
                    if changed.is_err() {
                        self.desired_open = false;
                    } else if let Err(e) = self.publish(client, lease).await {
                        return e;
                    }
                }
            }
        }
    }

    /// Our lease if etcd still has it, else a new one; with its keepalive
    /// stream and its granted TTL.
    async fn lease(
        &mut self,
        client: &mut Client,
    ) -> Result<(LeaseKeeper, LeaseKeepAliveStream, Duration), End> {
        if let Some((id, ttl)) = self.lease {
            match self
                .call("renewing the lease", client.lease_keep_alive(id))
                .await
            {
                Ok((keeper, stream)) => {
                    Counters::bump(&self.counters.keepalives);
                    return Ok((keeper, stream, ttl));
                }
                // Its answer to a lease etcd no longer has.
                Err(InventoryError::Etcd {
                    source: etcd_client::Error::LeaseKeepAliveError(_),
                    ..
                }) => {
                    tracing::warn!(
                        etcd = %self.endpoints,
                        host = %self.keys.host,
                        lease = format!("{id:x}"),
                        "lease expired while etcd was out of reach: granting a new one and publishing this host again"
                    );
                    self.lease = None;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let ttl = self.options.ttl;
        let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let secs = i64::try_from(secs).unwrap_or(i64::MAX).max(1);
        let grant = self
            .call("granting a lease", client.lease_grant(secs, None))
            .await?;
        Counters::bump(&self.counters.lease_grants);
        let id = grant.id();
        let ttl = Duration::from_secs(u64::try_from(grant.ttl()).unwrap_or(1).max(1));
        self.lease = Some((id, ttl));
        tracing::info!(
            etcd = %self.endpoints,
            host = %self.keys.host,
            lease = format!("{id:x}"),
            ttl = grant.ttl(),
            "lease granted"
        );
        let (keeper, stream) = self
            .call("renewing the lease", client.lease_keep_alive(id))
            .await?;
        Counters::bump(&self.counters.keepalives);
        Ok((keeper, stream, ttl))
    }

    /// Writes this host's keys that differ from what etcd holds, and
    /// deletes those no longer wanted.
    async fn publish(&mut self, client: &mut Client, lease: i64) -> Result<(), End> {
        let Some(local) = self.desired.borrow_and_update().clone() else {
            return Ok(());
        };
        let mut wanted: BTreeMap<String, (Vec<u8>, Option<&InstanceInfo>)> = BTreeMap::new();
        let host = serde_json::to_vec(&local.host).unwrap_or_default();
        wanted.insert(self.keys.own_host.clone(), (host, None));
        for (name, instance) in &local.instances {
            let value = serde_json::to_vec(instance).unwrap_or_default();
            wanted.insert(self.keys.instance(name), (value, Some(instance)));
        }
        let mut ops: Vec<(String, Option<Vec<u8>>)> = Vec::new();
        for (key, (value, instance)) in &wanted {
            let stale = match (self.own.get(key), instance) {
                (Some(w), _) if w.lease != lease => true,
                (Some(w), Some(new)) => serde_json::from_slice::<InstanceInfo>(&w.value)
                    .map_or(true, |old| instance_changed(&old, new)),
                (Some(w), None) => w.value != *value,
                (None, _) => true,
            };
            if stale {
                ops.push((key.clone(), Some(value.clone())));
            }
        }
        ops.extend(
            self.own
                .keys()
                .filter(|k| !wanted.contains_key(*k))
                .map(|k| (k.clone(), None)),
        );
        for chunk in ops.chunks(TXN_OPS) {
            let txn = Txn::new().and_then(
                chunk
                    .iter()
                    .map(|(key, value)| match value {
                        Some(v) => TxnOp::put(
                            key.clone(),
                            v.clone(),
                            Some(PutOptions::new().with_lease(lease)),
                        ),
                        None => TxnOp::delete(key.clone(), None),
                    })
                    .collect::<Vec<_>>(),
            );
            let reply = match self.call("publishing this host", client.txn(txn)).await {
                Ok(r) => r,
                Err(InventoryError::Etcd {
                    source: etcd_client::Error::GRpcStatus(status),
                    ..
                }) if status.message().contains("lease not found") => return Err(End::LeaseLost),
                Err(e) => return Err(e.into()),
            };
            let revision = reply.header().map_or(0, |h| h.revision());
            for (key, value) in chunk {
                match value {
                    Some(v) => {
                        self.counters.put(key.len() + v.len());
                        self.own.insert(
                            key.clone(),
                            Written {
                                value: v.clone(),
                                lease,
                                revision,
                            },
                        );
                    }
                    None => {
                        self.counters.delete(key.len());
                        self.own.remove(key);
                    }
                }
            }
        }
        if !ops.is_empty() {
            tracing::debug!(host = %self.keys.host, keys = ops.len(), "published");
        }
        Ok(())
    }

    /// Takes in a put; true if it changed one of our keys behind our back.
    fn saw_put(&mut self, kv: &KeyValue) -> bool {
        let Ok(key) = kv.key_str() else { return false };
        match self.keys.parse(key, kv.value()) {
            Some(Ok(entry)) => {
                self.cluster.insert(key.to_owned(), entry);
            }
            Some(Err(e)) => {
                tracing::warn!(key, error = %e, "ignoring a malformed inventory entry");
                self.cluster.remove(key);
            }
            None => return false,
        }
        if !self.keys.is_own(key) {
            return false;
        }
        let revision = kv.mod_revision();
        if self.own.get(key).is_some_and(|w| w.revision >= revision) {
            return false;
        }
        self.own.insert(
            key.to_owned(),
            Written {
                value: kv.value().to_vec(),
                lease: kv.lease(),
                revision,
            },
        );
        true
    }

    /// Takes in a delete; true if it deleted one of our keys behind our
    /// back (or with our expired lease).
    fn saw_delete(&mut self, kv: &KeyValue) -> bool {
        let Ok(key) = kv.key_str() else { return false };
        self.cluster.remove(key);
        if !self.keys.is_own(key) {
            return false;
        }
        // A delete carries the revision of the deletion.
        match self.own.get(key) {
            Some(w) if w.revision < kv.mod_revision() => {
                self.own.remove(key);
                true
            }
            _ => false,
        }
    }

    fn publish_snapshot(&self, revision: i64) {
        let mut hosts = BTreeMap::new();
        let mut instances = BTreeMap::new();
        let mut asks = BTreeMap::new();
        for entry in self.cluster.values() {
            match entry {
                Entry::Host(h) => {
                    hosts.insert(h.host.clone(), h.clone());
                }
                Entry::Instance(i) => {
                    instances.insert(i.name.clone(), i.clone());
                }
                Entry::Ask {
                    host,
                    service,
                    count,
                } => {
                    asks.insert((host.clone(), service.clone()), *count);
                }
            }
        }
        self.snapshot.send_replace(Snapshot {
            hosts,
            instances,
            asks,
            connected: true,
            revision,
        });
    }

    async fn call<T>(
        &self,
        what: &str,
        f: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, InventoryError> {
        call(&self.endpoints, what, f).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(load: u64, state: &str) -> InstanceInfo {
        InstanceInfo {
            name: "firewall-0".into(),
            service: "firewall".into(),
            host: "a".into(),
            port: "vf0".into(),
            slot: 3,
            capacity_bps: 1_000_000,
            load_bps: load,
            state: state.into(),
        }
    }

    #[test]
    fn load_is_written_only_past_the_hysteresis() {
        let old = instance(500_000, "active");
        assert!(!instance_changed(&old, &instance(500_000, "active")));
        assert!(
            !instance_changed(&old, &instance(600_000, "active")),
            "10 % is not more"
        );
        assert!(!instance_changed(&old, &instance(400_000, "active")));
        assert!(instance_changed(&old, &instance(600_001, "active")));
        assert!(instance_changed(&old, &instance(399_999, "active")));
        assert!(
            instance_changed(&old, &instance(500_000, "draining")),
            "state at once"
        );
        let mut moved = instance(500_000, "active");
        moved.slot = 4;
        assert!(instance_changed(&old, &moved));
    }

    #[test]
    fn keys_are_parsed_by_kind() {
        let keys = Keys::new("/chaingate/", "a");
        assert_eq!(keys.instance("fw-0"), "/chaingate/instances/a/fw-0");
        assert!(keys.is_own("/chaingate/hosts/a"));
        assert!(keys.is_own("/chaingate/instances/a/fw-0"));
        assert!(!keys.is_own("/chaingate/hosts/ab"));
        assert!(!keys.is_own("/chaingate/instances/ab/fw-0"));
        let value = serde_json::to_vec(&instance(1, "active")).unwrap();
        assert!(matches!(
            keys.parse("/chaingate/instances/b/firewall-0", &value),
            Some(Ok(Entry::Instance(_)))
        ));
        assert!(
            keys.parse("/chaingate/locks/scale/firewall", b"a")
                .is_none()
        );
        assert!(keys.parse("/chaingate/numbers/firewall", b"3").is_none());
        assert!(matches!(
            keys.parse("/chaingate/hosts/b", b"{"),
            Some(Err(_))
        ));
    }

    #[test]
    fn counters_parse_or_name_the_key() {
        assert_eq!(parse_counter("/k", b"42").unwrap(), 42);
        let e = parse_counter("/chaingate/numbers/fw", b"x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "etcd key /chaingate/numbers/fw holds \"x\", not an instance number"
        );
    }
}
