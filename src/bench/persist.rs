//! The `persist` scenario's PostgreSQL side: poll the `messages` table until it holds the
//! burst the gateways acked, then time raw multi-row INSERTs of the same rows into a
//! scratch table (same columns, indexes and constraints) as the ceiling.

use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::BenchError;

diesel::table! {
    /// Created and dropped by the bench: `LIKE messages INCLUDING ALL`.
    chat_bench_scratch (id) {
        id -> Uuid,
        room_id -> Uuid,
        sender_id -> Uuid,
        sender_name -> Text,
        client_msg_id -> Text,
        body -> Text,
        position -> Int8,
        log_partition -> Int4,
        sent_at -> Timestamptz,
        stored_at -> Timestamptz,
    }
}

#[derive(Debug, Clone, QueryableByName, Insertable)]
#[diesel(table_name = chat_bench_scratch)]
struct Row {
    id: Uuid,
    room_id: Uuid,
    sender_id: Uuid,
    sender_name: String,
    client_msg_id: String,
    body: String,
    position: i64,
    log_partition: i32,
    sent_at: chrono::DateTime<chrono::Utc>,
    stored_at: chrono::DateTime<chrono::Utc>,
}

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn db(e: impl std::fmt::Display) -> BenchError {
    BenchError::Db(e.to_string())
}

pub async fn connect(url: &str) -> Result<AsyncPgConnection, BenchError> {
    AsyncPgConnection::establish(url).await.map_err(db)
}

/// Rows of `messages` in these rooms.
pub async fn count(c: &mut AsyncPgConnection, rooms: &[Uuid]) -> Result<i64, BenchError> {
    let rows: Vec<N> =
        diesel::sql_query("SELECT count(*) AS n FROM messages WHERE room_id = ANY($1)")
            .bind::<Array<diesel::sql_types::Uuid>, _>(rooms)
            .load(c)
            .await
            .map_err(db)?;
    Ok(rows.into_iter().next().map_or(0, |r| r.n))
}

/// How the row count grew: (time since `t0`, rows).
#[derive(Debug, Default)]
pub struct Progress {
    pub first_row: Option<Duration>,
    pub all_rows: Option<Duration>,
    pub samples: Vec<(Duration, i64)>,
}

/// Polls the count every 20 ms from now on (so from before the first send), until `want`
/// has been given (once the acks are all in) and that many rows are there, or until
/// `timeout` has passed since `want` was given.
pub async fn watch_rows(
    mut c: AsyncPgConnection,
    rooms: Vec<Uuid>,
    t0: Instant,
    mut want: tokio::sync::watch::Receiver<Option<i64>>,
    timeout: Duration,
) -> Result<Progress, BenchError> {
    let mut p = Progress::default();
    let mut given_at: Option<Instant> = None;
    loop {
        let n = count(&mut c, &rooms).await?;
        let at = t0.elapsed();
        p.samples.push((at, n));
        if n > 0 && p.first_row.is_none() {
            p.first_row = Some(at);
        }
        let w = *want.borrow_and_update();
        if let Some(w) = w {
            let since = *given_at.get_or_insert_with(Instant::now);
            if n >= w {
                p.all_rows = p.samples.iter().find(|s| s.1 >= w).map(|s| s.0);
                return Ok(p);
            }
            if since.elapsed() > timeout {
                return Ok(p);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Highest rows/s between two samples at least `span` apart.
pub fn peak_rate(samples: &[(Duration, i64)], span: Duration) -> f64 {
    let mut best: f64 = 0.0;
    let mut j = 0;
    for i in 0..samples.len() {
        while j < samples.len() && samples[j].0 < samples[i].0 + span {
            j += 1;
        }
        if j == samples.len() {
            break;
        }
        let dt = (samples[j].0 - samples[i].0).as_secs_f64();
        let dn = (samples[j].1 - samples[i].1) as f64;
        if dt > 0.0 {
            best = best.max(dn / dt);
        }
    }
    best
}

/// Copies these rooms' rows out of `messages`, then times inserting them again, `chunk`
/// rows per INSERT statement (each its own transaction), into a fresh scratch table.
/// Returns (rows, seconds).
pub async fn raw_ceiling(
    c: &mut AsyncPgConnection,
    rooms: &[Uuid],
    chunk: usize,
) -> Result<(u64, f64), BenchError> {
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT id, room_id, sender_id, sender_name, client_msg_id, body, position, \
         log_partition, sent_at, stored_at FROM messages WHERE room_id = ANY($1)",
    )
    .bind::<Array<diesel::sql_types::Uuid>, _>(rooms)
    .load(c)
    .await
    .map_err(db)?;
    diesel::sql_query("DROP TABLE IF EXISTS chat_bench_scratch")
        .execute(c)
        .await
        .map_err(db)?;
    diesel::sql_query("CREATE TABLE chat_bench_scratch (LIKE messages INCLUDING ALL)")
        .execute(c)
        .await
        .map_err(db)?;
    let t = Instant::now();
    let mut res = Ok(());
    for part in rows.chunks(chunk.max(1)) {
        if let Err(e) = diesel::insert_into(chat_bench_scratch::table)
            .values(part)
            .execute(c)
            .await
        {
            res = Err(db(e));
            break;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let dropped = diesel::sql_query("DROP TABLE IF EXISTS chat_bench_scratch")
        .execute(c)
        .await
        .map_err(db);
    res?;
    dropped?;
    Ok((rows.len() as u64, secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_rate_over_half_second_spans() {
        let ms = Duration::from_millis;
        let s = [
            (ms(0), 0),
            (ms(250), 0),
            (ms(500), 1000),
            (ms(750), 3000),
            (ms(1000), 4000),
        ];
        // 250 → 750 ms: 3000 rows in 0.5 s.
        assert!((peak_rate(&s, ms(500)) - 6000.0).abs() < 1e-6);
        assert_eq!(peak_rate(&s[..1], ms(500)), 0.0);
    }
}
