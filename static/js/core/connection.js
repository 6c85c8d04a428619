// The WebSocket's life: hello on open, reconnect with backoff when it closes, at once (and
// again from a fresh socket) on a `reconnect` frame, keepalive pings, and a socket silent for
// too long replaced. DOM-free: the socket factory, the timers, the clock and the random
// source are given, so it runs under Node with fakes (tests/client-unit).
import { decode, encode, hello, ping } from './protocol.js';

const OPEN = 1; // WebSocket.OPEN

/** Our ping goes out this often on an open connection (the server closes after 60 s of silence). */
export const KEEPALIVE_MS = 20000;
/** A connection from which nothing came for this long is given up and replaced. */
export const SILENT_MS = 50000;

/**
 * Wait before reconnect attempt `attempt` (0, 1, …): 0.5 s, 1 s, 2 s … 15 s, each times
 * 0.5–1.0 (jitter, so a drained gateway's clients do not all come back at once); `fast`
 * (after a `reconnect` frame): 150–300 ms.
 */
export function backoff(attempt, random, fast) {
  const base = fast ? 300 : Math.min(15000, 500 * 2 ** attempt);
  return Math.round(base * (0.5 + random() * 0.5));
}

export class Connection {
  /**
   * - `url()`: the WebSocket URL; `token()`: the bearer token for `hello`;
   * - `openSocket(url)`: a new WebSocket-like object (`readyState`, `send`, `close`,
   *   `onopen`, `onmessage`, `onclose`);
   * - `timers`: `{setTimeout, clearTimeout, setInterval, clearInterval}`; `now()`; `random()`;
   * - `onFrame(frame, again)`: every decoded frame but `pong` and `reconnect` (for
   *   `welcome`, `again` tells whether this page was online before);
   * - `onDown()`: the connection in use is gone (or replaced): nothing sent on it is
   *   answered any more, nothing is subscribed;
   * - `onState(state, detail)`: 'connecting' | 'online' | 'reconnecting', with a line to show;
   * - `onClosed(code)`: the server closed it (code 4401: the token was refused).
   */
  constructor(deps) {
    this.d = deps;
    this.ws = null;
    this.welcomed = false;
    this.everOnline = false;
    this.attempt = 0;
    this.timer = null;
    this.keepalive = null;
    this.reconnectAt = 0;
    this.lastFrameAt = 0;
    this.stopped = false;
  }

  /** Open (or reopen) now. */
  connect() {
    const { timers } = this.d;
    if (this.stopped) return;
    timers.clearTimeout(this.timer); this.timer = null;
    this.#drop();
    this.d.onState(this.everOnline ? 'reconnecting' : 'connecting');
    if (!this.keepalive) this.keepalive = timers.setInterval(() => this.#keepalive(), KEEPALIVE_MS);
    const ws = this.d.openSocket(this.d.url());
    this.ws = ws; this.welcomed = false;
    this.d.onDown();
    ws.onopen = () => {
      if (this.ws !== ws) return;
      this.lastFrameAt = this.d.now();
      ws.send(encode(hello(this.d.token())));
    };
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      this.lastFrameAt = this.d.now();
      const f = decode(ev.data);
      if (f) this.#frame(f);
    };
    ws.onclose = (ev) => this.#closed(ws, ev && ev.code);
  }

  /** Reconnect at once, backoff reset (the user asked; the network came back). */
  reconnectNow() { this.attempt = 0; this.connect(); }

  /** Whether a socket is open or being opened. */
  get active() { return this.ws !== null; }

  /** Sends a frame on the open socket; false when there is none. */
  send(frame) {
    if (!this.ws || this.ws.readyState !== OPEN) return false;
    this.ws.send(encode(frame));
    return true;
  }

  /** For good (logout): no reconnect, no timers. */
  stop() {
    this.stopped = true;
    this.d.timers.clearTimeout(this.timer); this.timer = null;
    this.d.timers.clearInterval(this.keepalive); this.keepalive = null;
    this.#drop();
  }

  #frame(f) {
    if (f.type === 'pong') return;
    if (f.type === 'reconnect') {
      // The server drains: go (to any gateway) soon, resubscribing with `since`.
      this.#drop();
      this.d.onDown();
      this.attempt = 0;
      this.#schedule(true);
      return;
    }
    if (f.type === 'welcome') {
      const again = this.everOnline;
      this.welcomed = true; this.attempt = 0; this.everOnline = true;
      this.d.onState('online');
      this.d.onFrame(f, again);
      return;
    }
    this.d.onFrame(f, false);
  }

  /** Forgets the current socket (its events are ignored from now on) and closes it. */
  #drop() {
    const ws = this.ws;
    this.ws = null; this.welcomed = false;
    if (!ws) return;
    ws.onclose = null; ws.onmessage = null; ws.onopen = null;
    try { ws.close(); } catch { /* gone already */ }
  }

  #closed(ws, code) {
    if (this.ws !== ws) return;
    this.ws = null; this.welcomed = false;
    this.d.onDown();
    this.d.onClosed(code);
    this.#schedule(false);
  }

  #schedule(fast) {
    if (this.stopped) return;
    const wait = backoff(this.attempt, this.d.random, fast);
    this.attempt++;
    this.reconnectAt = this.d.now() + wait;
    this.d.onState(this.everOnline ? 'reconnecting' : 'connecting',
      this.everOnline ? `Connection lost. Reconnecting in ${Math.ceil(wait / 1000)} s…` : undefined);
    this.d.timers.clearTimeout(this.timer);
    this.timer = this.d.timers.setTimeout(() => this.connect(), wait);
  }

  // Our ping is answered with pong; a connection silent for too long is replaced.
  #keepalive() {
    const ws = this.ws;
    if (!ws || ws.readyState !== OPEN) return;
    if (this.d.now() - this.lastFrameAt > SILENT_MS) {
      ws.onclose = null;
      try { ws.close(); } catch { /* gone already */ }
      this.#closed(ws, 1006);
      return;
    }
    this.send(ping());
  }
}
