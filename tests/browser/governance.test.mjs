// Browser tests of room governance (issue 19) against the distributed mode: two gateways and
// a consumer, each user in a browser context of their own. Private rooms, invites by name and
// by link, kick and ban seen live by everyone, a muted composer, roles and what each role is
// offered, room settings, blocking, group DMs.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  TEST_TIMEOUT, startDistributed, embedded, chatBin, online, login, checkAssets, launchBrowser, openPage, register,
  createRoom, joinRoom, openRoom, roomItem, send, messages, waitDelivered, until, shot,
  currentRoomId, uniq, reportFailure,
} from './harness.mjs';

let C; let browser;
const pages = [];
const T = { timeout: TEST_TIMEOUT };

/**
 * The distributed cluster; with GOV_EMBEDDED=1 one embedded server instead (both "gateways"
 * are the same process), for when the services are not available.
 */
async function cluster() {
  const env = Object.assign({}, process.env);
  for (const k of ['DATABASE_URL', 'REDIS_URL', 'KAFKA_BROKERS', 'DATA_DIR']) delete env[k];
  /** `chat admin grant NAME` against the cluster's store. */
  const grant = (store) => (name) => execFileSync(chatBin(), ['admin', 'grant', name, ...store], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  if (process.env.GOV_EMBEDDED !== '1') {
    const c = await startDistributed('gov');
    c.grantAdmin = grant(['--database-url', c.dbUrl]);
    return c;
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chat-gov-'));
  const p = await embedded('gov-embedded', dir).start();
  return {
    gw: () => p.url, grantAdmin: grant(['--data-dir', dir]),
    async close() { await p.stop('SIGKILL'); fs.rmSync(dir, { recursive: true, force: true }); },
  };
}

before(async () => {
  [C, browser] = await Promise.all([cluster(), launchBrowser()]);
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

/** `n` registered users, alternating between the gateways. */
async function users(n, prefix = 'u') {
  const ps = []; const names = [];
  for (let i = 0; i < n; i++) { ps.push(await page(i % 2)); names.push(uniq(`${prefix}${i}`)); }
  await Promise.all(ps.map((p, i) => register(p, names[i])));
  return { ps, names };
}

async function createPrivateRoom(p, name) {
  await p.getByTestId('new-room').click();
  await p.getByTestId('create-room-name').fill(name);
  await p.getByTestId('create-room-visibility').selectOption('private');
  await p.getByTestId('create-room-submit').click();
  await p.locator('[data-testid="room-title"][data-visibility="private"]', { hasText: name }).waitFor();
  await p.getByTestId('composer').waitFor();
}

const member = (p, name) => p.locator(`[data-testid="member-list"] [data-testid="member"][data-user-name="${name}"]`);
/** Opens `name`'s card from the member list of the open room. */
async function card(p, name) {
  await member(p, name).click();
  await p.locator('[data-testid="dialog"][data-kind="user-card"]').waitFor();
  await p.locator('[data-testid="card-name"]', { hasText: name }).waitFor();
}
const sysLine = (p, text) => p.locator('[data-testid="message-list"] [data-testid="system-line"]', { hasText: text });
const noErrors = (...ps) => assert.deepEqual(ps.flatMap((p) => p.errors), []);

e2e('the binary serves the client in static/ (not a stale build)', async () => {
  await checkAssets(C.gw(0));
  await checkAssets(C.gw(1));
});

e2e('invites: by name to a private room (live on the other gateway, accepted), and by a link with a use limit', async () => {
  const { ps: [a, b, c, d], names: [an, bn, cn] } = await users(4);
  const rn = uniq('secret-');
  await createPrivateRoom(a, rn);
  // Invite b by name: b sees it live, on the other gateway.
  await a.getByTestId('invite-people').click();
  await a.getByTestId('invite-username').fill(bn);
  await a.getByTestId('invite-submit').click();
  await a.locator('[data-testid="invite-status"]', { hasText: `Invited ${bn}` }).waitFor();
  const inv = b.locator(`[data-testid="invite-list"] [data-testid="invite"][data-room-name="${rn}"]`);
  await inv.waitFor({ timeout: 20_000 });
  assert.match(await inv.textContent(), new RegExp(`from ${an}`));
  await shot(b, '20-invite-pending');
  await inv.getByTestId('invite-accept').click();
  await b.locator('[data-testid="room-title"]', { hasText: rn }).waitFor();
  await b.getByTestId('composer').waitFor();
  await inv.waitFor({ state: 'detached' });
  await a.getByTestId('close-dialog').click();
  await member(a, bn).waitFor();
  const hello = `welcome ${bn}`;
  await send(a, hello);
  await waitDelivered(b, hello);

  // An invite link with one use: c joins by it; d finds it used up.
  await a.getByTestId('invite-people').click();
  await a.getByTestId('invite-link-max-uses').fill('1');
  await a.getByTestId('invite-link-create').click();
  const url = await until(async () => a.getByTestId('invite-link-url').inputValue(), { what: 'link url' });
  const code = /#join=([A-Za-z0-9_-]+)$/.exec(url)[1];
  await a.locator(`[data-testid="invite-link"][data-code="${code}"]`).waitFor();
  await c.evaluate((h) => { location.hash = h; }, `join=${code}`);
  await c.locator('[data-testid="join-link-preview"]', { hasText: rn }).waitFor();
  assert.match(await c.getByTestId('join-link-preview').textContent(), /private/);
  await c.getByTestId('join-link-submit').click();
  await c.locator('[data-testid="room-title"]', { hasText: rn }).waitFor();
  await waitDelivered(c, hello);
  await member(a, cn).waitFor();
  // A fresh page opened at the link (d is logged in already in its storage).
  await d.goto(`${C.gw(1)}/#join=${code}`);
  await d.getByTestId('join-link-error').waitFor();
  assert.equal(await roomItem(d, rn).count(), 0);

  // Revoke: a second link, revoked, no longer opens.
  await a.getByTestId('invite-link-create').click();
  const url2 = await until(async () => { const v = await a.getByTestId('invite-link-url').inputValue(); return v !== url && v; }, { what: 'second link' });
  const code2 = /#join=([A-Za-z0-9_-]+)$/.exec(url2)[1];
  await a.locator(`[data-testid="invite-link"][data-code="${code2}"] [data-testid="invite-link-revoke"]`).click();
  await a.locator(`[data-testid="invite-link"][data-code="${code2}"]`).waitFor({ state: 'detached' });
  await d.getByTestId('close-dialog').click();
  await d.getByTestId('join-link-error').waitFor({ state: 'hidden' });
  await d.evaluate((h) => { location.hash = h; }, `join=${code2}`);
  await d.getByTestId('join-link-error').waitFor();
  noErrors(a, b, c, d);
});

e2e('kick and ban are seen live: the removed user loses the room and is told why; the others see a system line', async () => {
  const { ps: [a, b, c], names: [, bn, cn] } = await users(3);
  const rn = uniq('mod-');
  await createRoom(a, rn);
  await joinRoom(b, rn);
  await joinRoom(c, rn);
  const text = `before the kick ${uniq('')}`;
  await send(b, text);
  for (const p of [a, b, c]) await waitDelivered(p, text);
  await member(a, bn).waitFor();

  await card(a, bn);
  await a.getByTestId('mod-reason').fill('too loud');
  await a.getByTestId('card-kick').click();
  // b: the room's messages are gone and the page says why; the room is no longer among b's.
  await b.locator('[data-testid="gone-reason"][data-reason="kicked"]').waitFor({ timeout: 20_000 });
  assert.deepEqual(await messages(b), []);
  await b.locator(`[data-testid="room-list"] [data-testid="room-item"][data-room-name="${rn}"]`).waitFor({ state: 'detached' });
  await shot(b, '21-kicked');
  // a and c: a system line, and b gone from the member list.
  for (const p of [a, c]) {
    await sysLine(p, `removed ${bn}: too loud`).waitFor({ timeout: 20_000 });
    await member(p, bn).waitFor({ state: 'detached' });
  }

  // A kick is not a ban: b joins again; then a bans b.
  await joinRoom(b, rn);
  await member(a, bn).waitFor();
  await card(a, bn);
  await a.getByTestId('card-ban').click();
  await a.getByTestId('card-ban').click(); // "Ban …?" confirms
  await b.locator('[data-testid="gone-reason"][data-reason="banned"]').waitFor({ timeout: 20_000 });
  assert.deepEqual(await messages(b), []);
  for (const p of [a, c]) await sysLine(p, `banned ${bn}`).waitFor({ timeout: 20_000 });
  // The ban holds: b cannot join again.
  const status = await b.evaluate(async (room) => (await fetch(`/api/rooms/${room}/join`, {
    method: 'POST', headers: { authorization: 'Bearer ' + localStorage.getItem('chat.token') },
  })).status, await currentRoomId(a));
  assert.equal(status, 403);
  assert.equal(await member(c, cn).count(), 1);
  await shot(c, '22-system-lines');
  noErrors(a, b, c);
});

e2e('a muted user\'s composer is disabled with a notice (live and after a reload), and enabled again when unmuted', async () => {
  const { ps: [a, b], names: [, bn] } = await users(2);
  const rn = uniq('mute-');
  await createRoom(a, rn);
  await joinRoom(b, rn);
  await member(a, bn).waitFor();
  await card(a, bn);
  await a.getByTestId('mod-duration').selectOption('3600');
  await a.getByTestId('card-mute').click();
  await b.getByTestId('composer-notice').waitFor({ timeout: 20_000 });
  assert.match(await b.getByTestId('composer-notice').textContent(), /muted/);
  assert.equal(await b.getByTestId('composer').isDisabled(), true);
  await member(a, bn).locator('[data-testid="muted-marker"]').waitFor();
  await sysLine(a, `muted ${bn}`).waitFor();
  await shot(b, '23-muted');
  await b.reload();
  await b.locator('[data-testid="room-title"]', { hasText: rn }).waitFor();
  await b.getByTestId('composer-notice').waitFor();
  assert.equal(await b.getByTestId('composer').isDisabled(), true);
  // Unmuted: b writes again.
  await card(a, bn);
  await a.getByTestId('card-unmute').click();
  await b.getByTestId('composer-notice').waitFor({ state: 'hidden', timeout: 20_000 });
  assert.equal(await b.getByTestId('composer').isDisabled(), false);
  const text = `free again ${uniq('')}`;
  await send(b, text);
  await waitDelivered(a, text);
  noErrors(a, b);
});

e2e('a private room is not visible to a third user, who cannot join it either', async () => {
  const { ps: [a, b, c], names: [, bn] } = await users(3);
  const priv = uniq('hidden-'); const pub = uniq('open-');
  await createRoom(a, pub);
  await createPrivateRoom(a, priv);
  const privId = await currentRoomId(a);
  // c sees the public room, not the private one (also after the list is refreshed).
  await openRoom(c, pub);
  await c.evaluate(() => window.dispatchEvent(new Event('focus')));
  await roomItem(c, pub).waitFor();
  assert.equal(await roomItem(c, priv).count(), 0);
  // Opening it by its id shows nothing of it; joining it is refused.
  await c.evaluate((id) => { location.hash = id; }, privId);
  await c.locator('[data-testid="room-title"]', { hasText: 'Room not found' }).waitFor();
  const status = await c.evaluate(async (room) => (await fetch(`/api/rooms/${room}/join`, {
    method: 'POST', headers: { authorization: 'Bearer ' + localStorage.getItem('chat.token') },
  })).status, privId);
  assert.equal(status, 403);
  assert.equal(await roomItem(b, priv).count(), 0, 'not b\'s either');
  void bn;
  noErrors(a, b, c);
});

e2e('roles: badges in the member list; a moderator is offered kick/mute on a member, nothing on the owner, no role changes', async () => {
  const { ps: [a, b, c], names: [an, bn, cn] } = await users(3);
  const rn = uniq('roles-');
  await createRoom(a, rn);
  await joinRoom(b, rn);
  await joinRoom(c, rn);
  await member(a, bn).waitFor();
  await card(a, bn);
  await a.locator('[data-testid="card-role"][data-role="moderator"]').click();
  for (const p of [a, b, c]) {
    await member(p, bn).locator('[data-testid="role-badge"][data-role="moderator"]').waitFor({ timeout: 20_000 });
    await member(p, an).locator('[data-testid="role-badge"][data-role="owner"]').waitFor();
  }
  await sysLine(c, `made ${bn} moderator`).waitFor();
  // b (moderator) on c (member): kick, mute, ban; no role changes, no transfer.
  await card(b, cn);
  for (const t of ['card-kick', 'card-mute', 'card-ban']) assert.equal(await b.getByTestId(t).count(), 1, t);
  for (const t of ['card-role', 'card-transfer']) assert.equal(await b.getByTestId(t).count(), 0, t);
  await b.getByTestId('close-dialog').click();
  // b on a (owner): no moderation at all; c (member) on b: none either.
  await card(b, an);
  assert.equal(await b.getByTestId('member-actions').count(), 0);
  await b.getByTestId('close-dialog').click();
  await card(c, bn);
  assert.equal(await c.getByTestId('member-actions').count(), 0);
  assert.equal(await c.getByTestId('card-dm').count(), 1);
  await c.getByTestId('close-dialog').click();
  // A moderator deletes someone else's message; everyone sees it deleted.
  const words = `c's words ${uniq('')}`;
  await send(c, words);
  for (const p of [a, b, c]) await waitDelivered(p, words);
  const row = b.locator('[data-testid="message"]', { has: b.locator('[data-testid="message-body"]', { hasText: words }) });
  await row.hover();
  await row.getByTestId('action-delete').click();
  await row.getByTestId('confirm-delete').click();
  for (const p of [a, b, c]) await p.locator('[data-testid="message"][data-deleted="true"]').first().waitFor({ timeout: 20_000 });
  // c (member) is offered no delete on a's messages.
  const hi = `owner speaks ${uniq('')}`;
  await send(a, hi);
  await waitDelivered(c, hi);
  const aRow = c.locator('[data-testid="message"]', { has: c.locator('[data-testid="message-body"]', { hasText: hi }) });
  await aRow.hover();
  assert.equal(await aRow.getByTestId('action-delete').count(), 0);
  // Settings only for admins and up.
  assert.equal(await b.getByTestId('room-settings').isVisible(), false);
  assert.equal(await a.getByTestId('room-settings').isVisible(), true);
  noErrors(a, b, c);
});

e2e('room settings: the topic shows in every member\'s header live, with a system line', async () => {
  const { ps: [a, b] } = await users(2);
  const rn = uniq('set-');
  await createRoom(a, rn);
  await joinRoom(b, rn);
  const topic = `Topic <b>${uniq('')}</b>`;
  await a.getByTestId('room-settings').click();
  await a.getByTestId('settings-topic').fill(topic);
  await a.getByTestId('settings-slow-mode').fill('5');
  await a.getByTestId('settings-save').click();
  for (const p of [a, b]) await p.locator('[data-testid="room-topic"]', { hasText: topic }).waitFor({ timeout: 20_000 });
  await sysLine(b, `set the topic to “${topic}”`).waitFor();
  assert.equal(await b.locator('[data-testid="room-topic"] b').count(), 0, 'text, not HTML');
  // The moderation log (admins and up) has it too, once stored (the consumer writes it after
  // the live event went out): the dialog is opened again until it does.
  await until(async () => {
    if (await a.getByTestId('dialog').isVisible()) await a.getByTestId('close-dialog').click();
    await a.getByTestId('room-settings').click();
    await a.locator('[data-testid="mod-log-item"]').first().waitFor();
    return (await a.locator('[data-testid="mod-log-item"]', { hasText: 'set the topic to' }).count()) > 0;
  }, { what: 'the topic change in the moderation log', every: 500, timeout: 30_000 });
  noErrors(a, b);
});

e2e('blocking: the blocked user\'s messages are hidden (live and in history) behind a placeholder that can be revealed; unblocking shows them', async () => {
  const { ps: [a, b], names: [an] } = await users(2);
  const rn = uniq('block-');
  await createRoom(a, rn);
  await joinRoom(b, rn);
  const early = `from history ${uniq('')}`;
  await send(a, early);
  await waitDelivered(b, early);
  await card(b, an);
  await b.getByTestId('card-block').click();
  await b.getByTestId('card-block').click(); // "Block …?" confirms
  const hidden = b.locator('[data-testid="message"][data-hidden="true"]');
  await hidden.first().waitFor();
  const live = `live while blocked ${uniq('')}`;
  await send(a, live);
  await waitDelivered(a, live);
  await until(async () => (await hidden.count()) === 2, { what: 'two hidden messages' });
  for (const t of [early, live]) assert.equal(await b.locator('[data-testid="message-body"]', { hasText: t }).count(), 0, 'no body shown');
  // After a reload, history flags them too.
  await b.reload();
  await b.locator('[data-testid="room-title"]', { hasText: rn }).waitFor();
  await until(async () => (await hidden.count()) === 2, { what: 'two hidden after reload' });
  await hidden.first().getByTestId('reveal-message').click();
  await waitDelivered(b, early);
  await card(b, an);
  await b.getByTestId('card-unblock').click();
  await waitDelivered(b, live);
  assert.equal(await hidden.count(), 0);
  noErrors(a, b);
});

e2e('group DM from the people picker: three users talk, the others get it without reload', async () => {
  const { ps: [a, b, c], names: [, bn, cn] } = await users(3);
  const gname = uniq('trio-');
  await a.getByTestId('new-group').click();
  for (const n of [bn, cn]) {
    await a.getByTestId('group-search').fill(n);
    await a.locator(`[data-testid="group-result"][data-user-name="${n}"]`).click();
    await a.locator(`[data-testid="group-chip"][data-user-name="${n}"]`).waitFor();
  }
  await a.getByTestId('group-name').fill(gname);
  await a.getByTestId('group-create').click();
  await a.locator('[data-testid="room-title"][data-kind="group"]', { hasText: gname }).waitFor();
  const text = `hi both ${uniq('')}`;
  await send(a, text);
  for (const p of [b, c]) {
    const item = p.locator(`[data-testid="dm-list"] [data-testid="room-item"][data-room-name="${gname}"]`);
    await item.waitFor({ timeout: 20_000 });
    await item.click();
    await waitDelivered(p, text);
  }
  noErrors(a, b, c);
});

e2e('server admin: deletes a room (its members are told), suspends an account (its session ends) and reinstates it', async () => {
  const { ps: [a, b], names: [an, bn] } = await users(2);
  const rn = uniq('doomed-');
  await createRoom(b, rn);
  assert.equal(await a.getByTestId('admin-open').isVisible(), false, 'not an admin yet');
  C.grantAdmin(an);
  await a.reload();
  await online(a);
  await a.getByTestId('admin-open').click();
  const roomRow = a.locator(`[data-testid="admin-room"][data-room-name="${rn}"]`);
  await roomRow.getByTestId('admin-delete-room').click();
  await roomRow.getByTestId('admin-delete-room').click(); // "Delete for everyone?"
  await roomRow.waitFor({ state: 'detached' });
  await b.locator('[data-testid="gone-reason"][data-reason="room_deleted"]').waitFor({ timeout: 20_000 });
  await roomItem(b, rn).waitFor({ state: 'detached' });
  await shot(a, '24-admin');
  const userRow = a.locator(`[data-testid="admin-user"][data-user-name="${bn}"]`);
  await userRow.getByTestId('admin-suspend').click();
  await userRow.getByTestId('admin-suspend').click(); // "Suspend …?"
  await a.locator(`[data-testid="admin-user"][data-user-name="${bn}"][data-suspended="true"]`).waitFor();
  await b.getByTestId('login-view').waitFor({ timeout: 20_000 });
  await userRow.getByTestId('admin-reinstate').click();
  await a.locator(`[data-testid="admin-user"][data-user-name="${bn}"][data-suspended="false"]`).waitFor();
  await login(b, bn);
  noErrors(a, b);
});
