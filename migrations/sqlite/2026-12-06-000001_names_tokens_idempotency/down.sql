-- Fails if a sender reused a client_msg_id in two rooms meanwhile: those rows must go first.
CREATE TABLE messages_old (
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
    UNIQUE (sender_id, client_msg_id)
);
INSERT INTO messages_old SELECT position, id, room_id, sender_id, sender_name, client_msg_id,
       body, log_partition, sent_at, stored_at FROM messages;
DELETE FROM sqlite_sequence WHERE name = 'messages_old';
INSERT INTO sqlite_sequence (name, seq)
SELECT 'messages_old', seq FROM sqlite_sequence WHERE name = 'messages';
DROP TABLE messages;
ALTER TABLE messages_old RENAME TO messages;
CREATE INDEX messages_room_position_idx ON messages (room_id, position);
DROP INDEX rooms_created_by_idx;
DROP INDEX rooms_name_key_idx;
CREATE UNIQUE INDEX rooms_name_key ON rooms (lower(name)) WHERE kind = 'room';
ALTER TABLE rooms DROP COLUMN name_key;
DROP INDEX users_name_key_idx;
ALTER TABLE users DROP COLUMN name_key;
ALTER TABLE users DROP COLUMN token_generation;
