// The SQLite twin of schema.rs (migrations/sqlite). Same tables and column names, so the
// queries in queries.rs compile against either; ids are `UuidText` (UUIDs stored as text)
// and times `TimestamptzSqlite` (RFC 3339 text). In SQLite the messages table is the log:
// `position` is its INTEGER PRIMARY KEY.

diesel::table! {
    use diesel::sql_types::*;
    use crate::store::sql_types::UuidText;

    consumer_offsets (topic, log_partition) {
        topic -> Text,
        log_partition -> Integer,
        next_offset -> BigInt,
        updated_at -> TimestamptzSqlite,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::store::sql_types::UuidText;

    memberships (room_id, user_id) {
        room_id -> UuidText,
        user_id -> UuidText,
        joined_at -> TimestamptzSqlite,
        last_read -> Nullable<BigInt>,
        role -> Text,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::store::sql_types::UuidText;

    messages (position) {
        position -> BigInt,
        id -> UuidText,
        room_id -> UuidText,
        sender_id -> UuidText,
        sender_name -> Text,
        client_msg_id -> Text,
        body -> Text,
        log_partition -> Integer,
        sent_at -> TimestamptzSqlite,
        stored_at -> TimestamptzSqlite,
        kind -> Text,
        target_id -> Nullable<UuidText>,
        reply_to -> Nullable<UuidText>,
        mentions -> Nullable<Text>,
        emoji -> Nullable<Text>,
        reaction_on -> Nullable<Bool>,
        edited_at -> Nullable<TimestamptzSqlite>,
        original_body -> Nullable<Text>,
        edit_count -> Integer,
        deleted_at -> Nullable<TimestamptzSqlite>,
        deleted_by -> Nullable<UuidText>,
        reply_count -> Integer,
        last_reply_at -> Nullable<TimestamptzSqlite>,
        detail -> Nullable<Text>,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::store::sql_types::UuidText;

    reactions (message_id, user_id, emoji) {
        message_id -> UuidText,
        user_id -> UuidText,
        emoji -> Text,
        position -> BigInt,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::store::sql_types::UuidText;

    mentions (user_id, message_id) {
        user_id -> UuidText,
        room_id -> UuidText,
        message_id -> UuidText,
        position -> BigInt,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::store::sql_types::UuidText;

    rooms (id) {
        id -> UuidText,
        name -> Text,
        kind -> Text,
        dm_key -> Nullable<Text>,
        created_by -> UuidText,
        created_at -> TimestamptzSqlite,
        name_key -> Nullable<Text>,
        visibility -> Text,
        is_group -> Bool,
        topic -> Text,
        description -> Text,
        slow_mode_secs -> Integer,
        deleted_at -> Nullable<TimestamptzSqlite>,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::store::sql_types::UuidText;

    users (id) {
        id -> UuidText,
        name -> Text,
        password_hash -> Text,
        created_at -> TimestamptzSqlite,
        token_generation -> BigInt,
        name_key -> Nullable<Text>,
        is_admin -> Bool,
        suspended_at -> Nullable<TimestamptzSqlite>,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::store::sql_types::UuidText;

    mutes (room_id, user_id) {
        room_id -> UuidText,
        user_id -> UuidText,
        until -> TimestamptzSqlite,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::store::sql_types::UuidText;

    bans (room_id, user_id) {
        room_id -> UuidText,
        user_id -> UuidText,
        until -> Nullable<TimestamptzSqlite>,
        reason -> Nullable<Text>,
        banned_by -> UuidText,
        banned_at -> TimestamptzSqlite,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::store::sql_types::UuidText;

    invites (id) {
        id -> UuidText,
        room_id -> UuidText,
        user_id -> UuidText,
        inviter_id -> UuidText,
        created_at -> TimestamptzSqlite,
        state -> Text,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::store::sql_types::UuidText;

    invite_links (code) {
        code -> Text,
        room_id -> UuidText,
        created_by -> UuidText,
        created_at -> TimestamptzSqlite,
        expires_at -> TimestamptzSqlite,
        max_uses -> Nullable<Integer>,
        uses -> Integer,
        revoked_at -> Nullable<TimestamptzSqlite>,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::store::sql_types::UuidText;

    blocks (user_id, blocked_id) {
        user_id -> UuidText,
        blocked_id -> UuidText,
        created_at -> TimestamptzSqlite,
    }
}

diesel::joinable!(memberships -> rooms (room_id));
diesel::joinable!(memberships -> users (user_id));
diesel::joinable!(rooms -> users (created_by));

diesel::allow_tables_to_appear_in_same_query!(
    bans,
    blocks,
    invite_links,
    invites,
    mutes,
    consumer_offsets,
    memberships,
    mentions,
    messages,
    reactions,
    rooms,
    users,
);
