// Drawing the page from the view state and the sync core. Every function redraws its part
// from scratch; user text goes in as text nodes only (dom.js `h`).
import { describeEvent, goneText, HIDDEN_TEXT, isHidden } from '../core/governance.js';
import { can, mutedAt } from '../core/permissions.js';
import { parseMarkdown } from '../core/protocol.js';
import { mentionsMe, reactionsOf } from '../core/timeline.js';
import { $, h, avatarStyle, dayLabel, fullFmt, initial, roomLabel, timeFmt } from './dom.js';

const GROUP_GAP_MS = 5 * 60 * 1000;
/** The reactions the palette offers (any emoji of others' reactions can be added by clicking it). */
export const EMOJI = ['👍', '❤️', '😂', '🎉', '😮', '😢', '👀', '✅'];

/**
 * `S`: the view state (main.js); `sync`: the core (core/sync.js); `actions`: `openRoom(id)`,
 * `retry(o)`, `discard(o)`, `startDm(who)`, `fillViewport()`, `toast(text)`,
 * `openUserCard(user)`, `reveal(messageId)`, …
 */
export function createRender({ S, sync, actions }) {
  const room = (id) => S.rooms.get(id);
  /** Whether the user may do `action` in room `r` (core/permissions.js). */
  const may = (r, action) => can(r, action, { serverAdmin: !!(S.me && S.me.admin) });
  /** Whether the user cannot send in `r` now (muted). */
  const mutedIn = (r) => !!r && (S.mutedHint.has(r.id) || mutedAt(r.muted_until, Date.now()));

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
      const group = !r.member ? 'other' : r.kind === 'dm' || r.kind === 'group' ? 'dm' : 'room';
      const unread = sync.unread(r, S.current);
      const mentions = unread ? sync.unreadMentions(r, S.current) : 0;
      total += unread;
      const partner = r.kind === 'dm' ? dmPartner(r) : null;
      const online = partner ? (S.online.get(partner.id) ?? partner.online) : false;
      const icon = r.kind === 'dm'
        ? h('span', { class: 'avatar small', style: avatarStyle(partner ? partner.id : r.id) }, initial(r.name),
          h('i', { class: 'presence', dataset: { online: String(!!online) } }))
        : r.kind === 'group' ? h('span', { class: 'avatar small group-icon', style: avatarStyle(r.id), 'aria-hidden': 'true' }, initial(r.name))
          : h('span', { class: 'hash', 'aria-hidden': 'true', title: r.visibility === 'private' ? 'Private room' : null }, r.visibility === 'private' ? '🔒' : '#');
      const li = h('li', {},
        h('a', {
          href: '#' + r.id,
          class: 'room-item' + (id === S.current ? ' active' : '') + (unread ? ' has-unread' : ''),
          dataset: { testid: 'room-item', roomId: r.id, roomName: r.name, kind: r.kind, visibility: r.visibility || null, member: String(r.member), unread: String(unread), mentions: String(mentions) },
          onclick: (e) => { e.preventDefault(); actions.openRoom(r.id); },
        }, icon, h('span', { class: 'room-name', dataset: { testid: 'room-name' } }, r.name),
        mentions ? h('span', { class: 'badge mention-badge', title: `${mentions} mention${mentions === 1 ? '' : 's'} of you`, dataset: { testid: 'mention-badge' } }, '@') : null,
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
      const n = ms ? ms.size : r.member ? null : r.members;
      sub.textContent = Number.isSafeInteger(n) ? `${n} member${n === 1 ? '' : 's'}` : '';
    }
    title.dataset.kind = r ? r.kind : '';
    title.dataset.visibility = (r && r.visibility) || '';
    const topic = r && r.kind !== 'dm' && typeof r.topic === 'string' ? r.topic : '';
    $('room-topic').textContent = topic;
    $('room-topic').title = topic;
    $('room-topic').hidden = !topic;
    $('join').hidden = !r || member || r.visibility === 'private';
    $('leave').hidden = !r || !member || r.kind === 'dm';
    $('open-members').hidden = !member;
    $('invite-people').hidden = !member || !may(r, 'invite');
    $('members-invite').hidden = $('invite-people').hidden;
    $('room-settings').hidden = !member || !(may(r, 'editSettings') || may(r, 'deleteRoom'));
    $('composer-form').hidden = !member;
    renderMuted(member ? r : null);
    const ms = r && S.members.get(r.id);
    $('member-count').textContent = ms ? String(ms.size) : '';
    document.body.classList.toggle('no-room', !member);
  }

  let mutedTimer = null;
  /** The composer is disabled, with a notice, while the user is muted in `r`. */
  function renderMuted(r) {
    const muted = mutedIn(r);
    const notice = $('composer-notice');
    notice.hidden = !muted;
    $('composer').disabled = muted; $('send').disabled = muted;
    $('composer-form').classList.toggle('muted-composer', muted);
    clearTimeout(mutedTimer);
    // Slow mode (moderators and up are exempt): said in the composer's placeholder.
    const slow = r && r.slow_mode_secs > 0 && !may(r, 'deleteOthers') ? r.slow_mode_secs : 0;
    $('composer').placeholder = slow ? `Message (slow mode: one every ${slow} s)` : 'Message';
    if (!muted) return;
    const until = Date.parse(r.muted_until);
    const forever = !(until < Date.parse('9999-01-01T00:00:00Z'));
    notice.textContent = forever || Number.isNaN(until) ? 'You are muted in this room.' : `You are muted in this room until ${fullFmt.format(new Date(until))}.`;
    // The end of a mute re-enables the composer by itself.
    if (!forever && until > Date.now()) {
      mutedTimer = setTimeout(() => { if (S.current === r.id) { S.mutedHint.delete(r.id); renderHeader(); } }, Math.min(until - Date.now() + 50, 2 ** 31 - 1));
    }
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
    // Why the user lost the room (kicked, banned, deleted), in place of its messages.
    const gone = id ? S.gone.get(id) : null;
    const goneTitle = (r) => h('h3', { class: 'gone-reason', dataset: { testid: 'gone-reason', reason: gone.reason } },
      (!r && gone.name ? roomLabel({ kind: 'room', name: gone.name }) + ': ' : '') + goneText(gone.reason));
    if (!id || !r) {
      ol.replaceChildren();
      empty.replaceChildren(h('div', { class: 'empty-card' }, gone ? goneTitle(null) : h('h3', {}, S.current ? 'This room does not exist (any more).' : 'Pick a room'),
        h('p', { class: 'muted' }, 'Choose a room on the left, create one, or start a direct message.')));
      empty.hidden = false;
      return;
    }
    if (!r.member) {
      ol.replaceChildren();
      const joinable = r.visibility !== 'private' && !(gone && gone.reason === 'banned');
      empty.replaceChildren(h('div', { class: 'empty-card' }, gone ? goneTitle(r) : h('h3', {}, 'You are not in ' + roomLabel(r) + ' yet'),
        h('p', { class: 'muted' }, joinable ? 'Join it to read the conversation and write.' : 'You need an invite to join it.'),
        joinable ? h('button', { class: 'primary', type: 'button', dataset: { testid: 'join-room-cta' }, onclick: () => $('join').click() }, 'Join ' + roomLabel(r)) : null));
      empty.hidden = false;
      return;
    }
    empty.hidden = true;
    const atBottom = sc.scrollHeight - sc.scrollTop - sc.clientHeight < 80;

    const list = sync.timeline(id).list();
    const pending = sync.pending(id);
    const items = list.map((m) => ({ m, pending: null }))
      .concat(pending.map((o) => ({ m: pendingMessage(o), pending: o })));
    const ops = sync.pendingOps(id);

    const frag = document.createDocumentFragment();
    let day = null; let group = null; let prev = null;
    // Membership and settings changes as system lines, between the messages by position.
    const notices = sync.timeline(id).notices();
    let ni = 0;
    const noticesUpTo = (pos) => {
      for (; ni < notices.length && (pos === null || notices[ni].position < pos); ni++) {
        frag.append(noticeLine(notices[ni]));
        group = null;
      }
    };
    for (const { m, pending: o } of items) {
      noticesUpTo(m.position ?? null);
      const t = new Date(m.sent_at);
      const d = isNaN(t) ? '' : t.toDateString();
      if (d !== day) {
        frag.append(h('li', { class: 'day-sep', dataset: { testid: 'day-separator' } }, h('span', {}, isNaN(t) ? '' : dayLabel(t))));
        day = d; group = null;
      }
      // A reply starts a group of its own (its quote goes above it).
      const sameGroup = group && prev && prev.sender.id === m.sender.id && (t - new Date(prev.sent_at)) < GROUP_GAP_MS && !m.reply_to;
      if (!sameGroup) { group = groupItem(m); frag.append(group); }
      group.lastChild.append(messageRow(m, o, ops, {}));
      prev = m;
    }
    noticesUpTo(null);
    ol.replaceChildren(frag);
    // Scrolled up reading older messages: stay there, and offer a way down when new ones come.
    const newest = list.length ? list[list.length - 1].id : null;
    if (opts.toBottom || atBottom) { sc.scrollTop = sc.scrollHeight; $('jump').hidden = true; }
    else if (newest && S.drawnNewest && S.drawnNewest.room === id && S.drawnNewest.id !== newest) $('jump').hidden = false;
    S.drawnNewest = { room: id, id: newest };
    if (sync.timeline(id).loaded) actions.fillViewport();
    renderThread();
  }

  /** A `member` or `room` event as one line of text. */
  function noticeLine(e) {
    const t = new Date(e.sent_at);
    return h('li', { class: 'sys-line', dataset: { testid: 'system-line', kind: e.kind, action: e.action || null, position: e.position } },
      h('span', {}, describeEvent(e, { fmtTime: (x) => { const d = new Date(x); return isNaN(d) ? String(x) : fullFmt.format(d); } })),
      isNaN(t) ? null : h('time', { datetime: e.sent_at, title: fullFmt.format(t) }, timeFmt.format(t)));
  }

  const pendingMessage = (o) => ({ id: null, room: o.room, sender: S.user, body: o.body, client_msg_id: o.client_msg_id, position: null, sent_at: o.sent_at, reply_to: o.reply_to });

  /** A group: avatar, sender and time, then its rows (appended to its last child). */
  function groupItem(m) {
    const t = new Date(m.sent_at);
    const own = m.sender.id === S.user.id;
    const body = h('div', { class: 'group-body' },
      h('div', { class: 'group-head' },
        own || !m.id ? h('span', { class: 'sender', dataset: { testid: 'message-sender' } }, m.sender.name)
          : h('button', { type: 'button', class: 'sender link-like', title: 'About ' + m.sender.name, dataset: { testid: 'message-sender' }, onclick: (e) => { e.stopPropagation(); actions.openUserCard(m.sender); } }, m.sender.name),
        own ? h('span', { class: 'you' }, 'you') : null,
        h('time', { datetime: m.sent_at, title: isNaN(t) ? '' : fullFmt.format(t) }, isNaN(t) ? '' : timeFmt.format(t))));
    return h('li', { class: 'group' + (own ? ' own' : ''), dataset: { testid: 'message-group', senderId: m.sender.id, senderName: m.sender.name } },
      h('span', { class: 'avatar', style: avatarStyle(m.sender.id), 'aria-hidden': 'true' }, initial(m.sender.name)), body);
  }

  /** Markdown tokens (core/protocol.js) as DOM nodes: elements and text nodes only. */
  function renderTokens(tokens) {
    const me = S.user ? S.user.name.toLowerCase() : '';
    const out = [];
    for (const tok of tokens) {
      switch (tok.t) {
        case 'text': out.push(document.createTextNode(tok.text)); break;
        case 'bold': out.push(h('strong', {}, ...renderTokens(tok.children))); break;
        case 'italic': out.push(h('em', {}, ...renderTokens(tok.children))); break;
        case 'code': out.push(h('code', { class: 'inline-code' }, tok.text)); break;
        case 'codeblock': out.push(h('pre', { class: 'codeblock', dataset: { lang: tok.lang || null } }, h('code', {}, tok.text))); break;
        case 'link': out.push(h('a', { href: tok.href, target: '_blank', rel: 'noopener noreferrer', class: 'msg-link', dataset: { testid: 'message-link' } }, ...renderTokens(tok.children))); break;
        case 'mention': out.push(h('span', { class: 'mention' + (tok.name.toLowerCase() === me ? ' me' : ''), dataset: { testid: 'mention' } }, '@' + tok.name)); break;
        default: break;
      }
    }
    return out;
  }

  /** A body as the page shows it (markdown subset; a deleted message says so). */
  function bodyOf(m) {
    if (m.deleted) return h('div', { class: 'body deleted', dataset: { testid: 'message-body' } }, 'message deleted');
    return h('div', { class: 'body', dataset: { testid: 'message-body' } }, ...renderTokens(parseMarkdown(m.body)));
  }

  const snippet = (text) => { const c = [...text.replace(/\s+/g, ' ')]; return c.length > 90 ? c.slice(0, 90).join('') + '…' : c.join(''); };

  /** The quote above a reply: who and what it answers; a click opens the thread. */
  function replyQuote(m) {
    const parent = sync.timelines.get(m.room)?.get(m.reply_to) || null;
    const text = !parent ? 'an earlier message' : parent.deleted ? 'message deleted' : snippet(parent.body);
    return h('button', {
      type: 'button', class: 'reply-quote', dataset: { testid: 'reply-quote', replyTo: m.reply_to },
      title: 'Open the thread', onclick: (e) => { e.stopPropagation(); actions.openThread(m.room, m.reply_to); },
    }, parent ? h('strong', {}, parent.sender.name) : null, parent ? ' ' : null, h('span', {}, text));
  }

  /** The reactions row: counts, mine highlighted, who reacted in the title; a click toggles mine. */
  function reactionsRow(m) {
    const list = reactionsOf(m, S.user.id);
    if (!list.length) return null;
    return h('div', { class: 'reactions', dataset: { testid: 'reactions' } }, ...list.map((r) => {
      const names = r.users.map((u) => (u.id === S.user.id ? 'you' : u.name || '?'));
      const others = r.count - r.users.length;
      const who = names.join(', ') + (others > 0 ? (names.length ? ` and ${others} more` : `${others} people`) : '');
      return h('button', {
        type: 'button', class: 'reaction' + (r.me ? ' mine' : ''), title: who + ' reacted with ' + r.emoji,
        'aria-pressed': String(r.me), dataset: { testid: 'reaction', emoji: r.emoji, count: r.count, me: String(r.me) },
        onclick: (e) => { e.stopPropagation(); actions.react(m, r.emoji, !r.me); },
      }, h('span', { class: 'emoji' }, r.emoji), h('span', { class: 'count' }, String(r.count)));
    }));
  }

  /** Reply, React, and for the author Edit and Delete (hover; a tap or long-press on a phone). */
  function actionBar(m, { inThread }) {
    const own = m.sender.id === S.user.id;
    const btn = (testid, label, title, f) => h('button', {
      type: 'button', class: 'act', title, 'aria-label': title, dataset: { testid },
      onclick: (e) => { e.stopPropagation(); f(); },
    }, label);
    const bar = h('div', { class: 'msg-actions', dataset: { testid: 'message-actions' } });
    if (S.confirmDelete === m.id) {
      bar.append(h('span', { class: 'confirm' }, 'Delete this message?'),
        btn('confirm-delete', 'Delete', 'Delete for everyone', () => actions.remove(m)),
        btn('cancel-delete', 'Keep', 'Keep it', () => actions.cancelDelete()));
      return bar;
    }
    if (!inThread) bar.append(btn('action-reply', '↩ Reply', 'Reply in thread', () => actions.openThread(m.room, m.reply_to || m.id)));
    bar.append(btn('action-react', '☺ React', 'Add a reaction', () => actions.togglePalette(m.id)));
    if (own) bar.append(btn('action-edit', '✎ Edit', 'Edit', () => actions.startEdit(m)));
    if (own || may(room(m.room), 'deleteOthers')) bar.append(btn('action-delete', '🗑 Delete', 'Delete', () => actions.askDelete(m)));
    if (S.palette === m.id) {
      const mine = new Set(reactionsOf(m, S.user.id).filter((r) => r.me).map((r) => r.emoji));
      bar.append(h('div', { class: 'palette', role: 'menu', dataset: { testid: 'emoji-palette' } }, ...EMOJI.map((em) => h('button', {
        type: 'button', class: 'palette-emoji' + (mine.has(em) ? ' mine' : ''), title: em, dataset: { testid: 'emoji-option', emoji: em },
        onclick: (e) => { e.stopPropagation(); actions.react(m, em, !mine.has(em)); },
      }, em))));
    }
    return bar;
  }

  /**
   * One message: body, "(edited)", reply quote, reactions, thread summary, the actions, and
   * the state of a pending send (`o`) or of pending edits/deletes/reactions (`ops`).
   */
  function messageRow(m, o, ops, { inThread = false }) {
    const t = new Date(m.sent_at);
    const held = !!m.id && !o;
    const mine = ops.filter((x) => x.message_id && x.message_id === m.id);
    const row = h('div', {
      class: 'msg' + (o ? ' pending' : '') + (o && o.failed ? ' failed' : '') + (m.deleted ? ' is-deleted' : '')
        + (held && mentionsMe(m, S.user.id) ? ' mentioned' : '') + (S.actionsFor === m.id && held ? ' show-actions' : '') + (S.hoverId === m.id && held ? ' hovered' : ''),
      dataset: {
        testid: 'message', messageId: m.id || '', clientMsgId: m.client_msg_id, position: m.position ?? '',
        pending: String(!!o), failed: String(!!(o && o.failed)), senderName: m.sender.name,
        deleted: String(!!m.deleted), edited: String(!!m.edited_at && !m.deleted), mentioned: String(held && mentionsMe(m, S.user.id)),
        replyTo: m.reply_to || null,
      },
    },
    h('time', { class: 'row-time', datetime: m.sent_at, title: isNaN(t) ? '' : fullFmt.format(t) }, isNaN(t) ? '' : timeFmt.format(t)));
    if (held && isHidden(m, S.blocked, S.unblocked) && !S.revealed.has(m.id)) {
      row.dataset.hidden = 'true';
      row.append(h('div', { class: 'body-line hidden-msg' }, h('span', { class: 'body deleted', dataset: { testid: 'hidden-message' } }, HIDDEN_TEXT), ' ',
        h('button', { type: 'button', class: 'link small', dataset: { testid: 'reveal-message' }, onclick: (e) => { e.stopPropagation(); actions.reveal(m.id); } }, 'Show')));
      return row;
    }
    if (m.reply_to && !inThread) row.append(replyQuote(m));
    // "(edited)" follows the text on its line, outside the body element (whose text is the body).
    const line = h('div', { class: 'body-line' }, bodyOf(m));
    if (m.edited_at && !m.deleted) {
      line.append(' ', h('button', {
        type: 'button', class: 'edited', title: 'Show the edit history', dataset: { testid: 'edited-marker' },
        onclick: (e) => { e.stopPropagation(); actions.showEdits(m); },
      }, '(edited)'));
    }
    row.append(line);
    if (held && !m.deleted) {
      const rr = reactionsRow(m);
      if (rr) row.append(rr);
      if (!inThread && m.reply_count > 0) {
        row.append(h('button', {
          type: 'button', class: 'thread-link', dataset: { testid: 'thread-link', count: m.reply_count },
          onclick: (e) => { e.stopPropagation(); actions.openThread(m.room, m.id); },
        }, `${m.reply_count} ${m.reply_count === 1 ? 'reply' : 'replies'}`));
      }
      row.append(actionBar(m, { inThread }));
      // Hover is also kept in the state, so a redraw under the pointer keeps the actions shown.
      row.addEventListener('mouseenter', () => { S.hoverId = m.id; row.classList.add('hovered'); });
      row.addEventListener('mouseleave', () => { if (S.hoverId === m.id) S.hoverId = null; row.classList.remove('hovered'); });
      // A tap shows the actions (phones have no hover); a long-press too (contextmenu).
      row.addEventListener('click', (e) => { if (!e.target.closest('a, button')) actions.toggleActions(m.id); });
      row.addEventListener('contextmenu', (e) => { if (!e.target.closest('a')) { e.preventDefault(); actions.toggleActions(m.id, true); } });
    }
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
    for (const x of mine) {
      const what = x.kind === 'edit' ? 'Edit' : x.kind === 'delete' ? 'Delete' : `Reaction ${x.emoji}`;
      const status = h('div', { class: 'status' + (x.failed ? ' op-failed' : ''), dataset: { testid: 'op-status', kind: x.kind, failed: String(!!x.failed) } });
      if (x.failed) {
        status.append(h('span', { class: 'err' }, `${what} not saved` + (x.error ? ': ' + x.error : '')),
          h('button', { type: 'button', class: 'link', dataset: { testid: 'retry-op' }, onclick: (e) => { e.stopPropagation(); actions.retry(x); } }, 'Retry'),
          h('button', { type: 'button', class: 'link', dataset: { testid: 'discard-op' }, onclick: (e) => { e.stopPropagation(); actions.discard(x); } }, 'Discard'));
      } else {
        status.append(h('span', {}, `${what}: ` + (sync.welcomed ? 'saving…' : 'waiting for connection…')));
      }
      row.append(status);
    }
    return row;
  }

  /** The thread panel: the parent, its replies (page and live), pending replies. */
  function renderThread() {
    const panel = $('thread');
    const th = sync.thread;
    const open = !!th && th.room === S.current;
    panel.hidden = !open;
    document.body.classList.toggle('thread-open', open);
    if (!open) return;
    const sc = $('thread-scroller');
    const atBottom = sc.scrollHeight - sc.scrollTop - sc.clientHeight < 80;
    const parent = sync.timelines.get(th.room)?.get(th.parent) || S.threadParent;
    const ops = sync.pendingOps(th.room);
    const top = $('thread-parent');
    if (parent && parent.id === th.parent) {
      const g = groupItem(parent);
      g.lastChild.append(messageRow(parent, null, ops, { inThread: true }));
      top.replaceChildren(h('ol', { class: 'messages' }, g));
    } else {
      top.replaceChildren(h('p', { class: 'muted thread-missing' }, 'The first message of this thread is further back in the history.'));
    }
    const t = th.timeline;
    $('thread-state').textContent = !t.loaded ? 'Loading replies…' : t.hasMore ? 'Older replies not shown' : t.size ? '' : 'No replies yet.';
    const frag = document.createDocumentFragment();
    for (const m of t.list()) { const g = groupItem(m); g.lastChild.append(messageRow(m, null, ops, { inThread: true })); frag.append(g); }
    for (const o of sync.pending(th.room).filter((x) => x.reply_to === th.parent)) {
      const m = pendingMessage(o);
      const g = groupItem(m); g.lastChild.append(messageRow(m, o, ops, { inThread: true })); frag.append(g);
    }
    $('thread-messages').replaceChildren(frag);
    if (atBottom || S.threadToBottom) { sc.scrollTop = sc.scrollHeight; S.threadToBottom = false; }
  }

  /** The line above the composer while editing a message. */
  function renderComposeContext() {
    const ctx = S.compose;
    const bar = $('compose-ctx');
    bar.hidden = !ctx;
    $('composer-form').classList.toggle('editing', !!ctx);
    if (!ctx) return;
    $('compose-ctx-text').textContent = 'Editing your message';
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
    const now = Date.now();
    for (const m of list) {
      const me = m.id === S.user.id;
      const role = m.role && m.role !== 'member' ? m.role : null;
      const muted = mutedAt(m.muted_until, now);
      items.push(h('li', {},
        h('button', {
          type: 'button', class: 'member' + (me ? ' me' : ''), title: me ? 'You' : 'About ' + m.name,
          dataset: { testid: 'member', userId: m.id, userName: m.name, online: String(m.online), role: m.role || 'member', muted: String(muted), blocked: String(S.blocked.has(m.id)) },
          onclick: me ? null : () => actions.openUserCard({ id: m.id, name: m.name }),
        },
        h('span', { class: 'avatar small', style: avatarStyle(m.id) }, initial(m.name),
          h('i', { class: 'presence', dataset: { testid: 'online-dot', online: String(m.online) } })),
        h('span', { class: 'member-name' }, m.name), me ? h('span', { class: 'muted small' }, ' (you)') : null,
        role ? h('span', { class: 'role-badge', dataset: { testid: 'role-badge', role } }, role) : null,
        muted ? h('span', { class: 'muted-mark', title: 'Muted', dataset: { testid: 'muted-marker' } }, 'muted') : null)));
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
    renderRooms(); renderHeader(); renderMessages({ toBottom: changed }); renderMembers(); renderTyping(); renderComposeContext();
  }

  return {
    may, mutedIn, dmPartner, renderRooms, scheduleRenderRooms, renderHeader, renderHistoryState, renderMessages,
    drawNow, renderMembers, renderTyping, setConn, renderAll, renderThread, renderComposeContext, renderTokens,
  };
}
