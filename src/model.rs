//! Domain types shared by both roles: identifiers, users, rooms, messages.
//!
//! These are plain data. They know nothing about HTTP, WebSockets, SQL, Redis or Kafka;
//! `protocol` decides how they look on the wire, `store` how they look in a table.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;
use uuid::Uuid;

pub use crate::governance::Role;

pub type UserId = Uuid;
pub type RoomId = Uuid;
pub type MessageId = Uuid;

/// Orders a room's messages: strictly increasing within a room, not dense.
/// In distributed mode it is the Kafka offset of the record in the room's partition.
pub type Position = i64;

/// Limits on user input; the defaults are the protocol's.
pub const MAX_BODY_CHARS: usize = 4_000;
pub const MAX_CLIENT_MSG_ID_CHARS: usize = 128;
pub const MAX_ROOM_NAME_CHARS: usize = 64;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomKind {
    Room,
    Dm,
    /// A group direct message: 3 to `--max-group-members` people, private.
    Group,
}

/// Who sees and may join a room: anyone (listed), or members and the invited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    #[default]
    Public,
    Private,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Public => "public",
            Visibility::Private => "private",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "public" => Some(Visibility::Public),
            "private" => Some(Visibility::Private),
            _ => None,
        }
    }
}

impl RoomKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RoomKind::Room => "room",
            RoomKind::Dm => "dm",
            RoomKind::Group => "group",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "room" => Some(RoomKind::Room),
            "dm" => Some(RoomKind::Dm),
            "group" => Some(RoomKind::Group),
            _ => None,
        }
    }
}

/// A room as one user sees it (a DM is named after the other user).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomView {
    pub id: RoomId,
    pub name: String,
    pub kind: RoomKind,
    pub member: bool,
    pub unread: i64,
    pub last_position: Option<Position>,
    /// Unread messages that mention the user.
    pub unread_mentions: i64,
    pub visibility: Visibility,
    /// The user's role (None: not a member).
    pub my_role: Option<Role>,
    pub topic: String,
    pub description: String,
    pub slow_mode_secs: i32,
    /// Until when the user may only read (None: not muted).
    pub muted_until: Option<DateTime<Utc>>,
    /// How many members the room has.
    pub members: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: UserId,
    pub name: String,
    pub online: bool,
    pub role: Role,
    pub muted_until: Option<DateTime<Utc>>,
}

/// What a membership event did (`member` events of the room's log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberAction {
    Joined,
    Left,
    Invited,
    Kicked,
    Banned,
    Unbanned,
    Muted,
    Unmuted,
    Role,
}

impl MemberAction {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberAction::Joined => "joined",
            MemberAction::Left => "left",
            MemberAction::Invited => "invited",
            MemberAction::Kicked => "kicked",
            MemberAction::Banned => "banned",
            MemberAction::Unbanned => "unbanned",
            MemberAction::Muted => "muted",
            MemberAction::Unmuted => "unmuted",
            MemberAction::Role => "role",
        }
    }
}

/// The settings a `room` event changed (only those given).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomChanges {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility: Option<Visibility>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_mode_secs: Option<i32>,
}

impl RoomChanges {
    pub fn is_empty(&self) -> bool {
        *self == RoomChanges::default()
    }
}

/// A record of a room's log: a chat message, or (with `change`) an event that changes
/// one (edit, delete, reaction). The id and `sent_at` are fixed by the gateway before the
/// record is appended; the position is given by the log, in the one sequence of the room.
/// For an event, `sender` is who acted and `body` is the new body of an edit ("" else).
///
/// The fields after `change` are a message's current state, as the store keeps it
/// (history pages, recovery from the store); a record fresh from the log has none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub id: MessageId,
    pub room: RoomId,
    pub sender: User,
    pub body: String,
    pub client_msg_id: String,
    pub position: Position,
    pub sent_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<MessageId>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<Change>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reactions: Option<Vec<ReactionCount>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_count: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reply_at: Option<DateTime<Utc>>,
    /// In a history page: the reader has blocked the sender (clients hide it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub blocked: bool,
}

impl Message {
    /// The message with its body gone: what every API returns once it is deleted.
    pub fn tombstone(&mut self) {
        self.body.clear();
        self.deleted = true;
        self.mentions.clear();
        self.reactions = None;
    }
}

/// What an event record changes. Serialised inside log and bus records (not the wire form:
/// `protocol::EventView` is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// `body` of the record is the message's new body.
    Edit {
        message_id: MessageId,
    },
    Delete {
        message_id: MessageId,
    },
    /// `on`: added (true) or removed (false) by the record's sender.
    Reaction {
        message_id: MessageId,
        emoji: String,
        on: bool,
    },
    /// A membership change of `user`; the record's sender is who made it (the user
    /// themselves for joined and left).
    Member {
        user: User,
        action: MemberAction,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<Role>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<DateTime<Utc>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Room settings changed.
    Room {
        changes: RoomChanges,
    },
}

impl Change {
    pub fn kind(&self) -> &'static str {
        match self {
            Change::Edit { .. } => "edit",
            Change::Delete { .. } => "delete",
            Change::Reaction { .. } => "reaction",
            Change::Member { .. } => "member",
            Change::Room { .. } => "room",
        }
    }
    /// The message this event changes (None: a governance event, about the room).
    pub fn target(&self) -> Option<MessageId> {
        match self {
            Change::Edit { message_id }
            | Change::Delete { message_id }
            | Change::Reaction { message_id, .. } => Some(*message_id),
            Change::Member { .. } | Change::Room { .. } => None,
        }
    }
    /// Whether this is a governance event (`member` or `room`).
    pub fn is_governance(&self) -> bool {
        self.target().is_none()
    }
}

/// One emoji's reactions on a message, as history returns them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReactionCount {
    pub emoji: String,
    pub count: i64,
    /// Whether the reader is among them.
    pub me: bool,
    /// Some of those who reacted (at most [`REACTION_USERS_SHOWN`]), oldest first.
    pub users: Vec<User>,
}

/// How many reacting users a history page names per emoji.
pub const REACTION_USERS_SHOWN: usize = 10;

/// A record before the log has given it a position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMessage {
    pub id: MessageId,
    pub room: RoomId,
    pub sender: User,
    pub body: String,
    pub client_msg_id: String,
    pub sent_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<MessageId>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<Change>,
}

impl NewMessage {
    pub fn at(self, position: Position) -> Message {
        Message {
            id: self.id,
            room: self.room,
            sender: self.sender,
            body: self.body,
            client_msg_id: self.client_msg_id,
            position,
            sent_at: self.sent_at,
            reply_to: self.reply_to,
            mentions: self.mentions,
            change: self.change,
            edited_at: None,
            deleted: false,
            reactions: None,
            reply_count: None,
            last_reply_at: None,
            blocked: false,
        }
    }
}

/// Why a piece of user input was refused. The message is safe to show to the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("the message body is empty")]
    EmptyBody,
    #[error("the message body has {0} characters; at most {MAX_BODY_CHARS} are allowed")]
    BodyTooLong(usize),
    #[error("client_msg_id must be 1 to {MAX_CLIENT_MSG_ID_CHARS} printable characters")]
    BadClientMsgId,
    #[error("usernames are 3 to 32 characters: letters, digits, '.', '_' or '-'")]
    BadUsername,
    #[error("passwords are 8 to 128 characters")]
    BadPassword,
    #[error("room names are 1 to {MAX_ROOM_NAME_CHARS} characters")]
    BadRoomName,
    /// A control, bidirectional-control, zero-width or other invisible character.
    #[error(
        "{field} may not contain control, bidirectional-control or invisible characters \
         (found U+{code_point:04X})"
    )]
    InvisibleCharacter {
        field: &'static str,
        code_point: u32,
    },
}

impl InputError {
    pub fn code(&self) -> &'static str {
        match self {
            InputError::EmptyBody => "empty_body",
            InputError::BodyTooLong(_) => "body_too_long",
            InputError::BadClientMsgId => "invalid_client_msg_id",
            InputError::BadUsername => "invalid_username",
            InputError::BadPassword => "invalid_password",
            InputError::BadRoomName => "invalid_room_name",
            InputError::InvisibleCharacter { .. } => "invalid_characters",
        }
    }
}

pub fn check_body(body: &str) -> Result<(), InputError> {
    if body.trim().is_empty() {
        return Err(InputError::EmptyBody);
    }
    let n = body.chars().count();
    if n > MAX_BODY_CHARS {
        return Err(InputError::BodyTooLong(n));
    }
    Ok(())
}

pub fn check_client_msg_id(id: &str) -> Result<(), InputError> {
    let n = id.chars().count();
    if n == 0 || n > MAX_CLIENT_MSG_ID_CHARS || id.chars().any(|c| c.is_control()) {
        return Err(InputError::BadClientMsgId);
    }
    Ok(())
}

/// Usernames: NFKC-normalised (so a full-width `ａｌｉｃｅ` is `alice`), then 3 to 32 of
/// `[A-Za-z0-9._-]`. Returns the name to store. Unique by [`name_key`].
pub fn parse_username(name: &str) -> Result<String, InputError> {
    refuse_invisible("usernames", name)?;
    let name: String = name.nfkc().collect();
    let ok_len = (3..=32).contains(&name.chars().count());
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok_len && ok_chars {
        Ok(name)
    } else {
        Err(InputError::BadUsername)
    }
}

pub fn check_username(name: &str) -> Result<(), InputError> {
    parse_username(name).map(|_| ())
}

pub fn check_password(pw: &str) -> Result<(), InputError> {
    if (8..=128).contains(&pw.chars().count()) {
        Ok(())
    } else {
        Err(InputError::BadPassword)
    }
}

/// Room names: NFKC-normalised, trimmed, inner runs of white space made one space, 1 to
/// [`MAX_ROOM_NAME_CHARS`] characters, none of them invisible ([`is_invisible`]). Returns
/// the name to store (and show). Unique by [`name_key`].
pub fn parse_room_name(name: &str) -> Result<String, InputError> {
    refuse_invisible("room names", name)?;
    let normal: String = name.nfkc().collect();
    refuse_invisible("room names", &normal)?;
    let t = normal.split_whitespace().collect::<Vec<_>>().join(" ");
    let n = t.chars().count();
    if n == 0 || n > MAX_ROOM_NAME_CHARS {
        return Err(InputError::BadRoomName);
    }
    Ok(t)
}

/// The key two names are the same by (for uniqueness and look-up), computed here, in Rust,
/// for both backends (SQLite's `lower()` folds ASCII only): NFKC, case-folded (upper then
/// lower case, which folds `ß`/`SS` and `ς`/`σ` together as full case folding does), NFKC
/// again, without the emoji/text presentation selectors (U+FE0E, U+FE0F), which change
/// no letter.
pub fn name_key(name: &str) -> String {
    let normal: String = name.nfkc().collect();
    let folded = normal.to_uppercase().to_lowercase();
    folded
        .nfkc()
        .filter(|c| !matches!(c, '\u{FE0E}' | '\u{FE0F}'))
        .collect()
}

fn refuse_invisible(field: &'static str, s: &str) -> Result<(), InputError> {
    match s.chars().find(|&c| is_invisible(c)) {
        Some(c) => Err(InputError::InvisibleCharacter {
            field,
            code_point: c as u32,
        }),
        None => Ok(()),
    }
}

/// Characters refused in names: controls (Cc), line and paragraph separators, the
/// bidirectional controls (U+061C, U+200E/F, U+202A-202E, U+2066-2069), zero-width ones
/// (U+200B-200D, U+2060, U+FEFF), every other Default_Ignorable_Code_Point of Unicode 16
/// (soft hyphen, fillers, tags, variation selectors, …) except the two presentation
/// selectors U+FE0E/U+FE0F that emoji need (left out of [`name_key`]), blank look-alikes
/// (U+2800), invisible format characters (U+0600-0605, U+06DD, U+070F, U+0890-0891,
/// U+08E2, U+110BD, U+110CD, U+FFF9-FFFB) and the non-characters U+FFFE/U+FFFF.
pub fn is_invisible(c: char) -> bool {
    if c.is_control() {
        return true;
    }
    matches!(c as u32,
        0x00AD | 0x034F | 0x061C | 0x115F..=0x1160 | 0x17B4..=0x17B5 | 0x180B..=0x180F
        | 0x200B..=0x200F | 0x2028..=0x202E | 0x2060..=0x206F | 0x3164
        | 0xFE00..=0xFE0D | 0xFEFF | 0xFFA0 | 0xFFF0..=0xFFFB | 0xFFFE | 0xFFFF
        | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A | 0xE0000..=0xE0FFF
        | 0x2800 | 0x0600..=0x0605 | 0x06DD | 0x070F | 0x0890..=0x0891 | 0x08E2
        | 0x110BD | 0x110CD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        assert_eq!(check_body("  \n"), Err(InputError::EmptyBody));
        assert!(check_body("hi").is_ok());
        assert!(check_body(&"é".repeat(MAX_BODY_CHARS)).is_ok());
        assert_eq!(
            check_body(&"x".repeat(MAX_BODY_CHARS + 1)),
            Err(InputError::BodyTooLong(MAX_BODY_CHARS + 1))
        );
    }

    #[test]
    fn usernames_and_rooms() {
        assert!(check_username("alice_01").is_ok());
        assert!(check_username("al").is_err());
        assert!(check_username("<script>").is_err());
        assert_eq!(parse_room_name("  general ").unwrap(), "general");
        assert!(parse_room_name("   ").is_err());
        assert!(check_client_msg_id("").is_err());
        assert!(check_client_msg_id("a\u{0}b").is_err());
        assert!(check_client_msg_id("0b5f-uuid").is_ok());
    }

    #[test]
    fn room_names_are_normalised_and_keyed_by_unicode_case() {
        // SQLite's lower() folds ASCII only: the key is Rust's.
        assert_eq!(name_key("Ärger"), name_key("ärger"));
        assert_eq!(name_key("ÄRGER"), "ärger");
        // NFKC: composed and decomposed, full-width, ligatures.
        assert_eq!(name_key("A\u{0308}rger"), name_key("Ärger"));
        assert_eq!(name_key("ＧＥＮＥＲＡＬ"), "general");
        assert_eq!(name_key("ﬁsh"), "fish");
        // Full case folding: ß/SS, final sigma.
        assert_eq!(name_key("Straße"), name_key("STRASSE"));
        assert_eq!(name_key("ΟΔΟΣ"), name_key("οδοσ"));
        assert_eq!(name_key("οδος"), name_key("οδοσ"));
        // Presentation selectors change no letter.
        assert_eq!(name_key("love\u{2764}\u{FE0F}"), name_key("LOVE\u{2764}"));
        assert_ne!(name_key("general"), name_key("generals"));

        assert_eq!(parse_room_name("  general ").unwrap(), "general");
        assert_eq!(parse_room_name("a\u{3000}\u{00A0} b").unwrap(), "a b");
        assert_eq!(parse_room_name("A\u{0308}rger").unwrap(), "Ärger");
        assert_eq!(parse_room_name("ＧＥＮＥＲＡＬ").unwrap(), "GENERAL");
        assert!(parse_room_name("   ").is_err());
        assert!(parse_room_name(&"é".repeat(MAX_ROOM_NAME_CHARS)).is_ok());
        assert_eq!(
            parse_room_name(&"x".repeat(MAX_ROOM_NAME_CHARS + 1)),
            Err(InputError::BadRoomName)
        );
        assert!(parse_room_name("coffee \u{2615}\u{FE0F}").is_ok());
    }

    #[test]
    fn invisible_and_bidi_characters_are_refused_in_names() {
        for c in [
            '\u{0}',
            '\u{7}',
            '\u{1B}',
            '\u{7F}',
            '\u{85}',
            '\u{AD}',
            '\u{34F}',
            '\u{61C}',
            '\u{115F}',
            '\u{180E}',
            '\u{200B}',
            '\u{200C}',
            '\u{200D}',
            '\u{200E}',
            '\u{200F}',
            '\u{2028}',
            '\u{202A}',
            '\u{202B}',
            '\u{202C}',
            '\u{202D}',
            '\u{202E}',
            '\u{2060}',
            '\u{2066}',
            '\u{2067}',
            '\u{2068}',
            '\u{2069}',
            '\u{2800}',
            '\u{3164}',
            '\u{FE00}',
            '\u{FEFF}',
            '\u{FFA0}',
            '\u{E0041}',
            '\u{E0100}',
        ] {
            for name in [c.to_string(), format!("ab{c}cd"), format!("{c}room")] {
                let e = parse_room_name(&name).unwrap_err();
                assert_eq!(e.code(), "invalid_characters", "U+{:04X}", c as u32);
                assert_eq!(
                    e,
                    InputError::InvisibleCharacter {
                        field: "room names",
                        code_point: c as u32
                    }
                );
                let e = check_username(&format!("alice{c}")).unwrap_err();
                assert_eq!(e.code(), "invalid_characters", "U+{:04X}", c as u32);
            }
        }
        assert!(!is_invisible('a'));
        assert!(!is_invisible('Ä'));
        assert!(!is_invisible('\u{FE0F}'));
        assert!(!is_invisible(' '));
    }

    #[test]
    fn usernames_are_normalised() {
        assert_eq!(parse_username("ａｌｉｃｅ").unwrap(), "alice");
        assert_eq!(parse_username("Alice_01").unwrap(), "Alice_01");
        assert_eq!(name_key("ALICE_01"), name_key("alice_01"));
        assert_eq!(name_key("ＡＬＩＣＥ_01"), "alice_01");
        assert_eq!(parse_username("ärger"), Err(InputError::BadUsername));
        assert_eq!(parse_username("al"), Err(InputError::BadUsername));
    }
}
