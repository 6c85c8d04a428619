// Browser tests of room events (issue 18) against the distributed mode: two users on two
// gateways (two browser contexts) reply, react, edit, delete, use a thread and mention each
// other; the per-user channel brings a DM opened by someone else and a read on another
// device; a phone does it by tap; and the page no longer polls GET /api/rooms.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  TEST_TIMEOUT, PHONE, startDistributed, checkAssets, launchBrowser, openPage, register, login,
  createRoom, joinRoom, openRoom, roomItem, send, messages, waitDelivered, until, shot,
  currentRoomId, showRooms, uniq, sleep, Proxy, online, reportFailure,
} from './harness.mjs';

let C; let browser;
const pages = [];
const T = { timeout: TEST_TIMEOUT };

before(async () => {
  [C, browser] = await Promise.all([startDistributed('events'), launchBrowser()]);
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

/** Two registered users, a on gateway 0 and b on gateway 1 (`bOpts`: b's context), both in a new room. */
async function pair({ bOpts, extra = [] } = {}) {
  const a = await page(0); const b = await page(1, bOpts);
  const an = uniq('alice'); const bn = uniq('bob'); const rn = uniq('ev-');
  await Promise.all([register(a, an), register(b, bn)]);
  for (const name of [...extra, rn]) await createRoom(a, name);
  for (const name of [rn, ...extra]) await joinRoom(b, name);
  return { a, b, an, bn, rn };
}

/** The row of the message whose body contains `text`. */
const row = (p, text) => p.locator('[data-testid="message-list"] [data-testid="message"]', { has: p.locator('[data-testid="message-body"]', { hasText: text }) });
/** Clicks the action `testid` of that message (its actions show on hover). */
async function act(p, text, testid) {
  const r = row(p, text);
  await r.hover();
  await r.getByTestId(testid).click();
}
const reaction = (p, text, emoji) => row(p, text).locator(`[data-testid="reaction"][data-emoji="${emoji}"]`);
const attr = (loc, name) => loc.getAttribute(name).catch(() => null);
const count = (sql) => Number(C.sql(sql));
const q = (s) => `'${s.replaceAll("'", "''")}'`;

e2e('the binary serves the client in static/ (not a stale build)', async () => {
  await checkAssets(C.gw(0));
  await checkAssets(C.gw(1));
});

e2e('react: the palette adds a reaction both users see; counts, mine highlighted, who reacted on hover; toggled off again', async () => {
  const { a, b, an, bn } = await pair();
  const text = `react to me ${uniq('')}`;
  await send(a, text);
  await waitDelivered(b, text);
  await act(b, text, 'action-react');
  await row(b, text).locator('[data-testid="emoji-option"][data-emoji="👍"]').click();
  for (const p of [a, b]) await until(async () => (await attr(reaction(p, text, '👍'), 'data-count')) === '1', { what: '👍 1' });
  assert.equal(await attr(reaction(b, text, '👍'), 'data-me'), 'true', 'mine on b');
  assert.match(await attr(reaction(b, text, '👍'), 'class'), /\bmine\b/);
  assert.equal(await attr(reaction(a, text, '👍'), 'data-me'), 'false');
  assert.match(await attr(reaction(a, text, '👍'), 'title'), new RegExp(bn), 'who reacted, on hover');
  // a adds theirs by clicking the reaction: 2 on both pages.
  await reaction(a, text, '👍').click();
  for (const p of [a, b]) await until(async () => (await attr(reaction(p, text, '👍'), 'data-count')) === '2', { what: '👍 2' });
  assert.match(await attr(reaction(b, text, '👍'), 'title'), new RegExp(an));
  await shot(a, '10-reactions');
  // b takes theirs back.
  await reaction(b, text, '👍').click();
  for (const p of [a, b]) await until(async () => (await attr(reaction(p, text, '👍'), 'data-count')) === '1', { what: '👍 back to 1' });
  assert.equal(await attr(reaction(b, text, '👍'), 'data-me'), 'false');
  // After a reload the history page carries the same state.
  await b.reload();
  await online(b);
  await until(async () => (await attr(reaction(b, text, '👍'), 'data-count')) === '1', { what: '👍 1 after reload' });
  assert.equal(await attr(reaction(b, text, '👍'), 'data-me'), 'false');
  assert.deepEqual([...a.errors, ...b.errors], []);
});

e2e('edit: only the author may; both pages show the new body and (edited), whose history lists each version', async () => {
  const { a, b } = await pair();
  const text = `first words ${uniq('')}`;
  await send(a, text);
  await waitDelivered(b, text);
  await row(b, text).hover();
  assert.equal(await row(b, text).getByTestId('action-edit').count(), 0, 'not on another user\'s message');
  assert.equal(await row(b, text).getByTestId('action-delete').count(), 0);
  await act(a, text, 'action-edit');
  await a.getByTestId('compose-context').waitFor();
  assert.equal(await a.getByTestId('composer').inputValue(), text);
  const edited = `better words ${uniq('')}`;
  await a.getByTestId('composer').fill(edited);
  await a.getByTestId('composer').press('Enter');
  for (const p of [a, b]) {
    await row(p, edited).locator('[data-testid="edited-marker"]').waitFor();
    assert.equal(await row(p, text).count(), 0, 'the old body is gone');
  }
  assert.equal(await a.getByTestId('compose-context').isVisible(), false);
  await row(b, edited).getByTestId('edited-marker').click();
  await b.locator('[data-testid="edit-history-item"]').nth(1).waitFor();
  assert.deepEqual(await b.locator('[data-testid="edit-history-body"]').allTextContents(), [text, edited]);
  await shot(b, '11-edit-history');
  await b.getByTestId('close-edit-history').click();
  // The same after a reload (history returns the current state).
  await b.reload();
  await online(b);
  await row(b, edited).locator('[data-testid="edited-marker"]').waitFor();
  assert.deepEqual([...a.errors, ...b.errors], []);
});

e2e('delete: confirmed by the author, shown as "message deleted" on both pages, the body gone from PostgreSQL too', async () => {
  const { a, b } = await pair();
  const keep = `stays ${uniq('')}`;
  const text = `regret this ${uniq('')}`;
  await send(a, keep);
  await send(a, text);
  await waitDelivered(b, text);
  const id = await row(a, text).getAttribute('data-message-id');
  await act(a, text, 'action-delete');
  await row(a, text).getByTestId('confirm-delete').click();
  for (const p of [a, b]) {
    await p.locator(`[data-testid="message"][data-message-id="${id}"][data-deleted="true"]`).waitFor();
    assert.equal(await p.locator(`[data-testid="message"][data-message-id="${id}"] [data-testid="message-body"]`).textContent(), 'message deleted');
    assert.equal(await row(p, text).count(), 0);
    await row(p, keep).waitFor();
  }
  await until(() => count(`SELECT count(*) FROM messages WHERE body = ${q(text)}`) === 0 && count(`SELECT count(*) FROM messages WHERE body = ${q(keep)}`) === 1,
    { what: 'the deleted body gone from PostgreSQL', timeout: 20_000 });
  await b.reload();
  await online(b);
  await b.locator(`[data-testid="message"][data-message-id="${id}"][data-deleted="true"]`).waitFor();
  assert.equal(await row(b, text).count(), 0, 'not back after a reload');
});

e2e('reply and thread panel: a reply quotes its parent, the parent counts it, the thread shows replies live both ways', async () => {
  const { a, b, an, bn } = await pair();
  const parent = `thread starter ${uniq('')}`;
  await send(a, parent);
  await waitDelivered(b, parent);
  await act(b, parent, 'action-reply');
  await b.getByTestId('thread-panel').waitFor();
  await b.getByTestId('thread-parent').getByText(parent).waitFor();
  const r1 = `first reply ${uniq('')}`;
  await b.getByTestId('thread-composer').fill(r1);
  await b.getByTestId('thread-composer').press('Enter');
  await b.locator('[data-testid="thread-replies"] [data-testid="message"][data-pending="false"]', { hasText: r1 }).waitFor();
  // In the room: the reply with its quote, and the parent's count.
  for (const p of [a, b]) {
    await row(p, r1).getByTestId('reply-quote').filter({ hasText: parent }).waitFor();
    await row(p, parent).locator('[data-testid="thread-link"]', { hasText: '1 reply' }).waitFor();
  }
  // a opens the thread from the count, and answers there; b sees it live in the open panel.
  await row(a, parent).getByTestId('thread-link').click();
  await a.locator('[data-testid="thread-replies"] [data-testid="message"]', { hasText: r1 }).waitFor();
  const r2 = `second reply ${uniq('')}`;
  await a.getByTestId('thread-composer').fill(r2);
  await a.getByTestId('thread-composer').press('Enter');
  await b.locator('[data-testid="thread-replies"] [data-testid="message"]', { hasText: r2 }).waitFor();
  for (const p of [a, b]) await row(p, parent).locator('[data-testid="thread-link"]', { hasText: '2 replies' }).waitFor();
  assert.deepEqual(await b.$$eval('[data-testid="thread-replies"] [data-testid="message"]', (els) => els.map((e) => e.dataset.senderName)), [bn, an]);
  await shot(a, '12-thread');
  // A quote click opens the thread too; the close button closes it.
  await a.getByTestId('close-thread').click();
  await a.getByTestId('thread-panel').waitFor({ state: 'hidden' });
  await row(a, r2).getByTestId('reply-quote').click();
  await a.getByTestId('thread-panel').waitFor();
  // A reload: the thread comes from GET …/replies.
  await b.reload();
  await online(b);
  await row(b, parent).getByTestId('thread-link').click();
  await b.locator('[data-testid="thread-replies"] [data-testid="message"]', { hasText: r2 }).waitFor();
  assert.equal(await b.locator('[data-testid="thread-replies"] [data-testid="message"]').count(), 2);
  assert.deepEqual([...a.errors, ...b.errors], []);
});

e2e('mentions: @ autocompletes from the member list; the mentioned user sees the message highlighted and an @ on the room', async () => {
  const side = uniq('side-');
  const { a, b, bn, rn } = await pair({ extra: [side] });
  await openRoom(a, rn);
  await openRoom(b, side); // b is elsewhere: the room gets an unread mention
  await a.getByTestId('composer').pressSequentially(`ping @${bn.slice(0, 5)}`, { delay: 20 });
  await a.locator(`[data-testid="mention-option"][data-user-name="${bn}"]`).waitFor();
  await shot(a, '13-mention-autocomplete');
  await a.getByTestId('composer').press('Enter'); // picks the suggestion
  assert.equal(await a.getByTestId('composer').inputValue(), `ping @${bn} `);
  await a.getByTestId('composer').pressSequentially('have a look', { delay: 5 });
  await a.getByTestId('composer').press('Enter');
  const body = `ping @${bn} have a look`;
  await waitDelivered(a, body);
  await until(async () => (await attr(roomItem(b, rn), 'data-mentions')) === '1', { what: 'b\'s @ badge' });
  await roomItem(b, rn).getByTestId('mention-badge').waitFor();
  await openRoom(b, rn);
  await waitDelivered(b, body);
  await until(async () => (await attr(row(b, body), 'data-mentioned')) === 'true', { what: 'highlighted for b' });
  assert.match(await attr(row(b, body), 'class'), /\bmentioned\b/);
  assert.equal(await attr(row(a, body), 'data-mentioned'), 'false', 'not for the author');
  assert.equal(await row(b, body).locator('[data-testid="mention"]').textContent(), '@' + bn);
  assert.equal(await roomItem(b, rn).getByTestId('mention-badge').count(), 0, 'read: the @ goes');
});

e2e('a DM opened by another user appears in the list without a reload or a focus event', async () => {
  const a = await page(0); const b = await page(1);
  const an = uniq('alice'); const bn = uniq('bob');
  await Promise.all([register(a, an), register(b, bn)]);
  await b.getByTestId('dm-list').waitFor();
  await a.getByTestId('new-dm').click();
  await a.getByTestId('dm-username').fill(bn);
  await a.getByTestId('dm-submit').click();
  await a.locator('[data-testid="room-title"][data-kind="dm"]', { hasText: bn }).waitFor();
  const dm = await currentRoomId(a);
  const item = b.locator(`[data-testid="dm-list"] [data-testid="room-item"][data-room-name="${an}"]`);
  await item.waitFor({ timeout: 15_000 });
  assert.equal(await item.getAttribute('data-room-id'), dm);
  // And a message in it arrives live (b subscribed to the new room by itself).
  await send(a, 'hello over here');
  await until(async () => (await item.getAttribute('data-unread')) === '1', { what: 'DM unread 1' });
});

e2e('reading on one page clears the unread badge on the same user\'s other page at once', async () => {
  const side = uniq('side-');
  const { a, bn, rn } = await pair({ extra: [side] });
  // b's second device: another browser context, on the other gateway.
  const b2 = await page(0);
  await login(b2, bn);
  const b1 = testPages[1];
  await openRoom(b1, rn);
  await openRoom(b2, rn);
  await openRoom(a, side);
  for (const t of ['one', 'two']) await send(a, `${t} ${uniq('')}`);
  for (const p of [b1, b2]) await until(async () => (await attr(roomItem(p, side), 'data-unread')) === '2', { what: 'badge 2 on both of b\'s pages' });
  await openRoom(b1, side);
  await until(async () => (await attr(roomItem(b2, side), 'data-unread')) === '0', { what: 'badge cleared on the other page', timeout: 10_000 });
  assert.equal(await roomItem(b2, side).getByTestId('unread-badge').count(), 0);
});

e2e('a phone: a tap shows a message\'s actions; reacting and replying work in the phone layout', async () => {
  const { a, b, bn } = await pair({ bOpts: PHONE });
  const text = `from the desk ${uniq('')}`;
  await send(a, text);
  await waitDelivered(b, text);
  await row(b, text).getByTestId('message-body').tap();
  await row(b, text).getByTestId('action-react').waitFor({ state: 'visible' });
  await shot(b, '14-phone-actions');
  await row(b, text).getByTestId('action-react').tap();
  await row(b, text).locator('[data-testid="emoji-option"][data-emoji="🎉"]').tap();
  await until(async () => (await attr(reaction(a, text, '🎉'), 'data-count')) === '1', { what: '🎉 on the desk' });
  assert.match(await attr(reaction(a, text, '🎉'), 'title'), new RegExp(bn));
  // Reply from the phone: the thread panel takes the screen, its composer is on screen.
  await row(b, text).getByTestId('message-body').tap();
  await row(b, text).getByTestId('action-reply').tap();
  await b.getByTestId('thread-panel').waitFor();
  const box = await b.getByTestId('thread-composer').boundingBox();
  assert.ok(box && box.x >= 0 && box.x + box.width <= 390 && box.y + box.height <= 844, 'thread composer on screen');
  await b.getByTestId('thread-composer').fill('replying on the train');
  await b.getByTestId('thread-composer').press('Enter');
  await row(a, 'replying on the train').getByTestId('reply-quote').waitFor();
  await shot(b, '15-phone-thread');
});

e2e('an edit and a reaction made while the socket is cut wait in the outbox and are applied once when it is back', async () => {
  const proxy = await new Proxy(C.gw(0)).start();
  try {
    const a = await page(proxy.url); const b = await page(1);
    const an = uniq('alice'); const bn = uniq('bob'); const rn = uniq('cut-');
    await Promise.all([register(a, an), register(b, bn)]);
    await createRoom(a, rn);
    await joinRoom(b, rn);
    const text = `before the cut ${uniq('')}`;
    await send(a, text);
    await waitDelivered(b, text);
    proxy.block();
    await a.locator('[data-testid="conn-state"][data-state="reconnecting"]').waitFor();
    await act(a, text, 'action-edit');
    const edited = `edited offline ${uniq('')}`;
    await a.getByTestId('composer').fill(edited);
    await a.getByTestId('composer').press('Enter');
    await act(a, text, 'action-react');
    await row(a, text).locator('[data-testid="emoji-option"][data-emoji="✅"]').click();
    await row(a, text).locator('[data-testid="op-status"][data-kind="edit"]').waitFor();
    await a.reload(); // the outbox survives a reload
    await row(a, text).locator('[data-testid="op-status"][data-kind="react"]').waitFor();
    proxy.pass();
    await online(a);
    for (const p of [a, b]) {
      await row(p, edited).locator('[data-testid="edited-marker"]').waitFor({ timeout: 30_000 });
      await until(async () => (await attr(reaction(p, edited, '✅'), 'data-count')) === '1', { what: '✅ once' });
    }
    await until(async () => (await a.locator('[data-testid="op-status"]').count()) === 0, { what: 'outbox empty' });
    await sleep(500);
    assert.equal(await attr(reaction(b, edited, '✅'), 'data-count'), '1', 'applied once');
  } finally {
    await proxy.close();
  }
});

e2e('no periodic polling of GET /api/rooms is left: none while the page sits idle', async () => {
  const { a } = await pair();
  await sleep(1500); // the start's own loads settle
  const seen = [];
  const onRequest = (r) => { if (r.method() === 'GET' && new URL(r.url()).pathname === '/api/rooms') seen.push(Date.now()); };
  a.on('request', onRequest);
  await sleep(12_000);
  a.off('request', onRequest);
  assert.deepEqual(seen, [], 'GET /api/rooms while idle');
  // It is still refreshed when something happens to our rooms: a room we create.
  await createRoom(a, uniq('fresh-'));
});

e2e('hostile text in edits, reactions and threads stays text', async () => {
  const { a, b } = await pair();
  const evil = `<img src=x onerror=window.__xss=1> ${uniq('')}`;
  await send(a, evil);
  await waitDelivered(b, evil);
  await act(a, evil, 'action-edit');
  const evil2 = `[x](javascript:window.__xss=2) <svg onload=window.__xss=3> **b** ${uniq('')}`;
  await a.getByTestId('composer').fill(evil2);
  await a.getByTestId('composer').press('Enter');
  const shown = evil2.replace('**b**', 'b');
  for (const p of [a, b]) await row(p, shown).getByTestId('edited-marker').waitFor();
  await row(b, shown).getByTestId('edited-marker').click();
  await b.locator('[data-testid="edit-history-item"]').nth(1).waitFor();
  await b.getByTestId('close-edit-history').click();
  await act(b, shown, 'action-reply');
  await b.getByTestId('thread-composer').fill('<iframe src=javascript:window.__xss=4>');
  await b.getByTestId('thread-composer').press('Enter');
  await row(a, '<iframe').waitFor();
  for (const p of [a, b]) {
    assert.equal(await p.evaluate(() => window.__xss), undefined);
    assert.equal(await p.locator('#app img, #app script, #app svg image, #app iframe, #app [onload], #app [onerror]').count(), 0);
    assert.equal(await p.locator('[data-testid="message-body"] a').count(), 0, 'no javascript: link');
    assert.deepEqual(await p.evaluate(() => window.__cspViolations), []);
  }
  assert.deepEqual((await messages(a)).filter((m) => m.body.includes('<iframe')).length, 1);
});
