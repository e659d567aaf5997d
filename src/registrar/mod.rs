//! The registrar (RFC 3261 §10.3; Path, RFC 3327; instance and reg-id,
//! RFC 5626): the single writer of one partition's bindings.
//!
//! ```text
//!  REGISTER ─► handle_register(now, wall, msg, src, socket, reply)
//!    §10.3 step 2  Require: unknown option-tag            → 420 + Unsupported
//!          step 5  To → AoR key; domain not served        → 404   (AoR of another partition → Err(WrongPartition))
//!          step 6  Contact/Expires syntax, `*` rules      → 400 (precise reason)
//!                  0 < expires < min (and < 1 h)          → 423 + Min-Expires; above max → max
//!          step 7  same Call-ID, CSeq not higher          → 500 (whole request aborted)
//!                  more new contacts than max_contacts    → 403; total over the partition limit → 503 + Retry-After
//!                  commit: Remove / Upsert records, wheel timers
//!          step 8  200: every current contact with its remaining expires, Date, Path (if the UA supports it)
//!  handle_timeout(now, wall) ─► expiries fire from the timing wheel ─► Remove records; Forget after the retention
//!  poll_record() / drain_records() ─► the caller appends them to the store *before* sending the 200, then feeds replicas
//! ```
//!
//! Sans-IO: the registrar reads no clock. `now` (monotonic) drives the wheel;
//! `wall` (unix µs) stamps absolute expiries, the Date header and records.
//! Every change is a [`Record`] queued in order; the registrar's own state is
//! already updated when `handle_register` returns, so the caller must make the
//! records durable before releasing the reply (a crash before that loses a
//! registration the UA never saw confirmed — which it retries).
//!
//! Decisions (where RFC 3261 leaves a choice):
//! - **Out-of-order CSeq** (§10.3 step 7 says the update "MUST be aborted and
//!   the request fails" but names no code): `500 Server Internal Error
//!   (Out-Of-Order CSeq)`, as §12.2.2 answers an out-of-order in-dialog
//!   request, and *without* Retry-After: the request is stale, repeating it
//!   cannot succeed, the UA must send a new CSeq. Retransmissions never get
//!   here: the server transaction absorbs them.
//! - **Too many contacts per AoR** (`max_contacts`): the bindings not touched
//!   by the request that are closest to expiring are evicted (so a phone that
//!   rebooted with a new port can always register), unless the request itself
//!   adds more than `max_contacts`, which is `403 Forbidden (Too Many Contacts)`.
//! - **Partition full** (`max_bindings`): a request that would add bindings
//!   gets `503` with `Retry-After`; refreshes and removals still work.
//! - **Binding identity**: `(+sip.instance, reg-id)` when the contact has an
//!   instance (RFC 5626 §6 / RFC 5627: a device's re-registration replaces its
//!   old binding even from a new address); otherwise the contact URI, compared
//!   per §19.1.4. A replaced binding keeps its id.
//! - **Known AoRs**: an AoR whose last binding went away stays known for
//!   `known_retention` (lookups answer 480, not 404), then a `Forget` record
//!   drops it.
//! - **Path** (RFC 3327 §5.3): stored with the binding, echoed in the 200
//!   only when the UA sent `Supported: path`; [`PathMode::Strict`] instead
//!   answers 420 to a Path the UA did not declare support for.
//! - **Where a binding is reached** (`received`): at the source address of
//!   the REGISTER when it crossed a NAT (its top Via's sent-by is not that
//!   address, RFC 3581) or when the contact names no IP address; otherwise
//!   at the contact itself. A REGISTER sent from where its Via says, for a
//!   contact at another address, is a third-party registration (§10.2: a
//!   secretary registering the boss's phone; SIPp registering its UAS), and
//!   calls must go to that contact, not back to the registering party.
//! - **Outbound** (RFC 5626; `[registrar] outbound`, on by default now that
//!   the transports answer CRLF keep-alives): a REGISTER with
//!   `Supported: outbound` and an instance + reg-id gets `Require: outbound`
//!   and `Flow-Timer` (§5.4), or 439 when a Path is present and its first
//!   hop lacks `;ob`.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod date;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::net::SocketAddr;

use crate::hash::hash_bytes;
use crate::location::{
    partition_of, AorError, AorKey, Binding, BindingParts, EmptyAor, KeyHash, Op, PartitionState,
    Record,
};
use crate::sip::emit::{self, EmitError, Received, ResponseSpec};
use crate::sip::header::parse_delta_seconds;
use crate::sip::{
    scan, Contact, Essentials, HeaderName, Message, Method, NameAddr, Scheme, Uri, ValueError, Via,
};
use crate::time::{Duration, Instant};
use crate::transport::Peer;
use crate::wheel::Wheel;

/// Longest User-Agent kept with a binding (bytes); longer ones are cut.
pub const MAX_USER_AGENT: usize = 128;
/// Most Contact values one REGISTER may carry.
pub const MAX_CONTACT_VALUES: usize = 64;

/// What to do with a Path from a UA that did not send `Supported: path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathMode {
    /// Store it and use it; echo it in the 200 only if the UA supports path.
    #[default]
    Lazy,
    /// Refuse the REGISTER with 420 (Unsupported: path).
    Strict,
}

/// Registrar settings (the `[registrar]` table of the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrarConfig {
    /// Domains whose AoRs this registrar accepts, lower-case.
    pub domains: Vec<Box<[u8]>>,
    /// Shortest expiry accepted (s); below it, 423 (§10.3 step 6).
    pub min_expires: u32,
    /// Longest expiry granted (s); longer requests are shortened.
    pub max_expires: u32,
    /// Expiry when the REGISTER gives none (s).
    pub default_expires: u32,
    /// Most bindings per AoR.
    pub max_contacts: u16,
    /// Most bindings in this partition.
    pub max_bindings: usize,
    /// Retry-After of a 503 (s).
    pub retry_after: u32,
    /// How long an AoR without bindings stays known (480 rather than 404).
    pub known_retention: Duration,
    /// Path handling.
    pub path_mode: PathMode,
    /// RFC 5626 outbound answers (`Require: outbound`, `Flow-Timer`, 439).
    pub outbound: bool,
    /// The `Flow-Timer` of an outbound answer, seconds (RFC 5626 §5.4).
    pub flow_timer: u32,
    /// Key of the To tags of responses.
    pub tag_secret: u64,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        Self {
            domains: Vec::new(),
            min_expires: 60,
            max_expires: 7200,
            default_expires: 3600,
            max_contacts: 16,
            max_bindings: 4_000_000,
            retry_after: 30,
            known_retention: Duration::from_secs(24 * 3600),
            path_mode: PathMode::Lazy,
            outbound: false,
            flow_timer: 120,
            tag_secret: 0x7a9_5eed,
        }
    }
}

/// The response `handle_register` wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// Its length in the caller's buffer.
    pub len: usize,
    /// Its status code.
    pub status: u16,
}

/// Why `handle_register` wrote no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RegistrarError {
    /// The request is not a REGISTER.
    #[error("not a REGISTER")]
    NotRegister,
    /// The AoR belongs to another partition: hand the request to its owner.
    #[error("AoR belongs to partition {owner}")]
    WrongPartition {
        /// The owning partition.
        owner: u16,
    },
    /// The response did not fit the buffer (state changes, if any, stand).
    #[error("response: {0}")]
    Emit(#[from] EmitError),
}

/// Per-registrar counters (`sipedge_registrar_<what>_total`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// REGISTERs handled.
    pub requests: u64,
    /// 200s sent.
    pub accepted: u64,
    /// Error responses sent.
    pub rejected: u64,
    /// Bindings added.
    pub added: u64,
    /// Bindings refreshed or replaced.
    pub refreshed: u64,
    /// Bindings removed by their UA.
    pub removed: u64,
    /// Bindings expired.
    pub expired: u64,
    /// Bindings evicted by `max_contacts`.
    pub evicted: u64,
    /// AoRs forgotten after the retention.
    pub forgotten: u64,
    /// Bindings removed because the connection they were registered over
    /// closed (RFC 5626 flows; a browser's `.invalid` contact is reachable
    /// only through it).
    pub flow_closed: u64,
}

impl Counters {
    /// (metric name, value) pairs, for export.
    pub fn pairs(&self) -> [(&'static str, u64); 10] {
        [
            ("sipedge_registrar_requests_total", self.requests),
            ("sipedge_registrar_accepted_total", self.accepted),
            ("sipedge_registrar_rejected_total", self.rejected),
            ("sipedge_registrar_added_total", self.added),
            ("sipedge_registrar_refreshed_total", self.refreshed),
            ("sipedge_registrar_removed_total", self.removed),
            ("sipedge_registrar_expired_total", self.expired),
            ("sipedge_registrar_evicted_total", self.evicted),
            ("sipedge_registrar_forgotten_total", self.forgotten),
            ("sipedge_registrar_flow_closed_total", self.flow_closed),
        ]
    }
}

#[derive(Debug)]
struct Entry {
    binding: Binding,
    /// Generation of the binding's live expiry timer.
    gen: u32,
    /// When that timer fires. A refresh that moves the expiry later leaves
    /// it pending (it re-arms for the rest when it fires): one wheel entry
    /// per binding, not one per REGISTER — a refresh every 300 s of a
    /// 3600 s binding would otherwise leave 12 stale entries per binding.
    due: Instant,
}

#[derive(Debug)]
struct Aor {
    key: Box<[u8]>,
    entries: Vec<Entry>,
    /// When it last became empty (wall µs); meaningful when `entries` is empty.
    since: u64,
    /// Generation of the live Forget timer.
    gen: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    Expire { slot: u32, id: u64, gen: u32 },
    Forget { slot: u32, gen: u32 },
}

/// Why a REGISTER is refused (each maps to one response).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reject<'m> {
    BadRequest(&'static str),
    BadExtension(&'m [u8]),
    FirstHopLacksOutbound,
    Forbidden(&'static str),
    IntervalTooBrief,
    NotFound,
    OutOfOrder,
    Overloaded,
    WrongPartition(u16),
}

/// Where requests for a `contact` registered from `src` (by a REGISTER whose
/// top Via is `top_via`) go instead
/// of the contact's own address (module doc): `src` when the REGISTER
/// crossed a NAT or the contact has no IP address to send to; `None` when
/// the contact's address is to be used (the UA registering itself directly,
/// where contact and source agree, or a third-party registration).
///
/// Always storing `src` sent every call for a third-party registration back
/// to the registering party (found by tests/interop.rs: SIPp's REGISTER
/// scenario binding its UAS's address got every INVITE sent to the SIPp
/// REGISTER client's port).
fn reach_at(top_via: Option<&Via<'_>>, contact: &Uri<'_>, src: SocketAddr) -> Option<SocketAddr> {
    if contact.host.ip().is_none() {
        return Some(src);
    }
    let direct = top_via
        .is_some_and(|v| v.host.ip() == Some(src.ip()) && v.port.unwrap_or(5060) == src.port());
    (!direct).then_some(src)
}

/// What the registrar reads of a REGISTER's headers beyond its Contacts,
/// decoded by the caller (`None`: absent or malformed).
#[derive(Clone, Copy)]
struct Head<'m> {
    to: Option<NameAddr<'m>>,
    top_via: Option<Via<'m>>,
    /// The AoR key of `to`, when the caller computed it.
    aor: Option<AorKey>,
}

/// The AoR key of the To, or the reason it has none (§10.3 step 5).
fn aor_of<'m>(to: Option<NameAddr<'m>>) -> Result<AorKey, Reject<'m>> {
    let to = to.ok_or(Reject::BadRequest("Bad Request (Malformed To)"))?;
    let to_uri = match to.uri() {
        Ok(u) => u,
        Err(ValueError::Scheme) => return Err(Reject::NotFound),
        Err(_) => return Err(Reject::BadRequest("Bad Request (Malformed To URI)")),
    };
    match AorKey::from_uri(&to_uri) {
        Ok(k) => Ok(k),
        Err(AorError::TooLong) => Err(Reject::BadRequest(
            "Bad Request (Address-of-Record Too Long)",
        )),
        Err(AorError::Escape) => Err(Reject::BadRequest("Bad Request (Malformed To URI)")),
        Err(AorError::Scheme | AorError::NoUser | AorError::NotADomain) => Err(Reject::NotFound),
    }
}

/// One Contact of the request, checked.
#[derive(Debug, Clone, Copy)]
struct ContactReq<'m> {
    uri_bytes: &'m [u8],
    uri: Uri<'m>,
    /// Granted expiry (s), 0 to remove.
    expires: u32,
    q: u16,
    instance: &'m [u8],
    reg_id: Option<u32>,
    /// Index of the existing entry it matches.
    matches: Option<usize>,
    /// Superseded by a later Contact of the same request with the same identity.
    skip: bool,
}

/// The registrar of one partition (module doc).
#[derive(Debug)]
pub struct Registrar {
    cfg: RegistrarConfig,
    partition: u16,
    partitions: u16,
    /// Seq of the last record emitted.
    seq: u64,
    index: HashMap<Box<[u8]>, u32, KeyHash>,
    // INVARIANT: index maps each key to a slot whose Aor has that key; free
    // holds exactly the None slots.
    aors: Vec<Option<Aor>>,
    free: Vec<u32>,
    wheel: Wheel<Timer>,
    records: VecDeque<Record>,
    bindings: usize,
    counters: Counters,
    /// Scratch: extra header lines of the response being built.
    extra: Vec<u8>,
    /// Scratch: the Path of the request being handled.
    path: Vec<u8>,
    /// Scratch: timers fired by one `handle_timeout`.
    fired: Vec<Timer>,
    /// AoR slots with a binding over each connection (stream flows only).
    /// An entry may outlive its binding (a refresh over another flow): it is
    /// checked against the bindings when its flow closes, then dropped.
    flows: HashMap<u32, Vec<u32>, KeyHash>,
}

impl Registrar {
    /// An empty registrar for `partition` of `partitions`.
    pub fn new(cfg: RegistrarConfig, partition: u16, partitions: u16, now: Instant) -> Self {
        Self {
            cfg,
            partition,
            partitions: partitions.max(1),
            seq: 0,
            index: HashMap::with_hasher(KeyHash::default()),
            aors: Vec::new(),
            free: Vec::new(),
            wheel: Wheel::new(now),
            records: VecDeque::new(),
            bindings: 0,
            counters: Counters::default(),
            extra: Vec::with_capacity(1024),
            path: Vec::new(),
            fired: Vec::new(),
            flows: HashMap::with_hasher(KeyHash::default()),
        }
    }

    /// A registrar restarted from `state` (the store's recovered partition):
    /// every binding gets its expiry timer, every empty AoR its Forget timer,
    /// and the feed continues after `state.seq`. Bindings already expired at
    /// `wall` are removed (with records) at the first `handle_timeout`.
    pub fn from_state(
        cfg: RegistrarConfig,
        partitions: u16,
        state: PartitionState,
        now: Instant,
        wall: u64,
    ) -> Self {
        let mut r = Self::new(cfg, state.partition, partitions, now);
        r.seq = state.seq;
        for b in state.bindings {
            let slot = r.slot_for(b.aor());
            let deadline = now + Duration::from_micros(b.expires().saturating_sub(wall));
            r.put_binding(slot, Cow::Owned(b), deadline);
        }
        let retention = r.cfg.known_retention.as_micros();
        for e in state.empty {
            let slot = r.slot_for(&e.aor);
            let Some(aor) = r.aor_mut(slot) else { continue };
            if aor.entries.is_empty() {
                aor.since = e.since;
                let at = e.since.saturating_add(retention);
                let deadline = now + Duration::from_micros(at.saturating_sub(wall));
                r.wheel.insert(deadline, Timer::Forget { slot, gen: 0 });
            }
        }
        r
    }

    /// The partition this registrar writes.
    pub fn partition(&self) -> u16 {
        self.partition
    }

    /// Seq of the last record emitted.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Bindings held.
    pub fn len(&self) -> usize {
        self.bindings
    }

    /// True when no binding is held.
    pub fn is_empty(&self) -> bool {
        self.bindings == 0
    }

    /// Known AoRs (with or without bindings).
    pub fn aors(&self) -> usize {
        self.index.len()
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The configuration.
    pub fn config(&self) -> &RegistrarConfig {
        &self.cfg
    }

    /// The next queued record, oldest first.
    pub fn poll_record(&mut self) -> Option<Record> {
        self.records.pop_front()
    }

    /// Every queued record, oldest first.
    pub fn drain_records(&mut self) -> std::collections::vec_deque::Drain<'_, Record> {
        self.records.drain(..)
    }

    /// Records queued and not yet taken.
    pub fn pending_records(&self) -> usize {
        self.records.len()
    }

    /// When `handle_timeout` next has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.wheel.next_deadline()
    }

    /// The bindings of `aor_key` (the writer's view, for tests and tools).
    pub fn bindings_of(&self, aor_key: &[u8]) -> Vec<Binding> {
        self.index
            .get(aor_key)
            .and_then(|&s| self.aor(s))
            .map(|a| a.entries.iter().map(|e| e.binding.clone()).collect())
            .unwrap_or_default()
    }

    /// The whole state of the partition (for a compaction of the store, or
    /// to resync a replica); `seq` is the last record emitted.
    pub fn snapshot(&self) -> PartitionState {
        let mut bindings = Vec::with_capacity(self.bindings);
        let mut empty = Vec::new();
        for aor in self.aors.iter().flatten() {
            if aor.entries.is_empty() {
                empty.push(EmptyAor {
                    aor: aor.key.clone(),
                    since: aor.since,
                });
            }
            bindings.extend(aor.entries.iter().map(|e| e.binding.clone()));
        }
        bindings.sort_by(|a, b| (a.aor(), a.id()).cmp(&(b.aor(), b.id())));
        empty.sort();
        PartitionState {
            partition: self.partition,
            seq: self.seq,
            bindings,
            empty,
            entries: Vec::new(),
        }
    }

    fn aor(&self, slot: u32) -> Option<&Aor> {
        self.aors.get(slot as usize).and_then(Option::as_ref)
    }

    fn aor_mut(&mut self, slot: u32) -> Option<&mut Aor> {
        self.aors.get_mut(slot as usize).and_then(Option::as_mut)
    }

    /// The slot of `key`, created (empty, since 0) when absent.
    fn slot_for(&mut self, key: &[u8]) -> u32 {
        if let Some(&s) = self.index.get(key) {
            return s;
        }
        let aor = Aor {
            key: key.into(),
            entries: Vec::new(),
            since: 0,
            gen: 0,
        };
        let slot = match self.free.pop() {
            Some(s) => {
                if let Some(x) = self.aors.get_mut(s as usize) {
                    *x = Some(aor);
                }
                s
            }
            None => {
                self.aors.push(Some(aor));
                (self.aors.len() - 1) as u32
            }
        };
        self.index.insert(key.into(), slot);
        slot
    }

    /// True when `aor_key` has a live binding (at the last time the registrar saw).
    pub fn has_bindings(&self, aor_key: &[u8]) -> bool {
        self.index
            .get(aor_key)
            .and_then(|&s| self.aor(s))
            .is_some_and(|a| !a.entries.is_empty())
    }

    /// Emits `op`, a change of a local service that shares this partition's
    /// feed (presence), with the next seq.
    pub fn emit_service(&mut self, wall: u64, op: Op) {
        self.emit(wall, op);
    }

    fn emit(&mut self, wall: u64, op: Op) {
        self.seq += 1;
        self.records.push_back(Record {
            remote: false,
            partition: self.partition,
            seq: self.seq,
            commit: wall,
            op,
        });
    }

    /// Handles a REGISTER that arrived from `src` on `socket`, writing the
    /// whole response into `reply`. See the module doc for the rules.
    pub fn handle_register(
        &mut self,
        now: Instant,
        wall: u64,
        msg: &Message<'_>,
        src: &Peer,
        reply: &mut [u8],
    ) -> Result<Reply, RegistrarError> {
        let head = Head {
            to: msg.to().ok(),
            top_via: msg.top_via().ok(),
            aor: None,
        };
        self.register(now, wall, msg, head, src, reply)
    }

    /// [`Registrar::handle_register`] for a REGISTER whose essentials the
    /// caller has decoded (the proxy's check phase), and `aor`, the AoR key
    /// of its To when the caller computed it (`AorKey::from_uri` of the To
    /// URI; `None`: computed here): none of them is parsed again.
    #[allow(clippy::too_many_arguments)]
    pub fn handle_register_with<'m>(
        &mut self,
        now: Instant,
        wall: u64,
        msg: &Message<'m>,
        ess: &Essentials<'m>,
        aor: Option<&AorKey>,
        src: &Peer,
        reply: &mut [u8],
    ) -> Result<Reply, RegistrarError> {
        let head = Head {
            to: Some(ess.to),
            top_via: Some(ess.top_via),
            aor: aor.copied(),
        };
        self.register(now, wall, msg, head, src, reply)
    }

    fn register<'m>(
        &mut self,
        now: Instant,
        wall: u64,
        msg: &Message<'m>,
        head: Head<'m>,
        src: &Peer,
        reply: &mut [u8],
    ) -> Result<Reply, RegistrarError> {
        if msg.method() != Method::Register {
            return Err(RegistrarError::NotRegister);
        }
        self.counters.requests += 1;
        let mut extra = core::mem::take(&mut self.extra);
        extra.clear();
        let to_tagged = head.to.map(|t| t.tag().is_some());
        let outcome = self.process(now, wall, msg, head, src, &mut extra);
        let (code, reason) = match outcome {
            Ok(()) => {
                self.counters.accepted += 1;
                (200, "OK")
            }
            Err(Reject::WrongPartition(owner)) => {
                self.extra = extra;
                self.counters.requests -= 1;
                return Err(RegistrarError::WrongPartition { owner });
            }
            Err(r) => {
                self.counters.rejected += 1;
                extra.clear();
                self.reject_headers(r, &mut extra);
                reject_status(r)
            }
        };
        let tag = to_tag(self.cfg.tag_secret, msg);
        let spec = ResponseSpec {
            to_tag: Some(&tag),
            to_tagged,
            received: Some(Received {
                ip: src.remote.ip(),
                port: src.remote.port(),
            }),
            extra: &extra,
            ..ResponseSpec::new(code, reason)
        };
        let written = emit::response(msg, &spec, reply);
        self.extra = extra;
        Ok(Reply {
            len: written?,
            status: code,
        })
    }

    fn reject_headers(&self, r: Reject<'_>, extra: &mut Vec<u8>) {
        match r {
            Reject::BadExtension(tag) => {
                extra.extend_from_slice(b"Unsupported: ");
                extra.extend_from_slice(tag);
                extra.extend_from_slice(b"\r\n");
            }
            Reject::IntervalTooBrief => {
                let _ = write!(extra, "Min-Expires: {}\r\n", self.cfg.min_expires);
            }
            Reject::Overloaded => {
                let _ = write!(extra, "Retry-After: {}\r\n", self.cfg.retry_after);
            }
            _ => {}
        }
    }

    #[allow(clippy::too_many_lines)]
    fn process<'m>(
        &mut self,
        now: Instant,
        wall: u64,
        msg: &Message<'m>,
        head: Head<'m>,
        src: &Peer,
        extra: &mut Vec<u8>,
    ) -> Result<(), Reject<'m>> {
        // §10.3 step 2: extensions the UA requires.
        for opt in msg.values(HeaderName::Require) {
            let known = opt.eq_ignore_ascii_case(b"path")
                || (self.cfg.outbound && opt.eq_ignore_ascii_case(b"outbound"));
            if !known {
                return Err(Reject::BadExtension(opt));
            }
        }
        // Step 5: the AoR.
        let key = match head.aor {
            Some(k) => k,
            None => aor_of(head.to)?,
        };
        if !self
            .cfg
            .domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(key.domain()))
        {
            return Err(Reject::NotFound);
        }
        let owner = partition_of(key.as_bytes(), self.partitions);
        if owner != self.partition {
            return Err(Reject::WrongPartition(owner));
        }
        // Step 6: Expires, Contacts, Path.
        let header_expires = match msg.header(HeaderName::Expires) {
            None => None,
            Some(v) => Some(
                parse_delta_seconds(v)
                    .map_err(|_| Reject::BadRequest("Bad Request (Malformed Expires)"))?,
            ),
        };
        let mut star = false;
        let mut reqs: Vec<ContactReq<'m>> = Vec::new();
        let mut values = 0;
        for v in msg.values(HeaderName::Contact) {
            values += 1;
            if values > MAX_CONTACT_VALUES {
                return Err(Reject::Forbidden("Forbidden (Too Many Contacts)"));
            }
            let c = Contact::parse(v)
                .map_err(|_| Reject::BadRequest("Bad Request (Malformed Contact)"))?;
            let na = match c {
                Contact::Star => {
                    star = true;
                    continue;
                }
                Contact::Addr(na) => na,
            };
            let uri = match na.uri() {
                Ok(u) if matches!(u.scheme, Scheme::Sip | Scheme::Sips) => u,
                Ok(_) | Err(ValueError::Scheme) => {
                    return Err(Reject::BadRequest(
                        "Bad Request (Unsupported Contact URI Scheme)",
                    ))
                }
                Err(_) => return Err(Reject::BadRequest("Bad Request (Malformed Contact URI)")),
            };
            let params = c.params();
            let instance = match params.instance {
                None => &b""[..],
                Some(v) => v
                    .and_then(|v| v.strip_prefix(b"\"")?.strip_suffix(b"\""))
                    .filter(|v| !v.is_empty())
                    .ok_or(Reject::BadRequest("Bad Request (Malformed +sip.instance)"))?,
            };
            let reg_id = match params.reg_id {
                None => None,
                Some(v) => Some(
                    v.and_then(scan::parse_u32)
                        .filter(|r| (1..1 << 31).contains(r))
                        .ok_or(Reject::BadRequest("Bad Request (Malformed reg-id)"))?,
                ),
            };
            // RFC 5626 §6: reg-id means nothing without an instance.
            let reg_id = reg_id.filter(|_| !instance.is_empty());
            let requested = params
                .expires
                .or(header_expires)
                .unwrap_or(self.cfg.default_expires);
            reqs.push(ContactReq {
                uri_bytes: na.uri_bytes,
                uri,
                expires: requested,
                q: params.q.unwrap_or(1000),
                instance,
                reg_id,
                matches: None,
                skip: false,
            });
        }
        if star {
            if !reqs.is_empty() || values > 1 {
                return Err(Reject::BadRequest(
                    "Bad Request (Wildcard Contact With Other Contacts)",
                ));
            }
            if header_expires != Some(0) {
                return Err(Reject::BadRequest(
                    "Bad Request (Wildcard Contact Without Expires: 0)",
                ));
            }
        }
        let ua_path = supports(msg, b"path");
        self.path.clear();
        let mut last_path: Option<NameAddr<'m>> = None;
        for v in msg.values(HeaderName::Path) {
            let na = NameAddr::parse(v)
                .map_err(|_| Reject::BadRequest("Bad Request (Malformed Path)"))?;
            if !self.path.is_empty() {
                self.path.extend_from_slice(b", ");
            }
            self.path.extend_from_slice(v);
            last_path = Some(na);
        }
        if last_path.is_some() && !ua_path && self.cfg.path_mode == PathMode::Strict {
            return Err(Reject::BadExtension(b"path"));
        }
        let outbound = self.cfg.outbound
            && supports(msg, b"outbound")
            && reqs.iter().any(|r| r.reg_id.is_some());
        if outbound {
            if let Some(first_hop) = last_path {
                let ob = first_hop
                    .uri()
                    .ok()
                    .is_some_and(|u| u.param(b"ob").is_some());
                if !ob {
                    return Err(Reject::FirstHopLacksOutbound);
                }
            }
        }
        for r in &mut reqs {
            if r.expires == 0 {
                continue;
            }
            if r.expires < self.cfg.min_expires {
                if r.expires < 3600 {
                    return Err(Reject::IntervalTooBrief);
                }
                r.expires = self.cfg.min_expires;
            }
            r.expires = r.expires.min(self.cfg.max_expires);
        }

        // Step 7: match each contact to a binding; the whole request fails on
        // an out-of-order CSeq.
        let call_id = msg.call_id();
        let cseq = msg.cseq().number;
        let slot = self.index.get(key.as_bytes()).copied();
        let existing: &[Entry] = slot
            .and_then(|s| self.aor(s))
            .map_or(&[][..], |a| a.entries.as_slice());
        let stale = |e: &Entry| e.binding.call_id() == call_id && cseq <= e.binding.cseq();
        if star && existing.iter().any(stale) {
            return Err(Reject::OutOfOrder);
        }
        for i in 0..reqs.len() {
            let Some(r) = reqs.get(i).copied() else { break };
            let found = existing.iter().position(|e| same_binding(&e.binding, &r));
            if let Some(m) = found {
                if existing.get(m).is_some_and(stale) {
                    return Err(Reject::OutOfOrder);
                }
            }
            // A later Contact with the same identity wins (same request).
            let dup = reqs
                .iter()
                .skip(i + 1)
                .any(|later| same_identity(&r, later));
            if let Some(x) = reqs.get_mut(i) {
                x.matches = found;
                x.skip = dup;
            }
        }
        let live = |r: &&ContactReq<'_>| !r.skip;
        let new = reqs
            .iter()
            .filter(live)
            .filter(|r| r.expires > 0 && r.matches.is_none())
            .count();
        let removed = if star {
            existing.len()
        } else {
            reqs.iter()
                .filter(live)
                .filter(|r| r.expires == 0 && r.matches.is_some())
                .count()
        };
        let max = usize::from(self.cfg.max_contacts.max(1));
        if new > max {
            return Err(Reject::Forbidden("Forbidden (Too Many Contacts)"));
        }
        let after = existing.len() - removed + new;
        let evict = after.saturating_sub(max);
        if new > 0 && self.bindings + new > self.cfg.max_bindings + removed + evict {
            return Err(Reject::Overloaded);
        }
        // Victims: untouched bindings closest to expiry.
        let mut victims: Vec<usize> = Vec::new();
        if evict > 0 {
            let mut untouched: Vec<usize> = (0..existing.len())
                .filter(|&i| !reqs.iter().any(|r| r.matches == Some(i)))
                .collect();
            untouched.sort_by_key(|&i| existing.get(i).map_or(0, |e| e.binding.expires()));
            victims.extend(untouched.into_iter().take(evict));
        }

        // Commit.
        let touched = star || new > 0 || removed > 0 || reqs.iter().any(|r| r.expires > 0);
        if !touched {
            // A fetch (or the removal of nothing): no change.
            self.write_contacts(slot, wall, ua_path, outbound, extra);
            return Ok(());
        }
        let created = slot.is_none();
        let slot = match slot {
            Some(s) => s,
            None if new > 0 => self.slot_for(key.as_bytes()),
            // Removals for an AoR we do not know: nothing to do.
            None => {
                self.write_contacts(None, wall, ua_path, outbound, extra);
                return Ok(());
            }
        };
        let was_empty = self.aor(slot).is_none_or(|a| a.entries.is_empty());
        let ua = msg
            .header(HeaderName::UserAgent)
            .map(|u| u.get(..u.len().min(MAX_USER_AGENT)).unwrap_or_default())
            .unwrap_or_default();
        // Removals first (star, evictions, expires=0), by id so indices stay valid.
        let mut remove_ids: Vec<u64> = Vec::new();
        if let Some(aor) = self.aor(slot) {
            let id_at = |i: usize| aor.entries.get(i).map(|e| e.binding.id());
            if star {
                remove_ids.extend(aor.entries.iter().map(|e| e.binding.id()));
            } else {
                remove_ids.extend(victims.iter().filter_map(|&i| id_at(i)));
                remove_ids.extend(
                    reqs.iter()
                        .filter(|r| !r.skip && r.expires == 0)
                        .filter_map(|r| r.matches.and_then(id_at)),
                );
            }
        }
        self.counters.evicted += victims.len() as u64;
        self.counters.removed += (remove_ids.len() - victims.len()) as u64;
        // Upserts: (id, binding) computed against the pre-request entries.
        let mut upserts: Vec<(Option<u64>, ContactReq<'m>)> = Vec::new();
        if !star {
            if let Some(aor) = self.aor(slot) {
                for r in reqs.iter().filter(|r| !r.skip && r.expires > 0) {
                    let id = r
                        .matches
                        .and_then(|i| aor.entries.get(i).map(|e| e.binding.id()));
                    upserts.push((id, *r));
                }
            }
        }
        for id in remove_ids {
            self.remove_binding(slot, id);
            let key: Box<[u8]> = key.as_bytes().into();
            self.emit(wall, Op::Remove { aor: key, id });
        }
        for (id, r) in upserts {
            let id = match id {
                Some(id) => {
                    self.counters.refreshed += 1;
                    id
                }
                None => {
                    self.counters.added += 1;
                    self.seq + 1
                }
            };
            let expires = wall.saturating_add(u64::from(r.expires) * 1_000_000);
            let parts = BindingParts {
                id,
                aor: key.as_bytes(),
                contact: r.uri_bytes,
                expires,
                q: r.q,
                call_id,
                cseq,
                // Over a stream the UA is reached on its connection (§18.2.2,
                // RFC 5626): its source, whatever its Contact says.
                received: if src.transport.is_stream() {
                    Some(src.remote)
                } else {
                    reach_at(head.top_via.as_ref(), &r.uri, src.remote)
                },
                socket: src.local,
                flow: src.flow.0,
                path: &self.path,
                instance: r.instance,
                reg_id: r.reg_id,
                user_agent: ua,
            };
            let Ok(binding) = Binding::new(&parts) else {
                // Only an over-long field fails; the parser caps messages at 64 KiB.
                continue;
            };
            let deadline = now + Duration::from_secs(u64::from(r.expires));
            self.put_binding(slot, Cow::Borrowed(&binding), deadline);
            self.emit(wall, Op::Upsert(binding));
        }
        let now_empty = self.aor(slot).is_none_or(|a| a.entries.is_empty());
        // An AoR turning empty starts its retention (a new Forget timer); one
        // turning non-empty cancels the pending Forget (generation bump).
        let start_retention = now_empty && (!was_empty || created);
        if let Some(aor) = self.aor_mut(slot) {
            if start_retention {
                aor.since = wall;
            }
            if now_empty != was_empty || start_retention {
                aor.gen = aor.gen.wrapping_add(1);
            }
        }
        if start_retention {
            self.schedule_forget(now, slot);
        }
        self.write_contacts(Some(slot), wall, ua_path, outbound, extra);
        Ok(())
    }

    fn schedule_forget(&mut self, now: Instant, slot: u32) {
        if let Some(gen) = self.aor(slot).map(|a| a.gen) {
            self.wheel
                .insert(now + self.cfg.known_retention, Timer::Forget { slot, gen });
        }
    }

    fn remove_binding(&mut self, slot: u32, id: u64) {
        if let Some(aor) = self.aor_mut(slot) {
            let before = aor.entries.len();
            aor.entries.retain(|e| e.binding.id() != id);
            let gone = before - aor.entries.len();
            self.bindings -= gone;
        }
    }

    /// Stores `binding`. A borrowed one (the caller's goes into a record)
    /// that refreshes an existing binding is copied into the old one's
    /// block: a refresh allocates nothing here.
    fn put_binding(&mut self, slot: u32, binding: Cow<'_, Binding>, deadline: Instant) {
        let id = binding.id();
        if binding.flow() != 0 {
            let slots = self.flows.entry(binding.flow()).or_default();
            if !slots.contains(&slot) {
                slots.push(slot);
            }
        }
        let Some(aor) = self.aors.get_mut(slot as usize).and_then(Option::as_mut) else {
            return;
        };
        let gen = match aor.entries.iter_mut().find(|e| e.binding.id() == id) {
            // Later than the pending timer: it stays, and re-arms when it fires.
            Some(e) if e.due <= deadline => {
                replace(&mut e.binding, binding);
                return;
            }
            Some(e) => {
                e.gen = e.gen.wrapping_add(1);
                replace(&mut e.binding, binding);
                e.due = deadline;
                e.gen
            }
            None => {
                aor.entries.push(Entry {
                    binding: binding.into_owned(),
                    gen: 0,
                    due: deadline,
                });
                self.bindings += 1;
                0
            }
        };
        self.wheel.insert(deadline, Timer::Expire { slot, id, gen });
    }

    /// Writes the 200's extra headers: one Contact per binding with its
    /// remaining expiry, Date, Path, Require.
    fn write_contacts(
        &self,
        slot: Option<u32>,
        wall: u64,
        ua_path: bool,
        outbound: bool,
        extra: &mut Vec<u8>,
    ) {
        if let Some(aor) = slot.and_then(|s| self.aor(s)) {
            for e in &aor.entries {
                let b = &e.binding;
                extra.extend_from_slice(b"Contact: <");
                extra.extend_from_slice(b.contact());
                let left = b.expires().saturating_sub(wall).div_ceil(1_000_000);
                let _ = write!(extra, ">;expires={left}");
                if b.q() != 1000 {
                    extra.extend_from_slice(b";q=");
                    put_q(extra, b.q());
                }
                if !b.instance().is_empty() {
                    extra.extend_from_slice(b";+sip.instance=\"");
                    extra.extend_from_slice(b.instance());
                    extra.push(b'"');
                }
                if let Some(r) = b.reg_id() {
                    let _ = write!(extra, ";reg-id={r}");
                }
                extra.extend_from_slice(b"\r\n");
            }
        }
        extra.extend_from_slice(b"Date: ");
        extra.extend_from_slice(&date::format(wall));
        extra.extend_from_slice(b"\r\n");
        if ua_path && !self.path.is_empty() {
            extra.extend_from_slice(b"Path: ");
            extra.extend_from_slice(&self.path);
            extra.extend_from_slice(b"\r\n");
        }
        if outbound {
            extra.extend_from_slice(b"Require: outbound\r\nFlow-Timer: ");
            let mut n = [0u8; 10];
            let mut w = crate::sip::Writer::new(&mut n);
            if w.put_u64(u64::from(self.cfg.flow_timer)).is_ok() {
                let len = w.len();
                extra.extend_from_slice(n.get(..len).unwrap_or_default());
            }
            extra.extend_from_slice(b"\r\n");
        }
    }

    /// Timers pending in the registrar's wheel (binding expiries and AoR
    /// retention): about one per binding and empty AoR.
    pub fn timers(&self) -> usize {
        self.wheel.len()
    }

    /// Time has reached `now` (wall clock `wall`): expires the bindings due
    /// and forgets AoRs empty for the retention time, queueing their records.
    pub fn handle_timeout(&mut self, now: Instant, wall: u64) {
        let mut fired = core::mem::take(&mut self.fired);
        fired.clear();
        self.wheel.expire(now, |_, t| fired.push(t));
        for t in fired.drain(..) {
            match t {
                Timer::Expire { slot, id, gen } => self.expire(now, wall, slot, id, gen),
                Timer::Forget { slot, gen } => self.forget(wall, slot, gen),
            }
        }
        self.fired = fired;
    }

    fn expire(&mut self, now: Instant, wall: u64, slot: u32, id: u64, gen: u32) {
        let Some(aor) = self.aor(slot) else { return };
        let Some(e) = aor
            .entries
            .iter()
            .find(|e| e.binding.id() == id && e.gen == gen)
        else {
            // Refreshed to a shorter expiry (its timer is pending) or removed.
            return;
        };
        let expires = e.binding.expires();
        if expires > wall {
            // Refreshed since this timer was set (or the wall clock moved
            // back relative to the monotonic one): wait for the rest.
            let deadline = now + Duration::from_micros(expires - wall);
            if let Some(e) = self
                .aor_mut(slot)
                .and_then(|a| a.entries.iter_mut().find(|e| e.binding.id() == id))
            {
                e.gen = e.gen.wrapping_add(1);
                e.due = deadline;
                let gen = e.gen;
                self.wheel.insert(deadline, Timer::Expire { slot, id, gen });
            }
            return;
        }
        let key = aor.key.clone();
        self.remove_binding(slot, id);
        self.counters.expired += 1;
        self.emit(wall, Op::Remove { aor: key, id });
        let empty = self.aor(slot).is_some_and(|a| a.entries.is_empty());
        if empty {
            if let Some(aor) = self.aor_mut(slot) {
                aor.since = wall;
                aor.gen = aor.gen.wrapping_add(1);
            }
            self.schedule_forget(now, slot);
        }
    }

    /// The connection `flow` closed: its bindings are removed (with
    /// records), as a registrar does when a UA's flow fails and nothing can
    /// reach the UA through it any more (RFC 5626 §5.3; a UA using outbound
    /// registers again over a new flow).
    pub fn handle_flow_closed(&mut self, now: Instant, wall: u64, flow: u32) {
        if flow == 0 {
            return;
        }
        let Some(slots) = self.flows.remove(&flow) else {
            return;
        };
        for slot in slots {
            let Some(aor) = self.aor(slot) else { continue };
            let ids: Vec<u64> = aor
                .entries
                .iter()
                .filter(|e| e.binding.flow() == flow)
                .map(|e| e.binding.id())
                .collect();
            if ids.is_empty() {
                continue;
            }
            let key = aor.key.clone();
            for id in ids {
                self.remove_binding(slot, id);
                self.counters.flow_closed += 1;
                self.emit(
                    wall,
                    Op::Remove {
                        aor: key.clone(),
                        id,
                    },
                );
            }
            if self.aor(slot).is_some_and(|a| a.entries.is_empty()) {
                if let Some(aor) = self.aor_mut(slot) {
                    aor.since = wall;
                    aor.gen = aor.gen.wrapping_add(1);
                }
                self.schedule_forget(now, slot);
            }
        }
    }

    /// An operator removes every binding of `aor_key` (`sipedge ctl
    /// bindings remove`): with records, like an unregistration; the number
    /// removed.
    pub fn remove_aor(&mut self, now: Instant, wall: u64, aor_key: &[u8]) -> usize {
        let Some(&slot) = self.index.get(aor_key) else {
            return 0;
        };
        let Some(aor) = self.aor(slot) else { return 0 };
        let ids: Vec<u64> = aor.entries.iter().map(|e| e.binding.id()).collect();
        let key = aor.key.clone();
        for &id in &ids {
            self.remove_binding(slot, id);
            self.emit(
                wall,
                Op::Remove {
                    aor: key.clone(),
                    id,
                },
            );
        }
        if !ids.is_empty() {
            if let Some(aor) = self.aor_mut(slot) {
                aor.since = wall;
                aor.gen = aor.gen.wrapping_add(1);
            }
            self.schedule_forget(now, slot);
        }
        ids.len()
    }

    /// Applies `op`, a change another node made and the shared store's
    /// stream brought (this registrar's partition), to this writer's state,
    /// and emits it (with the writer's `commit` time) as a record marked
    /// `remote` so this node's replicas follow it in order (the shared store is not written again). An
    /// `Upsert` older than what is held (same Call-ID, lower CSeq: RFC 3261
    /// §10.3 step 7) is skipped. Returns whether anything changed.
    pub fn apply_remote(&mut self, now: Instant, wall: u64, commit: u64, op: &Op) -> bool {
        match op {
            Op::Upsert(b) => {
                let b = b.for_another_node();
                let slot = self.slot_for(b.aor());
                let stale = self.aor(slot).is_some_and(|a| {
                    a.entries.iter().any(|e| {
                        e.binding.id() == b.id()
                            && e.binding.call_id() == b.call_id()
                            && e.binding.cseq() > b.cseq()
                    })
                });
                if stale || b.expires() <= wall {
                    return false;
                }
                let deadline = now + Duration::from_micros(b.expires().saturating_sub(wall));
                if let Some(aor) = self.aor_mut(slot) {
                    aor.gen = aor.gen.wrapping_add(1);
                }
                self.put_binding(slot, Cow::Borrowed(&b), deadline);
                self.emit_remote(commit, Op::Upsert(b));
                true
            }
            Op::Remove { aor, id } => {
                let Some(&slot) = self.index.get(&aor[..]) else {
                    return false;
                };
                let had = self
                    .aor(slot)
                    .is_some_and(|a| a.entries.iter().any(|e| e.binding.id() == *id));
                if !had {
                    return false;
                }
                self.remove_binding(slot, *id);
                if self.aor(slot).is_some_and(|a| a.entries.is_empty()) {
                    if let Some(a) = self.aor_mut(slot) {
                        a.since = wall;
                        a.gen = a.gen.wrapping_add(1);
                    }
                    self.schedule_forget(now, slot);
                }
                self.emit_remote(commit, op.clone());
                true
            }
            Op::Forget { aor } => {
                let Some(&slot) = self.index.get(&aor[..]) else {
                    return false;
                };
                let gen = self.aor(slot).map_or(0, |a| a.gen);
                let before = self.seq;
                self.forget(wall, slot, gen);
                if let Some(r) = self.records.back_mut().filter(|_| self.seq != before) {
                    r.remote = true;
                }
                self.seq != before
            }
            // Presence entries are this node's own (not in the stream).
            Op::Put(_) | Op::Del { .. } => false,
        }
    }

    /// Emits `op` with the writer's `commit` time (so the replicas' lag
    /// measures from the other node's commit: cross-node visibility).
    /// Emits an `Upsert` of every binding held (live at `wall`), for a
    /// shared store that lost its data (Redis restarted empty): the store
    /// writes them again. Returns how many.
    pub fn reseed(&mut self, wall: u64) -> usize {
        let all: Vec<Binding> = self
            .aors
            .iter()
            .flatten()
            .flat_map(|a| a.entries.iter().map(|e| e.binding.clone()))
            .filter(|b| b.expires() > wall)
            .collect();
        let n = all.len();
        for b in all {
            self.emit(wall, Op::Upsert(b));
        }
        n
    }

    fn emit_remote(&mut self, commit: u64, op: Op) {
        self.emit(commit, op);
        if let Some(r) = self.records.back_mut() {
            r.remote = true;
        }
    }

    fn forget(&mut self, wall: u64, slot: u32, gen: u32) {
        let due = self
            .aor(slot)
            .is_some_and(|a| a.entries.is_empty() && a.gen == gen);
        if !due {
            return;
        }
        let Some(aor) = self.aors.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        self.index.remove(&aor.key);
        self.free.push(slot);
        self.counters.forgotten += 1;
        self.emit(wall, Op::Forget { aor: aor.key });
    }
}

/// True when the request's Supported lists `tag`.
fn supports(msg: &Message<'_>, tag: &[u8]) -> bool {
    msg.values(HeaderName::Supported)
        .any(|v| v.eq_ignore_ascii_case(tag))
}

/// Puts `new` where `old` was, reusing `old`'s block for a borrowed one of
/// the same size (`Binding::clone_from`).
fn replace(old: &mut Binding, new: Cow<'_, Binding>) {
    match new {
        Cow::Borrowed(b) => old.clone_from(b),
        Cow::Owned(b) => *old = b,
    }
}

/// Whether `r` designates the existing binding `b` (module doc: identity).
fn same_binding(b: &Binding, r: &ContactReq<'_>) -> bool {
    if r.instance.is_empty() {
        b.instance().is_empty() && Uri::parse(b.contact()).is_ok_and(|u| u.equivalent(&r.uri))
    } else {
        b.instance().eq_ignore_ascii_case(r.instance) && b.reg_id() == r.reg_id
    }
}

/// Whether two contacts of one request designate the same binding.
fn same_identity(a: &ContactReq<'_>, b: &ContactReq<'_>) -> bool {
    if a.instance.is_empty() || b.instance.is_empty() {
        a.instance.is_empty() && b.instance.is_empty() && a.uri.equivalent(&b.uri)
    } else {
        a.instance.eq_ignore_ascii_case(b.instance) && a.reg_id == b.reg_id
    }
}

fn reject_status(r: Reject<'_>) -> (u16, &'static str) {
    match r {
        Reject::BadRequest(reason) => (400, reason),
        Reject::BadExtension(_) => (420, "Bad Extension"),
        Reject::FirstHopLacksOutbound => (439, "First Hop Lacks Outbound Support"),
        Reject::Forbidden(reason) => (403, reason),
        Reject::IntervalTooBrief => (423, "Interval Too Brief"),
        Reject::NotFound => (404, "Not Found"),
        Reject::OutOfOrder => (500, "Server Internal Error (Out-Of-Order CSeq)"),
        Reject::Overloaded => (503, "Service Unavailable (Too Many Bindings)"),
        Reject::WrongPartition(_) => (500, "Server Internal Error"),
    }
}

/// Writes q (thousandths) as a qvalue: `1`, `0.5`, `0.125`, `0`.
fn put_q(out: &mut Vec<u8>, q: u16) {
    if q >= 1000 {
        out.push(b'1');
        return;
    }
    if q == 0 {
        out.push(b'0');
        return;
    }
    let digits = [
        b'0' + (q / 100) as u8,
        b'0' + (q / 10 % 10) as u8,
        b'0' + (q % 10) as u8,
    ];
    let n = if q.is_multiple_of(100) {
        1
    } else if q.is_multiple_of(10) {
        2
    } else {
        3
    };
    out.extend_from_slice(b"0.");
    out.extend_from_slice(digits.get(..n).unwrap_or_default());
}

/// A To tag for the response, derived from the Call-ID and CSeq: stable for
/// retransmissions, no RNG needed.
fn to_tag(secret: u64, msg: &Message<'_>) -> [u8; 16] {
    let h = hash_bytes(secret ^ u64::from(msg.cseq().number), msg.call_id());
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        let nibble = (h >> (60 - 4 * i)) & 0xf;
        *o = b"0123456789abcdef"
            .get(nibble as usize)
            .copied()
            .unwrap_or(b'0');
    }
    out
}

/// The partition owning the AoR of a REGISTER's To, when it has one: the
/// shard hands the request to that partition's owner. `None`: the request
/// has no usable AoR, any registrar answers it (400/404) without state.
pub fn register_partition(msg: &Message<'_>, partitions: u16) -> Option<u16> {
    to_partition(&msg.to().ok()?, partitions)
}

/// [`register_partition`] of a To already decoded.
pub fn to_partition(to: &NameAddr<'_>, partitions: u16) -> Option<u16> {
    let uri = to.uri().ok()?;
    let key = AorKey::from_uri(&uri).ok()?;
    Some(key.partition(partitions))
}
