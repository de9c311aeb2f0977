//! The `dev-issuer` binary over HTTP: its JWKS, minted tokens that verify against it with Cognito's
//! claims, a key that outlives a restart, and clear 400s for bad requests.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::sha2::Sha256;
use rsa::signature::Verifier as _;
use rsa::{BigUint, RsaPublicKey};
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Issuer {
    child: Child,
    url: String,
}

impl Drop for Issuer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(key_file: &std::path::Path) -> Issuer {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_dev-issuer"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--client-id",
            "web",
        ])
        .arg("--key-file")
        .arg(key_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !moa_test_support::port::listens(port) {
        assert!(Instant::now() < deadline, "dev-issuer did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Issuer {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

fn get(url: &str) -> Value {
    reqwest::blocking::get(url).unwrap().json().unwrap()
}

fn mint(issuer: &Issuer, body: Value) -> (u16, Value) {
    let reply = reqwest::blocking::Client::new()
        .post(format!("{}/token", issuer.url))
        .json(&body)
        .send()
        .unwrap();
    (reply.status().as_u16(), reply.json().unwrap())
}

fn decode(part: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// Verifies `token` with the JWKS key of its `kid`; returns its claims.
fn verify(jwks: &Value, token: &str) -> Value {
    let parts: Vec<&str> = token.split('.').collect();
    let header = decode(parts[0]);
    assert_eq!(header["alg"], "RS256");
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .expect("the token's kid is in the JWKS");
    let number = |field: &str| {
        BigUint::from_bytes_be(
            &URL_SAFE_NO_PAD
                .decode(key[field].as_str().unwrap())
                .unwrap(),
        )
    };
    let public = RsaPublicKey::new(number("n"), number("e")).unwrap();
    let signature =
        Signature::try_from(URL_SAFE_NO_PAD.decode(parts[2]).unwrap().as_slice()).unwrap();
    VerifyingKey::<Sha256>::new(public)
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
        .expect("the signature verifies");
    decode(parts[1])
}

#[test]
fn minted_tokens_verify_against_the_jwks_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("keys/dev.pem");
    let issuer = start(&key_file);
    let jwks = get(&format!("{}/.well-known/jwks.json", issuer.url));
    let (status, reply) = mint(&issuer, json!({ "sub": "kim", "groups": ["CUSTOMER"] }));
    assert_eq!(status, 200, "{reply}");
    let claims = verify(&jwks, reply["token"].as_str().unwrap());
    assert_eq!(claims["sub"], "kim");
    assert_eq!(claims["iss"], issuer.url);
    assert_eq!(claims["token_use"], "access");
    assert_eq!(claims["client_id"], "web");
    assert_eq!(claims["cognito:groups"], json!(["CUSTOMER"]));
    assert_eq!(claims["exp"], reply["expires_at"]);
    let (_, id_token) = mint(
        &issuer,
        json!({ "sub": "kim", "token_use": "id", "ttl_s": 60 }),
    );
    let claims = verify(&jwks, id_token["token"].as_str().unwrap());
    assert_eq!(
        (claims["aud"].as_str(), claims.get("client_id")),
        (Some("web"), None)
    );

    // The key is kept: after a restart the old JWKS still verifies new tokens.
    let url = issuer.url.clone();
    drop(issuer);
    let issuer = start(&key_file);
    assert_eq!(get(&format!("{}/.well-known/jwks.json", issuer.url)), jwks);
    let (_, reply) = mint(&issuer, json!({ "sub": "lee", "groups": [] }));
    verify(&jwks, reply["token"].as_str().unwrap());
    assert_ne!(url, "", "restarted");
}

#[test]
fn bad_token_requests_get_400_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = start(&dir.path().join("dev.pem"));
    for (body, reason) in [
        (json!({ "groups": ["ADMIN"] }), "missing field `sub`"),
        (json!({ "sub": " " }), "`sub` is empty"),
        (
            json!({ "sub": "kim", "token_use": "refresh" }),
            "use `access` or `id`",
        ),
        (json!({ "sub": "kim", "ttl_s": 0 }), "`ttl_s` must be"),
        (
            json!({ "sub": "kim", "admin": true }),
            "unknown field `admin`",
        ),
    ] {
        let (status, reply) = mint(&issuer, body);
        assert_eq!(status, 400, "{reply}");
        assert!(
            reply["message"].as_str().unwrap().contains(reason),
            "{reason}: {reply}"
        );
    }
}
