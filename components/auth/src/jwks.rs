//! The issuer's signing keys: `<issuer>/.well-known/jwks.json`, fetched through outbound HTTP and
//! cached in the key-value store (shared by every instance), fetched again when the cache is
//! older than `auth_jwks_ttl_s`, or once for an unknown `kid` if the last such fetch is older
//! than `auth_jwks_refetch_s`.

use crate::bindings::moa::crypto::signatures::RsaPublicKey;
use crate::config::Config;
use crate::jwt::Denial;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use spin_sdk::key_value::Store;

const CACHE_KEY: &str = "moa-auth/jwks";

#[derive(Serialize, Deserialize)]
struct Cached {
    fetched_at: u64,
    jwks: Value,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The RSA key with exactly this `kid`.
pub async fn key(config: &Config, kid: &str) -> Result<RsaPublicKey, Denial> {
    let store = Store::open_default().await.map_err(|e| {
        Denial::misconfigured(format!(
            "the auth component needs key_value_stores = [\"default\"]: {e:?}"
        ))
    })?;
    let cached: Option<Cached> = store
        .get(CACHE_KEY)
        .await
        .ok()
        .flatten()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let now = now();
    let fresh = cached
        .as_ref()
        .filter(|c| now < c.fetched_at.saturating_add(config.jwks_ttl_s));
    if let Some(cached) = fresh {
        if let Some(key) = find(&cached.jwks, kid)? {
            return Ok(key);
        }
        // An unknown kid: the issuer may have rotated its keys. Fetch again, but not more often
        // than the penalty window allows.
        if now < cached.fetched_at.saturating_add(config.jwks_refetch_s) {
            return Err(unknown(kid));
        }
    }
    let jwks = fetch(config).await?;
    let record = Cached {
        fetched_at: now,
        jwks,
    };
    if let Ok(bytes) = serde_json::to_vec(&record) {
        let _ = store.set(CACHE_KEY, &bytes).await;
    }
    find(&record.jwks, kid)?.ok_or_else(|| unknown(kid))
}

fn unknown(kid: &str) -> Denial {
    Denial::unauthorized(
        "unknown_kid",
        format!("no key `{kid}` in the issuer's JWKS"),
    )
}

async fn fetch(config: &Config) -> Result<Value, Denial> {
    let url = format!("{}/.well-known/jwks.json", config.issuer);
    let response = spin_sdk::http::get(&url)
        .await
        .map_err(|e| Denial::unavailable(format!("cannot fetch {url}: {e:?}")))?;
    if response.status() != 200 {
        return Err(Denial::unavailable(format!(
            "{url} answered {}",
            response.status()
        )));
    }
    use spin_sdk::http::body::IncomingBodyExt as _;
    let bytes = response
        .into_body()
        .bytes()
        .await
        .map_err(|e| Denial::unavailable(format!("cannot read {url}: {e:?}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| Denial::unavailable(format!("{url} is not a JSON Web Key Set")))
}

/// The usable RSA signing key with exactly `kid`, if any.
fn find(jwks: &Value, kid: &str) -> Result<Option<RsaPublicKey>, Denial> {
    let Some(keys) = jwks.get("keys").and_then(Value::as_array) else {
        return Ok(None);
    };
    for jwk in keys {
        let text = |name: &str| jwk.get(name).and_then(Value::as_str);
        if text("kid") != Some(kid) || text("kty") != Some("RSA") {
            continue;
        }
        if text("use").is_some_and(|u| u != "sig") || text("alg").is_some_and(|a| a != "RS256") {
            continue;
        }
        let part = |name: &str| {
            text(name)
                .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
                .filter(|bytes| !bytes.is_empty())
        };
        let (Some(n), Some(e)) = (part("n"), part("e")) else {
            continue;
        };
        // RS256 keys are 2048 to 8192 bits (as the host checks them); anything else is refused
        // here with a reason instead of failing every signature.
        let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
        if !(2048..=8192).contains(&bits) || e.len() > 8 {
            return Err(Denial::unavailable(format!(
                "key `{kid}` in the JWKS is not a usable RSA key (2048-8192 bits)"
            )));
        }
        return Ok(Some(RsaPublicKey { n, e }));
    }
    Ok(None)
}
