// sipedge demo web phone: SIP.js (sip.bundle.js, global `SIP`) over
// WebSocket, signalling only. See README.md beside this file.
//
// Query-string parameters prefill the form:
//   server, user, domain, password, target, text
//   autostart=1    register at load
//   autoanswer=1   tick "auto-answer incoming calls"
//   message_to=URI once registered, send one MESSAGE (text) there
//   trace=1        tick "SIP trace" (every SIP message in the log and console)
//
// For tests, every event is also appended to `window.sipEvents` (strings):
//   registered | unregistered | registration failed (CODE REASON)
//   message from URI: BODY | message sent to URI | message status CODE REASON
//   incoming call from URI | calling URI | call CONFIRMED | call DISCONNECTED (WHY)
//   transport Connected | transport Disconnected | error: WHAT
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(window.location.search);
  const events = [];
  window.sipEvents = events;

  // ---- log panel and event list -----------------------------------------
  function log(text, cls) {
    const line = document.createElement("div");
    if (cls) line.className = cls;
    line.textContent = `${new Date().toISOString().slice(11, 23)} ${text}`;
    const panel = $("log");
    panel.appendChild(line);
    while (panel.childNodes.length > 2000) panel.removeChild(panel.firstChild);
    panel.scrollTop = panel.scrollHeight;
  }
  function record(ev) {
    events.push(ev);
    log(ev, ev.startsWith("error") || ev.includes("failed") ? "err" : "ev");
    console.log(`sipEvent: ${ev}`);
  }

  // ---- signalling-only SessionDescriptionHandler -------------------------
  // Same as tests/peers/sipjs_ua.mjs: offers PCMU on 127.0.0.1:4000; answers
  // the first offered RTP/AVP audio stream with PCMU, rejects others (port
  // 0). No getUserMedia, no RTCPeerConnection: any browser, no microphone.
  const SDP_SESSION_ID = String(Date.now());
  const AUDIO = ["m=audio 4000 RTP/AVP 0", "a=rtpmap:0 PCMU/8000", "a=ptime:20", "a=sendrecv"];
  const sdpHead = () => [
    "v=0",
    `o=webphone ${SDP_SESSION_ID} 1 IN IP4 127.0.0.1`,
    "s=sipedge web phone",
    "c=IN IP4 127.0.0.1",
    "t=0 0",
  ];
  function sdpAnswer(offer) {
    const lines = sdpHead();
    let accepted = false;
    for (const m of offer.split(/\r?\n/).filter((l) => l.startsWith("m="))) {
      const [media, , proto, ...fmts] = m.slice(2).trim().split(/\s+/);
      if (!accepted && media === "audio" && proto === "RTP/AVP" && fmts.includes("0")) {
        accepted = true;
        lines.push(...AUDIO);
      } else {
        lines.push(`m=${media} 0 ${proto} ${fmts[0] || "0"}`);
      }
    }
    if (!accepted) throw new Error("no audio PCMU (RTP/AVP 0) stream in the offer");
    return lines.concat("").join("\r\n");
  }
  class SignallingOnlySdh {
    constructor() {
      this.pendingRemoteOffer = null;
      this.localOfferPending = false;
    }
    close() {}
    hasDescription(contentType) {
      return contentType === "application/sdp";
    }
    getDescription() {
      try {
        if (this.pendingRemoteOffer !== null) {
          const body = sdpAnswer(this.pendingRemoteOffer);
          this.pendingRemoteOffer = null;
          return Promise.resolve({ body, contentType: "application/sdp" });
        }
        this.localOfferPending = true;
        return Promise.resolve({ body: sdpHead().concat(AUDIO, "").join("\r\n"), contentType: "application/sdp" });
      } catch (e) {
        return Promise.reject(e);
      }
    }
    setDescription(sdp) {
      if (!/^v=0/m.test(sdp) || !/^m=/m.test(sdp)) return Promise.reject(new Error("not an SDP body"));
      if (this.localOfferPending) {
        this.localOfferPending = false;
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

  // ---- state ----------------------------------------------------------------
  let ua = null;
  let registerer = null;
  let session = null; // the one call at a time
  let registered = false;

  function domain() {
    return $("domain").value.trim() || "localhost";
  }
  function targetUri() {
    const t = $("target").value.trim();
    if (!t) return null;
    return t.includes(":") ? t : `sip:${t}@${domain()}`;
  }
  function refresh() {
    $("register").disabled = registered;
    $("unregister").disabled = !registered;
    $("message").disabled = !registered;
    $("call").disabled = !registered || session !== null;
    $("hangup").disabled = session === null;
    $("answer").disabled = !(session instanceof SIP.Invitation && session.state === SIP.SessionState.Initial);
    const st = $("status");
    st.textContent = registered ? `registered as sip:${$("user").value.trim()}@${domain()}` : "not registered";
    st.className = registered ? "ok" : "bad";
  }

  // ---- calls ------------------------------------------------------------------
  function watch(s, outgoing) {
    session = s;
    let confirmed = false;
    let reported = false;
    let why = null;
    let byeSent = false;
    const confirm = () => {
      if (confirmed) return;
      confirmed = true;
      record("call CONFIRMED");
    };
    const report = () => {
      if (reported) return;
      reported = true;
      if (session === s) session = null;
      record(`call DISCONNECTED (${why || "terminated"})`);
      refresh();
    };
    s.delegate = {
      onAck: () => confirm(), // we answered: the ACK came
      onBye: (bye) => {
        why = "BYE received";
        bye.accept().catch((e) => log(`BYE 200: ${e.message}`, "err"));
      },
    };
    s.hangUp = () => {
      switch (s.state) {
        case SIP.SessionState.Initial:
        case SIP.SessionState.Establishing:
          if (outgoing) {
            why = "CANCEL sent";
            return s.cancel();
          }
          why = "rejected (486)";
          return s.reject({ statusCode: 486 });
        case SIP.SessionState.Established: {
          byeSent = true;
          const done = (r) => {
            why = `BYE sent, ${r.message.statusCode} ${r.message.reasonPhrase}`;
            report();
          };
          return s.bye({ requestDelegate: { onAccept: done, onReject: done } });
        }
        default:
          return Promise.resolve();
      }
    };
    s.onReject = (r) => {
      why = `${r.message.statusCode} ${r.message.reasonPhrase}`;
    };
    s.stateChange.addListener((st) => {
      log(`session ${st}`);
      if (st === SIP.SessionState.Established && outgoing) confirm();
      // our BYE is reported when its response comes; otherwise a tick later,
      // once SIP.js has called the INVITE's onReject
      if (st === SIP.SessionState.Terminated && !byeSent) setTimeout(report, 0);
      refresh();
    });
    refresh();
  }

  function answer() {
    if (!(session instanceof SIP.Invitation)) return;
    session.accept().catch((e) => record(`error: answer: ${e.message}`));
    refresh();
  }

  function onInvite(invitation) {
    const from = invitation.remoteIdentity.uri.toString();
    if (session !== null) {
      log(`incoming call from ${from} while busy: 486`);
      invitation.reject({ statusCode: 486 }).catch(() => {});
      return;
    }
    record(`incoming call from ${from}`);
    watch(invitation, false);
    if ($("autoanswer").checked) answer();
    else log("ringing: press Answer or Hang up");
  }

  function call() {
    const uri = targetUri();
    const target = uri && SIP.UserAgent.makeURI(uri);
    if (!target) return record(`error: bad target "${$("target").value}"`);
    const inviter = new SIP.Inviter(ua, target);
    watch(inviter, true);
    record(`calling ${uri}`);
    inviter
      .invite({ requestDelegate: { onReject: (r) => inviter.onReject(r) } })
      .catch((e) => record(`error: INVITE: ${e.message}`));
  }

  function hangUp() {
    if (session) Promise.resolve(session.hangUp()).catch((e) => record(`error: hang up: ${e.message}`));
  }

  // ---- messages -----------------------------------------------------------
  function sendMessage(uri) {
    uri = uri || targetUri();
    const target = uri && SIP.UserAgent.makeURI(uri);
    if (!target) return record(`error: bad target "${uri || $("target").value}"`);
    const text = $("text").value;
    const done = (r) => record(`message status ${r.message.statusCode} ${r.message.reasonPhrase}`);
    new SIP.Messager(ua, target, text, "text/plain")
      .message({ requestDelegate: { onAccept: done, onReject: done } })
      .then(() => record(`message sent to ${uri}`))
      .catch((e) => record(`error: MESSAGE: ${e.message}`));
  }

  function onMessage(message) {
    const req = message.request;
    record(`message from ${req.from.uri.toString()}: ${req.body || ""}`);
    message.accept().catch((e) => log(`MESSAGE 200: ${e.message}`, "err"));
  }

  // ---- registration ---------------------------------------------------------
  async function register() {
    const server = $("server").value.trim();
    const user = $("user").value.trim();
    const password = $("password").value;
    if (!server || !user) return record("error: WebSocket server and user are needed");
    const uri = SIP.UserAgent.makeURI(`sip:${user}@${domain()}`);
    if (!uri) return record(`error: bad AOR sip:${user}@${domain()}`);
    $("register").disabled = true;
    if (ua) {
      await ua.stop().catch(() => {});
      ua = null;
    }
    const trace = $("trace").checked;
    ua = new SIP.UserAgent({
      uri,
      transportOptions: { server, traceSip: trace },
      authorizationUsername: password ? user : undefined,
      authorizationPassword: password || undefined,
      sessionDescriptionHandlerFactory: () => new SignallingOnlySdh(),
      userAgentString: "sipedge-webphone (SIP.js)",
      logBuiltinEnabled: false,
      logLevel: trace ? "debug" : "warn",
      logConnector: (level, category, label, content) => {
        if (trace || level === "error" || level === "warn") {
          log(`${level} ${category}: ${content}`, level === "error" ? "err" : undefined);
          console.log(`sip.js ${level} ${category}: ${content}`);
        }
      },
      delegate: { onInvite, onMessage },
    });
    window.sipUA = ua;
    ua.transport.stateChange.addListener((st) => {
      if (st === SIP.TransportState.Connected || st === SIP.TransportState.Disconnected) record(`transport ${st}`);
      else log(`transport ${st}`);
      if (st === SIP.TransportState.Disconnected && registered) {
        registered = false;
        refresh();
      }
    });
    try {
      await ua.start();
    } catch (e) {
      record(`error: cannot connect to ${server}: ${e.message}`);
      refresh();
      return;
    }
    registerer = new SIP.Registerer(ua, { expires: 300 });
    registerer.stateChange.addListener((st) => {
      if (st === SIP.RegistererState.Registered && !registered) {
        registered = true;
        record("registered");
        refresh();
        const to = params.get("message_to");
        if (to) sendMessage(to.includes(":") ? to : `sip:${to}@${domain()}`);
      } else if (st === SIP.RegistererState.Unregistered && registered) {
        registered = false;
        record("unregistered");
        refresh();
      }
    });
    registerer
      .register({
        requestDelegate: {
          onReject: (r) => {
            record(`registration failed (${r.message.statusCode} ${r.message.reasonPhrase})`);
            refresh();
          },
        },
      })
      .catch((e) => record(`error: REGISTER: ${e.message}`));
  }

  function unregister() {
    if (registerer) registerer.unregister().catch((e) => record(`error: unregister: ${e.message}`));
  }

  // ---- wiring ---------------------------------------------------------------
  for (const k of ["server", "user", "domain", "password", "target", "text"]) {
    if (params.has(k)) $(k).value = params.get(k);
  }
  if (params.has("message_to") && !params.has("target")) $("target").value = params.get("message_to");
  $("autoanswer").checked = params.get("autoanswer") === "1";
  $("trace").checked = params.get("trace") === "1";
  $("register").addEventListener("click", register);
  $("unregister").addEventListener("click", unregister);
  $("message").addEventListener("click", () => sendMessage());
  $("call").addEventListener("click", call);
  $("answer").addEventListener("click", answer);
  $("hangup").addEventListener("click", hangUp);
  window.addEventListener("pagehide", () => {
    if (ua) ua.stop();
  });
  refresh();
  log("SIP.js loaded (sip.bundle.js)");
  if (params.get("autostart") === "1") register();
})();
