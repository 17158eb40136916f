//! A throwaway PostgreSQL for local runs (`scripts/local`, or by hand next to
//! `cargo lambda watch`): starts a server with the example migrations
//! applied, prints `DATABASE_URL=…` on stdout, and keeps it until Ctrl-C or
//! SIGTERM, then stops it and deletes its files.
//!
//! Usage: `throwaway-postgres [--port N]` (default 55432). Give the URL it
//! prints to `cargo lambda watch` through the environment:
//! `DATABASE_URL=… cargo lambda watch`.

use std::io::Write as _;

use integration_tests::{migrations, Postgres};
use tokio::signal::unix::{signal, SignalKind};

const DEFAULT_PORT: u16 = 55432;

#[tokio::main]
async fn main() {
    let port = match parse_port(std::env::args().skip(1)) {
        Ok(port) => port,
        Err(message) => {
            eprintln!("throwaway-postgres: {message}\nusage: throwaway-postgres [--port N]");
            std::process::exit(2);
        }
    };
    let mut terminate = signal(SignalKind::terminate()).expect("install the SIGTERM handler");

    // Every statement with its duration in the server log, as in the tests.
    let pg = Postgres::builder().port(port).setting("log_min_duration_statement", "0").start().await;
    let applied = migrations::apply_all(&pg).await;
    eprintln!("throwaway-postgres: listening on 127.0.0.1:{port}, migrations applied: {}", applied.join(", "));
    eprintln!("throwaway-postgres: server log {}", pg.log_path().display());
    // The one line on stdout, for scripts to read.
    println!("DATABASE_URL={}", pg.database_url());
    std::io::stdout().flush().expect("flush stdout");

    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    eprintln!("throwaway-postgres: stopping (the data is deleted)");
    drop(pg);
}

fn parse_port(mut args: impl Iterator<Item = String>) -> Result<u16, String> {
    let mut port = DEFAULT_PORT;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => {
                let value = args.next().ok_or("--port needs a value")?;
                port = value.parse().map_err(|_| format!("--port: `{value}` is not a port number"))?;
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(port)
}
