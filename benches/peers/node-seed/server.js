// The design fanfare grew from, written as it is usually written, speaking just enough of
// fanfare's protocol for `fanfare bench` to drive it unchanged:
//   - Node's cluster module: WORKERS processes share PORT;
//   - `ws` in noServer mode: the HTTP server's 'upgrade' event verifies the HS256 token
//     (?token=) and answers 401 before any upgrade;
//   - a Map userId -> socket in each worker;
//   - an Express webhook POST /message {userId, message} (and POST /broadcast {message}),
//     behind the API key;
//   - one Redis publisher and one subscriber connection per worker: every message goes
//     through Redis to every worker, which looks the user up in its own Map.
//
// Environment: PORT (8090), WORKERS (number of CPUs), REDIS_URL (redis://127.0.0.1:6379),
// TOKEN_SECRET, API_KEY.
'use strict';

const cluster = require('node:cluster');
const os = require('node:os');

const PORT = Number(process.env.PORT || 8090);
const WORKERS = Number(process.env.WORKERS || os.cpus().length);
const REDIS_URL = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
const SECRET = process.env.TOKEN_SECRET || 'secret';
const API_KEY = process.env.API_KEY || 'key';
const CHANNEL = 'node-seed:messages';

if (cluster.isPrimary) {
  for (let i = 0; i < WORKERS; i++) cluster.fork();
  let listening = 0;
  cluster.on('listening', () => {
    if (++listening === WORKERS) console.error(`listening on 127.0.0.1:${PORT}`);
  });
  cluster.on('exit', (w, code) => console.error(`worker ${w.process.pid} exited ${code}`));
  process.on('SIGTERM', () => {
    for (const id in cluster.workers) cluster.workers[id].kill();
    process.exit(0);
  });
} else {
  worker().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}

async function worker() {
  const http = require('node:http');
  const express = require('express');
  const jwt = require('jsonwebtoken');
  const { WebSocketServer } = require('ws');
  const { createClient } = require('redis');

  const users = new Map();

  const publisher = createClient({ url: REDIS_URL });
  const subscriber = publisher.duplicate();
  await publisher.connect();
  await subscriber.connect();
  await subscriber.subscribe(CHANNEL, (raw) => {
    const { userId, message } = JSON.parse(raw);
    const frame = JSON.stringify({ type: 'message', message });
    if (userId === undefined) {
      for (const socket of users.values()) socket.send(frame);
    } else {
      const socket = users.get(userId);
      if (socket) socket.send(frame);
    }
  });

  const app = express();
  app.use(express.json({ limit: '64kb', type: () => true }));
  const apiKey = (req, res, next) =>
    req.get('authorization') === `Bearer ${API_KEY}`
      ? next()
      : res.status(401).json({ error: 'missing or wrong API key' });

  app.post('/message', apiKey, async (req, res) => {
    const { userId, message } = req.body || {};
    if (typeof userId !== 'string' || message === undefined) {
      return res.status(400).json({ error: 'userId and message are required' });
    }
    await publisher.publish(CHANNEL, JSON.stringify({ userId, message }));
    res.status(202).json({ ok: true });
  });

  app.post('/broadcast', apiKey, async (req, res) => {
    const { message } = req.body || {};
    if (message === undefined) return res.status(400).json({ error: 'message is required' });
    await publisher.publish(CHANNEL, JSON.stringify({ message }));
    res.status(202).json({ ok: true });
  });

  const server = http.createServer(app);
  const wss = new WebSocketServer({ noServer: true });

  server.on('upgrade', (req, socket, head) => {
    const token = new URL(req.url, 'http://x').searchParams.get('token');
    let claims;
    try {
      claims = jwt.verify(token || '', SECRET, { algorithms: ['HS256'] });
    } catch (e) {
      const body = JSON.stringify({ error: `invalid token: ${e.message}` });
      socket.end(
        `HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
      );
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      const userId = String(claims.sub);
      users.set(userId, ws);
      ws.on('close', () => {
        if (users.get(userId) === ws) users.delete(userId);
      });
      ws.on('error', () => {});
    });
  });

  server.listen(PORT, '127.0.0.1');
}
