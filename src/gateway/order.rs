//! Per-room delivery order of one connection: what the writer writes, and when, given what
//! it takes from the connection's queue. A pure state machine (no I/O, no clock), so the
//! recovery seam is tested by tables below rather than only end to end.
//!
//! - A room is unknown (nothing of it is written), recovering, or live.
//! - `begin`: the room recovers (a second `subscribe` of a room starts over). Its live
//!   messages are held back from then on.
//! - `backlog`: a page of the messages missed, ascending; written if above everything
//!   written for the room and above the subscribe's `since`. The last page carries
//!   `subscribed`: written after the page, then the held live messages above the backlog,
//!   in position order, and the room is live.
//! - `live`, for a live room: written if above the last position written, else dropped (a
//!   record relayed twice, or overlapping the backlog). Positions need not be dense.
//! - `end`: the room is unknown again (unsubscribed, access revoked, a resync).

use std::collections::HashMap;

use bytestring::ByteString;

use crate::model::{Position, RoomId};

enum Room {
    Recovering {
        /// The newest position written from the backlog (or the subscribe's `since`).
        last: Option<Position>,
        /// Live messages held back meanwhile, and their bytes.
        held: Vec<(Position, ByteString)>,
        held_bytes: usize,
    },
    Live(Option<Position>),
}

/// What to do with a live message.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    Write,
    /// Held back (its room recovers): this many bytes more are held.
    Held(usize),
    Dropped,
}

#[derive(Default)]
pub struct Order {
    rooms: HashMap<RoomId, Room>,
}

impl Order {
    /// The room starts recovering; returns the bytes a recovery it replaces held.
    pub fn begin(&mut self, room: RoomId) -> usize {
        let before = self.rooms.insert(
            room,
            Room::Recovering {
                last: None,
                held: Vec::new(),
                held_bytes: 0,
            },
        );
        released(before)
    }

    /// A live message of the room.
    pub fn live(&mut self, room: RoomId, position: Position, text: &ByteString) -> Delivery {
        match self.rooms.get_mut(&room) {
            Some(Room::Recovering {
                held, held_bytes, ..
            }) => {
                *held_bytes += text.len();
                held.push((position, text.clone()));
                Delivery::Held(text.len())
            }
            Some(Room::Live(last)) if last.is_none_or(|l| position > l) => {
                *last = Some(position);
                Delivery::Write
            }
            _ => Delivery::Dropped,
        }
    }

    /// A page of the room's backlog (ascending), above `after`; the last one carries
    /// `subscribed`. Returns what to write, in order, and the bytes no longer held.
    pub fn backlog(
        &mut self,
        room: RoomId,
        after: Option<Position>,
        messages: Vec<(Position, ByteString)>,
        subscribed: Option<ByteString>,
    ) -> (Vec<ByteString>, usize) {
        // A page of a room no longer recovering (unsubscribed, access revoked) is dropped.
        let Some(Room::Recovering { last, .. }) = self.rooms.get_mut(&room) else {
            return (Vec::new(), 0);
        };
        if last.is_none() {
            *last = after;
        }
        let mut texts = Vec::with_capacity(messages.len() + 1);
        for (p, t) in messages {
            if last.is_none_or(|l| p > l) {
                *last = Some(p);
                texts.push(t);
            }
        }
        let Some(subscribed) = subscribed else {
            return (texts, 0);
        };
        texts.push(subscribed);
        let Some(Room::Recovering {
            mut last,
            mut held,
            held_bytes,
        }) = self.rooms.remove(&room)
        else {
            return (texts, 0);
        };
        held.sort_by_key(|(p, _)| *p);
        for (p, t) in held {
            if last.is_none_or(|l| p > l) {
                last = Some(p);
                texts.push(t);
            }
        }
        self.rooms.insert(room, Room::Live(last));
        (texts, held_bytes)
    }

    /// The room is unknown again; returns the bytes its recovery held.
    pub fn end(&mut self, room: RoomId) -> usize {
        released(self.rooms.remove(&room))
    }
}

fn released(room: Option<Room>) -> usize {
    match room {
        Some(Room::Recovering { held_bytes, .. }) => held_bytes,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[derive(Clone)]
    enum Op {
        Begin,
        Live(Position),
        Page(Option<Position>, &'static [Position], bool),
        End,
    }
    use Op::*;

    fn text(p: Position) -> ByteString {
        ByteString::from(format!("m{p}"))
    }

    /// Runs the ops on one room; returns what was written and the bytes still held.
    fn run(ops: &[Op]) -> (Vec<String>, usize) {
        let room = Uuid::nil();
        let mut order = Order::default();
        let mut written = Vec::new();
        let mut held = 0usize;
        for op in ops {
            match op.clone() {
                Begin => held -= order.begin(room),
                Live(p) => match order.live(room, p, &text(p)) {
                    Delivery::Write => written.push(text(p).to_string()),
                    Delivery::Held(n) => held += n,
                    Delivery::Dropped => {}
                },
                Page(after, ps, last) => {
                    let page = ps.iter().map(|&p| (p, text(p))).collect();
                    let sub = last.then(|| ByteString::from_static("sub"));
                    let (texts, freed) = order.backlog(room, after, page, sub);
                    written.extend(texts.iter().map(|t| t.to_string()));
                    held -= freed;
                }
                End => held -= order.end(room),
            }
        }
        (written, held)
    }

    #[test]
    fn the_recovery_seam() {
        let cases: &[(&str, &[Op], &[&str])] = &[
            ("nothing before a subscribe", &[Live(1)], &[]),
            (
                "live held until the backlog is through",
                &[Begin, Live(5), Page(Some(2), &[3, 4], true)],
                &["m3", "m4", "sub", "m5"],
            ),
            (
                "live overtaking the backlog is not written twice",
                &[Begin, Live(4), Live(5), Page(Some(2), &[3, 4, 5], true)],
                &["m3", "m4", "m5", "sub"],
            ),
            (
                "pages: each above the one before",
                &[
                    Begin,
                    Page(Some(0), &[1, 2], false),
                    Page(Some(0), &[2, 3], false),
                    Page(Some(0), &[], true),
                ],
                &["m1", "m2", "m3", "sub"],
            ),
            (
                "duplicates and gaps when live",
                &[
                    Begin,
                    Page(None, &[], true),
                    Live(6),
                    Live(6),
                    Live(5),
                    Live(9),
                ],
                &["sub", "m6", "m9"],
            ),
            (
                "held messages at or below since are dropped",
                &[Begin, Live(1), Live(2), Live(3), Page(Some(2), &[], true)],
                &["sub", "m3"],
            ),
            (
                "held messages are merged in position order",
                &[Begin, Live(7), Live(6), Page(Some(2), &[], true)],
                &["sub", "m6", "m7"],
            ),
            (
                "a resync in the middle: the old recovery's pages are dropped",
                &[
                    Begin,
                    Page(Some(0), &[1], false),
                    End,
                    Page(Some(0), &[2], true),
                    Live(3),
                    Begin,
                    Page(Some(1), &[2, 3], true),
                    Live(3),
                    Live(4),
                ],
                &["m1", "m2", "m3", "sub", "m4"],
            ),
            (
                "a second subscribe replays from its since",
                &[
                    Begin,
                    Page(None, &[], true),
                    Live(5),
                    Live(6),
                    Begin,
                    Live(7),
                    Page(Some(4), &[5, 6], true),
                    Live(7),
                    Live(8),
                ],
                &["sub", "m5", "m6", "m5", "m6", "sub", "m7", "m8"],
            ),
        ];
        for (case, ops, want) in cases {
            let (written, held) = run(ops);
            assert_eq!(written, *want, "{case}");
            assert_eq!(held, 0, "{case}: bytes still counted as held");
        }
    }

    #[test]
    fn held_bytes_are_given_back_however_the_recovery_ends() {
        // Still recovering: what is held stays counted until the room ends or restarts.
        let (_, held) = run(&[Begin, Live(1), Live(2)]);
        assert_eq!(held, 4);
        assert_eq!(run(&[Begin, Live(1), Live(2), End]).1, 0);
        assert_eq!(run(&[Begin, Live(1), Begin]).1, 0);
    }
}
