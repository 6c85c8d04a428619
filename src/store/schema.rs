// @generated automatically by Diesel CLI.

diesel::table! {
    consumer_offsets (topic, log_partition) {
        topic -> Text,
        log_partition -> Int4,
        next_offset -> Int8,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    memberships (room_id, user_id) {
        room_id -> Uuid,
        user_id -> Uuid,
        joined_at -> Timestamptz,
        last_read -> Nullable<Int8>,
        role -> Text,
    }
}

diesel::table! {
    messages (id) {
        id -> Uuid,
        room_id -> Uuid,
        sender_id -> Uuid,
        sender_name -> Text,
        client_msg_id -> Text,
        body -> Text,
        position -> Int8,
        log_partition -> Int4,
        sent_at -> Timestamptz,
        stored_at -> Timestamptz,
        kind -> Text,
        target_id -> Nullable<Uuid>,
        reply_to -> Nullable<Uuid>,
        mentions -> Nullable<Text>,
        emoji -> Nullable<Text>,
        reaction_on -> Nullable<Bool>,
        edited_at -> Nullable<Timestamptz>,
        original_body -> Nullable<Text>,
        edit_count -> Int4,
        deleted_at -> Nullable<Timestamptz>,
        deleted_by -> Nullable<Uuid>,
        reply_count -> Int4,
        last_reply_at -> Nullable<Timestamptz>,
        detail -> Nullable<Text>,
    }
}

diesel::table! {
    reactions (message_id, user_id, emoji) {
        message_id -> Uuid,
        user_id -> Uuid,
        emoji -> Text,
        position -> Int8,
    }
}

diesel::table! {
    mentions (user_id, message_id) {
        user_id -> Uuid,
        room_id -> Uuid,
        message_id -> Uuid,
        position -> Int8,
    }
}

diesel::table! {
    rooms (id) {
        id -> Uuid,
        name -> Text,
        kind -> Text,
        dm_key -> Nullable<Text>,
        created_by -> Uuid,
        created_at -> Timestamptz,
        name_key -> Nullable<Text>,
        visibility -> Text,
        is_group -> Bool,
        topic -> Text,
        description -> Text,
        slow_mode_secs -> Int4,
        deleted_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    users (id) {
        id -> Uuid,
        name -> Text,
        password_hash -> Text,
        created_at -> Timestamptz,
        token_generation -> Int8,
        name_key -> Nullable<Text>,
        is_admin -> Bool,
        suspended_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    mutes (room_id, user_id) {
        room_id -> Uuid,
        user_id -> Uuid,
        until -> Timestamptz,
    }
}

diesel::table! {
    bans (room_id, user_id) {
        room_id -> Uuid,
        user_id -> Uuid,
        until -> Nullable<Timestamptz>,
        reason -> Nullable<Text>,
        banned_by -> Uuid,
        banned_at -> Timestamptz,
    }
}

diesel::table! {
    invites (id) {
        id -> Uuid,
        room_id -> Uuid,
        user_id -> Uuid,
        inviter_id -> Uuid,
        created_at -> Timestamptz,
        state -> Text,
    }
}

diesel::table! {
    invite_links (code) {
        code -> Text,
        room_id -> Uuid,
        created_by -> Uuid,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        max_uses -> Nullable<Int4>,
        uses -> Int4,
        revoked_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    blocks (user_id, blocked_id) {
        user_id -> Uuid,
        blocked_id -> Uuid,
        created_at -> Timestamptz,
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
