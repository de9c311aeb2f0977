//! `toss-emulator`: serves the Toss Payments v1 emulator (see the library docs) on an address, for
//! `moa up` of the reference app and for tests.

use clap::Parser;
use moa_toss_emulator::{Emulator, Settings};

/// A local Toss Payments v1 API emulator: confirm, cancel and query payments, idempotency keys,
/// Toss's error shapes, injectable faults (payment keys containing `decline`, `provider-error`,
/// `error500`, `slow`, `late`; or `PUT /__emulator/faults`), and a ledger at `GET /__emulator/ledger`.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8787")]
    listen: std::net::SocketAddr,
    /// The secret key clients must send (Basic auth); by default any `test_sk_...` key is accepted.
    #[arg(long, env = "TOSS_SECRET_KEY")]
    secret_key: Option<String>,
    /// How long a `slow` confirm takes, in ms.
    #[arg(long, default_value_t = 1500)]
    slow_ms: u64,
    /// How long a `late` confirm holds its answer after charging, in ms.
    #[arg(long, default_value_t = 8000)]
    late_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    use anyhow::Context as _;
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}: pick another with --listen",
                args.listen
            )
        })?;
    eprintln!(
        "toss-emulator listening on http://{}",
        listener.local_addr()?
    );
    let emulator = Emulator::new(Settings {
        secret_key: args.secret_key,
        slow_ms: args.slow_ms,
        late_ms: args.late_ms,
    });
    emulator.serve(listener).await;
    Ok(())
}
