//! `chat admin`: names the server administrators, against the store the server uses
//! (an edge of the binary: `anyhow` errors, printed by `main`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;

use crate::cli::{AdminAction, AdminArgs, MigrateArgs};
use crate::config::{MigrateTarget, DEFAULT_DB_FILE};
use crate::store::{PgStore, SqliteStore, Store};

/// Opens (and migrates) the configured store.
async fn open(a: &AdminArgs) -> anyhow::Result<Arc<dyn Store>> {
    let given = a.database_url.is_some() || a.database_url_file.is_some();
    if !given {
        let dir = a.data_dir.clone().unwrap_or_else(|| PathBuf::from("."));
        let path = dir.join(DEFAULT_DB_FILE);
        SqliteStore::migrate(&path).await?;
        return Ok(Arc::new(SqliteStore::open(&path, 1)?));
    }
    let m = MigrateArgs {
        database_url: a.database_url.clone(),
        database_url_file: a.database_url_file.clone(),
        database_ca_file: a.database_ca_file.clone(),
    };
    match MigrateTarget::from_args(&m).map_err(|e| anyhow::anyhow!("invalid setting {e}"))? {
        MigrateTarget::Sqlite(path) => {
            SqliteStore::migrate(&path).await?;
            Ok(Arc::new(SqliteStore::open(&path, 1)?))
        }
        MigrateTarget::Postgres(target) => {
            PgStore::migrate_target(&target).await?;
            Ok(Arc::new(PgStore::connect(&target, 1)?))
        }
    }
}

pub async fn run(a: AdminArgs) -> anyhow::Result<()> {
    let store = open(&a).await?;
    match &a.action {
        AdminAction::Grant { username } | AdminAction::Revoke { username } => {
            let on = matches!(a.action, AdminAction::Grant { .. });
            let user = store
                .set_admin(username, on)
                .await
                .context("updating the account")?
                .with_context(|| format!("no user named {username:?}"))?;
            let what = if on { "is now" } else { "is no longer" };
            println!("{} ({}) {what} a server administrator", user.name, user.id);
        }
        AdminAction::List => {
            let mut after = None;
            loop {
                let page = store.accounts(after, 500).await?;
                for acc in page.iter().filter(|a| a.admin) {
                    println!("{}\t{}", acc.name, acc.id);
                }
                match page.last() {
                    Some(last) if page.len() == 500 => after = Some(last.id),
                    _ => break,
                }
            }
        }
    }
    Ok(())
}
