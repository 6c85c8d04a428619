-- Issue 19: the same changes as migrations/postgres (see there). SQLite cannot change a
-- CHECK in place: `kind` is rebuilt as a new column with the new CHECK.

DROP INDEX messages_room_messages_idx;
ALTER TABLE messages ADD COLUMN kind_v2 TEXT NOT NULL DEFAULT 'message'
    CHECK (kind_v2 IN ('message', 'edit', 'delete', 'reaction', 'refused', 'member', 'room'));
UPDATE messages SET kind_v2 = kind;
ALTER TABLE messages DROP COLUMN kind;
ALTER TABLE messages RENAME COLUMN kind_v2 TO kind;
CREATE INDEX messages_room_messages_idx ON messages (room_id, position) WHERE kind = 'message';
ALTER TABLE messages ADD COLUMN detail TEXT;
CREATE INDEX messages_governance_idx ON messages (room_id, kind, position);

ALTER TABLE rooms ADD COLUMN visibility TEXT NOT NULL DEFAULT 'public'
    CHECK (visibility IN ('public', 'private'));
ALTER TABLE rooms ADD COLUMN is_group BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE rooms ADD COLUMN topic TEXT NOT NULL DEFAULT '';
ALTER TABLE rooms ADD COLUMN description TEXT NOT NULL DEFAULT '';
ALTER TABLE rooms ADD COLUMN slow_mode_secs INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rooms ADD COLUMN deleted_at TEXT;
UPDATE rooms SET visibility = 'private' WHERE kind = 'dm';

ALTER TABLE memberships ADD COLUMN role TEXT NOT NULL DEFAULT 'member'
    CHECK (role IN ('owner', 'admin', 'moderator', 'member'));
UPDATE memberships SET role = 'owner'
 WHERE EXISTS (SELECT 1 FROM rooms r WHERE r.id = memberships.room_id AND r.kind = 'room'
                AND r.created_by = memberships.user_id);
UPDATE memberships SET role = 'owner'
 WHERE user_id = (SELECT x.user_id FROM memberships x WHERE x.room_id = memberships.room_id
                   ORDER BY x.joined_at, x.user_id LIMIT 1)
   AND room_id IN (SELECT id FROM rooms WHERE kind = 'room')
   AND NOT EXISTS (SELECT 1 FROM memberships o WHERE o.room_id = memberships.room_id
                    AND o.role = 'owner');

ALTER TABLE users ADD COLUMN is_admin BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE users ADD COLUMN suspended_at TEXT;

-- Mutes outlive the membership (leaving and rejoining keeps one).
CREATE TABLE mutes (
    room_id    TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    until      TEXT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);

CREATE TABLE bans (
    room_id    TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    until      TEXT,
    reason     TEXT,
    banned_by  TEXT NOT NULL,
    banned_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (room_id, user_id)
);

CREATE TABLE invites (
    id          TEXT PRIMARY KEY NOT NULL,
    room_id     TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    inviter_id  TEXT NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    state       TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'accepted', 'declined', 'revoked'))
);
CREATE UNIQUE INDEX invites_pending_idx ON invites (room_id, user_id) WHERE state = 'pending';
CREATE INDEX invites_user_idx ON invites (user_id, created_at) WHERE state = 'pending';

CREATE TABLE invite_links (
    code        TEXT PRIMARY KEY NOT NULL,
    room_id     TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    expires_at  TEXT NOT NULL,
    max_uses    INTEGER,
    uses        INTEGER NOT NULL DEFAULT 0,
    revoked_at  TEXT
);
CREATE INDEX invite_links_room_idx ON invite_links (room_id);

CREATE TABLE blocks (
    user_id     TEXT NOT NULL,
    blocked_id  TEXT NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (user_id, blocked_id)
);
CREATE INDEX blocks_blocked_idx ON blocks (blocked_id);
