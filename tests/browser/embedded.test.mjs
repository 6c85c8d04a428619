// Browser test against the embedded mode: one `chat serve` on a data directory (SQLite,
// in-process bus), restarted on the same directory. A TCP proxy gives the pages one stable
// origin (localStorage is per origin) while the server comes back on a new port.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  TEST_TIMEOUT, embedded, checkAssets, launchBrowser, openPage, register, login, createRoom,
  joinRoom, openRoom, roomItem, send, messages, waitDelivered, online, uniq, Proxy, shot,
  until, sleep,
} from './harness.mjs';

let browser; let server; let proxy; let dataDir;
const contexts = [];

before(async () => {
  dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'chat-browser-'));
  [server, browser] = await Promise.all([embedded('emb-0', dataDir).start(), launchBrowser()]);
  proxy = await new Proxy(server.url).start();
});
after(async () => {
  for (const c of contexts) await c.close().catch(() => {});
  await browser?.close().catch(() => {});
  await proxy?.close().catch(() => {});
  await server?.stop('SIGKILL');
  if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
});

test('embedded: the binary serves the client in static/', { timeout: TEST_TIMEOUT }, async () => {
  await checkAssets(server.url);
});

test('embedded: the page runs under its Content-Security-Policy with nothing refused', { timeout: TEST_TIMEOUT }, async () => {
  const r = await fetch(server.url + '/');
  const csp = r.headers.get('content-security-policy') || '';
  assert.match(csp, /default-src 'self'/);
  assert.match(csp, /frame-ancestors 'none'/);
  assert.doesNotMatch(csp, /unsafe-inline/);
  assert.equal(r.headers.get('x-content-type-options'), 'nosniff');
  const a = await openPage(browser, server.url); contexts.push(a.context());
  await register(a, uniq('csp'));
  await createRoom(a, uniq('csp-'));
  await send(a, 'styled by the CSSOM');
  await waitDelivered(a, 'styled by the CSSOM');
  // Avatars get their colour through a CSS custom property, set without a style attribute.
  const hues = await a.evaluate(() => [...document.querySelectorAll('.avatar')].map((e) => e.style.getPropertyValue('--hue')));
  assert.ok(hues.length >= 2 && hues.every((h) => h !== ''), `avatar hues: ${hues}`);
  assert.deepEqual(await a.evaluate(() => window.__cspViolations), []);
  assert.deepEqual(a.errors, []);
});

test('embedded: two tabs chat; after a server restart on the same data dir users, room and history remain', { timeout: TEST_TIMEOUT }, async () => {
  const a = await openPage(browser, proxy.url); contexts.push(a.context());
  const b = await openPage(browser, proxy.url); contexts.push(b.context());
  const an = uniq('ann'); const bn = uniq('ben'); const rn = uniq('home-');
  await Promise.all([register(a, an), register(b, bn)]);
  await createRoom(a, rn);
  await joinRoom(b, rn);
  const before = [`first from ${an}`, `answer from ${bn}`, 'and one more'];
  await send(a, before[0]);
  await waitDelivered(b, before[0]);
  await send(b, before[1]);
  await waitDelivered(a, before[1]);
  await send(a, before[2]);
  await waitDelivered(b, before[2]);

  // Restart the server on the same data directory (graceful stop, new process, new port).
  await server.stop('SIGTERM');
  await a.locator('[data-testid="conn-state"][data-state="reconnecting"]').waitFor();
  server = await embedded('emb-1', dataDir).start();
  proxy.target = new URL(server.url);

  // The pages reconnect by themselves, and chat goes on.
  await Promise.all([online(a), online(b)]);
  await send(b, 'still here after the restart');
  assert.equal(await waitDelivered(a, 'still here after the restart', 20_000), 1);

  // After a reload both are still logged in, with the room and its whole history.
  const all = [...before, 'still here after the restart'];
  for (const p of [a, b]) {
    await p.reload();
    await online(p);
    await roomItem(p, rn).waitFor();
    await openRoom(p, rn);
    await waitDelivered(p, all[all.length - 1]);
    assert.deepEqual((await messages(p)).map((m) => m.body), all);
  }
  // The password survived too: log out and in again.
  await b.getByTestId('logout').click();
  await b.getByTestId('login-view').waitFor();
  await login(b, bn);
  await openRoom(b, rn);
  await waitDelivered(b, all[0]);
  assert.deepEqual((await messages(b)).map((m) => m.body), all);
  await shot(a, '09-embedded-after-restart');
  assert.deepEqual([...a.errors, ...b.errors], []);
});

test('embedded: the room list reaches public rooms beyond its first page ("More rooms") and keeps them', { timeout: TEST_TIMEOUT }, async () => {
  // 210 public rooms of two other users: the first page of the list holds 200 of them.
  const api = async (method, p, token, body) => {
    const r = await fetch(server.url + p, {
      method,
      headers: Object.assign({ 'content-type': 'application/json' }, token ? { authorization: 'Bearer ' + token } : {}),
      body: body ? JSON.stringify(body) : undefined,
    });
    assert.ok(r.ok, `${method} ${p}: ${r.status}`);
    return r.json();
  };
  const prefix = uniq('many-');
  const names = [];
  for (let u = 0; u < 2; u++) {
    const { token } = await api('POST', '/api/register', null, { username: uniq('maker'), password: 'correct horse battery' });
    for (let i = 0; i < 105; i++) {
      const name = `${prefix}-${u}-${String(i).padStart(3, '0')}`;
      await api('POST', '/api/rooms', token, { name });
      names.push(name);
    }
  }
  const p = await openPage(browser, proxy.url); contexts.push(p.context());
  await register(p, uniq('browser'));
  const mine = () => p.locator(`[data-testid="other-room-list"] [data-testid="room-item"][data-room-name^="${prefix}"]`);
  // (Rooms of the tests before come first: the oldest are on the first page.)
  await until(async () => (await mine().count()) > 0, { what: 'the first page of rooms' });
  assert.ok((await mine().count()) < 210);
  await p.getByTestId('more-rooms').click();
  await until(async () => (await mine().count()) === 210, { what: 'all 210 rooms after "More rooms"' });
  assert.equal(await p.getByTestId('more-rooms').isVisible(), false);
  // The next poll of the list keeps them; a room of the second page can be joined.
  await p.evaluate(() => window.dispatchEvent(new Event('focus')));
  await sleep(1000);
  assert.equal(await mine().count(), 210);
  await joinRoom(p, names[names.length - 1]);
  await until(async () => (await p.locator(`[data-testid="room-list"] [data-room-name="${names[names.length - 1]}"]`).count()) === 1, { what: 'the joined room among my rooms' });
  assert.deepEqual(p.errors, []);
});
