// Governance on the client (static/js/core/governance.js and its wiring in sync.js):
// member/room events as system lines and their effect on the room and member lists, invites,
// hidden messages of blocked users, invite-link hashes, a refused send.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  applyMemberEvent, applyRoomChanges, describeEvent, goneText, isGovEvent, isHidden, Invites, joinCode, FOREVER,
} from '../../static/js/core/governance.js';
import { Timeline } from '../../static/js/core/timeline.js';
import { harness, msg, ME, OTHER } from './fakes.mjs';

const ADMIN = { id: 'u-admin', name: 'boss' };
const gev = (room, position, fields) => ({ id: `g-${room}-${position}`, room, kind: 'member', position, sent_at: '2026-01-01T00:00:00Z', actor: ADMIN, client_msg_id: null, ...fields });

test('isGovEvent: member and room events with their fields; others not', () => {
  assert.ok(isGovEvent(gev('a', 1, { user: OTHER, action: 'kicked' })));
  assert.ok(isGovEvent(gev('a', 1, { kind: 'room', changes: { topic: 'x' } })));
  assert.equal(isGovEvent(gev('a', 1, { user: OTHER, action: 'exploded' })), false);
  assert.equal(isGovEvent(gev('a', 1, { user: null, action: 'kicked' })), false);
  assert.equal(isGovEvent(gev('a', 1, { kind: 'edit', message_id: 'm', body: 'x' })), false);
  assert.equal(isGovEvent(gev('a', 'x', { user: OTHER, action: 'joined' })), false);
  assert.equal(isGovEvent(null), false);
});

test('describeEvent: one line of text per action and for room changes', () => {
  const d = (f) => describeEvent(gev('a', 1, f), { fmtTime: () => 'noon' });
  assert.equal(d({ user: OTHER, action: 'joined' }), 'other joined');
  assert.equal(d({ user: OTHER, action: 'left' }), 'other left');
  assert.equal(d({ user: OTHER, action: 'invited' }), 'boss invited other');
  assert.equal(d({ user: OTHER, action: 'kicked', reason: ' spam ' }), 'boss removed other: spam');
  assert.equal(d({ user: OTHER, action: 'banned', until: '2026-01-02T00:00:00Z' }), 'boss banned other until noon');
  assert.equal(d({ user: OTHER, action: 'unbanned' }), 'boss unbanned other');
  assert.equal(d({ user: OTHER, action: 'muted' }), 'boss muted other');
  assert.equal(d({ user: OTHER, action: 'unmuted' }), 'boss unmuted other');
  assert.equal(d({ user: OTHER, action: 'role', role: 'moderator' }), 'boss made other moderator');
  assert.equal(d({ kind: 'room', changes: { name: 'new', topic: '' } }), 'boss renamed the room to “new”, cleared the topic');
  assert.equal(d({ kind: 'room', changes: { visibility: 'private', slow_mode_secs: 30 } }), 'boss made the room private, set slow mode to 30 s');
  assert.equal(d({ kind: 'room', changes: { slow_mode_secs: 0, description: 'd' } }), 'boss changed the description, turned slow mode off');
  assert.equal(d({ kind: 'room', changes: {} }), 'boss changed the room settings');
  // User text stays what it is (the view puts it in a text node).
  assert.equal(d({ kind: 'room', changes: { topic: '<img src=x onerror=alert(1)>' } }), 'boss set the topic to “<img src=x onerror=alert(1)>”');
});

test('applyMemberEvent: the member list and, for me, my role and mute', () => {
  const members = new Map([[OTHER.id, { id: OTHER.id, name: 'other', online: true, role: 'member', muted_until: null }],
    [ME.id, { id: ME.id, name: 'me', online: true, role: 'member', muted_until: null }]]);
  const room = { id: 'a', my_role: 'member', muted_until: null };
  const ap = (f) => applyMemberEvent(gev('a', 1, f), { members, room, me: ME.id });
  assert.deepEqual(ap({ user: OTHER, action: 'role', role: 'moderator' }), { members: true, me: false });
  assert.equal(members.get(OTHER.id).role, 'moderator');
  assert.deepEqual(ap({ user: ME, action: 'muted', until: '2030-01-01T00:00:00Z' }), { members: true, me: true });
  assert.equal(room.muted_until, '2030-01-01T00:00:00Z');
  assert.equal(members.get(ME.id).muted_until, '2030-01-01T00:00:00Z');
  ap({ user: ME, action: 'unmuted' });
  assert.equal(room.muted_until, null);
  ap({ user: ME, action: 'muted' });
  assert.equal(room.muted_until, FOREVER, 'a mute without an end');
  ap({ user: ME, action: 'role', role: 'admin' });
  assert.equal(room.my_role, 'admin');
  assert.deepEqual(ap({ user: OTHER, action: 'kicked' }), { members: true, me: false });
  assert.equal(members.has(OTHER.id), false);
  assert.deepEqual(ap({ user: OTHER, action: 'joined' }), { members: true, me: false });
  assert.equal(members.get(OTHER.id).role, 'member');
  assert.deepEqual(ap({ user: OTHER, action: 'joined' }), { members: false, me: false }, 'twice');
  assert.deepEqual(applyMemberEvent(gev('a', 1, { user: ME, action: 'banned' }), { members: null, room, me: ME.id }), { members: false, me: true });
});

test('applyRoomChanges: only the settings fields, and whether anything changed', () => {
  const r = { id: 'a', name: 'old', topic: '', member: true };
  assert.equal(applyRoomChanges(r, { name: 'new', topic: 't', member: false, id: 'b' }), true);
  assert.deepEqual(r, { id: 'a', name: 'new', topic: 't', member: true });
  assert.equal(applyRoomChanges(r, { name: 'new' }), false);
  assert.equal(applyRoomChanges(r, null), false);
});

test('the timeline keeps system lines once each, in position order, apart from messages', () => {
  const t = new Timeline();
  t.add(msg('a', 2));
  assert.equal(t.addNotice(gev('a', 5, { user: OTHER, action: 'joined' })), true);
  assert.equal(t.addNotice(gev('a', 3, { user: OTHER, action: 'muted' })), true);
  assert.equal(t.addNotice(gev('a', 5, { user: OTHER, action: 'joined' })), false);
  assert.deepEqual(t.notices().map((e) => e.position), [3, 5]);
  assert.equal(t.size, 1, 'not counted as messages');
  assert.equal(t.countAfter(0, ME.id), 1, 'not unread');
});

test('sync: a member event from the stream is a notice and moves the cursor; a replayed one is not new', () => {
  const h = harness({ rooms: [{ id: 'a' }] });
  const ws = h.start();
  ws.deliver({ type: 'subscribed', room: 'a', position: 1 });
  ws.deliver({ type: 'event', event: gev('a', 4, { user: OTHER, action: 'kicked' }) });
  ws.deliver({ type: 'event', event: gev('a', 4, { user: OTHER, action: 'kicked' }) });
  assert.deepEqual(h.eventsOf('notice').map((d) => d.fresh), [true, false]);
  assert.equal(h.sync.timeline('a').notices().length, 1);
  // The cursor covers it: a reconnect asks from after it.
  const ws2 = h.reconnect();
  assert.equal(h.since('a'), 4);
  // Not for a room we are not in.
  ws2.deliver({ type: 'event', event: gev('zzz', 9, { user: OTHER, action: 'joined' }) });
  assert.equal(h.eventsOf('notice').length, 2);
});

test('sync: an invite frame is reported; a send refused for good reports its room and code', () => {
  const h = harness({ rooms: [{ id: 'a' }] });
  const ws = h.start();
  const invite = { id: 'i1', room: 'b', room_name: 'b', user: ME, from: OTHER, created_at: '2026-01-01T00:00:00Z' };
  ws.deliver({ type: 'invite', invite });
  assert.deepEqual(h.eventsOf('invite'), [{ invite }]);
  const o = h.sync.submit('a', 'hello');
  ws.deliver({ type: 'error', ref: o.client_msg_id, code: 'muted', message: 'You are muted.', retryable: false });
  assert.deepEqual(h.eventsOf('refused'), [{ room: 'a', code: 'muted' }]);
  assert.equal(h.sync.pending('a')[0].failed, true);
});

test('Invites: each once, removable by id and by room, from a list with junk', () => {
  const inv = new Invites();
  const i = (id, room) => ({ id, room, room_name: room, from: OTHER, user: ME });
  inv.reset([i('1', 'a'), i('2', 'b'), i('1', 'a'), { id: 3 }, null]);
  assert.deepEqual(inv.list().map((x) => x.id), ['1', '2']);
  assert.equal(inv.add(i('2', 'b')), false);
  assert.equal(inv.add(i('3', 'b')), true);
  inv.removeRoom('b');
  assert.deepEqual(inv.list().map((x) => x.id), ['1']);
  assert.equal(inv.remove('1'), true);
  assert.equal(inv.size, 0);
});

test('hidden messages: blocked senders, and history flags unless unblocked since', () => {
  const m = { id: 'm', sender: OTHER, body: 'x' };
  assert.equal(isHidden(m, new Set(), new Set()), false);
  assert.equal(isHidden(m, new Set([OTHER.id]), new Set()), true);
  assert.equal(isHidden({ ...m, blocked: true }, new Set(), new Set()), true);
  assert.equal(isHidden({ ...m, blocked: true }, new Set(), new Set([OTHER.id])), false);
  assert.equal(isHidden({ id: 'x' }, new Set(), new Set()), false);
});

test('joinCode and goneText', () => {
  assert.equal(joinCode('#join=AbC-9_z'), 'AbC-9_z');
  assert.equal(joinCode('join=abc'), 'abc');
  assert.equal(joinCode('#room-id'), null);
  assert.equal(joinCode('#join=a b'), null);
  assert.equal(joinCode('#join='), null);
  assert.equal(goneText('kicked'), 'You were removed from this room.');
  assert.equal(goneText('banned'), 'You were banned from this room.');
  assert.equal(goneText('room_deleted'), 'This room was deleted.');
  assert.equal(goneText('resync'), null);
});
