// A fleet of two machines through one Redis: a Pusher client on one, the SDK's calls to the
// other; presence members across both, and a machine killed with its member in a channel.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { client, connected, next, sdk, startRedis, startServer, waitFor } from "./helpers.mjs";

let redis, a, b, c;
before(async () => {
  redis = await startRedis();
  const fleet = (node) => ["--redis", redis.url, "--node-id", node, "--redis-prefix", "pf:"];
  [a, b] = [await startServer({ extra: fleet("a") }), await startServer({ extra: fleet("b") })];
  // The tests after a machine's death ask the third.
  c = await startServer({ extra: fleet("c") });
});
after(() => [a, b, c, redis].forEach((p) => p.stop()));

const open = [];
after(() => open.forEach((c) => c.disconnect()));
const make = async (server, options) => {
  const c = await connected(client(server.port, options));
  open.push(c);
  return c;
};

test("an event sent to one machine reaches a client of the other", async () => {
  const c = await make(a);
  const ch = c.subscribe("private-fleet");
  await next(ch, "pusher:subscription_succeeded");
  const got = next(ch, "crossed");
  const r = await sdk(b.port).trigger("private-fleet", "crossed", { from: "b" });
  assert.equal(r.status, 200);
  assert.deepEqual(await got, { from: "b" });
});

test("a presence channel opens with its members before any of its events", async () => {
  const api = sdk(b.port);
  let ticking = true;
  const ticker = (async () => {
    while (ticking) {
      await api.trigger("presence-busy", "tick", 1);
    }
  })();
  try {
    for (let i = 0; i < 15; i++) {
      const c = await make(a, { user: { id: `u${i}`, info: {} } });
      const ch = c.subscribe("presence-busy");
      const order = [];
      // Recorded as pusher-js dispatches them (a promise would see them a tick later).
      ch.bind("tick", () => order.push("tick"));
      ch.bind("pusher:member_added", () => order.push("member_added"));
      ch.bind("pusher:subscription_succeeded", () => order.push("succeeded"));
      await next(ch, "pusher:subscription_succeeded");
      assert.equal(order[0], "succeeded", `subscription ${i}: ${order.join(",")}`);
    }
  } finally {
    ticking = false;
    await ticker;
  }
});

test("presence is the fleet's, and a killed machine's member is removed", async () => {
  const alice = await make(a, { user: { id: "alice", info: { on: "a" } } });
  const room = alice.subscribe("presence-fleet");
  await next(room, "pusher:subscription_succeeded");
  // Members reach Redis within a moment (written in batches): once b sees alice, so does bob.
  const users = async () =>
    (await (await sdk(b.port).get({ path: "/channels/presence-fleet/users" })).json()).users;
  await waitFor("alice in the fleet's presence", async () => (await users()).length === 1);
  const added = next(room, "pusher:member_added");
  const bob = client(b.port, { user: { id: "bob", info: { on: "b" } } });
  await connected(bob);
  const bobs = bob.subscribe("presence-fleet");
  const seen = await next(bobs, "pusher:subscription_succeeded");
  assert.deepEqual(seen.get("alice")?.info, { on: "a" }, "alice, on the other machine");
  assert.deepEqual(await added, { id: "bob", info: { on: "b" } });
  await waitFor("bob in the fleet's presence", async () => (await users()).length === 2);
  assert.deepEqual((await users()).map((u) => u.id).sort(), ["alice", "bob"]);
  const removed = next(room, "pusher:member_removed", 30_000);
  b.stop();
  bob.disconnect();
  assert.equal((await removed).id, "bob");
});

test("a signed-in user gets its events on any machine, and is terminated from another", async () => {
  const carol = await make(a, { signin: { id: "carol", name: "Carol" } });
  const other = await make(a, { signin: { id: "dave" } });
  for (const who of [carol, other]) who.signin();
  await Promise.all([carol, other].map((who) => who.user.signinDonePromise));
  const personal = carol.user.serverToUserChannel;
  if (!personal.subscribed) await next(personal, "pusher:subscription_succeeded");
  if (!other.user.serverToUserChannel.subscribed) {
    await next(other.user.serverToUserChannel, "pusher:subscription_succeeded");
  }
  // The bridge relays the user's events once its subscription is in (written in batches).
  const got = new Promise((resolve) => carol.user.bind("note", resolve));
  await waitFor("carol's event", async () => {
    await sdk(c.port).sendToUser("carol", "note", { for: "carol" });
    return Promise.race([got.then(() => true), new Promise((r) => setTimeout(() => r(false), 200))]);
  });
  assert.deepEqual(await got, { for: "carol" });

  const closed = new Promise((resolve) =>
    carol.connection.bind("state_change", ({ current }) => current === "disconnected" && resolve()),
  );
  const r = await sdk(c.port).terminateUserConnections("carol");
  assert.equal(r.status, 200);
  await closed;
  // 4009: pusher-js does not come back; dave, on the same machine, stays.
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(carol.connection.state, "disconnected");
  assert.equal(other.connection.state, "connected");
});

test("the channels listed are the fleet's", async () => {
  const client = await make(a);
  const ch = client.subscribe("private-only-on-a=1,x;y");
  await next(ch, "pusher:subscription_succeeded");
  const listed = async () =>
    (await (await sdk(c.port).get({ path: "/channels", params: { filter_by_prefix: "private-only" } })).json())
      .channels;
  await waitFor("a's channel listed by b", async () => "private-only-on-a=1,x;y" in (await listed()));
  ch.unsubscribe();
  await waitFor("gone once unsubscribed", async () => !("private-only-on-a=1,x;y" in (await listed())));
});
