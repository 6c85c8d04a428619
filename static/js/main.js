// The page: login, the room list, opening rooms and their history, the composer, drawers,
// and the wiring of the DOM-free core (core/sync.js) to the view (view/render.js).
// Protocol: docs/protocol.md.
import { createApi } from './core/api.js';
import { applyMemberEvent, applyRoomChanges, goneText, Invites, joinCode } from './core/governance.js';
import { bodyTooLong, MAX_BODY_CHARS, mentionNames, mentionQuery, parseMarkdown, validEmoji } from './core/protocol.js';
import { Sync } from './core/sync.js';
import { $, h, avatarStyle, fullFmt, toast, hue, initial, uuid } from './view/dom.js';
import { createGovernance } from './view/governance.js';
import { createRender } from './view/render.js';

const PAGE = 50;
const TYPING_SEND_EVERY = 2000;
const TYPING_SHOW_MS = 4000;

function safeJson(s) { try { return JSON.parse(s); } catch { return null; } }

/** The view's state; what the delivery guarantees need lives in `sync`. */
const S = {
  token: localStorage.getItem('chat.token'),
  user: safeJson(localStorage.getItem('chat.user')),
  rooms: new Map(), // id -> {id, name, kind, member, unread, last_position} (last list)
  roomOrder: [],
  moreRooms: new Map(), // other public rooms from the list's later pages ("More rooms")
  nextCursor: null, // where the next page of other public rooms starts (null: none)
  roomsLoaded: false,
  current: null,
  loadingOlder: false,
  members: new Map(), // room -> Map(user id -> {id, name, online})
  online: new Map(), // user id -> bool (newest presence known)
  typing: new Map(), // room -> Map(user id -> {name, until})
  typingSentAt: 0,
  drawnNewest: null,
  compose: null, // {kind: 'edit', room, id}: the composer edits that message
  confirmDelete: null, // message id whose delete awaits a confirmation
  palette: null, // message id whose emoji palette is open
  actionsFor: null, // message id whose actions show (a tap on a phone)
  hoverId: null, // message id under the pointer (kept across redraws)
  threadParent: null, // the open thread's first message, when not in the room's timeline
  threadToBottom: false,
  // Governance (view/governance.js).
  me: null, // GET /api/me: {id, name, admin}
  invites: new Invites(), // pending invites of the user
  blocked: new Set(), // user ids the user blocked (GET /api/blocks)
  unblocked: new Set(), // user ids unblocked on this page (history flags of theirs are stale)
  revealed: new Set(), // message ids of blocked users shown anyway
  gone: new Map(), // room -> {reason, name}: why the user lost it (kicked, banned, room_deleted)
  mutedHint: new Set(), // rooms where a send was refused `muted`
};

const api = createApi({ fetch: (...a) => fetch(...a), token: () => S.token, onUnauthorized: logout });

const sync = new Sync({
  rooms: S.rooms,
  storage: localStorage,
  uuid,
  url: () => (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws',
  token: () => S.token,
  openSocket: (url) => new WebSocket(url),
  timers: {
    setTimeout: (f, ms) => setTimeout(f, ms), clearTimeout: (t) => clearTimeout(t),
    setInterval: (f, ms) => setInterval(f, ms), clearInterval: (t) => clearInterval(t),
  },
  now: () => Date.now(),
  random: () => Math.random(),
  on: onSync,
});

const view = createRender({
  S, sync,
  actions: {
    openRoom, startDm, toast, fillViewport, openThread, showEdits,
    openUserCard: (u) => gov.openUserCard(u),
    reveal: (id) => { S.revealed.add(id); view.renderMessages({}); },
    retry: (o) => { sync.retry(o); view.renderMessages({}); },
    discard: (o) => { sync.discard(o); view.renderMessages({}); },
    react: (m, emoji, on) => {
      if (!validEmoji(emoji)) return;
      sync.react(m.room, m.id, emoji, on);
      S.palette = null; S.actionsFor = null;
      view.renderMessages({});
    },
    togglePalette: (id) => { S.palette = S.palette === id ? null : id; S.actionsFor = id; S.confirmDelete = null; view.renderMessages({}); },
    toggleActions: (id, show) => {
      S.actionsFor = show || S.actionsFor !== id ? id : null;
      if (S.palette !== S.actionsFor) S.palette = null;
      if (S.confirmDelete !== S.actionsFor) S.confirmDelete = null;
      view.renderMessages({});
    },
    startEdit,
    askDelete: (m) => { S.confirmDelete = m.id; S.actionsFor = m.id; S.palette = null; view.renderMessages({}); },
    cancelDelete: () => { S.confirmDelete = null; view.renderMessages({}); },
    remove: (m) => {
      S.confirmDelete = null; S.actionsFor = null;
      if (S.compose && S.compose.id === m.id) cancelEdit();
      sync.remove(m.room, m.id);
      view.renderMessages({});
    },
  },
});
const room = (id) => S.rooms.get(id);
const gov = createGovernance({ S, api, view, actions: { loadRooms, openRoom, startDm, loadMembers, forgetRoom, toast } });
$('invite-people').addEventListener('click', () => gov.openInvite());
$('members-invite').addEventListener('click', () => gov.openInvite());
$('room-settings').addEventListener('click', () => gov.openSettings());
$('new-group').addEventListener('click', () => gov.openGroupPicker());
$('admin-open').addEventListener('click', () => gov.openAdmin());

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
  sync.stop();
  location.hash = '';
  location.reload();
}
$('logout').addEventListener('click', logout);

// ---------------------------------------------------------------- rooms
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
      if (r.member) S.gone.delete(r.id);
      if (r.muted_until) S.mutedHint.delete(r.id); // the mute's end is known: it takes over
    }
    for (const id of [...S.rooms.keys()]) if (!seen.has(id)) { forgetRoom(id); S.rooms.delete(id); }
    S.roomOrder = list.map((r) => r.id);
    S.roomsLoaded = true; sync.roomsLoaded = true;
    for (const r of list) if (r.kind === 'dm' && r.member && !S.members.has(r.id)) loadMembers(r.id);
    sync.syncSubscriptions();
    view.renderRooms();
    if (S.current) view.renderHeader();
  } catch (e) {
    if (e.status === 401) return;
    roomsFailures++;
    const box = $('rooms-error');
    box.textContent = 'Could not load rooms (' + e.message + '). Retrying…';
    box.hidden = false;
  } finally {
    // No polling: the list is refreshed on `rooms_changed` (a DM or room of ours appeared
    // or went, on any device), on reconnect and after our own actions. Only a failed load
    // is tried again, with backoff.
    clearTimeout(roomsTimer);
    if (S.token && roomsFailures) roomsTimer = setTimeout(loadRooms, Math.min(30000, 1000 * 2 ** roomsFailures));
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
  sync.forget(id);
  S.members.delete(id); S.typing.delete(id); S.mutedHint.delete(id);
}

$('new-room').addEventListener('click', () => {
  const f = $('create-form'); f.hidden = !f.hidden; if (!f.hidden) $('create-name').focus();
});
$('create-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const name = $('create-name').value.trim(); if (!name) return;
  const visibility = $('create-visibility').value === 'private' ? 'private' : 'public';
  try {
    const r = await api('POST', '/api/rooms', { name, visibility });
    $('create-name').value = ''; $('create-visibility').value = 'public'; $('create-form').hidden = true;
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
    S.gone.delete(id);
    await loadRooms();
    if (S.current === id) openRoom(id);
  } catch (err) {
    toast(err.code === 'banned' ? 'You are banned from this room.' : err.code === 'forbidden' ? 'This room is private: you need an invite.' : err.message);
  }
});
$('leave').addEventListener('click', async () => {
  const id = S.current; const r = room(id); if (!r) return;
  try {
    try {
      await api('POST', '/api/rooms/' + id + '/leave');
    } catch (e) {
      if (e.code === 'owner_must_transfer') throw new Error('You own this room: make someone else the owner first (their card in the member list), or delete the room.');
      throw e;
    }
    forgetRoom(id);
    await loadRooms();
    const next = S.roomOrder.find((x) => x !== id && S.rooms.get(x)?.member);
    if (next) openRoom(next); else { S.current = null; location.hash = ''; view.renderAll(); }
  } catch (err) { toast(err.message); }
});

// ---------------------------------------------------------------- open room, history
async function openRoom(id) {
  closeDrawers();
  const changed = S.current !== id;
  S.current = id;
  if (location.hash.slice(1) !== id) history.replaceState(null, '', '#' + id);
  if (changed) {
    $('composer').value = ''; S.loadingOlder = false; $('jump').hidden = true;
    S.compose = null; S.confirmDelete = null; S.palette = null; S.actionsFor = null;
    if (sync.thread && sync.thread.room !== id) closeThread();
  }
  view.renderAll(changed);
  const r = room(id);
  if (!r || !r.member) return;
  if (!sync.timeline(id).loaded) {
    try { await loadHistory(id); } catch (e) { if (S.current === id) $('history-state').textContent = 'Could not load history: ' + e.message; }
    if (S.current !== id) return;
    view.drawNow({ toBottom: true });
  }
  loadMembers(id).then(() => { if (S.current === id) view.renderMembers(); }).catch(() => {});
  sync.markRead(id);
  view.renderRooms();
}

async function loadHistory(id, before) {
  const q = before != null ? '&before=' + encodeURIComponent(before) : '';
  const d = await api('GET', `/api/rooms/${id}/messages?limit=${PAGE}${q}`);
  sync.addHistory(id, d);
}

async function loadOlder() {
  const id = S.current;
  const t = id && sync.timelines.get(id);
  if (!t || S.loadingOlder || !t.hasMore || !t.loaded) return;
  const before = t.oldest(); if (before === null) return;
  S.loadingOlder = true;
  $('history-state').textContent = 'Loading older messages…';
  const sc = $('scroller');
  try {
    await loadHistory(id, before);
    if (S.current !== id) return;
    const fromBottom = sc.scrollHeight - sc.scrollTop;
    S.loadingOlder = false;
    view.drawNow({});
    sc.scrollTop = sc.scrollHeight - fromBottom;
  } catch (e) {
    toast('Could not load older messages: ' + e.message);
  } finally {
    S.loadingOlder = false;
    if (S.current === id) view.renderHistoryState();
  }
}

/** Loads older pages until the view can scroll (or there are none). */
function fillViewport() {
  const sc = $('scroller');
  const t = S.current && sync.timelines.get(S.current);
  if (t && t.hasMore && !S.loadingOlder && sc.scrollHeight <= sc.clientHeight + 100) setTimeout(loadOlder, 0);
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
    map.set(m.id, { id: m.id, name: m.name, online: !!m.online, role: m.role || 'member', muted_until: m.muted_until ?? null });
    S.online.set(m.id, !!m.online);
  }
  S.members.set(id, map);
  if (room(id) && room(id).kind === 'dm') view.renderRooms();
  return map;
}

function markRead() { if (S.current) sync.markRead(S.current); }

// ---------------------------------------------------------------- composer
const composer = $('composer');
attachMentions(composer, $('mention-list'));
attachMentions($('thread-composer'), $('thread-mention-list'));
$('thread-composer').addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && !e.defaultPrevented) { e.preventDefault(); $('thread-form').requestSubmit(); }
});
composer.addEventListener('keydown', (e) => {
  if (e.key === 'Escape' && S.compose) { e.preventDefault(); cancelEdit(); return; }
  if (e.key === 'ArrowUp' && !composer.value && !S.compose && S.current) {
    // Up in an empty composer edits one's newest message.
    const mine = sync.timelines.get(S.current)?.list().filter((m) => m.sender.id === S.user.id && !m.deleted).at(-1);
    if (mine) { e.preventDefault(); startEdit(mine); return; }
  }
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && !e.defaultPrevented) { e.preventDefault(); $('composer-form').requestSubmit(); }
});
composer.addEventListener('input', () => {
  autosize();
  const now = Date.now();
  if (composer.value.trim() && S.current && now - S.typingSentAt > TYPING_SEND_EVERY) {
    if (sync.typing(S.current)) S.typingSentAt = now;
  }
});
function autosize() { composer.style.height = 'auto'; composer.style.height = Math.min(composer.scrollHeight, 160) + 'px'; }

$('composer-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const body = composer.value;
  const id = S.current;
  if (!id || !room(id)?.member) return;
  if (bodyTooLong(body)) { toast(`A message is at most ${MAX_BODY_CHARS.toLocaleString('en')} characters.`); return; }
  const ed = S.compose;
  if (ed && ed.kind === 'edit' && ed.room === id) {
    if (!body.trim()) { toast('A message cannot be empty: delete it instead.'); return; }
    const m = sync.timelines.get(id)?.get(ed.id);
    if (!m || m.body !== body) sync.edit(id, ed.id, body);
    S.compose = null;
    composer.value = ''; autosize();
    view.renderComposeContext();
    view.renderMessages({});
    return;
  }
  if (!body.trim()) return;
  sync.submit(id, body, { mentions: mentionIds(id, body) });
  composer.value = ''; autosize(); S.typingSentAt = 0;
  view.renderMessages({ toBottom: true });
});

/** The member ids of `room` that `body` mentions by @name (the server resolves them too). */
function mentionIds(roomId, body) {
  const ms = S.members.get(roomId);
  if (!ms) return [];
  const byName = new Map([...ms.values()].map((m) => [m.name.toLowerCase(), m.id]));
  return mentionNames(parseMarkdown(body)).map((n) => byName.get(n.toLowerCase())).filter(Boolean);
}

/** The composer edits `m` (the user's own message). */
function startEdit(m) {
  S.compose = { kind: 'edit', room: m.room, id: m.id };
  S.actionsFor = null; S.palette = null;
  composer.value = m.body;
  autosize();
  view.renderComposeContext();
  view.renderMessages({});
  composer.focus();
  composer.setSelectionRange(composer.value.length, composer.value.length);
}
function cancelEdit() {
  if (!S.compose) return;
  S.compose = null;
  composer.value = ''; autosize();
  view.renderComposeContext();
}
$('compose-ctx-cancel').addEventListener('click', cancelEdit);

// ---------------------------------------------------------------- threads
async function openThread(roomId, parentId) {
  if (!roomId || !parentId) return;
  const fresh = !sync.thread || sync.thread.parent !== parentId || sync.thread.room !== roomId;
  sync.openThread(roomId, parentId);
  document.body.classList.remove('nav-open', 'members-open');
  S.actionsFor = null; S.palette = null;
  if (fresh) { S.threadParent = null; S.threadToBottom = true; $('thread-composer').value = ''; }
  view.renderThread();
  if (!fresh) return;
  try {
    const page = await api('GET', `/api/rooms/${encodeURIComponent(roomId)}/messages/${encodeURIComponent(parentId)}/replies?limit=100`);
    sync.addThreadPage(roomId, parentId, page);
  } catch (e) {
    if (sync.thread && sync.thread.parent === parentId) { sync.thread.timeline.loaded = true; toast('Could not load the thread: ' + e.message); }
  }
  S.threadToBottom = true;
  view.renderThread();
  if (window.matchMedia('(hover: hover)').matches) $('thread-composer').focus();
}
function closeThread() {
  sync.closeThread();
  S.threadParent = null;
  view.renderThread();
}
$('close-thread').addEventListener('click', closeThread);
const threadComposer = $('thread-composer');
$('thread-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const th = sync.thread;
  const body = threadComposer.value;
  if (!th || !body.trim() || !room(th.room)?.member) return;
  if (bodyTooLong(body)) { toast(`A message is at most ${MAX_BODY_CHARS.toLocaleString('en')} characters.`); return; }
  sync.submit(th.room, body, { reply_to: th.parent, mentions: mentionIds(th.room, body) });
  threadComposer.value = '';
  S.threadToBottom = true;
  view.renderMessages({});
});

// ---------------------------------------------------------------- edit history
async function showEdits(m) {
  const dlg = $('edits-dialog');
  const list = $('edits-list');
  list.replaceChildren(h('li', { class: 'muted' }, 'Loading…'));
  if (!dlg.open) dlg.showModal();
  try {
    const d = await api('GET', `/api/rooms/${encodeURIComponent(m.room)}/messages/${encodeURIComponent(m.id)}/edits`);
    const edits = Array.isArray(d.edits) ? d.edits.slice() : [];
    // An edit this page has seen live may not be in the store yet: shown as the newest.
    const last = edits[edits.length - 1];
    if (m.edited_at && !m.deleted && (!last || Date.parse(last.edited_at) < Date.parse(m.edited_at))) edits.push({ body: m.body, edited_at: m.edited_at });
    if (!edits.length) { list.replaceChildren(h('li', { class: 'muted' }, m.deleted ? 'The message was deleted.' : 'No edits.')); return; }
    list.replaceChildren(...edits.map((x, i) => {
      const t = new Date(x.edited_at);
      return h('li', { class: 'edit-item', dataset: { testid: 'edit-history-item' } },
        h('div', { class: 'edit-when muted' }, (i === 0 ? 'Original · ' : 'Edited · ') + (isNaN(t) ? '' : fullFmt.format(t))),
        h('div', { class: 'body', dataset: { testid: 'edit-history-body' } }, ...view.renderTokens(parseMarkdown(String(x.body ?? '')))));
    }));
  } catch (e) {
    list.replaceChildren(h('li', { class: 'form-error' }, 'Could not load the history: ' + e.message));
  }
}
$('close-edits').addEventListener('click', () => $('edits-dialog').close());
$('edits-dialog').addEventListener('click', (e) => { if (e.target === $('edits-dialog')) $('edits-dialog').close(); });

// ---------------------------------------------------------------- mentions autocomplete
/** Suggests the open room's members when `@…` is typed in `ta`; the list is `listEl`. */
function attachMentions(ta, listEl) {
  let items = []; let index = 0; let at = null;
  const hide = () => { listEl.hidden = true; items = []; at = null; };
  const choose = (u) => {
    if (!at) return;
    const v = ta.value;
    const end = at.start + 1 + at.query.length;
    const insert = '@' + u.name + ' ';
    ta.value = v.slice(0, at.start) + insert + v.slice(end);
    const caret = at.start + insert.length;
    ta.setSelectionRange(caret, caret);
    hide();
    ta.focus();
    ta.dispatchEvent(new Event('input'));
  };
  const draw = () => {
    listEl.replaceChildren(...items.map((u, i) => h('li', { role: 'option', 'aria-selected': String(i === index) },
      h('button', {
        type: 'button', class: 'mention-option' + (i === index ? ' active' : ''), dataset: { testid: 'mention-option', userName: u.name },
        onmousedown: (e) => e.preventDefault(), onclick: () => choose(u),
      }, h('span', { class: 'avatar small', style: avatarStyle(u.id) }, initial(u.name)), h('span', {}, u.name)))));
    listEl.hidden = !items.length;
  };
  const update = () => {
    const q = mentionQuery(ta.value, ta.selectionStart);
    const roomId = S.current;
    if (!q || !roomId || ta.selectionStart !== ta.selectionEnd) { hide(); return; }
    const ms = S.members.get(roomId);
    if (!ms) { loadMembers(roomId).then(() => { if (S.current === roomId) update(); }).catch(() => {}); return; }
    const needle = q.query.toLowerCase();
    const found = [...ms.values()].filter((u) => u.id !== S.user.id && u.name.toLowerCase().startsWith(needle))
      .sort((a, b) => a.name.localeCompare(b.name)).slice(0, 6);
    if (!at || at.start !== q.start) index = 0;
    at = q; items = found; index = Math.min(index, Math.max(0, items.length - 1));
    draw();
  };
  ta.addEventListener('input', update);
  ta.addEventListener('click', update);
  ta.addEventListener('blur', () => setTimeout(hide, 150));
  ta.addEventListener('keydown', (e) => {
    if (listEl.hidden || !items.length) return;
    if (e.key === 'ArrowDown' || e.key === 'ArrowUp') {
      e.preventDefault();
      index = (index + (e.key === 'ArrowDown' ? 1 : items.length - 1)) % items.length;
      draw();
    } else if (e.key === 'Enter' || e.key === 'Tab') {
      e.preventDefault(); e.stopImmediatePropagation();
      choose(items[index]);
    } else if (e.key === 'Escape') {
      e.preventDefault(); e.stopPropagation(); hide();
    }
  });
}

// ---------------------------------------------------------------- what the core reports
function clearTyping(roomId, userId) {
  const t = S.typing.get(roomId);
  if (t && t.delete(userId) && roomId === S.current) view.renderTyping();
}

function onSync(event, d) {
  switch (event) {
    case 'conn': view.setConn(d.state, d.detail); break;
    case 'closed':
      // The token was refused: ask the API whether the session is still valid (a 401 logs out).
      if (d.code === 4401) api('GET', '/api/rooms').catch(() => {});
      view.renderMessages({});
      break;
    case 'welcome':
      S.user = d.user;
      markRead();
      view.renderMessages({});
      if (d.again) {
        // Presence changes while we were away were not seen: ask again.
        for (const id of S.members.keys()) {
          if (id === S.current || room(id)?.kind === 'dm') loadMembers(id).then(() => { if (id === S.current) view.renderMembers(); }).catch(() => {});
        }
        loadRooms();
        gov.loadInvites(); gov.loadBlocks();
      }
      break;
    case 'subscribed': if (d.room === S.current) markRead(); break;
    case 'unsubscribed':
      if (d.reason !== 'resync') {
        const why = goneText(d.reason);
        if (why) {
          // Kicked, banned, or the room was deleted: its messages go, and the page says why.
          const name = room(d.room)?.name ?? S.gone.get(d.room)?.name ?? null;
          S.gone.set(d.room, { reason: d.reason, name });
          toast((name ? name + ': ' : '') + why);
        }
        forgetRoom(d.room);
        loadRooms().then(() => view.renderAll()).catch(() => {});
      }
      break;
    case 'message': {
      const m = d.message;
      clearTyping(m.room, m.sender.id);
      if (m.room === S.current) { view.renderMessages({}); markRead(); view.renderTyping(); }
      view.scheduleRenderRooms();
      break;
    }
    case 'ack':
      if (!d.room || d.room === S.current) { view.renderMessages({ toBottom: !d.event }); markRead(); }
      break;
    case 'event':
      if (d.changed && d.event.room === S.current) view.renderMessages({});
      if (d.changed) view.scheduleRenderRooms();
      break;
    case 'notice': onNotice(d.event, d.fresh); break;
    case 'invite': gov.invited(d.invite); break;
    case 'refused':
      if (d.code === 'muted') { S.mutedHint.add(d.room); loadRooms(); if (d.room === S.current) view.renderHeader(); }
      break;
    case 'read': view.scheduleRenderRooms(); break;
    case 'outbox': view.renderMessages({}); break;
    case 'reset': if (d.room === S.current) openRoom(d.room); break;
    case 'rooms-stale': loadRooms(); break;
    case 'typing': {
      const f = d;
      if (!f.user || f.user.id === S.user.id) break;
      if (!S.typing.has(f.room)) S.typing.set(f.room, new Map());
      S.typing.get(f.room).set(f.user.id, { name: f.user.name, until: Date.now() + TYPING_SHOW_MS });
      if (f.room === S.current) view.renderTyping();
      setTimeout(view.renderTyping, TYPING_SHOW_MS + 50);
      break;
    }
    case 'presence': {
      const f = d;
      if (!f.user) break;
      S.online.set(f.user.id, !!f.online);
      for (const ms of S.members.values()) { const m = ms.get(f.user.id); if (m) m.online = !!f.online; }
      if (!f.online) clearTyping(f.room, f.user.id);
      if (f.room === S.current) view.renderMembers();
      view.scheduleRenderRooms();
      break;
    }
    case 'member': {
      const f = d;
      if (!f.user) break;
      const ms = S.members.get(f.room);
      if (ms) {
        if (f.event === 'joined') ms.set(f.user.id, { id: f.user.id, name: f.user.name, online: S.online.get(f.user.id) ?? false });
        else ms.delete(f.user.id);
      }
      if (f.user.id === S.user.id || !ms) loadRooms();
      else loadMembers(f.room).then(() => { if (f.room === S.current) view.renderMembers(); }).catch(() => {});
      if (f.room === S.current) view.renderMembers();
      break;
    }
    case 'error': console.warn('chat: error frame', d); break;
    default: break;
  }
}

/** A `member` or `room` event of a room of ours: the room, header and member list follow it. */
function onNotice(e, fresh) {
  if (fresh) {
    const r = room(e.room);
    if (e.kind === 'room') {
      if (applyRoomChanges(r, e.changes)) view.scheduleRenderRooms();
    } else {
      const ch = applyMemberEvent(e, { members: S.members.get(e.room), room: r, me: S.user.id });
      if (e.user.id === S.user.id) {
        if (e.action === 'unmuted') S.mutedHint.delete(e.room);
        if (e.action === 'kicked' || e.action === 'banned') S.gone.set(e.room, { reason: e.action, name: r ? r.name : null });
        if (ch.me) loadRooms();
      }
      if (ch.members && e.room === S.current) view.renderMembers();
    }
  }
  if (e.room === S.current) { view.renderHeader(); view.renderMessages({}); }
}

$('banner-retry').addEventListener('click', () => sync.reconnectNow());
window.addEventListener('online', () => { if (!sync.conn.active && S.token) sync.reconnectNow(); });
// Coming back to the tab refreshes the room list at once (new rooms and DMs).
document.addEventListener('visibilitychange', () => { if (!document.hidden && S.token && S.roomsLoaded) loadRooms(); });
window.addEventListener('focus', () => { if (S.token && S.roomsLoaded) loadRooms(); });

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
window.addEventListener('keydown', (e) => {
  if (e.key !== 'Escape') return;
  closeDrawers();
  if (S.palette || S.confirmDelete || S.actionsFor) { S.palette = null; S.confirmDelete = null; S.actionsFor = null; view.renderMessages({}); }
});
// A click elsewhere closes an open palette or actions.
document.addEventListener('click', (e) => {
  if ((S.palette || S.actionsFor || S.confirmDelete) && !e.target.closest('.msg')) {
    S.palette = null; S.actionsFor = null; S.confirmDelete = null; view.renderMessages({});
  }
});
window.addEventListener('hashchange', () => {
  const code = joinCode(location.hash);
  if (code) { if (S.token && S.roomsLoaded) gov.openJoinLink(code); return; }
  const id = location.hash.slice(1); if (id && id !== S.current && S.roomsLoaded) openRoom(id);
});

// ---------------------------------------------------------------- start
async function start() {
  $('login').hidden = true; $('app').hidden = false;
  $('me-name').textContent = S.user.name;
  $('me-avatar').textContent = initial(S.user.name);
  $('me-avatar').style.setProperty('--hue', String(hue(S.user.id)));
  view.setConn('connecting');
  sync.start(S.user);
  view.renderAll(true);
  gov.loadMe(); gov.loadInvites(); gov.loadBlocks();
  await loadRooms();
  while (!S.roomsLoaded && S.token) await new Promise((res) => setTimeout(res, 500));
  if (!S.token) return;
  const code = joinCode(location.hash);
  const wanted = code ? '' : location.hash.slice(1);
  const first = (wanted && S.rooms.has(wanted) && wanted) || S.roomOrder.find((x) => S.rooms.get(x).member) || null;
  if (first) openRoom(first); else view.renderAll(true);
  // An invite link (`/#join=CODE`) opened, before or after logging in.
  if (code) gov.openJoinLink(code);
}

if (S.token && S.user) start(); else $('login').hidden = false;
