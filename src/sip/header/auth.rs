//! Authorization, Proxy-Authorization, WWW-Authenticate and
//! Proxy-Authenticate values (RFC 3261 §20.7, §20.27, §25.1; RFC 7616):
//! `scheme auth-param *(COMMA auth-param)`, where a value is a token or a
//! quoted string that may itself hold commas.

use crate::sip::error::ValueError;
use crate::sip::scan;

/// The scheme and parameters of one credentials or challenge value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials<'buf> {
    /// The scheme (`Digest`), as written.
    pub scheme: &'buf [u8],
    /// The parameters.
    pub params: AuthParams<'buf>,
}

impl<'buf> Credentials<'buf> {
    /// Decodes `scheme LWS auth-param *(COMMA auth-param)`, checking every parameter.
    pub fn parse(raw: &'buf [u8]) -> Result<Self, ValueError> {
        let s = scan::trim(raw);
        let n = scan::token_len(s);
        if n == 0 {
            return Err(ValueError::Syntax);
        }
        let scheme = s.get(..n).unwrap_or_default();
        let rest = s.get(n..).unwrap_or_default();
        let params = AuthParams {
            raw: scan::trim(rest),
        };
        if !rest.is_empty() && !rest.first().copied().is_some_and(scan::is_lws) {
            return Err(ValueError::Syntax);
        }
        for p in params.iter() {
            p?;
        }
        Ok(Self { scheme, params })
    }

    /// True for the Digest scheme (case-insensitive).
    pub fn is_digest(&self) -> bool {
        self.scheme.eq_ignore_ascii_case(b"Digest")
    }
}

/// A comma-separated list of `name=value` auth parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthParams<'buf> {
    raw: &'buf [u8],
}

impl<'buf> AuthParams<'buf> {
    /// Iterator over (name, value) pairs; quoted values come without their
    /// quotes (escapes, rare in practice, are left as written).
    pub fn iter(&self) -> AuthParamIter<'buf> {
        AuthParamIter { rest: self.raw }
    }

    /// The value of parameter `name` (case-insensitive).
    pub fn get(&self, name: &[u8]) -> Option<&'buf [u8]> {
        self.iter()
            .filter_map(Result::ok)
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

/// Iterator over auth parameters; yields one error and stops on bad syntax.
#[derive(Debug, Clone)]
pub struct AuthParamIter<'buf> {
    rest: &'buf [u8],
}

impl<'buf> Iterator for AuthParamIter<'buf> {
    type Item = Result<(&'buf [u8], &'buf [u8]), ValueError>;

    fn next(&mut self) -> Option<Self::Item> {
        let s = scan::trim_start(self.rest);
        let s = scan::trim_start(s.strip_prefix(b",").unwrap_or(s));
        if s.is_empty() {
            return None;
        }
        let fail = |this: &mut Self| {
            this.rest = b"";
            Some(Err(ValueError::Param))
        };
        let n = scan::token_len(s);
        if n == 0 {
            return fail(self);
        }
        let name = s.get(..n).unwrap_or_default();
        let Some(v) = scan::trim_start(s.get(n..).unwrap_or_default()).strip_prefix(b"=") else {
            return fail(self);
        };
        let v = scan::trim_start(v);
        let (value, rest) = if v.first() == Some(&b'"') {
            let Some(end) = scan::quoted_end(v) else {
                return fail(self);
            };
            (
                v.get(1..end - 1).unwrap_or_default(),
                v.get(end..).unwrap_or_default(),
            )
        } else {
            let n = scan::token_len(v);
            if n == 0 {
                return fail(self);
            }
            (
                v.get(..n).unwrap_or_default(),
                v.get(n..).unwrap_or_default(),
            )
        };
        let rest = scan::trim_start(rest);
        if !rest.is_empty() && rest.first() != Some(&b',') {
            return fail(self);
        }
        self.rest = rest;
        Some(Ok((name, value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_credentials() {
        let c = Credentials::parse(
            b"Digest username=\"bob\", realm=\"biloxi.com\",\r\n nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", uri=\"sip:bob@biloxi.com\", qop=auth, nc=00000001, cnonce=\"0a4f113b\", response=\"6629fae49393a05397450978507c4ef1\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\", algorithm=MD5",
        )
        .unwrap();
        assert!(c.is_digest());
        assert_eq!(c.params.get(b"username"), Some(&b"bob"[..]));
        assert_eq!(c.params.get(b"NC"), Some(&b"00000001"[..]));
        assert_eq!(c.params.get(b"algorithm"), Some(&b"MD5"[..]));
        assert_eq!(c.params.get(b"uri"), Some(&b"sip:bob@biloxi.com"[..]));
        assert_eq!(c.params.iter().count(), 10);
        let q = Credentials::parse(b"Digest realm=\"a,b\", qop=\"auth,auth-int\"").unwrap();
        assert_eq!(q.params.get(b"qop"), Some(&b"auth,auth-int"[..]));
        for bad in [
            &b""[..],
            b"Digest realm",
            b"Digest realm=\"x",
            b"Digest a=b c=d",
            b"Digest =x",
        ] {
            assert!(
                Credentials::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
