// pusher-js 8, unmodified, against fanfare's Pusher front: public, private and presence
// channels authorised by the official SDK's signatures, client events, and refusals.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import WebSocket from "ws";

import { APP, client, connected, next, publish, sdk, startServer, waitFor } from "./helpers.mjs";

let server;
before(async () => (server = await startServer()));
after(() => server.stop());

const open = [];
const make = async (options) => {
  const c = await connected(client(server.port, options));
  open.push(c);
  return c;
};
after(() => open.forEach((c) => c.disconnect()));

test("a public channel gets events in Pusher's shape, and fanfare's own messages too", async () => {
  const c = await make();
  assert.match(c.connection.socket_id, /^\d+\.\d+$/);
  const news = c.subscribe("news");
  await next(news, "pusher:subscription_succeeded");
  // Pusher's channel `news` is fanfare's `pusher:news`.
  const greet = next(news, "greet");
  await publish(server.port, "pusher:news", { event: "greet", data: JSON.stringify({ hi: 1 }) });
  assert.deepEqual(await greet, { hi: 1 });
  const plain = next(news, "message");
  await publish(server.port, "pusher:news", { text: "hello" });
  assert.deepEqual(await plain, { text: "hello" });
});

test("a Pusher socket, which has no token, reaches only Pusher's channels", async () => {
  const c = await make();
  const orders = c.subscribe("orders");
  await next(orders, "pusher:subscription_succeeded");
  let leaked = false;
  orders.bind("message", () => (leaked = true));
  await publish(server.port, "orders", { secret: true });
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(leaked, false, "fanfare's own channel `orders` is not Pusher's `orders`");
});

test("a private channel needs the app's signature; a wrong one gets subscription_error", async () => {
  const c = await make();
  const ok = c.subscribe("private-room");
  await next(ok, "pusher:subscription_succeeded");
  const forged = client(server.port, {
    authorize: (params, cb) => cb(null, { auth: `fanfare-key:${"0".repeat(64)}` }),
  });
  open.push(forged);
  await connected(forged);
  const refused = forged.subscribe("private-room");
  const error = await next(refused, "pusher:subscription_error");
  assert.equal(error.status, 401);
  assert.equal(error.type, "AuthError");
});

test("client events reach the other subscribers of a private channel, never the sender", async () => {
  const [a, b] = [await make(), await make()];
  const [ca, cb] = [a.subscribe("private-chat"), b.subscribe("private-chat")];
  await Promise.all([next(ca, "pusher:subscription_succeeded"), next(cb, "pusher:subscription_succeeded")]);
  let echoed = false;
  ca.bind("client-typing", () => (echoed = true));
  const got = next(cb, "client-typing");
  assert.equal(ca.trigger("client-typing", { who: "a" }), true);
  assert.deepEqual(await got, { who: "a" });
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(echoed, false, "not echoed to the sender");
});

test("a client event on a public channel is refused with pusher:error", async () => {
  const c = await make();
  const pub = c.subscribe("lobby");
  await next(pub, "pusher:subscription_succeeded");
  const error = next(c.connection, "error");
  c.send_event("client-x", { n: 1 }, "lobby");
  const e = await error;
  assert.match(JSON.stringify(e), /private and presence/);
});

test("presence channels list the members and say who comes and goes", async () => {
  const alice = await make({ user: { id: "alice", info: { name: "Alice" } } });
  const ch = alice.subscribe("presence-room");
  const members = await next(ch, "pusher:subscription_succeeded");
  assert.equal(members.count, 1);
  assert.equal(members.me.id, "alice");
  const added = next(ch, "pusher:member_added");
  const bob = await make({ user: { id: "bob", info: { name: "Bob" } } });
  const bobs = bob.subscribe("presence-room");
  const seen = await next(bobs, "pusher:subscription_succeeded");
  assert.equal(seen.count, 2);
  assert.deepEqual(seen.get("alice").info, { name: "Alice" });
  assert.deepEqual(await added, { id: "bob", info: { name: "Bob" } });
  const removed = next(ch, "pusher:member_removed");
  bob.disconnect();
  assert.equal((await removed).id, "bob");
  assert.equal(ch.members.count, 1);
});

test("an unknown app key is refused with 4001 and pusher-js does not retry", async () => {
  const c = client(server.port, { key: "not-this-app" });
  open.push(c);
  const error = await next(c.connection, "error");
  assert.equal(error.error.data.code, 4001);
  await new Promise((r) => setTimeout(r, 300));
  assert.notEqual(c.connection.state, "connected");
});

test("a presence member's user_info is as small as a token's info, or the subscription is refused", async () => {
  const big = await make({ user: { id: "big", info: { blob: "x".repeat(600) } } });
  const ch = big.subscribe("presence-small");
  const error = await next(ch, "pusher:subscription_error");
  assert.equal(error.status, 400);
  assert.match(error.error, /at most 512 bytes/);
});

test("a client event on a presence channel says which member sent it", async () => {
  const alice = await make({ user: { id: "alice-ce", info: {} } });
  const bob = await make({ user: { id: "bob-ce", info: {} } });
  const [ca, cb] = [alice.subscribe("presence-ce"), bob.subscribe("presence-ce")];
  await Promise.all([ca, cb].map((c) => next(c, "pusher:subscription_succeeded")));
  const got = new Promise((resolve) => cb.bind("client-hi", (data, meta) => resolve({ data, meta })));
  ca.trigger("client-hi", { n: 1 });
  const { data, meta } = await got;
  assert.deepEqual(data, { n: 1 });
  assert.equal(meta?.user_id, "alice-ce");
});

test("a sign-in needs the app's signature, and only that user joins its own channel", async () => {
  // pusher-js does not let an app subscribe to `#` channels itself: a raw socket does.
  const ws = new WebSocket(`ws://127.0.0.1:${server.port}/app/${APP.key}?protocol=7`);
  const frames = [];
  ws.on("message", (m) => frames.push(JSON.parse(m)));
  const frame = async (event) => {
    await waitFor(event, () => frames.some((f) => f.event === event));
    return frames.splice(frames.findIndex((f) => f.event === event), 1)[0];
  };
  const socket_id = JSON.parse((await frame("pusher:connection_established")).data).socket_id;
  const send = (event, data) => ws.send(JSON.stringify({ event, data }));
  const user_data = JSON.stringify({ id: "erin" });
  send("pusher:signin", { auth: `${APP.key}:${"0".repeat(64)}`, user_data });
  assert.match((await frame("pusher:error")).data.message, /signin refused/);
  send("pusher:subscribe", { channel: "#server-to-user-erin", auth: "" });
  assert.equal((await frame("pusher:subscription_error")).data.status, 403);

  send("pusher:signin", sdk(server.port).authenticateUser(socket_id, { id: "erin" }));
  assert.equal((await frame("pusher:signin_success")).data, JSON.stringify({ user_data }));
  send("pusher:subscribe", { channel: "#server-to-user-erin", auth: "" });
  await frame("pusher_internal:subscription_succeeded");
  send("pusher:subscribe", { channel: "#server-to-user-frank", auth: "" });
  assert.equal((await frame("pusher:subscription_error")).data.status, 403);
  send("pusher:subscribe", { channel: "#anything", auth: "" });
  assert.equal((await frame("pusher:subscription_error")).data.status, 400);
  ws.close();
});
