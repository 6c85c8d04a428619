ALTER TABLE messages DROP CONSTRAINT messages_sender_room_client_msg_id_key;
-- Fails if a sender reused a client_msg_id in two rooms meanwhile: those rows must go first.
ALTER TABLE messages ADD CONSTRAINT messages_sender_client_msg_id_key
    UNIQUE (sender_id, client_msg_id);
DROP INDEX rooms_created_by_idx;
DROP INDEX rooms_name_key_idx;
CREATE UNIQUE INDEX rooms_name_key ON rooms (lower(name)) WHERE kind = 'room';
ALTER TABLE rooms DROP COLUMN name_key;
DROP INDEX users_name_key_idx;
ALTER TABLE users DROP COLUMN name_key;
ALTER TABLE users DROP COLUMN token_generation;
