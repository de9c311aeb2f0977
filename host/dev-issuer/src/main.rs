//! `dev-issuer`: serves the local token issuer (see the library docs) for `moa up` of the
//! reference app. Development only: anyone who can reach it can mint any group.

use anyhow::Context as _;
use clap::Parser;
use moa_dev_issuer::DevIssuer;
use std::path::PathBuf;

/// A local Cognito-style token issuer for development: its JWKS at /.well-known/jwks.json and
/// tokens on `POST /token {"sub": "kim", "groups": ["CUSTOMER"]}`. Never expose it: anyone who
/// reaches it can mint any group.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3081")]
    listen: std::net::SocketAddr,
    /// The `iss` claim (default `http://<listen>`); the auth component's `auth_issuer` must match.
    #[arg(long)]
    issuer: Option<String>,
    /// The app client id tokens carry (`client_id` / `aud`).
    #[arg(long, default_value = "moa-dev-client")]
    client_id: String,
    /// The signing key (PKCS#8 PEM); made on first start, so tokens outlive restarts.
    #[arg(long, default_value = ".moa/dev-issuer-key.pem")]
    key_file: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let key = moa_dev_issuer::load_or_create_key(&args.key_file)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}: pick another with --listen",
                args.listen
            )
        })?;
    let address = listener.local_addr()?;
    let issuer = args.issuer.unwrap_or_else(|| format!("http://{address}"));
    eprintln!(
        "dev-issuer listening on http://{address} (iss {issuer}, client {})",
        args.client_id
    );
    DevIssuer::new(issuer, args.client_id, key)
        .serve(listener)
        .await;
    Ok(())
}
