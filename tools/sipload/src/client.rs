//! The client engine: starts calls at the target rate and runs each one's
//! transactions (RFC 3261 §17.1) with their retransmission timers.
//!
//! ```text
//! call:      Calling ──1xx──► Proceeding ──2xx──► (ACK) ─► Holding ──hold──► ByeTrying ──2xx──► done
//!              │  Timer A: T1, 2T1, 4T1…   │                                │ Timer E: T1…T2
//!              └─ Timer B (64*T1) / 3xx–6xx (ACKed, §17.1.1.3) ─► failed     └─ Timer F ─► failed
//! non-INVITE (REGISTER, MESSAGE, OPTIONS, PUBLISH): Trying ──1xx──► Proceeding ──2xx──► done
//!              Timer E: T1 doubling, capped at T2 (T2 once Proceeding); Timer F (64*T1) ─► failed
//! PUBLISH (RFC 3903): initial when no SIP-ETag is known for the presentity, else a
//!              modify with SIP-If-Match; the 2xx's SIP-ETag is kept per presentity
//! SUBSCRIBE (RFC 6665): a non-INVITE transaction whose 2xx leaves the slot Subscribed
//!              (held, not in flight): NOTIFYs in it (To tag = our key) are answered
//!              200 and counted (the first of each apart from the later ones, a
//!              retransmission by its CSeq); `Subscription-State: terminated` ends it
//! 401/407 (with --password, once per transaction): answered with credentials, CSeq+1, new branch
//! ```
//! A call's state is a slot in a table; its key (slot and generation) is in
//! the branch, the Call-ID and the From tag ([`crate::id`]), so a response
//! finds its call without a lookup. Route set (§12.1.2): the 2xx's
//! Record-Route reversed; ACK and BYE carry it as Route headers and go to
//! the remote Contact (loose routing) — all via the configured target.
//!
//! Every message is a [`Template`] render: no allocation per call once the
//! table has grown to the peak in flight.

use sipedge::sip::{response, Contact, HeaderName, Message, Method, NameAddr, ResponseSpec, Uri};

use crate::digest;
use crate::id::CallKey;
use crate::net::RawAddr;
use crate::stats::{ClientStats, Failure, Kind};
use crate::stream::Tx;
use crate::template::{Ctx, Template, W};
use crate::wheel::{Entry, Owner, Wheel};

/// What the engine sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// INVITE dialog with BYE.
    Call,
    /// One non-INVITE request (REGISTER, MESSAGE, OPTIONS, PUBLISH).
    Single(Kind),
    /// SUBSCRIBE, then the subscription is held and its NOTIFYs answered.
    Subscribe,
}

/// The engine's compiled messages.
pub struct Templates {
    /// The first request (INVITE, REGISTER, MESSAGE or OPTIONS).
    pub initial: Template,
    /// The Request-URI of the first request (for the digest-uri).
    pub initial_ruri: Template,
    /// Method of the first request.
    pub method: Method,
    /// ACK for a 2xx (in-dialog: {ruri} {route} {totag}).
    pub ack_2xx: Template,
    /// ACK for a non-2xx final (same branch as the INVITE; {totag}).
    pub ack_non2xx: Template,
    /// BYE (in-dialog).
    pub bye: Template,
}

/// The rate schedule of one engine on one thread.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Calls per second on this thread.
    pub rate: f64,
    /// Ramp, µs.
    pub ramp_us: f64,
    /// Generation time, µs.
    pub duration_us: u64,
    /// Most calls on this thread.
    pub count: u64,
    /// Most in flight on this thread.
    pub max_inflight: u32,
}

impl Schedule {
    /// Calls due by `t` µs after the start (linear ramp, then flat).
    fn due(&self, t: u64) -> u64 {
        let t = t as f64;
        let n = if t < self.ramp_us {
            self.rate * t * t / (2.0 * self.ramp_us * 1e6)
        } else {
            self.rate * (t - self.ramp_us / 2.0) / 1e6
        };
        (n.max(0.0) as u64).min(self.count)
    }

    /// When call number `n` (0-based) is due, µs after the start.
    fn at(&self, n: u64) -> u64 {
        let n = (n + 1) as f64;
        let ramp_calls = self.rate * self.ramp_us / 2e6;
        let t = if n <= ramp_calls && self.ramp_us > 0.0 {
            (2.0 * self.ramp_us * 1e6 * n / self.rate).sqrt()
        } else {
            n * 1e6 / self.rate + self.ramp_us / 2.0
        };
        t.ceil() as u64
    }
}

/// Static setup of one engine.
pub struct Setup {
    /// Engine index (0: the load, 1: the UAS's registrations).
    pub index: u8,
    /// Worker thread.
    pub thread: u8,
    /// Worker count (users are dealt round-robin across threads).
    pub threads: u32,
    /// Flow.
    pub flow: Flow,
    /// Where every request goes.
    pub dest: RawAddr,
    /// Socket index in the worker.
    pub sock: usize,
    /// T1, µs.
    pub t1: u64,
    /// T2, µs.
    pub t2: u64,
    /// A reliable (stream) transport: no retransmissions, only Timer B/F
    /// (RFC 3261 §17.1.1.2, §17.1.2.2).
    pub reliable: bool,
    /// Hold, µs.
    pub hold: u64,
    /// Users.
    pub users: u32,
    /// Presentities (`{pres}`: index i mod this).
    pub presentities: u32,
    /// Subscribe: the run ends once this many NOTIFYs beyond each
    /// subscription's first arrived (else `hold` after the last was established).
    pub expect_notifies: Option<u64>,
    /// Publish: SIP-ETags to start from, by presentity index.
    pub etags_in: Option<Vec<(u32, String)>>,
    /// Publish: where to write the last SIP-ETag of each presentity at the end.
    pub etags_out: Option<std::path::PathBuf>,
    /// User name prefix.
    pub user_prefix: String,
    /// Password (answers challenges).
    pub password: Option<Vec<u8>>,
    /// Messages.
    pub templates: Templates,
    /// Schedule.
    pub schedule: Schedule,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Free,
    /// Non-INVITE request sent, no response yet (BYE included).
    Trying,
    /// Non-INVITE request got a 1xx.
    Proceeding,
    /// INVITE sent, no response yet.
    Calling,
    /// INVITE got a 1xx.
    InviteProceeding,
    /// 2xx ACKed, waiting for the hold time.
    Holding,
    /// SUBSCRIBE answered 2xx: the subscription is held (not in flight).
    Subscribed,
}

/// Branch digits of a call's transactions.
const K_INITIAL: u8 = 0; // +1 with credentials
const K_BYE: u8 = 2; // +1 with credentials
const K_ACK: u8 = 4;

#[derive(Debug, Clone, Copy)]
struct Slot {
    gen: u32,
    state: State,
    user: u32,
    /// Presentity index.
    pres: u32,
    /// NOTIFYs received in the subscription.
    notifies: u32,
    /// CSeq of the last NOTIFY (a repeat is a retransmission).
    notify_cseq: u32,
    /// Publish: the request carries SIP-If-Match (a modify).
    modify: bool,
    /// Branch digit of the transaction in progress.
    k: u8,
    /// Branch digit of the INVITE that got the 2xx (to re-ACK retransmitted 2xx).
    invite_k: u8,
    /// CSeq of the transaction in progress.
    cseq: u32,
    /// CSeq of the INVITE (the ACK's).
    invite_cseq: u32,
    /// First send of the call (latency start), µs.
    t_start: u64,
    /// First send of the transaction in progress, µs.
    t_txn: u64,
    /// Current retransmission interval, µs.
    interval: u64,
    /// Deadline of the armed timer (entries with another deadline are stale).
    timer_at: u64,
    /// The transaction in progress carries credentials.
    authed: bool,
    /// Ringing latency recorded.
    rang: bool,
    /// The call is a dialog and its BYE is the transaction in progress.
    in_bye: bool,
}

impl Slot {
    const EMPTY: Self = Self {
        gen: 0,
        state: State::Free,
        user: 0,
        pres: 0,
        notifies: 0,
        notify_cseq: 0,
        modify: false,
        k: 0,
        invite_k: 0,
        cseq: 0,
        invite_cseq: 0,
        t_start: 0,
        t_txn: 0,
        interval: 0,
        timer_at: 0,
        authed: false,
        rang: false,
        in_bye: false,
    };
}

/// Dialog data of a call (after its 2xx): bytes of the remote tag, the
/// remote target and the Route lines, in one reused buffer.
#[derive(Debug, Default)]
struct Dialog {
    buf: Vec<u8>,
    tag: (u16, u16),
    target: (u16, u16),
    route: (u16, u16),
    /// Credentials line for the BYE, if challenged.
    auth: Vec<u8>,
}

impl Dialog {
    fn part(&self, r: (u16, u16)) -> &[u8] {
        self.buf
            .get(usize::from(r.0)..usize::from(r.1))
            .unwrap_or_default()
    }
}

/// Largest dialog data (tag, target and route set) a call may carry.
const DIALOG_MAX: usize = 2048;
/// Most Record-Route values honoured.
const MAX_RR: usize = 16;

/// The engine.
pub struct Client {
    /// Setup.
    pub setup: Setup,
    slots: Vec<Slot>,
    dialogs: Vec<Dialog>,
    /// Auth lines of initial requests, per slot (empty when not challenged).
    auths: Vec<Vec<u8>>,
    free: Vec<u32>,
    inflight: u32,
    /// When generation started, µs (None: not yet enabled).
    start: Option<u64>,
    started: u64,
    /// Last call start time, µs.
    last_start: u64,
    /// Publish: the last SIP-ETag of each presentity (empty: none yet).
    etags: Vec<Vec<u8>>,
    /// Subscribe: subscriptions established and not terminated.
    active: u64,
    /// Subscribe: NOTIFYs beyond each subscription's first.
    updates: u64,
    /// Subscribe: when every subscription had its final response (the hold starts).
    held_since: Option<u64>,
}

impl Client {
    /// An engine, not yet started.
    pub fn new(mut setup: Setup) -> Self {
        let mut etags = Vec::new();
        if setup.flow == Flow::Single(Kind::Publish) {
            etags.resize(setup.presentities as usize, Vec::new());
            for (i, tag) in setup.etags_in.take().unwrap_or_default() {
                if let Some(e) = etags.get_mut(i as usize) {
                    *e = tag.into_bytes();
                }
            }
        }
        Self {
            setup,
            slots: Vec::new(),
            dialogs: Vec::new(),
            auths: Vec::new(),
            free: Vec::new(),
            inflight: 0,
            start: None,
            started: 0,
            last_start: 0,
            etags,
            active: 0,
            updates: 0,
            held_since: None,
        }
    }

    /// Subscribe: subscriptions established and not terminated.
    pub fn active(&self) -> u64 {
        self.active
    }

    /// True while the load engine, its requests all answered, still holds
    /// its subscriptions (scenario subscribe): until `expect_notifies`
    /// updates arrived, or for `hold` after the last subscription was answered.
    pub fn holding(&mut self, now: u64) -> bool {
        if self.setup.flow != Flow::Subscribe {
            return false;
        }
        if self
            .setup
            .expect_notifies
            .is_some_and(|n| self.updates >= n)
        {
            return false;
        }
        let since = match self.held_since {
            Some(t) => t,
            None => {
                // Scripts wait for this line before they change the presentities' state.
                eprintln!(
                    "sipload: subscriptions established: {} active (thread {})",
                    self.active, self.setup.thread
                );
                self.held_since = Some(now);
                now
            }
        };
        now < since + self.setup.hold
    }

    /// Publish: writes `index etag` for every presentity with a SIP-ETag to --etags-out.
    pub fn save_etags(&self) -> std::io::Result<()> {
        let Some(path) = &self.setup.etags_out else {
            return Ok(());
        };
        let mut out = Vec::with_capacity(self.etags.len() * 32);
        for (i, e) in self.etags.iter().enumerate() {
            if !e.is_empty() {
                out.extend_from_slice(i.to_string().as_bytes());
                out.push(b' ');
                out.extend_from_slice(e);
                out.push(b'\n');
            }
        }
        std::fs::write(path, out)
    }

    /// Starts generating at `now`.
    pub fn enable(&mut self, now: u64) {
        if self.start.is_none() {
            self.start = Some(now);
        }
    }

    /// Calls in flight.
    pub fn inflight(&self) -> u32 {
        self.inflight
    }

    /// True when no more calls will start.
    pub fn generation_over(&self, now: u64) -> bool {
        match self.start {
            None => false,
            Some(s) => {
                self.started >= self.setup.schedule.count
                    || now.saturating_sub(s) >= self.setup.schedule.duration_us
            }
        }
    }

    /// True when generation is over and nothing is in flight.
    pub fn done(&self, now: u64) -> bool {
        self.generation_over(now) && self.inflight == 0
    }

    /// µs of generation: until the last call started (or was scheduled to),
    /// at most the duration.
    pub fn generation_us(&self) -> u64 {
        match self.start {
            Some(s) if self.started > 0 => {
                let sched = self.setup.schedule.at(self.started - 1);
                self.last_start
                    .saturating_sub(s)
                    .max(sched)
                    .min(self.setup.schedule.duration_us)
                    .max(1)
            }
            _ => 0,
        }
    }

    /// When the next call is due (µs), if generation goes on.
    pub fn next_due(&self, now: u64) -> Option<u64> {
        let s = self.start?;
        if self.generation_over(now) || self.inflight >= self.setup.schedule.max_inflight {
            return None;
        }
        Some(s + self.setup.schedule.at(self.started))
    }

    /// Starts the calls due by `now` (at most `budget`).
    pub fn generate(
        &mut self,
        now: u64,
        budget: usize,
        tx: &mut Tx,
        wheel: &mut Wheel,
        st: &mut ClientStats,
    ) {
        let Some(s) = self.start else {
            return;
        };
        if self.generation_over(now) {
            return;
        }
        let due = self.setup.schedule.due(now - s);
        let mut n = 0;
        while self.started < due && n < budget && self.inflight < self.setup.schedule.max_inflight {
            self.start_call(now, tx, wheel, st);
            n += 1;
        }
    }

    fn alloc(&mut self) -> Option<u32> {
        if let Some(i) = self.free.pop() {
            return Some(i);
        }
        if self.slots.len() >= 0xff_ffff {
            return None;
        }
        self.slots.push(Slot::EMPTY);
        self.dialogs.push(Dialog::default());
        self.auths.push(Vec::new());
        Some((self.slots.len() - 1) as u32)
    }

    fn release(&mut self, i: u32) {
        if let Some(s) = self.slots.get_mut(i as usize) {
            if s.state != State::Free {
                s.state = State::Free;
                s.timer_at = 0;
                self.inflight -= 1;
                self.free.push(i);
            }
        }
    }

    fn key(&self, i: u32, gen: u32) -> [u8; 17] {
        let mut b = [b'0'; 17];
        let _ = CallKey {
            client: self.setup.index,
            thread: self.setup.thread,
            slot: i,
            gen,
        }
        .write(&mut b);
        b
    }

    /// Where call slot `i`'s requests go: the target; over a stream
    /// transport, on one connection per call (so a UAS with one thread per
    /// connection sees the whole dialog).
    fn dest(&self, i: u32) -> RawAddr {
        if self.setup.reliable {
            RawAddr::spread(i)
        } else {
            self.setup.dest
        }
    }

    /// Time from sending a request to its first timer: T1 (Timer A/E), or
    /// over a reliable transport straight to Timer B/F.
    fn first_wait(&self) -> u64 {
        if self.setup.reliable {
            64 * self.setup.t1
        } else {
            self.setup.t1
        }
    }

    fn arm(&mut self, i: u32, at: u64, wheel: &mut Wheel) {
        if let Some(s) = self.slots.get_mut(i as usize) {
            s.timer_at = at;
            wheel.insert(Entry {
                at,
                slot: i,
                gen: s.gen,
                owner: Owner::Client(self.setup.index),
            });
        }
    }

    fn start_call(&mut self, now: u64, tx: &mut Tx, wheel: &mut Wheel, st: &mut ClientStats) {
        let seq = self.started;
        self.started += 1;
        self.last_start = now;
        st.attempted += 1;
        st.first_start_us.get_or_insert(now);
        let Some(i) = self.alloc() else {
            st.fail(Failure::SendError);
            return;
        };
        self.inflight += 1;
        let setup = &self.setup;
        // Users are dealt round-robin over all threads: thread t takes t, t+T, t+2T…
        let global = seq * u64::from(setup.threads) + u64::from(setup.thread);
        let user = (global % u64::from(setup.users)) as u32;
        let pres = (global % u64::from(setup.presentities)) as u32;
        let modify = self.etags.get(pres as usize).is_some_and(|e| !e.is_empty());
        let invite = setup.flow == Flow::Call;
        let Some(slot) = self.slots.get_mut(i as usize) else {
            return;
        };
        slot.gen = slot.gen.wrapping_add(1);
        *slot = Slot {
            gen: slot.gen,
            state: if invite {
                State::Calling
            } else {
                State::Trying
            },
            user,
            pres,
            notifies: 0,
            notify_cseq: 0,
            modify,
            k: K_INITIAL,
            invite_k: K_INITIAL,
            cseq: 1,
            invite_cseq: 1,
            t_start: now,
            t_txn: now,
            interval: setup.t1,
            timer_at: 0,
            authed: false,
            rang: false,
            in_bye: false,
        };
        if let Some(a) = self.auths.get_mut(i as usize) {
            a.clear();
        }
        if !self.send_initial(i, tx) {
            st.fail(Failure::SendError);
            self.release(i);
            return;
        }
        self.arm(i, now + self.first_wait(), wheel);
    }

    /// Sends (or re-sends) the first request of the call.
    fn send_initial(&self, i: u32, tx: &mut Tx) -> bool {
        let Some(s) = self.slots.get(i as usize) else {
            return false;
        };
        let key = self.key(i, s.gen);
        let auth = self
            .auths
            .get(i as usize)
            .map(Vec::as_slice)
            .unwrap_or_default();
        // A modifying PUBLISH names the publication it refreshes (RFC 3903 §4.4).
        let mut extra = [0u8; 256];
        let mut n = 0;
        if s.modify {
            if let Some(tag) = self.etags.get(s.pres as usize) {
                let mut w = W {
                    out: &mut extra,
                    n: 0,
                };
                if w.put(b"SIP-If-Match: ").is_none()
                    || w.put(tag).is_none()
                    || w.put(b"\r\n").is_none()
                {
                    return false;
                }
                n = w.n;
            }
        }
        let ctx = Ctx {
            key: &key,
            k: s.k,
            cseq: s.cseq,
            user: s.user,
            pres: s.pres,
            auth,
            extra: extra.get(..n).unwrap_or_default(),
            ..Ctx::default()
        };
        tx.push(&self.dest(i), |buf| {
            self.setup.templates.initial.render(buf, &ctx)
        })
    }

    /// Sends the ACK for a 2xx, or the BYE (in-dialog requests).
    fn send_in_dialog(&self, i: u32, bye: bool, tx: &mut Tx) -> bool {
        let (Some(s), Some(d)) = (self.slots.get(i as usize), self.dialogs.get(i as usize)) else {
            return false;
        };
        let key = self.key(i, s.gen);
        let ctx = Ctx {
            key: &key,
            k: if bye { s.k } else { K_ACK },
            cseq: if bye { s.cseq } else { s.invite_cseq },
            user: s.user,
            pres: s.pres,
            ruri: d.part(d.target),
            to_tag: d.part(d.tag),
            route: d.part(d.route),
            auth: if bye { &d.auth } else { b"" },
            extra: b"",
        };
        let t = if bye {
            &self.setup.templates.bye
        } else {
            &self.setup.templates.ack_2xx
        };
        tx.push(&self.dest(i), |buf| t.render(buf, &ctx))
    }

    /// Sends the ACK for a non-2xx final response to INVITE with branch digit `k` (§17.1.1.3).
    fn send_ack_non2xx(&self, i: u32, k: u8, cseq: u32, to_tag: &[u8], tx: &mut Tx) -> bool {
        let Some(s) = self.slots.get(i as usize) else {
            return false;
        };
        let key = self.key(i, s.gen);
        let ctx = Ctx {
            key: &key,
            k,
            cseq,
            user: s.user,
            to_tag,
            ..Ctx::default()
        };
        tx.push(&self.dest(i), |buf| {
            self.setup.templates.ack_non2xx.render(buf, &ctx)
        })
    }

    /// A timer of slot `e.slot` fired.
    pub fn on_timer(
        &mut self,
        now: u64,
        e: Entry,
        tx: &mut Tx,
        wheel: &mut Wheel,
        st: &mut ClientStats,
    ) {
        let i = e.slot;
        let Some(s) = self.slots.get(i as usize).copied() else {
            return;
        };
        if s.gen != e.gen || s.timer_at != e.at || s.state == State::Free {
            return;
        }
        let timeout = s.t_txn + 64 * self.setup.t1;
        match s.state {
            State::Free | State::Subscribed => {}
            State::Holding => {
                self.begin_bye(now, i, tx, wheel, st);
            }
            State::InviteProceeding => {
                st.fail(Failure::Timeout);
                self.release(i);
            }
            State::Calling | State::Trying | State::Proceeding => {
                if now >= timeout {
                    st.fail(Failure::Timeout);
                    self.release(i);
                    return;
                }
                if self.setup.reliable {
                    self.arm(i, timeout, wheel);
                    return;
                }
                let sent = if s.in_bye {
                    self.send_in_dialog(i, true, tx)
                } else {
                    self.send_initial(i, tx)
                };
                if sent {
                    st.retransmissions += 1;
                }
                // Timer A doubles without a cap; E doubles up to T2, and is T2 once Proceeding.
                let interval = match s.state {
                    State::Calling => s.interval * 2,
                    State::Proceeding => self.setup.t2,
                    _ => (s.interval * 2).min(self.setup.t2),
                };
                if let Some(slot) = self.slots.get_mut(i as usize) {
                    slot.interval = interval;
                }
                self.arm(i, (now + interval).min(timeout), wheel);
            }
        }
    }

    fn begin_bye(
        &mut self,
        now: u64,
        i: u32,
        tx: &mut Tx,
        wheel: &mut Wheel,
        st: &mut ClientStats,
    ) {
        let t1 = self.setup.t1;
        if let Some(s) = self.slots.get_mut(i as usize) {
            s.state = State::Trying;
            s.in_bye = true;
            s.k = K_BYE;
            s.cseq = s.invite_cseq + 1;
            s.t_txn = now;
            s.interval = t1;
            s.authed = false;
        }
        if let Some(d) = self.dialogs.get_mut(i as usize) {
            d.auth.clear();
        }
        if !self.send_in_dialog(i, true, tx) {
            st.fail(Failure::SendError);
            self.release(i);
            return;
        }
        self.arm(i, now + self.first_wait(), wheel);
    }

    /// A response whose branch decoded to `key`/`k` arrived.
    pub fn on_response(
        &mut self,
        now: u64,
        msg: &Message<'_>,
        (key, k): (CallKey, u8),
        tx: &mut Tx,
        wheel: &mut Wheel,
        st: &mut ClientStats,
    ) {
        let code = msg.status().unwrap_or(0);
        let method = msg.cseq().method;
        let i = key.slot;
        let live = self
            .slots
            .get(i as usize)
            .copied()
            .filter(|s| s.gen == key.gen && s.state != State::Free);
        let Some(s) = live else {
            // A late retransmission of a final response: ACK a non-2xx to
            // INVITE statelessly so the server stops retransmitting.
            if method == Method::Invite && code >= 300 {
                ack_from_response(msg, &self.dest(i), tx);
            }
            st.stray_responses += 1;
            return;
        };
        if s.state == State::Subscribed {
            // A retransmitted 2xx to a SUBSCRIBE already answered.
            st.stray_responses += 1;
            return;
        }
        let invite_txn = matches!(s.state, State::Calling | State::InviteProceeding);
        if k != s.k || (method == Method::Invite) != invite_txn || s.state == State::Holding {
            // Not the transaction in progress: a retransmitted 2xx to the
            // INVITE (its ACK was lost: send it again), a retransmitted
            // non-2xx final (ACK it again), or a stray.
            let dialog = s.in_bye || s.state == State::Holding;
            if method == Method::Invite && k == s.invite_k && (200..300).contains(&code) && dialog {
                if self.send_in_dialog(i, false, tx) {
                    st.retransmissions += 1;
                }
            } else if method == Method::Invite && code >= 300 {
                ack_from_response(msg, &self.dest(i), tx);
                st.stray_responses += 1;
            } else {
                st.stray_responses += 1;
            }
            return;
        }
        let invite = method == Method::Invite;
        match code {
            100..=199 => {
                if invite {
                    if (180..=183).contains(&code) && !s.rang {
                        st.record(Kind::Ringing, now - s.t_start);
                    }
                    if let Some(slot) = self.slots.get_mut(i as usize) {
                        slot.rang |= (180..=183).contains(&code);
                        if slot.state == State::Calling {
                            slot.state = State::InviteProceeding;
                            // Stop retransmitting; wait for the final response until Timer B.
                            let at = slot.t_txn + 64 * self.setup.t1;
                            self.arm(i, at, wheel);
                        }
                    }
                } else if let Some(slot) = self.slots.get_mut(i as usize) {
                    slot.state = State::Proceeding;
                }
            }
            200..=299 if invite => self.on_invite_2xx(now, i, msg, tx, wheel, st),
            200..=299 if self.setup.flow == Flow::Subscribe => {
                st.record(Kind::Subscribe, now - s.t_start);
                st.succeeded += 1;
                self.active += 1;
                self.inflight -= 1;
                if let Some(slot) = self.slots.get_mut(i as usize) {
                    slot.state = State::Subscribed;
                    slot.timer_at = 0;
                }
            }
            200..=299 => {
                if s.in_bye {
                    st.record(Kind::Bye, now - s.t_txn);
                } else if self.setup.flow == Flow::Single(Kind::Publish) {
                    let kind = if s.modify {
                        Kind::PublishModify
                    } else {
                        Kind::Publish
                    };
                    st.record(kind, now - s.t_start);
                    // RFC 3903 §11.3: the entity-tag of the publication, for the next modify.
                    if let (Some(e), Some(tag)) = (
                        self.etags.get_mut(s.pres as usize),
                        msg.header(HeaderName::SipETag),
                    ) {
                        e.clear();
                        e.extend_from_slice(sipedge::sip::scan::trim(tag));
                    }
                } else if let Flow::Single(kind) = self.setup.flow {
                    st.record(kind, now - s.t_start);
                }
                st.succeeded += 1;
                self.release(i);
            }
            401 | 407 if !s.authed && self.setup.password.is_some() => {
                let to_tag = msg.to().ok().and_then(|t| t.tag()).unwrap_or_default();
                if invite {
                    self.send_ack_non2xx(i, s.k, s.cseq, to_tag, tx);
                }
                if self.answer_challenge(now, i, msg, code == 407, tx, wheel) {
                    st.auth_challenges += 1;
                } else {
                    st.fail(Failure::Unexpected);
                    self.release(i);
                }
            }
            _ => {
                if invite {
                    let to_tag = msg.to().ok().and_then(|t| t.tag()).unwrap_or_default();
                    self.send_ack_non2xx(i, s.k, s.cseq, to_tag, tx);
                }
                st.fail(if code >= 300 {
                    Failure::Status(code)
                } else {
                    Failure::Unexpected
                });
                self.release(i);
            }
        }
    }

    fn on_invite_2xx(
        &mut self,
        now: u64,
        i: u32,
        msg: &Message<'_>,
        tx: &mut Tx,
        wheel: &mut Wheel,
        st: &mut ClientStats,
    ) {
        let Some(s) = self.slots.get(i as usize).copied() else {
            return;
        };
        st.record(Kind::CallSetup, now - s.t_start);
        let ok = match self.dialogs.get_mut(i as usize) {
            Some(d) => store_dialog(d, msg).is_some(),
            None => false,
        };
        if !ok {
            // Without a To tag or a Contact there is no dialog to ACK and BYE in.
            st.fail(Failure::Unexpected);
            self.release(i);
            return;
        }
        if let Some(slot) = self.slots.get_mut(i as usize) {
            slot.invite_k = s.k;
            slot.invite_cseq = s.cseq;
            slot.state = State::Holding;
        }
        if !self.send_in_dialog(i, false, tx) {
            st.fail(Failure::SendError);
            self.release(i);
            return;
        }
        if self.setup.hold == 0 {
            self.begin_bye(now, i, tx, wheel, st);
        } else {
            let at = now + self.setup.hold;
            self.arm(i, at, wheel);
        }
    }

    /// Re-sends the transaction in progress with credentials for the challenge in `msg`.
    fn answer_challenge(
        &mut self,
        now: u64,
        i: u32,
        msg: &Message<'_>,
        proxy: bool,
        tx: &mut Tx,
        wheel: &mut Wheel,
    ) -> bool {
        let Some(password) = self.setup.password.as_deref() else {
            return false;
        };
        let name = if proxy {
            HeaderName::ProxyAuthenticate
        } else {
            HeaderName::WwwAuthenticate
        };
        let Some(ch) = msg.values_raw_challenge(name) else {
            return false;
        };
        let Some(s) = self.slots.get(i as usize).copied() else {
            return false;
        };
        let key = self.key(i, s.gen);
        let mut user = [0u8; 64];
        let Some(ulen) = crate::template::user_name(&self.setup.user_prefix, s.user, &mut user)
        else {
            return false;
        };
        let user = user.get(..ulen).unwrap_or_default();
        let method = if s.in_bye {
            &b"BYE"[..]
        } else {
            self.setup.templates.method.as_str().as_bytes()
        };
        // The digest-uri is the Request-URI of the request being answered.
        let mut ruri_buf = [0u8; 512];
        let ruri: &[u8] = if s.in_bye {
            match self.dialogs.get(i as usize) {
                Some(d) => {
                    let t = d.part(d.target);
                    let n = t.len().min(ruri_buf.len());
                    if let Some(dst) = ruri_buf.get_mut(..n) {
                        dst.copy_from_slice(t.get(..n).unwrap_or_default());
                    }
                    ruri_buf.get(..n).unwrap_or_default()
                }
                None => return false,
            }
        } else {
            let ctx = Ctx {
                key: &key,
                user: s.user,
                ..Ctx::default()
            };
            match self
                .setup
                .templates
                .initial_ruri
                .render(&mut ruri_buf, &ctx)
            {
                Some(n) => ruri_buf.get(..n).unwrap_or_default(),
                None => return false,
            }
        };
        let mut line = [0u8; 1024];
        let answer = digest::Answer {
            proxy,
            username: user,
            password,
            method,
            uri: ruri,
            cnonce: key.get(1..).unwrap_or_default(),
        };
        let Some(n) = digest::write_credentials(&mut line, &ch, &answer) else {
            return false;
        };
        let line = line.get(..n).unwrap_or_default();
        let t1 = self.setup.t1;
        if s.in_bye {
            if let Some(d) = self.dialogs.get_mut(i as usize) {
                d.auth.clear();
                d.auth.extend_from_slice(line);
            }
        } else if let Some(a) = self.auths.get_mut(i as usize) {
            a.clear();
            a.extend_from_slice(line);
        }
        if let Some(slot) = self.slots.get_mut(i as usize) {
            slot.authed = true;
            slot.k += 1;
            slot.cseq += 1;
            slot.t_txn = now;
            slot.interval = t1;
            slot.state = if s.in_bye || self.setup.flow != Flow::Call {
                State::Trying
            } else {
                State::Calling
            };
        }
        let sent = if s.in_bye {
            self.send_in_dialog(i, true, tx)
        } else {
            self.send_initial(i, tx)
        };
        if sent {
            self.arm(i, now + self.first_wait(), wheel);
        }
        sent
    }

    /// A request arrived on this engine's socket (scenario subscribe: a
    /// NOTIFY in one of our subscriptions). Answered at once, statelessly:
    /// 200 to a NOTIFY of a live subscription, 481 to one of none (RFC 6665
    /// §4.1.3), 405 to anything else.
    pub fn on_request(
        &mut self,
        now: u64,
        msg: &Message<'_>,
        src: &RawAddr,
        tx: &mut Tx,
        st: &mut ClientStats,
    ) {
        if msg.method() != Method::Notify {
            st.notify.other_requests += 1;
            reply(msg, src, 405, "Method Not Allowed", tx);
            return;
        }
        // Our From tag is the subscription's key; in the NOTIFY it is the To tag.
        let live = msg
            .to()
            .ok()
            .and_then(|t| t.tag())
            .and_then(CallKey::read)
            .filter(|k| k.client == self.setup.index && k.thread == self.setup.thread)
            .and_then(|k| {
                self.slots.get(k.slot as usize).and_then(|s| {
                    (s.gen == k.gen
                        && matches!(
                            s.state,
                            State::Trying | State::Proceeding | State::Subscribed
                        ))
                    .then_some(k.slot)
                })
            });
        let Some(i) = live else {
            st.notify.stray += 1;
            reply(msg, src, 481, "Subscription Does Not Exist", tx);
            return;
        };
        let cseq = msg.cseq().number;
        let terminated = msg.header(HeaderName::SubscriptionState).is_some_and(|v| {
            sipedge::sip::scan::trim(v)
                .get(..10)
                .is_some_and(|p| p.eq_ignore_ascii_case(b"terminated"))
        });
        let Some(slot) = self.slots.get_mut(i as usize) else {
            return;
        };
        if slot.notifies > 0 && slot.notify_cseq == cseq {
            // Our 200 was lost or late: the same NOTIFY again.
            st.notify.retransmissions += 1;
            reply(msg, src, 200, "OK", tx);
            return;
        }
        let first = slot.notifies == 0;
        slot.notifies = slot.notifies.saturating_add(1);
        slot.notify_cseq = cseq;
        st.notify.record(now, first);
        if !first {
            self.updates += 1;
        }
        reply(msg, src, 200, "OK", tx);
        if terminated {
            st.notify.terminated += 1;
            if slot.state == State::Subscribed {
                slot.state = State::Free;
                self.active -= 1;
                self.free.push(i);
            }
        }
    }

    /// Fails every call still in flight (the run is over); held
    /// subscriptions are not in flight.
    pub fn abandon_all(&mut self, st: &mut ClientStats) {
        for i in 0..self.slots.len() as u32 {
            if self
                .slots
                .get(i as usize)
                .is_some_and(|s| !matches!(s.state, State::Free | State::Subscribed))
            {
                st.fail(Failure::Abandoned);
                self.release(i);
            }
        }
    }
}

/// Answers a request statelessly: its Via, From, To (tagged already in a
/// NOTIFY), Call-ID and CSeq copied.
fn reply(msg: &Message<'_>, src: &RawAddr, code: u16, reason: &str, tx: &mut Tx) {
    let spec = ResponseSpec::new(code, reason);
    tx.push(src, |out| response(msg, &spec, out).ok());
}

/// Decodes the first Digest challenge of a header (helper trait on Message).
trait ChallengeExt<'buf> {
    fn values_raw_challenge(&self, name: HeaderName) -> Option<digest::Challenge<'buf>>;
}

impl<'buf> ChallengeExt<'buf> for Message<'buf> {
    fn values_raw_challenge(&self, name: HeaderName) -> Option<digest::Challenge<'buf>> {
        // A challenge value holds commas, so whole header lines are decoded.
        self.named(name)
            .find_map(|e| digest::Challenge::parse(e.value.of(self.buf())))
    }
}

/// Stores the dialog of a 2xx: remote tag, remote target, route set
/// (§12.1.2: Record-Route reversed; strict routing handled per §12.2.1.1).
fn store_dialog(d: &mut Dialog, msg: &Message<'_>) -> Option<()> {
    let to = msg.to().ok()?;
    let tag = to.tag()?;
    let contact = match Contact::parse(msg.header(HeaderName::Contact)?).ok()? {
        Contact::Addr(na) => na.uri_bytes,
        Contact::Star => return None,
    };
    let mut rr: [&[u8]; MAX_RR] = [b""; MAX_RR];
    let mut n = 0;
    for v in msg.values(HeaderName::RecordRoute) {
        *rr.get_mut(n)? = v;
        n += 1;
    }
    d.buf.clear();
    d.buf.resize(DIALOG_MAX, 0);
    let mut w = W {
        out: &mut d.buf,
        n: 0,
    };
    w.put(tag)?;
    let tag_r = (0u16, w.n as u16);
    let routes = rr.get(..n)?;
    // The UAC's route set is the Record-Route list in reverse order.
    let first = routes.last().copied();
    let strict = match first {
        Some(f) => !NameAddr::parse(f)
            .ok()
            .and_then(|na| Uri::parse(na.uri_bytes).ok())
            .is_some_and(|u| u.is_loose_router()),
        None => false,
    };
    let target_start = w.n;
    if strict {
        // §12.2.1.1: the Request-URI is the first route's URI; the Contact goes last in the Route set.
        let na = NameAddr::parse(first?).ok()?;
        w.put(na.uri_bytes)?;
    } else {
        w.put(contact)?;
    }
    let target_r = (target_start as u16, w.n as u16);
    let route_start = w.n;
    let skip = usize::from(strict);
    let mut wrote = false;
    for v in routes.iter().rev().skip(skip) {
        w.put(if wrote { b", " } else { b"Route: " })?;
        w.put(sipedge::sip::scan::trim(v))?;
        wrote = true;
    }
    if strict {
        w.put(if wrote { b", <" } else { b"Route: <" })?;
        w.put(contact)?;
        w.put(b">")?;
        wrote = true;
    }
    if wrote {
        w.put(b"\r\n")?;
    }
    let route_r = (route_start as u16, w.n as u16);
    let len = w.n;
    d.buf.truncate(len);
    d.tag = tag_r;
    d.target = target_r;
    d.route = route_r;
    Some(())
}

/// ACK for a non-2xx final response to an INVITE of no live call, built
/// from the response itself (§17.1.1.3: top Via, From, To, Call-ID, CSeq
/// number; the Request-URI is taken from To, which matches ours).
fn ack_from_response(msg: &Message<'_>, dest: &RawAddr, tx: &mut Tx) {
    let Ok(to) = msg.to() else {
        return;
    };
    let Some(via) = msg.values(HeaderName::Via).next() else {
        return;
    };
    let buf = msg.buf();
    tx.push(dest, |out| {
        let mut w = W { out, n: 0 };
        w.put(b"ACK ")?;
        w.put(to.uri_bytes)?;
        w.put(b" SIP/2.0\r\nVia: ")?;
        w.put(via)?;
        w.put(b"\r\nMax-Forwards: 70\r\n")?;
        for e in msg.headers() {
            if matches!(
                e.name,
                HeaderName::From | HeaderName::To | HeaderName::CallId
            ) {
                w.put(e.line.of(buf))?;
            }
        }
        w.put(b"CSeq: ")?;
        w.dec(u64::from(msg.cseq().number))?;
        w.put(b" ACK\r\nContent-Length: 0\r\n\r\n")?;
        Some(w.n)
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use sipedge::sip::{parse, HeaderIndex};

    #[test]
    fn schedule_is_linear_after_ramp() {
        let s = Schedule {
            rate: 1000.0,
            ramp_us: 0.0,
            duration_us: 10_000_000,
            count: u64::MAX,
            max_inflight: 100,
        };
        assert_eq!(s.due(1_000_000), 1000);
        assert_eq!(s.at(0), 1000);
        assert_eq!(s.at(999), 1_000_000);
        let r = Schedule {
            ramp_us: 2_000_000.0,
            ..s.clone()
        };
        // Half the rate on average during the ramp.
        assert_eq!(r.due(2_000_000), 1000);
        assert_eq!(r.due(3_000_000), 2000);
        assert!(r.at(999) <= 2_000_000 && r.at(999) > 1_990_000);
        let c = Schedule { count: 5, ..s };
        assert_eq!(c.due(1_000_000), 5);
    }

    #[test]
    fn route_set_is_reversed_record_route() {
        let m = b"SIP/2.0 200 OK\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-sl000000000000000010\r\n\
Record-Route: <sip:p2.example.com;lr>\r\n\
Record-Route: <sip:p1.example.com;lr>, <sip:p0.example.com;lr>\r\n\
From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=xyz\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\
Contact: <sip:uas@10.0.0.9:5080>\r\nContent-Length: 0\r\n\r\n";
        let mut idx = HeaderIndex::default();
        let msg = parse(m, &mut idx).unwrap();
        let mut d = Dialog::default();
        store_dialog(&mut d, &msg).unwrap();
        assert_eq!(d.part(d.tag), b"xyz");
        assert_eq!(d.part(d.target), b"sip:uas@10.0.0.9:5080");
        assert_eq!(
            d.part(d.route),
            &b"Route: <sip:p0.example.com;lr>, <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n"[..]
        );
    }

    #[test]
    fn strict_router_takes_the_request_uri() {
        let m = b"SIP/2.0 200 OK\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-sl000000000000000010\r\n\
Record-Route: <sip:strict.example.com>\r\n\
From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=xyz\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\
Contact: <sip:uas@10.0.0.9>\r\nContent-Length: 0\r\n\r\n";
        let mut idx = HeaderIndex::default();
        let msg = parse(m, &mut idx).unwrap();
        let mut d = Dialog::default();
        store_dialog(&mut d, &msg).unwrap();
        assert_eq!(d.part(d.target), b"sip:strict.example.com");
        assert_eq!(d.part(d.route), b"Route: <sip:uas@10.0.0.9>\r\n");
    }

    #[test]
    fn no_contact_is_no_dialog() {
        let m = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=xyz\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n";
        let mut idx = HeaderIndex::default();
        let msg = parse(m, &mut idx).unwrap();
        assert!(store_dialog(&mut Dialog::default(), &msg).is_none());
    }
}
