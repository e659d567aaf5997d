//! The local-service seam ([`LocalService`]): a request for this shard's
//! partition of a service (a REGISTER today) becomes a server transaction
//! whose answer is held until its records are durable (submit, then
//! complete), and the records then feed every shard's replica; a request a
//! service originates (a NOTIFY) gets a client transaction of the proxy,
//! and its outcome goes back to the service.

use super::*;

impl<L: Location, S: LocalService> Stateful<L, S> {
    /// True when REGISTER `msg` (Request-URI `uri`, To `to`) is for our
    /// registrar (§10.3): its Request-URI is a served domain, or this proxy
    /// itself for an AoR of a served domain (a phone configured with the
    /// edge's address as its registrar); and it is routed nowhere else. A
    /// Route that names only us (the edge is also the UA's outbound proxy)
    /// is ours to remove first (§16.4), not a reason to proxy the REGISTER:
    /// that sent pjsua2's REGISTERs (outbound proxy = registrar) to the
    /// upstream, which answered 404 without one (found by tests/interop.rs).
    pub(super) fn is_for_local(
        &self,
        msg: &Message<'_>,
        uri: &sip::Uri<'_>,
        to: &sip::NameAddr<'_>,
    ) -> bool {
        let ours = self.id.is_served_uri(uri)
            || (self.id.is_us(uri) && to.uri().is_ok_and(|t| self.id.is_served_uri(&t)));
        ours && route::routing(&self.id, msg).is_ok_and(|r| r.next_route.is_none())
    }

    /// A request for this shard's partition of a local service (a
    /// REGISTER, a PUBLISH, a SUBSCRIBE; with `offline`, a MESSAGE kept for
    /// a user with no contact): a server transaction (so retransmissions are
    /// absorbed or answered again, never re-applied), the service's answer
    /// held until its records are durable.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn local_here(
        &mut self,
        _now: Instant,
        msg: &Message<'_>,
        ess: &Essentials<'_>,
        aor: Option<&AorKey>,
        key: u64,
        src: Peer,
        offline: bool,
        out: &mut Outbox,
    ) {
        if self.txns.live() >= self.cfg.max_transactions {
            self.counters
                .shed(crate::policy::overload::ShedReason::MaxTransactions);
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
        let answer = if offline {
            self.local
                .handle_offline(_now, self.wall_us, msg, ess, &src, &mut self.scratch)
        } else {
            self.local
                .handle_request(_now, self.wall_us, msg, ess, aor, &src, &mut self.scratch)
        };
        let Some((n, code)) = answer else {
            self.counters.dropped_overflow += 1;
            return;
        };
        let (slot, gen) = self.alloc();
        self.txns.index(key, slot);
        self.counters.transactions += 1;
        let txn = Txn {
            gen,
            key,
            method: msg.method(),
            server: Server::NonInvite(NonInviteServer::start(self.cfg.timers, false)),
            request: Some(msg.as_bytes().into()),
            src,
            reply_to: route::reply_peer(&ess.top_via, &src),
            last_response: None,
            forks: Vec::new(),
            best: None,
            final_sent: false,
            cancelled: false,
            started: Some(_now),
            dispatch: None,
            ctx: None,
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
        // A batch cut by poll_persist; without one, this turn's answers.
        let (held, records) = self
            .persisting
            .pop_front()
            .unwrap_or_else(|| (core::mem::take(&mut self.held), Vec::new()));
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
                (self.local_final(&txn, 503), 503)
            };
            if let Some(b) = bytes {
                self.send(out, txn.reply_to, &b);
                self.answered(now, &mut txn);
                self.counters.count_local_response(code);
                txn.last_response = Some(b);
            }
            txn.final_sent = true;
            txn.request = None;
            let arm = txn.server.on_send(now, code);
            self.arm(slot, gen, TimerTarget::Server, arm);
            self.put(slot, txn);
        }
        self.local.handle_persisted(ok, !records.is_empty());
        if ok && !records.is_empty() {
            let records: Arc<[Record]> = records.into();
            for r in records.iter() {
                if r.remote {
                    // Another node's change reaching this node's replicas:
                    // the lag from its commit there is the cross-node visibility.
                    let _ = self
                        .lag
                        .record(self.wall_us.saturating_sub(r.commit).max(1));
                }
                if let Err(p) = self.location.apply(r) {
                    self.request_resync(p);
                }
                self.observe_presence(r);
            }
            for to in 0..usize::from(self.shards) {
                if to != usize::from(self.id.shard_id) {
                    self.mesh_out
                        .push_back((to, MeshMsg::Feed(records.clone())));
                }
            }
        }
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

    /// Sends the requests the local service originated: our Via (a
    /// transaction branch) on top, one non-INVITE client transaction each
    /// (§17.1.2). What cannot be sent now (outbox or table full) stays
    /// queued in the service for the next turn.
    pub(super) fn originate(&mut self, now: Instant, out: &mut Outbox) {
        self.send_probes(now, out);
        for _ in 0..256 {
            if !out.has_room() || self.txns.live() >= self.cfg.max_transactions {
                return;
            }
            let mut buf = core::mem::take(&mut self.originated);
            let next = self.local.poll_request(&mut buf);
            let Some(o) = next else {
                self.originated = buf;
                return;
            };
            self.send_originated(now, &buf, o, out);
            self.originated = buf;
        }
    }

    fn send_originated(&mut self, now: Instant, buf: &[u8], o: Originated, out: &mut Outbox) {
        if !self.start_originated(now, buf.get(..o.len).unwrap_or_default(), o, false, out) {
            self.outcomes.push((false, o.token, 500));
        }
    }

    /// Sends the dispatcher's OPTIONS probes, each as a client transaction
    /// of the edge's own; one that cannot be sent now is a failed probe.
    fn send_probes(&mut self, now: Instant, out: &mut Outbox) {
        while out.has_room() && self.txns.live() < self.cfg.max_transactions {
            let Some(p) = self.dispatcher.poll_probe() else {
                return;
            };
            let egress = self.id.egress(p.transport, p.addr, SocketId(0));
            let host = self
                .id
                .socket(egress)
                .map(|s| s.via_host().to_vec())
                .unwrap_or_default();
            let uri = self
                .dispatcher
                .dest(p.set, p.dest)
                .map(|d| d.uri.split(';').next().unwrap_or_default().to_owned())
                .unwrap_or_default();
            let mut buf = core::mem::take(&mut self.originated);
            let mut w = sip::Writer::new(&mut buf);
            let ok = w.put(b"OPTIONS ").is_ok()
                && w.put(uri.as_bytes()).is_ok()
                && w.put(b" SIP/2.0\r\nMax-Forwards: 70\r\nFrom: <sip:sipedge@")
                    .is_ok()
                && w.put(&host).is_ok()
                && w.put(b">;tag=").is_ok()
                && w.put_u64(p.token).is_ok()
                && w.put(b"\r\nTo: <").is_ok()
                && w.put(uri.as_bytes()).is_ok()
                && w.put(b">\r\nCall-ID: probe-").is_ok()
                && w.put_u64(p.token).is_ok()
                && w.put(b"-").is_ok()
                && w.put_u64(u64::from(self.id.shard_id)).is_ok()
                && w.put(b"@sipedge\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
                    .is_ok();
            let o = Originated {
                to: Peer {
                    transport: p.transport,
                    remote: p.addr,
                    local: egress,
                    flow: FlowId::NONE,
                },
                len: w.len(),
                token: p.token,
            };
            if !ok
                || !self.start_originated(now, buf.get(..o.len).unwrap_or_default(), o, true, out)
            {
                self.outcomes.push((true, p.token, 408));
            }
            self.originated = buf;
        }
    }

    /// Puts our Via on `req` (as the service wrote it, without one), sends
    /// it and starts its client transaction. False when it is not a
    /// well-formed non-INVITE request or cannot be sent.
    fn start_originated(
        &mut self,
        now: Instant,
        req: &[u8],
        o: Originated,
        probe: bool,
        out: &mut Outbox,
    ) -> bool {
        // Over the transport of the listener the peer used (a NOTIFY goes
        // back the way its SUBSCRIBE came, a stored MESSAGE the way the
        // contact registered).
        let transport = match self.id.socket(o.to.local) {
            Some(s) => s.transport,
            None => o.to.transport,
        };
        let egress = self.id.egress(transport, o.to.remote, o.to.local);
        let Some(sock) = self.id.socket(egress).cloned() else {
            return false;
        };
        let to = Peer {
            transport,
            local: egress,
            ..o.to
        };
        let Some(line_end) = memchr::memmem::find(req, b"\r\n") else {
            return false;
        };
        let (line, rest) = req.split_at(line_end + 2);
        let (slot, gen) = self.alloc();
        let br = Branch::transaction(
            TxnRef {
                shard: self.id.shard_id,
                slot,
                gen,
                fork: 0,
            },
            o.token,
        );
        let mut w = sip::Writer::new(&mut self.scratch);
        let written = w.put(line).is_ok()
            && w.put(b"Via: SIP/2.0/").is_ok()
            && w.put(to.transport.via_token().as_bytes()).is_ok()
            && w.put(b" ").is_ok()
            && w.put(sock.via_host()).is_ok()
            && w.put(b":").is_ok()
            && w.put_u64(u64::from(sock.advertised.port())).is_ok()
            && w.put(b";branch=").is_ok()
            && w.put(br.as_bytes()).is_ok()
            && w.put(b";rport\r\n").is_ok()
            && w.put(rest).is_ok();
        let n = w.len();
        let method = match self.index2.as_mut() {
            Some(idx) if written => {
                match sip::parse(self.scratch.get(..n).unwrap_or_default(), idx) {
                    Ok(m)
                        if m.is_request()
                            && m.method() != Method::Invite
                            && m.method() != Method::Ack =>
                    {
                        Some(m.method())
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        let Some(method) = method else {
            self.txns.release(slot, 0);
            return false;
        };
        let bytes: Box<[u8]> = self.scratch.get(..n).unwrap_or_default().into();
        self.send(out, to, &bytes);
        self.counters.requests_originated += 1;
        let (client, arm) = NonInviteClient::start(now, self.cfg.timers, false);
        self.arm(slot, gen, TimerTarget::Fork(0), arm);
        let txn = Txn {
            gen,
            key: 0,
            method,
            server: if probe {
                Server::Probe(o.token)
            } else {
                Server::Local(o.token)
            },
            request: None,
            src: to,
            reply_to: to,
            last_response: None,
            forks: vec![Fork {
                client: Client::NonInvite(client),
                bytes: Some(bytes),
                to,
                final_code: None,
                provisional: false,
                cancel_wanted: false,
                cancel: None,
                timer_c: None,
                dest: None,
                loaded: false,
                rang_out: false,
            }],
            best: None,
            final_sent: false,
            cancelled: false,
            started: None,
            dispatch: None,
            ctx: None,
        };
        self.put(slot, txn);
        true
    }

    /// Hands the final statuses of originated requests to the service.
    pub(super) fn report_outcomes(&mut self, now: Instant) {
        for (probe, token, status) in self.outcomes.drain(..) {
            if probe {
                self.dispatcher.probe_outcome(token, status);
            } else {
                self.local.handle_outcome(now, token, status);
            }
        }
    }
}
