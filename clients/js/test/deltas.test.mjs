// Deltas (docs/PROTOCOL.md section 10) through the client against a real server: rebuilt
// exactly, and one that does not apply makes the client subscribe again, never show it.

import assert from "node:assert/strict";
import { after, test } from "node:test";

import { fixtures } from "./helpers.mjs";

const { server, backend, client } = fixtures(after);

/** A 2 KB document of which each message changes a few fields. */
function doc(n) {
  const rows = Array.from({ length: 30 }, (_, i) => ({ id: i, name: `instrument ${i}`, open: true, price: 100 + i }));
  return { seq: n, price: 1000 + n, updated: `12:00:${String(n).padStart(2, "0")}`, rows };
}

/** A WebSocket that shows the client each frame through `tamper` first, and counts deltas. */
function watched(tamper = (data) => data) {
  const seen = { deltas: 0 };
  class Watched extends WebSocket {
    set onmessage(handler) {
      super.onmessage =
        handler &&
        ((e) => {
          if (typeof e.data === "string" && e.data.includes('"delta":true')) seen.deltas += 1;
          handler({ data: tamper(e.data, seen) });
        });
    }
    get onmessage() {
      return super.onmessage;
    }
  }
  return { Watched, seen };
}

/** Waits for `n` messages on `c`, recording them. */
function messages(c) {
  const got = [];
  const errors = [];
  c.on("message", (m) => got.push(m));
  c.on("error", (e) => errors.push(e));
  return {
    got,
    errors,
    async until(n) {
      const deadline = Date.now() + 5000;
      while (got.length < n) {
        assert.ok(Date.now() < deadline, `${got.length} of ${n} messages`);
        await new Promise((r) => setTimeout(r, 10));
      }
    },
  };
}

test("channel messages sent as deltas are rebuilt exactly", async () => {
  const s = await server();
  const { Watched, seen } = watched();
  const c = client(s.ws, "7", { deltas: true, WebSocket: Watched });
  const rec = messages(c);
  const subscribed = new Promise((r) => c.on("subscribed", r));
  c.connect();
  await subscribed;
  for (let n = 1; n <= 8; n++) {
    await backend(s).publish("news", doc(n));
    await rec.until(n);
  }
  assert.deepEqual(
    rec.got.map((m) => [m.offset, m.message]),
    Array.from({ length: 8 }, (_, i) => [i + 1, doc(i + 1)]),
  );
  assert.equal(seen.deltas, 7, "all but the first");
  assert.deepEqual(rec.errors, []);
});

test("a delta that does not apply is never shown: the client subscribes again from its offset", async () => {
  const s = await server();
  // The third message's delta is damaged on its way (a digit of its checksum changed).
  const damage = (data) => data.replace(/(.);"}$/, (_, d) => `${d === "0" ? "1" : "0"};"}`);
  const { Watched, seen } = watched((data, seen) =>
    data.includes('"offset":3,"delta":true') && seen.deltas === 2 ? damage(data) : data,
  );
  const c = client(s.ws, "7", { deltas: true, WebSocket: Watched });
  const rec = messages(c);
  const subscribed = new Promise((r) => c.on("subscribed", r));
  c.connect();
  await subscribed;
  for (let n = 1; n <= 6; n++) {
    await backend(s).publish("news", doc(n));
    await rec.until(n);
  }
  assert.deepEqual(
    rec.got.map((m) => [m.offset, m.message]),
    Array.from({ length: 6 }, (_, i) => [i + 1, doc(i + 1)]),
  );
  assert.deepEqual(rec.errors.map((e) => e.code), ["bad_delta"]);
  assert.ok(seen.deltas >= 4, `${seen.deltas} deltas`);
});
