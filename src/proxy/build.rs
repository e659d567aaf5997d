//! Requests a stateful proxy builds itself from one it forwarded: the ACK
//! of a non-2xx final response (RFC 3261 §17.1.1.3) and the CANCEL of a
//! pending branch (§9.1). Both copy the Request-URI, the top Via (ours),
//! the Route set, Call-ID, From and the CSeq number of the forwarded request.

use crate::sip::emit::Writer;
use crate::sip::{EmitError, HeaderName, Message, Method};

/// Writes an ACK (with `to` taken from the final response, tag included) or
/// a CANCEL (with the request's To) for the forwarded request `req`.
pub fn ack_or_cancel(
    req: &Message<'_>,
    method: Method,
    to: Option<&[u8]>,
    out: &mut [u8],
) -> Result<usize, EmitError> {
    let buf = req.buf();
    let mut w = Writer::new(out);
    w.put_str(method.as_str())?;
    w.put(b" ")?;
    w.put(req.request_uri_bytes())?;
    w.put(b" SIP/2.0\r\n")?;
    let top = req
        .values(HeaderName::Via)
        .next()
        .ok_or(EmitError::MissingHeader)?;
    w.put(b"Via: ")?;
    w.put(top)?;
    w.put(b"\r\n")?;
    for e in req.headers() {
        match e.name {
            HeaderName::Route | HeaderName::From | HeaderName::CallId => w.put(e.line.of(buf))?,
            HeaderName::To => match to {
                Some(v) => {
                    w.put(b"To: ")?;
                    w.put(v)?;
                    w.put(b"\r\n")?;
                }
                None => w.put(e.line.of(buf))?,
            },
            _ => {}
        }
    }
    w.put(b"CSeq: ")?;
    w.put_u64(u64::from(req.cseq().number))?;
    w.put(b" ")?;
    w.put_str(method.as_str())?;
    w.put(b"\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")?;
    Ok(w.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::{parse, HeaderIndex};

    const FWD: &[u8] = b"INVITE sip:bob@192.0.2.4 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKse00tabc\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKc\r\nRoute: <sip:192.0.2.9;lr>\r\nMax-Forwards: 69\r\nTo: <sip:bob@b>\r\nFrom: <sip:a@a>;tag=f\r\nCall-ID: c9\r\nCSeq: 12 INVITE\r\nContact: <sip:a@10.0.0.1>\r\nContent-Length: 3\r\n\r\nabc";

    #[test]
    fn ack_and_cancel_follow_the_rfc() {
        let mut idx = HeaderIndex::default();
        let req = parse(FWD, &mut idx).unwrap();
        let mut out = vec![0u8; 2048];
        let n = ack_or_cancel(&req, Method::Ack, Some(b"<sip:bob@b>;tag=t9"), &mut out).unwrap();
        let mut idx2 = HeaderIndex::default();
        let ack = parse(&out[..n], &mut idx2).unwrap();
        assert_eq!(ack.method(), Method::Ack);
        assert_eq!(ack.request_uri_bytes(), b"sip:bob@192.0.2.4");
        assert_eq!(ack.values(HeaderName::Via).count(), 1);
        assert_eq!(
            ack.top_via().unwrap().branch(),
            Some(&b"z9hG4bKse00tabc"[..])
        );
        assert_eq!(ack.to().unwrap().tag(), Some(&b"t9"[..]));
        assert_eq!((ack.cseq().number, ack.cseq().method), (12, Method::Ack));
        assert_eq!(
            ack.header(HeaderName::Route),
            Some(&b"<sip:192.0.2.9;lr>"[..])
        );
        assert_eq!(ack.body(), b"");
        let n = ack_or_cancel(&req, Method::Cancel, None, &mut out).unwrap();
        let mut idx3 = HeaderIndex::default();
        let c = parse(&out[..n], &mut idx3).unwrap();
        assert_eq!((c.method(), c.cseq().number), (Method::Cancel, 12));
        assert_eq!(c.to().unwrap().tag(), None);
        assert_eq!(c.header(HeaderName::Contact), None);
    }
}
