//! The non-INVITE client transaction (RFC 3261 §17.1.2).
//!
//! ```text
//!                 request sent; E (unreliable), F
//!                        │
//!  E: retransmit ◄──── Trying ──── F: Timeout ──► Terminated
//!   (×2, ≤ T2)      1xx │   \ 200-699: pass, K
//!                       ▼    \
//!  E: retransmit ◄── Proceeding ── F: Timeout ──► Terminated
//!   (every T2)    200-699 │  pass, K
//!                         ▼
//!                    Completed ── K ──► Terminated
//! ```

use super::{is_armed, Action, Arm, Class, TimerConfig, TimerName};
use crate::time::{Duration, Instant};

/// States of the non-INVITE client transaction, in RFC order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonInviteClientState {
    /// The request was sent; no response yet.
    Trying,
    /// A provisional response arrived.
    Proceeding,
    /// A final response arrived; retransmissions of it are absorbed.
    Completed,
    /// Over.
    Terminated,
}

/// A non-INVITE client transaction.
#[derive(Debug, Clone)]
pub struct NonInviteClient {
    state: NonInviteClientState,
    cfg: TimerConfig,
    reliable: bool,
    e_interval: Duration,
    e_at: Option<Instant>,
    f_at: Option<Instant>,
    k_at: Option<Instant>,
}

impl NonInviteClient {
    /// Starts the transaction: the request has just been sent at `now`.
    pub fn start(now: Instant, cfg: TimerConfig, reliable: bool) -> (Self, Arm) {
        let f = now + cfg.t1x64();
        let mut t = Self {
            state: NonInviteClientState::Trying,
            cfg,
            reliable,
            e_interval: cfg.t1,
            e_at: None,
            f_at: Some(f),
            k_at: None,
        };
        let arm = if reliable {
            Arm::one(TimerName::F, f)
        } else {
            let e = now + cfg.t1;
            t.e_at = Some(e);
            Arm::two((TimerName::E, e), (TimerName::F, f))
        };
        (t, arm)
    }

    /// The current state.
    pub fn state(&self) -> NonInviteClientState {
        self.state
    }

    /// A response with status `code` arrived.
    pub fn on_response(&mut self, now: Instant, code: u16) -> (Action, Arm) {
        use NonInviteClientState as S;
        match (self.state, Class::of(code)) {
            (S::Trying | S::Proceeding, Class::Provisional) => {
                self.state = S::Proceeding;
                (Action::PassResponse, Arm::NONE)
            }
            (S::Trying | S::Proceeding, _) => {
                self.state = S::Completed;
                self.e_at = None;
                self.f_at = None;
                let k = now
                    + if self.reliable {
                        Duration::ZERO
                    } else {
                        self.cfg.t4
                    };
                self.k_at = Some(k);
                (Action::PassResponse, Arm::one(TimerName::K, k))
            }
            _ => (Action::None, Arm::NONE),
        }
    }

    /// Timer `name`, armed for `at`, fired at `now`.
    pub fn on_timer(&mut self, now: Instant, name: TimerName, at: Instant) -> (Action, Arm) {
        use NonInviteClientState as S;
        match name {
            TimerName::E
                if matches!(self.state, S::Trying | S::Proceeding) && is_armed(self.e_at, at) =>
            {
                // §17.1.2.2: doubling up to T2 while Trying; every T2 once Proceeding.
                self.e_interval = if self.state == S::Trying {
                    self.e_interval.saturating_mul(2).min(self.cfg.t2)
                } else {
                    self.cfg.t2
                };
                let next = now + self.e_interval;
                self.e_at = Some(next);
                (Action::RetransmitRequest, Arm::one(TimerName::E, next))
            }
            TimerName::F
                if matches!(self.state, S::Trying | S::Proceeding) && is_armed(self.f_at, at) =>
            {
                self.terminate();
                (Action::Timeout, Arm::NONE)
            }
            TimerName::K if self.state == S::Completed && is_armed(self.k_at, at) => {
                self.terminate();
                (Action::Terminate, Arm::NONE)
            }
            _ => (Action::None, Arm::NONE),
        }
    }

    /// Ends the transaction now.
    pub fn terminate(&mut self) {
        self.state = NonInviteClientState::Terminated;
        self.e_at = None;
        self.f_at = None;
        self.k_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: u64) -> Instant {
        Instant::from_micros(v * 1_000)
    }

    #[test]
    fn retransmits_doubling_to_t2_then_times_out() {
        let (mut t, mut arm) = NonInviteClient::start(s(0), TimerConfig::default(), false);
        let mut sends = Vec::new();
        loop {
            let (name, at) = arm.iter().next().unwrap();
            if at >= s(32_000) {
                break;
            }
            assert_eq!(name, TimerName::E);
            let (a, next) = t.on_timer(at, name, at);
            assert_eq!(a, Action::RetransmitRequest);
            sends.push(at.as_micros() / 1_000);
            arm = next;
        }
        assert_eq!(&sends[..6], &[500, 1_500, 3_500, 7_500, 11_500, 15_500]);
        assert_eq!(
            t.on_timer(s(32_000), TimerName::F, s(32_000)).0,
            Action::Timeout
        );
    }

    #[test]
    fn proceeding_retransmits_every_t2_and_completes() {
        let (mut t, _) = NonInviteClient::start(s(0), TimerConfig::default(), false);
        assert_eq!(t.on_response(s(100), 100).0, Action::PassResponse);
        let (a, arm) = t.on_timer(s(500), TimerName::E, s(500));
        assert_eq!(a, Action::RetransmitRequest);
        assert_eq!(arm, Arm::one(TimerName::E, s(4_500)));
        let (a, arm) = t.on_response(s(600), 200);
        assert_eq!(
            (a, arm),
            (Action::PassResponse, Arm::one(TimerName::K, s(5_600)))
        );
        assert_eq!(t.on_response(s(700), 200).0, Action::None, "absorbed");
        assert_eq!(
            t.on_timer(s(4_500), TimerName::E, s(4_500)).0,
            Action::None,
            "stale E"
        );
        assert_eq!(
            t.on_timer(s(5_600), TimerName::K, s(5_600)).0,
            Action::Terminate
        );
    }
}
