//! Two DPUs on one box, joined by an underlay: a cluster whose chains have
//! hops behind the other DPU (DESIGN.md section 6a,
//! `chaingate_shared::underlay`).
//!
//! - Each DPU is a `dpu-fw` with a lan and a wan uplink and its VFs (veths
//!   whose other end is in the rig's namespace) and an underlay port.
//! - The underlay is one veth pair with both ends in the root namespace,
//!   one end per DPU, each carrying its DPU's underlay MAC (a DPU sends a
//!   peer's frames to the peer's MAC), with IPv4 forwarding off on both so
//!   that the kernel never routes a VXLAN frame addressed to it.
//! - Every instance is a `chaingate-service` process on the namespace end
//!   of a VF of the DPU it is behind ([`ServiceProc`]).
//! - Each DPU's gateway file comes from one [`Cluster`]: the same services,
//!   chain and policies on both (so both derive the same segment tags),
//!   its own instances on its VFs, the other's as `remote` (slot: that
//!   VF's index in the other's ports), the other DPU as its only peer.
//! - [`TwoDpus::split_paths`] sends the two directions of every connection
//!   through different DPUs (asymmetric routing);
//!   [`TwoDpus::capture_underlay`] records what crosses the underlay.
//!
//! Fields drop in order: the services, then both `dpu-fw`s, then the
//! namespace and links, also when a test fails.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use chaingate_pktio::afpacket::{AfPacket, wait_readable};
use chaingate_pktio::{PacketIo, RxBatch};
use chaingate_proto::dpu::{self, Stats};

use crate::dpu::DpuFw;
use crate::flows::{self, Outcome, Plan};
use crate::topology::{Link, Topology, run};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One of the two DPUs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Dpu {
    /// The first: the lan and wan hosts sit on its uplinks.
    A,
    /// The second.
    B,
}

impl Dpu {
    /// Both, A first.
    pub const BOTH: [Self; 2] = [Self::A, Self::B];

    const fn index(self) -> usize {
        match self {
            Self::A => 0,
            Self::B => 1,
        }
    }

    /// The other one.
    #[must_use]
    pub const fn other(self) -> Self {
        match self {
            Self::A => Self::B,
            Self::B => Self::A,
        }
    }

    /// Its name as the other's peer (`a`, `b`).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::A => "a",
            Self::B => "b",
        }
    }

    /// Its underlay address.
    #[must_use]
    pub const fn address(self) -> std::net::Ipv4Addr {
        match self {
            Self::A => std::net::Ipv4Addr::new(10, 9, 0, 1),
            Self::B => std::net::Ipv4Addr::new(10, 9, 0, 2),
        }
    }

    /// Its underlay MAC (the MAC of its end of the underlay veth).
    #[must_use]
    pub const fn mac(self) -> &'static str {
        match self {
            Self::A => "02:00:00:09:00:01",
            Self::B => "02:00:00:09:00:02",
        }
    }
}

/// A service instance of the cluster.
#[derive(Clone, Debug)]
pub struct Instance {
    /// `SERVICE-N`.
    pub name: String,
    /// The service (the name before the last `-`).
    pub service: String,
    /// The DPU it is attached to.
    pub on: Dpu,
    /// `chaingate-service` arguments: the function and its flags
    /// (`--iface`, `--instance` and `--probe` are added).
    pub args: Vec<String>,
}

/// An instance `name` (`SERVICE-N`) behind `on`, running
/// `chaingate-service ARGS`.
///
/// # Panics
/// A name without `-`.
#[must_use]
pub fn instance(name: &str, on: Dpu, args: &[&str]) -> Instance {
    let (service, _) = name.rsplit_once('-').expect("instance names are SERVICE-N");
    Instance {
        name: name.to_owned(),
        service: service.to_owned(),
        on,
        args: args.iter().map(|a| (*a).to_owned()).collect(),
    }
}

/// What both DPUs are configured with.
#[derive(Clone, Debug)]
pub struct Cluster {
    /// Every instance, in the order both DPUs list them (the balancer's
    /// order: both DPUs must list the same).
    pub instances: Vec<Instance>,
    /// The services of the one chain, `web`, in lan-to-wan order.
    pub chain: Vec<String>,
    /// The `policies:` items (YAML flow maps).
    pub policies: Vec<String>,
    /// The underlay MTU of both DPUs.
    pub mtu: u16,
    /// YAML added to both `dpu-fw`s' runtime configuration
    /// (`offload: { backend: refuse }` keeps every frame in software).
    pub dpu_extra: String,
}

impl Cluster {
    /// The instances behind `dpu`, in order: the k-th is on its `vfK`.
    fn local(&self, dpu: Dpu) -> impl Iterator<Item = &Instance> {
        self.instances.iter().filter(move |i| i.on == dpu)
    }

    /// The gateway file of `dpu`.
    ///
    /// # Panics
    /// An instance of a service that is not in the chain.
    #[must_use]
    pub fn gateway(&self, dpu: Dpu) -> String {
        let mut y = String::from(
            "ports:\n  - { name: lan, role: lan }\n  - { name: wan, role: wan }\n  \
             - { name: ul, role: underlay }\n",
        );
        for k in 0..self.local(dpu).count() {
            let _ = writeln!(y, "  - {{ name: vf{k}, role: vf }}");
        }
        let _ = writeln!(
            y,
            "underlay: {{ address: {}, mac: \"{}\", mtu: {} }}",
            dpu.address(),
            dpu.mac(),
            self.mtu
        );
        let peer = dpu.other();
        let _ = writeln!(
            y,
            "peers:\n  - {{ name: {}, address: {}, mac: \"{}\" }}",
            peer.name(),
            peer.address(),
            peer.mac()
        );
        y.push_str("services:\n");
        for s in &self.chain {
            let _ = writeln!(y, "  - {{ name: {s}, capacity: 1Gbit }}");
        }
        y.push_str("instances:\n");
        for i in &self.instances {
            assert!(
                self.chain.contains(&i.service),
                "{}: not in the chain",
                i.name
            );
            let slot = self
                .local(i.on)
                .position(|l| l.name == i.name)
                .expect("an instance is local to its own DPU");
            let at = if i.on == dpu {
                format!("port: vf{slot}")
            } else {
                // lan, wan, ul, then the VFs.
                format!("remote: {{ peer: {}, slot: {} }}", peer.name(), 3 + slot)
            };
            let _ = writeln!(
                y,
                "  - {{ name: {}, service: {}, {at} }}",
                i.name, i.service
            );
        }
        let _ = writeln!(
            y,
            "chains:\n  - {{ name: web, services: [{}] }}",
            self.chain.join(", ")
        );
        y.push_str("policies:\n");
        for p in &self.policies {
            let _ = writeln!(y, "  - {p}");
        }
        y
    }
}

/// A `chaingate-service` process on an interface of a namespace, killed
/// when dropped.
#[derive(Debug)]
pub struct ServiceProc {
    child: Option<Child>,
    /// Its instance name.
    pub name: String,
    probe: PathBuf,
    log: PathBuf,
}

impl ServiceProc {
    /// Starts `chaingate-service ARGS --iface IFACE --instance NAME` in
    /// `netns` and waits until it answers its probe and has its packet
    /// socket open.
    ///
    /// # Errors
    /// It cannot be started, or exits or hangs first (its log is in the
    /// error).
    pub fn start(netns: &str, iface: &str, name: &str, args: &[String]) -> io::Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = std::env::temp_dir().join(format!("cg-svc-{}-{n}", std::process::id()));
        let probe = base.with_extension("sock");
        let log = base.with_extension("log");
        let out = std::fs::File::create(&log)?;
        // `ip netns exec` execs the service (no fork): the child is it.
        let child = Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(crate::agent::service_binary())
            .args(args)
            .args(["--iface", iface, "--instance", name])
            .arg("--probe")
            .arg(format!("unix:{}", probe.display()))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        let mut service = Self {
            child: Some(child),
            name: name.to_owned(),
            probe,
            log,
        };
        let (probe, log) = (service.probe.clone(), service.log.clone());
        let child = service
            .child
            .as_mut()
            .ok_or_else(|| io::Error::other("gone"))?;
        let pid = child.id();
        // The probe answers before the VF's socket is open: wait for both,
        // or the first frames of a test would pass no one.
        crate::wait_ready(child, &format!("service {name} on {iface}"), &log, || {
            chaingate_agent::launcher::probe_socket(&probe, Duration::from_millis(200)).is_ok()
                && has_packet_socket(pid)
        })?;
        Ok(service)
    }

    /// Frames it received (its probe's `rx`).
    #[must_use]
    pub fn rx(&self) -> u64 {
        chaingate_agent::launcher::probe_socket(&self.probe, Duration::from_secs(2))
            .unwrap_or_default()
            .split_whitespace()
            .find_map(|w| w.strip_prefix("rx="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Its log so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Whether process `pid` holds an AF_PACKET socket (one of its descriptors
/// is a socket listed in its namespace's `/proc/net/packet`).
fn has_packet_socket(pid: u32) -> bool {
    let Ok(table) = std::fs::read_to_string(format!("/proc/{pid}/net/packet")) else {
        return false;
    };
    let inodes: Vec<&str> = table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .is_some_and(|inode| inodes.contains(&inode))
        })
    })
}

impl Drop for ServiceProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.probe);
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// One DPU of the rig.
#[derive(Debug)]
pub struct DpuSide {
    /// Its `dpu-fw`.
    pub fw: DpuFw,
    /// Its lan uplink (`outer` in the rig's namespace).
    pub lan: Link,
    /// Its wan uplink.
    pub wan: Link,
    /// Its VFs (`outer`: where its instances run).
    pub vfs: Vec<Link>,
    /// Its underlay interface (root namespace).
    pub underlay: String,
    generation: u64,
}

/// The underlay between two DPUs: a veth pair with both ends in the root
/// namespace, each with its DPU's underlay MAC, carrying `mtu` (at least
/// 1500; a smaller link MTU would drop frames the DPU lets pass), IPv4
/// forwarding off (a frame to its MAC for a foreign address is never
/// routed). Returns A's end and B's.
///
/// # Errors
/// An `ip` command failed.
pub fn underlay_link(topo: &mut Topology, mtu: u16) -> io::Result<[String; 2]> {
    let ul = topo.host_link("ul")?;
    let ends = [ul.inner.clone(), ul.outer.clone()];
    let mtu = mtu.max(1500).to_string();
    for (dpu, ifname) in Dpu::BOTH.into_iter().zip(&ends) {
        run("ip", &["link", "set", "dev", ifname, "address", dpu.mac()])?;
        run("ip", &["link", "set", "dev", ifname, "mtu", &mtu])?;
        std::fs::write(format!("/proc/sys/net/ipv4/conf/{ifname}/forwarding"), "0")?;
    }
    Ok(ends)
}

/// Two DPUs, their instances, and the hosts' namespace.
#[derive(Debug)]
pub struct TwoDpus {
    /// Every instance's service, in the cluster's order.
    pub services: Vec<ServiceProc>,
    /// DPU A, then B.
    pub dpus: Vec<DpuSide>,
    /// The namespace (hosts, instances) and every link.
    pub topo: Topology,
    /// What both were configured with.
    pub cluster: Cluster,
}

impl TwoDpus {
    /// Builds the rig for `cluster`, starts every instance and applies
    /// each DPU's gateway file (generation 1).
    ///
    /// # Errors
    /// A part does not come up, or a DPU refuses its configuration.
    pub fn start(cluster: Cluster) -> io::Result<Self> {
        // Locals drop in reverse: services, DPUs, then the namespace.
        let mut topo = Topology::new()?;
        let ends = underlay_link(&mut topo, cluster.mtu)?;
        let mut dpus = Vec::new();
        for (dpu, ul_if) in Dpu::BOTH.into_iter().zip(ends) {
            let p = dpu.name();
            let lan = topo.link(&format!("{p}ln"))?;
            let wan = topo.link(&format!("{p}wn"))?;
            let vfs = (0..cluster.local(dpu).count())
                .map(|k| topo.link(&format!("{p}f{k}")))
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
                .map(|(n, d, r)| (n.as_str(), d.as_str(), *r))
                .collect();
            let fw = DpuFw::start(&ports, &format!("sessions: 65536\n{}", cluster.dpu_extra))?;
            dpus.push(DpuSide {
                fw,
                lan,
                wan,
                vfs,
                underlay: ul_if,
                generation: 0,
            });
        }
        let mut services = Vec::new();
        for dpu in Dpu::BOTH {
            for (k, i) in cluster.local(dpu).enumerate() {
                let vf = &dpus[dpu.index()].vfs[k];
                services.push(ServiceProc::start(
                    topo.netns(),
                    &vf.outer,
                    &i.name,
                    &i.args,
                )?);
            }
        }
        let mut rig = Self {
            services,
            dpus,
            topo,
            cluster,
        };
        for dpu in Dpu::BOTH {
            let yaml = rig.cluster.gateway(dpu);
            rig.apply(dpu, &yaml)?;
        }
        Ok(rig)
    }

    /// One of the DPUs.
    #[must_use]
    pub fn dpu(&self, dpu: Dpu) -> &DpuSide {
        &self.dpus[dpu.index()]
    }

    /// Applies `yaml` to `dpu` as its next generation.
    ///
    /// # Errors
    /// The file is refused, by the loader or the DPU.
    pub fn apply(&mut self, dpu: Dpu, yaml: &str) -> io::Result<()> {
        let side = &mut self.dpus[dpu.index()];
        let generation = side.generation + 1;
        let (_, config) = chaingate_proto::file::load(yaml, generation)
            .map_err(|e| io::Error::other(format!("DPU {dpu:?}: {e}\n{yaml}")))?;
        let addr = side.fw.addr.to_string();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let answer = rt.block_on(async {
            dpu_fw::ctl::connect(&addr)
                .await
                .map_err(io::Error::other)?
                .apply_config(dpu::ApplyConfigRequest {
                    config: Some(config),
                })
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| io::Error::other(format!("DPU {dpu:?} refused: {s}\n{yaml}")))
        })?;
        if !answer.applied || answer.current_generation != generation {
            return Err(io::Error::other(format!(
                "DPU {dpu:?} did not apply generation {generation}: {answer:?}"
            )));
        }
        side.generation = generation;
        Ok(())
    }

    /// A DPU's counters.
    ///
    /// # Panics
    /// It does not answer.
    #[must_use]
    pub fn stats(&self, dpu: Dpu) -> Stats {
        self.dpu(dpu).fw.stats()
    }

    /// The traffic tool from the lan host on A's lan uplink to the wan
    /// host on A's wan uplink.
    ///
    /// # Panics
    /// The hosts' interfaces cannot be opened.
    #[must_use]
    pub fn traffic(&self, plan: &Plan) -> Outcome {
        let a = self.dpu(Dpu::A);
        let ns = self.topo.netns();
        flows::run(plan, (ns, &a.lan.outer), (ns, &a.wan.outer)).expect("the traffic tool")
    }

    /// Routes the two directions through different DPUs: returns the lan
    /// and wan hosts' interfaces (in the namespace) such that what the lan
    /// host sends enters A's lan uplink and what leaves B's lan uplink
    /// reaches it, and what leaves A's wan uplink reaches the wan host and
    /// what it sends enters B's wan uplink. Each host's interface is a
    /// veth pair inside the namespace whose other end the kernel joins to
    /// the uplinks (tc ingress + mirred), and goes with the namespace.
    ///
    /// # Errors
    /// An `ip` or `tc` command failed.
    pub fn split_paths(&self) -> io::Result<(String, String)> {
        let ns = self.topo.netns();
        let (a, b) = (self.dpu(Dpu::A), self.dpu(Dpu::B));
        let ip = |args: &[&str]| {
            let mut all = vec!["-n", ns];
            all.extend_from_slice(args);
            run("ip", &all)
        };
        let tc = |args: &[&str]| {
            let mut all = vec!["netns", "exec", ns, "tc"];
            all.extend_from_slice(args);
            run("ip", &all)
        };
        let redirect = |from: &str, to: &str| -> io::Result<()> {
            tc(&["qdisc", "add", "dev", from, "ingress"])?;
            tc(&[
                "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32", "match",
                "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
            ])
        };
        for (host, peer) in [("lanhost", "lanjoin"), ("wanhost", "wanjoin")] {
            ip(&["link", "add", host, "type", "veth", "peer", "name", peer])?;
            for dev in [host, peer] {
                run(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        ns,
                        "sh",
                        "-c",
                        &format!(
                            "p=/proc/sys/net/ipv6/conf/{dev}/disable_ipv6; [ ! -e $p ] || echo 1 > $p"
                        ),
                    ],
                )?;
                ip(&["link", "set", dev, "up"])?;
            }
        }
        redirect("lanjoin", &a.lan.outer)?;
        redirect(&b.lan.outer, "lanjoin")?;
        redirect(&a.wan.outer, "wanjoin")?;
        redirect("wanjoin", &b.wan.outer)?;
        Ok(("lanhost".to_owned(), "wanhost".to_owned()))
    }

    /// Starts capturing every frame on the underlay, both ways.
    ///
    /// # Errors
    /// An underlay interface cannot be opened.
    pub fn capture_underlay(&self) -> io::Result<UnderlayCapture> {
        // Each socket hears what arrives at its end (outgoing frames are
        // ignored): A's end what B sent, B's end what A sent.
        let mut ends = Vec::new();
        for dpu in Dpu::BOTH {
            let port = AfPacket::open(&self.dpu(dpu).underlay, 4096).map_err(io::Error::other)?;
            ends.push((dpu.other(), port));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut batch = RxBatch::new(64, 4096);
                let mut frames = Vec::new();
                let fds: Vec<_> = ends.iter().map(|(_, p)| p.raw_fd()).collect();
                // One more pass after the stop: what is queued counts.
                let mut last = false;
                loop {
                    last |= stop.load(Ordering::Relaxed);
                    wait_readable(&fds, 20);
                    for (from, port) in &mut ends {
                        while let Ok(n) = PacketIo::recv(port, &mut batch) {
                            if n == 0 {
                                break;
                            }
                            frames.extend(
                                (0..n).filter_map(|i| batch.frame(i).map(|f| (*from, f.to_vec()))),
                            );
                        }
                    }
                    if last {
                        return frames;
                    }
                }
            })
        };
        Ok(UnderlayCapture {
            stop,
            thread: Some(thread),
        })
    }

    /// The logs of both DPUs and every service, for a failure message.
    #[must_use]
    pub fn logs(&self) -> String {
        let tail = |text: String| {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        let mut out = String::new();
        for dpu in Dpu::BOTH {
            let _ = writeln!(out, "--- dpu-fw {dpu:?}:\n{}", tail(self.dpu(dpu).fw.log()));
        }
        for s in &self.services {
            let _ = writeln!(out, "--- {}:\n{}", s.name, tail(s.log()));
        }
        out
    }
}

/// Underlay frames, each with the DPU that sent it.
pub type Captured = Vec<(Dpu, Vec<u8>)>;

/// Frames on the underlay, captured until [`UnderlayCapture::finish`].
#[derive(Debug)]
pub struct UnderlayCapture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Captured>>,
}

impl UnderlayCapture {
    /// Stops, and returns every frame with the DPU that sent it, in the
    /// order each end received them.
    ///
    /// # Panics
    /// The capture thread panicked.
    #[must_use]
    pub fn finish(mut self) -> Captured {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().expect("the capture thread"))
            .unwrap_or_default()
    }
}

impl Drop for UnderlayCapture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Every drop a DPU counted, by where and why (only those not zero):
/// the fast path's reasons, the eSwitch's drops, frames dropped while
/// unconfigured, and the ports' send and receive errors.
#[must_use]
pub fn drops(stats: &Stats) -> BTreeMap<String, u64> {
    let mut out: BTreeMap<String, u64> = stats
        .fast_path
        .as_ref()
        .map(|f| f.dropped.clone().into_iter().collect())
        .unwrap_or_default();
    out.insert(
        "switch".into(),
        stats.switch.as_ref().map_or(0, |s| s.dropped),
    );
    out.insert("unconfigured".into(), stats.unconfigured_drops);
    for p in &stats.ports {
        out.insert(format!("{} tx_dropped", p.name), p.tx_dropped);
        out.insert(format!("{} rx_errors", p.name), p.rx_errors);
    }
    out.retain(|_, n| *n != 0);
    out
}

/// One fast-path drop counter of a DPU (`too_big_for_underlay`).
#[must_use]
pub fn dropped(stats: &Stats, reason: &str) -> u64 {
    stats
        .fast_path
        .as_ref()
        .and_then(|f| f.dropped.get(reason).copied())
        .unwrap_or(0)
}
