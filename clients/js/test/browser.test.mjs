// The console page (`GET /`), built on this client, in headless Chromium: connect, subscribe,
// publish from the page, see the message; the server restarts, the page reconnects and
// recovers what was published meanwhile. Chromium comes from the system (Debian's
// `chromium`, or CHROMIUM=/path), driven by playwright-core; nothing is downloaded.

import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { after, test } from "node:test";

import { chromium } from "playwright-core";

import { FanfareBackend } from "../dist/fanfare.js";
import { API_KEY, startRedis, startServer, token } from "./helpers.mjs";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

const cleanup = [];
after(async () => {
  for (const stop of cleanup.reverse()) await stop();
});

async function logShows(page, text) {
  await page.waitForFunction((t) => document.getElementById("log").textContent.includes(t), text, {
    timeout: 10_000,
  });
}

test("the console page connects, publishes and recovers across a server restart", async () => {
  assert.ok(existsSync(CHROMIUM), `no browser at ${CHROMIUM}: apt-get install -y chromium (or set CHROMIUM)`);
  const redis = await startRedis();
  cleanup.push(redis.stop);
  const a = await startServer({ redis, node: "a" });
  cleanup.push(() => a.stop());
  const b = await startServer({ redis, node: "b" });
  cleanup.push(b.stop);
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
  cleanup.push(() => browser.close());
  const page = await browser.newPage();
  page.on("pageerror", (e) => console.error("page error:", e));
  await page.goto(`${a.base}/`);

  await page.fill("#token", token("42", { channels: ["news"] }));
  await page.click("#connect");
  await page.click("#subscribe");
  await logShows(page, "state connected");
  await logShows(page, "subscribed news");
  await page.fill("#key", API_KEY);
  await page.fill("#path", "/publish");
  await page.fill("#body", JSON.stringify({ channel: "news", message: "from the page" }));
  await page.click("#send");
  await logShows(page, 'message news #1 "from the page"');

  await a.stop();
  await logShows(page, "state disconnected");
  await new FanfareBackend({ url: b.base, apiKey: API_KEY }).publish("news", "while away");
  const again = await startServer({ redis, node: "a", port: a.port });
  cleanup.push(again.stop);
  await logShows(page, "subscribed news recovered=true");
  await logShows(page, 'message news #2 "while away"');
  const log = await page.textContent("#log");
  assert.equal(log.match(/while away/g).length, 1, log);
  assert.ok(!log.includes("lost"), log);
});

test("Chromium negotiates permessage-deflate and gets the compressed frames right", async () => {
  const server = await startServer();
  cleanup.push(server.stop);
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
  cleanup.push(() => browser.close());
  const page = await browser.newPage();
  await page.goto(`${server.base}/`);
  const url = `${server.ws}?token=${token("7", { channels: ["docs"] })}`;
  // A 2 KB document (compressed: over --compression-min-bytes) and a small message (plain).
  const doc = { rows: Array.from({ length: 40 }, (_, i) => ({ row: i, state: "unchanged" })) };
  const compressions = async () => {
    const m = await (await fetch(`${server.base}/metrics`, { headers: { authorization: `Bearer ${API_KEY}` } })).text();
    return Number(m.match(/^fanfare_deflate_compressions_total (\d+)/m)?.[1] ?? 0);
  };
  const before = await compressions();
  const received = page.evaluate(
    (url) =>
      new Promise((resolve, reject) => {
        const ws = new WebSocket(url);
        const got = [];
        ws.onerror = reject;
        ws.onopen = () =>
          // Chromium compresses what it sends too: a compressed client frame.
          ws.send(JSON.stringify({ type: "subscribe", channel: "docs", pad: "x".repeat(300) }));
        ws.onmessage = (e) => {
          const m = JSON.parse(e.data);
          if (m.type === "subscribed") window.subscribed = true;
          if (m.type === "message") got.push(m.message);
          if (got.length === 2) resolve({ extensions: ws.extensions, got });
        };
      }),
    url,
  );
  await page.waitForFunction(() => window.subscribed === true);
  const backend = new FanfareBackend({ url: server.base, apiKey: API_KEY });
  await backend.publish("docs", doc);
  await backend.publish("docs", "small");
  const { extensions, got } = await received;
  assert.match(extensions, /permessage-deflate/);
  assert.deepEqual(got, [doc, "small"]);
  assert.equal((await compressions()) - before, 1, "the document, compressed once");
});

test("through the JavaScript client in Chromium, deltas over deflate rebuild every message", async () => {
  const server = await startServer();
  cleanup.push(server.stop);
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
  cleanup.push(() => browser.close());
  const page = await browser.newPage();
  await page.goto(`${server.base}/`);
  const doc = (n) => ({
    seq: n,
    rows: Array.from({ length: 40 }, (_, i) => ({ row: i, state: i === n ? "changed" : "unchanged" })),
  });
  const received = page.evaluate(
    async ({ url, token, n }) => {
      const { FanfareClient } = await import("/fanfare.js");
      const seen = { deltas: 0, extensions: "" };
      class Watched extends WebSocket {
        set onmessage(handler) {
          super.onmessage = (e) => {
            seen.extensions = this.extensions;
            if (e.data.includes('"delta":true')) seen.deltas += 1;
            handler(e);
          };
        }
      }
      const c = new FanfareClient({ url, token, channels: ["docs"], deltas: true, WebSocket: Watched });
      const got = [];
      c.on("subscribed", () => (window.subscribed = true));
      return new Promise((resolve) => {
        c.on("message", (m) => {
          got.push(m.message);
          if (got.length === n) resolve({ got, ...seen });
        });
        c.connect();
      });
    },
    { url: server.ws, token: token("7", { channels: ["docs"] }), n: 5 },
  );
  await page.waitForFunction(() => window.subscribed === true);
  const backend = new FanfareBackend({ url: server.base, apiKey: API_KEY });
  for (let n = 1; n <= 5; n++) await backend.publish("docs", doc(n));
  const { got, deltas, extensions } = await received;
  assert.match(extensions, /permessage-deflate/);
  assert.deepEqual(got, [1, 2, 3, 4, 5].map(doc));
  assert.equal(deltas, 4, "all but the first");
});
