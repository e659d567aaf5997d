//! One worker thread: its sockets, client engines, UAS, timer wheel and
//! counters, and the loop that drives them.
//!
//! ```text
//! loop turn:  now ─► start the calls due ─► fire due timers ─► recvmmsg each socket
//!             ─► parse, dispatch (responses by branch key to a client engine,
//!                requests to the UAS) ─► sendmmsg what was queued
//!             ─► nothing received: ppoll until a datagram, a timer or the next call
//! ```
//! Nothing is shared with other workers except a few relaxed atomics: the
//! progress counters, and the "phase" flags that say when every worker's
//! registrations are done and when every worker's load is done (a UAS keeps
//! serving until the last UAC in the process has finished).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll};
use sipedge::sip::{parse, HeaderIndex, ParseConfig};
use socket2::Socket;

use crate::client::{Client, Flow};
use crate::id::CallKey;
use crate::net::{self, RxBatch, TxBatch, BATCH};
use crate::server::Server;
use crate::stats::{Progress, WorkerStats};
use crate::stream::{StreamEp, StreamRx, Tx, CONN_BITS};
use crate::wheel::{Owner, Wheel};

/// Flags shared by the workers of one process.
#[derive(Debug, Default)]
pub struct Shared {
    /// Workers whose registration engine has not finished.
    pub registering: AtomicUsize,
    /// Workers whose load engine has not finished.
    pub loading: AtomicUsize,
}

/// One side's socket(s): a UDP socket or a stream endpoint.
pub enum Endpoint {
    /// UDP.
    Udp(Socket),
    /// TCP, TLS, WS, WSS.
    Stream(Box<StreamEp>),
}

/// How long the UAC waits for its connections' handshakes before starting anyway.
const HANDSHAKE_WAIT_US: u64 = 10_000_000;

/// What a worker is given.
pub struct Worker {
    /// Thread number.
    pub thread: u8,
    /// Endpoints: index 0 the UAC's (if any), then the UAS's (if any).
    pub socks: Vec<Endpoint>,
    /// Engine 0: the load (roles uac, both).
    pub load: Option<Client>,
    /// Engine 1: the UAS's registrations.
    pub register: Option<Client>,
    /// Socket index of the UAS, if any.
    pub server_sock: Option<usize>,
    /// The UAS.
    pub server: Option<Server>,
    /// CPU to pin to.
    pub cpu: Option<usize>,
    /// How long the UAS serves when there is no load engine.
    pub serve_for: Duration,
    /// Keep polling this long (µs) after the last datagram before sleeping.
    pub spin_us: u64,
    /// Calls start on multiples of this (µs, at least 1).
    pub tick_us: u64,
    /// How long to wait for calls in flight after generation ends.
    pub drain: Duration,
    /// Progress counters of this worker.
    pub progress: Arc<Progress>,
    /// Process-wide flags.
    pub shared: Arc<Shared>,
    /// The run's time origin.
    pub epoch: Instant,
}

impl Worker {
    /// Runs to completion and returns the counters.
    pub fn run(mut self) -> WorkerStats {
        if let Some(cpu) = self.cpu {
            if let Err(e) = net::pin_to_cpu(cpu) {
                eprintln!(
                    "sipload: worker {}: cannot pin to CPU {cpu}: {e}",
                    self.thread
                );
            }
        }
        let mut st = WorkerStats::new();
        let mut wheel = Wheel::new();
        let mut rx = RxBatch::new();
        // UDP sockets stay here (the batches hold their fds); stream
        // endpoints move into the Tx list and register with one mio poll.
        let mut udp_socks = Vec::new();
        let mut fds = Vec::new();
        let mut txs: Vec<Tx> = Vec::new();
        let mut poll: Option<Poll> = None;
        for ep in std::mem::take(&mut self.socks) {
            match ep {
                Endpoint::Udp(s) => {
                    fds.push(net::fd(&s));
                    txs.push(Tx::Dgram(TxBatch::new(net::fd(&s))));
                    udp_socks.push(s);
                }
                Endpoint::Stream(mut ep) => {
                    if poll.is_none() {
                        match Poll::new() {
                            Ok(p) => poll = Some(p),
                            Err(e) => {
                                eprintln!("sipload: worker {}: epoll: {e}", self.thread);
                                return st;
                            }
                        }
                    }
                    if let Some(p) = poll.as_ref() {
                        if let Err(e) = ep.register(p.registry(), txs.len()) {
                            eprintln!("sipload: worker {}: register: {e}", self.thread);
                        }
                    }
                    txs.push(Tx::Stream(ep));
                }
            }
        }
        let mut events = Events::with_capacity(1024);
        let mut srx = StreamRx::default();
        let mut streams_ready = poll.is_none();
        let mut idx = HeaderIndex::new(ParseConfig {
            // Be liberal in what we accept from the system under test: a
            // load generator counts what it gets, it does not police it.
            allow_bare_lf: true,
            ..ParseConfig::default()
        });
        let now_us = |epoch: Instant| epoch.elapsed().as_micros() as u64;
        let start = now_us(self.epoch);
        let serve_until = start + self.serve_for.as_micros() as u64;
        let drain_us = self.drain.as_micros() as u64;
        let mut reg_done = self.register.is_none();
        let mut load_done = self.load.is_none();
        let mut load_end: Option<u64> = None;
        let mut last_rx = 0u64;
        if let Some(r) = self.register.as_mut() {
            r.enable(start);
        }
        loop {
            let now = now_us(self.epoch);
            let stop = net::stop_requested();

            // Phases: registrations (all workers) before the load.
            if !reg_done {
                if let Some(r) = self.register.as_mut() {
                    if r.done(now) || stop {
                        if stop {
                            r.abandon_all(&mut st.client[1]);
                        }
                        reg_done = true;
                        st.register_generation_us = r.generation_us();
                        self.shared.registering.fetch_sub(1, Ordering::AcqRel);
                    }
                }
            }
            let all_registered = self.shared.registering.load(Ordering::Acquire) == 0;
            if !streams_ready {
                // The UAC's connections finish their TLS / WebSocket handshakes first.
                streams_ready = txs.iter().all(|t| match t {
                    Tx::Stream(s) => s.all_ready(),
                    Tx::Dgram(_) => true,
                }) || now > start + HANDSHAKE_WAIT_US;
            }
            if let Some(l) = self.load.as_mut() {
                if all_registered && streams_ready {
                    l.enable(now);
                }
                if !load_done {
                    let gen_over = l.generation_over(now) || stop;
                    if gen_over && load_end.is_none() {
                        load_end = Some(now);
                    }
                    // Scenario subscribe: held subscriptions keep the engine alive.
                    let drained = l.inflight() == 0 && gen_over && (stop || !l.holding(now));
                    let overdue = load_end.is_some_and(|e| now > e + drain_us)
                        || (stop && load_end.is_some_and(|e| now > e + 1_000_000));
                    if drained || overdue {
                        l.abandon_all(&mut st.client[0]);
                        st.client[0].notify.active = l.active();
                        st.generation_us = l.generation_us();
                        load_done = true;
                        self.shared.loading.fetch_sub(1, Ordering::AcqRel);
                    }
                }
            }
            let others_loading = self.shared.loading.load(Ordering::Acquire) > 0;
            let finished = if self.load.is_some() {
                load_done && reg_done && !others_loading
            } else {
                // UAS only: serve until the deadline or a signal.
                stop || now >= serve_until
            };
            if finished {
                break;
            }

            // Start the calls due.
            if let Some(r) = self.register.as_mut() {
                if !reg_done {
                    if let Some(tx) = txs.get_mut(r.setup.sock) {
                        r.generate(now, BATCH * 4, tx, &mut wheel, &mut st.client[1]);
                    }
                }
            }
            if let Some(l) = self.load.as_mut() {
                if !load_done && !stop {
                    if let Some(tx) = txs.get_mut(l.setup.sock) {
                        l.generate(now, BATCH * 4, tx, &mut wheel, &mut st.client[0]);
                    }
                }
            }

            // Fire due timers.
            {
                let load = &mut self.load;
                let register = &mut self.register;
                let server = &mut self.server;
                let server_sock = self.server_sock;
                let txs = &mut txs;
                let st = &mut st;
                wheel.advance(now, |wheel, e| match e.owner {
                    Owner::Client(0) => {
                        if let Some(c) = load.as_mut() {
                            if let Some(tx) = txs.get_mut(c.setup.sock) {
                                c.on_timer(now, e, tx, wheel, &mut st.client[0]);
                            }
                        }
                    }
                    Owner::Client(_) => {
                        if let Some(c) = register.as_mut() {
                            if let Some(tx) = txs.get_mut(c.setup.sock) {
                                c.on_timer(now, e, tx, wheel, &mut st.client[1]);
                            }
                        }
                    }
                    Owner::Server => {
                        if let (Some(s), Some(tx)) =
                            (server.as_mut(), server_sock.and_then(|i| txs.get_mut(i)))
                        {
                            s.on_timer(now, e, tx, wheel, &mut st.server);
                        }
                    }
                });
            }
            for tx in txs.iter_mut() {
                tx.flush();
            }

            // Receive and dispatch.
            let mut full = false;
            let mut got = 0;
            if let Some(p) = poll.as_mut() {
                if p.poll(&mut events, Some(Duration::ZERO)).is_ok() {
                    dispatch_events(&events, &mut txs);
                }
            }
            for si in 0..txs.len() {
                let (n, stream) = match txs.get_mut(si) {
                    Some(Tx::Dgram(d)) => match rx.recv(d.fd()) {
                        Ok(n) => {
                            full |= n == BATCH;
                            (n, false)
                        }
                        Err(e) => {
                            eprintln!("sipload: worker {}: recv: {e}", self.thread);
                            (0, false)
                        }
                    },
                    Some(Tx::Stream(s)) => {
                        srx.clear();
                        let (n, more) = s.recv(&mut srx);
                        full |= more;
                        (n, true)
                    }
                    None => (0, false),
                };
                got += n;
                st.received += n as u64;
                for i in 0..n {
                    let got = if stream { srx.get(i) } else { rx.get(i) };
                    let Some((buf, src, trunc)) = got else {
                        continue;
                    };
                    if trunc {
                        st.malformed += 1;
                        continue;
                    }
                    let Ok(msg) = parse(buf, &mut idx) else {
                        st.malformed += 1;
                        continue;
                    };
                    let Some(tx) = txs.get_mut(si) else {
                        continue;
                    };
                    if msg.is_request() {
                        // Scenario subscribe: NOTIFYs come to the load's own socket.
                        if let Some(l) = self
                            .load
                            .as_mut()
                            .filter(|l| l.setup.flow == Flow::Subscribe && l.setup.sock == si)
                        {
                            l.on_request(now, &msg, src, tx, &mut st.client[0]);
                            continue;
                        }
                        match self.server.as_mut() {
                            Some(s) => s.on_request(now, &msg, src, tx, &mut wheel, &mut st.server),
                            None => st.server.unexpected += 1,
                        }
                        continue;
                    }
                    // A response: its top Via branch names the call.
                    let key = msg
                        .top_via()
                        .ok()
                        .and_then(|v| v.branch())
                        .and_then(CallKey::from_branch);
                    let Some((key, k)) = key.filter(|(key, _)| key.thread == self.thread) else {
                        st.client[0].stray_responses += 1;
                        continue;
                    };
                    let engine = if key.client == 0 {
                        self.load.as_mut()
                    } else {
                        self.register.as_mut()
                    };
                    match engine {
                        Some(c) => {
                            let cs = &mut st.client[usize::from(key.client.min(1))];
                            c.on_response(now, &msg, (key, k), tx, &mut wheel, cs);
                        }
                        None => st.client[0].stray_responses += 1,
                    }
                }
            }
            for tx in txs.iter_mut() {
                tx.flush();
            }

            // Progress.
            let (cs, inflight) = match (&self.load, &self.register) {
                (Some(l), _) if reg_done => (&st.client[0], l.inflight()),
                (_, Some(r)) => (&st.client[1], r.inflight()),
                (Some(l), None) => (&st.client[0], l.inflight()),
                (None, None) => (&st.client[0], 0),
            };
            let answered = self.server.as_ref().map_or(0, |s| s.answered);
            self.progress.publish(cs, u64::from(inflight), answered);

            if full {
                continue;
            }
            if got > 0 {
                last_rx = now;
            }
            // Traffic is flowing: poll the sockets a little longer before
            // sleeping. A sleep and wake-up costs more CPU than a few empty
            // recvmmsg calls, and the next datagram (the answer to what was
            // just sent) is usually microseconds away.
            if now.saturating_sub(last_rx) < self.spin_us {
                continue;
            }
            // Idle (or a partial batch, so the sockets were drained): sleep
            // until a datagram, the next timer or the next tick with calls due.
            let mut wake = now + 100_000;
            if let Some(t) = wheel.next_deadline() {
                wake = wake.min(t);
            }
            for c in [self.load.as_ref(), self.register.as_ref()]
                .into_iter()
                .flatten()
            {
                if let Some(t) = c.next_due(now) {
                    // Calls start on tick boundaries: fewer wake-ups, bigger batches.
                    wake = wake.min(t.div_ceil(self.tick_us) * self.tick_us);
                }
            }
            if !streams_ready {
                wake = wake.min(now + 1_000);
            }
            let after = now_us(self.epoch);
            if wake > after {
                let timeout = Some(Duration::from_micros(wake - after));
                match poll.as_mut() {
                    Some(p) => {
                        if p.poll(&mut events, timeout).is_ok() {
                            dispatch_events(&events, &mut txs);
                        }
                    }
                    None => {
                        let _ = net::wait(&fds, libc::POLLIN, timeout);
                    }
                }
            }
        }
        for tx in txs.iter_mut() {
            tx.flush();
            let (sent, dropped) = tx.counts();
            st.sent += sent;
            st.send_dropped += dropped;
        }
        drop(udp_socks);
        if let Some(l) = self.load.as_ref() {
            if let Err(e) = l.save_etags() {
                eprintln!("sipload: --etags-out: {e}");
            }
        }
        st
    }
}

/// Hands each readiness event to its endpoint (the token's high bits).
fn dispatch_events(events: &Events, txs: &mut [Tx]) {
    for ev in events.iter() {
        let t = ev.token().0;
        if let Some(Tx::Stream(s)) = txs.get_mut(t >> CONN_BITS) {
            s.on_event(t & ((1 << CONN_BITS) - 1), ev);
        }
    }
}
