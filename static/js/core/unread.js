// What this page has read, and the unread count of a room.

export class Reads {
  #local = new Map(); // room -> newest position read on this page
  #sent = new Map(); // room -> position last sent in a `read` frame

  /**
   * Marks `room` read up to `position` on this page. Returns the position a `read` frame
   * should carry, or null when the server has been told as much already.
   */
  read(room, position) {
    if (!Number.isSafeInteger(position)) return null;
    if ((this.#local.get(room) ?? -Infinity) < position) this.#local.set(room, position);
    return (this.#sent.get(room) ?? -Infinity) < position ? position : null;
  }

  /** A `read` frame carrying `position` went out. */
  sent(room, position) { this.#sent.set(room, position); }

  forget(room) { this.#local.delete(room); this.#sent.delete(room); }

  /**
   * Unread count of `room` (`{id, member, unread, last_position}` from the room list): the
   * server's count at the last list plus the messages from others held beyond it, or those
   * held beyond what this page has read when it has read that far. The open room (`current`)
   * and rooms one is not a member of count 0.
   */
  unread(room, timeline, me, current) {
    if (!room.member || room.id === current) return 0;
    const listed = room.last_position ?? -1;
    const after = (p) => (timeline ? timeline.countAfter(p, me) : 0);
    const read = this.#local.get(room.id);
    if (read != null && read >= listed) return after(read);
    return (room.unread || 0) + after(listed);
  }
}
