//! rte_flow as a flow-offload backend, in DPDK's order (DPDK 22.11,
//! `lib/ethdev/rte_flow.c`, mlx5's `mlx5_flow_hw.c`):
//!
//! 1. [`DpdkFlow::new`] groups the DPDK ports by transfer proxy
//!    (`rte_flow_pick_transfer_proxy`): one eSwitch each. A BlueField's
//!    two PFs are two eSwitches unless multiport E-Switch joins them.
//! 2. [`FlowOffload::configure`], while the ports are configured but not
//!    started (ethdev refuses `rte_flow_configure` on a started port):
//!    the template API on every proxy and representor. A proxy that
//!    refuses leaves its eSwitch to `rte_flow_create`, one by one.
//! 3. The ports start (the daemon: proxies first, mlx5.rst), then
//!    [`FlowOffload::start`]; only then template tables are made (mlx5
//!    moves transfer groups behind its own root rules at start).
//! 4. Rules are enqueued postponed into their tables
//!    (`rte_flow_async_create`), pushed once per batch, and their results
//!    pulled. In DPDK 22.11 the async calls crash a port without flow
//!    support: they are reached only on a proxy that took
//!    `rte_flow_configure`, through a table it made.
//!
//! `rte_flow_validate` is never called: mlx5 with `dv_flow_en=2` has no
//! validate function behind it in 22.11. Shared counters are indirect
//! COUNT actions; idle rules come back through AGE and
//! `rte_flow_get_q_aged_flows`. Every rule, indirect action, table and
//! template is owned and released on drop. A refusal comes back as the
//! errno the driver gave, mapped to [`OffloadError`] for the offload
//! manager, and logged with the driver's message.

pub mod translate;

use std::ffi::{CStr, c_void};
use std::ptr::{self, NonNull};
use std::time::{Duration, Instant};

use chaingate_fastpath::offload::{
    CounterId, Counts, EncapId, FlowOffload, Item, OffloadError, Outcome, Place, PortAttr, Rule,
    RuleHandle, TableId, TableSpec, VxlanTunnel,
};
use chaingate_fastpath::wire::FrameBuf;
use chaingate_shared::{Nanos, PortId};
use dpdk_sys as sys;

use self::translate::{CActions, CPattern, Resolve};
use super::Errno;
use crate::engine::Switch;

/// A refused rte_flow call: the errno and the driver's explanation.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[error("{call}: {errno}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
pub struct FlowError {
    /// The call.
    pub call: &'static str,
    /// The errno.
    pub errno: Errno,
    /// `rte_flow_error.type`: what the driver found fault with.
    pub kind: u32,
    /// `rte_flow_error.message`.
    pub message: String,
}

impl FlowError {
    fn from_call(call: &'static str, ret: i32, e: &sys::rte_flow_error) -> Self {
        let errno = if ret < 0 {
            Errno::from_ret(ret)
        } else {
            Errno::last()
        };
        let message = if e.message.is_null() {
            String::new()
        } else {
            // SAFETY: the driver sets a NUL-terminated static message.
            unsafe { CStr::from_ptr(e.message) }
                .to_string_lossy()
                .into_owned()
        };
        Self {
            call,
            errno,
            kind: e.type_,
            message,
        }
    }

    /// What the offload manager counts it as.
    #[must_use]
    pub fn offload_error(&self) -> OffloadError {
        match self.errno.0 {
            libc::ENOSYS => OffloadError::NoSys,
            // EOPNOTSUPP is the same number on Linux.
            libc::ENOTSUP => OffloadError::Unsupported("refused by the driver"),
            libc::EEXIST => OffloadError::Exists,
            libc::ENOSPC | libc::ENOMEM | libc::E2BIG => OffloadError::Full,
            libc::EINVAL => OffloadError::Invalid("refused by the driver"),
            libc::ENOENT => OffloadError::UnknownHandle,
            e => OffloadError::Other(e),
        }
    }
}

fn no_error() -> sys::rte_flow_error {
    sys::rte_flow_error {
        type_: 0,
        cause: ptr::null(),
        message: ptr::null(),
    }
}

/// An installed rule; destroyed on drop.
struct Flow {
    port: u16,
    raw: NonNull<sys::rte_flow>,
    /// Created through the template API (destroyed through it too).
    queue: Option<u32>,
    /// The table it is in, if the manager placed it.
    table: Option<u32>,
}

impl Drop for Flow {
    fn drop(&mut self) {
        let mut e = no_error();
        match self.queue {
            None => {
                // SAFETY: a rule this port created and nobody destroyed.
                let _ = unsafe { sys::rte_flow_destroy(self.port, self.raw.as_ptr(), &raw mut e) };
            }
            Some(q) => {
                let attr = sys::rte_flow_op_attr::default();
                // SAFETY: a rule created on this port's queue `q`; its
                // destruction is pushed and its completion pulled before
                // returning, so no operation is left behind.
                unsafe {
                    let rc = sys::rte_flow_async_destroy(
                        self.port,
                        q,
                        &raw const attr,
                        self.raw.as_ptr(),
                        ptr::null_mut(),
                        &raw mut e,
                    );
                    if rc == 0 {
                        let _ = sys::rte_flow_push(self.port, q, &raw mut e);
                        let _ = pull(self.port, q, 1);
                    }
                }
            }
        }
    }
}

/// An indirect action (a shared counter); destroyed on drop.
struct Handle {
    port: u16,
    raw: NonNull<sys::rte_flow_action_handle>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let mut e = no_error();
        // SAFETY: a handle this port created; rules using it are gone
        // first (the backend drops its rules before its counters).
        let _ = unsafe {
            sys::rte_flow_action_handle_destroy(self.port, self.raw.as_ptr(), &raw mut e)
        };
    }
}

/// Pulls up to `want` operation results of a queue, for at most a second.
/// Returns the results.
///
/// # Safety
/// `port` took `rte_flow_configure` with queue `queue`.
unsafe fn pull(port: u16, queue: u32, want: usize) -> Vec<sys::rte_flow_op_result> {
    let mut got = Vec::with_capacity(want);
    let mut buf = vec![
        sys::rte_flow_op_result {
            status: 0,
            user_data: ptr::null_mut()
        };
        want.clamp(1, 256)
    ];
    let deadline = Instant::now() + Duration::from_secs(1);
    while got.len() < want && Instant::now() < deadline {
        let mut e = no_error();
        let room = u16::try_from(buf.len().min(want - got.len())).unwrap_or(1);
        // SAFETY: `buf` has room for `room` results (the caller vouches
        // for the port and queue).
        let n = unsafe { sys::rte_flow_pull(port, queue, buf.as_mut_ptr(), room, &raw mut e) };
        if n < 0 {
            break;
        }
        got.extend_from_slice(&buf[..usize::try_from(n).unwrap_or(0)]);
    }
    got
}

/// A template table's C objects: the table before its templates (field
/// order is drop order).
struct Table {
    table: NonNull<sys::rte_flow_template_table>,
    pattern: NonNull<sys::rte_flow_pattern_template>,
    actions: Vec<NonNull<sys::rte_flow_actions_template>>,
    port: u16,
}

impl Drop for Table {
    fn drop(&mut self) {
        let mut e = no_error();
        // SAFETY: objects this port created; their rules were dropped
        // before (the backend drops rules before tables).
        unsafe {
            let _ =
                sys::rte_flow_template_table_destroy(self.port, self.table.as_ptr(), &raw mut e);
            let _ = sys::rte_flow_pattern_template_destroy(
                self.port,
                self.pattern.as_ptr(),
                &raw mut e,
            );
            for a in &self.actions {
                let _ = sys::rte_flow_actions_template_destroy(self.port, a.as_ptr(), &raw mut e);
            }
        }
    }
}

/// A table of the offload manager's: made with the template API on a
/// port that took `rte_flow_configure`, or only remembered on one whose
/// rules go one by one.
struct TableSlot {
    spec: TableSpec,
    made: Option<Table>,
    rules: usize,
}

/// One eSwitch: its transfer proxy, the ports behind it, and how rules
/// reach it.
#[derive(Debug)]
struct Domain {
    proxy: u16,
    members: Vec<u16>,
    /// `rte_flow_configure` on the proxy: `Ok` for the template API; the
    /// refusal otherwise (rules then go one by one).
    configured: Option<Result<(), FlowError>>,
    queue: u32,
}

impl Domain {
    fn templates(&self) -> bool {
        matches!(self.configured, Some(Ok(())))
    }
}

/// The rte_flow backend.
pub struct DpdkFlow {
    // Field order is drop order: rules, then counters, then tables.
    rules: Vec<Option<(u32, Flow)>>,
    counters: Vec<Option<Handle>>,
    tables: Vec<Option<TableSlot>>,
    generations: Vec<u32>,
    free: Vec<u32>,
    len: usize,
    domains: Vec<Domain>,
    started: bool,
    /// DPDK port of each runtime port (`None`: not a DPDK port).
    dpdk_ports: Vec<Option<u16>>,
    /// DPDK port of each configured port (`PortId`).
    port_map: Vec<Option<u16>>,
    encaps: Vec<VxlanTunnel>,
    capacity: usize,
    refusals_logged: u64,
    aged_buf: Vec<*mut c_void>,
}

impl std::fmt::Debug for DpdkFlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpdkFlow")
            .field("domains", &self.domains)
            .field("rules", &self.len)
            .finish_non_exhaustive()
    }
}

// SAFETY: the raw handles are only used by the one thread that owns the
// backend (the data path); DPDK's flow calls may come from any thread.
unsafe impl Send for DpdkFlow {}

/// The transfer proxy of `port` (the port itself when the driver has no
/// eSwitch).
fn proxy_of(port: u16) -> u16 {
    let mut proxy = port;
    let mut e = no_error();
    // SAFETY: a valid port and out-pointer; a driver without a proxy
    // leaves the port itself.
    let rc = unsafe { sys::rte_flow_pick_transfer_proxy(port, &raw mut proxy, &raw mut e) };
    if rc == 0 { proxy } else { port }
}

impl DpdkFlow {
    /// A backend for the eSwitches the DPDK ports `dpdk_ports` (indexed
    /// like the runtime's ports; `None` for others) belong to, holding up
    /// to `capacity` rules. Ports are grouped by their transfer proxy
    /// (one eSwitch each); [`FlowOffload::configure`] comes next, while
    /// the ports are stopped.
    ///
    /// # Errors
    /// No DPDK port at all.
    pub fn new(dpdk_ports: Vec<Option<u16>>, capacity: usize) -> Result<Self, FlowError> {
        let mut domains: Vec<Domain> = Vec::new();
        for port in dpdk_ports.iter().flatten().copied() {
            let proxy = proxy_of(port);
            match domains.iter_mut().find(|d| d.proxy == proxy) {
                Some(d) => d.members.push(port),
                None => domains.push(Domain {
                    proxy,
                    members: vec![port],
                    configured: None,
                    queue: 0,
                }),
            }
        }
        if domains.is_empty() {
            return Err(FlowError {
                call: "rte_flow backend",
                errno: Errno(libc::ENODEV),
                kind: 0,
                message: "no DPDK port to install rules on".into(),
            });
        }
        Ok(Self {
            rules: Vec::new(),
            counters: Vec::new(),
            tables: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            len: 0,
            domains,
            started: false,
            port_map: Vec::new(),
            dpdk_ports,
            encaps: Vec::new(),
            capacity,
            refusals_logged: 0,
            aged_buf: Vec::new(),
        })
    }

    /// True when rules of some eSwitch go through the template API.
    #[must_use]
    pub fn template_api(&self) -> bool {
        self.domains.iter().any(Domain::templates)
    }

    /// The transfer proxy of each eSwitch, and what `rte_flow_configure`
    /// answered there (`None`: not called yet).
    #[must_use]
    pub fn proxies(&self) -> Vec<(u16, Option<Result<(), FlowError>>)> {
        self.domains
            .iter()
            .map(|d| (d.proxy, d.configured.clone()))
            .collect()
    }

    fn refused(&mut self, e: &FlowError) -> OffloadError {
        // The first refusals say why; after that they are only counted.
        if self.refusals_logged < 8 {
            tracing::warn!(error = %e, "rte_flow refused");
        } else if self.refusals_logged == 8 {
            tracing::warn!("further rte_flow refusals are counted, not logged");
        }
        self.refusals_logged += 1;
        e.offload_error()
    }

    fn resolve<T>(&self, f: impl FnOnce(&Resolve<'_>) -> T) -> T {
        let map = &self.port_map;
        let counters = &self.counters;
        let encaps = &self.encaps;
        let port = |p: PortId| map.get(p.index()).copied().flatten();
        let counter = |c: CounterId| {
            counters
                .get(c.0 as usize)
                .and_then(Option::as_ref)
                .map(|h| h.raw.as_ptr())
        };
        let encap = |e: EncapId| encaps.get(e.0 as usize).copied();
        f(&Resolve {
            port: &port,
            counter: &counter,
            encap: &encap,
        })
    }

    fn translate(&self, rule: &Rule) -> Result<(CPattern, CActions), OffloadError> {
        self.resolve(|r| {
            Ok((
                translate::pattern(&rule.pattern, r)?,
                translate::actions(&rule.actions, r)?,
            ))
        })
    }

    /// The eSwitch of a DPDK port.
    fn domain_of_dpdk(&self, port: u16) -> Option<usize> {
        self.domains.iter().position(|d| d.members.contains(&port))
    }

    /// The eSwitch a rule's ingress port belongs to (the first when it
    /// names none).
    fn domain_of_rule(&self, rule: &Rule) -> usize {
        rule.pattern
            .iter()
            .find_map(|i| match i {
                Item::RepresentedPort(p) => self.port_map.get(p.index()).copied().flatten(),
                _ => None,
            })
            .and_then(|p| self.domain_of_dpdk(p))
            .unwrap_or(0)
    }

    fn store(&mut self, flow: Flow) -> RuleHandle {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.rules.push(None);
                self.generations.push(0);
                u32::try_from(self.rules.len() - 1).unwrap_or(u32::MAX)
            }
        };
        let generation = self
            .generations
            .get(slot as usize)
            .copied()
            .unwrap_or(0)
            .wrapping_add(1);
        if let Some(g) = self.generations.get_mut(slot as usize) {
            *g = generation;
        }
        if let Some(r) = self.rules.get_mut(slot as usize) {
            *r = Some((generation, flow));
        }
        self.len += 1;
        RuleHandle((u64::from(generation) << 32) | u64::from(slot))
    }

    /// Takes a rule out of the store, if the handle is current.
    fn take(&mut self, h: RuleHandle) -> Option<Flow> {
        let slot = (h.0 & 0xFFFF_FFFF) as u32;
        let generation = (h.0 >> 32) as u32;
        let entry = self.rules.get_mut(slot as usize)?;
        if entry.as_ref().is_none_or(|(g, _)| *g != generation) {
            return None;
        }
        let (_, flow) = entry.take()?;
        self.free.push(slot);
        self.len -= 1;
        if let Some(Some(t)) = flow.table.and_then(|t| self.tables.get_mut(t as usize)) {
            t.rules = t.rules.saturating_sub(1);
        }
        Some(flow)
    }

    fn create_sync(&mut self, rule: &Rule, table: Option<u32>) -> Result<RuleHandle, OffloadError> {
        let (pattern, actions) = self.translate(rule)?;
        let attr = translate::attr(&rule.attr);
        let proxy = self
            .domains
            .get(self.domain_of_rule(rule))
            .map_or(0, |d| d.proxy);
        let mut e = no_error();
        // SAFETY: the items and actions (and everything they point at) live
        // in `pattern` and `actions` for the call; the PMD copies what it
        // keeps.
        let raw = unsafe {
            sys::rte_flow_create(
                proxy,
                &raw const attr,
                pattern.items().as_ptr(),
                actions.actions().as_ptr(),
                &raw mut e,
            )
        };
        match NonNull::new(raw) {
            Some(raw) => Ok(self.store(Flow {
                port: proxy,
                raw,
                queue: None,
                table,
            })),
            None => {
                let err = FlowError::from_call("rte_flow_create", -Errno::last().0, &e);
                Err(self.refused(&err))
            }
        }
    }

    /// Makes a template table's C objects on `port`.
    fn make_table(&self, spec: &TableSpec, port: u16) -> Result<Table, FlowError> {
        let failed =
            |call, e: &sys::rte_flow_error| FlowError::from_call(call, -Errno::last().0, e);
        let mut e = no_error();
        let pattern = self
            .resolve(|r| translate::pattern(&spec.pattern, r))
            .map_err(|_| FlowError {
                call: "rte_flow_pattern_template_create",
                errno: Errno(libc::EINVAL),
                kind: 0,
                message: "a port without a DPDK device".into(),
            })?;
        let mut pattern_attr = sys::rte_flow_pattern_template_attr::default();
        pattern_attr.set_ingress(u32::from(spec.attr.ingress));
        pattern_attr.set_transfer(u32::from(spec.attr.transfer));
        let items = pattern.template();
        // SAFETY: items with masks that live for the call.
        let pt = unsafe {
            sys::rte_flow_pattern_template_create(
                port,
                &raw const pattern_attr,
                items.as_ptr(),
                &raw mut e,
            )
        };
        let pt = NonNull::new(pt).ok_or_else(|| failed("rte_flow_pattern_template_create", &e))?;
        let mut table = Table {
            table: NonNull::dangling(),
            pattern: pt,
            actions: Vec::new(),
            port,
        };
        for kinds in &spec.actions {
            let actions = self.resolve(|r| translate::template_actions(kinds, r));
            let masks = actions.template_masks();
            let mut actions_attr = sys::rte_flow_actions_template_attr::default();
            actions_attr.set_ingress(u32::from(spec.attr.ingress));
            actions_attr.set_transfer(u32::from(spec.attr.transfer));
            // SAFETY: actions and masks of the same types and length, alive
            // for the call.
            let at = unsafe {
                sys::rte_flow_actions_template_create(
                    port,
                    &raw const actions_attr,
                    actions.actions().as_ptr(),
                    masks.as_ptr(),
                    &raw mut e,
                )
            };
            match NonNull::new(at) {
                Some(at) => table.actions.push(at),
                None => {
                    let err = failed("rte_flow_actions_template_create", &e);
                    // `table` has no table yet: free the templates alone.
                    release_templates(&table);
                    std::mem::forget(table);
                    return Err(err);
                }
            }
        }
        let table_attr = sys::rte_flow_template_table_attr {
            flow_attr: translate::attr(&spec.attr),
            nb_flows: spec.size,
        };
        let mut pts = [pt.as_ptr()];
        let mut ats: Vec<_> = table.actions.iter().map(|a| a.as_ptr()).collect();
        // SAFETY: one pattern template and the actions templates, all alive.
        let raw = unsafe {
            sys::rte_flow_template_table_create(
                port,
                &raw const table_attr,
                pts.as_mut_ptr(),
                1,
                ats.as_mut_ptr(),
                u8::try_from(ats.len()).unwrap_or(u8::MAX),
                &raw mut e,
            )
        };
        match NonNull::new(raw) {
            Some(raw) => {
                table.table = raw;
                Ok(table)
            }
            None => {
                let err = failed("rte_flow_template_table_create", &e);
                release_templates(&table);
                std::mem::forget(table);
                Err(err)
            }
        }
    }

    /// Enqueues template rules of one eSwitch, pushes, pulls their results.
    fn enqueue_async(
        &mut self,
        domain: usize,
        batch: &[(usize, &Rule, Place)],
        out: &mut [Result<RuleHandle, OffloadError>],
    ) {
        let Some((proxy, queue)) = self.domains.get(domain).map(|d| (d.proxy, d.queue)) else {
            return;
        };
        let mut pending: Vec<(usize, NonNull<sys::rte_flow>, u32)> = Vec::new();
        for &(i, rule, place) in batch {
            let table = match self
                .tables
                .get(place.table.0 as usize)
                .and_then(Option::as_ref)
                .and_then(|t| t.made.as_ref().map(|m| (m.table, t.rules, t.spec.size)))
            {
                Some((t, rules, size)) if (rules as u64) < u64::from(size).next_power_of_two() => t,
                Some(_) => {
                    out[i] = Err(OffloadError::Full);
                    continue;
                }
                None => {
                    out[i] = Err(OffloadError::UnknownHandle);
                    continue;
                }
            };
            let (pattern, actions) = match self.translate(rule) {
                Ok(t) => t,
                Err(e) => {
                    out[i] = Err(e);
                    continue;
                }
            };
            let mut attr = sys::rte_flow_op_attr::default();
            attr.set_postpone(1);
            let mut e = no_error();
            // SAFETY: the proxy took rte_flow_configure with this queue; the
            // table exists; items and actions live for the call; user_data
            // is the rule's index, only compared.
            let raw = unsafe {
                sys::rte_flow_async_create(
                    proxy,
                    queue,
                    &raw const attr,
                    table.as_ptr(),
                    pattern.items().as_ptr(),
                    0,
                    actions.actions().as_ptr(),
                    place.actions,
                    ptr::without_provenance_mut(i + 1),
                    &raw mut e,
                )
            };
            match NonNull::new(raw) {
                Some(raw) => {
                    pending.push((i, raw, place.table.0));
                    if let Some(Some(t)) = self.tables.get_mut(place.table.0 as usize) {
                        t.rules += 1;
                    }
                }
                None => {
                    let err = FlowError::from_call("rte_flow_async_create", -Errno::last().0, &e);
                    out[i] = Err(self.refused(&err));
                }
            }
        }
        if pending.is_empty() {
            return;
        }
        let mut e = no_error();
        // SAFETY: as above; push sends the postponed operations.
        unsafe { sys::rte_flow_push(proxy, queue, &raw mut e) };
        // SAFETY: as above.
        let results = unsafe { pull(proxy, queue, pending.len()) };
        let ok: std::collections::HashSet<usize> = results
            .iter()
            .filter(|r| r.status == sys::RTE_FLOW_OP_SUCCESS)
            .map(|r| (r.user_data as usize).wrapping_sub(1))
            .collect();
        for (i, raw, table) in pending {
            let flow = Flow {
                port: proxy,
                raw,
                queue: Some(queue),
                table: Some(table),
            };
            if ok.contains(&i) {
                out[i] = Ok(self.store(flow));
            } else {
                // The rule handle must still be destroyed (rte_flow.rst,
                // asynchronous operations).
                if let Some(Some(t)) = self.tables.get_mut(table as usize) {
                    t.rules = t.rules.saturating_sub(1);
                }
                drop(flow);
                out[i] = Err(OffloadError::Other(libc::EIO));
            }
        }
    }
}

/// Frees the templates of a table whose table was not made.
fn release_templates(t: &Table) {
    let mut e = no_error();
    // SAFETY: templates this port created and no table uses.
    unsafe {
        let _ = sys::rte_flow_pattern_template_destroy(t.port, t.pattern.as_ptr(), &raw mut e);
        for a in &t.actions {
            let _ = sys::rte_flow_actions_template_destroy(t.port, a.as_ptr(), &raw mut e);
        }
    }
}

/// `rte_flow_configure` on `port` with one queue.
fn configure_port(port: u16, attr: &PortAttr) -> Result<(), FlowError> {
    let mut e = no_error();
    let port_attr = sys::rte_flow_port_attr {
        nb_counters: attr.counters,
        nb_aging_objects: attr.aging,
        ..Default::default()
    };
    let queue = sys::rte_flow_queue_attr {
        size: attr.queue_size,
    };
    let mut queues = [&raw const queue];
    // SAFETY: one queue attribute, alive for the call.
    let rc = unsafe {
        sys::rte_flow_configure(
            port,
            &raw const port_attr,
            1,
            queues.as_mut_ptr(),
            &raw mut e,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(FlowError::from_call("rte_flow_configure", rc, &e))
    }
}

impl FlowOffload for DpdkFlow {
    /// `rte_flow_configure` on every port, proxies first (mlx5 with
    /// `repr_matching_en=1` wants it on every representor before it
    /// starts, mlx5.rst). Called while the ports are stopped: ethdev
    /// refuses it on a started port. An eSwitch whose proxy refuses gets
    /// its rules one by one.
    fn configure(&mut self, attr: &PortAttr) -> Result<(), OffloadError> {
        if self.started {
            return Err(OffloadError::Invalid(
                "rte_flow_configure after the ports started",
            ));
        }
        let members = PortAttr {
            counters: 0,
            aging: 0,
            queue_size: attr.queue_size,
        };
        let mut refusal = None;
        for d in &mut self.domains {
            let answer = configure_port(d.proxy, attr);
            match &answer {
                Ok(()) => tracing::info!(port = d.proxy, "template API configured"),
                Err(e) => {
                    tracing::info!(
                        port = d.proxy,
                        error = %e,
                        "template API refused: rules are created one by one"
                    );
                    refusal = Some(e.offload_error());
                }
            }
            if answer.is_ok() {
                for m in d.members.iter().filter(|m| **m != d.proxy) {
                    if let Err(e) = configure_port(*m, &members) {
                        tracing::warn!(port = *m, error = %e, "rte_flow_configure refused on a representor");
                    }
                }
            }
            d.configured = Some(answer);
        }
        refusal.map_or(Ok(()), Err)
    }

    fn start(&mut self) -> Result<(), OffloadError> {
        if self.started {
            return Err(OffloadError::Invalid("started twice"));
        }
        self.started = true;
        Ok(())
    }

    fn switch_of(&self, port: PortId) -> u16 {
        self.port_map
            .get(port.index())
            .copied()
            .flatten()
            .and_then(|p| self.domain_of_dpdk(p))
            .and_then(|d| u16::try_from(d).ok())
            .unwrap_or(0)
    }

    fn create(&mut self, rule: &Rule) -> Result<RuleHandle, OffloadError> {
        if self.len >= self.capacity {
            return Err(OffloadError::Full);
        }
        self.create_sync(rule, None)
    }

    fn create_table(&mut self, spec: &TableSpec) -> Result<TableId, OffloadError> {
        let domain = self
            .domains
            .get(usize::from(spec.switch))
            .ok_or(OffloadError::Invalid("no such eSwitch"))?;
        let made = if domain.templates() {
            if !self.started {
                // mlx5 places transfer tables one level down only once the
                // proxy has started (hw.c flow_hw_translate_group).
                return Err(OffloadError::Invalid(
                    "template table before the ports started",
                ));
            }
            let port = domain.proxy;
            match self.make_table(spec, port) {
                Ok(t) => Some(t),
                Err(e) => return Err(self.refused(&e)),
            }
        } else {
            None
        };
        let slot = TableSlot {
            spec: spec.clone(),
            made,
            rules: 0,
        };
        let i = chaingate_fastpath::offload::template::store(&mut self.tables, slot);
        Ok(TableId(u32::try_from(i).unwrap_or(u32::MAX)))
    }

    fn destroy_table(&mut self, table: TableId) -> Result<(), OffloadError> {
        match self.tables.get_mut(table.0 as usize) {
            Some(t @ Some(_)) => {
                if t.as_ref().is_some_and(|t| t.rules > 0) {
                    return Err(OffloadError::Invalid("the table still holds rules"));
                }
                *t = None;
                Ok(())
            }
            _ => Err(OffloadError::UnknownHandle),
        }
    }

    fn enqueue(
        &mut self,
        rules: &[Rule],
        places: &[Place],
        out: &mut Vec<Result<RuleHandle, OffloadError>>,
    ) {
        out.clear();
        out.resize(rules.len(), Err(OffloadError::Other(0)));
        let mut by_domain: Vec<Vec<(usize, &Rule, Place)>> = vec![Vec::new(); self.domains.len()];
        let mut room = self.capacity.saturating_sub(self.len);
        for (i, rule) in rules.iter().enumerate() {
            let Some(place) = places.get(i).copied() else {
                out[i] = Err(OffloadError::Invalid("no place for the rule"));
                continue;
            };
            if room == 0 {
                out[i] = Err(OffloadError::Full);
                continue;
            }
            room -= 1;
            let templated = self
                .tables
                .get(place.table.0 as usize)
                .and_then(Option::as_ref)
                .map(|t| (t.made.is_some(), usize::from(t.spec.switch)));
            match templated {
                Some((true, domain)) => {
                    if let Some(list) = by_domain.get_mut(domain) {
                        list.push((i, rule, place));
                    }
                }
                Some((false, _)) => out[i] = self.create_sync(rule, Some(place.table.0)),
                None => out[i] = Err(OffloadError::UnknownHandle),
            }
        }
        for (domain, batch) in by_domain.iter().enumerate() {
            if !batch.is_empty() {
                self.enqueue_async(domain, batch, out);
            }
        }
    }

    fn destroy(&mut self, rule: RuleHandle) -> Result<(), OffloadError> {
        // Dropping the Flow destroys the rule.
        self.take(rule).map(drop).ok_or(OffloadError::UnknownHandle)
    }

    fn destroy_batch(&mut self, rules: &[RuleHandle]) -> usize {
        let mut queued: Vec<(u16, u32)> = Vec::new();
        let mut done = 0;
        for h in rules {
            let Some(flow) = self.take(*h) else { continue };
            done += 1;
            let Some(q) = flow.queue else {
                drop(flow);
                continue;
            };
            let attr = {
                let mut a = sys::rte_flow_op_attr::default();
                a.set_postpone(1);
                a
            };
            let mut e = no_error();
            // SAFETY: a rule created on this port's queue `q`; its
            // destruction is pushed and pulled below.
            let rc = unsafe {
                sys::rte_flow_async_destroy(
                    flow.port,
                    q,
                    &raw const attr,
                    flow.raw.as_ptr(),
                    ptr::null_mut(),
                    &raw mut e,
                )
            };
            if rc == 0 {
                queued.push((flow.port, q));
                // Destroyed through the queue, not by its Drop.
                std::mem::forget(flow);
            }
        }
        queued.sort_unstable();
        let mut at = 0;
        while let Some(&(port, q)) = queued.get(at) {
            let n = queued[at..].iter().take_while(|x| **x == (port, q)).count();
            let mut e = no_error();
            // SAFETY: the port took rte_flow_configure with queue `q`.
            unsafe {
                sys::rte_flow_push(port, q, &raw mut e);
                let _ = pull(port, q, n);
            }
            at += n;
        }
        done
    }

    fn create_counter(&mut self, switch: u16) -> Result<CounterId, OffloadError> {
        let proxy = self
            .domains
            .get(usize::from(switch))
            .map(|d| d.proxy)
            .ok_or(OffloadError::Invalid("no such eSwitch"))?;
        let mut conf = sys::rte_flow_indir_action_conf::default();
        conf.set_transfer(1);
        let count = sys::rte_flow_action_count { id: 0 };
        let action = sys::rte_flow_action {
            type_: sys::RTE_FLOW_ACTION_TYPE_COUNT,
            conf: (&raw const count).cast(),
        };
        let mut e = no_error();
        // SAFETY: valid configuration and action for the call.
        let raw = unsafe {
            sys::rte_flow_action_handle_create(
                proxy,
                &raw const conf,
                &raw const action,
                &raw mut e,
            )
        };
        let Some(raw) = NonNull::new(raw) else {
            let err = FlowError::from_call("rte_flow_action_handle_create", -Errno::last().0, &e);
            return Err(self.refused(&err));
        };
        self.counters.push(Some(Handle { port: proxy, raw }));
        Ok(CounterId(
            u32::try_from(self.counters.len() - 1).unwrap_or(u32::MAX),
        ))
    }

    fn query_counter(&mut self, counter: CounterId) -> Result<Counts, OffloadError> {
        let (port, raw) = self
            .counters
            .get(counter.0 as usize)
            .and_then(Option::as_ref)
            .map(|h| (h.port, h.raw))
            .ok_or(OffloadError::UnknownHandle)?;
        let mut q = sys::rte_flow_query_count::default();
        let mut e = no_error();
        // SAFETY: a live indirect COUNT action and its query structure.
        let rc = unsafe {
            sys::rte_flow_action_handle_query(port, raw.as_ptr(), (&raw mut q).cast(), &raw mut e)
        };
        if rc != 0 {
            let err = FlowError::from_call("rte_flow_action_handle_query", rc, &e);
            return Err(self.refused(&err));
        }
        Ok(Counts {
            packets: q.hits,
            bytes: q.bytes,
        })
    }

    fn destroy_counter(&mut self, counter: CounterId) -> Result<(), OffloadError> {
        let slot = self
            .counters
            .get_mut(counter.0 as usize)
            .ok_or(OffloadError::UnknownHandle)?;
        // Dropping the handle destroys the indirect action.
        slot.take().map(drop).ok_or(OffloadError::UnknownHandle)
    }

    fn create_encap(&mut self, tunnel: &VxlanTunnel) -> Result<EncapId, OffloadError> {
        self.encaps.push(*tunnel);
        Ok(EncapId(
            u32::try_from(self.encaps.len() - 1).unwrap_or(u32::MAX),
        ))
    }

    /// Aged rules from each eSwitch: with the template API per queue
    /// (`rte_flow_get_q_aged_flows`; without the strict-queue flag mlx5
    /// keeps one list and the queue is ignored), one by one otherwise
    /// (`rte_flow_get_aged_flows`).
    fn aged(&mut self, _now: Nanos, out: &mut Vec<u64>) {
        const CHUNK: usize = 256;
        if self.aged_buf.len() < CHUNK {
            self.aged_buf.resize(CHUNK, ptr::null_mut());
        }
        for d in &self.domains {
            loop {
                let mut e = no_error();
                let room = u32::try_from(self.aged_buf.len()).unwrap_or(0);
                // SAFETY: `aged_buf` has room for `room` contexts; the
                // queue call is only made on a port that took
                // rte_flow_configure.
                let n = unsafe {
                    if d.templates() {
                        sys::rte_flow_get_q_aged_flows(
                            d.proxy,
                            d.queue,
                            self.aged_buf.as_mut_ptr(),
                            room,
                            &raw mut e,
                        )
                    } else {
                        sys::rte_flow_get_aged_flows(
                            d.proxy,
                            self.aged_buf.as_mut_ptr(),
                            room,
                            &raw mut e,
                        )
                    }
                };
                let Ok(n) = usize::try_from(n) else { break };
                out.extend(self.aged_buf.iter().take(n).map(|c| c.addr() as u64));
                if n < CHUNK {
                    break;
                }
            }
        }
    }

    fn capacity(&self) -> Option<usize> {
        Some(self.capacity)
    }
}

impl Switch for DpdkFlow {
    /// The NIC has applied the rules: what reaches software is a miss.
    fn switch(&mut self, port: PortId, _: &mut FrameBuf<'_>, _: Nanos) -> Outcome {
        Outcome::ToSoftware(port)
    }

    fn set_port_map(&mut self, runtime_index: &[Option<usize>]) {
        self.port_map = runtime_index
            .iter()
            .map(|i| i.and_then(|i| self.dpdk_ports.get(i).copied().flatten()))
            .collect();
    }

    fn name(&self) -> &'static str {
        "rte_flow"
    }
}

#[cfg(test)]
mod tests;
