//! The parser behind [`Document::parse`]: one pass of quick-xml's
//! namespace-resolving pull reader, checking the limits and PIDF's rules and
//! gathering the summary as it goes.

use quick_xml::events::{BytesDecl, BytesRef, BytesStart, Event};
use quick_xml::name::{Namespace, PrefixDeclaration, ResolveResult};
use quick_xml::reader::NsReader;
use quick_xml::XmlVersion;

use super::{
    is_xml_char, is_xml_space, Basic, Document, Element, Kind, PidfError, Span, Status,
    MAX_ACTIVITIES, MAX_ACTIVITY_LEN, MAX_DEPTH, MAX_ELEMENTS, MAX_NOTE, MAX_ROOT_TAG,
    NS_DATA_MODEL, NS_PIDF, NS_RPID, NS_RPID_DRAFTS,
};

/// The namespaces the summary and composition care about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ns {
    /// [`NS_DATA_MODEL`].
    DataModel,
    /// Any other, or none.
    Other,
    /// [`NS_PIDF`].
    Pidf,
    /// [`NS_RPID`] or one of its drafts'.
    Rpid,
}

/// What an open element means to the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// `<activities>` (RPID or a draft's): children name activities.
    Activities,
    /// A draft's `<activity>text</activity>`.
    ActivityText,
    /// `<basic>` of a tuple's status.
    Basic,
    /// The first note.
    Note,
    /// Anything else.
    Other,
    /// `<presence>`.
    Root,
    /// The `<status>` of a top-level tuple.
    Status,
    /// A top-level `<tuple>`.
    Tuple,
}

/// A plausible XML name (a QName with at most one colon, not at an end):
/// rejects what quick-xml lets through as a name but no XML parser would
/// (quotes, `=`, `&`, `<`, …), so that a copied start tag parses anywhere.
fn is_name(name: &str) -> bool {
    let mut parts = name.split(':');
    let ok = |part: &str| {
        let mut chars = part.chars();
        chars.next().is_some_and(|c| {
            (c.is_ascii_alphabetic() || c == '_' || !c.is_ascii())
                && chars.all(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') || !c.is_ascii()
                })
        })
    };
    match (parts.next(), parts.next(), parts.next()) {
        (Some(local), None, _) => ok(local),
        (Some(prefix), Some(local), None) => ok(prefix) && ok(local),
        _ => false,
    }
}

/// The parse in progress: one pass of quick-xml's namespace-resolving reader.
pub(super) struct Parser<'a> {
    text: &'a str,
    reader: NsReader<&'a [u8]>,
    /// Open elements; `frames[..depth]` are theirs.
    depth: usize,
    frames: [Frame; MAX_DEPTH],
    /// Any event other than whitespace seen yet (the XML declaration must
    /// come first).
    markup_seen: bool,
    root: Option<Span>,
    root_closed: bool,
    elements: Vec<Element>,
    /// The top-level element being read.
    pending: Option<Element>,
    /// The top-level tuple being read has a `<status>`, and that status a child.
    tuple_status: bool,
    tuple_status_child: bool,
    /// Text of the open Basic, ActivityText or Note (at most [`MAX_NOTE`] bytes).
    text_buf: String,
    basic: Option<Basic>,
    activities: Vec<String>,
    note: Option<String>,
}

impl<'a> Parser<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        let mut reader = NsReader::from_str(text);
        let config = reader.config_mut();
        config.check_comments = true;
        config.check_end_names = true;
        config.expand_empty_elements = false;
        config.allow_dangling_amp = false;
        config.allow_unmatched_ends = false;
        config.trim_text(false);
        Self {
            text,
            reader,
            depth: 0,
            frames: [Frame::Other; MAX_DEPTH],
            markup_seen: false,
            root: None,
            root_closed: false,
            elements: Vec::new(),
            pending: None,
            tuple_status: false,
            tuple_status_child: false,
            text_buf: String::new(),
            basic: None,
            activities: Vec::new(),
            note: None,
        }
    }

    pub(super) fn run(mut self) -> Result<Document, PidfError> {
        loop {
            let before = self.position()?;
            let event = self.reader.read_event().map_err(|_| PidfError::Malformed)?;
            let after = self.position()?;
            let whitespace = matches!(&event, Event::Text(t) if t.chars().all(is_xml_space));
            match event {
                Event::Start(e) => self.open(&e, false, before, after)?,
                Event::Empty(e) => {
                    self.open(&e, true, before, after)?;
                    self.close(after)?;
                }
                Event::End(_) => self.close(after)?,
                Event::Text(t) => {
                    if self.depth == 0 && !whitespace {
                        return Err(PidfError::Malformed);
                    }
                    self.capture(&t);
                }
                Event::CData(t) => {
                    if self.depth == 0 {
                        return Err(PidfError::Malformed);
                    }
                    self.capture(&t);
                }
                Event::GeneralRef(r) => {
                    if self.depth == 0 {
                        return Err(PidfError::Malformed);
                    }
                    let c = resolve_reference(&r)?;
                    self.capture(c.encode_utf8(&mut [0u8; 4]));
                }
                Event::Decl(d) => {
                    if self.markup_seen {
                        return Err(PidfError::Malformed);
                    }
                    self.check_decl(&d)?;
                }
                Event::Comment(_) | Event::PI(_) => {}
                Event::DocType(_) => return Err(PidfError::Malformed),
                Event::Eof => break,
            }
            self.markup_seen |= !whitespace;
        }
        let (Some(root), true) = (self.root, self.root_closed) else {
            return Err(PidfError::Malformed);
        };
        let basic = self.basic;
        // Kept for as long as the publication lives: no slack.
        self.elements.shrink_to_fit();
        self.activities.shrink_to_fit();
        Ok(Document {
            body: self.text.into(),
            root,
            elements: self.elements,
            status: Status {
                open: basic == Some(Basic::Open),
                activities: self.activities,
                note: self.note,
            },
            basic,
        })
    }

    fn position(&self) -> Result<usize, PidfError> {
        usize::try_from(self.reader.buffer_position()).map_err(|_| PidfError::Malformed)
    }

    /// The version must be 1.0; an encoding other than UTF-8 (or its subset
    /// US-ASCII) is believed only of an all-ASCII body, which reads the same
    /// in every ASCII-compatible encoding.
    fn check_decl(&self, decl: &BytesDecl<'_>) -> Result<(), PidfError> {
        if decl.version().map_err(|_| PidfError::Malformed)? != "1.0" {
            return Err(PidfError::Malformed);
        }
        match decl.encoding() {
            None => Ok(()),
            Some(Err(_)) => Err(PidfError::Malformed),
            Some(Ok(enc)) => {
                let utf8 = ["UTF-8", "UTF8", "US-ASCII", "ASCII"]
                    .iter()
                    .any(|e| enc.eq_ignore_ascii_case(e));
                if utf8 || self.text.is_ascii() {
                    Ok(())
                } else {
                    Err(PidfError::Malformed)
                }
            }
        }
    }

    fn open(
        &mut self,
        e: &BytesStart<'_>,
        empty: bool,
        before: usize,
        after: usize,
    ) -> Result<(), PidfError> {
        if self.root_closed {
            return Err(PidfError::Malformed);
        }
        if self.depth >= MAX_DEPTH {
            return Err(PidfError::TooDeep);
        }
        let name = e.name().0;
        if !is_name(name) {
            return Err(PidfError::Malformed);
        }
        let id = self.check_attributes(e)?;
        let (ns, local) = match self.reader.resolver().resolve_element(e.name()) {
            (ResolveResult::Bound(Namespace(ns)), local) => (Ns::of(ns), local.into_inner()),
            (ResolveResult::Unbound, local) => (Ns::Other, local.into_inner()),
            (ResolveResult::Unknown(_), _) => return Err(PidfError::Malformed),
        };
        // The start tag's content: after `<`, as long as quick-xml's event.
        let tag_start = before.checked_add(1).ok_or(PidfError::Malformed)?;
        let tag_end = tag_start.checked_add(e.len()).ok_or(PidfError::Malformed)?;
        if self.text.get(before..tag_start) != Some("<")
            || self.text.get(tag_start..tag_end) != Some(&**e)
        {
            return Err(PidfError::Malformed);
        }
        let tag = span(tag_start, tag_end)?;
        let frame = if self.depth == 0 {
            if !(ns == Ns::Pidf && local == "presence") {
                return Err(PidfError::NotPidf);
            }
            if e.len() > MAX_ROOT_TAG {
                return Err(PidfError::TooLarge);
            }
            self.root = Some(tag);
            Frame::Root
        } else {
            if self.depth == 1 {
                if self.elements.len() >= MAX_ELEMENTS {
                    return Err(PidfError::TooMany);
                }
                let kind = match (ns, local) {
                    (Ns::Pidf, "tuple") => Kind::Tuple,
                    (Ns::Pidf, "note") => Kind::Note,
                    (Ns::Pidf, _) => Kind::UnknownPidf,
                    (Ns::DataModel, "person") => Kind::Person,
                    (Ns::DataModel, "device") => Kind::Device,
                    _ => Kind::Extension,
                };
                if kind == Kind::Tuple && id.as_deref().is_none_or(str::is_empty) {
                    return Err(PidfError::Malformed);
                }
                self.tuple_status = false;
                self.tuple_status_child = false;
                let after_tag = span(after, after)?;
                self.pending = Some(Element {
                    kind,
                    tag,
                    rest: after_tag,
                    empty,
                    id: id.map(String::into_boxed_str),
                });
                if kind == Kind::Tuple {
                    self.push_frame(Frame::Tuple);
                    return Ok(());
                }
            }
            self.classify(ns, local)
        };
        self.push_frame(frame);
        Ok(())
    }

    /// What a (non-root, non-tuple) element means to the summary, given its parent.
    fn classify(&mut self, ns: Ns, local: &str) -> Frame {
        let (pidf, rpid) = (ns == Ns::Pidf, ns == Ns::Rpid);
        let parent = self
            .depth
            .checked_sub(1)
            .and_then(|i| self.frames.get(i))
            .copied()
            .unwrap_or(Frame::Other);
        match parent {
            Frame::Tuple if pidf && local == "status" => {
                self.tuple_status = true;
                return Frame::Status;
            }
            Frame::Status => {
                self.tuple_status_child = true;
                if pidf && local == "basic" {
                    self.text_buf.clear();
                    return Frame::Basic;
                }
            }
            Frame::Activities if rpid && local == "activity" => {
                self.text_buf.clear();
                return Frame::ActivityText;
            }
            Frame::Activities if rpid && local != "note" => {
                push_activity(&mut self.activities, local);
                return Frame::Other;
            }
            _ => {}
        }
        let note = local == "note" && ns != Ns::Other;
        if note && self.note.is_none() {
            self.text_buf.clear();
            Frame::Note
        } else if rpid && local == "activities" {
            Frame::Activities
        } else {
            Frame::Other
        }
    }

    /// Checks every attribute (well-formed, no duplicate, a plausible name,
    /// no `<` in the value, only known entities, only XML characters, a
    /// declared prefix, no prefix bound to "") and returns the unprefixed
    /// `id`, unescaped.
    fn check_attributes(&self, e: &BytesStart<'_>) -> Result<Option<String>, PidfError> {
        let mut id = None;
        for attr in e.attributes() {
            let attr = attr.map_err(|_| PidfError::Malformed)?;
            let key = attr.key.0;
            if !is_name(key) || attr.value.contains('<') {
                return Err(PidfError::Malformed);
            }
            let value = attr
                .normalized_value(XmlVersion::Explicit1_0)
                .map_err(|_| PidfError::Malformed)?;
            if !value.chars().all(is_xml_char) {
                return Err(PidfError::Malformed);
            }
            match attr.key.as_namespace_binding() {
                // Namespaces in XML 1.0 §5: a prefix cannot be undeclared.
                Some(PrefixDeclaration::Named(_)) if attr.value.is_empty() => {
                    return Err(PidfError::Malformed);
                }
                Some(_) => {}
                None if attr.key.prefix().is_some() => {
                    let resolver = self.reader.resolver();
                    if let (ResolveResult::Unknown(_), _) = resolver.resolve_attribute(attr.key) {
                        return Err(PidfError::Malformed);
                    }
                }
                None if key == "id" => id = Some(value.into_owned()),
                None => {}
            }
        }
        Ok(id)
    }

    fn push_frame(&mut self, frame: Frame) {
        // `open` checked depth < MAX_DEPTH.
        if let Some(slot) = self.frames.get_mut(self.depth) {
            *slot = frame;
        }
        self.depth += 1;
    }

    fn close(&mut self, after: usize) -> Result<(), PidfError> {
        self.depth = self.depth.checked_sub(1).ok_or(PidfError::Malformed)?;
        let frame = self.frames.get(self.depth).copied().unwrap_or(Frame::Other);
        match frame {
            Frame::Basic => {
                let value = self.text_buf.trim_matches(is_xml_space);
                let basic = if value.eq_ignore_ascii_case("open") {
                    Basic::Open
                } else if value.eq_ignore_ascii_case("closed") {
                    Basic::Closed
                } else {
                    return Err(PidfError::Malformed);
                };
                if self.basic != Some(Basic::Open) {
                    self.basic = Some(basic);
                }
            }
            Frame::ActivityText => {
                let value = self
                    .text_buf
                    .trim_matches(is_xml_space)
                    .to_ascii_lowercase();
                push_activity(&mut self.activities, &value);
            }
            Frame::Note => {
                let value = self.text_buf.trim_matches(is_xml_space);
                if !value.is_empty() {
                    self.note = Some(value.to_owned());
                }
            }
            Frame::Tuple => {
                if !(self.tuple_status && self.tuple_status_child) {
                    return Err(PidfError::Malformed);
                }
            }
            Frame::Root => self.root_closed = true,
            Frame::Activities | Frame::Other | Frame::Status => {}
        }
        if self.depth == 1 {
            if let Some(mut element) = self.pending.take() {
                element.rest.end = span(after, after)?.end;
                self.elements.push(element);
            }
        }
        Ok(())
    }

    /// Appends text to the open Basic, ActivityText or Note, up to [`MAX_NOTE`] bytes.
    fn capture(&mut self, s: &str) {
        let top = self
            .depth
            .checked_sub(1)
            .and_then(|i| self.frames.get(i))
            .copied();
        if !matches!(top, Some(Frame::Basic | Frame::ActivityText | Frame::Note)) {
            return;
        }
        let mut room = MAX_NOTE.saturating_sub(self.text_buf.len()).min(s.len());
        while !s.is_char_boundary(room) {
            room -= 1;
        }
        if let Some(head) = s.get(..room) {
            self.text_buf.push_str(head);
        }
    }
}

/// The character a reference stands for: one of the five predefined
/// entities or a character reference to an XML character. No other entity
/// can exist, as no DTD is accepted.
fn resolve_reference(r: &BytesRef<'_>) -> Result<char, PidfError> {
    let c = match r.resolve_char_ref() {
        Ok(Some(c)) => c,
        Ok(None) => match quick_xml::escape::resolve_predefined_entity(r) {
            Some(s) => s.chars().next().ok_or(PidfError::Malformed)?,
            None => return Err(PidfError::Malformed),
        },
        Err(_) => return Err(PidfError::Malformed),
    };
    if is_xml_char(c) {
        Ok(c)
    } else {
        Err(PidfError::Malformed)
    }
}

fn push_activity(activities: &mut Vec<String>, name: &str) {
    if name.is_empty()
        || name.len() > MAX_ACTIVITY_LEN
        || activities.len() >= MAX_ACTIVITIES
        || activities.iter().any(|a| a == name)
    {
        return;
    }
    activities.push(name.to_owned());
}

impl Ns {
    fn of(ns: &str) -> Self {
        match ns {
            NS_PIDF => Self::Pidf,
            NS_DATA_MODEL => Self::DataModel,
            NS_RPID => Self::Rpid,
            ns if NS_RPID_DRAFTS.contains(&ns) => Self::Rpid,
            _ => Self::Other,
        }
    }
}

fn span(start: usize, end: usize) -> Result<Span, PidfError> {
    Ok(Span {
        start: u32::try_from(start).map_err(|_| PidfError::Malformed)?,
        end: u32::try_from(end).map_err(|_| PidfError::Malformed)?,
    })
}
