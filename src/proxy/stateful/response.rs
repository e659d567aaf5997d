//! Responses to our client transactions (RFC 3261 §16.7): the response
//! context, the best final response, 2xx forwarding, ACKs of non-2xx
//! responses, and the local final responses (408, 487, 500, 513).

use super::*;

impl<L: Location, S: LocalService> Stateful<L, S> {
    pub(super) fn on_response(
        &mut self,
        now: Instant,
        msg: &Message<'_>,
        src: Peer,
        out: &mut Outbox,
    ) {
        let Ok(via) = msg.top_via() else {
            self.counters.dropped_malformed += 1;
            return;
        };
        let Some(code) = msg.status() else { return };
        let r = via.branch().and_then(branch::txn_ref);
        let found = r.filter(|r| {
            r.shard == self.id.shard_id
                && self.txns.is_current(r.slot, r.gen)
                && self.id.is_local_addr(&via.host, via.port)
        });
        if let Some(r) = r.filter(|r| {
            r.shard != self.id.shard_id
                && r.shard < self.shards
                && self.id.is_local_addr(&via.host, via.port)
        }) {
            // A response to another shard's client transaction came in on a
            // connection this shard owns (stream listeners are shared by
            // every shard, unlike the per-shard UDP sockets in our Vias).
            if self.mesh_out.len() < MESH_OUT_MAX {
                let m = MeshMsg::Message {
                    bytes: msg.as_bytes().into(),
                    src,
                };
                self.mesh_out.push_back((usize::from(r.shard), m));
                self.counters.responses_handed_over += 1;
            } else {
                self.counters
                    .shed(crate::policy::overload::ShedReason::MeshFull);
            }
            return;
        }
        let Some(r) = found else {
            if r.is_some() && msg.cseq().method == Method::Cancel {
                // The answer to a CANCEL of ours whose context is gone: nobody upstream wants it.
                self.counters.dropped_not_ours += 1;
                return;
            }
            // §16.7: no response context: forward statelessly (or drop if not ours).
            stateless::relay_response(&self.id, &mut self.counters, msg, src.local, out);
            return;
        };
        let slot = r.slot;
        let fork_i = usize::from(r.fork);
        let Some(mut txn) = self.take(slot) else {
            return;
        };
        if fork_i >= txn.forks.len() {
            self.put(slot, txn);
            self.counters.dropped_not_ours += 1;
            return;
        }
        if msg.cseq().method == Method::Cancel {
            if let Some(f) = txn.forks.get_mut(fork_i) {
                if let Some((c, _)) = f.cancel.as_deref_mut() {
                    let (_, arm) = c.on_response(now, code);
                    self.arm(slot, txn.gen, TimerTarget::Cancel(fork_i as u8), arm);
                }
            }
            self.put(slot, txn);
            self.maybe_free(slot);
            return;
        }
        let (action, arm) = match txn.forks.get_mut(fork_i) {
            Some(f) => f.client.on_response(now, code),
            None => (Action::None, Arm::NONE),
        };
        self.arm(slot, txn.gen, TimerTarget::Fork(fork_i as u8), arm);
        let ended = txn.forks.get(fork_i).is_some_and(|f| f.client.terminated());
        if action == Action::None
            && ended
            && txn.method == Method::Invite
            && (200..300).contains(&code)
        {
            // §16.7 step 5: every 2xx to an INVITE goes up, also on a branch
            // whose client transaction is over (Timer B, its CANCEL's Timer F,
            // or Timer M): dropping it left the callee retransmitting an
            // answer nobody would ACK while this context lived (found by the
            // simulations).
            self.forward_up(now, msg, &mut txn, out);
        }
        match action {
            Action::AckAndPass | Action::Ack => {
                self.send_ack(&mut txn, fork_i, msg, out);
                if action == Action::AckAndPass {
                    self.pass_response(now, slot, &mut txn, fork_i, code, msg, out);
                }
            }
            Action::PassResponse => self.pass_response(now, slot, &mut txn, fork_i, code, msg, out),
            _ => {}
        }
        self.put(slot, txn);
        self.finish(now, slot, out);
    }

    /// Sends (or re-sends) the ACK of the non-2xx final response `msg` on fork `i`.
    pub(super) fn send_ack(
        &mut self,
        txn: &mut Txn,
        i: usize,
        msg: &Message<'_>,
        out: &mut Outbox,
    ) {
        let Some(fork) = txn.forks.get_mut(i) else {
            return;
        };
        let is_ack = fork.final_code.is_some();
        if !is_ack {
            // First final: build the ACK from the forwarded request and keep it instead.
            let Some(req) = fork.bytes.as_deref() else {
                return;
            };
            let Some(mut idx) = self.index2.take() else {
                return;
            };
            let to = msg.header(HeaderName::To);
            let built = match sip::parse(req, &mut idx) {
                Ok(m) => {
                    crate::proxy::build::ack_or_cancel(&m, Method::Ack, to, &mut self.scratch).ok()
                }
                Err(_) => None,
            };
            self.index2 = Some(idx);
            let Some(n) = built else { return };
            fork.bytes = Some(self.scratch.get(..n).unwrap_or_default().into());
        }
        if let Some(ack) = fork.bytes.clone() {
            let to = fork.to;
            self.send(out, to, &ack);
        }
    }

    /// §16.7: what the response context does with a response a fork passed up.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn pass_response(
        &mut self,
        now: Instant,
        slot: u32,
        txn: &mut Txn,
        i: usize,
        code: u16,
        msg: &Message<'_>,
        out: &mut Outbox,
    ) {
        let invite = txn.method == Method::Invite;
        let gen = txn.gen;
        match code {
            100..=199 => {
                // 100 Trying is a provisional response too: a CANCEL waiting
                // for one goes now (§9.1). It is neither forwarded (§16.7
                // step 5) nor resets Timer C (§16.7 step 2: 101–199 only).
                if invite
                    && code > 100
                    && txn
                        .forks
                        .get(i)
                        .is_some_and(|f| f.final_code.is_none() && f.cancel.is_none())
                {
                    // Moved on; the check already on the wheel finds it.
                    let c = now + self.cfg.timers.timer_c;
                    if let Some(f) = txn.forks.get_mut(i) {
                        f.timer_c = Some(c);
                    }
                }
                let wanted = match txn.forks.get_mut(i) {
                    Some(f) => {
                        f.provisional = true;
                        f.cancel_wanted
                    }
                    None => false,
                };
                if wanted {
                    self.cancel_fork(now, slot, txn, i, out);
                } else if code > 100 && !txn.final_sent && txn.server.can_send(code) {
                    if let Some(bytes) = self.forward_up(now, msg, txn, out) {
                        txn.last_response = Some(bytes);
                    }
                }
            }
            200..=299 => {
                if let Some(f) = txn.forks.get_mut(i) {
                    f.final_code = Some(code);
                    f.bytes = None;
                    f.timer_c = None;
                }
                self.dispatched_final(now, slot, txn, i, code, Some(msg), out);
                if invite {
                    // Every 2xx goes up, at once (§16.7 step 5).
                    self.forward_up(now, msg, txn, out);
                    // Accepted (RFC 6026) absorbs INVITE retransmissions
                    // without answering them: the last 1xx is not needed
                    // for the 32 s the transaction lingers.
                    txn.last_response = None;
                    if !txn.final_sent {
                        txn.final_sent = true;
                        txn.request = None;
                        let arm = txn.server.on_send(now, code);
                        self.arm(slot, gen, TimerTarget::Server, arm);
                        for j in 0..txn.forks.len() {
                            if j != i {
                                self.cancel_fork(now, slot, txn, j, out);
                            }
                        }
                    }
                } else if !txn.final_sent {
                    if let Some(bytes) = self.forward_up(now, msg, txn, out) {
                        txn.last_response = Some(bytes);
                    }
                    txn.final_sent = true;
                    txn.request = None;
                    let arm = txn.server.on_send(now, code);
                    self.arm(slot, gen, TimerTarget::Server, arm);
                }
            }
            _ => {
                if let Some(f) = txn.forks.get_mut(i) {
                    f.final_code = Some(code);
                    f.timer_c = None;
                    if !invite {
                        // Completed (Timer K) only absorbs retransmitted
                        // responses: the forwarded request is done with.
                        f.bytes = None;
                    }
                }
                let better = txn.best.as_ref().is_none_or(|(b, _)| rank(code) < rank(*b));
                if better && !txn.final_sent && !only_our_via(msg) {
                    let edits = Edits {
                        pop_via: true,
                        max_forwards: MaxForwardsEdit::Keep,
                        ..Edits::default()
                    };
                    if let Ok(n) = sip::edit(msg, &edits, &mut self.scratch) {
                        txn.best = Some((code, self.scratch.get(..n).unwrap_or_default().into()));
                    }
                }
                if (600..700).contains(&code) && invite {
                    for j in 0..txn.forks.len() {
                        if j != i {
                            self.cancel_fork(now, slot, txn, j, out);
                        }
                    }
                }
                self.dispatched_final(now, slot, txn, i, code, Some(msg), out);
            }
        }
    }

    /// Forwards `msg` upstream with our Via removed; returns the bytes sent.
    pub(super) fn forward_up(
        &mut self,
        now: Instant,
        msg: &Message<'_>,
        txn: &mut Txn,
        out: &mut Outbox,
    ) -> Option<Box<[u8]>> {
        if let Server::Local(token) | Server::Probe(token) = txn.server {
            // Our own request: its final status is for the local service
            // (or the dispatcher).
            if let Some(code) = msg.status().filter(|&c| c >= 200) {
                let probe = matches!(txn.server, Server::Probe(_));
                self.outcomes.push((probe, token, code));
            }
            return None;
        }
        if only_our_via(msg) {
            // §16.7 step 3: no Via left once ours is gone: it was for us.
            self.counters.dropped_malformed += 1;
            return None;
        }
        let edits = Edits {
            pop_via: true,
            max_forwards: MaxForwardsEdit::Keep,
            ..Edits::default()
        };
        let n = sip::edit(msg, &edits, &mut self.scratch).ok()?;
        let bytes: Box<[u8]> = self.scratch.get(..n).unwrap_or_default().into();
        self.send(out, txn.reply_to, &bytes);
        self.answered(now, txn);
        self.counters.responses_forwarded += 1;
        Some(bytes)
    }

    /// When every fork is final and nothing was sent up yet: send the best (§16.7 step 6).
    pub(super) fn finish(&mut self, now: Instant, slot: u32, out: &mut Outbox) {
        let Some(mut txn) = self.take(slot) else {
            return;
        };
        let all_final = txn.forks.iter().all(|f| f.final_code.is_some());
        if !txn.final_sent && all_final && !txn.cancelled && self.hooks.is_some() {
            // The hooks may retry elsewhere.
            let status = txn.best.as_ref().map_or(408, |b| b.0);
            self.targets.clear();
            self.target_dests.clear();
            if let (Some(h), Some(c)) = (self.hooks.as_mut(), txn.ctx.as_mut()) {
                h.on_failure(status, c.as_mut(), &mut self.targets);
            }
            if self.fork_targets(now, slot, &mut txn, None, out) {
                self.put(slot, txn);
                return;
            }
        }
        if !txn.final_sent && all_final {
            let nobody = txn
                .dispatch
                .and_then(|(set, _)| self.group_nobody_of(set))
                .filter(|_| !txn.cancelled);
            let (code, local) = match &txn.best {
                // A hunt group nobody took: its own answer.
                _ if nobody.is_some() => (nobody.unwrap_or(486), true),
                Some((503, _)) => (500, true),
                Some((c, _)) => (*c, false),
                None if txn.cancelled => (487, true),
                None => (408, true),
            };
            let bytes = if let Server::Local(token) | Server::Probe(token) = txn.server {
                let probe = matches!(txn.server, Server::Probe(_));
                self.outcomes.push((probe, token, code));
                None
            } else if local {
                self.local_final(&txn, code)
            } else {
                txn.best.take().map(|(_, b)| b)
            };
            if let Some(b) = bytes {
                self.send(out, txn.reply_to, &b);
                self.answered(now, &mut txn);
                if local {
                    self.counters.count_local_response(code);
                } else {
                    self.counters.responses_forwarded += 1;
                }
                txn.last_response = Some(b);
            }
            txn.final_sent = true;
            txn.request = None;
            txn.best = None;
            let arm = txn.server.on_send(now, code);
            self.arm(slot, txn.gen, TimerTarget::Server, arm);
        }
        self.put(slot, txn);
        self.maybe_free(slot);
    }

    /// A final response of our own to the transaction's request.
    pub(super) fn local_final(&mut self, txn: &Txn, code: u16) -> Option<Box<[u8]>> {
        let req = txn.request.as_deref()?;
        let mut idx = self.index2.take()?;
        let reason = match code {
            408 => "Request Timeout",
            487 => "Request Terminated",
            480 => "Temporarily Unavailable",
            486 => "Busy Here",
            500 => "Server Internal Error",
            503 => "Service Unavailable",
            513 => "Message Too Large",
            _ => "Error",
        };
        // 503 here: the store could not make the change durable (a full
        // disk, Redis unreachable); the UA may try again later.
        let extra: &[u8] = if code == 503 {
            b"Retry-After: 5\r\n"
        } else {
            b""
        };
        let built = match sip::parse(req, &mut idx) {
            Ok(m) => {
                let tag = local_tag(&self.id, &m);
                let spec = ResponseSpec {
                    to_tag: tag.as_bytes().get(branch::PREFIX.len()..),
                    received: Some(Received {
                        ip: txn.src.remote.ip(),
                        port: txn.src.remote.port(),
                    }),
                    extra,
                    ..ResponseSpec::new(code, reason)
                };
                sip::response(&m, &spec, &mut self.scratch).ok()
            }
            Err(_) => None,
        };
        self.index2 = Some(idx);
        built.map(|n| self.scratch.get(..n).unwrap_or_default().into())
    }
}

/// True when `msg` has a single Via (ours): nothing to forward it to.
fn only_our_via(msg: &Message<'_>) -> bool {
    msg.values(HeaderName::Via).nth(1).is_none()
}
