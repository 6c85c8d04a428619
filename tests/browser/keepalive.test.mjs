// A standard Node client's heartbeat against /ws: the `ws` package, the classic pattern of
// its README (ping every 10 s; a connection whose last ping got no pong is terminated),
// through 65 s of quiet (longer than the server's 60 s idle timeout); the connection stays
// and still receives the room's messages. Before the server answered pings, the heartbeat
// terminated the connection after 20 s. No browser: the binary only (embedded mode).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import WebSocket from 'ws';
import { embedded, uniq, sleep, PASSWORD } from './harness.mjs';

const QUIET_MS = 65_000;
const HEARTBEAT_MS = 10_000;
let server; let dataDir;

before(async () => {
  dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'chat-keepalive-'));
  server = await embedded('keepalive', dataDir).start();
});
after(async () => {
  await server?.stop('SIGKILL');
  if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
});

async function api(method, p, body, token) {
  const headers = { 'content-type': 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await fetch(server.url + p, { method, headers, body: body && JSON.stringify(body) });
  const text = await res.text();
  assert.ok(res.ok, `${method} ${p}: ${res.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

/** A `ws` client whose JSON frames can be awaited by type. */
async function connect() {
  const ws = new WebSocket(server.url.replace(/^http/, 'ws') + '/ws');
  const frames = [];
  let wake = () => {};
  ws.on('message', (data) => { frames.push(JSON.parse(data.toString())); wake(); });
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
  ws.frame = async (type, within = 15_000) => {
    const deadline = Date.now() + within;
    for (;;) {
      const i = frames.findIndex((f) => f.type === type);
      if (i >= 0) return frames.splice(i, 1)[0];
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no ${type} frame within ${within} ms`);
      await new Promise((r) => { wake = r; setTimeout(r, Math.min(left, 500)); });
    }
  };
  return ws;
}

test('Node ws: heartbeat pings are answered and the connection outlives 65 s of quiet', { timeout: 120_000 }, async () => {
  const alice = await api('POST', '/api/register', { username: uniq('alice'), password: PASSWORD });
  const bob = await api('POST', '/api/register', { username: uniq('bob'), password: PASSWORD });
  const room = await api('POST', '/api/rooms', { name: uniq('quiet-') }, alice.token);
  await api('POST', `/api/rooms/${room.id}/join`, undefined, bob.token);

  const a = await connect();
  let closed = null;
  a.on('close', (code) => { closed = code; });
  a.send(JSON.stringify({ type: 'hello', token: alice.token }));
  await a.frame('welcome');
  a.send(JSON.stringify({ type: 'subscribe', room: room.id, since: null }));
  await a.frame('subscribed');

  // The heartbeat of the `ws` README.
  let alive = true; let terminated = false; let pongs = 0;
  a.on('pong', (data) => { alive = true; if (data.toString() === 'hb') pongs += 1; });
  const heartbeat = setInterval(() => {
    if (!alive) { terminated = true; a.terminate(); return; }
    alive = false;
    a.ping('hb');
  }, HEARTBEAT_MS);
  try {
    await sleep(QUIET_MS);
  } finally {
    clearInterval(heartbeat);
  }
  assert.equal(terminated, false, 'a heartbeat ping went unanswered');
  assert.equal(closed, null, `closed with ${closed}`);
  assert.ok(pongs >= 6, `${pongs} pongs in ${QUIET_MS} ms`);

  const b = await connect();
  b.send(JSON.stringify({ type: 'hello', token: bob.token }));
  await b.frame('welcome');
  b.send(JSON.stringify({ type: 'send', room: room.id, client_msg_id: 'k1', body: 'still there?' }));
  await b.frame('ack');
  const m = await a.frame('message');
  assert.equal(m.message.body, 'still there?');
  assert.equal(closed, null);
  a.close(); b.close();
});
