// chat browser client: plain JS, no framework, no build step. Protocol: docs/protocol.md.
//
// Safety: user text (bodies, user and room names) only ever reaches the page through
// textContent / text nodes, never innerHTML.
//
// Delivery model:
// - Every room we are a member of is subscribed on the WebSocket. `cursor` (memory only) is
//   the newest position this page has of a room's stream; a (re)subscribe sends it as
//   `since`, so a reconnect gets exactly what was missed. A first subscribe uses the room
//   list's `last_position` (older history comes over HTTP), or -1 when the room has none.
// - Sends go through an outbox kept in localStorage: shown as pending until acked, resent with
//   the same client_msg_id after a reconnect or a reload (the server makes that idempotent).
//   The own message may come as `message` before or after its `ack`: either clears the entry,
//   and messages are keyed by id, so it is shown once.
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);

  /** Builds an element. Strings among `children` become text nodes (never HTML). */
  function h(tag, props, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k === 'dataset') for (const [dk, dv] of Object.entries(v)) { if (dv != null) e.dataset[dk] = String(dv); }
      // Style properties through the CSSOM: the Content-Security-Policy refuses style attributes.
      else if (k === 'style') for (const [sk, sv] of Object.entries(v)) e.style.setProperty(sk, String(sv));
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children) if (c !== null && c !== undefined && c !== false) e.append(c);
    return e;
  }

  const PAGE = 50;
  const GROUP_GAP_MS = 5 * 60 * 1000;
  const TYPING_SEND_EVERY = 2000;
  const TYPING_SHOW_MS = 4000;
  const ACK_TIMEOUT_MS = 8000;
  const ROOMS_REFRESH_MS = 4000;

  const S = {
    token: localStorage.getItem('chat.token'),
    user: safeJson(localStorage.getItem('chat.user')),
    rooms: new Map(),      // id -> {id, name, kind, member, unread, last_position} (last list)
    roomOrder: [],
    moreRooms: new Map(),  // other public rooms from the list's later pages ("More rooms")
    nextCursor: null,      // where the next page of other public rooms starts (null: none)
    roomsLoaded: false,
    current: null,
    msgs: new Map(),       // room -> Map(message id -> message)
    cursor: new Map(),     // room -> newest position held of the room's stream (memory only)
    hasMore: new Map(),    // room -> older history exists
    historyLoaded: new Set(),
    loadingOlder: false,
    readLocal: new Map(),  // room -> newest position read on this page
    readSent: new Map(),   // room -> position last sent in a `read` frame
    members: new Map(),    // room -> Map(user id -> {id, name, online})
    online: new Map(),     // user id -> bool (newest presence known)
    typing: new Map(),     // room -> Map(user id -> {name, until})
    typingSentAt: 0,
    outbox: [],            // {client_msg_id, room, body, sent_at, failed, error, inflight, sentAt, tries}
    ws: null,
    welcomed: false,
    subscribed: new Set(), // rooms subscribed (or being subscribed) on this connection
    subQueue: [],          // rooms whose subscribe awaits `subscribed` or an error, in order
    attempt: 0,
    everOnline: false,
    reconnectTimer: null,
    reconnectAt: 0,
    lastFrameAt: 0,
  };

  function safeJson(s) { try { return JSON.parse(s); } catch { return null; } }
  const outboxKey = () => 'chat.outbox.' + (S.user ? S.user.id : '');
  function loadOutbox() {
    const list = safeJson(localStorage.getItem(outboxKey()));
    S.outbox = Array.isArray(list) ? list.filter((o) => o && o.client_msg_id && o.room && typeof o.body === 'string') : [];
    // An earlier version of this client kept one outbox for everyone and the positions.
    const legacy = safeJson(localStorage.getItem('chat.outbox'));
    if (Array.isArray(legacy)) {
      for (const o of legacy) {
        if (o && o.client_msg_id && o.room && typeof o.body === 'string' && (!o.sender || o.sender.id === S.user.id)) {
          S.outbox.push({ client_msg_id: o.client_msg_id, room: o.room, body: o.body, sent_at: o.sent_at || new Date().toISOString(), failed: false });
        }
      }
    }
    localStorage.removeItem('chat.outbox'); localStorage.removeItem('chat.last');
    for (const o of S.outbox) { o.inflight = false; o.tries = 0; }
    saveOutbox();
  }
  function saveOutbox() {
    const keep = S.outbox.map(({ client_msg_id, room, body, sent_at, failed, error }) => ({ client_msg_id, room, body, sent_at, failed, error }));
    try { localStorage.setItem(outboxKey(), JSON.stringify(keep)); } catch (e) { console.warn('outbox not saved', e); }
  }

  function uuid() {
    if (crypto.randomUUID) return crypto.randomUUID();
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
    const x = [...b].map((v) => v.toString(16).padStart(2, '0')).join('');
    return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
  }

  // ---------------------------------------------------------------- HTTP
  class ApiError extends Error {
    constructor(status, code, message) { super(message); this.status = status; this.code = code; }
  }
  /** `meta`, if given, receives `next`: the answer's X-Next-Cursor (room list pages). */
  async function api(method, path, body, meta) {
    let r;
    try {
      r = await fetch(path, {
        method,
        headers: Object.assign({ 'content-type': 'application/json' }, S.token ? { authorization: 'Bearer ' + S.token } : {}),
        body: body ? JSON.stringify(body) : undefined,
      });
    } catch (e) {
      throw new ApiError(0, 'network', 'The server cannot be reached.');
    }
    const data = await r.json().catch(() => ({}));
    if (meta) meta.next = r.headers.get('x-next-cursor');
    // Only an authenticated request answered 401 means the session is over.
    if (r.status === 401 && S.token && !path.startsWith('/api/login') && !path.startsWith('/api/register')) {
      logout();
      throw new ApiError(401, 'unauthorized', 'Your session has ended; please log in again.');
    }
    if (!r.ok) {
      const err = data && data.error;
      throw new ApiError(r.status, (err && err.code) || 'http_' + r.status, (err && err.message) || r.statusText || 'Request failed');
    }
    return data;
  }

  let toastTimer = null;
  function toast(text) {
    const t = $('toast');
    t.textContent = text; t.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { t.hidden = true; }, 5000);
  }

  // ---------------------------------------------------------------- login
  async function auth(kind) {
    const err = $('login-error');
    err.textContent = '';
    const username = $('username').value.trim();
    const password = $('password').value;
    if (!username || !password) { err.textContent = 'Enter a username and a password.'; return; }
    const buttons = document.querySelectorAll('#login-form button');
    buttons.forEach((b) => { b.disabled = true; });
    try {
      const d = await api('POST', '/api/' + kind, { username, password });
      S.token = d.token; S.user = d.user;
      localStorage.setItem('chat.token', d.token);
      localStorage.setItem('chat.user', JSON.stringify(d.user));
      $('password').value = '';
      start();
    } catch (e) {
      err.textContent = e.message;
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
  }
  $('login-form').addEventListener('submit', (e) => { e.preventDefault(); auth('login'); });
  $('register').addEventListener('click', () => auth('register'));

  function logout() {
    localStorage.removeItem('chat.token');
    localStorage.removeItem('chat.user');
    S.token = null;
    if (S.ws) { S.ws.onclose = null; S.ws.close(); }
    location.hash = '';
    location.reload();
  }
  $('logout').addEventListener('click', logout);

  // ---------------------------------------------------------------- rooms
  function room(id) { return S.rooms.get(id); }
  function store(id) { if (!S.msgs.has(id)) S.msgs.set(id, new Map()); return S.msgs.get(id); }
  const roomLabel = (r) => (r.kind === 'dm' ? r.name : '# ' + r.name);

  let roomsTimer = null;
  let roomsFailures = 0;
  let roomsRun = null;
  let roomsQueued = null;
  /** Reloads the room list. One request at a time; a caller always gets a list fetched
   * after its call (a join must not be answered by a list from before it). */
  function loadRooms() {
    if (!roomsRun) {
      roomsRun = fetchRooms().finally(() => { roomsRun = null; });
      return roomsRun;
    }
    if (!roomsQueued) roomsQueued = roomsRun.then(() => { roomsQueued = null; return loadRooms(); });
    return roomsQueued;
  }

  async function fetchRooms() {
    clearTimeout(roomsTimer);
    try {
      const meta = {};
      const first = await api('GET', '/api/rooms', undefined, meta);
      // The first page has all of our rooms and the first public others; the pages
      // after it ("More rooms") are kept until the first page says there are no more.
      const inFirst = new Set(first.map((r) => r.id));
      if (!meta.next) { S.moreRooms.clear(); S.nextCursor = null; }
      else if (!S.moreRooms.size) S.nextCursor = meta.next;
      for (const id of inFirst) S.moreRooms.delete(id);
      const list = first.concat([...S.moreRooms.values()]);
      roomsFailures = 0;
      $('rooms-error').hidden = true;
      const seen = new Set();
      for (const r of list) {
        seen.add(r.id);
        const old = S.rooms.get(r.id);
        S.rooms.set(r.id, r);
        if (old && old.member && !r.member) forgetRoom(r.id);
      }
      for (const id of [...S.rooms.keys()]) if (!seen.has(id)) { forgetRoom(id); S.rooms.delete(id); }
      S.roomOrder = list.map((r) => r.id);
      S.roomsLoaded = true;
      for (const r of list) if (r.kind === 'dm' && r.member && !S.members.has(r.id)) loadMembers(r.id);
      syncSubscriptions();
      renderRooms();
      if (S.current) renderHeader();
    } catch (e) {
      if (e.status === 401) return;
      roomsFailures++;
      const box = $('rooms-error');
      box.textContent = 'Could not load rooms (' + e.message + '). Retrying…';
      box.hidden = false;
    } finally {
      // The protocol announces no new rooms or DMs to a user who is not in them yet: poll.
      const wait = roomsFailures ? Math.min(30000, 1000 * 2 ** roomsFailures) : document.hidden ? 30000 : ROOMS_REFRESH_MS;
      clearTimeout(roomsTimer);
      if (S.token) roomsTimer = setTimeout(loadRooms, wait);
    }
    return S.rooms;
  }

  /** Loads the next page of other public rooms (the list's first page has all of ours). */
  async function loadMoreRooms() {
    if (!S.nextCursor) return;
    const btn = $('more-rooms');
    btn.disabled = true;
    try {
      const meta = {};
      const page = await api('GET', '/api/rooms?after=' + encodeURIComponent(S.nextCursor) + '&limit=200', undefined, meta);
      for (const r of page) if (!S.rooms.get(r.id)?.member) S.moreRooms.set(r.id, r);
      S.nextCursor = meta.next;
      await loadRooms();
    } catch (e) {
      if (e.status !== 401) toast('Could not load more rooms: ' + e.message);
    } finally {
      btn.disabled = false;
    }
  }
  $('more-rooms').addEventListener('click', loadMoreRooms);

  /** Drops what we hold of a room we are no longer a member of. */
  function forgetRoom(id) {
    if (S.subscribed.has(id) && S.ws && S.welcomed) wsSend({ type: 'unsubscribe', room: id });
    S.subscribed.delete(id);
    S.msgs.delete(id); S.cursor.delete(id); S.hasMore.delete(id); S.historyLoaded.delete(id);
    S.readLocal.delete(id); S.readSent.delete(id); S.members.delete(id); S.typing.delete(id);
  }

  function othersAfter(id, after) {
    const s = S.msgs.get(id); if (!s) return 0;
    let n = 0;
    for (const m of s.values()) if (m.position > after && m.sender.id !== S.user.id) n++;
    return n;
  }
  /** Unread count: the server's count at the last list plus what arrived after it, or what
   * arrived after what this page has read. */
  function unreadOf(r) {
    if (!r.member || r.id === S.current) return 0;
    const L = r.last_position ?? -1;
    const read = S.readLocal.get(r.id);
    if (read != null && read >= L) return othersAfter(r.id, read);
    return (r.unread || 0) + othersAfter(r.id, L);
  }

  function dmPartner(r) {
    const ms = S.members.get(r.id);
    if (!ms) return null;
    for (const m of ms.values()) if (m.id !== S.user.id) return m;
    return null;
  }

  function renderRooms() {
    const lists = { room: $('room-list'), dm: $('dm-list'), other: $('other-list') };
    const items = { room: [], dm: [], other: [] };
    let total = 0;
    for (const id of S.roomOrder) {
      const r = S.rooms.get(id); if (!r) continue;
      const group = !r.member ? 'other' : r.kind === 'dm' ? 'dm' : 'room';
      const unread = unreadOf(r);
      total += unread;
      const partner = r.kind === 'dm' ? dmPartner(r) : null;
      const online = partner ? (S.online.get(partner.id) ?? partner.online) : false;
      const icon = r.kind === 'dm'
        ? h('span', { class: 'avatar small', style: avatarStyle(partner ? partner.id : r.id) }, initial(r.name),
          h('i', { class: 'presence', dataset: { online: String(!!online) } }))
        : h('span', { class: 'hash', 'aria-hidden': 'true' }, '#');
      const li = h('li', {},
        h('a', {
          href: '#' + r.id,
          class: 'room-item' + (id === S.current ? ' active' : '') + (unread ? ' has-unread' : ''),
          dataset: { testid: 'room-item', roomId: r.id, roomName: r.name, kind: r.kind, member: String(r.member), unread: String(unread) },
          onclick: (e) => { e.preventDefault(); openRoom(r.id); },
        }, icon, h('span', { class: 'room-name', dataset: { testid: 'room-name' } }, r.name),
        unread ? h('span', { class: 'badge', dataset: { testid: 'unread-badge' } }, unread > 99 ? '99+' : String(unread)) : null));
      items[group].push(li);
    }
    for (const k of Object.keys(lists)) lists[k].replaceChildren(...items[k]);
    if (!items.room.length) lists.room.append(h('li', { class: 'side-empty' }, 'No rooms yet: create one.'));
    if (!items.dm.length) lists.dm.append(h('li', { class: 'side-empty' }, 'No conversations yet.'));
    $('other-section').hidden = !items.other.length;
    $('more-rooms').hidden = !S.nextCursor;
    document.title = total ? `(${total}) chat` : 'chat';
    $('menu-badge').hidden = !total;
  }

  $('new-room').addEventListener('click', () => {
    const f = $('create-form'); f.hidden = !f.hidden; if (!f.hidden) $('create-name').focus();
  });
  $('create-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const name = $('create-name').value.trim(); if (!name) return;
    try {
      const r = await api('POST', '/api/rooms', { name });
      $('create-name').value = ''; $('create-form').hidden = true;
      S.rooms.set(r.id, Object.assign({ unread: 0, last_position: null }, r));
      await loadRooms();
      openRoom(r.id);
    } catch (err) { toast(err.message); }
  });

  $('new-dm').addEventListener('click', () => {
    const f = $('dm-form'); f.hidden = !f.hidden; $('dm-error').hidden = true; if (!f.hidden) $('dm-name').focus();
  });
  $('dm-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const name = $('dm-name').value.trim(); if (!name) return;
    const box = $('dm-error'); box.hidden = true;
    try {
      if (name.toLowerCase() === S.user.name.toLowerCase()) throw new Error('That is you.');
      await startDm({ username: name });
      $('dm-name').value = ''; $('dm-form').hidden = true;
    } catch (err) {
      box.textContent = err.code === 'user_not_found' ? `No user named “${name}”.` : err.message;
      box.hidden = false;
    }
  });

  /** `who`: `{ user: id }`, or `{ username }` (this server's extension of the protocol). */
  async function startDm(who) {
    const r = await api('POST', '/api/dms', who);
    S.rooms.set(r.id, Object.assign({ unread: 0, last_position: null }, r));
    if (!S.roomOrder.includes(r.id)) S.roomOrder.push(r.id);
    await loadRooms();
    openRoom(r.id);
  }

  $('join').addEventListener('click', async () => {
    const id = S.current; if (!id) return;
    try {
      await api('POST', '/api/rooms/' + id + '/join');
      await loadRooms();
      if (S.current === id) openRoom(id);
    } catch (err) { toast(err.message); }
  });
  $('leave').addEventListener('click', async () => {
    const id = S.current; const r = room(id); if (!r) return;
    try {
      await api('POST', '/api/rooms/' + id + '/leave');
      forgetRoom(id);
      await loadRooms();
      const next = S.roomOrder.find((x) => x !== id && S.rooms.get(x)?.member);
      if (next) openRoom(next); else { S.current = null; location.hash = ''; renderAll(); }
    } catch (err) { toast(err.message); }
  });

  // ---------------------------------------------------------------- open room, history
  async function openRoom(id) {
    closeDrawers();
    const changed = S.current !== id;
    S.current = id;
    if (location.hash.slice(1) !== id) history.replaceState(null, '', '#' + id);
    if (changed) { $('composer').value = ''; S.loadingOlder = false; $('jump').hidden = true; }
    renderAll(changed);
    const r = room(id);
    if (!r || !r.member) return;
    if (!S.historyLoaded.has(id)) {
      try { await loadHistory(id); } catch (e) { if (S.current === id) $('history-state').textContent = 'Could not load history: ' + e.message; }
      if (S.current !== id) return;
      drawNow({ toBottom: true });
    }
    loadMembers(id).then(() => { if (S.current === id) renderMembers(); }).catch(() => {});
    markRead();
    renderRooms();
  }

  async function loadHistory(id, before) {
    const q = before != null ? '&before=' + encodeURIComponent(before) : '';
    const d = await api('GET', `/api/rooms/${id}/messages?limit=${PAGE}${q}`);
    for (const m of d.messages) addMessage(m, true);
    S.hasMore.set(id, !!d.has_more);
    S.historyLoaded.add(id);
  }

  function oldestPosition(id) {
    let min = null;
    for (const m of store(id).values()) if (min === null || m.position < min) min = m.position;
    return min;
  }

  async function loadOlder() {
    const id = S.current;
    if (!id || S.loadingOlder || !S.hasMore.get(id) || !S.historyLoaded.has(id)) return;
    const before = oldestPosition(id); if (before === null) return;
    S.loadingOlder = true;
    $('history-state').textContent = 'Loading older messages…';
    const sc = $('scroller');
    try {
      await loadHistory(id, before);
      if (S.current !== id) return;
      const fromBottom = sc.scrollHeight - sc.scrollTop;
      S.loadingOlder = false;
      drawNow({});
      sc.scrollTop = sc.scrollHeight - fromBottom;
    } catch (e) {
      toast('Could not load older messages: ' + e.message);
    } finally {
      S.loadingOlder = false;
      if (S.current === id) renderHistoryState();
    }
  }

  /** Loads older pages until the view can scroll (or there are none). */
  function fillViewport() {
    const sc = $('scroller');
    if (S.current && S.hasMore.get(S.current) && !S.loadingOlder && sc.scrollHeight <= sc.clientHeight + 100) setTimeout(loadOlder, 0);
  }
  $('scroller').addEventListener('scroll', () => {
    const sc = $('scroller');
    if (sc.scrollTop < 120) loadOlder();
    if (sc.scrollHeight - sc.scrollTop - sc.clientHeight < 80) $('jump').hidden = true;
  }, { passive: true });
  $('jump').addEventListener('click', () => { const sc = $('scroller'); sc.scrollTop = sc.scrollHeight; $('jump').hidden = true; });

  async function loadMembers(id) {
    const list = await api('GET', `/api/rooms/${id}/members`);
    const map = new Map();
    for (const m of list) {
      map.set(m.id, { id: m.id, name: m.name, online: !!m.online });
      S.online.set(m.id, !!m.online);
    }
    S.members.set(id, map);
    if (room(id) && room(id).kind === 'dm') renderRooms();
    return map;
  }

  // ---------------------------------------------------------------- messages
  /** Adds a message from the stream or from history; returns whether it is new. */
  function addMessage(m, fromHistory) {
    const s = store(m.room);
    const fresh = !s.has(m.id);
    s.set(m.id, m);
    if (m.sender.id === S.user.id) settleOutbox(m.client_msg_id);
    // The cursor moves with the stream and with history pages (each page is contiguous up
    // to its newest), never with an ack: an acked position can be ahead of the stream.
    if (fromHistory !== 'ack') {
      const c = S.cursor.get(m.room);
      if (c == null || m.position > c) S.cursor.set(m.room, m.position);
    }
    return fresh;
  }

  function settleOutbox(clientMsgId) {
    const i = S.outbox.findIndex((o) => o.client_msg_id === clientMsgId);
    if (i >= 0) { S.outbox.splice(i, 1); saveOutbox(); }
  }

  function newestPosition(id) {
    let max = null;
    const s = S.msgs.get(id);
    if (s) for (const m of s.values()) if (max === null || m.position > max) max = m.position;
    return max;
  }

  function markRead() {
    const id = S.current; const r = room(id);
    if (!id || !r || !r.member) return;
    const p = newestPosition(id);
    if (p === null) return;
    if ((S.readLocal.get(id) ?? -Infinity) < p) S.readLocal.set(id, p);
    if (S.welcomed && (S.readSent.get(id) ?? -Infinity) < p && S.subscribed.has(id)) {
      if (wsSend({ type: 'read', room: id, position: p })) S.readSent.set(id, p);
    }
  }

  // ---------------------------------------------------------------- composer and outbox
  const composer = $('composer');
  composer.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); $('composer-form').requestSubmit(); }
  });
  composer.addEventListener('input', () => {
    autosize();
    const now = Date.now();
    if (composer.value.trim() && S.current && now - S.typingSentAt > TYPING_SEND_EVERY && S.subscribed.has(S.current)) {
      if (wsSend({ type: 'typing', room: S.current })) S.typingSentAt = now;
    }
  });
  function autosize() { composer.style.height = 'auto'; composer.style.height = Math.min(composer.scrollHeight, 160) + 'px'; }

  $('composer-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const body = composer.value;
    const id = S.current;
    if (!body.trim() || !id || !room(id)?.member) return;
    if ([...body].length > 4000) { toast('A message is at most 4,000 characters.'); return; }
    S.outbox.push({ client_msg_id: uuid(), room: id, body, sent_at: new Date().toISOString(), failed: false, inflight: false, tries: 0 });
    saveOutbox();
    composer.value = ''; autosize(); S.typingSentAt = 0;
    renderMessages({ toBottom: true });
    flush();
  });

  function flush() {
    if (!S.welcomed) return;
    const now = Date.now();
    for (const o of S.outbox) {
      if (o.failed || o.inflight || (o.retryAt && o.retryAt > now)) continue;
      if (wsSend({ type: 'send', room: o.room, client_msg_id: o.client_msg_id, body: o.body })) {
        o.inflight = true; o.sentAt = now; o.tries = (o.tries || 0) + 1;
      }
    }
  }
  // An unanswered send is sent again (same client_msg_id) after a while.
  setInterval(() => {
    const now = Date.now();
    let again = false;
    for (const o of S.outbox) {
      if (o.inflight && now - o.sentAt > ACK_TIMEOUT_MS) { o.inflight = false; again = true; }
      if (o.retryAt && o.retryAt <= now) again = true;
    }
    if (again) flush();
  }, 1000);

  function retry(o) { o.failed = false; o.error = null; o.retryAt = 0; saveOutbox(); renderMessages({}); flush(); }
  function discard(o) { settleOutbox(o.client_msg_id); renderMessages({}); }

  // ---------------------------------------------------------------- WebSocket
  function wsSend(frame) {
    if (!S.ws || S.ws.readyState !== WebSocket.OPEN) return false;
    S.ws.send(JSON.stringify(frame));
    return true;
  }

  function setConn(state, detail) {
    const c = $('conn');
    c.dataset.state = state;
    const text = { connecting: 'Connecting…', online: 'Online', reconnecting: 'Reconnecting…' }[state] || state;
    $('conn-text').textContent = text;
    const banner = $('banner');
    if (state === 'reconnecting') {
      $('banner-text').textContent = detail || 'Connection lost. Reconnecting…';
      banner.hidden = false;
    } else {
      banner.hidden = true;
    }
    document.body.dataset.conn = state;
  }

  function syncSubscriptions() {
    if (!S.welcomed || !S.roomsLoaded) return;
    for (const r of S.rooms.values()) {
      if (!r.member || S.subscribed.has(r.id)) continue;
      const since = S.cursor.get(r.id) ?? r.last_position ?? -1;
      if (!S.cursor.has(r.id)) S.cursor.set(r.id, since);
      if (wsSend({ type: 'subscribe', room: r.id, since })) { S.subscribed.add(r.id); S.subQueue.push(r.id); }
    }
  }

  function connect() {
    clearTimeout(S.reconnectTimer); S.reconnectTimer = null;
    if (S.ws) { S.ws.onclose = null; S.ws.onmessage = null; try { S.ws.close(); } catch { /* gone */ } }
    setConn(S.everOnline ? 'reconnecting' : 'connecting');
    const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws');
    S.ws = ws; S.welcomed = false;
    S.subscribed.clear(); S.subQueue = [];
    for (const o of S.outbox) o.inflight = false;
    ws.onopen = () => { S.lastFrameAt = Date.now(); ws.send(JSON.stringify({ type: 'hello', token: S.token })); };
    ws.onmessage = (ev) => {
      S.lastFrameAt = Date.now();
      let f;
      try { f = JSON.parse(ev.data); } catch { return; }
      onFrame(f);
    };
    ws.onclose = (ev) => onClosed(ws, ev.code);
  }

  function onClosed(ws, code) {
    if (S.ws !== ws) return;
    S.ws = null; S.welcomed = false;
    S.subscribed.clear(); S.subQueue = [];
    for (const o of S.outbox) o.inflight = false;
    if (code === 4401) {
      // The token was refused: ask the API whether the session is still valid (a 401 logs out).
      api('GET', '/api/rooms').catch(() => {});
    }
    scheduleReconnect();
    renderMessages({});
  }

  function scheduleReconnect(fast) {
    // Exponential backoff with jitter: 0.5 s, 1 s, 2 s … 15 s, each times 0.5–1.0.
    const base = fast ? 300 : Math.min(15000, 500 * 2 ** S.attempt);
    const wait = Math.round(base * (0.5 + Math.random() * 0.5));
    S.attempt++;
    S.reconnectAt = Date.now() + wait;
    setConn(S.everOnline ? 'reconnecting' : 'connecting', S.everOnline ? `Connection lost. Reconnecting in ${Math.ceil(wait / 1000)} s…` : undefined);
    clearTimeout(S.reconnectTimer);
    S.reconnectTimer = setTimeout(connect, wait);
  }
  $('banner-retry').addEventListener('click', () => { S.attempt = 0; connect(); });
  window.addEventListener('online', () => { if (!S.ws && S.token) { S.attempt = 0; connect(); } });
  // Coming back to the tab refreshes the room list at once (new rooms and DMs).
  document.addEventListener('visibilitychange', () => { if (!document.hidden && S.token && S.roomsLoaded) loadRooms(); });
  window.addEventListener('focus', () => { if (S.token && S.roomsLoaded) loadRooms(); });

  // Keep-alive: our ping is answered with pong; a connection that has been silent too long
  // is given up and replaced.
  setInterval(() => {
    if (!S.ws || S.ws.readyState !== WebSocket.OPEN) return;
    if (Date.now() - S.lastFrameAt > 50000) { const ws = S.ws; ws.onclose = null; ws.close(); onClosed(ws, 1006); return; }
    wsSend({ type: 'ping' });
  }, 20000);

  function onFrame(f) {
    switch (f.type) {
      case 'welcome': {
        const again = S.everOnline;
        S.welcomed = true; S.attempt = 0; S.everOnline = true;
        if (f.user && f.user.id === S.user.id) { S.user = f.user; }
        setConn('online');
        syncSubscriptions();
        flush();
        markRead();
        renderMessages({});
        if (again) {
          // Presence changes while we were away were not seen: ask again.
          for (const id of S.members.keys()) {
            if (id === S.current || room(id)?.kind === 'dm') loadMembers(id).then(() => { if (id === S.current) renderMembers(); }).catch(() => {});
          }
          loadRooms();
        }
        break;
      }
      case 'unsubscribed': {
        // The server ended the subscription: our membership ended (on this or another device).
        S.subscribed.delete(f.room);
        S.subQueue = S.subQueue.filter((x) => x !== f.room);
        // `resync`: the server lost its bus link; a `reconnect` came first and resubscribes.
        if (f.reason !== 'resync') {
          forgetRoom(f.room);
          loadRooms().then(() => renderAll()).catch(() => {});
        }
        break;
      }
      case 'subscribed': {
        S.subQueue = S.subQueue.filter((x) => x !== f.room);
        if (f.position != null) {
          const c = S.cursor.get(f.room);
          if (c == null || f.position > c) S.cursor.set(f.room, f.position);
        }
        if (f.room === S.current) markRead();
        break;
      }
      case 'message': {
        const m = f.message;
        if (!S.rooms.get(m.room)?.member) break;
        addMessage(m, false);
        clearTyping(m.room, m.sender.id);
        if (m.room === S.current) { renderMessages({}); markRead(); renderTyping(); }
        scheduleRenderRooms();
        break;
      }
      case 'ack': {
        settleOutbox(f.client_msg_id);
        if (f.message && S.rooms.get(f.message.room)?.member) addMessage(f.message, 'ack');
        if (!f.message || f.message.room === S.current) { renderMessages({ toBottom: true }); markRead(); }
        break;
      }
      case 'typing':
        if (!f.user || f.user.id === S.user.id) break;
        if (!S.typing.has(f.room)) S.typing.set(f.room, new Map());
        S.typing.get(f.room).set(f.user.id, { name: f.user.name, until: Date.now() + TYPING_SHOW_MS });
        if (f.room === S.current) renderTyping();
        setTimeout(renderTyping, TYPING_SHOW_MS + 50);
        break;
      case 'presence': {
        S.online.set(f.user.id, !!f.online);
        for (const ms of S.members.values()) { const m = ms.get(f.user.id); if (m) m.online = !!f.online; }
        if (!f.online) clearTyping(f.room, f.user.id);
        if (f.room === S.current) renderMembers();
        scheduleRenderRooms();
        break;
      }
      case 'member': {
        const ms = S.members.get(f.room);
        if (ms) {
          if (f.event === 'joined') ms.set(f.user.id, { id: f.user.id, name: f.user.name, online: S.online.get(f.user.id) ?? false });
          else ms.delete(f.user.id);
        }
        if (f.user.id === S.user.id || !ms) loadRooms();
        else loadMembers(f.room).then(() => { if (f.room === S.current) renderMembers(); }).catch(() => {});
        if (f.room === S.current) renderMembers();
        break;
      }
      case 'error': onError(f); break;
      case 'reconnect': {
        // The server drains: go to another gateway soon, resubscribing with `since`.
        const ws = S.ws; if (ws) { ws.onclose = null; ws.close(); }
        S.ws = null; S.welcomed = false; S.subscribed.clear(); S.subQueue = [];
        for (const o of S.outbox) o.inflight = false;
        S.attempt = 0; scheduleReconnect(true);
        break;
      }
      case 'pong': break;
      default: break;
    }
  }

  function onError(f) {
    const o = f.ref ? S.outbox.find((x) => x.client_msg_id === f.ref) : null;
    if (o) {
      o.inflight = false;
      if (f.retryable) {
        o.retryAt = Date.now() + Math.min(10000, 500 * 2 ** Math.min(5, o.tries || 1));
      } else {
        o.failed = true; o.error = f.message || f.code; saveOutbox();
      }
      renderMessages({});
      return;
    }
    if (f.ref === 'subscribe') {
      const id = S.subQueue.shift();
      if (!id) return;
      S.subscribed.delete(id);
      if (f.code === 'backlog_too_large') {
        // Too far behind to replay: start over from the newest history.
        S.msgs.delete(id); S.historyLoaded.delete(id); S.cursor.delete(id);
        if (wsSend({ type: 'subscribe', room: id, since: null })) { S.subscribed.add(id); S.subQueue.push(id); }
        if (id === S.current) openRoom(id);
      } else if (f.retryable) {
        setTimeout(syncSubscriptions, 2000);
      } else if (f.code === 'not_member' || f.code === 'room_not_found') {
        loadRooms();
      }
      return;
    }
    if (f.ref === 'read' || f.ref === 'typing') return;
    console.warn('chat: error frame', f);
  }

  function clearTyping(roomId, userId) {
    const t = S.typing.get(roomId);
    if (t && t.delete(userId) && roomId === S.current) renderTyping();
  }

  let roomsRenderPending = false;
  function scheduleRenderRooms() {
    if (roomsRenderPending) return;
    roomsRenderPending = true;
    requestAnimationFrame(() => { roomsRenderPending = false; renderRooms(); });
  }

  // ---------------------------------------------------------------- rendering
  function hue(id) { let x = 0; for (const c of String(id)) x = (x * 31 + c.charCodeAt(0)) >>> 0; return x % 360; }
  function avatarStyle(id) { return { '--hue': hue(id) }; }
  function initial(name) { return (name || '?').trim().charAt(0).toUpperCase() || '?'; }

  const timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
  const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'short' });
  const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: 'long', month: 'long', day: 'numeric' });
  const yearDayFmt = new Intl.DateTimeFormat(undefined, { weekday: 'long', year: 'numeric', month: 'long', day: 'numeric' });
  function dayLabel(d) {
    const today = new Date(); today.setHours(0, 0, 0, 0);
    const that = new Date(d); that.setHours(0, 0, 0, 0);
    const days = Math.round((today - that) / 86400000);
    if (days === 0) return 'Today';
    if (days === 1) return 'Yesterday';
    return (that.getFullYear() === today.getFullYear() ? dayFmt : yearDayFmt).format(d);
  }

  function renderAll(changed) {
    renderRooms(); renderHeader(); renderMessages({ toBottom: changed }); renderMembers(); renderTyping();
  }

  function renderHeader() {
    const r = room(S.current);
    const title = $('room-title'); const sub = $('room-sub');
    const member = !!(r && r.member);
    if (!r) {
      title.textContent = S.current ? 'Room not found' : 'Welcome';
      sub.textContent = '';
    } else if (r.kind === 'dm') {
      const p = dmPartner(r);
      const online = p ? (S.online.get(p.id) ?? p.online) : false;
      title.textContent = r.name;
      sub.textContent = p ? (online ? 'online' : 'offline') : 'direct message';
    } else {
      title.textContent = roomLabel(r);
      const ms = S.members.get(r.id);
      sub.textContent = ms ? `${ms.size} member${ms.size === 1 ? '' : 's'}` : '';
    }
    title.dataset.kind = r ? r.kind : '';
    $('join').hidden = !r || member;
    $('leave').hidden = !r || !member || r.kind === 'dm';
    $('open-members').hidden = !member;
    $('composer-form').hidden = !member;
    const ms = r && S.members.get(r.id);
    $('member-count').textContent = ms ? String(ms.size) : '';
    document.body.classList.toggle('no-room', !member);
  }

  function renderHistoryState() {
    const id = S.current; const st = $('history-state');
    if (!id || !room(id)?.member) { st.textContent = ''; return; }
    if (S.loadingOlder) st.textContent = 'Loading older messages…';
    else if (!S.historyLoaded.has(id)) st.textContent = 'Loading…';
    else if (S.hasMore.get(id)) st.textContent = '';
    else {
      const r = room(id);
      st.replaceChildren(h('div', { class: 'room-start', dataset: { testid: 'history-start' } },
        h('strong', {}, r.kind === 'dm' ? 'This is the start of your conversation with ' + r.name + '.' : 'This is the start of ' + roomLabel(r) + '.')));
    }
  }

  let msgRenderPending = null;
  /** Redraws the open room's messages (batched to one frame). */
  function renderMessages(opts) {
    if (!msgRenderPending) {
      msgRenderPending = { toBottom: false };
      requestAnimationFrame(() => { const o = msgRenderPending; if (o) { msgRenderPending = null; drawMessages(o); } });
    }
    if (opts && opts.toBottom) msgRenderPending.toBottom = true;
  }

  /** Redraws now (taking over a pending batched redraw). */
  function drawNow(opts) {
    const o = Object.assign({ toBottom: false }, opts);
    if (msgRenderPending) { o.toBottom = o.toBottom || msgRenderPending.toBottom; msgRenderPending = null; }
    drawMessages(o);
  }

  function drawMessages(opts) {
    const id = S.current; const ol = $('messages'); const sc = $('scroller'); const empty = $('empty');
    renderHistoryState();
    const r = room(id);
    if (!id || !r) {
      ol.replaceChildren();
      empty.replaceChildren(h('div', { class: 'empty-card' }, h('h3', {}, S.current ? 'This room does not exist (any more).' : 'Pick a room'),
        h('p', { class: 'muted' }, 'Choose a room on the left, create one, or start a direct message.')));
      empty.hidden = false;
      return;
    }
    if (!r.member) {
      ol.replaceChildren();
      empty.replaceChildren(h('div', { class: 'empty-card' }, h('h3', {}, 'You are not in ' + roomLabel(r) + ' yet'),
        h('p', { class: 'muted' }, 'Join it to read the conversation and write.'),
        h('button', { class: 'primary', type: 'button', dataset: { testid: 'join-room-cta' }, onclick: () => $('join').click() }, 'Join ' + roomLabel(r))));
      empty.hidden = false;
      return;
    }
    empty.hidden = true;
    const atBottom = sc.scrollHeight - sc.scrollTop - sc.clientHeight < 80;

    const list = [...store(id).values()].sort((a, b) => a.position - b.position);
    const mine = new Set();
    for (const m of list) if (m.sender.id === S.user.id) mine.add(m.client_msg_id);
    let dropped = false;
    const pending = [];
    for (const o of S.outbox) {
      if (o.room !== id) continue;
      if (mine.has(o.client_msg_id)) { dropped = true; continue; }
      pending.push(o);
    }
    if (dropped) { S.outbox = S.outbox.filter((o) => !(o.room === id && mine.has(o.client_msg_id))); saveOutbox(); }

    const items = list.map((m) => ({ m, pending: null }))
      .concat(pending.map((o) => ({ m: { id: null, room: o.room, sender: S.user, body: o.body, client_msg_id: o.client_msg_id, position: null, sent_at: o.sent_at }, pending: o })));

    const frag = document.createDocumentFragment();
    let day = null; let group = null; let prev = null;
    for (const { m, pending: o } of items) {
      const t = new Date(m.sent_at);
      const d = isNaN(t) ? '' : t.toDateString();
      if (d !== day) {
        frag.append(h('li', { class: 'day-sep', dataset: { testid: 'day-separator' } }, h('span', {}, isNaN(t) ? '' : dayLabel(t))));
        day = d; group = null;
      }
      const sameGroup = group && prev && prev.sender.id === m.sender.id && (t - new Date(prev.sent_at)) < GROUP_GAP_MS;
      if (!sameGroup) {
        const body = h('div', { class: 'group-body' },
          h('div', { class: 'group-head' },
            h('span', { class: 'sender', dataset: { testid: 'message-sender' } }, m.sender.name),
            m.sender.id === S.user.id ? h('span', { class: 'you' }, 'you') : null,
            h('time', { datetime: m.sent_at, title: isNaN(t) ? '' : fullFmt.format(t) }, isNaN(t) ? '' : timeFmt.format(t))));
        group = h('li', { class: 'group' + (m.sender.id === S.user.id ? ' own' : ''), dataset: { testid: 'message-group', senderId: m.sender.id, senderName: m.sender.name } },
          h('span', { class: 'avatar', style: avatarStyle(m.sender.id), 'aria-hidden': 'true' }, initial(m.sender.name)), body);
        frag.append(group);
      }
      const row = h('div', {
        class: 'msg' + (o ? ' pending' : '') + (o && o.failed ? ' failed' : ''),
        dataset: {
          testid: 'message', messageId: m.id || '', clientMsgId: m.client_msg_id, position: m.position ?? '',
          pending: String(!!o), failed: String(!!(o && o.failed)), senderName: m.sender.name,
        },
      },
      h('time', { class: 'row-time', datetime: m.sent_at, title: isNaN(t) ? '' : fullFmt.format(t) }, isNaN(t) ? '' : timeFmt.format(t)),
      h('div', { class: 'body', dataset: { testid: 'message-body' } }, m.body));
      if (o) {
        const status = h('div', { class: 'status', dataset: { testid: 'message-status' } });
        if (o.failed) {
          status.append(h('span', { class: 'err' }, 'Not sent' + (o.error ? ': ' + o.error : '')),
            h('button', { type: 'button', class: 'link', dataset: { testid: 'retry-send' }, onclick: () => retry(o) }, 'Retry'),
            h('button', { type: 'button', class: 'link', dataset: { testid: 'discard-send' }, onclick: () => discard(o) }, 'Discard'));
        } else {
          status.append(h('span', {}, S.welcomed ? 'Sending…' : 'Waiting for connection…'));
        }
        row.append(status);
      }
      group.lastChild.append(row);
      prev = m;
    }
    ol.replaceChildren(frag);
    // Scrolled up reading older messages: stay there, and offer a way down when new ones come.
    const newest = list.length ? list[list.length - 1].id : null;
    if (opts.toBottom || atBottom) { sc.scrollTop = sc.scrollHeight; $('jump').hidden = true; }
    else if (newest && S.drawnNewest && S.drawnNewest.room === id && S.drawnNewest.id !== newest) $('jump').hidden = false;
    S.drawnNewest = { room: id, id: newest };
    if (S.historyLoaded.has(id)) fillViewport();
  }

  function renderMembers() {
    const ul = $('member-list');
    const id = S.current;
    const ms = id && S.members.get(id);
    if (!ms) { ul.replaceChildren(); renderHeader(); return; }
    const list = [...ms.values()].map((m) => Object.assign({}, m, { online: S.online.get(m.id) ?? m.online }))
      .sort((a, b) => (b.online - a.online) || a.name.localeCompare(b.name));
    const online = list.filter((m) => m.online).length;
    const items = [h('li', { class: 'member-sum muted' }, `${online} online · ${list.length} total`)];
    for (const m of list) {
      const me = m.id === S.user.id;
      items.push(h('li', {},
        h('button', {
          type: 'button', class: 'member' + (me ? ' me' : ''), title: me ? 'You' : 'Message ' + m.name,
          dataset: { testid: 'member', userId: m.id, userName: m.name, online: String(m.online) },
          onclick: me ? null : () => startDm({ user: m.id }).catch((e) => toast(e.message)),
        },
        h('span', { class: 'avatar small', style: avatarStyle(m.id) }, initial(m.name),
          h('i', { class: 'presence', dataset: { testid: 'online-dot', online: String(m.online) } })),
        h('span', { class: 'member-name' }, m.name), me ? h('span', { class: 'muted small' }, ' (you)') : null)));
    }
    ul.replaceChildren(...items);
    renderHeader();
  }

  function renderTyping() {
    const line = $('typing');
    const t = S.current && S.typing.get(S.current);
    const now = Date.now();
    const names = [];
    if (t) for (const [uid, v] of t) { if (v.until > now) names.push(v.name); else t.delete(uid); }
    let text = '';
    if (names.length === 1) text = `${names[0]} is typing…`;
    else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
    else if (names.length > 2) text = 'Several people are typing…';
    line.textContent = text;
    line.classList.toggle('on', !!text);
  }

  // ---------------------------------------------------------------- drawers (phone)
  function closeDrawers() { document.body.classList.remove('nav-open', 'members-open'); }
  $('open-rooms').addEventListener('click', () => { document.body.classList.toggle('nav-open'); document.body.classList.remove('members-open'); });
  $('open-members').addEventListener('click', () => {
    document.body.classList.remove('nav-open');
    // On a wide screen the panel toggles; on a phone it slides in.
    if (window.matchMedia('(max-width: 1100px)').matches) document.body.classList.toggle('members-open');
    else document.body.classList.toggle('members-hidden');
  });
  $('close-members').addEventListener('click', () => {
    if (window.matchMedia('(max-width: 1100px)').matches) document.body.classList.remove('members-open');
    else document.body.classList.add('members-hidden');
  });
  $('scrim').addEventListener('click', closeDrawers);
  window.addEventListener('keydown', (e) => { if (e.key === 'Escape') closeDrawers(); });
  window.addEventListener('hashchange', () => { const id = location.hash.slice(1); if (id && id !== S.current && S.roomsLoaded) openRoom(id); });

  // ---------------------------------------------------------------- start
  async function start() {
    $('login').hidden = true; $('app').hidden = false;
    $('me-name').textContent = S.user.name;
    $('me-avatar').textContent = initial(S.user.name);
    $('me-avatar').style.setProperty('--hue', String(hue(S.user.id)));
    loadOutbox();
    setConn('connecting');
    renderAll(true);
    connect();
    await loadRooms();
    while (!S.roomsLoaded && S.token) await new Promise((res) => setTimeout(res, 500));
    if (!S.token) return;
    const wanted = location.hash.slice(1);
    const first = (wanted && S.rooms.has(wanted) && wanted) || S.roomOrder.find((x) => S.rooms.get(x).member) || null;
    if (first) openRoom(first); else renderAll(true);
  }

  if (S.token && S.user) start(); else $('login').hidden = false;
})();
