-- Accounts, rooms, memberships, messages and the consumer's per-partition offsets.

CREATE TABLE users (
    id            UUID PRIMARY KEY,
    name          TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_name_key ON users (lower(name));

CREATE TABLE rooms (
    id          UUID PRIMARY KEY,
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('room', 'dm')),
    -- For a DM: "<smaller user id>:<larger user id>", so a pair has one DM room.
    dm_key      TEXT UNIQUE,
    created_by  UUID NOT NULL REFERENCES users (id),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((kind = 'dm') = (dm_key IS NOT NULL))
);
CREATE UNIQUE INDEX rooms_name_key ON rooms (lower(name)) WHERE kind = 'room';

CREATE TABLE memberships (
    room_id        UUID NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id        UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    joined_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The newest position this member has read (drives `unread`).
    last_read      BIGINT,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX memberships_user_idx ON memberships (user_id);

CREATE TABLE messages (
    id             UUID PRIMARY KEY,
    -- No foreign keys here on purpose: a row comes from the log, and a record the
    -- database refused would stall its partition's persistence forever.
    room_id        UUID NOT NULL,
    sender_id      UUID NOT NULL,
    sender_name    TEXT NOT NULL,
    client_msg_id  TEXT NOT NULL,
    body           TEXT NOT NULL,
    -- The Kafka offset in the room's partition: orders the room's messages.
    position       BIGINT NOT NULL,
    log_partition  INTEGER NOT NULL,
    sent_at        TIMESTAMPTZ NOT NULL,
    stored_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Idempotent send: one row per (sender, client_msg_id), whatever the log holds.
    CONSTRAINT messages_sender_client_msg_id_key UNIQUE (sender_id, client_msg_id),
    -- Exactly-once persistence: one row per log record.
    CONSTRAINT messages_log_record_key UNIQUE (log_partition, position)
);
CREATE INDEX messages_room_position_idx ON messages (room_id, position);

-- The persist worker's progress per partition of a topic: the next offset to read.
CREATE TABLE consumer_offsets (
    topic        TEXT NOT NULL,
    log_partition INTEGER NOT NULL,
    next_offset  BIGINT NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, log_partition)
);
