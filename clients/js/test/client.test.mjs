// The client against real `fanfare serve` processes: what it does on each fault.

import assert from "node:assert/strict";
import { after, test } from "node:test";

import { FanfareBackend, FanfareClient } from "../dist/fanfare.js";
import { API_KEY, fixtures, record, startProxy, startRedis, startServer, token, waitFor } from "./helpers.mjs";

const { cleanup, server, backend, client } = fixtures(after);

/** The messages a recording got, as [channel or "direct", offset, message]. */
function messages(rec) {
  return rec.of("message").map((m) => [m.channel ?? "direct", m.offset, m.message]);
}

/** Waits for `n` messages in all, at most `ms`; on a timeout the error tells what came. */
async function received(rec, n, ms = 10_000) {
  try {
    await rec.until(`${n} messages`, (events) => events.filter((e) => e.event === "message").length >= n, ms);
  } catch (e) {
    throw new Error(`${e.message}; got ${JSON.stringify(rec.events.filter((x) => x.event !== "message"))} and ${messages(rec).length} messages`);
  }
}

/** Each topic's offsets, in the order they arrived. */
function offsets(rec) {
  const by = {};
  for (const [topic, offset] of messages(rec)) (by[topic] ??= []).push(offset);
  return by;
}

const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

test("connects, subscribes and receives direct and channel messages", async () => {
  const s = await server();
  const c = client(s.ws, "42");
  const rec = record(c);
  c.connect();
  await rec.until("subscribed", (e) => e.some((x) => x.event === "subscribed"));
  assert.equal(c.state, "connected");
  const api = backend(s);
  assert.equal((await api.publish("news", { n: 1 })).offset, 1);
  assert.equal((await api.message("42", "hi")).offset, 1);
  await received(rec, 2);
  assert.deepEqual(messages(rec), [
    ["news", 1, { n: 1 }],
    ["direct", 1, "hi"],
  ]);
});

test("a cut connection reconnects, resubscribes and recovers every message once, in order", async () => {
  const s = await server();
  const proxy = await startProxy(s.port);
  cleanup.push(proxy.close);
  const c = client(proxy.ws, "7");
  const rec = record(c);
  c.connect();
  await rec.until("subscribed", (e) => e.some((x) => x.event === "subscribed"));
  const api = backend(s);
  await api.publish("news", 0);
  await received(rec, 1);
  // The network drops the connection, and stays away while 50 + 50 messages are published.
  proxy.hold();
  proxy.cut();
  await waitFor("disconnected", () => c.state !== "connected");
  for (let n = 1; n <= 50; n++) {
    await api.publish("news", n);
    await api.message("7", n);
  }
  proxy.release();
  await received(rec, 101);
  await api.publish("news", "live");
  await received(rec, 102);
  const by = offsets(rec);
  assert.deepEqual(by.news, range(1, 52));
  assert.deepEqual(by.direct, range(1, 50));
  assert.equal(rec.of("lost").length, 0);
  assert.ok(rec.of("state").includes("disconnected"));
  assert.equal(c.state, "connected");
});

test("a server restart: the client reconnects and recovers from the history in Redis", async () => {
  const redis = await startRedis();
  cleanup.push(redis.stop);
  const a = await startServer({ redis, node: "a" });
  const b = await server({ redis, node: "b" });
  const c = client(a.ws, "9");
  const rec = record(c);
  c.connect();
  await rec.until("subscribed", (e) => e.some((x) => x.event === "subscribed"));
  await backend(b).publish("news", 0);
  await received(rec, 1);
  await a.stop();
  await waitFor("disconnected", () => c.state !== "connected");
  for (let n = 1; n <= 20; n++) await backend(b).publish("news", n);
  const again = await server({ redis, node: "a", port: a.port });
  await received(rec, 21);
  await backend(again).publish("news", "live");
  await received(rec, 22);
  assert.deepEqual(offsets(rec).news, range(1, 22));
  assert.deepEqual(
    messages(rec).map((m) => m[2]),
    [...range(0, 20), "live"],
  );
  assert.deepEqual(rec.of("lost"), [], `${JSON.stringify(rec.events)}\n${again.log()}`);
});

test("a rolling restart (1012): the client comes back at a moment of its own and misses nothing", async () => {
  const redis = await startRedis();
  cleanup.push(redis.stop);
  const a = await startServer({ redis, node: "a", extra: ["--shutdown-timeout", "1"] });
  cleanup.push(a.stop);
  const b = await server({ redis, node: "b" });
  const c = new FanfareClient({
    url: a.ws,
    token: token("11", { channels: ["news"] }),
    channels: ["news"],
    restartReconnectDelay: 300,
    minReconnectDelay: 50,
    // While the server is down its attempts fail: keep them frequent, so its return is seen
    // within the test's patience however slowly it starts (a loaded machine).
    maxReconnectDelay: 500,
  });
  cleanup.push(() => c.close());
  const rec = record(c);
  c.connect();
  await rec.until("subscribed", (e) => e.some((x) => x.event === "subscribed"));
  await backend(b).publish("news", 0);
  await received(rec, 1);
  const drained = a.term();
  for (let n = 1; n <= 10; n++) await backend(b).publish("news", n);
  await drained;
  const again = await server({ redis, node: "a", port: a.port });
  // A loaded machine (the whole suite at once) has taken more than 10 s here.
  await received(rec, 11, 30_000);
  await backend(again).publish("news", "live");
  await received(rec, 12);
  assert.deepEqual(messages(rec).map((m) => m[2]), [...range(0, 10), "live"]);
  assert.equal(rec.of("lost").length, 0);
  assert.equal(rec.of("closed").length, 0, "a restart does not end the client");
});

test("what the history no longer has is a lost event, and live messages go on", async () => {
  const s = await server({ history: 5 });
  const proxy = await startProxy(s.port);
  cleanup.push(proxy.close);
  const c = client(proxy.ws, "5");
  const rec = record(c);
  c.connect();
  await rec.until("subscribed", (e) => e.some((x) => x.event === "subscribed"));
  const api = backend(s);
  await api.publish("news", "first");
  await received(rec, 1);
  proxy.hold();
  proxy.cut();
  await waitFor("disconnected", () => c.state !== "connected");
  for (let n = 1; n <= 30; n++) await api.publish("news", n);
  proxy.release();
  await rec.until("lost", (e) => e.some((x) => x.event === "lost"));
  assert.deepEqual(rec.of("lost"), [{ channel: "news", offset: 31, epoch: rec.of("lost")[0].epoch }]);
  await api.publish("news", "after");
  await received(rec, 2);
  assert.deepEqual(messages(rec).at(-1), ["news", 32, "after"]);
});

test("an expiring token is refreshed through getToken, and the connection stays", async () => {
  const s = await server();
  let calls = 0;
  const c = client(s.ws, "3", {
    // The first token lives 3 s; the refreshed ones long.
    getToken: () => {
      calls += 1;
      return token("3", { channels: ["news"], ttl: calls === 1 ? 3 : 600 });
    },
  });
  const rec = record(c);
  c.connect();
  await rec.until("subscribed", (e) => e.some((x) => x.event === "subscribed"));
  // Less than 30 s left: the server says `expiring` at once, and the client refreshes.
  await waitFor("a refresh", () => calls >= 2);
  await new Promise((r) => setTimeout(r, 3500));
  assert.equal(c.state, "connected");
  assert.ok(!rec.of("state").includes("disconnected"), "never dropped");
  await backend(s).publish("news", "still here");
  await received(rec, 1);
});

test("an expired static token ends the client; a logout by the backend too", async () => {
  const s = await server();
  const expired = new FanfareClient({ url: s.ws, token: token("1", { ttl: 1 }), minReconnectDelay: 50 });
  cleanup.push(() => expired.close());
  const rec = record(expired);
  expired.connect();
  await rec.until("closed", (e) => e.some((x) => x.event === "closed"), 5000);
  assert.equal(rec.of("closed")[0].code, 4001);
  assert.equal(expired.state, "closed");

  const c = client(s.ws, "2");
  const rec2 = record(c);
  c.connect();
  await rec2.until("subscribed", (e) => e.some((x) => x.event === "subscribed"));
  await backend(s).disconnect("2", "logged out");
  await rec2.until("closed", (e) => e.some((x) => x.event === "closed"));
  assert.deepEqual(rec2.of("closed"), [{ code: 4003, reason: "logged out" }]);
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(c.state, "closed", "no reconnect after a logout");
});

test("a dead connection is noticed by its pings and replaced", async () => {
  const s = await server();
  const proxy = await startProxy(s.port);
  cleanup.push(proxy.close);
  const c = client(proxy.ws, "8", { pingInterval: 200, pingTimeout: 300 });
  const rec = record(c);
  c.connect();
  await rec.until("subscribed", (e) => e.some((x) => x.event === "subscribed"));
  // Packets stop, nothing closes: only the missing pong says so.
  proxy.freeze();
  await backend(s).publish("news", "during");
  await rec.until("a new connection", (e) => e.filter((x) => x.event === "subscribed").length >= 2);
  await received(rec, 1);
  assert.deepEqual(messages(rec), [["news", 1, "during"]]);
});

test("the backend helper says why a call was refused", async () => {
  const s = await server();
  const wrong = new FanfareBackend({ url: s.base, apiKey: "wrong" });
  await assert.rejects(wrong.publish("news", 1), (e) => e.status === 401 && /API key/.test(e.body.error));
  const api = backend(s);
  await assert.rejects(api.publish("no spaces allowed", 1), (e) => e.status === 400);
  const batch = await api.batch([{ channel: "news", message: 1 }, { userId: "u", message: 2 }]);
  assert.deepEqual(batch.offsets, [1, 1]);
  assert.equal(batch.epochs.length, 2);
  assert.deepEqual(await api.broadcast("all"), { ok: true });
});

test("a publish whose answer is lost is sent again with its idempotency key and delivered once", async () => {
  const s = await server();
  const c = client(s.ws, "42");
  const rec = record(c);
  c.connect();
  await rec.until("subscribed", (e) => e.some((x) => x.event === "subscribed"));
  // The first answer is lost on the way back (the server did publish it).
  let lost = 0;
  const flaky = async (url, init) => {
    const response = await fetch(url, init);
    if (lost++ === 0) throw new TypeError("fetch failed: connection reset");
    return response;
  };
  const api = new FanfareBackend({ url: s.base, apiKey: API_KEY, fetch: flaky, retryDelay: 10 });
  const published = await api.publish("news", "once");
  assert.equal(published.offset, 1);
  assert.equal(lost, 2, "sent twice");
  await backend(s).publish("news", "next");
  await received(rec, 2);
  assert.deepEqual(messages(rec), [
    ["news", 1, "once"],
    ["news", 2, "next"],
  ]);
  // With retries off, nothing is made up and a failure is the caller's.
  lost = 0;
  const once = new FanfareBackend({ url: s.base, apiKey: API_KEY, fetch: flaky, retries: 0 });
  await assert.rejects(once.publish("news", "x"), /connection reset/);
});

test("a client asked for a transport this platform lacks says so at once", () => {
  const had = globalThis.EventSource;
  delete globalThis.EventSource;
  try {
    assert.throws(
      () => new FanfareClient({ url: "ws://127.0.0.1:1/ws", token: "t", transports: ["websocket", "sse"] }),
      /no EventSource here/,
    );
    assert.throws(() => new FanfareClient({ url: "ws://127.0.0.1:1/ws", token: "t", transports: [] }), /no transport/);
    const plain = new FanfareClient({ url: "ws://127.0.0.1:1/ws", token: "t" });
    assert.equal(plain.transport, undefined, "not connected");
  } finally {
    if (had) globalThis.EventSource = had;
  }
});
