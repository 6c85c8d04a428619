//! Wire protocol v1 (docs/protocol.md): the frames a client and a gateway exchange.
//!
//! No I/O and no actix types here: parsing a text frame into a [`ClientFrame`] and
//! serialising a [`ServerFrame`] is all this module does, so it is tested without sockets.

use serde::{Deserialize, Serialize};

use chrono::{DateTime, Utc};

use crate::model::{
    Change, MemberAction, Message, MessageId, Position, Role, RoomChanges, RoomId, User, UserId,
};

/// Close codes the gateway uses besides the standard ones.
pub mod close {
    /// No valid `hello` first, no hello within the deadline, or a bad token.
    pub const UNAUTHENTICATED: u16 = 4401;
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Hello {
        token: String,
    },
    Subscribe {
        room: RoomId,
        #[serde(default)]
        since: Option<Position>,
    },
    Unsubscribe {
        room: RoomId,
    },
    Send {
        room: RoomId,
        client_msg_id: String,
        body: String,
        #[serde(default)]
        reply_to: Option<MessageId>,
        /// Users the client mentions explicitly (besides the `@name`s in the body).
        #[serde(default)]
        mentions: Vec<UserId>,
    },
    Edit {
        room: RoomId,
        message_id: MessageId,
        client_msg_id: String,
        body: String,
    },
    Delete {
        room: RoomId,
        message_id: MessageId,
        client_msg_id: String,
    },
    React {
        room: RoomId,
        message_id: MessageId,
        client_msg_id: String,
        emoji: String,
        on: bool,
    },
    Typing {
        room: RoomId,
    },
    Read {
        room: RoomId,
        position: Position,
    },
    Ping,
}

/// A frame that could not be parsed: answered with an `error` frame, never a crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFrame {
    pub code: ErrorCode,
    pub message: String,
    /// The `client_msg_id` or frame type it answers, when they could be read.
    pub reference: Option<String>,
}

impl ClientFrame {
    pub fn parse(text: &str) -> Result<ClientFrame, BadFrame> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| BadFrame {
            code: ErrorCode::BadFrame,
            message: format!("not a JSON object: {e}"),
            reference: None,
        })?;
        let Some(obj) = value.as_object() else {
            return Err(BadFrame {
                code: ErrorCode::BadFrame,
                message: "a frame is a JSON object".into(),
                reference: None,
            });
        };
        let ty = obj.get("type").and_then(|t| t.as_str()).map(str::to_owned);
        let reference = obj
            .get("client_msg_id")
            .and_then(|t| t.as_str())
            .map(str::to_owned)
            .or_else(|| ty.clone());
        const KNOWN: [&str; 10] = [
            "hello",
            "subscribe",
            "unsubscribe",
            "send",
            "edit",
            "delete",
            "react",
            "typing",
            "read",
            "ping",
        ];
        match ty.as_deref() {
            None => {
                return Err(BadFrame {
                    code: ErrorCode::BadFrame,
                    message: "a frame needs a string \"type\"".into(),
                    reference,
                })
            }
            Some(t) if !KNOWN.contains(&t) => {
                return Err(BadFrame {
                    code: ErrorCode::UnknownType,
                    message: format!("unknown frame type {t:?}"),
                    reference,
                })
            }
            Some(_) => {}
        }
        serde_json::from_value(value).map_err(|e| BadFrame {
            code: ErrorCode::BadFrame,
            message: format!("malformed {} frame: {e}", ty.as_deref().unwrap_or("")),
            reference,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberEvent {
    Joined,
    Left,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    Welcome {
        user: &'a User,
        session: String,
    },
    Subscribed {
        room: RoomId,
        position: Option<Position>,
    },
    /// The server ended a subscription: `reason` says why (`left`: the user's membership
    /// ended, from this or another device).
    Unsubscribed {
        room: RoomId,
        reason: &'a str,
    },
    Ack {
        client_msg_id: &'a str,
        message: &'a Message,
    },
    /// The ack of an edit, delete or reaction.
    #[serde(rename = "ack")]
    AckEvent {
        client_msg_id: &'a str,
        event: EventView<'a>,
    },
    Message {
        message: &'a Message,
    },
    /// An edit, delete or reaction in a subscribed room (live and in recovery).
    Event {
        event: EventView<'a>,
    },
    /// A member of the room read up to `position` (read receipts, direct messages).
    Receipt {
        room: RoomId,
        user: &'a User,
        position: Position,
    },
    /// On every connection of the invited user: an invite to a room.
    Invite {
        invite: &'a crate::store::governance::Invite,
    },
    /// On every connection of the user: their room list changed (refresh it).
    RoomsChanged {
        room: RoomId,
        reason: &'a str,
    },
    /// On every connection of the user: their read marker of the room moved (on this or
    /// another device).
    Read {
        room: RoomId,
        position: Position,
    },
    Typing {
        room: RoomId,
        user: &'a User,
    },
    Member {
        room: RoomId,
        user: &'a User,
        event: MemberEvent,
    },
    Presence {
        room: RoomId,
        user: &'a User,
        online: bool,
    },
    Error {
        code: ErrorCode,
        message: &'a str,
        retryable: bool,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
    },
    Reconnect {
        reason: &'a str,
    },
    Pong,
}

/// The wire form of an event record (protocol v1.1): `{"id","room","kind","position",
/// "sent_at","actor", "client_msg_id", "message_id", …kind fields}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventView<'a> {
    pub id: MessageId,
    pub room: RoomId,
    pub kind: &'static str,
    pub position: Position,
    pub sent_at: DateTime<Utc>,
    pub actor: &'a User,
    pub client_msg_id: &'a str,
    /// The message an edit, delete or reaction changes (absent on `member`, `room`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<MessageId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub emoji: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on: Option<bool>,
    /// `member`: whose membership changed, how, and the details.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a User>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<MemberAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    /// `room`: the settings changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes: Option<&'a RoomChanges>,
}

impl<'a> EventView<'a> {
    /// The view of `record` if it is an event (None for a message).
    pub fn of(record: &'a Message) -> Option<EventView<'a>> {
        let change = record.change.as_ref()?;
        let (body, emoji, on) = match change {
            Change::Edit { .. } => (Some(record.body.as_str()), None, None),
            Change::Reaction { emoji, on, .. } => (None, Some(emoji.as_str()), Some(*on)),
            _ => (None, None, None),
        };
        let mut view = EventView {
            id: record.id,
            room: record.room,
            kind: change.kind(),
            position: record.position,
            sent_at: record.sent_at,
            actor: &record.sender,
            client_msg_id: &record.client_msg_id,
            message_id: change.target(),
            body,
            emoji,
            on,
            user: None,
            action: None,
            role: None,
            until: None,
            reason: None,
            changes: None,
        };
        match change {
            Change::Member {
                user,
                action,
                role,
                until,
                reason,
            } => {
                view.user = Some(user);
                view.action = Some(*action);
                view.role = *role;
                view.until = *until;
                view.reason = reason.as_deref();
            }
            Change::Room { changes } => view.changes = Some(changes),
            _ => {}
        }
        Some(view)
    }
}

/// The frame that delivers a log record: `message` or `event`.
pub fn record_frame(record: &Message) -> ServerFrame<'_> {
    match EventView::of(record) {
        Some(event) => ServerFrame::Event { event },
        None => ServerFrame::Message { message: record },
    }
}

/// The ack of a durable record: with `message` or with `event`.
pub fn ack_frame<'a>(client_msg_id: &'a str, record: &'a Message) -> ServerFrame<'a> {
    match EventView::of(record) {
        Some(event) => ServerFrame::AckEvent {
            client_msg_id,
            event,
        },
        None => ServerFrame::Ack {
            client_msg_id,
            message: record,
        },
    }
}

impl ServerFrame<'_> {
    pub fn to_text(&self) -> String {
        // Serialising these types cannot fail: no maps with non-string keys, no custom impls.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{\"type\":\"error\"}"))
    }
}

/// The `code` of an `error` frame. Whether a client may retry is part of the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadFrame,
    UnknownType,
    AlreadyAuthenticated,
    EmptyBody,
    BodyTooLong,
    InvalidClientMsgId,
    RoomNotFound,
    NotMember,
    NotSubscribed,
    RateLimited,
    /// The same client_msg_id is being sent right now (on this or another gateway).
    InFlight,
    TooManySubscriptions,
    /// The client is too far behind for `since`; page history over HTTP instead.
    BacklogTooLarge,
    /// A dependency (Kafka, PostgreSQL, Redis) is unavailable right now.
    Unavailable,
    /// The message an edit, delete, reaction or reply names is unknown, not a message, or
    /// in another room.
    MessageNotFound,
    MessageDeleted,
    /// Not allowed to this user (e.g. editing someone else's message).
    Forbidden,
    EditWindowClosed,
    TooManyEdits,
    TooManyReactions,
    InvalidEmoji,
    /// Banned from the room.
    Banned,
    /// Muted in the room: read only until the mute ends.
    Muted,
    /// The room's slow mode: wait before sending again (retryable).
    SlowMode,
    Draining,
    Internal,
}

impl ErrorCode {
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::RateLimited
                | ErrorCode::SlowMode
                | ErrorCode::InFlight
                | ErrorCode::Unavailable
                | ErrorCode::Draining
                | ErrorCode::Internal
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn parses_every_client_frame() {
        let room = Uuid::new_v4();
        let f = ClientFrame::parse(&format!(
            r#"{{"type":"send","room":"{room}","client_msg_id":"c1","body":"hi"}}"#
        ))
        .unwrap();
        assert_eq!(
            f,
            ClientFrame::Send {
                room,
                client_msg_id: "c1".into(),
                body: "hi".into(),
                reply_to: None,
                mentions: Vec::new(),
            }
        );
        let mid = Uuid::new_v4();
        let f = ClientFrame::parse(&format!(
            r#"{{"type":"react","room":"{room}","message_id":"{mid}","client_msg_id":"r1","emoji":"👍","on":true}}"#
        ))
        .unwrap();
        assert_eq!(
            f,
            ClientFrame::React {
                room,
                message_id: mid,
                client_msg_id: "r1".into(),
                emoji: "👍".into(),
                on: true
            }
        );
        let f = ClientFrame::parse(&format!(
            r#"{{"type":"send","room":"{room}","client_msg_id":"c2","body":"re","reply_to":"{mid}"}}"#
        ))
        .unwrap();
        assert!(matches!(f, ClientFrame::Send { reply_to: Some(m), .. } if m == mid));
        let e = ClientFrame::parse(&format!(
            r#"{{"type":"edit","room":"{room}","client_msg_id":"e1","body":"x"}}"#
        ))
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::BadFrame);
        assert_eq!(e.reference.as_deref(), Some("e1"));
        let f = ClientFrame::parse(&format!(r#"{{"type":"subscribe","room":"{room}"}}"#)).unwrap();
        assert_eq!(f, ClientFrame::Subscribe { room, since: None });
        let f = ClientFrame::parse(&format!(
            r#"{{"type":"subscribe","room":"{room}","since":null}}"#
        ))
        .unwrap();
        assert_eq!(f, ClientFrame::Subscribe { room, since: None });
        assert_eq!(
            ClientFrame::parse(r#"{"type":"ping"}"#).unwrap(),
            ClientFrame::Ping
        );
    }

    #[test]
    fn malformed_frames_are_values() {
        let e = ClientFrame::parse("nope").unwrap_err();
        assert_eq!(e.code, ErrorCode::BadFrame);
        let e = ClientFrame::parse(r#"{"type":"dance"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownType);
        assert_eq!(e.reference.as_deref(), Some("dance"));
        let e = ClientFrame::parse(r#"{"type":"send","room":"x","client_msg_id":"m1","body":"b"}"#)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::BadFrame);
        assert_eq!(e.reference.as_deref(), Some("m1"));
        let e = ClientFrame::parse("[1,2]").unwrap_err();
        assert_eq!(e.code, ErrorCode::BadFrame);
    }

    #[test]
    fn error_frame_shape() {
        let t = ServerFrame::Error {
            code: ErrorCode::RateLimited,
            message: "slow down",
            retryable: ErrorCode::RateLimited.retryable(),
            reference: Some("c1"),
        }
        .to_text();
        assert_eq!(
            t,
            r#"{"type":"error","code":"rate_limited","message":"slow down","retryable":true,"ref":"c1"}"#
        );
        assert_eq!(ServerFrame::Pong.to_text(), r#"{"type":"pong"}"#);
    }

    #[test]
    fn events_have_their_own_frames() {
        let room = Uuid::from_u128(1);
        let target = Uuid::from_u128(2);
        let actor = User {
            id: Uuid::from_u128(3),
            name: "ann".into(),
        };
        let new = crate::model::NewMessage {
            id: Uuid::from_u128(4),
            room,
            sender: actor,
            body: String::new(),
            client_msg_id: "r1".into(),
            sent_at: "2026-12-06T10:00:00Z".parse().unwrap(),
            reply_to: None,
            mentions: Vec::new(),
            change: Some(Change::Reaction {
                message_id: target,
                emoji: "👍".into(),
                on: true,
            }),
        };
        let rec = new.at(7);
        let v: serde_json::Value = serde_json::from_str(&record_frame(&rec).to_text()).unwrap();
        assert_eq!(v["type"], "event");
        assert_eq!(v["event"]["kind"], "reaction");
        assert_eq!(v["event"]["message_id"], target.to_string());
        assert_eq!(v["event"]["emoji"], "👍");
        assert_eq!(v["event"]["on"], true);
        assert_eq!(v["event"]["position"], 7);
        assert_eq!(v["event"]["actor"]["name"], "ann");
        assert!(v["event"].get("body").is_none());
        let v: serde_json::Value = serde_json::from_str(&ack_frame("r1", &rec).to_text()).unwrap();
        assert_eq!(v["type"], "ack");
        assert_eq!(v["event"]["id"], rec.id.to_string());
        // A plain message keeps the v1 shape: no new fields unless they apply.
        let mut m = rec.clone();
        m.change = None;
        m.body = "hi".into();
        let v: serde_json::Value = serde_json::from_str(&record_frame(&m).to_text()).unwrap();
        assert_eq!(v["type"], "message");
        let keys: Vec<_> = v["message"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            keys,
            [
                "body",
                "client_msg_id",
                "id",
                "position",
                "room",
                "sender",
                "sent_at"
            ]
        );
    }
}
