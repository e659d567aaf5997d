#!/usr/bin/env python3
"""A pjsua2 (PJSIP) user agent for sipedge's interop tests (tests/interop.rs).

One process is one UA: a pjsua2 Endpoint with the null audio device and one
UDP transport on 127.0.0.1 (--bind; ephemeral port), registering `sip:USER@DOMAIN`
at sipedge, which is also its outbound proxy (as a phone configured with
"registrar" and "outbound proxy" = the edge).

  --role bob    register; auto-answer the first call with 200; report
                CONFIRMED and DISCONNECTED; report the first MESSAGE; exit 0
                when the call was confirmed, then disconnected by the caller,
                and the MESSAGE arrived.
  --role alice  register; call sip:bob@DOMAIN; on CONFIRMED hang up after
                --hold seconds; when DISCONNECTED send a MESSAGE to bob; exit
                0 when it got its 200.

  --user NAME / --target NAME   the account (default: the role's name) and
                whom alice calls and messages (default bob).
  --hangup S    bob hangs up himself S seconds after CONFIRMED (the BYE
                comes from the callee), instead of waiting for the caller's.
  --wait-message  alice first waits for a MESSAGE to arrive, then calls.
  --transport udp|tcp|tls, --ca FILE   the UA's transport to the edge (tls:
                verify the edge's certificate with FILE).

With --password the account answers digest challenges (401 to its REGISTER,
407 to its INVITE and MESSAGE) with that password, for any realm
(tests/security.rs); without it, it sends no credentials.

Prints one line per event on stdout ("<role>: <event>"); PJSIP's own log
(with every SIP message) goes to --log. Exits 1 on any failure and 2 when
--timeout seconds pass first.
"""

import argparse
import sys
import time

import pjsua2 as pj


def say(role, what):
    print(f"{role}: {what}", flush=True)


class FileLog(pj.LogWriter):
    """PJSIP's log (decorated lines, SIP messages included) into a file."""

    def __init__(self, path):
        super().__init__()
        self.f = open(path, "w")

    def write(self, entry):
        self.f.write(entry.msg)


class Call(pj.Call):
    def __init__(self, ua, acc, call_id=pj.PJSUA_INVALID_ID):
        super().__init__(acc, call_id)
        self.ua = ua

    def onCallState(self, prm):
        ci = self.getInfo()
        if ci.state == pj.PJSIP_INV_STATE_CONFIRMED:
            say(self.ua.role, "call CONFIRMED")
            self.ua.confirmed = time.monotonic()
        elif ci.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            say(self.ua.role, f"call DISCONNECTED ({ci.lastStatusCode} {ci.lastReason})")
            self.ua.disconnected = True
            self.ua.last_code = ci.lastStatusCode

    def onCallMediaState(self, prm):
        # Null audio device: nothing to connect; media runs over loopback RTP.
        pass


class Account(pj.Account):
    def __init__(self, ua):
        super().__init__()
        self.ua = ua

    def onRegState(self, prm):
        info = self.getInfo()
        say(self.ua.role, f"registration {prm.code} {prm.reason} (expires {info.regExpiresSec})")
        self.ua.reg_code = prm.code

    def onIncomingCall(self, prm):
        call = Call(self.ua, self, prm.callId)
        self.ua.call = call
        ci = call.getInfo()
        say(self.ua.role, f"incoming call from {ci.remoteUri}")
        op = pj.CallOpParam()
        op.statusCode = 200
        call.answer(op)

    def onInstantMessage(self, prm):
        say(self.ua.role, f"MESSAGE from {prm.fromUri}: {prm.msgBody}")
        self.ua.message = prm.msgBody

    def onInstantMessageStatus(self, prm):
        say(self.ua.role, f"MESSAGE status {prm.code} {prm.reason}")
        self.ua.message_code = prm.code


class Ua:
    def __init__(self, args):
        self.role = args.role
        self.reg_code = None
        self.call = None
        self.confirmed = None
        self.disconnected = False
        self.last_code = None
        self.message = None
        self.message_code = None
        self.hung_up = False
        self.message_sent = False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--role", choices=["alice", "bob"], required=True)
    ap.add_argument("--proxy", required=True, help="sipedge's address, 127.0.0.1:PORT")
    ap.add_argument("--domain", default="example.test")
    ap.add_argument("--bind", default="127.0.0.1",
                    help="the UA's address (SIP and media); the AF_XDP tests use 198.18.0.2")
    ap.add_argument("--log", default="")
    ap.add_argument("--hold", type=float, default=0.5)
    ap.add_argument("--timeout", type=float, default=20.0)
    ap.add_argument("--password", default=None, help="digest password of the account")
    ap.add_argument("--user", default=None, help="account name (default: the role)")
    ap.add_argument("--target", default="bob", help="whom alice calls and messages")
    ap.add_argument("--hangup", type=float, default=None,
                    help="bob: hang up S seconds after CONFIRMED")
    ap.add_argument("--wait-message", action="store_true",
                    help="alice: call only after a MESSAGE arrived")
    ap.add_argument("--transport", choices=["udp", "tcp", "tls"], default="udp",
                    help="the UA's transport to sipedge (tls: --ca verifies the edge)")
    ap.add_argument("--ca", default="", help="CA file to verify sipedge's TLS certificate")
    args = ap.parse_args()

    ua = Ua(args)
    ep = pj.Endpoint()
    ep.libCreate()
    epc = pj.EpConfig()
    epc.uaConfig.threadCnt = 0
    epc.uaConfig.mainThreadOnly = True
    epc.uaConfig.userAgent = f"pjsua2-{ep.libVersion().full} sipedge-interop-{args.role}"
    epc.logConfig.consoleLevel = 0
    epc.logConfig.level = 5 if args.log else 0
    epc.logConfig.msgLogging = bool(args.log)
    log = None
    if args.log:
        # Through our own writer, not logConfig.filename: PJSIP buffers its
        # log file and never flushes it, and we leave with os._exit, which
        # would lose the last messages (those the tests look for).
        # (A writer gets what passes consoleLevel, in place of the console.)
        log = FileLog(args.log)
        epc.logConfig.writer = log
        epc.logConfig.consoleLevel = 5
    epc.medConfig.noVad = True
    ep.libInit(epc)
    tc = pj.TransportConfig()
    tc.port = 0
    tc.boundAddress = args.bind
    tc.publicAddress = args.bind
    kind = {
        "udp": pj.PJSIP_TRANSPORT_UDP,
        "tcp": pj.PJSIP_TRANSPORT_TCP,
        "tls": pj.PJSIP_TRANSPORT_TLS,
    }[args.transport]
    if args.transport == "tls":
        tc.tlsConfig.method = pj.PJSIP_TLSV1_2_METHOD
        if args.ca:
            tc.tlsConfig.CaListFile = args.ca
            tc.tlsConfig.verifyServer = True
    tid = ep.transportCreate(kind, tc)
    ep.libStart()
    ep.audDevManager().setNullDev()
    say(args.role, f"pjsua2 {ep.libVersion().full} on {ep.transportGetInfo(tid).localName}")

    acfg = pj.AccountConfig()
    user = args.user or args.role
    acfg.idUri = f"sip:{user}@{args.domain}"
    acfg.regConfig.registrarUri = f"sip:{args.domain}" + (
        "" if args.transport == "udp" else f";transport={args.transport}")
    acfg.regConfig.timeoutSec = 300
    tparam = "" if args.transport == "udp" else f";transport={args.transport}"
    acfg.sipConfig.proxies.append(f"sip:{args.proxy};lr{tparam}")
    acfg.sipConfig.transportId = tid
    if args.password is not None:
        # Plain-text password (data type 0), any realm.
        acfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", user, 0, args.password))
    acfg.mediaConfig.transportConfig.boundAddress = args.bind
    acfg.mediaConfig.transportConfig.publicAddress = args.bind
    acfg.natConfig.iceEnabled = False
    acfg.natConfig.sipStunUse = pj.PJSUA_STUN_USE_DISABLED
    acfg.natConfig.mediaStunUse = pj.PJSUA_STUN_USE_DISABLED
    acc = Account(ua)
    acc.create(acfg)
    buddy = None

    deadline = time.monotonic() + args.timeout
    code = 2
    while time.monotonic() < deadline:
        ep.libHandleEvents(10)
        if ua.reg_code is not None and ua.reg_code != 200:
            say(args.role, "FAIL: registration refused")
            code = 1
            break
        if ua.reg_code != 200:
            continue
        target = f"sip:{args.target}@{args.domain}"
        if args.role == "bob":
            if (args.hangup is not None and ua.confirmed and not ua.hung_up
                    and not ua.disconnected and time.monotonic() - ua.confirmed >= args.hangup):
                ua.hung_up = True
                say(args.role, "hanging up")
                ua.call.hangup(pj.CallOpParam())
            if ua.confirmed and ua.disconnected and ua.message is not None:
                code = 0
                break
            if ua.disconnected and not ua.confirmed:
                say(args.role, "FAIL: call ended before it was confirmed")
                code = 1
                break
        else:
            if ua.call is None:
                if args.wait_message and ua.message is None:
                    continue
                ua.call = Call(ua, acc)
                prm = pj.CallOpParam(True)
                ua.call.makeCall(target, prm)
                say(args.role, f"calling {target}")
            elif ua.disconnected and not ua.confirmed:
                say(args.role, f"FAIL: call failed with {ua.last_code}")
                code = 1
                break
            elif ua.confirmed and not ua.hung_up and time.monotonic() - ua.confirmed >= args.hold:
                ua.hung_up = True
                say(args.role, "hanging up")
                ua.call.hangup(pj.CallOpParam())
            elif ua.disconnected and not ua.message_sent:
                ua.message_sent = True
                bcfg = pj.BuddyConfig()
                bcfg.uri = target
                bcfg.subscribe = False
                buddy = pj.Buddy()
                buddy.create(acc, bcfg)
                mprm = pj.SendInstantMessageParam()
                mprm.content = f"hello {args.target}, from pjsua2"
                buddy.sendInstantMessage(mprm)
                say(args.role, "MESSAGE sent")
            elif ua.message_code is not None:
                code = 0 if ua.message_code == 200 else 1
                break
    if code == 2:
        say(args.role, f"FAIL: timed out after {args.timeout} s")
    say(args.role, "PASS" if code == 0 else f"exit {code}")
    # Leave without the graceful shutdown (unregistration, a second of
    # waiting): the test is over, and sipedge keeps the binding on purpose.
    sys.stdout.flush()
    if log is not None:
        log.f.flush()
    del buddy
    import os

    os._exit(code)


if __name__ == "__main__":
    main()
