//! The session table: every connection the gateway has decided on, found
//! by either direction's flow key.
//!
//! Layout: a slab of session records with stable slots (a [`SessionId`] is
//! a slot and a generation, so the offload layer can refer to a session
//! after others come and go), and an open-addressing index (linear
//! probing, power-of-two size, at most half full) of `(hash tag, slot)`
//! pairs that moves freely: deletion shifts entries back instead of
//! leaving tombstones, so probe lengths stay short however long the table
//! runs. Both are allocated once, at creation; nothing is allocated per
//! packet.
//!
//! Keys are normalised (lower endpoint first) and hashed with the symmetric
//! flow hash, so both directions of a connection find the same session.
//!
//! When the table is full, the [`Admission`] policy decides: refuse the new
//! connection, or evict the least recently seen of a sample of sessions
//! (an approximation of LRU that costs a few slot reads instead of a list
//! update on every packet). Either way a counter says so.

pub mod tcp;

use alloc::vec;
use alloc::vec::Vec;

use chaingate_shared::config::{MAX_HOPS, Travel, Uplink};
use chaingate_shared::{ChainId, FlowDirection, FlowKey, InstanceId, Nanos};

pub use tcp::{ConnState, Tcp, Timeouts};

/// A session's stable handle.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct SessionId {
    slot: u32,
    generation: u32,
}

impl SessionId {
    /// The slab slot (for telemetry).
    #[must_use]
    pub const fn slot(&self) -> u32 {
        self.slot
    }

    /// The id as one number (an AGE context), and back.
    #[must_use]
    pub const fn to_bits(self) -> u64 {
        ((self.generation as u64) << 32) | self.slot as u64
    }

    /// The id [`Self::to_bits`] gave.
    #[must_use]
    #[allow(clippy::cast_possible_truncation)] // the two halves, on purpose
    pub const fn from_bits(bits: u64) -> Self {
        Self {
            slot: bits as u32,
            generation: (bits >> 32) as u32,
        }
    }
}

/// What the session's packets get.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum SessionAction {
    /// Through a chain.
    Chain(ChainId),
    /// Straight between the uplinks.
    Bypass,
    /// Dropped, and why.
    Drop(DropCause),
}

/// Why a session drops its packets.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum DropCause {
    /// A policy says so.
    Policy,
    /// An instance of a fail-closed service failed under it.
    ServiceFailed,
}

/// A hop with no instance: the service was unavailable and fails open.
pub const NO_INSTANCE: u16 = u16::MAX;

/// One connection and the decisions taken for it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Session {
    key: FlowKey,
    hops: [u16; MAX_HOPS],
    action: SessionAction,
    origin: Uplink,
    opener: FlowDirection,
    tcp: Tcp,
    continuation: Option<(u8, Travel)>,
    /// Packets the fast path handled (saturating).
    packets: u16,
    /// Rules were asked for (and not given back since).
    offload_asked: bool,
    /// Its rules are in force: its packets pass in hardware, where the
    /// NIC's AGE, not `last_seen`, tells idleness.
    in_hardware: bool,
    created_s: u32,
    last_seen: Nanos,
}

impl Session {
    /// A session for a connection whose first packet had `key`, entering at
    /// `origin`, at `now`.
    #[must_use]
    pub fn new(key: &FlowKey, origin: Uplink, action: SessionAction, now: Nanos) -> Self {
        let (normal, opener) = key.normalised();
        Self {
            key: normal,
            hops: [NO_INSTANCE; MAX_HOPS],
            action,
            origin,
            opener,
            tcp: Tcp::new(key.proto()),
            continuation: None,
            packets: 0,
            offload_asked: false,
            in_hardware: false,
            created_s: u32::try_from(now.0 / 1_000_000_000).unwrap_or(u32::MAX),
            last_seen: now,
        }
    }

    /// Marks the session as the continuation of a rewritten flow that
    /// joined its chain after `hop`, travelling `travel`.
    #[must_use]
    pub const fn continuing(mut self, hop: u8, travel: Travel) -> Self {
        self.continuation = Some((hop, travel));
        self
    }

    /// The normalised key.
    #[must_use]
    pub const fn key(&self) -> &FlowKey {
        &self.key
    }

    /// What its packets get.
    #[must_use]
    pub const fn action(&self) -> SessionAction {
        self.action
    }

    /// The uplink the connection was opened from.
    #[must_use]
    pub const fn origin(&self) -> Uplink {
        self.origin
    }

    /// True when a packet with this (normalised-relative) direction comes
    /// from the side that opened the connection.
    #[must_use]
    pub fn from_opener(&self, dir: FlowDirection) -> bool {
        dir == self.opener
    }

    /// The instance chosen for `hop`, if the hop has one.
    #[must_use]
    pub fn hop(&self, hop: usize) -> Option<InstanceId> {
        self.hops
            .get(hop)
            .copied()
            .filter(|i| *i != NO_INSTANCE)
            .map(InstanceId::from_index)
    }

    /// Changes what the session's packets get.
    pub fn set_action(&mut self, action: SessionAction) {
        self.action = action;
    }

    /// Sets the instance of a hop (`None`: skip the hop).
    pub fn set_hop(&mut self, hop: usize, instance: Option<InstanceId>) {
        if let Some(h) = self.hops.get_mut(hop) {
            *h = instance.map_or(NO_INSTANCE, |i| {
                u16::try_from(i.index()).unwrap_or(NO_INSTANCE)
            });
        }
    }

    /// All hops' instances (`NO_INSTANCE` for skipped hops).
    #[must_use]
    pub const fn hops(&self) -> &[u16; MAX_HOPS] {
        &self.hops
    }

    /// Set for the continuation of a rewritten (NAT) flow: the hop it
    /// joined after, and its direction of travel.
    #[must_use]
    pub const fn continuation(&self) -> Option<(u8, Travel)> {
        self.continuation
    }

    /// The connection state.
    #[must_use]
    pub const fn conn(&self) -> ConnState {
        self.tcp.state()
    }

    /// Seconds since the runtime started when the session was created.
    #[must_use]
    pub const fn created_s(&self) -> u32 {
        self.created_s
    }

    /// The last packet's time.
    #[must_use]
    pub const fn last_seen(&self) -> Nanos {
        self.last_seen
    }

    /// Records a packet at `now`, with its TCP flags and side. `entering`
    /// says that it entered the gateway now (not that it came back from a
    /// hop): only those count as packets.
    pub fn touch(
        &mut self,
        now: Nanos,
        tcp_flags: crate::wire::tcp::TcpFlags,
        from_opener: bool,
        entering: bool,
    ) {
        self.last_seen = now;
        if entering || self.packets == 0 {
            self.packets = self.packets.saturating_add(1);
        }
        self.tcp.on_packet(tcp_flags, from_opener);
    }

    /// Packets that entered the gateway and reached the fast path (up to
    /// 65,535; a continuation counts the one that opened it).
    #[must_use]
    pub const fn packets(&self) -> u16 {
        self.packets
    }

    /// True once the session may have rules: it has had `after` packets
    /// in software and, for TCP, the responder answered (rules carry only
    /// established connections: a SYN flood takes no table space).
    #[must_use]
    pub fn ready_for_rules(&self, after: u16) -> bool {
        self.packets >= after && !matches!(self.conn(), ConnState::Opening | ConnState::Reset)
    }

    /// Notes that rules were asked for; true the first time since the
    /// session last gave them back.
    pub fn ask_offload(&mut self) -> bool {
        !core::mem::replace(&mut self.offload_asked, true)
    }

    /// Rules are no longer wanted (a reset connection's last seconds).
    pub fn withdraw_offload(&mut self) {
        self.offload_asked = false;
    }

    /// True while rules are asked for (the offload layer installs or has
    /// installed them).
    #[must_use]
    pub const fn wants_offload(&self) -> bool {
        self.offload_asked
    }

    /// Its rules are in force (`true`) or gone (`false`) at `now`. While
    /// in hardware it does not time out here; once out, nobody knows when
    /// its last packet passed, and it gets half of `timeout` (its idle
    /// timeout) from `now` at least.
    pub fn set_hardware(&mut self, in_force: bool, now: Nanos, timeout: Nanos) {
        if self.in_hardware && !in_force {
            let half = Nanos(timeout.0 / 2);
            self.last_seen = self.last_seen.max(Nanos(now.0.saturating_sub(half.0)));
        }
        self.in_hardware = in_force;
    }

    /// True while its rules are in force.
    #[must_use]
    pub const fn in_hardware(&self) -> bool {
        self.in_hardware
    }

    /// The NIC found one of the session's rules idle for half of
    /// `timeout` (at `now`): its rules are gone, it waits in software for
    /// the other half, and asks for rules again at its next packet.
    pub fn demote(&mut self, now: Nanos, timeout: Nanos) {
        self.offload_asked = false;
        self.in_hardware = true;
        self.set_hardware(false, now, timeout);
    }

    /// True when idle past its timeout at `now`.
    #[must_use]
    pub fn expired(&self, now: Nanos, timeouts: &Timeouts) -> bool {
        !self.in_hardware
            && now.since(self.last_seen) > timeouts.idle(self.key.proto(), self.conn())
    }
}

/// What to do when a new connection finds the table full.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Admission {
    /// Refuse the new connection.
    #[default]
    Refuse,
    /// Evict the least recently seen of a sample of sessions.
    EvictOldestIdle,
}

/// Sessions compared when evicting.
pub const EVICTION_SAMPLE: usize = 16;

/// The table is full and the admission policy refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TableFull;

/// Counters of the table's life.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct TableStats {
    /// Sessions inserted.
    pub inserted: u64,
    /// Sessions removed (ended, expired, evicted).
    pub removed: u64,
    /// New connections refused because the table was full.
    pub refused: u64,
    /// Sessions evicted to make room.
    pub evicted: u64,
    /// Sessions that timed out.
    pub expired: u64,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    /// Odd while the slot holds a session; bumped on every change.
    generation: u32,
    /// Low half of the session's hash (its home in the index).
    hash_lo: u32,
    session: Session,
}

#[derive(Clone, Copy, Debug, Default)]
struct IndexEntry {
    /// High half of the hash with the low bit set; 0 when empty.
    tag: u32,
    slot: u32,
}

/// A fixed-capacity session table.
#[derive(Clone, Debug)]
pub struct SessionTable {
    slots: Vec<Slot>,
    free: Vec<u32>,
    index: Vec<IndexEntry>,
    mask: usize,
    len: usize,
    admission: Admission,
    cursor: usize,
    stats: TableStats,
}

fn tag(hash: u64) -> u32 {
    ((hash >> 32) as u32) | 1
}

#[allow(clippy::cast_possible_truncation)] // the low half, on purpose
const fn hash_lo(hash: u64) -> u32 {
    hash as u32
}

impl SessionTable {
    /// A table for `capacity` sessions (at least 1, at most 2^31).
    #[must_use]
    pub fn new(capacity: usize, admission: Admission) -> Self {
        let capacity = capacity.clamp(1, 1 << 31);
        let index_len = (capacity * 2).next_power_of_two();
        let empty = Slot {
            generation: 0,
            hash_lo: 0,
            session: Session::new(
                &FlowKey::v4(
                    core::net::Ipv4Addr::UNSPECIFIED,
                    core::net::Ipv4Addr::UNSPECIFIED,
                    chaingate_shared::IpProtocol::Unknown(255),
                    0,
                    0,
                ),
                Uplink::Lan,
                SessionAction::Bypass,
                Nanos(0),
            ),
        };
        Self {
            slots: vec![empty; capacity],
            free: (0..u32::try_from(capacity).unwrap_or(u32::MAX))
                .rev()
                .collect(),
            index: vec![IndexEntry::default(); index_len],
            mask: index_len - 1,
            len: 0,
            admission,
            cursor: 0,
            stats: TableStats::default(),
        }
    }

    /// Sessions the table holds at most.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Sessions it holds now.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Its counters.
    #[must_use]
    pub const fn stats(&self) -> &TableStats {
        &self.stats
    }

    /// Bytes of memory per session slot, index share included.
    #[must_use]
    pub fn bytes_per_session(&self) -> usize {
        let total = self.slots.len() * size_of::<Slot>()
            + self.index.len() * size_of::<IndexEntry>()
            + self.free.capacity() * size_of::<u32>();
        total / self.slots.len()
    }

    /// The session of a normalised key with symmetric hash `hash`.
    #[inline]
    #[must_use]
    pub fn find(&self, key: &FlowKey, hash: u64) -> Option<SessionId> {
        let want = tag(hash);
        let mut pos = hash_lo(hash) as usize & self.mask;
        loop {
            let entry = self.index.get(pos)?;
            if entry.tag == 0 {
                return None;
            }
            if entry.tag == want {
                let slot = self.slots.get(entry.slot as usize)?;
                if slot.session.key == *key {
                    return Some(SessionId {
                        slot: entry.slot,
                        generation: slot.generation,
                    });
                }
            }
            pos = (pos + 1) & self.mask;
        }
    }

    /// Finds a burst of keys at once, overlapping their memory accesses:
    /// first every index entry is read, then every slot. `out[i]` is the
    /// session of `keys[i]` (normalised key and hash).
    pub fn find_burst(&self, keys: &[(FlowKey, u64)], out: &mut [Option<SessionId>]) {
        const BURST: usize = 32;
        for (keys, out) in keys.chunks(BURST).zip(out.chunks_mut(BURST)) {
            // Stage 1: the home index entries, independent loads.
            let mut first = [IndexEntry::default(); BURST];
            for ((_, hash), e) in keys.iter().zip(first.iter_mut()) {
                *e = self
                    .index
                    .get(hash_lo(*hash) as usize & self.mask)
                    .copied()
                    .unwrap_or_default();
            }
            // Stage 2: the slots those entries name.
            for (((key, hash), e), o) in keys
                .iter()
                .map(|(k, h)| (k, *h))
                .zip(first.iter())
                .zip(out.iter_mut())
            {
                *o = match self.slots.get(e.slot as usize) {
                    Some(slot) if e.tag == tag(hash) && slot.session.key == *key => {
                        Some(SessionId {
                            slot: e.slot,
                            generation: slot.generation,
                        })
                    }
                    // Empty home: not there; otherwise probe on.
                    _ if e.tag == 0 => None,
                    _ => self.find(key, hash),
                };
            }
        }
    }

    /// A session by id (`None` once it ended).
    #[inline]
    #[must_use]
    pub fn get(&self, id: SessionId) -> Option<&Session> {
        self.slots
            .get(id.slot as usize)
            .filter(|s| s.generation == id.generation && s.generation & 1 == 1)
            .map(|s| &s.session)
    }

    /// A session by id, to update.
    #[inline]
    pub fn get_mut(&mut self, id: SessionId) -> Option<&mut Session> {
        self.slots
            .get_mut(id.slot as usize)
            .filter(|s| s.generation == id.generation && s.generation & 1 == 1)
            .map(|s| &mut s.session)
    }

    /// Inserts a session whose normalised key hashes to `hash` (the caller
    /// found none). When the table is full the admission policy applies;
    /// an evicted session is handed to `evicted` before its slot is reused.
    ///
    /// # Errors
    /// [`TableFull`] when the policy refuses.
    pub fn insert(
        &mut self,
        hash: u64,
        session: Session,
        evicted: impl FnOnce(SessionId, &Session),
    ) -> Result<SessionId, TableFull> {
        if self.free.is_empty() {
            match self.admission {
                Admission::Refuse => {
                    self.stats.refused += 1;
                    return Err(TableFull);
                }
                Admission::EvictOldestIdle => {
                    let victim = self.oldest_of_sample().ok_or(TableFull)?;
                    if let Some(old) = self.get(victim).copied() {
                        evicted(victim, &old);
                    }
                    self.remove(victim);
                    self.stats.evicted += 1;
                }
            }
        }
        let slot = self.free.pop().ok_or(TableFull)?;
        let entry = self.slots.get_mut(slot as usize).ok_or(TableFull)?;
        entry.generation = entry.generation.wrapping_add(1) | 1;
        entry.hash_lo = hash_lo(hash);
        entry.session = session;
        let id = SessionId {
            slot,
            generation: entry.generation,
        };
        let mut pos = hash_lo(hash) as usize & self.mask;
        while let Some(e) = self.index.get_mut(pos) {
            if e.tag == 0 {
                *e = IndexEntry {
                    tag: tag(hash),
                    slot,
                };
                break;
            }
            pos = (pos + 1) & self.mask;
        }
        self.len += 1;
        self.stats.inserted += 1;
        Ok(id)
    }

    /// Removes a session; `None` if it had already ended.
    pub fn remove(&mut self, id: SessionId) -> Option<Session> {
        let slot = self.slots.get_mut(id.slot as usize)?;
        if slot.generation != id.generation || slot.generation & 1 == 0 {
            return None;
        }
        slot.generation = slot.generation.wrapping_add(1);
        let session = slot.session;
        let home = slot.hash_lo as usize & self.mask;
        // Find the index entry, then shift the entries after it back so
        // that no probe sequence is broken (no tombstones).
        let mut pos = home;
        for _ in 0..self.index.len() {
            if self
                .index
                .get(pos)
                .is_some_and(|e| e.tag != 0 && e.slot == id.slot)
            {
                break;
            }
            pos = (pos + 1) & self.mask;
        }
        let mut hole = pos;
        let mut next = (hole + 1) & self.mask;
        while let Some(entry) = self.index.get(next).copied() {
            if entry.tag == 0 {
                break;
            }
            let want = self
                .slots
                .get(entry.slot as usize)
                .map_or(next, |s| s.hash_lo as usize & self.mask);
            // Move the entry into the hole if its home is not between the
            // hole (exclusive) and its position (inclusive), cyclically.
            let dist_home = next.wrapping_sub(want) & self.mask;
            let dist_hole = next.wrapping_sub(hole) & self.mask;
            if dist_home >= dist_hole {
                if let Some(h) = self.index.get_mut(hole) {
                    *h = entry;
                }
                hole = next;
            }
            next = (next + 1) & self.mask;
        }
        if let Some(h) = self.index.get_mut(hole) {
            *h = IndexEntry::default();
        }
        self.free.push(id.slot);
        self.len -= 1;
        self.stats.removed += 1;
        Some(session)
    }

    fn oldest_of_sample(&mut self) -> Option<SessionId> {
        let n = self.slots.len();
        let mut best: Option<(Nanos, SessionId)> = None;
        for _ in 0..EVICTION_SAMPLE.min(n) {
            self.cursor = (self.cursor + 1) % n;
            if let Some(s) = self.slots.get(self.cursor)
                && s.generation & 1 == 1
                && !s.session.in_hardware
                && best.is_none_or(|(t, _)| s.session.last_seen < t)
            {
                let id = SessionId {
                    slot: u32::try_from(self.cursor).unwrap_or(u32::MAX),
                    generation: s.generation,
                };
                best = Some((s.session.last_seen, id));
            }
        }
        best.map(|(_, id)| id)
    }

    /// Visits up to `budget` slots from where the last sweep stopped and
    /// removes the sessions idle past their timeout, handing each to
    /// `ended`. Bounded work per call: call it every tick.
    pub fn expire(
        &mut self,
        now: Nanos,
        timeouts: &Timeouts,
        budget: usize,
        mut ended: impl FnMut(SessionId, &Session),
    ) {
        let n = self.slots.len();
        for _ in 0..budget.min(n) {
            self.cursor = (self.cursor + 1) % n;
            let Some(slot) = self.slots.get(self.cursor) else {
                continue;
            };
            if slot.generation & 1 == 1 && slot.session.expired(now, timeouts) {
                let id = SessionId {
                    slot: u32::try_from(self.cursor).unwrap_or(u32::MAX),
                    generation: slot.generation,
                };
                if let Some(s) = self.remove(id) {
                    self.stats.expired += 1;
                    ended(id, &s);
                }
            }
        }
    }

    /// Every live session.
    pub fn iter(&self) -> impl Iterator<Item = (SessionId, &Session)> {
        self.iter_slots(0..self.slots.len())
    }

    /// The live sessions in a range of slots (for walks done a part at a
    /// time: listing a page, counting in steps). Slots past the capacity
    /// are not there.
    pub fn iter_slots(
        &self,
        slots: core::ops::Range<usize>,
    ) -> impl Iterator<Item = (SessionId, &Session)> {
        let end = slots.end.min(self.slots.len());
        let start = slots.start.min(end);
        self.slots
            .get(start..end)
            .unwrap_or(&[])
            .iter()
            .enumerate()
            .map(move |(n, s)| (n + start, s))
            .filter(|(_, s)| s.generation & 1 == 1)
            .map(|(n, s)| {
                (
                    SessionId {
                        slot: u32::try_from(n).unwrap_or(u32::MAX),
                        generation: s.generation,
                    },
                    &s.session,
                )
            })
    }

    /// The ids of every live session (to walk and change them).
    pub fn ids(&self) -> impl Iterator<Item = SessionId> + '_ {
        self.iter().map(|(id, _)| id)
    }
}

#[cfg(test)]
mod tests;
