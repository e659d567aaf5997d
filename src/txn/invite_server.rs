//! The INVITE server transaction (RFC 3261 §17.2.1, with RFC 6026 §8.7).
//!
//! ```text
//!           INVITE received (the proxy sends 100 Trying at once)
//!                        │
//!  INVITE: resend ◄── Proceeding ── user sends 1xx: stay
//!   last 1xx            │  \ user sends 2xx ─────────────► Accepted (L)
//!                       │   user sends 300-699; G, H       │ INVITE: absorb; ACK: pass;
//!                       ▼                                   │ user sends 2xx: send
//!  INVITE, G: resend ◄ Completed ── H: AckTimeout ─► Terminated ◄── L
//!   final (G ×2 ≤ T2)   │ ACK; I                      ▲
//!                       ▼                             │
//!           ACK: absorb ◄ Confirmed ──────── I ────────┘
//! ```

use super::{is_armed, Action, Arm, Class, TimerConfig, TimerName};
use crate::time::{Duration, Instant};

/// States of the INVITE server transaction, in RFC order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteServerState {
    /// The INVITE is being worked on; provisional responses may be sent.
    Proceeding,
    /// A non-2xx final response was sent; waiting for the ACK.
    Completed,
    /// The ACK arrived; absorbing its retransmissions.
    Confirmed,
    /// A 2xx was sent (RFC 6026): INVITE retransmissions are absorbed.
    Accepted,
    /// Over.
    Terminated,
}

/// An INVITE server transaction.
#[derive(Debug, Clone)]
pub struct InviteServer {
    state: InviteServerState,
    cfg: TimerConfig,
    reliable: bool,
    g_interval: Duration,
    g_at: Option<Instant>,
    h_at: Option<Instant>,
    i_at: Option<Instant>,
    l_at: Option<Instant>,
}

impl InviteServer {
    /// Starts the transaction for an INVITE that just arrived.
    pub fn start(cfg: TimerConfig, reliable: bool) -> Self {
        Self {
            state: InviteServerState::Proceeding,
            cfg,
            reliable,
            g_interval: cfg.t1,
            g_at: None,
            h_at: None,
            i_at: None,
            l_at: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> InviteServerState {
        self.state
    }

    /// True while a response with `code` may still be sent.
    pub fn can_send(&self, code: u16) -> bool {
        match self.state {
            InviteServerState::Proceeding => true,
            InviteServerState::Accepted => Class::of(code) == Class::Success,
            _ => false,
        }
    }

    /// The user sends a response with status `code` at `now`.
    pub fn on_send(&mut self, now: Instant, code: u16) -> Arm {
        use InviteServerState as S;
        match (self.state, Class::of(code)) {
            (S::Proceeding, Class::Provisional) => Arm::NONE,
            (S::Proceeding, Class::Success) => {
                self.state = S::Accepted;
                let l = now + self.cfg.t1x64();
                self.l_at = Some(l);
                Arm::one(TimerName::L, l)
            }
            (S::Proceeding, Class::Failure) => {
                self.state = S::Completed;
                let h = now + self.cfg.t1x64();
                self.h_at = Some(h);
                if self.reliable {
                    Arm::one(TimerName::H, h)
                } else {
                    let g = now + self.cfg.t1;
                    self.g_at = Some(g);
                    Arm::two((TimerName::G, g), (TimerName::H, h))
                }
            }
            _ => Arm::NONE,
        }
    }

    /// A retransmission of the INVITE arrived.
    pub fn on_request(&mut self) -> Action {
        match self.state {
            InviteServerState::Proceeding | InviteServerState::Completed => {
                Action::RetransmitResponse
            }
            _ => Action::None,
        }
    }

    /// An ACK matching this transaction arrived.
    pub fn on_ack(&mut self, now: Instant) -> (Action, Arm) {
        use InviteServerState as S;
        match self.state {
            S::Completed => {
                self.state = S::Confirmed;
                self.g_at = None;
                self.h_at = None;
                let i = now
                    + if self.reliable {
                        Duration::ZERO
                    } else {
                        self.cfg.t4
                    };
                self.i_at = Some(i);
                (Action::None, Arm::one(TimerName::I, i))
            }
            S::Accepted => (Action::PassRequest, Arm::NONE),
            _ => (Action::None, Arm::NONE),
        }
    }

    /// Timer `name`, armed for `at`, fired at `now`.
    pub fn on_timer(&mut self, now: Instant, name: TimerName, at: Instant) -> (Action, Arm) {
        use InviteServerState as S;
        match name {
            TimerName::G if self.state == S::Completed && is_armed(self.g_at, at) => {
                self.g_interval = self.g_interval.saturating_mul(2).min(self.cfg.t2);
                let next = now + self.g_interval;
                self.g_at = Some(next);
                (Action::RetransmitResponse, Arm::one(TimerName::G, next))
            }
            TimerName::H if self.state == S::Completed && is_armed(self.h_at, at) => {
                self.terminate();
                (Action::AckTimeout, Arm::NONE)
            }
            TimerName::I if self.state == S::Confirmed && is_armed(self.i_at, at) => {
                self.terminate();
                (Action::Terminate, Arm::NONE)
            }
            TimerName::L if self.state == S::Accepted && is_armed(self.l_at, at) => {
                self.terminate();
                (Action::Terminate, Arm::NONE)
            }
            _ => (Action::None, Arm::NONE),
        }
    }

    /// Ends the transaction now.
    pub fn terminate(&mut self) {
        self.state = InviteServerState::Terminated;
        self.g_at = None;
        self.h_at = None;
        self.i_at = None;
        self.l_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: u64) -> Instant {
        Instant::from_micros(v * 1_000)
    }

    #[test]
    fn failure_retransmits_until_ack() {
        let mut t = InviteServer::start(TimerConfig::default(), false);
        assert_eq!(t.on_request(), Action::RetransmitResponse, "resend the 100");
        let arm = t.on_send(s(0), 486);
        assert_eq!(
            arm,
            Arm::two((TimerName::G, s(500)), (TimerName::H, s(32_000)))
        );
        let (a, arm) = t.on_timer(s(500), TimerName::G, s(500));
        assert_eq!(
            (a, arm),
            (Action::RetransmitResponse, Arm::one(TimerName::G, s(1_500)))
        );
        assert_eq!(t.on_request(), Action::RetransmitResponse);
        let (a, arm) = t.on_ack(s(1_000));
        assert_eq!((a, t.state()), (Action::None, InviteServerState::Confirmed));
        assert_eq!(arm, Arm::one(TimerName::I, s(6_000)));
        assert_eq!(
            t.on_timer(s(1_500), TimerName::G, s(1_500)).0,
            Action::None,
            "G stops after ACK"
        );
        assert_eq!(
            t.on_ack(s(1_100)).0,
            Action::None,
            "ACK retransmission absorbed"
        );
        assert_eq!(
            t.on_timer(s(6_000), TimerName::I, s(6_000)).0,
            Action::Terminate
        );
    }

    #[test]
    fn gives_up_without_ack() {
        let mut t = InviteServer::start(TimerConfig::default(), false);
        t.on_send(s(0), 603);
        assert_eq!(
            t.on_timer(s(32_000), TimerName::H, s(32_000)).0,
            Action::AckTimeout
        );
        assert_eq!(t.state(), InviteServerState::Terminated);
    }

    #[test]
    fn accepted_absorbs_invites_and_sends_further_2xx() {
        let mut t = InviteServer::start(TimerConfig::default(), false);
        t.on_send(s(0), 180);
        assert!(t.can_send(200));
        assert_eq!(t.on_send(s(1), 200), Arm::one(TimerName::L, s(32_001)));
        assert_eq!(
            t.on_request(),
            Action::None,
            "RFC 6026: INVITE retransmission absorbed"
        );
        assert!(t.can_send(200), "another fork's 2xx goes up too");
        assert!(!t.can_send(486));
        assert_eq!(
            t.on_timer(s(32_001), TimerName::L, s(32_001)).0,
            Action::Terminate
        );
    }
}
