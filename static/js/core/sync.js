// The client half of the delivery guarantees (docs/protocol.md), DOM-free:
// - every room the user is a member of is subscribed on the WebSocket, with `since` = the
//   room's cursor (cursor.js), so a reconnect replays exactly what was missed;
// - messages are kept per room once each, in position order (timeline.js), and room events
//   (edit, delete, reaction) are applied to them in position order: from the stream they
//   move the cursor like messages, so a resubscribe neither skips nor repeats one;
// - sends, edits, deletes and reactions go through the outbox (outbox.js): resent with the
//   same client_msg_id after a reconnect, a reload, a timeout or a retryable refusal;
//   dropped on their ack or their own message / event;
// - unread counts and `read` frames (unread.js), also from other devices (`read` frames
//   of the server);
// - one open thread (`openThread`): its replies as a timeline of their own;
// - the socket's life (connection.js): backoff, the `reconnect` frame, keepalive.
// The view hears what changed through `on(event, detail)`:
//   'conn' {state, detail} · 'closed' {code} · 'welcome' {again, user} ·
//   'message' {message, fresh} · 'event' {event, changed} · 'ack' {room} · 'outbox' {} ·
//   'subscribed' {room} · 'unsubscribed' {room, reason} · 'reset' {room} (history must be
//   reloaded) · 'rooms-stale' {reason} (the room list is out of date: a `rooms_changed`
//   frame, a refused subscribe) · 'read' {room, position} (read on another device) ·
//   'typing' | 'presence' | 'member' (the frame) · 'error' (an error frame for nothing of ours) ·
//   'notice' {event, fresh} (a `member` or `room` event of a room: governance) · 'invite'
//   {invite} (the user was invited) · 'refused' {room, code} (a send or op of ours refused
//   for good, e.g. `muted`).
import { Connection } from './connection.js';
import { Cursors } from './cursor.js';
import { isGovEvent } from './governance.js';
import { Outbox } from './outbox.js';
import * as proto from './protocol.js';
import { Timeline } from './timeline.js';
import { Reads } from './unread.js';

/** A retryable refusal of a subscribe is tried again after this long. */
export const RESUBSCRIBE_MS = 2000;

export class Sync {
  /**
   * `rooms`: the room list (a Map id -> {id, kind, member, unread, last_position}), kept by
   * the caller; `storage`, `uuid`: for the outbox; `on(event, detail)`: see above; `url`,
   * `token`, `openSocket`, `timers`, `now`, `random`: see Connection.
   */
  constructor(deps) {
    this.d = deps;
    this.rooms = deps.rooms;
    this.user = null;
    /** The room list has been loaded once (subscriptions wait for it). */
    this.roomsLoaded = false;
    this.cursors = new Cursors();
    this.reads = new Reads();
    this.timelines = new Map();
    /** The open thread: `{room, parent, timeline}`, or null. */
    this.thread = null;
    this.outbox = new Outbox({ storage: deps.storage, now: deps.now, uuid: deps.uuid });
    this.subscribed = new Set(); // rooms subscribed (or being subscribed) on this connection
    this.subQueue = []; // rooms whose subscribe awaits `subscribed` or an error, in order
    this.ticker = null;
    this.conn = new Connection({
      url: deps.url, token: deps.token, openSocket: deps.openSocket, timers: deps.timers,
      now: deps.now, random: deps.random,
      onFrame: (f, again) => this.#frame(f, again),
      onDown: () => { this.subscribed.clear(); this.subQueue = []; this.outbox.disconnected(); },
      onState: (state, detail) => this.#emit('conn', { state, detail }),
      onClosed: (code) => this.#emit('closed', { code }),
    });
  }

  #emit(event, detail) { this.d.on(event, detail); }

  /** Starts for `user`: loads their outbox and connects. */
  start(user) {
    this.user = user;
    this.outbox.load(user.id);
    if (!this.ticker) this.ticker = this.d.timers.setInterval(() => this.tick(), 1000);
    this.conn.connect();
  }

  /** For good (logout). */
  stop() { this.d.timers.clearInterval(this.ticker); this.ticker = null; this.conn.stop(); }

  get welcomed() { return this.conn.welcomed; }

  timeline(room) {
    let t = this.timelines.get(room);
    if (!t) { t = new Timeline({ me: () => (this.user ? this.user.id : null) }); this.timelines.set(room, t); }
    return t;
  }

  /** Subscribes every member room not subscribed on this connection yet. */
  syncSubscriptions() {
    if (!this.conn.welcomed || !this.roomsLoaded) return;
    for (const r of this.rooms.values()) {
      if (!r.member || this.subscribed.has(r.id)) continue;
      const since = this.cursors.since(r.id, r.last_position);
      if (this.conn.send(proto.subscribe(r.id, since))) { this.subscribed.add(r.id); this.subQueue.push(r.id); }
    }
  }

  /** Drops what is held of a room the user is no longer a member of. */
  forget(room) {
    if (this.subscribed.has(room) && this.conn.welcomed) this.conn.send(proto.unsubscribe(room));
    this.subscribed.delete(room);
    this.subQueue = this.subQueue.filter((x) => x !== room);
    this.timelines.delete(room); this.cursors.forget(room); this.reads.forget(room);
    if (this.thread && this.thread.room === room) this.thread = null;
  }

  /**
   * Opens the thread of message `parent` in `room` (one at a time): a timeline of its
   * replies, filled from `addThreadPage` (GET …/replies) and by live replies.
   */
  openThread(room, parent) {
    if (this.thread && this.thread.room === room && this.thread.parent === parent) return this.thread.timeline;
    const timeline = new Timeline({ me: () => (this.user ? this.user.id : null) });
    for (const m of this.timelines.get(room)?.repliesTo(parent) || []) timeline.add(m, { live: false });
    this.thread = { room, parent, timeline };
    return timeline;
  }

  closeThread() { this.thread = null; }

  /** A page of the open thread (`{messages, has_more}`, ascending). */
  addThreadPage(room, parent, page) {
    const th = this.thread;
    if (!th || th.room !== room || th.parent !== parent) return;
    for (const m of page.messages || []) if (proto.isMessage(m) && m.room === room && m.reply_to === parent) th.timeline.add(m, { live: false });
    th.timeline.hasMore = !!page.has_more;
    th.timeline.loaded = true;
  }

  /** A history page (`{messages, has_more}`, ascending): older pages, or the newest one. */
  addHistory(room, page) {
    const t = this.timeline(room);
    for (const m of page.messages || []) if (proto.isMessage(m) && m.room === room) this.#add(m, 'history');
    // A parent's reply_count is the server's, or the replies held when more came since.
    for (const m of page.messages || []) {
      const held = t.get(m.id);
      if (held && held.reply_count != null) {
        const n = t.repliesTo(held.id).filter((r) => !r.deleted).length;
        if (n > held.reply_count) held.reply_count = n;
      }
    }
    t.hasMore = !!page.has_more;
    t.loaded = true;
  }

  /**
   * Adds a message; `source`: 'stream' (the room's subscription), 'history', 'ack' or
   * 'other'. The user's own message settles its outbox entry. Returns whether it is new.
   */
  #add(m, source) {
    const fresh = this.timeline(m.room).add(m, { live: source !== 'history' });
    const th = this.thread;
    if (source !== 'history' && th && th.room === m.room && m.reply_to === th.parent) th.timeline.add(m);
    if (this.user && m.sender.id === this.user.id && this.outbox.settle(m.client_msg_id)) this.#emit('outbox', {});
    if (source === 'stream' || source === 'history') this.cursors.advance(m.room, m.position);
    return fresh;
  }

  /**
   * Applies a room event; `source` as for #add. The user's own event settles its outbox
   * entry. Returns whether a message held changed.
   */
  #applyEvent(e, source) {
    const r = this.timeline(e.room).applyEvent(e);
    const th = this.thread;
    const rt = th && th.room === e.room ? th.timeline.applyEvent(e) : 'same';
    if (this.user && e.actor.id === this.user.id && typeof e.client_msg_id === 'string' && this.outbox.settle(e.client_msg_id)) this.#emit('outbox', {});
    if (source === 'stream') this.cursors.advance(e.room, e.position);
    return r === 'applied' || rt === 'applied';
  }

  /**
   * A new send from the composer: into the outbox, out on the socket if it is up.
   * `opts`: `{reply_to, mentions}`.
   */
  submit(room, body, opts = {}) {
    const extra = {};
    if (typeof opts.reply_to === 'string' && opts.reply_to) extra.reply_to = opts.reply_to;
    if (Array.isArray(opts.mentions) && opts.mentions.length) extra.mentions = opts.mentions.slice(0, proto.MAX_MENTIONS);
    const o = this.outbox.add(room, body, extra);
    this.flush();
    return o;
  }

  /** Edits the user's message `messageId` (through the outbox, like a send). */
  edit(room, messageId, body) { return this.#op(room, body, { kind: 'edit', message_id: messageId }); }

  /** Deletes the user's message `messageId`. */
  remove(room, messageId) { return this.#op(room, undefined, { kind: 'delete', message_id: messageId }); }

  /** Adds (`on`) or takes back the user's reaction `emoji` to `messageId`. */
  react(room, messageId, emoji, on) { return this.#op(room, undefined, { kind: 'react', message_id: messageId, emoji, on: !!on }); }

  #op(room, body, extra) {
    const o = this.outbox.add(room, body, extra);
    this.flush();
    this.#emit('outbox', {});
    return o;
  }

  /** Sends every due outbox entry (only after `welcome`: the server must know who we are). */
  flush() {
    if (!this.conn.welcomed) return;
    for (const o of this.outbox.due()) if (this.conn.send(proto.frameOf(o))) this.outbox.sent(o);
  }

  /** Once a second: resend what timed out or waited for its retry. */
  tick() { if (this.outbox.expire()) this.flush(); }

  retry(o) { this.outbox.retry(o); this.flush(); }

  discard(o) { this.outbox.discard(o); }

  /** The sends of `room` not yet seen as messages, in the order written. */
  pending(room) { return this.#pendingIn(room).filter((o) => !o.kind); }

  /** The edits, deletes and reactions of `room` not yet seen as events, in the order written. */
  pendingOps(room) { return this.#pendingIn(room).filter((o) => !!o.kind); }

  #pendingIn(room) {
    const t = this.timelines.get(room);
    return this.outbox.pendingIn(room, t && this.user ? t.clientIdsOf(this.user.id) : new Set());
  }

  /** Marks `room` read up to its newest message held (a `read` frame if it moved). */
  markRead(room) {
    const r = this.rooms.get(room);
    if (!r || !r.member) return;
    const p = this.timelines.get(room)?.newest();
    const pos = this.reads.read(room, p ?? null);
    if (pos === null || !this.conn.welcomed || !this.subscribed.has(room)) return;
    if (this.conn.send(proto.read(room, pos))) this.reads.sent(room, pos);
  }

  unread(room, current) {
    return this.reads.unread(room, this.timelines.get(room.id), this.user ? this.user.id : null, current);
  }

  /** Unread messages of `room` that mention the user. */
  unreadMentions(room, current) {
    return this.reads.unreadMentions(room, this.timelines.get(room.id), this.user ? this.user.id : null, current);
  }

  /** A `typing` frame for `room` (when subscribed); true if it went out. */
  typing(room) { return this.subscribed.has(room) && this.conn.send(proto.typing(room)); }

  reconnectNow() { this.conn.reconnectNow(); }

  #frame(f, again) {
    const member = (room) => !!this.rooms.get(room)?.member;
    switch (f.type) {
      case 'welcome':
        if (f.user && this.user && f.user.id === this.user.id) this.user = f.user;
        this.syncSubscriptions();
        this.flush();
        this.#emit('welcome', { again, user: this.user });
        break;
      case 'subscribed':
        this.subQueue = this.subQueue.filter((x) => x !== f.room);
        if (this.subscribed.has(f.room)) this.cursors.advance(f.room, f.position);
        this.#emit('subscribed', { room: f.room });
        break;
      case 'unsubscribed':
        // The server ended the subscription: the membership ended (on this or another
        // device); `resync`: the server lost its bus link, and a `reconnect` came first.
        this.subscribed.delete(f.room);
        this.subQueue = this.subQueue.filter((x) => x !== f.room);
        if (f.reason !== 'resync') this.forget(f.room);
        this.#emit('unsubscribed', { room: f.room, reason: f.reason });
        break;
      case 'message': {
        const m = f.message;
        if (!proto.isMessage(m) || !member(m.room)) break;
        const fresh = this.#add(m, this.subscribed.has(m.room) ? 'stream' : 'other');
        this.#emit('message', { message: m, fresh });
        break;
      }
      case 'event': {
        const e = f.event;
        if (isGovEvent(e) && member(e.room)) {
          // Membership and settings changes: a system line; they move the cursor like messages.
          const fresh = this.timeline(e.room).addNotice(e);
          if (this.subscribed.has(e.room)) this.cursors.advance(e.room, e.position);
          this.#emit('notice', { event: e, fresh });
          break;
        }
        if (!proto.isEvent(e) || !member(e.room)) break;
        const changed = this.#applyEvent(e, this.subscribed.has(e.room) ? 'stream' : 'other');
        this.#emit('event', { event: e, changed });
        break;
      }
      case 'ack': {
        if (this.outbox.settle(f.client_msg_id)) this.#emit('outbox', {});
        const m = proto.isMessage(f.message) ? f.message : null;
        if (m && member(m.room)) this.#add(m, 'ack');
        const e = proto.isEvent(f.event) ? f.event : null;
        if (e && member(e.room)) this.#applyEvent(e, 'ack');
        this.#emit('ack', { room: m ? m.room : e ? e.room : null, event: e });
        break;
      }
      case 'rooms_changed': this.#emit('rooms-stale', { reason: f.reason, room: f.room }); break;
      case 'read':
        if (typeof f.room === 'string' && Number.isSafeInteger(f.position) && member(f.room)) {
          this.reads.remote(f.room, f.position);
          this.#emit('read', { room: f.room, position: f.position });
        }
        break;
      case 'error': this.#error(f); break;
      case 'typing': case 'presence': case 'member': this.#emit(f.type, f); break;
      case 'invite': if (f.invite && typeof f.invite === 'object') this.#emit('invite', { invite: f.invite }); break;
      default: break;
    }
  }

  #error(f) {
    const o = typeof f.ref === 'string' ? this.outbox.find(f.ref) : null;
    const refused = this.outbox.refused(f);
    if (refused) {
      this.#emit('outbox', {});
      if (refused === 'failed' && o) this.#emit('refused', { room: o.room, code: f.code });
      return;
    }
    if (f.ref === 'subscribe') {
      const id = this.subQueue.shift();
      if (!id) return;
      this.subscribed.delete(id);
      if (f.code === 'backlog_too_large') {
        // Too far behind to replay: start over live, with the newest history.
        this.timelines.delete(id); this.cursors.forget(id);
        if (this.conn.send(proto.subscribe(id, null))) { this.subscribed.add(id); this.subQueue.push(id); }
        this.#emit('reset', { room: id });
      } else if (f.retryable === true) {
        this.d.timers.setTimeout(() => this.syncSubscriptions(), RESUBSCRIBE_MS);
      } else if (f.code === 'not_member' || f.code === 'room_not_found') {
        this.#emit('rooms-stale', { reason: f.code });
      }
      return;
    }
    if (f.ref === 'read' || f.ref === 'typing') return;
    this.#emit('error', f);
  }
}
