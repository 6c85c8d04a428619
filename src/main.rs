use std::process::ExitCode;

use clap::Parser;

use chat::cli::{Cli, Command};
use chat::config::{check_database_url, sqlite_path, Config};
use chat::{app, bench, store, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init_logging(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => match Config::from_args(&args) {
            Ok(cfg) => app::run(cfg).await,
            Err(e) => {
                eprintln!("chat: invalid setting {e}");
                return ExitCode::from(2);
            }
        },
        Command::Bench(args) => bench::run(*args).await.map_err(anyhow::Error::from),
        Command::Migrate(args) => match sqlite_path(&args.database_url) {
            Some(path) => store::SqliteStore::migrate(&path)
                .await
                .map(|applied| println!("applied {} migration(s)", applied.len())),
            None => match check_database_url(&args.database_url) {
                Ok(()) => store::PgStore::migrate(&args.database_url)
                    .await
                    .map(|applied| println!("applied {} migration(s)", applied.len())),
                Err(e) => {
                    eprintln!("chat: invalid setting {e}");
                    return ExitCode::from(2);
                }
            },
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat: {e:#}");
            ExitCode::FAILURE
        }
    }
}
