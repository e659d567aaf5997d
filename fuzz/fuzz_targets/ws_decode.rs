//! Feeds arbitrary bytes to the WebSocket server codec two ways: as frames
//! after a fixed valid handshake, cut in two reads at a point taken from the
//! first byte; and raw, as the handshake itself (in one read and cut in two).
//! Nothing may panic; delivered messages stay within `max_message`; the
//! codec holds no more than its limits allow; and `out` grows by no more
//! than the input (a pong is never longer than its ping, a Close answer
//! never longer than the Close) plus one Close frame or one HTTP response.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipedge::transport::ws::{WsLimits, WsServer, WsState};

/// Small limits, so that the fuzzer reaches them.
const LIMITS: WsLimits = WsLimits {
    max_frame: 512,
    max_message: 1_024,
    max_handshake: 512,
};

/// The longest frame header (RFC 6455 §5.2).
const MAX_FRAME_HEADER: usize = 14;

/// More than the 101 or any refusal the codec writes.
const MAX_HTTP_RESPONSE: usize = 512;

const HANDSHAKE: &[u8] = b"GET / HTTP/1.1\r\n\
    Host: sip-ws.example.com\r\n\
    Upgrade: websocket\r\n\
    Connection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Protocol: sip\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let (cut, body) = match data.split_first() {
        Some((&first, rest)) => (usize::from(first), rest),
        None => (0, data),
    };
    let cut = cut.min(body.len());

    // As frames after a valid handshake.
    let mut ws = WsServer::new(LIMITS);
    let mut out = Vec::new();
    ws.handle_input(HANDSHAKE, &mut out, &mut |_| panic!("no frames yet"))
        .expect("the fixed handshake is valid");
    assert_eq!(ws.state(), WsState::Open);
    assert!(out.starts_with(b"HTTP/1.1 101 "));
    out.clear();
    let (first, second) = body.split_at(cut);
    feed(&mut ws, &[first, second], &mut out);
    assert!(out.len() <= body.len() + 4, "out grew past the input");

    // Raw, as the handshake (and whatever frames follow its end).
    let (head, tail) = data.split_at(cut);
    for reads in [&[data][..], &[head, tail][..]] {
        let mut ws = WsServer::new(LIMITS);
        let mut out = Vec::new();
        feed(&mut ws, reads, &mut out);
        assert!(
            out.len() <= MAX_HTTP_RESPONSE + data.len(),
            "out grew past the input"
        );
        if ws.state() == WsState::Handshake {
            assert!(out.is_empty());
            assert!(data.len() < LIMITS.max_handshake);
        }
    }
});

/// Feeds each read in turn, checking the bounds after each.
fn feed(ws: &mut WsServer, reads: &[&[u8]], out: &mut Vec<u8>) {
    let bound = LIMITS
        .max_handshake
        .max(LIMITS.max_frame + MAX_FRAME_HEADER)
        + LIMITS.max_message;
    for read in reads {
        let before = ws.state();
        let result = ws.handle_input(read, out, &mut |message| {
            assert!(
                message.len() <= LIMITS.max_message,
                "message over max_message"
            );
        });
        match result {
            Ok(()) if before == WsState::Closed => assert_eq!(ws.state(), WsState::Closed),
            Ok(()) => {}
            Err(error) => {
                assert_eq!(ws.state(), WsState::Closed);
                assert!(error.close_code().is_some() != error.http_status().is_some());
                assert!(!out.is_empty() || before == WsState::Closing);
            }
        }
        assert!(ws.buffered() <= bound, "internal buffers over the limits");
    }
}
