//! The per-packet decisions: what happens to a packet that reached the fast
//! path (a miss in the NIC's rules), and the control operations around it.
//!
//! A packet enters at a port:
//! - At an uplink, its flow key (customer VLANs only) finds its session, or
//!   a new session is opened: the classifier picks a chain (or bypass, or
//!   drop), the balancer an instance for every hop. The packet goes to the
//!   first hop in its direction of travel with the segment tag pushed, or
//!   to the other uplink.
//! - At an instance's VF, the outer VLAN tag must be a segment tag whose hop
//!   belongs to the instance's service. Without it the key, now without
//!   that tag, finds the session; the packet goes to the next hop (tag
//!   rewritten) or out of the far uplink (tag popped). A packet the session
//!   does not know came back rewritten (NAT): a continuation session is
//!   opened for the new tuple, with the rewriting instance at its hop, so
//!   both directions of the rewritten flow keep to it.
//!
//! - At the underlay port, a VXLAN frame from another DPU (a peer; see
//!   [`chaingate_shared::underlay`]) is either for a local instance
//!   (deliver: decapsulated, tagged with the peer's guest tag, sent to the
//!   instance; no session here) or comes back from a remote instance to
//!   the session that sent it (return: decapsulated, and on from that hop
//!   as if it came back from a local VF). A frame from a local instance
//!   with a guest tag goes back to its peer, encapsulated.
//! - A hop whose instance is remote is an encapsulation towards its peer.
//!
//! Chains are walked in order from lan to wan and in reverse from wan to
//! lan (see [`chaingate_shared::config`]). Every session opened, changed or
//! ended asks for its hardware rules through [`Event`]s, which the offload
//! layer drains. Nothing here allocates per packet.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::fmt;
use core::net::{IpAddr, Ipv4Addr};

use chaingate_shared::config::{
    Attachment, Config, FailMode, InstanceState, PortRole, Segment, Travel, Uplink,
};
use chaingate_shared::policy::{ClassifyInput, Dscp, PolicyAction};
use chaingate_shared::telemetry::ScaleRequest;
use chaingate_shared::underlay::{self, Leg, Vni};
use chaingate_shared::{
    ChainId, FlowDirection, FlowKey, InstanceId, IpProtocol, Nanos, PeerId, PortId, VlanId,
    VlanStack,
};

use crate::balance::{Balancer, Choice};
use crate::classify::Classifier;
use crate::meter::Meters;
use crate::offload::VxlanTunnel;
use crate::session::{
    Admission, ConnState, DropCause, Session, SessionAction, SessionId, SessionTable, Timeouts,
};
use crate::wire::{
    EtherType, EthernetAddress, FrameBuf, FrameBufError, Layers, ParsedFrame, Tci, TunnelKind,
    parse_into,
};

/// What the VLAN tag of a forwarded packet needs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum VlanAction {
    /// Nothing.
    Keep,
    /// Push an 802.1Q tag with this id (entering a chain).
    Push(VlanId),
    /// Rewrite the outer tag's id (hop to hop).
    Set(VlanId),
    /// Remove the outer tag (leaving a chain).
    Pop,
}

impl VlanAction {
    /// Applies the change to a frame: a pushed tag is 802.1Q with
    /// priority 0, outside any customer tags.
    ///
    /// # Errors
    /// No room for a tag, or no tag to rewrite or remove.
    pub fn apply(self, frame: &mut FrameBuf<'_>) -> Result<(), FrameBufError> {
        match self {
            Self::Keep => Ok(()),
            Self::Push(vid) => frame.push_vlan(EtherType::Vlan, Tci::new(0, false, vid)),
            Self::Set(vid) => frame.set_outer_vid(vid),
            Self::Pop => frame.pop_vlan().map(|_| ()),
        }
    }
}

/// An encapsulation towards a peer (see [`chaingate_shared::underlay`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Encap {
    /// The DPU it goes to.
    pub peer: PeerId,
    /// What it says.
    pub vni: Vni,
    /// The outer UDP source port: from the flow's hash (49152 and up), so
    /// that an underlay with several paths spreads flows and keeps each on
    /// one.
    pub src_port: u16,
}

impl Encap {
    /// The outer headers, from this DPU's underlay and the peer's address
    /// (`None` when the configuration has neither).
    #[must_use]
    pub fn tunnel(&self, config: &Config) -> Option<VxlanTunnel> {
        let own = config.underlay()?;
        let peer = config.peer(self.peer)?;
        Some(VxlanTunnel {
            dst_mac: EthernetAddress(peer.mac()),
            src_mac: EthernetAddress(own.mac),
            src: u32::from(own.addr),
            dst: u32::from(peer.addr()),
            src_port: self.src_port,
            vni: self.vni.encode(),
            ttl: 64,
        })
    }
}

/// The outer UDP source port of a flow with this hash.
#[allow(clippy::cast_possible_truncation)] // 14 bits
const fn entropy(hash: u64) -> u16 {
    0xC000 | (hash as u16 & 0x3FFF)
}

/// Where a packet the fast path decides on came from, and so what its
/// outermost tag is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum From {
    /// An uplink: no segment tag.
    Uplink,
    /// A local instance: a segment tag.
    Vf,
    /// A remote instance, over the underlay: no tag, and outer headers to
    /// strip.
    Underlay,
}

/// Why a packet was dropped.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub enum DropReason {
    /// The frame does not parse.
    Malformed,
    /// The ingress port is not configured, or is a VF without an instance.
    UnknownPort,
    /// A policy drops the connection.
    Policy,
    /// A fail-closed service has no instance to take the connection.
    NoInstance,
    /// The session table is full and refuses new connections.
    TableFull,
    /// A packet from an instance without a segment tag of a chain.
    NotASegment,
    /// A packet from an instance tagged with another service's segment.
    WrongInstance,
    /// An ICMP error or fragment that belongs to no session.
    NoSession,
    /// The connection's fail-closed service lost its instance.
    ServiceFailed,
    /// A frame at the underlay port that is not VXLAN to this DPU from a
    /// configured peer.
    NotAPeer,
    /// A frame for a remote instance too large for the underlay's MTU
    /// with the outer headers.
    TooBig,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [Self; 11] = [
        Self::Malformed,
        Self::UnknownPort,
        Self::Policy,
        Self::NoInstance,
        Self::TableFull,
        Self::NotASegment,
        Self::WrongInstance,
        Self::NoSession,
        Self::ServiceFailed,
        Self::NotAPeer,
        Self::TooBig,
    ];

    /// A short name for counters and logs.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownPort => "unknown_port",
            Self::Policy => "policy",
            Self::NoInstance => "no_instance",
            Self::TableFull => "table_full",
            Self::NotASegment => "not_a_segment",
            Self::WrongInstance => "wrong_instance",
            Self::NoSession => "no_session",
            Self::ServiceFailed => "service_failed",
            Self::NotAPeer => "not_a_peer",
            Self::TooBig => "too_big_for_underlay",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What to do with a packet.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Verdict {
    /// Send it out of `port`: strip the outer headers (`decap`), change
    /// the tag, encapsulate (`encap`), in that order.
    Forward {
        /// The port.
        port: PortId,
        /// The tag change.
        vlan: VlanAction,
        /// Strip the underlay's outer headers
        /// ([`underlay::OVERHEAD`] bytes) first.
        decap: bool,
        /// Put outer headers towards a peer around it last.
        encap: Option<Encap>,
    },
    /// Drop it.
    Drop(DropReason),
    /// Hand it to the DPU's own stack (non-IP from an instance).
    ToHost,
}

impl Verdict {
    /// A forward without outer headers.
    #[must_use]
    pub const fn forward(port: PortId, vlan: VlanAction) -> Self {
        Self::Forward {
            port,
            vlan,
            decap: false,
            encap: None,
        }
    }

    /// Changes a frame as a forward says: strips the outer headers, changes
    /// the tag, adds outer headers. Returns the port, or `None` for a drop
    /// or a frame for the host.
    ///
    /// # Errors
    /// No room or nothing to change: the frame must be dropped.
    pub fn apply(
        self,
        frame: &mut FrameBuf<'_>,
        config: &Config,
    ) -> Result<Option<PortId>, FrameBufError> {
        let Self::Forward {
            port,
            vlan,
            decap,
            encap,
        } = self
        else {
            return Ok(None);
        };
        if decap {
            frame.pull_front(underlay::OVERHEAD)?;
        }
        vlan.apply(frame)?;
        if let Some(e) = encap {
            let tunnel = e.tunnel(config).ok_or(FrameBufError::NoRoom)?;
            crate::offload::soft::encap(frame, &tunnel).map_err(|()| FrameBufError::NoRoom)?;
        }
        Ok(Some(port))
    }
}

/// A request to the offload layer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Event {
    /// A session was opened: install its rules.
    Install(SessionId),
    /// A session's path or action changed: replace its rules.
    Update(SessionId),
    /// A session ended: remove its rules.
    Remove(SessionId),
}

/// Counters of everything the fast path decided.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Counters {
    /// Packets forwarded.
    pub forwarded: u64,
    /// Packets handed to the host.
    pub to_host: u64,
    /// Packets dropped, by [`DropReason`] (in [`DropReason::ALL`] order).
    pub dropped: [u64; DropReason::ALL.len()],
    /// Sessions opened at an uplink.
    pub sessions_opened: u64,
    /// Continuation sessions opened for rewritten flows.
    pub continuations: u64,
    /// Sessions ended by TCP RST.
    pub sessions_reset: u64,
    /// Sessions moved to another instance after a failure.
    pub repathed: u64,
    /// Sessions dropped because a fail-closed instance failed.
    pub failed_closed: u64,
    /// Events lost because the queue was full (the offload layer
    /// reconciles against the session table).
    pub events_dropped: u64,
    /// Later fragments matched to their session.
    pub fragments_matched: u64,
}

impl Counters {
    /// Packets dropped for `reason`.
    #[must_use]
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.dropped.get(reason as usize).copied().unwrap_or(0)
    }
}

/// How the data path is sized and tuned.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Session table capacity.
    pub sessions: usize,
    /// What a full session table does.
    pub admission: Admission,
    /// Idle timeouts.
    pub timeouts: Timeouts,
    /// Time constant of the bandwidth averages.
    pub meter_tau: Nanos,
    /// Capacity of the event queue.
    pub events: usize,
    /// Session slots visited for expiry per tick.
    pub expire_budget: usize,
    /// Packets a session must have in software before its hardware rules
    /// are asked for (1: at the first packet). More keeps short flows (a
    /// DNS query, a scan) from using rules, and keeps the rate of rule
    /// installation below the rate of new sessions.
    pub offload_after: u16,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            sessions: 1 << 16,
            admission: Admission::Refuse,
            timeouts: Timeouts::default(),
            meter_tau: Nanos::SECOND,
            events: 1 << 14,
            expire_budget: 4096,
            offload_after: 1,
        }
    }
}

/// The instance id a config refers to is not configured.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct UnknownInstance(pub InstanceId);

impl fmt::Display for UnknownInstance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is not configured", self.0)
    }
}

impl core::error::Error for UnknownInstance {}

/// Frames looked up together by [`Datapath::process_burst`].
pub const BURST: usize = 32;

/// The key a packet's session is found by: its flow key at an uplink; at
/// a VF, without the outer (segment) tag.
fn lookup_key(role: PortRole, layers: &Layers) -> Option<FlowKey> {
    let key = layers.key()?;
    match role {
        PortRole::Uplink(_) => Some(*key),
        PortRole::Vf => Some(key.with_vlans(key.vlans().without_outer())),
        // The session is found by the inner frame's key.
        PortRole::Underlay => None,
    }
}

/// What a burst already knows of a packet's session lookup.
#[derive(Clone, Copy, Debug)]
struct Hint {
    normal: FlowKey,
    dir: FlowDirection,
    hash: u64,
    hit: Option<SessionId>,
}

/// What a session lookup found.
enum Found {
    Session(SessionId, FlowDirection),
    Nothing { dir: FlowDirection, hash: u64 },
}

/// A first fragment's (source, destination, protocol, identification) and
/// its session.
type FragmentEntry = (IpAddr, IpAddr, u8, u32, SessionId);

/// Later fragments remembered per first fragment.
const FRAGMENT_SLOTS: usize = 1024;

/// A later fragment finds its session through the first one: (source,
/// destination, protocol, identification) of the first fragment seen, in a
/// direct-mapped table. A later fragment that arrives first, or whose entry
/// was overwritten, is a flow of its own (ports 0).
#[derive(Clone, Debug)]
struct Fragments {
    slots: Vec<Option<FragmentEntry>>,
}

impl Fragments {
    fn new() -> Self {
        Self {
            slots: alloc::vec![None; FRAGMENT_SLOTS],
        }
    }

    fn slot(src: IpAddr, dst: IpAddr, proto: u8, ident: u32) -> usize {
        let a =
            FlowKey::new(src, dst, IpProtocol::from(proto), 0, 0).map_or(0, |k| k.symmetric_hash());
        // Below FRAGMENT_SLOTS: fits usize.
        #[allow(clippy::cast_possible_truncation)]
        let slot = ((a ^ u64::from(ident).wrapping_mul(0x9E37_79B9_7F4A_7C15))
            % FRAGMENT_SLOTS as u64) as usize;
        slot
    }

    fn remember(&mut self, key: &FlowKey, ident: u32, id: SessionId) {
        let p = key.proto().number();
        if let Some(s) = self
            .slots
            .get_mut(Self::slot(key.src(), key.dst(), p, ident))
        {
            *s = Some((key.src(), key.dst(), p, ident, id));
        }
    }

    fn find(&self, key: &FlowKey, ident: u32) -> Option<SessionId> {
        let p = key.proto().number();
        match self.slots.get(Self::slot(key.src(), key.dst(), p, ident))? {
            Some((s, d, pr, i, id))
                if *s == key.src() && *d == key.dst() && *pr == p && *i == ident =>
            {
                Some(*id)
            }
            _ => None,
        }
    }
}

/// The fast path of one DPU.
#[derive(Debug)]
pub struct Datapath {
    config: Box<Config>,
    states: Vec<InstanceState>,
    classifier: Classifier,
    balancer: Balancer,
    meters: Meters,
    sessions: SessionTable,
    timeouts: Timeouts,
    expire_budget: usize,
    offload_after: u16,
    events: VecDeque<Event>,
    event_capacity: usize,
    counters: Counters,
    parsed: ParsedFrame,
    burst: Vec<ParsedFrame>,
    hint: Option<Hint>,
    fragments: Fragments,
}

impl Datapath {
    /// A data path for `config`, sized by `options`.
    #[must_use]
    pub fn new(config: Config, options: &Options) -> Self {
        let states: Vec<InstanceState> = config.instances().iter().map(|i| i.state()).collect();
        let classifier = Classifier::new(&config);
        let balancer = Balancer::new(&config, |i| state_of(&states, i));
        let meters = Meters::new(&config, options.meter_tau);
        Self {
            config: Box::new(config),
            states,
            classifier,
            balancer,
            meters,
            sessions: SessionTable::new(options.sessions, options.admission),
            timeouts: options.timeouts,
            expire_budget: options.expire_budget,
            offload_after: options.offload_after.max(1),
            events: VecDeque::with_capacity(options.events),
            event_capacity: options.events.max(1),
            counters: Counters::default(),
            parsed: ParsedFrame::EMPTY,
            burst: alloc::vec![ParsedFrame::EMPTY; BURST],
            hint: None,
            fragments: Fragments::new(),
        }
    }

    /// The configuration in force.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The counters.
    #[must_use]
    pub const fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The session table.
    #[must_use]
    pub const fn sessions(&self) -> &SessionTable {
        &self.sessions
    }

    /// The meters.
    #[must_use]
    pub const fn meters(&self) -> &Meters {
        &self.meters
    }

    /// A session, for the offload layer and for listing.
    #[must_use]
    pub fn session(&self, id: SessionId) -> Option<&Session> {
        self.sessions.get(id)
    }

    /// The current state of an instance.
    #[must_use]
    pub fn instance_state(&self, id: InstanceId) -> Option<InstanceState> {
        self.states.get(id.index()).copied()
    }

    /// The next request for the offload layer.
    pub fn next_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next scale request for the host agent.
    pub fn next_scale_request(&mut self) -> Option<ScaleRequest> {
        self.meters.pop_request()
    }

    fn emit(&mut self, event: Event) {
        if self.events.len() >= self.event_capacity {
            self.counters.events_dropped += 1;
        } else {
            self.events.push_back(event);
        }
    }

    fn drop(&mut self, reason: DropReason) -> Verdict {
        if let Some(c) = self.counters.dropped.get_mut(reason as usize) {
            *c += 1;
        }
        Verdict::Drop(reason)
    }

    /// Decides what happens to a frame that entered at `in_port` at `now`.
    pub fn process(&mut self, in_port: PortId, frame: &[u8], now: Nanos) -> Verdict {
        let Some(role) = self.config.port(in_port).map(|p| p.role()) else {
            return self.drop(DropReason::UnknownPort);
        };
        if parse_into(frame, &mut self.parsed).is_err() {
            return self.drop(DropReason::Malformed);
        }
        let parsed = self.parsed;
        self.decide(in_port, role, &parsed, frame.len(), now)
    }

    /// [`Self::process`] for a burst of frames that entered at `in_port`
    /// (what a receive burst hands over): the session lookups of the whole
    /// burst are made together, so that their memory accesses overlap
    /// instead of waiting for each other. `out[i]` is the verdict of
    /// `frames[i]`; the verdicts are the ones `process` would give, in order.
    pub fn process_burst(
        &mut self,
        in_port: PortId,
        frames: &[&[u8]],
        now: Nanos,
        out: &mut [Verdict],
    ) {
        let Some(role) = self.config.port(in_port).map(|p| p.role()) else {
            for o in out.iter_mut().take(frames.len()) {
                *o = self.drop(DropReason::UnknownPort);
            }
            return;
        };
        let unused = FlowKey::v4(
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            IpProtocol::Unknown(255),
            0,
            0,
        );
        for (frames, out) in frames.chunks(BURST).zip(out.chunks_mut(BURST)) {
            let mut lookups = [(unused, 0u64); BURST];
            let mut dirs = [FlowDirection::Forward; BURST];
            let mut parsed = [false; BURST];
            for (i, frame) in frames.iter().enumerate() {
                let (Some(slot), Some(ok), Some(lookup), Some(dir)) = (
                    self.burst.get_mut(i),
                    parsed.get_mut(i),
                    lookups.get_mut(i),
                    dirs.get_mut(i),
                ) else {
                    continue;
                };
                *ok = parse_into(frame, slot).is_ok();
                if let Some(key) = lookup_key(role, slot.outer()).filter(|_| *ok) {
                    let (normal, d, hash) = key.normalised_with_hash();
                    *lookup = (normal, hash);
                    *dir = d;
                }
            }
            let n = frames.len().min(BURST);
            let mut found = [None; BURST];
            if let (Some(l), Some(f)) = (lookups.get(..n), found.get_mut(..n)) {
                self.sessions.find_burst(l, f);
            }
            for (i, (frame, o)) in frames.iter().zip(out.iter_mut()).enumerate() {
                let (Some(&ok), Some(frame_parsed), Some(&(normal, hash)), Some(&hit), Some(&dir)) = (
                    parsed.get(i),
                    self.burst.get(i).copied(),
                    lookups.get(i),
                    found.get(i),
                    dirs.get(i),
                ) else {
                    continue;
                };
                if !ok {
                    *o = self.drop(DropReason::Malformed);
                    continue;
                }
                self.hint = Some(Hint {
                    normal,
                    dir,
                    hash,
                    hit,
                });
                *o = self.decide(in_port, role, &frame_parsed, frame.len(), now);
                self.hint = None;
            }
        }
    }

    fn decide(
        &mut self,
        in_port: PortId,
        role: PortRole,
        parsed: &ParsedFrame,
        len: usize,
        now: Nanos,
    ) -> Verdict {
        let layers = parsed.outer();
        let verdict = match role {
            // A customer frame with three tags leaves no room for the
            // segment tag inside a chain.
            PortRole::Uplink(_) if layers.vlans().len() > VlanStack::CUSTOMER => {
                self.drop(DropReason::Malformed)
            }
            PortRole::Uplink(uplink) => self.enter_at_uplink(uplink, in_port, layers, len, now),
            PortRole::Vf => self.back_from_instance(in_port, layers, len, now),
            PortRole::Underlay => {
                // A burst looked up the outer key, which finds nothing.
                self.hint = None;
                self.at_underlay(parsed, len, now)
            }
        };
        match verdict {
            Verdict::Forward { .. } => self.counters.forwarded += 1,
            Verdict::ToHost => self.counters.to_host += 1,
            Verdict::Drop(_) => {}
        }
        verdict
    }

    fn enter_at_uplink(
        &mut self,
        uplink: Uplink,
        in_port: PortId,
        layers: &Layers,
        len: usize,
        now: Nanos,
    ) -> Verdict {
        let other = self.config.uplink_port(uplink.other());
        let Some(key) = layers.key().copied() else {
            // ARP, LLDP and other link-level traffic cross the gateway: it
            // is a bump in the wire.
            return Verdict::forward(other, VlanAction::Keep);
        };
        let (id, dir) = match self.find_session(layers, &key) {
            Found::Session(id, dir) => {
                if layers.fragment().is_some_and(|f| !f.is_first()) {
                    self.counters.fragments_matched += 1;
                }
                (id, dir)
            }
            Found::Nothing { .. } if layers.icmp_error().is_some() => {
                return self.drop(DropReason::NoSession);
            }
            Found::Nothing { dir, hash } => {
                match self.open(uplink, in_port, &key, hash, layers, now) {
                    Ok(id) => (id, dir),
                    Err(reason) => return self.drop(reason),
                }
            }
        };
        if let Some(f) = layers.fragment().filter(|f| f.is_first() && f.more) {
            self.fragments.remember(&key, f.ident, id);
        }
        self.advance(
            id,
            None,
            uplink.travel(),
            dir,
            layers,
            From::Uplink,
            len,
            now,
        )
    }

    /// The session of a packet: by its key, or for a later fragment (no
    /// ports) through its first fragment, with the direction of the packet
    /// relative to the session's normalised key.
    fn find_session(&self, layers: &Layers, key: &FlowKey) -> Found {
        // A burst normalised, hashed and looked the key up already (the
        // same key: see `lookup_key`). A hit that is still live stands;
        // anything else is looked up again, since a session may have been
        // opened or evicted by an earlier packet of the burst.
        let (normal, dir, hash, hit) = match self.hint {
            Some(h) => (
                h.normal,
                h.dir,
                h.hash,
                h.hit.filter(|id| self.sessions.get(*id).is_some()),
            ),
            None => {
                let (normal, dir, hash) = key.normalised_with_hash();
                (normal, dir, hash, None)
            }
        };
        let found = hit.or_else(|| self.sessions.find(&normal, hash));
        if let Some(id) = found {
            return Found::Session(id, dir);
        }
        let fragment_session = layers
            .fragment()
            .filter(|f| !f.is_first())
            .and_then(|f| self.fragments.find(key, f.ident))
            .and_then(|id| Some((id, self.sessions.get(id)?)));
        match fragment_session {
            Some((id, s)) => {
                let dir = if key.src() == s.key().src() {
                    FlowDirection::Forward
                } else {
                    FlowDirection::Reverse
                };
                Found::Session(id, dir)
            }
            None => Found::Nothing { dir, hash },
        }
    }

    fn open(
        &mut self,
        uplink: Uplink,
        in_port: PortId,
        key: &FlowKey,
        hash: u64,
        layers: &Layers,
        now: Nanos,
    ) -> Result<SessionId, DropReason> {
        let dscp = Dscp::masked(layers.dscp());
        let class = self
            .classifier
            .classify(&ClassifyInput { in_port, key, dscp });
        let action = match class.action {
            PolicyAction::Chain(c) => SessionAction::Chain(c),
            PolicyAction::Bypass => SessionAction::Bypass,
            PolicyAction::Drop => SessionAction::Drop(DropCause::Policy),
        };
        let mut session = Session::new(key, uplink, action, now);
        if let SessionAction::Chain(chain) = action {
            self.choose_hops(&mut session, chain, hash, 0..usize::MAX, now)?;
        }
        let id = self.insert(hash, session)?;
        self.counters.sessions_opened += 1;
        Ok(id)
    }

    /// Picks instances for the hops of `chain` within `hops`.
    fn choose_hops(
        &mut self,
        session: &mut Session,
        chain: ChainId,
        hash: u64,
        hops: core::ops::Range<usize>,
        now: Nanos,
    ) -> Result<(), DropReason> {
        let Some(services) = self.config.chain(chain).map(|c| c.services()) else {
            return Err(DropReason::NoInstance);
        };
        for (hop, service) in services.iter().enumerate() {
            if !hops.contains(&hop) {
                continue;
            }
            let choice = if self.config.prefer_local() {
                let config = &self.config;
                self.balancer
                    .choose_preferring(*service, hash, &self.meters, |i| {
                        config
                            .instance(i)
                            .is_some_and(|inst| !inst.attachment().is_remote())
                    })
            } else {
                self.balancer.choose(*service, hash, &self.meters)
            };
            if let Choice::Overloaded(_) = choice {
                self.meters.request_scale(*service, now);
            }
            if choice == Choice::Unavailable
                && self.config.service(*service).map(|s| s.fail()) == Some(FailMode::Closed)
            {
                return Err(DropReason::NoInstance);
            }
            session.set_hop(hop, choice.instance());
        }
        Ok(())
    }

    fn insert(&mut self, hash: u64, session: Session) -> Result<SessionId, DropReason> {
        let mut evicted = None;
        let id = self
            .sessions
            .insert(hash, session, |old, _| evicted = Some(old))
            .map_err(|_| DropReason::TableFull)?;
        if let Some(old) = evicted {
            self.emit(Event::Remove(old));
        }
        Ok(id)
    }

    fn back_from_instance(
        &mut self,
        in_port: PortId,
        layers: &Layers,
        len: usize,
        now: Nanos,
    ) -> Verdict {
        let Some(instance) = self.config.port_owner(in_port) else {
            return self.drop(DropReason::UnknownPort);
        };
        let Some(key) = layers.key().copied() else {
            return Verdict::ToHost;
        };
        let Some(tag) = key.vlans().outer() else {
            return self.drop(DropReason::NotASegment);
        };
        if let Some(segment) = self.config.segment(tag) {
            return self.returned(instance, segment, layers, From::Vf, len, now);
        }
        match self.config.guest(tag) {
            Some((peer, segment)) => self.back_to_peer(instance, peer, segment, &key, len),
            None => self.drop(DropReason::NotASegment),
        }
    }

    /// Whether `instance` runs the service of `segment`'s hop.
    fn serves(&self, instance: InstanceId, segment: Segment) -> bool {
        let hop_service = self
            .config
            .chain(segment.chain)
            .and_then(|c| c.services().get(usize::from(segment.hop)).copied());
        let own_service = self.config.instance(instance).map(|i| i.service());
        hop_service.is_some() && hop_service == own_service
    }

    /// A packet of a session of this DPU came back from `instance` (a
    /// local one through its VF, or a remote one over the underlay).
    fn returned(
        &mut self,
        instance: InstanceId,
        segment: Segment,
        layers: &Layers,
        from: From,
        len: usize,
        now: Nanos,
    ) -> Verdict {
        if !self.serves(instance, segment) {
            return self.drop(DropReason::WrongInstance);
        }
        let key = match from {
            From::Vf => lookup_key(PortRole::Vf, layers),
            From::Uplink | From::Underlay => layers.key().copied(),
        };
        let Some(key) = key else {
            return Verdict::ToHost;
        };
        let (id, dir) = match self.find_session(layers, &key) {
            Found::Session(id, dir)
                if self.sessions.get(id).map(Session::action)
                    == Some(SessionAction::Chain(segment.chain)) =>
            {
                (id, dir)
            }
            Found::Session(..) => return self.drop(DropReason::NotASegment),
            Found::Nothing { .. } if layers.icmp_error().is_some() => {
                return self.drop(DropReason::NoSession);
            }
            Found::Nothing { dir, hash } => {
                match self.continue_flow(&key, hash, segment, instance, now) {
                    Ok(id) => (id, dir),
                    Err(reason) => return self.drop(reason),
                }
            }
        };
        self.advance(
            id,
            Some(usize::from(segment.hop)),
            segment.travel,
            dir,
            layers,
            from,
            len,
            now,
        )
    }

    /// A VXLAN frame at the underlay port.
    fn at_underlay(&mut self, parsed: &ParsedFrame, len: usize, now: Nanos) -> Verdict {
        let (Some(tunnel), Some(inner), Some(own)) = (
            parsed.tunnel(),
            parsed.inner(),
            self.config.underlay().copied(),
        ) else {
            return self.drop(DropReason::NotAPeer);
        };
        let outer = parsed.outer();
        let peer = match outer.key().map(|k| (k.src(), k.dst())) {
            Some((IpAddr::V4(src), IpAddr::V4(dst))) if dst == own.addr => self.config.peer_at(src),
            _ => None,
        };
        let Some(peer) = peer.filter(|_| tunnel.kind == TunnelKind::Vxlan) else {
            return self.drop(DropReason::NotAPeer);
        };
        // Peers send exactly these outer headers: untagged Ethernet, IPv4
        // without options, UDP, VXLAN.
        if tunnel.inner_offset != underlay::OVERHEAD || !outer.vlans().is_empty() {
            return self.drop(DropReason::Malformed);
        }
        let Some((vni, segment)) =
            Vni::decode(tunnel.vni.get()).and_then(|v| Some((v, self.config.segment(v.segment)?)))
        else {
            return self.drop(DropReason::NotASegment);
        };
        let inner_len = len - underlay::OVERHEAD;
        match vni.leg {
            Leg::Deliver => self.deliver(peer, vni, segment, inner, inner_len),
            Leg::Return => match self.config.remote_instance(peer, vni.slot) {
                Some(instance) => {
                    self.returned(instance, segment, inner, From::Underlay, inner_len, now)
                }
                None => self.drop(DropReason::WrongInstance),
            },
        }
    }

    /// A peer's frame for a local instance: tagged with the peer's guest
    /// tag for the segment, so that what the instance sends back goes back
    /// to the peer.
    fn deliver(
        &mut self,
        peer: PeerId,
        vni: Vni,
        segment: Segment,
        inner: &Layers,
        len: usize,
    ) -> Verdict {
        let port = PortId::from_index(u16::from(vni.slot));
        let Some(instance) = self.config.port_owner(port) else {
            return self.drop(DropReason::UnknownPort);
        };
        if !self.serves(instance, segment) {
            return self.drop(DropReason::WrongInstance);
        }
        if inner.vlans().len() > VlanStack::CUSTOMER {
            return self.drop(DropReason::Malformed);
        }
        let (Some(tag), Some(entry)) = (
            self.config.guest_tag(peer, vni.segment),
            self.config
                .instance(instance)
                .map(|i| i.attachment().entry(segment.travel)),
        ) else {
            return self.drop(DropReason::NotASegment);
        };
        self.meters.record(instance, len);
        Verdict::Forward {
            port: entry,
            vlan: VlanAction::Push(tag),
            decap: true,
            encap: None,
        }
    }

    /// A local instance's frame for a peer's session: back to the peer.
    fn back_to_peer(
        &mut self,
        instance: InstanceId,
        peer: PeerId,
        segment: VlanId,
        key: &FlowKey,
        len: usize,
    ) -> Verdict {
        // Only an instance of the segment's service answers on it: another
        // must not put frames into a peer's chain.
        if !self
            .config
            .segment(segment)
            .is_some_and(|s| self.serves(instance, s))
        {
            return self.drop(DropReason::WrongInstance);
        }
        let slot = self
            .config
            .instance(instance)
            .map(|i| i.attachment().entry(Travel::ToWan).index());
        let (Some(slot), Some(mtu)) = (
            slot.and_then(|s| u8::try_from(s).ok()),
            self.config.underlay().map(|u| usize::from(u.mtu)),
        ) else {
            return self.drop(DropReason::NotAPeer);
        };
        // The tag goes: the frame travels with 4 bytes less.
        if len.saturating_sub(4) + underlay::IP_OVERHEAD > mtu {
            return self.drop(DropReason::TooBig);
        }
        Verdict::Forward {
            port: self
                .config
                .underlay()
                .map_or(PortId::from_index(0), |u| u.port),
            vlan: VlanAction::Pop,
            decap: false,
            encap: Some(Encap {
                peer,
                vni: Vni {
                    segment,
                    leg: Leg::Return,
                    slot,
                },
                // The flow's hash without the guest tag (it differs per
                // direction): the same port as the owner's deliver leg.
                src_port: entropy(key.with_vlans(key.vlans().without_outer()).symmetric_hash()),
            }),
        }
    }

    /// Opens the continuation of a flow that an instance rewrote.
    fn continue_flow(
        &mut self,
        key: &FlowKey,
        hash: u64,
        segment: Segment,
        instance: InstanceId,
        now: Nanos,
    ) -> Result<SessionId, DropReason> {
        let origin = match segment.travel {
            Travel::ToWan => Uplink::Lan,
            Travel::ToLan => Uplink::Wan,
        };
        let hop = usize::from(segment.hop);
        let mut session = Session::new(key, origin, SessionAction::Chain(segment.chain), now)
            .continuing(segment.hop, segment.travel);
        session.set_hop(hop, Some(instance));
        let rest = match segment.travel {
            Travel::ToWan => hop + 1..usize::MAX,
            Travel::ToLan => 0..hop,
        };
        self.choose_hops(&mut session, segment.chain, hash, rest, now)?;
        let id = self.insert(hash, session)?;
        self.counters.continuations += 1;
        Ok(id)
    }

    /// Sends a packet of session `id` on from `after` (an uplink when
    /// `None`), travelling `travel`.
    #[allow(clippy::too_many_arguments)]
    fn advance(
        &mut self,
        id: SessionId,
        after: Option<usize>,
        travel: Travel,
        dir: FlowDirection,
        layers: &Layers,
        from: From,
        len: usize,
        now: Nanos,
    ) -> Verdict {
        let Some(session) = self.sessions.get_mut(id) else {
            return self.drop(DropReason::NoSession);
        };
        let from_opener = session.from_opener(dir);
        let was_reset = session.conn() == ConnState::Reset;
        let conn = session.conn();
        session.touch(now, layers.tcp_flags(), from_opener, after.is_none());
        // Rules are asked for once the session has proved itself: after
        // `offload_after` packets in software (one: at its first packet),
        // and for TCP once the responder answered; again after the NIC
        // gave them back (an aged rule).
        let ask = session.ready_for_rules(self.offload_after) && session.ask_offload();
        // A FIN changes a connection's idle timeout, and with it its
        // rules' AGE: they are made again. A reset connection's go, for
        // its last two seconds.
        let closing = !ask
            && session.wants_offload()
            && session.conn() != conn
            && matches!(
                session.conn(),
                ConnState::HalfClosed | ConnState::Closing | ConnState::Reset
            );
        if closing && session.conn() == ConnState::Reset {
            session.withdraw_offload();
        }
        let session = *session;
        if ask {
            self.emit(Event::Install(id));
        } else if closing {
            self.emit(Event::Update(id));
        }
        // A reset session lives on for its short timeout: the RST still
        // has hops to walk, and stray packets must not open a new session.
        if !was_reset && session.conn() == ConnState::Reset {
            self.counters.sessions_reset += 1;
        }
        match session.action() {
            SessionAction::Drop(DropCause::Policy) => self.drop(DropReason::Policy),
            SessionAction::Drop(DropCause::ServiceFailed) => self.drop(DropReason::ServiceFailed),
            SessionAction::Bypass => {
                Verdict::forward(self.config.uplink_port(travel.exit()), VlanAction::Keep)
            }
            SessionAction::Chain(chain) => self.next_hop(&session, chain, after, travel, from, len),
        }
    }

    fn next_hop(
        &mut self,
        session: &Session,
        chain: ChainId,
        after: Option<usize>,
        travel: Travel,
        from: From,
        len: usize,
    ) -> Verdict {
        let hops = self.config.chain(chain).map_or(0, |c| c.len());
        let mut candidates = hop_order(hops, after, travel);
        let next = candidates.find_map(|h| session.hop(h).map(|i| (h, i)));
        let tagged = from == From::Vf;
        let decap = from == From::Underlay;
        // What the packet is once outer headers and segment tag are gone.
        let bare = if decap {
            len - underlay::OVERHEAD.min(len)
        } else if tagged {
            len.saturating_sub(4)
        } else {
            len
        };
        let Some((hop, instance)) = next else {
            let vlan = if tagged {
                VlanAction::Pop
            } else {
                VlanAction::Keep
            };
            return Verdict::Forward {
                port: self.config.uplink_port(travel.exit()),
                vlan,
                decap,
                encap: None,
            };
        };
        let Some(attachment) = self.config.instance(instance).map(|i| i.attachment()) else {
            return self.drop(DropReason::NoInstance);
        };
        let segment = Segment {
            chain,
            hop: u8::try_from(hop).unwrap_or(u8::MAX),
            travel,
        };
        let Some(tag) = self.config.segment_tag(segment) else {
            return self.drop(DropReason::NotASegment);
        };
        if let Attachment::Remote { peer, slot, via } = attachment {
            let mtu = self.config.underlay().map_or(0, |u| usize::from(u.mtu));
            if bare + underlay::IP_OVERHEAD > mtu {
                return self.drop(DropReason::TooBig);
            }
            self.meters.record(instance, bare);
            let vlan = if tagged {
                VlanAction::Pop
            } else {
                VlanAction::Keep
            };
            return Verdict::Forward {
                port: via,
                vlan,
                decap,
                encap: Some(Encap {
                    peer,
                    vni: Vni {
                        segment: tag,
                        leg: Leg::Deliver,
                        slot,
                    },
                    src_port: entropy(session.key().symmetric_hash()),
                }),
            };
        }
        self.meters.record(instance, len);
        let vlan = if tagged {
            VlanAction::Set(tag)
        } else {
            VlanAction::Push(tag)
        };
        Verdict::Forward {
            port: attachment.entry(travel),
            vlan,
            decap,
            encap: None,
        }
    }

    fn end(&mut self, id: SessionId) {
        if self.sessions.remove(id).is_some() {
            self.emit(Event::Remove(id));
        }
    }

    /// Folds counters into the meters, raises scale requests, and expires
    /// idle sessions (a bounded number of slots per call). Call it
    /// regularly (the runtime: every few milliseconds).
    pub fn tick(&mut self, now: Nanos) {
        self.meters.tick(now);
        let mut ended = Vec::new();
        self.sessions
            .expire(now, &self.timeouts, self.expire_budget, |id, _| {
                ended.push(id);
            });
        for id in ended {
            self.emit(Event::Remove(id));
        }
    }

    /// Counter deltas of an instance's hardware rules.
    pub fn add_counts(&mut self, instance: InstanceId, bytes: u64, packets: u64) {
        self.meters.add_counts(instance, bytes, packets);
    }

    /// The NIC found one of the session's rules idle for half its idle
    /// timeout: the offload layer took its rules away, and the session
    /// waits in software for the other half (see [`Session::demote`]).
    pub fn demote(&mut self, id: SessionId, now: Nanos) {
        let timeouts = self.timeouts;
        if let Some(s) = self.sessions.get_mut(id) {
            let idle = timeouts.idle(s.key().proto(), s.conn());
            s.demote(now, idle);
        }
    }

    /// The offload layer put the session's rules in force, or took them
    /// away (see [`Session::set_hardware`]).
    pub fn set_hardware(&mut self, id: SessionId, in_force: bool, now: Nanos) {
        let timeouts = self.timeouts;
        if let Some(s) = self.sessions.get_mut(id) {
            let idle = timeouts.idle(s.key().proto(), s.conn());
            s.set_hardware(in_force, now, idle);
        }
    }

    /// The idle timeouts.
    #[must_use]
    pub const fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// Changes an instance's state. Draining takes it out of new sessions.
    /// Down also moves its sessions to another instance (fail open; with
    /// none left the hop is skipped) or makes them drop (fail closed).
    ///
    /// # Errors
    /// [`UnknownInstance`].
    pub fn set_instance_state(
        &mut self,
        instance: InstanceId,
        state: InstanceState,
        now: Nanos,
    ) -> Result<(), UnknownInstance> {
        let slot = self
            .states
            .get_mut(instance.index())
            .ok_or(UnknownInstance(instance))?;
        *slot = state;
        self.meters
            .set_active(instance, state == InstanceState::Active);
        let states = &self.states;
        self.balancer = Balancer::new(&self.config, |i| state_of(states, i));
        if state == InstanceState::Down {
            self.fail_over(|i| i == instance, now);
        }
        Ok(())
    }

    /// Moves or drops the sessions on instances for which `failed` holds.
    fn fail_over(&mut self, failed: impl Fn(InstanceId) -> bool, now: Nanos) {
        let ids: Vec<SessionId> = self.sessions.ids().collect();
        for id in ids {
            let Some(mut session) = self.sessions.get(id).copied() else {
                continue;
            };
            let SessionAction::Chain(chain) = session.action() else {
                continue;
            };
            let services: Vec<_> = self
                .config
                .chain(chain)
                .map(|c| c.services().to_vec())
                .unwrap_or_default();
            let mut changed = false;
            for (hop, service) in services.iter().enumerate() {
                if !session.hop(hop).is_some_and(&failed) {
                    continue;
                }
                changed = true;
                match self.config.service(*service).map(|s| s.fail()) {
                    Some(FailMode::Open) => {
                        let choice = self.balancer.choose(
                            *service,
                            session.key().symmetric_hash(),
                            &self.meters,
                        );
                        if let Choice::Overloaded(_) = choice {
                            self.meters.request_scale(*service, now);
                        }
                        session.set_hop(hop, choice.instance());
                    }
                    _ => session.set_action(SessionAction::Drop(DropCause::ServiceFailed)),
                }
            }
            if !changed {
                continue;
            }
            if session.action() == SessionAction::Drop(DropCause::ServiceFailed) {
                self.counters.failed_closed += 1;
            } else {
                self.counters.repathed += 1;
            }
            if let Some(s) = self.sessions.get_mut(id) {
                *s = session;
            }
            self.emit(Event::Update(id));
        }
    }

    /// Takes a new configuration generation. Sessions keep their paths:
    /// instances and chains are matched by name; a session whose chain is
    /// gone or changed ends, and hops whose instance is gone or down fail
    /// over as when an instance goes down.
    pub fn apply(&mut self, config: Config, now: Nanos) {
        let old = core::mem::replace(&mut self.config, Box::new(config));
        let new = &self.config;
        let instance_map: Vec<Option<InstanceId>> = old
            .instances()
            .iter()
            .map(|i| {
                new.instances()
                    .iter()
                    .position(|n| {
                        n.name() == i.name()
                            && new.service(n.service()).map(|s| s.name())
                                == old.service(i.service()).map(|s| s.name())
                    })
                    .and_then(|p| u16::try_from(p).ok())
                    .map(InstanceId::from_index)
            })
            .collect();
        let chain_map: Vec<Option<ChainId>> = old
            .chains()
            .iter()
            .map(|c| {
                let p = new.chains().iter().position(|n| n.name() == c.name())?;
                let same = new.chains().get(p).is_some_and(|n| {
                    n.services().len() == c.services().len()
                        && n.services().iter().zip(c.services()).all(|(a, b)| {
                            new.service(*a).map(|s| s.name()) == old.service(*b).map(|s| s.name())
                        })
                });
                same.then(|| ChainId::from_index(u16::try_from(p).unwrap_or(u16::MAX)))
            })
            .collect();
        self.states = new.instances().iter().map(|i| i.state()).collect();
        self.classifier = Classifier::new(new);
        let states = &self.states;
        self.balancer = Balancer::new(new, |i| state_of(states, i));
        self.meters.reconfigure(new, |id| {
            instance_map
                .iter()
                .position(|m| *m == Some(id))
                .and_then(|p| u16::try_from(p).ok())
                .map(InstanceId::from_index)
        });
        // Carry the sessions over: renumber, or end those whose chain
        // changed. A hop whose instance is gone gets an id past the end,
        // which reads as down, and fails over with the down ones.
        let gone = InstanceId::from_index(u16::MAX - 1);
        let ids: Vec<SessionId> = self.sessions.ids().collect();
        for id in ids {
            let Some(SessionAction::Chain(c)) = self.sessions.get(id).map(Session::action) else {
                continue;
            };
            let Some(new_chain) = chain_map.get(c.index()).copied().flatten() else {
                self.end(id);
                continue;
            };
            if let Some(session) = self.sessions.get_mut(id) {
                session.set_action(SessionAction::Chain(new_chain));
                for hop in 0..chaingate_shared::config::MAX_HOPS {
                    if let Some(i) = session.hop(hop) {
                        let mapped = instance_map.get(i.index()).copied().flatten();
                        session.set_hop(hop, Some(mapped.unwrap_or(gone)));
                    }
                }
            }
        }
        let states = self.states.clone();
        self.fail_over(|i| state_of(&states, i) == InstanceState::Down, now);
    }
}

/// The hops to try after `after` (from an uplink when `None`), in the
/// order of travel.
fn hop_order(hops: usize, after: Option<usize>, travel: Travel) -> impl Iterator<Item = usize> {
    let (forward, backward) = match (travel, after) {
        (Travel::ToWan, None) => (0..hops, None),
        (Travel::ToWan, Some(h)) => (h + 1..hops, None),
        (Travel::ToLan, None) => (0..0, Some(0..hops)),
        (Travel::ToLan, Some(h)) => (0..0, Some(0..h)),
    };
    forward.chain(backward.into_iter().flat_map(Iterator::rev))
}

fn state_of(states: &[InstanceState], i: InstanceId) -> InstanceState {
    states
        .get(i.index())
        .copied()
        .unwrap_or(InstanceState::Down)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod underlay_tests;
