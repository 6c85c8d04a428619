DROP TABLE mentions;
DROP TABLE reactions;
DROP INDEX messages_thread_idx;
DROP INDEX messages_target_idx;
ALTER TABLE messages DROP COLUMN last_reply_at, DROP COLUMN reply_count,
    DROP COLUMN deleted_by, DROP COLUMN deleted_at, DROP COLUMN edit_count,
    DROP COLUMN original_body, DROP COLUMN edited_at, DROP COLUMN reaction_on, DROP COLUMN emoji,
    DROP COLUMN mentions, DROP COLUMN reply_to, DROP COLUMN target_id, DROP COLUMN kind;
