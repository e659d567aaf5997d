//! The UAS: answers what the load sends, the way a registrar and a
//! user agent behind a proxy would.
//!
//! ```text
//! INVITE ─► 180 + 200 (Contact, SDP, Record-Route echoed: §12.1.1) ─► Answered
//!   Answered ──ACK──► Confirmed ──BYE──► 200, freed
//!   Answered: 2xx re-sent at T1, 2T1… ≤ T2 until ACK (§13.3.1.4); none by 64*T1: ack timeout
//!   INVITE retransmission (same Call-ID and branch): the last response again
//! BYE, OPTIONS, MESSAGE, REGISTER, INFO…: 200, built from the request alone,
//!   so a retransmission gets the same bytes back without any state (the To
//!   tag is a hash of Call-ID and From tag)
//! unknown methods: 501; ACKs that match nothing: dropped
//! --uas-auth: REGISTER without valid credentials ─► 401; INVITE/MESSAGE/OPTIONS ─► 407
//! ```
//! Dialog state lives in a table indexed by the To tag this UAS chose
//! ([`DialogKey`]); initial INVITEs are matched to their slot by a 64-bit
//! hash of Call-ID and branch (the only map, with integer keys).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use sipedge::sip::{response, HeaderName, Message, Method, ResponseSpec};

use crate::config::UasAuth;
use crate::digest;
use crate::id::{fnv1a, put_hex, DialogKey, KEY_HEX};
use crate::net::{RawAddr, TX_BUF};
use crate::stats::ServerStats;
use crate::stream::Tx;
use crate::template::W;
use crate::wheel::{Entry, Owner, Wheel};

/// The keys are already hashes: pass them through.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// Static setup of the UAS.
pub struct Setup {
    /// Worker thread.
    pub thread: u8,
    /// `Contact: <sip:uas@IP:PORT>\r\n`.
    pub contact: Vec<u8>,
    /// The SDP answer.
    pub sdp: Vec<u8>,
    /// T1, µs.
    pub t1: u64,
    /// T2, µs.
    pub t2: u64,
    /// Confirmed dialogs without BYE are dropped after this, µs.
    pub dialog_timeout: u64,
    /// Challenges.
    pub auth: Option<UasAuth>,
    /// Per-process secret mixed into nonces.
    pub secret: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Free,
    /// 200 sent, no ACK yet.
    Answered,
    /// ACK received.
    Confirmed,
}

struct Dlg {
    gen: u32,
    state: State,
    /// Key of the INVITE in the retransmission map.
    key: u64,
    /// Where the INVITE came from (and the 2xx goes).
    src: RawAddr,
    /// The 200 as sent, kept until the ACK (then back to the pool, so a
    /// long-held dialog costs no buffer).
    resp: Vec<u8>,
    /// When the 200 was first sent, µs.
    t_answer: u64,
    interval: u64,
    timer_at: u64,
}

/// The UAS.
pub struct Server {
    setup: Setup,
    dlgs: Vec<Dlg>,
    free: Vec<u32>,
    txns: HashMap<u64, u32, BuildHasherDefault<IdHasher>>,
    extra: Vec<u8>,
    /// Response buffers of dialogs not yet ACKed, reused.
    pool: Vec<Vec<u8>>,
    /// Requests answered (for the progress line).
    pub answered: u64,
}

impl Server {
    /// A UAS.
    pub fn new(setup: Setup) -> Self {
        Self {
            setup,
            dlgs: Vec::new(),
            free: Vec::new(),
            txns: HashMap::default(),
            extra: Vec::with_capacity(TX_BUF),
            pool: Vec::new(),
            answered: 0,
        }
    }

    /// A request arrived from `src`.
    pub fn on_request(
        &mut self,
        now: u64,
        msg: &Message<'_>,
        src: &RawAddr,
        tx: &mut Tx,
        wheel: &mut Wheel,
        st: &mut ServerStats,
    ) {
        let method = msg.method();
        st.count_method(method);
        let to_tag = msg.to().ok().and_then(|t| t.tag());
        match method {
            Method::Ack => self.on_ack(to_tag, st),
            Method::Invite if to_tag.is_none() => self.on_invite(now, msg, src, tx, wheel, st),
            Method::Bye => {
                match to_tag.and_then(|t| self.lookup(t)) {
                    Some(i) => {
                        st.calls_completed += 1;
                        self.release(i);
                    }
                    // One of our dialogs, already ended: a retransmitted BYE
                    // (its 200 was lost). It gets the same 200 again.
                    None if to_tag.and_then(DialogKey::read).is_some() => {
                        st.retransmissions_received += 1;
                    }
                    None => {}
                }
                self.stateless(msg, src, 200, "OK", b"", tx);
            }
            Method::Register => {
                if self.challenge(msg, src, false, tx, st) {
                    return;
                }
                // Echo the bindings, as a registrar's 200 lists them (§10.3 step 8).
                self.extra.clear();
                let buf = msg.buf();
                for e in msg.named(HeaderName::Contact) {
                    self.extra.extend_from_slice(e.line.of(buf));
                }
                if let Some(e) = msg.named(HeaderName::Expires).next() {
                    self.extra.extend_from_slice(e.line.of(buf));
                }
                let extra = std::mem::take(&mut self.extra);
                self.stateless(msg, src, 200, "OK", &extra, tx);
                self.extra = extra;
            }
            Method::Invite
            | Method::Message
            | Method::Options
            | Method::Info
            | Method::Notify
            | Method::Update
            | Method::Prack
            | Method::Publish
            | Method::Subscribe
            | Method::Cancel => {
                if method != Method::Cancel
                    && to_tag.is_none()
                    && self.challenge(msg, src, true, tx, st)
                {
                    return;
                }
                self.stateless(msg, src, 200, "OK", b"", tx);
            }
            Method::Refer | Method::Other => {
                st.unexpected += 1;
                self.stateless(msg, src, 501, "Not Implemented", b"", tx);
            }
        }
    }

    fn lookup(&self, tag: &[u8]) -> Option<u32> {
        let k = DialogKey::read(tag)?;
        if k.thread != self.setup.thread {
            return None;
        }
        let d = self.dlgs.get(k.slot as usize)?;
        (d.gen == k.gen && d.state != State::Free).then_some(k.slot)
    }

    fn release(&mut self, i: u32) {
        if let Some(d) = self.dlgs.get_mut(i as usize) {
            if d.state != State::Free {
                d.state = State::Free;
                d.timer_at = 0;
                self.txns.remove(&d.key);
                self.free.push(i);
                if d.resp.capacity() > 0 {
                    let mut b = std::mem::take(&mut d.resp);
                    b.clear();
                    self.pool.push(b);
                }
            }
        }
    }

    fn arm(&mut self, i: u32, at: u64, wheel: &mut Wheel) {
        if let Some(d) = self.dlgs.get_mut(i as usize) {
            d.timer_at = at;
            wheel.insert(Entry {
                at,
                slot: i,
                gen: d.gen,
                owner: Owner::Server,
            });
        }
    }

    fn on_ack(&mut self, to_tag: Option<&[u8]>, st: &mut ServerStats) {
        let Some(i) = to_tag.and_then(|t| self.lookup(t)) else {
            return;
        };
        if let Some(d) = self.dlgs.get_mut(i as usize) {
            if d.state == State::Confirmed {
                // The UAC re-sent its ACK for a retransmitted 2xx.
                st.retransmissions_received += 1;
            }
            if d.state == State::Answered {
                d.state = State::Confirmed;
                let mut b = std::mem::take(&mut d.resp);
                b.clear();
                self.pool.push(b);
                st.calls_confirmed += 1;
                let at = d.t_answer + self.setup.dialog_timeout;
                d.timer_at = at;
                // Armed lazily: the timer entry goes in when it would matter
                // (see on_timer: an Answered entry re-arms for the dialog timeout).
            }
        }
    }

    fn on_invite(
        &mut self,
        now: u64,
        msg: &Message<'_>,
        src: &RawAddr,
        tx: &mut Tx,
        wheel: &mut Wheel,
        st: &mut ServerStats,
    ) {
        let branch = msg
            .top_via()
            .ok()
            .and_then(|v| v.branch())
            .unwrap_or_default();
        let key = fnv1a(&[msg.call_id(), branch]);
        if let Some(&i) = self.txns.get(&key) {
            // A retransmission: send the last response again (once ACKed,
            // the UAC has it already and the buffer is gone).
            st.retransmissions_received += 1;
            if let Some(d) = self.dlgs.get(i as usize).filter(|d| !d.resp.is_empty()) {
                tx.push_bytes(src, &d.resp);
            }
            return;
        }
        if self.challenge(msg, src, true, tx, st) {
            return;
        }
        let i = match self.free.pop() {
            Some(i) => i,
            None if self.dlgs.len() < 0xff_ffff => {
                self.dlgs.push(Dlg {
                    gen: 0,
                    state: State::Free,
                    key: 0,
                    src: *src,
                    resp: Vec::new(),
                    t_answer: 0,
                    interval: 0,
                    timer_at: 0,
                });
                (self.dlgs.len() - 1) as u32
            }
            None => {
                self.stateless(msg, src, 503, "Service Unavailable", b"", tx);
                return;
            }
        };
        let Some(d) = self.dlgs.get_mut(i as usize) else {
            return;
        };
        d.gen = d.gen.wrapping_add(1);
        let mut tag = [0u8; DialogKey::LEN];
        let _ = DialogKey {
            thread: self.setup.thread,
            slot: i,
            gen: d.gen,
        }
        .write(&mut tag);
        // Contact and the Record-Route lines, in order (§12.1.1).
        self.extra.clear();
        self.extra.extend_from_slice(&self.setup.contact);
        let buf = msg.buf();
        for e in msg.named(HeaderName::RecordRoute) {
            self.extra.extend_from_slice(e.line.of(buf));
        }
        let mut spec = ResponseSpec::new(180, "Ringing");
        spec.to_tag = Some(&tag);
        spec.extra = &self.extra;
        tx.push(src, |out| response(msg, &spec, out).ok());
        spec.code = 200;
        spec.reason = "OK";
        spec.content_type = Some("application/sdp");
        spec.body = &self.setup.sdp;
        let mut resp = self.pool.pop().unwrap_or_default();
        resp.resize(TX_BUF, 0);
        match response(msg, &spec, &mut resp) {
            Ok(n) => resp.truncate(n),
            Err(_) => {
                resp.clear();
                self.pool.push(resp);
                return;
            }
        }
        d.resp = resp;
        tx.push_bytes(src, &d.resp);
        d.state = State::Answered;
        d.key = key;
        d.src = *src;
        d.t_answer = now;
        d.interval = self.setup.t1;
        self.txns.insert(key, i);
        st.calls_answered += 1;
        self.answered += 1;
        let at = now + self.setup.t1;
        self.arm(i, at, wheel);
    }

    /// A timer of dialog `e.slot` fired.
    pub fn on_timer(
        &mut self,
        now: u64,
        e: Entry,
        tx: &mut Tx,
        wheel: &mut Wheel,
        st: &mut ServerStats,
    ) {
        let i = e.slot;
        let Some(d) = self.dlgs.get_mut(i as usize) else {
            return;
        };
        if d.gen != e.gen || d.state == State::Free {
            return;
        }
        match d.state {
            State::Free => {}
            State::Answered => {
                if now >= d.t_answer + 64 * self.setup.t1 {
                    st.ack_timeouts += 1;
                    self.release(i);
                    return;
                }
                if d.timer_at != e.at {
                    return;
                }
                tx.push_bytes(&d.src, &d.resp);
                st.retransmissions_sent += 1;
                d.interval = (d.interval * 2).min(self.setup.t2);
                let at = now + d.interval;
                self.arm(i, at, wheel);
            }
            State::Confirmed => {
                if now >= d.timer_at {
                    st.dialog_timeouts += 1;
                    self.release(i);
                } else {
                    // The Timer G entry of a dialog confirmed since: wait for the dialog timeout.
                    let at = d.timer_at;
                    self.arm(i, at, wheel);
                }
            }
        }
    }

    /// Answers with `code`, built from the request alone.
    fn stateless(
        &mut self,
        msg: &Message<'_>,
        src: &RawAddr,
        code: u16,
        reason: &str,
        extra: &[u8],
        tx: &mut Tx,
    ) {
        let from_tag = msg.from().ok().and_then(|f| f.tag()).unwrap_or_default();
        let mut tag = [0u8; KEY_HEX];
        let _ = put_hex(&mut tag, fnv1a(&[msg.call_id(), from_tag]), KEY_HEX);
        let mut spec = ResponseSpec::new(code, reason);
        spec.to_tag = Some(&tag);
        spec.extra = extra;
        if tx.push(src, |out| response(msg, &spec, out).ok()) {
            self.answered += 1;
        }
    }

    /// With --uas-auth: sends a challenge (or 403) unless `msg` carries
    /// valid credentials. Returns true when it answered.
    fn challenge(
        &mut self,
        msg: &Message<'_>,
        src: &RawAddr,
        proxy: bool,
        tx: &mut Tx,
        st: &mut ServerStats,
    ) -> bool {
        let Some(auth) = &self.setup.auth else {
            return false;
        };
        let hdr = if proxy {
            HeaderName::ProxyAuthorization
        } else {
            HeaderName::Authorization
        };
        let method = msg.method_bytes();
        let realm = auth.realm.as_bytes();
        if let Some(v) = msg.header(hdr) {
            if digest::verify(v, realm, auth.password.as_bytes(), method).is_some() {
                return false;
            }
            st.auth_failures += 1;
            self.stateless(msg, src, 403, "Forbidden", b"", tx);
            return true;
        }
        // A nonce per call, stable across retransmissions.
        let mut nonce = [0u8; KEY_HEX];
        let _ = put_hex(
            &mut nonce,
            fnv1a(&[msg.call_id(), &self.setup.secret.to_le_bytes()]),
            KEY_HEX,
        );
        let mut line = [0u8; 512];
        let n = {
            let mut w = W {
                out: &mut line,
                n: 0,
            };
            let ok = (|| {
                w.put(if proxy {
                    b"Proxy-Authenticate: Digest realm=\""
                } else {
                    b"WWW-Authenticate: Digest realm=\""
                })?;
                w.put(realm)?;
                w.put(b"\", nonce=\"")?;
                w.put(&nonce)?;
                w.put(b"\", qop=\"auth\", algorithm=")?;
                w.put(auth.alg.as_str().as_bytes())?;
                w.put(b"\r\n")
            })();
            if ok.is_none() {
                return false;
            }
            w.n
        };
        st.challenges_sent += 1;
        let (code, reason) = if proxy {
            (407, "Proxy Authentication Required")
        } else {
            (401, "Unauthorized")
        };
        let extra = line.get(..n).unwrap_or_default();
        self.stateless(msg, src, code, reason, extra, tx);
        true
    }
}
