// Wire protocol encoding and decoding (docs/protocol.md).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as p from '../../static/js/core/protocol.js';
import { msg } from './fakes.mjs';

test('frames the client sends', () => {
  assert.deepEqual(JSON.parse(p.encode(p.hello('t'))), { type: 'hello', token: 't' });
  assert.deepEqual(p.subscribe('r', -1), { type: 'subscribe', room: 'r', since: -1 });
  assert.deepEqual(p.subscribe('r', null), { type: 'subscribe', room: 'r', since: null });
  assert.deepEqual(p.send({ room: 'r', client_msg_id: 'c', body: 'b', extra: 1 }), { type: 'send', room: 'r', client_msg_id: 'c', body: 'b' });
  assert.deepEqual(p.read('r', 4), { type: 'read', room: 'r', position: 4 });
  assert.deepEqual(p.typing('r'), { type: 'typing', room: 'r' });
  assert.deepEqual(p.unsubscribe('r'), { type: 'unsubscribe', room: 'r' });
  assert.deepEqual(p.ping(), { type: 'ping' });
});

test('decode: objects with a string type only', () => {
  assert.deepEqual(p.decode('{"type":"pong"}'), { type: 'pong' });
  for (const bad of ['', 'nope', '[]', 'null', '5', '{"type":5}', '{}', null, undefined]) assert.equal(p.decode(bad), null, String(bad));
});

test('isMessage and the body limit (in characters, not UTF-16 units)', () => {
  assert.equal(p.isMessage(msg('a', 1)), true);
  assert.equal(p.isMessage({ ...msg('a', 1), position: 1.5 }), false);
  assert.equal(p.isMessage({ ...msg('a', 1), sender: null }), false);
  assert.equal(p.bodyTooLong('x'.repeat(4000)), false);
  assert.equal(p.bodyTooLong('😀'.repeat(4000)), false);
  assert.equal(p.bodyTooLong('x'.repeat(4001)), true);
});
