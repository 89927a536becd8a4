// Real servers for the client's tests: `fanfare serve` built from this repository (FANFARE_BIN,
// else target/debug/fanfare), a private redis-server, and a TCP proxy that can cut or freeze
// the client's connections.

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import net from "node:net";
import { fileURLToPath } from "node:url";

import { FanfareBackend, FanfareClient } from "../dist/fanfare.js";

export const SECRET = "js-test-secret";
export const API_KEY = "js-test-key";
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

/** Resolves once `check()` is true; fails after `ms`. */
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
  proc.once("error", (e) => {
    throw new Error(`cannot run redis-server (${e.message}): apt-get install -y redis-server`);
  });
  await waitFor("redis-server", () => connects(port));
  return { port, url: `redis://127.0.0.1:${port}`, stop: () => proc.kill("SIGKILL") };
}

/** `fanfare serve` on `port` (a free one if not given), ready when this resolves. */
export async function startServer({ port, redis, node, history = 100, extra = [] } = {}) {
  port ??= await freePort();
  const args = ["serve", "--listen", `127.0.0.1:${port}`, "--workers", "1"];
  args.push("--token-secret", SECRET, "--api-key", API_KEY, "--history-size", String(history));
  if (redis) args.push("--redis", redis.url, "--redis-prefix", "js:", "--node-id", node ?? "n");
  const proc = spawn(BIN, [...args, ...extra], { stdio: ["ignore", "ignore", "pipe"] });
  let log = "";
  proc.stderr.on("data", (d) => (log += d));
  proc.once("error", (e) => {
    throw new Error(`cannot run ${BIN} (${e.message}): cargo build first, or set FANFARE_BIN`);
  });
  const base = `http://127.0.0.1:${port}`;
  await waitFor(`fanfare on ${port}`, async () => {
    try {
      return (await fetch(`${base}/readyz`)).status === 200;
    } catch {
      return false;
    }
  });
  return {
    port,
    base,
    ws: `ws://127.0.0.1:${port}/ws`,
    log: () => log,
    /** SIGTERM, as an operator restarts it: it drains (1012, spread), then exits. */
    term: () =>
      new Promise((resolve) => {
        if (proc.exitCode !== null || proc.signalCode !== null) return resolve();
        proc.once("exit", resolve);
        proc.kill("SIGTERM");
      }),
    stop: () =>
      new Promise((resolve) => {
        // Already gone (killed by a signal leaves exitCode null and sets signalCode).
        if (proc.exitCode !== null || proc.signalCode !== null) return resolve();
        proc.once("exit", resolve);
        proc.kill("SIGKILL");
      }),
  };
}

/** An HS256 token as the server expects it. */
export function token(sub, { channels, ttl } = {}) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const claims = { sub };
  if (channels) claims.channels = channels;
  if (ttl !== undefined) claims.exp = Math.floor(Date.now() / 1000) + ttl;
  const head = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${head}.${createHmac("sha256", SECRET).update(head).digest("base64url")}`;
}

/** A TCP proxy to `target`: `cut()` drops every connection (as a network change does),
 * `hold()` refuses new ones until `release()`, `freeze()` stops forwarding on the current ones
 * without closing them (a dead connection). */
export async function startProxy(target) {
  const sockets = new Set();
  let holding = false;
  let frozen = new Set();
  const server = net.createServer((client) => {
    if (holding) return client.destroy();
    const upstream = net.connect(target, "127.0.0.1");
    const pair = { client, upstream };
    sockets.add(pair);
    const forward = (from, to) =>
      from.on("data", (d) => {
        if (!frozen.has(pair)) to.write(d);
      });
    forward(client, upstream);
    forward(upstream, client);
    const end = () => {
      sockets.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("close", end).on("error", end);
    upstream.on("close", end).on("error", end);
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address();
  const cut = () => {
    for (const { client, upstream } of sockets) {
      client.resetAndDestroy();
      upstream.destroy();
    }
  };
  return {
    ws: `ws://127.0.0.1:${port}/ws`,
    connections: () => sockets.size,
    cut,
    hold() {
      holding = true;
    },
    release() {
      holding = false;
    },
    freeze() {
      frozen = new Set(sockets);
    },
    close: () => new Promise((r) => (cut(), server.close(r))),
  };
}

/** Everything a client emits, in order, with helpers to wait for some of it. */
export function record(client) {
  const events = [];
  for (const name of ["state", "message", "subscribed", "unsubscribed", "lost", "error", "closed"]) {
    client.on(name, (value) => events.push({ event: name, value }));
  }
  return {
    events,
    of: (name) => events.filter((e) => e.event === name).map((e) => e.value),
    until: (what, check, ms) => waitFor(what, () => check(events), ms),
  };
}

/** Servers and clients for one test file, all stopped when the file ends (`after` is
 * node:test's). Clients subscribe to `news` and retry fast. */
export function fixtures(after) {
  const cleanup = [];
  after(async () => {
    for (const stop of cleanup.reverse()) await stop();
  });
  return {
    cleanup,
    async server(options) {
      const s = await startServer(options);
      cleanup.push(s.stop);
      return s;
    },
    backend: (s) => new FanfareBackend({ url: s.base, apiKey: API_KEY }),
    client(url, user, options = {}) {
      const c = new FanfareClient({
        url,
        getToken: () => token(user, { channels: ["news"] }),
        channels: ["news"],
        minReconnectDelay: 50,
        maxReconnectDelay: 500,
        connectTimeout: 1000,
        ...options,
      });
      cleanup.push(() => c.close());
      return c;
    },
  };
}
