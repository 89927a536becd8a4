// Idle Server-Sent Event streams: server RSS per connection, beside idle `/ws` connections.
//
//   cargo build --release
//   ./target/release/fanfare serve --listen 127.0.0.1:9950 --workers 2 --token-secret s --api-key k &
//   node benches/sse_idle.mjs 9950 $! 10000 [secret] [sse|ws]
//
// Opens N streams (`GET /sse`, each its own user's token, no channel: as `fanfare bench
// --messages 0` opens idle WebSockets), waits until every response head has arrived, and
// prints the server's RSS growth per connection. With `ws`, the same for raw WebSocket
// upgrades of `/ws` (a 101 instead of the 200): the two measured the same way.
import { createHmac } from "node:crypto";
import { readFileSync } from "node:fs";
import net from "node:net";

const [port, pid, n, secret = "s", mode = "sse"] = process.argv.slice(2);
const request = (t) =>
  mode === "ws"
    ? `GET /ws?token=${t} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
      `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`
    : `GET /sse?token=${t} HTTP/1.1\r\nHost: x\r\n\r\n`;
const ok = mode === "ws" ? "HTTP/1.1 101" : "HTTP/1.1 200";
const rss = () => Number(readFileSync(`/proc/${pid}/status`, "utf8").match(/VmRSS:\s+(\d+)/)[1]) * 1024;
const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
const token = (sub) => {
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, exp: Math.floor(Date.now() / 1000) + 3600 })}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
};
const before = rss();
const sockets = [];
let open = 0;
const connect = (i) =>
  new Promise((resolve, reject) => {
    const socket = net.connect(Number(port), "127.0.0.1", () =>
      socket.write(request(token(`idle-${i}`))),
    );
    let head = "";
    const onData = (d) => {
      head += d;
      if (!head.includes("\r\n\r\n")) return;
      socket.off("data", onData);
      if (!head.startsWith(ok)) return reject(new Error(head.split("\r\n")[0]));
      open++;
      resolve();
    };
    socket.on("data", onData).on("error", reject);
    sockets.push(socket);
  });
for (let i = 0; i < Number(n); i += 200) {
  await Promise.all(Array.from({ length: Math.min(200, Number(n) - i) }, (_, k) => connect(i + k)));
}
await new Promise((r) => setTimeout(r, 2000));
const after = rss();
console.log(JSON.stringify({ mode, connections: open, rss_bytes_per_connection: Math.round((after - before) / open) }));
sockets.forEach((s) => s.destroy());
