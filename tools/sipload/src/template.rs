//! Pre-built message templates: everything that is the same for every call
//! (addresses, domain, SDP, Content-Length) is laid out once at start-up;
//! building a message copies the literal pieces and writes the few fields
//! that differ (call key, branch digit, CSeq, user, presentity, Request-URI,
//! To tag, Route, Authorization, an extra header line such as SIP-If-Match).
//! A body whose length varies (a PIDF naming its presentity) takes its
//! Content-Length from a `{clen}` marker, filled in once the body is written.
//!
//! A template is written as text with `{field}` markers (see [`Field`]),
//! compiled once by [`Template::compile`]; [`Template::render`] never
//! allocates and never panics: a message that does not fit is `None`.

use anyhow::{bail, Result};

/// A variable part of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `{auth}`: an Authorization / Proxy-Authorization line (with CRLF), or nothing.
    Auth,
    /// `{clen}`: the length of the body (what follows the blank line),
    /// right-aligned in 6 columns (leading spaces are header whitespace).
    Clen,
    /// `{cseq}`: the CSeq number.
    Cseq,
    /// `{extra}`: extra header lines (with CRLF), or nothing.
    Extra,
    /// `{k}`: the transaction digit of the branch.
    K,
    /// `{key}`: the call key (client digit + 16 hex digits).
    Key,
    /// `{pres}`: the presentity name (prefix and index).
    Pres,
    /// `{route}`: Route header lines (with CRLF), or nothing.
    Route,
    /// `{ruri}`: the Request-URI.
    Ruri,
    /// `{totag}`: `;tag=…` for in-dialog requests, or nothing.
    ToTag,
    /// `{user}`: the user name (prefix and index).
    User,
}

impl Field {
    fn from_name(n: &str) -> Option<Self> {
        Some(match n {
            "auth" => Self::Auth,
            "clen" => Self::Clen,
            "cseq" => Self::Cseq,
            "extra" => Self::Extra,
            "k" => Self::K,
            "key" => Self::Key,
            "pres" => Self::Pres,
            "route" => Self::Route,
            "ruri" => Self::Ruri,
            "totag" => Self::ToTag,
            "user" => Self::User,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy)]
enum Piece {
    Lit { start: u32, len: u32 },
    Var(Field),
}

/// The values of a message's fields.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ctx<'a> {
    /// The call key, already written (17 bytes).
    pub key: &'a [u8],
    /// Branch transaction digit.
    pub k: u8,
    /// CSeq number.
    pub cseq: u32,
    /// User index.
    pub user: u32,
    /// Presentity index.
    pub pres: u32,
    /// Request-URI.
    pub ruri: &'a [u8],
    /// To tag value (without `;tag=`), empty for none.
    pub to_tag: &'a [u8],
    /// Route lines.
    pub route: &'a [u8],
    /// Authorization line.
    pub auth: &'a [u8],
    /// Extra header lines.
    pub extra: &'a [u8],
}

/// Columns of a `{clen}` value.
const CLEN_WIDTH: usize = 6;

/// A compiled template.
#[derive(Debug, Clone)]
pub struct Template {
    lit: Vec<u8>,
    pieces: Vec<Piece>,
    user_prefix: Vec<u8>,
    pres_prefix: Vec<u8>,
}

impl Template {
    /// Compiles `text`, whose `{name}` markers are fields. `{{`-style escapes
    /// are not needed: a `{` that does not start a known field is an error.
    pub fn compile(text: &str, user_prefix: &str) -> Result<Self> {
        let mut lit = Vec::with_capacity(text.len());
        let mut pieces = Vec::new();
        let mut rest = text;
        let mut lit_start = 0usize;
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else {
                bail!("unterminated {{ in template");
            };
            let name = &rest[open + 1..open + close];
            let Some(f) = Field::from_name(name) else {
                bail!("unknown template field {{{name}}}");
            };
            lit.extend_from_slice(&rest.as_bytes()[..open]);
            if lit.len() > lit_start {
                pieces.push(Piece::Lit {
                    start: lit_start as u32,
                    len: (lit.len() - lit_start) as u32,
                });
            }
            lit_start = lit.len();
            pieces.push(Piece::Var(f));
            rest = &rest[open + close + 1..];
        }
        lit.extend_from_slice(rest.as_bytes());
        if lit.len() > lit_start {
            pieces.push(Piece::Lit {
                start: lit_start as u32,
                len: (lit.len() - lit_start) as u32,
            });
        }
        Ok(Self {
            lit,
            pieces,
            user_prefix: user_prefix.as_bytes().to_vec(),
            pres_prefix: b"pres".to_vec(),
        })
    }

    /// The same template, naming presentities `prefix`*i* (default `pres`).
    pub fn with_pres_prefix(mut self, prefix: &str) -> Self {
        self.pres_prefix = prefix.as_bytes().to_vec();
        self
    }

    /// Builds the message into `out`; returns its length, `None` if it does not fit.
    #[inline]
    pub fn render(&self, out: &mut [u8], c: &Ctx<'_>) -> Option<usize> {
        let mut w = W { out, n: 0 };
        let mut clen_at = None;
        for p in &self.pieces {
            match *p {
                Piece::Lit { start, len } => {
                    w.put(self.lit.get(start as usize..(start + len) as usize)?)?;
                }
                Piece::Var(f) => match f {
                    Field::Auth => w.put(c.auth)?,
                    Field::Clen => {
                        clen_at = Some(w.n);
                        w.put(&[b' '; CLEN_WIDTH])?;
                    }
                    Field::Cseq => w.dec(u64::from(c.cseq))?,
                    Field::Extra => w.put(c.extra)?,
                    Field::K => w.put(&[b'0' + c.k % 10])?,
                    Field::Key => w.put(c.key)?,
                    Field::Pres => {
                        w.put(&self.pres_prefix)?;
                        w.dec(u64::from(c.pres))?;
                    }
                    Field::Route => w.put(c.route)?,
                    Field::Ruri => w.put(c.ruri)?,
                    Field::ToTag => {
                        if !c.to_tag.is_empty() {
                            w.put(b";tag=")?;
                            w.put(c.to_tag)?;
                        }
                    }
                    Field::User => {
                        w.put(&self.user_prefix)?;
                        w.dec(u64::from(c.user))?;
                    }
                },
            }
        }
        if let Some(at) = clen_at {
            let n = w.n;
            let msg = w.out.get(..n)?;
            let body = msg
                .get(at..)?
                .windows(4)
                .position(|x| x == b"\r\n\r\n")
                .map(|p| n - (at + p + 4))?;
            let mut digits = [0u8; 20];
            let mut dw = W {
                out: &mut digits,
                n: 0,
            };
            dw.dec(body as u64)?;
            let dn = dw.n;
            let d = digits.get(..dn)?;
            let field = w.out.get_mut(at..at + CLEN_WIDTH)?;
            let pad = CLEN_WIDTH.checked_sub(d.len())?;
            field.get_mut(pad..)?.copy_from_slice(d);
        }
        Some(w.n)
    }
}

/// A bounded writer.
pub struct W<'o> {
    /// The buffer.
    pub out: &'o mut [u8],
    /// Bytes written.
    pub n: usize,
}

impl W<'_> {
    /// Appends bytes.
    #[inline]
    pub fn put(&mut self, b: &[u8]) -> Option<()> {
        let end = self.n.checked_add(b.len())?;
        self.out.get_mut(self.n..end)?.copy_from_slice(b);
        self.n = end;
        Some(())
    }

    /// Appends a decimal number.
    #[inline]
    pub fn dec(&mut self, v: u64) -> Option<()> {
        let mut tmp = [0u8; 20];
        let mut i = tmp.len();
        let mut v = v;
        loop {
            i -= 1;
            *tmp.get_mut(i)? = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.put(tmp.get(i..)?)
    }
}

/// Writes `user_prefix` + `index` (a user name) into a small buffer.
pub fn user_name(prefix: &str, index: u32, out: &mut [u8]) -> Option<usize> {
    let mut w = W { out, n: 0 };
    w.put(prefix.as_bytes())?;
    w.dec(u64::from(index))?;
    Some(w.n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_fields() {
        let t = Template::compile(
            "BYE {ruri} SIP/2.0\r\nVia: x;branch=z{key}{k}\r\nFrom: <sip:{user}@d>\r\nTo: <sip:b@d>{totag}\r\n{route}CSeq: {cseq} BYE\r\n{auth}\r\n",
            "user",
        )
        .unwrap();
        let mut out = [0u8; 512];
        let n = t
            .render(
                &mut out,
                &Ctx {
                    key: b"00000000000000001",
                    k: 2,
                    cseq: 42,
                    user: 7,
                    ruri: b"sip:b@1.2.3.4",
                    to_tag: b"abc",
                    route: b"Route: <sip:p;lr>\r\n",
                    auth: b"",
                    ..Ctx::default()
                },
            )
            .unwrap();
        assert_eq!(
            std::str::from_utf8(&out[..n]).unwrap(),
            "BYE sip:b@1.2.3.4 SIP/2.0\r\nVia: x;branch=z000000000000000012\r\nFrom: <sip:user7@d>\r\nTo: <sip:b@d>;tag=abc\r\nRoute: <sip:p;lr>\r\nCSeq: 42 BYE\r\n\r\n"
        );
        let mut small = [0u8; 10];
        assert_eq!(t.render(&mut small, &Ctx::default()), None);
    }

    #[test]
    fn content_length_follows_the_body() {
        let t = Template::compile(
            "PUBLISH sip:{pres}@d SIP/2.0\r\n{extra}Content-Length: {clen}\r\n\r\n<p e=\"sip:{pres}@d\"/>",
            "user",
        )
        .unwrap()
        .with_pres_prefix("p");
        let mut out = [0u8; 512];
        for (pres, want) in [(7u32, 17), (123456, 22)] {
            let n = t
                .render(
                    &mut out,
                    &Ctx {
                        pres,
                        extra: b"SIP-If-Match: x\r\n",
                        ..Ctx::default()
                    },
                )
                .unwrap();
            let text = std::str::from_utf8(&out[..n]).unwrap();
            assert!(
                text.contains(&format!("Content-Length: {want:>6}\r\n")),
                "{text}"
            );
            assert!(text.contains("SIP-If-Match: x\r\n"));
            assert_eq!(text.split("\r\n\r\n").nth(1).unwrap().len(), want);
        }
    }

    #[test]
    fn rejects_unknown_fields() {
        assert!(Template::compile("a {nope} b", "u").is_err());
        assert!(Template::compile("a {key", "u").is_err());
    }
}
