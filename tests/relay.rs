//! The stateless relay end to end: the real binary on 127.0.0.1, scripted
//! UAC and UAS on UDP sockets, under each I/O driver; and a SIPp UAC/UAS
//! pair through it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{drivers_with_xdp, have_peer, Msg, Proxy, TempDir, Ua};
use sipedge::sip::HeaderName;

fn relay(driver: &str, upstream: SocketAddr, extra: &[&str]) -> Proxy {
    let up = format!("sip:{upstream}");
    let mut args = vec!["--stateless", "--io", driver, "--upstream", up.as_str()];
    if !extra.contains(&"--shards") {
        args.extend_from_slice(&["--shards", "1"]);
    }
    args.extend_from_slice(extra);
    Proxy::start(&args)
}

fn invite(uac: &Ua, uas: &Ua, branch: &str, call: &str, max_forwards: u8) -> String {
    format!(
        "INVITE sip:uas@{uas} SIP/2.0\r\nVia: SIP/2.0/UDP {uac};branch={branch};rport\r\n\
Max-Forwards: {max_forwards}\r\nTo: <sip:uas@{uas}>\r\nFrom: <sip:uac@{uac}>;tag=uac1\r\nCall-ID: {call}\r\n\
CSeq: 1 INVITE\r\nContact: <sip:uac@{uac}>\r\nContent-Type: application/sdp\r\nContent-Length: 10\r\n\r\nv=0\r\no=x\r\n",
        uas = uas.addr,
        uac = uac.addr
    )
}

/// A response from the UAS to a request it received (Vias copied, To tag added).
fn answer(req: &Msg, code: u16, reason: &str, tag: &str) -> String {
    let mut s = format!("SIP/2.0 {code} {reason}\r\n");
    for v in req.values(HeaderName::Via) {
        s.push_str(&format!("Via: {v}\r\n"));
    }
    let to = req.header(HeaderName::To).unwrap();
    let to = if to.contains("tag=") {
        to
    } else {
        format!("{to};tag={tag}")
    };
    s.push_str(&format!(
        "To: {to}\r\nFrom: {}\r\nCall-ID: {}\r\nCSeq: {}\r\nContent-Length: 0\r\n\r\n",
        req.header(HeaderName::From).unwrap(),
        req.header(HeaderName::CallId).unwrap(),
        req.header(HeaderName::CSeq).unwrap()
    ));
    s
}

fn in_dialog(method: &str, uac: &Ua, uas: &Ua, branch: &str, cseq: u32, call: &str) -> String {
    format!(
        "{method} sip:uas@{uas} SIP/2.0\r\nVia: SIP/2.0/UDP {uac};branch={branch};rport\r\nMax-Forwards: 70\r\n\
To: <sip:uas@{uas}>;tag=uas1\r\nFrom: <sip:uac@{uac}>;tag=uac1\r\nCall-ID: {call}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
        uas = uas.addr,
        uac = uac.addr
    )
}

#[test]
fn answers_options_addressed_to_itself() {
    for d in drivers_with_xdp() {
        common::clients_for(d);
        let uas = Ua::new();
        let p = relay(d, uas.addr, &[]);
        let lb = Ua::new();
        lb.send(
            &format!(
                "OPTIONS sip:{} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKopt1\r\nMax-Forwards: 70\r\nTo: <sip:{}>\r\nFrom: <sip:lb@x>;tag=lb\r\nCall-ID: opt1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
                p.addr, lb.addr, p.addr
            ),
            p.addr,
        );
        let (r, from) = lb.recv();
        let r = Msg::new(r);
        assert_eq!(r.status(), Some(200), "{d}");
        assert_eq!(from, p.addr, "answered from the public address");
        assert!(r.header(HeaderName::Allow).unwrap().contains("INVITE"));
        assert!(r.text.contains("\r\nSupported:"));
        uas.expect_silence(Duration::from_millis(100));
    }
}

/// `[flood]` applies to the relay too: a source probing at 10× its rate
/// (1,000 OPTIONS in 2 s against 50/s, burst 100) gets about its burst
/// answered and is then banned, counted as dropped; another source is
/// still answered.
#[test]
fn flood_limits_apply_to_the_relay() {
    for d in drivers_with_xdp() {
        common::clients_for(d);
        let uas = Ua::new();
        let dir = TempDir::new("relay-flood");
        let cfg = dir.write(
            "sipedge.toml",
            "[flood]\nrate = 50\nburst = 100\nban = 10\n",
        );
        let mut p = relay(d, uas.addr, &["--config", &cfg]);
        let edge = p.addr;
        let probe = |ua: &Ua, n: u32| {
            format!(
                "OPTIONS sip:{edge} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKfl{n}\r\n\
Max-Forwards: 70\r\nTo: <sip:{edge}>\r\nFrom: <sip:f@x.test>;tag=f{n}\r\nCall-ID: fl{n}\r\n\
CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
                ua.addr
            )
        };
        let flooder = Ua::on("127.0.0.2");
        let start = Instant::now();
        for n in 0..1000u32 {
            flooder.send(&probe(&flooder, n), edge);
            if n % 50 == 49 {
                // 50 every 100 ms: 500/s.
                let next = start + Duration::from_millis(u64::from(n + 1) * 2);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        }
        let answered = flooder.collect(Duration::from_millis(500)).len();
        let other = Ua::on("127.0.0.3");
        other.send(&probe(&other, 5000), edge);
        let ok = other.expect_response(200, "OPTIONS");
        assert_eq!(ok.status(), Some(200));
        p.terminate();
        let dropped = p.counter("sipedge_flood_dropped_total");
        assert!(
            (50..=250).contains(&answered),
            "{d}: {answered} of 1000 probes answered: {:#?}",
            p.log
        );
        assert!(
            dropped + answered as u64 >= 1000 - 10,
            "{d}: answered {answered}, dropped {dropped}"
        );
        uas.expect_silence(Duration::from_millis(50));
    }
}

#[test]
fn relays_a_whole_call_with_ack_and_bye() {
    for d in drivers_with_xdp() {
        common::clients_for(d);
        let (uac, uas) = (Ua::new(), Ua::new());
        let p = relay(d, uas.addr, &[]);
        uac.send(&invite(&uac, &uas, "z9hG4bKinv1", "call-1", 70), p.addr);
        let (req, from) = uas.recv();
        let req = Msg::new(req);
        assert_eq!(
            from, p.addr,
            "{d}: one shard forwards from its public socket"
        );
        assert_eq!(req.method(), "INVITE");
        assert_eq!(req.request_uri(), format!("sip:uas@{}", uas.addr));
        assert_eq!(req.max_forwards(), Some(69));
        let vias = req.values(HeaderName::Via);
        assert_eq!(vias.len(), 2);
        assert!(
            vias[0].starts_with(&format!("SIP/2.0/UDP {};branch=z9hG4bKse", p.addr)),
            "{vias:?}"
        );
        assert_eq!(
            vias[1],
            format!(
                "SIP/2.0/UDP {};branch=z9hG4bKinv1;received={};rport={}",
                uac.addr,
                uac.addr.ip(),
                uac.addr.port()
            ),
            "RFC 3581: received and rport filled in"
        );
        assert!(req.text.ends_with("v=0\r\no=x\r\n"), "body intact");

        for (code, reason) in [(180, "Ringing"), (200, "OK")] {
            uas.send(&answer(&req, code, reason, "uas1"), p.addr);
            let (r, _) = uac.recv();
            let r = Msg::new(r);
            assert_eq!(r.status(), Some(code));
            assert_eq!(r.values(HeaderName::Via).len(), 1, "our Via removed");
            assert_eq!(r.top_branch(), "z9hG4bKinv1");
        }
        uac.send(
            &in_dialog("ACK", &uac, &uas, "z9hG4bKack1", 1, "call-1"),
            p.addr,
        );
        let (ack, _) = uas.recv();
        assert_eq!(Msg::new(ack).method(), "ACK");
        uac.send(
            &in_dialog("BYE", &uac, &uas, "z9hG4bKbye1", 2, "call-1"),
            p.addr,
        );
        let (bye, _) = uas.recv();
        let bye = Msg::new(bye);
        assert_eq!(bye.method(), "BYE");
        uas.send(&answer(&bye, 200, "OK", "uas1"), p.addr);
        let (ok, _) = uac.recv();
        let ok = Msg::new(ok);
        assert_eq!((ok.status(), ok.method()), (Some(200), "BYE".to_owned()));
    }
}

#[test]
fn retransmissions_and_cancel_take_the_same_branch() {
    for d in drivers_with_xdp() {
        common::clients_for(d);
        let (uac, uas) = (Ua::new(), Ua::new());
        let p = relay(d, uas.addr, &[]);
        let inv = invite(&uac, &uas, "z9hG4bKinv2", "call-2", 70);
        uac.send(&inv, p.addr);
        let first = Msg::new(uas.recv().0);
        uac.send(&inv, p.addr);
        let again = Msg::new(uas.recv().0);
        assert_eq!(
            first.top_branch(),
            again.top_branch(),
            "{d}: retransmission"
        );
        assert_eq!(first.text, again.text);

        let cancel = format!(
            "CANCEL sip:uas@{uas} SIP/2.0\r\nVia: SIP/2.0/UDP {uac};branch=z9hG4bKinv2;rport\r\nMax-Forwards: 70\r\n\
To: <sip:uas@{uas}>\r\nFrom: <sip:uac@{uac}>;tag=uac1\r\nCall-ID: call-2\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n",
            uas = uas.addr,
            uac = uac.addr
        );
        uac.send(&cancel, p.addr);
        let c = Msg::new(uas.recv().0);
        assert_eq!(c.method(), "CANCEL");
        assert_eq!(
            c.top_branch(),
            first.top_branch(),
            "CANCEL matches the INVITE downstream"
        );
        uas.send(&answer(&c, 200, "OK", "uas2"), p.addr);
        let r = Msg::new(uac.recv().0);
        assert_eq!((r.status(), r.method()), (Some(200), "CANCEL".to_owned()));
        uas.send(&answer(&first, 487, "Request Terminated", "uas2"), p.addr);
        let r = Msg::new(uac.recv().0);
        assert_eq!(r.status(), Some(487));
        // The ACK of the 487 takes the INVITE's branch too.
        let ack = format!(
            "ACK sip:uas@{uas} SIP/2.0\r\nVia: SIP/2.0/UDP {uac};branch=z9hG4bKinv2;rport\r\nMax-Forwards: 70\r\n\
To: <sip:uas@{uas}>;tag=uas2\r\nFrom: <sip:uac@{uac}>;tag=uac1\r\nCall-ID: call-2\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
            uas = uas.addr,
            uac = uac.addr
        );
        uac.send(&ack, p.addr);
        let a = Msg::new(uas.recv().0);
        assert_eq!(a.top_branch(), first.top_branch());
    }
}

#[test]
fn max_forwards_zero_gets_483() {
    for d in drivers_with_xdp() {
        common::clients_for(d);
        let (uac, uas) = (Ua::new(), Ua::new());
        let p = relay(d, uas.addr, &[]);
        uac.send(&invite(&uac, &uas, "z9hG4bKmf0", "call-3", 0), p.addr);
        let r = Msg::new(uac.recv().0);
        assert_eq!(r.status(), Some(483), "{d}");
        assert!(r.to_tag().is_some());
        uas.expect_silence(Duration::from_millis(100));
    }
}

#[test]
fn drops_responses_that_are_not_ours_and_survives_garbage() {
    for d in drivers_with_xdp() {
        common::clients_for(d);
        let (uac, uas) = (Ua::new(), Ua::new());
        let p = relay(d, uas.addr, &[]);
        // A response whose top Via is somebody else's: dropped.
        uas.send(
            &format!(
                "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.9:5060;branch=z9hG4bKforeign\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKx\r\n\
To: <sip:a@b>;tag=1\r\nFrom: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
                uac.addr
            ),
            p.addr,
        );
        uac.expect_silence(Duration::from_millis(150));

        // Malformed requests: answered precisely where a response can be routed.
        let bad_cseq = invite(&uac, &uas, "z9hG4bKbad1", "call-4", 70)
            .replace("CSeq: 1 INVITE", "CSeq: 1 BYE");
        uac.send(&bad_cseq, p.addr);
        let r = Msg::new(uac.recv().0);
        assert_eq!(r.status(), Some(400), "{d}");
        assert!(r
            .text
            .starts_with("SIP/2.0 400 Bad Request (CSeq Method Does Not Match)"));
        let bad_version = invite(&uac, &uas, "z9hG4bKbad2", "call-5", 70)
            .replace(" SIP/2.0\r\nVia", " SIP/7.0\r\nVia");
        uac.send(&bad_version, p.addr);
        assert_eq!(Msg::new(uac.recv().0).status(), Some(505));
        let bad_scheme = invite(&uac, &uas, "z9hG4bKbad3", "call-6", 70).replacen(
            "INVITE sip:uas@",
            "INVITE http://uas@",
            1,
        );
        uac.send(&bad_scheme, p.addr);
        assert_eq!(Msg::new(uac.recv().0).status(), Some(416));
        // Garbage with no way to answer: dropped, the shard keeps serving.
        for junk in [
            vec![0u8; 0],
            vec![0xffu8; 1200],
            b"\x16\x03\x01\x02\x00".to_vec(),
            vec![b'A'; 60_000],
            b"INVITE\r\n\r\n".to_vec(),
        ] {
            uac.sock.send_to(&junk, p.addr).unwrap();
        }
        uac.expect_silence(Duration::from_millis(150));
        uac.send(&invite(&uac, &uas, "z9hG4bKafter", "call-7", 70), p.addr);
        assert_eq!(Msg::new(uas.recv().0).method(), "INVITE");
        uas.expect_silence(Duration::from_millis(50));
    }
}

#[test]
fn two_shards_relay_and_responses_find_their_shard() {
    for d in drivers_with_xdp() {
        common::clients_for(d);
        let uas = Ua::new();
        let p = relay(d, uas.addr, &["--shards", "2"]);
        // Several client flows: the kernel spreads them over both public sockets.
        for i in 0..8 {
            let uac = Ua::new();
            uac.send(
                &invite(
                    &uac,
                    &uas,
                    &format!("z9hG4bKs{i}"),
                    &format!("call-s{i}"),
                    70,
                ),
                p.addr,
            );
            let (req, from) = uas.recv();
            let req = Msg::new(req);
            let via = &req.values(HeaderName::Via)[0];
            assert!(
                via.contains(&from.to_string()),
                "{d}: our Via names the socket it left from: {via} vs {from}"
            );
            uas.send(&answer(&req, 200, "OK", "t"), from);
            let r = Msg::new(uac.recv().0);
            assert_eq!(r.status(), Some(200));
        }
    }
}

#[test]
fn sigterm_stops_within_a_second() {
    for d in drivers_with_xdp() {
        common::clients_for(d);
        let uas = Ua::new();
        let mut p = relay(d, uas.addr, &["--shards", "2"]);
        let (ok, took) = p.terminate();
        assert!(ok, "{d}: clean exit: {:#?}", p.log);
        assert!(took < Duration::from_secs(1), "{d}: took {took:?}");
        assert!(p.log.iter().any(|l| l.contains("stopped")));
    }
}

#[test]
fn clear_errors_for_bad_config_and_busy_port() {
    let out = Command::new(env!("CARGO_BIN_EXE_sipedge"))
        .args(["run", "--listen", "sctp:127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown transport"), "{err}");
    assert!(!err.contains("panicked"));
    // TLS without a certificate is refused at start, with the flag to use.
    let out = Command::new(env!("CARGO_BIN_EXE_sipedge"))
        .args(["run", "--listen", "tls:127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tls-cert"), "{err}");
    assert!(!err.contains("panicked"));
    // A port held without SO_REUSEPORT is in use.
    let holder = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let busy = format!("udp:{}", holder.local_addr().unwrap());
    let out = Command::new(env!("CARGO_BIN_EXE_sipedge"))
        .args(["run", "--listen", &busy, "--io", "mio"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot bind") && err.contains("in use"),
        "{err}"
    );
    assert!(!err.contains("panicked"));
}

/// SIPp's built-in UAC and UAS, through the relay: 200 calls must all complete.
#[test]
fn sipp_uac_and_uas_through_the_relay() {
    if !have_peer("sipp") {
        return;
    }
    for d in drivers_with_xdp() {
        common::clients_for(d);
        let port = {
            let s = Ua::new();
            s.addr.port()
        };
        let (mut sipp_uas, ip) = common::peer_command(d, "sipp");
        let uas_addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        let mut uas = sipp_uas
            .args(["-sn", "uas", "-i", ip, "-p", &port.to_string(), "-nostdin"])
            .args(["-timeout", "30s"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let p = relay(d, uas_addr, &[]);
        let (mut sipp_uac, _) = common::peer_command(d, "sipp");
        let out = sipp_uac
            .args([
                "-sn", "uac", "-i", ip, "-p", "0", "-m", "200", "-r", "100", "-l", "50",
            ])
            .args([
                "-timeout",
                "30s",
                "-timeout_error",
                "-nostdin",
                "-recv_timeout",
                "5000",
            ])
            .arg(p.addr.to_string())
            .output()
            .unwrap();
        let _ = Command::new("kill")
            .args(["-TERM", &uas.id().to_string()])
            .status();
        let _ = uas.wait();
        assert!(
            out.status.success(),
            "{d}: sipp uac failed ({:?}): {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .join("\n"),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
