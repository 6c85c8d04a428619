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

const EVENT_KINDS = new Set(['edit', 'delete', 'reaction']);
/**
 * Whether `e` is a room event the client applies (v1.1: `edit`, `delete`, `reaction`) with
 * the fields it relies on. Other kinds (`member`, `room`, …) are not applied to messages.
 */
export function isEvent(e) {
  if (e === null || typeof e !== 'object' || typeof e.id !== 'string' || typeof e.room !== 'string'
    || !EVENT_KINDS.has(e.kind) || !Number.isSafeInteger(e.position) || typeof e.message_id !== 'string'
    || e.actor === null || typeof e.actor !== 'object' || typeof e.actor.id !== 'string') return false;
  if (e.kind === 'edit') return typeof e.body === 'string';
  if (e.kind === 'reaction') return typeof e.emoji === 'string' && typeof e.on === 'boolean';
  return true;
}

// Client → server.
export const hello = (token) => ({ type: 'hello', token });
/** `since`: the newest position held (the server replays what follows), or null (live only). */
export const subscribe = (room, since) => ({ type: 'subscribe', room, since });
export const unsubscribe = (room) => ({ type: 'unsubscribe', room });
/** `reply_to` (a message id of the room) and `mentions` (user ids) only when given. */
export function send({ room, client_msg_id, body, reply_to, mentions }) {
  const f = { type: 'send', room, client_msg_id, body };
  if (typeof reply_to === 'string' && reply_to) f.reply_to = reply_to;
  if (Array.isArray(mentions) && mentions.length) f.mentions = mentions.slice(0, MAX_MENTIONS);
  return f;
}
export const edit = ({ room, message_id, client_msg_id, body }) => ({ type: 'edit', room, message_id, client_msg_id, body });
export const del = ({ room, message_id, client_msg_id }) => ({ type: 'delete', room, message_id, client_msg_id });
export const react = ({ room, message_id, client_msg_id, emoji, on }) => ({ type: 'react', room, message_id, client_msg_id, emoji, on: !!on });
/** The frame of an outbox entry (`kind`: 'send' by default, 'edit', 'delete', 'react'). */
export function frameOf(o) {
  switch (o.kind) {
    case 'edit': return edit(o);
    case 'delete': return del(o);
    case 'react': return react(o);
    default: return send(o);
  }
}
export const read = (room, position) => ({ type: 'read', room, position });
export const typing = (room) => ({ type: 'typing', room });
export const ping = () => ({ type: 'ping' });

/** The longest body the server takes, in characters (code points). */
export const MAX_BODY_CHARS = 4000;
export const bodyTooLong = (body) => [...body].length > MAX_BODY_CHARS;

/** At most this many explicit mentions go with a send (the server keeps 20). */
export const MAX_MENTIONS = 20;

/** An emoji (any short token) as the server takes it: 1-32 bytes of UTF-8, no whitespace or control characters. */
export function validEmoji(e) {
  if (typeof e !== 'string' || !e) return false;
  if (new TextEncoder().encode(e).length > 32) return false;
  return !/[\s\p{Cc}\p{Cf}]/u.test(e.replace(/\u200d|\ufe0f/g, ''));
}

// ------------------------------------------------------------------ reading a body
// A small markdown subset, parsed to a token tree the view turns into elements with
// createElement/textContent only (never HTML). Pure functions, linear in the input (each
// marker searches its closer at most once per string: a search that found none is
// remembered), nesting bounded, and anything longer than MAX_MARKDOWN_CHARS stays plain.
//
// Tokens: {t:'text', text} · {t:'bold'|'italic', children} · {t:'code', text} ·
// {t:'codeblock', text, lang} · {t:'link', href, children} · {t:'mention', name}.
// Links: `https://…` / `http://…` in the text, and `[text](https://…)`; any other scheme
// (`javascript:`, `data:`, …) stays text.

/** A body longer than this (UTF-16 units) is not parsed: one text token. */
export const MAX_MARKDOWN_CHARS = 20000;
const MAX_DEPTH = 3;
const WORD = /[\p{L}\p{N}_]/u;
const NAME = /^@([A-Za-z0-9._-]{3,32})/;
const URL_AT = /^https?:\/\/[^\s<>"'`\]]+/i;

/** `href` if it is an absolute http(s) URL, else null. */
export function safeHref(href) {
  if (typeof href !== 'string' || !/^https?:\/\//i.test(href)) return null;
  try {
    const u = new URL(href);
    return u.protocol === 'http:' || u.protocol === 'https:' ? u.href : null;
  } catch { return null; }
}

/** The body as a token list (see above). */
export function parseMarkdown(body) {
  const s = typeof body === 'string' ? body : '';
  if (s.length > MAX_MARKDOWN_CHARS) return [{ t: 'text', text: s }];
  const out = [];
  let i = 0;
  // Code blocks first: ``` (optional language word) … ```; their content is verbatim.
  for (;;) {
    const open = s.indexOf('```', i);
    if (open < 0) break;
    const close = s.indexOf('```', open + 3);
    if (close < 0) break; // unterminated: text
    if (open > i) out.push(...parseInline(s.slice(i, open), 0));
    let text = s.slice(open + 3, close);
    let lang = '';
    const m = /^([A-Za-z0-9_+-]{1,20})?\n/.exec(text);
    if (m) { lang = m[1] || ''; text = text.slice(m[0].length); }
    if (text.endsWith('\n')) text = text.slice(0, -1);
    out.push({ t: 'codeblock', text, lang });
    i = close + 3;
    if (s[i] === '\n') i++;
  }
  if (i < s.length) out.push(...parseInline(s.slice(i), 0));
  return merge(out);
}

function merge(list) {
  const out = [];
  for (const tok of list) {
    const last = out[out.length - 1];
    if (tok.t === 'text' && last && last.t === 'text') last.text += tok.text;
    else if (tok.t !== 'text' || tok.text) out.push(tok);
  }
  return out;
}

/** Inline tokens of `s`; `depth`: nesting of bold/italic/link text; `links`: links allowed. */
function parseInline(s, depth, links = true) {
  const out = [];
  let buf = '';
  const none = new Set(); // markers known to have no closer from here on
  const flush = () => { if (buf) { out.push({ t: 'text', text: buf }); buf = ''; } };
  // The next closer of `marker` after `from` that satisfies `ok(j)`, or -1 (remembered).
  // The last closer found is reused while it is ahead: no closer scan covers a stretch twice.
  const found = new Map();
  const closer = (marker, from, ok) => {
    if (none.has(marker)) return -1;
    const last = found.get(marker);
    if (last && from >= last.from && from <= last.j && ok(last.j)) return last.j;
    for (let j = s.indexOf(marker, from); j >= 0; j = s.indexOf(marker, j + 1)) {
      if (ok(j)) { found.set(marker, { from, j }); return j; }
    }
    none.add(marker);
    return -1;
  };
  let i = 0;
  while (i < s.length) {
    const c = s[i];
    const prev = i > 0 ? s[i - 1] : '';
    if (c === '`') {
      const j = closer('`', i + 1, () => true);
      if (j > i + 1) { flush(); out.push({ t: 'code', text: s.slice(i + 1, j) }); i = j + 1; continue; }
    } else if (c === '[' && links && depth < MAX_DEPTH) {
      const mid = closer('](', i + 1, () => true);
      if (mid > i + 1) {
        const end = s.indexOf(')', mid + 2);
        const href = end > mid + 2 ? safeHref(s.slice(mid + 2, end)) : null;
        if (href && !/\s/.test(s.slice(mid + 2, end))) {
          flush();
          out.push({ t: 'link', href, children: parseInline(s.slice(i + 1, mid), depth + 1, false) });
          i = end + 1; continue;
        }
      }
    } else if ((c === 'h' || c === 'H') && links && !WORD.test(prev)) {
      const m = URL_AT.exec(s.slice(i, i + 2048));
      if (m) {
        let url = m[0];
        // Trailing punctuation belongs to the sentence; a `)` only when unbalanced.
        for (;;) {
          const last = url[url.length - 1];
          if ('.,;:!?*_'.includes(last)) url = url.slice(0, -1);
          else if (last === ')' && (url.split('(').length < url.split(')').length)) url = url.slice(0, -1);
          else break;
        }
        const href = safeHref(url);
        if (href && url.length > url.indexOf('//') + 2) {
          flush(); out.push({ t: 'link', href, children: [{ t: 'text', text: url }] }); i += url.length; continue;
        }
      }
    } else if (c === '*' && s[i + 1] === '*' && depth < MAX_DEPTH) {
      const j = closer('**', i + 2, (k) => k > i + 2 && !/\s/.test(s[k - 1]));
      if (j > i + 2 && !/\s/.test(s[i + 2]) && /[^*_\s]/.test(s.slice(i + 2, j))) {
        flush(); out.push({ t: 'bold', children: parseInline(s.slice(i + 2, j), depth + 1, links) }); i = j + 2; continue;
      }
      buf += '**'; i += 2; continue;
    } else if ((c === '*' || c === '_') && depth < MAX_DEPTH && !(c === '_' && WORD.test(prev))) {
      // A single marker: its closer is not part of a double one, and `_` only at word edges.
      const ok = (k) => k > i + 1 && s[k - 1] !== c && s[k + 1] !== c && !/\s/.test(s[k - 1]) && !(c === '_' && WORD.test(s[k + 1] || ''));
      const j = closer(c, i + 1, ok);
      if (j > i + 1 && !/\s/.test(s[i + 1]) && /[^*_\s]/.test(s.slice(i + 1, j))) {
        flush(); out.push({ t: 'italic', children: parseInline(s.slice(i + 1, j), depth + 1, links) }); i = j + 1; continue;
      }
    } else if (c === '@' && !WORD.test(prev)) {
      const m = NAME.exec(s.slice(i, i + 34));
      if (m) {
        const name = m[1].replace(/[.-]+$/, '');
        if (name.length >= 3) { flush(); out.push({ t: 'mention', name }); i += 1 + name.length; continue; }
      }
    }
    buf += c; i++;
  }
  flush();
  return out;
}

/** The names mentioned (`@name`, not in code), each once, in order of appearance. */
export function mentionNames(tokens) {
  const names = [];
  const seen = new Set();
  const walk = (list) => {
    for (const tok of list) {
      if (tok.t === 'mention') { const k = tok.name.toLowerCase(); if (!seen.has(k)) { seen.add(k); names.push(tok.name); } }
      else if (tok.children) walk(tok.children);
    }
  };
  walk(tokens);
  return names;
}

/**
 * While typing: the `@partial` that ends at `caret` in `text`, as `{start, query}` (start:
 * the index of `@`), or null. For the mentions autocomplete.
 */
export function mentionQuery(text, caret) {
  if (typeof text !== 'string' || !Number.isSafeInteger(caret) || caret < 1 || caret > text.length) return null;
  const before = text.slice(Math.max(0, caret - 34), caret);
  const m = /(^|[^\p{L}\p{N}_])@([A-Za-z0-9._-]{0,32})$/u.exec(before);
  if (!m) return null;
  return { start: caret - m[2].length - 1, query: m[2] };
}
