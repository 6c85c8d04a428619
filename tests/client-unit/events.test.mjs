// Room events (v1.1): edits, deletes and reactions applied to the timeline, idempotently and
// in position order; replies; the outbox for edit/delete/react; per-user frames.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Timeline, reactionsOf, MAX_EARLY_EVENTS } from '../../static/js/core/timeline.js';
import { harness, msg, ev, ME, OTHER, MemoryStorage } from './fakes.mjs';

const THIRD = { id: 'u-third', name: 'third' };
const reacts = (m, me = ME.id) => reactionsOf(m, me).map((r) => [r.emoji, r.count, r.me]);

test('edit: new body and edited_at; an older edit never overwrites a newer one; idempotent', () => {
  const t = new Timeline();
  t.add(msg('a', 1));
  const e1 = ev('a', 2, 'edit', 'm-a-1', { body: 'first edit' });
  const e2 = ev('a', 3, 'edit', 'm-a-1', { body: 'second edit' });
  assert.equal(t.applyEvent(e1), 'applied');
  assert.equal(t.get('m-a-1').body, 'first edit');
  assert.equal(t.get('m-a-1').edited_at, e1.sent_at);
  assert.equal(t.applyEvent(e2), 'applied');
  assert.equal(t.applyEvent(e1), 'same', 'the same event again');
  assert.equal(t.applyEvent({ ...e1, id: 'other-id' }), 'same', 'an older edit (by position)');
  assert.equal(t.get('m-a-1').body, 'second edit');
});

test('delete: tombstone (body "", deleted); later edits and reactions of it are ignored; it stops counting as unread', () => {
  const t = new Timeline();
  t.add(msg('a', 1)); t.add(msg('a', 2));
  assert.equal(t.countAfter(0, ME.id), 2);
  t.applyEvent(ev('a', 3, 'reaction', 'm-a-1', { emoji: '🎉' }));
  assert.equal(t.applyEvent(ev('a', 4, 'delete', 'm-a-1')), 'applied');
  const m = t.get('m-a-1');
  assert.equal(m.deleted, true);
  assert.equal(m.body, '');
  assert.deepEqual(reacts(m), [], 'reactions go with it');
  assert.equal(t.applyEvent(ev('a', 5, 'edit', 'm-a-1', { body: 'resurrected?' })), 'same');
  assert.equal(t.applyEvent(ev('a', 6, 'reaction', 'm-a-1')), 'same');
  assert.equal(t.applyEvent(ev('a', 7, 'delete', 'm-a-1')), 'same');
  assert.equal(m.body, '');
  assert.equal(t.countAfter(0, ME.id), 1, 'a deleted message does not count');
  // A replayed message that already carries the tombstone.
  t.add({ ...msg('a', 9), deleted: true, body: '' });
  assert.equal(t.countAfter(0, ME.id), 1);
});

test('reactions: a set of (user, emoji) with counts and me; on twice counts once; off of a reaction never made changes nothing', () => {
  const t = new Timeline({ me: () => ME.id });
  t.add(msg('a', 1));
  t.applyEvent(ev('a', 2, 'reaction', 'm-a-1', { emoji: '👍', actor: OTHER }));
  t.applyEvent(ev('a', 3, 'reaction', 'm-a-1', { emoji: '👍', actor: ME }));
  t.applyEvent(ev('a', 4, 'reaction', 'm-a-1', { emoji: '👍', actor: ME })); // a second "on" (another event id)
  t.applyEvent(ev('a', 5, 'reaction', 'm-a-1', { emoji: '❤️', actor: THIRD }));
  const m = t.get('m-a-1');
  assert.deepEqual(reacts(m), [['👍', 2, true], ['❤️', 1, false]]);
  assert.deepEqual(reactionsOf(m, ME.id)[0].users.map((u) => u.name), ['other', 'me']);
  assert.equal(t.applyEvent(ev('a', 6, 'reaction', 'm-a-1', { emoji: '❤️', actor: OTHER, on: false })), 'same');
  t.applyEvent(ev('a', 7, 'reaction', 'm-a-1', { emoji: '👍', actor: ME, on: false }));
  t.applyEvent(ev('a', 8, 'reaction', 'm-a-1', { emoji: '❤️', actor: THIRD, on: false }));
  assert.deepEqual(reacts(m), [['👍', 1, false]]);
});

test('reactions from a history page (counts, me, some users) combine with live events without double counting', () => {
  const t = new Timeline({ me: () => ME.id });
  t.add({ ...msg('a', 1), reactions: [{ emoji: '👍', count: 12, me: true, users: [{ id: OTHER.id, name: 'other' }] }] }, { live: false });
  const m = t.get('m-a-1');
  assert.deepEqual(reacts(m), [['👍', 12, true]]);
  // Replayed events already counted in the page: no change.
  assert.equal(t.applyEvent(ev('a', 2, 'reaction', 'm-a-1', { actor: OTHER })), 'same');
  assert.equal(t.applyEvent(ev('a', 3, 'reaction', 'm-a-1', { actor: ME })), 'same');
  // Someone the page did not name takes theirs back; a new one comes.
  t.applyEvent(ev('a', 4, 'reaction', 'm-a-1', { actor: THIRD, on: false }));
  assert.deepEqual(reacts(m), [['👍', 11, true]]);
  t.applyEvent(ev('a', 5, 'reaction', 'm-a-1', { actor: { id: 'u-4', name: 'four' } }));
  assert.deepEqual(reacts(m), [['👍', 12, true]]);
  assert.equal(JSON.stringify(m).includes('_reactions'), false, 'internal state is not enumerable');
});

test('an event of a message not held yet waits for it (bounded), then applies in position order', () => {
  const t = new Timeline();
  assert.equal(t.applyEvent(ev('a', 5, 'edit', 'm-a-1', { body: 'later' })), 'early');
  assert.equal(t.applyEvent(ev('a', 4, 'edit', 'm-a-1', { body: 'earlier' })), 'early');
  t.applyEvent(ev('a', 6, 'reaction', 'm-a-1'));
  t.add(msg('a', 1), { live: false });
  const m = t.get('m-a-1');
  assert.equal(m.body, 'later', 'the newest edit wins whatever the arrival order');
  assert.deepEqual(reacts(m), [['👍', 1, false]]);
  for (let i = 0; i < MAX_EARLY_EVENTS + 50; i++) t.applyEvent(ev('a', 100 + i, 'reaction', `missing-${i}`));
  t.add(msg('a', 2, { id: 'missing-0' }));
  assert.deepEqual(reacts(t.get('missing-0')), [], 'the oldest early events were dropped (bounded)');
  t.add(msg('a', 3, { id: `missing-${MAX_EARLY_EVENTS + 49}` }));
  assert.deepEqual(reacts(t.get(`missing-${MAX_EARLY_EVENTS + 49}`)), [['👍', 1, false]]);
});

test('a history message already in a later state is not taken back by an older edit', () => {
  const t = new Timeline();
  t.add({ ...msg('a', 1), body: 'final', edited_at: '2026-01-01T00:00:09Z' }, { live: false });
  assert.equal(t.applyEvent(ev('a', 3, 'edit', 'm-a-1', { body: 'stale', sent_at: '2026-01-01T00:00:03Z' })), 'same');
  assert.equal(t.get('m-a-1').body, 'final');
  t.applyEvent(ev('a', 10, 'edit', 'm-a-1', { body: 'newer', sent_at: '2026-01-01T00:00:10Z' }));
  assert.equal(t.get('m-a-1').body, 'newer');
});

test('recovery and live: events in position order move the cursor; a resubscribe neither skips nor repeats; the state ends equal', () => {
  const h = harness({ rooms: [{ id: 'a', last_position: 0 }] });
  let ws = h.start();
  const stream = [
    { type: 'message', message: msg('a', 1) },
    { type: 'message', message: msg('a', 2) },
    { type: 'event', event: ev('a', 3, 'edit', 'm-a-1', { body: 'one, edited' }) },
    { type: 'event', event: ev('a', 4, 'reaction', 'm-a-2', { emoji: '👀' }) },
    { type: 'event', event: ev('a', 5, 'delete', 'm-a-2') },
    { type: 'message', message: msg('a', 6) },
    { type: 'event', event: ev('a', 7, 'reaction', 'm-a-6', { emoji: '✅', actor: ME }) },
  ];
  for (const f of stream.slice(0, 4)) ws.deliver(f);
  assert.equal(h.sync.cursors.get('a'), 4, 'events move the cursor like messages');
  ws = h.reconnect();
  assert.equal(h.since('a'), 4);
  // The server replays from 5; an overlap (4 again) changes nothing.
  for (const f of stream.slice(3)) ws.deliver(f);
  assert.equal(h.sync.cursors.get('a'), 7);
  const t = h.sync.timeline('a');
  assert.deepEqual(t.list().map((m) => [m.id, m.body, !!m.deleted]), [['m-a-1', 'one, edited', false], ['m-a-2', '', true], ['m-a-6', 'body 6', false]]);
  assert.deepEqual(reactionsOf(t.get('m-a-6'), ME.id).map((r) => [r.emoji, r.count, r.me]), [['✅', 1, true]]);
  // The same state as a history page would give (current state) plus nothing doubled.
  assert.deepEqual(h.eventsOf('event').map((d) => d.changed), [true, true, false, true, true]);
});

test('an event of a room not subscribed on this connection does not move the cursor; malformed events are ignored', () => {
  const h = harness({ rooms: [{ id: 'a', last_position: 4 }, { id: 'x', member: false }] });
  const ws = h.start();
  ws.deliver({ type: 'unsubscribed', room: 'a', reason: 'resync' });
  ws.deliver({ type: 'event', event: ev('a', 9, 'delete', 'm') });
  assert.equal(h.sync.cursors.get('a'), 4);
  ws.deliver({ type: 'event', event: ev('x', 9, 'delete', 'm') });
  for (const bad of [null, { ...ev('a', 10, 'edit', 'm'), body: 5 }, { ...ev('a', 10, 'reaction', 'm'), on: 'yes' }, { ...ev('a', 10, 'delete', 'm'), position: '10' }, { ...ev('a', 10, 'delete', 'm'), kind: 'explode' }, { ...ev('a', 10, 'delete', 'm'), actor: null }]) {
    ws.deliver({ type: 'event', event: bad });
  }
  assert.equal(h.eventsOf('event').length, 1);
  assert.equal(h.sync.timelines.has('x'), false);
});

test('replies: reply_to goes with the send; a live reply counts in its parent\'s reply_count, a deleted one stops counting; history counts are the server\'s', () => {
  const h = harness({ rooms: [{ id: 'a', last_position: 0 }] });
  const ws = h.start();
  h.sync.addHistory('a', { messages: [{ ...msg('a', 1), reply_count: 2 }, { ...msg('a', 2), reply_to: 'm-a-1' }, { ...msg('a', 3), reply_to: 'm-a-1' }], has_more: false });
  const t = h.sync.timeline('a');
  assert.equal(t.get('m-a-1').reply_count, 2, 'not counted again from the page');
  const o = h.sync.submit('a', 'a reply', { reply_to: 'm-a-1', mentions: ['u-x'] });
  assert.deepEqual(ws.frames('send').at(-1), { type: 'send', room: 'a', client_msg_id: o.client_msg_id, body: 'a reply', reply_to: 'm-a-1', mentions: ['u-x'] });
  ws.deliver({ type: 'message', message: { ...msg('a', 4, { sender: ME, cmid: o.client_msg_id, body: 'a reply' }), reply_to: 'm-a-1' } });
  ws.deliver({ type: 'message', message: { ...msg('a', 4, { sender: ME, cmid: o.client_msg_id, body: 'a reply' }), reply_to: 'm-a-1' } });
  assert.equal(t.get('m-a-1').reply_count, 3, 'once');
  assert.equal(t.get('m-a-1').last_reply_at, '2026-01-01T00:00:00Z');
  ws.deliver({ type: 'event', event: ev('a', 5, 'delete', 'm-a-2') });
  assert.equal(t.get('m-a-1').reply_count, 2);
  assert.deepEqual(t.repliesTo('m-a-1').map((m) => m.id), ['m-a-2', 'm-a-3', 'm-a-4']);
});

test('the open thread: held replies, its page, live replies and events', () => {
  const h = harness({ rooms: [{ id: 'a', last_position: 0 }] });
  const ws = h.start();
  h.sync.addHistory('a', { messages: [msg('a', 10), { ...msg('a', 12), reply_to: 'm-a-10' }], has_more: false });
  const th = h.sync.openThread('a', 'm-a-10');
  assert.deepEqual(th.list().map((m) => m.id), ['m-a-12']);
  h.sync.addThreadPage('a', 'm-a-10', { messages: [{ ...msg('a', 11), reply_to: 'm-a-10' }, { ...msg('a', 12), reply_to: 'm-a-10' }, msg('a', 13)], has_more: false });
  assert.deepEqual(th.list().map((m) => m.id), ['m-a-11', 'm-a-12'], 'only its replies, each once');
  ws.deliver({ type: 'message', message: { ...msg('a', 14), reply_to: 'm-a-10' } });
  ws.deliver({ type: 'message', message: { ...msg('a', 15), reply_to: 'other' } });
  ws.deliver({ type: 'event', event: ev('a', 16, 'edit', 'm-a-11', { body: 'thread edit' }) });
  assert.deepEqual(th.list().map((m) => [m.id, m.body]), [['m-a-11', 'thread edit'], ['m-a-12', 'body 12'], ['m-a-14', 'body 14']]);
  h.sync.closeThread();
  assert.equal(h.sync.thread, null);
});

test('edit, delete and react go through the outbox: resent with the same id after a reconnect, settled by the ack with its event', () => {
  const h = harness({ rooms: [{ id: 'a', last_position: 0 }] });
  let ws = h.start();
  ws.deliver({ type: 'message', message: msg('a', 1, { sender: ME }) });
  const e = h.sync.edit('a', 'm-a-1', 'new words');
  const d = h.sync.remove('a', 'm-a-1');
  const r = h.sync.react('a', 'm-a-1', '👍', true);
  const frames = () => ws.sent.filter((f) => ['edit', 'delete', 'react'].includes(f.type));
  assert.deepEqual(frames(), [
    { type: 'edit', room: 'a', message_id: 'm-a-1', client_msg_id: e.client_msg_id, body: 'new words' },
    { type: 'delete', room: 'a', message_id: 'm-a-1', client_msg_id: d.client_msg_id },
    { type: 'react', room: 'a', message_id: 'm-a-1', client_msg_id: r.client_msg_id, emoji: '👍', on: true },
  ]);
  assert.deepEqual(h.sync.pendingOps('a').map((o) => o.kind), ['edit', 'delete', 'react']);
  assert.deepEqual(h.sync.pending('a'), [], 'not shown as messages');
  ws = h.reconnect();
  assert.deepEqual(frames().map((f) => f.client_msg_id), [e.client_msg_id, d.client_msg_id, r.client_msg_id], 'same ids');
  ws.deliver({ type: 'ack', client_msg_id: e.client_msg_id, event: ev('a', 2, 'edit', 'm-a-1', { actor: ME, cmid: e.client_msg_id, body: 'new words' }) });
  assert.equal(h.sync.timeline('a').get('m-a-1').body, 'new words', 'the acked event is applied');
  assert.equal(h.sync.cursors.get('a'), 1, 'an ack does not move the cursor');
  // The own event from the stream settles its entry too.
  ws.deliver({ type: 'event', event: ev('a', 3, 'delete', 'm-a-1', { actor: ME, cmid: d.client_msg_id }) });
  ws.deliver({ type: 'error', code: 'message_deleted', message: 'that message was deleted', retryable: false, ref: r.client_msg_id });
  assert.deepEqual(h.sync.pendingOps('a').map((o) => [o.kind, o.failed, o.error]), [['react', true, 'that message was deleted']]);
  h.sync.discard(r);
  assert.deepEqual(h.sync.outbox.entries, []);
});

test('an edit or reaction kept in storage survives a reload; a react that undoes one not sent yet cancels both', () => {
  const storage = new MemoryStorage();
  const first = harness({ rooms: [{ id: 'a' }], storage });
  first.sync.roomsLoaded = true; first.sync.start(ME); // offline: nothing goes out
  const e = first.sync.edit('a', 'm1', 'later words');
  first.sync.react('a', 'm1', '🎉', true);
  assert.equal(first.sync.react('a', 'm1', '🎉', false), null, 'on then off before sending: nothing to send');
  first.sync.edit('a', 'm1', 'even later');
  assert.deepEqual(first.sync.outbox.entries.map((o) => [o.kind, o.body]), [['edit', 'even later']], 'the newer edit replaces the unsent one');
  first.sync.stop();
  const again = harness({ rooms: [{ id: 'a' }], storage });
  const ws = again.start();
  const edits = ws.frames('edit');
  assert.equal(edits.length, 1);
  assert.equal(edits[0].body, 'even later');
  assert.notEqual(edits[0].client_msg_id, e.client_msg_id);
});

test('rooms_changed asks for the room list; read from another device clears unread without a read frame back', () => {
  const h = harness({ rooms: [{ id: 'a', last_position: 0, unread: 0 }, { id: 'b', last_position: 0 }] });
  const ws = h.start();
  ws.deliver({ type: 'rooms_changed', room: 'dm1', reason: 'dm_opened' });
  assert.deepEqual(h.eventsOf('rooms-stale'), [{ reason: 'dm_opened', room: 'dm1' }]);
  for (const p of [1, 2, 3]) ws.deliver({ type: 'message', message: msg('a', p) });
  ws.deliver({ type: 'event', event: ev('a', 4, 'reaction', 'm-a-1') });
  ws.deliver({ type: 'event', event: ev('a', 5, 'edit', 'm-a-2') });
  assert.equal(h.sync.unread(h.rooms.get('a'), null), 3, 'events do not count');
  ws.deliver({ type: 'read', room: 'a', position: 2 });
  assert.equal(h.sync.unread(h.rooms.get('a'), null), 1);
  assert.deepEqual(h.eventsOf('read'), [{ room: 'a', position: 2 }]);
  ws.deliver({ type: 'read', room: 'a', position: 'x' });
  ws.deliver({ type: 'read', room: 'zzz', position: 9 });
  assert.equal(h.eventsOf('read').length, 1);
  // Opening it here sends only what is new.
  h.sync.markRead('a');
  assert.deepEqual(ws.frames('read'), [{ type: 'read', room: 'a', position: 3 }]);
  ws.deliver({ type: 'read', room: 'a', position: 3 });
  h.sync.markRead('a');
  assert.equal(ws.frames('read').length, 1);
});

test('unread mentions: the list\'s count plus messages from others mentioning me after it', () => {
  const h = harness({ rooms: [{ id: 'a', last_position: 2, unread: 2, unread_mentions: 1 }] });
  const ws = h.start();
  ws.deliver({ type: 'message', message: { ...msg('a', 3), mentions: [ME.id] } });
  ws.deliver({ type: 'message', message: { ...msg('a', 4), mentions: ['u-else'] } });
  ws.deliver({ type: 'message', message: { ...msg('a', 5, { sender: ME }), mentions: [ME.id] } });
  assert.equal(h.sync.unreadMentions(h.rooms.get('a'), null), 2);
  ws.deliver({ type: 'event', event: ev('a', 6, 'delete', 'm-a-3') });
  assert.equal(h.sync.unreadMentions(h.rooms.get('a'), null), 1);
  ws.deliver({ type: 'read', room: 'a', position: 6 });
  assert.equal(h.sync.unreadMentions(h.rooms.get('a'), null), 0);
  assert.equal(h.sync.unread(h.rooms.get('a'), null), 0);
});
