//! The `mixed` scenario's client side (issue 18): besides messages, each sender reacts to,
//! edits and replies to recent messages of its room, and every kind is measured on its own.
//!
//! - Of every 20 sends of a connection, 16 are messages, 2 reactions, 1 an edit and 1 a
//!   reply ([`kind_of`]: 80/10/5/5 %, spread so the senders of a room do not all react at
//!   once).
//! - A reaction (`react`, `on: true`) goes to the newest message of the room this connection
//!   has seen delivered and not yet reacted to; a reply (`send` with `reply_to`) to the newest
//!   message seen; an edit to the newest of the connection's own acked messages (each
//!   edited once). With nothing to point at yet (the first sends), the send is a message.
//! - The client_msg_id carries the kind and the scheduled time
//!   (`<run>-<conn>-<seq>-<letter><µs>`): an event (edit, reaction) has no bench body,
//!   but its `ack` and its `event` frames carry the client_msg_id, as message frames do.
//! - Memory stays bounded: a few ids per ring ([`RECENT`]), UUIDs as 16 bytes, and the
//!   last [`POSITIONS`] positions seen (to tell a duplicate from a late frame).

use std::collections::VecDeque;
use std::fmt::Write as _;

use uuid::Uuid;

/// Ids kept per ring (messages seen in the room; the connection's own acked messages).
pub const RECENT: usize = 16;
/// Positions kept per connection to recognise a frame delivered twice.
pub const POSITIONS: usize = 64;

/// The emoji reactions cycle through (each 1..=32 bytes, no whitespace).
pub const EMOJI: [&str; 10] = ["👍", "❤️", "😂", "🎉", "👀", "🚀", "🙏", "🔥", "✅", "🤔"];

/// What a send of the mixed scenario is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendKind {
    Message,
    Reaction,
    Edit,
    Reply,
}

impl SendKind {
    pub const ALL: [SendKind; 4] = [
        SendKind::Message,
        SendKind::Reaction,
        SendKind::Edit,
        SendKind::Reply,
    ];

    /// Index into per-kind tables (the order of [`SendKind::ALL`]).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The name in reports (plural, as the counts read).
    pub fn name(self) -> &'static str {
        match self {
            SendKind::Message => "messages",
            SendKind::Reaction => "reactions",
            SendKind::Edit => "edits",
            SendKind::Reply => "replies",
        }
    }

    fn letter(self) -> char {
        match self {
            SendKind::Message => 'm',
            SendKind::Reaction => 'r',
            SendKind::Edit => 'e',
            SendKind::Reply => 'p',
        }
    }

    fn from_letter(c: char) -> Option<SendKind> {
        SendKind::ALL.into_iter().find(|k| k.letter() == c)
    }
}

/// The kind send `seq` of connection `conn` would be: in every 20 consecutive sends, 16
/// messages, 2 reactions, 1 edit, 1 reply; the pattern is shifted by the connection so that
/// a room's senders do not all react (or edit) at the same moment.
pub fn kind_of(conn: usize, seq: u64) -> SendKind {
    match (seq + conn as u64) % 20 {
        4 | 14 => SendKind::Reaction,
        9 => SendKind::Edit,
        19 => SendKind::Reply,
        _ => SendKind::Message,
    }
}

/// `<run>-<conn>-<seq>-<kind letter><scheduled µs>`.
pub fn client_msg_id(run: &str, conn: usize, seq: u64, kind: SendKind, at_us: u64) -> String {
    format!("{run}-{conn}-{seq}-{}{at_us}", kind.letter())
}

/// The kind and scheduled time of one of this run's mixed client_msg_ids; None for any
/// other (another run's, a chatty one, garbage).
pub fn parse_client_msg_id(run: &str, id: &str) -> Option<(SendKind, u64)> {
    let rest = id.strip_prefix(run)?.strip_prefix('-')?;
    let last = rest.rsplit('-').next()?;
    let mut chars = last.chars();
    let kind = SendKind::from_letter(chars.next()?)?;
    let at_us = chars.as_str().parse().ok()?;
    Some((kind, at_us))
}

/// The last [`RECENT`] ids pushed, newest last.
#[derive(Debug, Default)]
pub struct RecentIds {
    ids: VecDeque<Uuid>,
}

impl RecentIds {
    /// Remembers `id` (a UUID string; anything else is ignored), forgetting the oldest.
    pub fn push(&mut self, id: &str) {
        let Ok(id) = Uuid::parse_str(id) else { return };
        if self.ids.len() == RECENT {
            self.ids.pop_front();
        }
        self.ids.push_back(id);
    }

    pub fn newest(&self) -> Option<Uuid> {
        self.ids.back().copied()
    }

    /// The newest id, forgotten (so it is used once).
    pub fn take_newest(&mut self) -> Option<Uuid> {
        self.ids.pop_back()
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// How a delivered frame's position relates to what the connection saw before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Above every position seen: the normal case.
    InOrder,
    /// Below the last one and not seen recently: a new frame, late.
    OutOfOrder,
    /// A position seen recently: the same message or event again.
    Duplicate,
}

/// The positions of the room's frames one connection saw (they share one sequence:
/// messages and events alike).
#[derive(Debug, Default)]
pub struct Positions {
    last: Option<i64>,
    recent: VecDeque<i64>,
}

impl Positions {
    pub fn arrive(&mut self, p: i64) -> Arrival {
        let seen = match self.last {
            Some(last) if p <= last => {
                if self.recent.contains(&p) {
                    return Arrival::Duplicate;
                }
                Arrival::OutOfOrder
            }
            _ => {
                self.last = Some(p);
                Arrival::InOrder
            }
        };
        if self.recent.len() == POSITIONS {
            self.recent.pop_front();
        }
        self.recent.push_back(p);
        seen
    }
}

/// One connection's state in the mixed scenario.
#[derive(Debug, Default)]
pub struct Mixed {
    /// Which emoji this connection reacts with: distinct for the connections that share a
    /// user and a room ([`super::scenario::Spec::same_member_slot`]), so that no (user,
    /// message, emoji) is sent twice (a connection reacts to a message once).
    pub emoji: &'static str,
    /// Messages of the room seen delivered, not yet reacted to by this connection.
    pub to_react: RecentIds,
    /// Messages of the room seen delivered (reply targets).
    pub seen: RecentIds,
    /// This connection's own acked messages, not yet edited.
    pub own: RecentIds,
    pub positions: Positions,
}

/// JSON string contents for ids and bench bodies: they hold no quote, backslash or
/// control character (UUIDs, digits, ASCII letters), so they are written as they are.
fn plain(s: &str) -> bool {
    !s.chars().any(|c| c == '"' || c == '\\' || c.is_control())
}

impl Mixed {
    pub fn new(same_member_slot: usize) -> Mixed {
        Mixed {
            emoji: EMOJI[same_member_slot % EMOJI.len()],
            ..Mixed::default()
        }
    }

    /// Send `seq`'s kind and frame; `body` is the bench body (edits and messages carry it).
    /// The kind is [`kind_of`], or a message when there is nothing to point at yet.
    pub fn frame(
        &mut self,
        run: &str,
        conn: usize,
        seq: u64,
        at_us: u64,
        room: &str,
        body: &str,
    ) -> (SendKind, String) {
        debug_assert!(plain(run) && plain(room) && plain(body));
        let wanted = kind_of(conn, seq);
        let target = match wanted {
            SendKind::Message => None,
            SendKind::Reaction => self.to_react.take_newest(),
            SendKind::Edit => self.own.take_newest(),
            SendKind::Reply => self.seen.newest(),
        };
        let kind = if target.is_some() {
            wanted
        } else {
            SendKind::Message
        };
        let cmid = client_msg_id(run, conn, seq, kind, at_us);
        let mut f = String::with_capacity(160 + body.len());
        match (kind, target) {
            (SendKind::Reaction, Some(m)) => {
                let emoji = self.emoji;
                let _ = write!(
                    f,
                    r#"{{"type":"react","room":"{room}","message_id":"{m}","client_msg_id":"{cmid}","emoji":"{emoji}","on":true}}"#
                );
            }
            (SendKind::Edit, Some(m)) => {
                let _ = write!(
                    f,
                    r#"{{"type":"edit","room":"{room}","message_id":"{m}","client_msg_id":"{cmid}","body":"{body}"}}"#
                );
            }
            (SendKind::Reply, Some(m)) => {
                let _ = write!(
                    f,
                    r#"{{"type":"send","room":"{room}","client_msg_id":"{cmid}","body":"{body}","reply_to":"{m}"}}"#
                );
            }
            _ => {
                let _ = write!(
                    f,
                    r#"{{"type":"send","room":"{room}","client_msg_id":"{cmid}","body":"{body}"}}"#
                );
            }
        }
        (kind, f)
    }

    /// A message of the room was delivered to this connection.
    pub fn message_seen(&mut self, id: &str) {
        self.to_react.push(id);
        self.seen.push(id);
    }

    /// One of this connection's own messages (or replies) was acked.
    pub fn own_acked(&mut self, id: &str) {
        self.own.push(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const ROOM: &str = "0190b3d2-0000-7000-8000-000000000001";

    fn id(n: u32) -> String {
        format!("0190b3d2-0000-7000-8000-{n:012}")
    }

    #[test]
    fn the_mix_is_80_10_5_5_in_every_20_sends() {
        for conn in [0, 1, 7, 1999] {
            let mut n = [0usize; 4];
            for seq in 100..120 {
                n[kind_of(conn, seq).index()] += 1;
            }
            assert_eq!(n, [16, 2, 1, 1], "conn {conn}");
        }
        // Neighbouring connections do not react at the same sequence number.
        assert_ne!(kind_of(0, 4), kind_of(1, 4));
    }

    #[test]
    fn client_msg_ids_carry_kind_and_time() {
        for k in SendKind::ALL {
            let c = client_msg_id("ab12cd34", 17, 42, k, 9_876_543);
            assert_eq!(parse_client_msg_id("ab12cd34", &c), Some((k, 9_876_543)));
            assert!(c.len() <= 128);
        }
        // Another run's, a chatty one, garbage.
        let c = client_msg_id("ab12cd34", 1, 2, SendKind::Edit, 3);
        assert_eq!(parse_client_msg_id("ffffffff", &c), None);
        assert_eq!(parse_client_msg_id("ab12cd34", "ab12cd34-1-2"), None);
        assert_eq!(parse_client_msg_id("ab12cd34", "ab12cd34-1-2-x5"), None);
        assert_eq!(parse_client_msg_id("ab12cd34", "ab12cd34-1-2-m"), None);
        assert_eq!(parse_client_msg_id("ab12cd34", ""), None);
    }

    #[test]
    fn rings_are_bounded_and_newest_first() {
        let mut r = RecentIds::default();
        assert!(r.is_empty());
        for n in 0..100 {
            r.push(&id(n));
        }
        r.push("not a uuid");
        assert_eq!(r.len(), RECENT);
        assert_eq!(r.newest().map(|u| u.to_string()), Some(id(99)));
        assert_eq!(r.take_newest().map(|u| u.to_string()), Some(id(99)));
        assert_eq!(r.newest().map(|u| u.to_string()), Some(id(98)));
    }

    #[test]
    fn positions_tell_duplicates_from_late_frames() {
        let mut p = Positions::default();
        assert_eq!(p.arrive(10), Arrival::InOrder);
        assert_eq!(p.arrive(12), Arrival::InOrder);
        assert_eq!(p.arrive(12), Arrival::Duplicate);
        assert_eq!(p.arrive(10), Arrival::Duplicate);
        assert_eq!(p.arrive(11), Arrival::OutOfOrder);
        assert_eq!(p.arrive(11), Arrival::Duplicate);
        assert_eq!(p.arrive(13), Arrival::InOrder);
        // Bounded: long forgotten positions count as late, not as duplicates.
        for x in 100..100 + POSITIONS as i64 {
            p.arrive(x);
        }
        assert_eq!(p.recent.len(), POSITIONS);
        assert_eq!(p.arrive(10), Arrival::OutOfOrder);
    }

    #[test]
    fn frames_follow_the_contract_and_fall_back_to_messages() {
        let mut m = Mixed::new(0);
        let body = "bench 3 0 5 xxxx";
        // Nothing seen yet: every kind falls back to a message.
        for seq in 0..20 {
            let (k, f) = m.frame("run", 3, seq, 5, ROOM, body);
            assert_eq!(k, SendKind::Message);
            let v: Value = serde_json::from_str(&f).unwrap();
            assert_eq!(v["type"], "send");
            assert!(v.get("reply_to").is_none());
        }
        m.message_seen(&id(1));
        m.message_seen(&id(2));
        m.own_acked(&id(2));
        let mut got = Vec::new();
        for seq in 20..40 {
            let (k, f) = m.frame("run", 3, seq, 77, ROOM, body);
            let v: Value = serde_json::from_str(&f).unwrap();
            let cmid = v["client_msg_id"].as_str().unwrap();
            assert_eq!(parse_client_msg_id("run", cmid), Some((k, 77)));
            assert_eq!(v["room"], ROOM);
            match k {
                SendKind::Message => assert_eq!(
                    (v["type"].as_str(), v["body"].as_str()),
                    (Some("send"), Some(body))
                ),
                SendKind::Reaction => {
                    assert_eq!(v["type"], "react");
                    assert_eq!(v["on"], true);
                    let e = v["emoji"].as_str().unwrap();
                    assert_eq!(e, EMOJI[0]);
                    assert!(!e.is_empty() && e.len() <= 32 && !e.chars().any(char::is_whitespace));
                }
                SendKind::Edit => {
                    assert_eq!(v["type"], "edit");
                    assert_eq!(v["message_id"], id(2).as_str());
                    assert_eq!(v["body"], body);
                }
                SendKind::Reply => {
                    assert_eq!(v["type"], "send");
                    assert_eq!(v["reply_to"], id(2).as_str());
                }
            }
            if k == SendKind::Reaction {
                got.push(v["message_id"].as_str().unwrap().to_owned());
            }
            if k != SendKind::Message {
                got.push(format!("{k:?}"));
            }
        }
        // Two reactions, to the newest message first, each message once; one edit of the
        // own message (once), one reply.
        assert_eq!(
            got,
            vec![
                id(2),
                "Reaction".into(),
                "Edit".into(),
                id(1),
                "Reaction".into(),
                "Reply".into()
            ]
        );
        // Once used up, reactions and edits fall back to messages again.
        let kinds: Vec<SendKind> = (40..60)
            .map(|s| m.frame("run", 3, s, 1, ROOM, body).0)
            .collect();
        assert!(!kinds.contains(&SendKind::Reaction) && !kinds.contains(&SendKind::Edit));
        assert!(kinds.contains(&SendKind::Reply));
    }
}
