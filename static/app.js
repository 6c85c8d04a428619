// chat browser client: plain JS, no build step. User text is only ever set through
// textContent. Protocol: docs/protocol.md.
'use strict';
const $ = (id) => document.getElementById(id);
const S = {
  token: localStorage.getItem('chat.token'),
  user: JSON.parse(localStorage.getItem('chat.user') || 'null'),
  rooms: [], current: null, ws: null, backoff: 500,
  msgs: new Map(),      // room id -> Map(message id -> message)
  last: JSON.parse(localStorage.getItem('chat.last') || '{}'), // room -> last position seen
  outbox: JSON.parse(localStorage.getItem('chat.outbox') || '[]'),
  hasMore: {},
};
const save = () => {
  localStorage.setItem('chat.last', JSON.stringify(S.last));
  localStorage.setItem('chat.outbox', JSON.stringify(S.outbox));
};

async function api(method, path, body) {
  const r = await fetch(path, {
    method, headers: Object.assign({ 'content-type': 'application/json' },
      S.token ? { authorization: 'Bearer ' + S.token } : {}),
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await r.json().catch(() => ({}));
  if (r.status === 401 && S.token) { logout(); }
  if (!r.ok) throw new Error((data.error && data.error.message) || r.statusText);
  return data;
}

async function auth(kind) {
  $('login-error').textContent = '';
  try {
    const d = await api('POST', '/api/' + kind, { username: $('username').value, password: $('password').value });
    S.token = d.token; S.user = d.user;
    localStorage.setItem('chat.token', d.token); localStorage.setItem('chat.user', JSON.stringify(d.user));
    start();
  } catch (e) { $('login-error').textContent = e.message; }
}
$('login-form').onsubmit = (e) => { e.preventDefault(); auth('login'); };
$('register').onclick = () => auth('register');

function logout() {
  localStorage.removeItem('chat.token'); localStorage.removeItem('chat.user');
  S.token = null; if (S.ws) S.ws.close(); location.reload();
}
$('logout').onclick = logout;
$('menu').onclick = () => document.body.classList.toggle('nav-open');

async function loadRooms() {
  S.rooms = await api('GET', '/api/rooms');
  const nav = $('rooms'); nav.replaceChildren();
  const groups = [['Rooms', (r) => r.member && r.kind === 'room'], ['Direct messages', (r) => r.kind === 'dm'], ['Other rooms', (r) => !r.member]];
  for (const [title, pick] of groups) {
    const list = S.rooms.filter(pick); if (!list.length) continue;
    const h = document.createElement('h3'); h.textContent = title; nav.append(h);
    for (const r of list) {
      const a = document.createElement('a'); a.href = '#' + r.id;
      a.dataset.testid = 'room-item'; a.dataset.roomId = r.id; a.dataset.roomName = r.name;
      if (!r.member) a.classList.add('other');
      if (S.current === r.id) a.classList.add('active');
      const name = document.createElement('span'); name.textContent = (r.kind === 'room' ? '# ' : '@ ') + r.name; a.append(name);
      if (r.member && r.unread > 0 && r.id !== S.current) {
        const b = document.createElement('span'); b.className = 'badge'; b.dataset.testid = 'unread-badge'; b.textContent = r.unread; a.append(b);
      }
      a.onclick = (e) => { e.preventDefault(); openRoom(r.id); document.body.classList.remove('nav-open'); };
      nav.append(a);
    }
  }
}

$('create-form').onsubmit = async (e) => {
  e.preventDefault();
  const name = $('create-name').value.trim(); if (!name) return;
  try { const r = await api('POST', '/api/rooms', { name }); $('create-name').value = ''; await loadRooms(); subscribe(r.id); openRoom(r.id); }
  catch (err) { alert(err.message); }
};

$('join').onclick = async () => {
  try { await api('POST', '/api/rooms/' + S.current + '/join'); await loadRooms(); subscribe(S.current); openRoom(S.current); }
  catch (err) { alert(err.message); }
};

function room(id) { return S.rooms.find((r) => r.id === id); }
function store(id) { if (!S.msgs.has(id)) S.msgs.set(id, new Map()); return S.msgs.get(id); }

async function openRoom(id) {
  S.current = id; location.hash = id;
  const r = room(id);
  $('room-title').textContent = r ? (r.kind === 'room' ? '# ' : '@ ') + r.name : '';
  const member = !!(r && r.member);
  $('join').hidden = member; $('composer').disabled = !member; $('send').disabled = !member;
  if (member && !S.hasMore.hasOwnProperty(id)) await loadHistory(id);
  render(); markRead(); loadRooms();
}

async function loadHistory(id, before) {
  const q = before != null ? '&before=' + before : '';
  const d = await api('GET', '/api/rooms/' + id + '/messages?limit=50' + q);
  for (const m of d.messages) add(m);
  S.hasMore[id] = d.has_more;
}

$('messages').addEventListener('scroll', async () => {
  const id = S.current; const el = $('messages');
  if (el.scrollTop > 40 || !S.hasMore[id]) return;
  const oldest = [...store(id).values()].filter((m) => m.position != null).sort((a, b) => a.position - b.position)[0];
  if (!oldest) return;
  S.hasMore[id] = false; const h = el.scrollHeight;
  await loadHistory(id, oldest.position); render(); el.scrollTop = el.scrollHeight - h;
});

function add(m) {
  const s = store(m.room);
  for (const [k, v] of s) if (v.pending && v.client_msg_id === m.client_msg_id && m.sender.id === S.user.id) s.delete(k);
  s.set(m.id, m);
  if (m.position != null && (S.last[m.room] == null || m.position > S.last[m.room])) { S.last[m.room] = m.position; save(); }
}

function render() {
  const id = S.current; const el = $('messages'); if (!id) return;
  const atBottom = el.scrollHeight - el.scrollTop - el.clientHeight < 60;
  const list = [...store(id).values()];
  for (const o of S.outbox) if (o.room === id) list.push(o);
  list.sort((a, b) => (a.position ?? Infinity) - (b.position ?? Infinity));
  el.replaceChildren();
  let day = null, prev = null;
  for (const m of list) {
    const t = new Date(m.sent_at); const d = t.toDateString();
    if (d !== day) { const li = document.createElement('li'); li.className = 'day'; li.textContent = d; el.append(li); day = d; prev = null; }
    const li = document.createElement('li'); li.className = 'msg'; li.dataset.testid = 'message';
    li.dataset.messageId = m.id || ''; li.dataset.position = m.position ?? ''; li.dataset.pending = String(!!m.pending);
    if (m.failed) li.classList.add('failed');
    if (!prev || prev !== m.sender.id) { const w = document.createElement('span'); w.className = 'who'; w.textContent = m.sender.name; li.append(w); }
    const b = document.createElement('span'); b.dataset.testid = 'message-body'; b.textContent = m.body; li.append(b);
    const tm = document.createElement('time'); tm.textContent = m.pending ? (m.failed ? 'failed' : 'sending…') : t.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }); li.append(tm);
    if (m.failed) { const r = document.createElement('button'); r.className = 'link'; r.textContent = 'Retry'; r.onclick = () => { m.failed = false; flush(); render(); }; li.append(r); }
    el.append(li); prev = m.sender.id;
  }
  if (atBottom) el.scrollTop = el.scrollHeight;
}

function markRead() {
  const id = S.current; const p = S.last[id];
  if (id && p != null && room(id)?.member && S.ws?.readyState === 1) S.ws.send(JSON.stringify({ type: 'read', room: id, position: p }));
}

$('composer').addEventListener('keydown', (e) => { if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); $('composer-form').requestSubmit(); } });
$('composer-form').onsubmit = (e) => {
  e.preventDefault();
  const body = $('composer').value; if (!body.trim() || !S.current) return;
  S.outbox.push({ pending: true, client_msg_id: crypto.randomUUID(), room: S.current, body, sender: S.user, sent_at: new Date().toISOString() });
  save(); $('composer').value = ''; render(); flush();
};

function flush() {
  if (!S.ws || S.ws.readyState !== 1) return;
  for (const o of S.outbox) if (!o.failed && !o.inflight) { o.inflight = true; S.ws.send(JSON.stringify({ type: 'send', room: o.room, client_msg_id: o.client_msg_id, body: o.body })); }
}

function subscribe(id) {
  if (S.ws?.readyState === 1) S.ws.send(JSON.stringify({ type: 'subscribe', room: id, since: S.last[id] ?? null }));
}

function setConn(state) { $('conn').dataset.state = state; $('conn').textContent = state; }

function connect() {
  setConn('connecting');
  const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws');
  S.ws = ws;
  ws.onopen = () => ws.send(JSON.stringify({ type: 'hello', token: S.token }));
  ws.onmessage = (ev) => {
    const f = JSON.parse(ev.data);
    switch (f.type) {
      case 'welcome':
        setConn('connected'); S.backoff = 500;
        for (const o of S.outbox) o.inflight = false;
        for (const r of S.rooms) if (r.member) subscribe(r.id);
        flush(); break;
      case 'message': add(f.message); if (f.message.room === S.current) { render(); markRead(); } else loadRooms(); break;
      case 'ack':
        S.outbox = S.outbox.filter((o) => o.client_msg_id !== f.client_msg_id); save(); add(f.message); render(); break;
      case 'error': {
        const o = S.outbox.find((x) => x.client_msg_id === f.ref);
        if (o) { o.inflight = false; if (!f.retryable) o.failed = true; else setTimeout(flush, 1000); save(); render(); }
        else console.warn('chat error', f);
        break;
      }
      case 'reconnect': ws.close(); break;
    }
  };
  ws.onclose = (ev) => {
    setConn('offline');
    if (ev.code === 4401) { logout(); return; }
    const wait = Math.min(10000, S.backoff) * (0.5 + Math.random());
    S.backoff = Math.min(10000, S.backoff * 2);
    setTimeout(connect, wait);
  };
  clearInterval(S.ping); S.ping = setInterval(() => { if (ws.readyState === 1) ws.send('{"type":"ping"}'); }, 25000);
}

async function start() {
  $('login').hidden = true; $('main').hidden = false; $('me').textContent = S.user.name;
  await loadRooms();
  connect();
  const first = location.hash.slice(1) || (S.rooms.find((r) => r.member) || {}).id;
  if (first) openRoom(first);
}

if (S.token && S.user) start().catch(() => logout()); else $('login').hidden = false;
