//! The proxy's view of the location service and the registrar: a shard's
//! [`Replica`] as a [`Location`], and its registrar partition as a
//! [`LocalService`] that knows which shard owns each address-of-record.
//!
//! Where a request for a binding goes: to the first Path URI when the UA
//! registered through an edge that added one (RFC 3327), else to the source
//! address of its REGISTER when the registrar kept it (the REGISTER crossed
//! a NAT, so the UA is reached where it really is, or the contact has no IP
//! address), else to the contact's own address (a direct or third-party
//! registration; see the registrar's module doc).

use crate::location::{AorKey, Binding, Lookup, Op, PartitionState, Record, Replica};
use crate::presence::{Delivery, Presence, PresenceConfig};
use crate::registrar::{Registrar, RegistrarError};
use crate::sip::{scan, Essentials, Message, Method, NameAddr, Uri};
use crate::time::Instant;
use crate::transport::{FlowId, Peer, Transport};

use super::route::uri_addr;
use super::stateful::{Found, LocalService, Location, Originated, Owner, Targets};
use super::Counters;

impl Location for Replica {
    fn lookup(&self, aor: &[u8], wall_us: u64, out: &mut Targets) -> Found {
        match Self::lookup(self, aor, wall_us) {
            Lookup::Unknown => Found::Unknown,
            Lookup::NoBindings => Found::NoBindings,
            Lookup::Found(bindings) => {
                for b in bindings {
                    let path = b.path();
                    let dest = if path.is_empty() {
                        b.received()
                            .or_else(|| Uri::parse(b.contact()).ok().and_then(|u| uri_addr(&u)))
                    } else {
                        scan::CommaValues::new(path)
                            .next()
                            .and_then(|v| NameAddr::parse(v).ok())
                            .and_then(|na| na.uri().ok())
                            .and_then(|u| uri_addr(&u))
                    };
                    if path.is_empty() {
                        // Reached where its REGISTER came from: the listener
                        // (and so the transport) and the connection it used.
                        out.push_over(
                            b.contact(),
                            path,
                            dest,
                            b.q(),
                            Transport::Udp,
                            Some(b.socket()),
                            FlowId(b.flow()),
                        );
                    } else {
                        out.push(b.contact(), path, dest, b.q());
                    }
                }
                if out.is_empty() {
                    Found::NoBindings
                } else {
                    Found::Contacts
                }
            }
        }
    }

    fn apply(&mut self, record: &Record) -> Result<(), u16> {
        match Self::apply(self, record) {
            Ok(_) => Ok(()),
            Err(_) => Err(record.partition),
        }
    }

    fn install(&mut self, state: &PartitionState) {
        let _ = Self::install(self, state);
    }
}

/// A shard's partition of the local services — the registrar and, beside
/// it on the same AoRs, presence (publications, subscriptions, stored
/// MESSAGEs) — as the stateful proxy uses it. Both write one feed per
/// partition (presence's changes are entries in it), so one store append
/// per turn makes a turn's answers durable.
pub struct PartitionRegistry {
    registrar: Registrar,
    presence: Presence,
    partitions: u16,
    me: u16,
    ops: Vec<Op>,
}

/// Where a stored MESSAGE goes for binding `b`: like a request routed to
/// it (the first Path URI, else the REGISTER's source, else the contact).
fn delivery(b: &Binding) -> Option<Delivery> {
    let path = b.path();
    let dest = if path.is_empty() {
        b.received()
            .or_else(|| Uri::parse(b.contact()).ok().and_then(|u| uri_addr(&u)))
    } else {
        scan::CommaValues::new(path)
            .next()
            .and_then(|v| NameAddr::parse(v).ok())
            .and_then(|na| na.uri().ok())
            .and_then(|u| uri_addr(&u))
    }?;
    Some(Delivery {
        to: Peer {
            transport: Transport::Udp,
            remote: dest,
            local: b.socket(),
            flow: if path.is_empty() {
                FlowId(b.flow())
            } else {
                FlowId::NONE
            },
        },
        target: b.contact().into(),
        route: path.into(),
    })
}

impl PartitionRegistry {
    /// Shard `me` of `partitions`, owning `registrar` (partition `me`) and
    /// no presence state.
    pub fn new(registrar: Registrar, partitions: u16, me: u16) -> Self {
        let presence = Presence::new(PresenceConfig::default(), me);
        Self::with_presence(registrar, presence, partitions, me)
    }

    /// Shard `me` of `partitions`, owning `registrar` and `presence`
    /// (partition `me`, both rebuilt from the same state).
    pub fn with_presence(
        registrar: Registrar,
        mut presence: Presence,
        partitions: u16,
        me: u16,
    ) -> Self {
        for aor in presence.presentity_keys() {
            presence.set_registered(&aor, registrar.has_bindings(&aor));
        }
        Self {
            registrar,
            presence,
            partitions: partitions.max(1),
            me,
            ops: Vec::new(),
        }
    }

    /// The registrar.
    pub fn registrar(&self) -> &Registrar {
        &self.registrar
    }

    /// Presence.
    pub fn presence(&self) -> &Presence {
        &self.presence
    }

    fn deliveries(&self, aor: &[u8]) -> Vec<Delivery> {
        self.registrar
            .bindings_of(aor)
            .iter()
            .filter_map(delivery)
            .collect()
    }
}

impl LocalService for PartitionRegistry {
    fn serves(&self, method: Method) -> bool {
        method == Method::Register || self.presence.serves(method)
    }

    fn owner(&self, msg: &Message<'_>, _: &Essentials<'_>, aor: Option<&AorKey>) -> Owner {
        if msg.method() != Method::Register && !self.presence.wants(msg) {
            // A SUBSCRIBE to another event package: proxied to the user.
            return Owner::Nobody;
        }
        match aor.map(|k| k.partition(self.partitions)) {
            Some(p) if p != self.me => Owner::Shard(p),
            // No usable AoR: this registrar answers it (400/404) without state.
            _ => Owner::Here,
        }
    }

    fn handle_request(
        &mut self,
        now: Instant,
        wall_us: u64,
        msg: &Message<'_>,
        ess: &Essentials<'_>,
        aor: Option<&AorKey>,
        src: &Peer,
        reply: &mut [u8],
    ) -> Option<(usize, u16)> {
        if msg.method() != Method::Register {
            let registered = aor.is_some_and(|k| self.registrar.has_bindings(k.as_bytes()));
            return self
                .presence
                .handle_request(now, wall_us, msg, src, registered, reply);
        }
        match self
            .registrar
            .handle_register_with(now, wall_us, msg, ess, aor, src, reply)
        {
            Ok(r) => Some((r.len, r.status)),
            Err(
                RegistrarError::WrongPartition { .. }
                | RegistrarError::NotRegister
                | RegistrarError::Emit(_),
            ) => None,
        }
    }

    fn reseed(&mut self, wall_us: u64) {
        let n = self.registrar.reseed(wall_us);
        tracing::info!(
            "partition {}: {n} binding(s) written to the shared store again",
            self.me
        );
    }

    fn apply_remote(&mut self, now: Instant, wall_us: u64, commit: u64, op: &Op) {
        let _ = self.registrar.apply_remote(now, wall_us, commit, op);
    }

    fn offline_owner(&self, _msg: &Message<'_>, aor: &[u8]) -> Option<Owner> {
        if !self.presence.config().store_messages {
            return None;
        }
        let p = crate::hash::partition_of(aor, self.partitions);
        Some(if p == self.me {
            Owner::Here
        } else {
            Owner::Shard(p)
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn handle_offline(
        &mut self,
        now: Instant,
        wall_us: u64,
        msg: &Message<'_>,
        ess: &Essentials<'_>,
        src: &Peer,
        reply: &mut [u8],
    ) -> Option<(usize, u16)> {
        let targets = ess
            .uri
            .and_then(|u| AorKey::from_uri(&u).ok())
            .map(|k| self.deliveries(k.as_bytes()))
            .unwrap_or_default();
        self.presence
            .handle_offline_message(now, wall_us, msg, src, &targets, reply)
    }

    fn drain_records(&mut self, out: &mut Vec<Record>) {
        // Presence's changes take their seqs in the same feed.
        self.presence.drain_ops(&mut self.ops);
        let wall = self.presence.wall();
        for op in self.ops.drain(..) {
            self.registrar.emit_service(wall, op);
        }
        let start = out.len();
        out.extend(self.registrar.drain_records());
        if out.len() == start {
            return;
        }
        // Location changes: watchers see online/offline, stored MESSAGEs go out.
        let mut seen: Vec<&[u8]> = Vec::new();
        for r in out.get(start..).unwrap_or_default() {
            let aor = match &r.op {
                Op::Upsert(b) => b.aor(),
                Op::Remove { aor, .. } | Op::Forget { aor } => aor,
                Op::Put(_) | Op::Del { .. } => continue,
            };
            if !self.presence.interested(aor) || seen.contains(&aor) {
                continue;
            }
            seen.push(aor);
            let registered = self.registrar.has_bindings(aor);
            let targets = if registered {
                self.deliveries(aor)
            } else {
                Vec::new()
            };
            self.presence.location_changed(aor, registered, &targets);
        }
        self.presence.seal();
    }

    fn handle_persisted(&mut self, ok: bool, records: bool) {
        if records {
            self.presence.persisted(ok);
        }
    }

    fn handle_timeout(&mut self, now: Instant, wall_us: u64) {
        if self.registrar.poll_timeout().is_some_and(|t| t <= now) {
            self.registrar.handle_timeout(now, wall_us);
        }
        self.presence.handle_timeout(now, wall_us);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match (self.registrar.poll_timeout(), self.presence.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn state(&self) -> Option<PartitionState> {
        let mut s = self.registrar.snapshot();
        s.entries = self.presence.entries();
        Some(s)
    }

    fn remove_aor(&mut self, now: Instant, wall_us: u64, aor: &[u8]) -> usize {
        self.registrar.remove_aor(now, wall_us, aor)
    }

    fn handle_flow_closed(&mut self, now: Instant, wall_us: u64, flow: FlowId) {
        self.registrar.handle_flow_closed(now, wall_us, flow.0);
        self.presence.handle_flow_closed(flow);
    }

    fn poll_request(&mut self, buf: &mut [u8]) -> Option<Originated> {
        self.presence.poll_request(buf).map(|o| Originated {
            to: o.to,
            len: o.len,
            token: o.token,
        })
    }

    fn handle_outcome(&mut self, now: Instant, token: u64, status: u16) {
        self.presence.handle_outcome(now, token, status);
    }

    fn set_watchers(&mut self, w: &super::guard::Watchers) {
        self.presence.set_rules(w.rules.clone(), w.others);
    }

    fn export(&self, counters: &mut Counters) {
        counters.presence = *self.presence.counters();
        counters.bindings = self.registrar.len() as u64;
        counters.registrar_timers = self.registrar.timers() as u64;
        counters.subscriptions = self.presence.subscriptions() as u64;
    }
}
