-- The embedded mode's schema: the same tables as migrations/postgres, in SQLite's types.
-- Ids are UUID text, times are RFC 3339 text (diesel's TimestamptzSqlite). Here the
-- messages table is also the log: `position` is the row's order (AUTOINCREMENT never
-- reuses a value, so a position stays unique even after deletes).

CREATE TABLE users (
    id            TEXT PRIMARY KEY NOT NULL,
    name          TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE UNIQUE INDEX users_name_key ON users (lower(name));

CREATE TABLE rooms (
    id          TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('room', 'dm')),
    dm_key      TEXT UNIQUE,
    created_by  TEXT NOT NULL REFERENCES users (id),
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    CHECK ((kind = 'dm') = (dm_key IS NOT NULL))
);
CREATE UNIQUE INDEX rooms_name_key ON rooms (lower(name)) WHERE kind = 'room';

CREATE TABLE memberships (
    room_id    TEXT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    joined_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    last_read  BIGINT,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX memberships_user_idx ON memberships (user_id);

CREATE TABLE messages (
    position       INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    id             TEXT NOT NULL UNIQUE,
    room_id        TEXT NOT NULL,
    sender_id      TEXT NOT NULL,
    sender_name    TEXT NOT NULL,
    client_msg_id  TEXT NOT NULL,
    body           TEXT NOT NULL,
    log_partition  INTEGER NOT NULL DEFAULT 0,
    sent_at        TEXT NOT NULL,
    stored_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    -- Idempotent send: one row per (sender, client_msg_id).
    UNIQUE (sender_id, client_msg_id)
);
CREATE INDEX messages_room_position_idx ON messages (room_id, position);

-- Kept for the shared Store code; the embedded mode has no separate persist worker.
CREATE TABLE consumer_offsets (
    topic          TEXT NOT NULL,
    log_partition  INTEGER NOT NULL,
    next_offset    BIGINT NOT NULL,
    updated_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (topic, log_partition)
);
