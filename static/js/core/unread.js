// What this page has read (here, or on another device of the user: the server's `read`
// frames), and the unread counts of a room. Only messages count: edits, reactions and
// deletes never do, and a deleted message stops counting (timeline.countAfter).

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

  /**
   * The server says this user read `room` up to `position` (on another device): counts
   * from there, and no `read` frame for as much is sent from here.
   */
  remote(room, position) {
    if (!Number.isSafeInteger(position)) return;
    if ((this.#local.get(room) ?? -Infinity) < position) this.#local.set(room, position);
    if ((this.#sent.get(room) ?? -Infinity) < position) this.#sent.set(room, position);
  }

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

  /** Unread messages of `room` that mention `me`: like `unread`, from the list's `unread_mentions`. */
  unreadMentions(room, timeline, me, current) {
    if (!room.member || room.id === current) return 0;
    const listed = room.last_position ?? -1;
    const after = (p) => (timeline ? timeline.mentionsAfter(p, me) : 0);
    const read = this.#local.get(room.id);
    if (read != null && read >= listed) return after(read);
    return (room.unread_mentions || 0) + after(listed);
  }
}
