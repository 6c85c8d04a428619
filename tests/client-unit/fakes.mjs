// Fakes for the DOM-free client core: a clock with timers, a WebSocket, localStorage.
import { Sync } from '../../static/js/core/sync.js';

/** A manual clock: timers fire only in `advance(ms)`, in time order. */
export class Clock {
  t = 1_700_000_000_000;
  timers = [];
  seq = 0;
  now = () => this.t;
  setTimeout = (f, ms) => this.#add(f, ms, 0);
  setInterval = (f, ms) => this.#add(f, ms, ms);
  clearTimeout = (id) => { this.timers = this.timers.filter((x) => x.id !== id); };
  clearInterval = (id) => this.clearTimeout(id);
  #add(f, ms, every) {
    const id = ++this.seq;
    this.timers.push({ id, at: this.t + Math.max(0, ms || 0), f, every });
    return id;
  }
  advance(ms) {
    const end = this.t + ms;
    for (let guard = 0; guard < 100_000; guard++) {
      const due = this.timers.filter((x) => x.at <= end).sort((a, b) => a.at - b.at || a.id - b.id)[0];
      if (!due) break;
      this.t = due.at;
      if (due.every) due.at += due.every; else this.timers = this.timers.filter((x) => x !== due);
      due.f();
    }
    this.t = end;
  }
}

/** A WebSocket as the core sees it; the test plays the server. */
export class FakeSocket {
  readyState = 0;
  sent = [];
  closed = false;
  onopen = null; onmessage = null; onclose = null;
  constructor(url) { this.url = url; }
  send(text) {
    if (this.readyState !== 1) throw new Error('send on a socket that is not open');
    this.sent.push(JSON.parse(text));
  }
  close() { this.closed = true; this.readyState = 3; }
  // The server's side.
  open() { this.readyState = 1; this.onopen?.(); }
  deliver(frame) { this.onmessage?.({ data: typeof frame === 'string' ? frame : JSON.stringify(frame) }); }
  drop(code = 1006) { this.readyState = 3; this.onclose?.({ code }); }
  frames(type) { return this.sent.filter((f) => f.type === type); }
}

export class MemoryStorage {
  map = new Map();
  getItem(k) { return this.map.has(k) ? this.map.get(k) : null; }
  setItem(k, v) { this.map.set(k, String(v)); }
  removeItem(k) { this.map.delete(k); }
}

export const ME = { id: 'u-me', name: 'me' };
export const OTHER = { id: 'u-other', name: 'other' };

/** A message object as the server sends it. */
export function msg(room, position, { id = `m-${room}-${position}`, sender = OTHER, body = `body ${position}`, cmid = `c-${room}-${position}` } = {}) {
  return { id, room, sender, body, client_msg_id: cmid, position, sent_at: '2026-01-01T00:00:00Z' };
}

/**
 * A Sync over fakes. `rooms`: room list entries (member by default). `h.ws`: the newest
 * socket; `h.online()`: opens it and answers `hello` with `welcome`.
 */
export function harness({ rooms = [], storage = new MemoryStorage(), user = ME, random = () => 0.5 } = {}) {
  const clock = new Clock();
  const sockets = [];
  const events = [];
  const roomMap = new Map(rooms.map((r) => [r.id, { kind: 'room', name: r.id, member: true, unread: 0, last_position: null, ...r }]));
  let n = 0;
  const sync = new Sync({
    rooms: roomMap, storage, uuid: () => `cmid-${++n}`,
    url: () => 'ws://chat.test/ws', token: () => 'the-token',
    openSocket: (url) => { const s = new FakeSocket(url); sockets.push(s); return s; },
    timers: clock, now: clock.now, random,
    on: (event, detail) => events.push([event, detail]),
  });
  const h = {
    sync, clock, sockets, events, storage, rooms: roomMap, user,
    get ws() { return sockets[sockets.length - 1]; },
    /** Opens the newest socket; the server welcomes it. */
    online() { h.ws.open(); h.ws.deliver({ type: 'welcome', user, session: 'sess' }); return h.ws; },
    /** Starts with the room list loaded and gets online. */
    start() { sync.roomsLoaded = true; sync.start(user); return h.online(); },
    /** The server drops the connection; time passes until the next socket, which gets online. */
    reconnect(code = 1006) {
      const before = sockets.length;
      h.ws.drop(code);
      for (let i = 0; i < 100 && sockets.length === before; i++) clock.advance(100);
      if (sockets.length === before) throw new Error('no reconnect');
      return h.online();
    },
    /** The `since` of the newest subscribe of `room` on the newest socket. */
    since(room) { const s = h.ws.frames('subscribe').filter((f) => f.room === room); return s.length ? s[s.length - 1].since : undefined; },
    eventsOf(name) { return events.filter(([e]) => e === name).map(([, d]) => d); },
  };
  return h;
}

/** A room event as the server sends it (v1.1): `kind` edit | delete | reaction. */
export function ev(room, position, kind, messageId, { id = `e-${room}-${position}`, actor = OTHER, body, emoji, on, cmid = `ce-${room}-${position}`, sent_at } = {}) {
  const e = { id, room, kind, position, sent_at: sent_at || `2026-01-01T00:00:${String(position % 60).padStart(2, '0')}Z`, actor, client_msg_id: cmid, message_id: messageId };
  if (kind === 'edit') e.body = body ?? `edited ${position}`;
  if (kind === 'reaction') { e.emoji = emoji ?? '👍'; e.on = on ?? true; }
  return e;
}
