//! Two hosts on one box, each with its DPU and agent, one etcd: the cluster
//! of DESIGN.md section 6a with every part real (docs/cluster.md).
//!
//! - One namespace holds the lan and wan hosts; each host's DPU is a
//!   `dpu-fw` with lan and wan uplinks into it, its VFs (both ends in the
//!   root namespace: the agent moves the host end into the instance's own
//!   namespace) and an underlay port.
//! - The underlay is one veth pair, an end per DPU, each with its DPU's
//!   underlay MAC (as in [`crate::two_dpus`]).
//! - Each host's agent has the cluster section: its name (`a`, `b`), the
//!   test's etcd, a short lease, the underlay port and address.
//! - Traffic enters at host A's lan and leaves at A's wan.
//!
//! Fields drop in order: the hosts (each its agent, which stops its
//! instances, then its `dpu-fw`), etcd, then the namespace and links.

use std::io;
use std::time::{Duration, Instant};

use chaingate_proto::dpu;

use crate::agent::AgentProc;
use crate::dpu::DpuFw;
use crate::etcd::EtcdServer;
use crate::flows::{self, Outcome, Plan};
use crate::topology::{Link, Topology};
use crate::two_dpus::{Dpu, underlay_link};

/// One host: its agent, its DPU and the DPU's links.
#[derive(Debug)]
pub struct Host {
    /// The agent (dropped first: it stops its instances).
    pub agent: AgentProc,
    /// The DPU runtime.
    pub dpu: DpuFw,
    /// The lan uplink (`outer` in the namespace).
    pub lan: Link,
    /// The wan uplink.
    pub wan: Link,
    /// The VFs.
    pub vfs: Vec<Link>,
    /// Its end of the underlay (root namespace).
    pub underlay: String,
}

/// Two hosts, their DPUs and agents, and etcd.
#[derive(Debug)]
pub struct TwoHosts {
    /// Host A (traffic enters and leaves here), then B.
    pub hosts: Vec<Host>,
    /// The cluster's etcd.
    pub etcd: EtcdServer,
    /// The namespace and links.
    pub topo: Topology,
    /// The lease TTL the agents were given.
    pub ttl: Duration,
}

impl TwoHosts {
    /// Host A with `vfs[0]` VFs, B with `vfs[1]`; agents with lease `ttl`.
    ///
    /// # Errors
    /// A part does not come up.
    pub fn start(vfs: [usize; 2], ttl: Duration) -> io::Result<Self> {
        let mut topo = Topology::new()?;
        let etcd = EtcdServer::start()?;
        let ends = underlay_link(&mut topo, 1500)?;
        let mut hosts = Vec::new();
        for ((dpu, ul_if), n) in Dpu::BOTH.into_iter().zip(ends).zip(vfs) {
            let p = dpu.name();
            let lan = topo.link(&format!("{p}ln"))?;
            let wan = topo.link(&format!("{p}wn"))?;
            let vfs = (0..n)
                .map(|k| topo.host_link(&format!("{p}v{k}")))
                .collect::<io::Result<Vec<_>>>()?;
            let mut ports = vec![
                ("lan".to_owned(), lan.inner.clone(), "lan"),
                ("wan".to_owned(), wan.inner.clone(), "wan"),
                ("ul".to_owned(), ul_if.clone(), "underlay"),
            ];
            ports.extend(
                vfs.iter()
                    .enumerate()
                    .map(|(k, l)| (format!("vf{k}"), l.inner.clone(), "vf")),
            );
            let ports: Vec<(&str, &str, &str)> = ports
                .iter()
                .map(|(a, b, c)| (a.as_str(), b.as_str(), *c))
                .collect();
            let fw = DpuFw::start(&ports, "sessions: 65536\n")?;
            let list: Vec<String> = vfs
                .iter()
                .enumerate()
                .map(|(k, l)| format!("{{ port: vf{k}, netdev: {} }}", l.outer))
                .collect();
            let cluster = format!(
                "cluster:\n  host: {p}\n  etcd: [\"{}\"]\n  lease_ttl: {}ms\n  \
                 underlay: {{ port: ul, address: {}, mac: \"{}\", mtu: 1500 }}\n",
                etcd.endpoint(),
                ttl.as_millis(),
                dpu.address(),
                dpu.mac()
            );
            let agent = AgentProc::start(&fw.addr.to_string(), &list, &cluster)?;
            hosts.push(Host {
                agent,
                dpu: fw,
                lan,
                wan,
                vfs,
                underlay: ul_if,
            });
        }
        Ok(Self {
            hosts,
            etcd,
            topo,
            ttl,
        })
    }

    /// A host.
    #[must_use]
    pub fn host(&self, h: Dpu) -> &Host {
        &self.hosts[usize::from(h == Dpu::B)]
    }

    /// A host, to change.
    pub fn host_mut(&mut self, h: Dpu) -> &mut Host {
        &mut self.hosts[usize::from(h == Dpu::B)]
    }

    /// Runs `plan` from A's lan to A's wan.
    ///
    /// # Panics
    /// The traffic tool fails.
    #[must_use]
    pub fn traffic(&self, plan: &Plan) -> Outcome {
        let a = self.host(Dpu::A);
        flows::run(
            plan,
            (self.topo.netns(), &a.lan.outer),
            (self.topo.netns(), &a.wan.outer),
        )
        .expect("the traffic tool")
    }

    /// [`Self::traffic`] on a thread of its own.
    #[must_use]
    pub fn traffic_in_background(&self, plan: Plan) -> std::thread::JoinHandle<Outcome> {
        let a = self.host(Dpu::A);
        let (ns, lan, wan) = (
            self.topo.netns().to_owned(),
            a.lan.outer.clone(),
            a.wan.outer.clone(),
        );
        std::thread::spawn(move || flows::run(&plan, (&ns, &lan), (&ns, &wan)).expect("traffic"))
    }

    /// The instances host `h`'s DPU runs with (local and remote), from its
    /// telemetry: (name, service).
    #[must_use]
    pub fn dpu_instances(&self, h: Dpu) -> Vec<(String, String)> {
        instances_at(&self.host(h).dpu.addr.to_string())
    }

    /// Waits until host `h`'s DPU runs exactly the instances `want`
    /// (names, any order); returns how long it took.
    ///
    /// # Panics
    /// Not within `within`, with both agents' logs.
    pub fn wait_dpu(&self, h: Dpu, want: &[&str], within: Duration) -> Duration {
        let t0 = Instant::now();
        let mut want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
        want.sort();
        let mut last = Vec::new();
        while t0.elapsed() < within {
            let mut have: Vec<String> = self.dpu_instances(h).into_iter().map(|(n, _)| n).collect();
            have.sort();
            if have == want {
                return t0.elapsed();
            }
            last = have;
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "DPU {h:?}: {want:?} not within {within:?}, last {last:?}\n{}",
            self.logs()
        );
    }

    /// Both agents' logs, for a failure message.
    #[must_use]
    pub fn logs(&self) -> String {
        self.hosts
            .iter()
            .zip(["a", "b"])
            .map(|(h, n)| {
                format!(
                    "--- agent {n}\n{}\n--- dpu {n}\n{}",
                    h.agent.log(),
                    h.dpu.log()
                )
            })
            .collect()
    }
}

/// The instances the `dpu-fw` at `addr` runs with, from the first
/// telemetry message: (name, service).
///
/// # Panics
/// No answer.
#[must_use]
pub fn instances_at(addr: &str) -> Vec<(String, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let mut client = dpu_fw::ctl::connect(addr)
            .await
            .expect("dpu-fw's control API");
        let mut stream = client
            .watch_telemetry(dpu::WatchTelemetryRequest::default())
            .await
            .expect("telemetry")
            .into_inner();
        let t = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("telemetry in time")
            .expect("a telemetry message")
            .expect("telemetry");
        t.instances
            .into_iter()
            .map(|l| (l.instance, l.service))
            .collect()
    })
}
