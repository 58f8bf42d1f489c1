//! The offload manager: keeps a backend's rules in step with the fast
//! path's sessions.
//!
//! - It drains the data path's events: an opened session is queued for
//!   rules, a changed one has its rules replaced, an ended one removed.
//!   Queued sessions are installed in batches (one `create_batch` per
//!   flush), within a rule budget.
//! - A session whose rules a backend refuses (or that would go over the
//!   budget) stays on the software path, where the fast path forwards its
//!   packets: nothing is dropped. The rules it did get are removed again,
//!   so a session is either wholly in hardware or wholly in software, and
//!   the refusal is counted by reason.
//! - Every meter interval it reads each instance's shared counter and feeds
//!   the deltas to the fast path's meters; every age interval it reads each
//!   offloaded session's rule counters and tells the fast path the
//!   sessions that moved packets, so only idle sessions time out.
//! - At the age interval it also reconciles: rules of sessions the fast
//!   path no longer has are removed (an event may have been lost), sessions
//!   the fast path has but the manager never heard of are queued.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use chaingate_shared::config::MAX_HOPS;
use chaingate_shared::{InstanceId, Nanos};

use super::generate::{GenerateError, base_rules, session_rules};
use super::{CounterId, Counts, FlowOffload, OffloadError, Refusal, Rule, RuleHandle};
use crate::datapath::{Datapath, Event};
use crate::session::SessionId;

/// Rules one session has at most: two directions of (hops + 1) steps.
pub const MAX_SESSION_RULES: usize = 2 * (MAX_HOPS + 1);

/// How the manager paces itself.
#[derive(Clone, Copy, Debug)]
pub struct ManagerOptions {
    /// Rules installed at most (the backend may hold fewer).
    pub budget: usize,
    /// Sessions installed per `create_batch`.
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
    /// How often session rule counters are read for idleness, and the
    /// manager reconciles with the session table.
    pub age_interval: Nanos,
}

impl Default for ManagerOptions {
    fn default() -> Self {
        Self {
            budget: 1 << 20,
            batch: 64,
            install_budget: 1 << 12,
            max_pending: 1 << 16,
            meter_interval: Nanos::from_millis(100),
            age_interval: Nanos::from_secs(5),
        }
    }
}

/// What the manager has done.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ManagerStats {
    /// Session rules installed now (the base rules, a jump and a miss per
    /// port, are not counted; nor are they in the budget).
    pub rules: usize,
    /// Sessions whose rules are installed now.
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
    rules: heapless::Vec<RuleHandle, MAX_SESSION_RULES>,
    /// How many of `rules` (the first ones) carry the opener's packets.
    from_opener: usize,
    /// Packets all its rules had counted at the last look.
    packets: u64,
    /// Why it is in software: the backend refused it (left there until
    /// it changes), or the queue was full (queued again later).
    refused: Option<Refusal>,
}

/// Keeps a [`FlowOffload`] backend's rules in step with a [`Datapath`].
#[derive(Debug)]
pub struct OffloadManager<B> {
    backend: B,
    options: ManagerOptions,
    base: Vec<RuleHandle>,
    entries: Vec<Entry>,
    pending: VecDeque<SessionId>,
    counters: Vec<Option<(CounterId, Counts)>>,
    last_meter: Nanos,
    last_age: Nanos,
    stats: ManagerStats,
    scratch: Vec<Rule>,
    results: Vec<Result<RuleHandle, OffloadError>>,
    /// Per session in the batch: id, first rule, rules, rules from the
    /// opener.
    owners: Vec<(SessionId, usize, usize, usize)>,
}

impl<B: FlowOffload> OffloadManager<B> {
    /// A manager for `dp` over `backend`: installs the base rules and the
    /// instances' shared counters.
    pub fn new(backend: B, dp: &Datapath, options: ManagerOptions) -> Self {
        let mut m = Self {
            backend,
            options,
            base: Vec::new(),
            entries: alloc::vec![Entry::default(); dp.sessions().capacity()],
            pending: VecDeque::with_capacity(options.batch * 4),
            counters: Vec::new(),
            last_meter: Nanos(0),
            last_age: Nanos(0),
            stats: ManagerStats::default(),
            scratch: Vec::with_capacity(options.batch * MAX_SESSION_RULES),
            results: Vec::with_capacity(options.batch * MAX_SESSION_RULES),
            owners: Vec::with_capacity(options.batch),
        };
        m.install_base(dp);
        m
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
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

    /// True when the session's rules are installed.
    #[must_use]
    pub fn is_offloaded(&self, id: SessionId) -> bool {
        self.entries
            .get(id.slot() as usize)
            .is_some_and(|e| e.id == Some(id) && !e.rules.is_empty())
    }

    fn install_base(&mut self, dp: &Datapath) {
        for h in core::mem::take(&mut self.base) {
            let _ = self.backend.destroy(h);
            self.stats.destroyed += 1;
        }
        for c in core::mem::take(&mut self.counters).into_iter().flatten() {
            let _ = self.backend.destroy_counter(c.0);
        }
        let config = dp.config();
        self.counters = (0..config.instances().len())
            .map(|_| {
                self.backend
                    .create_counter()
                    .ok()
                    .map(|c| (c, Counts::default()))
            })
            .collect();
        match base_rules(config) {
            Ok(rules) => {
                for rule in &rules {
                    match self.backend.create(rule) {
                        Ok(h) => {
                            self.base.push(h);
                            self.stats.created += 1;
                        }
                        Err(_) => self.stats.base_refused += 1,
                    }
                }
            }
            Err(_) => self.stats.base_refused += 1,
        }
    }

    /// Takes the data path's events and installs, replaces or removes
    /// rules accordingly.
    pub fn handle_events(&mut self, dp: &mut Datapath) {
        while let Some(event) = dp.next_event() {
            match event {
                Event::Install(id) => self.queue(id),
                Event::Update(id) => {
                    self.remove(id);
                    self.queue(id);
                }
                Event::Remove(id) => self.remove(id),
            }
        }
        let mut budget = self.options.install_budget;
        while budget > 0 && !self.pending.is_empty() {
            budget = budget.saturating_sub(self.flush(dp, budget));
        }
    }

    /// Sessions waiting for rules.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// After the data path took a new configuration: new base rules and
    /// counters, and every session's rules again (tags and ports may have
    /// changed).
    pub fn reconfigured(&mut self, dp: &mut Datapath) {
        let ids: Vec<SessionId> = self.entries.iter().filter_map(|e| e.id).collect();
        for id in &ids {
            self.remove(*id);
        }
        self.pending.clear();
        self.install_base(dp);
        let live: Vec<SessionId> = dp.sessions().ids().collect();
        for id in live {
            self.queue(id);
        }
        self.handle_events(dp);
    }

    fn queue(&mut self, id: SessionId) {
        let full = self.pending.len() >= self.options.max_pending;
        if let Some(e) = self.entries.get_mut(id.slot() as usize) {
            *e = Entry {
                id: Some(id),
                ..Entry::default()
            };
            if full {
                self.refuse(id, Refusal::Budget);
            } else {
                self.pending.push_back(id);
            }
        }
    }

    fn remove(&mut self, id: SessionId) {
        let Some(e) = self.entries.get_mut(id.slot() as usize) else {
            return;
        };
        if e.id != Some(id) {
            return;
        }
        let rules = core::mem::take(&mut e.rules);
        e.id = None;
        if !rules.is_empty() {
            self.stats.sessions_offloaded = self.stats.sessions_offloaded.saturating_sub(1);
        }
        for h in rules {
            if self.backend.destroy(h).is_ok() {
                self.stats.destroyed += 1;
                self.stats.rules = self.stats.rules.saturating_sub(1);
            }
        }
    }

    fn refuse(&mut self, id: SessionId, why: Refusal) {
        if let Some(c) = self.stats.refused.get_mut(why as usize) {
            *c += 1;
        }
        if let Some(e) = self.entries.get_mut(id.slot() as usize)
            && e.id == Some(id)
        {
            e.refused = Some(why);
        }
    }

    /// Installs queued sessions in one batch of at most `batch` sessions
    /// and `budget` rules; returns the rules it tried.
    fn flush(&mut self, dp: &Datapath, budget: usize) -> usize {
        self.scratch.clear();
        self.owners.clear();
        let counters = &self.counters;
        let counter = |i: InstanceId| counters.get(i.index()).copied().flatten().map(|(c, _)| c);
        let mut refused: Vec<(SessionId, Refusal)> = Vec::new();
        let mut sessions = 0;
        while sessions < self.options.batch && self.scratch.len() < budget {
            let Some(id) = self.pending.pop_front() else {
                break;
            };
            let Some(session) = dp.session(id) else {
                continue;
            };
            sessions += 1;
            let start = self.scratch.len();
            let from_opener = match session_rules(dp.config(), session, counter, &mut self.scratch)
            {
                Ok(n) => n,
                Err(e) => {
                    self.scratch.truncate(start);
                    refused.push((
                        id,
                        match e {
                            GenerateError::Unsupported(_) | GenerateError::TooLong => {
                                Refusal::Unsupported
                            }
                            GenerateError::Stale => Refusal::Other,
                        },
                    ));
                    continue;
                }
            };
            let n = self.scratch.len() - start;
            if self.stats.rules + start + n > self.options.budget {
                self.scratch.truncate(start);
                refused.push((id, Refusal::Budget));
                continue;
            }
            self.owners.push((id, start, n, from_opener));
        }
        for (id, why) in refused {
            self.refuse(id, why);
        }
        let tried = self.scratch.len();
        if tried == 0 {
            // Nothing to install, but the queue moved: count one so that
            // the caller's loop ends when the queue is drained.
            return 1;
        }
        self.backend.create_batch(&self.scratch, &mut self.results);
        let owners = core::mem::take(&mut self.owners);
        for &(id, start, n, from_opener) in &owners {
            let results = self.results.get(start..start + n).unwrap_or(&[]);
            let failure = results.iter().find_map(|r| r.err());
            let handles: heapless::Vec<RuleHandle, MAX_SESSION_RULES> =
                results.iter().filter_map(|r| r.ok()).collect();
            self.stats.created += handles.len() as u64;
            match failure {
                None => {
                    if let Some(e) = self
                        .entries
                        .get_mut(id.slot() as usize)
                        .filter(|e| e.id == Some(id))
                    {
                        self.stats.rules += handles.len();
                        self.stats.sessions_offloaded += 1;
                        e.rules = handles;
                        e.from_opener = from_opener;
                        e.packets = 0;
                        continue;
                    }
                    self.destroy_all(&handles);
                }
                Some(error) => {
                    // All or nothing: a partly installed session would
                    // split between hardware and software for no gain.
                    self.destroy_all(&handles);
                    self.refuse(id, error.refusal());
                }
            }
        }
        self.owners = owners;
        tried
    }

    fn destroy_all(&mut self, handles: &[RuleHandle]) {
        for h in handles {
            if self.backend.destroy(*h).is_ok() {
                self.stats.destroyed += 1;
            }
        }
    }

    /// Feeds counters to the fast path when their intervals come: instance
    /// load to the meters, session activity to the idle timers; and
    /// reconciles with the session table.
    pub fn poll(&mut self, dp: &mut Datapath, now: Nanos) {
        if now.since(self.last_meter) >= self.options.meter_interval {
            self.last_meter = now;
            for (n, slot) in self.counters.iter_mut().enumerate() {
                let Some((counter, last)) = slot else {
                    continue;
                };
                if let Ok(current) = self.backend.query_counter(*counter) {
                    let delta = current.since(*last);
                    *last = current;
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

    fn age(&mut self, dp: &mut Datapath, now: Nanos) {
        for e in &mut self.entries {
            let Some(id) = e.id else { continue };
            if e.rules.is_empty() {
                continue;
            }
            let (mut opener, mut responder) = (0u64, 0u64);
            for (n, h) in e.rules.iter().enumerate() {
                let packets = self.backend.query(*h).map_or(0, |c| c.packets);
                if n < e.from_opener {
                    opener += packets;
                } else {
                    responder += packets;
                }
            }
            if opener + responder != e.packets {
                e.packets = opener + responder;
                dp.mark_active(id, now, responder > 0);
            }
        }
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
                .map_or(0, |e| e.rules.len());
            self.remove(id);
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
            self.queue(id);
        }
    }
}
