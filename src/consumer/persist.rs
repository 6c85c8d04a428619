//! Persist worker: reads a partition from the offset stored in the database and writes
//! each batch together with the partition's next offset in one transaction
//! (`Store::commit_batch`, compare-and-set on the offset). A crash or restart neither
//! loses nor duplicates a row; a database error backs off (capped) and retries the same
//! batch; a fenced commit (another worker moved the offset) re-reads the offset.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Backoff, Consumer};
use crate::log::{LogError, LogReader, Pace};
use crate::model::Message;
use crate::store::{Store, StoreError};
use crate::telemetry::names;

/// A read returns once a batch's worth is there ([`Pace::Batch`]) or after this: the
/// relay keeps live delivery immediate, so persistence can take fewer, larger
/// transactions (at 3,000 messages/s over 8 partitions, ~75 rows per commit instead of
/// one or two), which costs PostgreSQL and Kafka far less per message and keeps rows at
/// most this far behind.
const BATCH_WAIT: Duration = Duration::from_millis(200);

pub async fn run(c: &Consumer, store: &dyn Store, partition: i32, stop: CancellationToken) {
    let topic = c.log.topic();
    let Some(reader) = c.tail(partition, Pace::Batch, &stop).await else {
        return;
    };
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
    'resume: loop {
        // Where to continue: the committed offset, or the log's start.
        let committed = loop {
            match store.next_offset(topic, partition).await {
                Ok(o) => break o,
                Err(e) => {
                    tracing::warn!(partition, error = %e, "persist: offset unreadable; retrying");
                    if !backoff.sleep(&stop).await {
                        return;
                    }
                }
            }
        };
        let mut from = committed;
        let mut offset = match committed {
            Some(o) => o,
            None => match earliest(reader.as_ref(), &stop, &mut backoff).await {
                Some(o) => o,
                None => return,
            },
        };
        backoff.reset();
        loop {
            let batch = tokio::select! {
                _ = stop.cancelled() => return,
                b = reader.read(offset, BATCH_WAIT) => b,
            };
            let batch = match batch {
                Ok(b) => b,
                Err(LogError::OutOfRange { .. }) => {
                    // Retention removed what we had not persisted: say so loudly and go on
                    // from the oldest record that still exists.
                    let Some(e) = earliest(reader.as_ref(), &stop, &mut backoff).await else {
                        return;
                    };
                    tracing::error!(
                        partition,
                        from = offset,
                        to = e,
                        "persist: records expired before they were stored"
                    );
                    offset = e;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(partition, error = %e, "persist: fetch failed; retrying");
                    if !backoff.sleep(&stop).await {
                        return;
                    }
                    continue;
                }
            };
            metrics::gauge!(names::CONSUMER_LAG, "partition" => partition.to_string())
                .set((batch.high_watermark - batch.next_offset).max(0) as f64);
            if batch.next_offset == offset {
                continue;
            }
            let messages: Vec<Message> = batch
                .records
                .into_iter()
                .filter_map(|r| r.message)
                .collect();
            // The commit is never raced against `stop`: a cancelled transaction future
            // could leave the connection mid-transaction.
            loop {
                match store
                    .commit_batch(
                        topic,
                        partition,
                        from,
                        batch.next_offset,
                        &messages,
                        &c.limits,
                    )
                    .await
                {
                    Ok(inserted) => {
                        metrics::counter!(names::PERSISTED).increment(inserted as u64);
                        metrics::histogram!(names::PERSIST_BATCH).record(messages.len() as f64);
                        tracing::debug!(
                            partition,
                            from = offset,
                            to = batch.next_offset,
                            n = messages.len(),
                            inserted,
                            "persisted"
                        );
                        backoff.reset();
                        break;
                    }
                    Err(StoreError::Fenced { .. }) => {
                        tracing::info!(
                            partition,
                            "persist: offset moved by another consumer; resuming from it"
                        );
                        continue 'resume;
                    }
                    Err(e) => {
                        metrics::counter!(names::PERSIST_ERRORS).increment(1);
                        tracing::warn!(partition, error = %e, "persist: batch not stored; retrying the same batch");
                        if !backoff.sleep(&stop).await {
                            return;
                        }
                    }
                }
            }
            from = Some(batch.next_offset);
            offset = batch.next_offset;
        }
    }
}

async fn earliest(
    reader: &dyn LogReader,
    stop: &CancellationToken,
    backoff: &mut Backoff,
) -> Option<i64> {
    loop {
        match reader.earliest().await {
            Ok(o) => return Some(o),
            Err(e) => {
                tracing::warn!(error = %e, "persist: no log start offset; retrying");
                if !backoff.sleep(stop).await {
                    return None;
                }
            }
        }
    }
}
