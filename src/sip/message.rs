//! The message model and the parser (RFC 3261 §7, §18.3, §20, §25).
//!
//! [`parse`] scans one datagram; [`parse_stream`] scans the front of a stream
//! buffer and says [`Status::Partial`] until a whole message is there. Both
//! fill a caller-owned [`HeaderIndex`] (one per shard, reused for every
//! message) with the position of every header, and return a
//! [`Message<'buf>`](Message) that borrows the input and the index.
//!
//! ```text
//!  buf ─► start line ─► header lines (memchr '\n', ':'; names interned) ─► blank line ─► body
//!                         │
//!                         └► HeaderIndex: [(name, name span, value span, line span)] + first/next links
//! ```
//!
//! Contract:
//! - no heap allocation: the index has a fixed capacity set at construction,
//!   and running out of it is [`ParseError::TooManyHeaders`] (413), never growth;
//! - no panic on any input; every limit of [`ParseConfig`] is a typed error;
//! - values are decoded into types (Via, CSeq, name-addr…) only when asked for,
//!   by the methods of [`Message`] and the decoders in [`super::header`].
//!
//! What the parser checks eagerly, because every consumer of a message needs it
//! and it is cheap: the start line and version; header name syntax; line
//! endings and folding; Content-Length (consistent, and the body there);
//! the presence of To, From, Call-ID, CSeq and Via, and that none of To,
//! From, Call-ID, CSeq and Max-Forwards appears twice; CSeq syntax and, for
//! requests, that its method is the request's (§8.1.1.5); that every Via
//! line holds a value, and the Via count limit; that a NUL appears only as a
//! quoted-pair. [`Message::essentials`] decodes the rest a proxy needs and
//! reports the first malformed one; [`Message::check_proxy_require`] is the
//! 420 check.
//!
//! `tests/torture.rs` holds the RFC 4475 / RFC 5118 torture messages with the
//! check that refuses each and the status it gets; `tests/alloc.rs` proves
//! the no-allocation contract; `fuzz/` runs the parser on arbitrary bytes.

use super::error::ParseError;
use super::header::{self, CSeq, NameAddr, Via};
use super::scan;
use super::uri::Uri;
use super::HeaderName;

/// Limits and lenient modes of the parser. The defaults are safe for a
/// server on the open internet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseConfig {
    /// Largest message accepted, in bytes (start line, headers and body).
    pub max_message_size: usize,
    /// Most header lines in one message; the header index is sized by it.
    pub max_headers: usize,
    /// Longest header line, folded continuation lines included.
    pub max_header_line: usize,
    /// Longest Request-URI.
    pub max_uri_len: usize,
    /// Most Via values (across all Via lines).
    pub max_vias: usize,
    /// Accept a bare LF where CRLF is required (some broken UAs send it).
    pub allow_bare_lf: bool,
}

impl Default for ParseConfig {
    fn default() -> Self {
        Self {
            max_message_size: 65_535,
            max_headers: 256,
            max_header_line: 8_192,
            max_uri_len: 4_096,
            max_vias: 70,
            allow_bare_lf: false,
        }
    }
}

/// Outcome of a parse that can run out of input (streams).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status<T> {
    /// A whole message was parsed.
    Complete(T),
    /// More bytes are needed; nothing is wrong with those seen so far.
    Partial,
}

/// A byte range of the input, as offsets (`u32`: messages are far below 4 GiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    /// First byte.
    pub start: u32,
    /// One past the last byte.
    pub end: u32,
}

impl Span {
    #[inline]
    fn new(start: usize, end: usize) -> Self {
        // INVARIANT: the parser only builds spans inside a buffer of at most
        // `max_message_size` bytes, which `HeaderIndex::new` caps below u32::MAX.
        Self {
            start: start as u32,
            end: end as u32,
        }
    }

    /// The bytes of `buf` this span covers (empty if out of range).
    #[inline]
    pub fn of<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        buf.get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.end.saturating_sub(self.start) as usize
    }

    /// True for an empty span.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One header line in the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderEntry {
    /// The interned name.
    pub name: HeaderName,
    /// The name as written.
    pub name_span: Span,
    /// The value without surrounding LWS (may contain folded line breaks).
    pub value: Span,
    /// The whole line, from the name to the CRLF after the last continuation line.
    pub line: Span,
    /// Index of the next entry with the same well-known name (`u16::MAX`: none).
    next: u16,
}

const NONE: u16 = u16::MAX;

/// The per-shard header index: a fixed-capacity table of the headers of the
/// message being parsed, plus the first occurrence of each well-known name.
///
/// Build one per shard with [`HeaderIndex::new`] and hand it to every parse; it
/// is cleared by each parse and never reallocates.
#[derive(Debug, Clone)]
pub struct HeaderIndex {
    cfg: ParseConfig,
    // INVARIANT: entries.len() <= cfg.max_headers <= capacity, so push never reallocates.
    entries: Vec<HeaderEntry>,
    /// First entry of each well-known name (`NONE`: absent).
    first: [u16; HeaderName::KNOWN],
    /// Last entry of each well-known name, to link the next one in O(1).
    last: [u16; HeaderName::KNOWN],
}

impl HeaderIndex {
    /// An index for messages within `cfg`'s limits. This is the only allocation
    /// the parser ever makes.
    pub fn new(cfg: ParseConfig) -> Self {
        let mut cfg = cfg;
        cfg.max_headers = cfg.max_headers.min(usize::from(NONE) - 1);
        cfg.max_message_size = cfg.max_message_size.min(u32::MAX as usize / 2);
        Self {
            entries: Vec::with_capacity(cfg.max_headers),
            cfg,
            first: [NONE; HeaderName::KNOWN],
            last: [NONE; HeaderName::KNOWN],
        }
    }

    /// The limits this index was built with.
    pub fn config(&self) -> &ParseConfig {
        &self.cfg
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.first = [NONE; HeaderName::KNOWN];
        self.last = [NONE; HeaderName::KNOWN];
    }

    // Inlined so the entry is written straight into the table: built on the
    // stack and copied, it costs a store-forwarding stall per header.
    #[inline(always)]
    fn push(&mut self, entry: HeaderEntry) -> Result<(), ParseError> {
        if self.entries.len() >= self.cfg.max_headers {
            return Err(ParseError::TooManyHeaders);
        }
        let at = self.entries.len() as u16;
        if let Some(slot) = entry.name.slot() {
            match self.last.get(slot).copied() {
                Some(NONE) | None => {
                    if let Some(f) = self.first.get_mut(slot) {
                        *f = at;
                    }
                }
                Some(prev) => {
                    if let Some(p) = self.entries.get_mut(usize::from(prev)) {
                        p.next = at;
                    }
                }
            }
            if let Some(l) = self.last.get_mut(slot) {
                *l = at;
            }
        }
        self.entries.push(entry);
        Ok(())
    }

    /// All header entries, in message order.
    pub fn entries(&self) -> &[HeaderEntry] {
        &self.entries
    }

    /// True when a well-known name has more than one line.
    fn has_second(&self, name: HeaderName) -> bool {
        self.first_of(name)
            .and_then(|i| self.entries.get(i))
            .is_some_and(|e| e.next != NONE)
    }

    fn first_of(&self, name: HeaderName) -> Option<usize> {
        let i = *self.first.get(name.slot()?)?;
        (i != NONE).then_some(usize::from(i))
    }
}

impl Default for HeaderIndex {
    fn default() -> Self {
        Self::new(ParseConfig::default())
    }
}

/// A request method. Methods this server knows are variants; any other token
/// is [`Method::Other`] and its bytes are in [`Message::method_bytes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// ACK (RFC 3261).
    Ack,
    /// BYE (RFC 3261).
    Bye,
    /// CANCEL (RFC 3261).
    Cancel,
    /// INFO (RFC 6086).
    Info,
    /// INVITE (RFC 3261).
    Invite,
    /// MESSAGE (RFC 3428).
    Message,
    /// NOTIFY (RFC 6665).
    Notify,
    /// OPTIONS (RFC 3261).
    Options,
    /// PRACK (RFC 3262).
    Prack,
    /// PUBLISH (RFC 3903).
    Publish,
    /// REFER (RFC 3515).
    Refer,
    /// REGISTER (RFC 3261).
    Register,
    /// SUBSCRIBE (RFC 6665).
    Subscribe,
    /// UPDATE (RFC 3311).
    Update,
    /// An extension method.
    Other,
}

impl Method {
    /// How many values there are (`Other` included): the size of a table
    /// indexed by [`Method::index`].
    pub const COUNT: usize = 15;

    /// Every value, in [`Method::index`] order.
    pub const ALL: [Self; Self::COUNT] = [
        Self::Ack,
        Self::Bye,
        Self::Cancel,
        Self::Info,
        Self::Invite,
        Self::Message,
        Self::Notify,
        Self::Options,
        Self::Prack,
        Self::Publish,
        Self::Refer,
        Self::Register,
        Self::Subscribe,
        Self::Update,
        Self::Other,
    ];

    /// A dense index, `0..COUNT`.
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Interns a method token (case-sensitive, §7.1).
    pub fn from_bytes(m: &[u8]) -> Self {
        match m {
            b"ACK" => Self::Ack,
            b"BYE" => Self::Bye,
            b"CANCEL" => Self::Cancel,
            b"INFO" => Self::Info,
            b"INVITE" => Self::Invite,
            b"MESSAGE" => Self::Message,
            b"NOTIFY" => Self::Notify,
            b"OPTIONS" => Self::Options,
            b"PRACK" => Self::Prack,
            b"PUBLISH" => Self::Publish,
            b"REFER" => Self::Refer,
            b"REGISTER" => Self::Register,
            b"SUBSCRIBE" => Self::Subscribe,
            b"UPDATE" => Self::Update,
            _ => Self::Other,
        }
    }

    /// The method token.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ack => "ACK",
            Self::Bye => "BYE",
            Self::Cancel => "CANCEL",
            Self::Info => "INFO",
            Self::Invite => "INVITE",
            Self::Message => "MESSAGE",
            Self::Notify => "NOTIFY",
            Self::Options => "OPTIONS",
            Self::Prack => "PRACK",
            Self::Publish => "PUBLISH",
            Self::Refer => "REFER",
            Self::Register => "REGISTER",
            Self::Subscribe => "SUBSCRIBE",
            Self::Update => "UPDATE",
            Self::Other => "",
        }
    }
}

/// The first line of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartLine<'buf> {
    /// `Method SP Request-URI SP SIP-Version`.
    Request {
        /// The interned method.
        method: Method,
        /// The method token as written.
        method_bytes: &'buf [u8],
        /// The Request-URI as written (not yet decoded).
        uri: &'buf [u8],
    },
    /// `SIP-Version SP Status-Code SP Reason-Phrase`.
    Response {
        /// The status code (100–699).
        code: u16,
        /// The reason phrase as written.
        reason: &'buf [u8],
    },
}

/// A parsed message: views into the input buffer and the header index.
#[derive(Debug, Clone, Copy)]
pub struct Message<'buf> {
    buf: &'buf [u8],
    index: &'buf HeaderIndex,
    start: StartLine<'buf>,
    /// The start line, CRLF included (leading keep-alive CRLFs excluded).
    start_line: Span,
    /// The blank line that ends the header section.
    blank_line: Span,
    body: Span,
    cseq: CSeq<'buf>,
}

/// How input arrives: a datagram is a whole message; a stream buffer may hold
/// part of one, or one and the start of the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Datagram,
    Stream,
}

/// Parses one datagram (RFC 3261 §18.3: a body shorter than Content-Length is
/// an error, bytes beyond it are ignored, no Content-Length means the rest of
/// the datagram is the body).
///
/// Why no [`Status`] here: a datagram is never partial, and a caller should not
/// have to handle an outcome that cannot happen.
pub fn parse<'buf>(
    buf: &'buf [u8],
    index: &'buf mut HeaderIndex,
) -> Result<Message<'buf>, ParseError> {
    match parse_framed(buf, index, Framing::Datagram)? {
        Status::Complete(m) => Ok(m),
        Status::Partial => Err(ParseError::Incomplete),
    }
}

/// Parses the message at the front of a stream buffer (TCP, TLS): Partial
/// until the header section and the Content-Length bytes of body are all
/// there. [`Message::len`] says how many bytes it took. Content-Length is
/// mandatory on streams (§18.3, §20.14).
pub fn parse_stream<'buf>(
    buf: &'buf [u8],
    index: &'buf mut HeaderIndex,
) -> Result<Status<Message<'buf>>, ParseError> {
    parse_framed(buf, index, Framing::Stream)
}

/// True when every NUL in `value` is the second byte of a quoted-pair
/// (`\` NUL), the only place RFC 3261 §25.1 lets one appear (RFC 4475 §3.1.1.2).
#[inline]
fn nuls_are_escaped(value: &[u8]) -> bool {
    let mut from = 0;
    while let Some(i) = value.get(from..).and_then(|rest| scan::find(0, rest)) {
        let at = from + i;
        if at == 0 || value.get(at - 1) != Some(&b'\\') {
            return false;
        }
        from = at + 1;
    }
    true
}

/// Finds the end of the line starting at `from`: returns (end of content, start of next line).
#[inline]
fn line_end(buf: &[u8], from: usize, bare_lf: bool) -> Result<Option<(usize, usize)>, ParseError> {
    let Some(rest) = buf.get(from..) else {
        return Ok(None);
    };
    let Some(nl) = scan::find(b'\n', rest) else {
        return Ok(None);
    };
    let nl = from + nl;
    if nl > from && buf.get(nl - 1) == Some(&b'\r') {
        Ok(Some((nl - 1, nl + 1)))
    } else if bare_lf {
        Ok(Some((nl, nl + 1)))
    } else {
        Err(ParseError::LineEnding)
    }
}

fn parse_framed<'buf>(
    buf: &'buf [u8],
    index: &'buf mut HeaderIndex,
    framing: Framing,
) -> Result<Status<Message<'buf>>, ParseError> {
    index.clear();
    let cfg = &index.cfg;
    let bare_lf = cfg.allow_bare_lf;
    let max = cfg.max_message_size;
    if framing == Framing::Datagram && buf.len() > max {
        return Err(ParseError::MessageTooLarge);
    }
    let more = |limit_hit: bool| -> Result<Status<Message<'buf>>, ParseError> {
        match framing {
            Framing::Stream if !limit_hit => Ok(Status::Partial),
            Framing::Stream => Err(ParseError::MessageTooLarge),
            Framing::Datagram => Err(ParseError::Incomplete),
        }
    };

    // §7.5: ignore CRLFs before the start line (keep-alives, stray line ends).
    let mut pos = buf
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    if pos == buf.len() {
        return more(false);
    }
    let Some((sl_end, mut next)) = line_end(buf, pos, bare_lf)? else {
        return more(buf.len() > max);
    };
    let line = buf.get(pos..sl_end).unwrap_or_default();
    let start = parse_start_line(line, &index.cfg)?;
    let start_line = Span::new(pos, next);

    // Header lines until the blank line.
    let max_line = index.cfg.max_header_line;
    let blank_line = loop {
        pos = next;
        let rest = buf.get(pos..).unwrap_or_default();
        match rest.first() {
            None => return more(pos > max),
            Some(b'\r') => match rest.get(1) {
                Some(b'\n') => break Span::new(pos, pos + 2),
                Some(_) => return Err(ParseError::LineEnding),
                None => return more(pos > max),
            },
            Some(b'\n') if bare_lf => break Span::new(pos, pos + 1),
            Some(b' ' | b'\t') => return Err(ParseError::HeaderName),
            Some(_) => {}
        }
        // The name: token characters (one table lookup each; names are short,
        // so this beats a memchr for the colon), then SP/HT, then the colon.
        let name_len = scan::token_len(rest);
        let mut colon = name_len;
        while let Some(b' ' | b'\t') = rest.get(colon) {
            colon += 1;
        }
        match rest.get(colon) {
            Some(b':') if name_len > 0 => {}
            None => return more(rest.len() > max_line || pos > max),
            Some(_) => return Err(ParseError::HeaderName),
        }
        let name_bytes = rest.get(..name_len).unwrap_or_default();
        // The value runs to a line end not followed by SP/HT (§7.3.1 folding).
        let mut from = pos + colon + 1;
        let (value_end, line_next) = loop {
            let Some((end, after)) = line_end(buf, from, bare_lf)? else {
                return more(buf.len() - pos > max_line || buf.len() > max);
            };
            match buf.get(after) {
                Some(b' ' | b'\t') => from = after,
                Some(_) => break (end, after),
                None => return more(after - pos > max_line || after > max),
            }
        };
        if line_next - pos > max_line {
            return Err(ParseError::HeaderTooLong);
        }
        let vstart = pos + colon + 1;
        let value = buf.get(vstart..value_end).unwrap_or_default();
        let lead = value.iter().take_while(|&&b| scan::is_lws(b)).count();
        let trail = value
            .get(lead..)
            .unwrap_or_default()
            .iter()
            .rev()
            .take_while(|&&b| scan::is_lws(b))
            .count();
        index.push(HeaderEntry {
            name: HeaderName::from_bytes(name_bytes),
            name_span: Span::new(pos, pos + name_len),
            value: Span::new(vstart + lead, value_end - trail),
            line: Span::new(pos, line_next),
            next: NONE,
        })?;
        next = line_next;
    };
    // One search for NUL over the whole header section instead of one per value.
    let head = buf
        .get(start_line.end as usize..blank_line.start as usize)
        .unwrap_or_default();
    if !nuls_are_escaped(head) {
        return Err(ParseError::HeaderValue);
    }
    let body_start = blank_line.end as usize;
    let index: &'buf HeaderIndex = index;

    // Content-Length: every copy must agree.
    let mut content_length: Option<usize> = None;
    for e in index.named(HeaderName::ContentLength) {
        let v = scan::parse_u64(e.value.of(buf)).ok_or(ParseError::ContentLength)?;
        let v = usize::try_from(v).map_err(|_| ParseError::BodyTooLarge)?;
        match content_length {
            Some(prev) if prev != v => return Err(ParseError::ContentLength),
            _ => content_length = Some(v),
        }
    }
    let available = buf.len().saturating_sub(body_start);
    let body_len = match (content_length, framing) {
        (Some(cl), _) if cl > max || body_start.saturating_add(cl) > max => {
            return Err(ParseError::BodyTooLarge)
        }
        (Some(cl), _) if cl <= available => cl,
        (Some(_), Framing::Datagram) => return Err(ParseError::BodyTruncated),
        (Some(_), Framing::Stream) => return Ok(Status::Partial),
        (None, Framing::Datagram) => available,
        (None, Framing::Stream) => return Err(ParseError::ContentLength),
    };
    let body = Span::new(body_start, body_start + body_len);

    // Mandatory headers (§8.1.1) and the CSeq, which every layer needs.
    for h in [
        HeaderName::To,
        HeaderName::From,
        HeaderName::CallId,
        HeaderName::CSeq,
        HeaderName::Via,
    ] {
        if index.first_of(h).is_none() {
            return Err(ParseError::MissingHeader);
        }
    }
    // Single-valued headers that every layer reads (§7.3.1): a second copy
    // makes "which one" ambiguous, so the message is refused (RFC 4475 §3.3.8).
    for h in [
        HeaderName::To,
        HeaderName::From,
        HeaderName::CallId,
        HeaderName::CSeq,
        HeaderName::MaxForwards,
    ] {
        if index.has_second(h) {
            return Err(ParseError::DuplicateHeader);
        }
    }
    let cseq_entry = index
        .named(HeaderName::CSeq)
        .next()
        .ok_or(ParseError::MissingHeader)?;
    let cseq = CSeq::parse(cseq_entry.value.of(buf)).map_err(|_| ParseError::CSeq)?;
    if let StartLine::Request {
        method,
        method_bytes,
        ..
    } = start
    {
        if cseq.method_bytes != method_bytes {
            // RFC 4475 §3.1.2.18: an extension method gets 501, better for the future than 400.
            return Err(if method == Method::Other {
                ParseError::ExtensionMethodMismatch
            } else {
                ParseError::CSeqMethodMismatch
            });
        }
    }
    // Every Via line holds at least one via-parm (§20.42): an empty line
    // would make "the top Via" differ between readers and the editor.
    let mut vias = 0usize;
    for e in index.named(HeaderName::Via) {
        let n = scan::CommaValues::new(e.value.of(buf)).count();
        if n == 0 {
            return Err(ParseError::Via);
        }
        vias += n;
    }
    if vias > index.cfg.max_vias {
        return Err(ParseError::TooManyVias);
    }

    Ok(Status::Complete(Message {
        buf,
        index,
        start,
        start_line,
        blank_line,
        body,
        cseq,
    }))
}

fn parse_start_line<'buf>(
    line: &'buf [u8],
    cfg: &ParseConfig,
) -> Result<StartLine<'buf>, ParseError> {
    if line.len() >= 4
        && line
            .get(..4)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"SIP/"))
    {
        // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase
        let (version, rest) = scan::split_once(line, b' ').ok_or(ParseError::StatusLine)?;
        if !version.eq_ignore_ascii_case(b"SIP/2.0") {
            return Err(ParseError::Version);
        }
        let (code, reason) = match scan::split_once(rest, b' ') {
            Some((c, r)) => (c, r),
            None => (rest, &b""[..]),
        };
        if code.len() != 3 {
            return Err(ParseError::StatusLine);
        }
        let code = scan::parse_u16(code).ok_or(ParseError::StatusLine)?;
        if !(100..=699).contains(&code) {
            return Err(ParseError::StatusLine);
        }
        return Ok(StartLine::Response { code, reason });
    }
    // Request-Line = Method SP Request-URI SP SIP-Version
    let (method_bytes, rest) = scan::split_once(line, b' ').ok_or(ParseError::RequestLine)?;
    if !scan::is_token_str(method_bytes) {
        return Err(ParseError::Method);
    }
    let sp = rest
        .iter()
        .rposition(|&b| b == b' ')
        .ok_or(ParseError::RequestLine)?;
    let uri = rest.get(..sp).unwrap_or_default();
    let version = rest.get(sp + 1..).unwrap_or_default();
    if uri.is_empty() || uri.iter().any(|&b| b == b' ' || b == b'\t') {
        return Err(ParseError::RequestLine);
    }
    if uri.len() > cfg.max_uri_len {
        return Err(ParseError::RequestUriTooLong);
    }
    if !version.eq_ignore_ascii_case(b"SIP/2.0") {
        return Err(
            if version.len() >= 4
                && version
                    .get(..4)
                    .is_some_and(|p| p.eq_ignore_ascii_case(b"SIP/"))
            {
                ParseError::Version
            } else {
                ParseError::RequestLine
            },
        );
    }
    Ok(StartLine::Request {
        method: Method::from_bytes(method_bytes),
        method_bytes,
        uri,
    })
}

impl HeaderIndex {
    /// Entries of one well-known name, in message order (via the links, O(k)).
    pub fn named(&self, name: HeaderName) -> Named<'_> {
        Named {
            index: self,
            at: self.first_of(name).map_or(NONE, |i| i as u16),
        }
    }
}

/// Iterator over the entries of one well-known name.
#[derive(Debug, Clone)]
pub struct Named<'a> {
    index: &'a HeaderIndex,
    at: u16,
}

impl<'a> Iterator for Named<'a> {
    type Item = &'a HeaderEntry;

    fn next(&mut self) -> Option<&'a HeaderEntry> {
        if self.at == NONE {
            return None;
        }
        let e = self.index.entries.get(usize::from(self.at))?;
        self.at = e.next;
        Some(e)
    }
}

/// The decoded fields a proxy needs from every request or response, from
/// [`Message::essentials`].
#[derive(Debug, Clone, Copy)]
pub struct Essentials<'buf> {
    /// The decoded Request-URI (requests only).
    pub uri: Option<Uri<'buf>>,
    /// The top Via value.
    pub top_via: Via<'buf>,
    /// From, decoded (its tag is `from.tag()`).
    pub from: NameAddr<'buf>,
    /// To, decoded.
    pub to: NameAddr<'buf>,
    /// The Call-ID value.
    pub call_id: &'buf [u8],
    /// The CSeq.
    pub cseq: CSeq<'buf>,
    /// Max-Forwards, if present.
    pub max_forwards: Option<u8>,
}

impl<'buf> Message<'buf> {
    /// The whole input buffer this message was parsed from.
    pub fn buf(&self) -> &'buf [u8] {
        self.buf
    }

    /// The header index.
    pub fn index(&self) -> &'buf HeaderIndex {
        self.index
    }

    /// The start line.
    pub fn start_line(&self) -> StartLine<'buf> {
        self.start
    }

    /// The span of the start line (CRLF included).
    pub fn start_line_span(&self) -> Span {
        self.start_line
    }

    /// The span of the blank line that ends the headers.
    pub fn blank_line_span(&self) -> Span {
        self.blank_line
    }

    /// The bytes this message took from the input: from its first byte to the
    /// end of its body. For streams, the caller consumes this many bytes.
    pub fn len(&self) -> usize {
        self.body.end as usize
    }

    /// True when the message is empty (never, for a parsed message).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True for a request.
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The method of a request, or the CSeq method of a response.
    pub fn method(&self) -> Method {
        match self.start {
            StartLine::Request { method, .. } => method,
            StartLine::Response { .. } => self.cseq.method,
        }
    }

    /// The method token as written (CSeq's for a response).
    pub fn method_bytes(&self) -> &'buf [u8] {
        match self.start {
            StartLine::Request { method_bytes, .. } => method_bytes,
            StartLine::Response { .. } => self.cseq.method_bytes,
        }
    }

    /// The Request-URI as written; empty for a response.
    pub fn request_uri_bytes(&self) -> &'buf [u8] {
        match self.start {
            StartLine::Request { uri, .. } => uri,
            StartLine::Response { .. } => b"",
        }
    }

    /// The decoded Request-URI. A SIP URI there may not carry headers
    /// (RFC 3261 §19.1.1 table 1; RFC 4475 §3.1.2.11).
    #[inline]
    pub fn request_uri(&self) -> Result<Uri<'buf>, ParseError> {
        match self.start {
            StartLine::Request { uri, .. } => {
                let uri = Uri::parse(uri).map_err(|e| e.in_header(ParseError::RequestUri))?;
                if !uri.headers.is_empty() {
                    return Err(ParseError::RequestUri);
                }
                Ok(uri)
            }
            StartLine::Response { .. } => Err(ParseError::RequestLine),
        }
    }

    /// Status code of a response, `None` for a request.
    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }

    /// All header entries in message order.
    pub fn headers(&self) -> &'buf [HeaderEntry] {
        self.index.entries()
    }

    /// Entries of one well-known name.
    pub fn named(&self, name: HeaderName) -> Named<'buf> {
        self.index.named(name)
    }

    /// Value of the first header of this well-known name.
    pub fn header(&self, name: HeaderName) -> Option<&'buf [u8]> {
        let e = self.index.named(name).next()?;
        Some(e.value.of(self.buf))
    }

    /// Value of the first header whose name equals `name` (case-insensitive),
    /// for names that are not well-known.
    pub fn header_raw(&self, name: &[u8]) -> Option<&'buf [u8]> {
        let known = HeaderName::from_bytes(name);
        if known != HeaderName::Other {
            return self.header(known);
        }
        self.index
            .entries
            .iter()
            .find(|e| {
                e.name == HeaderName::Other && e.name_span.of(self.buf).eq_ignore_ascii_case(name)
            })
            .map(|e| e.value.of(self.buf))
    }

    /// Every comma-separated value of a list header, across all its lines
    /// (§7.3.1), in order.
    pub fn values(&self, name: HeaderName) -> Values<'buf> {
        Values {
            buf: self.buf,
            lines: self.index.named(name),
            current: scan::CommaValues::new(b""),
        }
    }

    /// The CSeq (validated by the parser).
    pub fn cseq(&self) -> CSeq<'buf> {
        self.cseq
    }

    /// The Call-ID value.
    pub fn call_id(&self) -> &'buf [u8] {
        self.header(HeaderName::CallId).unwrap_or_default()
    }

    /// The top Via value, decoded.
    #[inline]
    pub fn top_via(&self) -> Result<Via<'buf>, ParseError> {
        let v = self
            .values(HeaderName::Via)
            .next()
            .ok_or(ParseError::MissingHeader)?;
        Via::parse(v).map_err(|_| ParseError::Via)
    }

    /// The From header, decoded.
    #[inline]
    pub fn from(&self) -> Result<NameAddr<'buf>, ParseError> {
        let v = self
            .header(HeaderName::From)
            .ok_or(ParseError::MissingHeader)?;
        NameAddr::parse(v).map_err(|e| e.in_header(ParseError::HeaderValue))
    }

    /// The To header, decoded.
    #[inline]
    pub fn to(&self) -> Result<NameAddr<'buf>, ParseError> {
        let v = self
            .header(HeaderName::To)
            .ok_or(ParseError::MissingHeader)?;
        NameAddr::parse(v).map_err(|e| e.in_header(ParseError::HeaderValue))
    }

    /// Max-Forwards: `Ok(None)` when absent; an error when not 0–255.
    #[inline]
    pub fn max_forwards(&self) -> Result<Option<u8>, ParseError> {
        let Some(v) = self.header(HeaderName::MaxForwards) else {
            return Ok(None);
        };
        header::parse_max_forwards(v)
            .map(Some)
            .map_err(|_| ParseError::MaxForwards)
    }

    /// Checks every Proxy-Require option against the extensions this proxy
    /// `supported` (compared case-insensitively): the first unknown one is
    /// [`ParseError::BadExtension`], answered with 420 and an Unsupported
    /// header naming it (RFC 3261 §16.3 step 6, §20.29; RFC 4475 §3.3.5).
    pub fn check_proxy_require(&self, supported: &[&[u8]]) -> Result<(), ParseError> {
        match self.unsupported_proxy_require(supported) {
            Some(_) => Err(ParseError::BadExtension),
            None => Ok(()),
        }
    }

    /// The first Proxy-Require option not in `supported`, to name in the
    /// Unsupported header of the 420.
    pub fn unsupported_proxy_require(&self, supported: &[&[u8]]) -> Option<&'buf [u8]> {
        self.values(HeaderName::ProxyRequire)
            .find(|opt| !supported.iter().any(|s| s.eq_ignore_ascii_case(opt)))
    }

    /// The Expires header as seconds, if present and valid.
    pub fn expires(&self) -> Option<u32> {
        self.header(HeaderName::Expires)
            .and_then(|v| header::parse_delta_seconds(v).ok())
    }

    /// The body.
    pub fn body(&self) -> &'buf [u8] {
        self.body.of(self.buf)
    }

    /// The span of the body.
    pub fn body_span(&self) -> Span {
        self.body
    }

    /// The message bytes (start line through body).
    pub fn as_bytes(&self) -> &'buf [u8] {
        self.buf
            .get(self.start_line.start as usize..self.body.end as usize)
            .unwrap_or_default()
    }

    /// Decodes what a proxy needs from every message, checking each: the
    /// Request-URI (requests), the top Via, From, To, Call-ID, CSeq and
    /// Max-Forwards. The first malformed field gives its precise error.
    #[inline]
    pub fn essentials(&self) -> Result<Essentials<'buf>, ParseError> {
        let uri = match self.start {
            StartLine::Request { .. } => Some(self.request_uri()?),
            StartLine::Response { .. } => None,
        };
        Ok(Essentials {
            uri,
            top_via: self.top_via()?,
            from: self.from()?,
            to: self.to()?,
            call_id: self.call_id(),
            cseq: self.cseq,
            max_forwards: self.max_forwards()?,
        })
    }
}

/// Iterator over every comma-separated value of one header name.
#[derive(Debug, Clone)]
pub struct Values<'buf> {
    buf: &'buf [u8],
    lines: Named<'buf>,
    current: scan::CommaValues<'buf>,
}

impl<'buf> Iterator for Values<'buf> {
    type Item = &'buf [u8];

    fn next(&mut self) -> Option<&'buf [u8]> {
        loop {
            if let Some(v) = self.current.next() {
                return Some(v);
            }
            let e = self.lines.next()?;
            self.current = scan::CommaValues::new(e.value.of(self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Method::ALL` lists every method once, in `index` order, and the
    /// tables sized `COUNT` (per-method counters) hold each of them.
    #[test]
    fn method_indexes_are_dense() {
        for (i, m) in Method::ALL.iter().enumerate() {
            assert_eq!(m.index(), i, "{m:?}");
            assert_eq!(Method::from_bytes(m.as_str().as_bytes()), *m);
        }
        assert_eq!(Method::Other.index(), Method::COUNT - 1);
    }

    const INVITE: &[u8] = b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@pc33.atlanta.example.com>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\
\r\n\
v=0\n";

    fn parse_ok(m: &[u8]) -> (HeaderIndex, usize) {
        let mut idx = HeaderIndex::default();
        let n = match parse(m, &mut idx) {
            Ok(msg) => msg.headers().len(),
            Err(e) => panic!("{e:?}"),
        };
        (idx, n)
    }

    fn err(m: &[u8]) -> ParseError {
        let mut idx = HeaderIndex::default();
        match parse(m, &mut idx) {
            Ok(_) => panic!("parsed: {}", String::from_utf8_lossy(m)),
            Err(e) => e,
        }
    }

    #[test]
    fn parses_a_request() {
        let mut idx = HeaderIndex::default();
        let m = parse(INVITE, &mut idx).unwrap();
        assert!(m.is_request());
        assert_eq!(m.method(), Method::Invite);
        assert_eq!(m.request_uri_bytes(), b"sip:bob@biloxi.example.com");
        assert_eq!(m.headers().len(), 9);
        assert_eq!(m.call_id(), b"a84b4c76e66710@pc33.atlanta.example.com");
        assert_eq!(m.cseq().number, 314159);
        assert_eq!(m.body(), b"v=0\n");
        assert_eq!(m.max_forwards(), Ok(Some(70)));
        let e = m.essentials().unwrap();
        assert_eq!(e.top_via.branch(), Some(&b"z9hG4bK776asdhds"[..]));
        assert_eq!(e.from.tag(), Some(&b"1928301774"[..]));
        assert_eq!(e.to.tag(), None);
        assert_eq!(m.len(), INVITE.len());
        let (_, n) = parse_ok(INVITE);
        assert_eq!(n, 9);
    }

    #[test]
    fn datagram_body_rules() {
        // Extra bytes after Content-Length are ignored (§18.3).
        let mut long = INVITE.to_vec();
        long.extend_from_slice(b"garbage");
        let mut idx = HeaderIndex::default();
        let m = parse(&long, &mut idx).unwrap();
        assert_eq!(m.body(), b"v=0\n");
        // A short body is an error.
        let short = &INVITE[..INVITE.len() - 2];
        assert_eq!(err(short), ParseError::BodyTruncated);
    }

    #[test]
    fn stream_framing_is_partial_until_complete() {
        let mut two = INVITE.to_vec();
        two.extend_from_slice(INVITE);
        for cut in 0..INVITE.len() {
            let mut idx = HeaderIndex::default();
            assert_eq!(
                parse_stream(&INVITE[..cut], &mut idx).map(|s| matches!(s, Status::Partial)),
                Ok(true),
                "cut at {cut}"
            );
        }
        let mut idx = HeaderIndex::default();
        match parse_stream(&two, &mut idx) {
            Ok(Status::Complete(m)) => assert_eq!(m.len(), INVITE.len()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn limits_are_typed_errors() {
        let mut idx = HeaderIndex::new(ParseConfig {
            max_headers: 4,
            ..ParseConfig::default()
        });
        assert_eq!(
            parse(INVITE, &mut idx).err(),
            Some(ParseError::TooManyHeaders)
        );
        let mut idx = HeaderIndex::new(ParseConfig {
            max_uri_len: 10,
            ..ParseConfig::default()
        });
        assert_eq!(
            parse(INVITE, &mut idx).err(),
            Some(ParseError::RequestUriTooLong)
        );
        let mut idx = HeaderIndex::new(ParseConfig {
            max_message_size: 100,
            ..ParseConfig::default()
        });
        assert_eq!(
            parse(INVITE, &mut idx).err(),
            Some(ParseError::MessageTooLarge)
        );
    }

    #[test]
    fn malformed_inputs() {
        let cases: &[(&[u8], ParseError)] = &[
            (b"INVITE sip:a@b SIP/3.0\r\n\r\n", ParseError::Version),
            (b"INVITE sip:a@b\r\n\r\n", ParseError::RequestLine),
            (
                b"INVITE sip:a@b SIP/2.0\nVia: x\n\n",
                ParseError::LineEnding,
            ),
            (
                b"INVITE sip:a@b SIP/2.0\r\nVia SIP/2.0/UDP x\r\n\r\n",
                ParseError::HeaderName,
            ),
            (b"SIP/2.0 99 Bad\r\n\r\n", ParseError::StatusLine),
            (b"SIP/2.0 2000 Bad\r\n\r\n", ParseError::StatusLine),
            (
                b"INVITE sip:a@b SIP/2.0\r\nTo: a\r\n\r\n",
                ParseError::MissingHeader,
            ),
            (b"", ParseError::Incomplete),
            (b"\r\n\r\n", ParseError::Incomplete),
            (b"INVITE sip:a@b SIP/2.0\r\nVia: x", ParseError::Incomplete),
            // fuzz crash-1d202fdf: an empty Via line before the real one.
            (
                b"OPTIONS sip:a@b SIP/2.0\r\nv:\r\nVia: SIP/2.0/UDP h\r\nTo: <sip:a@b>\r\nFrom: <sip:c@d>;tag=1\r\ni: x\r\nCSeq: 1 OPTIONS\r\n\r\n",
                ParseError::Via,
            ),
            (
                b"OPTIONS sip:a@b SIP/2.0\r\nVia: , ,\r\nTo: <sip:a@b>\r\nFrom: <sip:c@d>;tag=1\r\ni: x\r\nCSeq: 1 OPTIONS\r\n\r\n",
                ParseError::Via,
            ),
        ];
        for (m, want) in cases {
            assert_eq!(err(m), *want, "{}", String::from_utf8_lossy(m));
        }
    }

    #[test]
    fn cseq_must_match_method() {
        let m = String::from_utf8_lossy(INVITE).replace("314159 INVITE", "314159 ACK");
        assert_eq!(err(m.as_bytes()), ParseError::CSeqMethodMismatch);
        let m = String::from_utf8_lossy(INVITE).replace("314159 INVITE", "2147483648 INVITE");
        assert_eq!(err(m.as_bytes()), ParseError::CSeq);
    }

    #[test]
    fn semantic_errors_have_their_own_status() {
        let dup = String::from_utf8_lossy(INVITE).replace(
            "Max-Forwards: 70\r\n",
            "Max-Forwards: 70\r\nMax-Forwards: 69\r\n",
        );
        assert_eq!(err(dup.as_bytes()), ParseError::DuplicateHeader);
        let dup = String::from_utf8_lossy(INVITE).replace("Call-ID: a84b", "i: x\r\nCall-ID: a84b");
        assert_eq!(err(dup.as_bytes()), ParseError::DuplicateHeader);
        let ext = String::from_utf8_lossy(INVITE).replacen("INVITE sip:", "NEWMETHOD sip:", 1);
        assert_eq!(err(ext.as_bytes()), ParseError::ExtensionMethodMismatch);
        assert_eq!(ParseError::ExtensionMethodMismatch.status(), 501);
        let pr = String::from_utf8_lossy(INVITE).replace(
            "Max-Forwards: 70\r\n",
            "Max-Forwards: 70\r\nProxy-Require: foo, Sec-Agree\r\n",
        );
        let mut idx = HeaderIndex::default();
        let m = parse(pr.as_bytes(), &mut idx).unwrap();
        assert_eq!(
            m.check_proxy_require(&[b"foo"]),
            Err(ParseError::BadExtension)
        );
        assert_eq!(
            m.unsupported_proxy_require(&[b"foo"]),
            Some(&b"Sec-Agree"[..])
        );
        assert_eq!(m.check_proxy_require(&[b"FOO", b"sec-agree"]), Ok(()));
    }

    #[test]
    fn nul_only_inside_a_quoted_pair() {
        let ok = String::from_utf8_lossy(INVITE).replace("To: Bob", "To: \"B\\\0b\"");
        let (_, n) = parse_ok(ok.as_bytes());
        assert_eq!(n, 9);
        let bad = String::from_utf8_lossy(INVITE).replace("To: Bob", "To: B\0b");
        assert_eq!(err(bad.as_bytes()), ParseError::HeaderValue);
        let bad = String::from_utf8_lossy(INVITE).replace("To: Bob", "To: \0Bob");
        assert_eq!(err(bad.as_bytes()), ParseError::HeaderValue);
    }

    #[test]
    fn request_uri_may_not_carry_headers() {
        let m = String::from_utf8_lossy(INVITE).replacen(
            "biloxi.example.com SIP/2.0",
            "biloxi.example.com?Route=%3Csip:x%3E SIP/2.0",
            1,
        );
        let mut idx = HeaderIndex::default();
        let msg = parse(m.as_bytes(), &mut idx).unwrap();
        assert_eq!(msg.essentials().err(), Some(ParseError::RequestUri));
    }

    #[test]
    fn content_lengths_must_agree() {
        let m = String::from_utf8_lossy(INVITE)
            .replace("Content-Length: 4\r\n", "Content-Length: 4\r\nl: 5\r\n");
        assert_eq!(err(m.as_bytes()), ParseError::ContentLength);
        let m = String::from_utf8_lossy(INVITE).replace("Content-Length: 4", "Content-Length: 4x");
        assert_eq!(err(m.as_bytes()), ParseError::ContentLength);
    }

    #[test]
    fn folding_and_list_values() {
        let m = b"SIP/2.0 200 OK\r\n\
v: SIP/2.0/UDP a;branch=z9hG4bK1,\r\n SIP/2.0/UDP b;branch=z9hG4bK2\r\n\
Via: SIP/2.0/UDP c\r\n\
t: <sip:b@x>;tag=2\r\nf: <sip:a@x>;tag=1\r\ni: c1\r\nCSeq: 1 INVITE\r\n\r\n";
        let mut idx = HeaderIndex::default();
        let msg = parse(m, &mut idx).unwrap();
        assert_eq!(msg.status(), Some(200));
        assert_eq!(msg.method(), Method::Invite);
        let vias: Vec<&[u8]> = msg.values(HeaderName::Via).collect();
        assert_eq!(vias.len(), 3);
        assert_eq!(vias[2], b"SIP/2.0/UDP c");
        assert_eq!(msg.top_via().unwrap().branch(), Some(&b"z9hG4bK1"[..]));
    }

    #[test]
    fn leading_crlfs_are_skipped() {
        let mut m = b"\r\n\r\n".to_vec();
        m.extend_from_slice(INVITE);
        let (_, n) = parse_ok(&m);
        assert_eq!(n, 9);
    }
}
