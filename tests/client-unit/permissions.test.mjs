// The client's mirror of the permission table (static/js/core/permissions.js, /work/gov-spec.md).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { can, leastRole, memberActions, mutedAt, rank, ACTIONS } from '../../static/js/core/permissions.js';

const room = (my_role, extra = {}) => ({ id: 'r', kind: 'room', visibility: 'public', my_role, ...extra });
const NOW = Date.parse('2026-06-01T00:00:00Z');

test('the table: each action from its least role up, nothing below it, nothing for a non-member', () => {
  const table = {
    read: 'member', send: 'member', invite: 'member', manageLinks: 'moderator', kick: 'moderator',
    mute: 'moderator', ban: 'moderator', deleteOthers: 'moderator', editSettings: 'admin',
    changeRoles: 'admin', viewModLog: 'admin', transferOwnership: 'owner', deleteRoom: 'owner',
  };
  assert.deepEqual(ACTIONS.sort(), Object.keys(table).sort());
  for (const [action, least] of Object.entries(table)) {
    for (const role of ['member', 'moderator', 'admin', 'owner']) {
      assert.equal(can(room(role), action), rank(role) >= rank(least), `${role} ${action}`);
    }
    assert.equal(can(room(null), action), false, `non-member ${action}`);
  }
  assert.equal(can(room('owner'), 'fly'), false, 'an unknown action');
  assert.equal(can(null, 'read'), false);
});

test('invite: members in public rooms and group DMs, moderators in private rooms, nobody in DMs', () => {
  assert.equal(can(room('member'), 'invite'), true);
  assert.equal(can(room('member', { visibility: 'private' }), 'invite'), false);
  assert.equal(can(room('moderator', { visibility: 'private' }), 'invite'), true);
  assert.equal(can(room('member', { kind: 'group', visibility: 'private' }), 'invite'), true);
  assert.equal(leastRole(room('member', { kind: 'dm', visibility: 'private' }), 'invite'), null);
  for (const a of ACTIONS) {
    const dm = room('owner', { kind: 'dm', visibility: 'private' });
    assert.equal(can(dm, a), a === 'read' || a === 'send', `DM ${a}`);
    assert.equal(can(dm, a, { serverAdmin: true }), a === 'read' || a === 'send', `DM ${a} (server admin)`);
  }
});

test('a server admin counts as owner for everything but reading and sending', () => {
  const r = room(null, { visibility: 'private' });
  for (const a of ACTIONS) assert.equal(can(r, a, { serverAdmin: true }), a !== 'read' && a !== 'send', a);
  assert.equal(can(room('member'), 'send', { serverAdmin: true }), true, 'a member admin sends as a member');
});

test('member actions: only on a lower role, never on oneself', () => {
  const target = (role, extra = {}) => ({ id: 't', name: 't', role, muted_until: null, ...extra });
  const none = { kick: false, ban: false, mute: false, unmute: false, roles: [], transfer: false };
  assert.deepEqual(memberActions(room('member'), target('member'), { me: 'me' }), none);
  assert.deepEqual(memberActions(room('moderator'), target('member'), { me: 'me' }),
    { kick: true, ban: true, mute: true, unmute: false, roles: [], transfer: false });
  assert.deepEqual(memberActions(room('moderator'), target('moderator'), { me: 'me' }), none, 'an equal');
  assert.deepEqual(memberActions(room('admin'), target('moderator'), { me: 'me' }),
    { kick: true, ban: true, mute: true, unmute: false, roles: ['member'], transfer: false });
  assert.deepEqual(memberActions(room('admin'), target('member'), { me: 'me' }).roles, ['moderator']);
  assert.deepEqual(memberActions(room('admin'), target('admin'), { me: 'me' }), none);
  assert.deepEqual(memberActions(room('owner'), target('admin'), { me: 'me' }),
    { kick: true, ban: true, mute: true, unmute: false, roles: ['moderator', 'member'], transfer: true });
  assert.deepEqual(memberActions(room('owner'), target('member'), { me: 'me' }).roles, ['admin', 'moderator']);
  assert.deepEqual(memberActions(room('owner'), target('owner', { id: 'me' }), { me: 'me' }), none, 'oneself');
  // A server admin acts as owner, but not on the owner.
  assert.deepEqual(memberActions(room('member'), target('admin'), { me: 'me', serverAdmin: true }).kick, true);
  assert.deepEqual(memberActions(room('member'), target('owner'), { me: 'me', serverAdmin: true }),
    { kick: false, ban: false, mute: false, unmute: false, roles: [], transfer: false });
  // DMs: nothing.
  assert.deepEqual(memberActions(room('owner', { kind: 'dm' }), target('member'), { me: 'me' }), none);
});

test('mute or unmute, by whether the mute is in force now', () => {
  const muted = { id: 't', role: 'member', muted_until: '2026-06-02T00:00:00Z' };
  const over = { id: 't', role: 'member', muted_until: '2026-05-01T00:00:00Z' };
  let a = memberActions(room('moderator'), muted, { me: 'me', now: NOW });
  assert.equal(a.mute, false); assert.equal(a.unmute, true);
  a = memberActions(room('moderator'), over, { me: 'me', now: NOW });
  assert.equal(a.mute, true); assert.equal(a.unmute, false);
  assert.equal(mutedAt(null, NOW), false);
  assert.equal(mutedAt('garbage', NOW), false);
  assert.equal(mutedAt('9999-12-31T23:59:59Z', NOW), true);
});
