//! Requests routed by a dispatcher set ([`crate::routing::dispatcher`]):
//! the hash key, what a fork's final status tells the set (loads, health),
//! serial failover to the next destination, and the BYEs that end calls.
//!
//! ```text
//!  route phase: a set's domain ─► select ─► one target (fork.dest = (set, d); INVITE: load +1)
//!  fork final ─► 2xx: the call stays counted until its BYE (a dialog) · other: load −1
//!             └ 408 / 5xx (not cancelled, nothing final sent, attempts left)
//!                 ─► the set chooses again, none of the tried ─► a new fork (§16.6)
//!  BYE (either side) ─► the dialog's load −1 (on the shard that counts it: asked over the mesh)
//! ```

use super::*;

impl<L: Location, S: LocalService> Stateful<L, S> {
    /// Hands an INVITE for hunt group `group` (or one of its members) to the
    /// group's owner shard, where its members' loads are counted; false when
    /// this shard is the owner.
    pub(super) fn hand_to_group_owner(
        &mut self,
        group: u16,
        msg: &Message<'_>,
        src: Peer,
        out: &mut Outbox,
    ) -> bool {
        let owner = self
            .dispatcher
            .config(group)
            .and_then(|c| c.group.as_ref())
            .map_or(0, |g| {
                crate::hash::partition_of(g.aor.as_bytes(), self.shards)
            });
        if owner == self.id.shard_id {
            return false;
        }
        let m = MeshMsg::Message {
            bytes: msg.as_bytes().into(),
            src,
        };
        self.hand_over(owner, m, msg, src, out);
        true
    }

    /// Sends `m` (carrying request `msg`) to shard `to` over the mesh;
    /// `msg` gets 503 with Retry-After when the mesh queue is full.
    pub(super) fn hand_over(
        &mut self,
        to: u16,
        m: MeshMsg,
        msg: &Message<'_>,
        src: Peer,
        out: &mut Outbox,
    ) {
        if self.mesh_out.len() < MESH_OUT_MAX {
            self.mesh_out.push_back((usize::from(to), m));
            self.counters.handed_over += 1;
        } else {
            self.counters
                .shed(crate::policy::overload::ShedReason::MeshFull);
            self.reply(
                msg,
                src,
                503,
                "Service Unavailable",
                b"Retry-After: 1\r\n",
                out,
            );
        }
    }

    /// A presence record: a hunt-group member's publication changed.
    pub(super) fn observe_presence(&mut self, r: &Record) {
        use crate::presence::PublicationChange;
        if !self.dispatcher.has_members() {
            return;
        }
        match crate::presence::publication_change(&r.op) {
            Some(PublicationChange::Put { aor, etag, label }) => {
                self.dispatcher.member_presence(aor, etag, Some(label));
            }
            Some(PublicationChange::Gone { aor, etag }) => {
                self.dispatcher.member_presence(aor, etag, None);
            }
            None => {}
        }
    }

    /// Which members of hunt group `group` can be rung now: registered,
    /// and not busy, away or offline by their presence.
    fn registered_members(&mut self, group: u16) -> Vec<bool> {
        let Some(cfg) = self.dispatcher.config(group) else {
            return Vec::new();
        };
        let keys: Vec<String> = cfg
            .dests
            .iter()
            .map(|d| crate::routing::dispatcher::SetConfig::aor_key(&d.uri))
            .collect();
        let mut scratch = Targets::default();
        keys.iter()
            .enumerate()
            .map(|(i, k)| {
                scratch.clear();
                self.location
                    .lookup(k.as_bytes(), self.wall_us, &mut scratch)
                    == Found::Contacts
                    && u16::try_from(i).is_ok_and(|i| self.dispatcher.available(group, i))
            })
            .collect()
    }

    /// Pushes member `m`'s contacts into the targets, each noted as `m`'s.
    fn push_member(&mut self, group: u16, m: u16) -> usize {
        let Some(key) = self
            .dispatcher
            .dest(group, m)
            .map(|d| crate::routing::dispatcher::SetConfig::aor_key(&d.uri))
        else {
            return 0;
        };
        let before = self.targets.len();
        let _ = self
            .location
            .lookup(key.as_bytes(), self.wall_us, &mut self.targets);
        let added = self.targets.len() - before;
        self.target_dests.extend(core::iter::repeat_n(m, added));
        added
    }

    /// A call to hunt group `group`: the targets are the chosen member's
    /// contacts (every free member's, ring-all). False when it was answered
    /// (nobody free: the group's `nobody`).
    pub(super) fn route_group(
        &mut self,
        group: u16,
        msg: &Message<'_>,
        src: Peer,
        out: &mut Outbox,
    ) -> bool {
        use crate::routing::dispatcher::Algorithm;
        let registered = self.registered_members(group);
        let usable = |i: usize| registered.get(i).copied().unwrap_or(false);
        self.targets.clear();
        self.target_dests.clear();
        let ring_all = self
            .dispatcher
            .config(group)
            .is_some_and(|c| c.algorithm == Algorithm::All);
        let mut first = None;
        if ring_all {
            let mut tried = Vec::new();
            while let Some(m) = self.dispatcher.select_where(group, 0, &tried, usable) {
                tried.push(m);
                self.push_member(group, m);
                first.get_or_insert(m);
            }
        } else {
            let mut tried = Vec::new();
            // A member whose contacts vanished between the check and now: the next.
            while let Some(m) = self.dispatcher.select_where(group, 0, &tried, usable) {
                tried.push(m);
                if self.push_member(group, m) > 0 {
                    first = Some(m);
                    break;
                }
            }
        }
        match first {
            Some(m) if !self.targets.is_empty() => {
                self.dispatched = Some((group, m, 0));
                self.dispatch_moves = !ring_all;
                true
            }
            _ => {
                self.counters.dispatcher_unavailable += 1;
                let code = self.group_nobody(group);
                let reason = if code == 480 {
                    "Temporarily Unavailable"
                } else {
                    "Busy Here"
                };
                self.reply(msg, src, code, reason, b"", out);
                false
            }
        }
    }

    /// The answer of hunt group `set` when nobody takes the call; `None`
    /// when `set` is not a group.
    pub(super) fn group_nobody_of(&self, set: u16) -> Option<u16> {
        self.dispatcher
            .config(set)
            .and_then(|c| c.group.as_ref())
            .map(|g| g.nobody)
    }

    fn group_nobody(&self, set: u16) -> u16 {
        self.group_nobody_of(set).unwrap_or(486)
    }

    /// Arms fork `i`'s `fork_timeout` of set `set` (a hunt group: its ring_timeout).
    pub(super) fn arm_no_answer(&mut self, now: Instant, set: u16, slot: u32, gen: u32, i: usize) {
        let Some(t) = self
            .dispatcher
            .config(set)
            .map(|c| c.group.as_ref().map_or(c.fork_timeout, |g| g.ring_timeout))
        else {
            return;
        };
        if t == crate::time::Duration::ZERO {
            return;
        }
        let at = now + t;
        self.wheel.insert(
            at,
            TimerItem {
                slot,
                gen,
                target: TimerTarget::NoAnswer(i as u8),
                name: TimerName::B,
                at,
            },
        );
    }

    /// The value a set's `hash` algorithm hashes for `msg`.
    pub(super) fn dispatch_key(&self, set: u16, msg: &Message<'_>, uri: &sip::Uri<'_>) -> u64 {
        use crate::routing::dispatcher::{Algorithm, HashKey};
        let what: &[u8] = match self.dispatcher.config(set).map(|c| c.algorithm) {
            Some(Algorithm::Hash(HashKey::FromUser)) => msg
                .from()
                .ok()
                .and_then(|f| f.uri().ok())
                .and_then(|u| u.user)
                .unwrap_or_default(),
            Some(Algorithm::Hash(HashKey::RuriUser)) => uri.user.unwrap_or_default(),
            Some(Algorithm::Hash(HashKey::CallId)) => msg.call_id(),
            _ => return 0,
        };
        crate::hash::hash_bytes(0x0064_736b_6579, what)
    }

    /// The Call-ID hash a dialog is tracked under.
    fn call_hash(&self, call_id: &[u8]) -> u64 {
        crate::hash::hash_bytes(self.id.secret ^ 0x6469_616c, call_id)
    }

    /// A BYE: the call it ends no longer loads its destination. The shard
    /// that routed the INVITE counts it; when that is not this one, every
    /// other shard is told.
    pub(super) fn bye_seen(&mut self, msg: &Message<'_>) {
        let call = self.call_hash(msg.call_id());
        if self.dispatcher.dialog_ended(call) || self.shards <= 1 {
            return;
        }
        for to in 0..usize::from(self.shards) {
            if to != usize::from(self.id.shard_id) && self.mesh_out.len() < MESH_OUT_MAX {
                self.mesh_out.push_back((to, MeshMsg::DialogEnded(call)));
            }
        }
    }

    /// Fork `i` of a dispatched request reached its final status `code`
    /// (`msg`: the response, `None` for a timeout): its destination's load
    /// and health learn it, and a 408 or 5xx moves the request on to the
    /// next destination while attempts are left.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn dispatched_final(
        &mut self,
        now: Instant,
        slot: u32,
        txn: &mut Txn,
        i: usize,
        code: u16,
        msg: Option<&Message<'_>>,
        out: &mut Outbox,
    ) {
        if let (Some(h), Some(c)) = (self.hooks.as_mut(), txn.ctx.as_mut()) {
            h.on_response(code, c.as_mut());
        }
        let Some(f) = txn.forks.get_mut(i) else {
            return;
        };
        let Some((set, dest)) = f.dest else {
            return;
        };
        // A fork we cancelled (the caller's CANCEL, Timer C) ends; it did
        // not fail — unless a hunt group's ring_timeout cancelled it.
        let cancelled = (f.cancel.is_some() || f.cancel_wanted) && !f.rang_out;
        if core::mem::take(&mut f.loaded) {
            match msg {
                Some(m) if (200..300).contains(&code) => {
                    let call = self.call_hash(m.call_id());
                    self.dispatcher.call_answered(now, set, dest, call);
                }
                _ => self.dispatcher.call_failed(set, dest),
            }
        }
        if cancelled {
            return;
        }
        if self.dispatcher.is_group(set) {
            // Busy, unavailable, not answering: the next member (not after
            // a 2xx, nor a 6xx: declined everywhere).
            if (300..600).contains(&code) {
                self.failover(now, slot, txn, out);
            }
            return;
        }
        if code != 408 && !(500..600).contains(&code) {
            self.dispatcher.succeeded(set, dest);
            return;
        }
        let retry_after = msg.and_then(|m| {
            let v = m.header(HeaderName::RetryAfter)?;
            let digits = v.iter().take_while(|b| b.is_ascii_digit()).count();
            core::str::from_utf8(v.get(..digits)?).ok()?.parse().ok()
        });
        self.dispatcher.failed(now, set, dest, code, retry_after);
        self.failover(now, slot, txn, out);
    }

    /// Serial failover (the caller sees one final answer): the request
    /// goes to the set's next choice among the destinations not tried yet.
    fn failover(&mut self, now: Instant, slot: u32, txn: &mut Txn, out: &mut Outbox) {
        let Some((set, key)) = txn.dispatch else {
            return;
        };
        let answered = txn
            .forks
            .iter()
            .any(|f| f.final_code.is_none() || f.final_code.is_some_and(|c| c < 300));
        if txn.cancelled || txn.final_sent || answered {
            return;
        }
        let attempts = self.dispatcher.config(set).map_or(1, |c| c.attempts);
        let mut tried: Vec<u16> = txn
            .forks
            .iter()
            .filter_map(|f| f.dest.map(|d| d.1))
            .collect();
        tried.sort_unstable();
        tried.dedup();
        if tried.len() >= attempts as usize {
            return;
        }
        let Some(req) = txn.request.clone() else {
            return;
        };
        let group = self.dispatcher.is_group(set);
        self.targets.clear();
        self.target_dests.clear();
        if group {
            let registered = self.registered_members(set);
            let usable = |i: usize| registered.get(i).copied().unwrap_or(false);
            let mut skip = tried.clone();
            while let Some(m) = self.dispatcher.select_where(set, key, &skip, usable) {
                skip.push(m);
                if self.push_member(set, m) > 0 {
                    break;
                }
            }
        } else if let Some(d) = self.dispatcher.select(set, key, &tried) {
            if let Some(dest) = self.dispatcher.dest(set, d).cloned() {
                self.targets.push_over(
                    b"",
                    b"",
                    Some(dest.addr),
                    1000,
                    dest.transport,
                    None,
                    FlowId::NONE,
                );
                self.target_dests.push(d);
            }
        }
        drop(req);
        if self.fork_targets(now, slot, txn, Some(set), out) {
            self.dispatcher.failovers += 1;
            self.counters.dispatcher_failovers += 1;
        }
    }

    /// Sends the transaction's request to each of `self.targets` as new
    /// forks (`set`: dispatched, the destination of each in
    /// `target_dests`); true when one went. For failover and for a hook's
    /// retry elsewhere.
    pub(super) fn fork_targets(
        &mut self,
        now: Instant,
        slot: u32,
        txn: &mut Txn,
        set: Option<u16>,
        out: &mut Outbox,
    ) -> bool {
        let Some(req) = txn.request.clone() else {
            return false;
        };
        if self.targets.is_empty() {
            return false;
        }
        let Some(mut idx) = self.index2.take() else {
            return false;
        };
        let mut moved = false;
        if let Ok(m) = sip::parse(&req, &mut idx) {
            let plan = m
                .top_via()
                .ok()
                .map(|via| self.fork_plan(&m, &via, txn.src, false));
            if let (Some(plan), Ok(routing)) = (plan, route::routing(&self.id, &m)) {
                let targets: Vec<(Target, u16)> = self
                    .targets
                    .as_slice()
                    .iter()
                    .cloned()
                    .enumerate()
                    .map(|(k, t)| (t, self.target_dests.get(k).copied().unwrap_or(0)))
                    .collect();
                for (t, d) in targets {
                    let i = txn.forks.len();
                    if i >= self.cfg.max_forks.max(usize::from(u8::MAX)) {
                        break;
                    }
                    if let Ok(mut fork) = self.send_fork(
                        now,
                        &m,
                        &routing,
                        txn.src,
                        &plan,
                        (slot, txn.gen),
                        i,
                        &t,
                        out,
                    ) {
                        if let Some(set) = set {
                            fork.dest = Some((set, d));
                            self.arm_no_answer(now, set, slot, txn.gen, i);
                            if txn.method == Method::Invite {
                                self.dispatcher.call_started(set, d);
                                fork.loaded = true;
                            }
                        }
                        txn.forks.push(fork);
                        moved = true;
                    }
                }
            }
        }
        self.index2 = Some(idx);
        moved
    }
}
