//! The agent's durable state, in an embedded database (redb).
//!
//! | table | key | value |
//! | --- | --- | --- |
//! | `config` | `desired` | the operator's YAML, as applied |
//! | `config` | `generation` | the last generation pushed to the DPU |
//! | `targets` | service | instances wanted (min at apply, `scale` after) |
//! | `instances` | name | [`InstanceRecord`] (JSON) |
//! | `counters` | `next:SERVICE`, `event` | the next instance number, event seq |
//! | `events` | seq | [`EventRecord`] (JSON), the last [`EVENTS_KEPT`] |
//!
//! Every change is one transaction, and every multi-step action (launch,
//! stop) writes its intent before acting: an instance is recorded
//! `starting` with its VF before the launcher runs, and `stopping` before
//! it is stopped. A crash between two steps leaves a record the next start
//! finishes: a `starting` instance whose process runs is adopted, one
//! whose process does not is launched again, a `stopping` one is stopped
//! and removed. Nothing is launched that was not recorded first, so an
//! agent that restarts never launches a duplicate, and nothing recorded is
//! dropped until it has been stopped.

use std::collections::BTreeMap;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::launcher::Handle;
use crate::vf::VfRef;

const CONFIG: TableDefinition<&str, &[u8]> = TableDefinition::new("config");
const TARGETS: TableDefinition<&str, u64> = TableDefinition::new("targets");
const INSTANCES: TableDefinition<&str, &[u8]> = TableDefinition::new("instances");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");

/// Events kept for `chaingate events`.
pub const EVENTS_KEPT: u64 = 10_000;

/// Where an instance is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Recorded, launched or being launched, not yet healthy: not on the
    /// DPU.
    Starting,
    /// Healthy and registered with the DPU.
    Active,
    /// On the DPU as draining: no new sessions; stopped when its sessions
    /// are gone or its service's drain timeout passes.
    Draining,
    /// Being stopped; its VF is released after.
    Stopping,
}

impl Phase {
    /// The word the API and the CLI use.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Active => "active",
            Self::Draining => "draining",
            Self::Stopping => "stopping",
        }
    }
}

/// One instance the agent is responsible for.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// Its name (`SERVICE-N`).
    pub name: String,
    /// Its service.
    pub service: String,
    /// The VF it was given.
    pub vf: VfRef,
    /// The launcher that runs it (`process`, `qemu`).
    pub launcher: String,
    /// How to find it there; `None` until the launcher returned.
    pub handle: Option<Handle>,
    /// Its phase.
    pub phase: Phase,
    /// When the current phase began (ms since the Unix epoch).
    pub since_ms: u64,
    /// Launches so far (1 for the first; more after it failed).
    pub launches: u32,
}

/// Something the agent did, or saw.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct EventRecord {
    /// Its sequence number (from 1).
    pub seq: u64,
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
    /// What kind (`instance_launched`, `instance_failed`, ...).
    pub kind: String,
    /// The service, when there is one.
    pub service: String,
    /// The instance, when there is one.
    pub instance: String,
    /// In words.
    pub message: String,
}

/// The store failed: the file, or the disk.
#[derive(Debug, thiserror::Error)]
#[error("state database: {0}")]
pub struct StoreError(String);

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

/// The agent's database.
#[derive(Debug)]
pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (or creates) the database at `path`, and its tables.
    ///
    /// # Errors
    /// The file cannot be created or is not a database, or another agent
    /// has it open.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError(format!("{}: {e}", dir.display())))?;
        }
        let db =
            Database::create(path).map_err(|e| StoreError(format!("{}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(CONFIG).map_err(err)?;
        txn.open_table(TARGETS).map_err(err)?;
        txn.open_table(INSTANCES).map_err(err)?;
        txn.open_table(COUNTERS).map_err(err)?;
        txn.open_table(EVENTS).map_err(err)?;
        txn.commit().map_err(err)?;
        Ok(Self { db })
    }

    /// The desired configuration (the operator's YAML), if one was applied.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn desired(&self) -> Result<Option<String>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(CONFIG).map_err(err)?;
        let value = table.get("desired").map_err(err)?;
        Ok(value.map(|v| String::from_utf8_lossy(v.value()).into_owned()))
    }

    /// Replaces the desired configuration and sets the targets of its
    /// services, in one transaction: a service new to the config gets
    /// `targets[service]`; one already there keeps its target, clamped into
    /// the new bounds; a service no longer there loses its target.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn set_desired(
        &self,
        yaml: &str,
        bounds: &BTreeMap<String, (u64, u64)>,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut config = txn.open_table(CONFIG).map_err(err)?;
            config.insert("desired", yaml.as_bytes()).map_err(err)?;
            let mut targets = txn.open_table(TARGETS).map_err(err)?;
            let old: BTreeMap<String, u64> = targets
                .iter()
                .map_err(err)?
                .filter_map(Result::ok)
                .map(|(k, v)| (k.value().to_owned(), v.value()))
                .collect();
            for name in old.keys().filter(|n| !bounds.contains_key(*n)) {
                targets.remove(name.as_str()).map_err(err)?;
            }
            for (name, (min, max)) in bounds {
                let want = old.get(name).copied().unwrap_or(*min).clamp(*min, *max);
                targets.insert(name.as_str(), want).map_err(err)?;
            }
        }
        txn.commit().map_err(err)
    }

    /// The instances wanted per service.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn targets(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(TARGETS).map_err(err)?;
        let it = table.iter().map_err(err)?;
        it.map(|r| {
            r.map(|(k, v)| (k.value().to_owned(), v.value()))
                .map_err(err)
        })
        .collect()
    }

    /// Sets one service's target.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn set_target(&self, service: &str, n: u64) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        txn.open_table(TARGETS)
            .map_err(err)?
            .insert(service, n)
            .map_err(err)?;
        txn.commit().map_err(err)
    }

    /// Every instance, by name.
    ///
    /// # Errors
    /// [`StoreError`], or a record that does not decode.
    pub fn instances(&self) -> Result<BTreeMap<String, InstanceRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(INSTANCES).map_err(err)?;
        let mut out = BTreeMap::new();
        for row in table.iter().map_err(err)? {
            let (k, v) = row.map_err(err)?;
            let record: InstanceRecord = serde_json::from_slice(v.value())
                .map_err(|e| StoreError(format!("instance {}: {e}", k.value())))?;
            out.insert(k.value().to_owned(), record);
        }
        Ok(out)
    }

    /// Records a new instance of `service` on `vf`, in phase `starting`,
    /// with the service's next number, and returns it.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn new_instance(
        &self,
        service: &str,
        vf: VfRef,
        launcher: &str,
        now_ms: u64,
    ) -> Result<InstanceRecord, StoreError> {
        self.new_instance_from(service, 0, vf, launcher, now_ms)
    }

    /// [`Self::new_instance`], numbered at least `at_least` (a number the
    /// cluster handed out: unique across hosts).
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn new_instance_from(
        &self,
        service: &str,
        at_least: u64,
        vf: VfRef,
        launcher: &str,
        now_ms: u64,
    ) -> Result<InstanceRecord, StoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        let record = {
            let mut counters = txn.open_table(COUNTERS).map_err(err)?;
            let key = format!("next:{service}");
            let n = counters
                .get(key.as_str())
                .map_err(err)?
                .map_or(0, |v| v.value())
                .max(at_least);
            counters.insert(key.as_str(), n + 1).map_err(err)?;
            let record = InstanceRecord {
                name: format!("{service}-{n}"),
                service: service.to_owned(),
                vf,
                launcher: launcher.to_owned(),
                handle: None,
                phase: Phase::Starting,
                since_ms: now_ms,
                launches: 0,
            };
            put(&mut txn.open_table(INSTANCES).map_err(err)?, &record)?;
            record
        };
        txn.commit().map_err(err)?;
        Ok(record)
    }

    /// Writes an instance's record as it is now.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn put_instance(&self, record: &InstanceRecord) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        put(&mut txn.open_table(INSTANCES).map_err(err)?, record)?;
        txn.commit().map_err(err)
    }

    /// Forgets an instance (after it was stopped and its VF released).
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn remove_instance(&self, name: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        txn.open_table(INSTANCES)
            .map_err(err)?
            .remove(name)
            .map_err(err)?;
        txn.commit().map_err(err)
    }

    /// The generation last pushed to the DPU.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn generation(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(CONFIG).map_err(err)?;
        let value = table.get("generation").map_err(err)?;
        Ok(value
            .and_then(|v| v.value().try_into().ok().map(u64::from_le_bytes))
            .unwrap_or(0))
    }

    /// Records the generation about to be pushed.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn set_generation(&self, generation: u64) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        txn.open_table(CONFIG)
            .map_err(err)?
            .insert("generation", generation.to_le_bytes().as_slice())
            .map_err(err)?;
        txn.commit().map_err(err)
    }

    /// Appends an event (numbered here), dropping the oldest beyond
    /// [`EVENTS_KEPT`].
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn add_event(&self, mut event: EventRecord) -> Result<EventRecord, StoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut counters = txn.open_table(COUNTERS).map_err(err)?;
            let seq = counters.get("event").map_err(err)?.map_or(0, |v| v.value()) + 1;
            counters.insert("event", seq).map_err(err)?;
            event.seq = seq;
            let mut events = txn.open_table(EVENTS).map_err(err)?;
            let bytes = serde_json::to_vec(&event).map_err(err)?;
            events.insert(seq, bytes.as_slice()).map_err(err)?;
            if seq > EVENTS_KEPT {
                events.remove(seq - EVENTS_KEPT).map_err(err)?;
            }
        }
        txn.commit().map_err(err)?;
        Ok(event)
    }

    /// The events after `after`, oldest first.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn events_after(&self, after: u64) -> Result<Vec<EventRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(EVENTS).map_err(err)?;
        let mut out = Vec::new();
        for row in table.range(after + 1..).map_err(err)? {
            let (_, v) = row.map_err(err)?;
            out.push(serde_json::from_slice(v.value()).map_err(err)?);
        }
        Ok(out)
    }
}

fn put(
    table: &mut redb::Table<'_, &str, &[u8]>,
    record: &InstanceRecord,
) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(record).map_err(err)?;
    table
        .insert(record.name.as_str(), bytes.as_slice())
        .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!(
            "chaingate-store-{name}-{}.redb",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&p);
        p
    }

    fn vf(port: &str) -> VfRef {
        VfRef {
            port: port.into(),
            device: format!("{port}-h"),
        }
    }

    #[test]
    fn instances_get_numbers_that_are_never_reused() {
        let path = temp("numbers");
        {
            let store = Store::open(&path).unwrap();
            let a = store.new_instance("fw", vf("vf0"), "process", 1).unwrap();
            let b = store.new_instance("fw", vf("vf1"), "process", 2).unwrap();
            let c = store.new_instance("nat", vf("vf2"), "process", 3).unwrap();
            assert_eq!(
                (a.name.as_str(), b.name.as_str(), c.name.as_str()),
                ("fw-0", "fw-1", "nat-0")
            );
            assert_eq!(a.phase, Phase::Starting);
            store.remove_instance("fw-1").unwrap();
        }
        // Reopened: what was recorded is there, and numbers go on.
        let store = Store::open(&path).unwrap();
        let names: Vec<String> = store.instances().unwrap().into_keys().collect();
        assert_eq!(names, ["fw-0", "nat-0"]);
        assert_eq!(
            store
                .new_instance("fw", vf("vf1"), "process", 4)
                .unwrap()
                .name,
            "fw-2"
        );
        drop(store);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn targets_follow_the_config_and_stay_in_bounds() {
        let path = temp("targets");
        let store = Store::open(&path).unwrap();
        let bounds = |v: &[(&str, u64, u64)]| {
            v.iter()
                .map(|(n, lo, hi)| ((*n).to_owned(), (*lo, *hi)))
                .collect()
        };
        store
            .set_desired("a", &bounds(&[("fw", 1, 4), ("ids", 2, 3)]))
            .unwrap();
        assert_eq!(
            store.targets().unwrap(),
            BTreeMap::from([("fw".into(), 1), ("ids".into(), 2)])
        );
        store.set_target("fw", 4).unwrap();
        // fw keeps 4 within its new bounds... then is clamped to 3; ids goes.
        store
            .set_desired("b", &bounds(&[("fw", 1, 3), ("nat", 1, 2)]))
            .unwrap();
        assert_eq!(
            store.targets().unwrap(),
            BTreeMap::from([("fw".into(), 3), ("nat".into(), 1)])
        );
        assert_eq!(store.desired().unwrap().as_deref(), Some("b"));
        drop(store);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn events_are_numbered_and_read_after_a_point() {
        let path = temp("events");
        let store = Store::open(&path).unwrap();
        for i in 0..5 {
            store
                .add_event(EventRecord {
                    seq: 0,
                    at_ms: i,
                    kind: "k".into(),
                    service: String::new(),
                    instance: String::new(),
                    message: format!("m{i}"),
                })
                .unwrap();
        }
        let after: Vec<u64> = store
            .events_after(3)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(after, [4, 5]);
        assert_eq!(store.events_after(0).unwrap()[0].message, "m0");
        assert_eq!(store.generation().unwrap(), 0);
        store.set_generation(9).unwrap();
        assert_eq!(store.generation().unwrap(), 9);
        drop(store);
        std::fs::remove_file(&path).unwrap();
    }
}
