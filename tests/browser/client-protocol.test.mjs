// The client's side of the protocol, watched on the wire: the page's WebSocket goes
// through Playwright's WebSocket routing to a real embedded-mode server, so a test can
// read every frame, hold some back (to force an order) or cut the connection.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  TEST_TIMEOUT, embedded, launchBrowser, openPage, register, createRoom, joinRoom, openRoom,
  send, messages, waitDelivered, online, until, sleep, uniq, sendMany, currentRoomId, reportFailure,
} from './harness.mjs';

let browser; let server; let dataDir;
const contexts = [];
let testPages = [];

before(async () => {
  dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'chat-browser-proto-'));
  [server, browser] = await Promise.all([embedded('proto', dataDir).start(), launchBrowser()]);
});
after(async () => {
  for (const c of contexts) await c.close().catch(() => {});
  await browser?.close().catch(() => {});
  await server?.stop('SIGKILL');
  if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
});

function e2e(name, fn) {
  test(name, { timeout: TEST_TIMEOUT }, async () => {
    testPages = [];
    try { await fn(); } catch (e) { await reportFailure(name, testPages); throw e; }
  });
}

async function page() {
  const p = await openPage(browser, server.url);
  contexts.push(p.context()); testPages.push(p);
  return p;
}

/**
 * Routes the page's WebSocket through a tap. `tap.sent` / `tap.received`: frames per
 * connection (arrays of parsed frames); `tap.hold(pred, ms)`: delays server frames that
 * match; `tap.refuse = true`: new connections are closed at once; `tap.cut()`: closes the
 * open one; `tap.answer = (frame) => reply | null`: answers client frames in the server's stead.
 */
async function tap(p) {
  const t = { conns: [], refuse: false, refused: 0, holds: [], sent: [], received: [] };
  const quietly = (fn) => { try { Promise.resolve(fn()).catch(() => {}); } catch { /* closed already */ } };
  t.hold = (pred, ms) => t.holds.push({ pred, ms });
  t.cut = () => { for (const c of t.conns) quietly(() => c.close({ code: 4000, reason: 'cut by the test' })); t.conns = []; };
  await p.routeWebSocket(/\/ws$/, (ws) => {
    if (t.refuse) { t.refused++; quietly(() => ws.close({ code: 4000, reason: 'refused by the test' })); return; }
    const sent = []; const received = [];
    t.sent.push(sent); t.received.push(received);
    t.conns.push(ws);
    const srv = ws.connectToServer();
    ws.onMessage((m) => {
      const f = JSON.parse(m);
      sent.push(f);
      // `t.answer(frame)` may answer a client frame itself instead of the server.
      const reply = t.answer && t.answer(f);
      if (reply) ws.send(JSON.stringify(reply)); else srv.send(m);
    });
    srv.onMessage((m) => {
      const f = JSON.parse(m);
      const h = t.holds.find((x) => x.pred(f));
      const deliver = () => { received.push(f); ws.send(m); };
      if (h) setTimeout(deliver, h.ms); else deliver();
    });
    ws.onClose(() => quietly(() => srv.close()));
    srv.onClose((code, reason) => quietly(() => ws.close({ code, reason })));
  });
  return t;
}

const outbox = (p) => p.evaluate(() => Object.keys(localStorage).filter((k) => k.startsWith('chat.outbox.')).flatMap((k) => JSON.parse(localStorage.getItem(k))));

e2e('the own message shows once whether its ack or its message frame comes first', async () => {
  const a = await page();
  const t = await tap(a);
  await a.reload();
  const an = uniq('ann');
  await register(a, an);
  await createRoom(a, uniq('order-'));
  for (const [first, later] of [['message', 'ack'], ['ack', 'message']]) {
    const body = `${first} first ${uniq('')}`;
    // Hold back the other frame of this send by 800 ms.
    t.holds = [];
    t.hold((f) => (later === 'ack' ? f.type === 'ack' && f.message?.body === body : f.type === 'message' && f.message?.body === body), 800);
    await send(a, body);
    await waitDelivered(a, body);
    await sleep(1200);
    const order = t.received.flat().filter((f) => (f.type === 'ack' || f.type === 'message') && f.message?.body === body).map((f) => f.type);
    assert.deepEqual(order, [first, later], 'the frames came in the forced order');
    const shown = (await messages(a)).filter((m) => m.body === body);
    assert.equal(shown.length, 1, `${first} first: shown once`);
    assert.equal(shown[0].pending, false);
    assert.deepEqual(await outbox(a), []);
  }
  const bodies = (await messages(a)).map((m) => m.body);
  assert.equal(new Set(bodies).size, bodies.length, 'no duplicates');
});

e2e('after a reconnect every room is resubscribed with since = the newest position held, and nothing is missed or doubled', async () => {
  const a = await page(); const b = await page();
  const t = await tap(a);
  await a.reload();
  const an = uniq('ann'); const bn = uniq('ben');
  const busy = uniq('busy-'); const quiet = uniq('quiet-');
  await Promise.all([register(a, an), register(b, bn)]);
  await createRoom(a, quiet);
  await createRoom(a, busy);
  await joinRoom(b, busy);
  const busyId = await currentRoomId(a);
  await send(a, 'one');
  await send(b, 'two');
  await waitDelivered(a, 'two');
  await send(a, 'three');
  await waitDelivered(b, 'three');
  // Wait for the stream's copy of a's own message (the ack alone does not move the cursor).
  await until(() => t.received.flat().some((f) => f.type === 'message' && f.message.body === 'three'), { what: 'message frame' });
  await openRoom(a, busy);
  const held = Math.max(...(await messages(a)).map((m) => m.position));
  const quietId = await a.evaluate((name) => document.querySelector(`[data-testid="room-item"][data-room-name="${name}"]`).dataset.roomId, quiet);
  // The open room was marked read up to the newest position.
  await until(() => t.sent.flat().some((f) => f.type === 'read' && f.room === busyId && f.position === held), { what: 'read frame' });

  // Cut the connection and keep it down while b writes.
  t.refuse = true;
  t.cut();
  await a.locator('[data-testid="conn-state"][data-state="reconnecting"]').waitFor();
  const missed = await sendMany(b, busyId, ['four (while a was away)', 'five (while a was away)']);
  assert.ok(missed[0].position > held);
  await until(() => t.refused >= 1, { what: 'a refused reconnect' });
  t.refuse = false;
  await online(a);
  await waitDelivered(a, 'five (while a was away)');

  const subs = t.sent[t.sent.length - 1].filter((f) => f.type === 'subscribe');
  const since = Object.fromEntries(subs.map((f) => [f.room, f.since]));
  assert.equal(since[busyId], held, 'busy room: since = newest position held');
  assert.equal(since[quietId], -1, 'a room with no messages: since = -1');
  assert.equal(subs.length, 2, 'each room once');
  const bodies = (await messages(a)).map((m) => m.body);
  assert.deepEqual(bodies, ['one', 'two', 'three', 'four (while a was away)', 'five (while a was away)']);
});

e2e('typing frames are throttled while the user types', async () => {
  const a = await page();
  const t = await tap(a);
  await a.reload();
  await register(a, uniq('ann'));
  await createRoom(a, uniq('typing-'));
  const t0 = Date.now();
  await a.getByTestId('composer').pressSequentially('typed slowly, key by key', { delay: 60 });
  const secs = (Date.now() - t0) / 1000;
  const typing = t.sent.flat().filter((f) => f.type === 'typing');
  assert.ok(typing.length >= 1 && typing.length <= Math.ceil(secs / 2) + 1, `${typing.length} typing frames in ${secs.toFixed(1)} s`);
});

e2e('a refused send shows as failed and can be retried; a retryable refusal is retried by itself', async () => {
  const a = await page();
  const t = await tap(a);
  await a.reload();
  await register(a, uniq('ann'));
  await createRoom(a, uniq('retry-'));
  const refusal = (f, code, retryable) => ({ type: 'error', code, message: 'refused by the test', retryable, ref: f.client_msg_id });

  // Not retryable: the message stays, marked failed, with Retry.
  t.answer = (f) => (f.type === 'send' && f.body === 'refused once' ? refusal(f, 'not_member', false) : null);
  await send(a, 'refused once');
  const row = a.locator('[data-testid="message"][data-failed="true"]', { hasText: 'refused once' });
  await row.waitFor();
  await sleep(1500);
  assert.equal(t.sent.flat().filter((f) => f.type === 'send' && f.body === 'refused once').length, 1, 'not resent by itself');
  t.answer = null;
  await row.getByTestId('retry-send').click();
  assert.equal(await waitDelivered(a, 'refused once'), 1);
  const ids = new Set(t.sent.flat().filter((f) => f.type === 'send' && f.body === 'refused once').map((f) => f.client_msg_id));
  assert.equal(ids.size, 1, 'the retry keeps the client_msg_id');

  // Retryable (e.g. the log is unavailable): sent again after a pause, same id.
  let refused = 0;
  t.answer = (f) => (f.type === 'send' && f.body === 'try again' && refused++ < 2 ? refusal(f, 'unavailable', true) : null);
  await send(a, 'try again');
  assert.equal(await waitDelivered(a, 'try again', 20_000), 1);
  const tries = t.sent.flat().filter((f) => f.type === 'send' && f.body === 'try again');
  assert.equal(tries.length, 3);
  assert.equal(new Set(tries.map((f) => f.client_msg_id)).size, 1);
  assert.deepEqual(await outbox(a), []);
});
