//! A local token issuer for tests: an RSA key pair made at start, its JWKS served over HTTP at
//! `/.well-known/jwks.json` (fetches counted), and RS256 tokens with Cognito's claims.

pub use moa_dev_issuer::{jwk, now};
use rsa::RsaPrivateKey;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub const CLIENT: &str = "app-client-1";

/// A local token issuer: serves `/.well-known/jwks.json` (counting fetches) and signs tokens.
pub struct Issuer {
    pub url: String,
    pub jwks: Arc<Mutex<String>>,
    pub fetches: Arc<AtomicUsize>,
    pub key: RsaPrivateKey,
    pub other: RsaPrivateKey,
}

impl Issuer {
    pub fn start() -> Issuer {
        let key = moa_dev_issuer::new_key().expect("RSA key");
        let other = moa_dev_issuer::new_key().expect("RSA key");
        let jwks = Arc::new(Mutex::new(
            json!({ "keys": [jwk("k1", &key.to_public_key())] }).to_string(),
        ));
        let fetches = Arc::new(AtomicUsize::new(0));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (served, counter) = (jwks.clone(), fetches.clone());
        std::thread::spawn(move || {
            use std::io::{Read as _, Write as _};
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut buf = [0u8; 4096];
                let n = stream.read(&mut buf).unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]);
                let (status, body) = if head.starts_with("GET /.well-known/jwks.json ") {
                    counter.fetch_add(1, Ordering::SeqCst);
                    ("200 OK", served.lock().unwrap().clone())
                } else {
                    ("404 Not Found", "{}".to_string())
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Issuer {
            url,
            jwks,
            fetches,
            key,
            other,
        }
    }

    /// Claims of a valid access token for `groups`, now, for subject `user-123`.
    pub fn claims(&self, groups: &[&str]) -> Value {
        let now = now();
        json!({
            "sub": "user-123", "username": "kim", "iss": self.url, "token_use": "access",
            "client_id": CLIENT, "cognito:groups": groups,
            "iat": now, "exp": now + 600, "auth_time": now,
        })
    }

    pub fn sign(&self, header: Value, claims: &Value, key: &RsaPrivateKey) -> String {
        moa_dev_issuer::sign(&header, claims, key)
    }

    pub fn token(&self, claims: &Value) -> String {
        self.sign(
            json!({ "alg": "RS256", "kid": "k1", "typ": "JWT" }),
            claims,
            &self.key,
        )
    }
}

impl Issuer {
    /// A valid access token for `subject` in `groups`.
    pub fn token_for(&self, subject: &str, groups: &[&str]) -> String {
        let mut claims = self.claims(groups);
        claims["sub"] = json!(subject);
        claims["username"] = json!(subject);
        self.token(&claims)
    }
}

impl Issuer {
    /// `[variables]` lines (no header) that trust this issuer with the route `rules` (JSON).
    pub fn auth_variables(&self, rules: &str) -> String {
        format!(
            "issuer = {{ default = \"{}\" }}\nclient_ids = {{ default = \"other-client, {CLIENT}\" }}\nrules = {{ default = '{}' }}\n",
            self.url,
            rules.replace('\n', " ")
        )
    }

    /// The `auth` middleware's `[component.auth]` section, reading [`Self::auth_variables`];
    /// `extra` adds lines to its variables.
    pub fn auth_component(&self, extra: &str) -> String {
        let port = self.url.rsplit(':').next().unwrap_or_default();
        format!(
            r#"
[component.auth]
source = "{{auth}}"
key_value_stores = ["default"]
allowed_outbound_hosts = ["http://127.0.0.1:{port}"]
[component.auth.variables]
auth_issuer = "{{{{ issuer }}}}"
auth_client_ids = "{{{{ client_ids }}}}"
auth_rules = "{{{{ rules }}}}"
{extra}
"#
        )
    }
}
