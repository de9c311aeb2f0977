//! Token checks in the order that leaks least: the header (`alg` must be RS256, whatever the
//! token says), the key by exact `kid`, the RS256 signature, then the claims (`iss`, `token_use`,
//! `client_id` or `aud`, `exp` / `nbf` / `iat` with leeway) and the route's groups.

use crate::config::Config;
use crate::jwks;
use crate::rules::{Rule, TokenUse};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

/// Why a request is refused.
#[derive(Debug)]
pub struct Denial {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl Denial {
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Denial {
            status: 401,
            code,
            message: message.into(),
        }
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Denial {
            status: 403,
            code,
            message: message.into(),
        }
    }

    pub fn misconfigured(message: String) -> Self {
        Denial {
            status: 500,
            code: "auth_misconfigured",
            message,
        }
    }

    pub fn unavailable(message: String) -> Self {
        Denial {
            status: 503,
            code: "jwks_unavailable",
            message,
        }
    }
}

/// Who the verified token speaks for.
pub struct Identity {
    pub subject: String,
    pub username: String,
    pub groups: Vec<String>,
    pub token_use: TokenUse,
}

impl Identity {
    /// The headers the next component reads.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        vec![
            ("x-moa-auth-subject", self.subject.clone()),
            ("x-moa-auth-username", self.username.clone()),
            ("x-moa-auth-groups", self.groups.join(",")),
            ("x-moa-auth-token-use", self.token_use.as_str().to_string()),
        ]
    }
}

fn bad(code: &'static str, message: impl Into<String>) -> Denial {
    Denial::unauthorized(code, message)
}

fn decode_json(part: &str, what: &str) -> Result<Value, Denial> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| bad("malformed_token", format!("the {what} is not base64url")))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| bad("malformed_token", format!("the {what} is not JSON")))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Verifies `token` for `rule`.
pub async fn verify(config: &Config, rule: &Rule, token: &str) -> Result<Identity, Denial> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(
            "malformed_token",
            "a JWT has three dot-separated parts",
        ));
    };
    let header_json = decode_json(header, "header")?;
    // Only RS256 is accepted, whatever the header asks for (`none`, HS256 with the public key
    // as the secret, ...).
    if header_json.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err(bad("unsupported_alg", "only RS256 tokens are accepted"));
    }
    let Some(kid) = header_json.get("kid").and_then(Value::as_str) else {
        return Err(bad("unknown_kid", "the token names no key (`kid`)"));
    };
    let key = jwks::key(config, kid).await?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .ok()
        .filter(|bytes| !bytes.is_empty())
        .ok_or_else(|| bad("bad_signature", "the signature is malformed"))?;
    let signed = &token[..header.len() + 1 + payload.len()];
    if !crate::bindings::moa::crypto::signatures::verify_rs256(&key, signed.as_bytes(), &signature)
    {
        return Err(bad("bad_signature", "the signature does not verify"));
    }

    let claims = decode_json(payload, "payload")?;
    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    if text("iss") != Some(config.issuer.as_str()) {
        return Err(bad("wrong_issuer", "the token is from another issuer"));
    }
    let token_use = match text("token_use") {
        Some("access") => TokenUse::Access,
        Some("id") => TokenUse::Id,
        _ => return Err(bad("wrong_token_use", "the token has no valid `token_use`")),
    };
    if token_use != rule.token_use {
        return Err(bad(
            "wrong_token_use",
            format!("this route takes an {} token", rule.token_use.as_str()),
        ));
    }
    let client_ok = match token_use {
        TokenUse::Access => {
            text("client_id").is_some_and(|c| config.client_ids.iter().any(|id| id == c))
        }
        TokenUse::Id => match claims.get("aud") {
            Some(Value::String(aud)) => config.client_ids.iter().any(|id| id == aud),
            Some(Value::Array(auds)) => auds
                .iter()
                .filter_map(Value::as_str)
                .any(|aud| config.client_ids.iter().any(|id| id == aud)),
            _ => false,
        },
    };
    if !client_ok {
        return Err(bad(
            "wrong_audience",
            "the token was issued to another app client",
        ));
    }
    let number = |name: &str| claims.get(name).and_then(Value::as_u64);
    let (now, leeway) = (now(), config.leeway_s);
    match number("exp") {
        Some(exp) if now <= exp.saturating_add(leeway) => {}
        Some(_) => return Err(bad("token_expired", "the token has expired")),
        None => return Err(bad("malformed_token", "the token has no `exp`")),
    }
    if number("nbf").is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
        return Err(bad(
            "token_not_yet_valid",
            "the token is not valid yet (`nbf`)",
        ));
    }
    if number("iat").is_some_and(|iat| iat > now.saturating_add(leeway)) {
        return Err(bad(
            "token_not_yet_valid",
            "the token was issued in the future (`iat`)",
        ));
    }
    let Some(subject) = text("sub").map(str::to_string) else {
        return Err(bad("malformed_token", "the token has no `sub`"));
    };
    let username = text("username")
        .or_else(|| text("cognito:username"))
        .unwrap_or(&subject)
        .to_string();
    let groups: Vec<String> = claims
        .get("cognito:groups")
        .and_then(Value::as_array)
        .map(|g| {
            g.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if !rule.groups.is_empty() && !groups.iter().any(|g| rule.groups.contains(g)) {
        return Err(Denial::forbidden(
            "missing_permission",
            format!("this route needs one of the groups {:?}", rule.groups),
        ));
    }
    Ok(Identity {
        subject,
        username,
        groups,
        token_use,
    })
}
