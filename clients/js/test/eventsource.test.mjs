// Server-Sent Events (PROTOCOL section 12) in headless Chromium with a plain `EventSource`, no
// library: the browser reconnects by itself and its Last-Event-ID resumes the stream, across a
// server restart and on another machine of the fleet; a gap older than history says so. Then
// the JavaScript client behind a proxy that breaks WebSockets: it falls back to a stream.

import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import http from "node:http";
import { after, test } from "node:test";

import { chromium } from "playwright-core";

import { FanfareBackend } from "../dist/fanfare.js";
import { API_KEY, startRedis, startServer, token, waitFor } from "./helpers.mjs";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

const cleanup = [];
after(async () => {
  for (const stop of cleanup.reverse()) await stop();
});

/** A page of `origin` holding `window.streams`: each EventSource opened there, with every
 * event it got (`data` parsed, `close` events as `{close: data}`) and how often it opened. */
async function page(origin) {
  assert.ok(existsSync(CHROMIUM), `no browser at ${CHROMIUM}: apt-get install -y chromium (or set CHROMIUM)`);
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
  cleanup.push(() => browser.close());
  const p = await browser.newPage();
  p.on("pageerror", (e) => console.error("page error:", e));
  await p.goto(`${origin}/`);
  await p.evaluate(() => {
    window.streams = [];
    window.listen = (url) => {
      const stream = { events: [], opens: 0, lastEventId: "" };
      const es = new EventSource(url);
      stream.es = es;
      es.onopen = () => stream.opens++;
      es.onmessage = (e) => {
        stream.events.push(JSON.parse(e.data));
        stream.lastEventId = e.lastEventId;
      };
      es.addEventListener("close", (e) => stream.events.push({ close: JSON.parse(e.data) }));
      window.streams.push(stream);
      return window.streams.length - 1;
    };
  });
  return p;
}

/** Two machines on one Redis, `a` with `extra` flags, and a backend publishing through `b`. */
async function fleet({ history = 100, extra = [] } = {}) {
  const redis = await startRedis();
  cleanup.push(redis.stop);
  const a = await startServer({ redis, node: "a", history, extra });
  cleanup.push(() => a.stop());
  const b = await startServer({ redis, node: "b", history });
  cleanup.push(b.stop);
  return { redis, a, b, backend: new FanfareBackend({ url: b.base, apiKey: API_KEY }) };
}

const events = (p, i) => p.evaluate((i) => window.streams[i].events, i);
const messages = async (p, i) => (await events(p, i)).filter((e) => e.type === "message").map((e) => e.message);

test("a plain EventSource resumes by itself across a restart, and on another machine", async () => {
  const { redis, a, b, backend } = await fleet({ extra: ["--shutdown-timeout", "3"] });
  const p = await page(a.base);
  const query = `token=${token("42", { channels: ["news"] })}&channel=news`;
  const first = await p.evaluate((url) => window.listen(url), `${a.base}/sse?${query}`);
  await waitFor("subscribed", async () => (await events(p, first)).some((e) => e.type === "subscribed"));

  for (let n = 0; n < 60; n++) await backend.publish("news", n);
  await waitFor("60 messages", async () => (await messages(p, first)).length === 60);
  // The server restarts in the middle of the stream: it closes with 1012, the browser comes
  // back by itself (after the stream's retry) to the server that replaces it.
  const stopping = a.term();
  for (let n = 60; n < 100; n++) await backend.publish("news", n);
  await stopping;
  const again = await startServer({ redis, node: "a", port: a.port });
  cleanup.push(again.stop);
  for (let n = 100; n < 140; n++) await backend.publish("news", n);
  await waitFor("140 messages", async () => (await messages(p, first)).length >= 140, 20_000);
  const got = await events(p, first);
  assert.deepEqual(got.find((e) => e.close)?.close.code, 1012);
  assert.ok(
    got.filter((e) => e.type === "subscribed").slice(1).every((e) => e.recovered === true),
    JSON.stringify(got.filter((e) => e.type !== "message")),
  );
  assert.equal(await p.evaluate((i) => window.streams[i].opens, first), 2);

  // Another machine takes over: a stream there resumes from the id the browser holds.
  const id = await p.evaluate((i) => (window.streams[i].es.close(), window.streams[i].lastEventId), first);
  for (let n = 140; n < 170; n++) await backend.publish("news", n);
  const url = `${b.base}/sse?${query}&lastEventId=${encodeURIComponent(id)}`;
  const second = await p.evaluate((url) => window.listen(url), url);
  for (let n = 170; n < 200; n++) await backend.publish("news", n);
  await waitFor("the rest", async () => (await messages(p, second)).length >= 60);
  const all = [...(await messages(p, first)), ...(await messages(p, second))];
  assert.deepEqual(all, Array.from({ length: 200 }, (_, n) => n), "every message once, in order");
  assert.equal((await events(p, second)).find((e) => e.type === "subscribed").recovered, true);
});

test("a gap older than history is said: recovered false", async () => {
  const { redis, a, backend } = await fleet({ history: 5 });
  const p = await page(a.base);
  const url = `${a.base}/sse?token=${token("42", { channels: ["news"] })}&channel=news`;
  const stream = await p.evaluate((url) => window.listen(url), url);
  await waitFor("subscribed", async () => (await events(p, stream)).some((e) => e.type === "subscribed"));
  await backend.publish("news", "before");
  await waitFor("the first message", async () => (await messages(p, stream)).length === 1);
  await a.stop();
  // Redis trims a topic's history by whole stream nodes (100 entries): well past 5.
  for (let n = 0; n < 250; n++) await backend.publish("news", n);
  const again = await startServer({ redis, node: "a", port: a.port, history: 5 });
  cleanup.push(again.stop);
  await waitFor("a second subscribed", async () =>
    (await events(p, stream)).filter((e) => e.type === "subscribed").length === 2, 20_000);
  const subscribed = (await events(p, stream)).filter((e) => e.type === "subscribed")[1];
  assert.equal(subscribed.recovered, false, JSON.stringify(subscribed));
  await backend.publish("news", "after");
  await waitFor("the next message", async () => (await messages(p, stream)).includes("after"));
  assert.deepEqual(await messages(p, stream), ["before", "after"]);
});

/** An HTTP proxy to `port` that breaks WebSockets, as some corporate proxies do: plain
 * requests (an event stream too) pass, upgrades are dropped. */
async function proxyWithoutWebSockets(port) {
  const proxy = http.createServer((req, res) => {
    const upstream = http.request({ host: "127.0.0.1", port, path: req.url, method: req.method, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode, r.headers);
      r.pipe(res);
    });
    upstream.on("error", () => res.destroy());
    res.on("close", () => upstream.destroy());
    req.pipe(upstream);
  });
  proxy.on("upgrade", (_, socket) => socket.destroy());
  await new Promise((r) => proxy.listen(0, "127.0.0.1", r));
  cleanup.push(() => new Promise((r) => (proxy.closeAllConnections(), proxy.close(r))));
  return `ws://127.0.0.1:${proxy.address().port}/ws`;
}

test("the JavaScript client falls back to an event stream where WebSockets break, and keeps its guarantees", async () => {
  const { redis, a, backend } = await fleet({ extra: ["--shutdown-timeout", "3"] });
  const url = await proxyWithoutWebSockets(a.port);
  const p = await page(a.base);
  await p.evaluate(
    async ({ url, token }) => {
      const { FanfareClient } = await import("/fanfare.js");
      window.got = [];
      window.said = [];
      const client = new FanfareClient({
        url,
        token,
        channels: ["news"],
        transports: ["websocket", "sse"],
        minReconnectDelay: 50,
        maxReconnectDelay: 500,
        connectTimeout: 2000,
        restartReconnectDelay: 500,
      });
      client.on("message", (m) => window.got.push(`${m.channel}:${m.message}`));
      for (const e of ["lost", "subscribed", "closed"]) client.on(e, (v) => window.said.push({ [e]: v }));
      client.connect();
      window.client = client;
    },
    { url, token: token("42", { channels: ["news", "sport"] }) },
  );
  const said = () => p.evaluate(() => window.said);
  const got = () => p.evaluate(() => window.got);
  await waitFor("subscribed over an event stream", async () =>
    (await p.evaluate(() => window.client.transport)) === "sse" && (await said()).some((e) => e.subscribed));

  for (let n = 0; n < 50; n++) await backend.publish("news", n);
  await waitFor("50 messages", async () => (await got()).length === 50);
  // The server behind the proxy restarts: the client comes back on a stream and resumes.
  const stopping = a.term();
  for (let n = 50; n < 80; n++) await backend.publish("news", n);
  await stopping;
  const again = await startServer({ redis, node: "a", port: a.port });
  cleanup.push(again.stop);
  await waitFor("resumed", async () => (await said()).filter((e) => e.subscribed).length === 2, 20_000);
  for (let n = 80; n < 100; n++) await backend.publish("news", n);
  await waitFor("100 messages", async () => (await got()).length >= 100);
  // A subscribe while on a stream: a new stream with both channels, resuming news.
  await p.evaluate(() => window.client.subscribe("sport"));
  await waitFor("sport subscribed", async () => (await said()).some((e) => e.subscribed?.channel === "sport"));
  await backend.publish("sport", "goal");
  await backend.publish("news", 100);
  await waitFor("both", async () => (await got()).length >= 102);
  const expected = [...Array.from({ length: 101 }, (_, n) => `news:${n}`), "sport:goal"];
  assert.deepEqual((await got()).sort(), expected.sort());
  assert.deepEqual((await got()).filter((m) => m.startsWith("news:")), Array.from({ length: 101 }, (_, n) => `news:${n}`));
  const resumed = (await said()).filter((e) => e.subscribed?.channel === "news").slice(1);
  assert.ok(resumed.every((e) => e.subscribed.recovered === true), JSON.stringify(await said()));
  assert.ok(!(await said()).some((e) => e.lost || e.closed), JSON.stringify(await said()));
  assert.equal(await p.evaluate(() => window.client.transport), "sse");
});
