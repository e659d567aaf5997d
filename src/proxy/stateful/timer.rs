//! Transaction timers (RFC 3261 §17, Timer C of §16.6 step 11, RFC 6026):
//! armed on the shard's wheel, fired into the transaction they belong to.

use super::*;

impl<L: Location, S: LocalService> Stateful<L, S> {
    pub(super) fn arm(&mut self, slot: u32, gen: u32, target: TimerTarget, arm: Arm) {
        for (name, at) in arm.iter() {
            self.wheel.insert(
                at,
                TimerItem {
                    slot,
                    gen,
                    target,
                    name,
                    at,
                },
            );
        }
    }

    /// Starts Timer C of the new INVITE fork `i`; returns its deadline
    /// (`now` + Timer C, kept in the fork; a provisional response moves it).
    ///
    /// The wheel gets one check of it at a time, at most [`TIMER_C_CHECK`]
    /// ahead: a check finds the fork final (the usual case: nothing more is
    /// armed), or its deadline still ahead (the next check), or the deadline
    /// passed (Timer C fires). A 180 s entry per fork left in the wheel after
    /// its call completed held ~10 % of a busy edge's memory.
    pub(super) fn arm_timer_c(&mut self, now: Instant, slot: u32, gen: u32, i: usize) -> Instant {
        let c = now + self.cfg.timers.timer_c;
        self.check_timer_c(now, c, slot, gen, i);
        c
    }

    /// Puts fork `i`'s next Timer C check on the wheel.
    pub(super) fn check_timer_c(
        &mut self,
        now: Instant,
        deadline: Instant,
        slot: u32,
        gen: u32,
        i: usize,
    ) {
        let at = deadline.min(now + TIMER_C_CHECK);
        self.wheel.insert(
            at,
            TimerItem {
                slot,
                gen,
                target: TimerTarget::Fork(i as u8),
                name: TimerName::C,
                at,
            },
        );
    }

    pub(super) fn on_timer(&mut self, now: Instant, item: TimerItem, out: &mut Outbox) {
        if self.txns.generation(item.slot) != Some(item.gen) {
            return;
        }
        let slot = item.slot;
        let Some(mut txn) = self.take(slot) else {
            return;
        };
        match item.target {
            TimerTarget::Server => {
                let (action, arm) = match &mut txn.server {
                    Server::Invite(s) => s.on_timer(now, item.name, item.at),
                    Server::NonInvite(s) => (s.on_timer(item.name, item.at), Arm::NONE),
                    Server::Local(_) | Server::Probe(_) => (Action::None, Arm::NONE),
                };
                self.arm(slot, txn.gen, TimerTarget::Server, arm);
                if action == Action::RetransmitResponse {
                    if let Some(r) = txn.last_response.clone() {
                        self.send(out, txn.reply_to, &r);
                    }
                }
                if txn.server.terminated() {
                    txn.last_response = None;
                }
            }
            TimerTarget::Fork(i) => {
                let i = usize::from(i);
                if item.name == TimerName::C {
                    let deadline = txn
                        .forks
                        .get(i)
                        .filter(|f| f.final_code.is_none())
                        .and_then(|f| f.timer_c);
                    let live = match deadline {
                        Some(d) if d > now => {
                            self.check_timer_c(now, d, slot, txn.gen, i);
                            false
                        }
                        Some(_) => true,
                        None => false,
                    };
                    let cancelled = txn.forks.get(i).is_some_and(|f| f.cancel.is_some());
                    if live && cancelled {
                        // CANCELed 64*T1 ago and still no final response:
                        // behave as if 408 (§9.1, §16.8).
                        if let Some(f) = txn.forks.get_mut(i) {
                            f.final_code = Some(408);
                            f.client.terminate();
                            f.bytes = None;
                            f.timer_c = None;
                            if let Some((c, _)) = f.cancel.as_deref_mut() {
                                c.terminate();
                            }
                        }
                        self.dispatched_final(now, slot, &mut txn, i, 408, None, out);
                    } else if live {
                        // §16.8: Timer C fired: CANCEL the fork. With no
                        // provisional response yet the CANCEL waits for one
                        // (§9.1) and Timer B ends the branch with its 408.
                        // Why not a 408 at once, as §16.8 words it: Timer C
                        // only beats Timer B when configured below 64×T1
                        // (§16.6 wants it above 3 min), and an immediate 408
                        // let the branch's late 2xx reach the caller after
                        // the 408 (found by the simulations).
                        self.cancel_fork(now, slot, &mut txn, i, out);
                    }
                } else {
                    let (action, arm) = match txn.forks.get_mut(i) {
                        Some(f) => f.client.on_timer(now, item.name, item.at),
                        None => (Action::None, Arm::NONE),
                    };
                    self.arm(slot, txn.gen, TimerTarget::Fork(i as u8), arm);
                    match action {
                        Action::RetransmitRequest => {
                            if let Some(f) = txn.forks.get(i) {
                                if let Some(b) = f.bytes.clone() {
                                    self.counters.retransmissions_sent += 1;
                                    self.send(out, f.to, &b);
                                }
                            }
                        }
                        Action::Timeout => {
                            if let Some(f) = txn.forks.get_mut(i) {
                                f.final_code = Some(408);
                                f.bytes = None;
                                f.timer_c = None;
                                if let Some((c, _)) = f.cancel.as_deref_mut() {
                                    c.terminate();
                                }
                            }
                            self.dispatched_final(now, slot, &mut txn, i, 408, None, out);
                        }
                        Action::Terminate => {
                            if let Some(f) = txn.forks.get_mut(i) {
                                f.bytes = None;
                            }
                        }
                        _ => {}
                    }
                }
            }
            TimerTarget::NoAnswer(i)
                if txn
                    .forks
                    .get(usize::from(i))
                    .and_then(|f| f.dest)
                    .is_some_and(|(set, _)| self.dispatcher.is_group(set)) =>
            {
                // A hunt group member rang out: CANCEL its fork; its 487
                // (or Timer B) moves the call on to the next member.
                let i = usize::from(i);
                let ringing = txn.forks.get(i).is_some_and(|f| f.final_code.is_none());
                if ringing && !txn.cancelled && !txn.final_sent {
                    if let Some(f) = txn.forks.get_mut(i) {
                        f.rang_out = true;
                    }
                    self.cancel_fork(now, slot, &mut txn, i, out);
                }
            }
            TimerTarget::NoAnswer(i) => {
                let i = usize::from(i);
                let silent = txn
                    .forks
                    .get(i)
                    .is_some_and(|f| !f.provisional && f.final_code.is_none());
                if silent {
                    if let Some(f) = txn.forks.get_mut(i) {
                        f.final_code = Some(408);
                        f.client.terminate();
                        f.bytes = None;
                        f.timer_c = None;
                    }
                    self.dispatched_final(now, slot, &mut txn, i, 408, None, out);
                }
            }
            TimerTarget::Cancel(i) => {
                let i = usize::from(i);
                let mut resend = None;
                let mut gave_up = false;
                if let Some(f) = txn.forks.get_mut(i) {
                    if let Some((c, bytes)) = f.cancel.as_deref_mut() {
                        let (action, arm) = c.on_timer(now, item.name, item.at);
                        match action {
                            Action::RetransmitRequest => resend = Some((f.to, bytes.clone())),
                            Action::Timeout => gave_up = true,
                            _ => {}
                        }
                        for (name, at) in arm.iter() {
                            self.wheel.insert(
                                at,
                                TimerItem {
                                    slot,
                                    gen: txn.gen,
                                    target: TimerTarget::Cancel(i as u8),
                                    name,
                                    at,
                                },
                            );
                        }
                    }
                    if gave_up && f.final_code.is_none() {
                        // §16.8: no final response to a CANCELed fork: behave as if 408.
                        f.final_code = Some(408);
                        f.client.terminate();
                        f.bytes = None;
                        resend = None;
                        gave_up = true;
                    } else {
                        gave_up = false;
                    }
                }
                if gave_up {
                    self.dispatched_final(now, slot, &mut txn, i, 408, None, out);
                }
                if let Some((to, b)) = resend {
                    self.send(out, to, &b);
                }
            }
        }
        self.put(slot, txn);
        self.finish(now, slot, out);
    }
}
