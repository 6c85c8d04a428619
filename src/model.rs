//! Domain types shared by both roles: identifiers, users, rooms, messages.
//!
//! These are plain data. They know nothing about HTTP, WebSockets, SQL, Redis or Kafka;
//! `protocol` decides how they look on the wire, `store` how they look in a table.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub type UserId = Uuid;
pub type RoomId = Uuid;
pub type MessageId = Uuid;

/// Orders a room's messages: strictly increasing within a room, not dense.
/// In distributed mode it is the Kafka offset of the record in the room's partition.
pub type Position = i64;

/// Limits on user input; the defaults are the protocol's.
pub const MAX_BODY_CHARS: usize = 4_000;
pub const MAX_CLIENT_MSG_ID_CHARS: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomKind {
    Room,
    Dm,
}

impl RoomKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RoomKind::Room => "room",
            RoomKind::Dm => "dm",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "room" => Some(RoomKind::Room),
            "dm" => Some(RoomKind::Dm),
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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: UserId,
    pub name: String,
    pub online: bool,
}

/// A chat message. The id and `sent_at` are fixed by the gateway before the message is
/// appended to the log; the position is given by the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub id: MessageId,
    pub room: RoomId,
    pub sender: User,
    pub body: String,
    pub client_msg_id: String,
    pub position: Position,
    pub sent_at: DateTime<Utc>,
}

/// A message before the log has given it a position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMessage {
    pub id: MessageId,
    pub room: RoomId,
    pub sender: User,
    pub body: String,
    pub client_msg_id: String,
    pub sent_at: DateTime<Utc>,
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
    #[error("room names are 1 to 64 characters")]
    BadRoomName,
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

pub fn check_username(name: &str) -> Result<(), InputError> {
    let ok_len = (3..=32).contains(&name.chars().count());
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok_len && ok_chars {
        Ok(())
    } else {
        Err(InputError::BadUsername)
    }
}

pub fn check_password(pw: &str) -> Result<(), InputError> {
    if (8..=128).contains(&pw.chars().count()) {
        Ok(())
    } else {
        Err(InputError::BadPassword)
    }
}

/// Trims the name and checks its length.
pub fn parse_room_name(name: &str) -> Result<String, InputError> {
    let t = name.trim();
    let n = t.chars().count();
    if n == 0 || n > 64 || t.chars().any(|c| c.is_control()) {
        return Err(InputError::BadRoomName);
    }
    Ok(t.to_owned())
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
}
