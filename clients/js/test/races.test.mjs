// Races and misbehaving peers (found by review): each was a silent loss, a double delivery, a
// stall or a flood before it was fixed.

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import http from "node:http";
import { after, test } from "node:test";

import { FanfareClient } from "../dist/fanfare.js";
import { fixtures, record, startProxy, token, waitFor } from "./helpers.mjs";

const { cleanup, server, backend, client } = fixtures(after);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const subscribed = (rec, n) =>
  rec.until(`${n} subscribed`, (e) => e.filter((x) => x.event === "subscribed").length >= n);

test("unsubscribing and subscribing again at once keeps the subscription", async () => {
  const s = await server();
  const c = client(s.ws, "a");
  const rec = record(c);
  c.connect();
  await subscribed(rec, 1);
  c.unsubscribe("news");
  c.subscribe("news");
  await subscribed(rec, 2);
  await backend(s).publish("news", "after");
  await rec.until("the message", (e) => e.some((x) => x.event === "message"));
  assert.deepEqual(rec.of("message").map((m) => m.message), ["after"]);
});

test("a channel the backend subscribes the user to is delivered", async () => {
  const s = await server();
  const c = client(s.ws, "b", { channels: [] });
  const rec = record(c);
  c.connect();
  await waitFor("connected", () => c.state === "connected");
  await sleep(100);
  await backend(s).subscribe("b", "sports");
  await subscribed(rec, 1);
  await backend(s).publish("sports", "goal");
  await rec.until("the message", (e) => e.some((x) => x.event === "message"));
  assert.deepEqual(rec.of("message").map((m) => [m.channel, m.message]), [["sports", "goal"]]);
});

test("without history on the server, a reconnect says lost for what it cannot resume", async () => {
  const s = await server({ history: 0 });
  const proxy = await startProxy(s.port);
  cleanup.push(proxy.close);
  const c = client(proxy.ws, "c");
  const rec = record(c);
  c.connect();
  await subscribed(rec, 1);
  proxy.hold();
  proxy.cut();
  await waitFor("disconnected", () => c.state !== "connected");
  await backend(s).publish("news", "missed");
  proxy.release();
  await subscribed(rec, 2);
  assert.equal(rec.of("message").length, 0);
  assert.deepEqual(
    rec.of("lost").map((l) => l.channel ?? "direct").sort(),
    ["direct", "news"],
  );
});

test("close() while getToken is pending, then connect(): one socket, each message once", async () => {
  const s = await server({ history: 0 });
  const proxy = await startProxy(s.port);
  cleanup.push(proxy.close);
  let n = 0;
  const c = client(proxy.ws, "d", {
    getToken: async () => {
      n++;
      await sleep(n === 1 ? 300 : 50);
      return token("d", { channels: ["news"] });
    },
  });
  const rec = record(c);
  c.connect();
  await sleep(20);
  c.close();
  c.connect();
  await subscribed(rec, 1);
  await sleep(400); // the first getToken answers meanwhile
  await backend(s).publish("news", "once");
  await rec.until("the message", (e) => e.some((x) => x.event === "message"));
  await sleep(100);
  assert.equal(proxy.connections(), 1);
  c.close();
  await waitFor("no connection left", () => proxy.connections() === 0);
  assert.deepEqual(rec.of("message").map((m) => m.message), ["once"]);
});

test("a getToken that never answers is given up and asked again", async () => {
  const s = await server();
  let n = 0;
  const c = client(s.ws, "g", {
    getToken: () => (++n === 1 ? new Promise(() => {}) : token("g", { channels: ["news"] })),
    connectTimeout: 300,
  });
  c.connect();
  await waitFor("connected", () => c.state === "connected", 5000);
  assert.ok(n >= 2);
});

test("a server that accepts the upgrade and drops it at once is not hammered", async () => {
  let upgrades = 0;
  const srv = http.createServer().on("upgrade", (req, sock) => {
    upgrades++;
    const accept = createHash("sha1")
      .update(req.headers["sec-websocket-key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
      .digest("base64");
    sock.write(
      `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`,
    );
    setTimeout(() => sock.destroy(), 10);
  });
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  cleanup.push(() => new Promise((r) => srv.close(r)));
  // The defaults: 250 ms doubling to 10 s.
  const c = new FanfareClient({ url: `ws://127.0.0.1:${srv.address().port}/ws`, token: "t" });
  cleanup.push(() => c.close());
  c.connect();
  await sleep(4000);
  c.close();
  assert.ok(upgrades <= 6, `${upgrades} upgrades in 4 s`);
});
