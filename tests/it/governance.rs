//! Governance (issue 19): the authorization matrix, derived from the one permission table
//! (`chat::governance`) and checked against a real server in both modes; private rooms,
//! invite links and group DM limits; blocking.
//!
//! The matrix crosses every standing a user can have in a room (non-member, invited,
//! banned, muted, member, moderator, admin, owner, server administrator, suspended
//! account) with every HTTP endpoint of governance and every WebSocket frame that touches
//! a room, in a public and a private room. The EXPECTED answer of each cell is computed
//! by [`expected`] from the table's functions (`allowed`, `may_act_on`, `may_set_role`)
//! and the documented standing rules; the ACTUAL one comes from the server. Every cell
//! has a room of its own, set up afresh, so a destructive action (kick, ban, transfer,
//! delete, leave) cannot change another cell.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat::governance::{allowed, may_act_on, may_set_role, Action, Actor, Role};
use chat::model::{RoomKind, Visibility};
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::both_modes;
use crate::harness::{Account, Cluster, Env, Http, Mode, Ws};

const PASSWORD: &str = "correct horse battery";

// ---------------------------------------------------------------------- the model

/// A user's standing in the room of a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    NonMember,
    /// A pending invite, not a member.
    Invited,
    Banned,
    /// A member (role member) with a mute.
    Muted,
    Member,
    Moderator,
    Admin,
    Owner,
    /// A server administrator (`chat admin grant`) who is not a member of the room.
    ServerAdmin,
    /// A member whose account a server administrator suspended (its token is void).
    Suspended,
    /// Was a moderator, its standing known to the gateway (subscribed), then made a
    /// member.
    Demoted,
    /// Was muted, known to the gateway, then unmuted.
    Unmuted,
    /// Was a member, known to the gateway, then kicked.
    Kicked,
}

const STANDINGS: [Standing; 10] = [
    Standing::NonMember,
    Standing::Invited,
    Standing::Banned,
    Standing::Muted,
    Standing::Member,
    Standing::Moderator,
    Standing::Admin,
    Standing::Owner,
    Standing::ServerAdmin,
    Standing::Suspended,
];

/// Standings reached by a change while the actor's socket used the room: what the
/// gateway cached must follow (the WebSocket operations only; HTTP reads the store).
const CHANGED: [Standing; 3] = [Standing::Demoted, Standing::Unmuted, Standing::Kicked];

impl Standing {
    fn label(self) -> &'static str {
        match self {
            Standing::NonMember => "non-member",
            Standing::Invited => "invited",
            Standing::Banned => "banned",
            Standing::Muted => "muted",
            Standing::Member => "member",
            Standing::Moderator => "moderator",
            Standing::Admin => "admin",
            Standing::Owner => "owner",
            Standing::ServerAdmin => "server admin",
            Standing::Suspended => "suspended",
            Standing::Demoted => "demoted",
            Standing::Unmuted => "unmuted",
            Standing::Kicked => "kicked",
        }
    }

    /// The role in the room (None: not a member).
    fn role(self) -> Option<Role> {
        match self {
            Standing::Muted
            | Standing::Member
            | Standing::Suspended
            | Standing::Demoted
            | Standing::Unmuted => Some(Role::Member),
            Standing::Moderator => Some(Role::Moderator),
            Standing::Admin => Some(Role::Admin),
            Standing::Owner => Some(Role::Owner),
            Standing::NonMember
            | Standing::Invited
            | Standing::Banned
            | Standing::ServerAdmin
            | Standing::Kicked => None,
        }
    }

    fn actor(self) -> Actor {
        Actor {
            role: self.role(),
            server_admin: self == Standing::ServerAdmin,
        }
    }
}

/// An operation on the room of a cell: an HTTP endpoint or a WebSocket frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Kick,
    Ban,
    Unban,
    Mute,
    Unmute,
    SetRole,
    Transfer,
    Settings,
    DeleteRoom,
    ModLog,
    Bans,
    Invite,
    CreateLink,
    ListLinks,
    Members,
    Messages,
    Join,
    Leave,
    Subscribe,
    Send,
    EditOwn,
    DeleteOwn,
    DeleteOthers,
    React,
    Typing,
    Read,
}

const OPS: [Op; 26] = [
    Op::Kick,
    Op::Ban,
    Op::Unban,
    Op::Mute,
    Op::Unmute,
    Op::SetRole,
    Op::Transfer,
    Op::Settings,
    Op::DeleteRoom,
    Op::ModLog,
    Op::Bans,
    Op::Invite,
    Op::CreateLink,
    Op::ListLinks,
    Op::Members,
    Op::Messages,
    Op::Join,
    Op::Leave,
    Op::Subscribe,
    Op::Send,
    Op::EditOwn,
    Op::DeleteOwn,
    Op::DeleteOthers,
    Op::React,
    Op::Typing,
    Op::Read,
];

impl Op {
    /// A column header (at most 6 characters).
    fn label(self) -> &'static str {
        match self {
            Op::Kick => "kick",
            Op::Ban => "ban",
            Op::Unban => "unban",
            Op::Mute => "mute",
            Op::Unmute => "unmute",
            Op::SetRole => "role",
            Op::Transfer => "owner",
            Op::Settings => "patch",
            Op::DeleteRoom => "delete",
            Op::ModLog => "modlog",
            Op::Bans => "bans",
            Op::Invite => "invite",
            Op::CreateLink => "link+",
            Op::ListLinks => "links",
            Op::Members => "memb",
            Op::Messages => "msgs",
            Op::Join => "join",
            Op::Leave => "leave",
            Op::Subscribe => "w:sub",
            Op::Send => "w:send",
            Op::EditOwn => "w:edit",
            Op::DeleteOwn => "w:dlow",
            Op::DeleteOthers => "w:del",
            Op::React => "w:reac",
            Op::Typing => "w:typ",
            Op::Read => "w:read",
        }
    }

    /// The table's action the operation is (None: joining and leaving, which the
    /// standing rules decide).
    fn action(self) -> Option<Action> {
        Some(match self {
            Op::Kick => Action::Kick,
            Op::Ban | Op::Unban | Op::Bans => Action::Ban,
            Op::Mute | Op::Unmute => Action::Mute,
            Op::SetRole => Action::ChangeRoles,
            Op::Transfer => Action::TransferOwnership,
            Op::Settings => Action::EditSettings,
            Op::DeleteRoom => Action::DeleteRoom,
            Op::ModLog => Action::ViewModLog,
            Op::Invite => Action::Invite,
            Op::CreateLink | Op::ListLinks => Action::ManageLinks,
            Op::Members | Op::Messages | Op::Subscribe | Op::Typing | Op::Read => Action::Read,
            Op::Send | Op::EditOwn | Op::DeleteOwn | Op::React => Action::Send,
            Op::DeleteOthers => Action::DeleteOthers,
            Op::Join | Op::Leave => return None,
        })
    }

    fn ws(self) -> bool {
        matches!(
            self,
            Op::Subscribe
                | Op::Send
                | Op::EditOwn
                | Op::DeleteOwn
                | Op::DeleteOthers
                | Op::React
                | Op::Typing
                | Op::Read
        )
    }

    /// The HTTP status of a success.
    fn ok_status(self) -> u16 {
        match self {
            Op::Invite | Op::CreateLink => 201,
            Op::DeleteRoom => 204,
            _ => 200,
        }
    }

    /// Whether the cell needs a message of someone else in the room.
    fn needs_other_message(self) -> bool {
        matches!(self, Op::DeleteOthers | Op::React | Op::Read)
    }

    /// Whether the cell needs a message the actor wrote (while a member).
    fn needs_own_message(self) -> bool {
        matches!(self, Op::EditOwn | Op::DeleteOwn)
    }
}

/// An answer: an HTTP status with `ok` or the error code, or (status 0) a WebSocket
/// answer: `ok`, an error frame's code, or `close:<code>`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    status: u16,
    code: String,
}

impl Outcome {
    fn http(status: u16, code: &str) -> Outcome {
        Outcome {
            status,
            code: code.to_owned(),
        }
    }
    fn ws(code: &str) -> Outcome {
        Outcome {
            status: 0,
            code: code.to_owned(),
        }
    }
    /// Refused for `code` (the status it has over HTTP), on the operation's transport.
    fn refused(op: Op, code: &str) -> Outcome {
        if op.ws() {
            return Outcome::ws(code);
        }
        let status = match code {
            "unauthorized" => 401,
            "owner_must_transfer" => 409,
            "member_not_found" => 404,
            "invalid_user" => 400,
            _ => 403,
        };
        Outcome::http(status, code)
    }
    fn ok(op: Op) -> Outcome {
        if op.ws() {
            Outcome::ws("ok")
        } else {
            Outcome::http(op.ok_status(), "ok")
        }
    }
    /// Four characters for the printed table.
    fn short(&self) -> String {
        let s = match self.code.as_str() {
            "ok" => "ok",
            "forbidden" => "forb",
            "not_member" => "nmem",
            "banned" => "bann",
            "muted" => "mute",
            "owner_must_transfer" => "o409",
            "unauthorized" => "401",
            "close:4401" => "4401",
            "not_subscribed" => "nsub",
            "member_not_found" => "404",
            "invalid_user" => "400",
            other if other.contains("+owners:") => "own?",
            other => return other.chars().take(4).collect(),
        };
        s.to_owned()
    }
}

/// The target's role for a kick, ban, mute or unmute: the highest role the actor may act
/// on (per the table), or member when there is none.
fn victim_role(actor: Actor, action: Action) -> Role {
    Role::ALL
        .into_iter()
        .rev()
        .find(|r| may_act_on(actor, action, Some(*r), false))
        .unwrap_or(Role::Member)
}

/// A role change the actor may make if any (the highest target, then the lowest new
/// role), else member to moderator.
fn role_change(actor: Actor) -> (Role, Role) {
    for target in Role::ALL.into_iter().rev() {
        for to in Role::ALL {
            if to != target && may_set_role(actor, target, to, false) {
                return (target, to);
            }
        }
    }
    (Role::Member, Role::Moderator)
}

/// The target of an operation: a fresh member of this role (None: no member target).
fn target_of(op: Op, actor: Actor) -> Option<Role> {
    match op {
        Op::Kick | Op::Ban | Op::Mute | Op::Unmute => {
            Some(victim_role(actor, op.action().unwrap_or(Action::Kick)))
        }
        Op::SetRole => Some(role_change(actor).0),
        Op::Transfer => Some(Role::Member),
        _ => None,
    }
}

/// THE expected answer of a cell: the permission table plus the documented standing
/// rules. Never written per cell.
fn expected(s: Standing, op: Op, vis: Visibility) -> Outcome {
    // A suspended account's token is void: 401 on HTTP; the gateway closes 4401.
    if s == Standing::Suspended {
        return if op.ws() {
            Outcome::ws("close:4401")
        } else {
            Outcome::refused(op, "unauthorized")
        };
    }
    let actor = s.actor();
    let member = actor.role.is_some();
    // Who is not a member is told why: banned, or not a member.
    let outsider = || {
        Outcome::refused(
            op,
            if s == Standing::Banned {
                "banned"
            } else {
                "not_member"
            },
        )
    };
    let table = |action: Action| allowed(actor, action, RoomKind::Room, vis);
    match op {
        Op::Join => {
            if member {
                Outcome::ok(op) // already one: nothing changes
            } else if s == Standing::Banned {
                outsider()
            } else if vis == Visibility::Private && !actor.server_admin {
                // A private room is joined by invite (server admins may join any room).
                Outcome::refused(op, "forbidden")
            } else {
                Outcome::ok(op)
            }
        }
        Op::Leave => {
            if actor.role == Some(Role::Owner) {
                Outcome::refused(op, "owner_must_transfer")
            } else {
                Outcome::ok(op)
            }
        }
        // Reading and sending need a membership, server administrators' too.
        _ if op.ws() || matches!(op, Op::Members | Op::Messages) => {
            if !member {
                // Typing needs a subscription, which a non-member cannot have.
                return if op == Op::Typing {
                    Outcome::ws("not_subscribed")
                } else {
                    outsider()
                };
            }
            if s == Standing::Muted && matches!(op, Op::Send | Op::EditOwn | Op::React) {
                return Outcome::refused(op, "muted");
            }
            let action = op.action().unwrap_or(Action::Read);
            if table(action) {
                Outcome::ok(op)
            } else {
                Outcome::refused(op, "forbidden")
            }
        }
        // Governance: members and server administrators, by the table.
        _ => {
            let Some(action) = op.action() else {
                return Outcome::ok(op);
            };
            if !member && !actor.server_admin {
                return outsider();
            }
            if !table(action) {
                return Outcome::refused(op, "forbidden");
            }
            let on_target = match op {
                Op::Kick | Op::Ban | Op::Mute | Op::Unmute => {
                    may_act_on(actor, action, target_of(op, actor), false)
                }
                // The banned user is not a member.
                Op::Unban => may_act_on(actor, action, None, false),
                Op::SetRole => {
                    let (target, to) = role_change(actor);
                    may_set_role(actor, target, to, false)
                }
                _ => true,
            };
            if on_target {
                Outcome::ok(op)
            } else {
                Outcome::refused(op, "forbidden")
            }
        }
    }
}

// ------------------------------------------------------- the target rules (sub-matrix)

/// Whom a kick, ban, mute, unmute or role change is aimed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// A member of this role (`Owner`: the room's owner, the actor itself if it owns it).
    Role(Role),
    /// The actor itself.
    Itself,
    /// A user who is not a member.
    Outsider,
}

const TARGETS: [Target; 6] = [
    Target::Role(Role::Member),
    Target::Role(Role::Moderator),
    Target::Role(Role::Admin),
    Target::Role(Role::Owner),
    Target::Itself,
    Target::Outsider,
];

impl Target {
    fn label(self) -> &'static str {
        match self {
            Target::Role(Role::Moderator) => "mod",
            Target::Role(r) => r.as_str(),
            Target::Itself => "self",
            Target::Outsider => "outside",
        }
    }
}

/// An action on a target member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TargetOp {
    Kick,
    Ban,
    Mute,
    Unmute,
    /// A role change to this role.
    SetRole(Role),
    /// Passing ownership on.
    Transfer,
}

const TARGET_OPS: [TargetOp; 8] = [
    TargetOp::Kick,
    TargetOp::Ban,
    TargetOp::Mute,
    TargetOp::Unmute,
    TargetOp::SetRole(Role::Member),
    TargetOp::SetRole(Role::Moderator),
    TargetOp::SetRole(Role::Admin),
    TargetOp::Transfer,
];

/// The actors of the target rules.
const TARGET_ACTORS: [Standing; 5] = [
    Standing::Member,
    Standing::Moderator,
    Standing::Admin,
    Standing::Owner,
    Standing::ServerAdmin,
];

impl TargetOp {
    fn label(self) -> String {
        match self {
            TargetOp::Kick => "kick".into(),
            TargetOp::Ban => "ban".into(),
            TargetOp::Mute => "mute".into(),
            TargetOp::Unmute => "unmute".into(),
            TargetOp::SetRole(r) => format!("role>{}", &r.as_str()[..3]),
            TargetOp::Transfer => "owner".into(),
        }
    }
    fn action(self) -> Action {
        match self {
            TargetOp::Kick => Action::Kick,
            TargetOp::Ban => Action::Ban,
            TargetOp::Mute | TargetOp::Unmute => Action::Mute,
            TargetOp::SetRole(_) => Action::ChangeRoles,
            TargetOp::Transfer => Action::TransferOwnership,
        }
    }
}

/// THE expected answer of an action on a target: the table's `allowed`, then
/// `may_act_on` / `may_set_role`; kicks, mutes and role changes need a member
/// (404 `member_not_found`), which a ban does not.
fn expected_on(s: Standing, op: TargetOp, target: Target) -> Outcome {
    let refused = |code: &str| Outcome::refused(Op::Kick, code);
    let actor = s.actor();
    if actor.role.is_none() && !actor.server_admin {
        return refused("not_member");
    }
    let action = op.action();
    if !allowed(actor, action, RoomKind::Room, Visibility::Public) {
        return refused("forbidden");
    }
    let self_target =
        target == Target::Itself || (target == Target::Role(Role::Owner) && s == Standing::Owner);
    let their = match target {
        Target::Role(r) => Some(r),
        Target::Itself => actor.role,
        Target::Outsider => None,
    };
    let ok = match op {
        // Ownership passes to another member; whoever owns the room has it already
        // (400 `invalid_user`, as for oneself): a room always has one owner.
        TargetOp::Transfer => {
            if self_target || their == Some(Role::Owner) {
                return Outcome::http(400, "invalid_user");
            }
            if their.is_none() {
                return refused("member_not_found");
            }
            true
        }
        TargetOp::SetRole(to) => {
            let Some(their) = their else {
                return refused("member_not_found");
            };
            may_set_role(actor, their, to, self_target)
        }
        _ => {
            if !may_act_on(actor, action, their, self_target) {
                return refused("forbidden");
            }
            if their.is_none() && matches!(op, TargetOp::Kick | TargetOp::Mute) {
                return refused("member_not_found");
            }
            true
        }
    };
    if ok {
        Outcome::http(200, "ok")
    } else {
        refused("forbidden")
    }
}

// ------------------------------------------------------------------- the client side

fn code_of(status: u16, v: &Value) -> Outcome {
    if (200..300).contains(&status) {
        Outcome::http(status, "ok")
    } else {
        Outcome::http(status, v["error"]["code"].as_str().unwrap_or("?"))
    }
}

/// Sends a frame carrying a `client_msg_id`; its answer (ack or error).
/// Tried again (up to 5 times, with a new `client_msg_id`) while the answer is a
/// retryable `unavailable` (the store or the log could not take it).
async fn ws_call(ws: &mut Ws, mut frame: Value) -> Value {
    let mut tries = 0;
    loop {
        let id = frame["client_msg_id"]
            .as_str()
            .expect("client_msg_id")
            .to_owned();
        ws.send(frame.clone()).await;
        let answer = loop {
            let v = ws.next().await;
            if (v["type"] == "ack" && v["client_msg_id"] == id.as_str())
                || (v["type"] == "error" && v["ref"] == id.as_str())
            {
                break v;
            }
        };
        tries += 1;
        if answer["code"] != "unavailable" || tries == 5 {
            return answer;
        }
        eprintln!("{frame}: {answer}; trying again");
        tokio::time::sleep(Duration::from_millis(500 * tries)).await;
        frame["client_msg_id"] = json!(cmid());
    }
}

fn ws_outcome(v: &Value) -> Outcome {
    if v["type"] == "error" {
        Outcome::ws(v["code"].as_str().unwrap_or("?"))
    } else {
        Outcome::ws("ok")
    }
}

/// Subscribes: `ok` or the refusal's code.
async fn ws_subscribe(ws: &mut Ws, room: &str) -> Outcome {
    ws.send(json!({"type": "subscribe", "room": room})).await;
    loop {
        let v = ws.next().await;
        if v["type"] == "subscribed" && v["room"] == room {
            return Outcome::ws("ok");
        }
        if v["type"] == "error" && v["ref"] == "subscribe" {
            return ws_outcome(&v);
        }
    }
}

/// For frames answered only when refused (typing, read): a ping after it; an error
/// (with `reference`) before the pong is the answer, else `ok`.
async fn ws_fence(ws: &mut Ws, reference: &str) -> Outcome {
    ws.send(json!({"type": "ping"})).await;
    loop {
        let v = ws.next().await;
        if v["type"] == "error" && v["ref"] == reference {
            return ws_outcome(&v);
        }
        if v["type"] == "pong" {
            return Outcome::ws("ok");
        }
    }
}

fn cmid() -> String {
    format!("g{}", Uuid::new_v4().simple())
}

/// One concurrent worker's users (a cell's room is fresh; the users are reused).
struct Lane {
    http: Http,
    addr: String,
    /// Creates every room of the lane (its owner).
    owner: Account,
    /// The actor of every standing but owner, server admin and suspended.
    actor: Account,
    /// The target of kicks, bans, mutes, role changes, transfers and invites.
    victim: Account,
    /// Writes "someone else's message".
    author: Account,
    author_ws: Ws,
    /// A server administrator.
    admin: Account,
    /// Suspended for a cell, reinstated (and logged in again) after it.
    suspendee: Account,
    /// Whether this lane saw login refused `suspended` (checked once).
    saw_login_refused: bool,
}

impl Lane {
    /// A call as `who`, tried again (up to 5 times) while the answer is 503: the store
    /// was unavailable (SQLite waits at most 10 s for its write lock, which a loaded
    /// disk can exceed) and nothing changed; it is no answer of the permission table.
    async fn api(&self, m: Method, path: &str, who: &Account, body: Option<Value>) -> (u16, Value) {
        let mut tries = 0;
        loop {
            let (s, v) = self
                .http
                .call(m.clone(), path, Some(&who.token), body.clone())
                .await;
            tries += 1;
            if s != 503 || tries == 5 {
                return (s, v);
            }
            eprintln!("{m} {path}: 503 {v}; trying again");
            tokio::time::sleep(Duration::from_millis(500 * tries)).await;
        }
    }

    /// A call of the set-up, which must answer `want`.
    async fn must(&self, m: Method, path: &str, who: &Account, body: Option<Value>, want: u16) {
        let (s, v) = self.api(m.clone(), path, who, body).await;
        assert_eq!(s, want, "set-up {m} {path} as {}: {v}", who.name);
    }

    async fn login(&self, who: &Account) -> (u16, Value) {
        self.http
            .call(
                Method::POST,
                "/api/login",
                None,
                Some(json!({"username": who.name, "password": PASSWORD})),
            )
            .await
    }

    /// Sends a message as the author (on its lane socket) or the given socket; its id and
    /// position.
    async fn post(ws: &mut Ws, room: &str) -> (String, i64) {
        let v = ws_call(
            ws,
            json!({"type": "send", "room": room, "client_msg_id": cmid(), "body": "hello"}),
        )
        .await;
        assert_eq!(v["type"], "ack", "set-up send: {v}");
        (
            v["message"]["id"].as_str().expect("message id").to_owned(),
            v["message"]["position"].as_i64().expect("position"),
        )
    }

    /// Runs one cell: a fresh room, the actor put in `standing`, the targets the
    /// operation needs; then the operation as the actor. Its answer.
    async fn cell(&mut self, vis: Visibility, standing: Standing, op: Op) -> Outcome {
        let name = format!("gm-{}", &Uuid::new_v4().simple().to_string()[..12]);
        let (s, v) = self
            .api(
                Method::POST,
                "/api/rooms",
                &self.owner,
                Some(json!({"name": name})),
            )
            .await;
        assert_eq!(s, 201, "create room: {v}");
        let room = v["id"].as_str().expect("room id").to_owned();
        let r = format!("/api/rooms/{room}");

        // Someone else's message.
        let other = if op.needs_other_message() {
            self.must(Method::POST, &format!("{r}/join"), &self.author, None, 200)
                .await;
            Some(Lane::post(&mut self.author_ws, &room).await)
        } else {
            None
        };

        // The actor, and its socket for WebSocket operations.
        let actor = match standing {
            Standing::Owner => self.owner.clone(),
            Standing::ServerAdmin => self.admin.clone(),
            Standing::Suspended => self.suspendee.clone(),
            _ => self.actor.clone(),
        };
        let mut ws = if op.ws() {
            Some(Ws::login_to(&self.addr, &actor).await)
        } else {
            None
        };
        let mut joined = standing == Standing::Owner;
        let join = |who: &Account| (Method::POST, format!("{r}/join"), who.clone());
        // Edit or delete own: the actor wrote a message while a member, then got its
        // standing.
        let own = if op.needs_own_message() && standing != Standing::Suspended {
            if !joined {
                let (m, p, w) = join(&actor);
                self.must(m, &p, &w, None, 200).await;
                joined = true;
            }
            let socket = ws.as_mut().expect("socket");
            Some(Lane::post(socket, &room).await.0)
        } else {
            None
        };
        let member_path = |u: &Account, what: &str| format!("{r}/members/{}/{what}", u.id);
        match standing {
            Standing::NonMember | Standing::Invited | Standing::ServerAdmin => {
                if joined {
                    self.must(Method::POST, &format!("{r}/leave"), &actor, None, 200)
                        .await;
                }
                if standing == Standing::Invited {
                    let body = json!({"user": actor.id});
                    self.must(
                        Method::POST,
                        &format!("{r}/invites"),
                        &self.owner,
                        Some(body),
                        201,
                    )
                    .await;
                }
            }
            Standing::Banned => {
                let p = member_path(&actor, "ban");
                self.must(Method::POST, &p, &self.owner, None, 200).await;
            }
            Standing::Muted
            | Standing::Member
            | Standing::Moderator
            | Standing::Admin
            | Standing::Suspended => {
                if !joined {
                    let (m, p, w) = join(&actor);
                    self.must(m, &p, &w, None, 200).await;
                }
                if standing == Standing::Muted {
                    let p = member_path(&actor, "mute");
                    self.must(Method::POST, &p, &self.owner, None, 200).await;
                }
                if let Some(role) = standing.role().filter(|r| *r > Role::Member) {
                    let p = member_path(&actor, "role");
                    let body = json!({"role": role.as_str()});
                    self.must(Method::PUT, &p, &self.owner, Some(body), 200)
                        .await;
                }
            }
            Standing::Demoted | Standing::Unmuted | Standing::Kicked => {
                if !joined {
                    let (m, p, w) = join(&actor);
                    self.must(m, &p, &w, None, 200).await;
                }
                let role = member_path(&actor, "role");
                if standing == Standing::Demoted {
                    let body = json!({"role": "moderator"});
                    self.must(Method::PUT, &role, &self.owner, Some(body), 200)
                        .await;
                }
                if standing == Standing::Unmuted {
                    let p = member_path(&actor, "mute");
                    self.must(Method::POST, &p, &self.owner, None, 200).await;
                }
                // The gateway learns the standing (and the socket subscribes).
                if let Some(ws) = ws.as_mut() {
                    assert_eq!(ws_subscribe(ws, &room).await, Outcome::ws("ok"));
                }
                let (m, p, body) = match standing {
                    Standing::Demoted => (Method::PUT, role, Some(json!({"role": "member"}))),
                    Standing::Unmuted => (Method::POST, member_path(&actor, "unmute"), None),
                    _ => (Method::POST, member_path(&actor, "kick"), None),
                };
                self.must(m, &p, &self.owner, body, 200).await;
            }
            Standing::Owner => {}
        }

        // The target.
        let target = target_of(op, standing.actor());
        if let Some(role) = target {
            let (m, p, w) = join(&self.victim);
            self.must(m, &p, &w, None, 200).await;
            if role > Role::Member {
                let p = member_path(&self.victim, "role");
                let body = json!({"role": role.as_str()});
                self.must(Method::PUT, &p, &self.owner, Some(body), 200)
                    .await;
            }
            if op == Op::Unmute {
                let p = member_path(&self.victim, "mute");
                self.must(Method::POST, &p, &self.owner, None, 200).await;
            }
        }
        if op == Op::Unban {
            let p = member_path(&self.victim, "ban");
            self.must(Method::POST, &p, &self.owner, None, 200).await;
        }

        if vis == Visibility::Private {
            let body = json!({"visibility": "private"});
            self.must(Method::PATCH, &r, &self.owner, Some(body), 200)
                .await;
        }

        if standing == Standing::Suspended {
            let p = format!("/api/admin/users/{}/suspend", actor.id);
            self.must(Method::POST, &p, &self.admin, None, 204).await;
            if !self.saw_login_refused {
                let (s, v) = self.login(&actor).await;
                assert_eq!(
                    (s, v["error"]["code"].as_str()),
                    (403, Some("suspended")),
                    "a suspended account logs in: {v}"
                );
                self.saw_login_refused = true;
            }
        }

        // The operation, as the actor.
        let outcome = if let Some(ws) = ws.as_mut() {
            if standing == Standing::Suspended {
                suspended_socket(ws, &self.addr, &actor).await
            } else {
                self.ws_op(ws, op, &room, own.as_deref(), other.as_ref())
                    .await
            }
        } else {
            self.http_op(op, &r, &actor, standing).await
        };

        if standing == Standing::Suspended {
            let p = format!("/api/admin/users/{}/reinstate", actor.id);
            self.must(Method::POST, &p, &self.admin, None, 204).await;
            let (s, v) = self.login(&actor).await;
            assert_eq!(s, 200, "login after reinstatement: {v}");
            self.suspendee.token = v["token"].as_str().expect("token").to_owned();
        }
        outcome
    }

    /// Runs one cell of the target rules: a fresh public room, the actor in its
    /// standing, the target; then the action as the actor.
    async fn target_cell(&mut self, standing: Standing, op: TargetOp, target: Target) -> Outcome {
        let name = format!("gt-{}", &Uuid::new_v4().simple().to_string()[..12]);
        let (s, v) = self
            .api(
                Method::POST,
                "/api/rooms",
                &self.owner,
                Some(json!({"name": name})),
            )
            .await;
        assert_eq!(s, 201, "create room: {v}");
        let r = format!("/api/rooms/{}", v["id"].as_str().expect("room id"));
        let actor = match standing {
            Standing::Owner => self.owner.clone(),
            Standing::ServerAdmin => self.admin.clone(),
            _ => self.actor.clone(),
        };
        let put_role = |who: &Account, role: Role| {
            (
                format!("{r}/members/{}/role", who.id),
                json!({"role": role.as_str()}),
            )
        };
        if let Some(role) = standing.role().filter(|r| *r < Role::Owner) {
            self.must(Method::POST, &format!("{r}/join"), &actor, None, 200)
                .await;
            if role > Role::Member {
                let (p, body) = put_role(&actor, role);
                self.must(Method::PUT, &p, &self.owner, Some(body), 200)
                    .await;
            }
        }
        let whom = match target {
            Target::Role(Role::Owner) => self.owner.clone(),
            Target::Itself => actor.clone(),
            Target::Role(role) => {
                self.must(Method::POST, &format!("{r}/join"), &self.victim, None, 200)
                    .await;
                if role > Role::Member {
                    let (p, body) = put_role(&self.victim, role);
                    self.must(Method::PUT, &p, &self.owner, Some(body), 200)
                        .await;
                }
                if op == TargetOp::Unmute {
                    let p = format!("{r}/members/{}/mute", self.victim.id);
                    self.must(Method::POST, &p, &self.owner, None, 200).await;
                }
                self.victim.clone()
            }
            Target::Outsider => self.victim.clone(),
        };
        let at = |what: &str| format!("{r}/members/{}/{what}", whom.id);
        let (m, path, body) = match op {
            TargetOp::Kick => (Method::POST, at("kick"), None),
            TargetOp::Ban => (Method::POST, at("ban"), None),
            TargetOp::Mute => (Method::POST, at("mute"), None),
            TargetOp::Unmute => (Method::POST, at("unmute"), None),
            TargetOp::SetRole(to) => (Method::PUT, at("role"), Some(json!({"role": to.as_str()}))),
            TargetOp::Transfer => (
                Method::POST,
                format!("{r}/owner"),
                Some(json!({"user": whom.id})),
            ),
        };
        let (s, v) = self.api(m, &path, &actor, body).await;
        let answer = code_of(s, &v);
        // Whatever the answer, the room has one owner.
        let (s, members) = self
            .api(Method::GET, &format!("{r}/members"), &self.owner, None)
            .await;
        assert_eq!(s, 200, "members: {members}");
        let owners = members
            .as_array()
            .expect("members")
            .iter()
            .filter(|m| m["role"] == "owner")
            .count();
        if owners != 1 {
            return Outcome::http(answer.status, &format!("{}+owners:{owners}", answer.code));
        }
        answer
    }

    async fn http_op(&self, op: Op, r: &str, actor: &Account, standing: Standing) -> Outcome {
        let victim = |what: &str| format!("{r}/members/{}/{what}", self.victim.id);
        let (m, path, body) = match op {
            Op::Kick => (Method::POST, victim("kick"), None),
            Op::Ban => (Method::POST, victim("ban"), None),
            Op::Unban => (Method::POST, victim("unban"), None),
            Op::Mute => (Method::POST, victim("mute"), None),
            Op::Unmute => (Method::POST, victim("unmute"), None),
            Op::SetRole => {
                let (_, to) = role_change(standing.actor());
                (
                    Method::PUT,
                    victim("role"),
                    Some(json!({"role": to.as_str()})),
                )
            }
            Op::Transfer => (
                Method::POST,
                format!("{r}/owner"),
                Some(json!({"user": self.victim.id})),
            ),
            Op::Settings => (
                Method::PATCH,
                r.to_owned(),
                Some(json!({"topic": "governed"})),
            ),
            Op::DeleteRoom => (Method::DELETE, r.to_owned(), None),
            Op::ModLog => (Method::GET, format!("{r}/moderation"), None),
            Op::Bans => (Method::GET, format!("{r}/bans"), None),
            Op::Invite => (
                Method::POST,
                format!("{r}/invites"),
                Some(json!({"user": self.victim.id})),
            ),
            Op::CreateLink => (Method::POST, format!("{r}/links"), Some(json!({}))),
            Op::ListLinks => (Method::GET, format!("{r}/links"), None),
            Op::Members => (Method::GET, format!("{r}/members"), None),
            Op::Messages => (Method::GET, format!("{r}/messages"), None),
            Op::Join => (Method::POST, format!("{r}/join"), None),
            Op::Leave => (Method::POST, format!("{r}/leave"), None),
            _ => unreachable!("{op:?} is a WebSocket operation"),
        };
        let (s, v) = self.api(m, &path, actor, body).await;
        code_of(s, &v)
    }

    async fn ws_op(
        &self,
        ws: &mut Ws,
        op: Op,
        room: &str,
        own: Option<&str>,
        other: Option<&(String, i64)>,
    ) -> Outcome {
        let other_id = || other.map(|o| o.0.clone()).expect("someone else's message");
        match op {
            Op::Subscribe => ws_subscribe(ws, room).await,
            Op::Send => {
                let f =
                    json!({"type": "send", "room": room, "client_msg_id": cmid(), "body": "hi"});
                ws_outcome(&ws_call(ws, f).await)
            }
            Op::EditOwn => {
                let f = json!({"type": "edit", "room": room, "message_id": own.expect("own message"),
                               "client_msg_id": cmid(), "body": "edited"});
                ws_outcome(&ws_call(ws, f).await)
            }
            Op::DeleteOwn => {
                let f = json!({"type": "delete", "room": room, "message_id": own.expect("own message"),
                               "client_msg_id": cmid()});
                ws_outcome(&ws_call(ws, f).await)
            }
            Op::DeleteOthers => {
                let f = json!({"type": "delete", "room": room, "message_id": other_id(),
                               "client_msg_id": cmid()});
                ws_outcome(&ws_call(ws, f).await)
            }
            Op::React => {
                let f = json!({"type": "react", "room": room, "message_id": other_id(),
                               "client_msg_id": cmid(), "emoji": "👍", "on": true});
                ws_outcome(&ws_call(ws, f).await)
            }
            Op::Typing => {
                // After a subscribe (refused or not).
                let _ = ws_subscribe(ws, room).await;
                ws.send(json!({"type": "typing", "room": room})).await;
                ws_fence(ws, "typing").await
            }
            Op::Read => {
                let position = other.map(|o| o.1).expect("a position");
                ws.send(json!({"type": "read", "room": room, "position": position}))
                    .await;
                ws_fence(ws, "read").await
            }
            _ => unreachable!("{op:?} is an HTTP operation"),
        }
    }
}

/// A suspended user's sockets: the open one is closed 4401, and a new one's `hello`
/// with the old token too.
async fn suspended_socket(ws: &mut Ws, addr: &str, who: &Account) -> Outcome {
    let open = ws.close_code(Duration::from_secs(15)).await;
    let mut fresh = Ws::connect_to(addr).await;
    fresh
        .send(json!({"type": "hello", "token": who.token}))
        .await;
    let again = fresh.close_code(Duration::from_secs(15)).await;
    match (open, again) {
        (Some(4401), Some(4401)) => Outcome::ws("close:4401"),
        (a, b) => Outcome::ws(&format!("close:{a:?}/{b:?}")),
    }
}

// ----------------------------------------------------------------------- the matrix

/// Concurrent workers, each with users of its own (cells run one at a time in each).
const LANES: usize = 4;

/// Makes the named user a server administrator with the binary, as an operator does.
async fn grant_admin(env: &Env, name: &str) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat"));
    cmd.args(["admin", "grant", name]);
    for var in [
        "DATABASE_URL",
        "DATABASE_URL_FILE",
        "DATABASE_CA_FILE",
        "DATA_DIR",
    ] {
        cmd.env_remove(var);
    }
    if env.mode == Mode::Embedded {
        cmd.arg("--data-dir").arg(env.log_dir.join("data"));
    } else {
        cmd.args(["--database-url", &env.db_url]);
        if let Some(ca) = &env.ca_file {
            cmd.arg("--database-ca-file").arg(ca);
        }
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("chat admin grant within 60 s")
        .expect("run chat admin grant");
    assert!(
        out.status.success(),
        "chat admin grant {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Registers `n` users at once.
async fn register_many(http: &Http, prefix: &str, n: usize) -> Vec<Account> {
    futures_util::future::join_all((0..n).map(|_| http.register(prefix))).await
}

/// A cell of either matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Job {
    Standing(Visibility, Standing, Op),
    Target(Standing, TargetOp, Target),
}

impl Job {
    fn expected(self) -> Outcome {
        match self {
            Job::Standing(vis, s, op) => expected(s, op, vis),
            Job::Target(s, op, t) => expected_on(s, op, t),
        }
    }
}

/// Appends a table (rows × columns of answers) to `out`; a cell whose answer is not the
/// expected one is marked `*` and described in `wrong`.
fn table<R: Copy, C: Copy>(
    out: &mut String,
    wrong: &mut Vec<String>,
    title: &str,
    rows: &[(R, String)],
    cols: &[(C, String)],
    find: impl Fn(R, C) -> Job,
    answers: &[(Job, Outcome)],
) {
    let _ = write!(out, "\n{title:<13}");
    for (_, c) in cols {
        let _ = write!(out, "{c:>8}");
    }
    out.push('\n');
    for (r, label) in rows {
        let _ = write!(out, "{label:<13}");
        for (c, _) in cols {
            let job = find(*r, *c);
            let got = &answers
                .iter()
                .find(|(j, _)| *j == job)
                .expect("every cell is run")
                .1;
            let want = job.expected();
            let mark = if *got == want { "" } else { "*" };
            let _ = write!(out, "{:>8}", format!("{mark}{}", got.short()));
            if *got != want {
                wrong.push(format!("{job:?}: expected {want:?}, got {got:?}"));
            }
        }
        out.push('\n');
    }
}

/// Both matrices as tables (standing × operation per visibility; actor × target per
/// action), and the cells that differ from the table.
fn render(answers: &[(Job, Outcome)]) -> (String, usize) {
    let mut out = String::new();
    let mut wrong = Vec::new();
    let standings: Vec<(Standing, String)> = STANDINGS
        .iter()
        .map(|s| (*s, s.label().to_owned()))
        .collect();
    let ops: Vec<(Op, String)> = OPS.iter().map(|o| (*o, o.label().to_owned())).collect();
    for vis in [Visibility::Public, Visibility::Private] {
        let title = format!("{vis:?} room");
        let find = |s, op| Job::Standing(vis, s, op);
        table(
            &mut out, &mut wrong, &title, &standings, &ops, find, answers,
        );
    }
    let changed: Vec<(Standing, String)> =
        CHANGED.iter().map(|s| (*s, s.label().to_owned())).collect();
    let ws_ops: Vec<(Op, String)> = OPS
        .iter()
        .filter(|o| o.ws())
        .map(|o| (*o, o.label().to_owned()))
        .collect();
    for vis in [Visibility::Public, Visibility::Private] {
        let title = format!("{vis:?}, after");
        let find = |s, op| Job::Standing(vis, s, op);
        table(
            &mut out, &mut wrong, &title, &changed, &ws_ops, find, answers,
        );
    }
    let actors: Vec<(Standing, String)> = TARGET_ACTORS
        .iter()
        .map(|s| (*s, s.label().to_owned()))
        .collect();
    let targets: Vec<(Target, String)> =
        TARGETS.iter().map(|t| (*t, t.label().to_owned())).collect();
    for op in TARGET_OPS {
        let title = format!("{} on", op.label());
        let find = |s, t| Job::Target(s, op, t);
        table(
            &mut out, &mut wrong, &title, &actors, &targets, find, answers,
        );
    }
    let n = wrong.len();
    for w in wrong {
        let _ = writeln!(out, "  * {w}");
    }
    (out, n)
}

async fn matrix(mode: Mode) {
    // Every action of the table is exercised by some operation.
    for action in Action::ALL {
        assert!(
            OPS.iter().any(|op| op.action() == Some(action)),
            "{action:?} has no operation in the matrix"
        );
    }
    let env = Env::with_mode("gov-matrix", mode).await;
    let cluster: Cluster = env
        .start_with(
            1,
            &[
                "--room-create-per-minute",
                "100000",
                "--max-rooms-per-user",
                "0",
            ],
        )
        .await;
    let gw = cluster.gw(0);
    let http = Http::new(gw);
    let users = register_many(&http, "gm", LANES * 6).await;
    let mut lanes = Vec::new();
    for u in users.chunks(6) {
        grant_admin(&env, &u[4].name).await;
        lanes.push(Lane {
            http: http.clone(),
            addr: gw.addr.clone(),
            owner: u[0].clone(),
            actor: u[1].clone(),
            victim: u[2].clone(),
            author: u[3].clone(),
            author_ws: Ws::login_to(&gw.addr, &u[3]).await,
            admin: u[4].clone(),
            suspendee: u[5].clone(),
            saw_login_refused: false,
        });
    }

    let mut jobs: Vec<Job> = Vec::new();
    for vis in [Visibility::Public, Visibility::Private] {
        for s in STANDINGS {
            for op in OPS {
                jobs.push(Job::Standing(vis, s, op));
            }
        }
    }
    for vis in [Visibility::Public, Visibility::Private] {
        for s in CHANGED {
            for op in OPS.into_iter().filter(|op| op.ws()) {
                jobs.push(Job::Standing(vis, s, op));
            }
        }
    }
    for s in TARGET_ACTORS {
        for op in TARGET_OPS {
            for t in TARGETS {
                jobs.push(Job::Target(s, op, t));
            }
        }
    }
    let queue: Arc<Mutex<VecDeque<Job>>> = Arc::new(Mutex::new(jobs.iter().copied().collect()));
    let answers: Arc<Mutex<Vec<(Job, Outcome)>>> = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut lane in lanes {
        let (queue, answers) = (queue.clone(), answers.clone());
        tasks.spawn(async move {
            loop {
                let next = queue.lock().expect("queue").pop_front();
                let Some(job) = next else { break };
                let run = async {
                    match job {
                        Job::Standing(vis, s, op) => lane.cell(vis, s, op).await,
                        Job::Target(s, op, t) => lane.target_cell(s, op, t).await,
                    }
                };
                let got = tokio::time::timeout(Duration::from_secs(60), run)
                    .await
                    .unwrap_or_else(|_| panic!("{job:?} took over 60 s"));
                answers.lock().expect("answers").push((job, got));
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    let elapsed = started.elapsed();
    let answers = std::mem::take(&mut *answers.lock().expect("answers"));
    assert_eq!(answers.len(), jobs.len(), "every cell ran");
    let (tables, wrong) = render(&answers);
    println!(
        "{mode:?}: {} cells ({} standings x {} operations x 2 visibilities, {} changed standings \
         x {} WebSocket operations x 2 visibilities, and {} actors x {} actions x {} targets) \
         in {:.1} s{tables}",
        jobs.len(),
        STANDINGS.len(),
        OPS.len(),
        CHANGED.len(),
        OPS.iter().filter(|o| o.ws()).count(),
        TARGET_ACTORS.len(),
        TARGET_OPS.len(),
        TARGETS.len(),
        elapsed.as_secs_f64()
    );
    assert_eq!(
        wrong, 0,
        "{wrong} cells of the authorization matrix differ from the table:{tables}"
    );
}

both_modes!(matrix);

// ------------------------------------------------ private rooms, invite links, groups

fn err_code(v: &Value) -> Option<&str> {
    v["error"]["code"].as_str()
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("a JSON array")
        .iter()
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect()
}

/// Private rooms are listed to members only and are not found by the user search; an
/// invite link used up or revoked is refused 410 `invite_invalid`, a lifetime under a
/// minute 400 `invalid_expiry`; group DMs have 3 to `--max-group-members` (10) members.
async fn rooms_links_groups(mode: Mode) {
    let env = Env::with_mode("gov-links", mode).await;
    let cluster = env.start(1).await;
    let http = Http::new(cluster.gw(0));
    let tag = &Uuid::new_v4().simple().to_string()[..8];
    let people = register_many(&http, "gl", 19).await;
    let (owner, outsider, a, b, c) = (&people[0], &people[1], &people[2], &people[3], &people[4]);
    let call = |m: Method, path: String, who: &Account, body: Option<Value>| {
        let (http, token) = (http.clone(), who.token.clone());
        async move { http.call(m, &path, Some(&token), body).await }
    };

    // A private room and a public one; a user whose name starts like the private room's.
    let private_name = format!("pv{tag}");
    let (s, v) = call(
        Method::POST,
        "/api/rooms".into(),
        owner,
        Some(json!({"name": format!("{private_name} room"), "visibility": "private"})),
    )
    .await;
    assert_eq!(s, 201, "create a private room: {v}");
    assert_eq!(v["visibility"], "private");
    assert_eq!(v["my_role"], "owner");
    let private = v["id"].as_str().expect("id").to_owned();
    let public = http.create_room(owner, &format!("pb{tag}")).await;
    let (s, v) = http
        .call(
            Method::POST,
            "/api/register",
            None,
            Some(json!({"username": private_name, "password": PASSWORD})),
        )
        .await;
    assert_eq!(s, 201, "register: {v}");
    let namesake = v["user"]["id"].as_str().expect("id").to_owned();

    let (s, listed) = call(Method::GET, "/api/rooms".into(), outsider, None).await;
    assert_eq!(s, 200, "{listed}");
    let listed = ids(&listed);
    assert!(listed.contains(&public), "the public room is listed");
    assert!(
        !listed.contains(&private),
        "a private room is not listed to a non-member"
    );
    let (_, listed) = call(Method::GET, "/api/rooms".into(), owner, None).await;
    assert!(
        ids(&listed).contains(&private),
        "its members see a private room"
    );
    let (s, found) = call(
        Method::GET,
        format!("/api/users?q={private_name}"),
        outsider,
        None,
    )
    .await;
    assert_eq!(s, 200, "{found}");
    assert_eq!(ids(&found), vec![namesake], "the search finds users only");
    for u in found.as_array().expect("array") {
        let mut keys: Vec<&str> = u
            .as_object()
            .expect("object")
            .keys()
            .map(|k| k.as_str())
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, ["id", "name"], "a user is an id and a name: {u}");
    }
    let (s, v) = call(
        Method::POST,
        format!("/api/rooms/{private}/join"),
        outsider,
        None,
    )
    .await;
    assert_eq!((s, err_code(&v)), (403, Some("forbidden")), "{v}");

    // Invite links: used up, revoked, unknown; lifetimes.
    let links = format!("/api/rooms/{private}/links");
    let (s, v) = call(
        Method::POST,
        links.clone(),
        owner,
        Some(json!({"expires_in_secs": 59})),
    )
    .await;
    assert_eq!((s, err_code(&v)), (400, Some("invalid_expiry")), "{v}");
    let (s, v) = call(
        Method::POST,
        links.clone(),
        owner,
        Some(json!({"expires_in_secs": 30 * 24 * 3600 + 1})),
    )
    .await;
    assert_eq!((s, err_code(&v)), (400, Some("invalid_expiry")), "{v}");
    let (s, once) = call(
        Method::POST,
        links.clone(),
        owner,
        Some(json!({"expires_in_secs": 60, "max_uses": 1})),
    )
    .await;
    assert_eq!(s, 201, "{once}");
    assert_eq!(once["max_uses"], 1);
    assert_eq!(once["uses"], 0);
    let once = once["code"].as_str().expect("code").to_owned();
    let (s, v) = call(Method::GET, format!("/api/links/{once}"), a, None).await;
    assert_eq!(s, 200, "preview: {v}");
    assert_eq!(v["room"]["id"], private.as_str());
    let (s, v) = call(Method::POST, format!("/api/links/{once}/join"), a, None).await;
    assert_eq!(s, 200, "join by link: {v}");
    assert_eq!(
        (v["member"].as_bool(), v["my_role"].as_str()),
        (Some(true), Some("member"))
    );
    // The link is used up: refused to the next one, gone from previews and the list.
    let (s, v) = call(Method::POST, format!("/api/links/{once}/join"), b, None).await;
    assert_eq!(
        (s, err_code(&v)),
        (410, Some("invite_invalid")),
        "used up: {v}"
    );
    let (s, v) = call(Method::GET, format!("/api/links/{once}"), b, None).await;
    assert_eq!(
        (s, err_code(&v)),
        (410, Some("invite_invalid")),
        "used up: {v}"
    );
    let (s, listed) = call(Method::GET, links.clone(), owner, None).await;
    assert_eq!(s, 200, "{listed}");
    assert!(
        listed
            .as_array()
            .expect("array")
            .iter()
            .all(|l| l["code"] != once.as_str()),
        "a used-up link is not listed: {listed}"
    );
    let (s, open) = call(Method::POST, links.clone(), owner, Some(json!({}))).await;
    assert_eq!(s, 201, "{open}");
    assert!(open["max_uses"].is_null(), "unlimited by default: {open}");
    let open = open["code"].as_str().expect("code").to_owned();
    let (s, v) = call(Method::DELETE, format!("{links}/{open}"), owner, None).await;
    assert_eq!(s, 204, "revoke: {v}");
    let (s, v) = call(Method::POST, format!("/api/links/{open}/join"), b, None).await;
    assert_eq!(
        (s, err_code(&v)),
        (410, Some("invite_invalid")),
        "revoked: {v}"
    );
    let (s, v) = call(Method::GET, format!("/api/links/{open}"), b, None).await;
    assert_eq!(
        (s, err_code(&v)),
        (410, Some("invite_invalid")),
        "revoked: {v}"
    );
    let unknown = Uuid::new_v4().simple().to_string();
    let (s, v) = call(Method::POST, format!("/api/links/{unknown}/join"), b, None).await;
    assert_eq!(
        (s, err_code(&v)),
        (410, Some("invite_invalid")),
        "unknown: {v}"
    );
    let (_, members) = call(
        Method::GET,
        format!("/api/rooms/{private}/members"),
        owner,
        None,
    )
    .await;
    assert_eq!(
        members.as_array().map(Vec::len),
        Some(2),
        "only the owner and the one who used the link: {members}"
    );

    // Invites into the private room: accepted, revoked, to a banned user, to a member.
    let (d, e, f) = (&people[15], &people[16], &people[17]);
    let invites = format!("/api/rooms/{private}/invites");
    let (s, inv) = call(
        Method::POST,
        invites.clone(),
        owner,
        Some(json!({"user": d.id})),
    )
    .await;
    assert_eq!(s, 201, "invite: {inv}");
    let (_, pending) = call(Method::GET, "/api/invites".into(), d, None).await;
    assert_eq!(
        ids(&pending),
        vec![inv["id"].as_str().expect("id").to_owned()],
        "{pending}"
    );
    assert_eq!(pending[0]["room"], private.as_str());
    let (s, v) = call(Method::POST, format!("/api/rooms/{private}/join"), d, None).await;
    assert_eq!(
        (s, err_code(&v)),
        (403, Some("forbidden")),
        "invited, joining: {v}"
    );
    let (s, v) = call(
        Method::POST,
        format!("/api/invites/{}/accept", inv["id"].as_str().expect("id")),
        d,
        None,
    )
    .await;
    assert_eq!(s, 200, "accept: {v}");
    assert_eq!(
        (v["member"].as_bool(), v["my_role"].as_str()),
        (Some(true), Some("member"))
    );
    let (_, listed) = call(Method::GET, "/api/rooms".into(), d, None).await;
    assert!(
        ids(&listed).contains(&private),
        "a member by invite sees the private room"
    );
    let (s, inv) = call(
        Method::POST,
        invites.clone(),
        owner,
        Some(json!({"username": e.name})),
    )
    .await;
    assert_eq!(s, 201, "invite by name: {inv}");
    let inv = inv["id"].as_str().expect("id").to_owned();
    let (s, v) = call(Method::DELETE, format!("/api/invites/{inv}"), owner, None).await;
    assert_eq!(s, 204, "revoke the invite: {v}");
    let (_, pending) = call(Method::GET, "/api/invites".into(), e, None).await;
    assert_eq!(pending, json!([]), "a revoked invite is not pending");
    let (s, v) = call(Method::POST, format!("/api/invites/{inv}/accept"), e, None).await;
    assert_eq!(
        (s, err_code(&v)),
        (410, Some("invite_invalid")),
        "a revoked invite: {v}"
    );
    let (s, v) = call(
        Method::POST,
        format!("/api/rooms/{private}/members/{}/ban", f.id),
        owner,
        None,
    )
    .await;
    assert_eq!(s, 200, "ban a non-member: {v}");
    let (s, v) = call(
        Method::POST,
        invites.clone(),
        owner,
        Some(json!({"user": f.id})),
    )
    .await;
    assert_eq!(
        (s, err_code(&v)),
        (403, Some("banned")),
        "invite a banned user: {v}"
    );
    let (s, link) = call(Method::POST, links.clone(), owner, Some(json!({}))).await;
    assert_eq!(s, 201, "{link}");
    let link = link["code"].as_str().expect("code").to_owned();
    let (s, v) = call(Method::POST, format!("/api/links/{link}/join"), f, None).await;
    assert_eq!(
        (s, err_code(&v)),
        (403, Some("banned")),
        "a banned user's link: {v}"
    );
    let (s, v) = call(
        Method::POST,
        invites.clone(),
        owner,
        Some(json!({"user": a.id})),
    )
    .await;
    assert_eq!(
        (s, err_code(&v)),
        (409, Some("already_member")),
        "invite a member: {v}"
    );
    // Nobody invites into a direct message; only server administrators suspend.
    let (s, dm) = call(
        Method::POST,
        "/api/dms".into(),
        c,
        Some(json!({"user": outsider.id})),
    )
    .await;
    assert_eq!(s, 201, "a DM: {dm}");
    let dm = dm["id"].as_str().expect("id").to_owned();
    let (s, v) = call(
        Method::POST,
        format!("/api/rooms/{dm}/invites"),
        c,
        Some(json!({"user": a.id})),
    )
    .await;
    assert_eq!(
        (s, err_code(&v)),
        (403, Some("forbidden")),
        "invite into a DM: {v}"
    );
    let (s, v) = call(
        Method::POST,
        format!("/api/admin/users/{}/suspend", a.id),
        owner,
        None,
    )
    .await;
    assert_eq!(
        (s, err_code(&v)),
        (403, Some("forbidden")),
        "suspend as a non-admin: {v}"
    );
    let (s, v) = call(Method::GET, "/api/admin/users".into(), owner, None).await;
    assert_eq!(
        (s, err_code(&v)),
        (403, Some("forbidden")),
        "list accounts as a non-admin: {v}"
    );

    // Group DMs: 3 to 10 members, the creator included.
    let others = &people[5..15];
    let group_of =
        |n: usize| json!({"users": others[..n].iter().map(|u| u.id.clone()).collect::<Vec<_>>()});
    let (s, v) = call(Method::POST, "/api/groups".into(), c, Some(group_of(1))).await;
    assert_eq!(
        (s, err_code(&v)),
        (400, Some("group_size")),
        "2 people: {v}"
    );
    let (s, v) = call(Method::POST, "/api/groups".into(), c, Some(group_of(10))).await;
    assert_eq!(
        (s, err_code(&v)),
        (400, Some("group_size")),
        "11 people: {v}"
    );
    let (s, small) = call(Method::POST, "/api/groups".into(), c, Some(group_of(2))).await;
    assert_eq!(s, 201, "3 people: {small}");
    assert_eq!(
        (small["kind"].as_str(), small["members"].as_i64()),
        (Some("group"), Some(3))
    );
    let (s, full) = call(Method::POST, "/api/groups".into(), c, Some(group_of(9))).await;
    assert_eq!(s, 201, "10 people: {full}");
    assert_eq!(full["members"], 10);
    assert_eq!(full["visibility"], "private");
    let full = full["id"].as_str().expect("id").to_owned();
    let (s, v) = call(
        Method::POST,
        format!("/api/rooms/{full}/invites"),
        c,
        Some(json!({"user": a.id})),
    )
    .await;
    assert_eq!((s, err_code(&v)), (409, Some("group_full")), "an 11th: {v}");
    // Any member of a group may invite (while there is room).
    let small = small["id"].as_str().expect("id").to_owned();
    let (s, v) = call(
        Method::POST,
        format!("/api/rooms/{small}/invites"),
        &others[0],
        Some(json!({"user": a.id})),
    )
    .await;
    assert_eq!(s, 201, "a member invites into a group: {v}");
}

both_modes!(rooms_links_groups);

// ------------------------------------------------------------------------- blocking

/// A sends a message in the room on its own socket; its id.
async fn say(ws: &mut Ws, room: &str, body: &str) -> String {
    let v = ws_call(
        ws,
        json!({"type": "send", "room": room, "client_msg_id": cmid(), "body": body}),
    )
    .await;
    assert_eq!(v["type"], "ack", "send: {v}");
    v["message"]["id"].as_str().expect("id").to_owned()
}

/// The `blocked` flag of each message of the room's history as `who` reads it, by id,
/// once the history holds every message of `want` (the consumer stores them after the
/// ack in the distributed mode).
async fn blocked_flags(
    http: &Http,
    who: &Account,
    room: &str,
    want: &[&str],
) -> Vec<(String, Option<bool>)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, v) = http
            .call(
                Method::GET,
                &format!("/api/rooms/{room}/messages"),
                Some(&who.token),
                None,
            )
            .await;
        assert_eq!(s, 200, "history: {v}");
        let flags: Vec<(String, Option<bool>)> = v["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| {
                (
                    m["id"].as_str().expect("id").to_owned(),
                    m.get("blocked").map(|b| b.as_bool().expect("a boolean")),
                )
            })
            .collect();
        if want.iter().all(|w| flags.iter().any(|(id, _)| id == w)) {
            return flags;
        }
        assert!(
            Instant::now() < deadline,
            "the history lacks some of {want:?} after 30 s: {flags:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Blocking: the blocked user cannot open a DM with the blocker nor put them in a group;
/// their invites to the blocker are dropped; the blocker's history flags their messages
/// (the blocker's only). Unblocking restores all of it.
async fn blocking(mode: Mode) {
    let env = Env::with_mode("gov-blocks", mode).await;
    let cluster = env.start(1).await;
    let gw = cluster.gw(0);
    let http = Http::new(gw);
    let people = register_many(&http, "gb", 3).await;
    let (blocker, blocked, third) = (&people[0], &people[1], &people[2]);
    let call = |m: Method, path: String, who: &Account, body: Option<Value>| {
        let (http, token) = (http.clone(), who.token.clone());
        async move { http.call(m, &path, Some(&token), body).await }
    };

    // A room all three are in, with a message of each of the other two.
    let room = http
        .create_room(
            third,
            &format!("gb-{}", &Uuid::new_v4().simple().to_string()[..8]),
        )
        .await;
    http.join(blocker, &room).await;
    http.join(blocked, &room).await;
    let mut ws_blocked = Ws::login(gw, blocked).await;
    let mut ws_third = Ws::login(gw, third).await;
    let from_blocked = say(&mut ws_blocked, &room, "before").await;
    let from_third = say(&mut ws_third, &room, "neutral").await;
    // The blocked user's own room, to invite from.
    let own_room = http
        .create_room(
            blocked,
            &format!("gb-{}", &Uuid::new_v4().simple().to_string()[..8]),
        )
        .await;

    let (s, v) = call(
        Method::PUT,
        format!("/api/blocks/{}", blocked.id),
        blocker,
        None,
    )
    .await;
    assert_eq!(s, 204, "block: {v}");
    let (_, list) = call(Method::GET, "/api/blocks".into(), blocker, None).await;
    assert_eq!(
        ids(&list),
        vec![blocked.id.clone()],
        "the block list: {list}"
    );
    let after = say(&mut ws_blocked, &room, "after").await;

    let (s, v) = call(
        Method::POST,
        "/api/dms".into(),
        blocked,
        Some(json!({"user": blocker.id})),
    )
    .await;
    assert_eq!(
        (s, err_code(&v)),
        (403, Some("blocked")),
        "a DM with the blocker: {v}"
    );
    let group = json!({"users": [blocker.id, third.id]});
    let (s, v) = call(
        Method::POST,
        "/api/groups".into(),
        blocked,
        Some(group.clone()),
    )
    .await;
    assert_eq!(
        (s, err_code(&v)),
        (403, Some("blocked")),
        "a group with the blocker: {v}"
    );
    let invite = json!({"user": blocker.id});
    let (s, v) = call(
        Method::POST,
        format!("/api/rooms/{own_room}/invites"),
        blocked,
        Some(invite.clone()),
    )
    .await;
    assert_eq!(s, 201, "an invite to the blocker looks sent: {v}");
    let (s, pending) = call(Method::GET, "/api/invites".into(), blocker, None).await;
    assert_eq!(s, 200, "{pending}");
    assert_eq!(pending, json!([]), "the invite was dropped");
    let all = [from_blocked.as_str(), from_third.as_str(), after.as_str()];
    let flags = blocked_flags(&http, blocker, &room, &all).await;
    for (id, flag) in &flags {
        let want = if *id == from_blocked || *id == after {
            Some(true)
        } else {
            None
        };
        assert_eq!(
            *flag, want,
            "the blocker's history, message {id}: {flags:?}"
        );
    }
    for reader in [third, blocked] {
        let flags = blocked_flags(&http, reader, &room, &all).await;
        assert!(
            flags.iter().all(|(_, f)| f.is_none()),
            "only the blocker's history is flagged: {flags:?}"
        );
    }

    let (s, v) = call(
        Method::DELETE,
        format!("/api/blocks/{}", blocked.id),
        blocker,
        None,
    )
    .await;
    assert_eq!(s, 204, "unblock: {v}");
    let (_, list) = call(Method::GET, "/api/blocks".into(), blocker, None).await;
    assert_eq!(list, json!([]), "the block list after unblocking");
    let flags = blocked_flags(&http, blocker, &room, &all).await;
    assert!(
        flags.iter().all(|(_, f)| f.is_none()),
        "unblocked: nothing flagged: {flags:?}"
    );
    let (s, v) = call(
        Method::POST,
        "/api/dms".into(),
        blocked,
        Some(json!({"user": blocker.id})),
    )
    .await;
    assert_eq!(s, 201, "a DM after unblocking: {v}");
    let (s, v) = call(Method::POST, "/api/groups".into(), blocked, Some(group)).await;
    assert_eq!(s, 201, "a group after unblocking: {v}");
    let (s, v) = call(
        Method::POST,
        format!("/api/rooms/{own_room}/invites"),
        blocked,
        Some(invite),
    )
    .await;
    assert_eq!(s, 201, "an invite after unblocking: {v}");
    let (_, pending) = call(Method::GET, "/api/invites".into(), blocker, None).await;
    let rooms: Vec<&str> = pending
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|i| i["room"].as_str())
        .collect();
    assert_eq!(
        rooms,
        vec![own_room.as_str()],
        "the invite arrives: {pending}"
    );
}

both_modes!(blocking);
