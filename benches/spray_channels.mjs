// One connection sends N subscribe + unsubscribe pairs on distinct channels, 100 at a time.
// node --experimental-websocket spray_channels.mjs URL TOKEN N PREFIX (see spray_channels.sh)
const [url, token, n, prefix] = process.argv.slice(2);
const ws = new WebSocket(`${url}/ws?token=${token}`);
let got = 0, sent = 0;
const N = Number(n);
ws.onmessage = (e) => {
  const m = JSON.parse(e.data);
  if (m.type === "subscribed" || m.type === "unsubscribed" || m.type === "error") got++;
  if (m.type === "error" && got < 5) console.error(JSON.stringify(m));
  if (got === 2 * N) { console.log("done", got); ws.close(); }
  else if (got === sent) burst();
};
function burst() {
  for (let k = 0; k < 200 && sent < 2 * N; k += 2) {
    const i = sent / 2;
    ws.send(JSON.stringify({ type: "subscribe", channel: `${prefix}${i}` }));
    ws.send(JSON.stringify({ type: "unsubscribe", channel: `${prefix}${i}` }));
    sent += 2;
  }
}
ws.onopen = burst;
ws.onclose = () => process.exit(0);
