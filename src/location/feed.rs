//! The change feed: the ordered records a partition's registrar emits, and
//! the state they add up to.
//!
//! ```text
//! Registrar(p) ──Record{p, seq=1,2,3…}──► store.append (before the 200 goes out)
//!                                      └─► every shard's Replica::apply
//! ```
//!
//! A record says what a binding *is* after the change (`Upsert` carries the
//! whole binding), never a delta, so applying a record twice is harmless and a
//! replica that applies the records of a partition in `seq` order ends in the
//! writer's state. Sequence numbers start at 1 in each partition and have no
//! gaps; `seq` 0 means "nothing yet".
//!
//! [`StateBuilder`] folds records into a [`PartitionState`]: the log store
//! replays its file with it, and the replica property test uses it as the
//! oracle.
//!
//! The byte encoding ([`Record::encode`]) is the log store's frame payload
//! and the form a shared store (Redis) will carry between nodes.

use std::collections::HashMap;

use super::binding::{u16_at, u64_at, Binding, BindingError};
use crate::hash::KeyHash;

/// One change of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The partition (the AoR's [`super::partition_of`]).
    pub partition: u16,
    /// Position in the partition's feed: 1, 2, 3… with no gap.
    pub seq: u64,
    /// Wall time (unix µs) when the registrar committed the change; the
    /// replica side subtracts it from its own wall time to measure lag.
    pub commit: u64,
    /// The change.
    pub op: Op,
    /// Written by another node and applied here from the shared store's
    /// change stream: the shared store has it already (it is not written
    /// again) and this node's feed carries it to its replicas. Not encoded:
    /// false in every decoded record.
    pub remote: bool,
}

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// The AoR is no longer known: it has had no binding for the retention
    /// time (lookups say [`super::Lookup::Unknown`] again).
    Forget {
        /// The AoR key.
        aor: Box<[u8]>,
    },
    /// A binding was removed (unregistered, expired, evicted or replaced).
    /// The AoR stays known.
    Remove {
        /// The AoR key.
        aor: Box<[u8]>,
        /// The binding's id.
        id: u64,
    },
    /// A binding was added or refreshed: this is its whole new value.
    Upsert(Binding),
    /// A local service's own durable state beside the bindings (presence:
    /// publications, subscriptions, stored messages) was written: its whole
    /// new value. Replicas only count it (its seq); the partition's owner
    /// rebuilds its service from the entries of [`PartitionState`].
    Put(Entry),
    /// A local service's entry was deleted.
    Del {
        /// The AoR the entry belongs to (it decides the partition).
        aor: Box<[u8]>,
        /// The service's kind byte.
        kind: u8,
        /// The entry's key, unique within `kind`.
        key: Box<[u8]>,
    },
}

/// One entry of a local service's durable state (see [`Op::Put`]). Opaque
/// here: the service encodes and decodes `value` itself.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    /// The service's kind byte (each service owns its own values).
    pub kind: u8,
    /// The key, unique within `kind`.
    pub key: Box<[u8]>,
    /// The AoR the entry belongs to (it decides the partition).
    pub aor: Box<[u8]>,
    /// Wall time (unix µs) after which the entry is gone; 0 for never.
    pub expires: u64,
    /// The service's encoding of the value.
    pub value: Box<[u8]>,
}

impl Entry {
    /// Heap bytes held.
    pub fn heap_size(&self) -> usize {
        self.key.len() + self.aor.len() + self.value.len()
    }

    fn live(&self, wall: u64) -> bool {
        wall == 0 || self.expires == 0 || self.expires > wall
    }
}

impl Op {
    /// The AoR this change is about.
    pub fn aor(&self) -> &[u8] {
        match self {
            Self::Forget { aor } | Self::Remove { aor, .. } => aor,
            Self::Upsert(b) => b.aor(),
            Self::Put(e) => &e.aor,
            Self::Del { aor, .. } => aor,
        }
    }
}

/// Why a record could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FeedError {
    /// Shorter than its header, or an inner length is wrong.
    #[error("record truncated or malformed")]
    Malformed,
    /// A kind byte this version does not know.
    #[error("unknown record kind")]
    UnknownKind,
    /// The binding inside an upsert is malformed.
    #[error("bad binding in record: {0}")]
    Binding(#[from] BindingError),
}

/// Record kinds in the encoding (other values are free for the store's own frames).
pub(crate) mod kind {
    pub(crate) const UPSERT: u8 = 1;
    pub(crate) const REMOVE: u8 = 2;
    pub(crate) const FORGET: u8 = 3;
    pub(crate) const PUT: u8 = 4;
    pub(crate) const DEL: u8 = 5;
}

/// Size of the encoded header: kind, partition, seq, commit.
pub const HEADER_LEN: usize = 1 + 2 + 8 + 8;

impl Record {
    /// Appends the encoding of this record to `out`:
    /// `kind u8 │ partition u16 │ seq u64 │ commit u64 │ body`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let k = match &self.op {
            Op::Upsert(_) => kind::UPSERT,
            Op::Remove { .. } => kind::REMOVE,
            Op::Forget { .. } => kind::FORGET,
            Op::Put(_) => kind::PUT,
            Op::Del { .. } => kind::DEL,
        };
        encode_header(out, k, self.partition, self.seq, self.commit);
        match &self.op {
            Op::Upsert(b) => out.extend_from_slice(b.as_bytes()),
            Op::Remove { aor, id } => {
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(aor);
            }
            Op::Forget { aor } => out.extend_from_slice(aor),
            // kind u8 │ expires u64 │ key len u16 │ aor len u16 │ key │ aor │ value
            Op::Put(e) => {
                out.push(e.kind);
                out.extend_from_slice(&e.expires.to_le_bytes());
                out.extend_from_slice(&(e.key.len() as u16).to_le_bytes());
                out.extend_from_slice(&(e.aor.len() as u16).to_le_bytes());
                out.extend_from_slice(&e.key);
                out.extend_from_slice(&e.aor);
                out.extend_from_slice(&e.value);
            }
            // kind u8 │ key len u16 │ key │ aor
            Op::Del { aor, kind, key } => {
                out.push(*kind);
                out.extend_from_slice(&(key.len() as u16).to_le_bytes());
                out.extend_from_slice(key);
                out.extend_from_slice(aor);
            }
        }
    }

    /// Decodes one record written by [`Record::encode`].
    pub fn decode(b: &[u8]) -> Result<Self, FeedError> {
        let (k, partition, seq, commit, body) = decode_header(b)?;
        let op = match k {
            kind::UPSERT => Op::Upsert(Binding::from_bytes(body)?),
            kind::REMOVE => Op::Remove {
                id: u64_at(body, 0),
                aor: body.get(8..).ok_or(FeedError::Malformed)?.into(),
            },
            kind::FORGET => Op::Forget { aor: body.into() },
            kind::PUT => {
                let k = *body.first().ok_or(FeedError::Malformed)?;
                if body.len() < 13 {
                    return Err(FeedError::Malformed);
                }
                let klen = usize::from(u16_at(body, 9));
                let alen = usize::from(u16_at(body, 11));
                let key = body.get(13..13 + klen).ok_or(FeedError::Malformed)?;
                let aor = body
                    .get(13 + klen..13 + klen + alen)
                    .ok_or(FeedError::Malformed)?;
                Op::Put(Entry {
                    kind: k,
                    key: key.into(),
                    aor: aor.into(),
                    expires: u64_at(body, 1),
                    value: body.get(13 + klen + alen..).unwrap_or_default().into(),
                })
            }
            kind::DEL => {
                let k = *body.first().ok_or(FeedError::Malformed)?;
                if body.len() < 3 {
                    return Err(FeedError::Malformed);
                }
                let klen = usize::from(u16_at(body, 1));
                Op::Del {
                    kind: k,
                    key: body.get(3..3 + klen).ok_or(FeedError::Malformed)?.into(),
                    aor: body.get(3 + klen..).ok_or(FeedError::Malformed)?.into(),
                }
            }
            _ => return Err(FeedError::UnknownKind),
        };
        Ok(Self {
            partition,
            seq,
            commit,
            op,
            remote: false,
        })
    }
}

pub(crate) fn encode_header(out: &mut Vec<u8>, k: u8, partition: u16, seq: u64, commit: u64) {
    out.push(k);
    out.extend_from_slice(&partition.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&commit.to_le_bytes());
}

/// Splits an encoded record into (kind, partition, seq, commit, body).
pub(crate) fn decode_header(b: &[u8]) -> Result<(u8, u16, u64, u64, &[u8]), FeedError> {
    if b.len() < HEADER_LEN {
        return Err(FeedError::Malformed);
    }
    let k = b.first().copied().unwrap_or(0);
    let body = b.get(HEADER_LEN..).unwrap_or_default();
    Ok((k, u16_at(b, 1), u64_at(b, 3), u64_at(b, 11), body))
}

/// An AoR that is known (it had bindings) but has none now.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EmptyAor {
    /// The AoR key.
    pub aor: Box<[u8]>,
    /// Wall time (unix µs) since when it has had no binding.
    pub since: u64,
}

/// The whole state of one partition at one point of its feed: what a
/// registrar restarts from, what the store loads, and what a replica
/// installs to resynchronise one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionState {
    /// The partition.
    pub partition: u16,
    /// The last record included (0: none).
    pub seq: u64,
    /// Every binding, sorted by (AoR, id).
    pub bindings: Vec<Binding>,
    /// Known AoRs without bindings, sorted by AoR.
    pub empty: Vec<EmptyAor>,
    /// The local services' entries (not expired), sorted by (kind, key).
    pub entries: Vec<Entry>,
}

#[derive(Debug, Default)]
struct AorAcc {
    bindings: Vec<Binding>,
    since: u64,
}

/// Folds records (in `seq` order) into a [`PartitionState`].
#[derive(Debug)]
pub struct StateBuilder {
    partition: u16,
    seq: u64,
    aors: HashMap<Box<[u8]>, AorAcc, KeyHash>,
    entries: HashMap<(u8, Box<[u8]>), Entry>,
}

impl StateBuilder {
    /// An empty partition.
    pub fn new(partition: u16) -> Self {
        Self {
            partition,
            seq: 0,
            aors: HashMap::with_hasher(KeyHash::default()),
            entries: HashMap::new(),
        }
    }

    /// Starts from `state`.
    pub fn from_state(state: &PartitionState) -> Self {
        let mut b = Self::new(state.partition);
        b.seq = state.seq;
        for e in &state.empty {
            b.insert_empty(&e.aor, e.since);
        }
        for binding in &state.bindings {
            b.upsert(binding.clone());
        }
        for e in &state.entries {
            b.entries.insert((e.kind, e.key.clone()), e.clone());
        }
        b
    }

    /// The last seq folded in.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Sets the seq (a store checkpoint).
    pub fn set_seq(&mut self, seq: u64) {
        self.seq = seq;
    }

    /// Folds one record in. The caller keeps the order; this only tracks the
    /// highest seq seen.
    pub fn apply(&mut self, r: &Record) {
        self.seq = self.seq.max(r.seq);
        match &r.op {
            Op::Upsert(b) => self.upsert(b.clone()),
            Op::Remove { aor, id } => {
                if let Some(acc) = self.aors.get_mut(&**aor) {
                    let before = acc.bindings.len();
                    acc.bindings.retain(|b| b.id() != *id);
                    if before > 0 && acc.bindings.is_empty() {
                        acc.since = r.commit;
                    }
                }
            }
            Op::Forget { aor } => {
                self.aors.remove(&**aor);
            }
            Op::Put(e) => {
                self.entries.insert((e.kind, e.key.clone()), e.clone());
            }
            Op::Del { kind, key, .. } => {
                self.entries.remove(&(*kind, key.clone()));
            }
        }
    }

    fn upsert(&mut self, b: Binding) {
        let acc = self.aors.entry(b.aor().into()).or_default();
        match acc.bindings.iter_mut().find(|x| x.id() == b.id()) {
            Some(slot) => *slot = b,
            None => acc.bindings.push(b),
        }
    }

    /// Adds a known AoR without bindings (a store checkpoint's entry).
    pub fn insert_empty(&mut self, aor: &[u8], since: u64) {
        let acc = self.aors.entry(aor.into()).or_default();
        if acc.bindings.is_empty() {
            acc.since = since;
        }
    }

    /// The state; bindings expired at `wall` are dropped (their AoR stays
    /// known, empty since its last expiry). `wall == 0` drops nothing.
    pub fn finish(self, wall: u64) -> PartitionState {
        let mut bindings = Vec::new();
        let mut empty = Vec::new();
        for (aor, mut acc) in self.aors {
            let mut last_expiry = 0;
            acc.bindings.retain(|b| {
                let live = wall == 0 || b.expires() > wall;
                if !live {
                    last_expiry = last_expiry.max(b.expires());
                }
                live
            });
            if acc.bindings.is_empty() {
                empty.push(EmptyAor {
                    aor,
                    since: acc.since.max(last_expiry),
                });
            } else {
                bindings.append(&mut acc.bindings);
            }
        }
        bindings.sort_by(|a, b| (a.aor(), a.id()).cmp(&(b.aor(), b.id())));
        empty.sort();
        let mut entries: Vec<Entry> = self
            .entries
            .into_values()
            .filter(|e| e.live(wall))
            .collect();
        entries.sort();
        PartitionState {
            partition: self.partition,
            seq: self.seq,
            bindings,
            empty,
            entries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::binding::testutil::binding;
    use super::*;

    fn rec(seq: u64, op: Op) -> Record {
        Record {
            remote: false,
            partition: 1,
            seq,
            commit: seq * 10,
            op,
        }
    }

    #[test]
    fn encoding_round_trips() {
        let ops = [
            Op::Upsert(binding("alice@example.com", 3, 99)),
            Op::Remove {
                aor: b"alice@example.com"[..].into(),
                id: 3,
            },
            Op::Forget {
                aor: b"alice@example.com"[..].into(),
            },
            Op::Put(Entry {
                kind: 7,
                key: b"etag-1"[..].into(),
                aor: b"alice@example.com"[..].into(),
                expires: 1234,
                value: b"<presence/>"[..].into(),
            }),
            Op::Del {
                aor: b"alice@example.com"[..].into(),
                kind: 7,
                key: b"etag-1"[..].into(),
            },
        ];
        for (i, op) in ops.into_iter().enumerate() {
            let r = rec(i as u64 + 1, op);
            let mut out = Vec::new();
            r.encode(&mut out);
            assert_eq!(Record::decode(&out), Ok(r));
        }
        assert_eq!(Record::decode(b"\x01\x00"), Err(FeedError::Malformed));
        let mut unknown = Vec::new();
        encode_header(&mut unknown, 0x7f, 0, 1, 1);
        assert_eq!(Record::decode(&unknown), Err(FeedError::UnknownKind));
        let mut bad = Vec::new();
        encode_header(&mut bad, kind::UPSERT, 0, 1, 1);
        bad.extend_from_slice(b"short");
        assert!(matches!(Record::decode(&bad), Err(FeedError::Binding(_))));
    }

    #[test]
    fn builder_folds_and_drops_expired() {
        let mut s = StateBuilder::new(1);
        s.apply(&rec(1, Op::Upsert(binding("a@x", 1, 100))));
        s.apply(&rec(2, Op::Upsert(binding("a@x", 2, 500))));
        s.apply(&rec(3, Op::Upsert(binding("b@x", 3, 100))));
        s.apply(&rec(
            4,
            Op::Remove {
                aor: b"b@x"[..].into(),
                id: 3,
            },
        ));
        s.apply(&rec(5, Op::Upsert(binding("c@x", 5, 100))));
        s.apply(&rec(
            6,
            Op::Forget {
                aor: b"c@x"[..].into(),
            },
        ));
        s.apply(&rec(7, Op::Upsert(binding("d@x", 7, 100))));
        let st = s.finish(200);
        assert_eq!(st.seq, 7);
        let ids: Vec<u64> = st.bindings.iter().map(Binding::id).collect();
        assert_eq!(ids, vec![2]);
        assert_eq!(
            st.empty,
            vec![
                EmptyAor {
                    aor: b"b@x"[..].into(),
                    since: 40
                },
                EmptyAor {
                    aor: b"d@x"[..].into(),
                    since: 100
                },
            ]
        );
        let again = StateBuilder::from_state(&st).finish(200);
        assert_eq!(again, st);
    }

    #[test]
    fn builder_keeps_live_service_entries() {
        let e = |key: &str, expires| Entry {
            kind: 2,
            key: key.as_bytes().into(),
            aor: b"a@x"[..].into(),
            expires,
            value: b"v"[..].into(),
        };
        let mut s = StateBuilder::new(1);
        s.apply(&rec(1, Op::Put(e("k1", 100))));
        s.apply(&rec(2, Op::Put(e("k2", 300))));
        s.apply(&rec(3, Op::Put(e("k3", 0))));
        s.apply(&rec(4, Op::Put(e("k2", 400))));
        s.apply(&rec(
            5,
            Op::Del {
                aor: b"a@x"[..].into(),
                kind: 2,
                key: b"k3"[..].into(),
            },
        ));
        let st = s.finish(200);
        assert_eq!(st.entries, vec![e("k2", 400)]);
        assert_eq!(StateBuilder::from_state(&st).finish(200), st);
    }
}
