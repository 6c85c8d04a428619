// Per room, the cursor: the newest position of the room's stream this page holds. A
// (re)subscribe sends it as `since`, so the server replays exactly what was missed and a
// reconnect neither skips nor repeats a message (docs/protocol.md, `subscribe`). Memory only.
//
// It moves only along what is contiguous with what is held:
// - messages of the room's subscription on the current connection (the server replays
//   everything after `since` in order, then live ones, skipping none);
// - `subscribed.position` (the newest position replayed);
// - history pages (each contiguous up to its newest; older ones are reached by paging).
// Never with an `ack` (the acked message can be ahead of the stream: others' messages
// before it may not have arrived yet, and a resubscribe from past them would skip them),
// nor with a message of a room not subscribed on this connection. It never moves back.

export class Cursors {
  #at = new Map();

  /** The cursor of `room`, or null when there is none yet. */
  get(room) { return this.#at.get(room) ?? null; }

  has(room) { return this.#at.has(room); }

  /**
   * `since` for a subscribe of `room`: its cursor; the first time, the room list's
   * `last_position` (older messages come from history), or -1 for a room that has none
   * (replay from its first message). The first value is kept as the cursor.
   */
  since(room, lastPosition) {
    if (!this.#at.has(room)) this.#at.set(room, Number.isSafeInteger(lastPosition) ? lastPosition : -1);
    return this.#at.get(room);
  }

  /** Moves the cursor forward to `position` (a contiguous source, see above); true if it moved. */
  advance(room, position) {
    if (!Number.isSafeInteger(position)) return false;
    const c = this.#at.get(room);
    if (c != null && position <= c) return false;
    this.#at.set(room, position);
    return true;
  }

  forget(room) { this.#at.delete(room); }
}
