//! A local Cognito-style token issuer: one RSA key (made on first start, kept in a PEM file), its
//! JWKS, and RS256 tokens with Cognito's claims. For `moa up` of the reference app and for tests;
//! the auth component trusts it only when the dev config names it as the issuer.
//!
//! HTTP: `GET /.well-known/jwks.json`; `POST /token` `{"sub", "groups", "token_use"?, "ttl_s"?}`
//! answers `{"token", "expires_at"}`; `GET /healthz`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, LineEnding};
use rsa::sha2::Sha256;
use rsa::signature::{SignatureEncoding as _, Signer as _};
use rsa::traits::PublicKeyParts as _;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde::Deserialize;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;

/// The key id tokens carry and the JWKS lists.
pub const KID: &str = "moa-dev-1";

/// One public key as a JWK (RS256, `use: sig`).
pub fn jwk(kid: &str, key: &RsaPublicKey) -> Value {
    json!({
        "kid": kid, "kty": "RSA", "alg": "RS256", "use": "sig",
        "n": URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
        "e": URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()),
    })
}

/// A compact JWS of `claims` under `header`, signed RS256 with `key`, whatever `header` says.
pub fn sign(header: &Value, claims: &Value, key: &RsaPrivateKey) -> String {
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = SigningKey::<Sha256>::new(key.clone()).sign(signed.as_bytes());
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A fresh 2048-bit RSA key.
pub fn new_key() -> anyhow::Result<RsaPrivateKey> {
    Ok(RsaPrivateKey::new(&mut rand::thread_rng(), 2048)?)
}

/// The key in `path` (PKCS#8 PEM), made and written there (mode 0600) when the file is absent.
pub fn load_or_create_key(path: &Path) -> anyhow::Result<RsaPrivateKey> {
    use anyhow::Context as _;
    if path.exists() {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the key {}", path.display()))?;
        return RsaPrivateKey::from_pkcs8_pem(&pem).with_context(|| {
            format!(
                "{} is not a PKCS#8 PEM RSA key: delete it to make a new one",
                path.display()
            )
        });
    }
    let key = new_key()?;
    let pem = key.to_pkcs8_pem(LineEnding::LF)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, pem.as_bytes())
        .with_context(|| format!("cannot write the key {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(key)
}

/// What a minted token says.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub sub: String,
    #[serde(default)]
    pub groups: Vec<String>,
    /// `access` (default, carries `client_id`) or `id` (carries `aud`).
    #[serde(default = "access")]
    pub token_use: String,
    /// Lifetime in seconds (default 3600, at most 86400).
    #[serde(default = "hour")]
    pub ttl_s: u64,
}

fn access() -> String {
    "access".into()
}

fn hour() -> u64 {
    3600
}

/// The issuer: its URL (the `iss` claim), app client id and key.
pub struct DevIssuer {
    pub issuer: String,
    pub client_id: String,
    key: RsaPrivateKey,
}

impl DevIssuer {
    pub fn new(issuer: String, client_id: String, key: RsaPrivateKey) -> Arc<DevIssuer> {
        Arc::new(DevIssuer {
            issuer,
            client_id,
            key,
        })
    }

    pub fn jwks(&self) -> Value {
        json!({ "keys": [jwk(KID, &self.key.to_public_key())] })
    }

    /// Cognito's claims for `request`, issued now.
    pub fn claims(&self, request: &TokenRequest) -> Value {
        let now = now();
        let mut claims = json!({
            "sub": request.sub, "username": request.sub, "iss": self.issuer,
            "token_use": request.token_use, "cognito:groups": request.groups,
            "iat": now, "exp": now + request.ttl_s, "auth_time": now,
        });
        if request.token_use == "id" {
            claims["aud"] = json!(self.client_id);
        } else {
            claims["client_id"] = json!(self.client_id);
        }
        claims
    }

    /// A signed token for `request`.
    pub fn mint(&self, request: &TokenRequest) -> Result<(String, u64), String> {
        if request.sub.trim().is_empty() {
            return Err("`sub` is empty".into());
        }
        if request.token_use != "access" && request.token_use != "id" {
            return Err(format!(
                "`token_use` is `{}`: use `access` or `id`",
                request.token_use
            ));
        }
        if request.ttl_s == 0 || request.ttl_s > 86_400 {
            return Err("`ttl_s` must be 1..=86400".into());
        }
        let claims = self.claims(request);
        let header = json!({ "alg": "RS256", "kid": KID, "typ": "JWT" });
        let expires_at = claims["exp"].as_u64().unwrap_or_default();
        Ok((sign(&header, &claims, &self.key), expires_at))
    }

    /// Serves the JWKS and the token endpoint on `listener` until the process ends.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let issuer = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let issuer = issuer.clone();
                    async move { Ok::<_, std::convert::Infallible>(issuer.handle(request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        match (request.method(), request.uri().path()) {
            (&Method::GET, "/.well-known/jwks.json") => reply(StatusCode::OK, &self.jwks()),
            (&Method::GET, "/healthz") => reply(StatusCode::OK, &json!({ "ok": true })),
            (&Method::POST, "/token") => {
                let body = match request.into_body().collect().await {
                    Ok(body) => body.to_bytes(),
                    Err(error) => return bad_request(&format!("cannot read the body: {error}")),
                };
                let token_request: TokenRequest = match serde_json::from_slice(&body) {
                    Ok(r) => r,
                    Err(error) => {
                        return bad_request(&format!(
                            "expected {{\"sub\", \"groups\", \"token_use\"?, \"ttl_s\"?}}: {error}"
                        ));
                    }
                };
                match self.mint(&token_request) {
                    Ok((token, expires_at)) => reply(
                        StatusCode::OK,
                        &json!({ "token": token, "expires_at": expires_at }),
                    ),
                    Err(why) => bad_request(&why),
                }
            }
            _ => reply(
                StatusCode::NOT_FOUND,
                &json!({ "code": "not_found", "message": "GET /.well-known/jwks.json, POST /token" }),
            ),
        }
    }
}

fn bad_request(message: &str) -> Response<Full<Bytes>> {
    reply(
        StatusCode::BAD_REQUEST,
        &json!({ "code": "bad_request", "message": message }),
    )
}

fn reply(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
