//! The data path loop: one thread that owns the ports, the flow-offload
//! backend, the fast path and the offload manager.
//!
//! Each turn it receives a burst from every port and runs each frame
//! through the switch first (the software eSwitch executes the rules; a
//! hardware backend has already done so), and what the switch sends to
//! software through the fast path, then sends the result out of its port.
//! Between bursts the offload manager installs and removes rules; every
//! few milliseconds sessions are aged, counters read, and telemetry
//! published. Control requests arrive on a channel and are served between
//! bursts, so the data path never shares its state with another thread.
//!
//! Until the first configuration arrives every frame is dropped (and
//! counted): the runtime does not guess what traffic should do.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use chaingate_fastpath::datapath::{Datapath, DropReason, Options};
use chaingate_fastpath::offload::{
    FlowOffload, ManagerOptions, OffloadManager, Outcome, Refusal, Refusing, SoftSwitch,
    SwitchStats,
};
use chaingate_fastpath::session::{ConnState, SessionAction, SessionId};
use chaingate_fastpath::wire::FrameBuf;
use chaingate_proto::dpu;
use chaingate_shared::config::{InstanceState, MAX_HOPS, MAX_INSTANCES, PortRole, Uplink};
use chaingate_shared::{Config, FlowDirection, Generation, InstanceId, Nanos, PortId};
use tokio::sync::{broadcast, oneshot, watch};

use crate::config::{PortSpec, Role, RuntimeConfig};
use crate::io::afpacket::{BATCH, wait_readable};
use crate::io::{PacketIo, RxBatch};

/// Bytes of a receive slot: the largest frame taken (a 9000-byte jumbo
/// frame with two tags), with headroom.
pub const SLOT: usize = 9216 + 64;

/// How often sessions are aged.
const TICK: Duration = Duration::from_millis(10);

/// Session slots counted per tick for the per-instance session counts.
const CENSUS_STEP: usize = 16_384;

/// The switch in front of the fast path.
pub trait Switch: FlowOffload + Send + 'static {
    /// Runs a received frame through the switch's rules. A software switch
    /// executes them; a hardware one already has, and everything it
    /// delivers to software goes to the fast path.
    fn switch(&mut self, port: PortId, frame: &mut FrameBuf<'_>, now: Nanos) -> Outcome;

    /// What the switch has done (zero for hardware, which counts itself).
    fn switch_stats(&self) -> SwitchStats {
        SwitchStats::default()
    }

    /// Which runtime port each configured port (`PortId`) is, before rules
    /// for a configuration are made (a hardware backend names ports by its
    /// own numbers).
    fn set_port_map(&mut self, _runtime_index: &[Option<usize>]) {}

    /// The eSwitch of each configured port (`PortId`), where the backend
    /// models it (the software eSwitch's mlx5 profile; a NIC knows its
    /// own).
    fn set_switches(&mut self, _switches: &[u16]) {}

    /// The backend's name, for telemetry.
    fn name(&self) -> &'static str;
}

impl Switch for SoftSwitch {
    fn switch(&mut self, port: PortId, frame: &mut FrameBuf<'_>, now: Nanos) -> Outcome {
        self.process(port, frame, now)
    }

    fn set_switches(&mut self, switches: &[u16]) {
        SoftSwitch::set_switches(self, switches);
    }

    fn switch_stats(&self) -> SwitchStats {
        *self.stats()
    }

    fn name(&self) -> &'static str {
        "soft"
    }
}

impl Switch for Refusing {
    fn switch(&mut self, port: PortId, _: &mut FrameBuf<'_>, _: Nanos) -> Outcome {
        Outcome::ToSoftware(port)
    }

    fn name(&self) -> &'static str {
        "refuse"
    }
}

/// A configuration that does not fit this DPU's ports.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ApplyError {
    /// The field path.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// A request from the control API.
#[derive(Debug)]
pub enum Command {
    /// Apply a validated configuration.
    Apply(
        Box<Config>,
        oneshot::Sender<Result<dpu::ApplyConfigResponse, ApplyError>>,
    ),
    /// Set an instance's state.
    SetState(
        String,
        InstanceState,
        oneshot::Sender<Result<dpu::SetInstanceStateResponse, StateError>>,
    ),
    /// A page of sessions.
    ListSessions(
        dpu::ListSessionsRequest,
        oneshot::Sender<dpu::ListSessionsResponse>,
    ),
    /// Every counter.
    Stats(oneshot::Sender<dpu::Stats>),
    /// A page of the rules in force, as testpmd commands.
    ListRules(
        dpu::ListRulesRequest,
        oneshot::Sender<dpu::ListRulesResponse>,
    ),
}

/// Why an instance's state was not set.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum StateError {
    /// No configuration yet.
    #[error("no configuration has been applied")]
    Unconfigured,
    /// No such instance.
    #[error("no instance named \"{0}\"")]
    NoInstance(String),
}

/// The channels the engine publishes on.
#[derive(Debug)]
pub struct Outputs {
    /// The latest telemetry (without scale requests).
    pub telemetry: watch::Sender<Arc<dpu::Telemetry>>,
    /// Scale requests, as they are raised.
    pub scale: broadcast::Sender<dpu::ScaleRequest>,
}

/// A runtime port: its specification and its I/O.
pub struct Port {
    /// From the runtime configuration.
    pub spec: PortSpec,
    /// Its packet I/O.
    pub io: Box<dyn PacketIo>,
}

impl std::fmt::Debug for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Port")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// The data path and everything it owns.
#[derive(Debug)]
pub struct Engine<B: Switch> {
    ports: Vec<Port>,
    dp: Datapath,
    mgr: OffloadManager<B>,
    /// Runtime port index of each configured port (by `PortId`).
    io_of_port: Vec<Option<usize>>,
    /// Configured port of each runtime port.
    port_of_io: Vec<Option<PortId>>,
    start: Instant,
    boot_id: u64,
    period: Duration,
    unconfigured: u64,
    vlan_errors: u64,
    /// Frames the switch's rules encapsulated past the underlay's MTU:
    /// dropped at the port, as a NIC does, and counted with the fast
    /// path's `too_big_for_underlay`.
    switch_too_big: u64,
    last_tick: Instant,
    last_telemetry: Instant,
    census_next: usize,
    census_acc: Vec<u64>,
    census: Vec<u64>,
    outputs: Outputs,
    /// Every PF's ports on one eSwitch (multiport E-Switch).
    multiport: bool,
}

impl<B: Switch> Engine<B> {
    /// An engine over `ports` (in the runtime configuration's order) and
    /// `backend`, with no traffic configuration yet.
    ///
    /// # Panics
    /// If `ports` does not match `config.ports` (a programming error).
    #[must_use]
    pub fn new(
        config: &RuntimeConfig,
        ports: Vec<Box<dyn PacketIo>>,
        backend: B,
        boot_id: u64,
        outputs: Outputs,
    ) -> Self {
        assert_eq!(ports.len(), config.ports.len(), "one I/O per port");
        // Generation 0: the runtime's ports and nothing else. Frames are
        // dropped until a real generation arrives.
        let mut b = Config::builder(Generation(0));
        for p in &config.ports {
            let role = match p.role {
                Role::Lan => PortRole::Uplink(Uplink::Lan),
                Role::Wan => PortRole::Uplink(Uplink::Wan),
                Role::Vf => PortRole::Vf,
                Role::Underlay => PortRole::Underlay,
            };
            b.add_port(&p.name, role)
                .expect("the runtime configuration checked its ports");
        }
        let placeholder = b
            .build()
            .expect("the runtime configuration has both uplinks");
        let options = Options {
            sessions: config.sessions,
            events: (config.sessions / 2).max(4096),
            offload_after: config.offload_after,
            ..Options::default()
        };
        let dp = Datapath::new(placeholder, &options);
        let manager = ManagerOptions {
            budget: config.capacity,
            table_size: config.table_size,
            ..ManagerOptions::default()
        };
        let mut backend = backend;
        let identity: Vec<Option<usize>> = (0..config.ports.len()).map(Some).collect();
        backend.set_port_map(&identity);
        let mgr = OffloadManager::new(backend, &dp, manager);
        let now = Instant::now();
        let mut engine = Self {
            ports: config
                .ports
                .iter()
                .cloned()
                .zip(ports)
                .map(|(spec, io)| Port { spec, io })
                .collect(),
            dp,
            mgr,
            io_of_port: Vec::new(),
            port_of_io: Vec::new(),
            start: now,
            boot_id,
            period: config.telemetry_period,
            unconfigured: 0,
            vlan_errors: 0,
            switch_too_big: 0,
            last_tick: now,
            last_telemetry: now,
            census_next: 0,
            census_acc: vec![0; MAX_INSTANCES],
            census: vec![0; MAX_INSTANCES],
            outputs,
            multiport: config.multiport,
        };
        engine.map_ports();
        engine.publish();
        engine
    }

    fn now(&self) -> Nanos {
        Nanos(u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    /// Runs until `stop` is set or the command channel closes.
    pub fn run(&mut self, commands: &Receiver<Command>, stop: &AtomicBool) {
        let mut batch = RxBatch::new(BATCH, SLOT);
        let fds: Vec<_> = self
            .ports
            .iter()
            .filter_map(|p| p.io.readable_fd())
            .collect();
        let all_have_fds = fds.len() == self.ports.len();
        while !stop.load(Ordering::Relaxed) {
            loop {
                match commands.try_recv() {
                    Ok(c) => self.command(c),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            let moved = self.turn(&mut batch);
            self.housekeeping();
            if moved == 0 && all_have_fds {
                wait_readable(&fds, 2);
            }
        }
        for p in &mut self.ports {
            p.io.flush();
        }
        // Representors before their proxy (mlx5 refuses to stop a proxy
        // whose representors run).
        for proxies in [false, true] {
            for p in &mut self.ports {
                if p.io.transfer_proxy() == proxies {
                    p.io.stop();
                }
            }
        }
    }

    /// One burst from every port; returns the frames received.
    pub fn turn(&mut self, batch: &mut RxBatch) -> usize {
        let mut moved = 0;
        for io in 0..self.ports.len() {
            let n = match self.ports.get_mut(io).map(|p| p.io.recv(batch)) {
                Some(Ok(n)) => n,
                Some(Err(e)) => {
                    tracing::warn!(port = %self.ports[io].spec.name, error = %e, "receive failed");
                    0
                }
                None => 0,
            };
            let now = self.now();
            for k in 0..n {
                self.handle(io, batch, k, now);
            }
            moved += n;
            if n > 0 {
                self.mgr.handle_events(&mut self.dp);
            }
        }
        for p in &mut self.ports {
            p.io.flush();
        }
        moved
    }

    fn handle(&mut self, io: usize, batch: &mut RxBatch, n: usize, now: Nanos) {
        let port = self.port_of_io.get(io).copied().flatten();
        let (Some(port), false) = (port, self.dp.config().generation() == Generation(0)) else {
            self.unconfigured += 1;
            return;
        };
        let Some((buf, start, len)) = batch.frame_mut(n) else {
            return;
        };
        let Ok(mut frame) = FrameBuf::new(buf, start, len) else {
            return;
        };
        let out = match self.mgr.backend_mut().switch(port, &mut frame, now) {
            Outcome::Out(p) => {
                let over = self
                    .dp
                    .config()
                    .underlay()
                    .is_some_and(|u| u.port == p && frame.len() > usize::from(u.mtu) + 14);
                if over {
                    self.switch_too_big += 1;
                    None
                } else {
                    Some(p)
                }
            }
            Outcome::Dropped(_) => None,
            Outcome::ToSoftware(p) => {
                let verdict = self.dp.process(p, frame.frame(), now);
                match verdict.apply(&mut frame, self.dp.config()) {
                    Ok(port) => port,
                    Err(_) => {
                        self.vlan_errors += 1;
                        None
                    }
                }
            }
        };
        if let Some(p) = out.and_then(|p| self.io_of_port.get(p.index()).copied().flatten())
            && let Some(port) = self.ports.get_mut(p)
        {
            port.io.send(frame.frame());
        }
    }

    /// Ages sessions, reads counters, counts sessions per instance, and
    /// publishes telemetry, each when its time has come.
    pub fn housekeeping(&mut self) {
        let now = self.now();
        let wall = Instant::now();
        if wall.duration_since(self.last_tick) >= TICK {
            self.last_tick = wall;
            self.dp.tick(now);
            self.census_step(CENSUS_STEP);
        }
        self.mgr.poll(&mut self.dp, now);
        self.mgr.handle_events(&mut self.dp);
        while let Some(r) = self.dp.next_scale_request() {
            let service = self
                .dp
                .config()
                .service(r.service)
                .map(|s| s.name().to_string())
                .unwrap_or_default();
            // No subscriber is not an error: nobody is watching.
            let _ = self.outputs.scale.send(dpu::ScaleRequest {
                service,
                load_bps: r.load_bps,
                capacity_bps: r.capacity_bps,
                instances: u32::from(r.instances),
                at_ms: r.at.0 / 1_000_000,
            });
        }
        if wall.duration_since(self.last_telemetry) >= self.period {
            self.last_telemetry = wall;
            self.publish();
        }
    }

    fn census_step(&mut self, slots: usize) {
        let capacity = self.dp.sessions().capacity();
        let end = (self.census_next + slots).min(capacity);
        for (_, s) in self.dp.sessions().iter_slots(self.census_next..end) {
            if let SessionAction::Chain(_) = s.action() {
                for hop in 0..MAX_HOPS {
                    if let Some(c) = s.hop(hop).and_then(|i| self.census_acc.get_mut(i.index())) {
                        *c += 1;
                    }
                }
            }
        }
        self.census_next = end;
        if end >= capacity {
            std::mem::swap(&mut self.census, &mut self.census_acc);
            self.census_acc.iter_mut().for_each(|c| *c = 0);
            self.census_next = 0;
        }
    }

    /// Counts every session now (after a change that renumbers instances).
    fn census_now(&mut self) {
        self.census_acc.iter_mut().for_each(|c| *c = 0);
        self.census_next = 0;
        self.census_step(usize::MAX);
    }

    fn publish(&mut self) {
        let t = self.telemetry();
        self.outputs.telemetry.send_replace(Arc::new(t));
    }

    fn uptime_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The telemetry of this moment (scale requests go separately).
    #[must_use]
    pub fn telemetry(&self) -> dpu::Telemetry {
        let config = self.dp.config();
        let meters = self.dp.meters();
        let instances = config
            .instances()
            .iter()
            .enumerate()
            .map(|(n, inst)| {
                let id = InstanceId::from_index(u16::try_from(n).unwrap_or(u16::MAX));
                let load = meters.load(id);
                let service = config.service(inst.service());
                dpu::InstanceLoad {
                    instance: inst.name().to_string(),
                    service: service.map(|s| s.name().to_string()).unwrap_or_default(),
                    state: chaingate_proto::convert::instance_state_to_proto(
                        self.dp.instance_state(id).unwrap_or(InstanceState::Down),
                    )
                    .into(),
                    bps: load.map_or(0.0, |l| l.bps),
                    pps: load.map_or(0.0, |l| l.pps),
                    utilisation: load.map_or(0.0, |l| l.utilisation),
                    capacity_bps: service.map_or(0, |s| s.capacity_bps()),
                    sessions: self.census.get(n).copied().unwrap_or(0),
                }
            })
            .collect();
        dpu::Telemetry {
            boot_id: self.boot_id,
            generation: config.generation().0,
            uptime_ms: self.uptime_ms(),
            instances,
            scale_requests: Vec::new(),
            sessions: Some(self.session_counters()),
            offload: Some(self.offload_counters()),
        }
    }

    fn session_counters(&self) -> dpu::SessionCounters {
        let t = self.dp.sessions();
        let s = t.stats();
        dpu::SessionCounters {
            active: t.len() as u64,
            capacity: t.capacity() as u64,
            opened: s.inserted,
            removed: s.removed,
            refused: s.refused,
            evicted: s.evicted,
            expired: s.expired,
        }
    }

    fn offload_counters(&self) -> dpu::OffloadCounters {
        let s = self.mgr.stats();
        dpu::OffloadCounters {
            rules: s.rules as u64,
            sessions: s.sessions_offloaded as u64,
            created: s.created,
            destroyed: s.destroyed,
            refused: Refusal::ALL
                .iter()
                .map(|r| (r.name().to_owned(), s.refusals(*r)))
                .collect(),
            pending: self.mgr.pending() as u64,
            backend: self.mgr.backend().name().to_owned(),
            reasons: self
                .mgr
                .refusal_reasons()
                .iter()
                .map(|(r, n)| ((*r).to_owned(), *n))
                .collect(),
            aged: s.aged,
            swaps: s.swaps,
            tables: s.tables as u64,
        }
    }

    fn command(&mut self, c: Command) {
        // A requester that went away is no error: the reply is dropped.
        match c {
            Command::Apply(config, reply) => {
                let _ = reply.send(self.apply(*config));
            }
            Command::SetState(name, state, reply) => {
                let _ = reply.send(self.set_state(&name, state));
            }
            Command::ListSessions(req, reply) => {
                let _ = reply.send(self.list_sessions(&req));
            }
            Command::Stats(reply) => {
                let _ = reply.send(self.stats());
            }
            Command::ListRules(req, reply) => {
                let _ = reply.send(self.list_rules(&req));
            }
        }
    }

    /// Applies a configuration whose ports this DPU has; one not newer than
    /// the current generation is not applied.
    ///
    /// # Errors
    /// A port the DPU does not have, or has in another role.
    pub fn apply(&mut self, config: Config) -> Result<dpu::ApplyConfigResponse, ApplyError> {
        let current = self.dp.config().generation();
        if config.generation() <= current {
            return Ok(self.applied(false));
        }
        for (i, p) in config.ports().iter().enumerate() {
            let Some(runtime) = self.ports.iter().find(|r| r.spec.name == p.name().as_str()) else {
                let have: Vec<&str> = self.ports.iter().map(|r| r.spec.name.as_str()).collect();
                return Err(ApplyError {
                    path: format!("ports[{i}].name"),
                    message: format!(
                        "no port named \"{}\" on this DPU (it has {})",
                        p.name(),
                        have.join(", ")
                    ),
                });
            };
            let role = match p.role() {
                PortRole::Uplink(Uplink::Lan) => Role::Lan,
                PortRole::Uplink(Uplink::Wan) => Role::Wan,
                PortRole::Vf => Role::Vf,
                PortRole::Underlay => Role::Underlay,
            };
            if role != runtime.spec.role {
                return Err(ApplyError {
                    path: format!("ports[{i}].role"),
                    message: format!(
                        "port \"{}\" is {} on this DPU, not {role}",
                        p.name(),
                        runtime.spec.role
                    ),
                });
            }
        }
        let generation = config.generation();
        let now = self.now();
        self.dp.apply(config, now);
        self.map_ports();
        self.mgr.backend_mut().set_port_map(&self.io_of_port);
        self.mgr.reconfigured(&mut self.dp);
        self.census_now();
        self.publish();
        tracing::info!(generation = generation.0, "configuration applied");
        Ok(self.applied(true))
    }

    fn applied(&self, applied: bool) -> dpu::ApplyConfigResponse {
        dpu::ApplyConfigResponse {
            applied,
            current_generation: self.dp.config().generation().0,
            boot_id: self.boot_id,
        }
    }

    fn map_ports(&mut self) {
        self.map_io();
        let switches: Vec<u16> = self
            .io_of_port
            .iter()
            .map(|i| {
                i.and_then(|i| self.ports.get(i))
                    .map_or(0, |p| if self.multiport { 0 } else { p.spec.pf })
            })
            .collect();
        self.mgr.backend_mut().set_switches(&switches);
    }

    fn map_io(&mut self) {
        let config = self.dp.config();
        self.io_of_port = config
            .ports()
            .iter()
            .map(|p| {
                self.ports
                    .iter()
                    .position(|r| r.spec.name == p.name().as_str())
            })
            .collect();
        self.port_of_io = self
            .ports
            .iter()
            .map(|r| {
                config
                    .ports()
                    .iter()
                    .position(|p| p.name().as_str() == r.spec.name)
                    .and_then(|i| u16::try_from(i).ok())
                    .map(PortId::from_index)
            })
            .collect();
    }

    /// Sets an instance's state: draining takes it out of new sessions;
    /// down moves its sessions (fail open) or drops them (fail closed).
    ///
    /// # Errors
    /// [`StateError`].
    pub fn set_state(
        &mut self,
        name: &str,
        state: InstanceState,
    ) -> Result<dpu::SetInstanceStateResponse, StateError> {
        let config = self.dp.config();
        if config.generation() == Generation(0) {
            return Err(StateError::Unconfigured);
        }
        let id = config
            .instances()
            .iter()
            .position(|i| i.name().as_str() == name)
            .and_then(|n| u16::try_from(n).ok())
            .map(InstanceId::from_index)
            .ok_or_else(|| StateError::NoInstance(name.to_owned()))?;
        let now = self.now();
        self.dp
            .set_instance_state(id, state, now)
            .map_err(|_| StateError::NoInstance(name.to_owned()))?;
        self.mgr.handle_events(&mut self.dp);
        tracing::info!(instance = name, ?state, "instance state set");
        self.publish();
        Ok(dpu::SetInstanceStateResponse {
            current_generation: self.dp.config().generation().0,
        })
    }

    /// A page of sessions matching the request's filters.
    #[must_use]
    pub fn list_sessions(&self, req: &dpu::ListSessionsRequest) -> dpu::ListSessionsResponse {
        let config = self.dp.config();
        let table = self.dp.sessions();
        let page = match req.page_size {
            0 => 100,
            n => (n as usize).min(1000),
        };
        let from: usize = req.page_token.parse().unwrap_or(0);
        let instance = req.instance.as_deref().map(|name| {
            config
                .instances()
                .iter()
                .position(|i| i.name().as_str() == name)
        });
        let chain = req.chain.as_deref().map(|name| {
            config
                .chains()
                .iter()
                .position(|c| c.name().as_str() == name)
        });
        let address: Option<Option<std::net::IpAddr>> =
            req.address.as_deref().map(|a| a.parse().ok());
        let now = self.now();
        let mut sessions = Vec::new();
        let mut next = String::new();
        for (id, s) in table.iter_slots(from..table.capacity()) {
            let key = s.key();
            let through = |want: Option<usize>| {
                want.is_some_and(|w| {
                    (0..MAX_HOPS).any(|h| s.hop(h).is_some_and(|i| i.index() == w))
                })
            };
            let keep = instance.is_none_or(through)
                && chain.is_none_or(|c| {
                    c.is_some_and(
                        |c| matches!(s.action(), SessionAction::Chain(x) if x.index() == c),
                    )
                })
                && address.is_none_or(|a| a.is_some_and(|a| key.src() == a || key.dst() == a))
                && req
                    .protocol
                    .is_none_or(|p| u32::from(key.proto().number()) == p);
            if !keep {
                continue;
            }
            if sessions.len() == page {
                next = id.slot().to_string();
                break;
            }
            sessions.push(self.describe(id, s, now));
        }
        dpu::ListSessionsResponse {
            sessions,
            next_page_token: next,
            total: table.len() as u64,
        }
    }

    fn describe(
        &self,
        id: SessionId,
        s: &chaingate_fastpath::session::Session,
        now: Nanos,
    ) -> dpu::Session {
        let config = self.dp.config();
        // Show the connection as its opener sent it.
        let key = if s.from_opener(FlowDirection::Forward) {
            *s.key()
        } else {
            s.key().reversed()
        };
        let (action, chain, hops) = match s.action() {
            SessionAction::Chain(c) => {
                let ch = config.chain(c);
                let hops = ch
                    .map(|ch| {
                        ch.services()
                            .iter()
                            .enumerate()
                            .map(|(h, svc)| dpu::Hop {
                                service: config
                                    .service(*svc)
                                    .map(|x| x.name().to_string())
                                    .unwrap_or_default(),
                                instance: s
                                    .hop(h)
                                    .and_then(|i| config.instance(i))
                                    .map(|i| i.name().to_string())
                                    .unwrap_or_default(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                (
                    "chain",
                    ch.map(|c| c.name().to_string()).unwrap_or_default(),
                    hops,
                )
            }
            SessionAction::Bypass => ("bypass", String::new(), Vec::new()),
            SessionAction::Drop(_) => ("drop", String::new(), Vec::new()),
        };
        let state = match s.conn() {
            ConnState::Opening => "opening",
            ConnState::Established => "established",
            ConnState::HalfClosed => "half_closed",
            ConnState::Closing => "closing",
            ConnState::Reset => "reset",
            ConnState::Stateless => "stateless",
        };
        dpu::Session {
            src: key.src().to_string(),
            dst: key.dst().to_string(),
            protocol: u32::from(key.proto().number()),
            src_port: u32::from(key.src_port()),
            dst_port: u32::from(key.dst_port()),
            origin: s.origin().to_string(),
            action: action.to_owned(),
            chain,
            hops,
            state: state.to_owned(),
            age_ms: (now.0 / 1_000_000).saturating_sub(u64::from(s.created_s()) * 1000),
            idle_ms: now.since(s.last_seen()).0 / 1_000_000,
            offloaded: self.mgr.is_offloaded(id),
            continuation: s.continuation().is_some(),
        }
    }

    /// A page of the rules in force as dpdk-testpmd commands, ports named
    /// by their DPDK port number (by their place among the runtime's
    /// ports when they are not DPDK ports).
    #[must_use]
    pub fn list_rules(&self, req: &dpu::ListRulesRequest) -> dpu::ListRulesResponse {
        let page = match req.page_size {
            0 => 1000,
            n => (n as usize).min(100_000),
        };
        let from: usize = req.page_token.parse().unwrap_or(0);
        let port = |p: PortId| {
            self.io_of_port
                .get(p.index())
                .copied()
                .flatten()
                .map_or(u16::MAX, |i| {
                    self.ports
                        .get(i)
                        .and_then(|port| port.io.ethdev_id())
                        .unwrap_or_else(|| u16::try_from(i).unwrap_or(u16::MAX))
                })
        };
        let mut lines = Vec::new();
        let next = crate::rules::testpmd_page(&self.mgr, &self.dp, &port, from, page, &mut lines);
        dpu::ListRulesResponse {
            lines,
            next_page_token: next.map(|n| n.to_string()).unwrap_or_default(),
        }
    }

    /// Every counter.
    #[must_use]
    pub fn stats(&self) -> dpu::Stats {
        let c = self.dp.counters();
        let sw = self.mgr.backend().switch_stats();
        dpu::Stats {
            boot_id: self.boot_id,
            generation: self.dp.config().generation().0,
            uptime_ms: self.uptime_ms(),
            ports: self
                .ports
                .iter()
                .map(|p| {
                    let k = p.io.counters();
                    dpu::PortStats {
                        name: p.spec.name.clone(),
                        io: p.spec.io.to_string(),
                        rx_packets: k.rx_packets,
                        rx_bytes: k.rx_bytes,
                        tx_packets: k.tx_packets,
                        tx_bytes: k.tx_bytes,
                        tx_dropped: k.tx_dropped,
                        rx_errors: k.rx_errors,
                    }
                })
                .collect(),
            switch: Some(dpu::SwitchStats {
                frames: sw.frames,
                out: sw.out,
                to_software: sw.to_software,
                misses: sw.misses,
                dropped: sw.dropped,
            }),
            fast_path: Some(dpu::FastPathStats {
                forwarded: c.forwarded,
                to_host: c.to_host,
                dropped: DropReason::ALL
                    .iter()
                    .map(|r| {
                        let switch = if *r == DropReason::TooBig {
                            self.switch_too_big
                        } else {
                            0
                        };
                        (r.name().to_owned(), c.drops(*r) + switch)
                    })
                    .chain([("vlan_action".to_owned(), self.vlan_errors)])
                    .collect(),
                sessions_opened: c.sessions_opened,
                continuations: c.continuations,
                sessions_reset: c.sessions_reset,
                repathed: c.repathed,
                failed_closed: c.failed_closed,
                events_dropped: c.events_dropped,
                fragments_matched: c.fragments_matched,
            }),
            sessions: Some(self.session_counters()),
            offload: Some(self.offload_counters()),
            unconfigured_drops: self.unconfigured,
        }
    }
}
