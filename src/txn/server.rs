//! The non-INVITE server transaction (RFC 3261 §17.2.2).
//!
//! ```text
//!        request received
//!               │
//!  request: ◄─ Trying ── user sends 1xx ──► Proceeding ── request: resend 1xx
//!   absorb      │ user sends 200-699; J          │ user sends 200-699; J
//!               ▼                                 ▼
//!           Completed ◄───────────────────────────┘
//!  request: resend final │ J
//!                        ▼
//!                    Terminated
//! ```

use super::{is_armed, Action, Arm, Class, TimerConfig, TimerName};
use crate::time::{Duration, Instant};

/// States of the non-INVITE server transaction, in RFC order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonInviteServerState {
    /// The request arrived; nothing sent yet.
    Trying,
    /// A provisional response was sent.
    Proceeding,
    /// A final response was sent.
    Completed,
    /// Over.
    Terminated,
}

/// A non-INVITE server transaction.
#[derive(Debug, Clone)]
pub struct NonInviteServer {
    state: NonInviteServerState,
    cfg: TimerConfig,
    reliable: bool,
    j_at: Option<Instant>,
}

impl NonInviteServer {
    /// Starts the transaction for a request that just arrived.
    pub fn start(cfg: TimerConfig, reliable: bool) -> Self {
        Self {
            state: NonInviteServerState::Trying,
            cfg,
            reliable,
            j_at: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> NonInviteServerState {
        self.state
    }

    /// True while a response may still be sent.
    pub fn can_send(&self) -> bool {
        matches!(
            self.state,
            NonInviteServerState::Trying | NonInviteServerState::Proceeding
        )
    }

    /// The user sends a response with status `code` at `now`.
    pub fn on_send(&mut self, now: Instant, code: u16) -> Arm {
        use NonInviteServerState as S;
        match (self.state, Class::of(code)) {
            (S::Trying | S::Proceeding, Class::Provisional) => {
                self.state = S::Proceeding;
                Arm::NONE
            }
            (S::Trying | S::Proceeding, _) => {
                self.state = S::Completed;
                let j = now
                    + if self.reliable {
                        Duration::ZERO
                    } else {
                        self.cfg.t1x64()
                    };
                self.j_at = Some(j);
                Arm::one(TimerName::J, j)
            }
            _ => Arm::NONE,
        }
    }

    /// A retransmission of the request arrived.
    pub fn on_request(&mut self) -> Action {
        match self.state {
            NonInviteServerState::Proceeding | NonInviteServerState::Completed => {
                Action::RetransmitResponse
            }
            _ => Action::None,
        }
    }

    /// Timer `name`, armed for `at`, fired.
    pub fn on_timer(&mut self, name: TimerName, at: Instant) -> Action {
        if name == TimerName::J
            && self.state == NonInviteServerState::Completed
            && is_armed(self.j_at, at)
        {
            self.terminate();
            return Action::Terminate;
        }
        Action::None
    }

    /// Ends the transaction now.
    pub fn terminate(&mut self) {
        self.state = NonInviteServerState::Terminated;
        self.j_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: u64) -> Instant {
        Instant::from_micros(v * 1_000)
    }

    #[test]
    fn absorbs_then_replays_then_terminates() {
        let mut t = NonInviteServer::start(TimerConfig::default(), false);
        assert_eq!(t.on_request(), Action::None, "nothing to replay yet");
        assert_eq!(t.on_send(s(0), 100), Arm::NONE);
        assert_eq!(t.on_request(), Action::RetransmitResponse);
        assert_eq!(t.on_send(s(1), 200), Arm::one(TimerName::J, s(32_001)));
        assert!(!t.can_send());
        assert_eq!(t.on_request(), Action::RetransmitResponse);
        assert_eq!(
            t.on_timer(TimerName::J, s(32_000)),
            Action::None,
            "not the armed deadline"
        );
        assert_eq!(t.on_timer(TimerName::J, s(32_001)), Action::Terminate);
    }
}
