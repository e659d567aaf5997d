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
    /// Arms fork `i`'s `fork_timeout` of set `set`.
    pub(super) fn arm_no_answer(&mut self, now: Instant, set: u16, slot: u32, gen: u32, i: usize) {
        let Some(t) = self.dispatcher.config(set).map(|c| c.fork_timeout) else {
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
        let Some(f) = txn.forks.get_mut(i) else {
            return;
        };
        let Some((set, dest)) = f.dest else {
            return;
        };
        // A fork we cancelled (the caller's CANCEL, Timer C) ends; it did not fail.
        let cancelled = f.cancel.is_some() || f.cancel_wanted;
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
        let tried: Vec<u16> = txn
            .forks
            .iter()
            .filter_map(|f| f.dest.map(|d| d.1))
            .collect();
        if tried.len() >= attempts as usize {
            return;
        }
        let Some(req) = txn.request.clone() else {
            return;
        };
        let Some(d) = self.dispatcher.select(set, key, &tried) else {
            return;
        };
        let Some(dest) = self.dispatcher.dest(set, d).cloned() else {
            return;
        };
        let Some(mut idx) = self.index2.take() else {
            return;
        };
        if let Ok(m) = sip::parse(&req, &mut idx) {
            let plan = m
                .top_via()
                .ok()
                .map(|via| self.fork_plan(&m, &via, txn.src, false));
            if let (Some(plan), Ok(routing)) = (plan, route::routing(&self.id, &m)) {
                let t = Target {
                    dest: Some(dest.addr),
                    q: 1000,
                    transport: dest.transport,
                    ..Target::default()
                };
                let i = txn.forks.len();
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
                    fork.dest = Some((set, d));
                    self.arm_no_answer(now, set, slot, txn.gen, i);
                    if txn.method == Method::Invite {
                        self.dispatcher.call_started(set, d);
                        fork.loaded = true;
                    }
                    txn.forks.push(fork);
                    self.dispatcher.failovers += 1;
                    self.counters.dispatcher_failovers += 1;
                }
            }
        }
        self.index2 = Some(idx);
    }
}
