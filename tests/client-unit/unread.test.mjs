// Unread counts and `read` frames.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Reads } from '../../static/js/core/unread.js';
import { Timeline } from '../../static/js/core/timeline.js';
import { harness, msg, ME } from './fakes.mjs';

test('unread: the server count at the list plus others\' messages after it; own ones, the open room and non-members count 0', () => {
  const r = new Reads();
  const room = { id: 'a', member: true, unread: 3, last_position: 10 };
  const t = new Timeline();
  t.add(msg('a', 9)); t.add(msg('a', 11)); t.add(msg('a', 12, { sender: ME })); t.add(msg('a', 13));
  assert.equal(r.unread(room, t, ME.id, null), 3 + 2);
  assert.equal(r.unread(room, undefined, ME.id, null), 3, 'nothing held');
  assert.equal(r.unread(room, t, ME.id, 'a'), 0, 'the open room');
  assert.equal(r.unread({ ...room, member: false }, t, ME.id, null), 0);
  // Read on this page up to 11: from there on (the server's count is older).
  assert.equal(r.read('a', 11), 11);
  assert.equal(r.unread(room, t, ME.id, null), 1);
  // A newer list (last_position past what was read) counts from the list again.
  assert.equal(r.unread({ ...room, unread: 0, last_position: 13 }, t, ME.id, null), 0);
});

test('Reads.read: a read frame only when the position moved past the last sent', () => {
  const r = new Reads();
  assert.equal(r.read('a', 5), 5);
  r.sent('a', 5);
  assert.equal(r.read('a', 5), null);
  assert.equal(r.read('a', 4), null);
  assert.equal(r.read('a', null), null);
  assert.equal(r.read('a', 8), 8);
});

test('markRead sends one read frame per new newest position, only while subscribed and online', () => {
  const h = harness({ rooms: [{ id: 'a', last_position: 0, unread: 2 }] });
  h.sync.roomsLoaded = true;
  h.sync.start(ME);
  h.sync.addHistory('a', { messages: [msg('a', 1), msg('a', 2)], has_more: false });
  h.sync.markRead('a'); // offline: remembered, not sent
  assert.equal(h.sync.unread(h.rooms.get('a'), null), 0);
  let ws = h.online();
  h.sync.markRead('a');
  assert.deepEqual(ws.frames('read'), [{ type: 'read', room: 'a', position: 2 }]);
  h.sync.markRead('a');
  ws.deliver({ type: 'message', message: msg('a', 7) });
  assert.equal(h.sync.unread(h.rooms.get('a'), null), 1);
  h.sync.markRead('a');
  assert.deepEqual(ws.frames('read').map((f) => f.position), [2, 7]);
  ws = h.reconnect();
  h.sync.markRead('a');
  assert.deepEqual(ws.frames('read'), [], 'the server has it already');
});
