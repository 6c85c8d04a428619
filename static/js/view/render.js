// Drawing the page from the view state and the sync core. Every function redraws its part
// from scratch; user text goes in as text nodes only (dom.js `h`).
import { $, h, avatarStyle, dayLabel, fullFmt, initial, roomLabel, timeFmt } from './dom.js';

const GROUP_GAP_MS = 5 * 60 * 1000;

/**
 * `S`: the view state (main.js); `sync`: the core (core/sync.js); `actions`: `openRoom(id)`,
 * `retry(o)`, `discard(o)`, `startDm(who)`, `fillViewport()`, `toast(text)`.
 */
export function createRender({ S, sync, actions }) {
  const room = (id) => S.rooms.get(id);

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
      const unread = sync.unread(r, S.current);
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
          onclick: (e) => { e.preventDefault(); actions.openRoom(r.id); },
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

  let roomsRenderPending = false;
  function scheduleRenderRooms() {
    if (roomsRenderPending) return;
    roomsRenderPending = true;
    requestAnimationFrame(() => { roomsRenderPending = false; renderRooms(); });
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
    const t = sync.timelines.get(id);
    if (S.loadingOlder) st.textContent = 'Loading older messages…';
    else if (!t || !t.loaded) st.textContent = 'Loading…';
    else if (t.hasMore) st.textContent = '';
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

    const list = sync.timeline(id).list();
    const pending = sync.pending(id);
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
            h('button', { type: 'button', class: 'link', dataset: { testid: 'retry-send' }, onclick: () => actions.retry(o) }, 'Retry'),
            h('button', { type: 'button', class: 'link', dataset: { testid: 'discard-send' }, onclick: () => actions.discard(o) }, 'Discard'));
        } else {
          status.append(h('span', {}, sync.welcomed ? 'Sending…' : 'Waiting for connection…'));
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
    if (sync.timeline(id).loaded) actions.fillViewport();
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
          onclick: me ? null : () => actions.startDm({ user: m.id }).catch((e) => actions.toast(e.message)),
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

  function renderAll(changed) {
    renderRooms(); renderHeader(); renderMessages({ toBottom: changed }); renderMembers(); renderTyping();
  }

  return {
    dmPartner, renderRooms, scheduleRenderRooms, renderHeader, renderHistoryState, renderMessages,
    drawNow, renderMembers, renderTyping, setConn, renderAll,
  };
}
