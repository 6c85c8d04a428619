// Governance in the page (/work/gov-spec.md): the user card (DM, block, and the moderation
// a member's standing allows: core/permissions.js), inviting by name and by link, opening an
// invite link (`/#join=CODE`), pending invites, room settings, group DMs from a people
// picker, and the server administrators' view. One dialog (#gov-dialog) at a time; user text
// only as text (dom.js `h`).
import { describeEvent, isGovEvent } from '../core/governance.js';
import { memberActions, mutedAt } from '../core/permissions.js';
import { $, h, avatarStyle, fullFmt, initial, roomLabel } from './dom.js';

const MUTE_CHOICES = [['600', '10 minutes'], ['3600', '1 hour'], ['86400', '1 day'], ['604800', '7 days'], ['', 'Until lifted']];
const LINK_EXPIRY = [['3600', '1 hour'], ['86400', '1 day'], ['604800', '7 days'], ['2592000', '30 days']];

/**
 * `S`: the view state; `api`: core/api.js; `view`: view/render.js; `actions`: `loadRooms()`,
 * `openRoom(id)`, `startDm(who)`, `loadMembers(id)`, `forgetRoom(id)`, `toast(text)`.
 */
export function createGovernance({ S, api, view, actions }) {
  const serverAdmin = () => !!(S.me && S.me.admin);
  const enc = encodeURIComponent;
  const when = (t) => { const d = new Date(t); return isNaN(d) ? '' : fullFmt.format(d); };

  // ------------------------------------------------------------ the dialog
  function dialog(kind, title, ...children) {
    const d = $('gov-dialog');
    d.dataset.kind = kind;
    $('gov-title').textContent = title;
    $('gov-body').replaceChildren(...children);
    if (!d.open) d.showModal();
  }
  function closeDialog() { const d = $('gov-dialog'); if (d.open) d.close(); }
  $('close-gov').addEventListener('click', closeDialog);
  $('gov-dialog').addEventListener('click', (e) => { if (e.target === $('gov-dialog')) closeDialog(); });

  const errorLine = () => h('p', { class: 'form-error', role: 'alert', dataset: { testid: 'dialog-error' } });
  const button = (testid, label, onclick, cls = 'secondary small') => h('button', { type: 'button', class: cls, dataset: { testid }, onclick }, label);
  /** A button that asks once more ("Sure? …") before `f` runs. */
  function armed(testid, label, sure, f, cls = 'secondary small danger') {
    const b = button(testid, label, () => {
      if (b.dataset.armed !== 'true') { b.dataset.armed = 'true'; b.textContent = sure; return; }
      f(b);
    }, cls);
    return b;
  }
  /** Runs `f` with `b` disabled; its error goes to `err`; `then` after success. */
  async function run(b, err, f) {
    if (b) b.disabled = true;
    err.textContent = '';
    try { await f(); } catch (e) { err.textContent = e.message; } finally { if (b) b.disabled = false; }
  }
  const select = (testid, choices, value) => h('select', { dataset: { testid } },
    ...choices.map(([v, label]) => h('option', { value: v, selected: v === value }, label)));
  const untilOf = (secs) => (secs ? new Date(Date.now() + Number(secs) * 1000).toISOString() : undefined);

  // ------------------------------------------------------------ the user card
  /** A user's card: DM, block/unblock; in the open room, what the user's standing allows. */
  function openUserCard(user) {
    if (!user || !S.user || user.id === S.user.id) return;
    const roomId = S.current;
    const r = roomId ? S.rooms.get(roomId) : null;
    const m = r && r.member ? S.members.get(roomId)?.get(user.id) : null;
    const err = errorLine();
    const blocked = S.blocked.has(user.id);
    const head = h('div', { class: 'card-head' },
      h('span', { class: 'avatar', style: avatarStyle(user.id) }, initial(user.name)),
      h('div', {}, h('strong', { dataset: { testid: 'card-name' } }, user.name),
        m && m.role && m.role !== 'member' ? h('span', { class: 'role-badge', dataset: { testid: 'role-badge', role: m.role } }, m.role) : null,
        m && mutedAt(m.muted_until, Date.now()) ? h('span', { class: 'muted-mark' }, 'muted') : null,
        blocked ? h('span', { class: 'muted-mark' }, 'blocked') : null));
    const personal = h('div', { class: 'row wrap' },
      button('card-dm', 'Message', (e) => run(e.currentTarget, err, async () => { await actions.startDm({ user: user.id }); closeDialog(); }), 'primary small'),
      blocked
        ? button('card-unblock', 'Unblock', (e) => run(e.currentTarget, err, async () => {
          await api('DELETE', '/api/blocks/' + enc(user.id));
          S.blocked.delete(user.id); S.unblocked.add(user.id);
          closeDialog(); view.renderMessages({}); view.renderMembers();
        }))
        : armed('card-block', 'Block', `Block ${user.name}?`, (b) => run(b, err, async () => {
          await api('PUT', '/api/blocks/' + enc(user.id));
          S.blocked.add(user.id); S.unblocked.delete(user.id);
          closeDialog(); view.renderMessages({}); view.renderMembers();
        })));
    const parts = [head, personal];
    if (m) {
      const target = { id: user.id, role: m.role || 'member', muted_until: m.muted_until ?? null };
      const can = memberActions(r, target, { me: S.user.id, serverAdmin: serverAdmin(), now: Date.now() });
      if (can.kick || can.ban || can.mute || can.unmute || can.roles.length || can.transfer) {
        const reason = h('input', { placeholder: 'Reason (optional)', maxlength: '500', dataset: { testid: 'mod-reason' } });
        const duration = select('mod-duration', MUTE_CHOICES, '3600');
        const base = `/api/rooms/${enc(roomId)}/members/${enc(user.id)}`;
        const act = (path, body) => async (e) => run(e.currentTarget || e, err, async () => {
          await api('POST', base + path, body());
          closeDialog();
          await actions.loadMembers(roomId).catch(() => {});
          if (S.current === roomId) view.renderMembers();
        });
        const why = () => (reason.value.trim() ? { reason: reason.value.trim() } : {});
        const timed = () => Object.assign(why(), duration.value ? { until: untilOf(duration.value) } : {});
        const mod = h('div', { class: 'card-mod', dataset: { testid: 'member-actions' } },
          h('h4', {}, 'Moderation in ' + roomLabel(r)), reason, (can.ban || can.mute) ? h('label', { class: 'row small' }, 'For ', duration) : null,
          h('div', { class: 'row wrap' },
            can.kick ? button('card-kick', 'Remove', act('/kick', why)) : null,
            can.mute ? button('card-mute', 'Mute', act('/mute', timed)) : null,
            can.unmute ? button('card-unmute', 'Unmute', act('/unmute', () => undefined)) : null,
            can.ban ? armed('card-ban', 'Ban', `Ban ${user.name}?`, (b) => act('/ban', timed)(b)) : null),
          can.roles.length ? h('div', { class: 'row wrap' }, ...can.roles.map((role) => h('button', {
            type: 'button', class: 'secondary small', dataset: { testid: 'card-role', role },
            onclick: (e) => run(e.currentTarget, err, async () => {
              await api('PUT', base + '/role', { role });
              closeDialog();
              await actions.loadMembers(roomId).catch(() => {});
              if (S.current === roomId) view.renderMembers();
            }),
          }, 'Make ' + role))) : null,
          can.transfer ? armed('card-transfer', 'Transfer ownership', `Make ${user.name} the owner?`, (b) => run(b, err, async () => {
            const nr = await api('POST', `/api/rooms/${enc(roomId)}/owner`, { user: user.id });
            if (nr && S.rooms.get(roomId)) Object.assign(S.rooms.get(roomId), nr);
            closeDialog();
            await actions.loadMembers(roomId).catch(() => {});
            await actions.loadRooms();
            if (S.current === roomId) { view.renderMembers(); view.renderHeader(); }
          })) : null);
        parts.push(mod);
      }
    }
    parts.push(err);
    dialog('user-card', user.name, ...parts);
  }

  // ------------------------------------------------------------ invite by name and by link
  const linkUrl = (code) => `${location.origin}/#join=${code}`;

  function openInvite() {
    const roomId = S.current; const r = roomId && S.rooms.get(roomId);
    if (!r || !r.member) return;
    const err = errorLine();
    const status = h('p', { class: 'muted small', role: 'status', dataset: { testid: 'invite-status' } });
    const name = h('input', { placeholder: 'Username', maxlength: '32', autocomplete: 'off', autocapitalize: 'off', spellcheck: 'false', dataset: { testid: 'invite-username' } });
    const byName = h('form', { class: 'row', onsubmit: (e) => {
      e.preventDefault();
      const username = name.value.trim(); if (!username) return;
      status.textContent = '';
      run(e.submitter, err, async () => {
        try {
          await api('POST', `/api/rooms/${enc(roomId)}/invites`, { username });
        } catch (x) {
          if (x.code === 'user_not_found') throw new Error(`No user named “${username}”.`);
          if (x.code === 'already_member') throw new Error(`${username} is already in ${roomLabel(r)}.`);
          if (x.code === 'banned') throw new Error(`${username} is banned from ${roomLabel(r)}.`);
          throw x;
        }
        name.value = '';
        status.textContent = `Invited ${username}.`;
      });
    } }, name, h('button', { class: 'primary small', dataset: { testid: 'invite-submit' } }, 'Invite'));
    const parts = [h('h4', {}, 'Invite by name'), byName, status];
    if (view.may(r, 'manageLinks')) {
      const expiry = select('invite-link-expiry', LINK_EXPIRY, '604800');
      const maxUses = h('input', { type: 'number', min: '1', max: '10000', placeholder: 'No limit', dataset: { testid: 'invite-link-max-uses' } });
      const out = h('div', { class: 'row', hidden: true },
        h('input', { readonly: true, dataset: { testid: 'invite-link-url' } }),
        button('invite-link-copy', 'Copy', () => copy(out.firstChild.value)));
      const list = h('ul', { class: 'plain-list', dataset: { testid: 'invite-links' } });
      const loadLinks = async () => {
        const links = await api('GET', `/api/rooms/${enc(roomId)}/links`);
        list.replaceChildren(...(Array.isArray(links) ? links : []).map((l) => h('li', { class: 'row', dataset: { testid: 'invite-link', code: l.code } },
          h('span', { class: 'grow small' }, h('code', {}, l.code), ` · used ${l.uses ?? 0}${l.max_uses != null ? ' of ' + l.max_uses : ''} · until ${when(l.expires_at)}`),
          button('invite-link-copy', 'Copy', () => copy(linkUrl(l.code))),
          button('invite-link-revoke', 'Revoke', (e) => run(e.currentTarget, err, async () => {
            await api('DELETE', `/api/rooms/${enc(roomId)}/links/${enc(l.code)}`);
            await loadLinks();
          })))));
        if (!list.children.length) list.append(h('li', { class: 'muted small' }, 'No active links.'));
      };
      const create = button('invite-link-create', 'Create link', (e) => run(e.currentTarget, err, async () => {
        const body = { expires_in_secs: Number(expiry.value) };
        const n = Number(maxUses.value);
        if (maxUses.value && Number.isSafeInteger(n) && n > 0) body.max_uses = n;
        const l = await api('POST', `/api/rooms/${enc(roomId)}/links`, body);
        out.firstChild.value = linkUrl(l.code); out.hidden = false;
        await loadLinks();
      }), 'primary small');
      parts.push(h('h4', {}, 'Invite links'),
        h('div', { class: 'row wrap small' }, h('label', {}, 'Expires after ', expiry), h('label', {}, 'Max uses ', maxUses), create),
        out, list);
      loadLinks().catch((e) => { err.textContent = 'Could not load the links: ' + e.message; });
    }
    parts.push(err);
    dialog('invite', 'Invite to ' + roomLabel(r), ...parts);
    name.focus();
  }

  async function copy(text) {
    try { await navigator.clipboard.writeText(text); actions.toast('Link copied.'); } catch { actions.toast('Copy it by hand: ' + text); }
  }

  /** `/#join=CODE`: the room's preview, and a button to join it. */
  async function openJoinLink(code) {
    history.replaceState(null, '', location.pathname + location.search + (S.current ? '#' + S.current : ''));
    const err = errorLine();
    dialog('join-link', 'Invite link', h('p', { class: 'muted' }, 'Loading…'));
    let p;
    try {
      p = await api('GET', '/api/links/' + enc(code));
    } catch (e) {
      const text = e.code === 'invite_invalid' ? 'This invite link has expired, been used up or been revoked.' : e.message;
      dialog('join-link', 'Invite link', h('p', { dataset: { testid: 'join-link-error' } }, text));
      return;
    }
    const r = p.room || {};
    const held = S.rooms.get(r.id);
    const n = Number.isSafeInteger(r.members) ? r.members : null;
    dialog('join-link', 'Join ' + roomLabel({ kind: r.kind, name: String(r.name ?? '') }) + '?',
      h('p', { dataset: { testid: 'join-link-preview' } }, h('strong', {}, roomLabel({ kind: r.kind, name: String(r.name ?? '') })),
        ` · ${r.visibility === 'private' ? 'private' : 'public'}${n !== null ? ` · ${n} member${n === 1 ? '' : 's'}` : ''}`),
      p.expires_at ? h('p', { class: 'muted small' }, 'The link works until ' + when(p.expires_at) + '.') : null,
      h('div', { class: 'row' },
        held && held.member
          ? button('join-link-open', 'Open it', () => { closeDialog(); actions.openRoom(r.id); }, 'primary')
          : button('join-link-submit', 'Join', (e) => run(e.currentTarget, err, async () => {
            try {
              const room = await api('POST', `/api/links/${enc(code)}/join`);
              await joined(room);
            } catch (x) {
              if (x.code === 'invite_invalid') throw new Error('This invite link has expired, been used up or been revoked.');
              if (x.code === 'banned') throw new Error('You are banned from this room.');
              throw x;
            }
          }), 'primary'),
        button('join-link-cancel', 'Cancel', closeDialog)),
      err);
  }

  /** A room the user just got into (invite, link): listed and opened. */
  async function joined(room) {
    closeDialog();
    S.gone.delete(room.id);
    S.invites.removeRoom(room.id);
    renderInvites();
    S.rooms.set(room.id, Object.assign({ unread: 0, last_position: null }, S.rooms.get(room.id), room, { member: true }));
    if (!S.roomOrder.includes(room.id)) S.roomOrder.push(room.id);
    await actions.loadRooms();
    actions.openRoom(room.id);
  }

  // ------------------------------------------------------------ pending invites
  async function loadInvites() {
    try { S.invites.reset(await api('GET', '/api/invites')); } catch { return; }
    renderInvites();
  }

  function renderInvites() {
    const list = S.invites.list();
    $('invites-section').hidden = !list.length;
    $('invite-list').replaceChildren(...list.map((i) => h('li', { class: 'invite', dataset: { testid: 'invite', inviteId: i.id, roomName: String(i.room_name ?? '') } },
      h('div', { class: 'invite-text' }, h('strong', {}, roomLabel({ kind: 'room', name: String(i.room_name ?? 'a room') })),
        h('span', { class: 'small' }, ' from ' + String(i.from.name ?? 'someone'))),
      h('div', { class: 'row' },
        button('invite-accept', 'Accept', (e) => respond(e.currentTarget, i, true), 'primary small'),
        button('invite-decline', 'Decline', (e) => respond(e.currentTarget, i, false), 'ghost small')))));
  }

  async function respond(b, i, accept) {
    b.disabled = true;
    try {
      if (accept) {
        const room = await api('POST', `/api/invites/${enc(i.id)}/accept`);
        S.invites.remove(i.id);
        await joined(room);
      } else {
        await api('POST', `/api/invites/${enc(i.id)}/decline`);
        S.invites.remove(i.id);
      }
    } catch (e) {
      if (e.code === 'invite_invalid') { S.invites.remove(i.id); actions.toast('That invite is no longer valid.'); } else actions.toast(e.message);
    } finally {
      b.disabled = false;
      renderInvites();
    }
  }

  /** A live invite (`invite` frame). */
  function invited(invite) {
    if (!S.invites.add(invite)) return;
    renderInvites();
    actions.toast(`${invite.from.name} invited you to ${roomLabel({ kind: 'room', name: String(invite.room_name ?? '') })}.`);
  }

  // ------------------------------------------------------------ blocks, me
  async function loadBlocks() {
    try {
      const list = await api('GET', '/api/blocks');
      S.blocked.clear();
      for (const u of Array.isArray(list) ? list : []) if (u && typeof u.id === 'string') S.blocked.add(u.id);
    } catch { return; }
    view.renderMessages({}); view.renderMembers();
  }

  async function loadMe() {
    try { S.me = await api('GET', '/api/me'); } catch { return; }
    $('admin-open').hidden = !(S.me && S.me.admin);
    view.renderHeader(); view.renderMessages({});
  }

  // ------------------------------------------------------------ room settings
  function openSettings() {
    const roomId = S.current; const r = roomId && S.rooms.get(roomId);
    if (!r || !r.member) return;
    const err = errorLine();
    const parts = [];
    if (view.may(r, 'editSettings')) {
      const f = {
        name: h('input', { value: r.name, maxlength: '64', dataset: { testid: 'settings-name' } }),
        topic: h('input', { value: r.topic ?? '', maxlength: '250', dataset: { testid: 'settings-topic' } }),
        description: h('textarea', { rows: '3', maxlength: '2000', dataset: { testid: 'settings-description' } }),
        visibility: select('settings-visibility', [['public', 'Public: anyone can find and join'], ['private', 'Private: by invite only']], r.visibility || 'public'),
        slow_mode_secs: h('input', { type: 'number', min: '0', max: '21600', value: String(r.slow_mode_secs ?? 0), dataset: { testid: 'settings-slow-mode' } }),
      };
      f.description.value = r.description ?? '';
      const form = h('form', { class: 'settings-form', onsubmit: (e) => {
        e.preventDefault();
        const body = {};
        for (const k of ['name', 'topic', 'description', 'visibility']) {
          const v = k === 'name' ? f[k].value.trim() : f[k].value;
          if (v !== (r[k] ?? '')) body[k] = v;
        }
        const slow = Number(f.slow_mode_secs.value || 0);
        if (Number.isSafeInteger(slow) && slow !== (r.slow_mode_secs ?? 0)) body.slow_mode_secs = slow;
        if (!Object.keys(body).length) { closeDialog(); return; }
        run(e.submitter, err, async () => {
          const nr = await api('PATCH', '/api/rooms/' + enc(roomId), body);
          if (S.rooms.get(roomId)) Object.assign(S.rooms.get(roomId), nr);
          closeDialog();
          view.renderHeader(); view.renderRooms();
        });
      } },
      h('label', {}, 'Name', f.name), h('label', {}, 'Topic', f.topic), h('label', {}, 'Description', f.description),
      h('label', {}, 'Who can join', f.visibility), h('label', {}, 'Slow mode (seconds between messages, 0: off)', f.slow_mode_secs),
      h('div', { class: 'row' }, h('button', { class: 'primary', dataset: { testid: 'settings-save' } }, 'Save')));
      parts.push(form);
    }
    if (view.may(r, 'viewModLog')) {
      // The room's moderation log: its member and settings events, newest first.
      const log = h('ol', { class: 'plain-list mod-log', dataset: { testid: 'mod-log' } }, h('li', { class: 'muted small' }, 'Loading…'));
      const more = button('mod-log-more', 'Older', () => loadLog(more.dataset.before));
      const loadLog = async (before) => {
        more.remove();
        try {
          const d = await api('GET', `/api/rooms/${enc(roomId)}/moderation?limit=50${before ? '&before=' + enc(before) : ''}`);
          const events = (Array.isArray(d.events) ? d.events : []).filter(isGovEvent);
          if (!before) log.replaceChildren();
          log.append(...events.map((e) => h('li', { class: 'small', dataset: { testid: 'mod-log-item' } },
            h('span', { class: 'muted' }, when(e.sent_at) + ' · '), describeEvent(e, { fmtTime: when }))));
          if (!log.children.length) log.append(h('li', { class: 'muted small' }, 'Nothing yet.'));
          if (d.has_more && events.length) { more.dataset.before = String(events[events.length - 1].position); log.after(more); }
        } catch (e) { log.replaceChildren(h('li', { class: 'form-error' }, 'Could not load the log: ' + e.message)); }
      };
      parts.push(h('h4', {}, 'Moderation log'), log);
      loadLog(null);
    }
    if (view.may(r, 'deleteRoom') && r.kind === 'room') {
      parts.push(h('div', { class: 'danger-zone' }, armed('settings-delete', 'Delete this room', `Delete ${roomLabel(r)} for everyone?`, (b) => run(b, err, async () => {
        await api('DELETE', '/api/rooms/' + enc(roomId));
        closeDialog();
        S.gone.set(roomId, { reason: 'room_deleted', name: r.name });
        actions.forgetRoom(roomId);
        await actions.loadRooms();
        view.renderAll();
      }))));
    }
    parts.push(err);
    dialog('settings', 'Settings of ' + roomLabel(r), ...parts);
  }

  // ------------------------------------------------------------ group DMs
  function openGroupPicker() {
    const chosen = new Map();
    const err = errorLine();
    const search = h('input', { placeholder: 'Find people by name', autocomplete: 'off', autocapitalize: 'off', spellcheck: 'false', dataset: { testid: 'group-search' } });
    const results = h('ul', { class: 'plain-list pick-list', dataset: { testid: 'group-results' } });
    const picked = h('ul', { class: 'chips', dataset: { testid: 'group-chosen' } });
    const name = h('input', { placeholder: 'Group name (optional)', maxlength: '64', dataset: { testid: 'group-name' } });
    let found = []; let seq = 0; let timer = null;
    const draw = () => {
      results.replaceChildren(...found.filter((u) => u.id !== S.user.id && !chosen.has(u.id)).map((u) => h('li', {},
        h('button', { type: 'button', class: 'member', dataset: { testid: 'group-result', userName: u.name }, onclick: () => { chosen.set(u.id, u); draw(); search.focus(); } },
          h('span', { class: 'avatar small', style: avatarStyle(u.id) }, initial(u.name)), h('span', { class: 'member-name' }, u.name)))));
      picked.replaceChildren(...[...chosen.values()].map((u) => h('li', { class: 'chip', dataset: { testid: 'group-chip', userName: u.name } }, u.name,
        h('button', { type: 'button', class: 'link', 'aria-label': 'Remove ' + u.name, onclick: () => { chosen.delete(u.id); draw(); } }, '×'))));
    };
    search.addEventListener('input', () => {
      clearTimeout(timer);
      timer = setTimeout(async () => {
        const q = search.value.trim();
        const mine = ++seq;
        if (!q) { found = []; draw(); return; }
        try {
          const list = await api('GET', '/api/users?q=' + enc(q));
          if (mine === seq) { found = Array.isArray(list) ? list.filter((u) => u && typeof u.id === 'string') : []; draw(); }
        } catch (e) { err.textContent = e.message; }
      }, 200);
    });
    const create = button('group-create', 'Start the conversation', (e) => run(e.currentTarget, err, async () => {
      if (chosen.size < 2) throw new Error('Pick at least two people.');
      const body = { users: [...chosen.keys()] };
      if (name.value.trim()) body.name = name.value.trim();
      const room = await api('POST', '/api/groups', body);
      await joined(room);
    }), 'primary');
    dialog('group', 'New group conversation', search, results, picked, name, h('div', { class: 'row' }, create), err);
    search.focus();
  }

  // ------------------------------------------------------------ server administration
  function openAdmin() {
    if (!serverAdmin()) return;
    const err = errorLine();
    const users = h('ul', { class: 'plain-list', dataset: { testid: 'admin-users' } });
    const rooms = h('ul', { class: 'plain-list', dataset: { testid: 'admin-rooms' } });
    const PAGE = 50;
    const pager = (list, path, item) => {
      const more = button('admin-more', 'More', () => load(more.dataset.after));
      const load = async (after) => {
        more.remove();
        try {
          const page = await api('GET', `${path}?limit=${PAGE}${after ? '&after=' + enc(after) : ''}`);
          const rows = Array.isArray(page) ? page : [];
          list.append(...rows.map(item));
          if (rows.length === PAGE) { more.dataset.after = rows[rows.length - 1].id; list.after(more); }
        } catch (e) { err.textContent = e.message; }
      };
      load(null);
    };
    const userItem = (u) => {
      const li = h('li', { class: 'row', dataset: { testid: 'admin-user', userName: u.name, suspended: String(!!u.suspended) } });
      const draw = () => {
        li.dataset.suspended = String(!!u.suspended);
        li.replaceChildren(h('span', { class: 'grow' }, u.name, u.admin ? h('span', { class: 'role-badge' }, 'admin') : null,
          u.suspended ? h('span', { class: 'muted-mark' }, 'suspended') : null),
        u.id === S.user.id ? null : u.suspended
          ? button('admin-reinstate', 'Reinstate', (e) => run(e.currentTarget, err, async () => { await api('POST', `/api/admin/users/${enc(u.id)}/reinstate`); u.suspended = false; draw(); }))
          : armed('admin-suspend', 'Suspend', `Suspend ${u.name}?`, (b) => run(b, err, async () => { await api('POST', `/api/admin/users/${enc(u.id)}/suspend`); u.suspended = true; draw(); })));
      };
      draw();
      return li;
    };
    const roomItem = (r) => {
      const n = Number.isSafeInteger(r.members) ? r.members : '?';
      const li = h('li', { class: 'row', dataset: { testid: 'admin-room', roomName: r.name, roomId: r.id } },
        h('span', { class: 'grow' }, roomLabel({ kind: r.kind, name: String(r.name ?? '') }), h('span', { class: 'muted small' }, ` · ${r.kind} · ${r.visibility} · ${n} members`)));
      li.append(armed('admin-delete-room', 'Delete', 'Delete for everyone?', (b) => run(b, err, async () => {
        await api('DELETE', '/api/rooms/' + enc(r.id));
        li.remove();
      })));
      return li;
    };
    dialog('admin', 'Server administration', err, h('h4', {}, 'Accounts'), users, h('h4', {}, 'Rooms'), rooms);
    pager(users, '/api/admin/users', userItem);
    pager(rooms, '/api/admin/rooms', roomItem);
  }

  return {
    openUserCard, openInvite, openJoinLink, openSettings, openGroupPicker, openAdmin,
    loadInvites, renderInvites, invited, loadBlocks, loadMe, closeDialog,
  };
}
