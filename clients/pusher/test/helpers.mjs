// Real `fanfare serve` processes with the Pusher front on, for Pusher's own clients and SDK.

import { spawn } from "node:child_process";
import net from "node:net";
import { fileURLToPath } from "node:url";

import Pusher from "pusher-js";
import PusherServer from "pusher";

export const APP = { appId: "4242", key: "fanfare-key", secret: "fanfare-secret" };
export const API_KEY = "pusher-test-api-key";
const BIN =
  process.env.FANFARE_BIN ?? fileURLToPath(new URL("../../../target/debug/fanfare", import.meta.url));

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export async function waitFor(what, check, ms = 10_000) {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function connects(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, "127.0.0.1");
    s.once("connect", () => (s.destroy(), resolve(true)));
    s.once("error", () => resolve(false));
  });
}

/** A redis-server on a free port, with no persistence. */
export async function startRedis() {
  const port = await freePort();
  const proc = spawn("redis-server", ["--port", String(port), "--save", "", "--appendonly", "no"], {
    stdio: "ignore",
  });
  await waitFor("redis-server", () => connects(port));
  return { port, url: `redis://127.0.0.1:${port}`, stop: () => proc.kill("SIGKILL") };
}

/** `fanfare serve` with the Pusher front (on `port`, a free one if not given), ready when this
 * resolves; `stop` kills it, `term` stops it as an operator does (SIGTERM: it drains). */
export async function startServer({ extra = [], port } = {}) {
  port ??= await freePort();
  const args = [
    "serve", "--listen", `127.0.0.1:${port}`, "--workers", "2",
    "--token-secret", "unused", "--api-key", API_KEY,
    "--pusher-app-id", APP.appId, "--pusher-key", APP.key, "--pusher-secret", APP.secret,
    ...extra,
  ];
  const proc = spawn(BIN, args, { stdio: ["ignore", "ignore", "inherit"] });
  await waitFor("fanfare", () => connects(port));
  const exited = new Promise((resolve) => proc.once("exit", resolve));
  return {
    port,
    stop: () => proc.kill("SIGKILL"),
    term: async () => (proc.kill("SIGTERM"), await exited),
  };
}

/** The official server SDK, pointed at `port`. */
export function sdk(port) {
  return new PusherServer({ ...APP, host: "127.0.0.1", port: String(port), useTLS: false });
}

/** pusher-js as an application configures it for a self-hosted server; channels are
 * authorised by the official SDK, as an application's auth endpoint does. */
export function client(port, { user, key = APP.key, authorize, signin } = {}) {
  const signer = sdk(port);
  authorize ??= (params, callback) => {
    const presence = user ? { user_id: user.id, user_info: user.info } : undefined;
    const channel = params.channelName;
    const signed = channel.startsWith("presence-")
      ? signer.authorizeChannel(params.socketId, channel, presence)
      : signer.authorizeChannel(params.socketId, channel);
    callback(null, signed);
  };
  return new Pusher(key, {
    cluster: "local",
    wsHost: "127.0.0.1",
    wsPort: port,
    forceTLS: false,
    enabledTransports: ["ws"],
    disableStats: true,
    channelAuthorization: { customHandler: authorize },
    // Signs in as `signin` (user data with an id), as an app's user authentication endpoint does.
    userAuthentication: {
      customHandler: (params, callback) =>
        callback(null, signer.authenticateUser(params.socketId, signin)),
    },
  });
}

/** Resolves with the first `event` on `bindable` (a channel or the connection). */
export function next(bindable, event, ms = 10_000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} within ${ms} ms`)), ms);
    const handler = (data) => {
      clearTimeout(timer);
      bindable.unbind(event, handler);
      resolve(data);
    };
    bindable.bind(event, handler);
  });
}

export async function connected(pusher) {
  if (pusher.connection.state !== "connected") await next(pusher.connection, "connected");
  return pusher;
}

/** Publishes through fanfare's own API. */
export async function publish(port, channel, message) {
  const r = await fetch(`http://127.0.0.1:${port}/publish`, {
    method: "POST",
    headers: { authorization: `Bearer ${API_KEY}` },
    body: JSON.stringify({ channel, message }),
  });
  if (r.status !== 202) throw new Error(`publish: ${r.status} ${await r.text()}`);
}
