//! TLS sessions for SIP over TLS (RFC 3261 §26.2, RFC 5630), sans-IO, over rustls 0.23.
//!
//! This module owns the TLS record layer of one stream connection: the
//! handshake, encryption and decryption, alerts and close_notify. It knows
//! nothing of SIP framing (that is `transport::stream`) and nothing of sockets.
//!
//! ```text
//!  socket bytes ─► TlsSession::handle_input ─► plaintext (caller's Vec) ─► stream framer
//!  SIP message  ─► TlsSession::write (bounded queue)
//!                  TlsSession::poll_output ─► TLS records (caller's Vec) ─► socket
//! ```
//!
//! - [`ServerTls`] and [`ClientTls`] are built once from PEM bytes (the caller
//!   reads the files: this module does no file I/O) and again on reload; they
//!   are cheap to clone (an `Arc` inside) and every new [`TlsSession`] uses the
//!   configuration it was made from. Sessions already open keep theirs.
//! - [`TlsSession`] is one connection, server or client side. Input goes in
//!   through [`TlsSession::handle_input`] and [`TlsSession::write`]; output comes
//!   out through [`TlsSession::poll_output`] into a buffer the caller owns.
//!
//! Versions: TLS 1.3 (RFC 8446) and TLS 1.2 (RFC 5246), rustls' default
//! cipher suites and groups (BCP 195). Server name indication (RFC 6066 §3)
//! picks among [`SniCert`]s, falling back to the default certificate.
//! Mutual TLS per [`ClientVerify`]; a client checks the server's certificate
//! against the target host (a DNS SAN, or an IP SAN for numeric targets).
//! SIP-specific identity rules (RFC 5922 §7: matching the SIP domain, URI
//! SANs) are the caller's, with [`TlsSession::peer_certificates`].
//!
//! Panic and allocation contract: nothing here panics on any input, from the
//! network or from configuration. Memory per session is bounded:
//! - received records: rustls' deframer holds at most one record (≤ 16 KiB +
//!   overhead; 64 KiB for a handshake message); decrypted bytes are moved into
//!   the caller's `plaintext` at once, so they never pile up here;
//! - unsent data: [`TlsSession::write`] refuses a message once the bytes not yet
//!   moved out by [`TlsSession::poll_output`] would pass the send-queue limit
//!   ([`DEFAULT_SEND_QUEUE_LIMIT`], or [`ServerTls::with_send_queue_limit`]),
//!   and rustls' own buffer limit (`set_buffer_limit`) is set just above it
//!   as a backstop. A peer that stops reading thus ends in
//!   [`TlsError::SendQueueFull`], which the caller turns into a disconnect.
//!   The caller must call `poll_output` only when it can take the bytes (its
//!   socket is writable), or bound its own output buffer in the same way;
//! - session resumption uses rustls' defaults: a server keeps up to 256
//!   resumption entries per [`ServerTls`] (TLS 1.2 session IDs and TLS 1.3
//!   stateful tickets, a few hundred bytes each), a client up to 256 per
//!   [`ClientTls`]; this is per configuration, not per session.
//!
//! Measured: an idle established server session holds about 6.3 KiB of heap
//! (TLS 1.3 or 1.2, boxed `TlsSession` of 1.2 KiB included), most of it
//! rustls' 4 KiB receive buffer.
//!
//! Steady-state allocation: rustls allocates per record it encrypts and
//! decrypts (its queues hold `Vec<u8>` chunks); this layer adds none.
//! Wall-clock time is read inside rustls (certificate validity, ticket age),
//! through its default time provider; this module reads no clock.
//!
//! Why the buffered `Connection` API: rustls offers a buffered
//! [`rustls::Connection`] (`read_tls`, `process_new_packets`, `reader`,
//! `writer`, `write_tls`) and an unbuffered one that decrypts in place in
//! caller memory. Both our drivers (mio readiness and io_uring completions
//! with provided buffers) hand the connection layer owned byte slices that go
//! back to their pool as soon as the call returns, so the bytes have to be
//! copied once in any case. `read_tls` from a `&[u8]` and `write_tls` into a
//! `Vec<u8>` do exactly that copy, and the buffered API keeps the handshake,
//! alerts, key updates and the queueing of writes made before the handshake
//! completes inside rustls, where they are tested, instead of in a state
//! machine of ours.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

use core::fmt;
use core::net::IpAddr;
use std::io::{BufRead, ErrorKind, Write};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WantsClientCert;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, DnsName, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, VerifierBuilderError, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, ClientConnection, ConfigBuilder, Connection, DigitallySignedStruct,
    ProtocolVersion, RootCertStore, ServerConfig, ServerConnection, SignatureScheme,
    SupportedProtocolVersion,
};

/// Default bound on application bytes queued for sending and not yet taken
/// by [`TlsSession::poll_output`]: 64 KiB, room for several large SIP messages.
pub const DEFAULT_SEND_QUEUE_LIMIT: usize = 64 * 1024;

/// Room above the send-queue limit given to rustls' own buffer limit, for
/// record overhead and handshake or ticket messages waiting beside our data.
const SEND_QUEUE_SLACK: usize = 16 * 1024;

/// Largest plaintext per TLS record (RFC 8446 §5.1, RFC 5246 §6.2.1).
const MAX_RECORD_PLAINTEXT: usize = 16 * 1024;

/// Upper bound on the bytes a record adds to its plaintext: header 5, TLS 1.2
/// explicit nonce 8 or TLS 1.3 content type 1, AEAD tag 16; rounded up.
const RECORD_OVERHEAD: usize = 32;

/// Protocol versions offered and accepted: TLS 1.3 first, then TLS 1.2.
static VERSIONS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Whether a server asks for and checks client certificates (mutual TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientVerify {
    /// No certificate is requested.
    None,
    /// A certificate is requested; a client may send none, but one it sends
    /// must chain to `ca_pem`.
    Optional,
    /// A certificate chaining to `ca_pem` is required; the handshake fails
    /// without one.
    Required,
}

/// What a TLS listener serves, as PEM bytes read by the caller.
///
/// No `Debug`: it holds private keys.
pub struct ServerSettings<'a> {
    /// Default certificate chain, end-entity certificate first.
    pub cert_pem: &'a [u8],
    /// Private key of the default certificate (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: &'a [u8],
    /// Trust anchors for client certificates; needed unless
    /// `verify_client` is [`ClientVerify::None`] (then it is ignored).
    pub ca_pem: Option<&'a [u8]>,
    /// Whether client certificates are requested and checked.
    pub verify_client: ClientVerify,
    /// Certificates chosen by the name a client sends (RFC 6066 SNI).
    pub sni: Vec<SniCert<'a>>,
}

/// A certificate served to clients that ask for `domain` by SNI.
///
/// No `Debug`: it holds a private key.
pub struct SniCert<'a> {
    /// Host name, matched case-insensitively; `*.example.com` matches
    /// exactly one label more (`a.example.com`, not `example.com`).
    pub domain: &'a str,
    /// Certificate chain, end-entity certificate first.
    pub cert_pem: &'a [u8],
    /// Its private key.
    pub key_pem: &'a [u8],
}

/// A server-side TLS configuration, shared by every session of a listener.
///
/// Built once (and again on SIGHUP reload); cheap to clone (an `Arc`
/// inside). New sessions use the newest the caller hands them.
#[derive(Debug, Clone)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
    send_queue_limit: usize,
}

/// A client-side TLS configuration, for connections this proxy opens.
///
/// Cheap to clone (an `Arc` inside).
#[derive(Debug, Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    send_queue_limit: usize,
}

/// A negotiated TLS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsVersion {
    /// TLS 1.2 (RFC 5246).
    Tls12,
    /// TLS 1.3 (RFC 8446).
    Tls13,
}

/// One TLS connection, server or client side, driven by the caller's bytes.
#[derive(Debug)]
pub struct TlsSession {
    conn: Connection,
    // INVARIANT: an upper bound on the application bytes (with record
    // overhead) held inside `conn` and not yet moved out by `poll_output`;
    // `queued <= send_queue_limit` after every successful `write`.
    queued: usize,
    send_queue_limit: usize,
    /// `close` was called: no more writes.
    closing: bool,
    /// The peer's close_notify was received.
    peer_closed: bool,
}

/// Which PEM input an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PemInput {
    /// The trust anchors (`ca_pem`).
    Ca,
    /// The default certificate chain (`cert_pem`).
    Cert,
    /// The client certificate chain of a [`ClientTls`].
    ClientCert,
    /// The client private key of a [`ClientTls`].
    ClientKey,
    /// The default private key (`key_pem`).
    Key,
    /// The certificate chain of the [`SniCert`] at this index.
    SniCert(usize),
    /// The private key of the [`SniCert`] at this index.
    SniKey(usize),
}

/// What is wrong with a PEM input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PemFault {
    /// It holds no item of the expected kind (no certificate, no key).
    Empty,
    /// It is malformed: bad base64, a missing END line, a section too large.
    Malformed,
}

/// Errors of TLS configuration and of TLS sessions.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A trust anchor in `ca_pem` is not a usable X.509 CA certificate.
    #[error("CA certificate rejected: {0}")]
    CaCertificate(#[source] rustls::Error),
    /// Client verification is `Optional` or `Required` but no `ca_pem` was given.
    #[error("client certificate verification needs a CA (ca_pem)")]
    ClientCaMissing,
    /// The client-certificate verifier could not be built from `ca_pem`.
    #[error("client certificate verifier: {0}")]
    ClientVerifier(#[source] VerifierBuilderError),
    /// The session was closed with [`TlsSession::close`]; nothing more is sent.
    #[error("TLS session closed")]
    Closed,
    /// rustls refused the configuration or the new session.
    #[error("TLS configuration: {0}")]
    Config(#[source] rustls::Error),
    /// Received bytes could not be buffered (a record rustls cannot hold);
    /// the peer is broken or hostile.
    #[error("TLS input overflow")]
    InputOverflow,
    /// A private key is unsupported or does not match its certificate.
    #[error("{input}: unusable private key: {source}")]
    Key {
        /// The certificate/key pair concerned.
        input: PemInput,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// A PEM input could not be used.
    #[error("{input}: {fault}")]
    Pem {
        /// Which input.
        input: PemInput,
        /// What is wrong with it.
        fault: PemFault,
    },
    /// The peer broke the protocol, failed verification or sent an alert;
    /// an alert to send may be waiting in [`TlsSession::poll_output`].
    #[error("TLS: {0}")]
    Protocol(#[source] rustls::Error),
    /// Sending would pass the send-queue limit (the peer is not reading).
    /// The session is no longer usable: disconnect.
    #[error("TLS send queue full")]
    SendQueueFull,
    /// The target host is neither a DNS name nor an IP address.
    #[error("TLS target is not a host name or IP address")]
    ServerName,
    /// The [`SniCert`] at this index has an empty or invalid domain.
    #[error("SNI entry {0}: invalid domain")]
    SniDomain(usize),
    /// The [`SniCert`] at this index repeats an earlier domain.
    #[error("SNI entry {0}: duplicate domain")]
    SniDomainDuplicate(usize),
}

/// Picks a certificate by SNI, falling back to the default.
#[derive(Debug)]
struct SniResolver {
    default: Arc<CertifiedKey>,
    // INVARIANT: names are lowercase, without a trailing dot, unique; a
    // wildcard entry is `*.` followed by a valid DNS name.
    by_name: Box<[(Box<str>, Arc<CertifiedKey>)]>,
}

/// The `verify_server = false` opt-out: any certificate is accepted, but
/// handshake signatures are still checked against the key it holds.
#[derive(Debug)]
struct AcceptAnyServerCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerTls {
    /// Builds a server configuration: parses the PEM inputs, checks that each
    /// key matches its certificate, and sets up client verification and SNI.
    pub fn new(s: &ServerSettings<'_>) -> Result<Self, TlsError> {
        let provider = crypto_provider();
        let default = certified_key(
            s.cert_pem,
            s.key_pem,
            PemInput::Cert,
            PemInput::Key,
            &provider,
        )?;
        let mut by_name: Vec<(Box<str>, Arc<CertifiedKey>)> = Vec::with_capacity(s.sni.len());
        for (i, sni) in s.sni.iter().enumerate() {
            let name = sni_pattern(sni.domain).ok_or(TlsError::SniDomain(i))?;
            if by_name.iter().any(|(n, _)| *n == name) {
                return Err(TlsError::SniDomainDuplicate(i));
            }
            let key = certified_key(
                sni.cert_pem,
                sni.key_pem,
                PemInput::SniCert(i),
                PemInput::SniKey(i),
                &provider,
            )?;
            by_name.push((name, Arc::new(key)));
        }
        let resolver = SniResolver {
            default: Arc::new(default),
            by_name: by_name.into_boxed_slice(),
        };

        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(VERSIONS)
            .map_err(TlsError::Config)?;
        let builder = match s.verify_client {
            ClientVerify::None => builder.with_no_client_auth(),
            ClientVerify::Optional | ClientVerify::Required => {
                let ca = s.ca_pem.ok_or(TlsError::ClientCaMissing)?;
                let roots = Arc::new(root_store(ca)?);
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
                let verifier = match s.verify_client {
                    ClientVerify::Optional => verifier.allow_unauthenticated(),
                    _ => verifier,
                };
                builder
                    .with_client_cert_verifier(verifier.build().map_err(TlsError::ClientVerifier)?)
            }
        };
        let config = builder.with_cert_resolver(Arc::new(resolver));
        Ok(Self {
            config: Arc::new(config),
            send_queue_limit: DEFAULT_SEND_QUEUE_LIMIT,
        })
    }

    /// Sets the bound on unsent application bytes per session
    /// (default [`DEFAULT_SEND_QUEUE_LIMIT`]).
    #[must_use]
    pub fn with_send_queue_limit(mut self, bytes: usize) -> Self {
        self.send_queue_limit = bytes;
        self
    }
}

impl ClientTls {
    /// Builds a client configuration.
    ///
    /// - `ca_pem`: trust anchors for server certificates.
    /// - `verify_server`: `true` checks the server's certificate against
    ///   `ca_pem` and the target host. With no `ca_pem` nothing is trusted and
    ///   every handshake fails (with an `UnknownIssuer` [`TlsError::Protocol`]).
    ///   `false` is an explicit opt-out for lab trunks: any certificate is
    ///   accepted (`ca_pem` is then ignored), which gives no authentication.
    /// - `client_cert`: `(cert_pem, key_pem)` presented when a server asks.
    pub fn new(
        ca_pem: Option<&[u8]>,
        verify_server: bool,
        client_cert: Option<(&[u8], &[u8])>,
    ) -> Result<Self, TlsError> {
        let provider = crypto_provider();
        let builder: ConfigBuilder<ClientConfig, WantsClientCert> = {
            let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
                .with_protocol_versions(VERSIONS)
                .map_err(TlsError::Config)?;
            if verify_server {
                let roots = match ca_pem {
                    Some(pem) => root_store(pem)?,
                    None => RootCertStore::empty(),
                };
                builder.with_root_certificates(roots)
            } else {
                let verifier = AcceptAnyServerCert {
                    algorithms: provider.signature_verification_algorithms,
                };
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(verifier))
            }
        };
        let config = match client_cert {
            None => builder.with_no_client_auth(),
            Some((cert_pem, key_pem)) => {
                let chain = cert_chain(cert_pem, PemInput::ClientCert)?;
                let key = private_key(key_pem, PemInput::ClientKey)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|source| TlsError::Key {
                        input: PemInput::ClientKey,
                        source,
                    })?
            }
        };
        Ok(Self {
            config: Arc::new(config),
            send_queue_limit: DEFAULT_SEND_QUEUE_LIMIT,
        })
    }

    /// Sets the bound on unsent application bytes per session
    /// (default [`DEFAULT_SEND_QUEUE_LIMIT`]).
    #[must_use]
    pub fn with_send_queue_limit(mut self, bytes: usize) -> Self {
        self.send_queue_limit = bytes;
        self
    }
}

impl TlsSession {
    /// A server session for a connection just accepted.
    pub fn server(cfg: &ServerTls) -> Result<Self, TlsError> {
        let conn = ServerConnection::new(Arc::clone(&cfg.config)).map_err(TlsError::Config)?;
        Ok(Self::with_connection(conn.into(), cfg.send_queue_limit))
    }

    /// A client session to `host`, the host part of the target SIP URI: a
    /// DNS name (sent as SNI and matched against DNS SANs) or an IP address,
    /// bare or in brackets (`192.0.2.1`, `[2001:db8::1]`; matched against IP
    /// SANs, no SNI). Its ClientHello is ready in [`Self::poll_output`].
    pub fn client(cfg: &ClientTls, host: &str) -> Result<Self, TlsError> {
        let name = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(inner) => inner
                .parse::<IpAddr>()
                .map(ServerName::from)
                .map_err(|_| TlsError::ServerName)?,
            None => ServerName::try_from(host)
                .map_err(|_| TlsError::ServerName)?
                .to_owned(),
        };
        Self::client_to(cfg, name)
    }

    /// A client session to a numeric target, checked against IP SANs.
    pub fn client_ip(cfg: &ClientTls, ip: IpAddr) -> Result<Self, TlsError> {
        Self::client_to(cfg, ServerName::from(ip))
    }

    fn client_to(cfg: &ClientTls, name: ServerName<'static>) -> Result<Self, TlsError> {
        let conn =
            ClientConnection::new(Arc::clone(&cfg.config), name).map_err(TlsError::Config)?;
        Ok(Self::with_connection(conn.into(), cfg.send_queue_limit))
    }

    fn with_connection(mut conn: Connection, send_queue_limit: usize) -> Self {
        conn.set_buffer_limit(Some(send_queue_limit.saturating_add(SEND_QUEUE_SLACK)));
        Self {
            conn,
            queued: 0,
            send_queue_limit,
            closing: false,
            peer_closed: false,
        }
    }

    /// Decrypts `data` (bytes read from the socket, any split); appends the
    /// application data to `plaintext` (never more bytes than the ciphertext
    /// received so far: a record is decrypted once it is whole).
    ///
    /// On `Err` the session is dead (later calls fail again): the caller
    /// sends what [`Self::poll_output`] gives (an alert), then closes.
    /// Bytes after the peer's close_notify are ignored.
    pub fn handle_input(&mut self, data: &[u8], plaintext: &mut Vec<u8>) -> Result<(), TlsError> {
        let mut rest = data;
        // `read_tls` is never handed an empty slice: rustls takes a 0-byte
        // read as TCP EOF. Each turn consumes at least one byte or stops.
        while !rest.is_empty() {
            let n = self
                .conn
                .read_tls(&mut rest)
                .map_err(|_| TlsError::InputOverflow)?;
            let state = self
                .conn
                .process_new_packets()
                .map_err(TlsError::Protocol)?;
            self.drain_plaintext(plaintext);
            if state.peer_has_closed() {
                self.peer_closed = true;
            }
            if n == 0 {
                // close_notify received: rustls reads no more.
                break;
            }
        }
        Ok(())
    }

    /// Queues `data` (one SIP message) for encryption; before the handshake
    /// completes it waits inside rustls.
    ///
    /// [`TlsError::Closed`] after [`Self::close`]. [`TlsError::SendQueueFull`]
    /// when the bytes not yet taken by [`Self::poll_output`] would pass the
    /// limit: nothing of `data` is queued then, except in the rare case where
    /// rustls' backstop limit cut it (handshake messages filled the slack);
    /// either way the caller disconnects.
    pub fn write(&mut self, data: &[u8]) -> Result<(), TlsError> {
        if self.closing {
            return Err(TlsError::Closed);
        }
        if data.is_empty() {
            return Ok(());
        }
        let records = data.len().div_ceil(MAX_RECORD_PLAINTEXT);
        let cost = records
            .saturating_mul(RECORD_OVERHEAD)
            .saturating_add(data.len());
        let queued = self.queued.saturating_add(cost);
        if queued > self.send_queue_limit {
            return Err(TlsError::SendQueueFull);
        }
        self.queued = queued;
        match self.conn.writer().write(data) {
            Ok(n) if n == data.len() => Ok(()),
            // rustls' backstop limit cut the message (handshake messages
            // waiting beside it took the slack): part of it is queued, so
            // the stream can't go on.
            _ => Err(TlsError::SendQueueFull),
        }
    }

    /// Moves every TLS record waiting to be sent (handshake, data, alerts,
    /// close_notify) to the end of `out`.
    pub fn poll_output(&mut self, out: &mut Vec<u8>) {
        while self.conn.wants_write() {
            match self.conn.write_tls(out) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        // Before the handshake completes, written data may still wait
        // inside rustls as plaintext; afterwards all of it has been moved out.
        if !self.conn.is_handshaking() {
            self.queued = 0;
        }
    }

    /// Whether [`Self::poll_output`] has records to give.
    pub fn wants_output(&self) -> bool {
        self.conn.wants_write()
    }

    /// Whether the handshake is still under way.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Server side: the host name the client asked for by SNI (lowercase).
    /// Client side: `None`.
    pub fn sni(&self) -> Option<&str> {
        match &self.conn {
            Connection::Server(conn) => conn.server_name(),
            Connection::Client(_) => None,
        }
    }

    /// Whether the peer presented a certificate (a client under mutual TLS,
    /// or the server).
    pub fn peer_has_certificate(&self) -> bool {
        self.conn
            .peer_certificates()
            .is_some_and(|chain| !chain.is_empty())
    }

    /// The peer's certificate chain (DER, end-entity first), once received,
    /// for identity checks such as RFC 5922 §7.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    /// The negotiated protocol version, once known.
    pub fn protocol_version(&self) -> Option<TlsVersion> {
        match self.conn.protocol_version()? {
            ProtocolVersion::TLSv1_2 => Some(TlsVersion::Tls12),
            ProtocolVersion::TLSv1_3 => Some(TlsVersion::Tls13),
            _ => None,
        }
    }

    /// Sends close_notify (it waits in [`Self::poll_output`]); later writes fail.
    pub fn close(&mut self) {
        if !self.closing {
            self.closing = true;
            self.conn.send_close_notify();
        }
    }

    /// Whether the peer sent close_notify.
    pub fn is_closed(&self) -> bool {
        self.peer_closed
    }

    fn drain_plaintext(&mut self, plaintext: &mut Vec<u8>) {
        let mut reader = self.conn.reader();
        loop {
            match reader.fill_buf() {
                Ok([]) => break,
                Ok(chunk) => {
                    let n = chunk.len();
                    plaintext.extend_from_slice(chunk);
                    reader.consume(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // WouldBlock: nothing more for now. UnexpectedEof can't
                // happen: rustls never saw a 0-byte read from us.
                Err(_) => break,
            }
        }
    }
}

impl SniResolver {
    fn lookup(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        let name = name.strip_suffix('.').unwrap_or(name);
        if let Some((_, key)) = self
            .by_name
            .iter()
            .find(|(pattern, _)| pattern.eq_ignore_ascii_case(name))
        {
            return Some(key);
        }
        let (_, parent) = name.split_once('.')?;
        self.by_name
            .iter()
            .find(|(pattern, _)| {
                pattern
                    .strip_prefix("*.")
                    .is_some_and(|p| p.eq_ignore_ascii_case(parent))
            })
            .map(|(_, key)| key)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let key = client_hello
            .server_name()
            .and_then(|name| self.lookup(name))
            .unwrap_or(&self.default);
        Some(Arc::clone(key))
    }
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl fmt::Display for PemInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ca => f.write_str("CA certificates"),
            Self::Cert => f.write_str("certificate chain"),
            Self::ClientCert => f.write_str("client certificate chain"),
            Self::ClientKey => f.write_str("client private key"),
            Self::Key => f.write_str("private key"),
            Self::SniCert(i) => write!(f, "SNI entry {i} certificate chain"),
            Self::SniKey(i) => write!(f, "SNI entry {i} private key"),
        }
    }
}

impl fmt::Display for PemFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "no PEM item of the expected kind",
            Self::Malformed => "malformed PEM",
        })
    }
}

/// The one place the crypto provider is chosen (aws-lc-rs, rustls' default).
fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn pem_error(input: PemInput, e: &pem::Error) -> TlsError {
    let fault = match e {
        pem::Error::NoItemsFound => PemFault::Empty,
        _ => PemFault::Malformed,
    };
    TlsError::Pem { input, fault }
}

fn cert_chain(pem: &[u8], input: PemInput) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(input, &e))?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            input,
            fault: PemFault::Empty,
        });
    }
    Ok(chain)
}

fn private_key(pem: &[u8], input: PemInput) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| pem_error(input, &e))
}

fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_input: PemInput,
    key_input: PemInput,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = cert_chain(cert_pem, cert_input)?;
    let key = private_key(key_pem, key_input)?;
    CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Key {
        input: key_input,
        source,
    })
}

fn root_store(ca_pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in cert_chain(ca_pem, PemInput::Ca)? {
        roots.add(cert).map_err(TlsError::CaCertificate)?;
    }
    Ok(roots)
}

/// Normalises an SNI domain: lowercase, no trailing dot, a valid DNS name
/// optionally behind `*.`.
fn sni_pattern(domain: &str) -> Option<Box<str>> {
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    let base = domain.strip_prefix("*.").unwrap_or(domain);
    if base.is_empty() || base.contains('*') || DnsName::try_from(base).is_err() {
        return None;
    }
    Some(domain.to_ascii_lowercase().into_boxed_str())
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;
    use std::sync::OnceLock;

    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose, RsaKeySize,
    };
    use rustls::client::Resumption;

    use super::*;

    // ---- test PKI -------------------------------------------------------

    struct Leaf {
        cert_pem: String,
        key_pem: String,
        der: CertificateDer<'static>,
    }

    struct Pki {
        ca_pem: String,
        ecdsa: Leaf,
        rsa: Leaf,
        sni: Leaf,
        wild: Leaf,
        ip: Leaf,
        client: Leaf,
        rogue_client: Leaf,
    }

    #[derive(Clone, Copy, Debug)]
    enum Key {
        Ecdsa,
        Rsa,
    }

    fn new_key(key: Key) -> KeyPair {
        match key {
            Key::Ecdsa => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
            Key::Rsa => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048).unwrap()
            }
        }
    }

    fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(DnType::CommonName, name);
        CertifiedIssuer::self_signed(params, new_key(Key::Ecdsa)).unwrap()
    }

    fn leaf(
        ca: &CertifiedIssuer<'static, KeyPair>,
        names: &[&str],
        key: Key,
        eku: ExtendedKeyUsagePurpose,
    ) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![eku];
        let key = new_key(key);
        let cert = params.signed_by(&key, &**ca).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    fn pki() -> &'static Pki {
        static PKI: OnceLock<Pki> = OnceLock::new();
        PKI.get_or_init(|| {
            let ca = new_ca("sipedge test CA");
            let rogue = new_ca("rogue CA");
            let server = ExtendedKeyUsagePurpose::ServerAuth;
            let client = ExtendedKeyUsagePurpose::ClientAuth;
            Pki {
                ca_pem: ca.pem(),
                ecdsa: leaf(&ca, &["sip.example.com"], Key::Ecdsa, server.clone()),
                rsa: leaf(&ca, &["sip.example.com"], Key::Rsa, server.clone()),
                sni: leaf(&ca, &["b.example.net"], Key::Ecdsa, server.clone()),
                wild: leaf(&ca, &["*.wild.example.org"], Key::Ecdsa, server.clone()),
                ip: leaf(&ca, &["192.0.2.10", "2001:db8::1"], Key::Ecdsa, server),
                client: leaf(&ca, &["alice.example.com"], Key::Ecdsa, client.clone()),
                rogue_client: leaf(&rogue, &["mallory.example.com"], Key::Ecdsa, client),
            }
        })
    }

    fn server_leaf(key: Key) -> &'static Leaf {
        match key {
            Key::Ecdsa => &pki().ecdsa,
            Key::Rsa => &pki().rsa,
        }
    }

    fn settings(leaf: &Leaf, verify_client: ClientVerify) -> ServerSettings<'_> {
        ServerSettings {
            cert_pem: leaf.cert_pem.as_bytes(),
            key_pem: leaf.key_pem.as_bytes(),
            ca_pem: Some(pki().ca_pem.as_bytes()),
            verify_client,
            sni: Vec::new(),
        }
    }

    fn our_server(key: Key) -> ServerTls {
        ServerTls::new(&settings(server_leaf(key), ClientVerify::None)).unwrap()
    }

    fn our_client() -> ClientTls {
        ClientTls::new(Some(pki().ca_pem.as_bytes()), true, None).unwrap()
    }

    fn our_client_with_cert(leaf: &Leaf) -> ClientTls {
        let cert = Some((leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes()));
        ClientTls::new(Some(pki().ca_pem.as_bytes()), true, cert).unwrap()
    }

    fn versions(v: TlsVersion) -> &'static [&'static SupportedProtocolVersion] {
        static TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
        static TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
        match v {
            TlsVersion::Tls12 => TLS12,
            TlsVersion::Tls13 => TLS13,
        }
    }

    fn rustls_client(v: TlsVersion, name: &str) -> Connection {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pki().ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut config = ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(versions(v))
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.resumption = Resumption::disabled();
        let name = ServerName::try_from(name.to_owned()).unwrap();
        ClientConnection::new(Arc::new(config), name)
            .unwrap()
            .into()
    }

    fn rustls_server(v: TlsVersion, leaf: &Leaf) -> Connection {
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let config = ServerConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(versions(v))
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der.clone()], key)
            .unwrap();
        ServerConnection::new(Arc::new(config)).unwrap().into()
    }

    // ---- in-memory pump ---------------------------------------------------

    #[derive(Debug)]
    enum Fail {
        Ours(TlsError),
        Peer(rustls::Error),
    }

    /// One end of an in-memory connection: our session or a plain rustls one.
    trait End {
        fn output(&mut self, out: &mut Vec<u8>);
        fn input(&mut self, data: &[u8], rx: &mut Vec<u8>) -> Result<(), Fail>;
        fn send(&mut self, data: &[u8]);
        fn handshaking(&self) -> bool;
    }

    impl End for TlsSession {
        fn output(&mut self, out: &mut Vec<u8>) {
            self.poll_output(out);
        }
        fn input(&mut self, data: &[u8], rx: &mut Vec<u8>) -> Result<(), Fail> {
            self.handle_input(data, rx).map_err(Fail::Ours)
        }
        fn send(&mut self, data: &[u8]) {
            self.write(data).unwrap();
        }
        fn handshaking(&self) -> bool {
            self.is_handshaking()
        }
    }

    impl End for Connection {
        fn output(&mut self, out: &mut Vec<u8>) {
            while self.wants_write() {
                self.write_tls(out).unwrap();
            }
        }
        fn input(&mut self, mut data: &[u8], rx: &mut Vec<u8>) -> Result<(), Fail> {
            while !data.is_empty() {
                self.read_tls(&mut data).unwrap();
                self.process_new_packets().map_err(Fail::Peer)?;
                let _ = self.reader().read_to_end(rx);
            }
            Ok(())
        }
        fn send(&mut self, data: &[u8]) {
            self.writer().write_all(data).unwrap();
        }
        fn handshaking(&self) -> bool {
            self.is_handshaking()
        }
    }

    struct Pair<A, B> {
        a: A,
        b: B,
        a_rx: Vec<u8>,
        b_rx: Vec<u8>,
        /// Bytes are delivered in pieces of at most this size.
        chunk: usize,
    }

    impl<A: End, B: End> Pair<A, B> {
        fn new(a: A, b: B) -> Self {
            Self {
                a,
                b,
                a_rx: Vec::new(),
                b_rx: Vec::new(),
                chunk: usize::MAX,
            }
        }

        /// Moves bytes both ways until neither end has anything to send.
        fn run(&mut self) -> Result<(), Fail> {
            for _ in 0..10_000 {
                let mut wire = Vec::new();
                self.a.output(&mut wire);
                for piece in wire.chunks(self.chunk) {
                    self.b.input(piece, &mut self.b_rx)?;
                }
                let mut back = Vec::new();
                self.b.output(&mut back);
                for piece in back.chunks(self.chunk) {
                    self.a.input(piece, &mut self.a_rx)?;
                }
                if wire.is_empty() && back.is_empty() {
                    return Ok(());
                }
            }
            panic!("pump did not settle");
        }

        fn handshake(&mut self) {
            self.run().unwrap();
            assert!(!self.a.handshaking() && !self.b.handshaking());
        }

        /// Sends `data` a → b and b → a and checks both arrive intact.
        fn exchange(&mut self, data: &[u8]) {
            self.a_rx.clear();
            self.b_rx.clear();
            self.a.send(data);
            self.b.send(data);
            self.run().unwrap();
            assert_eq!(self.b_rx.len(), data.len());
            assert!(self.b_rx == data, "a → b corrupted");
            assert!(self.a_rx == data, "b → a corrupted");
        }
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    const ODD_SIZES: [usize; 7] = [1, 2, 777, 1500, 16_383, 16_385, 33_333];

    const CASES: [(TlsVersion, Key); 4] = [
        (TlsVersion::Tls13, Key::Ecdsa),
        (TlsVersion::Tls12, Key::Ecdsa),
        (TlsVersion::Tls13, Key::Rsa),
        (TlsVersion::Tls12, Key::Rsa),
    ];

    // ---- handshakes and data ------------------------------------------

    #[test]
    fn our_server_with_rustls_client() {
        for (version, key) in CASES {
            for chunk in [usize::MAX, 7, 1000] {
                let ours = TlsSession::server(&our_server(key)).unwrap();
                let mut pair = Pair::new(ours, rustls_client(version, "sip.example.com"));
                pair.chunk = chunk;
                pair.handshake();
                assert_eq!(
                    pair.a.protocol_version(),
                    Some(version),
                    "{version:?} {key:?}"
                );
                assert_eq!(pair.a.sni(), Some("sip.example.com"));
                assert!(!pair.a.peer_has_certificate());
                assert_eq!(pair.b.peer_certificates().unwrap()[0], server_leaf(key).der);
                for len in ODD_SIZES {
                    pair.exchange(&payload(len));
                }
            }
        }
    }

    #[test]
    fn our_client_with_rustls_server() {
        for (version, key) in CASES {
            let ours = TlsSession::client(&our_client(), "sip.example.com").unwrap();
            assert!(ours.wants_output(), "ClientHello ready");
            let mut pair = Pair::new(ours, rustls_server(version, server_leaf(key)));
            pair.chunk = 4093;
            pair.handshake();
            assert_eq!(
                pair.a.protocol_version(),
                Some(version),
                "{version:?} {key:?}"
            );
            assert_eq!(pair.a.sni(), None);
            assert!(pair.a.peer_has_certificate());
            assert_eq!(pair.a.peer_certificates().unwrap()[0], server_leaf(key).der);
            for len in ODD_SIZES {
                pair.exchange(&payload(len));
            }
        }
    }

    #[test]
    fn input_one_byte_at_a_time() {
        for version in [TlsVersion::Tls13, TlsVersion::Tls12] {
            let ours = TlsSession::server(&our_server(Key::Ecdsa)).unwrap();
            let mut pair = Pair::new(ours, rustls_client(version, "sip.example.com"));
            pair.chunk = 1;
            pair.handshake();
            pair.exchange(&payload(2_049));
            pair.exchange(b"OPTIONS sip:a@b SIP/2.0\r\n\r\n");
        }
    }

    #[test]
    fn both_ends_ours() {
        let server = TlsSession::server(&our_server(Key::Ecdsa)).unwrap();
        let client = TlsSession::client(&our_client(), "sip.example.com").unwrap();
        let mut pair = Pair::new(client, server);
        pair.handshake();
        assert_eq!(pair.a.protocol_version(), Some(TlsVersion::Tls13));
        for len in ODD_SIZES {
            pair.exchange(&payload(len));
        }
    }

    #[test]
    fn write_before_handshake_is_queued() {
        let mut client = TlsSession::client(&our_client(), "sip.example.com").unwrap();
        let mut server = TlsSession::server(&our_server(Key::Ecdsa)).unwrap();
        client.write(b"REGISTER early").unwrap();
        server.write(b"server early").unwrap();
        let mut pair = Pair::new(client, server);
        pair.handshake();
        assert_eq!(pair.b_rx, b"REGISTER early");
        assert_eq!(pair.a_rx, b"server early");
    }

    // ---- client certificates --------------------------------------------

    fn mutual(verify: ClientVerify, client: &ClientTls) -> Pair<TlsSession, TlsSession> {
        let server = ServerTls::new(&settings(&pki().ecdsa, verify)).unwrap();
        Pair::new(
            TlsSession::client(client, "sip.example.com").unwrap(),
            TlsSession::server(&server).unwrap(),
        )
    }

    #[test]
    fn client_cert_required() {
        for version in [TlsVersion::Tls13, TlsVersion::Tls12] {
            // Without a certificate: the server fails and has an alert to send.
            let server = ServerTls::new(&settings(&pki().ecdsa, ClientVerify::Required)).unwrap();
            let mut ours = TlsSession::server(&server).unwrap();
            let mut peer = rustls_client(version, "sip.example.com");
            let (mut rx, mut peer_rx) = (Vec::new(), Vec::new());
            let err = loop {
                let mut wire = Vec::new();
                peer.output(&mut wire);
                assert!(!wire.is_empty(), "{version:?}: handshake stalled");
                if let Err(e) = ours.handle_input(&wire, &mut rx) {
                    break e;
                }
                let mut back = Vec::new();
                ours.poll_output(&mut back);
                peer.input(&back, &mut peer_rx).unwrap();
            };
            assert!(
                matches!(
                    err,
                    TlsError::Protocol(rustls::Error::NoCertificatesPresented)
                ),
                "{err:?}"
            );
            let mut alert = Vec::new();
            ours.poll_output(&mut alert);
            assert!(!alert.is_empty(), "an alert comes out");
            let peer_err = peer.input(&alert, &mut peer_rx).unwrap_err();
            assert!(
                matches!(peer_err, Fail::Peer(rustls::Error::AlertReceived(_))),
                "{peer_err:?}"
            );
            // A dead session stays dead.
            assert!(ours
                .handle_input(b"\x16\x03\x03\x00\x01\x00", &mut rx)
                .is_err());
        }

        // With a certificate from the trusted CA.
        let mut pair = mutual(ClientVerify::Required, &our_client_with_cert(&pki().client));
        pair.handshake();
        assert!(pair.b.peer_has_certificate());
        assert_eq!(pair.b.peer_certificates().unwrap()[0], pki().client.der);
        pair.exchange(b"INVITE");

        // With a certificate from another CA.
        let mut pair = mutual(
            ClientVerify::Required,
            &our_client_with_cert(&pki().rogue_client),
        );
        let err = pair.run().unwrap_err();
        assert!(
            matches!(
                err,
                Fail::Ours(TlsError::Protocol(rustls::Error::InvalidCertificate(_)))
            ),
            "{err:?}"
        );
        let mut alert = Vec::new();
        pair.b.poll_output(&mut alert);
        assert!(!alert.is_empty());
    }

    #[test]
    fn client_cert_optional() {
        let mut pair = mutual(ClientVerify::Optional, &our_client());
        pair.handshake();
        assert!(!pair.b.peer_has_certificate());
        pair.exchange(b"MESSAGE");

        let mut pair = mutual(ClientVerify::Optional, &our_client_with_cert(&pki().client));
        pair.handshake();
        assert!(pair.b.peer_has_certificate());

        // A certificate that is sent must still verify.
        let mut pair = mutual(
            ClientVerify::Optional,
            &our_client_with_cert(&pki().rogue_client),
        );
        assert!(pair.run().is_err());
    }

    #[test]
    fn client_cert_none() {
        let mut pair = mutual(ClientVerify::None, &our_client_with_cert(&pki().client));
        pair.handshake();
        assert!(!pair.b.peer_has_certificate());
        pair.exchange(b"BYE");
    }

    // ---- server verification ----------------------------------------------

    #[test]
    fn no_ca_fails_and_opt_out_accepts() {
        let server = our_server(Key::Ecdsa);
        let nothing_trusted = ClientTls::new(None, true, None).unwrap();
        let mut pair = Pair::new(
            TlsSession::client(&nothing_trusted, "sip.example.com").unwrap(),
            TlsSession::server(&server).unwrap(),
        );
        let err = pair.run().unwrap_err();
        assert!(
            matches!(
                err,
                Fail::Ours(TlsError::Protocol(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer
                )))
            ),
            "{err:?}"
        );

        let lab = ClientTls::new(None, false, None).unwrap();
        let mut pair = Pair::new(
            TlsSession::client(&lab, "whatever.invalid").unwrap(),
            TlsSession::server(&server).unwrap(),
        );
        pair.handshake();
        pair.exchange(b"OPTIONS");
    }

    #[test]
    fn server_name_checked() {
        let mut pair = Pair::new(
            TlsSession::client(&our_client(), "other.example.com").unwrap(),
            TlsSession::server(&our_server(Key::Ecdsa)).unwrap(),
        );
        let err = pair.run().unwrap_err();
        assert!(
            matches!(
                err,
                Fail::Ours(TlsError::Protocol(rustls::Error::InvalidCertificate(_)))
            ),
            "{err:?}"
        );
    }

    #[test]
    fn ip_targets_use_ip_sans() {
        let server = ServerTls::new(&settings(&pki().ip, ClientVerify::None)).unwrap();
        let ok = [
            TlsSession::client(&our_client(), "192.0.2.10").unwrap(),
            TlsSession::client(&our_client(), "[2001:db8::1]").unwrap(),
            TlsSession::client(&our_client(), "2001:db8::1").unwrap(),
            TlsSession::client_ip(&our_client(), IpAddr::from([192, 0, 2, 10])).unwrap(),
        ];
        for client in ok {
            let mut pair = Pair::new(client, TlsSession::server(&server).unwrap());
            pair.handshake();
            assert_eq!(pair.b.sni(), None, "no SNI for an IP target");
        }
        let mut pair = Pair::new(
            TlsSession::client(&our_client(), "192.0.2.11").unwrap(),
            TlsSession::server(&server).unwrap(),
        );
        assert!(pair.run().is_err());
    }

    // ---- SNI ----------------------------------------------------------

    #[test]
    fn sni_picks_the_domain_cert() {
        let p = pki();
        let mut s = settings(&p.ecdsa, ClientVerify::None);
        s.sni = vec![
            SniCert {
                domain: "B.Example.NET",
                cert_pem: p.sni.cert_pem.as_bytes(),
                key_pem: p.sni.key_pem.as_bytes(),
            },
            SniCert {
                domain: "*.wild.example.org",
                cert_pem: p.wild.cert_pem.as_bytes(),
                key_pem: p.wild.key_pem.as_bytes(),
            },
        ];
        let server = ServerTls::new(&s).unwrap();
        let cases = [
            ("b.example.net", &p.sni.der, Some("b.example.net")),
            ("b.EXAMPLE.net", &p.sni.der, Some("b.example.net")),
            (
                "x.wild.example.org",
                &p.wild.der,
                Some("x.wild.example.org"),
            ),
            ("sip.example.com", &p.ecdsa.der, Some("sip.example.com")),
        ];
        for (name, want, sni) in cases {
            let mut pair = Pair::new(
                TlsSession::client(&our_client(), name).unwrap(),
                TlsSession::server(&server).unwrap(),
            );
            pair.handshake();
            assert_eq!(&pair.a.peer_certificates().unwrap()[0], want, "{name}");
            assert_eq!(pair.b.sni(), sni);
        }
        // Unknown names and wildcards one label too deep get the default.
        let lab = ClientTls::new(None, false, None).unwrap();
        for name in [
            "unknown.example",
            "a.b.wild.example.org",
            "wild.example.org",
        ] {
            let mut pair = Pair::new(
                TlsSession::client(&lab, name).unwrap(),
                TlsSession::server(&server).unwrap(),
            );
            pair.handshake();
            assert_eq!(
                pair.a.peer_certificates().unwrap()[0],
                p.ecdsa.der,
                "{name}"
            );
        }
    }

    // ---- hostile input ------------------------------------------------

    /// xorshift64*: deterministic bytes without a dependency.
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
            })
            .collect()
    }

    #[test]
    fn http_request_is_rejected_with_an_alert() {
        let mut ours = TlsSession::server(&our_server(Key::Ecdsa)).unwrap();
        let mut rx = Vec::new();
        let err = ours
            .handle_input(b"GET / HTTP/1.1\r\n\r\n", &mut rx)
            .unwrap_err();
        assert!(matches!(err, TlsError::Protocol(_)), "{err:?}");
        assert!(rx.is_empty());
        let mut alert = Vec::new();
        ours.poll_output(&mut alert);
        assert_eq!(alert.first(), Some(&0x15), "a plaintext alert record");
        assert!(ours
            .handle_input(b"GET / HTTP/1.1\r\n\r\n", &mut rx)
            .is_err());
    }

    #[test]
    fn random_bytes_do_not_panic() {
        let mut errors = 0;
        for seed in 0..300u64 {
            let data = noise(seed, 1 + (seed as usize * 37) % 3000);
            let mut rx = Vec::new();

            let mut server = TlsSession::server(&our_server(Key::Ecdsa)).unwrap();
            match server.handle_input(&data, &mut rx) {
                Err(_) => errors += 1,
                Ok(()) => assert!(server.is_handshaking() && rx.is_empty()),
            }
            let mut out = Vec::new();
            server.poll_output(&mut out);

            let mut client = TlsSession::client(&our_client(), "sip.example.com").unwrap();
            client.poll_output(&mut out);
            if client.handle_input(&data, &mut rx).is_ok() {
                assert!(client.is_handshaking() && rx.is_empty());
            }
        }
        assert!(
            errors > 250,
            "most noise is rejected at once ({errors}/300)"
        );

        // Noise into an established session.
        for seed in 0..20u64 {
            let ours = TlsSession::server(&our_server(Key::Ecdsa)).unwrap();
            let mut pair = Pair::new(ours, rustls_client(TlsVersion::Tls13, "sip.example.com"));
            pair.handshake();
            let mut record = vec![0x17, 0x03, 0x03, 0x01, 0x00];
            record.extend(noise(seed, 256));
            let mut rx = Vec::new();
            assert!(pair.a.handle_input(&record, &mut rx).is_err());
            assert!(rx.is_empty());
        }
    }

    #[test]
    fn oversized_record_is_rejected() {
        let mut ours = TlsSession::server(&our_server(Key::Ecdsa)).unwrap();
        let mut rx = Vec::new();
        // A handshake record claiming 65535 bytes, then data to match.
        let mut data = vec![0x16, 0x03, 0x01, 0xff, 0xff];
        data.extend(noise(7, 70_000));
        assert!(ours.handle_input(&data, &mut rx).is_err());
    }

    // ---- bounded sending ----------------------------------------------

    #[test]
    fn send_queue_bound_holds_when_peer_never_reads() {
        let limit = 16 * 1024;
        let server = our_server(Key::Ecdsa).with_send_queue_limit(limit);
        let ours = TlsSession::server(&server).unwrap();
        let mut pair = Pair::new(ours, rustls_client(TlsVersion::Tls13, "sip.example.com"));
        pair.handshake();

        let msg = payload(1000);
        let mut accepted = 0;
        let err = loop {
            match pair.a.write(&msg) {
                Ok(()) => accepted += msg.len(),
                Err(e) => break e,
            }
            assert!(accepted <= limit, "over the bound without an error");
        };
        assert!(matches!(err, TlsError::SendQueueFull));
        assert!(accepted > limit / 2, "the bound is usable ({accepted})");
        assert!(pair.a.write(&msg).is_err(), "still full");

        // What rustls holds stays within the bound.
        let mut out = Vec::new();
        pair.a.poll_output(&mut out);
        assert!(out.len() <= limit, "{} bytes queued", out.len());
        assert!(out.len() >= accepted);
        // Once sent, there is room again.
        pair.a.write(&msg).unwrap();
    }

    #[test]
    fn send_queue_bound_holds_before_handshake() {
        let limit = 8 * 1024;
        let client = our_client().with_send_queue_limit(limit);
        let mut ours = TlsSession::client(&client, "sip.example.com").unwrap();
        let msg = payload(999);
        let mut accepted = 0;
        while ours.write(&msg).is_ok() {
            accepted += msg.len();
            assert!(accepted <= limit);
        }
        assert!(accepted > 0);
        // Polling before the handshake does not free the waiting plaintext.
        let mut hello = Vec::new();
        ours.poll_output(&mut hello);
        assert!(ours.write(&msg).is_err());

        let peer = rustls_server(TlsVersion::Tls13, &pki().ecdsa);
        let mut pair = Pair::new(ours, peer);
        pair.b.input(&hello, &mut Vec::new()).unwrap();
        pair.handshake();
        assert_eq!(pair.b_rx.len(), accepted);
        pair.a.write(&msg).unwrap();
    }

    // ---- close ----------------------------------------------------------

    #[test]
    fn close_notify_both_ways() {
        let ours = TlsSession::server(&our_server(Key::Ecdsa)).unwrap();
        let mut pair = Pair::new(ours, rustls_client(TlsVersion::Tls13, "sip.example.com"));
        pair.handshake();
        assert!(!pair.a.is_closed());

        pair.b.send_close_notify();
        pair.run().unwrap();
        assert!(pair.a.is_closed());
        // Bytes after close_notify are ignored, not an error.
        pair.a.handle_input(b"junk", &mut Vec::new()).unwrap();

        pair.a.close();
        assert!(matches!(pair.a.write(b"x"), Err(TlsError::Closed)));
        let mut out = Vec::new();
        pair.a.poll_output(&mut out);
        let mut rx = Vec::new();
        let mut rest = &out[..];
        pair.b.read_tls(&mut rest).unwrap();
        assert!(pair.b.process_new_packets().unwrap().peer_has_closed());
        let _ = pair.b.reader().read_to_end(&mut rx);
    }

    // ---- configuration errors -------------------------------------------

    #[test]
    fn config_errors() {
        let p = pki();
        let bad_pem = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        let cert = p.ecdsa.cert_pem.as_bytes();
        let key = p.ecdsa.key_pem.as_bytes();
        let pem_err = |r: Result<ServerTls, TlsError>| match r {
            Err(TlsError::Pem { input, fault }) => (input, fault),
            other => panic!("{other:?}"),
        };
        let mut s = settings(&p.ecdsa, ClientVerify::None);
        s.cert_pem = b"not pem";
        assert_eq!(
            pem_err(ServerTls::new(&s)),
            (PemInput::Cert, PemFault::Empty)
        );
        s.cert_pem = bad_pem;
        assert_eq!(
            pem_err(ServerTls::new(&s)),
            (PemInput::Cert, PemFault::Malformed)
        );
        s.cert_pem = cert;
        s.key_pem = cert;
        assert_eq!(
            pem_err(ServerTls::new(&s)),
            (PemInput::Key, PemFault::Empty)
        );
        s.key_pem = p.rsa.key_pem.as_bytes();
        assert!(matches!(
            ServerTls::new(&s),
            Err(TlsError::Key {
                input: PemInput::Key,
                ..
            })
        ));
        s.key_pem = key;

        s.verify_client = ClientVerify::Required;
        s.ca_pem = None;
        assert!(matches!(ServerTls::new(&s), Err(TlsError::ClientCaMissing)));
        s.ca_pem = Some(b"");
        assert_eq!(pem_err(ServerTls::new(&s)), (PemInput::Ca, PemFault::Empty));
        s.verify_client = ClientVerify::None;

        for domain in ["", "bad domain", "*", "a.*.example.com", "*."] {
            s.sni = vec![SniCert {
                domain,
                cert_pem: cert,
                key_pem: key,
            }];
            assert!(
                matches!(ServerTls::new(&s), Err(TlsError::SniDomain(0))),
                "{domain:?}"
            );
        }
        s.sni = vec![
            SniCert {
                domain: "a.example.com",
                cert_pem: cert,
                key_pem: key,
            },
            SniCert {
                domain: "A.example.com.",
                cert_pem: cert,
                key_pem: key,
            },
        ];
        assert!(matches!(
            ServerTls::new(&s),
            Err(TlsError::SniDomainDuplicate(1))
        ));
        s.sni = vec![SniCert {
            domain: "a.example.com",
            cert_pem: cert,
            key_pem: b"",
        }];
        assert_eq!(
            pem_err(ServerTls::new(&s)),
            (PemInput::SniKey(0), PemFault::Empty)
        );

        let c = ClientTls::new(None, true, Some((b"", key)));
        assert!(matches!(
            c,
            Err(TlsError::Pem {
                input: PemInput::ClientCert,
                fault: PemFault::Empty
            })
        ));
        let c = ClientTls::new(None, true, Some((cert, p.rsa.key_pem.as_bytes())));
        assert!(
            matches!(
                c,
                Err(TlsError::Key {
                    input: PemInput::ClientKey,
                    ..
                })
            ),
            "{c:?}"
        );
        assert!(matches!(
            ClientTls::new(Some(bad_pem), true, None),
            Err(TlsError::Pem {
                input: PemInput::Ca,
                ..
            })
        ));

        for host in ["", "bad host", "[not-an-ip]", "[192.0.2.1", "a..b"] {
            assert!(
                matches!(
                    TlsSession::client(&our_client(), host),
                    Err(TlsError::ServerName)
                ),
                "{host:?}"
            );
        }
    }
}
