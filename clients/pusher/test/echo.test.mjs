// Laravel Echo 2 with pusher-js, unmodified, in headless Chromium (Debian's `chromium`, or
// CHROMIUM=/path; driven by playwright-core, nothing downloaded): a private channel's events
// and a presence channel's members, authorised by the official SDK as an application's
// /broadcasting/auth would.

import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import { after, before, test } from "node:test";

import { chromium } from "playwright-core";

import { APP, sdk, startServer } from "./helpers.mjs";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const require = createRequire(import.meta.url);

let server, browser;
before(async () => {
  assert.ok(existsSync(CHROMIUM), `no browser at ${CHROMIUM}: apt-get install -y chromium (or set CHROMIUM)`);
  server = await startServer();
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
});
after(async () => {
  await browser?.close();
  server?.stop();
});

/** A page with pusher-js and Echo loaded, whose channels the SDK authorises for `user`. */
async function page(user) {
  const p = await browser.newPage();
  const signer = sdk(server.port);
  await p.exposeFunction("authorize", (socketId, channel) =>
    channel.startsWith("presence-")
      ? signer.authorizeChannel(socketId, channel, { user_id: user.id, user_info: user.info })
      : signer.authorizeChannel(socketId, channel));
  await p.addScriptTag({ path: require.resolve("pusher-js/dist/web/pusher.js") });
  // Not among the package's exports: loaded from its folder.
  const echo = fileURLToPath(new URL("../node_modules/laravel-echo/dist/echo.iife.js", import.meta.url));
  await p.addScriptTag({ path: echo });
  await p.evaluate(([key, port]) => {
    window.echo = new Echo.default({
      broadcaster: "pusher",
      key,
      cluster: "local",
      wsHost: "127.0.0.1",
      wsPort: port,
      forceTLS: false,
      enabledTransports: ["ws"],
      disableStats: true,
      authorizer: (channel) => ({
        authorize: (socketId, callback) =>
          window.authorize(socketId, channel.name).then((auth) => callback(null, auth), (e) => callback(e, null)),
      }),
    });
  }, [APP.key, server.port]);
  return p;
}

test("Echo listens on a private channel and joins a presence channel", async () => {
  const alice = await page({ id: "1", info: { name: "Alice" } });
  const here = alice.evaluate(() => new Promise((resolve) => {
    window.echo.private("orders").listen(".OrderShipped", (e) => (window.shipped = e));
    window.echo.join("room")
      .here((users) => resolve(users))
      .joining((user) => (window.joined = user));
  }));
  assert.deepEqual(await here, [{ name: "Alice" }]);
  const bob = await page({ id: "2", info: { name: "Bob" } });
  await bob.evaluate(() => new Promise((resolve) => window.echo.join("room").here(resolve)));
  await alice.waitForFunction(() => window.joined);
  assert.deepEqual(await alice.evaluate(() => window.joined), { name: "Bob" });
  // Echo subscribed to private-orders once the page asked; give it a moment, then send.
  await alice.waitForFunction(() => window.echo.connector.pusher.channel("private-orders")?.subscribed);
  await sdk(server.port).trigger("private-orders", "OrderShipped", { id: 7 });
  await alice.waitForFunction(() => window.shipped);
  assert.deepEqual(await alice.evaluate(() => window.shipped), { id: 7 });
});
