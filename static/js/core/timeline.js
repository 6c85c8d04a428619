// One room's messages as the page holds them: each once (keyed by id, whichever of the
// stream, an ack or a history page brought it first), in position order whatever order
// they arrived in; and the room's events (edit, delete, reaction) applied to them.
//
// Applying events is idempotent, so the same event from recovery, an ack and the live
// stream (or a message whose replayed copy already carries the edit) changes nothing the
// second time: an edit carries the full new body (an older edit never overwrites a newer
// one); a delete is a tombstone; reactions are a set of (user, emoji). Edits and reactions
// of a message known deleted are ignored. An event of a message not held yet (older than
// the history loaded) waits, bounded, until that message comes.

/** Events of messages not held yet, kept per room until their message comes. */
export const MAX_EARLY_EVENTS = 500;
/** `member` and `room` events kept per room (system lines), the newest. */
export const MAX_NOTICES = 500;

/**
 * The reactions of `m` for the view, in first-seen order:
 * `[{emoji, count, me, users: [{id, name}]}]` (users: those known by name).
 */
export function reactionsOf(m, me) {
  const out = [];
  for (const [emoji, r] of m._reactions || []) {
    const count = r.users.size + r.anon;
    if (count > 0) out.push({ emoji, count, me: !!me && r.users.has(me), users: [...r.users].map(([id, name]) => ({ id, name })) });
  }
  return out;
}

/** Whether `m` mentions the user `me` (its `mentions`: user ids). */
/** Milliseconds of an RFC 3339 time (the server's fraction digits vary), NaN if none. */
const ms = (t) => (typeof t === 'string' ? Date.parse(t) : NaN);

export const mentionsMe = (m, me) => !!me && !m.deleted && Array.isArray(m.mentions) && m.mentions.includes(me);

export class Timeline {
  #byId = new Map();
  #sorted = []; // ascending position (then id)
  #applied = new Set(); // event ids applied
  #early = []; // events of messages not held yet
  #eventCmids = new Map(); // client_msg_id -> actor id, of events applied
  #notices = []; // `member` and `room` events (system lines), ascending position
  /** The newest history page is in. */
  loaded = false;
  /** Older history exists on the server (from the last page's `has_more`). */
  hasMore = false;

  /** `me()`: the user id of this page (reactions' `me` from history pages), or null. */
  constructor({ me } = {}) { this.me = me || (() => null); }

  /**
   * Adds a message; true if it is new, false for a duplicate (same id: kept once).
   * `live`: from the stream or an ack (a new reply counts in its parent's reply_count),
   * not a history page (whose parents' counts are current already).
   */
  add(m, { live = true } = {}) {
    if (this.#byId.has(m.id)) return false;
    this.#normalize(m);
    this.#byId.set(m.id, m);
    // Binary search: live messages usually go last, history pages first.
    let lo = 0; let hi = this.#sorted.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const x = this.#sorted[mid];
      if (x.position < m.position || (x.position === m.position && x.id < m.id)) lo = mid + 1; else hi = mid;
    }
    this.#sorted.splice(lo, 0, m);
    if (live && typeof m.reply_to === 'string' && !m.deleted) {
      const parent = this.#byId.get(m.reply_to);
      if (parent) {
        parent.reply_count = (parent.reply_count || 0) + 1;
        if (!(ms(parent.last_reply_at) >= ms(m.sent_at))) parent.last_reply_at = m.sent_at;
      }
    }
    if (this.#early.length) {
      const mine = this.#early.filter((e) => e.message_id === m.id);
      if (mine.length) {
        this.#early = this.#early.filter((e) => e.message_id !== m.id);
        for (const e of mine) this.#apply(m, e);
      }
    }
    return true;
  }

  /** A message from a server: reactions from a history page into the set form. */
  #normalize(m) {
    if (m._reactions instanceof Map) return; // held by another timeline too (a thread)
    const map = new Map();
    if (Array.isArray(m.reactions)) {
      const me = this.me();
      for (const r of m.reactions) {
        if (!r || typeof r.emoji !== 'string' || map.has(r.emoji)) continue;
        const users = new Map();
        for (const u of Array.isArray(r.users) ? r.users : []) if (u && typeof u.id === 'string') users.set(u.id, String(u.name ?? ''));
        if (r.me === true && me && !users.has(me)) users.set(me, '');
        const count = Number.isSafeInteger(r.count) && r.count > 0 ? r.count : users.size;
        map.set(r.emoji, { users, anon: Math.max(0, count - users.size) });
      }
    }
    Object.defineProperty(m, '_reactions', { value: map, writable: true, enumerable: false, configurable: true });
    if (m.deleted) { m.body = ''; }
  }

  /**
   * Applies an event (already checked with protocol.isEvent). Returns 'applied' (the
   * message changed), 'same' (already applied, or nothing to change), or 'early' (its
   * message is not held yet: kept for when it comes).
   */
  applyEvent(e) {
    if (typeof e.client_msg_id === 'string') this.#eventCmids.set(e.client_msg_id, e.actor.id);
    if (this.#applied.has(e.id)) return 'same';
    const m = this.#byId.get(e.message_id);
    if (!m) {
      if (!this.#early.some((x) => x.id === e.id)) {
        this.#early.push(e);
        if (this.#early.length > MAX_EARLY_EVENTS) this.#early.shift();
      }
      return 'early';
    }
    this.#applied.add(e.id);
    return this.#apply(m, e) ? 'applied' : 'same';
  }

  #apply(m, e) {
    this.#applied.add(e.id);
    if (e.kind === 'delete') {
      if (m.deleted) return false;
      m.deleted = true; m.body = ''; m._reactions = new Map();
      const parent = typeof m.reply_to === 'string' ? this.#byId.get(m.reply_to) : null;
      if (parent && parent.reply_count > 0) parent.reply_count--;
      return true;
    }
    if (m.deleted) return false; // edits and reactions of a deleted message
    if (e.kind === 'edit') {
      if (m._editPos != null && e.position <= m._editPos) return false; // an older edit
      // A message from a history page already in a later state than this edit.
      if (m._editPos == null && ms(m.edited_at) > ms(e.sent_at)) return false;
      const changed = m.body !== e.body || m.edited_at !== e.sent_at;
      m.body = e.body; m.edited_at = e.sent_at || m.edited_at || '';
      Object.defineProperty(m, '_editPos', { value: e.position, writable: true, enumerable: false, configurable: true });
      return changed;
    }
    // reaction
    let r = m._reactions.get(e.emoji);
    if (e.on) {
      if (r && r.users.has(e.actor.id)) return false;
      if (!r) { r = { users: new Map(), anon: 0 }; m._reactions.set(e.emoji, r); }
      r.users.set(e.actor.id, String(e.actor.name ?? ''));
      return true;
    }
    if (!r) return false;
    if (r.users.has(e.actor.id)) r.users.delete(e.actor.id);
    else if (r.anon > 0) r.anon--; // one of those a history page did not name
    else return false;
    if (r.users.size + r.anon === 0) m._reactions.delete(e.emoji);
    return true;
  }

  /**
   * A `member` or `room` event (governance.js isGovEvent), shown as a system line; true if
   * new (each once by id, in position order, the newest MAX_NOTICES kept).
   */
  addNotice(e) {
    if (this.#notices.some((x) => x.id === e.id)) return false;
    let i = this.#notices.length;
    while (i > 0 && this.#notices[i - 1].position > e.position) i--;
    this.#notices.splice(i, 0, e);
    if (this.#notices.length > MAX_NOTICES) this.#notices.shift();
    return true;
  }

  /** The system lines held, in position order (read only). */
  notices() { return this.#notices; }

  has(id) { return this.#byId.has(id); }

  get(id) { return this.#byId.get(id) || null; }

  get size() { return this.#sorted.length; }

  /** The messages in position order (read only). */
  list() { return this.#sorted; }

  /** The replies to `id` held, in position order. */
  repliesTo(id) { return this.#sorted.filter((m) => m.reply_to === id); }

  /** Position of the oldest message held, or null. */
  oldest() { return this.#sorted.length ? this.#sorted[0].position : null; }

  /** Position of the newest message held, or null. */
  newest() { return this.#sorted.length ? this.#sorted[this.#sorted.length - 1].position : null; }

  /** How many messages after `position` were sent by someone other than `me` (deleted ones do not count). */
  countAfter(position, me) {
    let n = 0;
    for (let i = this.#sorted.length - 1; i >= 0 && this.#sorted[i].position > position; i--) {
      const m = this.#sorted[i];
      if (m.sender.id !== me && !m.deleted) n++;
    }
    return n;
  }

  /** How many messages after `position` from others mention `me`. */
  mentionsAfter(position, me) {
    let n = 0;
    for (let i = this.#sorted.length - 1; i >= 0 && this.#sorted[i].position > position; i--) {
      const m = this.#sorted[i];
      if (m.sender.id !== me && mentionsMe(m, me)) n++;
    }
    return n;
  }

  /** The client_msg_ids of the messages and events `userId` sent. */
  clientIdsOf(userId) {
    const ids = new Set();
    for (const m of this.#sorted) if (m.sender.id === userId) ids.add(m.client_msg_id);
    for (const [cmid, actor] of this.#eventCmids) if (actor === userId) ids.add(cmid);
    return ids;
  }
}
