// The wire protocol (docs/protocol.md): the frames the client sends, and decoding what it
// receives. DOM-free: runs in the page and under Node (tests/client-unit).

/** A frame as the text the WebSocket carries. */
export const encode = (frame) => JSON.stringify(frame);

/** A received text frame: an object with a string `type`, or null (not JSON, not a frame). */
export function decode(text) {
  if (typeof text !== 'string') return null;
  let f;
  try { f = JSON.parse(text); } catch { return null; }
  return f !== null && typeof f === 'object' && !Array.isArray(f) && typeof f.type === 'string' ? f : null;
}

/** Whether `m` is a message object with the fields the client relies on. */
export function isMessage(m) {
  return m !== null && typeof m === 'object'
    && typeof m.id === 'string' && typeof m.room === 'string'
    && Number.isSafeInteger(m.position) && typeof m.body === 'string'
    && m.sender !== null && typeof m.sender === 'object' && typeof m.sender.id === 'string';
}

// Client → server.
export const hello = (token) => ({ type: 'hello', token });
/** `since`: the newest position held (the server replays what follows), or null (live only). */
export const subscribe = (room, since) => ({ type: 'subscribe', room, since });
export const unsubscribe = (room) => ({ type: 'unsubscribe', room });
export const send = ({ room, client_msg_id, body }) => ({ type: 'send', room, client_msg_id, body });
export const read = (room, position) => ({ type: 'read', room, position });
export const typing = (room) => ({ type: 'typing', room });
export const ping = () => ({ type: 'ping' });

/** The longest body the server takes, in characters (code points). */
export const MAX_BODY_CHARS = 4000;
export const bodyTooLong = (body) => [...body].length > MAX_BODY_CHARS;
