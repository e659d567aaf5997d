//! [`compose`] and [`closed`]: the union of several publications, each
//! top-level element copied with its start tag rewritten (see the module
//! doc of [`super`]).

use std::borrow::Cow;
use std::collections::BTreeSet;

use quick_xml::events::BytesStart;

use super::{is_xml_char, is_xml_space, Document, Element, Kind, NS_PIDF};

/// The XML declaration every composed document starts with.
const PROLOG: &[u8] = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
/// The tuple id of the document [`closed`] writes.
const CLOSED_TUPLE_ID: &str = "offline";

/// Writes into `out` (cleared first) one PIDF document for presentity `entity` (e.g. "sip:bob@example.test")
/// that composes the tuples/person/device/note elements of `docs` (several devices of one user publish
/// separately; RFC 3863 §4.1.1 / RFC 4479 composition by union, as Kamailio's presence_xml aggregation does).
/// Each copied element stays well-formed and namespace-correct on its own: its start tag carries the
/// xmlns declarations (and `xml:lang`) it inherited from its original root. Ids (of tuples, persons,
/// devices) that collide across documents are made unique. With `docs` empty, writes [`closed`].
///
/// Elements come out grouped as the schema orders them: all tuples, then all
/// notes, then the person, device and extension elements, each group in the
/// order of `docs`. Unknown elements in the PIDF namespace are left out.
/// Characters XML cannot carry are dropped from `entity`.
pub fn compose(entity: &str, docs: &[&Document], out: &mut Vec<u8>) {
    if docs.is_empty() {
        return closed(entity, out);
    }
    out.clear();
    write_root_start(entity, out);
    let mut taken: BTreeSet<Cow<'_, str>> = BTreeSet::new();
    let groups: [&[Kind]; 3] = [
        &[Kind::Tuple],
        &[Kind::Note],
        &[Kind::Person, Kind::Device, Kind::Extension],
    ];
    for group in groups {
        for doc in docs {
            for element in doc.elements.iter().filter(|e| group.contains(&e.kind)) {
                write_element(doc, element, &mut taken, out);
            }
        }
    }
    out.extend_from_slice(b"</presence>\n");
}

/// An offline document for `entity`: one tuple (stable id) with <status><basic>closed</basic></status>.
pub fn closed(entity: &str, out: &mut Vec<u8>) {
    out.clear();
    write_root_start(entity, out);
    out.extend_from_slice(b"<tuple id=\"");
    out.extend_from_slice(CLOSED_TUPLE_ID.as_bytes());
    out.extend_from_slice(b"\"><status><basic>closed</basic></status></tuple>\n</presence>\n");
}

fn write_root_start(entity: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(PROLOG);
    out.extend_from_slice(b"<presence xmlns=\"");
    out.extend_from_slice(NS_PIDF.as_bytes());
    out.extend_from_slice(b"\" entity=\"");
    write_escaped(entity, out);
    out.extend_from_slice(b"\">\n");
}

/// Copies one top-level element of `doc`, its start tag rewritten: its id
/// made unique against `taken`, and the namespace declarations and
/// `xml:lang` of the original root it does not set itself added.
fn write_element<'d>(
    doc: &'d Document,
    element: &'d Element,
    taken: &mut BTreeSet<Cow<'d, str>>,
    out: &mut Vec<u8>,
) {
    // Both spans were cut by `parse` from this body (the INVARIANT on
    // `Document::body`); a miss would be a bug, and skipping the element
    // keeps the output well-formed.
    let (Some(tag), Some(rest), Some(root)) = (
        doc.slice(element.tag),
        doc.slice(element.rest),
        doc.slice(doc.root),
    ) else {
        return;
    };
    let new_id = element.id.as_deref().and_then(|id| {
        if !taken.contains(id) {
            taken.insert(Cow::Borrowed(id));
            return None;
        }
        let mut n = 2u64;
        loop {
            let candidate = format!("{id}-{n}");
            if !taken.contains(candidate.as_str()) {
                taken.insert(Cow::Owned(candidate.clone()));
                return Some(candidate);
            }
            n += 1;
        }
    });
    let start = start_tag(tag);
    let own = |key: &str| start.attributes().flatten().any(|a| a.key.0 == key);
    out.push(b'<');
    out.extend_from_slice(start.name().0.as_bytes());
    // The attributes were checked by `parse`; `flatten` only drops what it
    // would have refused.
    for attr in start.attributes().flatten() {
        match (&new_id, attr.key.0) {
            (Some(id), "id") => {
                out.extend_from_slice(b" id=\"");
                write_escaped(id, out);
                out.push(b'"');
            }
            (_, key) => write_raw_attribute(key, &attr.value, out),
        }
    }
    let root = start_tag(root);
    let mut root_default = None;
    for attr in root.attributes().flatten() {
        let key = attr.key.0;
        if key == "xmlns" {
            root_default = Some(attr.value);
        } else if (key.starts_with("xmlns:") || key == "xml:lang") && !own(key) {
            write_raw_attribute(key, &attr.value, out);
        }
    }
    if !own("xmlns") {
        // The new root's default namespace is PIDF: an element that relied
        // on another default (or on none) must say so.
        match root_default.as_deref() {
            Some(NS_PIDF) => {}
            Some(ns) => write_raw_attribute("xmlns", ns, out),
            None => out.extend_from_slice(b" xmlns=\"\""),
        }
    }
    if element.empty {
        out.extend_from_slice(b"/>");
    } else {
        out.push(b'>');
        out.extend_from_slice(rest.as_bytes());
    }
    out.push(b'\n');
}

/// A start tag from its content (name and attributes).
fn start_tag(content: &str) -> BytesStart<'_> {
    let name_len = content.find(is_xml_space).unwrap_or(content.len());
    BytesStart::from_content(content, name_len)
}

/// ` key="value"` with the value as it was written (escaped), quoted with
/// `'` when it holds a `"` (a value read between `'` cannot also hold one).
fn write_raw_attribute(key: &str, raw: &str, out: &mut Vec<u8>) {
    let quote = if raw.contains('"') { b'\'' } else { b'"' };
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.push(quote);
    out.extend_from_slice(raw.as_bytes());
    out.push(quote);
}

/// Escapes `s` for text or an attribute value; drops what XML 1.0 cannot
/// carry at all.
fn write_escaped(s: &str, out: &mut Vec<u8>) {
    for c in s.chars() {
        match c {
            '&' => out.extend_from_slice(b"&amp;"),
            '<' => out.extend_from_slice(b"&lt;"),
            '>' => out.extend_from_slice(b"&gt;"),
            '"' => out.extend_from_slice(b"&quot;"),
            '\'' => out.extend_from_slice(b"&apos;"),
            c if is_xml_char(c) => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            _ => {}
        }
    }
}
