// A server with history on (--history-size): messages carry offsets for fanfare's clients, and
// Pusher sockets still get every event, in Pusher's shape.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { client, connected, next, publish, sdk, startServer } from "./helpers.mjs";

let server;
before(async () => (server = await startServer({ extra: ["--history-size", "100"] })));
after(() => server.stop());

test("events, fanfare's messages and client events reach Pusher sockets with history on", async () => {
  const [a, b] = [await connected(client(server.port)), await connected(client(server.port))];
  try {
    const [ca, cb] = [a.subscribe("private-kept"), b.subscribe("private-kept")];
    await Promise.all([ca, cb].map((c) => next(c, "pusher:subscription_succeeded")));
    const triggered = next(cb, "kept");
    await sdk(server.port).trigger("private-kept", "kept", { n: 1 });
    assert.deepEqual(await triggered, { n: 1 });
    const plain = next(cb, "message");
    await publish(server.port, "pusher:private-kept", { n: 2 });
    assert.deepEqual(await plain, { n: 2 });
    const typed = next(cb, "client-typing");
    ca.trigger("client-typing", { n: 3 });
    assert.deepEqual(await typed, { n: 3 });
  } finally {
    a.disconnect();
    b.disconnect();
  }
});
