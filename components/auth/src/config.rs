//! The middleware's settings, read from Spin variables on every request: the issuer, the app
//! client ids, the clock leeway, the JWKS cache timings and the route rules.

use crate::rules::Rules;
use anyhow::{Context as _, Result};

pub struct Config {
    /// `iss` must equal this exactly; the JWKS is `<issuer>/.well-known/jwks.json`.
    pub issuer: String,
    /// Accepted `client_id` (access tokens) or `aud` (id tokens).
    pub client_ids: Vec<String>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
    pub leeway_s: u64,
    /// How long a fetched JWKS is used before it is fetched again.
    pub jwks_ttl_s: u64,
    /// The least time between two fetches caused by an unknown `kid` (so tokens with made-up
    /// key ids cannot make the middleware fetch on every request).
    pub jwks_refetch_s: u64,
    pub rules: Rules,
}

async fn variable(name: &str) -> Option<String> {
    spin_sdk::variables::get(name)
        .await
        .ok()
        .filter(|v| !v.trim().is_empty())
}

async fn number(name: &str, default: u64) -> Result<u64> {
    match variable(name).await {
        None => Ok(default),
        Some(text) => text
            .trim()
            .parse()
            .with_context(|| format!("variable `{name}` = `{text}` is not a whole number")),
    }
}

impl Config {
    pub async fn load() -> Result<Config> {
        let issuer = variable("auth_issuer")
            .await
            .context("variable `auth_issuer` is not set (the token issuer's URL)")?
            .trim_end_matches('/')
            .to_string();
        let client_ids = variable("auth_client_ids")
            .await
            .context("variable `auth_client_ids` is not set (comma-separated app client ids)")?
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let rules = variable("auth_rules")
            .await
            .context("variable `auth_rules` is not set (the route rules, JSON)")?;
        Ok(Config {
            issuer,
            client_ids,
            leeway_s: number("auth_leeway_s", 60).await?,
            jwks_ttl_s: number("auth_jwks_ttl_s", 3600).await?,
            jwks_refetch_s: number("auth_jwks_refetch_s", 60).await?,
            rules: Rules::parse(&rules).context("variable `auth_rules`")?,
        })
    }
}
