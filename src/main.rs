use std::process::ExitCode;

use clap::Parser;

use chat::cli::{Cli, Command};
use chat::config::{Config, MigrateTarget};
use chat::settings::{self, env};
use chat::{app, store, telemetry};

/// glibc raises its mmap threshold to the size of the largest block freed, so after the first
/// password hash (argon2: a 19 MiB block) every later one comes from a per-thread arena that
/// keeps it: 40 registrations left a gateway at 480 MiB RSS. A fixed threshold keeps large
/// blocks mmapped and returns them on free (15 MiB after the same 40).
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// With `RUST_BACKTRACE=1`, anyhow (and `std::backtrace`) capture a backtrace for every error
/// created, and a client can cause errors at will: each would cost a stack walk. Backtraces of
/// errors are off unless `RUST_LIB_BACKTRACE` asks for them; panics keep theirs.
fn no_error_backtraces() {
    if std::env::var_os(env::RUST_LIB_BACKTRACE).is_none() {
        // Before any other thread exists (the runtime is built after this).
        std::env::set_var(env::RUST_LIB_BACKTRACE, "0");
    }
}

fn main() -> ExitCode {
    tune_malloc();
    no_error_backtraces();
    // The one rustls crypto provider, before anything can build a TLS configuration.
    chat::tls::install_provider();
    let cli = Cli::parse();
    if let Command::Config(args) = &cli.command {
        // Prints and exits: no runtime, no logging.
        return match settings::run(args) {
            Ok(out) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("chat: invalid setting {e}");
                ExitCode::from(2)
            }
        };
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Command::Serve(args) = &cli.command {
        if let Some(n) = args.runtime_threads {
            rt.worker_threads(n.get());
        }
    }
    match rt.build() {
        Ok(rt) => rt.block_on(run(cli)),
        Err(e) => {
            eprintln!("chat: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> ExitCode {
    telemetry::init_logging(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => match Config::from_args(&args) {
            Ok(cfg) => app::run(cfg).await,
            Err(e) => {
                eprintln!("chat: invalid setting {e}");
                return ExitCode::from(2);
            }
        },
        Command::Config(_) => return ExitCode::SUCCESS, // handled in main
        Command::Admin(args) => chat::admin::run(args).await,
        Command::Migrate(args) => match MigrateTarget::from_args(&args) {
            Ok(MigrateTarget::Sqlite(path)) => store::SqliteStore::migrate(&path)
                .await
                .map(|applied| println!("applied {} migration(s)", applied.len())),
            Ok(MigrateTarget::Postgres(target)) => {
                match store::PgStore::migrate_target(&target).await {
                    Ok(applied) => {
                        println!("applied {} migration(s)", applied.len());
                        Ok(())
                    }
                    Err(e) => {
                        // One line: the service, its address and why (no URL, no password).
                        eprintln!("chat: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            Err(e) => {
                eprintln!("chat: invalid setting {e}");
                return ExitCode::from(2);
            }
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
