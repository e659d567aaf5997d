//! PLACEHOLDER until the PIDF module lands (replaced by the real one).
#![allow(missing_docs)]

pub const MAX_BODY: usize = 32 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PidfError {
    #[error("too large")]
    TooLarge,
    #[error("malformed")]
    Malformed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basic {
    Open,
    Closed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    bytes: Box<[u8]>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Status {
    pub open: bool,
    pub activities: Vec<String>,
    pub note: Option<String>,
}

impl Document {
    pub fn parse(body: &[u8]) -> Result<Self, PidfError> {
        if body.len() > MAX_BODY {
            return Err(PidfError::TooLarge);
        }
        if memchr::memmem::find(body, b"<presence").is_none()
            && memchr::memmem::find(body, b":presence").is_none()
        {
            return Err(PidfError::Malformed);
        }
        Ok(Self { bytes: body.into() })
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
    pub fn status(&self) -> Status {
        Status {
            open: memchr::memmem::find(&self.bytes, b">open<").is_some(),
            ..Status::default()
        }
    }
    pub fn heap_size(&self) -> usize {
        self.bytes.len()
    }
}

pub fn compose(entity: &str, docs: &[&Document], out: &mut Vec<u8>) {
    out.clear();
    match docs.first() {
        Some(d) => out.extend_from_slice(d.as_bytes()),
        None => closed(entity, out),
    }
}

pub fn closed(entity: &str, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"");
    out.extend_from_slice(entity.as_bytes());
    out.extend_from_slice(
        b"\"><tuple id=\"offline\"><status><basic>closed</basic></status></tuple></presence>\n",
    );
}
