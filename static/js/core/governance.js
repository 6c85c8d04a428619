// Room governance on the client (/work/gov-spec.md), DOM-free: the `member` and `room`
// events of a room's log (checked, applied to the room list entry and the member list, and
// told as one line of text), pending invites, blocked users' messages, invite-link hashes.

/** Messages from a blocked user: hidden behind a placeholder. */
export const HIDDEN_TEXT = 'Hidden message from a blocked user';
/** A mute without an end (no `until`) is kept as this time. */
export const FOREVER = '9999-12-31T23:59:59Z';

const isObj = (x) => x !== null && typeof x === 'object' && !Array.isArray(x);
const isUser = (u) => isObj(u) && typeof u.id === 'string';
const MEMBER_ACTIONS = new Set(['joined', 'left', 'invited', 'kicked', 'banned', 'unbanned', 'muted', 'unmuted', 'role']);

/** Whether `e` is a `member` or `room` event with the fields the client relies on. */
export function isGovEvent(e) {
  if (!isObj(e) || typeof e.id !== 'string' || typeof e.room !== 'string' || !Number.isSafeInteger(e.position)
    || !isUser(e.actor)) return false;
  if (e.kind === 'member') return isUser(e.user) && MEMBER_ACTIONS.has(e.action);
  if (e.kind === 'room') return isObj(e.changes);
  return false;
}

const name = (u) => String((u && u.name) || 'someone');
const quote = (s) => `“${String(s)}”`;

/**
 * One line telling what `e` did (text only; the view puts it in a text node).
 * `fmtTime(iso)`: how a time reads (default: as given).
 */
export function describeEvent(e, { fmtTime = (t) => t } = {}) {
  const who = name(e.actor);
  if (e.kind === 'room') return `${who} ${describeChanges(e.changes)}`;
  const u = name(e.user);
  const until = typeof e.until === 'string' && e.until && e.until !== FOREVER ? ` until ${fmtTime(e.until)}` : '';
  const reason = typeof e.reason === 'string' && e.reason.trim() ? `: ${e.reason.trim()}` : '';
  switch (e.action) {
    case 'joined': return `${u} joined`;
    case 'left': return `${u} left`;
    case 'invited': return `${who} invited ${u}`;
    case 'kicked': return `${who} removed ${u}${reason}`;
    case 'banned': return `${who} banned ${u}${until}${reason}`;
    case 'unbanned': return `${who} unbanned ${u}`;
    case 'muted': return `${who} muted ${u}${until}${reason}`;
    case 'unmuted': return `${who} unmuted ${u}`;
    case 'role': return `${who} made ${u} ${typeof e.role === 'string' ? e.role : 'a member'}`;
    default: return `${who} changed ${u}`;
  }
}

/** "renamed the room to “x”, set the topic to “y”" … */
export function describeChanges(c) {
  const parts = [];
  if (typeof c.name === 'string') parts.push(`renamed the room to ${quote(c.name)}`);
  if (typeof c.topic === 'string') parts.push(c.topic ? `set the topic to ${quote(c.topic)}` : 'cleared the topic');
  if (typeof c.description === 'string') parts.push(c.description ? 'changed the description' : 'cleared the description');
  if (c.visibility === 'public' || c.visibility === 'private') parts.push(`made the room ${c.visibility}`);
  if (Number.isSafeInteger(c.slow_mode_secs)) parts.push(c.slow_mode_secs > 0 ? `set slow mode to ${c.slow_mode_secs} s` : 'turned slow mode off');
  return parts.length ? parts.join(', ') : 'changed the room settings';
}

const ROOM_FIELDS = ['name', 'topic', 'description', 'visibility', 'slow_mode_secs'];
/** A `room` event's changes applied to a room list entry; true if it changed. */
export function applyRoomChanges(room, changes) {
  if (!room || !isObj(changes)) return false;
  let changed = false;
  for (const k of ROOM_FIELDS) {
    if (k in changes && changes[k] !== undefined && room[k] !== changes[k]) { room[k] = changes[k]; changed = true; }
  }
  return changed;
}

/**
 * A `member` event applied to the room's member list (`members`: Map id -> {id, name,
 * online, role, muted_until}, or null when not loaded) and, when it is about `me`, to the
 * room list entry (`room`: my_role, muted_until). Returns `{members, me}`: what changed.
 */
export function applyMemberEvent(e, { members, room, me }) {
  const out = { members: false, me: false };
  const u = e.user;
  if (members) {
    const m = members.get(u.id);
    switch (e.action) {
      case 'joined':
        if (!m) { members.set(u.id, { id: u.id, name: name(u), online: false, role: 'member', muted_until: null }); out.members = true; }
        break;
      case 'left': case 'kicked': case 'banned':
        out.members = members.delete(u.id);
        break;
      case 'role':
        if (m && typeof e.role === 'string' && m.role !== e.role) { m.role = e.role; out.members = true; }
        break;
      case 'muted':
        if (m) { m.muted_until = e.until || FOREVER; out.members = true; }
        break;
      case 'unmuted':
        if (m && m.muted_until != null) { m.muted_until = null; out.members = true; }
        break;
      default: break;
    }
  }
  if (room && u.id === me) {
    if (e.action === 'role' && typeof e.role === 'string' && room.my_role !== e.role) { room.my_role = e.role; out.me = true; }
    if (e.action === 'muted') { room.muted_until = e.until || FOREVER; out.me = true; }
    if (e.action === 'unmuted' && room.muted_until != null) { room.muted_until = null; out.me = true; }
    if (e.action === 'kicked' || e.action === 'banned' || e.action === 'left') out.me = true;
  }
  return out;
}

/** Why a room went away (an `unsubscribed` reason), as the page says it; null for others. */
export function goneText(reason) {
  switch (reason) {
    case 'kicked': return 'You were removed from this room.';
    case 'banned': return 'You were banned from this room.';
    case 'room_deleted': return 'This room was deleted.';
    default: return null;
  }
}

/**
 * Whether message `m` is hidden: its sender is on the user's block list (`blocked`: Set of
 * ids), or a history page flagged it (`blocked: true`) and the sender was not unblocked since
 * (`unblocked`: Set of ids).
 */
export function isHidden(m, blocked, unblocked) {
  const id = m && m.sender && m.sender.id;
  if (!id) return false;
  if (blocked && blocked.has(id)) return true;
  return m.blocked === true && !(unblocked && unblocked.has(id));
}

/** Whether `i` is an invite object the page can show. */
export function isInvite(i) {
  return isObj(i) && typeof i.id === 'string' && typeof i.room === 'string' && isUser(i.from);
}

/** Pending invites: each once (by id), oldest first; `add` returns whether it is new. */
export class Invites {
  #byId = new Map();
  /** Replaces the list (GET /api/invites). */
  reset(list) { this.#byId.clear(); for (const i of Array.isArray(list) ? list : []) this.add(i); }
  add(i) { if (!isInvite(i) || this.#byId.has(i.id)) return false; this.#byId.set(i.id, i); return true; }
  remove(id) { return this.#byId.delete(id); }
  /** Drops the invites to `room` (joined another way). */
  removeRoom(room) { for (const [id, i] of this.#byId) if (i.room === room) this.#byId.delete(id); }
  list() { return [...this.#byId.values()]; }
  get size() { return this.#byId.size; }
}

/** The invite-link code of a location hash `#join=CODE`, or null. */
export function joinCode(hash) {
  const m = /^#?join=([A-Za-z0-9_-]{1,128})$/.exec(typeof hash === 'string' ? hash : '');
  return m ? m[1] : null;
}
