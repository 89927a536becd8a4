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
