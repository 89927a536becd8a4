// The official `pusher` server SDK, unmodified, against fanfare's Pusher HTTP API; and what a
// request that is not signed right is answered.

import assert from "node:assert/strict";
import { createHash, createHmac } from "node:crypto";
import { after, before, test } from "node:test";

import { APP, client, connected, next, sdk, startServer } from "./helpers.mjs";

let server, api;
before(async () => {
  server = await startServer();
  api = sdk(server.port);
});
after(() => server.stop());

const open = [];
const make = async (options) => {
  const c = await connected(client(server.port, options));
  open.push(c);
  return c;
};
after(() => open.forEach((c) => c.disconnect()));

test("trigger reaches every channel named, and never the socket it excludes", async () => {
  const [a, b] = [await make(), await make()];
  const [a1, a2, b1] = [a.subscribe("one"), a.subscribe("two"), b.subscribe("one")];
  await Promise.all([a1, a2, b1].map((c) => next(c, "pusher:subscription_succeeded")));
  const got = [next(a1, "news"), next(a2, "news"), next(b1, "news")];
  const r = await api.trigger(["one", "two"], "news", { n: 1 });
  assert.equal(r.status, 200);
  assert.deepEqual(await Promise.all(got), [{ n: 1 }, { n: 1 }, { n: 1 }]);
  let echoed = false;
  a1.bind("only-others", () => (echoed = true));
  const others = next(b1, "only-others");
  await api.trigger("one", "only-others", "x", { socket_id: a.connection.socket_id });
  assert.equal(await others, "x");
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(echoed, false);
});

test("batch events, channel info, occupied channels and presence users", async () => {
  const alice = await make({ user: { id: "alice", info: {} } });
  const room = alice.subscribe("presence-lounge");
  await next(room, "pusher:subscription_succeeded");
  const got = next(room, "hello");
  const r = await api.triggerBatch([{ channel: "presence-lounge", name: "hello", data: "hi" }]);
  assert.equal(r.status, 200);
  assert.equal(await got, "hi");
  const info = await (await api.get({ path: "/channels/presence-lounge", params: { info: "user_count,subscription_count" } })).json();
  assert.deepEqual(info, { occupied: true, user_count: 1, subscription_count: 1 });
  const list = await (await api.get({ path: "/channels", params: { filter_by_prefix: "presence-", info: "user_count" } })).json();
  assert.deepEqual(list.channels["presence-lounge"], { user_count: 1 });
  const users = await (await api.get({ path: "/channels/presence-lounge/users" })).json();
  assert.deepEqual(users, { users: [{ id: "alice" }] });
  const empty = await (await api.get({ path: "/channels/nobody-here" })).json();
  assert.equal(empty.occupied, false);
  const counted = await (await api.trigger("presence-lounge", "x", 1, { info: "user_count" })).json();
  assert.deepEqual(counted, { channels: { "presence-lounge": { user_count: 1 } } });
});

/** A request signed as the SDK signs it, with `tamper` applied to its parts first. */
async function signed({ method = "POST", path = `/apps/${APP.appId}/events`, body, tamper = {} }) {
  const text = body === undefined ? "" : JSON.stringify(body);
  const params = {
    auth_key: APP.key,
    auth_timestamp: String(Math.floor(Date.now() / 1000)),
    auth_version: "1.0",
    ...(text ? { body_md5: createHash("md5").update(text).digest("hex") } : {}),
    ...tamper.params,
  };
  const query = Object.keys(params).sort().map((k) => `${k}=${params[k]}`).join("&");
  const signature = createHmac("sha256", tamper.secret ?? APP.secret)
    .update(`${method}\n${path}\n${query}`)
    .digest("hex");
  const url = `http://127.0.0.1:${server.port}${path}?${query}&auth_signature=${signature}`;
  const r = await fetch(url, { method, body: tamper.body ?? (text || undefined) });
  return { status: r.status, text: await r.text() };
}

test("what is not signed right is refused, and the server goes on serving", async () => {
  const event = { name: "e", data: "{}", channel: "one" };
  assert.equal((await signed({ body: event })).status, 200);
  assert.equal((await signed({ body: event, tamper: { secret: "wrong" } })).status, 401);
  const old = String(Math.floor(Date.now() / 1000) - 700);
  assert.equal((await signed({ body: event, tamper: { params: { auth_timestamp: old } } })).status, 401);
  assert.equal((await signed({ body: event, tamper: { body: JSON.stringify({ ...event, name: "f" }) } })).status, 401);
  assert.equal((await signed({ body: event, tamper: { params: { auth_key: "other" } } })).status, 401);
  const many = { ...event, channel: undefined, channels: Array.from({ length: 101 }, (_, i) => `c${i}`) };
  const refused = await signed({ body: many });
  assert.equal(refused.status, 400);
  assert.match(refused.text, /1 to 100 channels/);
  assert.equal((await signed({ path: "/apps/999/events", body: event })).status, 404);
  const c = await make();
  const ch = c.subscribe("one");
  await next(ch, "pusher:subscription_succeeded");
  const got = next(ch, "still");
  await api.trigger("one", "still", "serving");
  assert.equal(await got, "serving");
});

test("a batch with one bad event delivers none of it", async () => {
  const c = await make();
  const ch = c.subscribe("batched");
  await next(ch, "pusher:subscription_succeeded");
  let delivered = false;
  ch.bind("first", () => (delivered = true));
  const bad = await signed({
    path: `/apps/${APP.appId}/batch_events`,
    body: { batch: [{ channel: "batched", name: "first", data: "1" }, { channel: "no spaces", name: "second", data: "2" }] },
  });
  assert.equal(bad.status, 400);
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(delivered, false);
});
