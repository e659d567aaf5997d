//! The per-shard read side of the location service: every partition's
//! bindings, applied from the feed, looked up with no lock and no atomic.
//!
//! ```text
//!  feed of partition p ──apply(&Record)──► version[p] == seq-1 ? apply : (seq <= version[p] ? Duplicate : Gap)
//!                                             │
//!  lookup(aor, wall) ◄──── table: AoR key ──► Block (one heap allocation per AoR)
//!                                             ┌────────────────────────────────────────────────────────┐
//!                                             │ key_len u16 │ partition u16 │ count u16 │ key          │
//!                                             │ count × routing part (52 B: expiry, id, q, received…) │
//!                                             │ count × (contact │ path │ instance)                   │
//!                                             └────────────────────────────────────────────────────────┘
//! ```
//!
//! Why this shape: a lookup is what every INVITE and MESSAGE to a served user
//! costs, so it must touch as few cache lines as possible. The table
//! (`table.rs`) is open addressing with one fat pointer per AoR and 16-bit
//! tags in a dense side array; the AoR key lives *inside* the block, so a
//! hit reads a tag, one bucket and the block, whose first line holds the key
//! and the first binding's expiry and q. Because the table is ours, a batch
//! of lookups overlaps its cache misses ([`Replica::lookup_batch`]). An
//! update builds a new block (an AoR has a handful of bindings) and swaps
//! it in, except a refresh of the same contact with the same q — the
//! steady state — which overwrites that binding's routing part in place
//! (its place in the order cannot change). Bindings in a block are sorted by q
//! descending, then newest first, so a lookup only filters out the expired
//! ones.
//!
//! Measured (`benches/lookup.rs`, 1 M bindings, CPU time on a loaded 2-vCPU
//! VM whose dependent DRAM access costs ~300–500 ns): ~2.5 M single lookups/s,
//! ~8 M/s batched, ~20 M/s when the table fits in the caches; ~212 bytes per
//! typical binding, table included.
//!
//! What a replica keeps per binding is its routing part: contact, Path,
//! instance, reg-id, received address, socket, q, expiry. The Call-ID, CSeq
//! and User-Agent stay with the registrar (and the store), which needs them;
//! the proxy does not.
//!
//! Expiry: the registrar removes expired bindings with `Remove` records; until
//! one arrives, a lookup at `wall` simply skips bindings with
//! `expires <= wall`, so a lagging feed never routes to an expired contact.
//!
//! Contract: `apply` and `lookup` never panic; `lookup` never allocates.

use super::binding::{u16_at, u64_at, Binding, Target, ROUTE_FIXED};
use super::feed::{Op, PartitionState, Record};
use super::table::{Keyed, Table};
use crate::hash::partition_of;

const BLOCK_HEADER: usize = 6;

/// One AoR: its key and its bindings' routing parts (layout in the module doc).
#[derive(Clone)]
struct Block(
    // INVARIANT: built by `Block::build` only: header, key, `count` fixed
    // parts of ROUTE_FIXED bytes, then their strings, sorted by (q desc, id desc).
    Box<[u8]>,
);

impl Block {
    #[inline]
    fn key(&self) -> &[u8] {
        let n = usize::from(u16_at(&self.0, 0));
        self.0
            .get(BLOCK_HEADER..BLOCK_HEADER + n)
            .unwrap_or_default()
    }

    fn partition(&self) -> u16 {
        u16_at(&self.0, 2)
    }

    fn count(&self) -> usize {
        usize::from(u16_at(&self.0, 4))
    }

    fn all(&self) -> Bindings<'_> {
        Bindings::new(&self.0, 0)
    }

    /// Refreshes binding `fixed.id` in place: when the block holds it with
    /// the same q and the same strings (contact, path, instance), its
    /// routing part is overwritten by `fixed` (expiry, received address,
    /// socket, flow, reg-id) and true is returned. Its place in the sort
    /// order (q desc, id desc) cannot change, so the block stays valid.
    /// Otherwise nothing changes and the caller rebuilds the block.
    ///
    /// Why: a re-REGISTER of the same contact is the steady state of a
    /// registrar, and rebuilding the block for it cost an allocation, a
    /// sort and a second hash of the key.
    fn refresh(&mut self, fixed: &[u8], strings: &[u8]) -> bool {
        let new = Target::from_parts(fixed, strings);
        let (id, q) = (new.id(), new.q());
        let key_len = usize::from(u16_at(&self.0, 0));
        let count = self.count();
        let mut fixed_at = BLOCK_HEADER + key_len;
        let mut strings_at = fixed_at + count * ROUTE_FIXED;
        for _ in 0..count {
            let Some(old) = self.0.get(fixed_at..fixed_at + ROUTE_FIXED) else {
                return false;
            };
            // The three string lengths (contact, path, instance) are bytes 46..52.
            let n = usize::from(u16_at(old, 46))
                + usize::from(u16_at(old, 48))
                + usize::from(u16_at(old, 50));
            let t = Target::from_parts(old, &[]);
            if t.id() == id {
                let same = t.q() == q
                    && fixed.len() == ROUTE_FIXED
                    && old.get(46..ROUTE_FIXED) == fixed.get(46..ROUTE_FIXED)
                    && self.0.get(strings_at..strings_at + n) == Some(strings);
                if !same {
                    return false;
                }
                return match self.0.get_mut(fixed_at..fixed_at + ROUTE_FIXED) {
                    Some(slot) => {
                        slot.copy_from_slice(fixed);
                        true
                    }
                    None => false,
                };
            }
            fixed_at += ROUTE_FIXED;
            strings_at += n;
        }
        false
    }

    /// Builds a block; sorts `parts` (routing part, strings) by q desc, id desc.
    fn build(key: &[u8], partition: u16, parts: &mut [(&[u8], &[u8])]) -> Self {
        parts.sort_unstable_by(|a, b| {
            let ta = Target::from_parts(a.0, a.1);
            let tb = Target::from_parts(b.0, b.1);
            (tb.q(), tb.id()).cmp(&(ta.q(), ta.id()))
        });
        let count = parts.len().min(usize::from(u16::MAX));
        let key = key
            .get(..key.len().min(usize::from(u16::MAX)))
            .unwrap_or_default();
        let total = BLOCK_HEADER
            + key.len()
            + parts
                .iter()
                .take(count)
                .map(|p| ROUTE_FIXED + p.1.len())
                .sum::<usize>();
        let mut b = Vec::with_capacity(total);
        b.extend_from_slice(&(key.len() as u16).to_le_bytes());
        b.extend_from_slice(&partition.to_le_bytes());
        b.extend_from_slice(&(count as u16).to_le_bytes());
        b.extend_from_slice(key);
        for p in parts.iter().take(count) {
            b.extend_from_slice(p.0);
        }
        for p in parts.iter().take(count) {
            b.extend_from_slice(p.1);
        }
        Self(b.into_boxed_slice())
    }
}

impl Keyed for Block {
    #[inline]
    fn key(&self) -> &[u8] {
        Self::key(self)
    }
}

/// The live bindings of an AoR at a wall time, best first (q descending,
/// then newest first).
#[derive(Debug, Clone)]
pub struct Bindings<'a> {
    block: &'a [u8],
    /// The next live binding, already decoded (so a lookup decodes it once).
    peeked: Option<Target<'a>>,
    left: usize,
    fixed_at: usize,
    strings_at: usize,
    wall: u64,
}

impl<'a> Bindings<'a> {
    #[inline]
    fn new(block: &'a [u8], wall: u64) -> Self {
        let key_len = usize::from(u16_at(block, 0));
        let count = usize::from(u16_at(block, 4));
        let fixed_at = BLOCK_HEADER + key_len;
        let mut it = Self {
            block,
            peeked: None,
            left: count,
            fixed_at,
            strings_at: fixed_at + count * ROUTE_FIXED,
            wall,
        };
        it.peeked = it.advance();
        it
    }

    /// True when no live binding is left.
    #[inline]
    fn is_done(&self) -> bool {
        self.peeked.is_none()
    }

    #[inline]
    fn advance(&mut self) -> Option<Target<'a>> {
        while self.left > 0 {
            self.left -= 1;
            let fixed = self.block.get(self.fixed_at..self.fixed_at + ROUTE_FIXED)?;
            self.fixed_at += ROUTE_FIXED;
            let n = usize::from(u16_at(fixed, 46))
                + usize::from(u16_at(fixed, 48))
                + usize::from(u16_at(fixed, 50));
            let strings = self.block.get(self.strings_at..self.strings_at + n)?;
            self.strings_at += n;
            if u64_at(fixed, 0) > self.wall {
                return Some(Target::from_parts(fixed, strings));
            }
        }
        None
    }
}

impl<'a> Iterator for Bindings<'a> {
    type Item = Target<'a>;

    #[inline]
    fn next(&mut self) -> Option<Target<'a>> {
        let t = self.peeked.take()?;
        self.peeked = self.advance();
        Some(t)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::from(self.peeked.is_some()), Some(self.left + 1))
    }
}

/// The answer of [`Replica::lookup`].
#[derive(Debug, Clone)]
pub enum Lookup<'a> {
    /// The AoR has never registered, or was forgotten: the proxy answers 404.
    Unknown,
    /// The AoR is known but has no live binding: the proxy answers 480.
    NoBindings,
    /// At least one live binding, best first.
    Found(Bindings<'a>),
}

/// How [`Replica::apply`] took a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The record was the next of its partition and is now visible.
    Applied,
    /// The record was already applied (a duplicate or an old seq): ignored.
    Duplicate,
}

/// Why [`Replica::apply`] refused a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// Records of this partition are missing before this one: the replica
    /// needs a resync of the partition ([`Replica::install`]) or the missing
    /// records, in order. Nothing was changed.
    #[error("gap in the feed of partition {partition}: expected seq {expected}, got {got}")]
    Gap {
        /// The partition.
        partition: u16,
        /// The seq the replica expects next.
        expected: u64,
        /// The seq it was given.
        got: u64,
    },
    /// The record names a partition this replica does not have.
    #[error("unknown partition {partition}")]
    UnknownPartition {
        /// The partition.
        partition: u16,
    },
}

/// A copy of a replica at a version, to start another one from
/// ([`Replica::from_snapshot`]); `Send`, so it can cross to another shard.
#[derive(Clone)]
pub struct Snapshot {
    partitions: u16,
    version: Vec<u64>,
    blocks: Vec<Block>,
}

impl Snapshot {
    /// The version vector: the last seq applied, per partition.
    pub fn version(&self) -> &[u64] {
        &self.version
    }
}

impl core::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Snapshot")
            .field("partitions", &self.partitions)
            .field("version", &self.version)
            .field("aors", &self.blocks.len())
            .finish()
    }
}

/// A shard's copy of the location service (module doc).
#[derive(Clone)]
pub struct Replica {
    partitions: u16,
    // INVARIANT: version.len() == partitions.
    version: Vec<u64>,
    table: Table<Block>,
    /// Bindings held (live or expired but not yet removed).
    bindings: usize,
    /// Sum of the block lengths.
    block_bytes: usize,
}

impl Replica {
    /// An empty replica of `partitions` partitions; `seed` keys the table's
    /// hash (take it from the shard's secret, so it is not guessable).
    pub fn new(partitions: u16, seed: u64) -> Self {
        let partitions = partitions.max(1);
        Self {
            partitions,
            version: vec![0; usize::from(partitions)],
            table: Table::new(seed),
            bindings: 0,
            block_bytes: 0,
        }
    }

    /// A replica holding `states` (from the store at startup, or from the
    /// registrars).
    pub fn from_states(
        partitions: u16,
        seed: u64,
        states: &[PartitionState],
    ) -> Result<Self, ApplyError> {
        let mut r = Self::new(partitions, seed);
        let total: usize = states
            .iter()
            .map(|s| s.bindings.len() + s.empty.len())
            .sum();
        r.table.reserve(total);
        for s in states {
            r.install(s)?;
        }
        Ok(r)
    }

    /// A copy of this replica (O(AoRs); allocates every block).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            partitions: self.partitions,
            version: self.version.clone(),
            blocks: self.table.iter().cloned().collect(),
        }
    }

    /// A replica equal to the one `snap` was taken from; apply the feed from
    /// `snap.version()` on (older records are duplicates and are ignored).
    pub fn from_snapshot(snap: &Snapshot, seed: u64) -> Self {
        let mut r = Self::new(snap.partitions, seed);
        r.version.clone_from(&snap.version);
        r.table.reserve(snap.blocks.len());
        for b in &snap.blocks {
            r.bindings += b.count();
            r.block_bytes += b.0.len();
            r.table.insert(b.clone());
        }
        r
    }

    /// Replaces everything of `state.partition` with `state` and sets its
    /// version to `state.seq` (a resync after a [`ApplyError::Gap`]).
    pub fn install(&mut self, state: &PartitionState) -> Result<(), ApplyError> {
        let p = state.partition;
        let Some(v) = self.version.get_mut(usize::from(p)) else {
            return Err(ApplyError::UnknownPartition { partition: p });
        };
        *v = state.seq;
        let (mut removed_bindings, mut removed_bytes) = (0, 0);
        self.table.retain(|b| {
            let keep = b.partition() != p;
            if !keep {
                removed_bindings += b.count();
                removed_bytes += b.0.len();
            }
            keep
        });
        self.bindings -= removed_bindings;
        self.block_bytes -= removed_bytes;
        let mut parts: Vec<(&[u8], &[u8])> = Vec::new();
        let mut i = 0;
        while let Some(first) = state.bindings.get(i) {
            let aor = first.aor();
            parts.clear();
            while let Some(b) = state.bindings.get(i).filter(|b| b.aor() == aor) {
                parts.push(b.route_parts());
                i += 1;
            }
            self.put(Block::build(aor, p, &mut parts));
        }
        for e in &state.empty {
            if self.table.get(&e.aor).is_none() {
                self.put(Block::build(&e.aor, p, &mut []));
            }
        }
        Ok(())
    }

    fn put(&mut self, block: Block) {
        self.bindings += block.count();
        self.block_bytes += block.0.len();
        if let Some(old) = self.table.insert(block) {
            self.bindings -= old.count();
            self.block_bytes -= old.0.len();
        }
    }

    fn take(&mut self, key: &[u8]) {
        if let Some(old) = self.table.remove(key) {
            self.bindings -= old.count();
            self.block_bytes -= old.0.len();
        }
    }

    /// Applies one feed record. Records of one partition must come in seq
    /// order: an old seq is a [`Applied::Duplicate`] (ignored), a seq past
    /// the next one is an [`ApplyError::Gap`] (nothing changes; resync).
    pub fn apply(&mut self, r: &Record) -> Result<Applied, ApplyError> {
        let p = r.partition;
        let Some(v) = self.version.get_mut(usize::from(p)) else {
            return Err(ApplyError::UnknownPartition { partition: p });
        };
        if r.seq <= *v {
            return Ok(Applied::Duplicate);
        }
        if r.seq != *v + 1 {
            return Err(ApplyError::Gap {
                partition: p,
                expected: *v + 1,
                got: r.seq,
            });
        }
        *v = r.seq;
        match &r.op {
            Op::Upsert(b) => {
                let key = b.aor();
                let id = b.id();
                let (fixed, strings) = b.route_parts();
                let new = match self.table.get_mut(key) {
                    None => Block::build(key, p, &mut [(fixed, strings)]),
                    Some(old) => {
                        // The steady state: a refresh of the same contact.
                        if old.refresh(fixed, strings) {
                            return Ok(Applied::Applied);
                        }
                        let mut parts: Vec<(&[u8], &[u8])> = Vec::with_capacity(old.count() + 1);
                        parts.extend(
                            old.all()
                                .filter(|t| t.id() != id)
                                .map(|t| (t.fixed(), t.strings())),
                        );
                        parts.push((fixed, strings));
                        Block::build(key, p, &mut parts)
                    }
                };
                self.put(new);
            }
            Op::Remove { aor, id } => {
                let new = match self.table.get(aor) {
                    Some(old) if old.all().any(|t| t.id() == *id) => {
                        let mut parts: Vec<(&[u8], &[u8])> = old
                            .all()
                            .filter(|t| t.id() != *id)
                            .map(|t| (t.fixed(), t.strings()))
                            .collect();
                        Some(Block::build(aor, p, &mut parts))
                    }
                    _ => None,
                };
                if let Some(new) = new {
                    self.put(new);
                }
            }
            Op::Forget { aor } => self.take(aor),
            // A local service's state: its owner keeps it, replicas only
            // keep the partition's seq.
            Op::Put(_) | Op::Del { .. } => {}
        }
        Ok(Applied::Applied)
    }

    /// The live bindings of `aor_key` at wall time `wall` (unix µs).
    #[inline]
    pub fn lookup(&self, aor_key: &[u8], wall: u64) -> Lookup<'_> {
        let Some(block) = self.table.get(aor_key) else {
            return Lookup::Unknown;
        };
        let it = Bindings::new(&block.0, wall);
        if it.is_done() {
            Lookup::NoBindings
        } else {
            Lookup::Found(it)
        }
    }

    /// Looks up every key of `keys` at `wall`, calling `f(i, lookup)` in
    /// order. Same answers as [`Replica::lookup`], several times faster on a
    /// large table: the memory accesses of the next keys overlap with the
    /// current one (see `table.rs`). A shard that has a batch of requests
    /// to route in one loop turn should use it.
    pub fn lookup_batch<'a>(
        &'a self,
        keys: &[&[u8]],
        wall: u64,
        mut f: impl FnMut(usize, Lookup<'a>),
    ) {
        self.table.find_batch(keys, |i, block| {
            let l = match block {
                None => Lookup::Unknown,
                Some(b) => {
                    let it = Bindings::new(&b.0, wall);
                    if it.is_done() {
                        Lookup::NoBindings
                    } else {
                        Lookup::Found(it)
                    }
                }
            };
            f(i, l);
        });
    }

    /// True when `aor_key` is known (with or without live bindings).
    pub fn contains(&self, aor_key: &[u8]) -> bool {
        self.table.get(aor_key).is_some()
    }

    /// The number of partitions.
    pub fn partitions(&self) -> u16 {
        self.partitions
    }

    /// The version vector: the last seq applied, per partition.
    pub fn version(&self) -> &[u64] {
        &self.version
    }

    /// Bindings held (expired ones not yet removed by the feed included).
    pub fn len(&self) -> usize {
        self.bindings
    }

    /// True when no binding is held.
    pub fn is_empty(&self) -> bool {
        self.bindings == 0
    }

    /// Known AoRs.
    pub fn aors(&self) -> usize {
        self.table.len()
    }

    /// Heap bytes held: the table's buckets and control bytes, and the blocks
    /// (allocator overhead not included: glibc adds 8 bytes and rounds each
    /// block to 16).
    pub fn heap_bytes(&self) -> usize {
        self.table.capacity() * (size_of::<Option<Block>>() + size_of::<u16>())
            + self.block_bytes
            + self.version.len() * 8
    }

    /// Every AoR with all its bindings (expired included) as canonical
    /// bytes, sorted: two replicas with the same content give equal vectors.
    #[doc(hidden)]
    pub fn canonical(&self) -> Vec<Box<[u8]>> {
        let mut v: Vec<Box<[u8]>> = self.table.iter().map(|b| b.0.clone()).collect();
        v.sort();
        v
    }

    /// All bindings of `aor_key`, expired ones included (diagnostics, tests).
    pub fn all_bindings(&self, aor_key: &[u8]) -> Option<Bindings<'_>> {
        self.table.get(aor_key).map(Block::all)
    }

    /// The partition a block of this AoR would be in (`partition_of` with
    /// this replica's partition count).
    pub fn partition_of(&self, aor_key: &[u8]) -> u16 {
        partition_of(aor_key, self.partitions)
    }
}

impl core::fmt::Debug for Replica {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Replica")
            .field("partitions", &self.partitions)
            .field("version", &self.version)
            .field("aors", &self.table.len())
            .field("bindings", &self.bindings)
            .finish()
    }
}

/// Builds the record that a binding's upsert is, for tests and benches.
#[doc(hidden)]
pub fn upsert_record(partition: u16, seq: u64, b: Binding) -> Record {
    Record {
        remote: false,
        partition,
        seq,
        commit: 0,
        op: Op::Upsert(b),
    }
}

#[cfg(test)]
mod tests {
    use super::super::binding::testutil::binding;
    use super::super::binding::BindingParts;
    use super::super::feed::StateBuilder;
    use super::*;
    use crate::transport::SocketId;

    fn b(aor: &str, id: u64, q: u16, expires: u64) -> Binding {
        Binding::new(&BindingParts {
            id,
            aor: aor.as_bytes(),
            contact: format!("sip:c{id}@192.0.2.1").as_bytes(),
            expires,
            q,
            call_id: b"x",
            cseq: 1,
            received: None,
            socket: SocketId(0),
            flow: 0,
            path: b"",
            instance: b"",
            reg_id: None,
            user_agent: b"",
        })
        .unwrap()
    }

    fn rec(partition: u16, seq: u64, op: Op) -> Record {
        Record {
            remote: false,
            partition,
            seq,
            commit: 0,
            op,
        }
    }

    fn contacts(l: Lookup<'_>) -> Vec<String> {
        match l {
            Lookup::Found(it) => it
                .map(|t| String::from_utf8_lossy(t.contact()).into_owned())
                .collect(),
            Lookup::NoBindings => vec!["<none>".into()],
            Lookup::Unknown => vec!["<unknown>".into()],
        }
    }

    fn bx(id: u64, q: u16, expires: u64, contact: &str, port: u16) -> Binding {
        Binding::new(&BindingParts {
            id,
            aor: b"a@x",
            contact: contact.as_bytes(),
            expires,
            q,
            call_id: b"x",
            cseq: 1,
            received: Some(([203, 0, 113, 9], port).into()),
            socket: SocketId(1),
            flow: 0,
            path: b"",
            instance: b"<urn:uuid:1>",
            reg_id: Some(1),
            user_agent: b"",
        })
        .unwrap()
    }

    #[test]
    fn refresh_in_place_equals_a_rebuilt_block() {
        // (updates applied after three bindings, the final bindings)
        let start = [
            bx(1, 500, 100, "sip:a@192.0.2.1", 1),
            bx(2, 1000, 100, "sip:b@192.0.2.2", 2),
            bx(3, 500, 100, "sip:c@192.0.2.3", 3),
        ];
        let cases: Vec<Vec<Binding>> = vec![
            // Same strings and q, new expiry and received: in place.
            vec![bx(3, 500, 900, "sip:c@192.0.2.3", 33)],
            vec![
                bx(2, 1000, 900, "sip:b@192.0.2.2", 2),
                bx(1, 500, 50, "sip:a@192.0.2.1", 11),
            ],
            // q changes (the order changes): rebuilt.
            vec![bx(3, 1000, 900, "sip:c@192.0.2.3", 3)],
            // The contact changes under the same id (an RFC 5626 instance
            // re-registering from a new address): rebuilt.
            vec![bx(1, 500, 900, "sip:a@198.51.100.1", 1)],
            vec![bx(1, 500, 900, "sip:a@192.0.2.10", 1)],
        ];
        for updates in cases {
            let mut r = Replica::new(1, 7);
            let mut seq = 0;
            for x in start.iter().chain(&updates) {
                seq += 1;
                r.apply(&rec(0, seq, Op::Upsert(x.clone()))).unwrap();
            }
            let mut want = Replica::new(1, 7);
            let mut seq = 0;
            for x in &start {
                let x = updates.iter().find(|u| u.id() == x.id()).unwrap_or(x);
                seq += 1;
                want.apply(&rec(0, seq, Op::Upsert(x.clone()))).unwrap();
            }
            assert_eq!(r.canonical(), want.canonical(), "{updates:?}");
            assert_eq!((r.len(), r.heap_bytes()), (want.len(), want.heap_bytes()));
            let seen: Vec<(u64, u64, Option<std::net::SocketAddr>)> = r
                .all_bindings(b"a@x")
                .unwrap()
                .map(|t| (t.id(), t.expires(), t.received()))
                .collect();
            for u in &updates {
                assert!(
                    seen.contains(&(u.id(), u.expires(), u.received())),
                    "{seen:?}"
                );
            }
        }
    }

    #[test]
    fn lookup_distinguishes_unknown_empty_and_live_sorted_by_q() {
        let mut r = Replica::new(2, 7);
        assert_eq!(contacts(r.lookup(b"a@x", 0)), ["<unknown>"]);
        r.apply(&rec(0, 1, Op::Upsert(b("a@x", 1, 500, 100))))
            .unwrap();
        r.apply(&rec(0, 2, Op::Upsert(b("a@x", 2, 1000, 50))))
            .unwrap();
        r.apply(&rec(0, 3, Op::Upsert(b("a@x", 3, 500, 200))))
            .unwrap();
        assert_eq!(
            contacts(r.lookup(b"a@x", 10)),
            ["sip:c2@192.0.2.1", "sip:c3@192.0.2.1", "sip:c1@192.0.2.1"]
        );
        // c2 expired at 50: skipped even before its Remove arrives.
        assert_eq!(
            contacts(r.lookup(b"a@x", 60)),
            ["sip:c3@192.0.2.1", "sip:c1@192.0.2.1"]
        );
        assert_eq!(contacts(r.lookup(b"a@x", 300)), ["<none>"]);
        assert_eq!(r.len(), 3);
        // refresh keeps the id, changes the expiry
        r.apply(&rec(0, 4, Op::Upsert(b("a@x", 1, 500, 400))))
            .unwrap();
        assert_eq!(contacts(r.lookup(b"a@x", 300)), ["sip:c1@192.0.2.1"]);
        assert_eq!(r.len(), 3);
        for id in [1, 2, 3] {
            r.apply(&rec(
                0,
                4 + id,
                Op::Remove {
                    aor: b"a@x"[..].into(),
                    id,
                },
            ))
            .unwrap();
        }
        assert_eq!(contacts(r.lookup(b"a@x", 0)), ["<none>"]);
        assert!(r.is_empty());
        let mut r2 = Replica::new(1, 7);
        r2.apply(&rec(0, 1, Op::Upsert(b("a@x", 1, 500, 100))))
            .unwrap();
        r2.apply(&rec(
            0,
            2,
            Op::Remove {
                aor: b"a@x"[..].into(),
                id: 1,
            },
        ))
        .unwrap();
        assert_eq!(contacts(r2.lookup(b"a@x", 0)), ["<none>"]);
        assert!(r2.contains(b"a@x"));
        assert!(r2.is_empty());
        r2.apply(&rec(
            0,
            3,
            Op::Forget {
                aor: b"a@x"[..].into(),
            },
        ))
        .unwrap();
        assert_eq!(contacts(r2.lookup(b"a@x", 0)), ["<unknown>"]);
        assert_eq!(r2.aors(), 0);
    }

    #[test]
    fn apply_is_idempotent_and_detects_gaps() {
        let mut r = Replica::new(2, 0);
        let r1 = rec(1, 1, Op::Upsert(b("a@x", 1, 1000, 100)));
        let r2 = rec(1, 2, Op::Upsert(b("a@x", 2, 1000, 100)));
        let r3 = rec(
            1,
            3,
            Op::Remove {
                aor: b"a@x"[..].into(),
                id: 1,
            },
        );
        assert_eq!(r.apply(&r1), Ok(Applied::Applied));
        assert_eq!(r.apply(&r1), Ok(Applied::Duplicate));
        assert_eq!(
            r.apply(&r3),
            Err(ApplyError::Gap {
                partition: 1,
                expected: 2,
                got: 3
            })
        );
        assert_eq!(r.version(), &[0, 1]);
        assert_eq!(r.apply(&r2), Ok(Applied::Applied));
        assert_eq!(r.apply(&r3), Ok(Applied::Applied));
        assert_eq!(r.apply(&r2), Ok(Applied::Duplicate));
        assert_eq!(r.len(), 1);
        assert_eq!(
            r.apply(&rec(
                2,
                1,
                Op::Forget {
                    aor: b"a@x"[..].into()
                }
            )),
            Err(ApplyError::UnknownPartition { partition: 2 })
        );
    }

    #[test]
    fn snapshot_and_install() {
        let mut r = Replica::new(2, 1);
        let mut sb = StateBuilder::new(0);
        for (seq, (aor, id)) in [("a@x", 1), ("b@x", 2), ("a@x", 3)].into_iter().enumerate() {
            let rc = rec(0, seq as u64 + 1, Op::Upsert(binding(aor, id, 1_000)));
            r.apply(&rc).unwrap();
            sb.apply(&rc);
        }
        r.apply(&rec(1, 1, Op::Upsert(binding("z@y", 1, 1_000))))
            .unwrap();
        let snap = r.snapshot();
        assert_eq!(snap.version(), &[3, 1]);
        let r2 = Replica::from_snapshot(&snap, 99);
        assert_eq!(r2.canonical(), r.canonical());
        assert_eq!(r2.len(), r.len());
        assert!(r2.heap_bytes() > 0);
        // A replica resynced from the writer's state equals one fed the records.
        let state = sb.finish(0);
        let mut r3 = Replica::new(2, 5);
        r3.apply(&rec(1, 1, Op::Upsert(binding("z@y", 1, 1_000))))
            .unwrap();
        r3.apply(&rec(0, 1, Op::Upsert(binding("stale@x", 1, 1_000))))
            .unwrap();
        r3.install(&state).unwrap();
        assert_eq!(r3.canonical(), r.canonical());
        assert_eq!(r3.version(), &[3, 1]);
        assert_eq!(r3.len(), 4);
        let from = Replica::from_states(2, 3, &[state]).unwrap();
        assert_eq!(from.len(), 3);
        let t = match from.lookup(b"a@x", 0) {
            Lookup::Found(mut it) => it
                .next()
                .map(|t| (t.id(), t.instance().len(), t.received())),
            _ => None,
        };
        assert_eq!(
            t,
            Some((3, 47, Some("198.51.100.4:40123".parse().unwrap())))
        );
    }
}
