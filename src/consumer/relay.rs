//! Relay: tails a partition and publishes each message on its room's bus channel, in
//! offset order, dropping a message id it has relayed already (rskafka can write a
//! retried produce twice). Its position is kept in the `Coord` seam
//! ([`Positions`](crate::coord::Positions)), saved under the partition's lease, so the
//! next relay of the partition continues where this one stopped (without one it replays
//! the recent tail); readers drop what they have seen by position.
//!
//! The position is saved at most every [`SAVE_EVERY`] while records flow, when the
//! partition goes quiet, and when the relay stops (a lease handed over, a drain): not
//! once per fetched batch, which cost one Redis round trip per message at a few thousand
//! sends per second, in series before the next fetch. A relay that dies takes up to
//! `SAVE_EVERY` of published records with it; its successor publishes them again and
//! readers drop them by position (gateway/hub.rs, gateway/order.rs), as after any
//! takeover.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{Backoff, Consumer};
use crate::bus::BusEvent;
use crate::coord::Lease;
use crate::log::{LogError, LogReader, Pace};
use crate::model::MessageId;
use crate::telemetry::hops::{self, Hop};
use crate::telemetry::names;

/// Ids remembered for duplicate detection.
const RECENT_IDS: usize = 20_000;
/// A saved position further behind than this restarts at the end: live delivery is for
/// now, and clients recover older messages from the log themselves.
const MAX_REPLAY: i64 = 10_000;

struct Recent {
    order: VecDeque<MessageId>,
    set: HashSet<MessageId>,
}

impl Recent {
    fn insert(&mut self, id: MessageId) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > RECENT_IDS {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

/// A relay's read returns as soon as there is a record, or after this.
const RELAY_WAIT: Duration = Duration::from_millis(500);

/// How often a busy relay saves its position (see the module doc).
const SAVE_EVERY: Duration = Duration::from_millis(100);

/// How far back a relay without a saved position replays (see [`start`]).
const UNKNOWN_REPLAY_AGE: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// Where a relay starts, and the oldest message it publishes. With a saved position (the
/// last relay of the partition stopped there): that position. Without one (a new
/// deployment, Redis lost its data, or the embedded mode's first relay of the process)
/// nobody knows what was relayed, and a message skipped here is one a subscribed reader
/// never gets live; so it replays the recent tail, up to `MAX_REPLAY` records and no older
/// than `UNKNOWN_REPLAY_AGE`. Readers drop what they have by position. A position that
/// cannot be read now counts as unknown.
async fn start(
    c: &Consumer,
    partition: i32,
    reader: &dyn LogReader,
    end: i64,
) -> Result<(i64, Option<chrono::DateTime<chrono::Utc>>), LogError> {
    let saved = match c.coord.position(partition).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(partition, error = %e, "relay: saved position unreadable");
            None
        }
    };
    match saved {
        Some(s) if s <= end && end - s <= MAX_REPLAY => Ok((s, None)),
        _ => {
            let from = reader.earliest().await?.max(end - MAX_REPLAY);
            Ok((from, Some(chrono::Utc::now() - UNKNOWN_REPLAY_AGE)))
        }
    }
}

/// `lease`: the lease this relay works under; its position is saved only while the
/// lease is current, and the relay stops when it is not.
pub async fn run(c: &Consumer, lease: Lease, stop: CancellationToken) {
    let partition = lease.partition;
    let Some(reader) = c.tail(partition, Pace::Live, &stop).await else {
        return;
    };
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    let (mut offset, not_before) = loop {
        let end = match reader.latest().await {
            Ok(end) => end,
            Err(e) => {
                tracing::warn!(partition, error = %e, "relay: no log end offset; retrying");
                if !backoff.sleep(&stop).await {
                    return;
                }
                continue;
            }
        };
        match start(c, partition, reader.as_ref(), end).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(partition, error = %e, "relay: no log start offset; retrying");
                if !backoff.sleep(&stop).await {
                    return;
                }
            }
        }
    };
    tracing::debug!(partition, offset, ?not_before, "relay started");
    let mut recent = Recent {
        order: VecDeque::new(),
        set: HashSet::new(),
    };
    // The last position saved (or found) and when.
    let mut saved = Saved {
        offset,
        at: Instant::now(),
    };
    loop {
        let batch = tokio::select! {
            _ = stop.cancelled() => {
                // Stopped after a batch: what it published is not published again by
                // the next relay of the partition.
                saved.save(c, &lease, offset).await;
                return;
            }
            b = reader.read(offset, RELAY_WAIT) => b,
        };
        let batch = match batch {
            Ok(b) => {
                backoff.reset();
                b
            }
            Err(LogError::OutOfRange { .. }) => {
                offset = reader.earliest().await.unwrap_or(offset);
                continue;
            }
            Err(e) => {
                tracing::warn!(partition, error = %e, "relay: fetch failed; retrying");
                if !backoff.sleep(&stop).await {
                    saved.save(c, &lease, offset).await;
                    return;
                }
                continue;
            }
        };
        let fetched = Instant::now();
        let fetched_us = hops::now_us();
        let (quiet, next_offset) = (batch.records.is_empty(), batch.next_offset);
        let events: Vec<BusEvent> = batch
            .records
            .into_iter()
            .filter_map(|r| r.message)
            .inspect(|m| hops::wall(Hop::LogToRelay, m.sent_at.timestamp_micros(), fetched_us))
            .filter(|m| not_before.is_none_or(|t| m.sent_at >= t))
            .filter(|m| recent.insert(m.id))
            .map(|message| BusEvent::Message {
                message,
                published_us: Some(hops::now_us()),
            })
            .collect();
        // Never skip: retry the same events until the bus takes them.
        while !events.is_empty() {
            match c.bus.publish(&events).await {
                Ok(()) => {
                    hops::record_n(Hop::RelayPublish, fetched.elapsed(), events.len() as u64);
                    metrics::counter!(names::RELAYED).increment(events.len() as u64);
                    backoff.reset();
                    break;
                }
                Err(e) => {
                    tracing::warn!(partition, error = %e, "relay: publish failed; retrying");
                    if !backoff.sleep(&stop).await {
                        // What this batch holds is not published: `offset` is still
                        // before it.
                        saved.save(c, &lease, offset).await;
                        return;
                    }
                }
            }
        }
        offset = next_offset;
        // (`save` does nothing when `offset` is saved already.)
        if quiet || saved.at.elapsed() >= SAVE_EVERY {
            if let Fenced::Yes = saved.save(c, &lease, offset).await {
                tracing::warn!(partition, "relay: lease moved on; stopping");
                return;
            }
        }
    }
}

/// Whether the lease moved on (a save was refused).
enum Fenced {
    Yes,
    No,
}

struct Saved {
    offset: i64,
    at: Instant,
}

impl Saved {
    /// Saves `offset` under `lease` if it is not saved yet. An error leaves it unsaved:
    /// the next attempt comes with the next batch or quiet read.
    async fn save(&mut self, c: &Consumer, lease: &Lease, offset: i64) -> Fenced {
        if offset == self.offset {
            return Fenced::No;
        }
        match c.coord.save(lease, offset).await {
            Ok(true) => {
                *self = Saved {
                    offset,
                    at: Instant::now(),
                };
                Fenced::No
            }
            Ok(false) => Fenced::Yes,
            Err(e) => {
                tracing::debug!(partition = lease.partition, error = %e, "relay: position not saved");
                Fenced::No
            }
        }
    }
}
