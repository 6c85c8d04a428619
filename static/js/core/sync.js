// The client half of the delivery guarantees (docs/protocol.md), DOM-free:
// - every room the user is a member of is subscribed on the WebSocket, with `since` = the
//   room's cursor (cursor.js), so a reconnect replays exactly what was missed;
// - messages are kept per room once each, in position order (timeline.js);
// - sends go through the outbox (outbox.js): resent with the same client_msg_id after a
//   reconnect, a reload, a timeout or a retryable refusal; dropped on their ack or message;
// - unread counts and `read` frames (unread.js);
// - the socket's life (connection.js): backoff, the `reconnect` frame, keepalive.
// The view hears what changed through `on(event, detail)`:
//   'conn' {state, detail} · 'closed' {code} · 'welcome' {again, user} ·
//   'message' {message, fresh} · 'ack' {room} · 'outbox' {} · 'subscribed' {room} ·
//   'unsubscribed' {room, reason} · 'reset' {room} (history must be reloaded) ·
//   'rooms-stale' {} (the room list is out of date) · 'typing' | 'presence' | 'member' (the
//   frame) · 'error' (an error frame for nothing of ours).
import { Connection } from './connection.js';
import { Cursors } from './cursor.js';
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
    if (!t) { t = new Timeline(); this.timelines.set(room, t); }
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
  }

  /** A history page (`{messages, has_more}`, ascending): older pages, or the newest one. */
  addHistory(room, page) {
    const t = this.timeline(room);
    for (const m of page.messages || []) if (proto.isMessage(m) && m.room === room) this.#add(m, 'history');
    t.hasMore = !!page.has_more;
    t.loaded = true;
  }

  /**
   * Adds a message; `source`: 'stream' (the room's subscription), 'history', 'ack' or
   * 'other'. The user's own message settles its outbox entry. Returns whether it is new.
   */
  #add(m, source) {
    const fresh = this.timeline(m.room).add(m);
    if (this.user && m.sender.id === this.user.id && this.outbox.settle(m.client_msg_id)) this.#emit('outbox', {});
    if (source === 'stream' || source === 'history') this.cursors.advance(m.room, m.position);
    return fresh;
  }

  /** A new send from the composer: into the outbox, out on the socket if it is up. */
  submit(room, body) {
    const o = this.outbox.add(room, body);
    this.flush();
    return o;
  }

  /** Sends every due outbox entry (only after `welcome`: the server must know who we are). */
  flush() {
    if (!this.conn.welcomed) return;
    for (const o of this.outbox.due()) if (this.conn.send(proto.send(o))) this.outbox.sent(o);
  }

  /** Once a second: resend what timed out or waited for its retry. */
  tick() { if (this.outbox.expire()) this.flush(); }

  retry(o) { this.outbox.retry(o); this.flush(); }

  discard(o) { this.outbox.discard(o); }

  /** The outbox entries of `room` not yet seen as messages, in the order written. */
  pending(room) {
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
      case 'ack': {
        if (this.outbox.settle(f.client_msg_id)) this.#emit('outbox', {});
        const m = proto.isMessage(f.message) ? f.message : null;
        if (m && member(m.room)) this.#add(m, 'ack');
        this.#emit('ack', { room: m ? m.room : null });
        break;
      }
      case 'error': this.#error(f); break;
      case 'typing': case 'presence': case 'member': this.#emit(f.type, f); break;
      default: break;
    }
  }

  #error(f) {
    if (this.outbox.refused(f)) { this.#emit('outbox', {}); return; }
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
        this.#emit('rooms-stale', {});
      }
      return;
    }
    if (f.ref === 'read' || f.ref === 'typing') return;
    this.#emit('error', f);
  }
}
