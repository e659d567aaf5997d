#!/usr/bin/env node
// A SIP.js user agent over WebSocket (RFC 7118) for sipedge's tests: the
// JavaScript twin of pjsua_ua.py. One process is one UA: a SIP.js UserAgent
// (its Web transport on the `ws` package, Node 20 having no global
// WebSocket), a Registerer for sip:USER@DOMAIN, and Inviter / Invitation /
// Messager as the role needs. Media is out of scope: a fixed plain-RTP SDP
// (c=IN IP4 127.0.0.1, m=audio 4000 RTP/AVP 0) stands in for WebRTC, so
// calls to and from UDP phones (pjsua2, SIPp) negotiate.
//
//   --role register  register; print "registered"; stay until --timeout or
//                    SIGTERM (exit 0), auto-answering every call with 200
//                    and every MESSAGE with 200. With --expect-calls N /
//                    --expect-messages M it exits 0 as soon as N calls were
//                    confirmed and ended and M MESSAGEs came, and 2 if
//                    --timeout comes first. With --message-to URI it also
//                    sends one MESSAGE --text there, --message-delay seconds
//                    after registering.
//   --role call      register; INVITE --target; on CONFIRMED wait --hold
//                    seconds, send BYE; exit 0 when its 200 came.
//   --role message   register; send one MESSAGE --text to --target; exit 0
//                    on a 2xx.
//   --role bye-wait  register; answer the first call; exit 0 when the other
//                    side's BYE ends it.
//   --role subscribe register (unless --no-register); SUBSCRIBE to the
//                    presence of --target (RFC 6665, event package presence,
//                    RFC 3856) with a SIP.js Subscriber; print each NOTIFY
//                    (Subscription-State, the PIDF's basic values, tuples,
//                    RPID activity). With --until open|closed it unsubscribes
//                    (Expires 0) once a NOTIFY shows that state and exits 0
//                    when the final NOTIFY (terminated) came; without it, it
//                    stays until --timeout or SIGTERM (exit 0).
//
// Stdout: one line per event, "<role>: <event>" (see tests/peers/README.md).
// Stderr: the transport's state changes and SIP.js warnings; --log FILE gets
// SIP.js's debug log with every SIP message sent and received.
// Exit codes: 0 ok, 1 failure, 2 --timeout.

import { readFileSync, createWriteStream } from "node:fs";
import { parseArgs } from "node:util";
import { WebSocket as NodeWebSocket } from "ws";
import {
  Inviter,
  Messager,
  Registerer,
  RegistererState,
  SessionState,
  Subscriber,
  SubscriptionState,
  TransportState,
  UserAgent,
} from "sip.js";

// The package's version (lib/version.js of 0.21.2 still says 0.21.1).
const SIPJS_VERSION = JSON.parse(
  readFileSync(new URL("./node_modules/sip.js/package.json", import.meta.url), "utf8"),
).version;

const USAGE = `usage: sipjs_ua.mjs --server ws://127.0.0.1:PORT --user NAME --role ROLE [options]
  --server URL          ws:// or wss:// URL of the edge (required)
  --ca FILE             PEM file of the CA (or self-signed cert) to trust for wss://
  --insecure            do not verify the wss:// server certificate
  --user NAME           user part of the AOR sip:NAME@DOMAIN (required)
  --domain D            domain of the AOR and of the REGISTER R-URI (default localhost)
  --password P          answer digest challenges (401/407) with P (user = NAME)
  --role R              register | call | message | bye-wait | subscribe (required)
  --target URI          call/message/subscribe: whom to call, message or watch (sip:bob@DOMAIN, or just bob)
  --text T              message, --message-to: the body (text/plain; default "hello from sip.js")
  --message-to URI      register: also send one MESSAGE there once registered
  --message-delay S     register: seconds between "registered" and that MESSAGE (default 0)
  --hold S              call: seconds between CONFIRMED and BYE (default 0.5)
  --timeout S           give up after S seconds, exit 2 (default 20; register: exit 0)
  --expires S           REGISTER Expires (default 300)
  --expect-calls N      register: exit 0 once N calls were confirmed and ended
  --expect-messages N   register: exit 0 once N MESSAGEs came (with --expect-calls: both)
  --outbound            register with RFC 5626 reg-id=1 and +sip.instance
  --no-register         call/message/subscribe: skip the REGISTER
  --sub-expires S       subscribe: SUBSCRIBE Expires (default 600)
  --until STATE         subscribe: open | closed: unsubscribe once a NOTIFY shows it, exit 0 on the final NOTIFY
  --name TAG            prefix of the stdout lines (default: the role)
  --log FILE            SIP.js debug log with every SIP message
`;

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      server: { type: "string" },
      ca: { type: "string" },
      insecure: { type: "boolean", default: false },
      user: { type: "string" },
      domain: { type: "string", default: "localhost" },
      password: { type: "string" },
      role: { type: "string" },
      target: { type: "string" },
      text: { type: "string", default: "hello from sip.js" },
      "message-to": { type: "string" },
      "message-delay": { type: "string", default: "0" },
      hold: { type: "string", default: "0.5" },
      timeout: { type: "string", default: "20" },
      expires: { type: "string", default: "300" },
      "expect-calls": { type: "string" },
      "expect-messages": { type: "string" },
      outbound: { type: "boolean", default: false },
      "no-register": { type: "boolean", default: false },
      "sub-expires": { type: "string", default: "600" },
      until: { type: "string" },
      name: { type: "string" },
      log: { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    },
    strict: true,
  }));
} catch (e) {
  process.stderr.write(`${e.message}\n${USAGE}`);
  process.exit(1);
}
if (args.help) {
  process.stdout.write(USAGE);
  process.exit(0);
}
const ROLES = ["register", "call", "message", "bye-wait", "subscribe"];
if (!args.server || !args.user || !ROLES.includes(args.role)) {
  process.stderr.write(`--server, --user and --role (${ROLES.join("|")}) are required\n${USAGE}`);
  process.exit(1);
}
if ((args.role === "call" || args.role === "message" || args.role === "subscribe") && !args.target) {
  process.stderr.write(`--role ${args.role} needs --target\n`);
  process.exit(1);
}
const num = (name) => {
  const v = Number(args[name]);
  if (!Number.isFinite(v) || v < 0) {
    process.stderr.write(`--${name} must be a number >= 0\n`);
    process.exit(1);
  }
  return v;
};
const HOLD = num("hold");
const MESSAGE_DELAY = num("message-delay");
const TIMEOUT = num("timeout");
const EXPIRES = num("expires");
const EXPECT_CALLS = args["expect-calls"] === undefined ? null : num("expect-calls");
const EXPECT_MESSAGES = args["expect-messages"] === undefined ? null : num("expect-messages");
const SUB_EXPIRES = num("sub-expires");
if (args.until !== undefined && !["open", "closed"].includes(args.until)) {
  process.stderr.write(`--until must be open or closed\n`);
  process.exit(1);
}
const ROLE = args.role;
const TAG = args.name || ROLE;

const say = (what) => process.stdout.write(`${TAG}: ${what}\n`);
const debug = (what) => process.stderr.write(`${TAG}: ${what}\n`);

// ---- WebSocket for SIP.js's Web transport --------------------------------
// SIP.js calls `new WebSocket(url, "sip")` and uses addEventListener, which
// the `ws` package provides; TLS options go through a subclass.
const tlsOptions = {};
if (args.ca) tlsOptions.ca = readFileSync(args.ca);
if (args.insecure) tlsOptions.rejectUnauthorized = false;
globalThis.WebSocket = class extends NodeWebSocket {
  constructor(url, protocols) {
    super(url, protocols, { ...tlsOptions, handshakeTimeout: 5000 });
    // SIP.js's error event says nothing of why (bad certificate, refused...).
    this.on("error", (e) => debug(`websocket error: ${e.message}`));
  }
};

// ---- Signalling-only SessionDescriptionHandler ---------------------------
// Offers a fixed PCMU stream on 127.0.0.1:4000; answers an offer with one
// m-line per offered m-line: the first audio one that offers PCMU (payload
// type 0) is accepted the same way, any other is rejected with port 0
// (RFC 3264 section 6). No RTP is sent or received.
const SDP_SESSION_ID = String(Date.now());
function sdpHead(version) {
  return [
    "v=0",
    `o=sipjs-peer ${SDP_SESSION_ID} ${version} IN IP4 127.0.0.1`,
    "s=sipedge signalling-only peer",
    "c=IN IP4 127.0.0.1",
    "t=0 0",
  ];
}
const AUDIO = ["m=audio 4000 RTP/AVP 0", "a=rtpmap:0 PCMU/8000", "a=ptime:20", "a=sendrecv"];
function sdpOffer(version) {
  return [...sdpHead(version), ...AUDIO, ""].join("\r\n");
}
function sdpAnswer(offer, version) {
  const lines = [...sdpHead(version)];
  let accepted = false;
  for (const m of offer.split(/\r?\n/).filter((l) => l.startsWith("m="))) {
    const [media, , proto, ...fmts] = m.slice(2).trim().split(/\s+/);
    if (!accepted && media === "audio" && proto === "RTP/AVP" && fmts.includes("0")) {
      accepted = true;
      lines.push(...AUDIO);
    } else {
      lines.push(`m=${media} 0 ${proto} ${fmts[0] ?? "0"}`);
    }
  }
  if (!accepted) throw new Error("no audio PCMU (RTP/AVP 0) stream in the offer");
  return [...lines, ""].join("\r\n");
}
class SignallingOnlySdh {
  constructor() {
    this.pendingRemoteOffer = null; // an offer we must answer
    this.localOfferPending = false; // our offer, waiting for its answer
    this.version = 1;
  }
  close() {}
  hasDescription(contentType) {
    return contentType === "application/sdp";
  }
  getDescription() {
    try {
      if (this.pendingRemoteOffer !== null) {
        const body = sdpAnswer(this.pendingRemoteOffer, this.version);
        this.pendingRemoteOffer = null;
        return Promise.resolve({ body, contentType: "application/sdp" });
      }
      this.localOfferPending = true;
      return Promise.resolve({ body: sdpOffer(this.version), contentType: "application/sdp" });
    } catch (e) {
      return Promise.reject(e);
    }
  }
  setDescription(sdp) {
    if (!/^v=0/m.test(sdp) || !/^m=/m.test(sdp)) return Promise.reject(new Error("not an SDP body"));
    if (this.localOfferPending) {
      this.localOfferPending = false; // it is the answer to our offer
      if (!/^m=audio [1-9]/m.test(sdp)) return Promise.reject(new Error("the answer rejects the audio stream"));
    } else {
      this.pendingRemoteOffer = sdp;
    }
    return Promise.resolve();
  }
  rollbackDescription() {
    this.pendingRemoteOffer = null;
    this.localOfferPending = false;
    return Promise.resolve();
  }
  sendDtmf() {
    return false;
  }
}

// ---- Logging -------------------------------------------------------------
const logFile = args.log ? createWriteStream(args.log) : null;
function logConnector(level, category, label, content) {
  if (logFile) logFile.write(`${new Date().toISOString()} ${level} ${category}${label ? ` ${label}` : ""}: ${content}\n`);
  if (level === "error" || level === "warn") debug(`sip.js ${level} ${category}: ${String(content).split("\n")[0]}`);
}

// ---- The UA --------------------------------------------------------------
const domain = args.domain;
const aor = `sip:${args.user}@${domain}`;
const asUri = (t) => (t.includes(":") ? t : `sip:${t}@${domain}`);
const targetUri = args.target ? asUri(args.target) : null;

const state = {
  registered: false,
  confirmedCalls: 0,
  endedCalls: 0,
  messages: 0,
  sentMessageOk: args["message-to"] === undefined, // register --message-to: its 2xx came
  subscribed: false,
};

let userAgent;
let registerer;
let exiting = false;

async function finish(code, why) {
  if (exiting) return;
  exiting = true;
  if (why) say(why);
  say(code === 0 ? "PASS" : `exit ${code}`);
  // Unregister and close the WebSocket, but never wait more than 2 s.
  const bye = (async () => {
    try {
      if (userAgent) await userAgent.stop();
    } catch (e) {
      debug(`stop: ${e.message}`);
    }
  })();
  await Promise.race([bye, new Promise((r) => setTimeout(r, 2000))]);
  if (logFile) await new Promise((r) => logFile.end(r));
  process.exit(code);
}

const deadline = setTimeout(() => {
  if (
    (ROLE === "register" && state.registered && EXPECT_CALLS === null && EXPECT_MESSAGES === null) ||
    (ROLE === "subscribe" && state.subscribed && args.until === undefined)
  ) {
    finish(0, `timeout after ${TIMEOUT} s, leaving`);
  } else {
    finish(2, `FAIL: timed out after ${TIMEOUT} s`);
  }
}, TIMEOUT * 1000);
deadline.unref();

for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => {
    const ok =
      (ROLE === "register" && state.registered && EXPECT_CALLS === null && EXPECT_MESSAGES === null) ||
      (ROLE === "subscribe" && state.subscribed && args.until === undefined);
    finish(ok ? 0 : 1, `${sig}, leaving`);
  });
}

function checkRegisterDone() {
  if (ROLE !== "register" || (EXPECT_CALLS === null && EXPECT_MESSAGES === null)) return;
  const callsOk = EXPECT_CALLS === null || state.endedCalls >= EXPECT_CALLS;
  const msgsOk = EXPECT_MESSAGES === null || state.messages >= EXPECT_MESSAGES;
  if (callsOk && msgsOk && state.sentMessageOk) finish(0);
}

// Report a session's life: CONFIRMED (the UAS: the ACK to our 200 came; the
// UAC: the 2xx to our INVITE came, and SIP.js ACKed it) and DISCONNECTED with
// why: "BYE received", "BYE sent, 200 OK" (printed when the BYE's final
// response came), or the final response that refused the INVITE.
function watchSession(session, outgoing) {
  let confirmed = false;
  let reported = false;
  session.endReason = null;
  session.byeSent = false;
  const confirm = () => {
    if (confirmed) return;
    confirmed = true;
    state.confirmedCalls += 1;
    say("call CONFIRMED");
    onConfirmed(session);
  };
  session.report = () => {
    if (reported) return;
    reported = true;
    state.endedCalls += 1;
    say(`call DISCONNECTED (${session.endReason ?? "terminated"})`);
    onDisconnected(session, confirmed);
  };
  session.delegate = {
    onAck: () => confirm(),
    // With an onBye delegate SIP.js leaves the 200 to us.
    onBye: (bye) => {
      session.endReason = "BYE received";
      bye.accept().catch((e) => debug(`BYE 200: ${e.message}`));
    },
  };
  session.stateChange.addListener((s) => {
    debug(`session: ${s}`);
    if (s === SessionState.Established && outgoing) confirm();
    // Our own BYE: reported when its response comes (see hangUp). Otherwise
    // a tick later, once SIP.js has called the INVITE's onReject.
    if (s === SessionState.Terminated && !session.byeSent) setTimeout(session.report, 0);
  });
}

function hangUp(session) {
  if (session.state !== SessionState.Established) return;
  say("hanging up");
  session.byeSent = true;
  const done = (r) => {
    session.endReason = `BYE sent, ${r.message.statusCode} ${r.message.reasonPhrase}`;
    session.report();
  };
  session
    .bye({ requestDelegate: { onAccept: done, onReject: done } })
    .catch((e) => finish(1, `FAIL: BYE: ${e.message}`));
}

function onConfirmed(session) {
  if (ROLE === "call") setTimeout(() => hangUp(session), HOLD * 1000);
}

function onDisconnected(session, confirmed) {
  const why = session.endReason ?? "terminated";
  if (ROLE === "call") {
    if (!confirmed) return finish(1, `FAIL: the call failed (${why})`);
    if (/^BYE sent, 2/.test(why)) return finish(0);
    return finish(1, `FAIL: the call ended with ${why}`);
  }
  if (ROLE === "bye-wait") {
    if (!confirmed) return finish(1, `FAIL: the call ended before it was confirmed (${why})`);
    if (why === "BYE received") return finish(0);
    return finish(1, `FAIL: the call ended without the other side's BYE (${why})`);
  }
  checkRegisterDone();
}

function onInvite(invitation) {
  const from = invitation.remoteIdentity.uri.toString();
  if (ROLE === "bye-wait" && state.confirmedCalls + state.endedCalls > 0) {
    say(`incoming call from ${from}, busy`);
    invitation.reject({ statusCode: 486 }).catch(() => {});
    return;
  }
  if (ROLE !== "register" && ROLE !== "bye-wait") {
    say(`incoming call from ${from}, rejected`);
    invitation.reject({ statusCode: 486 }).catch(() => {});
    return;
  }
  say(`incoming call from ${from}`);
  watchSession(invitation, false);
  invitation.accept().catch((e) => {
    say(`answer failed: ${e.message}`);
  });
}

function onMessage(message) {
  const req = message.request;
  say(`MESSAGE from ${req.from.uri.toString()}: ${req.body ?? ""}`);
  state.messages += 1;
  message.accept().catch((e) => debug(`MESSAGE 200: ${e.message}`));
  checkRegisterDone();
}

function placeCall() {
  const target = UserAgent.makeURI(targetUri);
  if (!target) return finish(1, `FAIL: bad --target ${args.target}`);
  const inviter = new Inviter(userAgent, target);
  watchSession(inviter, true);
  say(`calling ${targetUri}`);
  inviter
    .invite({
      requestDelegate: {
        onReject: (r) => {
          inviter.endReason = `${r.message.statusCode} ${r.message.reasonPhrase}`;
        },
      },
    })
    .catch((e) => finish(1, `FAIL: INVITE: ${e.message}`));
}

// One MESSAGE; onOk runs on its 2xx, any other final response fails the run.
function sendMessage(uri, onOk) {
  const target = UserAgent.makeURI(uri);
  if (!target) return finish(1, `FAIL: bad target URI ${uri}`);
  const messager = new Messager(userAgent, target, args.text, "text/plain");
  messager
    .message({
      requestDelegate: {
        onAccept: (r) => {
          say(`MESSAGE status ${r.message.statusCode} ${r.message.reasonPhrase}`);
          onOk();
        },
        onReject: (r) => {
          say(`MESSAGE status ${r.message.statusCode} ${r.message.reasonPhrase}`);
          finish(1, "FAIL: MESSAGE refused");
        },
      },
    })
    .then(() => say(`MESSAGE sent to ${uri}`))
    .catch((e) => finish(1, `FAIL: MESSAGE: ${e.message}`));
}

// ---- Presence watcher (--role subscribe) ---------------------------------
// What a PIDF document (RFC 3863, RPID RFC 4480) says, on one line: its
// tuples' <basic> values in order, the count of tuples, the first RPID
// activity and the first note. Namespace prefixes are allowed.
function pidfSummary(body) {
  const text = body ?? "";
  const basic = [...text.matchAll(/<(?:[\w-]+:)?basic>\s*([a-z]+)\s*<\/(?:[\w-]+:)?basic>/g)].map((m) => m[1]);
  const tuples = [...text.matchAll(/<(?:[\w-]+:)?tuple[\s>]/g)].length;
  const act = text.match(/<(?:[\w-]+:)?activities>\s*<(?:[\w-]+:)?([\w-]+)/);
  const note = text.match(/<(?:[\w-]+:)?note[^>]*>([^<]*)</);
  return `basic=${basic.length ? basic.join(",") : "none"} tuples=${tuples} activity=${act ? act[1] : "none"} note=${note ? note[1].trim() : ""}`;
}

function subscribe() {
  const target = UserAgent.makeURI(targetUri);
  if (!target) return finish(1, `FAIL: bad --target ${args.target}`);
  const subscriber = new Subscriber(userAgent, target, "presence", {
    expires: SUB_EXPIRES,
    extraHeaders: ["Accept: application/pidf+xml"],
  });
  let leaving = false;
  // NOTIFYs that come once we unsubscribed are answered by SIP.js without
  // calling the delegate; the transport shows them to us first.
  const onTransportMessage = userAgent.transport.onMessage;
  userAgent.transport.onMessage = (raw) => {
    if (leaving && typeof raw === "string" && raw.startsWith("NOTIFY ")) {
      const st = raw.match(/^Subscription-State:\s*([^\r\n]*)/im);
      const ss = st ? st[1].trim() : "none";
      say(`NOTIFY ${ss}`);
      if (/^terminated/i.test(ss)) finish(0, "unsubscribed");
    }
    onTransportMessage(raw);
  };
  subscriber.delegate = {
    onNotify: (notification) => {
      const req = notification.request;
      const ss = (req.getHeader("Subscription-State") ?? "none").trim();
      const ct = (req.getHeader("Content-Type") ?? "none").trim();
      const summary = pidfSummary(req.body);
      say(`NOTIFY ${ss} type=${ct} ${summary}`);
      notification.accept().catch((e) => debug(`NOTIFY 200: ${e.message}`));
      if (/^terminated/i.test(ss)) return;
      const basics = summary.split(" ")[0].slice("basic=".length).split(",");
      const reached =
        (args.until === "open" && basics.includes("open")) ||
        (args.until === "closed" && !basics.includes("open"));
      if (reached && !leaving) {
        leaving = true;
        say(`saw ${args.until}, unsubscribing`);
        subscriber.unsubscribe().catch((e) => finish(1, `FAIL: unsubscribe: ${e.message}`));
      }
    },
  };
  subscriber.stateChange.addListener((s) => {
    debug(`subscriber: ${s}`);
    if (s === SubscriptionState.Subscribed && !state.subscribed) {
      state.subscribed = true;
      say("subscribed");
    }
    if (s === SubscriptionState.Terminated && !leaving) {
      finish(1, "FAIL: the subscription ended");
    }
  });
  say(`subscribing to ${targetUri}`);
  subscriber
    .subscribe({
      requestDelegate: {
        onReject: (r) => {
          say(`SUBSCRIBE refused (${r.message.statusCode} ${r.message.reasonPhrase})`);
          finish(1, "FAIL: SUBSCRIBE refused");
        },
      },
    })
    .catch((e) => finish(1, `FAIL: SUBSCRIBE: ${e.message}`));
}

function afterRegistration() {
  if (ROLE === "call") placeCall();
  else if (ROLE === "subscribe") subscribe();
  else if (ROLE === "message") sendMessage(targetUri, () => finish(0));
  else if (ROLE === "register" && args["message-to"] !== undefined) {
    setTimeout(
      () =>
        sendMessage(asUri(args["message-to"]), () => {
          state.sentMessageOk = true;
          checkRegisterDone();
        }),
      MESSAGE_DELAY * 1000,
    );
  }
}

async function main() {
  const uri = UserAgent.makeURI(aor);
  if (!uri) return finish(1, `FAIL: bad AOR ${aor}`);
  userAgent = new UserAgent({
    uri,
    transportOptions: { server: args.server, connectionTimeout: 5, traceSip: Boolean(logFile) },
    authorizationUsername: args.password !== undefined ? args.user : undefined,
    authorizationPassword: args.password,
    sessionDescriptionHandlerFactory: () => new SignallingOnlySdh(),
    userAgentString: `SIP.js/${SIPJS_VERSION} sipedge-peer-${ROLE}`,
    logBuiltinEnabled: false,
    logLevel: logFile ? "debug" : "warn",
    logConnector,
    noAnswerTimeout: 60,
    delegate: { onInvite, onMessage },
  });
  userAgent.transport.stateChange.addListener((s) => {
    debug(`transport: ${s}`);
    if (s === TransportState.Disconnected && !exiting && state.registered) {
      finish(1, "FAIL: the WebSocket closed");
    }
  });
  say(`sip.js ${SIPJS_VERSION} as ${aor} over ${args.server}`);
  try {
    await userAgent.start();
  } catch (e) {
    return finish(1, `FAIL: cannot connect to ${args.server}: ${e.message}`);
  }
  say("connected");
  if (args["no-register"]) return afterRegistration();

  registerer = new Registerer(userAgent, {
    expires: EXPIRES,
    regId: args.outbound ? 1 : undefined,
  });
  registerer.stateChange.addListener((s) => {
    debug(`registerer: ${s}`);
    if (s === RegistererState.Registered && !state.registered) {
      state.registered = true;
      say("registered");
      afterRegistration();
    }
  });
  registerer
    .register({
      requestDelegate: {
        onReject: (r) => {
          say(`registration refused (${r.message.statusCode} ${r.message.reasonPhrase})`);
          finish(1, "FAIL: registration refused");
        },
      },
    })
    .catch((e) => finish(1, `FAIL: REGISTER: ${e.message}`));
}

main().catch((e) => finish(1, `FAIL: ${e.stack || e}`));
