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

use crate::location::{Lookup, PartitionState, Record, Replica};
use crate::registrar::{register_partition, Registrar, RegistrarError};
use crate::sip::{scan, Message, Method, NameAddr, Uri};
use crate::time::Instant;
use crate::transport::{FlowId, Peer, Transport};

use super::route::uri_addr;
use super::stateful::{Found, LocalService, Location, Owner, Targets};

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

/// A shard's registrar partition, as the stateful proxy uses it.
pub struct PartitionRegistry {
    registrar: Registrar,
    partitions: u16,
    me: u16,
}

impl PartitionRegistry {
    /// Shard `me` of `partitions`, owning `registrar` (partition `me`).
    pub fn new(registrar: Registrar, partitions: u16, me: u16) -> Self {
        Self {
            registrar,
            partitions: partitions.max(1),
            me,
        }
    }

    /// The registrar.
    pub fn registrar(&self) -> &Registrar {
        &self.registrar
    }
}

impl LocalService for PartitionRegistry {
    fn serves(&self, method: Method) -> bool {
        method == Method::Register
    }

    fn owner(&self, msg: &Message<'_>) -> Owner {
        match register_partition(msg, self.partitions) {
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
        src: &Peer,
        reply: &mut [u8],
    ) -> Option<(usize, u16)> {
        match self
            .registrar
            .handle_register(now, wall_us, msg, src, reply)
        {
            Ok(r) => Some((r.len, r.status)),
            Err(
                RegistrarError::WrongPartition { .. }
                | RegistrarError::NotRegister
                | RegistrarError::Emit(_),
            ) => None,
        }
    }

    fn drain_records(&mut self, out: &mut Vec<Record>) {
        out.extend(self.registrar.drain_records());
    }

    fn handle_timeout(&mut self, now: Instant, wall_us: u64) {
        self.registrar.handle_timeout(now, wall_us);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.registrar.poll_timeout()
    }

    fn state(&self) -> Option<PartitionState> {
        Some(self.registrar.snapshot())
    }

    fn handle_flow_closed(&mut self, now: Instant, wall_us: u64, flow: FlowId) {
        self.registrar.handle_flow_closed(now, wall_us, flow.0);
    }
}
