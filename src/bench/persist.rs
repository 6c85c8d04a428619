//! The `persist` scenario's PostgreSQL side: poll the `messages` table until it holds the
//! burst the gateways acked, then time raw multi-row INSERTs of the same rows into a
//! scratch table (same columns, indexes and constraints) as the ceiling.
//!
//! It writes only to a database of its own ([`claim`]): the URL is given explicitly and a
//! database holding chat data the bench did not create is refused.

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

/// The `n` of a one-row answer (0 for none).
fn n_of(rows: Vec<N>) -> i64 {
    rows.into_iter().next().map_or(0, |r| r.n)
}

fn db(e: impl std::fmt::Display) -> BenchError {
    BenchError::Db(e.to_string())
}

pub async fn connect(url: &str) -> Result<AsyncPgConnection, BenchError> {
    AsyncPgConnection::establish(url).await.map_err(db)
}

/// The table that marks a database as the bench's own. benches/cluster.sh creates it with
/// the database (same statement as below).
pub const MARKER: &str = "chat_bench_marker";

/// How [`claim`] found the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// It was marked already.
    Ours,
    /// A migrated chat database where no table held a row: marked now.
    Marked,
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
}

/// Whether `c` is a database the persist scenario may write to (it creates and drops a
/// scratch table, and its run registers users and fills `messages`): one marked with
/// [`MARKER`], or a migrated chat database in which no table (but the migrations' own)
/// holds a row yet, which is then marked. Anything else, above all a deployment's database
/// with its users and messages, is refused before the bench touches it.
pub async fn claim(c: &mut AsyncPgConnection) -> Result<Claim, BenchError> {
    let exists = |table: &str| {
        diesel::sql_query("SELECT (to_regclass($1) IS NOT NULL)::int::int8 AS n")
            .bind::<diesel::sql_types::Text, _>(table.to_owned())
    };
    if n_of(exists(MARKER).load(c).await.map_err(db)?) == 1 {
        return Ok(Claim::Ours);
    }
    if n_of(exists("messages").load(c).await.map_err(db)?) != 1 {
        return Err(BenchError::Refused(
            "the database has no chat schema (no messages table): give the persist scenario \
             a database of its own, migrated with `chat migrate` (benches/cluster.sh does both)"
                .into(),
        ));
    }
    // Every table the connection can see, quoted by PostgreSQL itself.
    let tables: Vec<Name> = diesel::sql_query(
        "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name) AS name \
         FROM information_schema.tables \
         WHERE table_type = 'BASE TABLE' \
           AND table_schema NOT IN ('pg_catalog', 'information_schema') \
           AND table_name <> '__diesel_schema_migrations' \
         ORDER BY 1",
    )
    .load(c)
    .await
    .map_err(db)?;
    let mut holding = Vec::new();
    for t in &tables {
        let rows: Vec<N> = diesel::sql_query(format!(
            "SELECT count(*) AS n FROM (SELECT 1 FROM {} LIMIT 1) AS t",
            t.name
        ))
        .load(c)
        .await
        .map_err(db)?;
        if n_of(rows) > 0 {
            holding.push(t.name.as_str());
        }
    }
    if !holding.is_empty() {
        return Err(BenchError::Refused(format!(
            "the database holds data the bench did not create (rows in {}): give the \
             persist scenario a database of its own (benches/cluster.sh creates one)",
            holding.join(", ")
        )));
    }
    diesel::sql_query(format!(
        "CREATE TABLE IF NOT EXISTS {MARKER} (marked_at timestamptz NOT NULL DEFAULT now())"
    ))
    .execute(c)
    .await
    .map_err(db)?;
    Ok(Claim::Marked)
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
