-- Issue 15, item 5: the same changes as migrations/postgres (see there).

ALTER TABLE users ADD COLUMN token_generation BIGINT NOT NULL DEFAULT 0;

-- Filled in Rust for the rows that exist already (store::backfill_name_keys): SQLite's
-- lower() folds ASCII only.
ALTER TABLE users ADD COLUMN name_key TEXT;
CREATE UNIQUE INDEX users_name_key_idx ON users (name_key);

ALTER TABLE rooms ADD COLUMN name_key TEXT;
DROP INDEX rooms_name_key;
CREATE UNIQUE INDEX rooms_name_key_idx ON rooms (name_key) WHERE kind = 'room';
CREATE INDEX rooms_created_by_idx ON rooms (created_by);

-- Idempotent send per (sender, room, client_msg_id). SQLite cannot drop a table
-- constraint: the table is rebuilt, keeping every row, its position, and the
-- AUTOINCREMENT counter (a position is never handed out twice).
CREATE TABLE messages_new (
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
    -- Idempotent send: one row per (sender, room, client_msg_id).
    UNIQUE (sender_id, room_id, client_msg_id)
);
INSERT INTO messages_new (position, id, room_id, sender_id, sender_name, client_msg_id,
                          body, log_partition, sent_at, stored_at)
SELECT position, id, room_id, sender_id, sender_name, client_msg_id,
       body, log_partition, sent_at, stored_at
  FROM messages;
DELETE FROM sqlite_sequence WHERE name = 'messages_new';
INSERT INTO sqlite_sequence (name, seq)
SELECT 'messages_new', seq FROM sqlite_sequence WHERE name = 'messages';
DROP TABLE messages;
ALTER TABLE messages_new RENAME TO messages;
CREATE INDEX messages_room_position_idx ON messages (room_id, position);
