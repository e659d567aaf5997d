#!/usr/bin/env node
// Bundles SIP.js (from node_modules, as pinned in package.json) into one
// browser script for the demo web phone: examples/webphone/sip.bundle.js,
// an IIFE that defines the global `SIP` (SIP.UserAgent, SIP.Registerer, ...),
// plus SIP.js's MIT license beside it. The bundle is committed (about
// 270 KB); rerun after changing the sip.js version:
//   npm ci --prefix tests/peers && npm run build-webphone --prefix tests/peers
import { copyFileSync, readFileSync } from "node:fs";
import { build } from "esbuild";

const here = (p) => new URL(p, import.meta.url).pathname;
const out = here("../../examples/webphone/");
const sipjs = JSON.parse(readFileSync(here("node_modules/sip.js/package.json"), "utf8"));
const esbuildVersion = JSON.parse(readFileSync(here("node_modules/esbuild/package.json"), "utf8")).version;

await build({
  entryPoints: [here("node_modules/sip.js/lib/index.js")],
  bundle: true,
  format: "iife",
  globalName: "SIP",
  minify: true,
  target: "es2020",
  legalComments: "none",
  banner: {
    js:
      `/*! SIP.js ${sipjs.version} (npm sip.js@${sipjs.version}), MIT License, ` +
      `Copyright (c) 2020 Junction Networks: see SIPJS-LICENSE.md. Bundled with esbuild ${esbuildVersion} ` +
      `by tests/peers/build_webphone.mjs; do not edit. */`,
  },
  outfile: out + "sip.bundle.js",
  logLevel: "info",
});
copyFileSync(here("node_modules/sip.js/LICENSE.md"), out + "SIPJS-LICENSE.md");
