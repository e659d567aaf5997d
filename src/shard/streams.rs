//! What both drivers do with stream connections around the core, so that a
//! driver is only I/O: bytes read go through the shard's
//! [`crate::transport::conn::Connections`] to the service; the
//! service's transmits on stream peers go from the outbox into their
//! connections (or over the mesh to the shard that owns the flow); closed
//! flows are reported to the service.
//!
//! ```text
//!  driver read(flow) ─► Streams::input ─► conns.handle_input ─► service.handle_message / handle_malformed
//!  driver flush      ─► Streams::take_transmits(outbox) ─► conns.send | mesh Transmit (flow of another shard)
//!                       then the driver writes conns.poll_write() and acts on conns.poll_event()
//!  turn end          ─► Streams::settle: service.handle_flow_closed for each closed flow; sweeps
//! ```
//!
//! TLS reloads (SIGHUP) reach a shard through [`TlsReload`]: one atomic
//! load per turn, a lock only when the generation moved.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::proxy::stateful::MeshMsg;
use crate::proxy::Service;
use crate::time::Instant;
use crate::transport::conn::{ConnError, Connections, Input};
use crate::transport::tls::{ClientTls, ServerTls};
use crate::transport::{FlowId, Outbox};

use super::ShardIo;

/// Bytes a driver reads from one connection before handing them in (so a
/// read's messages and their answers fit in the outbox).
pub const READ_CHUNK: usize = 16 * 1024;

/// The TLS configurations the shards use, replaced on SIGHUP.
#[derive(Debug, Default)]
pub struct TlsReload {
    generation: AtomicU64,
    // INVARIANT: written only by `set`, which bumps `generation` after.
    configs: RwLock<(Option<ServerTls>, Option<ClientTls>)>,
}

impl TlsReload {
    /// Shared TLS configurations.
    pub fn new(server: Option<ServerTls>, client: Option<ClientTls>) -> Arc<Self> {
        Arc::new(Self {
            generation: AtomicU64::new(1),
            configs: RwLock::new((server, client)),
        })
    }

    /// Installs new configurations (new connections use them).
    pub fn set(&self, server: Option<ServerTls>, client: Option<ClientTls>) {
        if let Ok(mut c) = self.configs.write() {
            *c = (server, client);
        }
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// A shard's stream side.
#[derive(Debug)]
pub struct Streams {
    /// The connections.
    pub conns: Connections,
    tls: Option<Arc<TlsReload>>,
    seen: u64,
}

impl Streams {
    /// Stream state over `conns`, with TLS from `tls` if any.
    pub fn new(conns: Connections, tls: Option<Arc<TlsReload>>) -> Self {
        let mut s = Self {
            conns,
            tls,
            seen: 0,
        };
        s.refresh();
        s
    }

    /// Picks up reloaded TLS configurations.
    pub fn refresh(&mut self) {
        let Some(t) = &self.tls else { return };
        let g = t.generation.load(Ordering::Acquire);
        if g == self.seen {
            return;
        }
        self.seen = g;
        if let Ok(c) = t.configs.read() {
            self.conns.set_tls(c.0.clone(), c.1.clone());
        }
    }

    /// Bytes read from `flow`: its messages go to the service.
    pub fn input<S: Service>(
        &mut self,
        now: Instant,
        flow: FlowId,
        data: &[u8],
        service: &mut S,
        out: &mut Outbox,
    ) {
        self.conns
            .handle_input(now, flow, data, &mut |input, peer| match input {
                Input::Message(m) => service.handle_message(now, m, peer, out),
                Input::Malformed(head, e) => service.handle_malformed(now, head, e, peer, out),
            });
    }

    /// Moves the outbox's stream transmits into their connections; a flow
    /// another shard owns is handed to it over the mesh.
    pub fn take_transmits(&mut self, now: Instant, out: &Outbox, io: &mut ShardIo) {
        for t in out.items() {
            if !t.peer.transport.is_stream() {
                continue;
            }
            let bytes = out.bytes(t);
            if let Err(ConnError::OtherShard(to)) = self.conns.send(now, &t.peer, bytes) {
                io.hand_over(
                    usize::from(to),
                    MeshMsg::Transmit {
                        peer: t.peer,
                        bytes: bytes.into(),
                    },
                );
            }
        }
    }

    /// End of a turn: sweeps, and closed flows reported to the service.
    pub fn settle<S: Service>(&mut self, now: Instant, service: &mut S) {
        if self.conns.poll_timeout().is_some_and(|t| t <= now) {
            self.conns.handle_timeout(now);
        }
        while let Some(f) = self.conns.poll_closed() {
            service.handle_flow_closed(now, f);
        }
    }
}
