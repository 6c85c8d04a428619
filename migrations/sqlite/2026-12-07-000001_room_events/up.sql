-- Issue 18: the same changes as migrations/postgres (see there).

ALTER TABLE messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'message'
    CHECK (kind IN ('message', 'edit', 'delete', 'reaction'));
ALTER TABLE messages ADD COLUMN target_id TEXT;
ALTER TABLE messages ADD COLUMN reply_to TEXT;
ALTER TABLE messages ADD COLUMN mentions TEXT;
ALTER TABLE messages ADD COLUMN emoji TEXT;
ALTER TABLE messages ADD COLUMN reaction_on BOOLEAN;
ALTER TABLE messages ADD COLUMN edited_at TEXT;
ALTER TABLE messages ADD COLUMN original_body TEXT;
ALTER TABLE messages ADD COLUMN edit_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN deleted_at TEXT;
ALTER TABLE messages ADD COLUMN deleted_by TEXT;
ALTER TABLE messages ADD COLUMN reply_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN last_reply_at TEXT;

CREATE INDEX messages_target_idx ON messages (target_id) WHERE target_id IS NOT NULL;
CREATE INDEX messages_thread_idx ON messages (reply_to, position) WHERE reply_to IS NOT NULL;

CREATE TABLE reactions (
    message_id  TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    emoji       TEXT NOT NULL,
    position    BIGINT NOT NULL,
    PRIMARY KEY (message_id, user_id, emoji)
);

CREATE TABLE mentions (
    user_id     TEXT NOT NULL,
    room_id     TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    position    BIGINT NOT NULL,
    PRIMARY KEY (user_id, message_id)
);
CREATE INDEX mentions_user_room_idx ON mentions (user_id, room_id, position);
