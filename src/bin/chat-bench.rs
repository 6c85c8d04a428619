//! `chat-bench`: the load generator (src/bench, benches/README.md), a binary of its own so
//! that the server build and image do not carry it. Built only with the cargo feature
//! `bench`: `cargo build --release --locked --features bench`.

use std::process::ExitCode;

use clap::Parser;

use chat::bench::{self, cli::BenchArgs};

fn main() -> ExitCode {
    let args = BenchArgs::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chat-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(bench::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
