//! Feeds arbitrary bytes to the stream framer in reads whose sizes come from
//! the first bytes of the input, and checks what a connection relies on:
//! nothing panics; the frames delivered, laid end to end (a Ping as CRLF
//! CRLF, a Pong as CRLF, a Message as its bytes), are exactly a prefix of
//! the stream, so they never add up to more than was fed; only pending()
//! bytes and at most three keep-alive bytes are held besides; pending()
//! stays within the limits; every Message parses again; an error is final,
//! and its rejected head is the bytes right after the last frame.
//!
//! Input layout: byte 0 picks the limits (bits 0–1) and the parser's bare-LF
//! leniency (bit 2); bytes 1..=8 are read sizes (1–256, used in turn); the
//! rest is the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipedge::sip::{parse_stream, HeaderIndex, ParseConfig, Status};
use sipedge::transport::stream::{Frame, Framer, StreamLimits};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (sizes, stream) = rest.split_at(rest.len().min(8));
    let limits = match mode & 3 {
        0 | 3 => StreamLimits::default(),
        1 => StreamLimits {
            max_message: 600,
            max_header_block: 300,
        },
        _ => StreamLimits {
            max_message: 64,
            max_header_block: 32,
        },
    };
    let cfg = ParseConfig {
        allow_bare_lf: mode & 4 != 0,
        ..ParseConfig::default()
    };
    let mut framer = Framer::new(limits);
    let mut idx = HeaderIndex::new(cfg.clone());
    let mut check = HeaderIndex::new(cfg);
    // The delivered frames laid end to end.
    let mut out: Vec<u8> = Vec::new();
    let mut fed = 0;
    let mut turn = 0;
    while fed < stream.len() {
        let size = sizes
            .get(turn % sizes.len().max(1))
            .map_or(stream.len(), |&s| usize::from(s) + 1);
        turn += 1;
        let chunk = &stream[fed..stream.len().min(fed + size)];
        fed += chunk.len();
        let result = framer.handle_input(chunk, &mut idx, &mut |frame| match frame {
            Frame::Message(m) => {
                assert!(!m.is_empty());
                assert!(m.len() <= limits.max_message);
                match parse_stream(m, &mut check) {
                    Ok(Status::Complete(p)) => assert_eq!(p.len(), m.len()),
                    other => panic!("a delivered message does not parse again: {other:?}"),
                }
                out.extend_from_slice(m);
            }
            Frame::Ping => out.extend_from_slice(b"\r\n\r\n"),
            Frame::Pong => out.extend_from_slice(b"\r\n"),
        });
        assert!(out.len() <= fed, "frames add up to more than was fed");
        assert_eq!(&out[..], &stream[..out.len()], "frames are not the stream");
        match result {
            Ok(()) => {
                let pending = framer.pending();
                assert!(pending <= limits.max_message.max(limits.max_header_block));
                if framer.in_header_block() {
                    assert!(pending < limits.max_header_block);
                }
                let held = fed - out.len();
                assert!(
                    held >= pending && held - pending <= 3,
                    "held {held} bytes, pending {pending}"
                );
            }
            Err(e) => {
                assert!((400..=699).contains(&e.status()), "{e:?}");
                assert_eq!(framer.pending(), 0);
                if let Some(head) = framer.rejected_head() {
                    assert!(!head.is_empty() && head.len() <= limits.max_header_block);
                    assert_eq!(Some(head), stream.get(out.len()..out.len() + head.len()));
                }
                let again = framer
                    .handle_input(b"\r\n", &mut idx, &mut |_| panic!("a frame after an error"));
                assert_eq!(again, Err(e));
                return;
            }
        }
    }
});
