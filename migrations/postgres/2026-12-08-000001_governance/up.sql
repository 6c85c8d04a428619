-- Issue 19: governance. Membership and moderation state lives here (the gateways decide
-- on it); every change of it is also an event record of the room's log (messages rows of
-- kind 'member' or 'room', their fields in `detail` as JSON).

ALTER TABLE messages DROP CONSTRAINT messages_kind_check;
ALTER TABLE messages ADD CONSTRAINT messages_kind_check
    CHECK (kind IN ('message', 'edit', 'delete', 'reaction', 'refused', 'member', 'room'));
ALTER TABLE messages ADD COLUMN detail TEXT;
-- The moderation log: a room's member and room events, newest first.
CREATE INDEX messages_governance_idx ON messages (room_id, kind, position);

-- A group DM is a private room of kind 'room' with is_group set (kind keeps its CHECK).
ALTER TABLE rooms ADD COLUMN visibility TEXT NOT NULL DEFAULT 'public'
    CHECK (visibility IN ('public', 'private'));
ALTER TABLE rooms ADD COLUMN is_group BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE rooms ADD COLUMN topic TEXT NOT NULL DEFAULT '';
ALTER TABLE rooms ADD COLUMN description TEXT NOT NULL DEFAULT '';
ALTER TABLE rooms ADD COLUMN slow_mode_secs INTEGER NOT NULL DEFAULT 0;
-- A deleted room is gone from every API; its row stays (the log may still carry records
-- of it, which the persist worker stores) and its name is free again.
ALTER TABLE rooms ADD COLUMN deleted_at TIMESTAMPTZ;
UPDATE rooms SET visibility = 'private' WHERE kind = 'dm';

ALTER TABLE memberships ADD COLUMN role TEXT NOT NULL DEFAULT 'member'
    CHECK (role IN ('owner', 'admin', 'moderator', 'member'));
-- Every room gets an owner: its creator if still a member, else its earliest member.
UPDATE memberships m SET role = 'owner'
  FROM rooms r WHERE r.id = m.room_id AND r.kind = 'room' AND m.user_id = r.created_by;
UPDATE memberships m SET role = 'owner'
 WHERE m.user_id = (SELECT x.user_id FROM memberships x WHERE x.room_id = m.room_id
                     ORDER BY x.joined_at, x.user_id LIMIT 1)
   AND m.room_id IN (SELECT id FROM rooms WHERE kind = 'room')
   AND NOT EXISTS (SELECT 1 FROM memberships o WHERE o.room_id = m.room_id AND o.role = 'owner');

ALTER TABLE users ADD COLUMN is_admin BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE users ADD COLUMN suspended_at TIMESTAMPTZ;

-- Mutes outlive the membership (leaving and rejoining keeps one).
CREATE TABLE mutes (
    room_id    UUID NOT NULL,
    user_id    UUID NOT NULL,
    until      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (room_id, user_id)
);

CREATE TABLE bans (
    room_id    UUID NOT NULL,
    user_id    UUID NOT NULL,
    until      TIMESTAMPTZ,
    reason     TEXT,
    banned_by  UUID NOT NULL,
    banned_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (room_id, user_id)
);

CREATE TABLE invites (
    id          UUID PRIMARY KEY,
    room_id     UUID NOT NULL,
    user_id     UUID NOT NULL,
    inviter_id  UUID NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    state       TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'accepted', 'declined', 'revoked'))
);
CREATE UNIQUE INDEX invites_pending_idx ON invites (room_id, user_id) WHERE state = 'pending';
CREATE INDEX invites_user_idx ON invites (user_id, created_at) WHERE state = 'pending';

CREATE TABLE invite_links (
    code        TEXT PRIMARY KEY,
    room_id     UUID NOT NULL,
    created_by  UUID NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ NOT NULL,
    max_uses    INTEGER,
    uses        INTEGER NOT NULL DEFAULT 0,
    revoked_at  TIMESTAMPTZ
);
CREATE INDEX invite_links_room_idx ON invite_links (room_id);

CREATE TABLE blocks (
    user_id     UUID NOT NULL,
    blocked_id  UUID NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, blocked_id)
);
CREATE INDEX blocks_blocked_idx ON blocks (blocked_id);
