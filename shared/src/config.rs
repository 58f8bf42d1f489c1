//! The validated configuration: ports, services, instances, chains and
//! policies, and the segments (chain, hop, direction) with their VLAN tags.
//!
//! A [`Config`] is only made by [`ConfigBuilder`], which checks every
//! reference and bound as items are added and the whole at
//! [`ConfigBuilder::build`]; an error names the field at fault, as in
//! `instances[3].attachment.egress: port#1 is not a VF`. Code
//! that holds a `Config` does not check it again.
//!
//! Capacities are fixed (no allocation): see the `MAX_*` constants.
//!
//! Chains are written in the order traffic from `lan` to `wan` visits the
//! services; traffic from `wan` to `lan` visits them in reverse, whichever
//! side opened the connection (the chain is the physical arrangement of the
//! bump in the wire). A packet handed to an instance carries the tag of its
//! segment: chain, hop, and direction of travel, so an instance can serve
//! several chains and both directions, and the fast path knows where a
//! returning packet is.

use core::fmt;
use core::net::Ipv4Addr;

use heapless::Vec;

use crate::ids::{ChainId, Generation, InstanceId, Name, NameError, PeerId, PortId, ServiceId};
use crate::policy::{Policy, PolicyAction};
use crate::{IpProtocol, VlanId};

/// Most switch ports (uplinks and VF representors).
pub const MAX_PORTS: usize = 256;
/// Most services.
pub const MAX_SERVICES: usize = 32;
/// Most instances over all services.
pub const MAX_INSTANCES: usize = 256;
/// Most instances of one service (bounds `scaling.max_instances`).
pub const MAX_INSTANCES_PER_SERVICE: usize = 64;
/// Most chains.
pub const MAX_CHAINS: usize = 64;
/// Most services in one chain.
pub const MAX_HOPS: usize = 8;
/// Most policies.
pub const MAX_POLICIES: usize = 1024;
/// Most peers (other DPUs reached over the underlay).
pub const MAX_PEERS: usize = 16;
/// Most segments (chain hops).
pub const MAX_SEGMENTS: usize = MAX_CHAINS * MAX_HOPS;

/// One of the two uplinks.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Uplink {
    /// The inside.
    Lan,
    /// The outside.
    Wan,
}

impl Uplink {
    /// The other uplink.
    #[must_use]
    pub const fn other(self) -> Self {
        match self {
            Self::Lan => Self::Wan,
            Self::Wan => Self::Lan,
        }
    }

    /// The direction of travel of traffic entering here.
    #[must_use]
    pub const fn travel(self) -> Travel {
        match self {
            Self::Lan => Travel::ToWan,
            Self::Wan => Travel::ToLan,
        }
    }
}

impl fmt::Display for Uplink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Lan => "lan",
            Self::Wan => "wan",
        })
    }
}

/// Which way traffic moves between the uplinks.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Travel {
    /// From lan to wan: the chain's hops in order.
    ToWan,
    /// From wan to lan: the chain's hops in reverse.
    ToLan,
}

impl Travel {
    /// The other direction.
    #[must_use]
    pub const fn reverse(self) -> Self {
        match self {
            Self::ToWan => Self::ToLan,
            Self::ToLan => Self::ToWan,
        }
    }

    /// The uplink this traffic leaves by.
    #[must_use]
    pub const fn exit(self) -> Uplink {
        match self {
            Self::ToWan => Uplink::Wan,
            Self::ToLan => Uplink::Lan,
        }
    }
}

/// What a port is.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum PortRole {
    /// An uplink.
    Uplink(Uplink),
    /// A VF representor, to which an instance attaches.
    Vf,
    /// The port towards the other DPUs (see [`crate::underlay`]).
    Underlay,
}

/// A switch port.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Port {
    name: Name,
    role: PortRole,
}

impl Port {
    /// Its name.
    #[must_use]
    pub fn name(&self) -> &Name {
        &self.name
    }

    /// What it is.
    #[must_use]
    pub const fn role(&self) -> PortRole {
        self.role
    }
}

/// A fraction in thousandths (0 to 1000).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Permille(u16);

impl Permille {
    /// A fraction, or `None` above 1000.
    #[must_use]
    pub const fn new(v: u16) -> Option<Self> {
        if v <= 1000 { Some(Self(v)) } else { None }
    }

    /// Thousandths.
    #[must_use]
    pub const fn get(self) -> u16 {
        self.0
    }

    /// `value * self`, rounded down.
    #[must_use]
    pub const fn of(self, value: u64) -> u64 {
        // The product fits: value < 2^64 / 1000 for any real capacity;
        // saturate instead of wrapping otherwise.
        value.saturating_mul(self.0 as u64) / 1000
    }
}

/// When and how a service grows and shrinks (the host agent acts on it;
/// the fast path uses the watermarks and the cooldown).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Scaling {
    /// Instances the service always has.
    pub min_instances: u16,
    /// Instances the service never exceeds.
    pub max_instances: u16,
    /// Load above which an instance is short of bandwidth.
    pub scale_out_at: Permille,
    /// Load below which instances are too many.
    pub scale_in_at: Permille,
    /// How long a condition must hold before acting, in milliseconds.
    pub hold_ms: u32,
    /// Least time between two scaling actions, in milliseconds.
    pub cooldown_ms: u32,
    /// How long a draining instance keeps its sessions, in milliseconds.
    pub drain_timeout_ms: u32,
}

impl Default for Scaling {
    fn default() -> Self {
        Self {
            min_instances: 1,
            max_instances: 4,
            scale_out_at: Permille(800),
            scale_in_at: Permille(300),
            hold_ms: 2_000,
            cooldown_ms: 10_000,
            drain_timeout_ms: 60_000,
        }
    }
}

/// What happens to a service's traffic when it cannot be served.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum FailMode {
    /// Sessions of a failed instance move to another one; with no instance
    /// at all, the hop is skipped.
    #[default]
    Open,
    /// Sessions of a failed instance are dropped, and with no instance new
    /// connections are dropped.
    Closed,
}

/// A kind of processing with a per-instance capacity.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Service {
    name: Name,
    capacity_bps: u64,
    scaling: Scaling,
    fail: FailMode,
}

impl Service {
    /// Its name.
    #[must_use]
    pub fn name(&self) -> &Name {
        &self.name
    }

    /// Bits per second one instance handles.
    #[must_use]
    pub const fn capacity_bps(&self) -> u64 {
        self.capacity_bps
    }

    /// Scaling bounds and thresholds.
    #[must_use]
    pub const fn scaling(&self) -> &Scaling {
        &self.scaling
    }

    /// Fail open or closed.
    #[must_use]
    pub const fn fail(&self) -> FailMode {
        self.fail
    }
}

/// How an instance is attached to the switch.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Attachment {
    /// One VF: packets go in and come back out the same port.
    Single(PortId),
    /// An ingress/egress VF pair: lan-to-wan traffic goes in at `ingress`
    /// and comes out at `egress`; wan-to-lan the other way round.
    Pair {
        /// Where lan-to-wan traffic enters.
        ingress: PortId,
        /// Where lan-to-wan traffic leaves.
        egress: PortId,
    },
    /// Behind another DPU, reached over the underlay.
    Remote {
        /// The DPU it is attached to.
        peer: PeerId,
        /// Its port on that DPU (see [`crate::underlay::Vni`]).
        slot: u8,
        /// This DPU's underlay port, where its traffic leaves and returns.
        via: PortId,
    },
}

impl Attachment {
    /// The port to hand traffic travelling `travel` to.
    #[must_use]
    pub const fn entry(&self, travel: Travel) -> PortId {
        match (*self, travel) {
            (Self::Single(p) | Self::Remote { via: p, .. }, _) => p,
            (Self::Pair { ingress, .. }, Travel::ToWan) => ingress,
            (Self::Pair { egress, .. }, Travel::ToLan) => egress,
        }
    }

    /// The port traffic travelling `travel` comes back on.
    #[must_use]
    pub const fn exit(&self, travel: Travel) -> PortId {
        self.entry(travel.reverse())
    }

    /// Whether the instance is behind another DPU.
    #[must_use]
    pub const fn is_remote(&self) -> bool {
        matches!(self, Self::Remote { .. })
    }

    /// The VFs of a local instance (none for a remote one).
    fn vfs(&self) -> Option<[PortId; 2]> {
        match *self {
            Self::Single(p) => Some([p, p]),
            Self::Pair { ingress, egress } => Some([ingress, egress]),
            Self::Remote { .. } => None,
        }
    }
}

/// Whether an instance takes traffic.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum InstanceState {
    /// Takes new sessions.
    #[default]
    Active,
    /// Keeps its sessions, takes no new ones.
    Draining,
    /// Failed or stopped: takes nothing; its sessions move or are dropped.
    Down,
}

/// One running copy of a service.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Instance {
    name: Name,
    service: ServiceId,
    attachment: Attachment,
    state: InstanceState,
    weight: u16,
}

impl Instance {
    /// Its name.
    #[must_use]
    pub fn name(&self) -> &Name {
        &self.name
    }

    /// The service it runs.
    #[must_use]
    pub const fn service(&self) -> ServiceId {
        self.service
    }

    /// Its ports.
    #[must_use]
    pub const fn attachment(&self) -> Attachment {
        self.attachment
    }

    /// Whether it takes traffic.
    #[must_use]
    pub const fn state(&self) -> InstanceState {
        self.state
    }

    /// Relative share of new sessions among its service's instances.
    #[must_use]
    pub const fn weight(&self) -> u16 {
        self.weight
    }
}

/// An ordered list of services.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Chain {
    name: Name,
    services: Vec<ServiceId, MAX_HOPS>,
}

impl Chain {
    /// Its name.
    #[must_use]
    pub fn name(&self) -> &Name {
        &self.name
    }

    /// The services in lan-to-wan order.
    #[must_use]
    pub fn services(&self) -> &[ServiceId] {
        &self.services
    }

    /// Number of hops.
    #[must_use]
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// Never true in a built configuration.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

/// One hop of one chain, in one direction of travel.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Segment {
    /// The chain.
    pub chain: ChainId,
    /// The hop (index into the chain's services).
    pub hop: u8,
    /// Which way the packet travels.
    pub travel: Travel,
}

/// This DPU's end of the underlay.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Underlay {
    /// The port ([`PortRole::Underlay`]).
    pub port: PortId,
    /// Its IPv4 address: the outer source of what it sends.
    pub addr: Ipv4Addr,
    /// Its MAC address.
    pub mac: [u8; 6],
    /// The largest IP packet the underlay carries; an inner frame must
    /// fit in it with [`crate::underlay::IP_OVERHEAD`] bytes of outer
    /// headers.
    pub mtu: u16,
}

/// The default underlay MTU (a jumbo-frame underlay is the usual advice:
/// 9000 leaves room for 1500-byte customer packets and more).
pub const DEFAULT_UNDERLAY_MTU: u16 = 1500;

/// Another DPU, reached over the underlay.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Peer {
    name: Name,
    addr: Ipv4Addr,
    mac: [u8; 6],
}

impl Peer {
    /// Its name (the host it serves).
    #[must_use]
    pub fn name(&self) -> &Name {
        &self.name
    }

    /// Its underlay address.
    #[must_use]
    pub const fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The MAC its underlay traffic is sent to (its own, or the underlay
    /// router's).
    #[must_use]
    pub const fn mac(&self) -> [u8; 6] {
        self.mac
    }
}

/// The part of the configuration an error is in.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Section {
    /// The configuration as a whole.
    Config,
    /// `ports[i]`.
    Ports,
    /// `services[i]`.
    Services,
    /// `instances[i]`.
    Instances,
    /// `peers[i]`.
    Peers,
    /// `chains[i]`.
    Chains,
    /// `policies[i]`.
    Policies,
}

/// What is wrong with a field.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ConfigErrorKind {
    /// A bad name.
    Name(NameError),
    /// Another item of the section has this name.
    DuplicateName,
    /// The section is full.
    TooMany {
        /// Its capacity.
        max: usize,
    },
    /// A port that is not configured.
    UnknownPort(PortId),
    /// A service that is not configured.
    UnknownService(ServiceId),
    /// A chain that is not configured.
    UnknownChain(ChainId),
    /// An uplink where a VF is needed.
    NotAVf(PortId),
    /// A VF already attached to another instance.
    PortInUse {
        /// The port.
        port: PortId,
        /// The instance that has it.
        by: InstanceId,
    },
    /// A pair with the same port twice.
    SamePortTwice(PortId),
    /// A value out of its range.
    OutOfRange {
        /// What the range is.
        expected: &'static str,
    },
    /// The service already has `scaling.max_instances` instances.
    ServiceFull {
        /// Its maximum.
        max: u16,
    },
    /// A chain without services.
    EmptyChain,
    /// A chain with more than [`MAX_HOPS`] services.
    ChainTooLong,
    /// An uplink is missing.
    MissingUplink(Uplink),
    /// An uplink is configured twice.
    DuplicateUplink(Uplink),
    /// Port ranges on a protocol without ports.
    PortsNeedProtocol,
    /// An IPv4 and an IPv6 prefix in one match.
    MixedFamilies,
    /// A remote instance or a peer without an underlay.
    NoUnderlay,
    /// A second underlay port.
    DuplicateUnderlay,
    /// A peer that is not configured.
    UnknownPeer(PeerId),
    /// A port that is not the underlay port.
    NotTheUnderlay(PortId),
    /// The segment tags do not fit below VLAN 4095.
    SegmentTagsExhausted {
        /// Tags needed.
        needed: usize,
        /// First tag.
        base: VlanId,
    },
}

impl fmt::Display for ConfigErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(e) => e.fmt(f),
            Self::DuplicateName => f.write_str("another item has this name"),
            Self::TooMany { max } => write!(f, "more than {max} items"),
            Self::UnknownPort(p) => write!(f, "{p} is not configured"),
            Self::UnknownService(s) => write!(f, "{s} is not configured"),
            Self::UnknownChain(c) => write!(f, "{c} is not configured"),
            Self::NotAVf(p) => write!(f, "{p} is not a VF"),
            Self::PortInUse { port, by } => write!(f, "{port} is already attached to {by}"),
            Self::SamePortTwice(p) => write!(f, "{p} is both ingress and egress"),
            Self::OutOfRange { expected } => write!(f, "must be {expected}"),
            Self::ServiceFull { max } => {
                write!(f, "the service already has its maximum of {max} instances")
            }
            Self::EmptyChain => f.write_str("a chain needs at least one service (use bypass)"),
            Self::ChainTooLong => write!(f, "a chain has at most {MAX_HOPS} services"),
            Self::MissingUplink(u) => write!(f, "no {u} uplink is configured"),
            Self::DuplicateUplink(u) => write!(f, "a second {u} uplink"),
            Self::PortsNeedProtocol => f.write_str("port ranges need protocol tcp, udp or sctp"),
            Self::MixedFamilies => f.write_str("source and destination are of different families"),
            Self::SegmentTagsExhausted { needed, base } => write!(
                f,
                "the chains need {needed} segment tags (two per hop, and as many again per peer) from VLAN {base}, past 4094"
            ),
            Self::NoUnderlay => {
                f.write_str("no underlay is configured (a port with role underlay and its address)")
            }
            Self::DuplicateUnderlay => f.write_str("a second underlay port"),
            Self::UnknownPeer(p) => write!(f, "{p} is not configured"),
            Self::NotTheUnderlay(p) => write!(f, "{p} is not the underlay port"),
        }
    }
}

/// A configuration error: where, and what.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ConfigError {
    /// The section.
    pub section: Section,
    /// The item's index in its section.
    pub index: usize,
    /// The field path within the item (`attachment.egress`).
    pub field: &'static str,
    /// What is wrong.
    pub kind: ConfigErrorKind,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let section = match self.section {
            Section::Config => "",
            Section::Ports => "ports",
            Section::Services => "services",
            Section::Instances => "instances",
            Section::Peers => "peers",
            Section::Chains => "chains",
            Section::Policies => "policies",
        };
        if self.section == Section::Config {
            write!(f, "{}: {}", self.field, self.kind)
        } else if self.field.is_empty() {
            write!(f, "{section}[{}]: {}", self.index, self.kind)
        } else {
            write!(f, "{section}[{}].{}: {}", self.index, self.field, self.kind)
        }
    }
}

impl core::error::Error for ConfigError {}

/// A whole, validated configuration of one generation.
#[derive(Clone, Debug)]
pub struct Config {
    generation: Generation,
    segment_base: VlanId,
    ports: Vec<Port, MAX_PORTS>,
    services: Vec<Service, MAX_SERVICES>,
    instances: Vec<Instance, MAX_INSTANCES>,
    chains: Vec<Chain, MAX_CHAINS>,
    policies: Vec<Policy, MAX_POLICIES>,
    default_action: PolicyAction,
    underlay: Option<Underlay>,
    peers: Vec<Peer, MAX_PEERS>,
    prefer_local: bool,
    // Derived once at build.
    lan: PortId,
    wan: PortId,
    port_owner: [Option<InstanceId>; MAX_PORTS],
    chain_first_segment: Vec<u16, MAX_CHAINS>,
    segment_chain: Vec<(ChainId, u8), MAX_SEGMENTS>,
}

/// The default first segment tag.
pub const DEFAULT_SEGMENT_BASE: u16 = 2;

impl Config {
    /// A builder for a configuration of `generation`.
    #[must_use]
    pub fn builder(generation: Generation) -> ConfigBuilder {
        ConfigBuilder {
            config: Self {
                generation,
                segment_base: VlanId::from_tci(DEFAULT_SEGMENT_BASE),
                ports: Vec::new(),
                services: Vec::new(),
                instances: Vec::new(),
                chains: Vec::new(),
                policies: Vec::new(),
                default_action: PolicyAction::Bypass,
                underlay: None,
                peers: Vec::new(),
                prefer_local: false,
                lan: PortId::from_index(0),
                wan: PortId::from_index(0),
                port_owner: [None; MAX_PORTS],
                chain_first_segment: Vec::new(),
                segment_chain: Vec::new(),
            },
        }
    }

    /// The generation.
    #[must_use]
    pub const fn generation(&self) -> Generation {
        self.generation
    }

    /// All ports; a [`PortId`] is an index here.
    #[must_use]
    pub fn ports(&self) -> &[Port] {
        &self.ports
    }

    /// All services.
    #[must_use]
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// All instances.
    #[must_use]
    pub fn instances(&self) -> &[Instance] {
        &self.instances
    }

    /// All chains.
    #[must_use]
    pub fn chains(&self) -> &[Chain] {
        &self.chains
    }

    /// All policies, in configured order.
    #[must_use]
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// What happens to connections no policy matches.
    #[must_use]
    pub const fn default_action(&self) -> PolicyAction {
        self.default_action
    }

    /// A port.
    #[must_use]
    pub fn port(&self, id: PortId) -> Option<&Port> {
        self.ports.get(id.index())
    }

    /// A service.
    #[must_use]
    pub fn service(&self, id: ServiceId) -> Option<&Service> {
        self.services.get(id.index())
    }

    /// An instance.
    #[must_use]
    pub fn instance(&self, id: InstanceId) -> Option<&Instance> {
        self.instances.get(id.index())
    }

    /// A chain.
    #[must_use]
    pub fn chain(&self, id: ChainId) -> Option<&Chain> {
        self.chains.get(id.index())
    }

    /// The port of an uplink.
    #[must_use]
    pub const fn uplink_port(&self, uplink: Uplink) -> PortId {
        match uplink {
            Uplink::Lan => self.lan,
            Uplink::Wan => self.wan,
        }
    }

    /// The uplink a port is, if it is one.
    #[must_use]
    pub fn uplink(&self, port: PortId) -> Option<Uplink> {
        match self.port(port)?.role {
            PortRole::Uplink(u) => Some(u),
            PortRole::Vf | PortRole::Underlay => None,
        }
    }

    /// Whether a session's hops prefer instances behind this DPU while one
    /// has headroom (see [`ConfigBuilder::prefer_local`]).
    #[must_use]
    pub const fn prefer_local(&self) -> bool {
        self.prefer_local
    }

    /// This DPU's end of the underlay, if it has one.
    #[must_use]
    pub const fn underlay(&self) -> Option<&Underlay> {
        self.underlay.as_ref()
    }

    /// The other DPUs; a [`PeerId`] is an index here.
    #[must_use]
    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    /// A peer.
    #[must_use]
    pub fn peer(&self, id: PeerId) -> Option<&Peer> {
        self.peers.get(id.index())
    }

    /// The peer with this underlay address.
    #[must_use]
    pub fn peer_at(&self, addr: Ipv4Addr) -> Option<PeerId> {
        self.peers
            .iter()
            .position(|p| p.addr == addr)
            .map(|n| PeerId::from_index(index_u16(n)))
    }

    /// The remote instance attached to `slot` behind `peer`.
    #[must_use]
    pub fn remote_instance(&self, peer: PeerId, slot: u8) -> Option<InstanceId> {
        self.instances
            .iter()
            .position(|i| {
                matches!(i.attachment, Attachment::Remote { peer: p, slot: s, .. } if p == peer && s == slot)
            })
            .map(|n| InstanceId::from_index(index_u16(n)))
    }

    /// Segment tags the chains use (two per hop).
    fn segment_tags(&self) -> u16 {
        index_u16(self.segment_chain.len() * 2)
    }

    /// The guest tag this DPU gives frames it delivers to a local instance
    /// for `peer` on the segment tagged `segment` there (see
    /// [`crate::underlay`]): one per (peer, segment), after the segment
    /// tags.
    #[must_use]
    pub fn guest_tag(&self, peer: PeerId, segment: VlanId) -> Option<VlanId> {
        self.peers.get(peer.index())?;
        self.segment(segment)?;
        let n = self.segment_tags();
        let offset = segment.get() - self.segment_base.get();
        let index = n + index_u16(peer.index()) * n + offset;
        VlanId::new(self.segment_base.get().checked_add(index)?)
    }

    /// The (peer, segment tag) a guest tag stands for.
    #[must_use]
    pub fn guest(&self, tag: VlanId) -> Option<(PeerId, VlanId)> {
        let n = self.segment_tags();
        let index = tag.get().checked_sub(self.segment_base.get())?;
        let beyond = index.checked_sub(n)?;
        let peer = beyond / n.max(1);
        self.peers.get(usize::from(peer))?;
        let segment = VlanId::new(self.segment_base.get() + beyond % n.max(1))?;
        Some((PeerId::from_index(peer), segment))
    }

    /// A fingerprint of what every DPU of a cluster must agree on for the
    /// underlay's segment tags to mean the same: the first tag, and the
    /// chains with their services, by name, in order. FNV-1a, the same on
    /// every architecture.
    #[must_use]
    pub fn layout(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0000_0100_0000_01B3);
            }
            h ^= 0xFF;
            h = h.wrapping_mul(0x0000_0100_0000_01B3);
        };
        eat(&self.segment_base.get().to_be_bytes());
        for chain in &self.chains {
            eat(chain.name.as_str().as_bytes());
            for s in chain.services() {
                eat(self
                    .services
                    .get(s.index())
                    .map_or(&[][..], |s| s.name().as_str().as_bytes()));
            }
        }
        h
    }

    /// The instance a VF port belongs to.
    #[must_use]
    pub fn port_owner(&self, port: PortId) -> Option<InstanceId> {
        self.port_owner.get(port.index()).copied().flatten()
    }

    /// The instances of a service, with their ids.
    pub fn instances_of(
        &self,
        service: ServiceId,
    ) -> impl Iterator<Item = (InstanceId, &Instance)> {
        self.instances
            .iter()
            .enumerate()
            .filter(move |(_, i)| i.service == service)
            .map(|(n, i)| (InstanceId::from_index(index_u16(n)), i))
    }

    /// The VLAN tag of a segment (`None` for a hop the chain does not have).
    #[must_use]
    pub fn segment_tag(&self, segment: Segment) -> Option<VlanId> {
        let chain = self.chains.get(segment.chain.index())?;
        if usize::from(segment.hop) >= chain.len() {
            return None;
        }
        let first = *self.chain_first_segment.get(segment.chain.index())?;
        let index =
            (first + u16::from(segment.hop)) * 2 + u16::from(segment.travel == Travel::ToLan);
        VlanId::new(self.segment_base.get() + index)
    }

    /// The segment a VLAN tag stands for, if any.
    #[must_use]
    pub fn segment(&self, tag: VlanId) -> Option<Segment> {
        let index = tag.get().checked_sub(self.segment_base.get())?;
        let (chain, hop) = *self.segment_chain.get(usize::from(index / 2))?;
        let travel = if index % 2 == 0 {
            Travel::ToWan
        } else {
            Travel::ToLan
        };
        Some(Segment { chain, hop, travel })
    }

    /// The first segment tag.
    #[must_use]
    pub const fn segment_base(&self) -> VlanId {
        self.segment_base
    }
}

/// Items are at most a few thousand: their index fits a u16.
#[allow(clippy::cast_possible_truncation)]
const fn index_u16(n: usize) -> u16 {
    n as u16
}

/// Builds a [`Config`] item by item, checking each as it comes. Add ports,
/// services, instances, chains and policies in that order (each refers to
/// the ones before).
#[derive(Debug)]
pub struct ConfigBuilder {
    config: Config,
}

fn err(section: Section, index: usize, field: &'static str, kind: ConfigErrorKind) -> ConfigError {
    ConfigError {
        section,
        index,
        field,
        kind,
    }
}

fn push<T, const N: usize>(
    list: &mut Vec<T, N>,
    item: T,
    section: Section,
) -> Result<u16, ConfigError> {
    let index = list.len();
    list.push(item)
        .map_err(|_| err(section, index, "", ConfigErrorKind::TooMany { max: N }))?;
    Ok(index_u16(index))
}

fn checked_name<'a>(
    name: &str,
    mut existing: impl Iterator<Item = &'a Name>,
    section: Section,
    index: usize,
) -> Result<Name, ConfigError> {
    let name =
        Name::new(name).map_err(|e| err(section, index, "name", ConfigErrorKind::Name(e)))?;
    if existing.any(|n| *n == name) {
        return Err(err(section, index, "name", ConfigErrorKind::DuplicateName));
    }
    Ok(name)
}

impl ConfigBuilder {
    /// Sets the first segment VLAN tag (default 2). Segments take two tags
    /// each (one per direction), consecutively from here.
    pub fn segment_base(&mut self, base: VlanId) -> &mut Self {
        self.config.segment_base = base;
        self
    }

    /// Sets what happens to connections no policy matches (default:
    /// bypass). A chain must be added before it is named here.
    ///
    /// # Errors
    /// An unknown chain.
    pub fn default_action(&mut self, action: PolicyAction) -> Result<&mut Self, ConfigError> {
        if let PolicyAction::Chain(ch) = action
            && self.config.chains.get(ch.index()).is_none()
        {
            return Err(err(
                Section::Config,
                0,
                "default_action",
                ConfigErrorKind::UnknownChain(ch),
            ));
        }
        self.config.default_action = action;
        Ok(self)
    }

    /// Adds a port.
    ///
    /// # Errors
    /// A bad or duplicate name, a second uplink of a kind, or too many ports.
    pub fn add_port(&mut self, name: &str, role: PortRole) -> Result<PortId, ConfigError> {
        let c = &mut self.config;
        let index = c.ports.len();
        let name = checked_name(name, c.ports.iter().map(|p| &p.name), Section::Ports, index)?;
        if let PortRole::Uplink(u) = role
            && c.ports.iter().any(|p| p.role == role)
        {
            return Err(err(
                Section::Ports,
                index,
                "role",
                ConfigErrorKind::DuplicateUplink(u),
            ));
        }
        if role == PortRole::Underlay && c.ports.iter().any(|p| p.role == role) {
            return Err(err(
                Section::Ports,
                index,
                "role",
                ConfigErrorKind::DuplicateUnderlay,
            ));
        }
        let id = PortId::from_index(push(&mut c.ports, Port { name, role }, Section::Ports)?);
        match role {
            PortRole::Uplink(Uplink::Lan) => c.lan = id,
            PortRole::Uplink(Uplink::Wan) => c.wan = id,
            PortRole::Vf | PortRole::Underlay => {}
        }
        Ok(id)
    }

    /// Makes each hop of a new session prefer an instance behind this DPU
    /// while one has headroom (default: off, one Maglev choice over local
    /// and remote instances alike). Saves the underlay; but two DPUs that
    /// see the two directions of one connection (asymmetric routing) may
    /// then choose different instances, so leave it off where routing is
    /// asymmetric.
    pub fn prefer_local(&mut self, on: bool) -> &mut Self {
        self.config.prefer_local = on;
        self
    }

    /// Gives the underlay port (added with [`PortRole::Underlay`]) its
    /// address, MAC and MTU.
    ///
    /// # Errors
    /// No underlay port, or an MTU below 576 + the outer headers.
    pub fn set_underlay(
        &mut self,
        addr: Ipv4Addr,
        mac: [u8; 6],
        mtu: u16,
    ) -> Result<&mut Self, ConfigError> {
        let c = &mut self.config;
        let Some(n) = c.ports.iter().position(|p| p.role == PortRole::Underlay) else {
            return Err(err(
                Section::Config,
                0,
                "underlay",
                ConfigErrorKind::NoUnderlay,
            ));
        };
        if usize::from(mtu) < 576 + crate::underlay::IP_OVERHEAD {
            return Err(err(
                Section::Config,
                0,
                "underlay.mtu",
                ConfigErrorKind::OutOfRange {
                    expected: "at least 612 (576 and the outer headers)",
                },
            ));
        }
        c.underlay = Some(Underlay {
            port: PortId::from_index(index_u16(n)),
            addr,
            mac,
            mtu,
        });
        Ok(self)
    }

    /// Adds another DPU, reached over the underlay.
    ///
    /// # Errors
    /// No underlay yet, a bad or duplicate name, this DPU's own or another
    /// peer's address, or too many peers.
    pub fn add_peer(
        &mut self,
        name: &str,
        addr: Ipv4Addr,
        mac: [u8; 6],
    ) -> Result<PeerId, ConfigError> {
        let c = &mut self.config;
        let index = c.peers.len();
        let name = checked_name(name, c.peers.iter().map(|p| &p.name), Section::Peers, index)?;
        let Some(own) = c.underlay else {
            return Err(err(
                Section::Peers,
                index,
                "addr",
                ConfigErrorKind::NoUnderlay,
            ));
        };
        if addr == own.addr || c.peers.iter().any(|p| p.addr == addr) {
            return Err(err(
                Section::Peers,
                index,
                "addr",
                ConfigErrorKind::OutOfRange {
                    expected: "an address no other peer and not this DPU has",
                },
            ));
        }
        Ok(PeerId::from_index(push(
            &mut c.peers,
            Peer { name, addr, mac },
            Section::Peers,
        )?))
    }

    /// Adds a service.
    ///
    /// # Errors
    /// A bad or duplicate name, a zero capacity, scaling bounds out of
    /// order, or too many services.
    pub fn add_service(
        &mut self,
        name: &str,
        capacity_bps: u64,
        scaling: Scaling,
        fail: FailMode,
    ) -> Result<ServiceId, ConfigError> {
        let c = &mut self.config;
        let index = c.services.len();
        let name = checked_name(
            name,
            c.services.iter().map(|s| &s.name),
            Section::Services,
            index,
        )?;
        let out = |field, expected| {
            err(
                Section::Services,
                index,
                field,
                ConfigErrorKind::OutOfRange { expected },
            )
        };
        if capacity_bps == 0 {
            return Err(out("capacity_bps", "above 0"));
        }
        let max = u16::try_from(MAX_INSTANCES_PER_SERVICE).unwrap_or(u16::MAX);
        if scaling.max_instances == 0 || scaling.max_instances > max {
            return Err(out("scaling.max_instances", "1 to 64"));
        }
        if scaling.min_instances > scaling.max_instances {
            return Err(out(
                "scaling.min_instances",
                "at most scaling.max_instances",
            ));
        }
        if scaling.scale_out_at.get() == 0 {
            return Err(out("scaling.scale_out_at", "above 0"));
        }
        if scaling.scale_in_at >= scaling.scale_out_at {
            return Err(out("scaling.scale_in_at", "below scaling.scale_out_at"));
        }
        let service = Service {
            name,
            capacity_bps,
            scaling,
            fail,
        };
        Ok(ServiceId::from_index(push(
            &mut c.services,
            service,
            Section::Services,
        )?))
    }

    /// Adds an instance of a service on its VF(s).
    ///
    /// # Errors
    /// A bad or duplicate name, an unknown service or port, an uplink or a
    /// VF taken by another instance, a zero weight, a service at its
    /// maximum, or too many instances.
    pub fn add_instance(
        &mut self,
        name: &str,
        service: ServiceId,
        attachment: Attachment,
        state: InstanceState,
        weight: u16,
    ) -> Result<InstanceId, ConfigError> {
        let c = &mut self.config;
        let index = c.instances.len();
        let name = checked_name(
            name,
            c.instances.iter().map(|i| &i.name),
            Section::Instances,
            index,
        )?;
        let fail = |field, kind| err(Section::Instances, index, field, kind);
        let svc = c
            .services
            .get(service.index())
            .ok_or(fail("service", ConfigErrorKind::UnknownService(service)))?;
        let max = svc.scaling.max_instances;
        if c.instances.iter().filter(|i| i.service == service).count() >= usize::from(max) {
            return Err(fail("service", ConfigErrorKind::ServiceFull { max }));
        }
        if weight == 0 {
            return Err(fail(
                "weight",
                ConfigErrorKind::OutOfRange {
                    expected: "above 0",
                },
            ));
        }
        if let Attachment::Remote { peer, slot, via } = attachment {
            if c.peers.get(peer.index()).is_none() {
                return Err(fail("attachment.peer", ConfigErrorKind::UnknownPeer(peer)));
            }
            if c.underlay.map(|u| u.port) != Some(via) {
                return Err(fail("attachment.via", ConfigErrorKind::NotTheUnderlay(via)));
            }
            if c.instances.iter().any(|i| {
                matches!(i.attachment, Attachment::Remote { peer: p, slot: s, .. } if p == peer && s == slot)
            }) {
                return Err(fail(
                    "attachment.slot",
                    ConfigErrorKind::OutOfRange {
                        expected: "a slot no other instance of the peer has",
                    },
                ));
            }
        }
        let fields = match attachment {
            Attachment::Remote { .. } => ["attachment.via", "attachment.via"],
            Attachment::Single(_) => ["attachment.port", "attachment.port"],
            Attachment::Pair { ingress, egress } => {
                if ingress == egress {
                    return Err(fail(
                        "attachment.egress",
                        ConfigErrorKind::SamePortTwice(egress),
                    ));
                }
                ["attachment.ingress", "attachment.egress"]
            }
        };
        for (port, field) in attachment.vfs().into_iter().flatten().zip(fields) {
            match c.ports.get(port.index()).map(|p| p.role) {
                None => return Err(fail(field, ConfigErrorKind::UnknownPort(port))),
                Some(PortRole::Uplink(_) | PortRole::Underlay) => {
                    return Err(fail(field, ConfigErrorKind::NotAVf(port)));
                }
                Some(PortRole::Vf) => {}
            }
            if let Some(by) = c.port_owner.get(port.index()).copied().flatten() {
                return Err(fail(field, ConfigErrorKind::PortInUse { port, by }));
            }
        }
        let instance = Instance {
            name,
            service,
            attachment,
            state,
            weight,
        };
        let id = InstanceId::from_index(push(&mut c.instances, instance, Section::Instances)?);
        for port in attachment.vfs().into_iter().flatten() {
            if let Some(owner) = c.port_owner.get_mut(port.index()) {
                *owner = Some(id);
            }
        }
        Ok(id)
    }

    /// Adds a chain of services, in lan-to-wan order.
    ///
    /// # Errors
    /// A bad or duplicate name, an unknown service, an empty or too long
    /// chain, or too many chains.
    pub fn add_chain(
        &mut self,
        name: &str,
        services: &[ServiceId],
    ) -> Result<ChainId, ConfigError> {
        let c = &mut self.config;
        let index = c.chains.len();
        let name = checked_name(
            name,
            c.chains.iter().map(|ch| &ch.name),
            Section::Chains,
            index,
        )?;
        let fail = |kind| err(Section::Chains, index, "services", kind);
        if services.is_empty() {
            return Err(fail(ConfigErrorKind::EmptyChain));
        }
        let list = Vec::from_slice(services).map_err(|_| fail(ConfigErrorKind::ChainTooLong))?;
        if let Some(s) = services
            .iter()
            .find(|s| c.services.get(s.index()).is_none())
        {
            return Err(fail(ConfigErrorKind::UnknownService(*s)));
        }
        let chain = Chain {
            name,
            services: list,
        };
        Ok(ChainId::from_index(push(
            &mut c.chains,
            chain,
            Section::Chains,
        )?))
    }

    /// Adds a policy.
    ///
    /// # Errors
    /// An unknown port or chain, port ranges without a protocol that has
    /// ports, prefixes of two families, or too many policies.
    pub fn add_policy(&mut self, policy: Policy) -> Result<(), ConfigError> {
        let c = &mut self.config;
        let index = c.policies.len();
        let fail = |field, kind| err(Section::Policies, index, field, kind);
        let m = &policy.matches;
        if let Some(p) = m.in_port
            && c.ports.get(p.index()).is_none()
        {
            return Err(fail("match.in_port", ConfigErrorKind::UnknownPort(p)));
        }
        if let (Some(s), Some(d)) = (m.src, m.dst)
            && s.is_ipv6() != d.is_ipv6()
        {
            return Err(fail("match.dst", ConfigErrorKind::MixedFamilies));
        }
        let has_ports = matches!(m.proto.map(IpProtocol::number), Some(6 | 17 | 132));
        if !has_ports && m.src_ports.is_some() {
            return Err(fail("match.src_ports", ConfigErrorKind::PortsNeedProtocol));
        }
        if !has_ports && m.dst_ports.is_some() {
            return Err(fail("match.dst_ports", ConfigErrorKind::PortsNeedProtocol));
        }
        if let PolicyAction::Chain(ch) = policy.action
            && c.chains.get(ch.index()).is_none()
        {
            return Err(fail("action.chain", ConfigErrorKind::UnknownChain(ch)));
        }
        push(&mut c.policies, policy, Section::Policies)?;
        Ok(())
    }

    /// Checks the whole and derives the segments.
    ///
    /// # Errors
    /// A missing uplink, or segment tags that do not fit.
    pub fn build(mut self) -> Result<Config, ConfigError> {
        let c = &mut self.config;
        for uplink in [Uplink::Lan, Uplink::Wan] {
            if !c.ports.iter().any(|p| p.role == PortRole::Uplink(uplink)) {
                return Err(err(
                    Section::Config,
                    0,
                    "ports",
                    ConfigErrorKind::MissingUplink(uplink),
                ));
            }
        }
        // Each peer has its own copy of the segment tags: the guest tags.
        let needed: usize =
            c.chains.iter().map(|ch| ch.len() * 2).sum::<usize>() * (1 + c.peers.len());
        let base = c.segment_base;
        if base.get() == 0 || usize::from(base.get()) + needed > 4095 {
            return Err(err(
                Section::Config,
                0,
                "segment_base",
                ConfigErrorKind::SegmentTagsExhausted { needed, base },
            ));
        }
        for (n, chain) in c.chains.iter().enumerate() {
            let first = index_u16(c.segment_chain.len());
            // Capacities match: MAX_CHAINS entries, MAX_SEGMENTS segments.
            let _ = c.chain_first_segment.push(first);
            for hop in 0..chain.len() {
                #[allow(clippy::cast_possible_truncation)] // hop < MAX_HOPS
                let _ = c
                    .segment_chain
                    .push((ChainId::from_index(index_u16(n)), hop as u8));
            }
        }
        Ok(self.config)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::ToString;

    use super::*;
    use crate::policy::{IpPrefix, Match, PortRange};

    fn ports(b: &mut ConfigBuilder) -> (PortId, PortId, PortId, PortId) {
        let lan = b.add_port("lan", PortRole::Uplink(Uplink::Lan)).unwrap();
        let wan = b.add_port("wan", PortRole::Uplink(Uplink::Wan)).unwrap();
        let vf0 = b.add_port("vf0", PortRole::Vf).unwrap();
        let vf1 = b.add_port("vf1", PortRole::Vf).unwrap();
        (lan, wan, vf0, vf1)
    }

    #[test]
    fn a_small_config_builds_and_derives_segments() {
        let mut b = Config::builder(Generation(7));
        let (lan, wan, vf0, vf1) = ports(&mut b);
        let fw = b
            .add_service(
                "firewall",
                10_000_000_000,
                Scaling::default(),
                FailMode::Closed,
            )
            .unwrap();
        let nat = b
            .add_service("nat", 5_000_000_000, Scaling::default(), FailMode::Open)
            .unwrap();
        let i0 = b
            .add_instance(
                "fw-0",
                fw,
                Attachment::Single(vf0),
                InstanceState::Active,
                1,
            )
            .unwrap();
        b.add_instance(
            "nat-0",
            nat,
            Attachment::Single(vf1),
            InstanceState::Active,
            1,
        )
        .unwrap();
        let web = b.add_chain("web", &[fw, nat]).unwrap();
        let only_fw = b.add_chain("fw-only", &[fw]).unwrap();
        b.add_policy(Policy {
            priority: 10,
            matches: Match {
                in_port: Some(lan),
                ..Match::default()
            },
            action: PolicyAction::Chain(web),
        })
        .unwrap();
        let c = b.build().unwrap();
        assert_eq!(c.generation(), Generation(7));
        assert_eq!(
            (c.uplink_port(Uplink::Lan), c.uplink_port(Uplink::Wan)),
            (lan, wan)
        );
        assert_eq!(c.uplink(wan), Some(Uplink::Wan));
        assert_eq!(c.uplink(vf0), None);
        assert_eq!(c.port_owner(vf0), Some(i0));
        assert_eq!(c.instances_of(fw).count(), 1);

        // Every segment has its own tag, and the tag leads back to it.
        let mut seen = std::collections::BTreeSet::new();
        for (chain, hops) in [(web, 2u8), (only_fw, 1)] {
            for hop in 0..hops {
                for travel in [Travel::ToWan, Travel::ToLan] {
                    let seg = Segment { chain, hop, travel };
                    let tag = c.segment_tag(seg).unwrap();
                    assert!(seen.insert(tag.get()), "{seg:?} reuses {tag}");
                    assert_eq!(c.segment(tag), Some(seg));
                }
            }
        }
        assert_eq!(
            seen.iter().copied().collect::<std::vec::Vec<_>>(),
            [2, 3, 4, 5, 6, 7]
        );
        assert_eq!(
            c.segment_tag(Segment {
                chain: only_fw,
                hop: 1,
                travel: Travel::ToWan
            }),
            None
        );
        assert_eq!(c.segment(VlanId::new(8).unwrap()), None);
        assert_eq!(c.segment(VlanId::new(1).unwrap()), None);
    }

    #[test]
    fn errors_name_the_field() {
        let mut b = Config::builder(Generation(1));
        let (lan, _wan, vf0, vf1) = ports(&mut b);
        let e = b
            .add_port("lan2", PortRole::Uplink(Uplink::Lan))
            .unwrap_err();
        assert_eq!(e.to_string(), "ports[4].role: a second lan uplink");
        let e = b.add_port("vf0", PortRole::Vf).unwrap_err();
        assert_eq!(e.to_string(), "ports[4].name: another item has this name");
        let e = b
            .add_service("x", 0, Scaling::default(), FailMode::Open)
            .unwrap_err();
        assert_eq!(e.to_string(), "services[0].capacity_bps: must be above 0");
        let bad = Scaling {
            scale_in_at: Permille::new(900).unwrap(),
            ..Scaling::default()
        };
        let e = b.add_service("x", 1, bad, FailMode::Open).unwrap_err();
        assert_eq!(
            e.to_string(),
            "services[0].scaling.scale_in_at: must be below scaling.scale_out_at"
        );
        let one = Scaling {
            min_instances: 1,
            max_instances: 1,
            ..Scaling::default()
        };
        let fw = b.add_service("fw", 1_000, one, FailMode::Open).unwrap();
        let e = b
            .add_instance("a", fw, Attachment::Single(lan), InstanceState::Active, 1)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "instances[0].attachment.port: port#0 is not a VF"
        );
        let e = b
            .add_instance(
                "a",
                fw,
                Attachment::Pair {
                    ingress: vf0,
                    egress: vf0,
                },
                InstanceState::Active,
                1,
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "instances[0].attachment.egress: port#2 is both ingress and egress"
        );
        b.add_instance("a", fw, Attachment::Single(vf0), InstanceState::Active, 1)
            .unwrap();
        let e = b
            .add_instance("b", fw, Attachment::Single(vf1), InstanceState::Active, 1)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "instances[1].service: the service already has its maximum of 1 instances"
        );
        let e = b.add_chain("c", &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "chains[0].services: a chain needs at least one service (use bypass)"
        );
        let e = b.add_chain("c", &[ServiceId::from_index(9)]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "chains[0].services: service#9 is not configured"
        );
        let e = b.add_chain("c", &[fw; 9]).unwrap_err();
        assert_eq!(e.kind, ConfigErrorKind::ChainTooLong);
        let e = b
            .add_policy(Policy {
                priority: 1,
                matches: Match {
                    dst_ports: Some(PortRange::single(80)),
                    ..Match::default()
                },
                action: PolicyAction::Bypass,
            })
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "policies[0].match.dst_ports: port ranges need protocol tcp, udp or sctp"
        );
        let e = b
            .add_policy(Policy {
                priority: 1,
                matches: Match {
                    src: Some(IpPrefix::new("10.0.0.0".parse().unwrap(), 8).unwrap()),
                    dst: Some(IpPrefix::new("2001:db8::".parse().unwrap(), 32).unwrap()),
                    ..Match::default()
                },
                action: PolicyAction::Drop,
            })
            .unwrap_err();
        assert_eq!(e.kind, ConfigErrorKind::MixedFamilies);
        let e = b
            .add_policy(Policy {
                priority: 1,
                matches: Match::default(),
                action: PolicyAction::Chain(ChainId::from_index(3)),
            })
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "policies[0].action.chain: chain#3 is not configured"
        );
    }

    #[test]
    fn whole_config_checks() {
        let mut b = Config::builder(Generation(1));
        b.add_port("lan", PortRole::Uplink(Uplink::Lan)).unwrap();
        assert_eq!(
            b.build().unwrap_err().to_string(),
            "ports: no wan uplink is configured"
        );

        let mut b = Config::builder(Generation(1));
        ports(&mut b);
        let s = b
            .add_service("s", 1, Scaling::default(), FailMode::Open)
            .unwrap();
        b.add_chain("long", &[s; 8]).unwrap();
        b.segment_base(VlanId::new(4080).unwrap());
        let e = b.build().unwrap_err();
        assert_eq!(
            e.to_string(),
            "segment_base: the chains need 16 segment tags (two per hop, and as many again per peer) from VLAN 4080, past 4094"
        );
    }

    #[test]
    fn attachments_enter_and_exit_by_direction() {
        let (i, e) = (PortId::from_index(3), PortId::from_index(4));
        let pair = Attachment::Pair {
            ingress: i,
            egress: e,
        };
        assert_eq!(
            (pair.entry(Travel::ToWan), pair.exit(Travel::ToWan)),
            (i, e)
        );
        assert_eq!(
            (pair.entry(Travel::ToLan), pair.exit(Travel::ToLan)),
            (e, i)
        );
        let single = Attachment::Single(i);
        assert_eq!(
            (single.entry(Travel::ToLan), single.exit(Travel::ToLan)),
            (i, i)
        );
    }

    /// A config with an underlay, one peer and a remote firewall instance.
    fn with_peer() -> (ConfigBuilder, PeerId, PortId, ServiceId) {
        let mut b = Config::builder(Generation(1));
        ports(&mut b);
        let ul = b.add_port("ul", PortRole::Underlay).unwrap();
        b.set_underlay(Ipv4Addr::new(10, 9, 0, 1), [2, 0, 0, 0, 0, 1], 9000)
            .unwrap();
        let peer = b
            .add_peer("b", Ipv4Addr::new(10, 9, 0, 2), [2, 0, 0, 0, 0, 2])
            .unwrap();
        let fw = b
            .add_service("firewall", 1_000_000, Scaling::default(), FailMode::Open)
            .unwrap();
        (b, peer, ul, fw)
    }

    #[test]
    fn remote_instances_need_a_peer_and_the_underlay_port() {
        let (mut b, peer, ul, fw) = with_peer();
        let remote = |peer, slot, via| Attachment::Remote { peer, slot, via };
        let r = b
            .add_instance("fw-b", fw, remote(peer, 3, ul), InstanceState::Active, 1)
            .unwrap();
        let e = b
            .add_instance(
                "x",
                fw,
                remote(PeerId::from_index(4), 3, ul),
                InstanceState::Active,
                1,
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "instances[1].attachment.peer: peer#4 is not configured"
        );
        let e = b
            .add_instance(
                "x",
                fw,
                remote(peer, 4, PortId::from_index(2)),
                InstanceState::Active,
                1,
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "instances[1].attachment.via: port#2 is not the underlay port"
        );
        let e = b
            .add_instance("x", fw, remote(peer, 3, ul), InstanceState::Active, 1)
            .unwrap_err();
        assert!(
            e.to_string().starts_with("instances[1].attachment.slot"),
            "{e}"
        );
        // A VF can still be attached: the underlay port is nobody's.
        b.add_instance(
            "fw-a",
            fw,
            Attachment::Single(PortId::from_index(2)),
            InstanceState::Active,
            1,
        )
        .unwrap();
        let e = b
            .add_instance("y", fw, Attachment::Single(ul), InstanceState::Active, 1)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "instances[2].attachment.port: port#4 is not a VF"
        );
        let c = b.build().unwrap();
        assert_eq!(c.remote_instance(peer, 3), Some(r));
        assert_eq!(c.remote_instance(peer, 4), None);
        assert_eq!(c.port_owner(ul), None);
        assert_eq!(c.instance(r).unwrap().attachment().entry(Travel::ToWan), ul);
        assert_eq!(c.peer_at(Ipv4Addr::new(10, 9, 0, 2)), Some(peer));
        assert_eq!(c.peer_at(Ipv4Addr::new(10, 9, 0, 1)), None);
    }

    #[test]
    fn peers_and_underlay_are_checked() {
        let mut b = Config::builder(Generation(1));
        ports(&mut b);
        let e = b
            .add_peer("b", Ipv4Addr::new(10, 9, 0, 2), [0; 6])
            .unwrap_err();
        assert!(e.to_string().contains("no underlay is configured"), "{e}");
        let e = b
            .set_underlay(Ipv4Addr::new(10, 9, 0, 1), [0; 6], 9000)
            .unwrap_err();
        assert!(e.to_string().starts_with("underlay: no underlay"), "{e}");
        b.add_port("ul", PortRole::Underlay).unwrap();
        let e = b.add_port("ul2", PortRole::Underlay).unwrap_err();
        assert_eq!(e.to_string(), "ports[5].role: a second underlay port");
        let e = b
            .set_underlay(Ipv4Addr::new(10, 9, 0, 1), [0; 6], 600)
            .unwrap_err();
        assert!(e.to_string().starts_with("underlay.mtu"), "{e}");
        b.set_underlay(Ipv4Addr::new(10, 9, 0, 1), [0; 6], 1500)
            .unwrap();
        let e = b
            .add_peer("self", Ipv4Addr::new(10, 9, 0, 1), [0; 6])
            .unwrap_err();
        assert!(e.to_string().starts_with("peers[0].addr"), "{e}");
        b.add_peer("b", Ipv4Addr::new(10, 9, 0, 2), [0; 6]).unwrap();
        let e = b
            .add_peer("c", Ipv4Addr::new(10, 9, 0, 2), [0; 6])
            .unwrap_err();
        assert!(e.to_string().starts_with("peers[1].addr"), "{e}");
    }

    #[test]
    fn guest_tags_follow_the_segment_tags_one_set_per_peer() {
        let (mut b, peer, _, fw) = with_peer();
        let c2 = b
            .add_peer("c", Ipv4Addr::new(10, 9, 0, 3), [2, 0, 0, 0, 0, 3])
            .unwrap();
        b.add_chain("web", &[fw, fw]).unwrap();
        let c = b.build().unwrap();
        // Two hops: segment tags 2..=5; guests of b 6..=9, of c 10..=13.
        let tag = |v| VlanId::new(v).unwrap();
        assert_eq!(c.guest_tag(peer, tag(2)), Some(tag(6)));
        assert_eq!(c.guest_tag(peer, tag(5)), Some(tag(9)));
        assert_eq!(c.guest_tag(c2, tag(3)), Some(tag(11)));
        assert_eq!(
            c.guest_tag(peer, tag(6)),
            None,
            "a guest tag is not a segment"
        );
        assert_eq!(c.guest_tag(PeerId::from_index(2), tag(2)), None);
        for t in 2..=5 {
            for p in [peer, c2] {
                let g = c.guest_tag(p, tag(t)).unwrap();
                assert_eq!(c.guest(g), Some((p, tag(t))));
                assert_eq!(c.segment(g), None, "guest tags never read as segments");
            }
            assert_eq!(c.guest(tag(t)), None);
        }
        assert_eq!(c.guest(tag(14)), None);
    }

    #[test]
    fn guest_tags_count_against_the_vlan_space() {
        let (mut b, _, _, fw) = with_peer();
        b.segment_base(VlanId::new(4080).unwrap());
        b.add_chain("web", &[fw, fw, fw, fw]).unwrap();
        // 8 tags, and 8 more for the peer: 4080 + 16 > 4095.
        let e = b.build().unwrap_err();
        assert!(e.to_string().contains("need 16 segment tags"), "{e}");
    }

    #[test]
    fn the_layout_fingerprint_covers_chains_and_the_first_tag_only() {
        let make = |base: u16, order: bool, peer: bool| {
            let mut b = Config::builder(Generation(1));
            ports(&mut b);
            if peer {
                b.add_port("ul", PortRole::Underlay).unwrap();
                b.set_underlay(Ipv4Addr::new(10, 9, 0, 1), [0; 6], 1500)
                    .unwrap();
                b.add_peer("b", Ipv4Addr::new(10, 9, 0, 2), [0; 6]).unwrap();
            }
            let fw = b
                .add_service("fw", 1, Scaling::default(), FailMode::Open)
                .unwrap();
            let ids = b
                .add_service("ids", 1, Scaling::default(), FailMode::Open)
                .unwrap();
            let hops = if order { [fw, ids] } else { [ids, fw] };
            b.add_chain("web", &hops).unwrap();
            b.segment_base(VlanId::new(base).unwrap());
            b.build().unwrap().layout()
        };
        assert_eq!(make(2, true, false), make(2, true, true));
        assert_ne!(make(2, true, false), make(2, false, false));
        assert_ne!(make(2, true, false), make(3, true, false));
    }
}
