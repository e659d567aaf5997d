#!/usr/bin/env python3
"""A pjsua2 (PJSIP) presence client for sipedge's presence tests
(tests/presence.rs): one process is one device of one user, which
publishes its own status (RFC 3903 PUBLISH, PIDF with RPID activities) and
watches buddies (RFC 6665 SUBSCRIBE, event package presence, RFC 3856).

It registers sip:USER@DOMAIN at the edge (also its outbound proxy, as in
pjsua_ua.py) with `presConfig.publishEnabled`: pjsua2 publishes nothing
until the first status command, then PUBLISHes at each change (the first
one creates the publication, later ones modify it with SIP-If-Match, and
pjsua2 refreshes it before it expires). It obeys one command per line on
stdin, so the test decides the order and waits for what each step should
cause:

  online [NOTE]      setOnlineStatus: basic open, no activity
  away [NOTE]        basic open, RPID activity away
  busy [NOTE]        basic open, RPID activity busy
  offline [NOTE]     basic closed
  watch URI          add a buddy (sip:bob@DOMAIN, or just bob) and subscribe
  unwatch URI        end that buddy's subscription (SUBSCRIBE Expires 0)
  unregister         REGISTER Expires 0 (the account stays, and publishes)
  register           REGISTER again
  quit               exit 0 (without unpublishing or unregistering)

Stdout, one line per event, "<name>: <event>" (name = --name, default the
user):
  pjsua2 VERSION on ADDR
  registration CODE REASON (expires N)
  command LINE                         (echo of each command, when applied)
  buddy URI status=S activity=A sub=STATE code=C note=TEXT
      on every onBuddyState: S online|offline|unknown (PJSUA_BUDDY_STATUS_*),
      A none|away|busy (PJRPID_ACTIVITY_*), STATE the subscription state
      (NULL, SENT, ACCEPTED, PENDING, ACTIVE, TERMINATED, ...), C the
      termination code (0 while it lives), TEXT the note (may be empty or
      contain spaces: it is last)
  buddy URI subscription STATE code=C reason=R
      on every onBuddyEvSubState (state changes of the SUBSCRIBE dialog)
  PASS / FAIL: ... / exit N

pjsua2 takes the status of a buddy from the first tuple of the document it
gets; documents with several tuples are checked by the tests themselves.

With --password the account answers digest challenges (REGISTER, PUBLISH,
SUBSCRIBE) for any realm. PJSIP's own log, with every SIP message, goes to
--log. Exits 0 on `quit` or end of stdin, 1 on a refused registration, 2
when --timeout seconds pass first.
"""

import argparse
import os
import select
import sys
import time

import pjsua2 as pj


class FileLog(pj.LogWriter):
    """PJSIP's log into a file (see pjsua_ua.py: flushed, unlike logConfig.filename)."""

    def __init__(self, path):
        super().__init__()
        self.f = open(path, "w")

    def write(self, entry):
        self.f.write(entry.msg)
        self.f.flush()


STATUS = {
    pj.PJSUA_BUDDY_STATUS_ONLINE: "online",
    pj.PJSUA_BUDDY_STATUS_OFFLINE: "offline",
    pj.PJSUA_BUDDY_STATUS_UNKNOWN: "unknown",
}
ACTIVITY = {
    pj.PJRPID_ACTIVITY_UNKNOWN: "none",
    pj.PJRPID_ACTIVITY_AWAY: "away",
    pj.PJRPID_ACTIVITY_BUSY: "busy",
}


class Peer:
    def __init__(self, name):
        self.name = name
        self.reg_code = None

    def say(self, what):
        print(f"{self.name}: {what}", flush=True)


class Account(pj.Account):
    def __init__(self, peer):
        super().__init__()
        self.peer = peer

    def onRegState(self, prm):
        info = self.getInfo()
        self.peer.say(f"registration {prm.code} {prm.reason} (expires {info.regExpiresSec})")
        self.peer.reg_code = prm.code


class Buddy(pj.Buddy):
    def __init__(self, peer, uri):
        super().__init__()
        self.peer = peer
        self.uri = uri

    def onBuddyState(self):
        bi = self.getInfo()
        ps = bi.presStatus
        self.peer.say(
            f"buddy {self.uri} status={STATUS.get(ps.status, ps.status)}"
            f" activity={ACTIVITY.get(ps.activity, ps.activity)}"
            f" sub={bi.subStateName} code={bi.subTermCode} note={ps.note}"
        )

    def onBuddyEvSubState(self, prm):
        bi = self.getInfo()
        self.peer.say(
            f"buddy {self.uri} subscription {bi.subStateName}"
            f" code={bi.subTermCode} reason={bi.subTermReason}"
        )


def status_of(word, note):
    ps = pj.PresenceStatus()
    if word == "offline":
        ps.status = pj.PJSUA_BUDDY_STATUS_OFFLINE
    else:
        ps.status = pj.PJSUA_BUDDY_STATUS_ONLINE
    ps.activity = {
        "away": pj.PJRPID_ACTIVITY_AWAY,
        "busy": pj.PJRPID_ACTIVITY_BUSY,
    }.get(word, pj.PJRPID_ACTIVITY_UNKNOWN)
    ps.note = note if note else word.capitalize()
    return ps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--user", required=True)
    ap.add_argument("--name", default=None, help="prefix of the stdout lines (default: the user)")
    ap.add_argument("--proxy", required=True, help="sipedge's address, 127.0.0.1:PORT")
    ap.add_argument("--domain", default="example.test")
    ap.add_argument("--bind", default="127.0.0.1",
                    help="the UA's address (SIP and media); the AF_XDP tests use 198.18.0.2")
    ap.add_argument("--password", default=None)
    ap.add_argument("--transport", choices=["udp", "tcp", "tls"], default="udp")
    ap.add_argument("--ca", default="")
    ap.add_argument("--no-publish", action="store_true", help="watch only: do not PUBLISH")
    ap.add_argument("--log", default="")
    ap.add_argument("--timeout", type=float, default=30.0)
    args = ap.parse_args()

    peer = Peer(args.name or args.user)
    ep = pj.Endpoint()
    ep.libCreate()
    epc = pj.EpConfig()
    epc.uaConfig.threadCnt = 0
    epc.uaConfig.mainThreadOnly = True
    epc.uaConfig.userAgent = f"pjsua2-{ep.libVersion().full} sipedge-presence-{peer.name}"
    epc.logConfig.consoleLevel = 0
    epc.logConfig.level = 5 if args.log else 0
    epc.logConfig.msgLogging = bool(args.log)
    log = None
    if args.log:
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
    peer.say(f"pjsua2 {ep.libVersion().full} on {ep.transportGetInfo(tid).localName}")

    tparam = "" if args.transport == "udp" else f";transport={args.transport}"
    acfg = pj.AccountConfig()
    acfg.idUri = f"sip:{args.user}@{args.domain}"
    acfg.regConfig.registrarUri = f"sip:{args.domain}{tparam}"
    acfg.regConfig.timeoutSec = 300
    acfg.sipConfig.proxies.append(f"sip:{args.proxy};lr{tparam}")
    acfg.sipConfig.transportId = tid
    if args.password is not None:
        acfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", args.user, 0, args.password))
    acfg.presConfig.publishEnabled = not args.no_publish
    acfg.mediaConfig.transportConfig.boundAddress = args.bind
    acfg.mediaConfig.transportConfig.publicAddress = args.bind
    acfg.natConfig.iceEnabled = False
    acfg.natConfig.sipStunUse = pj.PJSUA_STUN_USE_DISABLED
    acfg.natConfig.mediaStunUse = pj.PJSUA_STUN_USE_DISABLED
    acc = Account(peer)
    acc.create(acfg)
    buddies = {}

    def as_uri(t):
        return t if ":" in t else f"sip:{t}@{args.domain}"

    def apply(line):
        word, _, rest = line.partition(" ")
        rest = rest.strip()
        if word in ("online", "away", "busy", "offline"):
            acc.setOnlineStatus(status_of(word, rest))
        elif word == "watch":
            uri = as_uri(rest)
            bcfg = pj.BuddyConfig()
            bcfg.uri = uri
            bcfg.subscribe = True
            b = Buddy(peer, uri)
            b.create(acc, bcfg)
            buddies[uri] = b
        elif word == "unwatch":
            b = buddies.get(as_uri(rest))
            if b is None:
                return f"FAIL: no buddy {rest}"
            b.subscribePresence(False)
        elif word == "unregister":
            acc.setRegistration(False)
        elif word == "register":
            acc.setRegistration(True)
        elif word == "quit":
            return "quit"
        else:
            return f"FAIL: unknown command {line!r}"
        return None

    pending = b""
    stdin_open = True
    deadline = time.monotonic() + args.timeout
    code = 2
    while time.monotonic() < deadline:
        ep.libHandleEvents(10)
        if peer.reg_code is not None and peer.reg_code >= 300:
            peer.say("FAIL: registration refused")
            code = 1
            break
        if not stdin_open:
            continue
        ready, _, _ = select.select([sys.stdin], [], [], 0)
        if not ready:
            continue
        chunk = os.read(sys.stdin.fileno(), 4096)
        if not chunk:
            stdin_open = False
            code = 0
            break
        pending += chunk
        done = False
        while b"\n" in pending:
            raw, pending = pending.split(b"\n", 1)
            line = raw.decode().strip()
            if not line:
                continue
            result = apply(line)
            peer.say(f"command {line}")
            if result == "quit":
                code = 0
                done = True
                break
            if result:
                peer.say(result)
                code = 1
                done = True
                break
        if done:
            break
    if code == 2:
        peer.say(f"FAIL: timed out after {args.timeout} s")
    peer.say("PASS" if code == 0 else f"exit {code}")
    sys.stdout.flush()
    if log is not None:
        log.f.flush()
    # Leave without the graceful shutdown (unpublish, unsubscribe,
    # unregister): the tests decide what the edge sees.
    os._exit(code)


if __name__ == "__main__":
    main()
