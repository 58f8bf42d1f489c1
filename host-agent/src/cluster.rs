//! This host in a cluster of hosts (DESIGN.md §6a, docs/cluster.md): what
//! the agent publishes to the inventory in etcd, and what it adds to its
//! DPU's configuration from everyone else's: the underlay, the other DPUs
//! as peers, their instances as remote instances.
//!
//! Every host runs the same chains (the DPUs' segment tags must mean the
//! same on the underlay): a host publishes a fingerprint of its chains
//! ([`chaingate_shared::Config::layout`]), and a host whose fingerprint
//! differs is left out of this DPU's configuration, with a log line.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use chaingate_proto::dpu;
use chaingate_proto::file::{
    GatewayFile, InstanceFile, PeerFile, PortFile, RemoteFile, RoleFile, StateFile, UnderlayFile,
};
use chaingate_shared::Config;

use crate::config::{ClusterFile, UnderlayPortFile};
use crate::inventory::{HostInfo, InstanceInfo, Inventory, InventoryOptions, Snapshot};
use crate::store::{InstanceRecord, Phase};

/// This host's part in the cluster.
#[derive(Debug)]
pub struct Cluster {
    /// The inventory.
    pub inventory: Inventory,
    /// This host's name.
    pub host: String,
    /// This DPU's underlay port and addresses.
    pub underlay: UnderlayPortFile,
    /// Hosts left out for another chain layout (said once each).
    refused: Mutex<BTreeSet<String>>,
}

impl Cluster {
    /// Joins the cluster the configuration names (the inventory connects
    /// in the background).
    #[must_use]
    pub fn start(c: &ClusterFile, runtime: &tokio::runtime::Handle) -> Self {
        let mut options = InventoryOptions::new(c.etcd.clone(), c.host.clone());
        options.prefix.clone_from(&c.prefix);
        options.ttl = crate::config::ms(c.lease_ttl);
        Self {
            inventory: Inventory::start(options, runtime),
            host: c.host.clone(),
            underlay: c.underlay.clone(),
            refused: Mutex::new(BTreeSet::new()),
        }
    }

    /// The fingerprint of the chains of a gateway file (`None` when the
    /// file is not a valid configuration).
    #[must_use]
    pub fn layout(gateway: &GatewayFile) -> Option<u64> {
        Config::try_from(&gateway.to_proto(1))
            .ok()
            .map(|c| c.layout())
    }

    /// Adds the underlay port and address, the other hosts' DPUs as peers
    /// and their active and draining instances of configured services as
    /// remote instances, from `snapshot`.
    pub fn merge(&self, g: &mut GatewayFile, snapshot: &Snapshot, layout: Option<u64>) {
        if !g.ports.iter().any(|p| p.name == self.underlay.port) {
            g.ports.push(PortFile {
                name: self.underlay.port.clone(),
                role: RoleFile::Underlay,
            });
        }
        g.underlay = Some(UnderlayFile {
            address: self.underlay.address.to_string(),
            mac: self.underlay.mac.clone(),
            mtu: self.underlay.mtu,
        });
        let mut peers = BTreeSet::new();
        for (name, h) in &snapshot.hosts {
            if *name == self.host || h.underlay == self.underlay.address {
                continue;
            }
            if Some(h.layout) != layout {
                let mut said = self
                    .refused
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if said.insert(name.clone()) {
                    tracing::warn!(
                        host = %name,
                        "left out: its chains differ from this host's (every host needs the same chains, in the same order)"
                    );
                }
                continue;
            }
            peers.insert(name.clone());
            g.peers.push(PeerFile {
                name: name.clone(),
                address: h.underlay.to_string(),
                mac: h.mac.clone(),
            });
        }
        let services: BTreeSet<&str> = g.services.iter().map(|s| s.name.as_str()).collect();
        let remote: Vec<InstanceFile> = snapshot
            .instances
            .values()
            .filter(|i| {
                peers.contains(&i.host)
                    && services.contains(i.service.as_str())
                    && matches!(i.state.as_str(), "active" | "draining")
                    && !g.instances.iter().any(|l| l.name == i.name)
            })
            .map(|i| InstanceFile {
                name: i.name.clone(),
                service: i.service.clone(),
                port: None,
                ingress: None,
                egress: None,
                remote: Some(RemoteFile {
                    peer: i.host.clone(),
                    slot: u32::from(i.slot),
                }),
                state: if i.state == "draining" {
                    StateFile::Draining
                } else {
                    StateFile::Active
                },
                weight: None,
            })
            .collect();
        g.instances.extend(remote);
    }

    /// Publishes this host and its instances as `g` (the configuration
    /// for the DPU, which gives each VF's index) and the DPU's telemetry
    /// say.
    pub fn publish(
        &self,
        g: &GatewayFile,
        records: &[&InstanceRecord],
        telemetry: Option<&dpu::Telemetry>,
        free_vfs: u32,
        layout: Option<u64>,
    ) {
        // The others' instances this DPU has sessions on.
        let mut using: Vec<String> = telemetry
            .map(|t| {
                t.instances
                    .iter()
                    .filter(|l| l.sessions > 0 && !records.iter().any(|r| r.name == l.instance))
                    .map(|l| l.instance.clone())
                    .collect()
            })
            .unwrap_or_default();
        using.sort();
        let host = HostInfo {
            host: self.host.clone(),
            underlay: self.underlay.address,
            mac: self.underlay.mac.clone(),
            free_vfs,
            layout: layout.unwrap_or(0),
            using,
        };
        let instances = records
            .iter()
            .filter_map(|r| {
                let slot = g.ports.iter().position(|p| p.name == r.vf.port)?;
                let capacity_bps = g
                    .services
                    .iter()
                    .find(|s| s.name == r.service)
                    .map_or(0, |s| s.capacity.0);
                let utilisation = telemetry
                    .and_then(|t| t.instances.iter().find(|l| l.instance == r.name))
                    .map_or(0.0, |l| l.utilisation);
                #[allow(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    clippy::cast_precision_loss
                )]
                let load_bps = (utilisation.max(0.0) * capacity_bps as f64) as u64;
                Some(InstanceInfo {
                    name: r.name.clone(),
                    service: r.service.clone(),
                    host: self.host.clone(),
                    port: r.vf.port.clone(),
                    slot: u16::try_from(slot).ok()?,
                    capacity_bps,
                    load_bps,
                    state: match r.phase {
                        Phase::Starting => "starting",
                        Phase::Active => "active",
                        Phase::Draining => "draining",
                        _ => "down",
                    }
                    .to_owned(),
                })
            })
            .collect();
        self.inventory.set_local(host, instances);
    }

    /// Whether another host's DPU has sessions on `instance` (as that
    /// host last said).
    #[must_use]
    pub fn used_elsewhere(&self, snapshot: &Snapshot, instance: &str) -> bool {
        snapshot
            .hosts
            .values()
            .any(|h| h.host != self.host && h.using.iter().any(|u| u == instance))
    }

    /// The utilisation of the other hosts' active instances of `service`
    /// (their load over their capacity), and how many starting or active
    /// instances of it they have.
    #[must_use]
    pub fn remote_load(&self, snapshot: &Snapshot, service: &str) -> (Vec<f64>, u64) {
        let theirs = snapshot
            .instances
            .values()
            .filter(|i| i.service == service && i.host != self.host);
        let mut load = Vec::new();
        let mut count = 0;
        for i in theirs {
            match i.state.as_str() {
                "active" => {
                    count += 1;
                    #[allow(clippy::cast_precision_loss)]
                    load.push(i.load_bps as f64 / i.capacity_bps.max(1) as f64);
                }
                "starting" => count += 1,
                _ => {}
            }
        }
        (load, count)
    }

    /// Starting and active instances of `service` in the cluster: this
    /// host's from its records, the others' from the inventory.
    #[must_use]
    pub fn count(
        &self,
        snapshot: &Snapshot,
        service: &str,
        records: &std::collections::BTreeMap<String, InstanceRecord>,
    ) -> u64 {
        let mine = records
            .values()
            .filter(|r| r.service == service && matches!(r.phase, Phase::Starting | Phase::Active))
            .count() as u64;
        mine + self.remote_load(snapshot, service).1
    }

    /// Where a new instance goes: this host while it has a free VF
    /// (`free_here`); else the host with the most free VFs, the first by
    /// name of those; `None` when no host has one.
    #[must_use]
    pub fn place(&self, snapshot: &Snapshot, free_here: u32) -> Option<String> {
        if free_here > 0 {
            return Some(self.host.clone());
        }
        snapshot
            .hosts
            .values()
            .filter(|h| h.host != self.host && h.free_vfs > 0)
            .max_by(|a, b| a.free_vfs.cmp(&b.free_vfs).then(b.host.cmp(&a.host)))
            .map(|h| h.host.clone())
    }

    /// The cluster-wide lock of scaling decisions for `service`, if no
    /// other host holds it (waits a moment at most).
    #[must_use]
    pub fn try_lock(
        &self,
        service: &str,
        runtime: &tokio::runtime::Handle,
    ) -> Option<crate::inventory::InventoryLock> {
        runtime
            .block_on(
                self.inventory
                    .lock(&format!("scale/{service}"), Duration::from_millis(200)),
            )
            .ok()
    }

    /// Asks `host` to run `count` instances of `service`.
    ///
    /// # Errors
    /// etcd did not take the request.
    pub fn ask(
        &self,
        host: &str,
        service: &str,
        count: u64,
        runtime: &tokio::runtime::Handle,
    ) -> Result<(), String> {
        runtime
            .block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(5),
                    self.inventory.ask(host, service, count),
                )
                .await
            })
            .map_err(|_| "etcd did not answer within 5 s".to_owned())?
            .map_err(|e| e.to_string())
    }

    /// What other hosts asked of this one: (service, instances).
    #[must_use]
    pub fn asked(&self, snapshot: &Snapshot) -> Vec<(String, u64)> {
        snapshot
            .asks
            .iter()
            .filter(|((host, _), _)| *host == self.host)
            .map(|((_, service), count)| (service.clone(), *count))
            .collect()
    }

    /// Takes an answered request away.
    pub fn answered(&self, service: &str, runtime: &tokio::runtime::Handle) {
        let done = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), self.inventory.answered(service)).await
        });
        if !matches!(done, Ok(Ok(()))) {
            tracing::warn!(service, "could not take an answered request away; retrying");
        }
    }

    /// The number of a new instance of `service`, unique in the cluster
    /// (etcd must answer: without it two hosts could name two instances
    /// alike).
    ///
    /// # Errors
    /// etcd did not answer in time.
    pub fn next_number(
        &self,
        service: &str,
        runtime: &tokio::runtime::Handle,
    ) -> Result<u64, String> {
        runtime
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(5), self.inventory.next_number(service))
                    .await
            })
            .map_err(|_| "etcd did not answer within 5 s".to_owned())?
            .map_err(|e| e.to_string())
    }
}
