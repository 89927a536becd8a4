// Idle Pusher sockets: server RSS per connection, for the Pusher front beside `/ws`.
//
//   cargo build --release
//   ./target/release/fanfare serve --listen 127.0.0.1:9950 --workers 2 --token-secret s \
//       --api-key k --pusher-app-id 1 --pusher-key key --pusher-secret secret &
//   node benches/pusher_idle.mjs 9950 $! 10000 [channels]
//
// Opens N raw WebSockets to /app/key (as pusher-js would), each subscribed to one of
// `channels` public channels (default 100), waits until all are subscribed, and prints the
// server's RSS growth per connection. Needs the `ws` package (clients/pusher's node_modules).
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(new URL("../clients/pusher/package.json", import.meta.url));
const WebSocket = require("ws");

const [port, pid, n, channels = "100"] = process.argv.slice(2);
const rss = () => Number(readFileSync(`/proc/${pid}/status`, "utf8").match(/VmRSS:\s+(\d+)/)[1]) * 1024;
const before = rss();
const sockets = [];
let subscribed = 0;
const open = (i) =>
  new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/app/key?protocol=7&client=js&version=8.4.0`);
    ws.on("error", reject);
    ws.on("message", (raw) => {
      const m = JSON.parse(raw);
      if (m.event === "pusher:connection_established") {
        ws.send(JSON.stringify({ event: "pusher:subscribe", data: { channel: `idle-${i % Number(channels)}` } }));
      } else if (m.event === "pusher_internal:subscription_succeeded") {
        subscribed++;
        resolve();
      }
    });
    sockets.push(ws);
  });
for (let i = 0; i < Number(n); i += 200) {
  await Promise.all(Array.from({ length: Math.min(200, Number(n) - i) }, (_, k) => open(i + k)));
}
await new Promise((r) => setTimeout(r, 2000));
const after = rss();
console.log(JSON.stringify({ connections: subscribed, rss_bytes_per_connection: (after - before) / subscribed }));
sockets.forEach((s) => s.terminate());
