// The socket's life: hello, backoff, the `reconnect` frame, keepalive.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { backoff, KEEPALIVE_MS, SILENT_MS } from '../../static/js/core/connection.js';
import { harness, msg } from './fakes.mjs';

test('hello with the token is the first frame; welcome makes the page online', () => {
  const h = harness({ rooms: [{ id: 'a' }] });
  h.sync.roomsLoaded = true;
  h.sync.start({ id: 'u-me', name: 'me' });
  assert.equal(h.ws.url, 'ws://chat.test/ws');
  h.ws.open();
  assert.deepEqual(h.ws.sent, [{ type: 'hello', token: 'the-token' }]);
  assert.equal(h.sync.welcomed, false);
  h.ws.deliver({ type: 'welcome', user: { id: 'u-me', name: 'me' }, session: 's' });
  assert.equal(h.sync.welcomed, true);
  assert.deepEqual(h.eventsOf('conn').map((c) => c.state), ['connecting', 'online']);
});

test('backoff: 0.5 s doubling to 15 s, with jitter between half and all of it', () => {
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 10].map((a) => backoff(a, () => 0, false)), [250, 500, 1000, 2000, 4000, 7500, 7500, 7500]);
  assert.deepEqual([0, 1, 5].map((a) => backoff(a, () => 0.999999, false)), [500, 1000, 15000]);
  assert.equal(backoff(9, () => 0, true), 150);
});

test('a dropped connection is retried with growing waits, reset after a welcome', () => {
  const h = harness({ rooms: [{ id: 'a' }], random: () => 0 });
  h.start();
  const opened = () => h.sockets.length;
  h.ws.drop();
  h.clock.advance(249); assert.equal(opened(), 1);
  h.clock.advance(1); assert.equal(opened(), 2);
  assert.equal(h.eventsOf('conn').at(-1).state, 'reconnecting');
  h.ws.drop(); // refused again
  h.clock.advance(499); assert.equal(opened(), 2);
  h.clock.advance(1); assert.equal(opened(), 3);
  h.online();
  h.ws.drop();
  h.clock.advance(250); assert.equal(opened(), 4, 'back to the first wait');
  assert.deepEqual(h.eventsOf('closed').map((c) => c.code), [1006, 1006, 1006]);
});

test('the reconnect frame closes the socket and reconnects soon, resubscribing with since', () => {
  const h = harness({ rooms: [{ id: 'a', last_position: 3 }] });
  const ws = h.start();
  ws.deliver({ type: 'message', message: msg('a', 4) });
  ws.deliver({ type: 'reconnect', reason: 'draining' });
  assert.equal(ws.closed, true);
  assert.equal(h.sync.welcomed, false);
  h.clock.advance(300);
  assert.equal(h.sockets.length, 2, 'within 300 ms');
  h.online();
  assert.equal(h.since('a'), 4);
  // The old socket's late frames (and its close) change nothing.
  ws.deliver({ type: 'message', message: msg('a', 9) });
  ws.drop(1012);
  assert.equal(h.sync.cursors.get('a'), 4);
  assert.equal(h.sockets.length, 2);
  assert.equal(h.sync.welcomed, true);
});

test('a ping every 20 s; a socket silent for 50 s is replaced', () => {
  const h = harness({ rooms: [{ id: 'a' }] });
  const ws = h.start();
  h.clock.advance(KEEPALIVE_MS);
  assert.equal(ws.frames('ping').length, 1);
  ws.deliver({ type: 'pong' });
  h.clock.advance(KEEPALIVE_MS * 2);
  assert.equal(ws.frames('ping').length, 3);
  assert.equal(h.sockets.length, 1);
  h.clock.advance(SILENT_MS); // nothing from the server since the pong
  assert.equal(ws.closed, true);
  h.clock.advance(1000);
  assert.equal(h.sockets.length, 2);
});

test('stop (logout) closes the socket and never reconnects', () => {
  const h = harness({ rooms: [{ id: 'a' }] });
  const ws = h.start();
  h.sync.stop();
  assert.equal(ws.closed, true);
  h.clock.advance(60_000);
  assert.equal(h.sockets.length, 1);
  assert.equal(h.clock.timers.length, 0, 'no timer left');
});
