//! SIP over WebSocket, server side: the sans-IO codec of one WebSocket
//! connection (RFC 6455, RFC 7118).
//!
//! [`WsServer`] owns the state of one accepted connection: the opening
//! handshake, frame decoding, defragmentation, the ping/pong and close
//! exchanges. Bytes read from the connection (already decrypted for `wss`)
//! go in through [`WsServer::handle_input`]; the bytes to write back (the
//! `101` or an HTTP refusal, pongs, Close frames) are appended to a buffer
//! the caller owns, and each complete data message (one SIP message per
//! RFC 7118 §5) is handed to a callback, borrowed for the call. Outgoing SIP
//! messages are framed by [`WsServer::encode`]. There are no sockets, clocks
//! or timers here: the closing timeout of RFC 6455 §7.1.1 is the caller's.
//!
//! RFC sections implemented:
//! - RFC 6455 §4.2.1–§4.2.2: reading the client's opening handshake, the
//!   `Sec-WebSocket-Accept` computation, refusals (400, 405, 426, 431).
//! - RFC 6455 §5.1–§5.7: base framing, client-to-server masking, lengths,
//!   fragmentation (control frames between fragments), control frames.
//! - RFC 6455 §5.6, §8.1: text messages must be UTF-8 as a whole.
//! - RFC 6455 §7.1.7, §7.4: failing the connection with a status code;
//!   the closing handshake and the valid close codes (plus the IANA-registered
//!   1012–1014).
//! - RFC 7118 §4.1–§4.2, §5: the `sip` subprotocol must be negotiated; one
//!   text or binary message carries one SIP message.
//!
//! ```text
//!            GET + Upgrade ok: 101 written            close(): Close written
//!  Handshake ---------------------------> Open ----------------------------> Closing
//!      |                                   |                                    |
//!      | refusal: HTTP 4xx written         | peer Close: Close echoed           | peer Close
//!      |                                   | WsError: Close 1002/1007/1009      | WsError
//!      v                                   v                                    v
//!    Closed <------------------------------+------------------------------------+
//!    (all further input is ignored; the caller flushes `out` and closes the TCP connection)
//! ```
//!
//! Allocation and panic contract: nothing here panics on any input. The
//! codec holds three buffers, each bounded by [`WsLimits`] and each reused
//! (cleared, not freed) between frames; all three are freed when the state
//! becomes [`WsState::Closed`]:
//! - the pending input: an incomplete handshake (< `max_handshake` bytes) or
//!   the prefix of one incomplete frame (< `max_frame` + 14 bytes);
//! - the message being reassembled from fragments (≤ `max_message` bytes);
//! - a scratch buffer for the unmasked payload of one frame (≤ `max_frame`).
//!
//! A frame's declared length is checked against the limits as soon as its
//! header is read, before any of its payload is buffered. Output is appended
//! to the caller's `out`: a ping yields a pong no longer than itself and a
//! Close frame yields a 4-byte Close, so a read never produces more output
//! than its own length plus one Close (4 bytes) or one HTTP response.
//!
//! Why the raw tail of a partial frame is buffered rather than unmasked as it
//! arrives: the fast path (nothing pending, whole frames in the read) is the
//! common case on a SIP edge, where each read holds a few whole messages. It
//! unmasks straight from the caller's slice into the scratch buffer (masking
//! needs one copy anyway) and buffers nothing. Only the bytes of a frame cut
//! by the end of a read are kept, and once that frame is complete the rest
//! of the next read goes back to the fast path.
//!
//! Why every error ends in `Closed` rather than `Closing`: RFC 6455 §7.1.7
//! says an endpoint that fails the connection must not go on processing data
//! from the peer, not even a responding Close. `Closing` means only "we sent
//! a Close by [`WsServer::close`] and wait for the peer's".
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

use std::io::Write as _;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha1::{Digest as _, Sha1};

/// The GUID appended to `Sec-WebSocket-Key` (RFC 6455 §1.3, §4.2.2).
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// How many header lines a handshake request may have.
const HANDSHAKE_HEADERS: usize = 64;
/// The longest frame header: 2 bytes, an 8-byte length, a 4-byte mask.
const MAX_FRAME_HEADER: usize = 14;
/// The length of a `Sec-WebSocket-Accept` value: base64 of 20 bytes.
const ACCEPT_LEN: usize = 28;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Bounds on what one connection may make the codec hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsLimits {
    /// The largest payload of one frame, in bytes (larger: close 1009).
    pub max_frame: usize,
    /// The largest data message after defragmentation, in bytes (larger:
    /// close 1009).
    pub max_message: usize,
    /// The largest opening handshake request head, in bytes (larger: 431).
    pub max_handshake: usize,
}

impl Default for WsLimits {
    /// 64 KiB frames and messages (a SIP message rarely passes a few KiB),
    /// 8 KiB handshakes.
    fn default() -> Self {
        Self {
            max_frame: 65_536,
            max_message: 65_536,
            max_handshake: 8_192,
        }
    }
}

/// Where a connection is in its life (RFC 6455 §4, §7; states in RFC order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsState {
    /// Reading the client's opening handshake (RFC 6455 §4.2.1).
    Handshake,
    /// The handshake was accepted: frames flow both ways.
    Open,
    /// We sent a Close and wait for the peer's (RFC 6455 §7.1.2).
    Closing,
    /// Done: flush what was written and close the TCP connection. Further
    /// input is ignored.
    Closed,
}

/// Why a handshake was refused or a connection failed. Variants with an
/// [`http_status`](Self::http_status) happen during the handshake, the
/// others (with a [`close_code`](Self::close_code)) once it is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// A Close frame with a 1-byte payload or a code that may not be sent
    /// (RFC 6455 §7.4).
    #[error("invalid close frame status code")]
    BadCloseCode,
    /// `Sec-WebSocket-Key` missing, repeated, or not the base64 of 16 bytes.
    #[error("bad Sec-WebSocket-Key")]
    BadKey,
    /// A 64-bit payload length with its most significant bit set.
    #[error("frame length with the most significant bit set")]
    BadLength,
    /// A reserved opcode (0x3–0x7, 0xB–0xF).
    #[error("reserved frame opcode")]
    BadOpcode,
    /// The handshake is not well-formed HTTP/1.1 (or lacks `Host`).
    #[error("malformed handshake request")]
    BadRequest,
    /// A continuation frame with no fragmented message in progress.
    #[error("continuation frame without a message in progress")]
    ContinuationUnexpected,
    /// A control frame without FIN.
    #[error("fragmented control frame")]
    ControlFragmented,
    /// A control frame with a payload longer than 125 bytes.
    #[error("control frame payload longer than 125 bytes")]
    ControlTooLong,
    /// A frame declared a payload longer than [`WsLimits::max_frame`].
    #[error("frame larger than the limit")]
    FrameTooBig,
    /// The handshake request head grew past [`WsLimits::max_handshake`] (or
    /// has too many header lines) without completing.
    #[error("handshake request too large")]
    HandshakeTooLarge,
    /// A text message (or a close reason) that is not valid UTF-8.
    #[error("invalid UTF-8 in a text message or close reason")]
    InvalidUtf8,
    /// A new text or binary frame while a fragmented message is in progress.
    #[error("data frame interleaved with a fragmented message")]
    MessageInterleaved,
    /// A message would grow past [`WsLimits::max_message`].
    #[error("message larger than the limit")]
    MessageTooBig,
    /// The handshake request's method is not GET.
    #[error("handshake method is not GET")]
    MethodNotAllowed,
    /// The request is not a WebSocket upgrade (`Upgrade: websocket` and
    /// `Connection: Upgrade` required).
    #[error("not a WebSocket upgrade request")]
    NotUpgrade,
    /// A frame with RSV1, RSV2 or RSV3 set (no extension is negotiated).
    #[error("reserved frame bits set")]
    ReservedBits,
    /// `Sec-WebSocket-Protocol` does not offer `sip` (RFC 7118 §4.1).
    #[error("the sip subprotocol was not offered")]
    SubprotocolMissing,
    /// A client frame without the mask bit (RFC 6455 §5.1).
    #[error("unmasked client frame")]
    Unmasked,
    /// `Sec-WebSocket-Version` missing or other than 13.
    #[error("unsupported Sec-WebSocket-Version")]
    VersionUnsupported,
}

impl WsError {
    /// The Close status code this failure sends (RFC 6455 §7.4.1): 1002
    /// protocol error, 1007 invalid UTF-8, 1009 too big; `None` for a
    /// handshake refusal.
    pub const fn close_code(&self) -> Option<u16> {
        match self {
            Self::BadCloseCode
            | Self::BadLength
            | Self::BadOpcode
            | Self::ContinuationUnexpected
            | Self::ControlFragmented
            | Self::ControlTooLong
            | Self::MessageInterleaved
            | Self::ReservedBits
            | Self::Unmasked => Some(1002),
            Self::InvalidUtf8 => Some(1007),
            Self::FrameTooBig | Self::MessageTooBig => Some(1009),
            Self::BadKey
            | Self::BadRequest
            | Self::HandshakeTooLarge
            | Self::MethodNotAllowed
            | Self::NotUpgrade
            | Self::SubprotocolMissing
            | Self::VersionUnsupported => None,
        }
    }

    /// The HTTP status of a handshake refusal (400, 405, 426, 431); `None`
    /// for a failure after the handshake.
    pub const fn http_status(&self) -> Option<u16> {
        match self.refusal() {
            Some(r) => Some(r.status),
            None => None,
        }
    }

    /// The response that refuses a handshake for this reason.
    const fn refusal(&self) -> Option<Refusal> {
        let (status, headers, body) = match self {
            Self::BadKey => (
                400,
                "",
                "Sec-WebSocket-Key must be the base64 of 16 bytes\n",
            ),
            Self::BadRequest => (400, "", "malformed WebSocket handshake request\n"),
            Self::HandshakeTooLarge => (431, "", "WebSocket handshake request too large\n"),
            Self::MethodNotAllowed => (
                405,
                "Allow: GET\r\n",
                "a WebSocket handshake must be a GET\n",
            ),
            Self::NotUpgrade => (
                426,
                "Upgrade: websocket\r\n",
                "WebSocket upgrade required (Upgrade: websocket, Connection: Upgrade)\n",
            ),
            Self::SubprotocolMissing => (
                400,
                "",
                "Sec-WebSocket-Protocol must offer the \"sip\" subprotocol (RFC 7118)\n",
            ),
            Self::VersionUnsupported => (
                426,
                "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
                "only Sec-WebSocket-Version 13 is supported\n",
            ),
            _ => return None,
        };
        let reason = match status {
            405 => "Method Not Allowed",
            426 => "Upgrade Required",
            431 => "Request Header Fields Too Large",
            _ => "Bad Request",
        };
        Some(Refusal {
            status,
            reason,
            headers,
            body,
        })
    }
}

/// The server side of one SIP-over-WebSocket connection. See the module
/// docs for the state machine and the allocation contract.
#[derive(Debug, Clone)]
pub struct WsServer {
    limits: WsLimits,
    state: WsState,
    // INVARIANT: in Handshake, fewer than `max_handshake` bytes of an
    // incomplete request head; in Open/Closing, the prefix (shorter than
    // its header plus declared payload, so < `max_frame` + 14 bytes) of one
    // frame whose header passed every check that its bytes allow so far.
    pending: Vec<u8>,
    // INVARIANT: `fragment.is_some()` iff a fragmented message is in
    // progress; then `message` holds its unmasked payload so far, at most
    // `max_message` bytes. Otherwise `message` is empty.
    message: Vec<u8>,
    fragment: Option<Kind>,
    // INVARIANT: only meaningful inside one call of `on_frame`; at most
    // `max_frame` bytes.
    scratch: Vec<u8>,
}

impl WsServer {
    /// A connection that has not yet read its handshake.
    pub fn new(limits: WsLimits) -> Self {
        Self {
            limits,
            state: WsState::Handshake,
            pending: Vec::new(),
            message: Vec::new(),
            fragment: None,
            scratch: Vec::new(),
        }
    }

    /// Where the connection is.
    pub fn state(&self) -> WsState {
        self.state
    }

    /// The limits this connection enforces.
    pub fn limits(&self) -> WsLimits {
        self.limits
    }

    /// Bytes held between calls: a partial handshake or frame, plus a
    /// partial fragmented message. At most `max(max_handshake, max_frame +
    /// 14) + max_message`.
    pub fn buffered(&self) -> usize {
        self.pending.len().saturating_add(self.message.len())
    }

    /// Feeds bytes read from the connection (already decrypted if wss).
    /// Bytes to send back (the 101 or an HTTP refusal, pongs, close frames)
    /// are appended to `out`; each complete data message (text or binary,
    /// defragmented) is handed to `deliver`. On Err, `out` already holds what
    /// to send before closing (an HTTP error response or a Close frame) and
    /// the state is Closed. In `Closed`, input is ignored and `Ok` returned.
    ///
    /// After the peer's Close (answered with a Close echoing its code, the
    /// state becomes Closed) the rest of `data` is ignored. While `Closing`,
    /// data messages are still delivered and pings answered (RFC 6455
    /// §5.5.2, §7.1.2).
    pub fn handle_input(
        &mut self,
        data: &[u8],
        out: &mut Vec<u8>,
        deliver: &mut dyn FnMut(&[u8]),
    ) -> Result<(), WsError> {
        let result = match self.state {
            WsState::Handshake => self.handshake(data, out, deliver),
            WsState::Open | WsState::Closing => self.frames(data, out, deliver),
            WsState::Closed => Ok(()),
        };
        if let Err(error) = result {
            match self.state {
                WsState::Handshake => write_refusal(error, out),
                // RFC 6455 §7.1.7: fail the connection with a Close first.
                WsState::Open => write_close(out, error.close_code().unwrap_or(1002)),
                // A Close was already sent (§5.5.1: at most one).
                WsState::Closing | WsState::Closed => {}
            }
            self.state = WsState::Closed;
        }
        if self.state == WsState::Closed {
            self.release();
        }
        result
    }

    /// Frames `payload` (one SIP message) as one unmasked FIN text frame into `out`.
    ///
    /// This is framing only: the caller sends only while [`state`](Self::state)
    /// is [`WsState::Open`] (RFC 6455 §5.5.1: no data after a Close).
    pub fn encode(&self, payload: &[u8], out: &mut Vec<u8>) {
        write_frame(out, OP_TEXT, payload);
    }

    /// Starts a close (code, e.g. 1000 or 1001 going away) into `out`.
    ///
    /// Only in `Open`: writes a Close frame and moves to `Closing` to wait
    /// for the peer's Close. A code that may not be sent (1004–1006, 1015,
    /// outside 1000–4999) is replaced by 1000. In `Handshake` nothing can be
    /// sent: the state becomes `Closed`. In `Closing` or `Closed`, nothing
    /// happens.
    pub fn close(&mut self, code: u16, out: &mut Vec<u8>) {
        match self.state {
            WsState::Open => {
                write_close(out, if valid_close_code(code) { code } else { 1000 });
                self.state = WsState::Closing;
            }
            WsState::Handshake => {
                self.state = WsState::Closed;
                self.release();
            }
            WsState::Closing | WsState::Closed => {}
        }
    }

    /// Reads (more of) the opening handshake; frames after its end go on to
    /// [`frames`](Self::frames).
    fn handshake(
        &mut self,
        data: &[u8],
        out: &mut Vec<u8>,
        deliver: &mut dyn FnMut(&[u8]),
    ) -> Result<(), WsError> {
        let max = self.limits.max_handshake;
        let held = self.pending.len();
        let room = max.saturating_sub(held).min(data.len());
        let front = data.get(..room).unwrap_or(data);
        let parsed = if held == 0 {
            // Fast path: the whole head in one read is parsed in place.
            parse_handshake(front)?
        } else {
            self.pending.extend_from_slice(front);
            parse_handshake(&self.pending)?
        };
        let Some((end, accept)) = parsed else {
            if held.saturating_add(front.len()) >= max {
                return Err(WsError::HandshakeTooLarge);
            }
            if held == 0 {
                self.pending.extend_from_slice(front);
            }
            return Ok(());
        };
        // The head ends in this read: had it ended in the held bytes, the
        // previous call would have completed it.
        let consumed = end.checked_sub(held).ok_or(WsError::BadRequest)?;
        self.pending.clear();
        write_accept(out, &accept);
        self.state = WsState::Open;
        self.frames(data.get(consumed..).unwrap_or_default(), out, deliver)
    }

    /// Decodes frames: first completes a pending one, then whole frames
    /// straight from `data`, then keeps a partial tail.
    fn frames(
        &mut self,
        data: &[u8],
        out: &mut Vec<u8>,
        deliver: &mut dyn FnMut(&[u8]),
    ) -> Result<(), WsError> {
        let mut data = data;
        if !self.pending.is_empty() {
            let (flow, rest) = self.complete_pending(data, out, deliver)?;
            if flow == Flow::Stop || !self.pending.is_empty() {
                return Ok(());
            }
            data = rest;
        }
        while !data.is_empty() {
            let head = match self.parse_head(data)? {
                Parsed::Frame(head) => head,
                Parsed::Partial(_) => {
                    self.pending.extend_from_slice(data);
                    return Ok(());
                }
            };
            let end = head.frame_len()?;
            let Some(masked) = data.get(head.header_len..end) else {
                // Bounded: `end` ≤ 14 + max_frame, checked by `parse_head`.
                self.pending.extend_from_slice(data);
                return Ok(());
            };
            if self.on_frame(head, masked, out, deliver)? == Flow::Stop {
                return Ok(());
            }
            data = data.get(end..).unwrap_or_default();
        }
        Ok(())
    }

    /// Moves bytes from `data` into the pending frame, no more than it
    /// needs, and handles the frame once it is whole. Returns the rest of
    /// `data`; `pending` is empty afterwards unless `data` ran out first.
    fn complete_pending<'d>(
        &mut self,
        data: &'d [u8],
        out: &mut Vec<u8>,
        deliver: &mut dyn FnMut(&[u8]),
    ) -> Result<(Flow, &'d [u8]), WsError> {
        let mut data = data;
        loop {
            let parsed = self.parse_head(&self.pending)?;
            let need = match parsed {
                // Always more than `pending` holds: the loop makes progress.
                Parsed::Partial(need) => need,
                Parsed::Frame(head) => head.frame_len()?,
            };
            let want = need.saturating_sub(self.pending.len()).min(data.len());
            let (front, rest) = data.split_at_checked(want).unwrap_or((data, &[]));
            self.pending.extend_from_slice(front);
            data = rest;
            if self.pending.len() < need {
                return Ok((Flow::Continue, data));
            }
            if let Parsed::Frame(head) = parsed {
                let mut frame = core::mem::take(&mut self.pending);
                let masked = frame.get(head.header_len..need).unwrap_or_default();
                let result = self.on_frame(head, masked, out, deliver);
                frame.clear();
                self.pending = frame;
                return result.map(|flow| (flow, data));
            }
        }
    }

    /// Checks a frame header as far as `b` goes, in byte order, so that the
    /// verdict does not depend on where reads split the input.
    fn parse_head(&self, b: &[u8]) -> Result<Parsed, WsError> {
        let Some(&b0) = b.first() else {
            return Ok(Parsed::Partial(2));
        };
        if b0 & 0x70 != 0 {
            return Err(WsError::ReservedBits);
        }
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0f;
        let control = opcode & 0x08 != 0;
        match opcode {
            OP_CONTINUATION if self.fragment.is_none() => {
                return Err(WsError::ContinuationUnexpected)
            }
            OP_TEXT | OP_BINARY if self.fragment.is_some() => {
                return Err(WsError::MessageInterleaved)
            }
            OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
            _ => return Err(WsError::BadOpcode),
        }
        if control && !fin {
            return Err(WsError::ControlFragmented);
        }
        let Some(&b1) = b.get(1) else {
            return Ok(Parsed::Partial(2));
        };
        if b1 & 0x80 == 0 {
            return Err(WsError::Unmasked);
        }
        let len7 = b1 & 0x7f;
        if control && len7 > 125 {
            return Err(WsError::ControlTooLong);
        }
        let (extended, header_len) = match len7 {
            126 => (2, 8),
            127 => (8, MAX_FRAME_HEADER),
            _ => (0, 6),
        };
        let Some(length_bytes) = b.get(2..2 + extended) else {
            return Ok(Parsed::Partial(header_len));
        };
        let length = match length_bytes {
            &[hi, lo] => u64::from(u16::from_be_bytes([hi, lo])),
            [] => u64::from(len7),
            bytes => u64::from_be_bytes(bytes.try_into().map_err(|_| WsError::BadLength)?),
        };
        if length >> 63 != 0 {
            return Err(WsError::BadLength);
        }
        let payload_len = usize::try_from(length)
            .ok()
            .filter(|&l| l <= self.limits.max_frame)
            .ok_or(WsError::FrameTooBig)?;
        if !control {
            let held = if opcode == OP_CONTINUATION {
                self.message.len()
            } else {
                0
            };
            if held
                .checked_add(payload_len)
                .is_none_or(|total| total > self.limits.max_message)
            {
                return Err(WsError::MessageTooBig);
            }
        }
        let Some(mask) = b.get(2 + extended..header_len) else {
            return Ok(Parsed::Partial(header_len));
        };
        Ok(Parsed::Frame(Head {
            fin,
            opcode,
            mask: mask.try_into().map_err(|_| WsError::Unmasked)?,
            header_len,
            payload_len,
        }))
    }

    /// Acts on one whole frame whose header `parse_head` accepted.
    fn on_frame(
        &mut self,
        head: Head,
        masked: &[u8],
        out: &mut Vec<u8>,
        deliver: &mut dyn FnMut(&[u8]),
    ) -> Result<Flow, WsError> {
        match head.opcode {
            OP_TEXT | OP_BINARY if head.fin => {
                let kind = Kind::of(head.opcode);
                let mut payload = core::mem::take(&mut self.scratch);
                payload.clear();
                unmask_into(&mut payload, masked, head.mask);
                let result = deliver_message(kind, &payload, deliver);
                self.scratch = payload;
                result?;
            }
            OP_TEXT | OP_BINARY => {
                self.message.clear();
                unmask_into(&mut self.message, masked, head.mask);
                self.fragment = Some(Kind::of(head.opcode));
            }
            OP_CONTINUATION => {
                unmask_into(&mut self.message, masked, head.mask);
                if head.fin {
                    let kind = self.fragment.take().unwrap_or(Kind::Binary);
                    let result = deliver_message(kind, &self.message, deliver);
                    self.message.clear();
                    result?;
                }
            }
            OP_PING => {
                self.scratch.clear();
                unmask_into(&mut self.scratch, masked, head.mask);
                write_frame(out, OP_PONG, &self.scratch);
            }
            OP_PONG => {}
            OP_CLOSE => return self.on_close(masked, head.mask, out),
            _ => return Err(WsError::BadOpcode),
        }
        Ok(Flow::Continue)
    }

    /// The peer's Close (RFC 6455 §5.5.1, §7.1.5): answered with a Close
    /// echoing its code unless we sent ours first; the connection is done.
    fn on_close(
        &mut self,
        masked: &[u8],
        mask: [u8; 4],
        out: &mut Vec<u8>,
    ) -> Result<Flow, WsError> {
        self.scratch.clear();
        unmask_into(&mut self.scratch, masked, mask);
        let code = match self.scratch.as_slice() {
            [] => 1000,
            [_] => return Err(WsError::BadCloseCode),
            &[hi, lo, ref reason @ ..] => {
                let code = u16::from_be_bytes([hi, lo]);
                if !valid_close_code(code) {
                    return Err(WsError::BadCloseCode);
                }
                if core::str::from_utf8(reason).is_err() {
                    return Err(WsError::InvalidUtf8);
                }
                code
            }
        };
        if self.state == WsState::Open {
            write_close(out, code);
        }
        self.state = WsState::Closed;
        Ok(Flow::Stop)
    }

    /// Frees the buffers of a closed connection.
    fn release(&mut self) {
        self.pending = Vec::new();
        self.message = Vec::new();
        self.scratch = Vec::new();
        self.fragment = None;
    }
}

impl Default for WsServer {
    /// A connection with the default limits.
    fn default() -> Self {
        Self::new(WsLimits::default())
    }
}

/// A handshake refusal: status line, extra header lines, text/plain body.
#[derive(Debug, Clone, Copy)]
struct Refusal {
    status: u16,
    reason: &'static str,
    /// Whole header lines, each ending in CRLF.
    headers: &'static str,
    body: &'static str,
}

/// What kind of data message is being reassembled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Binary,
    Text,
}

impl Kind {
    fn of(opcode: u8) -> Self {
        if opcode == OP_TEXT {
            Self::Text
        } else {
            Self::Binary
        }
    }
}

/// Whether to go on reading frames after one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    /// The peer's Close arrived: the rest of the input is ignored.
    Stop,
}

/// A frame header as far as it has been read.
#[derive(Debug, Clone, Copy)]
enum Parsed {
    /// At least this many bytes (more than are held) are needed.
    Partial(usize),
    /// The whole header is there and passed every check.
    Frame(Head),
}

/// A checked client frame header (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy)]
struct Head {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    // INVARIANT: 6, 8 or 14 (a masked header).
    header_len: usize,
    // INVARIANT: ≤ max_frame.
    payload_len: usize,
}

impl Head {
    /// Header plus payload, in bytes.
    fn frame_len(&self) -> Result<usize, WsError> {
        self.header_len
            .checked_add(self.payload_len)
            .ok_or(WsError::FrameTooBig)
    }
}

/// Parses a complete handshake head, if `buf` holds one: its length and the
/// `Sec-WebSocket-Accept` value to answer with.
fn parse_handshake(buf: &[u8]) -> Result<Option<(usize, [u8; ACCEPT_LEN])>, WsError> {
    let mut headers = [httparse::EMPTY_HEADER; HANDSHAKE_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let end = match request.parse(buf) {
        Ok(httparse::Status::Complete(end)) => end,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(WsError::HandshakeTooLarge),
        Err(_) => return Err(WsError::BadRequest),
    };
    if request.method != Some("GET") {
        return Err(WsError::MethodNotAllowed);
    }
    // RFC 6455 §4.2.1: HTTP/1.1 or higher, with a Host.
    if request.version != Some(1) {
        return Err(WsError::BadRequest);
    }
    let headers: &[httparse::Header<'_>] = request.headers;
    if values(headers, "host").next().is_none() {
        return Err(WsError::BadRequest);
    }
    if !has_token(values(headers, "upgrade"), b"websocket")
        || !has_token(values(headers, "connection"), b"upgrade")
    {
        return Err(WsError::NotUpgrade);
    }
    let mut versions = values(headers, "sec-websocket-version");
    match (versions.next(), versions.next()) {
        (Some(version), None) if version.trim_ascii() == b"13" => {}
        _ => return Err(WsError::VersionUnsupported),
    }
    let mut keys = values(headers, "sec-websocket-key");
    let key = match (keys.next(), keys.next()) {
        (Some(key), None) => key.trim_ascii(),
        _ => return Err(WsError::BadKey),
    };
    let mut raw = [0u8; 18];
    if key.len() != 24 || STANDARD.decode_slice(key, &mut raw) != Ok(16) {
        return Err(WsError::BadKey);
    }
    // RFC 7118 §4.1. A token: compared ASCII-case-insensitively.
    if !has_token(values(headers, "sec-websocket-protocol"), b"sip") {
        return Err(WsError::SubprotocolMissing);
    }
    let accept = accept_key(key).ok_or(WsError::BadKey)?;
    Ok(Some((end, accept)))
}

/// The values of every header line named `name` (ASCII-case-insensitive).
fn values<'h>(
    headers: &'h [httparse::Header<'h>],
    name: &'static str,
) -> impl Iterator<Item = &'h [u8]> + 'h {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// Whether a comma-separated token list, over all its lines, holds `token`
/// (ASCII-case-insensitive, RFC 9110 §5.6.1).
fn has_token<'v>(mut lines: impl Iterator<Item = &'v [u8]>, token: &[u8]) -> bool {
    lines.any(|line| {
        line.split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
    })
}

/// `Sec-WebSocket-Accept` for a key: base64(SHA-1(key ‖ GUID)) (RFC 6455 §4.2.2).
fn accept_key(key: &[u8]) -> Option<[u8; ACCEPT_LEN]> {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(GUID);
    let digest = sha1.finalize();
    let mut accept = [0u8; ACCEPT_LEN];
    // 20 bytes encode to exactly 28 characters: this cannot fail.
    match STANDARD.encode_slice(digest, &mut accept) {
        Ok(ACCEPT_LEN) => Some(accept),
        _ => None,
    }
}

/// The `101 Switching Protocols` response (RFC 6455 §4.2.2, RFC 7118 §4.2).
fn write_accept(out: &mut Vec<u8>, accept: &[u8; ACCEPT_LEN]) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\n\
          Upgrade: websocket\r\n\
          Connection: Upgrade\r\n\
          Sec-WebSocket-Accept: ",
    );
    out.extend_from_slice(accept);
    out.extend_from_slice(b"\r\nSec-WebSocket-Protocol: sip\r\n\r\n");
}

/// A complete HTTP/1.1 response refusing the handshake for `error`.
fn write_refusal(error: WsError, out: &mut Vec<u8>) {
    let Some(r) = error.refusal() else {
        return;
    };
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\n{}Connection: close\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\n\r\n{}",
        r.status,
        r.reason,
        r.headers,
        r.body.len(),
        r.body
    );
}

/// One unmasked FIN frame (server to client, RFC 6455 §5.2).
fn write_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    let len = payload.len();
    out.reserve(len.saturating_add(10));
    out.push(0x80 | opcode);
    match (u8::try_from(len), u16::try_from(len)) {
        (Ok(short), _) if short < 126 => out.push(short),
        (_, Ok(medium)) => {
            out.push(126);
            out.extend_from_slice(&medium.to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// A Close frame carrying `code` and no reason.
fn write_close(out: &mut Vec<u8>, code: u16) {
    write_frame(out, OP_CLOSE, &code.to_be_bytes());
}

/// Close codes a peer may send (RFC 6455 §7.4.1–§7.4.2, IANA registry).
const fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Hands a whole message over, text only if it is UTF-8 (RFC 6455 §8.1).
fn deliver_message(
    kind: Kind,
    payload: &[u8],
    deliver: &mut dyn FnMut(&[u8]),
) -> Result<(), WsError> {
    if kind == Kind::Text && core::str::from_utf8(payload).is_err() {
        return Err(WsError::InvalidUtf8);
    }
    deliver(payload);
    Ok(())
}

/// Appends `src` XOR the repeating `mask` to `dst` (RFC 6455 §5.3), eight
/// bytes at a time.
fn unmask_into(dst: &mut Vec<u8>, src: &[u8], mask: [u8; 4]) {
    dst.reserve(src.len());
    let [m0, m1, m2, m3] = mask;
    let wide = u64::from_ne_bytes([m0, m1, m2, m3, m0, m1, m2, m3]);
    let mut chunks = src.chunks_exact(8);
    for chunk in &mut chunks {
        if let Ok(word) = <[u8; 8]>::try_from(chunk) {
            dst.extend_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
        }
    }
    // Each chunk is a multiple of 4 long: the remainder starts at mask[0].
    dst.extend(
        chunks
            .remainder()
            .iter()
            .zip(mask.iter().cycle())
            .map(|(b, m)| b ^ m),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
    const HANDSHAKE: &[u8] = b"GET / HTTP/1.1\r\n\
        Host: sip-ws.example.com\r\n\
        Upgrade: websocket\r\n\
        Connection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Origin: http://www.example.com\r\n\
        Sec-WebSocket-Protocol: sip\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    /// How a test frame spells its payload length.
    #[derive(Clone, Copy)]
    enum Len {
        Minimal,
        Ext16,
        Ext64,
    }

    /// A client frame with any first byte, mask and length encoding.
    fn raw(b0: u8, mask: Option<[u8; 4]>, len: Len, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![b0];
        let m = if mask.is_some() { 0x80 } else { 0 };
        let n = payload.len();
        match len {
            Len::Minimal if n < 126 => f.push(m | n as u8),
            Len::Minimal if n <= 0xffff => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            Len::Ext16 => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            Len::Minimal | Len::Ext64 => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match mask {
            Some(k) => {
                f.extend_from_slice(&k);
                f.extend(payload.iter().zip(k.iter().cycle()).map(|(b, k)| b ^ k));
            }
            None => f.extend_from_slice(payload),
        }
        f
    }

    /// A masked client frame.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        raw(
            u8::from(fin) << 7 | opcode,
            Some(MASK),
            Len::Minimal,
            payload,
        )
    }

    /// A masked client frame that declares `len` but carries no payload.
    fn header_only(b0: u8, len: u64) -> Vec<u8> {
        let mut f = vec![b0, 0x80 | 127];
        f.extend_from_slice(&len.to_be_bytes());
        f.extend_from_slice(&MASK);
        f
    }

    fn text(s: &str) -> Vec<u8> {
        frame(true, OP_TEXT, s.as_bytes())
    }

    fn close_frame(code: u16, reason: &[u8]) -> Vec<u8> {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(reason);
        frame(true, OP_CLOSE, &p)
    }

    fn concat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    /// Everything a sequence of reads produced.
    #[derive(Debug, PartialEq)]
    struct Run {
        out: Vec<u8>,
        messages: Vec<Vec<u8>>,
        error: Option<WsError>,
        state: WsState,
    }

    fn run_with(limits: WsLimits, chunks: &[&[u8]]) -> Run {
        let mut ws = WsServer::new(limits);
        let mut out = Vec::new();
        let mut messages = Vec::new();
        let mut error = None;
        for chunk in chunks {
            let before = out.len();
            let r = ws.handle_input(chunk, &mut out, &mut |m| messages.push(m.to_vec()));
            if let Err(e) = r {
                assert_eq!(ws.state(), WsState::Closed);
                error.get_or_insert(e);
            }
            if error.is_some() && r.is_ok() {
                assert_eq!(out.len(), before, "input after Closed is ignored");
            }
            let bound = limits
                .max_handshake
                .max(limits.max_frame + MAX_FRAME_HEADER)
                + limits.max_message;
            assert!(ws.buffered() <= bound);
        }
        Run {
            out,
            messages,
            error,
            state: ws.state(),
        }
    }

    fn run(chunks: &[&[u8]]) -> Run {
        run_with(WsLimits::default(), chunks)
    }

    /// Every way of cutting `input` in two (and byte by byte) gives `whole`.
    fn assert_split_invariant(limits: WsLimits, input: &[u8]) -> Run {
        let whole = run_with(limits, &[input]);
        for i in 0..=input.len() {
            let (a, b) = input.split_at(i);
            assert_eq!(run_with(limits, &[a, b]), whole, "split at {i}");
        }
        for step in [3, 7] {
            let pieces: Vec<&[u8]> = input.chunks(step).collect();
            assert_eq!(run_with(limits, &pieces), whole, "chunks of {step}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(run_with(limits, &bytes), whole, "byte by byte");
        whole
    }

    /// The HTTP head of `out` (through CRLFCRLF), and what follows.
    fn http(out: &[u8]) -> (String, &[u8]) {
        let end = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("an HTTP head")
            + 4;
        (String::from_utf8(out[..end].to_vec()).unwrap(), &out[end..])
    }

    /// A tiny decoder of server frames: (first byte, payload) each.
    fn server_frames(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut frames = Vec::new();
        while !b.is_empty() {
            assert_eq!(b[1] & 0x80, 0, "server frames are unmasked");
            let (len, at) = match b[1] {
                126 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 => (
                    u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                n => (n as usize, 2),
            };
            frames.push((b[0], b[at..at + len].to_vec()));
            b = &b[at + len..];
        }
        frames
    }

    /// The frames after the 101 in `out`.
    fn after_101(out: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let (head, rest) = http(out);
        assert!(
            head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{head}"
        );
        server_frames(rest)
    }

    fn close_of(code: u16) -> (u8, Vec<u8>) {
        (0x88, code.to_be_bytes().to_vec())
    }

    /// The default handshake with headers replaced (`Some`), removed
    /// (`None`) or added, and another method.
    fn handshake_with(method: &str, changes: &[(&str, Option<&str>)]) -> Vec<u8> {
        let mut lines: Vec<(String, String)> = [
            ("Host", "sip-ws.example.com"),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Protocol", "sip"),
            ("Sec-WebSocket-Version", "13"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        for (name, value) in changes {
            let at = lines.iter().position(|(n, _)| n == name);
            match (at, value) {
                (Some(i), Some(v)) => lines[i].1 = v.to_string(),
                (Some(i), None) => {
                    lines.remove(i);
                }
                (None, Some(v)) => lines.push((name.to_string(), v.to_string())),
                (None, None) => {}
            }
        }
        let mut s = format!("{method} / HTTP/1.1\r\n");
        for (n, v) in lines {
            s += &format!("{n}: {v}\r\n");
        }
        s += "\r\n";
        s.into_bytes()
    }

    #[test]
    fn accept_key_matches_rfc6455_example() {
        let accept = accept_key(b"dGhlIHNhbXBsZSBub25jZQ==").unwrap();
        assert_eq!(&accept, ACCEPT.as_bytes());
        let r = run(&[HANDSHAKE]);
        assert_eq!(r.error, None);
        assert_eq!(r.state, WsState::Open);
        let (head, rest) = http(&r.out);
        assert_eq!(
            head,
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\
                 Sec-WebSocket-Protocol: sip\r\n\r\n"
            )
        );
        assert!(rest.is_empty());
    }

    #[test]
    fn handshake_variants() {
        // (name, method, header changes, Ok or (status, text in the response))
        type Case<'a> = (
            &'a str,
            &'a str,
            &'a [(&'a str, Option<&'a str>)],
            Option<(u16, &'a str)>,
        );
        let cases: &[Case<'_>] = &[
            ("plain", "GET", &[], None),
            (
                "sip among others",
                "GET",
                &[("Sec-WebSocket-Protocol", Some("foo, sip"))],
                None,
            ),
            (
                "sip upper case",
                "GET",
                &[("Sec-WebSocket-Protocol", Some("SIP"))],
                None,
            ),
            (
                "sip on a second line",
                "GET",
                &[
                    ("Sec-WebSocket-Protocol", Some("foo")),
                    ("sec-websocket-protocol", Some("sip")),
                ],
                None,
            ),
            (
                "upgrade token mixed case",
                "GET",
                &[("Upgrade", Some("WebSocket"))],
                None,
            ),
            (
                "connection token list",
                "GET",
                &[("Connection", Some("keep-alive, Upgrade"))],
                None,
            ),
            (
                "key with spaces",
                "GET",
                &[("Sec-WebSocket-Key", Some("  dGhlIHNhbXBsZSBub25jZQ==  "))],
                None,
            ),
            (
                "no protocol header",
                "GET",
                &[("Sec-WebSocket-Protocol", None)],
                Some((400, "\"sip\" subprotocol")),
            ),
            (
                "other protocol",
                "GET",
                &[("Sec-WebSocket-Protocol", Some("foo"))],
                Some((400, "\"sip\" subprotocol")),
            ),
            (
                "sips is not sip",
                "GET",
                &[("Sec-WebSocket-Protocol", Some("sips, sip2"))],
                Some((400, "\"sip\" subprotocol")),
            ),
            (
                "version 8",
                "GET",
                &[("Sec-WebSocket-Version", Some("8"))],
                Some((426, "Sec-WebSocket-Version: 13\r\n")),
            ),
            (
                "no version",
                "GET",
                &[("Sec-WebSocket-Version", None)],
                Some((426, "Sec-WebSocket-Version: 13\r\n")),
            ),
            ("POST", "POST", &[], Some((405, "Allow: GET\r\n"))),
            (
                "no Upgrade",
                "GET",
                &[("Upgrade", None)],
                Some((426, "Upgrade: websocket\r\n")),
            ),
            (
                "Upgrade h2c",
                "GET",
                &[("Upgrade", Some("h2c"))],
                Some((426, "Upgrade required")),
            ),
            (
                "Connection keep-alive",
                "GET",
                &[("Connection", Some("keep-alive"))],
                Some((426, "Upgrade required")),
            ),
            (
                "no key",
                "GET",
                &[("Sec-WebSocket-Key", None)],
                Some((400, "Sec-WebSocket-Key")),
            ),
            (
                "key of 15 bytes",
                "GET",
                &[("Sec-WebSocket-Key", Some("dGhlIHNhbXBsZSBub25j"))],
                Some((400, "Sec-WebSocket-Key")),
            ),
            (
                "key not base64",
                "GET",
                &[("Sec-WebSocket-Key", Some("!!!!!!!!!!!!!!!!!!!!!!=="))],
                Some((400, "Sec-WebSocket-Key")),
            ),
            (
                "no Host",
                "GET",
                &[("Host", None)],
                Some((400, "malformed")),
            ),
        ];
        for (name, method, changes, expect) in cases {
            let request = handshake_with(method, changes);
            let r = run(&[&request]);
            let (head, body) = http(&r.out);
            match expect {
                None => {
                    assert_eq!(r.error, None, "{name}");
                    assert_eq!(r.state, WsState::Open, "{name}");
                    assert!(
                        head.contains(&format!("Sec-WebSocket-Accept: {ACCEPT}\r\n")),
                        "{name}"
                    );
                    assert!(head.contains("Sec-WebSocket-Protocol: sip\r\n"), "{name}");
                }
                Some((status, text)) => {
                    let e = r.error.unwrap_or_else(|| panic!("{name}: accepted"));
                    assert_eq!(e.http_status(), Some(*status), "{name}");
                    assert_eq!(e.close_code(), None, "{name}");
                    assert_eq!(r.state, WsState::Closed, "{name}");
                    assert!(
                        head.starts_with(&format!("HTTP/1.1 {status} ")),
                        "{name}: {head}"
                    );
                    assert!(head.contains("Connection: close\r\n"), "{name}");
                    assert!(
                        head.contains(&format!("Content-Length: {}\r\n", body.len())),
                        "{name}"
                    );
                    assert!(!body.is_empty(), "{name}");
                    let all = String::from_utf8_lossy(&r.out).to_lowercase();
                    assert!(all.contains(&text.to_lowercase()), "{name}: {all}");
                }
            }
        }
    }

    #[test]
    fn malformed_and_oversize_handshakes() {
        let small = WsLimits {
            max_handshake: 256,
            ..WsLimits::default()
        };
        let long_header = format!("X-Pad: {}\r\n", "a".repeat(300));
        let oversize = handshake_with("GET", &[("X-Pad", Some(&"a".repeat(300)))]);
        let too_many: String = (0..HANDSHAKE_HEADERS + 1)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        let too_many = format!("GET / HTTP/1.1\r\nHost: h\r\n{too_many}\r\n");
        let cases: &[(&str, &[&[u8]], WsLimits, u16)] = &[
            (
                "garbage",
                &[b"\x16\x03\x01 hello\r\n\r\n"],
                WsLimits::default(),
                400,
            ),
            (
                "HTTP/1.0",
                &[b"GET / HTTP/1.0\r\nHost: h\r\n\r\n"],
                WsLimits::default(),
                400,
            ),
            (
                "bad header line",
                &[b"GET / HTTP/1.1\r\nHost h\r\n\r\n"],
                WsLimits::default(),
                400,
            ),
            ("oversize in one read", &[&oversize], small, 431),
            (
                "oversize over reads",
                &[b"GET / HTTP/1.1\r\n", long_header.as_bytes()],
                small,
                431,
            ),
            (
                "never ends",
                &[&[b'a'; 100], &[b'a'; 100], &[b'a'; 100]],
                small,
                431,
            ),
            (
                "too many headers",
                &[too_many.as_bytes()],
                WsLimits::default(),
                431,
            ),
        ];
        for (name, chunks, limits, status) in cases {
            let r = run_with(*limits, chunks);
            assert_eq!(
                r.error.and_then(|e| e.http_status()),
                Some(*status),
                "{name}"
            );
            assert_eq!(r.state, WsState::Closed, "{name}");
            let (head, _) = http(&r.out);
            assert!(
                head.starts_with(&format!("HTTP/1.1 {status} ")),
                "{name}: {head}"
            );
        }
        // A handshake of exactly max_handshake bytes completes.
        let exact = WsLimits {
            max_handshake: HANDSHAKE.len(),
            ..WsLimits::default()
        };
        assert_eq!(run_with(exact, &[HANDSHAKE]).state, WsState::Open);
        let short = WsLimits {
            max_handshake: HANDSHAKE.len() - 1,
            ..WsLimits::default()
        };
        assert_eq!(
            run_with(short, &[HANDSHAKE]).error,
            Some(WsError::HandshakeTooLarge)
        );
    }

    #[test]
    fn partial_handshake_over_several_reads() {
        for i in 1..HANDSHAKE.len() {
            let mut ws = WsServer::default();
            let mut out = Vec::new();
            let mut never = |_: &[u8]| panic!("no message");
            ws.handle_input(&HANDSHAKE[..i], &mut out, &mut never)
                .unwrap();
            assert!(out.is_empty(), "nothing before the head ends ({i})");
            assert_eq!(ws.state(), WsState::Handshake);
            assert_eq!(ws.buffered(), i);
            ws.handle_input(&HANDSHAKE[i..], &mut out, &mut never)
                .unwrap();
            assert_eq!(ws.state(), WsState::Open);
            assert_eq!(ws.buffered(), 0);
            assert!(after_101(&out).is_empty());
        }
    }

    #[test]
    fn frames_pipelined_after_handshake() {
        let input = concat(&[HANDSHAKE, &text("INVITE"), &frame(true, OP_PING, b"p")]);
        let r = run(&[&input]);
        assert_eq!(r.error, None);
        assert_eq!(r.messages, vec![b"INVITE".to_vec()]);
        assert_eq!(after_101(&r.out), vec![(0x8A, b"p".to_vec())]);
    }

    #[test]
    fn every_split_of_a_valid_exchange() {
        let big = "x".repeat(300);
        let input = concat(&[
            HANDSHAKE,
            &text("REGISTER sip:example.com SIP/2.0\r\n\r\n"),
            &frame(true, OP_BINARY, b"\x00\x01binary"),
            &frame(false, OP_TEXT, "OPTIONS é".as_bytes()),
            &frame(true, OP_PING, b"keepalive"),
            &frame(false, OP_CONTINUATION, b" part two"),
            &frame(true, OP_PONG, b"unsolicited"),
            &frame(true, OP_CONTINUATION, b" end"),
            &text(""),
            &raw(0x81, Some(MASK), Len::Minimal, big.as_bytes()),
            &raw(0x81, Some(MASK), Len::Ext16, b"non-minimal 16"),
            &raw(0x82, Some(MASK), Len::Ext64, b"non-minimal 64"),
            &raw(0x81, Some([0; 4]), Len::Minimal, b"zero mask"),
            &text("BYE"),
        ]);
        let r = assert_split_invariant(WsLimits::default(), &input);
        assert_eq!(r.error, None);
        assert_eq!(r.state, WsState::Open);
        let expected: Vec<Vec<u8>> = vec![
            b"REGISTER sip:example.com SIP/2.0\r\n\r\n".to_vec(),
            b"\x00\x01binary".to_vec(),
            "OPTIONS é part two end".as_bytes().to_vec(),
            Vec::new(),
            big.into_bytes(),
            b"non-minimal 16".to_vec(),
            b"non-minimal 64".to_vec(),
            b"zero mask".to_vec(),
            b"BYE".to_vec(),
        ];
        assert_eq!(r.messages, expected);
        assert_eq!(after_101(&r.out), vec![(0x8A, b"keepalive".to_vec())]);
        // With a close at the end, the echo is split-invariant too.
        let closed = concat(&[&input, &close_frame(1001, b"bye"), &text("ignored")]);
        let r = assert_split_invariant(WsLimits::default(), &closed);
        assert_eq!(r.state, WsState::Closed);
        assert_eq!(r.messages.len(), expected.len());
        assert_eq!(after_101(&r.out).last(), Some(&close_of(1001)));
    }

    #[test]
    fn several_frames_in_one_read_buffer_nothing() {
        let mut ws = WsServer::default();
        let mut out = Vec::new();
        let mut got = Vec::new();
        ws.handle_input(HANDSHAKE, &mut out, &mut |_| {}).unwrap();
        let three = concat(&[&text("one"), &text("two"), &text("three")]);
        ws.handle_input(&three, &mut out, &mut |m| got.push(m.to_vec()))
            .unwrap();
        assert_eq!(got, [b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]);
        assert_eq!(ws.buffered(), 0, "whole frames are not buffered");
        // A cut frame keeps only its own bytes.
        let four = text("four");
        let two_and_half = concat(&[&text("x"), &four[..5]]);
        ws.handle_input(&two_and_half, &mut out, &mut |m| got.push(m.to_vec()))
            .unwrap();
        assert_eq!(ws.buffered(), 5);
        let rest = concat(&[&four[5..], &text("five")]);
        ws.handle_input(&rest, &mut out, &mut |m| got.push(m.to_vec()))
            .unwrap();
        assert_eq!(ws.buffered(), 0);
        assert_eq!(
            got[3..],
            [b"x".to_vec(), b"four".to_vec(), b"five".to_vec()]
        );
    }

    #[test]
    fn fragmented_text_with_ping_between() {
        let input = concat(&[
            HANDSHAKE,
            &frame(false, OP_TEXT, b"MESSAGE sip:bob"),
            &frame(false, OP_CONTINUATION, b"@example.com"),
            &frame(true, OP_PING, b"hello"),
            &frame(true, OP_CONTINUATION, b" SIP/2.0"),
        ]);
        let r = assert_split_invariant(WsLimits::default(), &input);
        assert_eq!(r.error, None);
        assert_eq!(
            r.messages,
            vec![b"MESSAGE sip:bob@example.com SIP/2.0".to_vec()]
        );
        assert_eq!(after_101(&r.out), vec![(0x8A, b"hello".to_vec())]);
    }

    #[test]
    fn protocol_errors() {
        let small = WsLimits {
            max_frame: 100,
            max_message: 150,
            max_handshake: 8_192,
        };
        let f = |fin, op, p: &[u8]| frame(fin, op, p);
        let cases: Vec<(&str, Vec<u8>, WsError)> = vec![
            (
                "unmasked",
                raw(0x81, None, Len::Minimal, b"hi"),
                WsError::Unmasked,
            ),
            ("opcode 3", f(true, 0x3, b""), WsError::BadOpcode),
            ("opcode 7", f(true, 0x7, b""), WsError::BadOpcode),
            ("opcode 0xB", f(true, 0xB, b""), WsError::BadOpcode),
            ("opcode 0xF", f(true, 0xF, b""), WsError::BadOpcode),
            (
                "RSV1",
                raw(0xC1, Some(MASK), Len::Minimal, b"x"),
                WsError::ReservedBits,
            ),
            (
                "RSV2",
                raw(0xA1, Some(MASK), Len::Minimal, b"x"),
                WsError::ReservedBits,
            ),
            (
                "RSV3",
                raw(0x91, Some(MASK), Len::Minimal, b"x"),
                WsError::ReservedBits,
            ),
            (
                "ping without FIN",
                f(false, OP_PING, b""),
                WsError::ControlFragmented,
            ),
            (
                "close without FIN",
                f(false, OP_CLOSE, b""),
                WsError::ControlFragmented,
            ),
            (
                "ping of 126",
                f(true, OP_PING, &[0; 126]),
                WsError::ControlTooLong,
            ),
            (
                "pong of 126 (16-bit)",
                raw(0x8A, Some(MASK), Len::Ext16, &[0; 10]),
                WsError::ControlTooLong,
            ),
            (
                "close of 1 byte",
                f(true, OP_CLOSE, b"\x03"),
                WsError::BadCloseCode,
            ),
            ("close 999", close_frame(999, b""), WsError::BadCloseCode),
            ("close 1004", close_frame(1004, b""), WsError::BadCloseCode),
            ("close 1005", close_frame(1005, b""), WsError::BadCloseCode),
            ("close 1006", close_frame(1006, b""), WsError::BadCloseCode),
            ("close 1015", close_frame(1015, b""), WsError::BadCloseCode),
            ("close 2999", close_frame(2999, b""), WsError::BadCloseCode),
            ("close 5000", close_frame(5000, b""), WsError::BadCloseCode),
            (
                "close reason not UTF-8",
                close_frame(1000, b"\xff"),
                WsError::InvalidUtf8,
            ),
            (
                "continuation first",
                f(true, OP_CONTINUATION, b"x"),
                WsError::ContinuationUnexpected,
            ),
            (
                "text inside a message",
                concat(&[&f(false, OP_TEXT, b"a"), &f(true, OP_TEXT, b"b")]),
                WsError::MessageInterleaved,
            ),
            (
                "binary inside a message",
                concat(&[&f(false, OP_BINARY, b"a"), &f(false, OP_BINARY, b"b")]),
                WsError::MessageInterleaved,
            ),
            (
                "continuation after the end",
                concat(&[
                    &f(false, OP_TEXT, b"a"),
                    &f(true, OP_CONTINUATION, b"b"),
                    &f(true, OP_CONTINUATION, b"c"),
                ]),
                WsError::ContinuationUnexpected,
            ),
            (
                "64-bit length top bit",
                header_only(0x82, 1 << 63),
                WsError::BadLength,
            ),
            (
                "frame over max_frame",
                f(true, OP_TEXT, &[b'a'; 101]),
                WsError::FrameTooBig,
            ),
            (
                "declared 2^62",
                header_only(0x82, 1 << 62),
                WsError::FrameTooBig,
            ),
            (
                "ping over max_frame",
                raw(0x89, Some(MASK), Len::Minimal, &[0; 125]),
                WsError::FrameTooBig,
            ),
            (
                "message over max_message",
                concat(&[
                    &f(false, OP_TEXT, &[b'a'; 100]),
                    &f(true, OP_PING, b""),
                    &f(true, OP_CONTINUATION, &[b'a'; 51]),
                ]),
                WsError::MessageTooBig,
            ),
            (
                "text not UTF-8",
                f(true, OP_TEXT, b"\xc3\x28"),
                WsError::InvalidUtf8,
            ),
            (
                "fragmented text not UTF-8",
                concat(&[
                    &f(false, OP_TEXT, b"\xc3"),
                    &f(true, OP_CONTINUATION, b"\x28"),
                ]),
                WsError::InvalidUtf8,
            ),
            (
                "truncated UTF-8 at the end",
                concat(&[
                    &f(false, OP_TEXT, b"ok"),
                    &f(true, OP_CONTINUATION, b"\xe2\x82"),
                ]),
                WsError::InvalidUtf8,
            ),
        ];
        let code = |e: WsError| e.close_code().unwrap();
        for (name, frames, error) in &cases {
            let input = concat(&[HANDSHAKE, &text("before"), frames, &text("after")]);
            let r = assert_split_invariant(small, &input);
            assert_eq!(r.error, Some(*error), "{name}");
            assert_eq!(r.state, WsState::Closed, "{name}");
            assert_eq!(r.messages.first(), Some(&b"before".to_vec()), "{name}");
            assert!(!r.messages.contains(&b"after".to_vec()), "{name}");
            let frames = after_101(&r.out);
            assert_eq!(frames.last(), Some(&close_of(code(*error))), "{name}");
            assert_eq!(frames.iter().filter(|f| f.0 == 0x88).count(), 1, "{name}");
        }
        // UTF-8 split between fragments is fine; binary need not be UTF-8.
        let input = concat(&[
            HANDSHAKE,
            &f(false, OP_TEXT, b"\xc3"),
            &f(true, OP_CONTINUATION, b"\xa9"),
            &f(true, OP_BINARY, b"\xff\xfe"),
        ]);
        let r = run(&[&input]);
        assert_eq!(r.error, None);
        assert_eq!(
            r.messages,
            vec!["é".as_bytes().to_vec(), b"\xff\xfe".to_vec()]
        );
    }

    #[test]
    fn oversize_is_refused_before_the_payload_arrives() {
        let small = WsLimits {
            max_frame: 1_000,
            max_message: 1_500,
            max_handshake: 8_192,
        };
        // The header alone (declaring 100 000 bytes) is enough.
        let r = run_with(small, &[HANDSHAKE, &header_only(0x81, 100_000)]);
        assert_eq!(r.error, Some(WsError::FrameTooBig));
        assert_eq!(after_101(&r.out), vec![close_of(1009)]);
        // A message that will not fit is refused at the fragment's header.
        let first = frame(false, OP_TEXT, &[b'a'; 1_000]);
        let r = run_with(small, &[HANDSHAKE, &first, &header_only(0x00, 600)]);
        assert_eq!(r.error, Some(WsError::MessageTooBig));
        // A partial frame stays within its declared size.
        let mut ws = WsServer::new(small);
        let mut out = Vec::new();
        ws.handle_input(HANDSHAKE, &mut out, &mut |_| {}).unwrap();
        let big = frame(true, OP_BINARY, &[7; 1_000]);
        ws.handle_input(&big[..999], &mut out, &mut |_| panic!())
            .unwrap();
        assert_eq!(ws.buffered(), 999);
        let mut got = 0;
        ws.handle_input(&big[999..], &mut out, &mut |m| got = m.len())
            .unwrap();
        assert_eq!((got, ws.buffered()), (1_000, 0));
    }

    #[test]
    fn close_handshake() {
        // The peer closes: echo its code; nothing after is read.
        let input = concat(&[
            HANDSHAKE,
            &text("a"),
            &close_frame(1000, b"done"),
            &text("b"),
        ]);
        let r = run(&[&input]);
        assert_eq!((r.error, r.state), (None, WsState::Closed));
        assert_eq!(r.messages, vec![b"a".to_vec()]);
        assert_eq!(after_101(&r.out), vec![close_of(1000)]);
        // An empty Close is answered with 1000; a 4000 is echoed.
        for (payload, code) in [(Vec::new(), 1000), (4000u16.to_be_bytes().to_vec(), 4000)] {
            let r = run(&[HANDSHAKE, &frame(true, OP_CLOSE, &payload)]);
            assert_eq!(after_101(&r.out), vec![close_of(code)]);
        }
        // We close: Closing until the peer's Close, which is not answered.
        let mut ws = WsServer::default();
        let mut out = Vec::new();
        let mut got = Vec::new();
        ws.handle_input(HANDSHAKE, &mut out, &mut |_| {}).unwrap();
        out.clear();
        ws.close(1001, &mut out);
        assert_eq!(ws.state(), WsState::Closing);
        assert_eq!(server_frames(&out), vec![close_of(1001)]);
        ws.close(1000, &mut out);
        assert_eq!(server_frames(&out).len(), 1, "one Close only");
        out.clear();
        let more = concat(&[&text("late 200 OK"), &frame(true, OP_PING, b"?")]);
        ws.handle_input(&more, &mut out, &mut |m| got.push(m.to_vec()))
            .unwrap();
        assert_eq!(got, vec![b"late 200 OK".to_vec()]);
        assert_eq!(server_frames(&out), vec![(0x8A, b"?".to_vec())]);
        out.clear();
        ws.handle_input(&close_frame(1001, b""), &mut out, &mut |_| {})
            .unwrap();
        assert_eq!(ws.state(), WsState::Closed);
        assert!(out.is_empty());
        ws.handle_input(&text("x"), &mut out, &mut |_| panic!())
            .unwrap();
        assert!(out.is_empty());
        assert_eq!(ws.buffered(), 0);
        // An error while Closing sends no second Close.
        let mut ws = WsServer::default();
        ws.handle_input(HANDSHAKE, &mut out, &mut |_| {}).unwrap();
        ws.close(1000, &mut out);
        out.clear();
        assert_eq!(
            ws.handle_input(&[0x83], &mut out, &mut |_| {}),
            Err(WsError::BadOpcode)
        );
        assert!(out.is_empty());
        // close() in Handshake sends nothing; a code that may not be sent becomes 1000.
        let mut ws = WsServer::default();
        ws.close(1000, &mut out);
        assert_eq!((ws.state(), out.is_empty()), (WsState::Closed, true));
        let mut ws = WsServer::default();
        ws.handle_input(HANDSHAKE, &mut out, &mut |_| {}).unwrap();
        out.clear();
        ws.close(1005, &mut out);
        assert_eq!(server_frames(&out), vec![close_of(1000)]);
    }

    #[test]
    fn encode_round_trips() {
        let ws = WsServer::default();
        for (len, header) in [
            (0, 2),
            (1, 2),
            (125, 2),
            (126, 4),
            (65_535, 4),
            (65_536, 10),
            (70_000, 10),
        ] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut out = vec![0xEE];
            ws.encode(&payload, &mut out);
            assert_eq!(out.len(), 1 + header + len, "{len}");
            assert_eq!(server_frames(&out[1..]), vec![(0x81, payload)], "{len}");
        }
    }

    #[test]
    fn error_codes_are_one_of_http_or_close() {
        use WsError::*;
        let all = [
            (BadCloseCode, None, Some(1002)),
            (BadKey, Some(400), None),
            (BadLength, None, Some(1002)),
            (BadOpcode, None, Some(1002)),
            (BadRequest, Some(400), None),
            (ContinuationUnexpected, None, Some(1002)),
            (ControlFragmented, None, Some(1002)),
            (ControlTooLong, None, Some(1002)),
            (FrameTooBig, None, Some(1009)),
            (HandshakeTooLarge, Some(431), None),
            (InvalidUtf8, None, Some(1007)),
            (MessageInterleaved, None, Some(1002)),
            (MessageTooBig, None, Some(1009)),
            (MethodNotAllowed, Some(405), None),
            (NotUpgrade, Some(426), None),
            (ReservedBits, None, Some(1002)),
            (SubprotocolMissing, Some(400), None),
            (Unmasked, None, Some(1002)),
            (VersionUnsupported, Some(426), None),
        ];
        for (e, status, code) in all {
            assert_eq!((e.http_status(), e.close_code()), (status, code), "{e:?}");
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn unmask_matches_bytewise() {
        for len in 0..40 {
            let src: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut dst = vec![1, 2];
            unmask_into(&mut dst, &src, MASK);
            let expected: Vec<u8> = [1, 2]
                .into_iter()
                .chain(src.iter().zip(MASK.iter().cycle()).map(|(b, m)| b ^ m))
                .collect();
            assert_eq!(dst, expected, "{len}");
        }
    }
}
