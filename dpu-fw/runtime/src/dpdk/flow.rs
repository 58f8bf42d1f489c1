//! rte_flow as a flow-offload backend.
//!
//! Rules are transfer rules created on the switch's transfer proxy port
//! (`rte_flow_pick_transfer_proxy`: the PF on a BlueField in switchdev
//! mode). Two ways in:
//! - synchronous (`rte_flow_create`), on ports that did not take
//!   `rte_flow_configure`;
//! - the template API (`rte_flow_configure`, pattern and actions
//!   templates, template tables, `rte_flow_async_create`, push, pull), for
//!   bulk insertion where the port takes it (mlx5 with `dv_flow_en=2`). A
//!   table is made per rule shape (group, priority, item types and masks,
//!   action types) the first time a shape is seen. In DPDK 22.11 the async
//!   calls crash on ports without flow support, so they are only reached
//!   after `rte_flow_configure` succeeded.
//!
//! Shared counters are indirect COUNT actions. Every rule, indirect action,
//! table and template is owned and released on drop. A refusal comes back
//! as the errno the driver gave, mapped to [`OffloadError`] for the
//! offload manager, and logged with the driver's message.

pub mod translate;

use std::collections::HashMap;
use std::ffi::CStr;
use std::mem::Discriminant;
use std::ptr::{self, NonNull};
use std::time::{Duration, Instant};

use chaingate_fastpath::offload::{
    Action, Attr, CounterId, Counts, EncapId, FlowOffload, Item, OffloadError, Outcome, Rule,
    RuleHandle, Spec, VxlanTunnel,
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

/// A template table for one rule shape, with its templates.
struct Table {
    // Field order is drop order: the table before its templates.
    table: NonNull<sys::rte_flow_template_table>,
    pattern: NonNull<sys::rte_flow_pattern_template>,
    actions: NonNull<sys::rte_flow_actions_template>,
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
            let _ = sys::rte_flow_actions_template_destroy(
                self.port,
                self.actions.as_ptr(),
                &raw mut e,
            );
        }
    }
}

/// What makes rules share a template table.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Shape {
    attr: Attr,
    items: Vec<Item>,
    actions: Vec<Discriminant<Action>>,
}

impl Shape {
    /// The rule with its values taken out: masks and types remain.
    fn of(rule: &Rule) -> Self {
        fn masked<T: Copy + Default>(s: &Spec<T>) -> Spec<T> {
            Spec::new(T::default(), s.mask)
        }
        let items = rule
            .pattern
            .iter()
            .map(|i| match i {
                Item::RepresentedPort(_) => Item::RepresentedPort(PortId::from_index(0)),
                Item::Eth(s) => Item::Eth(masked(s)),
                Item::Vlan(s) => Item::Vlan(masked(s)),
                Item::Ipv4(s) => Item::Ipv4(masked(s)),
                Item::Ipv6(s) => Item::Ipv6(masked(s)),
                Item::Tcp(s) => Item::Tcp(masked(s)),
                Item::Udp(s) => Item::Udp(masked(s)),
                Item::Icmp(s) => Item::Icmp(masked(s)),
                Item::Icmp6(s) => Item::Icmp6(masked(s)),
            })
            .collect();
        Self {
            attr: rule.attr,
            items,
            actions: rule.actions.iter().map(std::mem::discriminant).collect(),
        }
    }
}

/// The template API, when the port took `rte_flow_configure`.
struct Async {
    queue: u32,
    tables: HashMap<Shape, Table>,
    table_size: u32,
}

/// The rte_flow backend.
pub struct DpdkFlow {
    // Field order is drop order: rules, then counters, then tables.
    rules: Vec<Option<(u32, Flow)>>,
    counters: Vec<Option<Handle>>,
    templates: Option<Async>,
    generations: Vec<u32>,
    free: Vec<u32>,
    len: usize,
    proxy: u16,
    /// DPDK port of each runtime port (`None`: not a DPDK port).
    dpdk_ports: Vec<Option<u16>>,
    /// DPDK port of each configured port (`PortId`).
    port_map: Vec<Option<u16>>,
    encaps: Vec<VxlanTunnel>,
    capacity: usize,
    refusals_logged: u64,
}

impl std::fmt::Debug for DpdkFlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpdkFlow")
            .field("proxy", &self.proxy)
            .field("rules", &self.len)
            .field("template_api", &self.templates.is_some())
            .finish_non_exhaustive()
    }
}

// SAFETY: the raw handles are only used by the one thread that owns the
// backend (the data path); DPDK's flow calls may come from any thread.
unsafe impl Send for DpdkFlow {}

impl DpdkFlow {
    /// A backend for the switch the DPDK ports `dpdk_ports` (indexed like
    /// the runtime's ports; `None` for others) belong to, holding up to
    /// `capacity` rules. It tries the template API first and falls back to
    /// synchronous creation when the port does not take it.
    ///
    /// # Errors
    /// No DPDK port at all.
    pub fn new(dpdk_ports: Vec<Option<u16>>, capacity: usize) -> Result<Self, FlowError> {
        let first = dpdk_ports
            .iter()
            .flatten()
            .copied()
            .next()
            .ok_or(FlowError {
                call: "rte_flow backend",
                errno: Errno(libc::ENODEV),
                kind: 0,
                message: "no DPDK port to install rules on".into(),
            })?;
        let mut proxy = first;
        let mut e = no_error();
        // SAFETY: a valid port and out-pointer. A driver without a proxy
        // leaves the port itself.
        let rc = unsafe { sys::rte_flow_pick_transfer_proxy(first, &raw mut proxy, &raw mut e) };
        if rc != 0 {
            proxy = first;
        }
        let table_size = u32::try_from(capacity).unwrap_or(u32::MAX).max(64);
        let templates = configure(proxy, table_size);
        tracing::info!(
            proxy,
            template_api = templates.is_some(),
            "rte_flow backend ready"
        );
        Ok(Self {
            rules: Vec::new(),
            counters: Vec::new(),
            templates,
            generations: Vec::new(),
            free: Vec::new(),
            len: 0,
            proxy,
            port_map: Vec::new(),
            dpdk_ports,
            encaps: Vec::new(),
            capacity,
            refusals_logged: 0,
        })
    }

    /// True when rules go through the template API.
    #[must_use]
    pub const fn template_api(&self) -> bool {
        self.templates.is_some()
    }

    /// The port rules are created on.
    #[must_use]
    pub const fn proxy(&self) -> u16 {
        self.proxy
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

    fn translate(&self, rule: &Rule) -> Result<(CPattern, CActions), OffloadError> {
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
        let r = Resolve {
            port: &port,
            counter: &counter,
            encap: &encap,
        };
        Ok((
            translate::pattern(&rule.pattern, &r)?,
            translate::actions(&rule.actions, &r)?,
        ))
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

    fn flow(&self, h: RuleHandle) -> Result<&Flow, OffloadError> {
        let slot = (h.0 & 0xFFFF_FFFF) as usize;
        let generation = (h.0 >> 32) as u32;
        match self.rules.get(slot) {
            Some(Some((g, f))) if *g == generation => Ok(f),
            _ => Err(OffloadError::UnknownHandle),
        }
    }

    fn create_sync(&mut self, rule: &Rule) -> Result<RuleHandle, OffloadError> {
        let (pattern, actions) = self.translate(rule)?;
        let attr = translate::attr(&rule.attr);
        let mut e = no_error();
        // SAFETY: the items and actions (and everything they point at) live
        // in `pattern` and `actions` for the call; the PMD copies what it
        // keeps.
        let raw = unsafe {
            sys::rte_flow_create(
                self.proxy,
                &raw const attr,
                pattern.items().as_ptr(),
                actions.actions().as_ptr(),
                &raw mut e,
            )
        };
        match NonNull::new(raw) {
            Some(raw) => Ok(self.store(Flow {
                port: self.proxy,
                raw,
                queue: None,
            })),
            None => {
                let err = FlowError::from_call("rte_flow_create", -Errno::last().0, &e);
                Err(self.refused(&err))
            }
        }
    }

    /// The template table for a rule's shape, made the first time.
    fn table(
        &mut self,
        rule: &Rule,
        pattern: &CPattern,
        actions: &CActions,
    ) -> Result<NonNull<sys::rte_flow_template_table>, FlowError> {
        let proxy = self.proxy;
        let Some(t) = self.templates.as_mut() else {
            return Err(FlowError {
                call: "template table",
                errno: Errno(libc::ENOSYS),
                kind: 0,
                message: String::new(),
            });
        };
        let shape = Shape::of(rule);
        if let Some(table) = t.tables.get(&shape) {
            return Ok(table.table);
        }
        let mut e = no_error();
        let mut pattern_attr = sys::rte_flow_pattern_template_attr::default();
        pattern_attr.set_ingress(u32::from(rule.attr.ingress));
        pattern_attr.set_transfer(u32::from(rule.attr.transfer));
        let items = pattern.template();
        // SAFETY: items with masks that live for the call.
        let pt = unsafe {
            sys::rte_flow_pattern_template_create(
                proxy,
                &raw const pattern_attr,
                items.as_ptr(),
                &raw mut e,
            )
        };
        let pt = NonNull::new(pt).ok_or_else(|| {
            FlowError::from_call("rte_flow_pattern_template_create", -Errno::last().0, &e)
        })?;
        let mut actions_attr = sys::rte_flow_actions_template_attr::default();
        actions_attr.set_ingress(u32::from(rule.attr.ingress));
        actions_attr.set_transfer(u32::from(rule.attr.transfer));
        let masks = actions.template_masks();
        // SAFETY: actions and masks of the same types and length, alive for
        // the call.
        let at = unsafe {
            sys::rte_flow_actions_template_create(
                proxy,
                &raw const actions_attr,
                actions.actions().as_ptr(),
                masks.as_ptr(),
                &raw mut e,
            )
        };
        let Some(at) = NonNull::new(at) else {
            let err =
                FlowError::from_call("rte_flow_actions_template_create", -Errno::last().0, &e);
            // SAFETY: just created, used by nothing.
            unsafe { sys::rte_flow_pattern_template_destroy(proxy, pt.as_ptr(), &raw mut e) };
            return Err(err);
        };
        let table_attr = sys::rte_flow_template_table_attr {
            flow_attr: translate::attr(&rule.attr),
            nb_flows: t.table_size,
        };
        let mut pts = [pt.as_ptr()];
        let mut ats = [at.as_ptr()];
        // SAFETY: one pattern and one actions template, both alive.
        let table = unsafe {
            sys::rte_flow_template_table_create(
                proxy,
                &raw const table_attr,
                pts.as_mut_ptr(),
                1,
                ats.as_mut_ptr(),
                1,
                &raw mut e,
            )
        };
        let Some(table) = NonNull::new(table) else {
            let err = FlowError::from_call("rte_flow_template_table_create", -Errno::last().0, &e);
            // SAFETY: just created, used by nothing.
            unsafe {
                sys::rte_flow_pattern_template_destroy(proxy, pt.as_ptr(), &raw mut e);
                sys::rte_flow_actions_template_destroy(proxy, at.as_ptr(), &raw mut e);
            }
            return Err(err);
        };
        t.tables.insert(
            shape,
            Table {
                table,
                pattern: pt,
                actions: at,
                port: proxy,
            },
        );
        Ok(table)
    }

    fn create_async(&mut self, rules: &[Rule], out: &mut Vec<Result<RuleHandle, OffloadError>>) {
        out.clear();
        let Some(queue) = self.templates.as_ref().map(|t| t.queue) else {
            return;
        };
        let mut pending: Vec<(usize, NonNull<sys::rte_flow>)> = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            out.push(Err(OffloadError::Other(0)));
            let (pattern, actions) = match self.translate(rule) {
                Ok(t) => t,
                Err(e) => {
                    out[i] = Err(e);
                    continue;
                }
            };
            let table = match self.table(rule, &pattern, &actions) {
                Ok(t) => t,
                Err(e) => {
                    out[i] = Err(self.refused(&e));
                    continue;
                }
            };
            let mut attr = sys::rte_flow_op_attr::default();
            attr.set_postpone(1);
            let mut e = no_error();
            // SAFETY: the port took rte_flow_configure with this queue; the
            // table exists; items and actions live for the call; user_data
            // is the rule's index, only compared.
            let raw = unsafe {
                sys::rte_flow_async_create(
                    self.proxy,
                    queue,
                    &raw const attr,
                    table.as_ptr(),
                    pattern.items().as_ptr(),
                    0,
                    actions.actions().as_ptr(),
                    0,
                    ptr::without_provenance_mut(i + 1),
                    &raw mut e,
                )
            };
            match NonNull::new(raw) {
                Some(raw) => pending.push((i, raw)),
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
        unsafe { sys::rte_flow_push(self.proxy, queue, &raw mut e) };
        // SAFETY: as above.
        let results = unsafe { pull(self.proxy, queue, pending.len()) };
        let ok: std::collections::HashSet<usize> = results
            .iter()
            .filter(|r| r.status == sys::RTE_FLOW_OP_SUCCESS)
            .map(|r| (r.user_data as usize).wrapping_sub(1))
            .collect();
        for (i, raw) in pending {
            if ok.contains(&i) {
                out[i] = Ok(self.store(Flow {
                    port: self.proxy,
                    raw,
                    queue: Some(queue),
                }));
            } else {
                out[i] = Err(OffloadError::Other(libc::EIO));
            }
        }
    }
}

/// Tries `rte_flow_configure` with one queue: the template API, or `None`
/// when the port does not take it.
fn configure(port: u16, table_size: u32) -> Option<Async> {
    let mut e = no_error();
    let mut info = sys::rte_flow_port_info::default();
    let mut queue_info = sys::rte_flow_queue_info::default();
    // SAFETY: valid out-pointers.
    let rc =
        unsafe { sys::rte_flow_info_get(port, &raw mut info, &raw mut queue_info, &raw mut e) };
    if rc != 0 || info.max_nb_queues == 0 {
        tracing::info!(
            port,
            "no template API on this port: rules are created one by one"
        );
        return None;
    }
    let attr = sys::rte_flow_port_attr {
        nb_counters: table_size.min(info.max_nb_counters.max(1)),
        ..Default::default()
    };
    let queue = sys::rte_flow_queue_attr { size: 1024 };
    let mut queues = [&raw const queue];
    // SAFETY: one queue attribute, alive for the call.
    let rc = unsafe {
        sys::rte_flow_configure(port, &raw const attr, 1, queues.as_mut_ptr(), &raw mut e)
    };
    if rc != 0 {
        let err = FlowError::from_call("rte_flow_configure", rc, &e);
        tracing::info!(port, error = %err, "template API refused: rules are created one by one");
        return None;
    }
    Some(Async {
        queue: 0,
        tables: HashMap::new(),
        table_size,
    })
}

impl FlowOffload for DpdkFlow {
    fn validate(&mut self, rule: &Rule) -> Result<(), OffloadError> {
        let (pattern, actions) = self.translate(rule)?;
        let attr = translate::attr(&rule.attr);
        let mut e = no_error();
        // SAFETY: as in create.
        let rc = unsafe {
            sys::rte_flow_validate(
                self.proxy,
                &raw const attr,
                pattern.items().as_ptr(),
                actions.actions().as_ptr(),
                &raw mut e,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            let err = FlowError::from_call("rte_flow_validate", rc, &e);
            Err(self.refused(&err))
        }
    }

    fn create(&mut self, rule: &Rule) -> Result<RuleHandle, OffloadError> {
        if self.len >= self.capacity {
            return Err(OffloadError::Full);
        }
        if self.templates.is_some() {
            let mut out = Vec::with_capacity(1);
            self.create_async(std::slice::from_ref(rule), &mut out);
            return out.pop().unwrap_or(Err(OffloadError::Other(0)));
        }
        self.create_sync(rule)
    }

    fn create_batch(&mut self, rules: &[Rule], out: &mut Vec<Result<RuleHandle, OffloadError>>) {
        let room = self.capacity.saturating_sub(self.len);
        if self.templates.is_some() && rules.len() <= room {
            self.create_async(rules, out);
            return;
        }
        out.clear();
        for rule in rules {
            out.push(self.create(rule));
        }
    }

    fn destroy(&mut self, rule: RuleHandle) -> Result<(), OffloadError> {
        self.flow(rule)?;
        let slot = (rule.0 & 0xFFFF_FFFF) as u32;
        if let Some(r) = self.rules.get_mut(slot as usize) {
            // Dropping the Flow destroys the rule.
            drop(r.take());
        }
        self.free.push(slot);
        self.len -= 1;
        Ok(())
    }

    fn query(&mut self, rule: RuleHandle) -> Result<Counts, OffloadError> {
        let flow = self.flow(rule)?;
        let (port, raw) = (flow.port, flow.raw);
        let mut q = sys::rte_flow_query_count::default();
        let count = sys::rte_flow_action {
            type_: sys::RTE_FLOW_ACTION_TYPE_COUNT,
            conf: ptr::null(),
        };
        let mut e = no_error();
        // SAFETY: a live rule with a COUNT action; `q` is the matching
        // query structure.
        let rc = unsafe {
            sys::rte_flow_query(
                port,
                raw.as_ptr(),
                &raw const count,
                (&raw mut q).cast(),
                &raw mut e,
            )
        };
        if rc != 0 {
            let err = FlowError::from_call("rte_flow_query", rc, &e);
            return Err(self.refused(&err));
        }
        Ok(Counts {
            packets: q.hits,
            bytes: q.bytes,
        })
    }

    fn create_counter(&mut self) -> Result<CounterId, OffloadError> {
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
                self.proxy,
                &raw const conf,
                &raw const action,
                &raw mut e,
            )
        };
        let Some(raw) = NonNull::new(raw) else {
            let err = FlowError::from_call("rte_flow_action_handle_create", -Errno::last().0, &e);
            return Err(self.refused(&err));
        };
        self.counters.push(Some(Handle {
            port: self.proxy,
            raw,
        }));
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
