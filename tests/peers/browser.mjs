#!/usr/bin/env node
// The demo web phone (examples/webphone) in headless Chromium, as a peer of
// sipedge's tests: SIP over WebSocket from a real browser.
//
// Serves examples/webphone from a small static HTTP server on 127.0.0.1
// (ephemeral port), launches /usr/bin/chromium headless with playwright-core
// (a fresh temporary profile, no network services), opens
//   http://127.0.0.1:PORT/?server=..&user=..&domain=..&autostart=1[&autoanswer=1][&message_to=..&text=..]
// and prints each new entry of the page's window.sipEvents as
// "browser: <event>" on stdout (see tests/peers/README.md).
//
// Exits 0 at --timeout or on SIGTERM if it registered (2 if it did not), or
// as soon as --expect-calls / --expect-messages are met (then 2 if --timeout
// comes first); 1 if registration failed, the page failed, or its MESSAGE
// was refused. Chromium is closed on every exit; a watchdog kills its
// process group if this process dies without closing it (e.g. SIGKILL).

import { spawn } from "node:child_process";
import { createReadStream, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { extname, join, normalize, sep } from "node:path";
import { parseArgs } from "node:util";
import { chromium } from "playwright-core";

const USAGE = `usage: browser.mjs --server ws://127.0.0.1:PORT --user NAME [options]
  --server URL          ws:// or wss:// URL of the edge (required; wss: certificate errors are ignored)
  --user NAME           AOR sip:NAME@DOMAIN (required)
  --domain D            default localhost
  --password P          digest password
  --autoanswer          answer incoming calls (200) at once
  --message-to URI      once registered, send one MESSAGE there (with --text)
  --text T              the MESSAGE body (default "hello from the browser")
  --call URI            once registered, call URI; hang up --hold seconds after CONFIRMED
  --hold S              default 0.5
  --expect-calls N      exit 0 once N calls were confirmed and ended
  --expect-messages N   exit 0 once N MESSAGEs came (both, if both given)
  --timeout S           default 30
  --chromium PATH       default /usr/bin/chromium
  --webphone DIR        the page's folder (default examples/webphone of this repo)
  --screenshot FILE     save a PNG of the page when leaving
  --trace               SIP trace: the page's console (every SIP message) on stderr
`;

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      server: { type: "string" },
      user: { type: "string" },
      domain: { type: "string", default: "localhost" },
      password: { type: "string" },
      autoanswer: { type: "boolean", default: false },
      "message-to": { type: "string" },
      text: { type: "string", default: "hello from the browser" },
      call: { type: "string" },
      hold: { type: "string", default: "0.5" },
      "expect-calls": { type: "string" },
      "expect-messages": { type: "string" },
      timeout: { type: "string", default: "30" },
      chromium: { type: "string", default: "/usr/bin/chromium" },
      webphone: { type: "string", default: new URL("../../examples/webphone/", import.meta.url).pathname },
      screenshot: { type: "string" },
      trace: { type: "boolean", default: false },
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
if (!args.server || !args.user) {
  process.stderr.write(`--server and --user are required\n${USAGE}`);
  process.exit(1);
}
const num = (name) => {
  if (args[name] === undefined) return null;
  const v = Number(args[name]);
  if (!Number.isFinite(v) || v < 0) {
    process.stderr.write(`--${name} must be a number >= 0\n`);
    process.exit(1);
  }
  return v;
};
const TIMEOUT = num("timeout");
const HOLD = num("hold");
const EXPECT_CALLS = num("expect-calls");
const EXPECT_MESSAGES = num("expect-messages");

const say = (what) => process.stdout.write(`browser: ${what}\n`);
const debug = (what) => process.stderr.write(`browser: ${what}\n`);

// ---- static server for the page -------------------------------------------
const ROOT = normalize(args.webphone.endsWith(sep) ? args.webphone : args.webphone + sep);
const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".md": "text/plain; charset=utf-8",
  ".png": "image/png",
  ".ico": "image/x-icon",
};
const server = createServer((req, res) => {
  const path = decodeURIComponent(new URL(req.url, "http://x").pathname);
  const file = normalize(join(ROOT, path === "/" ? "index.html" : path));
  let ok = req.method === "GET" && file.startsWith(ROOT);
  try {
    ok = ok && statSync(file).isFile();
  } catch {
    ok = false;
  }
  if (!ok) {
    res.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
    return;
  }
  res.writeHead(200, { "content-type": TYPES[extname(file)] || "application/octet-stream", "cache-control": "no-store" });
  createReadStream(file).pipe(res);
});

// ---- state and leaving ------------------------------------------------------
let context = null;
let page = null;
let profile = null;
let watchdog = null;
let leaving = false;
const seen = { registered: false, confirmed: 0, ended: 0, messages: 0 };

async function leave(code, why) {
  if (leaving) return;
  leaving = true;
  if (why) say(why);
  say(code === 0 ? "PASS" : `exit ${code}`);
  const bounded = (p, ms) => Promise.race([p.catch(() => {}), new Promise((r) => setTimeout(r, ms))]);
  if (page && args.screenshot) await bounded(page.screenshot({ path: args.screenshot, fullPage: true }), 5000);
  // Let the page unregister and close its WebSocket, then close Chromium.
  if (page) await bounded(page.evaluate(() => window.sipUA && window.sipUA.stop()), 2000);
  if (context) await bounded(context.close(), 5000);
  killChromium();
  if (watchdog) {
    try {
      process.kill(watchdog.pid, "SIGKILL");
    } catch {}
  }
  server.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
  process.exit(code);
}

// The Chromium that playwright started: a direct child of this process (it
// runs it in its own process group). Found through /proc.
let chromiumPgid = null;
function findChromium() {
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, "utf8");
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      const comm = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
      if (Number(fields[1]) === process.pid && /chrom/.test(comm)) return Number(fields[2]); // pgrp
    } catch {}
  }
  return null;
}
function killChromium() {
  if (chromiumPgid === null) return;
  try {
    process.kill(-chromiumPgid, "SIGKILL");
  } catch {}
}

const deadline = setTimeout(() => {
  if (!seen.registered) leave(2, `FAIL: not registered after ${TIMEOUT} s`);
  else if (EXPECT_CALLS !== null || EXPECT_MESSAGES !== null) leave(2, `FAIL: timed out after ${TIMEOUT} s`);
  else leave(0, `timeout after ${TIMEOUT} s, leaving`);
}, TIMEOUT * 1000);
for (const sig of ["SIGTERM", "SIGINT", "SIGHUP"]) {
  process.on(sig, () => {
    const ok = seen.registered && EXPECT_CALLS === null && EXPECT_MESSAGES === null;
    leave(ok ? 0 : 1, `${sig}, leaving`);
  });
}

function checkDone() {
  if (EXPECT_CALLS === null && EXPECT_MESSAGES === null) return;
  if ((EXPECT_CALLS === null || seen.ended >= EXPECT_CALLS) && (EXPECT_MESSAGES === null || seen.messages >= EXPECT_MESSAGES)) {
    leave(0);
  }
}

async function onEvent(ev) {
  say(ev);
  if (ev === "registered") {
    seen.registered = true;
    if (args.call) {
      await page.fill("#target", args.call);
      await page.click("#call");
    }
  } else if (ev.startsWith("registration failed")) {
    return leave(1, "FAIL: registration refused");
  } else if (ev.startsWith("message from ")) {
    seen.messages += 1;
  } else if (ev.startsWith("message status ")) {
    if (!/^message status 2/.test(ev)) return leave(1, "FAIL: MESSAGE refused");
  } else if (ev === "call CONFIRMED") {
    seen.confirmed += 1;
    if (args.call) setTimeout(() => page.click("#hangup").catch(() => {}), HOLD * 1000);
  } else if (ev.startsWith("call DISCONNECTED")) {
    seen.ended += 1;
    if (args.call && EXPECT_CALLS === null && EXPECT_MESSAGES === null) {
      return /BYE sent, 2/.test(ev) ? leave(0) : leave(1, "FAIL: the call did not end with our BYE's 2xx");
    }
  } else if (ev.startsWith("error: cannot connect")) {
    return leave(1, "FAIL: the page cannot reach the server");
  }
  checkDone();
}

async function main() {
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const httpPort = server.address().port;
  profile = mkdtempSync(join(tmpdir(), "sipedge-chromium-"));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: args.chromium,
    headless: true,
    ignoreHTTPSErrors: true,
    timeout: 30000,
    // Our own handlers close the page and Chromium (and say so).
    handleSIGINT: false,
    handleSIGTERM: false,
    handleSIGHUP: false,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--ignore-certificate-errors",
    ],
  });
  chromiumPgid = findChromium();
  if (chromiumPgid !== null) {
    // Kills Chromium's process group (and removes the profile) if this
    // process dies first; bounded by this run's own --timeout (plus a minute).
    const rounds = Math.ceil((TIMEOUT + 60) * 2);
    watchdog = spawn(
      "/bin/sh",
      [
        "-c",
        `i=0; while [ $i -lt ${rounds} ] && kill -0 ${process.pid} 2>/dev/null; do sleep 0.5; i=$((i+1)); done; kill -KILL -- -${chromiumPgid} 2>/dev/null; sleep 1; rm -rf '${profile}'`,
      ],
      { detached: true, stdio: "ignore" },
    );
    watchdog.unref();
  } else {
    debug("warning: cannot find the Chromium process (no watchdog)");
  }
  page = context.pages()[0] || (await context.newPage());
  page.on("console", (m) => {
    if (args.trace || m.type() === "error") debug(`console ${m.type()}: ${m.text()}`);
  });
  page.on("pageerror", (e) => {
    debug(`page error: ${e.message}`);
    leave(1, `FAIL: page error: ${e.message}`);
  });
  page.on("crash", () => leave(1, "FAIL: the page crashed"));

  const q = new URLSearchParams({ server: args.server, user: args.user, domain: args.domain, autostart: "1" });
  if (args.password !== undefined) q.set("password", args.password);
  if (args.autoanswer) q.set("autoanswer", "1");
  if (args["message-to"] !== undefined) {
    q.set("message_to", args["message-to"]);
    q.set("text", args.text);
  }
  if (args.trace) q.set("trace", "1");
  const url = `http://127.0.0.1:${httpPort}/?${q}`;
  say(`chromium ${context.browser()?.version() ?? ""} opening ${url}`.replace("chromium  ", "chromium "));
  await page.goto(url, { waitUntil: "load", timeout: 15000 });

  // Poll window.sipEvents; print what is new, in order.
  let printed = 0;
  while (!leaving) {
    let evs;
    try {
      evs = await page.evaluate((from) => (window.sipEvents || []).slice(from), printed);
    } catch (e) {
      if (!leaving) leave(1, `FAIL: page: ${e.message}`);
      return;
    }
    for (const ev of evs) {
      printed += 1;
      await onEvent(ev);
      if (leaving) return;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

main().catch((e) => leave(1, `FAIL: ${e.message.split("\n")[0]}`));
