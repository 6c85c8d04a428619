// One room's messages as the page holds them: each once (keyed by id, whichever of the
// stream, an ack or a history page brought it first), in position order whatever order
// they arrived in.

export class Timeline {
  #byId = new Map();
  #sorted = []; // ascending position (then id)
  /** The newest history page is in. */
  loaded = false;
  /** Older history exists on the server (from the last page's `has_more`). */
  hasMore = false;

  /** Adds a message; true if it is new, false for a duplicate (same id: kept once). */
  add(m) {
    if (this.#byId.has(m.id)) return false;
    this.#byId.set(m.id, m);
    // Binary search: live messages usually go last, history pages first.
    let lo = 0; let hi = this.#sorted.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const x = this.#sorted[mid];
      if (x.position < m.position || (x.position === m.position && x.id < m.id)) lo = mid + 1; else hi = mid;
    }
    this.#sorted.splice(lo, 0, m);
    return true;
  }

  has(id) { return this.#byId.has(id); }

  get size() { return this.#sorted.length; }

  /** The messages in position order (read only). */
  list() { return this.#sorted; }

  /** Position of the oldest message held, or null. */
  oldest() { return this.#sorted.length ? this.#sorted[0].position : null; }

  /** Position of the newest message held, or null. */
  newest() { return this.#sorted.length ? this.#sorted[this.#sorted.length - 1].position : null; }

  /** How many messages after `position` were sent by someone other than `me`. */
  countAfter(position, me) {
    let n = 0;
    for (let i = this.#sorted.length - 1; i >= 0 && this.#sorted[i].position > position; i--) {
      if (this.#sorted[i].sender.id !== me) n++;
    }
    return n;
  }

  /** The client_msg_ids of the messages `userId` sent. */
  clientIdsOf(userId) {
    const ids = new Set();
    for (const m of this.#sorted) if (m.sender.id === userId) ids.add(m.client_msg_id);
    return ids;
  }
}
