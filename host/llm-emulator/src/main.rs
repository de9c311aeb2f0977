//! `llm-emulator`: serves the OpenAI-compatible chat-completions emulator (see the library docs)
//! on an address, for trying the AI chat's LLM path without a provider.

use clap::Parser;
use moa_llm_emulator::{Emulator, Settings};

/// A local OpenAI-compatible chat-completions emulator: `POST /v1/chat/completions` answers
/// `[<model>]` and the prompt's `- ` lines; faults via `PUT /__emulator/faults`
/// `{"status", "count", "delay_ms"}`; the requests seen at `GET /__emulator/requests`.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8788")]
    listen: std::net::SocketAddr,
    /// The API key clients must send as `Authorization: Bearer <key>`; any request is accepted
    /// without one.
    #[arg(long, env = "LLM_EMULATOR_API_KEY")]
    api_key: Option<String>,
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
        "llm-emulator listening on http://{}/v1",
        listener.local_addr()?
    );
    Emulator::new(Settings {
        api_key: args.api_key,
    })
    .serve(listener)
    .await;
    Ok(())
}
