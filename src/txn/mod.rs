//! RFC 3261 §17 transactions as pure state machines, with the RFC 6026
//! "Accepted" state for INVITE 2xx. Each machine takes `(now, event)` and
//! returns what to do ([`Action`]) and which timers to arm ([`Arm`]); the
//! owner keeps the messages, puts the timers in its wheel and calls back
//! with `on_timer(now, name, at)`, which ignores timers that are no longer
//! armed (so nothing is ever cancelled in the wheel).
//!
//! | machine | file | RFC |
//! |---|---|---|
//! | [`InviteClient`] | `invite_client.rs` | §17.1.1, RFC 6026 §8.4 |
//! | [`NonInviteClient`] | `client.rs` | §17.1.2 |
//! | [`InviteServer`] | `invite_server.rs` | §17.2.1, RFC 6026 §8.7 |
//! | [`NonInviteServer`] | `server.rs` | §17.2.2 |
//!
//! Timer values come from [`TimerConfig`] (T1, T2, T4 configurable; the
//! 64×T1 timers B, F, H, J, L, M derive from T1). Over a reliable transport
//! the retransmission timers are not armed and the wait timers are zero.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

mod client;
mod invite_client;
mod invite_server;
pub mod key;
mod server;
pub mod table;

pub use client::{NonInviteClient, NonInviteClientState};
pub use invite_client::{InviteClient, InviteClientState};
pub use invite_server::{InviteServer, InviteServerState};
pub use server::{NonInviteServer, NonInviteServerState};

use crate::time::{Duration, Instant};

/// The timers of RFC 3261 §17 (Table 4) and RFC 6026, in RFC order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimerName {
    /// INVITE request retransmit (client, unreliable).
    A,
    /// INVITE transaction timeout (client).
    B,
    /// Proxy INVITE transaction timeout (§16.6 step 11; owned by the proxy).
    C,
    /// Wait time for response retransmits (INVITE client, Completed).
    D,
    /// Non-INVITE request retransmit (client, unreliable).
    E,
    /// Non-INVITE transaction timeout (client).
    F,
    /// INVITE response retransmit (server, unreliable).
    G,
    /// Wait time for ACK receipt (INVITE server).
    H,
    /// Wait time for ACK retransmits (INVITE server, Confirmed).
    I,
    /// Wait time for non-INVITE request retransmits (server, Completed).
    J,
    /// Wait time for response retransmits (non-INVITE client, Completed).
    K,
    /// Wait time for accepted INVITE request retransmits (server, RFC 6026).
    L,
    /// Wait time for retransmission of 2xx (client, RFC 6026).
    M,
}

/// T1, T2, T4 and the proxy's Timer C.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerConfig {
    /// RTT estimate (default 500 ms).
    pub t1: Duration,
    /// Maximum retransmit interval for non-INVITE requests and INVITE responses (default 4 s).
    pub t2: Duration,
    /// Maximum duration a message remains in the network (default 5 s).
    pub t4: Duration,
    /// Proxy INVITE timeout after a provisional response (default 3 min, §16.6 step 11).
    pub timer_c: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        Self {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            timer_c: Duration::from_secs(180),
        }
    }
}

impl TimerConfig {
    /// 64 × T1: timers B, F, H, J, L, M.
    pub fn t1x64(&self) -> Duration {
        self.t1.saturating_mul(64)
    }

    /// Timer D: at least 32 s on unreliable transports, zero on reliable ones.
    pub fn timer_d(&self, reliable: bool) -> Duration {
        if reliable {
            Duration::ZERO
        } else {
            Duration::from_secs(32).max(self.t1x64())
        }
    }
}

/// Timers a machine wants armed after an event (at most two at a time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Arm(pub [Option<(TimerName, Instant)>; 2]);

impl Arm {
    /// Nothing to arm.
    pub const NONE: Self = Self([None, None]);

    fn one(name: TimerName, at: Instant) -> Self {
        Self([Some((name, at)), None])
    }

    fn two(a: (TimerName, Instant), b: (TimerName, Instant)) -> Self {
        Self([Some(a), Some(b)])
    }

    /// The timers to arm.
    pub fn iter(&self) -> impl Iterator<Item = (TimerName, Instant)> + '_ {
        self.0.iter().flatten().copied()
    }
}

/// What the owner of a transaction must do after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing (absorbed, or a stale timer).
    None,
    /// Client: send the request again.
    RetransmitRequest,
    /// Server: send the last response again.
    RetransmitResponse,
    /// Client: pass this response up to the transaction user.
    PassResponse,
    /// Client INVITE: send an ACK for the non-2xx final response, then pass it up.
    AckAndPass,
    /// Client INVITE: a retransmission of the final non-2xx: send the ACK again, pass nothing up.
    Ack,
    /// Client: the transaction timed out (Timer B or F): tell the user (as a 408).
    Timeout,
    /// Server: the transaction gave up waiting for the ACK (Timer H).
    AckTimeout,
    /// Server: a request (retransmission) arrived that the user must see (ACK of a 2xx in Accepted…).
    PassRequest,
    /// The transaction is over: free it.
    Terminate,
}

/// Is this a provisional (1xx), success (2xx) or other final response?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// 100–199.
    Provisional,
    /// 200–299.
    Success,
    /// 300–699.
    Failure,
}

impl Class {
    /// The class of a status code.
    pub fn of(code: u16) -> Self {
        match code {
            0..=199 => Self::Provisional,
            200..=299 => Self::Success,
            _ => Self::Failure,
        }
    }
}

/// Checks that a firing timer is the one armed now: `armed` is the deadline
/// the machine stored for it.
fn is_armed(armed: Option<Instant>, at: Instant) -> bool {
    armed == Some(at)
}
