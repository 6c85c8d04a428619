//! Wire protocol v1 (docs/protocol.md): the frames a client and a gateway exchange.
//!
//! No I/O and no actix types here: parsing a text frame into a [`ClientFrame`] and
//! serialising a [`ServerFrame`] is all this module does, so it is tested without sockets.

use serde::{Deserialize, Serialize};

use crate::model::{Message, Position, RoomId, User};

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
        const KNOWN: [&str; 7] = [
            "hello",
            "subscribe",
            "unsubscribe",
            "send",
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
    Message {
        message: &'a Message,
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
    Draining,
    Internal,
}

impl ErrorCode {
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::RateLimited
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
                body: "hi".into()
            }
        );
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
}
