// Browser tests against the distributed mode: two gateways and a consumer (PostgreSQL,
// Redis, Kafka), the client as the binary serves it, headless Chromium. Each test has its
// own users and rooms; the cluster is shared by the tests of this file.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  TEST_TIMEOUT, PHONE, startDistributed, checkAssets, launchBrowser, openPage, register, login,
  createRoom, joinRoom, openRoom, roomItem, send, messages, waitDelivered, until, shot, sendMany,
  currentRoomId, online, showRooms, uniq, sleep, Proxy, reportFailure,
} from './harness.mjs';

let C; let browser;
const pages = [];
const T = { timeout: TEST_TIMEOUT };

before(async () => {
  [C, browser] = await Promise.all([startDistributed('dist'), launchBrowser()]);
});
after(async () => {
  for (const p of pages) await p.context().close().catch(() => {});
  await browser?.close().catch(() => {});
  await C?.close();
});

let testPages = [];
async function page(gw, opts) {
  const p = await openPage(browser, typeof gw === 'number' ? C.gw(gw) : gw, opts);
  pages.push(p); testPages.push(p);
  return p;
}

/** A test with the time limit, and a report of its pages when it fails. */
function e2e(name, fn) {
  test(name, T, async () => {
    testPages = [];
    try {
      await fn();
    } catch (e) {
      await reportFailure(name, testPages);
      throw e;
    }
  });
}

/** Two registered users, on gateway 0 and gateway 1, both members of new rooms (a has the first open). */
async function pair(extra = []) {
  const a = await page(0); const b = await page(1);
  const an = uniq('alice'); const bn = uniq('bob'); const rn = uniq('room-');
  await Promise.all([register(a, an), register(b, bn)]);
  for (const name of [...extra, rn]) await createRoom(a, name);
  for (const name of [rn, ...extra]) await joinRoom(b, name);
  return { a, b, an, bn, rn };
}

const count = (sql) => Number(C.sql(sql));
const q = (s) => `'${s.replaceAll("'", "''")}'`;

/** Waits until PostgreSQL has `body` (persisted by the consumer), then checks it stays one row. */
async function persistedOnce(body) {
  await until(() => count(`SELECT count(*) FROM messages WHERE body = ${q(body)}`) >= 1, { what: `"${body}" in PostgreSQL`, timeout: 20_000 });
  await sleep(300);
  assert.equal(count(`SELECT count(*) FROM messages WHERE body = ${q(body)}`), 1, `"${body}" is one row`);
}

e2e('the binary serves the client in static/ (not a stale build)', async () => {
  await checkAssets(C.gw(0));
  await checkAssets(C.gw(1));
});

e2e('two users on two gateways chat both ways; PostgreSQL holds each message once', async () => {
  const a = await page(0); const b = await page(1);
  await a.getByTestId('login-view').waitFor();
  await shot(a, '01-login');
  const an = uniq('alice'); const bn = uniq('bob'); const rn = uniq('general-');
  await Promise.all([register(a, an), register(b, bn)]);
  await createRoom(a, rn);
  await joinRoom(b, rn);

  const m1 = `Hi ${bn}, this is ${an} on gateway 0`;
  await send(a, m1);
  assert.equal(await waitDelivered(a, m1), 1);
  assert.equal(await waitDelivered(b, m1), 1);
  const m2 = `Hello ${an}! ${bn} here, on gateway 1`;
  await send(b, m2);
  assert.equal(await waitDelivered(b, m2), 1);
  assert.equal(await waitDelivered(a, m2), 1);
  const m3 = 'Lunch at noon?';
  await send(a, m3);
  await send(a, 'The usual place, Café Über?');
  await waitDelivered(b, 'The usual place, Café Über?');
  await send(b, 'Sounds good, see you there.');
  await waitDelivered(a, 'Sounds good, see you there.');
  await waitDelivered(b, 'Sounds good, see you there.');

  for (const p of [a, b]) {
    const ms = await messages(p);
    const bodies = ms.map((m) => m.body);
    assert.deepEqual(bodies, [m1, m2, m3, 'The usual place, Café Über?', 'Sounds good, see you there.'], 'same order on both pages');
    assert.ok(ms.every((m) => !m.pending && m.position !== null));
    const pos = ms.map((m) => m.position);
    assert.deepEqual(pos, [...pos].sort((x, y) => x - y), 'ordered by position');
  }
  // Grouping: a's two consecutive messages share one sender header.
  const groups = await a.$$eval('[data-testid="message-group"]', (gs) => gs.map((g) => g.dataset.senderName));
  assert.deepEqual(groups, [an, bn, an, bn]);
  await persistedOnce(m1);
  await persistedOnce(m2);
  await shot(a, '02-room-conversation');
  assert.deepEqual([...a.errors, ...b.errors], []);
});

e2e('a direct message is opened by name, shown by the other user\'s name and delivered live', async () => {
  const { a, b, an, bn } = await pair();
  await a.getByTestId('new-dm').click();
  await a.getByTestId('dm-username').fill(bn);
  await a.getByTestId('dm-submit').click();
  await a.locator('[data-testid="room-title"][data-kind="dm"]', { hasText: bn }).waitFor();
  const dm = await currentRoomId(a);
  await a.locator(`[data-testid="dm-list"] [data-testid="room-item"][data-room-name="${bn}"]`).waitFor();
  const text = `psst ${bn}, a private word`;
  await send(a, text);
  await waitDelivered(a, text);

  // b learns about the new DM by itself, under a's name, with an unread badge.
  const item = b.locator(`[data-testid="dm-list"] [data-testid="room-item"][data-room-name="${an}"]`);
  await item.waitFor({ timeout: 20_000 });
  assert.equal(await item.getAttribute('data-room-id'), dm);
  await until(async () => (await item.getAttribute('data-unread')) === '1', { what: 'DM unread 1' });
  await item.click();
  await b.locator('[data-testid="room-title"][data-kind="dm"]', { hasText: an }).waitFor();
  assert.equal(await waitDelivered(b, text), 1);
  const reply = 'got it, thanks';
  await send(b, reply);
  assert.equal(await waitDelivered(a, reply), 1, 'live to a');
  // The DM is not a room anyone can browse or join.
  assert.equal(await roomItem(b, an).count(), 1);
  await shot(a, '04-direct-message');
});

e2e('typing line and presence dots reach the other user', async () => {
  const a = await page(0);
  const an = uniq('alice'); const bn = uniq('bob'); const rn = uniq('team-');
  await register(a, an);
  await createRoom(a, rn);
  let b = await page(1);
  await register(b, bn);
  await joinRoom(b, rn);
  const dot = a.locator(`[data-testid="member-list"] [data-testid="member"][data-user-name="${bn}"]`);
  await until(async () => (await dot.getAttribute('data-online').catch(() => null)) === 'true', { what: 'b online' });

  // b goes away: the dot goes out.
  await b.context().close();
  await until(async () => (await dot.getAttribute('data-online')) === 'false', { what: 'b offline after close' });

  // b comes back (a new browser, logging in): the dot comes on again without a reload.
  b = await page(1);
  await login(b, bn);
  await until(async () => (await dot.getAttribute('data-online')) === 'true', { what: 'b online after login' });
  await openRoom(b, rn);

  // b types: a sees it.
  await b.getByTestId('composer').pressSequentially('Let me think', { delay: 20 });
  await a.locator('[data-testid="typing"]', { hasText: `${bn} is typing…` }).waitFor();
  await shot(a, '03-member-list-typing');
  // The line goes when b's message arrives.
  await b.getByTestId('composer').press('Enter');
  await waitDelivered(a, 'Let me think');
  await until(async () => (await a.getByTestId('typing').textContent()) === '', { what: 'typing line cleared' });
  // a's own typing is not shown to a.
  await a.getByTestId('composer').pressSequentially('hmm', { delay: 20 });
  await b.locator('[data-testid="typing"]', { hasText: `${an} is typing…` }).waitFor();
  assert.equal(await a.getByTestId('typing').textContent(), '');

  await b.context().close();
  await until(async () => (await dot.getAttribute('data-online')) === 'false', { what: 'b offline again' });
});

e2e('an unread badge counts up for a room not open and clears when it is opened', async () => {
  const other = uniq('side-');
  const { a, b, rn } = await pair([other]);
  await openRoom(b, other);
  const badge = roomItem(a, other).getByTestId('unread-badge');
  assert.equal(await badge.count(), 0);
  await send(b, 'one');
  await until(async () => (await badge.textContent().catch(() => null)) === '1', { what: 'badge 1' });
  await send(b, 'two');
  await send(b, 'three');
  await until(async () => (await badge.textContent().catch(() => null)) === '3', { what: 'badge 3' });
  assert.match(await a.title(), /^\(3\) /);
  await openRoom(a, other);
  await waitDelivered(a, 'three');
  assert.equal(await badge.count(), 0, 'badge cleared when opened');
  // The read marker reached the server: after a reload, with the other room open, still none.
  await openRoom(a, rn);
  await a.reload();
  await online(a);
  await a.locator('[data-testid="room-title"]', { hasText: rn }).waitFor();
  await roomItem(a, other).waitFor();
  await sleep(500);
  assert.equal(await badge.count(), 0, 'no badge after reload');
  // And it counts up again from there.
  await send(b, 'four');
  await until(async () => (await badge.textContent().catch(() => null)) === '1', { what: 'badge 1 again' });
});

e2e('a message sent while the socket is cut stays pending across a reload and is delivered once', async () => {
  const proxy = await new Proxy(C.gw(0)).start();
  try {
    const a = await page(proxy.url);
    const b = await page(1);
    const an = uniq('alice'); const bn = uniq('bob'); const rn = uniq('outbox-');
    await Promise.all([register(a, an), register(b, bn)]);
    await createRoom(a, rn);
    await joinRoom(b, rn);
    await send(a, 'before the cut');
    await waitDelivered(b, 'before the cut');

    // 1. The server gets the send, but its answers are lost: a still shows it pending.
    proxy.mute();
    const lostAck = `ack lost ${uniq('')}`;
    await send(a, lostAck);
    assert.equal(await waitDelivered(b, lostAck), 1, 'the server had it');
    await a.locator('[data-testid="message"]', { hasText: lostAck }).waitFor();
    await sleep(300);
    assert.deepEqual((await messages(a)).filter((m) => m.body === lostAck).map((m) => m.pending), [true]);

    // 2. The socket is cut: a new message waits in the outbox.
    proxy.block();
    await a.locator('[data-testid="conn-state"][data-state="reconnecting"]').waitFor();
    await a.getByTestId('conn-banner').waitFor();
    const offline = `written offline ${uniq('')}`;
    await send(a, offline);
    await a.locator('[data-testid="message"][data-pending="true"]', { hasText: offline }).waitFor();
    assert.deepEqual((await messages(a)).filter((m) => m.body === offline).map((m) => m.pending), [true]);
    await shot(a, '05-pending-outbox');

    // 3. Reload while cut: the outbox survives (localStorage).
    await a.reload();
    await a.locator('[data-testid="message"][data-pending="true"]', { hasText: offline }).waitFor();
    const stored = await a.evaluate(() => Object.keys(localStorage).filter((k) => k.startsWith('chat.outbox.')).map((k) => JSON.parse(localStorage.getItem(k))).flat().map((o) => o.body));
    assert.ok(stored.includes(offline), 'outbox in localStorage');

    // 4. The connection comes back: both are delivered, each once, to both users.
    proxy.pass();
    await online(a);
    for (const body of [lostAck, offline]) {
      assert.equal(await waitDelivered(a, body, 30_000), 1, `a shows "${body}" once`);
      assert.equal(await waitDelivered(b, body), 1, `b shows "${body}" once`);
    }
    await sleep(500);
    for (const p of [a, b]) {
      const ms = await messages(p);
      assert.deepEqual(ms.map((m) => m.body), ['before the cut', lostAck, offline]);
      assert.ok(ms.every((m) => !m.pending));
    }
    assert.deepEqual(await a.evaluate(() => Object.keys(localStorage).filter((k) => k.startsWith('chat.outbox.')).map((k) => JSON.parse(localStorage.getItem(k))).flat()), []);
    await persistedOnce(lostAck);
    await persistedOnce(offline);
  } finally {
    await proxy.close();
  }
});

e2e('leaving a room: it moves to "Browse rooms", the others see the member list shrink live', async () => {
  const { a, b, bn, rn } = await pair();
  const member = a.locator(`[data-testid="member-list"] [data-testid="member"][data-user-name="${bn}"]`);
  await member.waitFor();
  await b.getByTestId('leave-room').click();
  await member.waitFor({ state: 'detached' });
  await a.locator('[data-testid="room-subtitle"]', { hasText: '1 member' }).waitFor();
  await b.locator(`[data-testid="other-room-list"] [data-testid="room-item"][data-room-name="${rn}"]`).waitFor();
  await b.locator(`[data-testid="room-list"] [data-testid="room-item"][data-room-name="${rn}"]`).waitFor({ state: 'detached' });
});

e2e('a draining gateway sends the page to another one: it resubscribes and misses nothing', async () => {
  const doomed = await C.addGateway('gw-drained');
  const lb = await new Proxy(doomed.url).start(); // a load balancer in front of it
  try {
    const a = await page(lb.url); const b = await page(1);
    const an = uniq('alice'); const bn = uniq('bob'); const rn = uniq('drain-');
    await Promise.all([register(a, an), register(b, bn)]);
    await createRoom(a, rn);
    await joinRoom(b, rn);
    await send(a, 'before the drain');
    await waitDelivered(b, 'before the drain');
    // SIGTERM: the gateway tells its clients to reconnect; the balancer sends new
    // connections to gateway 0 from now on. b writes meanwhile.
    lb.target = new URL(C.gw(0));
    const stopping = doomed.stop('SIGTERM');
    await send(b, 'during the drain');
    await stopping;
    await online(a);
    assert.equal(await waitDelivered(a, 'during the drain', 20_000), 1);
    await send(a, 'after the drain');
    assert.equal(await waitDelivered(b, 'after the drain'), 1);
    await waitDelivered(a, 'after the drain');
    for (const p of [a, b]) {
      assert.deepEqual((await messages(p)).map((m) => m.body), ['before the drain', 'during the drain', 'after the drain']);
    }
  } finally {
    await lb.close();
  }
});

e2e('a failing room list does not log the user out; a refused token does', async () => {
  const a = await page(0);
  await register(a, uniq('alice'));
  const failing = (r) => (r.request().method() === 'GET'
    ? r.fulfill({ status: 503, contentType: 'application/json', body: '{"error":{"code":"unavailable","message":"database unavailable"}}' })
    : r.continue());
  await a.route('**/api/rooms', failing);
  await a.reload();
  await a.getByTestId('rooms-error').waitFor();
  await online(a);
  assert.equal(await a.getByTestId('login-view').isVisible(), false, 'still logged in');
  await a.unroute('**/api/rooms', failing);
  await a.getByTestId('rooms-error').waitFor({ state: 'hidden', timeout: 20_000 });
  // A token the server refuses ends the session.
  await a.evaluate(() => localStorage.setItem('chat.token', 'not-a-valid-token'));
  await a.reload();
  await a.getByTestId('login-view').waitFor();
});

e2e('a hostile message and room name are shown as text, never run', async () => {
  const { a, b } = await pair();
  const evil = '<img src=x onerror=window.__xss=1>';
  await send(a, evil);
  assert.equal(await waitDelivered(a, evil), 1);
  assert.equal(await waitDelivered(b, evil), 1);
  const evilRoom = `<img src=x onerror=window.__xss=2>${uniq('')}`;
  await createRoom(a, evilRoom);
  await b.reload();
  await roomItem(b, evilRoom).waitFor();
  await joinRoom(b, evilRoom);
  // Markdown is rendered (bold), the markup around it stays text.
  await send(a, '<script>window.__xss=3</script> **bold** &amp;');
  await waitDelivered(a, '<script>window.__xss=3</script> bold &amp;');
  await waitDelivered(b, '<script>window.__xss=3</script> bold &amp;');
  // Links: only http(s) become links; javascript: and friends stay text.
  const links = '[click](javascript:window.__xss=4) javascript:window.__xss=5 [data](data:text/html,<b>x</b>) https://example.org/ok';
  await send(a, links);
  await b.locator('[data-testid="message-link"]').waitFor();
  for (const p of [a, b]) {
    assert.equal(await p.evaluate(() => window.__xss), undefined);
    assert.equal(await p.locator('#app img, #app script').count(), 0, 'no element from user text');
    assert.equal(await p.locator('[data-testid="message-body"] strong', { hasText: 'bold' }).count(), 1);
    const hrefs = await p.$$eval('[data-testid="message-body"] a', (as) => as.map((x) => [x.getAttribute('href'), x.rel, x.target]));
    assert.deepEqual(hrefs, [['https://example.org/ok', 'noopener noreferrer', '_blank']]);
  }
  assert.equal(await a.getByTestId('room-title').textContent(), '# ' + evilRoom);
});

e2e('a phone-sized screen: the room list is a drawer, messages can be read and sent', async () => {
  const p = await page(0, PHONE);
  const d = await page(1);
  const pn = uniq('phone'); const dn = uniq('desk'); const rn = uniq('mobile-');
  await Promise.all([register(p, pn), register(d, dn)]);
  // The sidebar is off screen until the menu button opens it.
  const side = await p.getByTestId('sidebar').boundingBox();
  assert.ok(side.x + side.width <= 1, 'sidebar hidden on a phone');
  await createRoom(p, rn);
  await joinRoom(d, rn);
  await send(d, 'Are you on the train?');
  await waitDelivered(p, 'Are you on the train?');
  await send(p, 'Yes, typing on my phone');
  assert.equal(await waitDelivered(d, 'Yes, typing on my phone'), 1);
  const composer = await p.getByTestId('composer').boundingBox();
  assert.ok(composer.y + composer.height <= 844 && composer.x >= 0 && composer.x + composer.width <= 390, 'composer on screen');
  await shot(p, '06-phone-room');
  await showRooms(p);
  await until(async () => (await p.getByTestId('sidebar').boundingBox()).x >= 0, { what: 'drawer open' });
  assert.ok((await p.getByTestId('sidebar').boundingBox()).width > 200);
  await roomItem(p, rn).waitFor({ state: 'visible' });
  await shot(p, '07-phone-rooms');
  await roomItem(p, rn).click();
  await p.getByTestId('open-members').click();
  await p.locator(`[data-testid="member-list"] [data-testid="member"][data-user-name="${dn}"]`).waitFor({ state: 'visible' });
  await shot(p, '08-phone-members');
  await p.getByTestId('scrim').click({ position: { x: 10, y: 400 } });
  const members = await p.getByTestId('member-panel').boundingBox();
  await until(async () => (await p.getByTestId('member-panel').boundingBox()).x >= 389, { what: 'members drawer closed' });
  assert.ok(members);
});

e2e('history: scrolling up loads older pages, also while the consumer is stopped', async () => {
  const { a, b, rn } = await pair();
  const room = await currentRoomId(a);
  const bodies = Array.from({ length: 60 }, (_, i) => `history ${String(i + 1).padStart(3, '0')}`);
  await sendMany(a, room, bodies);
  await waitDelivered(a, 'history 060');
  // The table also holds the room's member events (b's join): only the messages count.
  await until(() => count(`SELECT count(*) FROM messages WHERE room_id = '${room}' AND body LIKE 'history %'`) === 60, { what: '60 rows', timeout: 20_000 });

  // The consumer goes: history still comes from PostgreSQL through the gateway.
  await C.consumer.stop('SIGTERM');
  await a.reload();
  await online(a);
  await a.locator('[data-testid="room-title"]', { hasText: rn }).waitFor();
  await waitDelivered(a, 'history 060');
  const first = await messages(a);
  assert.ok(first.length < 60 && !first.some((m) => m.body === 'history 001'), `one page first (${first.length})`);
  // Scroll to the top until the start of the room shows.
  await until(async () => {
    await a.getByTestId('message-scroller').evaluate((e) => { e.scrollTop = 0; e.dispatchEvent(new Event('scroll')); });
    return a.getByTestId('history-start').isVisible();
  }, { what: 'the start of the room', every: 300 });
  const all = await messages(a);
  assert.deepEqual(all.map((m) => m.body), bodies, 'all 60, in order, once');

  // Sends are still acked while no consumer runs (Kafka holds them) …
  const during = 'sent while the consumer is down';
  await send(a, during);
  await waitDelivered(a, during);
  // … and reach the other user once a consumer is back.
  await C.restartConsumer();
  assert.equal(await waitDelivered(b, during, 30_000), 1);
  // a reads old messages at the top; a new one does not pull the view down but offers a way.
  await a.getByTestId('message-scroller').evaluate((e) => { e.scrollTop = 0; });
  await send(b, 'live again');
  assert.equal(await waitDelivered(a, 'live again', 30_000), 1);
  await a.getByTestId('jump-latest').waitFor();
  const fromBottom = () => a.getByTestId('message-scroller').evaluate((e) => e.scrollHeight - e.scrollTop - e.clientHeight);
  assert.ok(await fromBottom() > 500, 'still reading at the top');
  await a.getByTestId('jump-latest').click();
  await until(async () => (await fromBottom()) < 80, { what: 'scrolled to the newest' });
  await a.getByTestId('jump-latest').waitFor({ state: 'hidden' });
});
