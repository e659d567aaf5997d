//! Header names: the well-known ones interned to [`HeaderName`] while the
//! parser scans, long and compact forms alike (RFC 3261 §7.3.3, §20 and the
//! IANA list of compact forms), compared without regard to ASCII case.
//!
//! Why an enum: every later layer asks "where is the top Via / the CSeq /
//! the Call-ID" many times per message; with the name interned once during
//! the scan, each such question is an array index (see
//! [`super::super::message::HeaderIndex`]).

macro_rules! header_names {
    ($( $variant:ident = $long:literal $(, $compact:literal)? ;)*) => {
        /// A header name: one of the well-known ones, or another (kept verbatim
        /// in the message and compared case-insensitively on demand).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum HeaderName {
            $(
                #[doc = concat!("`", $long, "`", $(" (compact `", $compact, "`)")?)]
                $variant,
            )*
            /// Any header not in the list above.
            Other,
        }

        impl HeaderName {
            /// How many well-known names there are (the size of the per-name lookup table).
            pub const KNOWN: usize = [$(Self::$variant),*].len();

            /// Canonical (long) form, as this server emits it.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $long,)*
                    Self::Other => "",
                }
            }

            /// Every well-known name, in declaration order.
            pub const ALL: [Self; Self::KNOWN] = [$(Self::$variant),*];

            /// Canonical forms, indexed by slot (no `match` on the lookup path).
            const NAMES: [&'static str; Self::KNOWN] = [$($long),*];

            /// Compact form, if the name has one.
            // Indexes a non-empty literal at compile time.
            #[allow(clippy::indexing_slicing)]
            pub const fn compact(self) -> Option<u8> {
                match self {
                    $($(Self::$variant => Some($compact.as_bytes()[0]),)?)*
                    _ => None,
                }
            }
        }
    };
}

header_names! {
    Accept = "Accept";
    AcceptContact = "Accept-Contact", "a";
    AcceptEncoding = "Accept-Encoding";
    AcceptLanguage = "Accept-Language";
    AlertInfo = "Alert-Info";
    Allow = "Allow";
    AllowEvents = "Allow-Events", "u";
    AuthenticationInfo = "Authentication-Info";
    Authorization = "Authorization";
    CallId = "Call-ID", "i";
    CallInfo = "Call-Info";
    Contact = "Contact", "m";
    ContentDisposition = "Content-Disposition";
    ContentEncoding = "Content-Encoding", "e";
    ContentLanguage = "Content-Language";
    ContentLength = "Content-Length", "l";
    ContentType = "Content-Type", "c";
    CSeq = "CSeq";
    Date = "Date";
    ErrorInfo = "Error-Info";
    Event = "Event", "o";
    Expires = "Expires";
    From = "From", "f";
    Identity = "Identity", "y";
    IdentityInfo = "Identity-Info", "n";
    InReplyTo = "In-Reply-To";
    MaxForwards = "Max-Forwards";
    MimeVersion = "MIME-Version";
    MinExpires = "Min-Expires";
    MinSe = "Min-SE";
    Organization = "Organization";
    Path = "Path";
    Priority = "Priority";
    ProxyAuthenticate = "Proxy-Authenticate";
    ProxyAuthorization = "Proxy-Authorization";
    ProxyRequire = "Proxy-Require";
    RAck = "RAck";
    Reason = "Reason";
    RecordRoute = "Record-Route";
    ReferTo = "Refer-To", "r";
    ReferredBy = "Referred-By", "b";
    RejectContact = "Reject-Contact", "j";
    ReplyTo = "Reply-To";
    RequestDisposition = "Request-Disposition", "d";
    Require = "Require";
    RetryAfter = "Retry-After";
    Route = "Route";
    RSeq = "RSeq";
    Server = "Server";
    SessionExpires = "Session-Expires", "x";
    SipETag = "SIP-ETag";
    SipIfMatch = "SIP-If-Match";
    Subject = "Subject", "s";
    SubscriptionState = "Subscription-State";
    Supported = "Supported", "k";
    Timestamp = "Timestamp";
    To = "To", "t";
    Unsupported = "Unsupported";
    UserAgent = "User-Agent";
    Via = "Via", "v";
    Warning = "Warning";
    WwwAuthenticate = "WWW-Authenticate";
}

/// Open-addressing table from [`name_hash`] to a well-known name
/// (`u8::MAX` = empty), built at compile time. 62 names in 256 slots: a
/// lookup costs about one probe and one case-insensitive compare.
static TABLE: [u8; 256] = build_table();
/// Compact forms by lower-case letter (`u8::MAX` = none).
static COMPACT: [u8; 256] = build_compact();
/// The long forms in lower case, by slot, padded with zeros: compared
/// against the input folded with `| 0x20`.
static LOWER: [[u8; NAME_MAX]; HeaderName::KNOWN] = build_lower();

/// Longest well-known name ("Request-Disposition" is 19), with room to spare.
const NAME_MAX: usize = 24;

const EMPTY: u8 = u8::MAX;

/// Hash of a name from its length and its first and last bytes, lower-cased.
#[inline]
const fn name_hash(len: usize, first: u8, last: u8) -> usize {
    let f = first.to_ascii_lowercase() as usize;
    let l = last.to_ascii_lowercase() as usize;
    (len.wrapping_mul(37) ^ f.wrapping_mul(7) ^ l.wrapping_mul(131)) & 0xff
}

// Compile-time table construction: an out-of-bounds index here is a build
// error, never a runtime panic.
#[allow(clippy::indexing_slicing)]
const fn build_table() -> [u8; 256] {
    let mut t = [EMPTY; 256];
    let mut i = 0;
    while i < HeaderName::KNOWN {
        let s = HeaderName::ALL[i].as_str().as_bytes();
        let mut h = name_hash(s.len(), s[0], s[s.len() - 1]);
        while t[h] != EMPTY {
            h = (h + 1) & 0xff;
        }
        t[h] = i as u8;
        i += 1;
    }
    t
}

#[allow(clippy::indexing_slicing)]
const fn build_compact() -> [u8; 256] {
    let mut t = [EMPTY; 256];
    let mut i = 0;
    while i < HeaderName::KNOWN {
        if let Some(c) = HeaderName::ALL[i].compact() {
            t[c as usize] = i as u8;
            t[c.to_ascii_uppercase() as usize] = i as u8;
        }
        i += 1;
    }
    t
}

#[allow(clippy::indexing_slicing)]
const fn build_lower() -> [[u8; NAME_MAX]; HeaderName::KNOWN] {
    let mut t = [[0u8; NAME_MAX]; HeaderName::KNOWN];
    let mut i = 0;
    while i < HeaderName::KNOWN {
        let s = HeaderName::NAMES[i].as_bytes();
        let mut j = 0;
        while j < s.len() {
            t[i][j] = s[j].to_ascii_lowercase();
            j += 1;
        }
        i += 1;
    }
    t
}

impl HeaderName {
    /// Interns `name` (case-insensitive; long or compact form).
    ///
    /// Why `| 0x20` is a safe case fold here: the parser only passes token
    /// characters, and among those only the letters change under it (to
    /// lower case); the known names are letters and `-`, which it keeps.
    #[inline]
    pub fn from_bytes(name: &[u8]) -> Self {
        let (Some(&first), Some(&last)) = (name.first(), name.last()) else {
            return Self::Other;
        };
        if name.len() == 1 {
            return Self::from_slot(COMPACT.get(usize::from(first)).copied().unwrap_or(EMPTY));
        }
        if name.len() > NAME_MAX {
            return Self::Other;
        }
        let mut h = name_hash(name.len(), first, last);
        loop {
            let slot = TABLE.get(h).copied().unwrap_or(EMPTY);
            if slot == EMPTY {
                return Self::Other;
            }
            let cand = Self::from_slot(slot);
            if Self::NAMES.get(usize::from(slot)).map(|s| s.len()) == Some(name.len())
                && Self::lower_eq(usize::from(slot), name)
            {
                return cand;
            }
            h = (h + 1) & 0xff;
        }
    }

    /// `name`, folded to lower case, equals the known name in `slot`
    /// (whose length the caller has checked to be `name.len()`).
    #[inline(always)]
    fn lower_eq(slot: usize, name: &[u8]) -> bool {
        let Some(lower) = LOWER.get(slot) else {
            return false;
        };
        name.iter().zip(lower).all(|(&a, &b)| a | 0x20 == b)
    }

    #[inline]
    fn from_slot(slot: u8) -> Self {
        Self::ALL
            .get(usize::from(slot))
            .copied()
            .unwrap_or(Self::Other)
    }

    /// Position of this name in per-name tables; `None` for [`HeaderName::Other`].
    #[inline]
    pub const fn slot(self) -> Option<usize> {
        match self {
            Self::Other => None,
            known => Some(known as usize),
        }
    }

    /// True for the headers whose value is a comma-separated list that may be
    /// split over several lines (§7.3.1); the others are single-valued or, like
    /// the auth headers, carry commas inside one value.
    pub const fn is_list(self) -> bool {
        matches!(
            self,
            Self::Accept
                | Self::AcceptContact
                | Self::AcceptEncoding
                | Self::AcceptLanguage
                | Self::AlertInfo
                | Self::Allow
                | Self::AllowEvents
                | Self::CallInfo
                | Self::Contact
                | Self::ContentEncoding
                | Self::ContentLanguage
                | Self::ErrorInfo
                | Self::InReplyTo
                | Self::Path
                | Self::ProxyRequire
                | Self::RecordRoute
                | Self::RejectContact
                | Self::Require
                | Self::Route
                | Self::Supported
                | Self::Unsupported
                | Self::Via
                | Self::Warning
        )
    }
}

#[cfg(test)]
mod tests {
    use super::HeaderName as H;

    #[test]
    fn interns_long_and_compact_forms_in_any_case() {
        let cases: &[(&[u8], H)] = &[
            (b"Via", H::Via),
            (b"vIA", H::Via),
            (b"v", H::Via),
            (b"V", H::Via),
            (b"call-id", H::CallId),
            (b"i", H::CallId),
            (b"CSEQ", H::CSeq),
            (b"m", H::Contact),
            (b"l", H::ContentLength),
            (b"WWW-Authenticate", H::WwwAuthenticate),
            (b"Max-Forwards", H::MaxForwards),
            (b"record-route", H::RecordRoute),
            (b"X-Custom", H::Other),
            (b"q", H::Other),
            (b"Viaa", H::Other),
            (b"", H::Other),
        ];
        for (raw, want) in cases {
            assert_eq!(
                H::from_bytes(raw),
                *want,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn canonical_forms_round_trip() {
        for name in H::ALL {
            let long = name.as_str();
            assert_eq!(H::from_bytes(long.as_bytes()), name, "{long}");
            assert_eq!(H::from_bytes(long.to_ascii_uppercase().as_bytes()), name);
            assert_eq!(H::from_bytes(long.to_ascii_lowercase().as_bytes()), name);
            if let Some(c) = name.compact() {
                assert_eq!(H::from_bytes(&[c]), name);
                assert_eq!(H::from_bytes(&[c.to_ascii_uppercase()]), name);
            }
            // One byte off is another header.
            let mut off = long.as_bytes().to_vec();
            off[0] ^= 0x01;
            assert_ne!(H::from_bytes(&off), name);
        }
    }
}
