-- Issue 18: every change to a room is a record of its log. The messages table keeps every
-- record (a message, or an event with `kind` edit/delete/reaction and the message it
-- changes in `target_id`), so recovery reads one sequence; message rows also hold their
-- current state, which the persist worker updates in the same transaction as its offset.

ALTER TABLE messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'message'
    CHECK (kind IN ('message', 'edit', 'delete', 'reaction'));
ALTER TABLE messages ADD COLUMN target_id UUID;
ALTER TABLE messages ADD COLUMN reply_to UUID;
-- JSON array of the mentioned user ids (a message), NULL when none.
ALTER TABLE messages ADD COLUMN mentions TEXT;
ALTER TABLE messages ADD COLUMN emoji TEXT;
ALTER TABLE messages ADD COLUMN reaction_on BOOLEAN;
-- A message's state.
ALTER TABLE messages ADD COLUMN edited_at TIMESTAMPTZ;
-- The body before the first edit (the edit history's first entry).
ALTER TABLE messages ADD COLUMN original_body TEXT;
ALTER TABLE messages ADD COLUMN edit_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN deleted_at TIMESTAMPTZ;
ALTER TABLE messages ADD COLUMN deleted_by UUID;
ALTER TABLE messages ADD COLUMN reply_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN last_reply_at TIMESTAMPTZ;

CREATE INDEX messages_target_idx ON messages (target_id) WHERE target_id IS NOT NULL;
CREATE INDEX messages_thread_idx ON messages (reply_to, position) WHERE reply_to IS NOT NULL;

-- Current reactions: one row per (message, user, emoji).
CREATE TABLE reactions (
    message_id  UUID NOT NULL,
    user_id     UUID NOT NULL,
    emoji       TEXT NOT NULL,
    position    BIGINT NOT NULL,
    PRIMARY KEY (message_id, user_id, emoji)
);

-- Who is mentioned where (drives `unread_mentions`); rows go with the message's delete.
CREATE TABLE mentions (
    user_id     UUID NOT NULL,
    room_id     UUID NOT NULL,
    message_id  UUID NOT NULL,
    position    BIGINT NOT NULL,
    PRIMARY KEY (user_id, message_id)
);
CREATE INDEX mentions_user_room_idx ON mentions (user_id, room_id, position);
