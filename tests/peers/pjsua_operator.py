#!/usr/bin/env python3
"""A pjsua2 (PJSIP) help-desk operator for sipedge's hunt-group test
(tests/dispatcher.rs): registers sip:USER@DOMAIN at sipedge (also its
outbound proxy) and takes every incoming call the way --mode says:

  answer    ring (180), then answer 200 after --ring seconds; keep the call
            until the caller hangs up (an operator holding calls)
  busy      refuse with 486 Busy Here
  noanswer  ring (180) and never answer (until the caller CANCELs)

Prints one line per event: "USER: registered", "USER: incoming CALL-ID",
"USER: confirmed CALL-ID", "USER: ended CALL-ID CODE". Runs until --timeout
seconds pass or stdin closes (the test drops it), then exits 0.
"""

import argparse
import os
import select
import sys
import time

import pjsua2 as pj


def say(user, what):
    print(f"{user}: {what}", flush=True)


class Call(pj.Call):
    def __init__(self, op, acc, call_id):
        super().__init__(acc, call_id)
        self.op = op
        self.sip_call_id = ""
        self.answer_at = None

    def onCallState(self, prm):
        ci = self.getInfo()
        if ci.state == pj.PJSIP_INV_STATE_CONFIRMED:
            say(self.op.user, f"confirmed {self.sip_call_id}")
        elif ci.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            say(self.op.user, f"ended {self.sip_call_id} {ci.lastStatusCode}")
            self.op.ended.append(self)

    def onCallMediaState(self, prm):
        pass


class Account(pj.Account):
    def __init__(self, op):
        super().__init__()
        self.op = op

    def onRegState(self, prm):
        if prm.code == 200 and not self.op.registered:
            self.op.registered = True
            say(self.op.user, "registered")

    def onIncomingCall(self, prm):
        call = Call(self.op, self, prm.callId)
        call.sip_call_id = call.getInfo().callIdString
        self.op.calls.append(call)
        say(self.op.user, f"incoming {call.sip_call_id}")
        op = pj.CallOpParam()
        if self.op.mode == "busy":
            op.statusCode = 486
        else:
            op.statusCode = 180
            if self.op.mode == "answer":
                call.answer_at = time.monotonic() + self.op.ring
        call.answer(op)


class Operator:
    def __init__(self, args):
        self.user = args.user
        self.mode = args.mode
        self.ring = args.ring
        self.registered = False
        self.calls = []
        self.ended = []


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--user", required=True)
    ap.add_argument("--proxy", required=True, help="sipedge's address, 127.0.0.1:PORT")
    ap.add_argument("--domain", default="example.test")
    ap.add_argument("--mode", choices=["answer", "busy", "noanswer"], default="answer")
    ap.add_argument("--ring", type=float, default=0.2)
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args()
    op = Operator(args)

    ep = pj.Endpoint()
    ep.libCreate()
    epc = pj.EpConfig()
    epc.uaConfig.threadCnt = 0
    epc.uaConfig.mainThreadOnly = True
    epc.uaConfig.maxCalls = 32
    epc.logConfig.consoleLevel = 0
    epc.logConfig.level = 0
    epc.medConfig.noVad = True
    ep.libInit(epc)
    tc = pj.TransportConfig()
    tc.port = 0
    tc.boundAddress = "127.0.0.1"
    tc.publicAddress = "127.0.0.1"
    tid = ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tc)
    ep.libStart()
    ep.audDevManager().setNullDev()

    acfg = pj.AccountConfig()
    acfg.idUri = f"sip:{args.user}@{args.domain}"
    acfg.regConfig.registrarUri = f"sip:{args.domain}"
    acfg.regConfig.timeoutSec = 300
    acfg.sipConfig.proxies.append(f"sip:{args.proxy};lr")
    acfg.sipConfig.transportId = tid
    acfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
    acfg.mediaConfig.transportConfig.publicAddress = "127.0.0.1"
    acfg.natConfig.iceEnabled = False
    acfg.natConfig.sipStunUse = pj.PJSUA_STUN_USE_DISABLED
    acfg.natConfig.mediaStunUse = pj.PJSUA_STUN_USE_DISABLED
    acc = Account(op)
    acc.create(acfg)

    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        ep.libHandleEvents(10)
        now = time.monotonic()
        for c in op.calls:
            if c.answer_at is not None and now >= c.answer_at:
                c.answer_at = None
                prm = pj.CallOpParam()
                prm.statusCode = 200
                try:
                    c.answer(prm)
                except pj.Error:
                    pass  # CANCELed meanwhile
        r, _, _ = select.select([sys.stdin], [], [], 0)
        if r and not sys.stdin.readline():
            break
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
