//! [`Presence`]: one shard's partition of the presence service.
//!
//! ```text
//!  PUBLISH ──► publications of the presentity (SIP-ETag; 412 / 423 / 489 / 400)
//!                 └─► every watcher of the presentity: a NOTIFY queued
//!  SUBSCRIBE ─► a subscription dialog (200 + Expires + Contact), its first NOTIFY once durable
//!  location change (a REGISTER, an expiry, a closed flow) ─► watchers (online ↔ offline);
//!                 stored MESSAGEs delivered to the new contacts
//!  poll_request ─► NOTIFY / MESSAGE bytes (no Via: the proxy runs the client transaction)
//!  handle_outcome ◄─ its final status: 481 / 408 remove the subscription; a 2xx
//!                    deletes the delivered message
//! ```
//!
//! Every durable change is an [`Op`] (an entry of the partition feed) that
//! the caller emits and persists before the request's answer is released;
//! [`Presence::from_entries`] rebuilds the partition after a restart.
//!
//! A NOTIFY's body is the presentity's document composed when the NOTIFY is
//! sent, so a watcher throttled by `notify_interval_ms` always ends on the
//! latest state. One NOTIFY per subscription is in flight at a time.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io::Write as _;

use super::codec::{kind, Reader, Writer};
use super::pidf;
use crate::hash::{hash_bytes, KeyHash};
use crate::location::{AorKey, Entry, Op};
use crate::sip::{self, HeaderName, Message, Method, NameAddr, Received, ResponseSpec};
use crate::time::{Duration, Instant};
use crate::transport::{FlowId, Peer};

/// What a watcher rule (or the default) decides for a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// The watcher sees the presentity's state.
    #[default]
    Allow,
    /// 403.
    Deny,
    /// The subscription exists but is `pending` (no state) until a rule allows it.
    Pending,
}

/// One watcher authorization rule (`[[presence.rule]]`): the first rule
/// whose lists all match decides; an empty list matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatcherRule {
    /// The watcher's user parts (From).
    pub watcher_user: Vec<String>,
    /// The watcher's domains (From).
    pub watcher_domain: Vec<String>,
    /// The watched users.
    pub presentity_user: Vec<String>,
    /// What to do.
    pub action: Action,
}

/// The `[presence]` table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    /// Serve PUBLISH and SUBSCRIBE (event `presence`) for the served domains.
    pub enabled: bool,
    /// PUBLISH/SUBSCRIBE Expires below this → 423 with Min-Expires (s).
    pub min_expires: u32,
    /// Longer Expires are lowered to this (s).
    pub max_expires: u32,
    /// PUBLISH and SUBSCRIBE without Expires (s; RFC 3903 and RFC 3856 say 3600).
    pub default_expires: u32,
    /// A user with no registered contact is shown offline, whatever lingers published.
    pub offline_when_unregistered: bool,
    /// Least time between two NOTIFYs to one watcher (ms; 0: none).
    pub notify_interval_ms: u64,
    /// Publications per presentity (devices).
    pub max_publications: usize,
    /// Watchers per presentity.
    pub max_watchers: usize,
    /// Subscriptions per shard.
    pub max_subscriptions: usize,
    /// Presentities per shard.
    pub max_presentities: usize,
    /// Watchers from another domain than the presentity's, when no rule matched.
    pub others: Action,
    /// Watcher rules, in order.
    pub rule: Vec<WatcherRule>,
    /// Keep MESSAGEs for users with no contact (202) and deliver them at their next REGISTER.
    pub store_messages: bool,
    /// Stored MESSAGEs per user.
    pub max_messages_per_user: usize,
    /// Stored MESSAGEs per shard.
    pub max_messages: usize,
    /// Largest stored MESSAGE body (bytes).
    pub max_message_body: usize,
    /// A stored MESSAGE is dropped after this (s).
    pub message_expires: u32,
    /// Secret for tags and entity tags (set by the process, not the file).
    #[serde(skip)]
    pub secret: u64,
    /// Our Contact URI per listener (index: [`crate::transport::SocketId`]), for
    /// subscription dialogs (set by the process).
    #[serde(skip)]
    pub contacts: Vec<Box<[u8]>>,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_expires: 60,
            max_expires: 3600,
            default_expires: 3600,
            offline_when_unregistered: true,
            notify_interval_ms: 0,
            max_publications: 16,
            max_watchers: 100_000,
            max_subscriptions: 2_000_000,
            max_presentities: 2_000_000,
            others: Action::Deny,
            rule: Vec::new(),
            store_messages: true,
            max_messages_per_user: 100,
            max_messages: 100_000,
            max_message_body: 16 * 1024,
            message_expires: 7 * 86_400,
            secret: 0,
            contacts: Vec::new(),
        }
    }
}

/// Where a stored MESSAGE goes: one registered contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Where to send it (the contact's flow or source address).
    pub to: Peer,
    /// The contact URI (the Request-URI).
    pub target: Box<[u8]>,
    /// Route values (a Path the UA registered through), comma-separated.
    pub route: Box<[u8]>,
}

/// A request [`Presence::poll_request`] wrote: where it goes, its length
/// and the token its outcome names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outgoing {
    /// Where it goes.
    pub to: Peer,
    /// Its length in the buffer.
    pub len: usize,
    /// For [`Presence::handle_outcome`].
    pub token: u64,
}

/// Counters (`sipedge_presence_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PresenceCounters {
    /// PUBLISH answered 2xx.
    pub published: u64,
    /// SUBSCRIBE answered 2xx.
    pub subscribed: u64,
    /// PUBLISH/SUBSCRIBE answered with an error.
    pub rejected: u64,
    /// NOTIFYs sent.
    pub notifies: u64,
    /// NOTIFYs answered with an error or not at all.
    pub notify_failures: u64,
    /// Subscriptions removed by a 481 or a timeout of their NOTIFY.
    pub subscriptions_dropped: u64,
    /// Subscriptions expired.
    pub subscriptions_expired: u64,
    /// Publications expired.
    pub publications_expired: u64,
    /// MESSAGEs stored for users with no contact.
    pub messages_stored: u64,
    /// Stored MESSAGEs delivered (a 2xx).
    pub messages_delivered: u64,
    /// Stored MESSAGEs refused (limits) or expired.
    pub messages_dropped: u64,
    /// Requests that did not fit the buffer (dropped).
    pub oversized: u64,
}

impl PresenceCounters {
    /// Adds `o` into `self` (summing shards).
    pub fn add(&mut self, o: &Self) {
        self.published += o.published;
        self.subscribed += o.subscribed;
        self.rejected += o.rejected;
        self.notifies += o.notifies;
        self.notify_failures += o.notify_failures;
        self.subscriptions_dropped += o.subscriptions_dropped;
        self.subscriptions_expired += o.subscriptions_expired;
        self.publications_expired += o.publications_expired;
        self.messages_stored += o.messages_stored;
        self.messages_delivered += o.messages_delivered;
        self.messages_dropped += o.messages_dropped;
        self.oversized += o.oversized;
    }

    /// (name, value) pairs for the metrics.
    pub fn pairs(&self) -> [(&'static str, u64); 12] {
        [
            ("sipedge_presence_published_total", self.published),
            ("sipedge_presence_subscribed_total", self.subscribed),
            ("sipedge_presence_rejected_total", self.rejected),
            ("sipedge_presence_notifies_total", self.notifies),
            (
                "sipedge_presence_notify_failures_total",
                self.notify_failures,
            ),
            (
                "sipedge_presence_subscriptions_dropped_total",
                self.subscriptions_dropped,
            ),
            (
                "sipedge_presence_subscriptions_expired_total",
                self.subscriptions_expired,
            ),
            (
                "sipedge_presence_publications_expired_total",
                self.publications_expired,
            ),
            (
                "sipedge_presence_messages_stored_total",
                self.messages_stored,
            ),
            (
                "sipedge_presence_messages_delivered_total",
                self.messages_delivered,
            ),
            (
                "sipedge_presence_messages_dropped_total",
                self.messages_dropped,
            ),
            ("sipedge_presence_oversized_total", self.oversized),
        ]
    }
}

struct Publication {
    id: u64,
    expires: u64,
    doc: pidf::Document,
}

struct Presentity {
    /// `sip:user@host`, the PIDF entity.
    entity: Box<str>,
    pubs: Vec<Publication>,
    watchers: Vec<u64>,
    registered: bool,
    /// The composed document, until the next change.
    body: Option<Box<[u8]>>,
}

impl Presentity {
    fn is_idle(&self) -> bool {
        self.pubs.is_empty() && self.watchers.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubState {
    Active,
    Pending,
    /// Its final NOTIFY (reason) is to be sent, then it is gone.
    Terminated(&'static str),
}

struct Subscription {
    /// The presentity (AoR key), the dialog key (Call-ID NUL From-tag), the
    /// watcher's From value (tag included: the To of our NOTIFYs), the
    /// SUBSCRIBE's To value (no tag: their From), the remote target (its
    /// Contact URI), the route set (Record-Route values, comma-separated) and
    /// the watcher's AoR key, in one allocation.
    text: Packed,
    to_tag: [u8; 16],
    /// Where NOTIFYs go: where the SUBSCRIBE came from.
    peer: Peer,
    expires: u64,
    cseq: u32,
    state: SubState,
    durable: bool,
    queued: bool,
    in_flight: bool,
    /// The NOTIFY in flight says `terminated`.
    final_sent: bool,
    dirty: bool,
    throttled: bool,
    last_sent: Option<Instant>,
}

/// Byte strings packed into one allocation (a subscription's seven).
struct Packed {
    buf: Box<[u8]>,
    ends: [u32; 7],
}

impl Packed {
    fn new(parts: [&[u8]; 7]) -> Self {
        let mut buf = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
        let mut ends = [0u32; 7];
        for (e, p) in ends.iter_mut().zip(parts) {
            buf.extend_from_slice(p);
            *e = buf.len() as u32;
        }
        Self {
            buf: buf.into(),
            ends,
        }
    }

    fn get(&self, i: usize) -> &[u8] {
        let start = i
            .checked_sub(1)
            .and_then(|j| self.ends.get(j))
            .map_or(0, |&e| e as usize);
        let end = self.ends.get(i).map_or(0, |&e| e as usize);
        self.buf.get(start..end).unwrap_or_default()
    }

    fn parts(&self) -> [&[u8]; 7] {
        [0, 1, 2, 3, 4, 5, 6].map(|i| self.get(i))
    }
}

impl Subscription {
    fn presentity(&self) -> &[u8] {
        self.text.get(0)
    }

    fn dialog(&self) -> &[u8] {
        self.text.get(1)
    }

    fn from(&self) -> &[u8] {
        self.text.get(2)
    }

    fn to(&self) -> &[u8] {
        self.text.get(3)
    }

    fn target(&self) -> &[u8] {
        self.text.get(4)
    }

    fn routes(&self) -> &[u8] {
        self.text.get(5)
    }

    fn watcher(&self) -> &[u8] {
        self.text.get(6)
    }
}

struct Stored {
    aor: Box<[u8]>,
    expires: u64,
    value: Box<[u8]>,
    in_flight: u32,
}

/// Subscriptions in a slab: an id is (generation << 32 | slot), so memory is
/// one dense vector (a hash map of large values keeps up to half its
/// buckets empty, and touched).
#[derive(Default)]
struct Slab {
    slots: Vec<(u32, Option<Subscription>)>,
    free: Vec<u32>,
    len: usize,
}

impl Slab {
    /// The id the next `insert` takes.
    fn next_id(&self) -> u64 {
        match self.free.last() {
            Some(&i) => {
                let gen = self.slots.get(i as usize).map_or(0, |s| s.0);
                (u64::from(gen) << 32) | u64::from(i)
            }
            None => self.slots.len() as u64,
        }
    }

    fn insert(&mut self, sub: Subscription) -> u64 {
        let id = self.next_id();
        let i = (id & 0xffff_ffff) as usize;
        match self.free.pop() {
            Some(_) => {
                if let Some(s) = self.slots.get_mut(i) {
                    s.1 = Some(sub);
                }
            }
            None => self.slots.push((0, Some(sub))),
        }
        self.len += 1;
        id
    }

    fn get(&self, id: &u64) -> Option<&Subscription> {
        let (gen, i) = ((id >> 32) as u32, (id & 0xffff_ffff) as usize);
        self.slots
            .get(i)
            .filter(|s| s.0 == gen)
            .and_then(|s| s.1.as_ref())
    }

    fn get_mut(&mut self, id: &u64) -> Option<&mut Subscription> {
        let (gen, i) = ((id >> 32) as u32, (id & 0xffff_ffff) as usize);
        self.slots
            .get_mut(i)
            .filter(|s| s.0 == gen)
            .and_then(|s| s.1.as_mut())
    }

    fn remove(&mut self, id: &u64) -> Option<Subscription> {
        let (gen, i) = ((id >> 32) as u32, (id & 0xffff_ffff) as usize);
        let slot = self.slots.get_mut(i).filter(|s| s.0 == gen)?;
        let sub = slot.1.take()?;
        slot.0 = (slot.0 + 1) & 0x7fff_ffff;
        self.free.push(i as u32);
        self.len -= 1;
        Some(sub)
    }

    fn len(&self) -> usize {
        self.len
    }

    fn iter(&self) -> impl Iterator<Item = (u64, &Subscription)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, (gen, s))| s.as_ref().map(|s| ((u64::from(*gen) << 32) | i as u64, s)))
    }

    fn ids(&self) -> Vec<u64> {
        self.iter().map(|(id, _)| id).collect()
    }
}

enum Out {
    Notify(u64),
    Deliver { msg: u64, delivery: Delivery },
}

const EXPIRE_PUB: u8 = 0;
const EXPIRE_SUB: u8 = 1;
const EXPIRE_MSG: u8 = 2;
/// Tokens of MESSAGE deliveries have this bit; NOTIFY tokens are subscription ids.
const DELIVERY: u64 = 1 << 63;
/// How far a subscription's NOTIFY CSeq jumps at a restart: more NOTIFYs
/// than one subscription is sent between two of its durable writes.
const CSEQ_RESTART_JUMP: u32 = 1 << 16;

/// One shard's partition of the presence service (module doc).
pub struct Presence {
    cfg: PresenceConfig,
    partition: u16,
    presentities: HashMap<Box<[u8]>, Presentity, KeyHash>,
    /// Publication id (its entity tag, in hex) → presentity.
    pubs: HashMap<u64, Box<[u8]>>,
    subs: Slab,
    /// Hash of a dialog key → its subscription (checked against the key).
    dialogs: HashMap<u64, u64>,
    messages: HashMap<u64, Stored>,
    inbox: HashMap<Box<[u8]>, Vec<u64>, KeyHash>,
    deliveries: HashMap<u64, u64>,
    next_id: u64,
    expiries: BinaryHeap<Reverse<(u64, u8, u64)>>,
    throttled: BinaryHeap<Reverse<(Instant, u64)>>,
    ready: VecDeque<Out>,
    ops: Vec<Op>,
    awaiting: Vec<u64>,
    sealed: VecDeque<Vec<u64>>,
    clock: (Instant, u64),
    counters: PresenceCounters,
    scratch: Vec<u8>,
}

/// The value of header `name` up to its first `;`, trimmed.
fn token<'a>(msg: &Message<'a>, name: HeaderName) -> Option<&'a [u8]> {
    let v = msg.header(name)?;
    let end = memchr::memchr(b';', v).unwrap_or(v.len());
    Some(v.get(..end)?.trim_ascii())
}

fn expires_of(msg: &Message<'_>) -> Option<Result<u32, ()>> {
    let v = msg.header(HeaderName::Expires)?;
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 10 || !v.iter().all(u8::is_ascii_digit) {
        return Some(Err(()));
    }
    Some(
        std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .map(|n| n.min(u64::from(u32::MAX)) as u32)
            .ok_or(()),
    )
}

fn hex16(v: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        let nibble = (v >> (60 - 4 * i)) & 0xf;
        *o = b"0123456789abcdef"
            .get(nibble as usize)
            .copied()
            .unwrap_or(b'0');
    }
    out
}

fn parse_hex16(b: &[u8]) -> Option<u64> {
    if b.len() != 16 {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(b).ok()?, 16).ok()
}

/// The part of a name-addr value without its `tag` parameter.
fn without_tag(v: &[u8]) -> &[u8] {
    let lower = v.to_ascii_lowercase();
    match memchr::memmem::find(&lower, b";tag=") {
        Some(i) => v.get(..i).unwrap_or(v),
        None => v,
    }
}

fn list_matches(list: &[String], v: &[u8]) -> bool {
    list.is_empty() || list.iter().any(|x| x == "*" || x.as_bytes() == v)
}

impl Presence {
    /// An empty partition `partition`.
    pub fn new(cfg: PresenceConfig, partition: u16) -> Self {
        Self {
            cfg,
            partition,
            presentities: HashMap::with_hasher(KeyHash::default()),
            pubs: HashMap::new(),
            subs: Slab::default(),
            dialogs: HashMap::new(),
            messages: HashMap::new(),
            inbox: HashMap::with_hasher(KeyHash::default()),
            deliveries: HashMap::new(),
            next_id: 1,
            expiries: BinaryHeap::new(),
            throttled: BinaryHeap::new(),
            ready: VecDeque::new(),
            ops: Vec::new(),
            awaiting: Vec::new(),
            sealed: VecDeque::new(),
            clock: (Instant::ZERO, 0),
            counters: PresenceCounters::default(),
            scratch: Vec::new(),
        }
    }

    /// The partition rebuilt from its durable `entries` (others' kinds are
    /// skipped) at `now`/`wall`: every subscription is notified of the
    /// current state (its watcher may have missed changes while we were down).
    pub fn from_entries(
        cfg: PresenceConfig,
        partition: u16,
        entries: &[Entry],
        now: Instant,
        wall: u64,
    ) -> Self {
        let mut p = Self::new(cfg, partition);
        p.clock = (now, wall);
        for e in entries {
            if e.expires != 0 && e.expires <= wall {
                continue;
            }
            match e.kind {
                kind::PUBLICATION => p.load_publication(e),
                kind::SUBSCRIPTION => p.load_subscription(e),
                kind::MESSAGE => p.load_message(e),
                _ => {}
            }
        }
        let ids: Vec<u64> = p.subs.ids();
        for id in ids {
            p.queue(id);
        }
        p
    }

    fn load_publication(&mut self, e: &Entry) {
        let (Some(id), Ok(doc)) = (parse_hex16(&e.key), pidf::Document::parse(&e.value)) else {
            return;
        };
        let Some(pres) = self.presentity(&e.aor) else {
            return;
        };
        pres.pubs.push(Publication {
            id,
            expires: e.expires,
            doc,
        });
        self.pubs.insert(id, e.aor.clone());
        self.expiries.push(Reverse((e.expires, EXPIRE_PUB, id)));
    }

    fn load_subscription(&mut self, e: &Entry) {
        let mut r = Reader(&e.value);
        let parsed = (|| {
            let to_tag: [u8; 16] = r.bytes()?.try_into().ok()?;
            let from = r.bytes()?;
            let to = r.bytes()?;
            let target = r.bytes()?;
            let routes = r.bytes()?;
            let watcher = r.bytes()?;
            let peer = r.peer()?;
            let cseq = u32::try_from(r.u64()?).ok()?;
            let state = match r.u8()? {
                0 => SubState::Active,
                _ => SubState::Pending,
            };
            Some(Subscription {
                text: Packed::new([&e.aor, &e.key, from, to, target, routes, watcher]),
                to_tag,
                peer,
                expires: e.expires,
                cseq: cseq.saturating_add(CSEQ_RESTART_JUMP),
                state,
                durable: true,
                queued: false,
                in_flight: false,
                final_sent: false,
                dirty: false,
                throttled: false,
                last_sent: None,
            })
        })();
        let Some(sub) = parsed else {
            return;
        };
        // The CSeq base moves on durably, so a second restart jumps again.
        if let Some(e) = self.sub_entry(&sub) {
            self.ops.push(Op::Put(e));
        }
        let id = self.subs.next_id();
        let Some(pres) = self.presentity(&e.aor) else {
            return;
        };
        pres.watchers.push(id);
        let h = self.dialog_hash(sub.dialog());
        self.dialogs.insert(h, id);
        self.expiries.push(Reverse((sub.expires, EXPIRE_SUB, id)));
        self.subs.insert(sub);
    }

    fn load_message(&mut self, e: &Entry) {
        let Some(id) = e
            .key
            .get(..8)
            .and_then(|k| <[u8; 8]>::try_from(k).ok())
            .map(u64::from_be_bytes)
        else {
            return;
        };
        self.next_id = self.next_id.max((id & 0xffff_ffff_ffff) + 1);
        self.store_message(id, e.aor.clone(), e.expires, e.value.clone());
    }

    fn store_message(&mut self, id: u64, aor: Box<[u8]>, expires: u64, value: Box<[u8]>) {
        self.inbox.entry(aor.clone()).or_default().push(id);
        self.expiries.push(Reverse((expires, EXPIRE_MSG, id)));
        self.messages.insert(
            id,
            Stored {
                aor,
                expires,
                value,
                in_flight: 0,
            },
        );
    }

    /// The whole durable state, for a compaction of the store.
    pub fn entries(&self) -> Vec<Entry> {
        let mut out = Vec::new();
        for (aor, p) in &self.presentities {
            for publ in &p.pubs {
                out.push(Entry {
                    kind: kind::PUBLICATION,
                    key: hex16(publ.id).into(),
                    aor: aor.clone(),
                    expires: publ.expires,
                    value: publ.doc.as_bytes().into(),
                });
            }
        }
        for (_, s) in self.subs.iter() {
            if let Some(e) = self.sub_entry(s) {
                out.push(e);
            }
        }
        for (id, m) in &self.messages {
            out.push(Entry {
                kind: kind::MESSAGE,
                key: id.to_be_bytes().into(),
                aor: m.aor.clone(),
                expires: m.expires,
                value: m.value.clone(),
            });
        }
        out.sort();
        out
    }

    fn sub_entry(&self, s: &Subscription) -> Option<Entry> {
        let state = match s.state {
            SubState::Active => 0,
            SubState::Pending => 1,
            SubState::Terminated(_) => return None,
        };
        let mut v = Vec::with_capacity(
            64 + s.from().len()
                + s.to().len()
                + s.target().len()
                + s.routes().len()
                + s.watcher().len(),
        );
        Writer(&mut v)
            .bytes(&s.to_tag)
            .bytes(s.from())
            .bytes(s.to())
            .bytes(s.target())
            .bytes(s.routes())
            .bytes(s.watcher())
            .peer(&s.peer)
            .u64(u64::from(s.cseq))
            .u8(state);
        Some(Entry {
            kind: kind::SUBSCRIPTION,
            key: s.dialog().into(),
            aor: s.presentity().into(),
            expires: s.expires,
            value: v.into(),
        })
    }

    /// The wall time (unix µs) last seen.
    pub fn wall(&self) -> u64 {
        self.clock.1
    }

    /// The configuration.
    pub fn config(&self) -> &PresenceConfig {
        &self.cfg
    }

    /// The counters.
    pub fn counters(&self) -> &PresenceCounters {
        &self.counters
    }

    /// Live subscriptions (terminated ones whose final NOTIFY is pending included).
    pub fn subscriptions(&self) -> usize {
        self.subs.len()
    }

    /// Presentities held (with publications or watchers).
    pub fn presentities(&self) -> usize {
        self.presentities.len()
    }

    /// Stored MESSAGEs.
    pub fn stored_messages(&self) -> usize {
        self.messages.len()
    }

    /// True when a change of `aor`'s location matters here: it is watched
    /// or published, or has stored MESSAGEs.
    pub fn interested(&self, aor: &[u8]) -> bool {
        self.presentities.contains_key(aor) || self.inbox.contains_key(aor)
    }

    /// The AoRs of the presentities held (to ask the location whether each is registered).
    pub fn presentity_keys(&self) -> Vec<Box<[u8]>> {
        self.presentities.keys().cloned().collect()
    }

    /// The AoRs that have stored MESSAGEs waiting.
    pub fn inbox_keys(&self) -> Vec<Box<[u8]>> {
        self.inbox.keys().cloned().collect()
    }

    /// True for the methods this service answers for its users.
    pub fn serves(&self, method: Method) -> bool {
        self.cfg.enabled && matches!(method, Method::Publish | Method::Subscribe)
    }

    /// True when `msg` (a request for a served user) is this service's: a
    /// PUBLISH, or a SUBSCRIBE to the `presence` event package (other
    /// packages are proxied to the user's devices).
    pub fn wants(&self, msg: &Message<'_>) -> bool {
        match msg.method() {
            Method::Publish => self.cfg.enabled,
            Method::Subscribe => {
                self.cfg.enabled
                    && token(msg, HeaderName::Event)
                        .is_some_and(|e| e.eq_ignore_ascii_case(b"presence"))
            }
            _ => false,
        }
    }

    fn dialog_hash(&self, dialog: &[u8]) -> u64 {
        hash_bytes(self.cfg.secret ^ 0x6469_616c, dialog)
    }

    /// The subscription of dialog key `dialog`, if any.
    fn find_dialog(&self, dialog: &[u8]) -> Option<u64> {
        let id = *self.dialogs.get(&self.dialog_hash(dialog))?;
        self.subs
            .get(&id)
            .filter(|s| *s.dialog() == *dialog)
            .map(|_| id)
    }

    fn alloc_id(&mut self) -> u64 {
        let id = (u64::from(self.partition) << 48) | (self.next_id & 0xffff_ffff_ffff);
        self.next_id += 1;
        id
    }

    fn presentity(&mut self, aor: &[u8]) -> Option<&mut Presentity> {
        if !self.presentities.contains_key(aor) {
            if self.presentities.len() >= self.cfg.max_presentities {
                return None;
            }
            let entity = format!("sip:{}", String::from_utf8_lossy(aor));
            self.presentities.insert(
                aor.into(),
                Presentity {
                    entity: entity.into(),
                    pubs: Vec::new(),
                    watchers: Vec::new(),
                    registered: false,
                    body: None,
                },
            );
        }
        self.presentities.get_mut(aor)
    }

    fn drop_if_idle(&mut self, aor: &[u8]) {
        if self.presentities.get(aor).is_some_and(Presentity::is_idle) {
            self.presentities.remove(aor);
        }
    }

    /// Sets whether `aor` has a registered contact now (at start, for every
    /// presentity; later through [`Presence::location_changed`]).
    pub fn set_registered(&mut self, aor: &[u8], registered: bool) {
        if let Some(p) = self.presentities.get_mut(aor) {
            p.registered = registered;
            p.body = None;
        }
    }

    /// Handles a PUBLISH or a presence SUBSCRIBE for a user of this
    /// partition (`registered`: whether the user has a contact now),
    /// writing the whole response into `reply`: (length, status).
    #[allow(clippy::too_many_arguments)]
    pub fn handle_request(
        &mut self,
        now: Instant,
        wall: u64,
        msg: &Message<'_>,
        src: &Peer,
        registered: bool,
        reply: &mut [u8],
    ) -> Option<(usize, u16)> {
        self.clock = (now, wall);
        let mut extra = core::mem::take(&mut self.scratch);
        extra.clear();
        let (code, reason, tag) = match msg.method() {
            Method::Publish => self.publish(wall, msg, registered, &mut extra),
            Method::Subscribe => self.subscribe(now, wall, msg, src, registered, &mut extra),
            _ => (405, "Method Not Allowed", None),
        };
        if code >= 300 {
            self.counters.rejected += 1;
        }
        let spec = ResponseSpec {
            to_tag: tag.as_ref().map(|t| &t[..]),
            received: Some(Received {
                ip: src.remote.ip(),
                port: src.remote.port(),
            }),
            extra: &extra,
            ..ResponseSpec::new(code, reason)
        };
        let n = sip::response(msg, &spec, reply).ok();
        self.scratch = extra;
        n.map(|n| (n, code))
    }

    /// RFC 3903 §6: a PUBLISH for the `presence` event.
    fn publish(
        &mut self,
        wall: u64,
        msg: &Message<'_>,
        registered: bool,
        extra: &mut Vec<u8>,
    ) -> (u16, &'static str, Option<[u8; 16]>) {
        let tag = Some(hex16(hash_bytes(self.cfg.secret, msg.call_id())));
        if !token(msg, HeaderName::Event).is_some_and(|e| e.eq_ignore_ascii_case(b"presence")) {
            extra.extend_from_slice(b"Allow-Events: presence\r\n");
            return (489, "Bad Event", tag);
        }
        let Some(aor) = msg
            .to()
            .ok()
            .and_then(|t| t.uri().ok())
            .and_then(|u| AorKey::from_uri(&u).ok())
        else {
            return (404, "Not Found", tag);
        };
        let aor: Box<[u8]> = aor.as_bytes().into();
        let expires = match expires_of(msg) {
            None => self.cfg.default_expires,
            Some(Ok(e)) => e,
            Some(Err(())) => return (400, "Bad Request (Expires)", tag),
        };
        if expires != 0 && expires < self.cfg.min_expires {
            let _ = write!(extra, "Min-Expires: {}\r\n", self.cfg.min_expires);
            return (423, "Interval Too Brief", tag);
        }
        let expires = expires.min(self.cfg.max_expires);
        let body = msg.body();
        let doc = if body.is_empty() {
            None
        } else {
            let ct = token(msg, HeaderName::ContentType).unwrap_or_default();
            if !ct.eq_ignore_ascii_case(b"application/pidf+xml") {
                extra.extend_from_slice(b"Accept: application/pidf+xml\r\n");
                return (415, "Unsupported Media Type", tag);
            }
            match pidf::Document::parse(body) {
                Ok(d) => Some(d),
                Err(_) => return (400, "Bad Request (PIDF)", tag),
            }
        };
        let until = wall + u64::from(expires) * 1_000_000;
        let old = match msg.header(HeaderName::SipIfMatch) {
            Some(m) => {
                let id = parse_hex16(m.trim_ascii());
                let found = id.filter(|id| {
                    self.pubs.get(id).is_some_and(|a| **a == *aor)
                        && self
                            .presentities
                            .get(&aor)
                            .is_some_and(|p| p.pubs.iter().any(|x| x.id == *id && x.expires > wall))
                });
                match found {
                    Some(id) => Some(id),
                    None => return (412, "Conditional Request Failed", tag),
                }
            }
            None => None,
        };
        match (old, doc, expires) {
            // Remove (§6 step 6, Expires 0).
            (Some(id), _, 0) => {
                self.remove_publication(&aor, id);
                self.changed(&aor);
                extra.extend_from_slice(b"Expires: 0\r\n");
                self.counters.published += 1;
                (200, "OK", tag)
            }
            (None, _, 0) => (400, "Bad Request (Expires 0 without SIP-If-Match)", tag),
            (None, None, _) => (400, "Bad Request (No Body)", tag),
            (old, doc, _) => {
                // Initial, refresh (no body) or modify: a new entity tag each time.
                let doc = match (doc, old) {
                    (Some(d), _) => d,
                    (None, Some(id)) => match self
                        .presentities
                        .get(&aor)
                        .and_then(|p| p.pubs.iter().find(|x| x.id == id))
                    {
                        Some(p) => p.doc.clone(),
                        None => return (412, "Conditional Request Failed", tag),
                    },
                    (None, None) => return (400, "Bad Request (No Body)", tag),
                };
                let modified = old.is_none() || !body.is_empty();
                if old.is_none()
                    && self
                        .presentities
                        .get(&aor)
                        .is_some_and(|p| p.pubs.len() >= self.cfg.max_publications)
                {
                    return (403, "Forbidden (Too Many Publications)", tag);
                }
                if let Some(id) = old {
                    self.remove_publication(&aor, id);
                }
                let id = self.new_etag(msg);
                let value: Box<[u8]> = doc.as_bytes().into();
                let Some(p) = self.presentity(&aor) else {
                    extra.extend_from_slice(b"Retry-After: 60\r\n");
                    return (503, "Service Unavailable (Presentities)", tag);
                };
                if p.registered != registered {
                    p.registered = registered;
                    p.body = None;
                }
                p.pubs.push(Publication {
                    id,
                    expires: until,
                    doc,
                });
                self.pubs.insert(id, aor.clone());
                self.expiries.push(Reverse((until, EXPIRE_PUB, id)));
                self.ops.push(Op::Put(Entry {
                    kind: kind::PUBLICATION,
                    key: hex16(id).into(),
                    aor: aor.clone(),
                    expires: until,
                    value,
                }));
                if modified {
                    self.changed(&aor);
                }
                extra.extend_from_slice(b"SIP-ETag: ");
                extra.extend_from_slice(&hex16(id));
                let _ = write!(extra, "\r\nExpires: {expires}\r\n");
                self.counters.published += 1;
                (200, "OK", tag)
            }
        }
    }

    /// A fresh entity tag: unique (a counter of this partition) and not
    /// guessable (mixed with the secret), kept across restarts (the wall clock).
    fn new_etag(&mut self, msg: &Message<'_>) -> u64 {
        loop {
            let n = self.alloc_id();
            let id = hash_bytes(
                self.cfg.secret ^ n ^ self.clock.1.rotate_left(17),
                msg.call_id(),
            );
            if id != 0 && !self.pubs.contains_key(&id) {
                return id;
            }
        }
    }

    fn remove_publication(&mut self, aor: &[u8], id: u64) {
        self.pubs.remove(&id);
        if let Some(p) = self.presentities.get_mut(aor) {
            p.pubs.retain(|x| x.id != id);
        }
        self.ops.push(Op::Del {
            aor: aor.into(),
            kind: kind::PUBLICATION,
            key: hex16(id).into(),
        });
        self.drop_if_idle(aor);
    }

    /// The presentity `aor` changed: its document is composed again and
    /// every watcher gets a NOTIFY.
    fn changed(&mut self, aor: &[u8]) {
        let Some(p) = self.presentities.get_mut(aor) else {
            return;
        };
        p.body = None;
        let watchers = p.watchers.clone();
        for id in watchers {
            self.queue(id);
        }
    }

    /// What the rules say of `watcher` (user@domain) watching `aor`.
    fn authorize(&self, watcher: &[u8], aor: &[u8]) -> Action {
        let split = |v: &[u8]| {
            let at = memchr::memrchr(b'@', v).unwrap_or(0);
            (
                v.get(..at).unwrap_or_default().to_vec(),
                v.get(at + 1..).unwrap_or_default().to_ascii_lowercase(),
            )
        };
        let (wu, wd) = split(watcher);
        let (pu, pd) = split(aor);
        for r in &self.cfg.rule {
            if list_matches(&r.watcher_user, &wu)
                && list_matches(&r.watcher_domain, &wd)
                && list_matches(&r.presentity_user, &pu)
            {
                return r.action;
            }
        }
        if wd == pd {
            Action::Allow
        } else {
            self.cfg.others
        }
    }

    /// Replaces the watcher rules; pending subscriptions now allowed become
    /// active (and notified), those now denied are terminated.
    pub fn set_rules(&mut self, rules: Vec<WatcherRule>, others: Action) {
        self.cfg.rule = rules;
        self.cfg.others = others;
        let ids: Vec<u64> = self.subs.ids();
        for id in ids {
            let Some(s) = self.subs.get(&id) else {
                continue;
            };
            let now = self.authorize(s.watcher(), s.presentity());
            let next = match (s.state, now) {
                (SubState::Pending, Action::Allow) => SubState::Active,
                (SubState::Active | SubState::Pending, Action::Deny) => {
                    SubState::Terminated("rejected")
                }
                (SubState::Active, Action::Pending) => SubState::Pending,
                (s, _) => s,
            };
            if next != s.state {
                self.set_state(id, next);
            }
        }
    }

    fn set_state(&mut self, id: u64, state: SubState) {
        let Some(s) = self.subs.get_mut(&id) else {
            return;
        };
        s.state = state;
        if let SubState::Terminated(_) = state {
            self.terminate(id, None);
            return;
        }
        if let Some(e) = self.subs.get(&id).and_then(|s| self.sub_entry(s)) {
            self.ops.push(Op::Put(e));
        }
        self.queue(id);
    }

    /// RFC 6665 §4.2: a SUBSCRIBE to the presence of a user of ours.
    #[allow(clippy::too_many_lines)]
    fn subscribe(
        &mut self,
        now: Instant,
        wall: u64,
        msg: &Message<'_>,
        src: &Peer,
        registered: bool,
        extra: &mut Vec<u8>,
    ) -> (u16, &'static str, Option<[u8; 16]>) {
        let Ok(ess) = msg.essentials() else {
            return (400, "Bad Request", None);
        };
        let from_tag = ess.from.tag().unwrap_or_default();
        let mut dialog = Vec::with_capacity(ess.call_id.len() + 1 + from_tag.len());
        dialog.extend_from_slice(ess.call_id);
        dialog.push(0);
        dialog.extend_from_slice(from_tag);
        let tag = hex16(hash_bytes(self.cfg.secret, &dialog));
        if !token(msg, HeaderName::Event).is_some_and(|e| e.eq_ignore_ascii_case(b"presence")) {
            extra.extend_from_slice(b"Allow-Events: presence\r\n");
            return (489, "Bad Event", Some(tag));
        }
        if from_tag.is_empty() {
            return (400, "Bad Request (No From Tag)", Some(tag));
        }
        let expires = match expires_of(msg) {
            None => self.cfg.default_expires,
            Some(Ok(e)) => e,
            Some(Err(())) => return (400, "Bad Request (Expires)", Some(tag)),
        };
        if expires != 0 && expires < self.cfg.min_expires {
            let _ = write!(extra, "Min-Expires: {}\r\n", self.cfg.min_expires);
            return (423, "Interval Too Brief", Some(tag));
        }
        let expires = expires.min(self.cfg.max_expires);
        let until = wall + u64::from(expires) * 1_000_000;
        let contact = msg
            .header(HeaderName::Contact)
            .and_then(|c| sip::scan::CommaValues::new(c).next())
            .and_then(|v| NameAddr::parse(v).ok())
            .map(|na| na.uri_bytes);
        let existing = self.find_dialog(&dialog);
        let id = match (ess.to.tag(), existing) {
            (Some(t), Some(id)) if t == tag => id,
            (Some(_), _) => return (481, "Subscription Does Not Exist", None),
            (None, Some(id)) => id,
            (None, None) => {
                // A new subscription.
                let Some(target) = contact else {
                    return (400, "Bad Request (No Contact)", Some(tag));
                };
                let Some(aor) = ess.to.uri().ok().and_then(|u| AorKey::from_uri(&u).ok()) else {
                    return (404, "Not Found", Some(tag));
                };
                let aor: Box<[u8]> = aor.as_bytes().into();
                let watcher: Box<[u8]> = ess
                    .from
                    .uri()
                    .ok()
                    .and_then(|u| AorKey::from_uri(&u).ok())
                    .map(|k| k.as_bytes().into())
                    .unwrap_or_default();
                let state = match self.authorize(&watcher, &aor) {
                    Action::Deny => return (403, "Forbidden", Some(tag)),
                    Action::Allow => SubState::Active,
                    Action::Pending => SubState::Pending,
                };
                if self.subs.len() >= self.cfg.max_subscriptions
                    || self
                        .presentities
                        .get(&aor)
                        .is_some_and(|p| p.watchers.len() >= self.cfg.max_watchers)
                {
                    extra.extend_from_slice(b"Retry-After: 60\r\n");
                    return (503, "Service Unavailable (Subscriptions)", Some(tag));
                }
                let mut routes = Vec::new();
                for rr in msg.values(HeaderName::RecordRoute) {
                    if !routes.is_empty() {
                        routes.extend_from_slice(b", ");
                    }
                    routes.extend_from_slice(rr);
                }
                let id = self.subs.next_id();
                let Some(p) = self.presentity(&aor) else {
                    extra.extend_from_slice(b"Retry-After: 60\r\n");
                    return (503, "Service Unavailable (Presentities)", Some(tag));
                };
                if p.registered != registered {
                    p.registered = registered;
                    p.body = None;
                }
                p.watchers.push(id);
                let to = without_tag(msg.header(HeaderName::To).unwrap_or_default());
                let h = self.dialog_hash(&dialog);
                self.subs.insert(Subscription {
                    text: Packed::new([
                        &aor,
                        &dialog,
                        msg.header(HeaderName::From).unwrap_or_default(),
                        to,
                        target,
                        &routes,
                        &watcher,
                    ]),
                    to_tag: tag,
                    peer: *src,
                    expires: until,
                    cseq: 0,
                    state,
                    durable: false,
                    queued: false,
                    in_flight: false,
                    final_sent: false,
                    dirty: false,
                    throttled: false,
                    last_sent: None,
                });
                self.dialogs.insert(h, id);
                id
            }
        };
        let Some(s) = self.subs.get_mut(&id) else {
            return (481, "Subscription Does Not Exist", None);
        };
        if let SubState::Terminated(_) = s.state {
            return (481, "Subscription Does Not Exist", None);
        }
        // A refresh (or the new one): where the watcher is now, its new expiry.
        s.peer = *src;
        s.expires = until;
        if let Some(t) = contact {
            if *t != *s.target() {
                let mut parts = s.text.parts();
                parts[4] = t;
                s.text = Packed::new(parts);
            }
        }
        let _ = now;
        let _ = write!(extra, "Expires: {expires}\r\nContact: <");
        extra.extend_from_slice(
            self.cfg
                .contacts
                .get(usize::from(src.local.0))
                .map_or(&b"sip:invalid"[..], |c| &c[..]),
        );
        extra.extend_from_slice(b">\r\n");
        for rr in msg.values(HeaderName::RecordRoute) {
            extra.extend_from_slice(b"Record-Route: ");
            extra.extend_from_slice(rr);
            extra.extend_from_slice(b"\r\n");
        }
        self.counters.subscribed += 1;
        if expires == 0 {
            // Unsubscribe (or a fetch): one last NOTIFY, terminated.
            self.terminate(id, Some("timeout"));
        } else {
            self.expiries.push(Reverse((until, EXPIRE_SUB, id)));
            if let Some(e) = self.subs.get(&id).and_then(|s| self.sub_entry(s)) {
                self.ops.push(Op::Put(e));
            }
            // Its NOTIFY waits until the subscription (and so the 200) is durable.
            if let Some(s) = self.subs.get_mut(&id) {
                s.durable = false;
            }
            self.awaiting.push(id);
        }
        (200, "OK", Some(tag))
    }

    /// Ends subscription `id`: deleted from the store, its final NOTIFY
    /// (`Subscription-State: terminated`) queued; it is gone once that is answered.
    fn terminate(&mut self, id: u64, reason: Option<&'static str>) {
        let Some(s) = self.subs.get_mut(&id) else {
            return;
        };
        if let Some(r) = reason {
            s.state = SubState::Terminated(r);
        }
        let (aor, dialog) = (s.presentity().into(), s.dialog().into());
        s.durable = true;
        self.ops.push(Op::Del {
            aor,
            kind: kind::SUBSCRIPTION,
            key: dialog,
        });
        self.queue(id);
    }

    /// Forgets subscription `id` at once (no NOTIFY).
    fn remove_subscription(&mut self, id: u64) {
        let Some(s) = self.subs.remove(&id) else {
            return;
        };
        let h = self.dialog_hash(s.dialog());
        if self.dialogs.get(&h) == Some(&id) {
            self.dialogs.remove(&h);
        }
        if let Some(p) = self.presentities.get_mut(s.presentity()) {
            p.watchers.retain(|w| *w != id);
        }
        if !matches!(s.state, SubState::Terminated(_)) {
            self.ops.push(Op::Del {
                aor: s.presentity().into(),
                kind: kind::SUBSCRIPTION,
                key: s.dialog().into(),
            });
        }
        self.drop_if_idle(s.presentity());
    }

    /// Queues a NOTIFY to subscription `id` (at most one queued or in
    /// flight; the minimum interval respected; the state read when sent).
    fn queue(&mut self, id: u64) {
        let now = self.clock.0;
        let interval = Duration::from_millis(self.cfg.notify_interval_ms);
        let Some(s) = self.subs.get_mut(&id) else {
            return;
        };
        if s.queued || s.throttled {
            return;
        }
        if s.in_flight || !s.durable {
            s.dirty = true;
            return;
        }
        let final_one = matches!(s.state, SubState::Terminated(_));
        if let Some(last) = s.last_sent {
            if !final_one && interval > Duration::ZERO && now < last + interval {
                s.throttled = true;
                self.throttled.push(Reverse((last + interval, id)));
                return;
            }
        }
        s.queued = true;
        self.ready.push_back(Out::Notify(id));
    }

    /// The records of durable changes made since the last call, in order;
    /// the caller emits them into the partition's feed.
    pub fn drain_ops(&mut self, out: &mut Vec<Op>) {
        out.append(&mut self.ops);
    }

    /// The changes drained so far form one batch the store is writing: the
    /// subscriptions made in it wait for [`Presence::persisted`].
    pub fn seal(&mut self) {
        self.sealed.push_back(core::mem::take(&mut self.awaiting));
    }

    /// The oldest sealed batch is durable (or failed: `ok` false, then its
    /// subscriptions were answered 500 and are dropped).
    pub fn persisted(&mut self, ok: bool) {
        let Some(ids) = self.sealed.pop_front() else {
            return;
        };
        for id in ids {
            if !ok {
                self.remove_subscription(id);
                continue;
            }
            if let Some(s) = self.subs.get_mut(&id) {
                s.durable = true;
                s.dirty = false;
            }
            self.queue(id);
        }
    }

    /// The location of `aor` changed: it has a registered contact
    /// (`registered`) or not. Watchers see it when offline-when-unregistered
    /// is on; stored MESSAGEs go to `targets`.
    pub fn location_changed(&mut self, aor: &[u8], registered: bool, targets: &[Delivery]) {
        if let Some(p) = self.presentities.get_mut(aor) {
            if p.registered != registered {
                p.registered = registered;
                if self.cfg.offline_when_unregistered {
                    self.changed(aor);
                }
            }
        }
        if registered && !targets.is_empty() {
            self.deliver(aor, targets);
        }
    }

    fn deliver(&mut self, aor: &[u8], targets: &[Delivery]) {
        let Some(ids) = self.inbox.get(aor) else {
            return;
        };
        for &id in ids {
            let Some(m) = self.messages.get_mut(&id) else {
                continue;
            };
            if m.in_flight > 0 {
                continue;
            }
            for t in targets {
                m.in_flight += 1;
                self.ready.push_back(Out::Deliver {
                    msg: id,
                    delivery: t.clone(),
                });
            }
        }
    }

    /// A MESSAGE for user `aor` of this partition, who has no contact:
    /// stored (202) within the limits, else refused (480). `targets`: its
    /// contacts, should it have registered meanwhile.
    pub fn handle_offline_message(
        &mut self,
        now: Instant,
        wall: u64,
        msg: &Message<'_>,
        src: &Peer,
        targets: &[Delivery],
        reply: &mut [u8],
    ) -> Option<(usize, u16)> {
        self.clock = (now, wall);
        let uri = match msg.start_line() {
            sip::StartLine::Request { uri, .. } => Some(uri),
            sip::StartLine::Response { .. } => None,
        };
        let aor = uri
            .and_then(|u| sip::Uri::parse(u).ok())
            .and_then(|u| AorKey::from_uri(&u).ok())
            .map(|k| Box::<[u8]>::from(k.as_bytes()));
        let (code, reason) = match aor {
            None => (404, "Not Found"),
            Some(_) if !self.cfg.store_messages => (480, "Temporarily Unavailable"),
            Some(_) if msg.body().len() > self.cfg.max_message_body => (513, "Message Too Large"),
            Some(aor)
                if self.messages.len() >= self.cfg.max_messages
                    || self
                        .inbox
                        .get(&aor)
                        .is_some_and(|v| v.len() >= self.cfg.max_messages_per_user) =>
            {
                self.counters.messages_dropped += 1;
                (480, "Temporarily Unavailable (Mailbox Full)")
            }
            Some(aor) => {
                let id = self.alloc_id();
                let until = wall + u64::from(self.cfg.message_expires) * 1_000_000;
                let mut v = Vec::with_capacity(msg.body().len() + 256);
                Writer(&mut v)
                    .bytes(msg.header(HeaderName::From).unwrap_or_default())
                    .bytes(without_tag(msg.header(HeaderName::To).unwrap_or_default()))
                    .bytes(msg.header(HeaderName::ContentType).unwrap_or(b"text/plain"))
                    .u64(wall)
                    .bytes(msg.body());
                let value: Box<[u8]> = v.into();
                self.ops.push(Op::Put(Entry {
                    kind: kind::MESSAGE,
                    key: id.to_be_bytes().into(),
                    aor: aor.clone(),
                    expires: until,
                    value: value.clone(),
                }));
                self.store_message(id, aor.clone(), until, value);
                self.counters.messages_stored += 1;
                if !targets.is_empty() {
                    self.deliver(&aor, targets);
                }
                (202, "Accepted")
            }
        };
        let tag = hex16(hash_bytes(self.cfg.secret, msg.call_id()));
        let spec = ResponseSpec {
            to_tag: Some(&tag),
            received: Some(Received {
                ip: src.remote.ip(),
                port: src.remote.port(),
            }),
            ..ResponseSpec::new(code, reason)
        };
        sip::response(msg, &spec, reply).ok().map(|n| (n, code))
    }

    /// Expiries (publications, subscriptions, stored messages) and
    /// throttled NOTIFYs due at `now`/`wall`.
    pub fn handle_timeout(&mut self, now: Instant, wall: u64) {
        self.clock = (now, wall);
        while let Some(&Reverse((at, what, id))) = self.expiries.peek() {
            if at > wall {
                break;
            }
            self.expiries.pop();
            match what {
                EXPIRE_PUB => {
                    let Some(aor) = self.pubs.get(&id).cloned() else {
                        continue;
                    };
                    let due = self
                        .presentities
                        .get(&aor)
                        .and_then(|p| p.pubs.iter().find(|x| x.id == id))
                        .is_some_and(|x| x.expires <= wall);
                    if due {
                        self.counters.publications_expired += 1;
                        self.remove_publication(&aor, id);
                        self.changed(&aor);
                    }
                }
                EXPIRE_SUB => {
                    let due = self.subs.get(&id).is_some_and(|s| {
                        s.expires <= wall && !matches!(s.state, SubState::Terminated(_))
                    });
                    if due {
                        self.counters.subscriptions_expired += 1;
                        self.terminate(id, Some("timeout"));
                    }
                }
                _ => {
                    if self.messages.get(&id).is_some_and(|m| m.expires <= wall) {
                        self.counters.messages_dropped += 1;
                        self.delete_message(id);
                    }
                }
            }
        }
        while let Some(&Reverse((at, id))) = self.throttled.peek() {
            if at > now {
                break;
            }
            self.throttled.pop();
            if let Some(s) = self.subs.get_mut(&id) {
                s.throttled = false;
                s.last_sent = None;
            }
            self.queue(id);
        }
    }

    fn delete_message(&mut self, id: u64) {
        let Some(m) = self.messages.remove(&id) else {
            return;
        };
        if let Some(v) = self.inbox.get_mut(&m.aor) {
            v.retain(|x| *x != id);
            if v.is_empty() {
                self.inbox.remove(&m.aor);
            }
        }
        self.ops.push(Op::Del {
            aor: m.aor,
            kind: kind::MESSAGE,
            key: id.to_be_bytes().into(),
        });
    }

    /// When [`Presence::handle_timeout`] has something to do (at once when a
    /// request is ready to go).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.ready.is_empty() {
            return Some(self.clock.0);
        }
        let (now, wall) = self.clock;
        let expiry = self
            .expiries
            .peek()
            .map(|Reverse((at, _, _))| now + Duration::from_micros(at.saturating_sub(wall)));
        let throttle = self.throttled.peek().map(|Reverse((at, _))| *at);
        match (expiry, throttle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next request to send (a NOTIFY or a stored MESSAGE), written
    /// whole into `buf` without a Via.
    pub fn poll_request(&mut self, buf: &mut [u8]) -> Option<Outgoing> {
        while let Some(out) = self.ready.pop_front() {
            let sent = match out {
                Out::Notify(id) => self.write_notify(id, buf),
                Out::Deliver { msg, delivery } => self.write_delivery(msg, &delivery, buf),
            };
            if let Some(o) = sent {
                return Some(o);
            }
        }
        None
    }

    fn document(&mut self, aor: &[u8]) -> Option<Box<[u8]>> {
        let offline_unregistered = self.cfg.offline_when_unregistered;
        let p = self.presentities.get_mut(aor)?;
        if p.body.is_none() {
            let mut out = Vec::new();
            let wall = self.clock.1;
            let docs: Vec<&pidf::Document> = p
                .pubs
                .iter()
                .filter(|x| x.expires > wall)
                .map(|x| &x.doc)
                .collect();
            if docs.is_empty() || (offline_unregistered && !p.registered) {
                pidf::closed(&p.entity, &mut out);
            } else {
                pidf::compose(&p.entity, &docs, &mut out);
            }
            p.body = Some(out.into());
        }
        p.body.clone()
    }

    fn write_notify(&mut self, id: u64, buf: &mut [u8]) -> Option<Outgoing> {
        let (state, aor) = {
            let s = self.subs.get_mut(&id)?;
            s.queued = false;
            (s.state, Box::<[u8]>::from(s.presentity()))
        };
        let body = match state {
            SubState::Active => self.document(&aor),
            _ => None,
        };
        let wall = self.clock.1;
        let now = self.clock.0;
        let s = self.subs.get_mut(&id)?;
        s.cseq = s.cseq.wrapping_add(1).max(1);
        let mut w = sip::Writer::new(buf);
        let left = s.expires.saturating_sub(wall) / 1_000_000;
        let mut state_line = Vec::with_capacity(48);
        let _ = match s.state {
            SubState::Active => write!(state_line, "active;expires={left}"),
            SubState::Pending => write!(state_line, "pending;expires={left}"),
            SubState::Terminated(r) => write!(state_line, "terminated;reason={r}"),
        };
        let body = body.as_deref().unwrap_or_default();
        let contact = self
            .cfg
            .contacts
            .get(usize::from(s.peer.local.0))
            .map_or(&b"sip:invalid"[..], |c| &c[..]);
        let mut ok = w.put(b"NOTIFY ").is_ok()
            && w.put(s.target()).is_ok()
            && w.put(b" SIP/2.0\r\nMax-Forwards: 70\r\n").is_ok();
        if !s.routes().is_empty() {
            ok = ok
                && w.put(b"Route: ").is_ok()
                && w.put(s.routes()).is_ok()
                && w.put(b"\r\n").is_ok();
        }
        ok = ok
            && w.put(b"From: ").is_ok()
            && w.put(s.to()).is_ok()
            && w.put(b";tag=").is_ok()
            && w.put(&s.to_tag).is_ok()
            && w.put(b"\r\nTo: ").is_ok()
            && w.put(s.from()).is_ok()
            && w.put(b"\r\nCall-ID: ").is_ok()
            && w.put(s.dialog().split(|&b| b == 0).next().unwrap_or_default())
                .is_ok()
            && w.put(b"\r\nCSeq: ").is_ok()
            && w.put_u64(u64::from(s.cseq)).is_ok()
            && w.put(b" NOTIFY\r\nContact: <").is_ok()
            && w.put(contact).is_ok()
            && w.put(b">\r\nEvent: presence\r\nSubscription-State: ")
                .is_ok()
            && w.put(&state_line).is_ok()
            && w.put(b"\r\n").is_ok();
        if !body.is_empty() {
            ok = ok && w.put(b"Content-Type: application/pidf+xml\r\n").is_ok();
        }
        ok = ok
            && w.put(b"Content-Length: ").is_ok()
            && w.put_u64(body.len() as u64).is_ok()
            && w.put(b"\r\n\r\n").is_ok()
            && w.put(body).is_ok();
        let len = w.len();
        if !ok {
            self.counters.oversized += 1;
            if let SubState::Terminated(_) = s.state {
                self.remove_subscription(id);
            }
            return None;
        }
        s.in_flight = true;
        s.final_sent = matches!(s.state, SubState::Terminated(_));
        s.dirty = false;
        s.last_sent = Some(now);
        let to = s.peer;
        self.counters.notifies += 1;
        Some(Outgoing { to, len, token: id })
    }

    fn write_delivery(&mut self, id: u64, d: &Delivery, buf: &mut [u8]) -> Option<Outgoing> {
        let m = self.messages.get_mut(&id)?;
        let mut r = Reader(&m.value);
        let fields = (|| Some((r.bytes()?, r.bytes()?, r.bytes()?, r.u64()?, r.bytes()?)))();
        let Some((from, to, ctype, date, body)) = fields else {
            m.in_flight = m.in_flight.saturating_sub(1);
            return None;
        };
        let token = DELIVERY | (self.next_id & 0x7fff_ffff_ffff_ffff);
        self.next_id += 1;
        let mut w = sip::Writer::new(buf);
        let mut ok = w.put(b"MESSAGE ").is_ok()
            && w.put(&d.target).is_ok()
            && w.put(b" SIP/2.0\r\nMax-Forwards: 70\r\n").is_ok();
        if !d.route.is_empty() {
            ok = ok
                && w.put(b"Route: ").is_ok()
                && w.put(&d.route).is_ok()
                && w.put(b"\r\n").is_ok();
        }
        ok = ok
            && w.put(b"From: ").is_ok()
            && w.put(from).is_ok()
            && w.put(b"\r\nTo: ").is_ok()
            && w.put(to).is_ok()
            && w.put(b"\r\nCall-ID: ").is_ok()
            && w.put(&hex16(token)).is_ok()
            && w.put(b"-stored\r\nCSeq: 1 MESSAGE\r\nDate: ").is_ok()
            && w.put(&crate::registrar::date::format(date)).is_ok()
            && w.put(b"\r\nContent-Type: ").is_ok()
            && w.put(ctype).is_ok()
            && w.put(b"\r\nContent-Length: ").is_ok()
            && w.put_u64(body.len() as u64).is_ok()
            && w.put(b"\r\n\r\n").is_ok()
            && w.put(body).is_ok();
        let len = w.len();
        if !ok {
            m.in_flight = m.in_flight.saturating_sub(1);
            self.counters.oversized += 1;
            return None;
        }
        self.deliveries.insert(token, id);
        Some(Outgoing {
            to: d.to,
            len,
            token,
        })
    }

    /// The final status of the request `token` (408 when none came).
    pub fn handle_outcome(&mut self, now: Instant, token: u64, status: u16) {
        self.clock.0 = self.clock.0.max(now);
        if token & DELIVERY != 0 {
            let Some(id) = self.deliveries.remove(&token) else {
                return;
            };
            if let Some(m) = self.messages.get_mut(&id) {
                m.in_flight = m.in_flight.saturating_sub(1);
                if (200..300).contains(&status) {
                    self.counters.messages_delivered += 1;
                    self.delete_message(id);
                }
            }
            return;
        }
        let id = token;
        let Some(s) = self.subs.get_mut(&id) else {
            return;
        };
        s.in_flight = false;
        if !(200..300).contains(&status) {
            self.counters.notify_failures += 1;
        }
        if let SubState::Terminated(_) = s.state {
            if s.final_sent {
                // Its final NOTIFY was answered (or not): it is gone.
                self.remove_subscription(id);
            } else {
                // It ended while an earlier NOTIFY was in flight: now the final one.
                s.dirty = false;
                self.queue(id);
            }
            return;
        }
        if matches!(status, 408 | 481) {
            // RFC 6665 §4.2.2: the subscription is gone at the subscriber.
            self.counters.subscriptions_dropped += 1;
            self.remove_subscription(id);
            return;
        }
        if s.dirty {
            s.dirty = false;
            self.queue(id);
        }
    }

    /// Connection `flow` closed: subscriptions made over it are gone (their
    /// watcher subscribes again when it reconnects; a NOTIFY cannot reach it).
    pub fn handle_flow_closed(&mut self, flow: FlowId) {
        if flow.is_none() {
            return;
        }
        let ids: Vec<u64> = self
            .subs
            .iter()
            .filter(|(_, s)| s.peer.flow == flow && s.peer.transport.is_stream())
            .map(|(id, _)| id)
            .collect();
        for id in ids {
            self.counters.subscriptions_dropped += 1;
            self.remove_subscription(id);
        }
    }

    /// Heap bytes held by subscriptions, presentities and stored messages (an estimate).
    pub fn heap_size(&self) -> usize {
        let subs: usize = self
            .subs
            .iter()
            .map(|(_, s)| {
                size_of::<Subscription>()
                    + s.presentity().len()
                    + s.dialog().len()
                    + s.from().len()
                    + s.to().len()
                    + s.target().len()
                    + s.routes().len()
                    + s.watcher().len()
            })
            .sum();
        let pres: usize = self
            .presentities
            .iter()
            .map(|(k, p)| {
                size_of::<Presentity>()
                    + k.len()
                    + p.entity.len()
                    + p.watchers.capacity() * 8
                    + p.pubs.iter().map(|x| x.doc.heap_size() + 32).sum::<usize>()
                    + p.body.as_ref().map_or(0, |b| b.len())
            })
            .sum();
        subs + pres
            + self
                .messages
                .values()
                .map(|m| m.value.len() + 64)
                .sum::<usize>()
    }
}
