//! The `Store` implementation, written once for both backends. This file is compiled
//! twice, as `postgres::queries` and `sqlite::queries`: each parent module supplies
//! `Backend` (the store type, with `conn()`), `schema` (its tables: the same names, the
//! backend's column types), `SqlUuid` (how it stores a UUID), `db_error` (how it classifies
//! errors), `committed_offset` (where its persisted log ends), `MigrationConn` (the
//! synchronous connection migrations run on) and the `write_transaction!` macro (how it
//! begins a transaction that writes). Nothing else differs,
//! so the two cannot drift apart.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{BigInt, Bool, Integer, Nullable, Text};
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::schema::{
    blocks, consumer_offsets, memberships, mentions, messages, mutes, reactions, rooms, users,
};
use super::{
    committed_offset, db_error, insert_messages, Backend, Conn, MigrationConn, SqlTime, SqlUuid,
};
use crate::events::{self, Limits, RuleError, Target, MAX_MENTIONS};
use crate::governance::Role;
use crate::model::{
    name_key, Change, Member, Message, MessageId, Position, ReactionCount, RoomId, RoomKind,
    RoomView, User, UserId, Visibility, REACTION_USERS_SHOWN,
};
use crate::store::sql_types::Id;
use crate::store::{Credentials, EditEntry, HistoryPage, Room, RoomsPage, Store, StoreError};

pub(super) fn is_unique_violation(e: &DieselError) -> bool {
    matches!(
        e,
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)
    )
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = messages)]
pub(super) struct MessageRow {
    id: Id,
    room_id: Id,
    sender_id: Id,
    sender_name: String,
    client_msg_id: String,
    body: String,
    pub(super) position: i64,
    sent_at: DateTime<Utc>,
    kind: String,
    target_id: Option<Id>,
    reply_to: Option<Id>,
    mentions: Option<String>,
    emoji: Option<String>,
    reaction_on: Option<bool>,
    edited_at: Option<DateTime<Utc>>,
    deleted_at: Option<DateTime<Utc>>,
    reply_count: i32,
    last_reply_at: Option<DateTime<Utc>>,
    detail: Option<String>,
}

impl From<MessageRow> for Message {
    fn from(r: MessageRow) -> Self {
        let change = match (r.kind.as_str(), r.target_id) {
            // A governance event's fields, as the log carried them.
            ("member" | "room", _) => r
                .detail
                .as_deref()
                .and_then(|d| serde_json::from_str(d).ok()),
            ("edit", Some(t)) => Some(Change::Edit { message_id: t.0 }),
            ("delete", Some(t)) => Some(Change::Delete { message_id: t.0 }),
            ("reaction", Some(t)) => Some(Change::Reaction {
                message_id: t.0,
                emoji: r.emoji.unwrap_or_default(),
                on: r.reaction_on.unwrap_or(true),
            }),
            _ => None,
        };
        let mentions = r
            .mentions
            .as_deref()
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_default();
        Message {
            id: r.id.0,
            room: r.room_id.0,
            sender: User {
                id: r.sender_id.0,
                name: r.sender_name,
            },
            body: r.body,
            client_msg_id: r.client_msg_id,
            position: r.position,
            sent_at: r.sent_at,
            reply_to: r.reply_to.map(|i| i.0),
            mentions,
            change,
            edited_at: r.edited_at,
            deleted: r.deleted_at.is_some(),
            reactions: None,
            reply_count: (r.reply_count > 0).then_some(i64::from(r.reply_count)),
            last_reply_at: r.last_reply_at,
            blocked: false,
        }
    }
}

#[derive(Insertable)]
#[diesel(table_name = messages)]
pub(super) struct NewMessageRow<'a> {
    id: Id,
    room_id: Id,
    sender_id: Id,
    sender_name: &'a str,
    client_msg_id: &'a str,
    body: &'a str,
    position: i64,
    log_partition: i32,
    sent_at: DateTime<Utc>,
    kind: &'static str,
    target_id: Option<Id>,
    reply_to: Option<Id>,
    mentions: Option<String>,
    emoji: Option<&'a str>,
    reaction_on: Option<bool>,
    detail: Option<String>,
}

/// A record appended to SQLite's messages table, which gives it its position.
#[derive(Insertable)]
#[diesel(table_name = messages)]
pub(super) struct AppendRow<'a> {
    id: Id,
    room_id: Id,
    sender_id: Id,
    sender_name: &'a str,
    client_msg_id: &'a str,
    body: &'a str,
    sent_at: DateTime<Utc>,
    kind: &'static str,
    target_id: Option<Id>,
    reply_to: Option<Id>,
    mentions: Option<String>,
    emoji: Option<&'a str>,
    reaction_on: Option<bool>,
    detail: Option<String>,
}

impl<'a> NewMessageRow<'a> {
    /// SQLite's append (the PostgreSQL build of this file does not use it).
    #[allow(dead_code)]
    pub(super) fn without_position(self) -> AppendRow<'a> {
        AppendRow {
            id: self.id,
            room_id: self.room_id,
            sender_id: self.sender_id,
            sender_name: self.sender_name,
            client_msg_id: self.client_msg_id,
            body: self.body,
            sent_at: self.sent_at,
            kind: self.kind,
            target_id: self.target_id,
            reply_to: self.reply_to,
            mentions: self.mentions,
            emoji: self.emoji,
            reaction_on: self.reaction_on,
            detail: self.detail,
        }
    }

    pub(super) fn of(m: &'a Message, log_partition: i32) -> Self {
        let (kind, target_id, emoji, reaction_on) = match &m.change {
            None => ("message", None, None, None),
            Some(c @ Change::Reaction { emoji, on, .. }) => (
                "reaction",
                c.target().map(Id),
                Some(emoji.as_str()),
                Some(*on),
            ),
            Some(c) => (c.kind(), c.target().map(Id), None, None),
        };
        let detail = m
            .change
            .as_ref()
            .filter(|c| c.is_governance())
            .and_then(|c| serde_json::to_string(c).ok());
        NewMessageRow {
            id: Id(m.id),
            room_id: Id(m.room),
            sender_id: Id(m.sender.id),
            sender_name: &m.sender.name,
            client_msg_id: &m.client_msg_id,
            body: &m.body,
            position: m.position,
            log_partition,
            sent_at: m.sent_at,
            kind,
            target_id,
            reply_to: m.reply_to.map(Id),
            mentions: (!m.mentions.is_empty())
                .then(|| serde_json::to_string(&m.mentions).unwrap_or_default()),
            emoji,
            reaction_on,
            detail,
        }
    }

    /// Whether the row can go in a multi-row insert: a plain message, which changes no
    /// other row.
    fn is_plain(&self) -> bool {
        self.kind == "message" && self.reply_to.is_none() && self.mentions.is_none()
    }
}

/// The state of message `id` that [`events::check`] needs, read in the caller's
/// transaction (None: no such message; event records are not messages).
pub(super) async fn load_target(
    c: &mut Conn,
    id: MessageId,
    actor: UserId,
    emoji: Option<&str>,
) -> QueryResult<Option<Target>> {
    use diesel::dsl::count_star;
    /// (room, author, sent_at, deleted_at, edit_count, reply_to)
    type Row = (
        Id,
        Id,
        DateTime<Utc>,
        Option<DateTime<Utc>>,
        i32,
        Option<Id>,
    );
    let row: Option<Row> = messages::table
        .filter(messages::id.eq(Id(id)))
        .filter(messages::kind.eq("message"))
        .select((
            messages::room_id,
            messages::sender_id,
            messages::sent_at,
            messages::deleted_at,
            messages::edit_count,
            messages::reply_to,
        ))
        .first(c)
        .await
        .optional()?;
    let Some((room, author, sent_at, deleted_at, edit_count, reply_to)) = row else {
        return Ok(None);
    };
    let mut t = Target {
        room: room.0,
        author: author.0,
        sent_at,
        deleted: deleted_at.is_some(),
        edit_count: i64::from(edit_count),
        reply_to: reply_to.map(|r| r.0),
        emoji_count: 0,
        has_emoji: false,
        my_reactions: 0,
        mine: false,
    };
    if let Some(emoji) = emoji {
        let of_message = || reactions::table.filter(reactions::message_id.eq(Id(id)));
        // At most `max_emoji_per_message` of them.
        let kinds: Vec<String> = of_message()
            .select(reactions::emoji)
            .distinct()
            .load(c)
            .await?;
        t.emoji_count = kinds.len() as i64;
        let with_emoji: i64 = of_message()
            .filter(reactions::emoji.eq(emoji))
            .select(count_star())
            .first(c)
            .await?;
        t.has_emoji = with_emoji > 0;
        t.my_reactions = of_message()
            .filter(reactions::user_id.eq(Id(actor)))
            .select(count_star())
            .first(c)
            .await?;
        let mine: i64 = of_message()
            .filter(reactions::user_id.eq(Id(actor)))
            .filter(reactions::emoji.eq(emoji))
            .select(count_star())
            .first(c)
            .await?;
        t.mine = mine > 0;
    }
    Ok(Some(t))
}

/// Applies a record to the state of the messages it concerns, in the caller's transaction,
/// after its row was inserted (once: a record already stored is not applied again):
/// a message bumps its thread parent and records its mentions; an event is checked again
/// ([`events::check`], against the state the log's order gives) and changes its target.
/// `Err(rule)`: the event is refused here; the caller removes its row.
pub(super) async fn apply(
    c: &mut Conn,
    m: &Message,
    limits: &Limits,
) -> QueryResult<Result<(), RuleError>> {
    let Some(change) = &m.change else {
        if let Some(parent) = m.reply_to {
            diesel::update(
                messages::table
                    .filter(messages::id.eq(Id(parent)))
                    .filter(messages::room_id.eq(Id(m.room)))
                    .filter(messages::kind.eq("message"))
                    .filter(messages::deleted_at.is_null()),
            )
            .set((
                messages::reply_count.eq(messages::reply_count + 1),
                messages::last_reply_at.eq(m.sent_at),
            ))
            .execute(c)
            .await?;
        }
        for user in m.mentions.iter().take(MAX_MENTIONS) {
            diesel::insert_into(mentions::table)
                .values((
                    mentions::user_id.eq(Id(*user)),
                    mentions::room_id.eq(Id(m.room)),
                    mentions::message_id.eq(Id(m.id)),
                    mentions::position.eq(m.position),
                ))
                .on_conflict_do_nothing()
                .execute(c)
                .await?;
        }
        return Ok(Ok(()));
    };
    // Membership and settings are written by the gateway that decided them, before the
    // event was appended (docs/decisions/0005): the record is stored, nothing to apply.
    let Some(target_id) = change.target() else {
        return Ok(Ok(()));
    };
    let emoji = match change {
        Change::Reaction { emoji, .. } => Some(emoji.as_str()),
        _ => None,
    };
    let target = load_target(c, target_id, m.sender.id, emoji).await?;
    // Someone else's message: the gateway let only a moderator (or above) of the room
    // delete it, on the roles then; a moderator demoted or gone since must not see the
    // deleted message come back (docs/decisions/0005).
    let moderator = matches!(change, Change::Delete { .. });
    if let Err(e) = events::check_as(
        change,
        m.sender.id,
        moderator,
        m.room,
        m.sent_at,
        target.as_ref(),
        limits,
    ) {
        return Ok(Err(e));
    }
    let target_row = || messages::table.filter(messages::id.eq(Id(target_id)));
    match change {
        Change::Edit { .. } => {
            // The body before the first edit is the history's first entry.
            diesel::update(target_row().filter(messages::original_body.is_null()))
                .set(messages::original_body.eq(messages::body.nullable()))
                .execute(c)
                .await?;
            diesel::update(target_row())
                .set((
                    messages::body.eq(&m.body),
                    messages::edited_at.eq(m.sent_at),
                    messages::edit_count.eq(messages::edit_count + 1),
                ))
                .execute(c)
                .await?;
        }
        Change::Delete { .. } => {
            // Deleted means gone: the body, every edit's body and the mentions go; the
            // row keeps the tombstone (who, when).
            diesel::update(target_row())
                .set((
                    messages::body.eq(""),
                    messages::original_body.eq(None::<String>),
                    messages::mentions.eq(None::<String>),
                    messages::deleted_at.eq(m.sent_at),
                    messages::deleted_by.eq(Id(m.sender.id)),
                ))
                .execute(c)
                .await?;
            diesel::update(
                messages::table
                    .filter(messages::target_id.eq(Id(target_id)))
                    .filter(messages::kind.eq("edit")),
            )
            .set(messages::body.eq(""))
            .execute(c)
            .await?;
            diesel::delete(reactions::table.filter(reactions::message_id.eq(Id(target_id))))
                .execute(c)
                .await?;
            diesel::delete(mentions::table.filter(mentions::message_id.eq(Id(target_id))))
                .execute(c)
                .await?;
            if let Some(parent) = target.and_then(|t| t.reply_to) {
                diesel::update(
                    messages::table
                        .filter(messages::id.eq(Id(parent)))
                        .filter(messages::reply_count.gt(0)),
                )
                .set(messages::reply_count.eq(messages::reply_count - 1))
                .execute(c)
                .await?;
            }
        }
        Change::Reaction { emoji, on, .. } => {
            if *on {
                diesel::insert_into(reactions::table)
                    .values((
                        reactions::message_id.eq(Id(target_id)),
                        reactions::user_id.eq(Id(m.sender.id)),
                        reactions::emoji.eq(emoji),
                        reactions::position.eq(m.position),
                    ))
                    .on_conflict_do_nothing()
                    .execute(c)
                    .await?;
            } else {
                diesel::delete(
                    reactions::table
                        .filter(reactions::message_id.eq(Id(target_id)))
                        .filter(reactions::user_id.eq(Id(m.sender.id)))
                        .filter(reactions::emoji.eq(emoji)),
                )
                .execute(c)
                .await?;
            }
        }
        Change::Member { .. } | Change::Room { .. } => {}
    }
    Ok(Ok(()))
}

/// Inserts one record, skipping it if stored already; whether it was inserted.
async fn insert_one(c: &mut Conn, row: &NewMessageRow<'_>) -> QueryResult<bool> {
    let n = diesel::insert_into(messages::table)
        .values(row)
        .on_conflict_do_nothing()
        .execute(c)
        .await?;
    Ok(n == 1)
}

#[derive(QueryableByName)]
struct ReactionRow {
    #[diesel(sql_type = SqlUuid)]
    message_id: Id,
    #[diesel(sql_type = Text)]
    emoji: String,
    #[diesel(sql_type = SqlUuid)]
    user_id: Id,
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = BigInt)]
    n: i64,
    #[diesel(sql_type = BigInt)]
    total: i64,
}

/// The reactions of the room's messages with positions in `[$2, $3]` (of thread `$4`'s
/// replies only, for a thread page; then `$5` is the reader, else `$4`: parameters appear
/// in order, as SQLite numbers them by first appearance): per (message, emoji) the count and the first
/// [`REACTION_USERS_SHOWN`] users, plus the reader's own row. Bounded: at most
/// `max_emoji_per_message` emoji per message, 11 rows each.
fn reactions_sql(thread: bool) -> String {
    let messages = if thread {
        "m.reply_to = $4 AND m.room_id = $1 AND m.position >= $2 AND m.position <= $3"
    } else {
        "m.room_id = $1 AND m.position >= $2 AND m.position <= $3 AND m.kind = 'message'"
    };
    let me = if thread { "$5" } else { "$4" };
    format!(
        "SELECT t.message_id, t.emoji, t.user_id, t.name, t.n, t.total FROM (
           SELECT r.message_id, r.emoji, r.user_id, u.name,
                  row_number() OVER (PARTITION BY r.message_id, r.emoji ORDER BY r.position) AS n,
                  count(*) OVER (PARTITION BY r.message_id, r.emoji) AS total,
                  min(r.position) OVER (PARTITION BY r.message_id, r.emoji) AS first
             FROM reactions r
             JOIN messages m ON m.id = r.message_id
             JOIN users u ON u.id = r.user_id
            WHERE {messages}) t
          WHERE t.n <= 10 OR t.user_id = {me}
          ORDER BY t.message_id, t.first, t.n"
    )
}

/// Fills in what a history page shows of each message beyond its row: reactions (with
/// counts, `me` and who) and the reply count (0 too). `thread`: the page holds replies of it.
async fn fill_state(
    c: &mut Conn,
    room: RoomId,
    me: UserId,
    page: &mut [Message],
    thread: Option<MessageId>,
) -> QueryResult<()> {
    let (Some(first), Some(last)) = (
        page.iter().map(|m| m.position).min(),
        page.iter().map(|m| m.position).max(),
    ) else {
        return Ok(());
    };
    let base = diesel::sql_query(reactions_sql(thread.is_some()))
        .into_boxed()
        .bind::<SqlUuid, _>(Id(room))
        .bind::<BigInt, _>(first)
        .bind::<BigInt, _>(last);
    let query = match thread {
        Some(parent) => base
            .bind::<SqlUuid, _>(Id(parent))
            .bind::<SqlUuid, _>(Id(me)),
        None => base.bind::<SqlUuid, _>(Id(me)),
    };
    let rows: Vec<ReactionRow> = query.load(c).await?;
    let mut by_message: std::collections::HashMap<MessageId, Vec<ReactionCount>> =
        std::collections::HashMap::new();
    for r in rows {
        let list = by_message.entry(r.message_id.0).or_default();
        let i = match list.iter().position(|x| x.emoji == r.emoji) {
            Some(i) => i,
            None => {
                list.push(ReactionCount {
                    emoji: r.emoji.clone(),
                    count: r.total,
                    me: false,
                    users: Vec::new(),
                });
                list.len() - 1
            }
        };
        let entry = &mut list[i];
        if r.user_id.0 == me {
            entry.me = true;
        }
        if r.n <= REACTION_USERS_SHOWN as i64 {
            entry.users.push(User {
                id: r.user_id.0,
                name: r.name,
            });
        }
    }
    for m in page.iter_mut() {
        m.reactions = Some(by_message.remove(&m.id).unwrap_or_default());
        m.reply_count = Some(m.reply_count.unwrap_or(0));
    }
    Ok(())
}

#[derive(QueryableByName)]
struct RoomViewRow {
    #[diesel(sql_type = SqlUuid)]
    id: Id,
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Bool)]
    is_group: bool,
    #[diesel(sql_type = Bool)]
    member: bool,
    #[diesel(sql_type = BigInt)]
    unread: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    last_position: Option<i64>,
    #[diesel(sql_type = BigInt)]
    unread_mentions: i64,
    #[diesel(sql_type = Text)]
    visibility: String,
    #[diesel(sql_type = Nullable<Text>)]
    my_role: Option<String>,
    #[diesel(sql_type = Text)]
    topic: String,
    #[diesel(sql_type = Text)]
    description: String,
    #[diesel(sql_type = Integer)]
    slow_mode_secs: i32,
    #[diesel(sql_type = Nullable<SqlTime>)]
    muted_until: Option<DateTime<Utc>>,
    #[diesel(sql_type = BigInt)]
    members: i64,
}

/// A room as user $1 sees it; `rooms_for` adds the WHERE, ORDER and LIMIT. A DM is named
/// after the other member; a group without a name after its other members.
const ROOM_VIEW: &str = "
SELECT r.id,
       CASE WHEN r.kind = 'dm' THEN COALESCE(
            (SELECT u.name FROM memberships o JOIN users u ON u.id = o.user_id
              WHERE o.room_id = r.id AND o.user_id <> $1 LIMIT 1), r.name)
            WHEN r.is_group AND r.name = '' THEN COALESCE(
            (SELECT string_agg(g.name, ', ') FROM
              (SELECT u.name FROM memberships o JOIN users u ON u.id = o.user_id
                WHERE o.room_id = r.id AND o.user_id <> $1 ORDER BY u.name LIMIT 10) g), '')
            ELSE r.name END AS name,
       r.kind,
       r.is_group,
       (m.user_id IS NOT NULL) AS member,
       CASE WHEN m.user_id IS NULL THEN 0 ELSE
            (SELECT count(*) FROM messages x
              WHERE x.room_id = r.id AND x.position > COALESCE(m.last_read, -1)
                AND x.sender_id <> $1 AND x.kind = 'message'
                AND x.deleted_at IS NULL) END AS unread,
       (SELECT max(x.position) FROM messages x WHERE x.room_id = r.id) AS last_position,
       CASE WHEN m.user_id IS NULL THEN 0 ELSE
            (SELECT count(*) FROM mentions n
              WHERE n.user_id = $1 AND n.room_id = r.id
                AND n.position > COALESCE(m.last_read, -1)) END AS unread_mentions,
       r.visibility,
       m.role AS my_role,
       r.topic,
       r.description,
       r.slow_mode_secs,
       (SELECT u.until FROM mutes u WHERE u.room_id = r.id AND u.user_id = $1
          AND m.user_id IS NOT NULL) AS muted_until,
       (SELECT count(*) FROM memberships a WHERE a.room_id = r.id) AS members
  FROM rooms r
  LEFT JOIN memberships m ON m.room_id = r.id AND m.user_id = $1";

/// `ROOM_VIEW` in the backend's dialect (`string_agg` is SQLite's `group_concat`).
fn room_view_sql() -> String {
    ROOM_VIEW.replace("string_agg(", super::STRING_AGG)
}

/// Every room of the user: the whole list, whatever its length.
fn member_rooms_sql() -> String {
    let view = room_view_sql();
    format!(
        "{view} WHERE m.user_id IS NOT NULL AND r.deleted_at IS NULL \
         ORDER BY r.kind, lower(r.name), r.id"
    )
}

/// One room as user $1 sees it ($2 the room).
fn one_room_sql() -> String {
    let view = room_view_sql();
    format!("{view} WHERE r.id = $2 AND r.deleted_at IS NULL")
}

/// Public rooms the user is not in, in creation order (ids are UUIDv7), from the start
/// (`$2` the limit) or after the room `$2` (`$3` the limit). Private rooms and groups are
/// not listed to non-members.
fn other_rooms_sql(after: bool) -> String {
    let (cursor, limit) = if after {
        ("AND r.id > $2", "$3")
    } else {
        ("", "$2")
    };
    let view = room_view_sql();
    format!(
        "{view} WHERE r.kind = 'room' AND r.visibility = 'public' AND NOT r.is_group \
         AND r.deleted_at IS NULL AND m.user_id IS NULL {cursor} \
         ORDER BY r.id LIMIT {limit}"
    )
}

fn room_view(r: RoomViewRow) -> RoomView {
    let kind = match RoomKind::parse(&r.kind) {
        Some(RoomKind::Room) if r.is_group => RoomKind::Group,
        Some(k) => k,
        None => RoomKind::Room,
    };
    RoomView {
        id: r.id.0,
        name: r.name,
        kind,
        member: r.member,
        unread: r.unread,
        last_position: r.last_position,
        unread_mentions: r.unread_mentions,
        visibility: Visibility::parse(&r.visibility).unwrap_or_default(),
        my_role: r.my_role.as_deref().and_then(Role::parse),
        topic: r.topic,
        description: r.description,
        slow_mode_secs: r.slow_mode_secs,
        muted_until: r.muted_until.filter(|t| *t > Utc::now()),
        members: r.members,
    }
}

/// The room as `user` sees it (None: no such room, or deleted).
pub(super) async fn room_view_of(
    c: &mut Conn,
    room: RoomId,
    user: UserId,
) -> QueryResult<Option<RoomView>> {
    let row: Option<RoomViewRow> = diesel::sql_query(one_room_sql())
        .bind::<SqlUuid, _>(Id(user))
        .bind::<SqlUuid, _>(Id(room))
        .get_result(c)
        .await
        .optional()?;
    Ok(row.map(room_view))
}

/// Fills `name_key` ([`name_key`]) of the users and rooms written before the column
/// existed: SQL cannot compute it (SQLite's `lower()` folds ASCII only). Run by the
/// process that runs the migrations, right after them, on its migration connection
/// (synchronous diesel). Rows whose key is taken already (two old rooms `Ärger` and
/// `ärger`) keep their name and get the key with U+0001 and their id appended: unique,
/// and never equal to a key of a new name (names hold no control characters).
/// Returns how many rows it filled.
pub(super) fn backfill_name_keys(c: &mut MigrationConn) -> QueryResult<usize> {
    let mut filled = 0;
    let old_users: Vec<(Id, String)> = diesel::RunQueryDsl::load(
        users::table
            .filter(users::name_key.is_null())
            .select((users::id, users::name))
            .order(users::id),
        c,
    )?;
    for (id, name) in old_users {
        let key = name_key(&name);
        let taken: i64 = diesel::RunQueryDsl::get_result(
            users::table.filter(users::name_key.eq(&key)).count(),
            c,
        )?;
        let key = if taken == 0 {
            key
        } else {
            format!("{key}\u{1}{}", id.0)
        };
        filled += diesel::RunQueryDsl::execute(
            diesel::update(users::table.find(id)).set(users::name_key.eq(key)),
            c,
        )?;
    }
    let old_rooms: Vec<(Id, String)> = diesel::RunQueryDsl::load(
        rooms::table
            .filter(rooms::name_key.is_null())
            .filter(rooms::kind.eq(RoomKind::Room.as_str()))
            .select((rooms::id, rooms::name))
            .order(rooms::id),
        c,
    )?;
    for (id, name) in old_rooms {
        let key = name_key(&name);
        let taken: i64 = diesel::RunQueryDsl::get_result(
            rooms::table
                .filter(rooms::kind.eq(RoomKind::Room.as_str()))
                .filter(rooms::name_key.eq(&key))
                .count(),
            c,
        )?;
        let key = if taken == 0 {
            key
        } else {
            tracing::warn!(room = %id.0, %name, "an older room has the same name key; kept apart");
            format!("{key}\u{1}{}", id.0)
        };
        filled += diesel::RunQueryDsl::execute(
            diesel::update(rooms::table.find(id)).set(rooms::name_key.eq(key)),
            c,
        )?;
    }
    Ok(filled)
}

/// Chunk size for multi-row inserts: 9 binds a row stays far below PostgreSQL's 65,535.
const INSERT_CHUNK: usize = 1_000;
/// Read markers `read_markers` returns at most (receipts are for small rooms).
const MAX_RECEIPTS: i64 = 100;

impl Backend {
    /// A page of the room's messages (of one thread's replies, with `thread`), newest
    /// `limit` below `before`, ascending, in their current state.
    async fn page_of(
        &self,
        room: RoomId,
        me: UserId,
        thread: Option<MessageId>,
        before: Option<Position>,
        limit: i64,
    ) -> Result<HistoryPage, StoreError> {
        let mut c = self.conn().await?;
        let mut q = messages::table
            .filter(messages::room_id.eq(Id(room)))
            .filter(messages::kind.eq("message"))
            .select(MessageRow::as_select())
            .order(messages::position.desc())
            .limit(limit + 1)
            .into_boxed();
        if let Some(b) = before {
            q = q.filter(messages::position.lt(b));
        }
        if let Some(parent) = thread {
            q = q.filter(messages::reply_to.eq(Id(parent)));
        }
        let mut rows: Vec<MessageRow> = q.load(&mut c).await.map_err(db_error)?;
        let has_more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        rows.reverse();
        let mut messages: Vec<Message> = rows.into_iter().map(Message::from).collect();
        fill_state(&mut c, room, me, &mut messages, thread)
            .await
            .map_err(db_error)?;
        // Messages of users the reader blocked are flagged (the client hides them).
        let senders: Vec<Id> = messages.iter().map(|m| Id(m.sender.id)).collect();
        let blocked: Vec<Id> = blocks::table
            .filter(blocks::user_id.eq(Id(me)))
            .filter(blocks::blocked_id.eq_any(senders))
            .select(blocks::blocked_id)
            .load(&mut c)
            .await
            .map_err(db_error)?;
        for m in &mut messages {
            m.blocked = blocked.iter().any(|b| b.0 == m.sender.id);
        }
        Ok(HistoryPage { messages, has_more })
    }
}

#[async_trait]
impl Store for Backend {
    async fn ping(&self) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        diesel::sql_query("SELECT 1")
            .execute(&mut c)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn create_user(&self, user: &User, password_hash: &str) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let r = diesel::insert_into(users::table)
            .values((
                users::id.eq(Id(user.id)),
                users::name.eq(&user.name),
                users::name_key.eq(name_key(&user.name)),
                users::password_hash.eq(password_hash),
            ))
            .execute(&mut c)
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict("username")),
            Err(e) => Err(db_error(e)),
        }
    }

    async fn credentials(&self, name: &str) -> Result<Option<Credentials>, StoreError> {
        let mut c = self.conn().await?;
        let row: Option<(Id, String, String, i64, Option<DateTime<Utc>>)> = users::table
            .filter(users::name_key.eq(name_key(name)))
            .select((
                users::id,
                users::name,
                users::password_hash,
                users::token_generation,
                users::suspended_at,
            ))
            .first(&mut c)
            .await
            .optional()
            .map_err(db_error)?;
        Ok(row.map(
            |(id, name, password_hash, token_generation, suspended)| Credentials {
                user: User { id: id.0, name },
                password_hash,
                token_generation,
                suspended: suspended.is_some(),
            },
        ))
    }

    async fn token_generation(&self, user: UserId) -> Result<Option<i64>, StoreError> {
        let mut c = self.conn().await?;
        users::table
            .find(Id(user))
            .select(users::token_generation)
            .first(&mut c)
            .await
            .optional()
            .map_err(db_error)
    }

    async fn revoke_tokens(&self, user: UserId) -> Result<Option<i64>, StoreError> {
        let mut c = self.conn().await?;
        diesel::update(users::table.find(Id(user)))
            .set(users::token_generation.eq(users::token_generation + 1))
            .returning(users::token_generation)
            .get_result(&mut c)
            .await
            .optional()
            .map_err(db_error)
    }

    async fn user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        let mut c = self.conn().await?;
        let row: Option<(Id, String)> = users::table
            .find(Id(id))
            .select((users::id, users::name))
            .first(&mut c)
            .await
            .optional()
            .map_err(db_error)?;
        Ok(row.map(|(id, name)| User { id: id.0, name }))
    }

    async fn rooms_for(
        &self,
        user: UserId,
        after: Option<RoomId>,
        limit: i64,
    ) -> Result<RoomsPage, StoreError> {
        let mut c = self.conn().await?;
        let mut rooms = Vec::new();
        if after.is_none() {
            let mine: Vec<RoomViewRow> = diesel::sql_query(member_rooms_sql())
                .bind::<SqlUuid, _>(Id(user))
                .load(&mut c)
                .await
                .map_err(db_error)?;
            rooms.extend(mine.into_iter().map(room_view));
        }
        // One more than asked: tells whether there is a next page.
        let others: Vec<RoomViewRow> = match after {
            None => {
                diesel::sql_query(other_rooms_sql(false))
                    .bind::<SqlUuid, _>(Id(user))
                    .bind::<BigInt, _>(limit + 1)
                    .load(&mut c)
                    .await
            }
            Some(a) => {
                diesel::sql_query(other_rooms_sql(true))
                    .bind::<SqlUuid, _>(Id(user))
                    .bind::<SqlUuid, _>(Id(a))
                    .bind::<BigInt, _>(limit + 1)
                    .load(&mut c)
                    .await
            }
        }
        .map_err(db_error)?;
        let more = others.len() as i64 > limit;
        let others: Vec<RoomView> = others
            .into_iter()
            .take(limit.max(0) as usize)
            .map(room_view)
            .collect();
        let next = if more {
            others.last().map(|r| r.id)
        } else {
            None
        };
        rooms.extend(others);
        Ok(RoomsPage { rooms, next })
    }

    async fn member_rooms(&self, user: UserId) -> Result<Vec<RoomId>, StoreError> {
        let mut c = self.conn().await?;
        let ids: Vec<Id> = memberships::table
            .filter(memberships::user_id.eq(Id(user)))
            .select(memberships::room_id)
            .load(&mut c)
            .await
            .map_err(db_error)?;
        Ok(ids.into_iter().map(|i| i.0).collect())
    }

    async fn room(&self, id: RoomId) -> Result<Option<Room>, StoreError> {
        let mut c = self.conn().await?;
        let row: Option<(Id, String, String, bool, String)> = rooms::table
            .find(Id(id))
            .filter(rooms::deleted_at.is_null())
            .select((
                rooms::id,
                rooms::name,
                rooms::kind,
                rooms::is_group,
                rooms::visibility,
            ))
            .first(&mut c)
            .await
            .optional()
            .map_err(db_error)?;
        Ok(row.map(|(id, name, kind, is_group, visibility)| Room {
            id: id.0,
            name,
            kind: match RoomKind::parse(&kind) {
                Some(RoomKind::Room) if is_group => RoomKind::Group,
                k => k.unwrap_or(RoomKind::Room),
            },
            visibility: Visibility::parse(&visibility).unwrap_or_default(),
        }))
    }

    async fn create_room(
        &self,
        room: &Room,
        creator: UserId,
        max_per_user: i64,
    ) -> Result<(), StoreError> {
        enum TxError {
            Limit,
            Db(DieselError),
        }
        impl From<DieselError> for TxError {
            fn from(e: DieselError) -> Self {
                TxError::Db(e)
            }
        }
        let mut c = self.conn().await?;
        let room = room.clone();
        let key = name_key(&room.name);
        let r = write_transaction!(c, TxError, async move |c| {
            if max_per_user > 0 {
                let mine: i64 = rooms::table
                    .filter(rooms::created_by.eq(Id(creator)))
                    .filter(rooms::kind.eq(RoomKind::Room.as_str()))
                    .count()
                    .get_result(c)
                    .await?;
                if mine >= max_per_user {
                    return Err(TxError::Limit);
                }
            }
            diesel::insert_into(rooms::table)
                .values((
                    rooms::id.eq(Id(room.id)),
                    rooms::name.eq(&room.name),
                    rooms::name_key.eq(&key),
                    rooms::kind.eq(room.kind.as_str()),
                    rooms::visibility.eq(room.visibility.as_str()),
                    rooms::created_by.eq(Id(creator)),
                ))
                .execute(c)
                .await?;
            diesel::insert_into(memberships::table)
                .values((
                    memberships::room_id.eq(Id(room.id)),
                    memberships::user_id.eq(Id(creator)),
                    memberships::role.eq(Role::Owner.as_str()),
                ))
                .execute(c)
                .await?;
            Ok(())
        })
        .await;
        match r {
            Ok(()) => Ok(()),
            Err(TxError::Limit) => Err(StoreError::Limit("rooms")),
            Err(TxError::Db(e)) if is_unique_violation(&e) => {
                Err(StoreError::Conflict("room name"))
            }
            Err(TxError::Db(e)) => Err(db_error(e)),
        }
    }

    async fn join(&self, room: RoomId, user: UserId) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        let r = write_transaction!(c, DieselError, async |c| {
            super::lock_room(c, room).await?;
            if super::gov_queries::banned(c, room, user).await? {
                return Ok(None);
            }
            let n = diesel::insert_into(memberships::table)
                .values((
                    memberships::room_id.eq(Id(room)),
                    memberships::user_id.eq(Id(user)),
                ))
                .on_conflict_do_nothing()
                .execute(c)
                .await?;
            Ok(Some(n == 1))
        })
        .await
        .map_err(db_error)?;
        r.ok_or(StoreError::Banned)
    }

    async fn leave(&self, room: RoomId, user: UserId) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        let r = write_transaction!(c, DieselError, async |c| {
            super::lock_room(c, room).await?;
            let this = || memberships::table.find((Id(room), Id(user)));
            let role: Option<String> =
                this().select(memberships::role).first(c).await.optional()?;
            match role.as_deref() {
                None => Ok(Some(false)),
                // The owner passes ownership on first (checked again here: a transfer
                // racing the leave cannot leave the room without one).
                Some("owner") => Ok(None),
                Some(_) => Ok(Some(diesel::delete(this()).execute(c).await? == 1)),
            }
        })
        .await
        .map_err(db_error)?;
        r.ok_or(StoreError::Conflict("owner"))
    }

    async fn members(&self, room: RoomId) -> Result<Vec<Member>, StoreError> {
        let mut c = self.conn().await?;
        let rows: Vec<(Id, String, String)> = memberships::table
            .inner_join(users::table)
            .filter(memberships::room_id.eq(Id(room)))
            .select((users::id, users::name, memberships::role))
            .order(users::name.asc())
            .load(&mut c)
            .await
            .map_err(db_error)?;
        let now = Utc::now();
        let muted: Vec<(Id, DateTime<Utc>)> = mutes::table
            .filter(mutes::room_id.eq(Id(room)))
            .filter(mutes::until.gt(now))
            .select((mutes::user_id, mutes::until))
            .load(&mut c)
            .await
            .map_err(db_error)?;
        let muted: std::collections::HashMap<Uuid, DateTime<Utc>> =
            muted.into_iter().map(|(u, t)| (u.0, t)).collect();
        Ok(rows
            .into_iter()
            .map(|(id, name, role)| Member {
                id: id.0,
                name,
                online: false,
                role: Role::parse(&role).unwrap_or(Role::Member),
                muted_until: muted.get(&id.0).copied(),
            })
            .collect())
    }

    async fn read_markers(&self, room: RoomId) -> Result<Vec<(User, Position)>, StoreError> {
        let mut c = self.conn().await?;
        let rows: Vec<(Id, String, Option<i64>)> = memberships::table
            .inner_join(users::table)
            .filter(memberships::room_id.eq(Id(room)))
            .filter(memberships::last_read.is_not_null())
            .select((users::id, users::name, memberships::last_read))
            .order(users::name.asc())
            .limit(MAX_RECEIPTS)
            .load(&mut c)
            .await
            .map_err(db_error)?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, name, at)| Some((User { id: id.0, name }, at?)))
            .collect())
    }

    async fn dm_room(&self, a: UserId, b: UserId) -> Result<(Room, bool), StoreError> {
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        let key = format!("{lo}:{hi}");
        let mut c = self.conn().await?;
        let id = Id(Uuid::now_v7());
        let created = write_transaction!(c, DieselError, async |c| {
            let n = diesel::insert_into(rooms::table)
                .values((
                    rooms::id.eq(id),
                    rooms::name.eq(format!("dm:{key}")),
                    rooms::kind.eq(RoomKind::Dm.as_str()),
                    rooms::visibility.eq(Visibility::Private.as_str()),
                    rooms::dm_key.eq(&key),
                    rooms::created_by.eq(Id(a)),
                ))
                .on_conflict_do_nothing()
                .execute(c)
                .await?;
            if n == 1 {
                for user in [lo, hi] {
                    diesel::insert_into(memberships::table)
                        .values((
                            memberships::room_id.eq(id),
                            memberships::user_id.eq(Id(user)),
                        ))
                        .on_conflict_do_nothing()
                        .execute(c)
                        .await?;
                }
            }
            Ok(n == 1)
        })
        .await
        .map_err(db_error)?;
        let (rid, name): (Id, String) = rooms::table
            .filter(rooms::dm_key.eq(&key))
            .select((rooms::id, rooms::name))
            .first(&mut c)
            .await
            .map_err(db_error)?;
        Ok((
            Room {
                id: rid.0,
                name,
                kind: RoomKind::Dm,
                visibility: Visibility::Private,
            },
            created,
        ))
    }

    async fn mark_read(
        &self,
        room: RoomId,
        user: UserId,
        position: Position,
    ) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        // Never moves the marker backwards.
        let moved = diesel::update(memberships::table.find((Id(room), Id(user))))
            .filter(
                memberships::last_read
                    .is_null()
                    .or(memberships::last_read.lt(position)),
            )
            .set(memberships::last_read.eq(position))
            .execute(&mut c)
            .await
            .map_err(db_error)?;
        Ok(moved == 1)
    }

    async fn history(
        &self,
        room: RoomId,
        me: UserId,
        before: Option<Position>,
        limit: i64,
    ) -> Result<HistoryPage, StoreError> {
        self.page_of(room, me, None, before, limit).await
    }

    async fn replies(
        &self,
        room: RoomId,
        me: UserId,
        parent: MessageId,
        before: Option<Position>,
        limit: i64,
    ) -> Result<HistoryPage, StoreError> {
        self.page_of(room, me, Some(parent), before, limit).await
    }

    async fn target(
        &self,
        message: MessageId,
        actor: UserId,
        emoji: Option<&str>,
    ) -> Result<Option<Target>, StoreError> {
        let mut c = self.conn().await?;
        load_target(&mut c, message, actor, emoji)
            .await
            .map_err(db_error)
    }

    async fn edits(
        &self,
        room: RoomId,
        message: MessageId,
    ) -> Result<Option<Vec<EditEntry>>, StoreError> {
        let mut c = self.conn().await?;
        let row: Option<(
            String,
            Option<String>,
            DateTime<Utc>,
            Option<DateTime<Utc>>,
            i64,
        )> = messages::table
            .filter(messages::id.eq(Id(message)))
            .filter(messages::room_id.eq(Id(room)))
            .filter(messages::kind.eq("message"))
            .select((
                messages::body,
                messages::original_body,
                messages::sent_at,
                messages::deleted_at,
                messages::position,
            ))
            .first(&mut c)
            .await
            .optional()
            .map_err(db_error)?;
        let Some((body, original, sent_at, deleted_at, position)) = row else {
            return Ok(None);
        };
        if deleted_at.is_some() {
            return Ok(Some(Vec::new()));
        }
        let edits: Vec<(String, DateTime<Utc>, i64)> = messages::table
            .filter(messages::target_id.eq(Id(message)))
            .filter(messages::kind.eq("edit"))
            .select((messages::body, messages::sent_at, messages::position))
            .order(messages::position.asc())
            .load(&mut c)
            .await
            .map_err(db_error)?;
        let mut out = vec![EditEntry {
            body: original.unwrap_or(body),
            edited_at: sent_at,
            position,
        }];
        out.extend(edits.into_iter().map(|(body, at, position)| EditEntry {
            body,
            edited_at: at,
            position,
        }));
        Ok(Some(out))
    }

    async fn resolve_mentions(
        &self,
        room: RoomId,
        names: &[String],
        ids: &[UserId],
    ) -> Result<Vec<UserId>, StoreError> {
        if names.is_empty() && ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.conn().await?;
        let keys: Vec<String> = names.iter().map(|n| name_key(n)).collect();
        let ids: Vec<Id> = ids.iter().map(|i| Id(*i)).collect();
        let found: Vec<Id> = memberships::table
            .inner_join(users::table)
            .filter(memberships::room_id.eq(Id(room)))
            .filter(users::name_key.eq_any(keys).or(users::id.eq_any(ids)))
            .select(users::id)
            .limit(MAX_MENTIONS as i64)
            .load(&mut c)
            .await
            .map_err(db_error)?;
        Ok(found.into_iter().map(|i| i.0).collect())
    }

    async fn messages_after(
        &self,
        room: RoomId,
        after: Position,
        limit: i64,
    ) -> Result<Vec<Message>, StoreError> {
        let mut c = self.conn().await?;
        let rows: Vec<MessageRow> = messages::table
            .filter(messages::room_id.eq(Id(room)))
            .filter(messages::position.gt(after))
            .filter(messages::kind.ne("refused"))
            .select(MessageRow::as_select())
            .order(messages::position.asc())
            .limit(limit)
            .load(&mut c)
            .await
            .map_err(db_error)?;
        Ok(rows.into_iter().map(Message::from).collect())
    }

    async fn count_after(
        &self,
        room: RoomId,
        after: Position,
        cap: i64,
    ) -> Result<i64, StoreError> {
        let mut c = self.conn().await?;
        let ids: Vec<Id> = messages::table
            .filter(messages::room_id.eq(Id(room)))
            .filter(messages::position.gt(after))
            .filter(messages::kind.ne("refused"))
            .select(messages::id)
            .order(messages::position.asc())
            .limit(cap)
            .load(&mut c)
            .await
            .map_err(db_error)?;
        Ok(ids.len() as i64)
    }

    async fn next_offset(&self, topic: &str, partition: i32) -> Result<Option<i64>, StoreError> {
        let mut c = self.conn().await?;
        committed_offset(&mut c, topic, partition)
            .await
            .map_err(db_error)
    }

    async fn commit_batch(
        &self,
        topic: &str,
        partition: i32,
        from: Option<i64>,
        to: i64,
        batch: &[Message],
        limits: &Limits,
    ) -> Result<usize, StoreError> {
        enum TxError {
            Fenced,
            Db(DieselError),
        }
        impl From<DieselError> for TxError {
            fn from(e: DieselError) -> Self {
                TxError::Db(e)
            }
        }
        let mut c = self.conn().await?;
        let rows: Vec<NewMessageRow<'_>> = batch
            .iter()
            .map(|m| NewMessageRow::of(m, partition))
            .collect();
        let rows = &rows;
        let r = write_transaction!(c, TxError, async |c| {
            // Compare-and-set first: the row lock serialises two workers on one
            // partition, and the loser sees 0 rows and writes nothing.
            let moved = match from {
                None => {
                    diesel::insert_into(consumer_offsets::table)
                        .values((
                            consumer_offsets::topic.eq(topic),
                            consumer_offsets::log_partition.eq(partition),
                            consumer_offsets::next_offset.eq(to),
                        ))
                        .on_conflict_do_nothing()
                        .execute(c)
                        .await?
                }
                Some(f) => {
                    diesel::update(consumer_offsets::table.find((topic, partition)))
                        .filter(consumer_offsets::next_offset.eq(f))
                        .set((
                            consumer_offsets::next_offset.eq(to),
                            consumer_offsets::updated_at.eq(Utc::now()),
                        ))
                        .execute(c)
                        .await?
                }
            };
            if moved != 1 {
                return Err(TxError::Fenced);
            }
            // In log order: runs of plain messages in multi-row inserts; a record that
            // changes other rows (an event, a reply, a mention) alone, applied once
            // inserted, and removed again if its rule refuses it here.
            let mut inserted = 0;
            let mut i = 0;
            while i < rows.len() {
                let run = rows[i..].iter().take_while(|r| r.is_plain()).count();
                if run > 0 {
                    for chunk in rows[i..i + run].chunks(INSERT_CHUNK) {
                        inserted += insert_messages(c, chunk).await?;
                    }
                    i += run;
                    continue;
                }
                if insert_one(c, &rows[i]).await? {
                    match apply(c, &batch[i], limits).await? {
                        Ok(()) => inserted += 1,
                        Err(rule) => {
                            // Kept, as a record of nothing: its id and key stay taken, so
                            // a later copy of the same record is skipped, not applied.
                            tracing::debug!(id = %batch[i].id, %rule, "event refused where applied");
                            diesel::update(messages::table.filter(messages::id.eq(Id(batch[i].id))))
                                .set((messages::kind.eq("refused"), messages::body.eq("")))
                                .execute(c)
                                .await?;
                        }
                    }
                }
                i += 1;
            }
            Ok(inserted)
        })
        .await;
        match r {
            Ok(n) => Ok(n),
            Err(TxError::Fenced) => Err(StoreError::Fenced {
                partition,
                expected: from.unwrap_or(-1),
            }),
            Err(TxError::Db(e)) => Err(db_error(e)),
        }
    }
}
