//! PIDF documents (RFC 3863) with RPID (RFC 4480) and the data model's
//! `<dm:person>`/`<dm:device>` (RFC 4479): [`Document::parse`] validates the
//! body of a PUBLISH (RFC 3903) and keeps it, [`Document::status`] sums it up,
//! and [`compose`] unites the publications of one presentity's devices into
//! the one document a NOTIFY carries.
//!
//! ```text
//!  PUBLISH body ─► Document::parse ─► Document { body, top-level element spans, Status }
//!                    │ TooLarge · TooDeep · TooMany · Malformed · NotPidf      │
//!                    ▼                                                        ├─ as_bytes()  (stored durably)
//!            nothing kept                                                     └─ status()    open, activities, note → label()
//!
//!  [&Document] ─► compose(entity) ─► <presence xmlns=pidf entity=…>
//!                                      every <tuple> of every document (ids made unique)
//!                                      every <note>
//!                                      every <dm:person>, <dm:device> and extension element
//!                                    </presence>            (no documents: closed(entity))
//! ```
//!
//! | file | owns |
//! |---|---|
//! | here | the limits, [`PidfError`], [`Document`], [`Status`] and its label |
//! | `parse` | the one pass of quick-xml's reader behind [`Document::parse`] |
//! | `compose` | [`compose`] and [`closed`] |
//!
//! **Composition** (RFC 3863 §4.1.1, RFC 4479 §3.4) is by union, as
//! Kamailio's presence_xml aggregates: each top-level element is copied
//! byte for byte after its start tag, and its start tag is rewritten to
//! carry the namespace declarations (and `xml:lang`) it inherited from its
//! own root, so it means the same under the new root. Elements are grouped
//! in the schema's order (tuples, notes, then the rest). An `id` already
//! written by an earlier element gets `-2`, `-3`, … appended, so the first
//! document's ids stay stable from one NOTIFY to the next.
//!
//! **Contract.** Sans-IO; no input makes it panic (the module denies
//! `unwrap`, `expect`, `panic!` and unchecked indexing outside tests). Parse
//! allocates one copy of the body (at most [`MAX_BODY`]), at most
//! [`MAX_ELEMENTS`] element records, at most [`MAX_ACTIVITIES`] activity
//! names of at most [`MAX_ACTIVITY_LEN`] bytes and one note of at most
//! [`MAX_NOTE`] bytes; quick-xml's own buffers (open-element names,
//! namespace bindings) grow with the body and so are bounded by it. The XML
//! reader is a loop, not a recursion: depth costs no stack. [`compose`]
//! writes into the caller's buffer: per document at most its body plus, per
//! top-level element, its root start tag (at most [`MAX_ROOT_TAG`]).
//!
//! **Why quick-xml.** A streaming pull reader over the borrowed body that
//! builds no tree, resolves namespaces (`NsReader`), never expands entities
//! beyond the five predefined ones and character references, and has no
//! `unsafe` that we call into for parsing. What it does not bound, this
//! module does: size, depth, element count, DTDs.
//!
//! **Leniency** (what real clients send, and what we therefore accept):
//! - pjsip/pjsua: attribute order `entity` before `xmlns`, tuple ids that are
//!   not NCNames (GUIDs starting with a digit), `<basic>` compared
//!   case-insensitively (pjsip itself does), `<note>` inside the tuple.
//! - Asterisk, eyeBeam, Bria, resiprocate (the pre-RFC RPID drafts):
//!   `encoding="ISO-8859-1"` on an all-ASCII body, `<note>` before
//!   `<tuple>`, `<pp:person>` without `id`, activities in the draft
//!   namespaces as `<ep:away/>` or `<ep:activity>away</ep:activity>`,
//!   a `<status>` holding only an extension (`<digium_presence/>`).
//! - Any: a UTF-8 BOM, leading whitespace before the XML declaration, no
//!   XML declaration, no `entity` attribute (the presentity is the PUBLISH
//!   Request-URI's, RFC 3903 §6; compose writes its own), a document with
//!   no tuple at all (the schema's `minOccurs="0"`; RFC 4479 person-only
//!   publications), surrounding whitespace in `<basic>`.
//!
//! Not accepted: a root that is not `{urn:ietf:params:xml:ns:pidf}presence`
//! (a pidf document without its namespace included); a tuple without `id`
//! or without `<status>`, or with an empty `<status>` (§4.1.4: at least one
//! child); a `<basic>` other than open/closed; a DTD (so no entity is ever
//! declared, let alone expanded); an undeclared prefix; an XML version
//! other than 1.0; a non-UTF-8 body, or a non-ASCII one that declares
//! another encoding; characters XML 1.0 forbids.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

mod compose;
mod parse;

pub use compose::{closed, compose};

use parse::Parser;

/// Largest PIDF body accepted (bytes).
pub const MAX_BODY: usize = 32 * 1024;
/// Deepest element nesting accepted.
pub const MAX_DEPTH: usize = 24;
/// Most top-level elements (tuple, person, device, note) accepted in one document.
pub const MAX_ELEMENTS: usize = 64;
/// Longest root start tag accepted (bytes): its namespace declarations are
/// copied into every element [`compose`] takes from the document, so this
/// bounds what composition adds.
pub const MAX_ROOT_TAG: usize = 2 * 1024;
/// Most distinct activities kept for [`Status::activities`].
pub const MAX_ACTIVITIES: usize = 16;
/// Longest activity name kept (bytes); longer ones are skipped.
pub const MAX_ACTIVITY_LEN: usize = 32;
/// Longest note kept for [`Status::note`] (bytes; longer ones are cut at a
/// character boundary).
pub const MAX_NOTE: usize = 512;

/// The PIDF namespace (RFC 3863 §4.1).
pub const NS_PIDF: &str = "urn:ietf:params:xml:ns:pidf";
/// The presence data model namespace (RFC 4479 §4): person, device, note.
pub const NS_DATA_MODEL: &str = "urn:ietf:params:xml:ns:pidf:data-model";
/// The RPID namespace (RFC 4480 §4).
pub const NS_RPID: &str = "urn:ietf:params:xml:ns:pidf:rpid";
/// The pre-RFC RPID drafts' namespaces, still sent by Asterisk, eyeBeam,
/// Bria and resiprocate; their `<activities>` count like RPID's.
const NS_RPID_DRAFTS: [&str; 2] = [
    "urn:ietf:params:xml:ns:pidf:rpid:rpid-person",
    "urn:ietf:params:xml:ns:pidf:rpid:status:rpid-status",
];

/// Why a body is not an acceptable PIDF document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PidfError {
    /// Not well-formed XML, not namespace-well-formed, a DTD, an undeclared
    /// entity, or a PIDF rule broken (tuple without id or status, bad basic).
    #[error("malformed PIDF document")]
    Malformed,
    /// The root element is not `{urn:ietf:params:xml:ns:pidf}presence`.
    #[error("not a PIDF document")]
    NotPidf,
    /// Elements nested deeper than [`MAX_DEPTH`].
    #[error("PIDF document nested too deep")]
    TooDeep,
    /// The body is longer than [`MAX_BODY`], or its root start tag longer
    /// than [`MAX_ROOT_TAG`].
    #[error("PIDF document too large")]
    TooLarge,
    /// More than [`MAX_ELEMENTS`] top-level elements.
    #[error("PIDF document has too many elements")]
    TooMany,
}

/// basic status (RFC 3863 §4.1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basic {
    /// `closed`: the service cannot be reached.
    Closed,
    /// `open`: the service can be reached.
    Open,
}

/// A parsed, validated publication: what the server stores and composes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    // INVARIANT: valid UTF-8 XML that `parse` accepted, BOM removed; every
    // span below lies inside it on character boundaries.
    body: Box<str>,
    /// The root start tag's content (between `<` and `>`).
    root: Span,
    /// The top-level elements, in document order.
    elements: Vec<Element>,
    status: Status,
    basic: Option<Basic>,
}

/// The summary of one document, or of a composition.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Status {
    /// Whether any tuple's basic status is open.
    pub open: bool,
    /// The RPID activities (`<rpid:activities>` children's names, in first
    /// appearance order, without duplicates; `<rpid:unknown/>` as "unknown").
    pub activities: Vec<String>,
    /// The first non-empty note (pidf `<note>`, `<dm:note>` or `<rpid:note>`)
    /// in document order, trimmed.
    pub note: Option<String>,
}

/// A byte range of [`Document::body`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: u32,
    end: u32,
}

/// One top-level element of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Element {
    kind: Kind,
    /// Start-tag content: the name and attributes, without `<`, `/` and `>`.
    tag: Span,
    /// What follows the start tag up to and including the end tag (empty
    /// for `<x/>`).
    rest: Span,
    /// `<x/>`.
    empty: bool,
    /// The unprefixed `id` attribute, unescaped.
    id: Option<Box<str>>,
}

/// What a top-level element is, for composition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `<dm:device>`.
    Device,
    /// Any other element outside the PIDF namespace.
    Extension,
    /// pidf `<note>`.
    Note,
    /// `<dm:person>`.
    Person,
    /// pidf `<tuple>`.
    Tuple,
    /// An unknown element in the PIDF namespace: accepted, not composed.
    UnknownPidf,
}

impl Document {
    /// Parses and validates `body` (the body of a PUBLISH with Content-Type application/pidf+xml).
    pub fn parse(body: &[u8]) -> Result<Self, PidfError> {
        if body.len() > MAX_BODY {
            return Err(PidfError::TooLarge);
        }
        let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
        let text = std::str::from_utf8(body).map_err(|_| PidfError::Malformed)?;
        // XML 1.0 §2.2: no C0 control but tab, LF and CR. (Non-ASCII
        // non-characters are left to the receivers; they are rare and harmless.)
        if text
            .bytes()
            .any(|b| b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r'))
        {
            return Err(PidfError::Malformed);
        }
        Parser::new(text).run()
    }

    /// The document's own bytes to store durably: the validated body (without
    /// a BOM). `Document::parse(doc.as_bytes())` gives back an equal Document.
    pub fn as_bytes(&self) -> &[u8] {
        self.body.as_bytes()
    }

    /// The summary: Open if any tuple is open; the RPID activities (away, busy, on-the-phone,
    /// meeting, … any <rpid:activities> child names, also <rpid:unknown/> as "unknown"), and the first note.
    pub fn status(&self) -> Status {
        self.status.clone()
    }

    /// The combined basic status of the tuples: Open if any is open, Closed
    /// if some have a basic and none is open, None if no tuple has a basic.
    pub fn basic(&self) -> Option<Basic> {
        self.basic
    }

    /// How many top-level `<tuple>` elements the document has.
    pub fn tuples(&self) -> usize {
        self.elements
            .iter()
            .filter(|e| e.kind == Kind::Tuple)
            .count()
    }

    /// Heap bytes held (for memory accounting).
    pub fn heap_size(&self) -> usize {
        let ids: usize = self
            .elements
            .iter()
            .filter_map(|e| e.id.as_ref())
            .map(|id| id.len())
            .sum();
        let activities: usize = self
            .status
            .activities
            .iter()
            .map(|a| a.capacity() + size_of::<String>())
            .sum();
        self.body.len()
            + self.elements.capacity() * size_of::<Element>()
            + ids
            + activities
            + (self.status.activities.capacity() - self.status.activities.len())
                * size_of::<String>()
            + self.status.note.as_ref().map_or(0, String::capacity)
    }

    fn slice(&self, span: Span) -> Option<&str> {
        self.body
            .get(usize::try_from(span.start).ok()?..usize::try_from(span.end).ok()?)
    }
}

impl Status {
    /// "online" | "away" | "busy" | "offline": offline when no tuple is open;
    /// else busy if an activity says so (appointment, busy, meeting,
    /// on-the-phone, performance, presentation, steering, worship), else away
    /// if one says so (away, breakfast, dinner, holiday, in-transit,
    /// looking-for-work, meal, permanent-absence, shopping, sleeping, travel,
    /// vacation), else online.
    pub fn label(&self) -> &'static str {
        const BUSY: &[&str] = &[
            "appointment",
            "busy",
            "meeting",
            "on-the-phone",
            "performance",
            "presentation",
            "steering",
            "worship",
        ];
        const AWAY: &[&str] = &[
            "away",
            "breakfast",
            "dinner",
            "holiday",
            "in-transit",
            "looking-for-work",
            "meal",
            "permanent-absence",
            "shopping",
            "sleeping",
            "travel",
            "vacation",
        ];
        let any = |set: &[&str]| self.activities.iter().any(|a| set.contains(&a.as_str()));
        if !self.open {
            "offline"
        } else if any(BUSY) {
            "busy"
        } else if any(AWAY) {
            "away"
        } else {
            "online"
        }
    }
}

/// XML 1.0 §2.2 Char.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// XML 1.0 §2.3 S.
fn is_xml_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

#[cfg(test)]
mod tests;
