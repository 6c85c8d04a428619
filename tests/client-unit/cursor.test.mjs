// The per-room cursor: what a (re)subscribe sends as `since`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Cursors } from '../../static/js/core/cursor.js';
import { harness, msg, ME } from './fakes.mjs';

test('Cursors: the first since is last_position or -1, and the cursor only moves forward', () => {
  const c = new Cursors();
  assert.equal(c.since('a', 7), 7);
  assert.equal(c.since('b', null), -1);
  assert.equal(c.since('a', 100), 7, 'a later room list does not move it');
  assert.equal(c.advance('a', 12), true);
  assert.equal(c.advance('a', 9), false, 'never back');
  assert.equal(c.advance('a', 12), false);
  assert.equal(c.advance('a', 'x'), false, 'not a position');
  assert.equal(c.get('a'), 12);
  c.forget('a');
  assert.equal(c.get('a'), null);
});

test('every member room is subscribed once, with since = last_position, or -1 for a room without messages', () => {
  const h = harness({ rooms: [{ id: 'a', last_position: 7 }, { id: 'b' }, { id: 'c', member: false, last_position: 3 }] });
  h.start();
  assert.deepEqual(h.ws.frames('subscribe'), [
    { type: 'subscribe', room: 'a', since: 7 },
    { type: 'subscribe', room: 'b', since: -1 },
  ]);
  h.sync.syncSubscriptions();
  assert.equal(h.ws.frames('subscribe').length, 2, 'not again on the same connection');
});

test('the cursor follows the stream (positions need not be dense) and a reconnect resubscribes with since = the newest held', () => {
  const h = harness({ rooms: [{ id: 'a', last_position: 7 }, { id: 'quiet' }] });
  const ws = h.start();
  ws.deliver({ type: 'message', message: msg('a', 8) });
  ws.deliver({ type: 'message', message: msg('a', 12) });
  ws.deliver({ type: 'subscribed', room: 'a', position: 12 });
  ws.deliver({ type: 'message', message: msg('a', 30) });
  assert.equal(h.sync.cursors.get('a'), 30);
  h.reconnect();
  assert.equal(h.since('a'), 30);
  assert.equal(h.since('quiet'), -1);
  assert.equal(h.ws.frames('subscribe').length, 2, 'each room once');
});

test('an ack does not move the cursor (it can be ahead of the stream); the stream does', () => {
  const h = harness({ rooms: [{ id: 'a', last_position: 4 }] });
  const ws = h.start();
  ws.deliver({ type: 'message', message: msg('a', 5) });
  const o = h.sync.submit('a', 'hello');
  // Others' messages 6..9 are not delivered yet when our ack (position 10) comes.
  ws.deliver({ type: 'ack', client_msg_id: o.client_msg_id, message: msg('a', 10, { sender: ME, cmid: o.client_msg_id }) });
  assert.equal(h.sync.cursors.get('a'), 5);
  assert.equal(h.sync.timeline('a').newest(), 10, 'the acked message is shown');
  h.reconnect();
  assert.equal(h.since('a'), 5, 'so 6..9 are replayed');
});

test('a message of a room not subscribed on this connection does not move the cursor', () => {
  const h = harness({ rooms: [{ id: 'a', last_position: 4 }] });
  const ws = h.start();
  ws.deliver({ type: 'unsubscribed', room: 'a', reason: 'resync' });
  ws.deliver({ type: 'message', message: msg('a', 9) });
  assert.equal(h.sync.cursors.get('a'), 4);
  h.sync.syncSubscriptions();
  assert.equal(h.since('a'), 4, 'resubscribed from where the stream was');
});

test('subscribed.position moves the cursor forward, never back; null leaves it', () => {
  const h = harness({ rooms: [{ id: 'a', last_position: 4 }] });
  const ws = h.start();
  ws.deliver({ type: 'subscribed', room: 'a', position: 9 });
  assert.equal(h.sync.cursors.get('a'), 9);
  ws.deliver({ type: 'subscribed', room: 'a', position: 2 });
  ws.deliver({ type: 'subscribed', room: 'a', position: null });
  assert.equal(h.sync.cursors.get('a'), 9);
});

test('history pages move the cursor to their newest; an older page does not move it back', () => {
  const h = harness({ rooms: [{ id: 'a', last_position: 4 }] });
  h.start();
  h.sync.addHistory('a', { messages: [msg('a', 3), msg('a', 4), msg('a', 6)], has_more: true });
  assert.equal(h.sync.cursors.get('a'), 6);
  assert.equal(h.sync.timeline('a').loaded, true);
  h.sync.addHistory('a', { messages: [msg('a', 1), msg('a', 2)], has_more: false });
  assert.equal(h.sync.cursors.get('a'), 6);
  assert.equal(h.sync.timeline('a').hasMore, false);
  assert.deepEqual(h.sync.timeline('a').list().map((m) => m.position), [1, 2, 3, 4, 6]);
});

test('backlog_too_large: the room starts over live (since null) and its history is dropped', () => {
  const h = harness({ rooms: [{ id: 'a', last_position: 4 }] });
  const ws = h.start();
  h.sync.addHistory('a', { messages: [msg('a', 4)], has_more: false });
  ws.deliver({ type: 'error', code: 'backlog_too_large', message: 'too far behind', retryable: false, ref: 'subscribe' });
  assert.deepEqual(ws.frames('subscribe').at(-1), { type: 'subscribe', room: 'a', since: null });
  assert.equal(h.sync.timeline('a').loaded, false, 'history is loaded again');
  assert.deepEqual(h.eventsOf('reset'), [{ room: 'a' }]);
});

test('a retryable subscribe refusal is tried again with the same since; not_member asks for the room list', () => {
  const h = harness({ rooms: [{ id: 'a', last_position: 4 }, { id: 'b', last_position: 1 }] });
  const ws = h.start();
  ws.deliver({ type: 'error', code: 'unavailable', message: 'later', retryable: true, ref: 'subscribe' });
  assert.equal(ws.frames('subscribe').length, 2);
  h.clock.advance(2500);
  assert.deepEqual(ws.frames('subscribe').at(-1), { type: 'subscribe', room: 'a', since: 4 });
  // The refusals answer the subscribes in order: now b's.
  ws.deliver({ type: 'error', code: 'not_member', message: 'no', retryable: false, ref: 'subscribe' });
  assert.equal(h.eventsOf('rooms-stale').length, 1);
});

test('unsubscribed (left) forgets the room: no cursor, no messages', () => {
  const h = harness({ rooms: [{ id: 'a', last_position: 4 }] });
  const ws = h.start();
  ws.deliver({ type: 'message', message: msg('a', 5) });
  ws.deliver({ type: 'unsubscribed', room: 'a', reason: 'left' });
  assert.equal(h.sync.cursors.get('a'), null);
  assert.equal(h.sync.timelines.has('a'), false);
});
