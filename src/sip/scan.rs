//! Byte scanning: the delimiters of SIP found with memchr (SIMD where the CPU
//! has it), character classes as 256-entry tables, and the comma splitter
//! that respects quoted strings and `<…>`.
//!
//! This is the one place in `sip` that could hold `unsafe` code; today it
//! holds none, because memchr's SIMD search beats any hand-written loop we
//! measured for SIP's short lines. Built with `--cfg sipedge_no_simd`, the
//! searches use plain iterators instead (for miri).
//!
//! Nothing here allocates or panics.

/// Below this many bytes a search runs eight bytes at a time in a `u64`
/// (SWAR) instead of calling memchr.
///
/// Why: SIP lines and values are short, and a memchr call costs a runtime
/// dispatch and a vector set-up that a 40-byte search never earns back; the
/// header scan of `benches/parse.rs` measured ~7% faster with this cut-over.
const SHORT: usize = 64;

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `w` that equals the byte `pat` repeats; the
/// lowest set bit is exact (borrows only disturb the bytes above it).
#[inline(always)]
fn eq_mask(w: u64, pat: u64) -> u64 {
    let x = w ^ pat;
    x.wrapping_sub(LO) & !x & HI
}

/// SWAR search over a short haystack: `mask(word)` marks matching bytes.
#[inline(always)]
fn find_short(hay: &[u8], mask: impl Fn(u64) -> u64, eq: impl Fn(u8) -> bool) -> Option<usize> {
    let mut chunks = hay.chunks_exact(8);
    let mut at = 0;
    for c in &mut chunks {
        // `chunks_exact(8)` makes this conversion infallible (one 8-byte load).
        let Ok(w) = <[u8; 8]>::try_from(c) else {
            break;
        };
        let m = mask(u64::from_le_bytes(w));
        if m != 0 {
            return Some(at + (m.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| eq(b))
        .map(|i| at + i)
}

/// Position of the first `needle` in `hay`.
#[inline]
pub fn find(needle: u8, hay: &[u8]) -> Option<usize> {
    // The first SHORT bytes word by word (most SIP lines end there), the
    // rest with memchr.
    let p = LO * u64::from(needle);
    let (head, tail) = hay.split_at(hay.len().min(SHORT));
    if let Some(i) = find_short(head, |w| eq_mask(w, p), |b| b == needle) {
        return Some(i);
    }
    if tail.is_empty() {
        return None;
    }
    #[cfg(not(sipedge_no_simd))]
    {
        memchr::memchr(needle, tail).map(|i| SHORT + i)
    }
    #[cfg(sipedge_no_simd)]
    {
        tail.iter().position(|&b| b == needle).map(|i| SHORT + i)
    }
}

/// Position of the first of `a` or `b` in `hay`.
#[inline]
pub fn find2(a: u8, b: u8, hay: &[u8]) -> Option<usize> {
    if hay.len() < SHORT {
        let (pa, pb) = (LO * u64::from(a), LO * u64::from(b));
        return find_short(
            hay,
            |w| eq_mask(w, pa) | eq_mask(w, pb),
            |x| x == a || x == b,
        );
    }
    #[cfg(not(sipedge_no_simd))]
    {
        memchr::memchr2(a, b, hay)
    }
    #[cfg(sipedge_no_simd)]
    {
        hay.iter().position(|&x| x == a || x == b)
    }
}

/// Position of the first of `a`, `b` or `c` in `hay`.
#[inline]
pub fn find3(a: u8, b: u8, c: u8, hay: &[u8]) -> Option<usize> {
    if hay.len() < SHORT {
        let (pa, pb, pc) = (LO * u64::from(a), LO * u64::from(b), LO * u64::from(c));
        return find_short(
            hay,
            |w| eq_mask(w, pa) | eq_mask(w, pb) | eq_mask(w, pc),
            |x| x == a || x == b || x == c,
        );
    }
    #[cfg(not(sipedge_no_simd))]
    {
        memchr::memchr3(a, b, c, hay)
    }
    #[cfg(sipedge_no_simd)]
    {
        hay.iter().position(|&x| x == a || x == b || x == c)
    }
}

/// Position of `needle` (several bytes) in `hay`.
#[inline]
pub fn find_seq(needle: &[u8], hay: &[u8]) -> Option<usize> {
    #[cfg(not(sipedge_no_simd))]
    {
        memchr::memmem::find(hay, needle)
    }
    #[cfg(sipedge_no_simd)]
    {
        if needle.is_empty() {
            return Some(0);
        }
        hay.windows(needle.len()).position(|w| w == needle)
    }
}

// Compile-time table construction: an out-of-bounds index here is a build
// error, never a runtime panic.
#[allow(clippy::indexing_slicing)]
const fn class_table(chars: &[u8], alnum: bool) -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        if alnum && b.is_ascii_alphanumeric() {
            t[i] = true;
        }
        i += 1;
    }
    let mut j = 0;
    while j < chars.len() {
        t[chars[j] as usize] = true;
        j += 1;
    }
    t
}

/// RFC 3261 §25.1 `token`: alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~".
static TOKEN: [bool; 256] = class_table(b"-.!%*_+`'~", true);
/// `token` plus the `[`, `]` and `:` of an IPv6 reference: a gen-value that is a host.
static GEN_VALUE: [bool; 256] = class_table(b"-.!%*_+`'~[]:", true);
/// Characters of a hostname (alphanum, "-", "."), plus "_" which real networks use.
static HOSTNAME: [bool; 256] = class_table(b"-._", true);
/// `unreserved` (§25.1): alphanum / mark.
static UNRESERVED: [bool; 256] = class_table(b"-_.!~*'()", true);
/// Characters allowed unescaped in the user part: unreserved / user-unreserved.
static USER: [bool; 256] = class_table(b"-_.!~*'()&=+$,;?/", true);
/// Characters allowed unescaped in a password: unreserved / "&" / "=" / "+" / "$" / ",".
static PASSWORD: [bool; 256] = class_table(b"-_.!~*'()&=+$,", true);
/// `paramchar` (§25.1): param-unreserved / unreserved (escapes handled apart).
static PARAMCHAR: [bool; 256] = class_table(b"-_.!~*'()[]/:&+$", true);
/// `hnv-unreserved` / unreserved: characters of URI header names and values.
static HNV: [bool; 256] = class_table(b"-_.!~*'()[]/?:+$", true);

/// Looks `b` up in a 256-entry class table (a `u8` index is always in range;
/// the compiler drops the check).
#[inline(always)]
fn in_class(class: &[bool; 256], b: u8) -> bool {
    class.get(usize::from(b)).copied().unwrap_or(false)
}

/// True for a `token` character.
#[inline]
pub fn is_token(b: u8) -> bool {
    in_class(&TOKEN, b)
}

/// Length of the token at the start of `s` (0 when `s` does not start with one).
///
/// Not inlined: in the parser's header loop it would compete for registers
/// and spill its counter on every byte.
#[inline(never)]
pub fn token_len(s: &[u8]) -> usize {
    s.iter().position(|&b| !is_token(b)).unwrap_or(s.len())
}

/// Length of the hostname characters at the start of `s`.
#[inline(never)]
pub fn hostname_len(s: &[u8]) -> usize {
    s.iter().position(|&b| !is_hostname(b)).unwrap_or(s.len())
}

/// Length of a generic-param value at the start of `s` that is not a quoted
/// string: `token / host` (§25.1), so token characters plus the `[`, `]`
/// and `:` of an IPv6 reference.
#[inline(never)]
pub fn gen_value_len(s: &[u8]) -> usize {
    s.iter()
        .position(|&b| !in_class(&GEN_VALUE, b))
        .unwrap_or(s.len())
}

/// True when `s` is a non-empty token.
#[inline]
pub fn is_token_str(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_token(b))
}

/// True for a hostname character.
#[inline]
pub fn is_hostname(b: u8) -> bool {
    in_class(&HOSTNAME, b)
}

/// True for an `unreserved` character.
#[inline]
pub fn is_unreserved(b: u8) -> bool {
    in_class(&UNRESERVED, b)
}

/// True when `s` consists of characters of `class` and well-formed `%HH` escapes.
fn escaped_of(s: &[u8], class: &[bool; 256]) -> bool {
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        if b == b'%' {
            match (s.get(i + 1), s.get(i + 2)) {
                (Some(h), Some(l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => i += 3,
                _ => return false,
            }
        } else if in_class(class, b) {
            i += 1;
        } else {
            return false;
        }
    }
    true
}

/// True when `s` is a valid (possibly escaped) URI user part.
pub fn is_user(s: &[u8]) -> bool {
    !s.is_empty() && escaped_of(s, &USER)
}

/// True when `s` is a valid (possibly escaped) URI password.
pub fn is_password(s: &[u8]) -> bool {
    escaped_of(s, &PASSWORD)
}

/// True when `s` is a valid (possibly escaped) URI parameter name or value.
pub fn is_paramchars(s: &[u8]) -> bool {
    escaped_of(s, &PARAMCHAR)
}

/// True when `s` is a valid (possibly escaped) URI header name or value.
pub fn is_hnv(s: &[u8]) -> bool {
    escaped_of(s, &HNV)
}

/// True for linear white space bytes (SP, HT, CR, LF): what `LWS` may consist of
/// once the parser has checked that every CRLF inside a value is followed by SP or HT.
#[inline]
pub fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// `s` without leading and trailing LWS.
#[inline]
pub fn trim(s: &[u8]) -> &[u8] {
    trim_end(trim_start(s))
}

/// `s` without leading LWS.
#[inline]
pub fn trim_start(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&b| is_lws(b)).count();
    s.get(n..).unwrap_or_default()
}

/// `s` without trailing LWS.
#[inline]
pub fn trim_end(s: &[u8]) -> &[u8] {
    let n = s.iter().rev().take_while(|&&b| is_lws(b)).count();
    s.get(..s.len() - n).unwrap_or_default()
}

/// Splits `s` at the first `sep` (outside nothing: a plain split).
#[inline]
pub fn split_once(s: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let i = find(sep, s)?;
    Some((s.get(..i)?, s.get(i + 1..)?))
}

/// End of the quoted string that starts at `s[0] == '"'`: the index just past
/// the closing quote, honouring `\` escapes (§25.1 quoted-pair).
pub fn quoted_end(s: &[u8]) -> Option<usize> {
    let mut i = 1;
    loop {
        let rest = s.get(i..)?;
        let j = find2(b'"', b'\\', rest)?;
        match rest.get(j) {
            Some(b'"') => return Some(i + j + 1),
            // quoted-pair: skip the backslash and the byte it escapes
            _ => i += j + 2,
        }
    }
}

/// Iterator over the comma-separated values of one header line, splitting
/// only at commas outside quoted strings and `<…>` (RFC 3261 §7.3.1).
///
/// Values come out trimmed of LWS; empty values (`a,,b`) are skipped. A
/// quoted string or angle bracket that never closes ends the iteration with
/// the rest of the line as the last value: the typed decoder of that value
/// reports the error.
#[derive(Debug, Clone)]
pub struct CommaValues<'buf> {
    rest: &'buf [u8],
}

impl<'buf> CommaValues<'buf> {
    /// Splits `line`, one header's value.
    pub fn new(line: &'buf [u8]) -> Self {
        Self { rest: line }
    }

    /// The next raw value with its offset inside the original line.
    fn next_value(&mut self) -> Option<&'buf [u8]> {
        loop {
            if self.rest.is_empty() {
                return None;
            }
            let s = self.rest;
            let mut i = 0;
            let end = loop {
                let Some(tail) = s.get(i..) else {
                    break s.len();
                };
                match find3(b',', b'"', b'<', tail) {
                    None => break s.len(),
                    Some(j) => {
                        let at = i + j;
                        match s.get(at) {
                            Some(b',') => break at,
                            Some(b'"') => match s.get(at..).and_then(quoted_end) {
                                Some(k) => i = at + k,
                                None => break s.len(),
                            },
                            _ => match s.get(at..).and_then(|t| find(b'>', t)) {
                                Some(k) => i = at + k + 1,
                                None => break s.len(),
                            },
                        }
                    }
                }
            };
            let value = s.get(..end).unwrap_or_default();
            self.rest = s.get(end + 1..).unwrap_or_default();
            let value = trim(value);
            if !value.is_empty() {
                return Some(value);
            }
        }
    }
}

impl<'buf> Iterator for CommaValues<'buf> {
    type Item = &'buf [u8];

    fn next(&mut self) -> Option<&'buf [u8]> {
        self.next_value()
    }
}

/// Parses a decimal number without sign into `u64`, refusing overflow,
/// empty input and any non-digit.
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

/// Parses a decimal `u32`.
pub fn parse_u32(s: &[u8]) -> Option<u32> {
    parse_u64(s).and_then(|v| u32::try_from(v).ok())
}

/// Parses a decimal `u16`.
pub fn parse_u16(s: &[u8]) -> Option<u16> {
    parse_u64(s).and_then(|v| u16::try_from(v).ok())
}

/// Decodes `%HH` escapes of `s` into `out` (cleared first); returns false on a
/// malformed escape. Used to compare escaped URI parts (§19.1.4).
pub fn unescape_into(s: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        if b == b'%' {
            let (Some(h), Some(l)) = (s.get(i + 1), s.get(i + 2)) else {
                return false;
            };
            let (Some(h), Some(l)) = (hex(*h), hex(*l)) else {
                return false;
            };
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    true
}

/// Value of one hexadecimal digit.
#[inline]
pub fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Compares two escaped strings as §19.1.4 does: `%HH` and the byte it stands
/// for are equal; `case_insensitive` folds ASCII case after unescaping.
pub fn escaped_eq(a: &[u8], b: &[u8], case_insensitive: bool) -> bool {
    let mut ia = Unescaped { s: a, i: 0 };
    let mut ib = Unescaped { s: b, i: 0 };
    loop {
        match (ia.next(), ib.next()) {
            (None, None) => return true,
            (Some(x), Some(y)) => {
                let (x, y) = if case_insensitive {
                    (x.to_ascii_lowercase(), y.to_ascii_lowercase())
                } else {
                    (x, y)
                };
                if x != y {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// True when `escaped`, its `%HH` escapes decoded, is exactly `raw` (whose
/// bytes are taken literally).
pub fn unescaped_eq(escaped: &[u8], raw: &[u8]) -> bool {
    let mut it = Unescaped { s: escaped, i: 0 };
    for &b in raw {
        if it.next() != Some(b) {
            return false;
        }
    }
    it.next().is_none()
}

struct Unescaped<'a> {
    s: &'a [u8],
    i: usize,
}

impl Iterator for Unescaped<'_> {
    type Item = u8;
    fn next(&mut self) -> Option<u8> {
        let b = *self.s.get(self.i)?;
        if b == b'%' {
            if let (Some(h), Some(l)) = (
                self.s.get(self.i + 1).and_then(|&h| hex(h)),
                self.s.get(self.i + 2).and_then(|&l| hex(l)),
            ) {
                self.i += 3;
                return Some(h << 4 | l);
            }
        }
        self.i += 1;
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commas_respect_quotes_and_angles() {
        let v: Vec<&[u8]> =
            CommaValues::new(b"\"Doe, John\" <sip:a@b;x=1,2>;q=0.5 , <sip:c@d> ,,").collect();
        assert_eq!(
            v,
            vec![
                &b"\"Doe, John\" <sip:a@b;x=1,2>;q=0.5"[..],
                &b"<sip:c@d>"[..]
            ]
        );
        let v: Vec<&[u8]> = CommaValues::new(b"\"a\\\"b,c\" <x>, y").collect();
        assert_eq!(v, vec![&b"\"a\\\"b,c\" <x>"[..], &b"y"[..]]);
        let v: Vec<&[u8]> = CommaValues::new(b"\"unterminated, x").collect();
        assert_eq!(v, vec![&b"\"unterminated, x"[..]]);
    }

    #[test]
    fn short_and_long_searches_agree() {
        // Every length around the SWAR/memchr cut-over, every position, and
        // bytes whose borrow could fake a match (0x00, 0x01, 0x80, 0xff).
        for len in 0..(SHORT + 20) {
            for at in 0..=len {
                let mut hay: Vec<u8> = (0..len)
                    .map(|i| [0x01, 0x80, 0xff, 0x00, b'a'][i % 5])
                    .collect();
                if at < len {
                    hay[at] = b'\n';
                }
                let want = hay.iter().position(|&b| b == b'\n');
                assert_eq!(find(b'\n', &hay), want, "{len} {at}");
                assert_eq!(find2(b'\n', b'~', &hay), want);
                assert_eq!(find3(b'~', b'\n', b'^', &hay), want);
                let want0 = hay.iter().position(|&b| b == 0);
                assert_eq!(find(0, &hay), want0, "{len} {at}");
                assert_eq!(find2(0x7e, 0, &hay), want0);
            }
        }
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u32(b"4294967295"), Some(u32::MAX));
        assert_eq!(parse_u32(b"4294967296"), None);
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"1a"), None);
        assert_eq!(parse_u64(b"999999999999999999999999"), None);
    }

    #[test]
    fn escapes() {
        assert!(escaped_eq(b"sip%3Auser", b"sip:user", false));
        assert!(escaped_eq(b"ABC", b"abc", true));
        assert!(!escaped_eq(b"ABC", b"abc", false));
        assert!(unescaped_eq(b"%25A0", b"%A0"));
        assert!(!unescaped_eq(b"%25A0", b"\xa0"));
        assert!(unescaped_eq(b"a%00b", b"a\0b"));
        assert!(!unescaped_eq(b"ab", b"abc"));
        assert!(!unescaped_eq(b"abc", b"ab"));
        let mut out = Vec::new();
        assert!(unescape_into(b"a%20b", &mut out));
        assert_eq!(out, b"a b");
        assert!(!unescape_into(b"a%2", &mut out));
        assert!(is_user(b"alice%20smith"));
        assert!(!is_user(b"al ice"));
        assert!(!is_user(b"a%zz"));
    }

    #[test]
    fn trims_lws_including_folds() {
        assert_eq!(trim(b" \t\r\n x y \r\n\t"), b"x y");
        assert_eq!(trim(b"   "), b"");
        assert_eq!(quoted_end(b"\"a\\\"b\"rest"), Some(6));
        assert_eq!(quoted_end(b"\"abc"), None);
        assert_eq!(quoted_end(b"\"ab\\"), None);
    }
}
