// The outbox: sends kept until the server has them, resent with the same client_msg_id.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ACK_TIMEOUT_MS, Outbox, retryDelay } from '../../static/js/core/outbox.js';
import { harness, msg, ME, MemoryStorage } from './fakes.mjs';

const stored = (h) => JSON.parse(h.storage.getItem('chat.outbox.' + ME.id));
const sends = (h) => h.sockets.flatMap((s) => s.frames('send'));

test('a send waits for welcome, then goes out once', () => {
  const h = harness({ rooms: [{ id: 'a' }] });
  h.sync.roomsLoaded = true;
  h.sync.start(ME);
  const o = h.sync.submit('a', 'early');
  h.ws.open();
  assert.deepEqual(h.ws.frames('send'), [], 'not before welcome');
  h.ws.deliver({ type: 'welcome', user: ME, session: 's' });
  assert.deepEqual(h.ws.frames('send'), [{ type: 'send', room: 'a', client_msg_id: o.client_msg_id, body: 'early' }]);
  h.sync.flush();
  assert.equal(h.ws.frames('send').length, 1, 'in flight: not sent twice');
  assert.deepEqual(stored(h).map((x) => x.body), ['early'], 'kept in storage while pending');
});

test('unacked sends are resent with the same client_msg_id after a reconnect, and dropped on their ack', () => {
  const h = harness({ rooms: [{ id: 'a' }] });
  h.start();
  const o1 = h.sync.submit('a', 'one');
  const o2 = h.sync.submit('a', 'two');
  let ws = h.reconnect();
  assert.deepEqual(ws.frames('send').map((f) => f.client_msg_id), [o1.client_msg_id, o2.client_msg_id]);
  ws.deliver({ type: 'ack', client_msg_id: o1.client_msg_id, message: msg('a', 1, { sender: ME, cmid: o1.client_msg_id, body: 'one' }) });
  // The own message frame settles an entry just as its ack does (whichever comes first).
  ws.deliver({ type: 'message', message: msg('a', 2, { sender: ME, cmid: o2.client_msg_id, body: 'two' }) });
  assert.deepEqual(h.sync.outbox.entries, []);
  assert.deepEqual(stored(h), []);
  ws = h.reconnect();
  assert.deepEqual(ws.frames('send'), [], 'nothing resent once acked');
  assert.equal(new Set(sends(h).map((f) => f.client_msg_id)).size, 2);
});

test('an unanswered send is sent again after the ack timeout, same id', () => {
  const h = harness({ rooms: [{ id: 'a' }] });
  const ws = h.start();
  const o = h.sync.submit('a', 'slow');
  h.clock.advance(ACK_TIMEOUT_MS - 1000);
  assert.equal(ws.frames('send').length, 1);
  h.clock.advance(2000);
  assert.deepEqual(ws.frames('send').map((f) => f.client_msg_id), [o.client_msg_id, o.client_msg_id]);
});

test('a retryable refusal is retried by itself after a pause, same id', () => {
  const h = harness({ rooms: [{ id: 'a' }] });
  const ws = h.start();
  const o = h.sync.submit('a', 'try again');
  ws.deliver({ type: 'error', code: 'unavailable', message: 'log away', retryable: true, ref: o.client_msg_id });
  assert.equal(ws.frames('send').length, 1, 'not at once');
  assert.equal(o.failed, false);
  h.clock.advance(retryDelay(1) + 1000);
  assert.deepEqual(ws.frames('send').map((f) => f.client_msg_id), [o.client_msg_id, o.client_msg_id]);
  ws.deliver({ type: 'error', code: 'rate_limited', message: 'slow down', retryable: true, ref: o.client_msg_id });
  h.clock.advance(retryDelay(2) + 1000);
  assert.equal(ws.frames('send').length, 3);
  ws.deliver({ type: 'ack', client_msg_id: o.client_msg_id, message: msg('a', 1, { sender: ME, cmid: o.client_msg_id }) });
  assert.deepEqual(h.sync.outbox.entries, []);
});

test('a refusal that is not retryable marks the send failed: not resent by itself; Retry keeps the id; Discard drops it', () => {
  const h = harness({ rooms: [{ id: 'a' }] });
  let ws = h.start();
  const o = h.sync.submit('a', 'refused');
  ws.deliver({ type: 'error', code: 'not_member', message: 'you are not in this room', retryable: false, ref: o.client_msg_id });
  assert.equal(o.failed, true);
  assert.equal(o.error, 'you are not in this room');
  assert.deepEqual(stored(h).map((x) => [x.body, x.failed]), [['refused', true]]);
  h.clock.advance(ACK_TIMEOUT_MS * 3);
  ws = h.reconnect();
  assert.equal(sends(h).length, 1, 'neither after timeouts nor after a reconnect');
  assert.deepEqual(h.sync.pending('a').map((x) => x.body), ['refused'], 'still shown');
  h.sync.retry(o);
  assert.deepEqual(ws.frames('send').map((f) => f.client_msg_id), [o.client_msg_id]);
  ws.deliver({ type: 'error', code: 'body_too_long', message: 'too long', retryable: false, ref: o.client_msg_id });
  h.sync.discard(o);
  assert.deepEqual(h.sync.outbox.entries, []);
  assert.deepEqual(stored(h), []);
});

test('an error for nothing of ours is reported, not taken for a send', () => {
  const h = harness({ rooms: [{ id: 'a' }] });
  const ws = h.start();
  const o = h.sync.submit('a', 'x');
  ws.deliver({ type: 'error', code: 'bad_frame', message: 'what', retryable: false, ref: 'send' });
  ws.deliver({ type: 'error', code: 'not_member', message: 'no', retryable: false, ref: 'read' });
  assert.equal(o.failed, false);
  assert.equal(h.eventsOf('error').length, 1);
});

test('the outbox survives a reload (storage, per user) and is sent again with the same ids', () => {
  const storage = new MemoryStorage();
  const first = harness({ rooms: [{ id: 'a' }], storage });
  first.start();
  const o = first.sync.submit('a', 'across a reload');
  first.sync.stop();
  const again = harness({ rooms: [{ id: 'a' }], storage });
  const ws = again.start();
  assert.deepEqual(ws.frames('send'), [{ type: 'send', room: 'a', client_msg_id: o.client_msg_id, body: 'across a reload' }]);
  const other = harness({ rooms: [{ id: 'a' }], storage, user: { id: 'u-someone', name: 'someone' } });
  assert.deepEqual(other.start().frames('send'), [], 'another user does not send it');
});

test('Outbox.load keeps only well-formed entries and takes over the legacy shared outbox', () => {
  const storage = new MemoryStorage();
  storage.setItem('chat.outbox.u1', JSON.stringify([{ client_msg_id: 'k1', room: 'a', body: 'ok', failed: false }, { room: 'a' }, 5]));
  storage.setItem('chat.outbox', JSON.stringify([{ client_msg_id: 'k2', room: 'a', body: 'old', sender: { id: 'u1' } }, { client_msg_id: 'k3', room: 'a', body: 'not mine', sender: { id: 'u2' } }]));
  storage.setItem('chat.last', '{}');
  const ob = new Outbox({ storage, now: () => 0, uuid: () => 'new' });
  ob.load('u1');
  assert.deepEqual(ob.entries.map((o) => o.client_msg_id), ['k1', 'k2']);
  assert.equal(storage.getItem('chat.outbox'), null);
  assert.equal(storage.getItem('chat.last'), null);
  storage.setItem('chat.outbox.u1', '{broken');
  ob.load('u1');
  assert.deepEqual(ob.entries, []);
});
