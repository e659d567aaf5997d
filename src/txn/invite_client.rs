//! The INVITE client transaction (RFC 3261 §17.1.1, with RFC 6026 §8.4).
//!
//! ```text
//!              INVITE sent; A (unreliable), B
//!                        │
//!   A: retransmit ◄── Calling ──── B: Timeout ──► Terminated
//!                   1xx │  \ 2xx ──────────────────┐
//!                       ▼   \ 300-699: ACK          │
//!    1xx: pass ◄── Proceeding ─────────┐            │
//!                  │ 2xx    300-699: ACK, pass, D   │
//!                  ▼                   ▼            ▼
//!     2xx: pass ◄ Accepted (M)     Completed (D)   (2xx: pass, M)
//!                  │ M            300-699: ACK again
//!                  ▼               │ D
//!              Terminated ◄────────┘
//! ```

use super::{is_armed, Action, Arm, Class, TimerConfig, TimerName};
use crate::time::{Duration, Instant};

/// States of the INVITE client transaction, in RFC order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteClientState {
    /// The INVITE was sent; no response yet.
    Calling,
    /// A provisional response arrived.
    Proceeding,
    /// A non-2xx final response arrived and was ACKed.
    Completed,
    /// A 2xx arrived (RFC 6026): further 2xx are passed up.
    Accepted,
    /// Over.
    Terminated,
}

/// An INVITE client transaction.
#[derive(Debug, Clone)]
pub struct InviteClient {
    state: InviteClientState,
    cfg: TimerConfig,
    reliable: bool,
    a_interval: Duration,
    a_at: Option<Instant>,
    b_at: Option<Instant>,
    d_at: Option<Instant>,
    m_at: Option<Instant>,
}

impl InviteClient {
    /// Starts the transaction: the INVITE has just been sent at `now`.
    pub fn start(now: Instant, cfg: TimerConfig, reliable: bool) -> (Self, Arm) {
        let b = now + cfg.t1x64();
        let mut t = Self {
            state: InviteClientState::Calling,
            cfg,
            reliable,
            a_interval: cfg.t1,
            a_at: None,
            b_at: Some(b),
            d_at: None,
            m_at: None,
        };
        let arm = if reliable {
            Arm::one(TimerName::B, b)
        } else {
            let a = now + cfg.t1;
            t.a_at = Some(a);
            Arm::two((TimerName::A, a), (TimerName::B, b))
        };
        (t, arm)
    }

    /// The current state.
    pub fn state(&self) -> InviteClientState {
        self.state
    }

    /// A response with status `code` arrived.
    pub fn on_response(&mut self, now: Instant, code: u16) -> (Action, Arm) {
        use InviteClientState as S;
        match (self.state, Class::of(code)) {
            (S::Calling | S::Proceeding, Class::Provisional) => {
                self.state = S::Proceeding;
                self.a_at = None;
                (Action::PassResponse, Arm::NONE)
            }
            (S::Calling | S::Proceeding | S::Accepted, Class::Success) => {
                let first = self.state != S::Accepted;
                self.state = S::Accepted;
                self.a_at = None;
                self.b_at = None;
                if first {
                    let m = now + self.cfg.t1x64();
                    self.m_at = Some(m);
                    (Action::PassResponse, Arm::one(TimerName::M, m))
                } else {
                    (Action::PassResponse, Arm::NONE)
                }
            }
            (S::Calling | S::Proceeding, Class::Failure) => {
                self.state = S::Completed;
                self.a_at = None;
                self.b_at = None;
                let d = now + self.cfg.timer_d(self.reliable);
                self.d_at = Some(d);
                (Action::AckAndPass, Arm::one(TimerName::D, d))
            }
            (S::Completed, Class::Failure) => (Action::Ack, Arm::NONE),
            _ => (Action::None, Arm::NONE),
        }
    }

    /// Timer `name`, armed for `at`, fired at `now`.
    pub fn on_timer(&mut self, now: Instant, name: TimerName, at: Instant) -> (Action, Arm) {
        use InviteClientState as S;
        match name {
            TimerName::A if self.state == S::Calling && is_armed(self.a_at, at) => {
                self.a_interval = self.a_interval.saturating_mul(2);
                let next = now + self.a_interval;
                self.a_at = Some(next);
                (Action::RetransmitRequest, Arm::one(TimerName::A, next))
            }
            TimerName::B if self.state == S::Calling && is_armed(self.b_at, at) => {
                self.terminate();
                (Action::Timeout, Arm::NONE)
            }
            TimerName::D if self.state == S::Completed && is_armed(self.d_at, at) => {
                self.terminate();
                (Action::Terminate, Arm::NONE)
            }
            TimerName::M if self.state == S::Accepted && is_armed(self.m_at, at) => {
                self.terminate();
                (Action::Terminate, Arm::NONE)
            }
            _ => (Action::None, Arm::NONE),
        }
    }

    /// Ends the transaction now (the owner gave up on it).
    pub fn terminate(&mut self) {
        self.state = InviteClientState::Terminated;
        self.a_at = None;
        self.b_at = None;
        self.d_at = None;
        self.m_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: u64) -> Instant {
        Instant::from_micros(v * 1_000)
    }

    #[test]
    fn retransmits_with_doubling_then_times_out() {
        let cfg = TimerConfig::default();
        let (mut t, arm) = InviteClient::start(s(0), cfg, false);
        assert_eq!(
            arm,
            Arm::two((TimerName::A, s(500)), (TimerName::B, s(32_000)))
        );
        let mut at = s(500);
        let mut sends = Vec::new();
        // A fires at 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s: six retransmissions before B (§17.1.1.2).
        while at < s(32_000) {
            let (a, arm) = t.on_timer(at, TimerName::A, at);
            assert_eq!(a, Action::RetransmitRequest);
            sends.push(at.as_micros() / 1_000);
            at = arm.iter().next().unwrap().1;
        }
        assert_eq!(sends, vec![500, 1_500, 3_500, 7_500, 15_500, 31_500]);
        assert_eq!(
            t.on_timer(s(32_000), TimerName::B, s(32_000)).0,
            Action::Timeout
        );
        assert_eq!(t.state(), InviteClientState::Terminated);
    }

    #[test]
    fn failure_is_acked_and_absorbed_until_d() {
        let (mut t, _) = InviteClient::start(s(0), TimerConfig::default(), false);
        assert_eq!(t.on_response(s(10), 180).0, Action::PassResponse);
        // Timer A is no longer armed in Proceeding.
        assert_eq!(t.on_timer(s(500), TimerName::A, s(500)).0, Action::None);
        let (a, arm) = t.on_response(s(20), 486);
        assert_eq!(a, Action::AckAndPass);
        assert_eq!(arm, Arm::one(TimerName::D, s(32_020)));
        assert_eq!(
            t.on_response(s(30), 486).0,
            Action::Ack,
            "retransmitted final: ACK again, not passed"
        );
        assert_eq!(
            t.on_timer(s(32_000), TimerName::B, s(32_000)).0,
            Action::None,
            "stale B"
        );
        assert_eq!(
            t.on_timer(s(32_020), TimerName::D, s(32_020)).0,
            Action::Terminate
        );
    }

    #[test]
    fn every_2xx_is_passed_up_in_accepted() {
        let (mut t, _) = InviteClient::start(s(0), TimerConfig::default(), false);
        let (a, arm) = t.on_response(s(5), 200);
        assert_eq!(
            (a, t.state()),
            (Action::PassResponse, InviteClientState::Accepted)
        );
        assert_eq!(arm, Arm::one(TimerName::M, s(32_005)));
        assert_eq!(
            t.on_response(s(600), 200).0,
            Action::PassResponse,
            "2xx retransmission passed (RFC 6026)"
        );
        assert_eq!(t.on_response(s(700), 486).0, Action::None);
        assert_eq!(
            t.on_timer(s(32_005), TimerName::M, s(32_005)).0,
            Action::Terminate
        );
    }

    #[test]
    fn reliable_transport_arms_no_retransmissions() {
        let (_, arm) = InviteClient::start(s(0), TimerConfig::default(), true);
        assert_eq!(arm, Arm::one(TimerName::B, s(32_000)));
        let (mut t, _) = InviteClient::start(s(0), TimerConfig::default(), true);
        assert_eq!(t.on_response(s(1), 404).1, Arm::one(TimerName::D, s(1)));
    }
}
