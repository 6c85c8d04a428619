// Who may do what in a room: the client's mirror of the server's permission table
// (`src/governance.rs`, /work/gov-spec.md "Standings and roles"). Only decides which
// buttons the page shows; the server checks every action again. DOM-free.
//
// Roles: owner > admin > moderator > member. A server administrator counts as owner for
// every action but reading and sending. In a DM only reading and sending exist; in a group
// DM any member may invite.

export const ROLES = ['member', 'moderator', 'admin', 'owner'];
/** A role's rank (member 0 … owner 3); -1 for none (not a member). */
export const rank = (role) => ROLES.indexOf(role);

/** The least role of each action (`invite` depends on the room: see `leastRole`). */
const LEAST = {
  read: 'member', send: 'member', invite: 'member', manageLinks: 'moderator',
  kick: 'moderator', mute: 'moderator', ban: 'moderator', deleteOthers: 'moderator',
  editSettings: 'admin', changeRoles: 'admin', viewModLog: 'admin',
  transferOwnership: 'owner', deleteRoom: 'owner',
};
export const ACTIONS = Object.keys(LEAST);

/** The least role `action` needs in `room` (null: nobody may). */
export function leastRole(room, action) {
  if (!(action in LEAST)) return null;
  if (room.kind === 'dm') return action === 'read' || action === 'send' ? 'member' : null;
  if (action === 'invite' && room.kind !== 'group' && room.visibility === 'private') return 'moderator';
  return LEAST[action];
}

/** The role the user acts with in `room`: their own, or owner for a server admin (not for read/send). */
function actingRank(room, action, serverAdmin) {
  const own = rank(room.my_role ?? null);
  if (serverAdmin && action !== 'read' && action !== 'send') return rank('owner');
  return own;
}

/** Whether the user (`my_role` of `room`; `serverAdmin`) may do `action` in `room`. */
export function can(room, action, { serverAdmin = false } = {}) {
  if (!room) return false;
  const least = leastRole(room, action);
  if (least === null) return false;
  return actingRank(room, action, serverAdmin) >= rank(least);
}

/** Whether a member's mute is in force at `now` (ms). */
export function mutedAt(mutedUntil, now) {
  if (mutedUntil == null) return false;
  const t = Date.parse(mutedUntil);
  return Number.isNaN(t) ? false : t > now;
}

/**
 * What the user may do to `target` (`{id, role, muted_until}`, a member of `room`):
 * `{kick, ban, mute, unmute, roles: [roles it may be given], transfer}`. Nothing to oneself;
 * kick, ban and mute only to a lower role; a role below one's own only to someone below one's
 * own; ownership by the owner only.
 */
export function memberActions(room, target, { me, serverAdmin = false, now = 0 } = {}) {
  const none = { kick: false, ban: false, mute: false, unmute: false, roles: [], transfer: false };
  if (!room || !target || target.id === me) return none;
  const t = rank(target.role || 'member');
  const over = (action) => can(room, action, { serverAdmin }) && actingRank(room, action, serverAdmin) > t;
  const muted = mutedAt(target.muted_until, now);
  const roles = over('changeRoles')
    ? ['admin', 'moderator', 'member'].filter((r) => rank(r) < actingRank(room, 'changeRoles', serverAdmin) && r !== (target.role || 'member'))
    : [];
  return {
    kick: over('kick'),
    ban: over('ban'),
    mute: over('mute') && !muted,
    unmute: over('mute') && muted,
    roles,
    transfer: can(room, 'transferOwnership', { serverAdmin }) && target.role !== 'owner',
  };
}
