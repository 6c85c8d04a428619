// Order and dedup: each message once, in position order, whatever order it came in.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Timeline } from '../../static/js/core/timeline.js';
import { harness, msg, ME } from './fakes.mjs';

test('Timeline: by position whatever the arrival order; each id once', () => {
  const t = new Timeline();
  for (const p of [12, 3, 8, 40, 9]) assert.equal(t.add(msg('a', p)), true);
  assert.equal(t.add(msg('a', 8)), false, 'duplicate');
  assert.deepEqual(t.list().map((m) => m.position), [3, 8, 9, 12, 40]);
  assert.equal(t.oldest(), 3);
  assert.equal(t.newest(), 40);
  assert.equal(t.size, 5);
  assert.equal(new Timeline().newest(), null);
});

test('Timeline: countAfter counts others\' messages only', () => {
  const t = new Timeline();
  t.add(msg('a', 1)); t.add(msg('a', 2, { sender: ME })); t.add(msg('a', 3)); t.add(msg('a', 4));
  assert.equal(t.countAfter(1, ME.id), 2);
  assert.equal(t.countAfter(-1, ME.id), 3);
  assert.equal(t.countAfter(4, ME.id), 0);
  assert.deepEqual([...t.clientIdsOf(ME.id)], ['c-a-2']);
});

test('out-of-order live messages are placed by position', () => {
  const h = harness({ rooms: [{ id: 'a', last_position: 0 }] });
  const ws = h.start();
  for (const p of [5, 2, 9, 7]) ws.deliver({ type: 'message', message: msg('a', p) });
  assert.deepEqual(h.sync.timeline('a').list().map((m) => m.position), [2, 5, 7, 9]);
});

test('duplicates are dropped: the same message from the stream, an ack, history and a replay shows once', () => {
  const h = harness({ rooms: [{ id: 'a', last_position: 0 }] });
  let ws = h.start();
  const o = h.sync.submit('a', 'mine');
  const mine = msg('a', 3, { sender: ME, cmid: o.client_msg_id, body: 'mine' });
  ws.deliver({ type: 'message', message: msg('a', 1) });
  ws.deliver({ type: 'message', message: msg('a', 1) });
  ws.deliver({ type: 'ack', client_msg_id: o.client_msg_id, message: mine });
  ws.deliver({ type: 'message', message: mine });
  h.sync.addHistory('a', { messages: [msg('a', 1), mine], has_more: false });
  ws = h.reconnect();
  ws.deliver({ type: 'message', message: msg('a', 1) }); // a replay overlapping what is held
  assert.deepEqual(h.sync.timeline('a').list().map((m) => m.id), ['m-a-1', 'm-a-3']);
  assert.deepEqual(h.eventsOf('message').map((d) => d.fresh), [true, false, false, false]);
  assert.deepEqual(h.sync.pending('a'), [], 'the own message is not also pending');
});

test('malformed messages and frames of rooms one is not in are ignored', () => {
  const h = harness({ rooms: [{ id: 'a', last_position: 0 }, { id: 'x', member: false }] });
  const ws = h.start();
  ws.deliver({ type: 'message', message: { id: 'm', room: 'a', position: 'one', body: 'x', sender: { id: 'u' } } });
  ws.deliver({ type: 'message', message: null });
  ws.deliver({ type: 'message', message: msg('x', 1) });
  ws.deliver({ type: 'message', message: msg('elsewhere', 1) });
  ws.deliver('not json');
  ws.deliver('[1,2]');
  assert.equal(h.sync.timeline('a').size, 0);
  assert.equal(h.sync.timelines.has('x'), false);
  assert.equal(h.eventsOf('message').length, 0);
});
