//! The local-service seam as the registrar uses it: a REGISTER for this
//! shard's partition becomes a server transaction whose answer is held
//! until its records are durable (submit, then complete), and the records
//! then feed every shard's replica.

use super::*;

impl<L: Location, R: Registry> Stateful<L, R> {
    /// True when REGISTER `msg` (Request-URI `uri`, To `to`) is for our
    /// registrar (§10.3): its Request-URI is a served domain, or this proxy
    /// itself for an AoR of a served domain (a phone configured with the
    /// edge's address as its registrar); and it is routed nowhere else. A
    /// Route that names only us (the edge is also the UA's outbound proxy)
    /// is ours to remove first (§16.4), not a reason to proxy the REGISTER:
    /// that sent pjsua2's REGISTERs (outbound proxy = registrar) to the
    /// upstream, which answered 404 without one (found by tests/interop.rs).
    pub(super) fn is_for_registrar(
        &self,
        msg: &Message<'_>,
        uri: &sip::Uri<'_>,
        to: &sip::NameAddr<'_>,
    ) -> bool {
        let ours = self.id.is_served_uri(uri)
            || (self.id.is_us(uri) && to.uri().is_ok_and(|t| self.id.is_served_uri(&t)));
        ours && route::routing(&self.id, msg).is_ok_and(|r| r.next_route.is_none())
    }

    /// A REGISTER for this shard's partition: a server transaction (so
    /// retransmissions are absorbed or answered again, never re-applied), the
    /// registrar's answer held until its records are durable.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn register_here(
        &mut self,
        _now: Instant,
        msg: &Message<'_>,
        key: u64,
        via: &Via<'_>,
        src: Peer,
        out: &mut Outbox,
    ) {
        if self.txns.live() >= self.cfg.max_transactions {
            self.counters.overload += 1;
            self.reply(
                msg,
                src,
                503,
                "Service Unavailable",
                b"Retry-After: 5\r\n",
                out,
            );
            return;
        }
        let Some((n, code)) =
            self.registry
                .handle_register(_now, self.wall_us, msg, &src, &mut self.scratch)
        else {
            self.counters.dropped_overflow += 1;
            return;
        };
        let (slot, gen) = self.alloc();
        self.txns.index(key, slot);
        self.counters.transactions += 1;
        let txn = Txn {
            gen,
            key,
            method: Method::Register,
            server: Server::NonInvite(NonInviteServer::start(self.cfg.timers, false)),
            request: Some(msg.as_bytes().into()),
            src,
            reply_to: route::reply_peer(via, &src),
            last_response: None,
            forks: Vec::new(),
            best: None,
            final_sent: false,
            cancelled: false,
        };
        self.put(slot, txn);
        self.held.push((
            slot,
            gen,
            code,
            self.scratch.get(..n).unwrap_or_default().into(),
        ));
    }

    /// The shard persisted (or failed to persist) the records it took with
    /// `poll_persist`: release the held registrar answers (500 on failure),
    /// apply the records here and send them to every other shard.
    pub(super) fn release(&mut self, now: Instant, ok: bool, out: &mut Outbox) {
        let held = core::mem::take(&mut self.held);
        for (slot, gen, code, bytes) in held {
            if self.txns.generation(slot) != Some(gen) {
                continue;
            }
            let Some(mut txn) = self.take(slot) else {
                continue;
            };
            let (bytes, code) = if ok {
                (Some(bytes), code)
            } else {
                self.counters.store_failures += 1;
                (self.local_final(&txn, 500), 500)
            };
            if let Some(b) = bytes {
                self.send(out, txn.reply_to, &b);
                self.counters.responses_local += 1;
                txn.last_response = Some(b);
            }
            txn.final_sent = true;
            txn.request = None;
            let arm = txn.server.on_send(now, code);
            self.arm(slot, gen, TimerTarget::Server, arm);
            self.put(slot, txn);
        }
        if ok && !self.persisting.is_empty() {
            let records: Arc<[Record]> = core::mem::take(&mut self.persisting).into();
            for r in records.iter() {
                if let Err(p) = self.location.apply(r) {
                    self.request_resync(p);
                }
            }
            for to in 0..usize::from(self.shards) {
                if to != usize::from(self.id.shard_id) {
                    self.mesh_out
                        .push_back((to, MeshMsg::Feed(records.clone())));
                }
            }
        }
        self.persisting.clear();
    }

    pub(super) fn request_resync(&mut self, partition: u16) {
        self.counters.resyncs += 1;
        self.mesh_out.push_back((
            usize::from(partition),
            MeshMsg::Resync {
                partition,
                to: self.id.shard_id,
            },
        ));
    }
}
