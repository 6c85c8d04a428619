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
use diesel::sql_types::{BigInt, Bool, Nullable, Text};
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::schema::{consumer_offsets, memberships, messages, rooms, users};
use super::{committed_offset, db_error, insert_messages, Backend, MigrationConn, SqlUuid};
use crate::model::{name_key, Member, Message, Position, RoomId, RoomKind, RoomView, User, UserId};
use crate::store::sql_types::Id;
use crate::store::{Credentials, HistoryPage, Room, RoomsPage, Store, StoreError};

fn is_unique_violation(e: &DieselError) -> bool {
    matches!(
        e,
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)
    )
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = messages)]
struct MessageRow {
    id: Id,
    room_id: Id,
    sender_id: Id,
    sender_name: String,
    client_msg_id: String,
    body: String,
    position: i64,
    sent_at: DateTime<Utc>,
}

impl From<MessageRow> for Message {
    fn from(r: MessageRow) -> Self {
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
    member: bool,
    #[diesel(sql_type = BigInt)]
    unread: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    last_position: Option<i64>,
}

/// A room as user $1 sees it; `rooms_for` adds the WHERE, ORDER and LIMIT.
const ROOM_VIEW: &str = "
SELECT r.id,
       CASE WHEN r.kind = 'dm' THEN COALESCE(
            (SELECT u.name FROM memberships o JOIN users u ON u.id = o.user_id
              WHERE o.room_id = r.id AND o.user_id <> $1 LIMIT 1), r.name)
            ELSE r.name END AS name,
       r.kind,
       (m.user_id IS NOT NULL) AS member,
       CASE WHEN m.user_id IS NULL THEN 0 ELSE
            (SELECT count(*) FROM messages x
              WHERE x.room_id = r.id AND x.position > COALESCE(m.last_read, -1)
                AND x.sender_id <> $1) END AS unread,
       (SELECT max(x.position) FROM messages x WHERE x.room_id = r.id) AS last_position
  FROM rooms r
  LEFT JOIN memberships m ON m.room_id = r.id AND m.user_id = $1";

/// Every room of the user: the whole list, whatever its length.
fn member_rooms_sql() -> String {
    format!("{ROOM_VIEW} WHERE m.user_id IS NOT NULL ORDER BY r.kind, lower(r.name), r.id")
}

/// Public rooms the user is not in, in creation order (ids are UUIDv7), from the start
/// (`$2` the limit) or after the room `$2` (`$3` the limit).
fn other_rooms_sql(after: bool) -> String {
    let (cursor, limit) = if after {
        ("AND r.id > $2", "$3")
    } else {
        ("", "$2")
    };
    format!(
        "{ROOM_VIEW} WHERE r.kind = 'room' AND m.user_id IS NULL {cursor} \
         ORDER BY r.id LIMIT {limit}"
    )
}

fn room_view(r: RoomViewRow) -> RoomView {
    RoomView {
        id: r.id.0,
        name: r.name,
        kind: RoomKind::parse(&r.kind).unwrap_or(RoomKind::Room),
        member: r.member,
        unread: r.unread,
        last_position: r.last_position,
    }
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
        let row: Option<(Id, String, String, i64)> = users::table
            .filter(users::name_key.eq(name_key(name)))
            .select((
                users::id,
                users::name,
                users::password_hash,
                users::token_generation,
            ))
            .first(&mut c)
            .await
            .optional()
            .map_err(db_error)?;
        Ok(
            row.map(|(id, name, password_hash, token_generation)| Credentials {
                user: User { id: id.0, name },
                password_hash,
                token_generation,
            }),
        )
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
        let row: Option<(Id, String, String)> = rooms::table
            .find(Id(id))
            .select((rooms::id, rooms::name, rooms::kind))
            .first(&mut c)
            .await
            .optional()
            .map_err(db_error)?;
        Ok(row.map(|(id, name, kind)| Room {
            id: id.0,
            name,
            kind: RoomKind::parse(&kind).unwrap_or(RoomKind::Room),
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
                    rooms::created_by.eq(Id(creator)),
                ))
                .execute(c)
                .await?;
            diesel::insert_into(memberships::table)
                .values((
                    memberships::room_id.eq(Id(room.id)),
                    memberships::user_id.eq(Id(creator)),
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
        let n = diesel::insert_into(memberships::table)
            .values((
                memberships::room_id.eq(Id(room)),
                memberships::user_id.eq(Id(user)),
            ))
            .on_conflict_do_nothing()
            .execute(&mut c)
            .await
            .map_err(db_error)?;
        Ok(n == 1)
    }

    async fn leave(&self, room: RoomId, user: UserId) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        let n = diesel::delete(memberships::table.find((Id(room), Id(user))))
            .execute(&mut c)
            .await
            .map_err(db_error)?;
        Ok(n == 1)
    }

    async fn is_member(&self, room: RoomId, user: UserId) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        let found: Option<Id> = memberships::table
            .find((Id(room), Id(user)))
            .select(memberships::user_id)
            .first(&mut c)
            .await
            .optional()
            .map_err(db_error)?;
        Ok(found.is_some())
    }

    async fn members(&self, room: RoomId) -> Result<Vec<Member>, StoreError> {
        let mut c = self.conn().await?;
        let rows: Vec<(Id, String)> = memberships::table
            .inner_join(users::table)
            .filter(memberships::room_id.eq(Id(room)))
            .select((users::id, users::name))
            .order(users::name.asc())
            .load(&mut c)
            .await
            .map_err(db_error)?;
        Ok(rows
            .into_iter()
            .map(|(id, name)| Member {
                id: id.0,
                name,
                online: false,
            })
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
            },
            created,
        ))
    }

    async fn mark_read(
        &self,
        room: RoomId,
        user: UserId,
        position: Position,
    ) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        // Never moves the marker backwards.
        diesel::update(memberships::table.find((Id(room), Id(user))))
            .filter(
                memberships::last_read
                    .is_null()
                    .or(memberships::last_read.lt(position)),
            )
            .set(memberships::last_read.eq(position))
            .execute(&mut c)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn history(
        &self,
        room: RoomId,
        before: Option<Position>,
        limit: i64,
    ) -> Result<HistoryPage, StoreError> {
        let mut c = self.conn().await?;
        let mut q = messages::table
            .filter(messages::room_id.eq(Id(room)))
            .select(MessageRow::as_select())
            .order(messages::position.desc())
            .limit(limit + 1)
            .into_boxed();
        if let Some(b) = before {
            q = q.filter(messages::position.lt(b));
        }
        let mut rows: Vec<MessageRow> = q.load(&mut c).await.map_err(db_error)?;
        let has_more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        rows.reverse();
        Ok(HistoryPage {
            messages: rows.into_iter().map(Message::from).collect(),
            has_more,
        })
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
            .map(|m| NewMessageRow {
                id: Id(m.id),
                room_id: Id(m.room),
                sender_id: Id(m.sender.id),
                sender_name: &m.sender.name,
                client_msg_id: &m.client_msg_id,
                body: &m.body,
                position: m.position,
                log_partition: partition,
                sent_at: m.sent_at,
            })
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
            let mut inserted = 0;
            for chunk in rows.chunks(INSERT_CHUNK) {
                inserted += insert_messages(c, chunk).await?;
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
