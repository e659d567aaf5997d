//! The message editor: the edits a proxy makes to forward a request or a
//! response (RFC 3261 §16.6, §16.7, §18.2.1; RFC 3581), and responses built
//! from a request (§8.2.6), written into a caller-owned buffer.
//!
//! Edits splice: every byte the edit does not touch is copied from the
//! original message as a slice, in order, so the headers a proxy does not
//! own reach the next hop exactly as they left the previous one.
//!
//! ```text
//!  original:  start │ Via₁ … │ Max-Forwards: 70 │ Route: r₁, r₂ │ … │ CRLF │ body
//!  forwarded: start'│ Via(ours) │ Record-Route(ours) │ Via₁;received;rport … │ Max-Forwards: 69 │ Route: r₂ │ … │ CRLF │ body
//! ```
//!
//! Contract: no allocation; output that does not fit is
//! [`EmitError::BufferFull`], never a partial write reported as success.

use core::net::IpAddr;

use super::header::Via;
use super::message::{HeaderEntry, Message, Span};
use super::scan;
use super::HeaderName;

/// Why an edit could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    /// The output buffer is too small for the message.
    #[error("output buffer too small")]
    BufferFull,
    /// The edit needs a header the message does not have (a Via to remove, …).
    #[error("message lacks the header the edit needs")]
    MissingHeader,
    /// The header the edit works on is malformed.
    #[error("header to edit is malformed")]
    Malformed,
}

/// A cursor that writes into a caller-owned byte buffer.
#[derive(Debug)]
pub struct Writer<'o> {
    out: &'o mut [u8],
    // INVARIANT: len <= out.len().
    len: usize,
}

impl<'o> Writer<'o> {
    /// Writes from the start of `out`.
    pub fn new(out: &'o mut [u8]) -> Self {
        Self { out, len: 0 }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// What has been written.
    pub fn written(&self) -> &[u8] {
        self.out.get(..self.len).unwrap_or_default()
    }

    /// Appends bytes.
    #[inline]
    pub fn put(&mut self, b: &[u8]) -> Result<(), EmitError> {
        let end = self.len.checked_add(b.len()).ok_or(EmitError::BufferFull)?;
        let dst = self
            .out
            .get_mut(self.len..end)
            .ok_or(EmitError::BufferFull)?;
        dst.copy_from_slice(b);
        self.len = end;
        Ok(())
    }

    /// Appends a string.
    #[inline]
    pub fn put_str(&mut self, s: &str) -> Result<(), EmitError> {
        self.put(s.as_bytes())
    }

    /// Appends a decimal number.
    pub fn put_u64(&mut self, v: u64) -> Result<(), EmitError> {
        let mut tmp = [0u8; 20];
        let mut i = tmp.len();
        let mut v = v;
        loop {
            i -= 1;
            if let Some(d) = tmp.get_mut(i) {
                *d = b'0' + (v % 10) as u8;
            }
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.put(tmp.get(i..).unwrap_or_default())
    }

    /// Appends an address as it goes in a Via or URI host (`[…]` for IPv6).
    pub fn put_ip(&mut self, ip: IpAddr) -> Result<(), EmitError> {
        let mut tmp = [0u8; 48];
        let n = format_ip(ip, &mut tmp);
        self.put(tmp.get(..n).unwrap_or_default())
    }

    /// Appends the bytes of `span` of `src`.
    #[inline]
    fn put_span(&mut self, src: &[u8], span: Span) -> Result<(), EmitError> {
        self.put(span.of(src))
    }
}

/// Formats `ip` (bracketed if IPv6) into `out`, returning the length.
///
/// IPv4 by hand: it goes into every `received=` and Via, and `core::fmt`
/// cost ~0.3 µs a message there.
pub fn format_ip(ip: IpAddr, out: &mut [u8; 48]) -> usize {
    match ip {
        IpAddr::V4(a) => {
            let mut n = 0;
            for (i, o) in a.octets().into_iter().enumerate() {
                if i > 0 {
                    if let Some(b) = out.get_mut(n) {
                        *b = b'.';
                    }
                    n += 1;
                }
                let digits = [o / 100, o / 10 % 10, o % 10];
                let skip = if o >= 100 {
                    0
                } else if o >= 10 {
                    1
                } else {
                    2
                };
                for d in digits.iter().skip(skip) {
                    if let Some(b) = out.get_mut(n) {
                        *b = b'0' + d;
                    }
                    n += 1;
                }
            }
            n
        }
        IpAddr::V6(a) => {
            use std::io::Write as _;
            let mut cur = std::io::Cursor::new(out.as_mut_slice());
            // An IPv6 reference is at most 47 bytes: the write cannot fail.
            let r = write!(cur, "[{a}]");
            debug_assert!(r.is_ok());
            cur.position() as usize
        }
    }
}

/// The Via a proxy adds on top when it forwards a request (§16.6 step 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewVia<'a> {
    /// Transport token: `UDP`, `TCP`, `TLS`, `WS`, `WSS`.
    pub transport: &'a str,
    /// Our address as it goes in sent-by (already bracketed for IPv6).
    pub host: &'a [u8],
    /// Our port.
    pub port: u16,
    /// The branch, magic cookie included.
    pub branch: &'a [u8],
    /// Ask the next hop for `rport` (RFC 3581).
    pub rport: bool,
}

/// Where a request really came from, to stamp on its top Via (§18.2.1, RFC 3581).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// The source address of the packet.
    pub ip: IpAddr,
    /// The source port of the packet.
    pub port: u16,
}

/// How to treat Max-Forwards when forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MaxForwardsEdit {
    /// Decrement it, or add `Max-Forwards: 70` when absent (§16.6 step 3).
    #[default]
    Decrement,
    /// Leave it as is (responses).
    Keep,
}

/// The edits of one forward; the default changes nothing but Max-Forwards.
#[derive(Debug, Clone, Copy, Default)]
pub struct Edits<'a> {
    /// New Request-URI (§16.6 step 2; strict-route fix-up §16.4).
    pub request_uri: Option<&'a [u8]>,
    /// A Via to add on top (requests).
    pub push_via: Option<NewVia<'a>>,
    /// Remove the top Via value (responses, §16.7 step 3).
    pub pop_via: bool,
    /// Stamp `received`/`rport` on the original top Via (requests).
    pub received: Option<Received>,
    /// Max-Forwards handling.
    pub max_forwards: MaxForwardsEdit,
    /// A Record-Route URI to add on top (§16.6 step 4), e.g. `sip:192.0.2.1:5060;lr`.
    pub record_route: Option<&'a [u8]>,
    /// A second Record-Route URI, below the first (RFC 5658 double
    /// Record-Route: the first faces the next hop, this one the previous).
    pub record_route2: Option<&'a [u8]>,
    /// Remove the first Route value (§16.4, §16.12).
    pub pop_route: bool,
    /// Also remove the Route value after the first (a strict next hop that
    /// follows our own Route, §16.6 step 6).
    pub pop_second_route: bool,
    /// Remove the last Route value (strict-route fix-up, §16.4).
    pub pop_last_route: bool,
    /// Extra header lines, each ending in CRLF, added after the others.
    pub append: &'a [u8],
}

/// True when `received=` must be added to a Via sent by `via` from `src`
/// (§18.2.1: sent-by differs from the source address) or the client asked
/// for rport (RFC 3581 §4: then received is always added).
pub fn needs_received(via: &Via<'_>, src: IpAddr) -> bool {
    via.rport().is_some() || via.host.ip() != Some(src)
}

/// Writes `msg` with `edits` applied into `out`; returns the length written.
pub fn edit(msg: &Message<'_>, edits: &Edits<'_>, out: &mut [u8]) -> Result<usize, EmitError> {
    let mut w = Writer::new(out);
    let buf = msg.buf();

    // Start line.
    match (edits.request_uri, msg.start_line()) {
        (Some(uri), super::StartLine::Request { method_bytes, .. }) => {
            w.put(method_bytes)?;
            w.put(b" ")?;
            w.put(uri)?;
            w.put(b" SIP/2.0\r\n")?;
        }
        _ => w.put_span(buf, msg.start_line_span())?,
    }

    // Our own headers go first: they must precede the headers of the same name.
    if let Some(v) = &edits.push_via {
        put_via(&mut w, v)?;
    }
    if let Some(rr) = edits.record_route {
        w.put(b"Record-Route: <")?;
        w.put(rr)?;
        w.put(b">\r\n")?;
    }
    if let Some(rr) = edits.record_route2 {
        w.put(b"Record-Route: <")?;
        w.put(rr)?;
        w.put(b">\r\n")?;
    }
    let idx = msg.index();
    let first_via = idx.named(HeaderName::Via).next().map(|e| e.line);
    let last_route = idx
        .named(HeaderName::Route)
        .filter(|e| scan::CommaValues::new(e.value.of(buf)).next().is_some())
        .last()
        .map(|e| e.line);
    let first_mf = idx.named(HeaderName::MaxForwards).next().map(|e| e.line);
    if edits.max_forwards == MaxForwardsEdit::Decrement && first_mf.is_none() && msg.is_request() {
        w.put(b"Max-Forwards: 70\r\n")?;
    }
    if edits.pop_via && first_via.is_none() {
        return Err(EmitError::MissingHeader);
    }
    // Leading Route values still to remove (they may span several lines).
    let mut front = usize::from(edits.pop_route) + usize::from(edits.pop_second_route);

    for e in msg.headers() {
        let line = Some(e.line);
        if line == first_via && (edits.pop_via || edits.received.is_some()) {
            if edits.pop_via {
                put_without_first_value(&mut w, buf, e)?;
            } else if let Some(r) = &edits.received {
                put_via_received(&mut w, buf, e, r)?;
            }
        } else if e.name == HeaderName::Route
            && (front > 0 || (line == last_route && edits.pop_last_route))
            && scan::CommaValues::new(e.value.of(buf)).next().is_some()
        {
            // (An empty `Route:` line is copied as is, below.)
            let count = scan::CommaValues::new(e.value.of(buf)).count();
            let skip_front = front.min(count);
            front -= skip_front;
            let skip_last =
                usize::from(line == last_route && edits.pop_last_route && count > skip_front);
            put_values_range(&mut w, buf, e, skip_front, count - skip_last)?;
        } else if line == first_mf
            && edits.max_forwards == MaxForwardsEdit::Decrement
            && msg.is_request()
        {
            let v = super::header::parse_max_forwards(e.value.of(buf))
                .map_err(|_| EmitError::Malformed)?;
            w.put(
                buf.get(e.line.start as usize..e.value.start as usize)
                    .unwrap_or_default(),
            )?;
            w.put_u64(u64::from(v.saturating_sub(1)))?;
            w.put(b"\r\n")?;
        } else {
            w.put_span(buf, e.line)?;
        }
    }
    w.put(edits.append)?;
    w.put_span(buf, msg.blank_line_span())?;
    w.put(msg.body())?;
    Ok(w.len())
}

/// Writes `Via: SIP/2.0/T host:port;branch=…[;rport]\r\n`.
pub fn put_via(w: &mut Writer<'_>, v: &NewVia<'_>) -> Result<(), EmitError> {
    w.put(b"Via: SIP/2.0/")?;
    w.put_str(v.transport)?;
    w.put(b" ")?;
    w.put(v.host)?;
    w.put(b":")?;
    w.put_u64(u64::from(v.port))?;
    w.put(b";branch=")?;
    w.put(v.branch)?;
    if v.rport {
        w.put(b";rport")?;
    }
    w.put(b"\r\n")
}

/// Offset of `part` inside `whole` (both slices of the same buffer).
fn offset_in(whole: &[u8], part: &[u8]) -> usize {
    (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize)
}

/// Writes a list header line without its first value; drops the line when
/// that was its only value.
fn put_without_first_value(
    w: &mut Writer<'_>,
    buf: &[u8],
    e: &HeaderEntry,
) -> Result<(), EmitError> {
    let value = e.value.of(buf);
    let mut vals = scan::CommaValues::new(value);
    let first = vals.next().ok_or(EmitError::Malformed)?;
    let Some(second) = vals.next() else {
        return Ok(());
    };
    let from = offset_in(value, second);
    w.put(
        buf.get(e.line.start as usize..e.value.start as usize)
            .unwrap_or_default(),
    )?;
    w.put(value.get(from..).unwrap_or_default())?;
    let _ = first;
    w.put(b"\r\n")
}

/// Writes a list header line keeping only its values `keep_from..keep_to`;
/// drops the line when nothing is left.
fn put_values_range(
    w: &mut Writer<'_>,
    buf: &[u8],
    e: &HeaderEntry,
    keep_from: usize,
    keep_to: usize,
) -> Result<(), EmitError> {
    let value = e.value.of(buf);
    if keep_from >= keep_to {
        return Ok(());
    }
    w.put(
        buf.get(e.line.start as usize..e.value.start as usize)
            .unwrap_or_default(),
    )?;
    for (i, v) in scan::CommaValues::new(value)
        .enumerate()
        .skip(keep_from)
        .take(keep_to - keep_from)
    {
        if i > keep_from {
            w.put(b", ")?;
        }
        w.put(v)?;
    }
    w.put(b"\r\n")
}

/// Writes the top Via line with `received` and `rport` stamped on its first value.
fn put_via_received(
    w: &mut Writer<'_>,
    buf: &[u8],
    e: &HeaderEntry,
    r: &Received,
) -> Result<(), EmitError> {
    let value = e.value.of(buf);
    let first = scan::CommaValues::new(value)
        .next()
        .ok_or(EmitError::Malformed)?;
    let via = Via::parse(first).map_err(|_| EmitError::Malformed)?;
    let ask_rport = via.rport().is_some();
    if !ask_rport && via.host.ip() == Some(r.ip) {
        return w.put_span(buf, e.line);
    }
    let first_start = offset_in(value, first);
    let params_raw = via.params.as_bytes();
    let head_end = if params_raw.is_empty() {
        first_start + first.len()
    } else {
        offset_in(value, params_raw)
    };
    // name, colon and everything before the params of the first value
    w.put(
        buf.get(e.line.start as usize..e.value.start as usize)
            .unwrap_or_default(),
    )?;
    w.put(scan::trim_end(value.get(..head_end).unwrap_or_default()))?;
    for (name, val) in via.params.iter().filter_map(Result::ok) {
        if name.eq_ignore_ascii_case(b"received") || name.eq_ignore_ascii_case(b"rport") {
            continue;
        }
        w.put(b";")?;
        w.put(name)?;
        if let Some(v) = val {
            w.put(b"=")?;
            w.put(v)?;
        }
    }
    w.put(b";received=")?;
    let mut tmp = [0u8; 48];
    let n = format_ip(r.ip, &mut tmp);
    w.put(tmp.get(..n).unwrap_or_default())?;
    if ask_rport {
        w.put(b";rport=")?;
        w.put_u64(u64::from(r.port))?;
    }
    w.put(value.get(first_start + first.len()..).unwrap_or_default())?;
    w.put(b"\r\n")
}

/// A response to build from a request (§8.2.6).
#[derive(Debug, Clone, Copy)]
pub struct ResponseSpec<'a> {
    /// Status code.
    pub code: u16,
    /// Reason phrase.
    pub reason: &'a str,
    /// To tag to add when the To has none (§8.2.6.2); not added to a 100.
    pub to_tag: Option<&'a [u8]>,
    /// Whether the request's To has a tag, when the caller has decoded it
    /// already (`None`: the To is decoded here, when a tag is to be added).
    pub to_tagged: Option<bool>,
    /// Where the request came from: stamped on the top Via as in [`Edits::received`].
    pub received: Option<Received>,
    /// Extra header lines, each ending in CRLF.
    pub extra: &'a [u8],
    /// Content-Type of the body, when there is one.
    pub content_type: Option<&'a str>,
    /// The body.
    pub body: &'a [u8],
}

impl<'a> ResponseSpec<'a> {
    /// A response with this code and reason and nothing else.
    pub fn new(code: u16, reason: &'a str) -> Self {
        Self {
            code,
            reason,
            to_tag: None,
            to_tagged: None,
            received: None,
            extra: b"",
            content_type: None,
            body: b"",
        }
    }
}

/// Builds a response to `req`: status line, the Vias (top one stamped with
/// received/rport), From, To (with a tag), Call-ID, CSeq, Timestamp for a
/// 100 (§8.2.6.1), the extra headers, Content-Length and the body.
pub fn response(
    req: &Message<'_>,
    spec: &ResponseSpec<'_>,
    out: &mut [u8],
) -> Result<usize, EmitError> {
    let mut w = Writer::new(out);
    let buf = req.buf();
    w.put(b"SIP/2.0 ")?;
    w.put_u64(u64::from(spec.code))?;
    w.put(b" ")?;
    w.put_str(spec.reason)?;
    w.put(b"\r\n")?;
    let first_via = req.index().named(HeaderName::Via).next().map(|e| e.line);
    for e in req.headers() {
        match e.name {
            HeaderName::Via => match &spec.received {
                Some(r) if Some(e.line) == first_via => put_via_received(&mut w, buf, e, r)?,
                _ => w.put_span(buf, e.line)?,
            },
            HeaderName::From | HeaderName::CallId | HeaderName::CSeq => w.put_span(buf, e.line)?,
            HeaderName::Timestamp if spec.code == 100 => w.put_span(buf, e.line)?,
            HeaderName::To => {
                let has_tag = || {
                    spec.to_tagged
                        .unwrap_or_else(|| req.to().ok().and_then(|t| t.tag()).is_some())
                };
                match spec.to_tag {
                    Some(tag) if spec.code > 100 && !has_tag() => {
                        w.put(
                            buf.get(e.line.start as usize..e.value.end as usize)
                                .unwrap_or_default(),
                        )?;
                        w.put(b";tag=")?;
                        w.put(tag)?;
                        w.put(b"\r\n")?;
                    }
                    _ => w.put_span(buf, e.line)?,
                }
            }
            _ => {}
        }
    }
    w.put(spec.extra)?;
    if let Some(ct) = spec.content_type {
        w.put(b"Content-Type: ")?;
        w.put_str(ct)?;
        w.put(b"\r\n")?;
    }
    w.put(b"Content-Length: ")?;
    w.put_u64(spec.body.len() as u64)?;
    w.put(b"\r\n\r\n")?;
    w.put(spec.body)?;
    Ok(w.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_addresses_as_core_fmt_does() {
        let mut buf = [0u8; 48];
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.100.255",
            "192.168.1.9",
            "255.255.255.255",
            "8.99.100.101",
        ] {
            let a: IpAddr = ip.parse().unwrap();
            let n = format_ip(a, &mut buf);
            assert_eq!(&buf[..n], ip.as_bytes());
        }
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let n = format_ip(v6, &mut buf);
        assert_eq!(&buf[..n], b"[2001:db8::1]");
    }
    use crate::sip::{parse, HeaderIndex};

    const REQ: &[u8] = b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds;rport, SIP/2.0/UDP p2.example.com;branch=z9hG4bK2\r\n\
Max-Forwards: 70\r\n\
Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710\r\n\
CSeq: 314159 INVITE\r\n\
X-Custom:   kept   verbatim  \r\n\
Content-Length: 4\r\n\
\r\n\
v=0\n";

    fn edited(edits: &Edits<'_>) -> Vec<u8> {
        let mut idx = HeaderIndex::default();
        let msg = parse(REQ, &mut idx).unwrap();
        let mut out = vec![0u8; 4096];
        let n = edit(&msg, edits, &mut out).unwrap();
        out.truncate(n);
        out
    }

    #[test]
    fn forward_edits() {
        let out = edited(&Edits {
            request_uri: Some(b"sip:bob@192.0.2.4:5062"),
            push_via: Some(NewVia {
                transport: "UDP",
                host: b"192.0.2.1",
                port: 5060,
                branch: b"z9hG4bKproxy1",
                rport: true,
            }),
            received: Some(Received {
                ip: "10.1.2.3".parse().unwrap(),
                port: 5099,
            }),
            record_route: Some(b"sip:192.0.2.1:5060;lr"),
            pop_route: true,
            ..Edits::default()
        });
        let text = String::from_utf8(out.clone()).unwrap();
        let mut idx = HeaderIndex::default();
        let m = parse(&out, &mut idx).unwrap();
        assert_eq!(m.request_uri_bytes(), b"sip:bob@192.0.2.4:5062");
        let vias: Vec<&[u8]> = m.values(HeaderName::Via).collect();
        assert_eq!(vias.len(), 3, "{text}");
        assert_eq!(
            vias[0],
            b"SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKproxy1;rport"
        );
        assert_eq!(
            vias[1],
            b"SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds;received=10.1.2.3;rport=5099"
        );
        assert_eq!(m.max_forwards(), Ok(Some(69)));
        let routes: Vec<&[u8]> = m.values(HeaderName::Route).collect();
        assert_eq!(routes, vec![&b"<sip:p2.example.com;lr>"[..]]);
        assert_eq!(
            m.header(HeaderName::RecordRoute),
            Some(&b"<sip:192.0.2.1:5060;lr>"[..])
        );
        assert!(text.contains("X-Custom:   kept   verbatim  \r\n"));
        assert_eq!(m.body(), b"v=0\n");
    }

    #[test]
    fn response_pops_via_and_keeps_the_rest() {
        let resp = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP proxy;branch=z9hG4bKp\r\nVia: SIP/2.0/UDP client;branch=z9hG4bKc\r\nTo: <sip:b@x>;tag=2\r\nFrom: <sip:a@x>;tag=1\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let mut idx = HeaderIndex::default();
        let msg = parse(resp, &mut idx).unwrap();
        let mut out = vec![0u8; 1024];
        let n = edit(
            &msg,
            &Edits {
                pop_via: true,
                max_forwards: MaxForwardsEdit::Keep,
                ..Edits::default()
            },
            &mut out,
        )
        .unwrap();
        let expect = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP client;branch=z9hG4bKc\r\nTo: <sip:b@x>;tag=2\r\nFrom: <sip:a@x>;tag=1\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(&out[..n], &expect[..]);
    }

    #[test]
    fn pop_route_skips_empty_route_lines() {
        // fuzz: an empty `Route:` line before the real one made pop_route fail.
        let req = b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nRoute:\r\nRoute: <sip:p1;lr>, <sip:p2;lr>\r\nTo: <sip:x>\r\nFrom: <sip:y>;tag=1\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n";
        let mut idx = HeaderIndex::default();
        let msg = parse(req, &mut idx).unwrap();
        let mut out = vec![0u8; 1024];
        let edits = Edits {
            pop_route: true,
            ..Edits::default()
        };
        let n = edit(&msg, &edits, &mut out).unwrap();
        let mut idx2 = HeaderIndex::default();
        let m2 = parse(&out[..n], &mut idx2).unwrap();
        let routes: Vec<&[u8]> = m2.values(HeaderName::Route).collect();
        assert_eq!(routes, vec![&b"<sip:p2;lr>"[..]]);
    }

    #[test]
    fn adds_max_forwards_when_absent_and_reports_full_buffers() {
        let req = b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nTo: <sip:x>\r\nFrom: <sip:y>;tag=1\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n";
        let mut idx = HeaderIndex::default();
        let msg = parse(req, &mut idx).unwrap();
        let mut out = vec![0u8; 1024];
        let n = edit(&msg, &Edits::default(), &mut out).unwrap();
        let mut idx2 = HeaderIndex::default();
        let m2 = parse(&out[..n], &mut idx2).unwrap();
        assert_eq!(m2.max_forwards(), Ok(Some(70)));
        let mut small = vec![0u8; 20];
        assert_eq!(
            edit(&msg, &Edits::default(), &mut small),
            Err(EmitError::BufferFull)
        );
    }

    #[test]
    fn builds_responses() {
        let mut idx = HeaderIndex::default();
        let msg = parse(REQ, &mut idx).unwrap();
        let mut out = vec![0u8; 2048];
        let spec = ResponseSpec {
            to_tag: Some(b"abc"),
            received: Some(Received {
                ip: "10.1.2.3".parse().unwrap(),
                port: 5099,
            }),
            ..ResponseSpec::new(486, "Busy Here")
        };
        let n = response(&msg, &spec, &mut out).unwrap();
        let mut idx2 = HeaderIndex::default();
        let r = parse(&out[..n], &mut idx2).unwrap();
        assert_eq!(r.status(), Some(486));
        assert_eq!(r.to().unwrap().tag(), Some(&b"abc"[..]));
        assert_eq!(r.from().unwrap().tag(), Some(&b"1928301774"[..]));
        assert_eq!(r.cseq().number, 314159);
        assert_eq!(r.call_id(), b"a84b4c76e66710");
        assert_eq!(r.top_via().unwrap().rport(), Some(Some(5099)));
        assert_eq!(r.values(HeaderName::Via).count(), 2);
        assert_eq!(r.header(HeaderName::Route), None);
        assert_eq!(r.body(), b"");
    }

    #[test]
    fn a_decoded_to_tag_gives_the_same_response() {
        let tagged = String::from_utf8(REQ.to_vec())
            .unwrap()
            .replacen("To: Bob", "To: \"Bob;tag=no\"", 1)
            .replacen("\r\nFrom:", ";tag=t1\r\nFrom:", 1);
        for req in [REQ, tagged.as_bytes()] {
            let mut idx = HeaderIndex::default();
            let msg = parse(req, &mut idx).unwrap();
            let known = msg.to().unwrap().tag().is_some();
            let run = |to_tagged| {
                let mut out = vec![0u8; 2048];
                let spec = ResponseSpec {
                    to_tag: Some(b"abc"),
                    to_tagged,
                    ..ResponseSpec::new(200, "OK")
                };
                let n = response(&msg, &spec, &mut out).unwrap();
                out.truncate(n);
                out
            };
            let r = run(None);
            assert_eq!(run(Some(known)), r);
            let mut idx2 = HeaderIndex::default();
            let tag = parse(&r, &mut idx2)
                .unwrap()
                .to()
                .unwrap()
                .tag()
                .map(<[u8]>::to_vec);
            assert_eq!(
                tag,
                Some(if known {
                    b"t1".to_vec()
                } else {
                    b"abc".to_vec()
                })
            );
        }
    }
}
