//! Answers to requests that do not parse (RFC 3261 §8.2, §16.3 step 1): a
//! response with the precise status of the [`ParseError`], built from the
//! raw Via, From, To, Call-ID and CSeq lines when the message has them all,
//! and sent back to the packet's source. Without them no response can be
//! matched by the client, so the caller drops the datagram and counts it.
//!
//! Never answers a response, an ACK, or a datagram whose start line is not
//! a request line.

use crate::sip::emit::Writer;
use crate::sip::{scan, EmitError, HeaderName, ParseError};

/// Writes the error response to the malformed request in `data` into `out`;
/// `Ok(None)` when no response may or can be built.
pub fn error_response(
    data: &[u8],
    err: ParseError,
    out: &mut [u8],
) -> Result<Option<usize>, EmitError> {
    let data = data
        .get(
            data.iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count()..,
        )
        .unwrap_or_default();
    let Some(first_end) = scan::find(b'\n', data) else {
        return Ok(None);
    };
    let start = data.get(..first_end).unwrap_or_default();
    let method_len = start.iter().take_while(|&&b| scan::is_token(b)).count();
    let method = start.get(..method_len).unwrap_or_default();
    if method.is_empty()
        || start.get(method_len) != Some(&b' ')
        || method.eq_ignore_ascii_case(b"SIP/2.0")
        || start
            .get(..4)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"SIP/"))
        || method == b"ACK"
    {
        return Ok(None);
    }
    // Header lines up to the blank line; continuation lines belong to the line above.
    let mut lines: [Option<(usize, usize)>; 4] = [None; 4]; // From, To, Call-ID, CSeq
    let mut vias: [(usize, usize); 16] = [(0, 0); 16];
    let mut n_vias = 0usize;
    let mut pos = first_end + 1;
    let mut current: Option<(HeaderName, usize)> = None;
    let close = |cur: Option<(HeaderName, usize)>,
                 end: usize,
                 lines: &mut [Option<(usize, usize)>; 4],
                 vias: &mut [(usize, usize); 16],
                 n: &mut usize| {
        let Some((name, start)) = cur else { return };
        let slot = match name {
            HeaderName::From => 0,
            HeaderName::To => 1,
            HeaderName::CallId => 2,
            HeaderName::CSeq => 3,
            HeaderName::Via => {
                if let Some(v) = vias.get_mut(*n) {
                    *v = (start, end);
                    *n += 1;
                }
                return;
            }
            _ => return,
        };
        if let Some(l) = lines.get_mut(slot) {
            l.get_or_insert((start, end));
        }
    };
    loop {
        let rest = data.get(pos..).unwrap_or_default();
        let Some(nl) = scan::find(b'\n', rest) else {
            break;
        };
        let line = rest.get(..nl).unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if matches!(line.first(), Some(b' ' | b'\t')) {
            pos += nl + 1;
            continue;
        }
        close(current.take(), pos, &mut lines, &mut vias, &mut n_vias);
        if let Some(colon) = scan::find(b':', line) {
            let name = scan::trim(line.get(..colon).unwrap_or_default());
            current = Some((HeaderName::from_bytes(name), pos));
        }
        pos += nl + 1;
    }
    close(current.take(), pos, &mut lines, &mut vias, &mut n_vias);
    let [Some(from), Some(to), Some(call_id), Some(cseq)] = lines else {
        return Ok(None);
    };
    if n_vias == 0 {
        return Ok(None);
    }
    let mut w = Writer::new(out);
    w.put(b"SIP/2.0 ")?;
    w.put_u64(u64::from(err.status()))?;
    w.put(b" ")?;
    w.put_str(err.reason())?;
    w.put(b"\r\n")?;
    for &(s, e) in vias.get(..n_vias).unwrap_or_default() {
        put_line(&mut w, data, s, e)?;
    }
    for (s, e) in [from, to, call_id, cseq] {
        put_line(&mut w, data, s, e)?;
    }
    w.put(b"Content-Length: 0\r\n\r\n")?;
    Ok(Some(w.len()))
}

/// Copies a raw header line, normalising its line end to CRLF.
fn put_line(w: &mut Writer<'_>, data: &[u8], start: usize, end: usize) -> Result<(), EmitError> {
    let line = data.get(start..end).unwrap_or_default();
    let line = scan::trim_end(line);
    w.put(line)?;
    w.put(b"\r\n")
}

/// The status code of a status line we wrote (`SIP/2.0 400 …`), 0 if none.
pub fn status_of(response: &[u8]) -> u16 {
    match response.get(8..11) {
        Some([a, b, c]) if a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit() => {
            u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::{parse, HeaderIndex};

    #[test]
    fn status_of_reads_our_status_lines() {
        assert_eq!(status_of(b"SIP/2.0 413 Request Entity Too Large\r\n"), 413);
        assert_eq!(status_of(b"SIP/2.0 4x3 X"), 0);
        assert_eq!(status_of(b"SIP/2.0"), 0);
    }

    fn answer(data: &[u8], err: ParseError) -> Option<Vec<u8>> {
        let mut out = vec![0u8; 4096];
        error_response(data, err, &mut out)
            .unwrap()
            .map(|n| out[..n].to_vec())
    }

    #[test]
    fn answers_a_malformed_request_with_its_transaction_headers() {
        let bad = b"INVITE sip:bob@b SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\nTo: <sip:b@b>\r\nFrom: <sip:a@a>;tag=1\r\nCall-ID: c1\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n";
        let r = answer(bad, ParseError::CSeqMethodMismatch).unwrap();
        let mut idx = HeaderIndex::default();
        let m = parse(&r, &mut idx).unwrap();
        assert_eq!(m.status(), Some(400));
        assert_eq!(m.top_via().unwrap().branch(), Some(&b"z9hG4bK1"[..]));
        assert!(String::from_utf8_lossy(&r)
            .starts_with("SIP/2.0 400 Bad Request (CSeq Method Does Not Match)\r\n"));
    }

    #[test]
    fn stays_silent_when_it_must() {
        let ack = b"ACK sip:bob@b SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\nTo: <sip:b@b>\r\nFrom: <sip:a@a>;tag=1\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n\r\n";
        assert!(answer(ack, ParseError::CSeqMethodMismatch).is_none());
        let resp = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n\r\n";
        assert!(answer(resp, ParseError::MissingHeader).is_none());
        let no_callid = b"INVITE sip:bob@b SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\nTo: <sip:b@b>\r\nFrom: <sip:a@a>;tag=1\r\nCSeq: 1 INVITE\r\n\r\n";
        assert!(answer(no_callid, ParseError::MissingHeader).is_none());
        assert!(answer(b"\x00\x01garbage", ParseError::RequestLine).is_none());
        assert!(answer(b"", ParseError::Incomplete).is_none());
    }
}
