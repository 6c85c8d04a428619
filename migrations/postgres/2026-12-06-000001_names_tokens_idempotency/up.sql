-- Issue 15, item 5.
--
-- Token revocation: every token carries the generation it was issued under; bumping the
-- user's generation (POST /api/logout-all) makes every earlier token fail. Tokens from
-- before this column carry none and count as generation 0.
ALTER TABLE users ADD COLUMN token_generation BIGINT NOT NULL DEFAULT 0;

-- Names are unique by a key computed in Rust (model::name_key: NFKC + Unicode case
-- folding), the same for both backends. NULL only for rows written before this
-- migration: the process that runs migrations fills them in Rust right after
-- (store::backfill_name_keys), as SQL cannot compute the key.
ALTER TABLE users ADD COLUMN name_key TEXT;
CREATE UNIQUE INDEX users_name_key_idx ON users (name_key);
-- (users_name_key on lower(name) stays: usernames are ASCII, where it is the same rule.)

ALTER TABLE rooms ADD COLUMN name_key TEXT;
DROP INDEX rooms_name_key;
CREATE UNIQUE INDEX rooms_name_key_idx ON rooms (name_key) WHERE kind = 'room';
-- Counts a user's rooms for the per-user cap.
CREATE INDEX rooms_created_by_idx ON rooms (created_by);

-- Idempotent send is per (sender, room, client_msg_id): the same client_msg_id in another
-- room is another message.
ALTER TABLE messages DROP CONSTRAINT messages_sender_client_msg_id_key;
ALTER TABLE messages ADD CONSTRAINT messages_sender_room_client_msg_id_key
    UNIQUE (sender_id, room_id, client_msg_id);
