//! Stream framing: cuts the bytes of a TCP or TLS connection into SIP
//! messages and keep-alives (RFC 3261 §7.5, §18.3, §20.14; RFC 5626 §4.4.1).
//!
//! In: the bytes of each read, in order, through [`Framer::handle_input`],
//! with the shard's [`HeaderIndex`]. Out: [`Frame`]s, in stream order, to a
//! callback: [`Frame::Message`] (one whole message, already accepted by
//! [`parse_stream`]), [`Frame::Ping`] (the caller answers with a CRLF pong)
//! and [`Frame::Pong`]. A [`FrameError`] ends the stream: the caller answers
//! it, with the header block from [`Framer::rejected_head`] when there is
//! one, and closes the connection.
//!
//! ```text
//!  between messages:  CRLF CRLF ─► Ping    CRLF + not CR ─► Pong    token byte ─► a message starts
//!                     CRLF at the end of a read ─► held (it may become a Ping)
//!
//!  a message:  first bytes ─► parse_stream once: a whole message (the usual read) is done here
//!                ▼ Partial
//!              header block: memchr for the blank line over new bytes only (≤ max_header_block)
//!                │  first LF seen ─► parse_stream once: a bad start line fails now
//!                ▼
//!              blank line ─► parse_stream ─► Content-Length ─► total = head + body (≤ max_message)
//!                ▼
//!              wait for `total` bytes (no parsing) ─► parse_stream ─► Frame::Message
//! ```
//!
//! Contract:
//! - no panic on any input, no I/O, no clock: bytes in, frames out;
//! - zero copy where it can be: when nothing is held, every frame that lies
//!   wholly inside a read is delivered as a slice of that read, and only an
//!   incomplete tail is copied. When a message is held, only the bytes it
//!   still needs are appended to it; the rest of the read is framed in place;
//! - memory: one `Vec` per connection, allocated on first use, holding at most
//!   one incomplete message: fewer than `max_header_block` bytes until its
//!   blank line, fewer than its total (≤ `max_message`) after. Its capacity
//!   grows by doubling within the header block, is reserved exactly once the
//!   total is known (so it stays below `max(max_message, 2 × max_header_block)`)
//!   and is kept for the next message;
//! - work: O(n) in the bytes of a message however the reads cut it.
//!   A message that arrives whole is parsed once; one cut across reads at
//!   most four times (its first bytes, start line complete, header block
//!   complete, body complete); between those a read costs a memchr over its
//!   new bytes, or nothing while a body arrives;
//! - limits are checked before the bytes are held: a header block that has
//!   not ended within `max_header_block` bytes, or a declared Content-Length
//!   past `max_message`, fails as soon as it is seen, not after buffering.
//!   The index's own [`ParseConfig`](crate::sip::ParseConfig) limits apply
//!   too (the smaller `max_message` wins).
//!
//! Why the framer reads Content-Length itself instead of calling
//! [`parse_stream`] on every read: a parser that only says "Partial" must be
//! called again from the first byte, so a 60 KB body arriving one byte per
//! read would cost 60 000 header parses (O(n²)), and a body declared larger
//! than this connection's limit would be refused only once buffered. Remembering the end of
//! the header block and the declared length makes each read O(new bytes) and
//! refuses an oversized message from its header alone.
//!
//! Why a lone CRLF at the end of a read is held rather than reported as a
//! Pong: RFC 5626 §4.4.1 pings are CRLF CRLF, and TCP may deliver them in two
//! segments; answering half a ping as a pong would lose the ping. A CRLF
//! followed by anything but CR is a Pong (or §7.5 whitespace before a start
//! line), and the message starts at that byte.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

use crate::sip::{parse_stream, scan, HeaderIndex, HeaderName, Message, ParseError, Status};

/// Size limits of one connection's framer. The defaults suit a server on the
/// open internet (a UDP-sized message, a 16 KB header block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Largest message, header block and body together, in bytes; checked on
    /// the declared Content-Length before the body is buffered.
    pub max_message: usize,
    /// Longest header block (start line through the blank line), in bytes;
    /// checked on the bytes held while the blank line has not come.
    pub max_header_block: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            max_message: 65_535,
            max_header_block: 16_384,
        }
    }
}

/// One unit cut from the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// One whole SIP message (header block and body), accepted by
    /// [`parse_stream`]: parsing it again with the same index cannot fail.
    Message(&'a [u8]),
    /// RFC 5626 §4.4.1 keep-alive ping (CRLF CRLF): the caller answers with a pong (CRLF).
    Ping,
    /// A lone CRLF between messages (a pong, or §7.5 leading whitespace).
    Pong,
}

/// Why the stream cannot be framed any further. The connection is done: the
/// caller answers with [`FrameError::status`] where it can and closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The header block did not end within `max_header_block` bytes.
    #[error("header block longer than the limit")]
    HeaderBlockTooLarge,
    /// The bytes are not a SIP message: a byte that cannot start one, a bare
    /// CR or LF between messages, or what the parser refused.
    #[error("malformed message: {0}")]
    Malformed(ParseError),
    /// A complete header block has no Content-Length, which is mandatory on
    /// streams (RFC 3261 §18.3, §20.14).
    #[error("no Content-Length on a stream")]
    NoContentLength,
    /// The declared Content-Length makes the message larger than `max_message`.
    #[error("message larger than the limit")]
    TooLarge,
}

impl FrameError {
    /// The status code a server answers this error with (RFC 3261 §21).
    pub const fn status(&self) -> u16 {
        match self {
            Self::HeaderBlockTooLarge | Self::TooLarge => 413,
            Self::Malformed(e) => e.status(),
            Self::NoContentLength => 400,
        }
    }

    /// The reason phrase that goes with [`FrameError::status`].
    pub const fn reason(&self) -> &'static str {
        match self {
            Self::HeaderBlockTooLarge => "Request Entity Too Large (Header Block)",
            Self::Malformed(e) => e.reason(),
            Self::NoContentLength => "Bad Request (Missing Content-Length)",
            Self::TooLarge => "Request Entity Too Large",
        }
    }

    /// Maps a parser error: the size refusals become [`FrameError::TooLarge`].
    const fn from_parse(e: ParseError) -> Self {
        match e {
            ParseError::BodyTooLarge | ParseError::MessageTooLarge => Self::TooLarge,
            e => Self::Malformed(e),
        }
    }
}

/// The sans-IO framer of one TCP or TLS connection (one per connection; the
/// [`HeaderIndex`] is the shard's, lent for each call).
#[derive(Debug)]
pub struct Framer {
    cut: Cut,
    // INVARIANT: empty between messages; otherwise it holds the front of the
    // message in progress, which starts with a token byte, and its length is
    // below `max_header_block` while `cut.total` is None and below
    // `cut.total` after. After an error it holds the rejected head only.
    buf: Vec<u8>,
    // INVARIANT: `Idle` whenever `buf` is non-empty (keep-alives only occur
    // between messages).
    crlf: Crlf,
    /// The error that ended the stream, returned again by every later call.
    failed: Option<FrameError>,
    /// Length of the rejected header block kept in `buf`, if it was complete.
    rejected: Option<usize>,
}

impl Framer {
    /// A framer for a new connection. Allocates nothing until a message
    /// arrives cut across reads.
    pub fn new(limits: StreamLimits) -> Self {
        Self {
            cut: Cut::new(limits),
            buf: Vec::new(),
            crlf: Crlf::Idle,
            failed: None,
            rejected: None,
        }
    }

    /// Feeds bytes read from the connection; each complete frame goes to `deliver` in order.
    ///
    /// Zero-copy fast path: when nothing is buffered, frames wholly inside
    /// `data` are delivered straight from `data`; only an incomplete tail is
    /// copied into the internal buffer.
    ///
    /// On Err the stream is unusable (the caller answers and closes, and every
    /// later call returns the same error); `deliver` got every frame before
    /// the error; [`Framer::rejected_head`] gives the header block of the
    /// failing message if it was complete.
    pub fn handle_input(
        &mut self,
        data: &[u8],
        idx: &mut HeaderIndex,
        deliver: &mut dyn FnMut(Frame<'_>),
    ) -> Result<(), FrameError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let result = self.input(data, idx, deliver);
        if let Err(e) = result {
            self.failed = Some(e);
            self.crlf = Crlf::Idle;
        }
        result
    }

    /// What the caller answers before closing after an error: the complete
    /// header block of the failing message if there is one (so the core can
    /// build a proper 400/413 with Via/From/To/Call-ID/CSeq), else `None`.
    pub fn rejected_head(&self) -> Option<&[u8]> {
        self.rejected.and_then(|h| self.buf.get(..h))
    }

    /// Bytes of an incomplete message held (0 between messages, and after an
    /// error): the caller times a header block that takes too long
    /// (slowloris) from when this became non-zero.
    pub fn pending(&self) -> usize {
        if self.failed.is_some() {
            0
        } else {
            self.buf.len()
        }
    }

    /// True while the pending bytes have not yet completed a header block.
    pub fn in_header_block(&self) -> bool {
        self.pending() > 0 && self.cut.total.is_none()
    }

    fn input(
        &mut self,
        data: &[u8],
        idx: &mut HeaderIndex,
        deliver: &mut dyn FnMut(Frame<'_>),
    ) -> Result<(), FrameError> {
        let mut at = 0;
        if !self.buf.is_empty() {
            at = self.resume(data, idx, deliver)?;
            if !self.buf.is_empty() {
                // `resume` keeps a message only when it took all of `data`.
                debug_assert_eq!(at, data.len());
                return Ok(());
            }
        }
        // Nothing held: frame in place.
        while let Some(rest) = data.get(at..).filter(|r| !r.is_empty()) {
            if self.crlf != Crlf::Idle || matches!(rest.first(), Some(b'\r' | b'\n')) {
                at += self.keepalive(rest, deliver)?;
                continue;
            }
            if !rest.first().is_some_and(|&b| scan::is_token(b)) {
                return Err(FrameError::Malformed(ParseError::RequestLine));
            }
            match self.cut.step(rest, idx) {
                Ok(Some(n)) => {
                    // `step` returns 0 < n <= rest.len().
                    deliver(Frame::Message(rest.get(..n).unwrap_or(rest)));
                    self.cut.reset();
                    at += n;
                }
                Ok(None) => {
                    if let Some(total) = self.cut.total {
                        self.buf.reserve_exact(total);
                    }
                    self.buf.extend_from_slice(rest);
                    return Ok(());
                }
                Err(r) => return Err(self.reject(r, Some(rest))),
            }
        }
        Ok(())
    }

    /// Completes the held message with what it still needs from `data` (the
    /// rest of its header block or exactly its remaining body). Returns how
    /// many bytes of `data` belong to it; when it is still incomplete, that is
    /// all of them.
    fn resume(
        &mut self,
        data: &[u8],
        idx: &mut HeaderIndex,
        deliver: &mut dyn FnMut(Frame<'_>),
    ) -> Result<usize, FrameError> {
        let mut at = 0;
        loop {
            let chunk = data.get(at..).unwrap_or_default();
            let want = match self.cut.total {
                Some(total) => total.saturating_sub(self.buf.len()),
                None => {
                    let room = self
                        .cut
                        .limits
                        .max_header_block
                        .saturating_sub(self.buf.len());
                    let near = chunk.get(..room).unwrap_or(chunk);
                    head_end_after(&self.buf, near).map_or(room, |n| n.min(room))
                }
            };
            let take = want.min(chunk.len());
            self.buf
                .extend_from_slice(chunk.get(..take).unwrap_or_default());
            at += take;
            let had_total = self.cut.total.is_some();
            match self.cut.step(&self.buf, idx) {
                Ok(Some(n)) => {
                    deliver(Frame::Message(self.buf.get(..n).unwrap_or_default()));
                    // `want` never reaches past the message; were it to, the
                    // bytes past it came from this read: hand them back.
                    let extra = self.buf.len().saturating_sub(n);
                    self.buf.clear();
                    self.cut.reset();
                    return Ok(at.saturating_sub(extra));
                }
                Ok(None) => {
                    if let (false, Some(total)) = (had_total, self.cut.total) {
                        self.buf.reserve_exact(total.saturating_sub(self.buf.len()));
                    }
                    // A `None` leaves `want > 0` (the buffer is below its
                    // limit), so this loop takes bytes on every turn.
                    if take == 0 || at >= data.len() {
                        return Ok(at);
                    }
                }
                Err(r) => return Err(self.reject(r, None)),
            }
        }
    }

    /// Consumes keep-alive bytes at a message boundary, delivering a Ping for
    /// CRLF CRLF and a Pong for a CRLF not followed by CR. Returns how many
    /// bytes it took: it stops before the first byte of a message.
    fn keepalive(
        &mut self,
        data: &[u8],
        deliver: &mut dyn FnMut(Frame<'_>),
    ) -> Result<usize, FrameError> {
        let bad = FrameError::Malformed(ParseError::LineEnding);
        for (i, &b) in data.iter().enumerate() {
            self.crlf = match (self.crlf, b) {
                (Crlf::Idle, b'\r') => Crlf::Cr,
                (Crlf::Idle, b'\n') => return Err(bad),
                (Crlf::Idle, _) => return Ok(i),
                (Crlf::Cr, b'\n') => Crlf::CrLf,
                (Crlf::Cr, _) => return Err(bad),
                (Crlf::CrLf, b'\r') => Crlf::CrLfCr,
                (Crlf::CrLf, _) => {
                    deliver(Frame::Pong);
                    self.crlf = Crlf::Idle;
                    return Ok(i);
                }
                (Crlf::CrLfCr, b'\n') => {
                    deliver(Frame::Ping);
                    Crlf::Idle
                }
                (Crlf::CrLfCr, _) => {
                    // A pong, then a CR that does not end a line.
                    deliver(Frame::Pong);
                    return Err(bad);
                }
            };
        }
        Ok(data.len())
    }

    /// Keeps the rejected header block (if complete) for
    /// [`Framer::rejected_head`]: copied from `from`, or already at the front
    /// of the buffer when `from` is None.
    fn reject(&mut self, r: Reject, from: Option<&[u8]>) -> FrameError {
        self.rejected = None;
        match (r.head, from) {
            (Some(h), Some(msg)) => {
                self.buf.clear();
                if let Some(head) = msg.get(..h) {
                    self.buf.extend_from_slice(head);
                    self.rejected = Some(h);
                }
            }
            (Some(h), None) if h <= self.buf.len() => {
                self.buf.truncate(h);
                self.rejected = Some(h);
            }
            _ => self.buf.clear(),
        }
        r.error
    }
}

/// Keep-alive bytes seen between messages: how much of CRLF CRLF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Crlf {
    /// `\r`.
    Cr,
    /// `\r\n`: a Pong unless a CR follows.
    CrLf,
    /// `\r\n\r`: a Ping if a LF follows.
    CrLfCr,
    /// Nothing.
    Idle,
}

/// An error, and the length of the failing message's header block when it
/// was complete.
#[derive(Debug, Clone, Copy)]
struct Reject {
    error: FrameError,
    head: Option<usize>,
}

impl From<FrameError> for Reject {
    fn from(error: FrameError) -> Self {
        Self { error, head: None }
    }
}

/// Progress through the message at the front of the stream, as offsets from
/// its first byte; the same whether that message lies in a read or in the
/// framer's buffer.
#[derive(Debug)]
struct Cut {
    limits: StreamLimits,
    /// Where the search for the blank line resumes.
    scanned: usize,
    /// The first step has tried a whole parse (done once per message).
    tried: bool,
    /// The parser has seen the start line (done once per message).
    start_checked: bool,
    /// Length of the header block, blank line included, once found.
    head: Option<usize>,
    // INVARIANT: Some only after `head`, and then head < total <= max_message.
    /// Length of the whole message (header block + Content-Length), once known.
    total: Option<usize>,
    /// Calls to the parser (for the complexity tests).
    #[cfg(test)]
    parses: usize,
}

impl Cut {
    fn new(limits: StreamLimits) -> Self {
        Self {
            limits,
            scanned: 0,
            tried: false,
            start_checked: false,
            head: None,
            total: None,
            #[cfg(test)]
            parses: 0,
        }
    }

    fn reset(&mut self) {
        self.scanned = 0;
        self.tried = false;
        self.start_checked = false;
        self.head = None;
        self.total = None;
    }

    /// Advances over `msg` (the message's bytes so far, from its first byte;
    /// it may run past the message). At most four parses per message: a first
    /// try, the start line, the header block, the body. `Some(n)`: the first `n` bytes, with
    /// `0 < n <= msg.len()`, are a whole message. `None`: more bytes are
    /// needed, and the state says where to resume.
    fn step(&mut self, msg: &[u8], idx: &mut HeaderIndex) -> Result<Option<usize>, Reject> {
        if let Some(total) = self.total {
            let Some(whole) = msg.get(..total) else {
                return Ok(None);
            };
            return match self.parse(whole, idx) {
                Ok(Status::Complete(m)) => self.complete(m.len(), msg.len()).map(Some),
                // The header block and `total` bytes are there: not reachable.
                Ok(Status::Partial) => {
                    Err(self.fail(FrameError::Malformed(ParseError::Incomplete)))
                }
                Err(e) => Err(self.fail(FrameError::from_parse(e))),
            };
        }
        if !self.tried {
            self.tried = true;
            // Most reads carry whole messages: one parse settles them, with no
            // separate search for the blank line. Anything else (Partial, or an
            // error, which the steps below meet again with the header block
            // known) goes the long way.
            let window = msg.get(..self.limits.max_message).unwrap_or(msg);
            if let Ok(Status::Complete(m)) = self.parse(window, idx) {
                let head = m.blank_line_span().end as usize;
                if head > self.limits.max_header_block {
                    return Err(FrameError::HeaderBlockTooLarge.into());
                }
                self.head = Some(head);
                return self.complete(m.len(), msg.len()).map(Some);
            }
        }
        let window_len = msg.len().min(self.limits.max_header_block);
        let window = msg.get(..window_len).unwrap_or_default();
        let head = match find_head_end(window, self.scanned) {
            Search::Found(head) => head,
            Search::NotYet { resume, saw_lf } => {
                self.scanned = resume;
                if msg.len() >= self.limits.max_header_block {
                    return Err(FrameError::HeaderBlockTooLarge.into());
                }
                if saw_lf && !self.start_checked {
                    // The start line is complete: let the parser judge it (and
                    // the lines after it) now rather than at the limit.
                    self.start_checked = true;
                    if let Err(e) = self.parse(msg, idx) {
                        return Err(FrameError::from_parse(e).into());
                    }
                }
                return Ok(None);
            }
        };
        self.head = Some(head);
        match self.parse(msg, idx) {
            Ok(Status::Complete(m)) => self.complete(m.len(), msg.len()).map(Some),
            Ok(Status::Partial) => {
                // The parser stops at a missing body only after it checked
                // every Content-Length (numeric, all equal, within its own limit).
                let declared = idx
                    .named(HeaderName::ContentLength)
                    .next()
                    .and_then(|e| scan::parse_u64(e.value.of(msg)))
                    .and_then(|v| usize::try_from(v).ok());
                let Some(body) = declared else {
                    return Err(self.fail(FrameError::Malformed(ParseError::ContentLength)));
                };
                match head.checked_add(body) {
                    Some(total) if total <= self.limits.max_message && total > msg.len() => {
                        self.total = Some(total);
                        Ok(None)
                    }
                    Some(total) if total <= self.limits.max_message => {
                        // Partial with the whole body there: not reachable.
                        Err(self.fail(FrameError::Malformed(ParseError::Incomplete)))
                    }
                    _ => Err(self.fail(FrameError::TooLarge)),
                }
            }
            Err(ParseError::ContentLength) => {
                // The same error for none, a malformed one, or two that differ.
                let none = idx.named(HeaderName::ContentLength).next().is_none();
                Err(self.fail(if none {
                    FrameError::NoContentLength
                } else {
                    FrameError::Malformed(ParseError::ContentLength)
                }))
            }
            Err(e) => Err(self.fail(FrameError::from_parse(e))),
        }
    }

    /// Checks a parsed message against the limits and returns its length.
    fn complete(&self, n: usize, available: usize) -> Result<usize, Reject> {
        if n > self.limits.max_message {
            return Err(self.fail(FrameError::TooLarge));
        }
        if n == 0 || n > available {
            // The parser only counts bytes it was given, after at least a start line.
            return Err(self.fail(FrameError::Malformed(ParseError::Incomplete)));
        }
        Ok(n)
    }

    /// An error for a message whose header block is known.
    fn fail(&self, error: FrameError) -> Reject {
        Reject {
            error,
            head: self.head,
        }
    }

    fn parse<'b>(
        &mut self,
        msg: &'b [u8],
        idx: &'b mut HeaderIndex,
    ) -> Result<Status<Message<'b>>, ParseError> {
        #[cfg(test)]
        {
            self.parses += 1;
        }
        parse_stream(msg, idx)
    }
}

/// Outcome of the search for the end of the header block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Search {
    /// The header block is this long (blank line included).
    Found(usize),
    /// Not in these bytes: search again from `resume`; `saw_lf` says a line
    /// end was among the bytes searched.
    NotYet { resume: usize, saw_lf: bool },
}

/// Finds the blank line that ends the header block: the first LF at or after
/// `from` followed by CRLF or (in the parser's lenient mode; strict parsing
/// refuses it) by LF. The message starts with a token byte, so the start line
/// is never blank.
fn find_head_end(msg: &[u8], from: usize) -> Search {
    let mut at = from;
    let mut saw_lf = false;
    while let Some(i) = msg.get(at..).and_then(|r| scan::find(b'\n', r)) {
        let lf = at + i;
        saw_lf = true;
        match (msg.get(lf + 1), msg.get(lf + 2)) {
            (Some(b'\n'), _) => return Search::Found(lf + 2),
            (Some(b'\r'), Some(b'\n')) => return Search::Found(lf + 3),
            // The blank line may still come right here.
            (None, _) | (Some(b'\r'), None) => return Search::NotYet { resume: lf, saw_lf },
            _ => at = lf + 1,
        }
    }
    Search::NotYet {
        resume: msg.len().max(from),
        saw_lf,
    }
}

/// How many bytes of `data` complete the header block of which `held` is
/// the front (`held` has no blank line), if they are all in `data`: the blank
/// line may start in the last two held bytes or anywhere in `data`.
fn head_end_after(held: &[u8], data: &[u8]) -> Option<usize> {
    let tail = held.get(held.len().saturating_sub(2)..).unwrap_or_default();
    let mut joint = [0u8; 5];
    let mut n = 0;
    for (slot, &b) in joint.iter_mut().zip(tail.iter().chain(data.iter().take(3))) {
        *slot = b;
        n += 1;
    }
    if let Search::Found(end) = find_head_end(joint.get(..n).unwrap_or_default(), 0) {
        if end > tail.len() {
            return Some(end - tail.len());
        }
    }
    match find_head_end(data, 0) {
        Search::Found(end) => Some(end),
        Search::NotYet { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::parse;

    const INVITE: &[u8] = b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/TCP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@pc33.atlanta.example.com;transport=tcp>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 127\r\n\
\r\n\
v=0\r\n\
o=alice 2890844526 2890844526 IN IP4 pc33.atlanta.example.com\r\n\
s=-\r\n\
c=IN IP4 192.0.2.101\r\n\
t=0 0\r\n\
m=audio 49172 RTP/AVP 0\r\n";

    const REGISTER: &[u8] = b"REGISTER sip:registrar.biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/TCP bobspc.biloxi.example.com:5060;branch=z9hG4bKnashds7\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
From: Bob <sip:bob@biloxi.example.com>;tag=456248\r\n\
Call-ID: 843817637684230@998sdasdh09\r\n\
CSeq: 1826 REGISTER\r\n\
Contact: <sip:bob@192.0.2.4;transport=tcp>\r\n\
Expires: 7200\r\n\
Content-Length: 0\r\n\
\r\n";

    const COMPACT: &[u8] = b"SIP/2.0 200 OK\r\n\
v: SIP/2.0/TCP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n\
t: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n\
f: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
i: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 INVITE\r\n\
l: 4\r\n\
\r\n\
v=0\n";

    /// A frame with its bytes owned, and whether they were a slice of the read.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Got {
        Msg(Vec<u8>),
        Ping,
        Pong,
    }

    fn msg(m: &[u8]) -> Got {
        Got::Msg(m.to_vec())
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    /// Feeds `chunks` in order; returns the frames and the first error.
    fn feed(f: &mut Framer, chunks: &[&[u8]]) -> (Vec<Got>, Result<(), FrameError>) {
        let mut idx = HeaderIndex::default();
        let mut got = Vec::new();
        for c in chunks {
            let r = f.handle_input(c, &mut idx, &mut |fr| {
                got.push(match fr {
                    Frame::Message(m) => Got::Msg(m.to_vec()),
                    Frame::Ping => Got::Ping,
                    Frame::Pong => Got::Pong,
                })
            });
            if r.is_err() {
                return (got, r);
            }
        }
        (got, Ok(()))
    }

    fn framer() -> Framer {
        Framer::new(StreamLimits::default())
    }

    fn bytes_one_by_one(m: &[u8]) -> Vec<&[u8]> {
        m.chunks(1).collect()
    }

    #[test]
    fn the_samples_are_valid_messages() {
        for m in [INVITE, REGISTER, COMPACT] {
            let mut idx = HeaderIndex::default();
            let p = parse(m, &mut idx).unwrap();
            assert_eq!(p.len(), m.len());
        }
    }

    #[test]
    fn a_message_split_anywhere_comes_out_once_and_whole() {
        for m in [INVITE, REGISTER, COMPACT] {
            for cut in 0..=m.len() {
                let mut f = framer();
                let (got, r) = feed(&mut f, &[&m[..cut], &m[cut..]]);
                assert_eq!(r, Ok(()), "cut at {cut}");
                assert_eq!(got, vec![msg(m)], "cut at {cut}");
                assert_eq!(f.pending(), 0);
            }
            let mut f = framer();
            let (got, r) = feed(&mut f, &bytes_one_by_one(m));
            assert_eq!((got, r), (vec![msg(m)], Ok(())));
            assert!(
                f.cut.parses <= 4,
                "first try, start line, header block, body"
            );
        }
    }

    #[test]
    fn three_way_splits_of_two_messages() {
        let two = cat(&[INVITE, REGISTER]);
        for a in (0..two.len()).step_by(7) {
            for b in (a..two.len()).step_by(11) {
                let mut f = framer();
                let (got, r) = feed(&mut f, &[&two[..a], &two[a..b], &two[b..]]);
                assert_eq!(r, Ok(()), "cuts {a} {b}");
                assert_eq!(got, vec![msg(INVITE), msg(REGISTER)], "cuts {a} {b}");
            }
        }
    }

    #[test]
    fn several_messages_in_one_read_are_sliced_from_it() {
        let data = cat(&[INVITE, REGISTER, COMPACT, INVITE]);
        let mut f = framer();
        let mut idx = HeaderIndex::default();
        let mut spans = Vec::new();
        f.handle_input(&data, &mut idx, &mut |fr| {
            if let Frame::Message(m) = fr {
                spans.push((m.as_ptr() as usize - data.as_ptr() as usize, m.len()));
            }
        })
        .unwrap();
        let i = INVITE.len();
        let r = REGISTER.len();
        let c = COMPACT.len();
        assert_eq!(
            spans,
            vec![(0, i), (i, r), (i + r, c), (i + r + c, i)],
            "zero copy: every message is a slice of the read"
        );
        assert_eq!(f.cut.parses, 4, "one parse per whole message");
    }

    #[test]
    fn after_a_held_message_the_rest_of_the_read_is_framed_in_place() {
        let cut = 100; // inside the INVITE's header block
        let rest = cat(&[&INVITE[cut..], REGISTER, &INVITE[..50]]);
        let mut f = framer();
        let mut idx = HeaderIndex::default();
        f.handle_input(&INVITE[..cut], &mut idx, &mut |_| {})
            .unwrap();
        let mut seen = Vec::new();
        f.handle_input(&rest, &mut idx, &mut |fr| {
            if let Frame::Message(m) = fr {
                seen.push((m.to_vec(), m.as_ptr() as usize));
            }
        })
        .unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].0, INVITE);
        assert_eq!(seen[1].0, REGISTER);
        let reg_at = rest.as_ptr() as usize + INVITE.len() - cut;
        assert_eq!(seen[1].1, reg_at, "the REGISTER is a slice of the read");
        assert_eq!(f.pending(), 50, "only the tail is held");
        assert!(f.in_header_block());
    }

    #[test]
    fn keepalives() {
        let r = REGISTER;
        let lf = FrameError::Malformed(ParseError::LineEnding);
        let junk = FrameError::Malformed(ParseError::RequestLine);
        // (reads, frames delivered, outcome)
        type Case<'a> = (&'a [&'a [u8]], &'a [Got], Result<(), FrameError>);
        #[rustfmt::skip]
        let cases: &[Case<'_>] = &[
            (&[b"\r\n\r\n"], &[Got::Ping], Ok(())),
            (&[b"\r\n\r\n\r\n\r\n"], &[Got::Ping, Got::Ping], Ok(())),
            (&[b"\r", b"\n", b"\r", b"\n"], &[Got::Ping], Ok(())),
            (&[b"\r\n", b"\r\n"], &[Got::Ping], Ok(())),
            // A CRLF at the end of a read is held: it may become a ping.
            (&[b"\r\n"], &[], Ok(())),
            (&[b"\r\n\r\n\r\n"], &[Got::Ping], Ok(())),
            (&[b"\r\n", r], &[Got::Pong, msg(r)], Ok(())),
            (&[&cat(&[b"\r\n", r])], &[Got::Pong, msg(r)], Ok(())),
            (&[&cat(&[b"\r\n\r\n", r])], &[Got::Ping, msg(r)], Ok(())),
            (&[&cat(&[b"\r\n\r\n\r\n", r])], &[Got::Ping, Got::Pong, msg(r)], Ok(())),
            (&[&cat(&[r, b"\r\n\r\n", r])], &[msg(r), Got::Ping, msg(r)], Ok(())),
            (&[r, b"\r\n\r", b"\n", r], &[msg(r), Got::Ping, msg(r)], Ok(())),
            (&[&cat(&[r, b"\r\n", r])], &[msg(r), Got::Pong, msg(r)], Ok(())),
            // Bytes that cannot start a message, bare CR or LF.
            (&[b"\0"], &[], Err(junk)),
            (&[b"\r\n\0"], &[Got::Pong], Err(junk)),
            (&[b"\r\n", b"<"], &[Got::Pong], Err(junk)),
            (&[b"\n"], &[], Err(lf)),
            (&[b"\rX"], &[], Err(lf)),
            (&[b"\r\n\n"], &[Got::Pong], Err(lf)),
            (&[b"\r\n\rX"], &[Got::Pong], Err(lf)),
            (&[&cat(&[r, b"\0"])], &[msg(r)], Err(junk)),
        ];
        for (i, (chunks, want, res)) in cases.iter().enumerate() {
            let mut f = framer();
            let (got, r) = feed(&mut f, chunks);
            assert_eq!((&got[..], r), (*want, *res), "case {i}");
            assert_eq!(f.pending(), 0, "case {i}: keep-alives are not pending");
        }
    }

    #[test]
    fn oversized_content_length_fails_before_the_body() {
        let head = |cl: &str| {
            String::from_utf8_lossy(REGISTER)
                .replace("Content-Length: 0", &format!("Content-Length: {cl}"))
                .into_bytes()
        };
        let small = StreamLimits {
            max_message: 1_000,
            ..StreamLimits::default()
        };
        // (limits, declared length): the header alone must be refused.
        let cases: &[(StreamLimits, &str)] = &[
            (small, "2000"),
            (small, "700"),
            (StreamLimits::default(), "70000"),
            (StreamLimits::default(), "18446744073709551615"),
        ];
        for (limits, cl) in cases {
            let h = head(cl);
            for chunks in [vec![&h[..]], bytes_one_by_one(&h)] {
                let mut f = Framer::new(*limits);
                let (got, r) = feed(&mut f, &chunks);
                assert_eq!(r, Err(FrameError::TooLarge), "CL {cl}");
                assert!(got.is_empty());
                assert_eq!(f.rejected_head(), Some(&h[..]), "CL {cl}");
                assert_eq!(f.pending(), 0);
                assert_eq!(FrameError::TooLarge.status(), 413);
            }
        }
        // Just within the limit: accepted.
        let mut m = head("10");
        m.extend_from_slice(b"0123456789");
        let lim = StreamLimits {
            max_message: m.len(),
            ..StreamLimits::default()
        };
        let mut f = Framer::new(lim);
        assert_eq!(feed(&mut f, &bytes_one_by_one(&m)), (vec![msg(&m)], Ok(())));
        let lim = StreamLimits {
            max_message: m.len() - 1,
            ..StreamLimits::default()
        };
        let mut f = Framer::new(lim);
        assert_eq!(feed(&mut f, &[&m]), (vec![], Err(FrameError::TooLarge)));
    }

    #[test]
    fn a_header_block_without_end_is_refused_at_the_limit() {
        let limits = StreamLimits {
            max_header_block: 256,
            ..StreamLimits::default()
        };
        let mut endless = b"INVITE sip:a@b SIP/2.0\r\n".to_vec();
        while endless.len() < 1_000 {
            endless.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaa\r\n");
        }
        for size in [1, 7, 100, 255, 256, 1_000] {
            let mut f = Framer::new(limits);
            let mut idx = HeaderIndex::default();
            let mut result = Ok(());
            for c in endless.chunks(size) {
                result = f.handle_input(c, &mut idx, &mut |_| panic!("no frame"));
                if result.is_err() {
                    break;
                }
                assert!(f.pending() < limits.max_header_block, "size {size}");
                assert!(f.in_header_block());
            }
            assert_eq!(result, Err(FrameError::HeaderBlockTooLarge), "size {size}");
            assert_eq!(f.rejected_head(), None);
            assert_eq!(f.pending(), 0);
        }
        // A header block of exactly the limit passes; one byte more does not.
        let reg_limit = StreamLimits {
            max_header_block: REGISTER.len(),
            ..StreamLimits::default()
        };
        let mut f = Framer::new(reg_limit);
        assert_eq!(feed(&mut f, &[REGISTER]), (vec![msg(REGISTER)], Ok(())));
        let mut f = Framer::new(StreamLimits {
            max_header_block: REGISTER.len() - 1,
            ..reg_limit
        });
        assert_eq!(
            feed(&mut f, &bytes_one_by_one(REGISTER)),
            (vec![], Err(FrameError::HeaderBlockTooLarge))
        );
    }

    #[test]
    fn header_errors_keep_the_head_for_the_answer() {
        let no_cl = String::from_utf8_lossy(REGISTER).replace("Content-Length: 0\r\n", "");
        let two_cl = String::from_utf8_lossy(REGISTER)
            .replace("Content-Length: 0\r\n", "Content-Length: 0\r\nl: 5\r\n");
        let no_via = String::from_utf8_lossy(INVITE).replace(
            "Via: SIP/2.0/TCP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n",
            "",
        );
        let no_via_head = &no_via[..no_via.find("\r\n\r\n").unwrap() + 4];
        // (input, error, rejected head)
        let cases: &[(&str, FrameError, &str)] = &[
            (&no_cl, FrameError::NoContentLength, &no_cl),
            (
                &two_cl,
                FrameError::Malformed(ParseError::ContentLength),
                &two_cl,
            ),
            // The body is needed before the parser checks the mandatory headers.
            (
                &no_via,
                FrameError::Malformed(ParseError::MissingHeader),
                no_via_head,
            ),
        ];
        for (input, want, head) in cases {
            let mut trailing = input.as_bytes().to_vec();
            trailing.extend_from_slice(REGISTER);
            let one = [&trailing[..]];
            for chunks in [one.to_vec(), bytes_one_by_one(input.as_bytes())] {
                let mut f = framer();
                let (got, r) = feed(&mut f, &chunks);
                assert_eq!(r, Err(*want), "{input}");
                assert!(got.is_empty());
                assert_eq!(f.rejected_head(), Some(head.as_bytes()), "{input}");
                assert_eq!(want.status(), 400);
            }
        }
    }

    #[test]
    fn bare_lf_messages_in_the_lenient_mode() {
        let lf = String::from_utf8_lossy(REGISTER)
            .replace("\r\n", "\n")
            .into_bytes();
        let two = cat(&[&lf, &lf]);
        for lenient in [false, true] {
            let cfg = crate::sip::ParseConfig {
                allow_bare_lf: lenient,
                ..crate::sip::ParseConfig::default()
            };
            for cut in 0..=two.len() {
                let mut f = framer();
                let mut idx = HeaderIndex::new(cfg.clone());
                let mut n = 0;
                let r = [&two[..cut], &two[cut..]].iter().try_for_each(|c| {
                    f.handle_input(c, &mut idx, &mut |fr| {
                        assert_eq!(fr, Frame::Message(&lf));
                        n += 1;
                    })
                });
                if lenient {
                    assert_eq!((r, n), (Ok(()), 2), "cut {cut}");
                } else {
                    assert_eq!(r, Err(FrameError::Malformed(ParseError::LineEnding)));
                }
            }
        }
    }

    #[test]
    fn a_bad_start_line_fails_before_the_header_block_ends() {
        let cases: &[(&[u8], ParseError)] = &[
            (b"GET / HTTP/1.1\r\nHost: x", ParseError::RequestLine),
            (b"INVITE sip:a@b SIP/3.0\r\n", ParseError::Version),
            (b"INVITE sip:a@b SIP/2.0\nVia", ParseError::LineEnding),
        ];
        for (input, want) in cases {
            let mut f = framer();
            let (_, r) = feed(&mut f, &bytes_one_by_one(input));
            assert_eq!(r, Err(FrameError::Malformed(*want)));
            assert_eq!(f.rejected_head(), None);
        }
    }

    #[test]
    fn a_body_of_exactly_its_length_then_the_next_message() {
        let data = cat(&[INVITE, REGISTER, COMPACT]);
        let body_end = INVITE.len();
        for cut in [body_end - 1, body_end, body_end + 1] {
            let mut f = framer();
            let (got, r) = feed(&mut f, &[&data[..cut], &data[cut..]]);
            assert_eq!(r, Ok(()));
            assert_eq!(got, vec![msg(INVITE), msg(REGISTER), msg(COMPACT)]);
        }
        let mut f = framer();
        let (got, _) = feed(&mut f, &bytes_one_by_one(&data));
        assert_eq!(got, vec![msg(INVITE), msg(REGISTER), msg(COMPACT)]);
    }

    #[test]
    fn a_large_body_byte_by_byte_is_linear() {
        let body = vec![b'a'; 60_000];
        let mut m = String::from_utf8_lossy(REGISTER)
            .replace("Content-Length: 0", "Content-Length: 60000")
            .into_bytes();
        m.extend_from_slice(&body);
        let mut f = framer();
        let mut idx = HeaderIndex::default();
        let mut got = Vec::new();
        for (i, b) in m.chunks(1).enumerate() {
            f.handle_input(b, &mut idx, &mut |fr| {
                got.push(matches!(fr, Frame::Message(_)))
            })
            .unwrap();
            if i + 1 < m.len() {
                assert_eq!(f.pending(), i + 1);
            }
        }
        assert_eq!(got, vec![true]);
        assert_eq!(f.pending(), 0);
        // First try, start line, header block, body: four parses, not one per byte.
        assert_eq!(f.cut.parses, 4);
        assert!(f.buf.capacity() <= m.len() + 2 * StreamLimits::default().max_header_block);
    }

    #[test]
    fn pending_and_header_block_state() {
        let mut f = framer();
        let mut idx = HeaderIndex::default();
        let mut n = 0;
        let head_len = INVITE.len() - 127;
        // (bytes fed so far, pending, in header block)
        let steps: &[(usize, usize, bool)] = &[
            (0, 0, false),
            (10, 10, true),
            (head_len - 1, head_len - 1, true),
            (head_len, head_len, false),
            (INVITE.len() - 1, INVITE.len() - 1, false),
            (INVITE.len(), 0, false),
        ];
        let mut fed = 0;
        for &(upto, pending, header) in steps {
            f.handle_input(&INVITE[fed..upto], &mut idx, &mut |_| n += 1)
                .unwrap();
            fed = upto;
            assert_eq!(
                (f.pending(), f.in_header_block()),
                (pending, header),
                "{upto}"
            );
        }
        assert_eq!(n, 1);
    }

    #[test]
    fn an_error_is_sticky() {
        let mut f = framer();
        let (_, r) = feed(&mut f, &[b"\0"]);
        assert!(r.is_err());
        let (got, again) = feed(&mut f, &[REGISTER]);
        assert!(got.is_empty());
        assert_eq!(again, r);
        assert_eq!((f.pending(), f.in_header_block()), (0, false));
    }

    #[test]
    fn statuses() {
        let cases = [
            (FrameError::HeaderBlockTooLarge, 413),
            (FrameError::NoContentLength, 400),
            (FrameError::TooLarge, 413),
            (FrameError::Malformed(ParseError::LineEnding), 400),
            (FrameError::Malformed(ParseError::Version), 505),
            (FrameError::Malformed(ParseError::TooManyHeaders), 413),
        ];
        for (e, status) in cases {
            assert_eq!(e.status(), status, "{e:?}");
            assert!(!e.reason().is_empty());
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn head_end_search_resumes_without_rescanning() {
        // (bytes, resume from, outcome)
        let cases: &[(&[u8], usize, Search)] = &[
            (b"A\r\n\r\n", 0, Search::Found(5)),
            (b"A\r\nB: c\r\n\r\nbody", 0, Search::Found(11)),
            (b"A\n\n", 0, Search::Found(3)),
            (
                b"A\r\n",
                0,
                Search::NotYet {
                    resume: 2,
                    saw_lf: true,
                },
            ),
            (
                b"A\r\n\r",
                0,
                Search::NotYet {
                    resume: 2,
                    saw_lf: true,
                },
            ),
            (
                b"A\r\nB",
                0,
                Search::NotYet {
                    resume: 4,
                    saw_lf: true,
                },
            ),
            (
                b"AB",
                0,
                Search::NotYet {
                    resume: 2,
                    saw_lf: false,
                },
            ),
            (b"A\r\nB: c\r\n\r\n", 4, Search::Found(11)),
            (
                b"A\r\n",
                9,
                Search::NotYet {
                    resume: 9,
                    saw_lf: false,
                },
            ),
        ];
        for (bytes, from, want) in cases {
            assert_eq!(find_head_end(bytes, *from), *want, "{bytes:?}");
        }
    }
}
