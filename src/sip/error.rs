//! Parse errors: a small `Copy` enum, no payload, each variant mapped to the
//! status a server answers with (RFC 3261 §21) and a precise reason phrase.
//!
//! Why no payload: the parser runs on hostile input at line rate; an error
//! must cost nothing to build and nothing to drop (httparse does the same).

use core::fmt;

/// Why a message could not be parsed.
///
/// Every variant maps to a SIP status code with [`ParseError::status`] and to
/// the reason phrase that goes with it in [`ParseError::reason`], so a server
/// can answer a malformed request precisely (or count and drop it when no
/// response can be routed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParseError {
    /// A Proxy-Require names an extension this proxy does not support (RFC 3261 §16.3 step 6).
    BadExtension,
    /// The body is longer than Content-Length allows or the message exceeds the size limit.
    BodyTooLarge,
    /// A datagram carries fewer body bytes than its Content-Length announces (RFC 3261 §18.3).
    BodyTruncated,
    /// The Content-Length value is not a decimal number, or appears twice with different values.
    ContentLength,
    /// The CSeq header is malformed (number above 2^31-1, or a bad method token).
    CSeq,
    /// The CSeq method differs from the request method (RFC 3261 §8.1.1.5).
    CSeqMethodMismatch,
    /// A header that may appear once (To, From, Call-ID, CSeq, Max-Forwards) appears twice
    /// (RFC 3261 §7.3.1; RFC 4475 §3.3.8).
    DuplicateHeader,
    /// An extension method whose CSeq names another method: 501 rather than
    /// 400, as RFC 4475 §3.1.2.18 prefers at proxies.
    ExtensionMethodMismatch,
    /// A header line has no colon, or its name is not a token.
    HeaderName,
    /// A header line (with its folded continuation lines) is longer than the configured limit.
    HeaderTooLong,
    /// A header value is malformed: a byte that cannot appear there (an
    /// unescaped NUL…), or a To, From or Contact that is not a name-addr.
    HeaderValue,
    /// The header section never ends in a datagram (no empty line).
    Incomplete,
    /// A line ends in a bare LF or CR where CRLF is required.
    LineEnding,
    /// The Max-Forwards value is not a number from 0 to 255.
    MaxForwards,
    /// The message is larger than the configured maximum size.
    MessageTooLarge,
    /// The request line does not have the form `Method SP Request-URI SP SIP-Version`.
    RequestLine,
    /// The Request-URI is malformed.
    RequestUri,
    /// The Request-URI is longer than the configured limit.
    RequestUriTooLong,
    /// A mandatory header (To, From, Call-ID, CSeq, Via) is missing.
    MissingHeader,
    /// The method is not a token.
    Method,
    /// The status line does not have the form `SIP-Version SP 3DIGIT SP Reason-Phrase`.
    StatusLine,
    /// There are more headers than the header index can hold.
    TooManyHeaders,
    /// There are more Via values than the configured limit.
    TooManyVias,
    /// The URI scheme is one this server does not handle.
    UnsupportedUriScheme,
    /// The SIP version is not SIP/2.0.
    Version,
    /// A Via header value is malformed.
    Via,
}

impl ParseError {
    /// The status code a server answers this error with.
    pub const fn status(self) -> u16 {
        match self {
            Self::BodyTooLarge | Self::MessageTooLarge | Self::TooManyHeaders => 413,
            Self::RequestUriTooLong => 414,
            Self::UnsupportedUriScheme => 416,
            Self::BadExtension => 420,
            Self::TooManyVias => 483,
            Self::ExtensionMethodMismatch => 501,
            Self::Version => 505,
            Self::BodyTruncated
            | Self::ContentLength
            | Self::CSeq
            | Self::CSeqMethodMismatch
            | Self::DuplicateHeader
            | Self::HeaderName
            | Self::HeaderTooLong
            | Self::HeaderValue
            | Self::Incomplete
            | Self::LineEnding
            | Self::MaxForwards
            | Self::RequestLine
            | Self::RequestUri
            | Self::MissingHeader
            | Self::Method
            | Self::StatusLine
            | Self::Via => 400,
        }
    }

    /// The reason phrase that goes with [`ParseError::status`]: precise, so the
    /// sender's developer can see what we objected to.
    pub const fn reason(self) -> &'static str {
        match self {
            Self::BadExtension => "Bad Extension",
            Self::BodyTooLarge => "Request Entity Too Large",
            Self::BodyTruncated => "Bad Request (Body Shorter Than Content-Length)",
            Self::ContentLength => "Bad Request (Malformed Content-Length)",
            Self::CSeq => "Bad Request (Malformed CSeq)",
            Self::CSeqMethodMismatch => "Bad Request (CSeq Method Does Not Match)",
            Self::DuplicateHeader => "Bad Request (Duplicate Header)",
            Self::ExtensionMethodMismatch => "Not Implemented",
            Self::HeaderName => "Bad Request (Malformed Header Name)",
            Self::HeaderTooLong => "Bad Request (Header Line Too Long)",
            Self::HeaderValue => "Bad Request (Malformed Header Value)",
            Self::Incomplete => "Bad Request (Incomplete Header Section)",
            Self::LineEnding => "Bad Request (Bad Line Ending)",
            Self::MaxForwards => "Bad Request (Malformed Max-Forwards)",
            Self::MessageTooLarge => "Message Too Large",
            Self::RequestLine => "Bad Request (Malformed Request Line)",
            Self::RequestUri => "Bad Request (Malformed Request-URI)",
            Self::RequestUriTooLong => "Request-URI Too Long",
            Self::MissingHeader => "Bad Request (Missing Mandatory Header)",
            Self::Method => "Bad Request (Malformed Method)",
            Self::StatusLine => "Bad Request (Malformed Status Line)",
            Self::TooManyHeaders => "Too Many Headers",
            Self::TooManyVias => "Too Many Hops (Via Limit)",
            Self::UnsupportedUriScheme => "Unsupported URI Scheme",
            Self::Version => "Version Not Supported",
            Self::Via => "Bad Request (Malformed Via)",
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status(), self.reason())
    }
}

impl std::error::Error for ParseError {}

/// Errors of the on-demand typed decoders (URI, Via, name-addr, CSeq…): the
/// header was indexed, but its value does not have the grammar of its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueError {
    /// A quoted string is not terminated, or an escape is cut short.
    Quote,
    /// A `<…>` is not closed, or has content after it that is not a parameter.
    Angle,
    /// The host is not an IPv4 address, an IPv6 reference or a hostname.
    Host,
    /// A number does not fit its type, or is not a number.
    Number,
    /// A parameter name is not a token, or its value is not a token or quoted string.
    Param,
    /// The scheme is not sip, sips or tel, or the URI has no scheme.
    Scheme,
    /// A character that the grammar of this value does not allow.
    Syntax,
    /// The value is empty where something is required.
    Empty,
}

impl ValueError {
    /// The parse error a request gets when this value is in a header it needs.
    pub const fn in_header(self, header: ParseError) -> ParseError {
        match self {
            Self::Scheme => ParseError::UnsupportedUriScheme,
            _ => header,
        }
    }
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::Quote => "unterminated quoted string",
            Self::Angle => "unbalanced angle brackets",
            Self::Host => "malformed host",
            Self::Number => "malformed number",
            Self::Param => "malformed parameter",
            Self::Scheme => "unsupported URI scheme",
            Self::Syntax => "syntax error",
            Self::Empty => "empty value",
        };
        f.write_str(s)
    }
}

impl std::error::Error for ValueError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_a_client_or_version_error() {
        let all = [
            ParseError::BodyTooLarge,
            ParseError::BodyTruncated,
            ParseError::ContentLength,
            ParseError::CSeq,
            ParseError::Version,
            ParseError::TooManyVias,
            ParseError::RequestUriTooLong,
            ParseError::UnsupportedUriScheme,
        ];
        for e in all {
            assert!((400..600).contains(&e.status()), "{e:?}");
            assert!(!e.reason().is_empty());
        }
        assert_eq!(ParseError::Version.status(), 505);
        assert_eq!(ParseError::UnsupportedUriScheme.status(), 416);
        assert_eq!(ParseError::TooManyHeaders.status(), 413);
        assert_eq!(ParseError::BadExtension.status(), 420);
        assert_eq!(ParseError::ExtensionMethodMismatch.status(), 501);
    }
}
