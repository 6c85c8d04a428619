// The outbox: the user's sends (and edits, deletes and reactions: `kind`) until the server has them. Kept in storage (per user), so
// they survive a reload. Each keeps its client_msg_id for good: a resend after a reconnect,
// a reload, a timeout or a retryable refusal carries the same id, and the server answers it
// with the one message it made (docs/protocol.md, `send`). An entry leaves the outbox when
// its `ack` or its own `message` (or `event`) comes (whichever is first), or when the user
// discards it. An edit, delete or reaction is kept and resent exactly like a send
// (docs/protocol.md: the client_msg_id namespace is shared with sends).

/** An unanswered send is sent again (same client_msg_id) after this long. */
export const ACK_TIMEOUT_MS = 8000;

/** Wait before resending after a retryable refusal (`retryable: true`), by tries so far. */
export const retryDelay = (tries) => Math.min(10000, 500 * 2 ** Math.min(5, tries || 1));

const KEY = 'chat.outbox.';
const KINDS = new Set(['send', 'edit', 'delete', 'react']);
const str = (x) => typeof x === 'string' && x.length > 0;
const valid = (o) => {
  if (!o || typeof o !== 'object' || !str(o.client_msg_id) || !str(o.room)) return false;
  const kind = o.kind ?? 'send';
  if (!KINDS.has(kind)) return false;
  if ((kind === 'send' || kind === 'edit') && typeof o.body !== 'string') return false;
  if (kind !== 'send' && !str(o.message_id)) return false;
  if (kind === 'react' && (!str(o.emoji) || typeof o.on !== 'boolean')) return false;
  return true;
};
/** What is kept of an entry (storage): the frame's fields and the state the user sees. */
const FIELDS = ['client_msg_id', 'room', 'body', 'sent_at', 'failed', 'error', 'kind', 'message_id', 'emoji', 'on', 'reply_to', 'mentions'];

export class Outbox {
  /**
   * `storage`: getItem/setItem/removeItem (localStorage in the page); `now`: ms clock;
   * `uuid`: a new client_msg_id.
   */
  constructor({ storage, now, uuid }) {
    this.storage = storage; this.now = now; this.uuid = uuid;
    /** `{client_msg_id, room, body, sent_at, failed, error}` plus, in memory only,
     * `inflight`, `sentAt`, `tries`, `retryAt`. */
    this.entries = [];
    this.key = null;
  }

  #read(key) {
    try { return JSON.parse(this.storage.getItem(key)); } catch { return null; }
  }

  /** Loads `userId`'s outbox: every entry is due again (a new page, a new connection). */
  load(userId) {
    this.key = KEY + userId;
    const list = this.#read(this.key);
    this.entries = Array.isArray(list) ? list.filter(valid) : [];
    // An earlier version of this client kept one outbox for everyone, and the positions.
    const legacy = this.#read('chat.outbox');
    if (Array.isArray(legacy)) {
      for (const o of legacy) {
        if (valid(o) && (!o.sender || o.sender.id === userId)) {
          this.entries.push({ client_msg_id: o.client_msg_id, room: o.room, body: o.body, sent_at: o.sent_at || new Date(this.now()).toISOString(), failed: false });
        }
      }
    }
    this.storage.removeItem('chat.outbox'); this.storage.removeItem('chat.last');
    for (const o of this.entries) { o.inflight = false; o.tries = 0; o.retryAt = 0; }
    this.save();
  }

  save() {
    if (!this.key) return;
    const keep = this.entries.map((o) => {
      const k = {};
      for (const f of FIELDS) if (o[f] !== undefined) k[f] = o[f];
      return k;
    });
    try { this.storage.setItem(this.key, JSON.stringify(keep)); } catch (e) { console.warn('outbox not saved', e); }
  }

  /**
   * A new send (not sent yet). `extra`: `{reply_to, mentions}` for a send, or
   * `{kind: 'edit'|'delete'|'react', message_id, emoji, on}` for an event. A newer edit or
   * reaction of the same message (and emoji) replaces one not sent yet; a reaction that
   * undoes one not sent yet cancels both (then null is returned).
   */
  add(room, body, extra = {}) {
    const o = Object.assign({ client_msg_id: this.uuid(), room, body, sent_at: new Date(this.now()).toISOString(), failed: false, inflight: false, tries: 0, retryAt: 0 }, extra);
    if (o.kind === 'send') delete o.kind;
    if (o.kind && o.kind !== 'delete' && o.kind !== 'send') {
      const same = (x) => x.kind === o.kind && x.room === room && x.message_id === o.message_id && (o.kind !== 'react' || x.emoji === o.emoji);
      const i = this.entries.findIndex((x) => same(x) && !x.inflight && (x.tries || 0) === 0);
      if (i >= 0) {
        const old = this.entries[i];
        this.entries.splice(i, 1);
        if (o.kind === 'react' && old.on !== o.on) { this.save(); return null; }
      }
    }
    this.entries.push(o);
    this.save();
    return o;
  }

  find(clientMsgId) { return this.entries.find((o) => o.client_msg_id === clientMsgId) || null; }

  /** The entries to send now: not failed, not waiting for an answer or for a retry. */
  due() {
    const now = this.now();
    return this.entries.filter((o) => !o.failed && !o.inflight && !(o.retryAt > now));
  }

  /** `o` went out on the socket. */
  sent(o) { o.inflight = true; o.sentAt = this.now(); o.tries = (o.tries || 0) + 1; }

  /** The server has the message (its `ack`, or its `message`): the entry leaves. */
  settle(clientMsgId) {
    const i = this.entries.findIndex((o) => o.client_msg_id === clientMsgId);
    if (i < 0) return false;
    this.entries.splice(i, 1);
    this.save();
    return true;
  }

  /**
   * An `error` frame: when its `ref` is one of ours, the send was refused. Retryable
   * (`rate_limited`, `in_flight`, `unavailable`, `draining`, `internal`): sent again, same
   * id, after retryDelay. Not retryable: marked failed with the server's message until the
   * user retries or discards it. Returns 'retry', 'failed', or null (not an outbox entry).
   */
  refused(f) {
    const o = f && typeof f.ref === 'string' ? this.find(f.ref) : null;
    if (!o) return null;
    o.inflight = false;
    if (f.retryable === true) {
      o.retryAt = this.now() + retryDelay(o.tries);
      return 'retry';
    }
    o.failed = true; o.error = f.message || f.code || 'refused';
    this.save();
    return 'failed';
  }

  /** The connection went away: nothing is in flight any more (all due on the next one). */
  disconnected() { for (const o of this.entries) o.inflight = false; }

  /** Once a second: true when an entry became due (unanswered for ACK_TIMEOUT_MS, or its retry time came). */
  expire() {
    const now = this.now();
    let again = false;
    for (const o of this.entries) {
      if (o.inflight && now - o.sentAt > ACK_TIMEOUT_MS) { o.inflight = false; again = true; }
      if (o.retryAt && o.retryAt <= now) { o.retryAt = 0; again = true; }
    }
    return again;
  }

  /** The user asks to send a failed entry again (same client_msg_id). */
  retry(o) { o.failed = false; o.error = null; o.retryAt = 0; this.save(); }

  /** The user gives up on an entry. */
  discard(o) { this.settle(o.client_msg_id); }

  /** The entries of `room` still pending, given the client_msg_ids the room holds as
   * messages of the user (those are settled here). */
  pendingIn(room, held) {
    const gone = this.entries.filter((o) => o.room === room && held.has(o.client_msg_id));
    for (const o of gone) this.settle(o.client_msg_id);
    return this.entries.filter((o) => o.room === room);
  }
}
