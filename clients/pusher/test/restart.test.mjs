// A server restarted under pusher-js: it is told to reconnect (4200 while the server drains),
// comes back by itself, subscribes again, and gets what is sent after.

import assert from "node:assert/strict";
import { test } from "node:test";

import { client, connected, next, sdk, startServer } from "./helpers.mjs";

test("pusher-js reconnects and resubscribes after a server restart", async () => {
  const extra = ["--shutdown-timeout", "2"];
  let server = await startServer({ extra });
  const c = await connected(client(server.port));
  try {
    const ch = c.subscribe("private-restart");
    await next(ch, "pusher:subscription_succeeded");
    const closed = new Promise((resolve) =>
      c.connection.bind("state_change", (s) => s.current !== "connected" && resolve(s.current)));
    await server.term();
    await closed;
    server = await startServer({ port: server.port, extra });
    await next(ch, "pusher:subscription_succeeded", 20_000);
    assert.equal(c.connection.state, "connected");
    const got = next(ch, "after");
    await sdk(server.port).trigger("private-restart", "after", { n: 1 });
    assert.deepEqual(await got, { n: 1 });
  } finally {
    c.disconnect();
    server.stop();
  }
});
