//! Requests through the stateful proxy, phase by phase (RFC 3261 §16), in
//! the order a request meets them — see [`Stateful::on_request`]; and the
//! requests that belong to a transaction already: retransmissions (§17.2),
//! ACK and CANCEL (§16.10).

use super::*;

/// What the checks found, for the phases after them.
#[derive(Clone, Copy)]
struct Checked<'a> {
    /// The top Via.
    via: Via<'a>,
    /// The Request-URI.
    uri: sip::Uri<'a>,
    /// The essentials, decoded once here for every later phase.
    ess: Essentials<'a>,
    /// The AoR key of the To, for a request to a local service.
    aor: Option<AorKey>,
    /// The server transaction key.
    key: u64,
    /// In-dialog (To has a tag).
    to_tag: bool,
    /// Whose registrar serves it: a REGISTER for a served domain with no
    /// Route left goes to its AoR's owner; anything else to nobody.
    owner: Owner,
}

/// What every fork of one request shares (see [`Stateful::fork_plan`]).
pub(super) struct ForkPlan {
    invite: bool,
    record_route: bool,
    ingress: Option<crate::proxy::LocalSocket>,
    loop_hash: u64,
    received: Option<Received>,
    to_tag: bool,
}

impl<L: Location, S: LocalService> Stateful<L, S> {
    /// A new request, through the phases in order (RFC 3261 §16), each of
    /// which may answer it and stop it:
    ///
    /// ```text
    ///  check      §16.3: essentials, ACK/CANCEL/retransmission dispatch, OPTIONS to us,
    ///             Max-Forwards (483), loop (482), Proxy-Require (420)
    ///  admit      overload (503 + Retry-After); the flood limit ran before parsing
    ///  authorize  policy (403) and digest authentication (401/407)
    ///  serve      local services: the registrar (here, or handed to the AoR's owner shard)
    ///  route      targets (§16.5): flow token, Route, location, Request-URI, upstream
    ///  forward    server transaction, a client transaction per target (§16.6)
    /// ```
    pub(super) fn on_request(
        &mut self,
        now: Instant,
        msg: &Message<'_>,
        src: Peer,
        out: &mut Outbox,
    ) {
        self.dispatched = None;
        self.target_dests.clear();
        self.pending_ctx = None;
        let Some(req) = self.check(now, msg, src, out) else {
            return;
        };
        if msg.method() == Method::Bye && !self.dispatcher.is_empty() {
            self.bye_seen(msg);
        }
        if msg.method() == Method::Bye {
            if let Some(h) = self.hooks.as_mut() {
                h.on_dialog_end(msg.call_id());
            }
        }
        if !self.admit(now, msg, &req, src, out) {
            return;
        }
        let Some(authenticated) = self.authorize(now, msg, &req, src, out) else {
            return;
        };
        if self.serve(now, msg, &req, src, out) {
            return;
        }
        if let Some(h) = self.hooks.as_mut() {
            let mut ctx = h.new_ctx();
            let r = crate::proxy::hooks::Request {
                msg,
                source: src.remote,
                authenticated,
            };
            if let crate::proxy::hooks::Decision::Answer(code, reason) =
                h.on_request(&r, ctx.as_mut())
            {
                self.reply(msg, src, code, reason, b"", out);
                return;
            }
            self.pending_ctx = Some(ctx);
        }
        let Some(routing) = self.route(now, msg, &req, authenticated, src, out) else {
            return;
        };
        self.forward(now, msg, &req, &routing, src, out);
    }

    /// §16.3 request validation. `None` when the request was answered or
    /// dispatched (ACK, CANCEL, a retransmission of a live transaction).
    fn check<'a>(
        &mut self,
        now: Instant,
        msg: &Message<'a>,
        src: Peer,
        out: &mut Outbox,
    ) -> Option<Checked<'a>> {
        let ess = match msg.essentials() {
            Ok(e) => e,
            Err(e) => {
                self.counters.parse_errors += 1;
                self.reply(msg, src, e.status(), e.reason(), b"", out);
                return None;
            }
        };
        let via = ess.top_via;
        match msg.method() {
            Method::Ack => {
                self.on_ack(now, msg, &via, src, out);
                return None;
            }
            Method::Cancel => {
                self.on_cancel(now, msg, &via, src, out);
                return None;
            }
            _ => {}
        }
        let key = server_key(self.id.secret, msg, &via, KeyMethod::of(msg.method()));
        if let Some(slot) = self.txns.find(key) {
            self.on_retransmission(slot, out);
            return None;
        }
        let uri = ess.uri?;

        // §16.3 request validation, and OPTIONS to us (§11).
        let has_route = msg.values(HeaderName::Route).next().is_some();
        if msg.method() == Method::Options
            && uri.user.is_none()
            && self.id.is_us(&uri)
            && !has_route
        {
            self.reply(msg, src, 200, "OK", OPTIONS_EXTRA, out);
            return None;
        }
        if ess.max_forwards == Some(0) {
            self.counters.too_many_hops += 1;
            self.reply(msg, src, 483, "Too Many Hops", b"", out);
            return None;
        }
        if branch::is_loop(&self.id, msg) {
            self.counters.loops += 1;
            self.reply(msg, src, 482, "Loop Detected", b"", out);
            return None;
        }
        if let Some(pr) = msg.header(HeaderName::ProxyRequire) {
            let mut extra = [0u8; 512];
            let mut w = sip::Writer::new(&mut extra);
            let ok = w.put(b"Unsupported: ").is_ok() && w.put(pr).is_ok() && w.put(b"\r\n").is_ok();
            let n = if ok { w.len() } else { 0 };
            self.reply(
                msg,
                src,
                420,
                "Bad Extension",
                extra.get(..n).unwrap_or_default(),
                out,
            );
            return None;
        }
        // A local service's request: the AoR of its To, computed once for
        // the owner and the service.
        let local = self.local.serves(msg.method()) && self.is_for_local(msg, &uri, &ess.to);
        let aor = local
            .then(|| AorKey::from_uri(&ess.to.uri().ok()?).ok())
            .flatten();
        Some(Checked {
            via,
            uri,
            ess,
            aor,
            key,
            to_tag: ess.to.tag().is_some(),
            owner: if local {
                self.local.owner(msg, &ess, aor.as_ref())
            } else {
                Owner::Nobody
            },
        })
    }

    /// Admission of new work: overload (503 + Retry-After). False when refused.
    fn admit(
        &mut self,
        now: Instant,
        msg: &Message<'_>,
        req: &Checked<'_>,
        src: Peer,
        out: &mut Outbox,
    ) -> bool {
        let to_tag = req.to_tag;
        // New work: overload admission, then (below) policy and authentication.
        if let Some(o) = &mut self.guard.overload {
            if let Admission::Reject {
                retry_after,
                reason,
            } = o.admit(now, msg.method(), to_tag, src.remote.ip())
            {
                self.counters.shed(reason);
                let mut extra = [0u8; 40];
                let mut w = sip::Writer::new(&mut extra);
                let ok = w.put(b"Retry-After: ").is_ok()
                    && w.put_u64(u64::from(retry_after)).is_ok()
                    && w.put(b"\r\n").is_ok();
                let n = if ok { w.len() } else { 0 };
                let extra = extra.get(..n).unwrap_or_default();
                self.reply(msg, src, 503, "Service Unavailable", extra, out);
                return false;
            }
        }
        true
    }

    /// Policy and authentication. `Some(authenticated)` to go on. A REGISTER
    /// whose AoR another shard owns is authenticated there (its nonces, its
    /// throttles), so it passes here unauthenticated.
    fn authorize<'a>(
        &mut self,
        now: Instant,
        msg: &Message<'a>,
        req: &Checked<'a>,
        src: Peer,
        out: &mut Outbox,
    ) -> Option<bool> {
        if matches!(req.owner, Owner::Shard(_)) {
            return Some(false);
        }
        let uri_is_us = self.id.is_local_addr(&req.uri.host, req.uri.port);
        self.gate(now, msg, &req.ess, src, uri_is_us, out)
    }

    /// Local services: a REGISTER for a served domain goes to the registrar
    /// of this shard, or to the shard that owns its AoR. True when served.
    fn serve(
        &mut self,
        now: Instant,
        msg: &Message<'_>,
        req: &Checked<'_>,
        src: Peer,
        out: &mut Outbox,
    ) -> bool {
        match req.owner {
            Owner::Here => {
                self.local_here(
                    now,
                    msg,
                    &req.ess,
                    req.aor.as_ref(),
                    req.key,
                    src,
                    false,
                    out,
                );
                true
            }
            Owner::Shard(to) => {
                let m = MeshMsg::Message {
                    bytes: msg.as_bytes().into(),
                    src,
                };
                self.hand_over(to, m, msg, src, out);
                true
            }
            Owner::Nobody => false,
        }
    }

    /// The targets of the request (§16.5) into `self.targets`, and the
    /// Route decisions. `None` when answered (400, 404, 480).
    fn route<'a>(
        &mut self,
        now: Instant,
        msg: &Message<'a>,
        req: &Checked<'a>,
        authenticated: bool,
        src: Peer,
        out: &mut Outbox,
    ) -> Option<route::Routing<'a>> {
        let uri = req.uri;
        // Targets (§16.5).
        let Ok(routing) = route::routing(&self.id, msg) else {
            self.reply(msg, src, 400, "Bad Request (Malformed Route)", b"", out);
            return None;
        };
        // After a strict-route fix-up the Request-URI is the one the Route set carried.
        let uri = match routing.request_uri.map(sip::Uri::parse) {
            Some(Ok(u)) => u,
            Some(Err(_)) | None => uri,
        };
        self.targets.clear();
        if let (Some(h), Some(ctx)) = (self.hooks.as_mut(), self.pending_ctx.as_mut()) {
            let r = crate::proxy::hooks::Request {
                msg,
                source: src.remote,
                authenticated,
            };
            if h.choose_targets(&r, ctx.as_mut(), &mut self.targets) && !self.targets.is_empty() {
                return Some(routing);
            }
            self.targets.clear();
        }
        // RFC 5626 §5.3: a flow token of ours in the Route set sends the
        // request down that flow, unless it came from there.
        let token = routing
            .flows
            .iter()
            .find(|(f, _)| !f.is_none() && *f != src.flow)
            .copied();
        if let Some((flow, transport)) = token {
            let dest = route::uri_addr(&uri).unwrap_or(UNSPECIFIED);
            self.targets
                .push_over(b"", b"", Some(dest), 1000, transport, None, flow);
        } else if let Some(r) = &routing.next_route {
            match route::uri_addr(r) {
                Some(d) => self.targets.push_over(
                    b"",
                    b"",
                    Some(d),
                    1000,
                    route::uri_transport(r),
                    None,
                    FlowId::NONE,
                ),
                None if self.cfg.upstream.is_some() => self.targets.push_over(
                    b"",
                    b"",
                    self.cfg.upstream,
                    1000,
                    self.cfg.upstream_transport,
                    None,
                    FlowId::NONE,
                ),
                None => {
                    self.counters.dropped_unroutable += 1;
                    self.reply(
                        msg,
                        src,
                        480,
                        "Temporarily Unavailable (No Route)",
                        b"",
                        out,
                    );
                    return None;
                }
            }
        } else if let Some(set) = (!req.to_tag && !self.dispatcher.is_empty())
            .then(|| self.dispatcher.set_for_domain(uri.host_bytes))
            .flatten()
        {
            // A dispatcher set's domain: one of its destinations.
            let key = self.dispatch_key(set, msg, &uri);
            let chosen = self.dispatcher.select(set, key, &[]);
            // The address and transport only: no copy of the URI per call.
            let Some((d, (addr, transport))) = chosen.and_then(|d| {
                let c = self.dispatcher.dest(set, d)?;
                Some((d, (c.addr, c.transport)))
            }) else {
                self.counters.dispatcher_unavailable += 1;
                self.reply(
                    msg,
                    src,
                    503,
                    "Service Unavailable (No Destination)",
                    b"Retry-After: 5\r\n",
                    out,
                );
                return None;
            };
            self.targets
                .push_over(b"", b"", Some(addr), 1000, transport, None, FlowId::NONE);
            self.dispatched = Some((set, d, key));
            self.dispatch_moves = true;
        } else if self.id.is_served_uri(&uri) && uri.user.is_some() {
            let mut aor = [0u8; 512];
            let Some(aor) = aor_key(&uri, &mut aor) else {
                self.reply(msg, src, 404, "Not Found", b"", out);
                return None;
            };
            // A call to a hunt group, or to one of its members: handled on
            // the group's owner shard, where its members' loads are counted.
            let grouped = (!req.to_tag && msg.method() == Method::Invite)
                .then(|| {
                    self.dispatcher
                        .group_for(aor)
                        .map(|g| (g, None))
                        .or_else(|| self.dispatcher.member_of(aor).map(|(g, m)| (g, Some(m))))
                })
                .flatten();
            if let Some((group, member)) = grouped {
                if self.hand_to_group_owner(group, msg, src, out) {
                    return None;
                }
                match member {
                    None => {
                        return self.route_group(group, msg, src, out).then_some(routing);
                    }
                    Some(m) => {
                        // A direct call: counted on the member, never moved on.
                        self.dispatched = Some((group, m, 0));
                        self.dispatch_moves = false;
                    }
                }
            }
            match self.location.lookup(aor, self.wall_us, &mut self.targets) {
                // With authentication on, an unauthenticated caller learns
                // nothing about which users exist: offline and unknown look alike.
                Found::NoBindings | Found::Unknown
                    if self.guard.auth.is_some() && !authenticated =>
                {
                    self.reply(msg, src, 404, "Not Found", b"", out);
                    return None;
                }
                Found::NoBindings | Found::Unknown
                    if msg.method() == Method::Message && !req.to_tag =>
                {
                    // A local service may keep it for the user (RFC 3428
                    // store and forward, what Kamailio's msilo does).
                    match self.local.offline_owner(msg, aor) {
                        Some(Owner::Here) => {
                            self.local_here(now, msg, &req.ess, None, req.key, src, true, out)
                        }
                        Some(Owner::Shard(to)) => {
                            let m = MeshMsg::Local {
                                bytes: msg.as_bytes().into(),
                                src,
                            };
                            self.hand_over(to, m, msg, src, out);
                        }
                        Some(Owner::Nobody) | None => {
                            self.reply(msg, src, 480, "Temporarily Unavailable", b"", out)
                        }
                    }
                    return None;
                }
                Found::Unknown => {
                    self.reply(msg, src, 404, "Not Found", b"", out);
                    return None;
                }
                Found::NoBindings => {
                    self.reply(msg, src, 480, "Temporarily Unavailable", b"", out);
                    return None;
                }
                Found::Contacts => {}
            }
        } else {
            let (dest, transport) = if self.id.is_us(&uri) || self.id.is_served_uri(&uri) {
                (self.cfg.upstream, self.cfg.upstream_transport)
            } else {
                match route::uri_addr(&uri) {
                    Some(a) => (Some(a), route::uri_transport(&uri)),
                    None => (self.cfg.upstream, self.cfg.upstream_transport),
                }
            };
            match dest {
                Some(d) => {
                    self.targets
                        .push_over(b"", b"", Some(d), 1000, transport, None, FlowId::NONE)
                }
                None => {
                    self.counters.dropped_unroutable += 1;
                    let (code, reason) = if self.id.is_us(&uri) {
                        (404, "Not Found")
                    } else {
                        (480, "Temporarily Unavailable (No Route)")
                    };
                    self.reply(msg, src, code, reason, b"", out);
                    return None;
                }
            }
        }
        if self.targets.is_empty() {
            self.reply(msg, src, 480, "Temporarily Unavailable", b"", out);
            return None;
        }
        Some(routing)
    }

    /// A new response context: the server transaction (INVITE: 100 Trying)
    /// and one client transaction per target (§16.6), or 503 when the table
    /// is full.
    fn forward(
        &mut self,
        now: Instant,
        msg: &Message<'_>,
        req: &Checked<'_>,
        routing: &route::Routing<'_>,
        src: Peer,
        out: &mut Outbox,
    ) {
        let (via, key, to_tag) = (req.via, req.key, req.to_tag);
        let dispatched = self.dispatched.take();
        let target_dests = core::mem::take(&mut self.target_dests);
        let moves = self.dispatch_moves;
        if self.txns.live() >= self.cfg.max_transactions {
            self.counters
                .shed(crate::policy::overload::ShedReason::MaxTransactions);
            let mut extra = [0u8; 40];
            let mut w = sip::Writer::new(&mut extra);
            let ok = w.put(b"Retry-After: ").is_ok()
                && w.put_u64(u64::from(self.cfg.retry_after)).is_ok()
                && w.put(b"\r\n").is_ok();
            let n = if ok { w.len() } else { 0 };
            self.reply(
                msg,
                src,
                503,
                "Service Unavailable",
                extra.get(..n).unwrap_or_default(),
                out,
            );
            return;
        }

        // A new response context.
        let invite = msg.method() == Method::Invite;
        let reply_to = route::reply_peer(&via, &src);
        let (slot, gen) = self.alloc();
        let mut txn = Txn {
            gen,
            key,
            method: msg.method(),
            server: if invite {
                Server::Invite(InviteServer::start(self.cfg.timers, false))
            } else {
                Server::NonInvite(NonInviteServer::start(self.cfg.timers, false))
            },
            request: Some(msg.as_bytes().into()),
            src,
            reply_to,
            last_response: None,
            forks: Vec::with_capacity(self.targets.len().min(self.cfg.max_forks)),
            best: None,
            final_sent: false,
            cancelled: false,
            started: Some(now),
            dispatch: None,
            ctx: self.pending_ctx.take(),
        };
        self.txns.index(key, slot);
        self.counters.transactions += 1;
        if invite {
            let spec = ResponseSpec {
                received: Some(Received {
                    ip: src.remote.ip(),
                    port: src.remote.port(),
                }),
                ..ResponseSpec::new(100, "Trying")
            };
            if let Ok(n) = sip::response(msg, &spec, &mut self.scratch) {
                let bytes: Box<[u8]> = self.scratch.get(..n).unwrap_or_default().into();
                self.send(out, reply_to, &bytes);
                self.counters.count_local_class(100);
                txn.last_response = Some(bytes);
            }
        }
        let plan = self.fork_plan(msg, &via, src, to_tag);
        let n_targets = self.targets.len().min(self.cfg.max_forks);
        let mut too_large = false;
        for i in 0..n_targets {
            let Some(t) = self.targets.as_slice().get(i).cloned() else {
                break;
            };
            match self.send_fork(
                now,
                msg,
                routing,
                src,
                &plan,
                (slot, gen),
                txn.forks.len(),
                &t,
                out,
            ) {
                Ok(mut fork) => {
                    if let Some((set, dest, key)) = dispatched {
                        let dest = target_dests.get(i).copied().unwrap_or(dest);
                        fork.dest = Some((set, dest));
                        if moves {
                            self.arm_no_answer(now, set, slot, gen, txn.forks.len());
                            txn.dispatch = Some((set, key));
                        }
                        if invite {
                            self.dispatcher.call_started(set, dest);
                            fork.loaded = true;
                        }
                    }
                    txn.forks.push(fork);
                }
                Err(large) => too_large |= large,
            }
        }
        if txn.forks.is_empty() {
            // Every target failed to be written: answer for them.
            txn.best = if too_large {
                self.local_final(&txn, 513).map(|b| (513, b))
            } else {
                None
            };
            self.put(slot, txn);
            self.finish(now, slot, out);
            return;
        }
        self.put(slot, txn);
    }

    /// What every fork of `msg` shares: computed once per request.
    pub(super) fn fork_plan(
        &self,
        msg: &Message<'_>,
        via: &Via<'_>,
        src: Peer,
        to_tag: bool,
    ) -> ForkPlan {
        ForkPlan {
            invite: msg.method() == Method::Invite,
            record_route: self.cfg.record_route
                && !to_tag
                && matches!(
                    msg.method(),
                    Method::Invite | Method::Subscribe | Method::Refer
                ),
            ingress: self.id.public_for(src.remote.ip(), src.local).cloned(),
            loop_hash: branch::loop_hash(self.id.secret, msg, via),
            received: emit::needs_received(via, src.remote.ip()).then_some(Received {
                ip: src.remote.ip(),
                port: src.remote.port(),
            }),
            to_tag,
        }
    }

    /// Forwards `msg` to target `t` as fork `i` of the transaction at
    /// (slot, gen) and starts its client transaction (§16.6). `Err(true)`:
    /// too large for the target's transport (513); `Err(false)`: not sent.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn send_fork(
        &mut self,
        now: Instant,
        msg: &Message<'_>,
        routing: &route::Routing<'_>,
        src: Peer,
        plan: &ForkPlan,
        (slot, gen): (u32, u32),
        i: usize,
        t: &Target,
        out: &mut Outbox,
    ) -> Result<Fork, bool> {
        let (invite, record_route, to_tag) = (plan.invite, plan.record_route, plan.to_tag);
        let (ingress, loop_hash, received) = (&plan.ingress, plan.loop_hash, plan.received);
        if i > usize::from(u8::MAX) {
            return Err(false);
        }
        let Some(dest) = t.dest.or(self.cfg.upstream) else {
            return Err(false);
        };
        // §18.1.1 (with `[proxy] large_requests = "tcp"`): a request
        // larger than 1300 bytes (path MTU unknown) goes over a
        // congestion-controlled transport: TCP where we have a TCP
        // listener, else the branch fails with 513. Off by default: a UA
        // behind NAT registered over UDP is rarely reachable over TCP.
        let mut force_tcp = false;
        let (to, bytes) = loop {
            let mut transport = if force_tcp {
                Transport::Tcp
            } else {
                t.socket.map_or(t.transport, |s| self.id.transport_of(s))
            };
            if !self.id.serves(transport) {
                // No listener of that transport to name in our Via: the
                // best we can do is UDP (counted, as a carrier wants to see it).
                self.counters.transport_fallbacks += 1;
                transport = Transport::Udp;
            }
            let egress = self.id.egress(transport, dest, src.local);
            let Some(egress_sock) = self.id.socket(egress).cloned() else {
                return Err(false);
            };
            let to = Peer {
                transport,
                remote: dest,
                local: egress,
                flow: t.flow,
            };
            // RFC 5658: where the transport changes, or a flow must be
            // named (RFC 5626 §5.3), Record-Route twice: the first value
            // faces the next hop, the second the previous one.
            let mut rr1 = [0u8; 256];
            let mut rr2 = [0u8; 256];
            let (rr, rr_in) = match &ingress {
                Some(ing) if record_route => {
                    if transport == Transport::Udp && src.transport == Transport::Udp {
                        (Some(ing.rr_uri()), None)
                    } else {
                        let out_sock = self
                            .id
                            .public_of(transport, dest.ip())
                            .unwrap_or(&egress_sock);
                        let a = flow::rr_uri(self.id.secret, out_sock, to.flow, &mut rr1);
                        let b = flow::rr_uri(self.id.secret, ing, src.flow, &mut rr2);
                        (Some(a), Some(b))
                    }
                }
                _ => (None, None),
            };
            let br = Branch::transaction(
                TxnRef {
                    shard: self.id.shard_id,
                    slot,
                    gen,
                    fork: i as u8,
                },
                loop_hash,
            );
            let mut route_line = [0u8; 1024];
            let route_len = if t.route.is_empty() {
                0
            } else {
                let mut w = sip::Writer::new(&mut route_line);
                let ok =
                    w.put(b"Route: ").is_ok() && w.put(&t.route).is_ok() && w.put(b"\r\n").is_ok();
                if ok {
                    w.len()
                } else {
                    0
                }
            };
            let mut strict_line = [0u8; 1024];
            let strict = routing
                .append_route
                .map_or(&b""[..], |u| route::route_line(u, &mut strict_line));
            let append_len = route_len + strict.len();
            if let Some(d) = route_line.get_mut(route_len..append_len) {
                d.copy_from_slice(strict);
            }
            let edits = Edits {
                request_uri: if t.uri.is_empty() {
                    routing.request_uri
                } else {
                    Some(t.uri.as_slice())
                },
                push_via: Some(NewVia {
                    transport: transport.via_token(),
                    host: egress_sock.via_host(),
                    port: egress_sock.advertised.port(),
                    branch: br.as_bytes(),
                    rport: true,
                }),
                received,
                max_forwards: MaxForwardsEdit::Decrement,
                record_route: rr,
                record_route2: rr_in,
                pop_route: routing.pop_route,
                pop_second_route: routing.pop_second_route,
                pop_last_route: routing.pop_last_route,
                append: route_line.get(..append_len).unwrap_or_default(),
                ..Edits::default()
            };
            let Ok(n) = sip::edit(msg, &edits, &mut self.scratch) else {
                self.counters.dropped_overflow += 1;
                return Err(false);
            };
            // A MESSAGE outside a dialog always follows the rule (RFC
            // 3428 §6: over 1300 bytes, a congestion-controlled
            // transport), TCP unless the contact insists on UDP.
            let message = msg.method() == Method::Message && !to_tag;
            if (self.cfg.large_requests_over_tcp || message)
                && to.transport == Transport::Udp
                && to.flow.is_none()
                && n > UDP_MAX_REQUEST
            {
                let udp_only =
                    memchr::memmem::find(&t.uri.to_ascii_lowercase(), b";transport=udp").is_some();
                if !force_tcp && self.id.serves(Transport::Tcp) && !udp_only {
                    force_tcp = true;
                    self.counters.transport_upgrades += 1;
                    continue;
                }
                return Err(true);
            }
            let bytes: Box<[u8]> = self.scratch.get(..n).unwrap_or_default().into();
            break (to, bytes);
        };
        self.send(out, to, &bytes);
        self.counters.requests_forwarded += 1;
        let (client, arm) = if invite {
            let (c, a) = InviteClient::start(now, self.cfg.timers, false);
            (Client::Invite(c), a)
        } else {
            let (c, a) = NonInviteClient::start(now, self.cfg.timers, false);
            (Client::NonInvite(c), a)
        };
        self.arm(slot, gen, TimerTarget::Fork(i as u8), arm);
        // §16.6 step 11: Timer C runs from the moment an INVITE is
        // proxied, not from its first provisional response, or a branch
        // that answers only 100 Trying (no Timer B once Proceeding) would
        // hold its context forever.
        let timer_c = invite.then(|| self.arm_timer_c(now, slot, gen, i));
        Ok(Fork {
            client,
            bytes: Some(bytes),
            to,
            final_code: None,
            provisional: false,
            cancel_wanted: false,
            cancel: None,
            timer_c,
            dest: None,
            loaded: false,
            rang_out: false,
        })
    }

    /// Policy and authentication of a new request (`uri_is_us`: its
    /// Request-URI names one of our addresses). `Some(authenticated)` to go
    /// on; `None` when it was answered (403, 401/407) or dropped.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gate<'a>(
        &mut self,
        now: Instant,
        msg: &Message<'a>,
        ess: &Essentials<'a>,
        src: Peer,
        uri_is_us: bool,
        out: &mut Outbox,
    ) -> Option<bool> {
        let mut extra = [0u8; CHALLENGE_BUF];
        let g = gate(
            now,
            self.wall_us,
            &self.guard.policy,
            self.guard.auth.as_mut(),
            msg,
            ess,
            src.remote,
            src.transport,
            uri_is_us,
            &mut extra,
        );
        match g {
            Gate::Pass { user, .. } => Some(user.is_some()),
            Gate::Drop => {
                self.counters.auth_throttled += 1;
                None
            }
            Gate::Reply {
                status,
                reason,
                extra: n,
            } => {
                // The reason borrows the policy inside `self`: copy it to the stack.
                let mut rbuf = [0u8; 128];
                let len = reason.len().min(rbuf.len());
                if let (Some(d), Some(s)) = (rbuf.get_mut(..len), reason.as_bytes().get(..len)) {
                    d.copy_from_slice(s);
                }
                let reason = core::str::from_utf8(rbuf.get(..len).unwrap_or_default())
                    .unwrap_or("Forbidden");
                match status {
                    401 | 407 => self.counters.auth_challenges += 1,
                    _ => self.counters.policy_denied += 1,
                }
                self.reply(
                    msg,
                    src,
                    status,
                    reason,
                    extra.get(..n).unwrap_or_default(),
                    out,
                );
                None
            }
        }
    }

    pub(super) fn on_retransmission(&mut self, slot: u32, out: &mut Outbox) {
        let Some(txn) = self.txns.get_mut(slot) else {
            return;
        };
        self.counters.retransmissions_absorbed += 1;
        let action = match &mut txn.server {
            Server::Invite(s) => s.on_request(),
            Server::NonInvite(s) => s.on_request(),
            Server::Local(_) | Server::Probe(_) => Action::None,
        };
        if action == Action::RetransmitResponse {
            if let Some(r) = txn.last_response.clone() {
                let to = txn.reply_to;
                self.send(out, to, &r);
            }
        }
    }

    pub(super) fn on_ack(
        &mut self,
        now: Instant,
        msg: &Message<'_>,
        via: &Via<'_>,
        src: Peer,
        out: &mut Outbox,
    ) {
        let key = server_key(self.id.secret, msg, via, KeyMethod::Invite);
        if let Some(slot) = self.txns.find(key) {
            let gen = self.txns.generation(slot).unwrap_or(0);
            let Some(txn) = self.txns.get_mut(slot) else {
                return;
            };
            if let Server::Invite(s) = &mut txn.server {
                let (action, arm) = s.on_ack(now);
                self.arm(slot, gen, TimerTarget::Server, arm);
                if action != Action::PassRequest {
                    self.counters.acks_absorbed += 1;
                    self.maybe_free(slot);
                    return;
                }
            }
        }
        // The ACK of a final response we sent without a transaction (a 401,
        // 407, 403, 404, 480, 483…) carries our local To tag: absorb it.
        let ours = msg.to().ok().and_then(|t| t.tag()).is_some_and(|t| {
            local_tag(&self.id, msg)
                .as_bytes()
                .get(branch::PREFIX.len()..)
                == Some(t)
        });
        if ours {
            self.counters.acks_absorbed += 1;
            return;
        }
        // The ACK of a 2xx is a transaction of its own: relay it statelessly.
        stateless::relay_request(&self.id, &self.relay, &mut self.counters, msg, src, out);
    }

    pub(super) fn on_cancel(
        &mut self,
        now: Instant,
        msg: &Message<'_>,
        via: &Via<'_>,
        src: Peer,
        out: &mut Outbox,
    ) {
        let key = server_key(self.id.secret, msg, via, KeyMethod::Invite);
        let Some(slot) = self.txns.find(key) else {
            // §16.10: no context: forward the CANCEL statelessly.
            stateless::relay_request(&self.id, &self.relay, &mut self.counters, msg, src, out);
            return;
        };
        self.reply(msg, src, 200, "OK", b"", out);
        self.counters.cancels += 1;
        let Some(mut txn) = self.take(slot) else {
            return;
        };
        if !txn.final_sent && txn.method == Method::Invite {
            txn.cancelled = true;
            for i in 0..txn.forks.len() {
                self.cancel_fork(now, slot, &mut txn, i, out);
            }
        }
        self.put(slot, txn);
        self.maybe_free(slot);
    }

    /// Sends a CANCEL down fork `i` now if it has had a provisional response,
    /// or notes that one is wanted when it does (§9.1, §16.10).
    pub(super) fn cancel_fork(
        &mut self,
        now: Instant,
        slot: u32,
        txn: &mut Txn,
        i: usize,
        out: &mut Outbox,
    ) {
        let gen = txn.gen;
        let Some(fork) = txn.forks.get_mut(i) else {
            return;
        };
        if fork.final_code.is_some()
            || fork.cancel.is_some()
            || !matches!(fork.client, Client::Invite(_))
        {
            return;
        }
        if !fork.provisional {
            fork.cancel_wanted = true;
            return;
        }
        let Some(req) = fork.bytes.as_deref() else {
            return;
        };
        let Some(mut idx) = self.index2.take() else {
            return;
        };
        let built = match sip::parse(req, &mut idx) {
            Ok(m) => {
                crate::proxy::build::ack_or_cancel(&m, Method::Cancel, None, &mut self.scratch).ok()
            }
            Err(_) => None,
        };
        self.index2 = Some(idx);
        let Some(n) = built else { return };
        let bytes: Box<[u8]> = self.scratch.get(..n).unwrap_or_default().into();
        let to = fork.to;
        let (c, arm) = NonInviteClient::start(now, self.cfg.timers, false);
        fork.cancel = Some(Box::new((c, bytes.clone())));
        fork.cancel_wanted = false;
        // §9.1: no final response to the INVITE within 64*T1 of its CANCEL
        // ends the branch (as a 408), even when the CANCEL itself was
        // answered: the Timer C check finds this deadline (found by the
        // proxy fuzzer: a CANCEL answered 408 and no 487 left the call
        // counted forever).
        // A check of it goes on the wheel: the one that led here may have
        // been Timer C's own, which fired (found by the proxy fuzzer: a
        // CANCEL sent by Timer C, answered, and no 487 left the transaction
        // forever).
        let deadline = now + self.cfg.timers.t1x64();
        let recheck = fork.final_code.is_none() && fork.timer_c.is_some();
        if recheck {
            fork.timer_c = Some(deadline);
        }
        self.send(out, to, &bytes);
        if recheck {
            self.check_timer_c(now, deadline, slot, gen, i);
        }
        self.arm(slot, gen, TimerTarget::Cancel(i as u8), arm);
    }
}
