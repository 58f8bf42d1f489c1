//! The offload manager: keeps a backend's rules in step with the fast
//! path's sessions.
//!
//! - It drains the data path's events: a session that asks for rules is
//!   queued, a changed one has its rules replaced, an ended one removed.
//!   Queued sessions are installed in batches (one `enqueue` per flush),
//!   within a rule budget, into template tables made the first time a
//!   rule shape needs one (one table per pattern, with every actions
//!   template that pattern's rules use).
//! - A session whose rules a backend refuses (or that would go over the
//!   budget) stays on the software path, where the fast path forwards its
//!   packets: nothing is dropped. The rules it did get are removed again,
//!   so a session is either wholly in hardware or wholly in software, and
//!   the refusal is counted by reason.
//! - One shared counter per instance, kept across configurations by the
//!   instance's name: every meter interval they are read and their deltas
//!   feed the fast path's meters.
//! - Idleness comes from the NIC: rules that hand no packet to an instance
//!   carry an AGE of half the session's idle timeout; an aged rule sends
//!   its whole session back to software with the other half of the
//!   timeout left ([`Datapath::demote`]): a session that is idle ends
//!   there, one that is not asks for rules again at its next packet.
//! - Make-before-break: session rules live in one of two groups, behind a
//!   jump per port in group 0. A new configuration's rules go into the
//!   other group while the old ones keep steering; once every session has
//!   its new rules, the jumps are swapped (the new jump is made in the
//!   group 0 table of the other priority before the old one goes, so no
//!   packet misses) and the old group is emptied. A session whose rules
//!   change with the configuration leaves the old group at once, so no
//!   packet follows a path that is no longer there.
//! - At the age interval it also reconciles: rules of sessions the fast
//!   path no longer has are removed (an event may have been lost), sessions
//!   that asked for rules and were never heard of are queued.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::hash::Hasher;

use chaingate_shared::config::MAX_HOPS;
use chaingate_shared::{InstanceId, Name, Nanos};

use super::generate::{
    GenerateError, Handles, SESSION_GROUPS, base_rules, guest_rules, session_rules, templates_for,
    tunnels,
};
use super::rule::{Action, Age, Item};
use super::rule::{EncapId, VxlanTunnel};
use super::template::{ActionsTemplate, Place, TableId, TableSpec};
use super::{CounterId, Counts, FlowOffload, OffloadError, Refusal, Rule, RuleHandle};
use crate::datapath::{Datapath, Event};
use crate::session::SessionId;

/// Rules one session has at most: two directions of (hops + 1) steps.
pub const MAX_SESSION_RULES: usize = 2 * (MAX_HOPS + 1);

/// Distinct refusal reasons kept for operators.
pub const REASONS: usize = 16;

/// How the manager paces itself.
#[derive(Clone, Copy, Debug)]
pub struct ManagerOptions {
    /// Rules installed at most (the backend may hold fewer).
    pub budget: usize,
    /// Sessions installed per `enqueue`.
    pub batch: usize,
    /// Rules installed at most per [`OffloadManager::handle_events`] call:
    /// installation never holds the data path up for long; the rest waits
    /// for the next call.
    pub install_budget: usize,
    /// Sessions waiting for rules at most; more stay in software until
    /// reconciliation queues them again.
    pub max_pending: usize,
    /// How often instance counters feed the meters.
    pub meter_interval: Nanos,
    /// How often aged rules are pulled from the backend, and the manager
    /// reconciles with the session table.
    pub age_interval: Nanos,
    /// Rules a template table holds.
    pub table_size: u32,
}

impl Default for ManagerOptions {
    fn default() -> Self {
        Self {
            budget: 1 << 20,
            batch: 64,
            install_budget: 1 << 12,
            max_pending: 1 << 16,
            meter_interval: Nanos::from_millis(100),
            age_interval: Nanos::from_secs(1),
            table_size: 1 << 20,
        }
    }
}

/// What the manager has done.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ManagerStats {
    /// Session rules installed now, in force or waiting for a swap (the
    /// base jumps are not counted; nor are they in the budget).
    pub rules: usize,
    /// Sessions whose rules are in force now.
    pub sessions_offloaded: usize,
    /// Rules ever created.
    pub created: u64,
    /// Rules ever removed.
    pub destroyed: u64,
    /// Sessions left on the software path, by [`Refusal`] (in
    /// [`Refusal::ALL`] order).
    pub refused: [u64; Refusal::ALL.len()],
    /// Base rules the backend refused (then everything is software).
    pub base_refused: u64,
    /// Rules removed by reconciliation (their session was gone).
    pub reconciled: u64,
    /// Sessions sent back to software because the NIC found a rule idle.
    pub aged: u64,
    /// Configurations whose rules were swapped in.
    pub swaps: u64,
    /// Template tables made.
    pub tables: usize,
}

impl ManagerStats {
    /// Sessions refused for `reason`.
    #[must_use]
    pub fn refusals(&self, reason: Refusal) -> u64 {
        self.refused.get(reason as usize).copied().unwrap_or(0)
    }
}

#[derive(Clone, Debug, Default)]
struct Entry {
    id: Option<SessionId>,
    /// Rules in the group in force.
    rules: heapless::Vec<RuleHandle, MAX_SESSION_RULES>,
    /// Rules in the incoming group, waiting for the swap.
    next: heapless::Vec<RuleHandle, MAX_SESSION_RULES>,
    /// What its rules were, group and AGE context aside: a new
    /// configuration that gives the same rules keeps them in force.
    print: u64,
    /// Why it is in software: the backend refused it (left there until
    /// it changes), or the queue was full (queued again later).
    refused: Option<Refusal>,
}

/// A template table the manager made (or tried to: a backend that refuses
/// a shape refuses it once).
#[derive(Debug)]
struct Table {
    spec: TableSpec,
    made: Result<TableId, OffloadError>,
}

/// A new configuration's rules going in.
#[derive(Clone, Copy, Debug)]
struct Transition {
    /// The group they go to.
    group: u32,
    /// Queue positions still ahead that were queued for it.
    remaining: usize,
}

/// An instance's shared counter and its last reading.
#[derive(Clone, Debug)]
struct Shared {
    name: Name,
    counter: CounterId,
    last: Counts,
}

/// Keeps a [`FlowOffload`] backend's rules in step with a [`Datapath`].
#[derive(Debug)]
pub struct OffloadManager<B> {
    backend: B,
    options: ManagerOptions,
    /// The session group in force.
    group: u32,
    /// The base jumps in force, and their priority in group 0 (0 or 1).
    jumps: Vec<RuleHandle>,
    jump_priority: u32,
    transition: Option<Transition>,
    tables: Vec<Table>,
    /// The table of the `n`th rule of the last session placed.
    recent: [Option<usize>; MAX_SESSION_RULES],
    /// The table `find_place` found last.
    last_table: Option<usize>,
    entries: Vec<Entry>,
    pending: VecDeque<SessionId>,
    /// Per instance of the configuration in force.
    counters: Vec<Option<Shared>>,
    /// The encapsulations towards peers defined with the backend.
    encaps: Vec<(VxlanTunnel, EncapId)>,
    /// Why the last shared counter could not be made: what sessions
    /// through an instance without one are refused for.
    counter_error: Option<OffloadError>,
    /// Counters of instances gone, removed at the next swap (rules in
    /// force may still name them).
    retired: Vec<CounterId>,
    /// The ports of the configuration in force, in order: rules name
    /// ports by their place in it.
    ports: Vec<Name>,
    last_meter: Nanos,
    last_age: Nanos,
    /// The latest time `poll` was given.
    clock: Nanos,
    stats: ManagerStats,
    reasons: heapless::Vec<(&'static str, u64), REASONS>,
    scratch: Vec<Rule>,
    places: Vec<Place>,
    results: Vec<Result<RuleHandle, OffloadError>>,
    aged: Vec<u64>,
    /// Per session in the batch: id, first rule, rules, fingerprint.
    owners: Vec<(SessionId, usize, usize, u64)>,
}

impl<B: FlowOffload> OffloadManager<B> {
    /// A manager for `dp` over `backend` (configured and started): makes
    /// the instances' shared counters and the base jumps.
    pub fn new(backend: B, dp: &Datapath, options: ManagerOptions) -> Self {
        let mut m = Self {
            backend,
            options,
            group: SESSION_GROUPS[0],
            jumps: Vec::new(),
            jump_priority: 0,
            transition: None,
            tables: Vec::new(),
            recent: [None; MAX_SESSION_RULES],
            last_table: None,
            entries: alloc::vec![Entry::default(); dp.sessions().capacity()],
            pending: VecDeque::with_capacity(options.batch * 4),
            counters: Vec::new(),
            encaps: Vec::new(),
            counter_error: None,
            retired: Vec::new(),
            ports: port_names(dp),
            last_meter: Nanos(0),
            last_age: Nanos(0),
            clock: Nanos(0),
            stats: ManagerStats::default(),
            reasons: heapless::Vec::new(),
            scratch: Vec::with_capacity(options.batch * MAX_SESSION_RULES),
            places: Vec::with_capacity(options.batch * MAX_SESSION_RULES),
            results: Vec::with_capacity(options.batch * MAX_SESSION_RULES),
            aged: Vec::new(),
            owners: Vec::with_capacity(options.batch),
        };
        m.update_counters(dp);
        m.jumps = m.make_jumps(dp, m.group, m.jump_priority);
        m
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, the manager done with.
    pub fn into_backend(self) -> B {
        self.backend
    }

    /// The backend, to drive (the software eSwitch processes frames).
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// What the manager has done.
    #[must_use]
    pub const fn stats(&self) -> &ManagerStats {
        &self.stats
    }

    /// Why sessions were refused, in the backend's words, with how many
    /// (the first [`REASONS`] distinct reasons).
    #[must_use]
    pub fn refusal_reasons(&self) -> &[(&'static str, u64)] {
        &self.reasons
    }

    /// The session group in force.
    #[must_use]
    pub const fn group(&self) -> u32 {
        self.group
    }

    /// True while a new configuration's rules are going in.
    #[must_use]
    pub const fn swapping(&self) -> bool {
        self.transition.is_some()
    }

    /// True when the session's rules are in force.
    #[must_use]
    pub fn is_offloaded(&self, id: SessionId) -> bool {
        self.entries
            .get(id.slot() as usize)
            .is_some_and(|e| e.id == Some(id) && !e.rules.is_empty())
    }

    /// The shared counter of each instance of the configuration in force.
    pub fn counters(&self) -> impl Iterator<Item = (InstanceId, CounterId)> + '_ {
        self.counters.iter().enumerate().filter_map(|(n, c)| {
            let c = c.as_ref()?;
            Some((InstanceId::from_index(u16::try_from(n).ok()?), c.counter))
        })
    }

    /// The base jumps in force.
    #[must_use]
    pub fn jump_rules(&self, dp: &Datapath) -> Vec<Rule> {
        base_rules(dp.config(), self.group, self.jump_priority).unwrap_or_default()
    }

    /// Appends the rules in force of the sessions in slots `from..`, at
    /// most `sessions` of them; returns the slot to go on from (`None`:
    /// the last was seen). They are made again as they were made, so what
    /// they say is what the backend holds.
    pub fn rules_in_force(
        &self,
        dp: &Datapath,
        from: usize,
        sessions: usize,
        out: &mut Vec<Rule>,
    ) -> Option<usize> {
        let mut seen = 0;
        for slot in from..self.entries.len() {
            if seen == sessions {
                return Some(slot);
            }
            let Some(e) = self.entries.get(slot) else {
                break;
            };
            let Some(id) = e.id.filter(|_| !e.rules.is_empty()) else {
                continue;
            };
            let Some(session) = dp.session(id) else {
                continue;
            };
            let known = Known {
                counters: &self.counters,
                encaps: &self.encaps,
            };
            let age = age_of(dp, session, id);
            if session_rules(dp.config(), session, self.group, known, age, out).is_ok() {
                seen += 1;
            }
        }
        None
    }

    /// Sessions waiting for rules.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Shared counters for the instances of `dp`'s configuration: the
    /// ones of instances kept by name carry on, new instances get theirs,
    /// those of instances gone are retired.
    fn update_counters(&mut self, dp: &Datapath) {
        let config = dp.config();
        let mut old: Vec<Shared> = core::mem::take(&mut self.counters)
            .into_iter()
            .flatten()
            .collect();
        let mut counters = Vec::with_capacity(config.instances().len());
        for inst in config.instances() {
            let kept = old
                .iter()
                .position(|s| s.name == *inst.name())
                .map(|p| old.swap_remove(p));
            let shared = kept.or_else(|| {
                let port = inst
                    .attachment()
                    .entry(chaingate_shared::config::Travel::ToWan);
                let switch = self.backend.switch_of(port);
                match self.backend.create_counter(switch) {
                    Ok(counter) => Some(Shared {
                        name: inst.name().clone(),
                        counter,
                        last: Counts::default(),
                    }),
                    Err(e) => {
                        self.counter_error = Some(e);
                        None
                    }
                }
            });
            counters.push(shared);
        }
        self.retired.extend(old.into_iter().map(|s| s.counter));
        self.counters = counters;
        // Encapsulations are kept once defined: a peer's tunnels change
        // only with the chains or the peer's address.
        for t in tunnels(config) {
            if self.encaps.iter().any(|(k, _)| *k == t) {
                continue;
            }
            match self.backend.create_encap(&t) {
                Ok(id) => self.encaps.push((t, id)),
                Err(e) => self.counter_error = Some(e),
            }
        }
    }

    /// The place of `rule`, the `nth` of its session (sessions list their
    /// rules in the same order, so the table of the `nth` rule of the last
    /// session is tried first): its table (made on first need) and
    /// actions template.
    fn place(&mut self, rule: &Rule, nth: usize) -> Result<Place, OffloadError> {
        if let Some(i) = self.recent.get(nth).copied().flatten()
            && let Some(t) = self.tables.get(i)
            && let Ok(id) = t.made
            && let Ok(actions) = t.spec.place(rule)
            && rule.pattern.first().is_none_or(|first| match first {
                Item::RepresentedPort(p) => self.backend.switch_of(*p) == t.spec.switch,
                _ => t.spec.switch == 0,
            })
        {
            return Ok(Place { table: id, actions });
        }
        let placed = self.find_place(rule);
        if let (Ok(_), Some(slot)) = (&placed, self.recent.get_mut(nth)) {
            *slot = self.last_table;
        }
        placed
    }

    fn find_place(&mut self, rule: &Rule) -> Result<Place, OffloadError> {
        let switch = rule
            .pattern
            .iter()
            .find_map(|i| match i {
                Item::RepresentedPort(p) => Some(self.backend.switch_of(*p)),
                _ => None,
            })
            .unwrap_or(0);
        // The same pattern serves rules from an uplink and from an
        // instance (a customer's tag looks like a segment tag): each kind
        // has its own table, with its own actions templates.
        let found = self.tables.iter().position(|t| {
            t.spec.switch == switch && t.spec.same_pattern(rule) && t.spec.place(rule).is_ok()
        });
        let table = match found {
            Some(i) => i,
            None => {
                let templates: heapless::Vec<ActionsTemplate, 4> = templates_for(rule)
                    .iter()
                    .map(|t| t.iter().copied().collect())
                    .collect();
                let spec = TableSpec::of(rule, &templates, switch, self.options.table_size);
                let made = self.backend.create_table(&spec);
                if made.is_ok() {
                    self.stats.tables += 1;
                }
                self.tables.push(Table { spec, made });
                self.tables.len() - 1
            }
        };
        self.last_table = Some(table);
        let t = self
            .tables
            .get(table)
            .ok_or(OffloadError::Invalid("no table"))?;
        let id = t.made?;
        let actions = t
            .spec
            .place(rule)
            .map_err(|m| OffloadError::Invalid(m.reason()))?;
        Ok(Place { table: id, actions })
    }

    /// Makes the rules of frames delivered for peers in `group` (see
    /// [`guest_rules`]); what cannot be made is counted as base rules
    /// refused, and those frames take the fast path.
    fn make_guest_rules(&mut self, dp: &Datapath, group: u32) -> Vec<RuleHandle> {
        let mut rules = Vec::new();
        let known = Known {
            counters: &self.counters,
            encaps: &self.encaps,
        };
        if guest_rules(dp.config(), group, &known, &mut rules).is_err() {
            self.stats.base_refused += 1;
            return Vec::new();
        }
        let mut placed = Vec::with_capacity(rules.len());
        let mut places = Vec::with_capacity(rules.len());
        for rule in rules {
            match self.find_place(&rule) {
                Ok(p) => {
                    placed.push(rule);
                    places.push(p);
                }
                Err(_) => self.stats.base_refused += 1,
            }
        }
        let mut out = Vec::new();
        self.backend.enqueue(&placed, &places, &mut out);
        let mut handles = Vec::new();
        for r in out {
            match r {
                Ok(h) => {
                    handles.push(h);
                    self.stats.created += 1;
                }
                Err(_) => self.stats.base_refused += 1,
            }
        }
        handles
    }

    /// Makes the base jumps to `group` at `priority` in group 0, and the
    /// rules of frames delivered for peers in `group`.
    fn make_jumps(&mut self, dp: &Datapath, group: u32, priority: u32) -> Vec<RuleHandle> {
        let mut guests = self.make_guest_rules(dp, group);
        let mut jumps = self.make_base_jumps(dp, group, priority);
        jumps.append(&mut guests);
        jumps
    }

    fn make_base_jumps(&mut self, dp: &Datapath, group: u32, priority: u32) -> Vec<RuleHandle> {
        let Ok(rules) = base_rules(dp.config(), group, priority) else {
            self.stats.base_refused += 1;
            return Vec::new();
        };
        let mut places = Vec::with_capacity(rules.len());
        for rule in &rules {
            match self.find_place(rule) {
                Ok(p) => places.push(p),
                Err(_) => {
                    self.stats.base_refused += rules.len() as u64;
                    return Vec::new();
                }
            }
        }
        let mut out = Vec::new();
        self.backend.enqueue(&rules, &places, &mut out);
        let mut handles = Vec::new();
        for r in out {
            match r {
                Ok(h) => {
                    handles.push(h);
                    self.stats.created += 1;
                }
                Err(_) => self.stats.base_refused += 1,
            }
        }
        handles
    }

    /// Takes the data path's events and installs, replaces or removes
    /// rules accordingly.
    pub fn handle_events(&mut self, dp: &mut Datapath) {
        while let Some(event) = dp.next_event() {
            match event {
                Event::Install(id) => self.queue(id, false),
                Event::Update(id) => {
                    self.remove_rules(dp, id);
                    self.queue(id, false);
                }
                Event::Remove(id) => self.remove(dp, id),
            }
        }
        let mut budget = self.options.install_budget;
        while budget > 0 && !self.pending.is_empty() {
            budget = budget.saturating_sub(self.flush(dp, budget));
        }
        if self.transition.is_some_and(|t| t.remaining == 0) {
            self.swap(dp);
        }
    }

    /// After the data path took a new configuration: every session's rules
    /// for it go into the other group, behind the old ones, and are
    /// swapped in once all are there (see the module's notes).
    pub fn reconfigured(&mut self, dp: &mut Datapath) {
        // A swap still under way is abandoned: its rules are remade for
        // the newest configuration.
        let mut abandoned = Vec::new();
        for e in &mut self.entries {
            abandoned.extend(e.next.drain(..));
        }
        self.destroy(&abandoned);
        self.update_counters(dp);
        // Rules name ports by their place in the configuration: if the
        // ports moved, no old rule means what it did, and all go now.
        let ports = port_names(dp);
        let ports_moved = ports != self.ports;
        self.ports = ports;
        let group = self.other_group();
        self.pending.clear();
        // Sessions whose rules change leave the old group at once: their
        // packets go to the fast path, which knows the new paths.
        let live: Vec<SessionId> = dp.sessions().ids().collect();
        for id in &live {
            let Some(e) = self.entries.get(id.slot() as usize) else {
                continue;
            };
            if e.id != Some(*id) || e.rules.is_empty() {
                continue;
            }
            let keep = !ports_moved
                && dp.session(*id).is_some_and(|s| {
                    self.scratch.clear();
                    let age = age_of(dp, s, *id);
                    let known = Known {
                        counters: &self.counters,
                        encaps: &self.encaps,
                    };
                    session_rules(dp.config(), s, group, known, age, &mut self.scratch).is_ok()
                        && fingerprint(&self.scratch) == e.print
                });
            if !keep {
                self.remove_rules(dp, *id);
            }
        }
        self.scratch.clear();
        for e in &mut self.entries {
            if e.id.is_some_and(|id| dp.session(id).is_none()) {
                e.id = None;
            }
        }
        let mut queued = 0;
        for id in live {
            if dp.session(id).is_some_and(|s| s.wants_offload()) {
                self.queue(id, true);
                queued += 1;
            }
        }
        self.transition = Some(Transition {
            group,
            remaining: queued,
        });
        self.handle_events(dp);
    }

    fn other_group(&self) -> u32 {
        if self.group == SESSION_GROUPS[0] {
            SESSION_GROUPS[1]
        } else {
            SESSION_GROUPS[0]
        }
    }

    /// Puts the incoming group in force: new jumps, then the old ones and
    /// the old group's rules go.
    fn swap(&mut self, dp: &mut Datapath) {
        let Some(t) = self.transition.take() else {
            return;
        };
        let priority = 1 - self.jump_priority;
        let jumps = self.make_jumps(dp, t.group, priority);
        let old = core::mem::replace(&mut self.jumps, jumps);
        self.destroy_base(&old);
        let mut old_rules = Vec::new();
        let mut offloaded = 0;
        let now = self.clock;
        for e in &mut self.entries {
            let was = !e.rules.is_empty();
            old_rules.extend(e.rules.drain(..));
            e.rules = core::mem::take(&mut e.next);
            let is = !e.rules.is_empty();
            offloaded += usize::from(is);
            if let Some(id) = e.id
                && was != is
            {
                dp.set_hardware(id, is, now);
            }
        }
        self.destroy(&old_rules);
        self.stats.sessions_offloaded = offloaded;
        for c in core::mem::take(&mut self.retired) {
            let _ = self.backend.destroy_counter(c);
        }
        self.group = t.group;
        self.jump_priority = priority;
        self.stats.swaps += 1;
    }

    fn destroy(&mut self, handles: &[RuleHandle]) {
        let n = self.backend.destroy_batch(handles);
        self.stats.destroyed += n as u64;
        self.stats.rules = self.stats.rules.saturating_sub(n);
    }

    fn destroy_base(&mut self, handles: &[RuleHandle]) {
        let n = self.backend.destroy_batch(handles);
        self.stats.destroyed += n as u64;
    }

    /// Queues `id` for rules; `always` past the queue's limit (a new
    /// configuration's sessions).
    fn queue(&mut self, id: SessionId, always: bool) {
        let full = !always && self.pending.len() >= self.options.max_pending;
        if let Some(e) = self.entries.get_mut(id.slot() as usize) {
            if e.id != Some(id) {
                *e = Entry {
                    id: Some(id),
                    ..Entry::default()
                };
            }
            e.refused = None;
            if full {
                self.refuse(id, Refusal::Budget, "the install queue is full");
            } else {
                self.pending.push_back(id);
            }
        }
    }

    /// Removes a session's rules, in force and incoming, and forgets it.
    fn remove(&mut self, dp: &mut Datapath, id: SessionId) {
        self.remove_rules(dp, id);
        if let Some(e) = self.entries.get_mut(id.slot() as usize)
            && e.id == Some(id)
        {
            e.id = None;
        }
    }

    /// Removes a session's rules (it stays known).
    fn remove_rules(&mut self, dp: &mut Datapath, id: SessionId) {
        let Some(e) = self.entries.get_mut(id.slot() as usize) else {
            return;
        };
        if e.id != Some(id) {
            return;
        }
        let mut rules: heapless::Vec<RuleHandle, { 2 * MAX_SESSION_RULES }> =
            e.rules.drain(..).collect();
        let had = !rules.is_empty();
        rules.extend(e.next.drain(..));
        if had {
            self.stats.sessions_offloaded = self.stats.sessions_offloaded.saturating_sub(1);
            dp.set_hardware(id, false, self.clock);
        }
        self.destroy(&rules);
    }

    fn refuse(&mut self, id: SessionId, why: Refusal, reason: &'static str) {
        if let Some(c) = self.stats.refused.get_mut(why as usize) {
            *c += 1;
        }
        match self.reasons.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => {
                let _ = self.reasons.push((reason, 1));
            }
        }
        if let Some(e) = self.entries.get_mut(id.slot() as usize)
            && e.id == Some(id)
        {
            e.refused = Some(why);
        }
    }

    /// The group rules made now go to.
    fn target_group(&self) -> u32 {
        self.transition.map_or(self.group, |t| t.group)
    }

    /// Installs queued sessions in one batch of at most `batch` sessions
    /// and `budget` rules; returns the rules it tried.
    fn flush(&mut self, dp: &mut Datapath, budget: usize) -> usize {
        self.scratch.clear();
        self.places.clear();
        self.owners.clear();
        let group = self.target_group();
        let mut refused: Vec<(SessionId, Refusal, &'static str)> = Vec::new();
        let mut sessions = 0;
        let mut popped = 0;
        while sessions < self.options.batch && self.scratch.len() < budget {
            let Some(id) = self.pending.pop_front() else {
                break;
            };
            popped += 1;
            let Some(session) = dp.session(id).filter(|s| s.wants_offload()) else {
                continue;
            };
            sessions += 1;
            let start = self.scratch.len();
            let age = age_of(dp, session, id);
            let known = Known {
                counters: &self.counters,
                encaps: &self.encaps,
            };
            if let Err(e) =
                session_rules(dp.config(), session, group, known, age, &mut self.scratch)
            {
                self.scratch.truncate(start);
                let (why, reason) = match (e, self.counter_error) {
                    (GenerateError::Unsupported(super::generate::NO_COUNTER), Some(c)) => {
                        (c.refusal(), reason_of(&c))
                    }
                    (GenerateError::Unsupported(what), _) => (Refusal::Unsupported, what),
                    (GenerateError::TooLong, _) => (
                        Refusal::Unsupported,
                        "the rule needs more items or actions than fit",
                    ),
                    (GenerateError::Stale, _) => (
                        Refusal::Other,
                        "the session refers to another configuration",
                    ),
                };
                refused.push((id, why, reason));
                continue;
            }
            let n = self.scratch.len() - start;
            if self.stats.rules + n > self.options.budget {
                self.scratch.truncate(start);
                refused.push((id, Refusal::Budget, "the rule budget is spent"));
                continue;
            }
            let mut placed = true;
            let scratch = core::mem::take(&mut self.scratch);
            for (k, rule) in scratch.iter().enumerate().skip(start).take(n) {
                match self.place(rule, k - start) {
                    Ok(p) => self.places.push(p),
                    Err(e) => {
                        refused.push((id, e.refusal(), reason_of(&e)));
                        placed = false;
                        break;
                    }
                }
            }
            self.scratch = scratch;
            if !placed {
                self.scratch.truncate(start);
                self.places.truncate(start);
                continue;
            }
            let print = fingerprint(self.scratch.get(start..start + n).unwrap_or(&[]));
            self.owners.push((id, start, n, print));
        }
        if let Some(t) = self.transition.as_mut() {
            t.remaining = t.remaining.saturating_sub(popped);
        }
        for (id, why, reason) in refused {
            self.refuse(id, why, reason);
        }
        let tried = self.scratch.len();
        if tried == 0 {
            // Nothing to install, but the queue moved: count one so that
            // the caller's loop ends when the queue is drained.
            return 1;
        }
        self.backend
            .enqueue(&self.scratch, &self.places, &mut self.results);
        let owners = core::mem::take(&mut self.owners);
        let incoming = self.transition.is_some();
        for &(id, start, n, print) in &owners {
            let results = self.results.get(start..start + n).unwrap_or(&[]);
            let failure = results.iter().find_map(|r| r.err());
            let handles: heapless::Vec<RuleHandle, MAX_SESSION_RULES> =
                results.iter().filter_map(|r| r.ok()).collect();
            self.stats.created += handles.len() as u64;
            self.stats.rules += handles.len();
            match failure {
                None => {
                    // The rules it replaces, or these if the session
                    // went meanwhile.
                    let stale = match self
                        .entries
                        .get_mut(id.slot() as usize)
                        .filter(|e| e.id == Some(id))
                    {
                        Some(e) => {
                            e.print = print;
                            if incoming {
                                core::mem::replace(&mut e.next, handles)
                            } else {
                                if e.rules.is_empty() {
                                    self.stats.sessions_offloaded += 1;
                                    dp.set_hardware(id, true, self.clock);
                                }
                                core::mem::replace(&mut e.rules, handles)
                            }
                        }
                        None => handles,
                    };
                    self.destroy(&stale);
                }
                Some(error) => {
                    // All or nothing: a partly installed session would
                    // split between hardware and software for no gain.
                    self.destroy(&handles);
                    self.refuse(id, error.refusal(), reason_of(&error));
                }
            }
        }
        self.owners = owners;
        tried
    }

    /// Feeds the NIC's findings to the fast path when their intervals
    /// come: instance load to the meters, idle rules to the sessions; and
    /// reconciles with the session table.
    pub fn poll(&mut self, dp: &mut Datapath, now: Nanos) {
        self.clock = self.clock.max(now);
        if now.since(self.last_meter) >= self.options.meter_interval {
            self.last_meter = now;
            for (n, slot) in self.counters.iter_mut().enumerate() {
                let Some(shared) = slot else {
                    continue;
                };
                if let Ok(current) = self.backend.query_counter(shared.counter) {
                    let delta = current.since(shared.last);
                    shared.last = current;
                    let id = InstanceId::from_index(u16::try_from(n).unwrap_or(u16::MAX));
                    dp.add_counts(id, delta.bytes, delta.packets);
                }
            }
        }
        if now.since(self.last_age) >= self.options.age_interval {
            self.last_age = now;
            self.age(dp, now);
            self.reconcile(dp);
        }
    }

    /// Sends the sessions of aged rules back to software.
    fn age(&mut self, dp: &mut Datapath, now: Nanos) {
        let mut aged = core::mem::take(&mut self.aged);
        aged.clear();
        self.backend.aged(now, &mut aged);
        for context in &aged {
            let id = SessionId::from_bits(*context);
            let known = self
                .entries
                .get(id.slot() as usize)
                .is_some_and(|e| e.id == Some(id) && !(e.rules.is_empty() && e.next.is_empty()));
            if known {
                self.remove_rules(dp, id);
                dp.demote(id, now);
                self.stats.aged += 1;
            }
        }
        self.aged = aged;
    }

    fn reconcile(&mut self, dp: &mut Datapath) {
        let gone: Vec<SessionId> = self
            .entries
            .iter()
            .filter_map(|e| e.id)
            .filter(|id| dp.session(*id).is_none())
            .collect();
        for id in gone {
            let had = self
                .entries
                .get(id.slot() as usize)
                .map_or(0, |e| e.rules.len() + e.next.len());
            self.remove(dp, id);
            self.stats.reconciled += had as u64;
        }
        // A session refused for want of room is tried again once rules
        // have been removed since; one the backend cannot express is not.
        let room = self.stats.rules + MAX_SESSION_RULES
            <= self
                .options
                .budget
                .min(self.backend.capacity().unwrap_or(usize::MAX));
        let again: Vec<SessionId> = dp
            .sessions()
            .ids()
            .filter(|id| dp.session(*id).is_some_and(|s| s.wants_offload()))
            .filter(|id| {
                self.entries.get(id.slot() as usize).is_none_or(|e| {
                    // Never heard of (an event was lost), left out when the
                    // queue was full, or refused when the table was.
                    e.id != Some(*id)
                        || e.refused == Some(Refusal::Budget)
                        || (room && e.refused == Some(Refusal::Full))
                })
            })
            .collect();
        for id in again {
            self.queue(id, false);
        }
    }
}

/// The names of the configuration's ports, in order.
fn port_names(dp: &Datapath) -> Vec<Name> {
    dp.config()
        .ports()
        .iter()
        .map(|p| p.name().clone())
        .collect()
}

/// The shared counter of instance `i`.
fn shared_counter(counters: &[Option<Shared>], i: InstanceId) -> Option<CounterId> {
    counters
        .get(i.index())
        .and_then(Option::as_ref)
        .map(|s| s.counter)
}

/// The backend's handles the manager knows: shared counters and
/// encapsulations.
struct Known<'a> {
    counters: &'a [Option<Shared>],
    encaps: &'a [(VxlanTunnel, EncapId)],
}

impl Handles for Known<'_> {
    fn counter(&self, instance: InstanceId) -> Option<CounterId> {
        shared_counter(self.counters, instance)
    }

    fn encap(&self, tunnel: &VxlanTunnel) -> Option<EncapId> {
        self.encaps
            .iter()
            .find(|(t, _)| t == tunnel)
            .map(|(_, id)| *id)
    }
}

/// The AGE a session's rules carry: half its idle timeout (at least a
/// second), and its id to come back with.
fn age_of(dp: &Datapath, session: &crate::session::Session, id: SessionId) -> Age {
    let idle = dp.timeouts().idle(session.key().proto(), session.conn());
    let half = (idle.0 / 2_000_000_000).clamp(1, u64::from(Age::MAX_TIMEOUT_S));
    Age {
        timeout_s: u32::try_from(half).unwrap_or(Age::MAX_TIMEOUT_S),
        context: id.to_bits(),
    }
}

/// What a session's rules are, group and AGE context aside: what decides
/// whether a new configuration changes them.
fn fingerprint(rules: &[Rule]) -> u64 {
    let mut h = WordHasher(0x0052_554C_4553); // "RULES"
    for r in rules {
        h.write_u32(r.attr.priority);
        h.write_u8(u8::from(r.attr.ingress) | (u8::from(r.attr.transfer) << 1));
        core::hash::Hash::hash(&r.pattern, &mut h);
        for a in &r.actions {
            match a {
                Action::Age(age) => {
                    h.write_u8(0xA6);
                    h.write_u32(age.timeout_s);
                }
                other => core::hash::Hash::hash(other, &mut h),
            }
        }
    }
    h.finish()
}

/// A multiply-rotate hasher that takes a word a step (no per-byte loop
/// where a word will do): fingerprints are made for every session
/// installed.
struct WordHasher(u64);

impl WordHasher {
    fn mix(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(23) ^ w).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

impl Hasher for WordHasher {
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.mix(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            if let Some(dst) = w.get_mut(..rest.len()) {
                dst.copy_from_slice(rest);
            }
            self.mix(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 56));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.mix(u64::from(i));
    }

    fn write_u16(&mut self, i: u16) {
        self.mix(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.mix(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.mix(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.mix(i as u64);
    }
}

/// An operator's reading of a refusal.
const fn reason_of(e: &OffloadError) -> &'static str {
    match e {
        OffloadError::Full => "rule table full",
        OffloadError::Unsupported(what) | OffloadError::Invalid(what) => what,
        OffloadError::NoSys => "no flow rule support on this port",
        OffloadError::Exists => "an equal rule exists",
        OffloadError::UnknownHandle => "no such rule, table or counter",
        OffloadError::Other(_) => "another error",
    }
}
