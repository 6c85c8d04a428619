//! The rules of room events (edit, delete, reaction, reply, mentions): pure functions, no
//! I/O. The gateway checks an event against the store's state of its target before it
//! writes anything to the log (so a refused event writes nothing), and the store checks it
//! again where it applies it (the persist worker's transaction; SQLite's append), against
//! the state the log's order gives: two events in flight at once (an edit and a delete of
//! one message) both pass the gateway, and the later one in the log is dropped where it
//! is applied. Both use [`check`], with the event's own `sent_at` as "now", so a replay
//! decides the same way.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::model::{Change, MessageId, RoomId, UserId};
use crate::protocol::ErrorCode;

/// What a client may do to messages: the limits of this module, from settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// How long after sending its author may edit a message (None: always).
    pub edit_window: Option<Duration>,
    /// Edits of one message, at most.
    pub max_edits: i64,
    /// Different emoji on one message, at most.
    pub max_emoji_per_message: i64,
    /// Reactions of one user on one message, at most.
    pub max_reactions_per_user: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            edit_window: None,
            max_edits: 50,
            max_emoji_per_message: 20,
            max_reactions_per_user: 10,
        }
    }
}

/// Mentions one message carries, at most (parsed `@name`s and explicit ones together).
pub const MAX_MENTIONS: usize = 20;
/// An emoji is at most this many bytes (ZWJ sequences and skin tones included).
pub const MAX_EMOJI_BYTES: usize = 32;

/// What the store knows of the message an event targets (for `emoji`, of the one emoji a
/// reaction adds or removes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub room: RoomId,
    pub author: UserId,
    pub sent_at: DateTime<Utc>,
    pub deleted: bool,
    pub edit_count: i64,
    /// The thread it replies to.
    pub reply_to: Option<MessageId>,
    /// Different emoji on the message now.
    pub emoji_count: i64,
    /// Whether the message carries the reaction's emoji already (from anyone).
    pub has_emoji: bool,
    /// The actor's reactions on the message now.
    pub my_reactions: i64,
    /// Whether the actor has reacted with this emoji already.
    pub mine: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// Unknown, not a message (an event record), or a message of another room.
    #[error("no such message in this room")]
    NotFound,
    #[error("the message was deleted")]
    Deleted,
    #[error("only its author may {0} a message")]
    NotAuthor(&'static str),
    #[error("messages can be edited for {0} s after sending")]
    EditWindowClosed(u64),
    #[error("a message can be edited at most {0} times")]
    TooManyEdits(i64),
    #[error("{0}")]
    TooManyReactions(String),
    #[error("an emoji is 1 to {MAX_EMOJI_BYTES} bytes, without spaces or control characters")]
    InvalidEmoji,
}

impl RuleError {
    pub fn code(&self) -> ErrorCode {
        match self {
            RuleError::NotFound => ErrorCode::MessageNotFound,
            RuleError::Deleted => ErrorCode::MessageDeleted,
            RuleError::NotAuthor(_) => ErrorCode::Forbidden,
            RuleError::EditWindowClosed(_) => ErrorCode::EditWindowClosed,
            RuleError::TooManyEdits(_) => ErrorCode::TooManyEdits,
            RuleError::TooManyReactions(_) => ErrorCode::TooManyReactions,
            RuleError::InvalidEmoji => ErrorCode::InvalidEmoji,
        }
    }
}

/// Whether `actor` may apply `change` in `room` at `at`, given its target's state (None:
/// the store has no such message). Removing a reaction one does not have, or adding one
/// one has, is allowed (a no-op where applied: reactions are a set).
pub fn check(
    change: &Change,
    actor: UserId,
    room: RoomId,
    at: DateTime<Utc>,
    target: Option<&Target>,
    limits: &Limits,
) -> Result<(), RuleError> {
    check_as(change, actor, false, room, at, target, limits)
}

/// [`check`] for an actor who may (`moderator`) or may not delete others' messages
/// ([`crate::governance::Action::DeleteOthers`]). Governance events (`member`, `room`)
/// are decided by the permission table, not here: they pass.
pub fn check_as(
    change: &Change,
    actor: UserId,
    moderator: bool,
    room: RoomId,
    at: DateTime<Utc>,
    target: Option<&Target>,
    limits: &Limits,
) -> Result<(), RuleError> {
    if change.is_governance() {
        return Ok(());
    }
    let t = target
        .filter(|t| t.room == room)
        .ok_or(RuleError::NotFound)?;
    if t.deleted {
        return Err(RuleError::Deleted);
    }
    match change {
        Change::Edit { .. } => {
            if t.author != actor {
                return Err(RuleError::NotAuthor("edit"));
            }
            if let Some(w) = limits.edit_window {
                let age = at.signed_duration_since(t.sent_at);
                if age.to_std().is_ok_and(|a| a > w) {
                    return Err(RuleError::EditWindowClosed(w.as_secs()));
                }
            }
            if t.edit_count >= limits.max_edits {
                return Err(RuleError::TooManyEdits(limits.max_edits));
            }
        }
        Change::Delete { .. } => {
            if t.author != actor && !moderator {
                return Err(RuleError::NotAuthor("delete"));
            }
        }
        Change::Reaction { emoji, on, .. } => {
            check_emoji(emoji)?;
            if *on && !t.mine {
                if !t.has_emoji && t.emoji_count >= limits.max_emoji_per_message {
                    return Err(RuleError::TooManyReactions(format!(
                        "a message carries at most {} different emoji",
                        limits.max_emoji_per_message
                    )));
                }
                if t.my_reactions >= limits.max_reactions_per_user {
                    return Err(RuleError::TooManyReactions(format!(
                        "one person adds at most {} reactions to a message",
                        limits.max_reactions_per_user
                    )));
                }
            }
        }
        Change::Member { .. } | Change::Room { .. } => {}
    }
    Ok(())
}

/// A reply's parent: a message of the same room, not deleted.
pub fn check_parent(room: RoomId, parent: Option<&Target>) -> Result<(), RuleError> {
    let t = parent
        .filter(|t| t.room == room)
        .ok_or(RuleError::NotFound)?;
    if t.deleted {
        return Err(RuleError::Deleted);
    }
    Ok(())
}

/// An emoji: 1 to [`MAX_EMOJI_BYTES`] bytes, no white space, no control, bidirectional or
/// other invisible character ([`crate::model::is_invisible`]) except the zero-width joiner
/// and the presentation selectors that emoji sequences are made of. It is only ever shown
/// as text, so this bounds it rather than judging what counts as emoji.
pub fn check_emoji(emoji: &str) -> Result<(), RuleError> {
    let allowed = |c: char| matches!(c, '\u{200D}' | '\u{FE0E}' | '\u{FE0F}');
    let ok = !emoji.is_empty()
        && emoji.len() <= MAX_EMOJI_BYTES
        && !emoji.starts_with(allowed)
        && !emoji
            .chars()
            .any(|c| c.is_whitespace() || (crate::model::is_invisible(c) && !allowed(c)));
    if ok {
        Ok(())
    } else {
        Err(RuleError::InvalidEmoji)
    }
}

/// The names mentioned as `@name` in a body: a name is what a username may hold
/// (`[A-Za-z0-9._-]`, 3 to 32) right after an `@` that starts the text or follows a
/// character that is not part of a name (so `a@b.c` mentions nobody). Each once, in order,
/// at most [`MAX_MENTIONS`]; a trailing `.` is punctuation, not part of the name.
pub fn mentioned_names(body: &str) -> Vec<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let mut out: Vec<String> = Vec::new();
    let mut prev: Option<char> = None;
    for (i, c) in body.char_indices() {
        if c == '@' && !prev.is_some_and(is_name) {
            let rest = &body[i + 1..];
            let len = rest.find(|c: char| !is_name(c)).unwrap_or(rest.len());
            let name = rest[..len].trim_end_matches('.');
            let n = name.chars().count();
            if (3..=32).contains(&n) && !out.iter().any(|o| o.eq_ignore_ascii_case(name)) {
                out.push(name.to_owned());
                if out.len() == MAX_MENTIONS {
                    break;
                }
            }
        }
        prev = Some(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn target(author: UserId, room: RoomId) -> Target {
        Target {
            room,
            author,
            sent_at: Utc::now(),
            deleted: false,
            edit_count: 0,
            reply_to: None,
            emoji_count: 0,
            has_emoji: false,
            my_reactions: 0,
            mine: false,
        }
    }

    #[test]
    fn edits_and_deletes_are_the_authors() {
        let (ann, bob, room) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let t = target(ann, room);
        let l = Limits::default();
        let edit = Change::Edit {
            message_id: Uuid::new_v4(),
        };
        let del = Change::Delete {
            message_id: Uuid::new_v4(),
        };
        let now = Utc::now();
        assert_eq!(check(&edit, ann, room, now, Some(&t), &l), Ok(()));
        assert_eq!(check(&del, ann, room, now, Some(&t), &l), Ok(()));
        assert_eq!(
            check(&edit, bob, room, now, Some(&t), &l),
            Err(RuleError::NotAuthor("edit"))
        );
        assert_eq!(
            check(&del, bob, room, now, Some(&t), &l)
                .unwrap_err()
                .code(),
            ErrorCode::Forbidden
        );
        // Another room's message is no message of this one; unknown is unknown.
        let other = Uuid::new_v4();
        assert_eq!(
            check(&edit, ann, other, now, Some(&t), &l),
            Err(RuleError::NotFound)
        );
        assert_eq!(
            check(&edit, ann, room, now, None, &l),
            Err(RuleError::NotFound)
        );
        let gone = Target {
            deleted: true,
            ..t.clone()
        };
        assert_eq!(
            check(&edit, ann, room, now, Some(&gone), &l),
            Err(RuleError::Deleted)
        );
        assert_eq!(
            check(&del, ann, room, now, Some(&gone), &l),
            Err(RuleError::Deleted)
        );
    }

    #[test]
    fn edit_window_and_cap() {
        let (ann, room) = (Uuid::new_v4(), Uuid::new_v4());
        let t = target(ann, room);
        let edit = Change::Edit {
            message_id: Uuid::new_v4(),
        };
        let l = Limits {
            edit_window: Some(Duration::from_secs(60)),
            max_edits: 2,
            ..Limits::default()
        };
        let later = t.sent_at + chrono::Duration::seconds(61);
        assert_eq!(
            check(&edit, ann, room, later, Some(&t), &l),
            Err(RuleError::EditWindowClosed(60))
        );
        let soon = t.sent_at + chrono::Duration::seconds(59);
        assert_eq!(check(&edit, ann, room, soon, Some(&t), &l), Ok(()));
        let twice = Target {
            edit_count: 2,
            ..t.clone()
        };
        assert_eq!(
            check(&edit, ann, room, soon, Some(&twice), &l),
            Err(RuleError::TooManyEdits(2))
        );
    }

    #[test]
    fn reactions_are_capped_per_message_and_per_user() {
        let (ann, bob, room) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let l = Limits {
            max_emoji_per_message: 2,
            max_reactions_per_user: 1,
            ..Limits::default()
        };
        let react = |emoji: &str, on| Change::Reaction {
            message_id: Uuid::new_v4(),
            emoji: emoji.into(),
            on,
        };
        let now = Utc::now();
        let full = Target {
            emoji_count: 2,
            ..target(ann, room)
        };
        // A third emoji: refused; one already there: fine; taking one off: fine.
        let e = check(&react("🎉", true), bob, room, now, Some(&full), &l).unwrap_err();
        assert_eq!(e.code(), ErrorCode::TooManyReactions);
        let there = Target {
            has_emoji: true,
            ..full.clone()
        };
        assert_eq!(
            check(&react("👍", true), bob, room, now, Some(&there), &l),
            Ok(())
        );
        assert_eq!(
            check(&react("🎉", false), bob, room, now, Some(&full), &l),
            Ok(())
        );
        let mine = Target {
            my_reactions: 1,
            has_emoji: true,
            ..target(ann, room)
        };
        assert!(check(&react("👍", true), bob, room, now, Some(&mine), &l).is_err());
        // Adding again what one has is no new reaction.
        let again = Target {
            mine: true,
            ..mine.clone()
        };
        assert_eq!(
            check(&react("👍", true), bob, room, now, Some(&again), &l),
            Ok(())
        );
        assert_eq!(
            check(&react("", true), bob, room, now, Some(&again), &l),
            Err(RuleError::InvalidEmoji)
        );
    }

    #[test]
    fn emoji_are_bounded_text() {
        assert!(check_emoji("👍").is_ok());
        assert!(check_emoji("👩‍👩‍👧‍👦").is_ok()); // a ZWJ sequence, 25 bytes
        assert!(check_emoji("👍🏽").is_ok());
        assert!(check_emoji(":+1:").is_ok());
        assert!(check_emoji("").is_err());
        assert!(check_emoji("a b").is_err());
        assert!(check_emoji("\u{7}").is_err());
        assert!(check_emoji(&"👍".repeat(9)).is_err()); // 36 bytes
        assert!(check_emoji("❤\u{FE0F}").is_ok());
        for bad in [
            "\u{202E}x",
            "a\u{200B}",
            "\u{FEFF}",
            "\u{200D}",
            "\u{E0041}",
        ] {
            assert!(check_emoji(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mentions_are_parsed_from_the_body() {
        assert_eq!(
            mentioned_names("hi @ann and @bob_2, see @ann."),
            vec!["ann", "bob_2"]
        );
        assert!(mentioned_names("mail me at x@example.com").is_empty());
        assert!(mentioned_names("@a @ab").is_empty()); // too short for a username
        assert_eq!(mentioned_names("(@carol)"), vec!["carol"]);
        assert_eq!(mentioned_names("@Ann @ann"), vec!["Ann"]);
        let many: String = (0..50).map(|i| format!("@user{i:02} ")).collect();
        assert_eq!(mentioned_names(&many).len(), MAX_MENTIONS);
        assert!(mentioned_names("@@@@").is_empty());
        assert_eq!(mentioned_names("é@dave"), vec!["dave"]);
    }
}
