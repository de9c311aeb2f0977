//! The `auth` middleware component in front of a business component, composed with Spin's
//! `dependencies.middleware` syntax: real RS256 tokens from a local issuer whose JWKS is served
//! over HTTP. Valid tokens pass with the identity as headers; every kind of bad token is refused
//! with the right status and reason, and a refused request never reaches the component.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::issuer::{CLIENT, Issuer, jwk, now};
use common::{AppDir, Moa, Options, Reply, request};
use reqwest::Method;
use rsa::sha2::Sha256;
use serde_json::{Value, json};
use std::sync::atomic::Ordering;

/// Routes under `/api`: the business component is the probe, which echoes the headers it got.
const RULES: &str = r#"[
  {"method": "GET", "path": "/api/public/...", "public": true},
  {"method": ["POST", "GET"], "path": "/api/orders/...", "groups": ["CUSTOMER", "ADMIN"]},
  {"method": "PUT", "path": "/api/stores/:id", "groups": ["OWNER", "ADMIN"]},
  {"method": "GET", "path": "/api/me/...", "token_use": "id"},
  {"method": "*", "path": "/api/admin/...", "groups": ["ADMIN"]}
]"#;

fn app(issuer: &Issuer) -> (AppDir, Moa) {
    let manifest = format!(
        r#"
spin_manifest_version = 2
[application]
name = "auth-test"
[variables]
{variables}[[trigger.http]]
route = "/api/..."
component = "backend"
dependencies.middleware = [{{ component = "auth" }}]
[[trigger.http]]
route = "/open/..."
component = "backend"
[component.backend]
source = "{{probe}}"
{auth}"#,
        variables = issuer.auth_variables(RULES),
        auth = issuer.auth_component("auth_leeway_s = \"30\"\nauth_jwks_refetch_s = \"2\""),
    );
    let app = AppDir::new(&manifest);
    let moa = Moa::start(&app, Options::default());
    (app, moa)
}

fn call(moa: &Moa, method: Method, path: &str, token: Option<&str>) -> Reply {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![
        ("x-moa-auth-subject", "forged-admin"),
        ("x-moa-auth-groups", "ADMIN"),
    ];
    if let Some(bearer) = &bearer {
        headers.push(("authorization", bearer.as_str()));
    }
    request(method, &format!("{}{path}", moa.url), &headers, None)
}

/// The reason code of a denial, after checking it is JSON with the right status.
fn denied(reply: &Reply, status: u16) -> String {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert!(
        !reply.body.contains("x-moa-auth"),
        "a denied request reached the component: {}",
        reply.body
    );
    let body: Value = serde_json::from_str(&reply.body).expect("a JSON body");
    if status == 401 {
        assert!(
            reply
                .header("www-authenticate")
                .is_some_and(|h| h.starts_with("Bearer")),
            "401 without WWW-Authenticate"
        );
    }
    body["error"].as_str().unwrap_or_default().to_string()
}

#[test]
fn valid_tokens_pass_with_the_identity_and_forged_headers_are_stripped() {
    let issuer = Issuer::start();
    let (_app, moa) = app(&issuer);
    let token = issuer.token(&issuer.claims(&["CUSTOMER"]));
    let reply = call(&moa, Method::POST, "/api/orders/1", Some(&token));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply.body.contains("x-moa-auth-subject: user-123"),
        "{}",
        reply.body
    );
    assert!(
        reply.body.contains("x-moa-auth-username: kim"),
        "{}",
        reply.body
    );
    assert!(
        reply.body.contains("x-moa-auth-groups: CUSTOMER"),
        "{}",
        reply.body
    );
    assert!(!reply.body.contains("forged-admin"), "{}", reply.body);

    // Public routes pass without a token, and nobody can claim an identity on them.
    let reply = call(&moa, Method::GET, "/api/public/menu", None);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(!reply.body.contains("x-moa-auth"), "{}", reply.body);
    // Nor on a route with no middleware at all.
    let reply = call(&moa, Method::GET, "/open/x", None);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(!reply.body.contains("x-moa-auth"), "{}", reply.body);

    // An id token on an id route; the JWKS was fetched once and then served from the cache.
    let mut id = issuer.claims(&[]);
    id["token_use"] = json!("id");
    id["aud"] = json!(CLIENT);
    id.as_object_mut().unwrap().remove("client_id");
    let reply = call(
        &moa,
        Method::GET,
        "/api/me/profile",
        Some(&issuer.token(&id)),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply.body.contains("x-moa-auth-token-use: id"),
        "{}",
        reply.body
    );
    assert_eq!(
        issuer.fetches.load(Ordering::SeqCst),
        1,
        "the JWKS is cached"
    );
}

#[test]
fn groups_decide_per_route() {
    let issuer = Issuer::start();
    let (_app, moa) = app(&issuer);
    let cases: &[(&[&str], Method, &str, u16)] = &[
        (&["CUSTOMER"], Method::POST, "/api/orders/1", 200),
        (&["CUSTOMER"], Method::PUT, "/api/stores/7", 403),
        (&["CUSTOMER"], Method::GET, "/api/admin/users", 403),
        (&["OWNER"], Method::PUT, "/api/stores/7", 200),
        (&["OWNER"], Method::POST, "/api/orders/1", 403),
        (&["OWNER"], Method::DELETE, "/api/admin/users", 403),
        (&["ADMIN"], Method::POST, "/api/orders/1", 200),
        (&["ADMIN"], Method::PUT, "/api/stores/7", 200),
        (&["ADMIN"], Method::DELETE, "/api/admin/users", 200),
        (&[], Method::POST, "/api/orders/1", 403),
        (&["CUSTOMER", "OWNER"], Method::PUT, "/api/stores/7", 200),
        // No rule for this method and path: refused whoever asks.
        (&["ADMIN"], Method::DELETE, "/api/orders/1", 403),
    ];
    for (groups, method, path, status) in cases {
        let token = issuer.token(&issuer.claims(groups));
        let reply = call(&moa, method.clone(), path, Some(&token));
        if *status == 200 {
            assert_eq!(
                reply.status, 200,
                "{groups:?} {method} {path}: {}",
                reply.body
            );
        } else {
            let code = denied(&reply, *status);
            assert!(
                code == "missing_permission" || code == "no_rule",
                "{groups:?} {method} {path}: {code}"
            );
        }
    }
}

#[test]
fn bad_tokens_are_refused_with_the_right_reason() {
    let issuer = Issuer::start();
    let (_app, moa) = app(&issuer);
    let path = "/api/orders/1";
    let good = issuer.claims(&["CUSTOMER"]);
    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = good.clone();
        change(&mut claims);
        issuer.token(&claims)
    };
    let header = |alg: &str| URL_SAFE_NO_PAD.encode(json!({ "alg": alg, "kid": "k1" }).to_string());
    let payload = URL_SAFE_NO_PAD.encode(good.to_string());

    // alg none, and HS256 "signed" with the issuer's public key as the HMAC secret.
    let none = format!("{}.{payload}.", header("none"));
    let hs256 = {
        use hmac::Mac as _;
        let public_pem = rsa::pkcs8::EncodePublicKey::to_public_key_pem(
            &issuer.key.to_public_key(),
            rsa::pkcs8::LineEnding::LF,
        )
        .unwrap();
        let signed = format!("{}.{payload}", header("HS256"));
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(public_pem.as_bytes()).unwrap();
        mac.update(signed.as_bytes());
        format!(
            "{signed}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    };
    // A valid token whose payload was changed afterwards (groups raised to ADMIN).
    let tampered = {
        let token = issuer.token(&good);
        let parts: Vec<&str> = token.split('.').collect();
        let mut claims = good.clone();
        claims["cognito:groups"] = json!(["ADMIN"]);
        format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            parts[2]
        )
    };
    let unknown_kid = issuer.sign(json!({ "alg": "RS256", "kid": "k9" }), &good, &issuer.other);
    let wrong_key = issuer.sign(json!({ "alg": "RS256", "kid": "k1" }), &good, &issuer.other);
    let old = now() - 3600;
    let cases: Vec<(&str, Option<String>, u16, &str)> = vec![
        ("no token", None, 401, "missing_token"),
        ("garbage", Some("not.a.jwt".into()), 401, "malformed_token"),
        ("alg none", Some(none), 401, "unsupported_alg"),
        (
            "HS256 with the public key",
            Some(hs256),
            401,
            "unsupported_alg",
        ),
        ("tampered payload", Some(tampered), 401, "bad_signature"),
        (
            "signed by another key",
            Some(wrong_key),
            401,
            "bad_signature",
        ),
        ("unknown kid", Some(unknown_kid), 401, "unknown_kid"),
        (
            "expired",
            Some(with(&|c| {
                c["exp"] = json!(old);
                c["iat"] = json!(old - 600);
            })),
            401,
            "token_expired",
        ),
        (
            "not yet valid",
            Some(with(&|c| c["nbf"] = json!(now() + 3600))),
            401,
            "token_not_yet_valid",
        ),
        (
            "issued in the future",
            Some(with(&|c| c["iat"] = json!(now() + 3600))),
            401,
            "token_not_yet_valid",
        ),
        (
            "wrong iss",
            Some(with(&|c| c["iss"] = json!("https://evil.example"))),
            401,
            "wrong_issuer",
        ),
        (
            "wrong client_id",
            Some(with(&|c| c["client_id"] = json!("someone-else"))),
            401,
            "wrong_audience",
        ),
        (
            "id token on an access route",
            Some(with(&|c| {
                c["token_use"] = json!("id");
                c["aud"] = json!(CLIENT);
            })),
            401,
            "wrong_token_use",
        ),
        (
            "no token_use",
            Some(with(&|c| {
                c.as_object_mut().unwrap().remove("token_use");
            })),
            401,
            "wrong_token_use",
        ),
        (
            "missing groups",
            Some(with(&|c| {
                c.as_object_mut().unwrap().remove("cognito:groups");
            })),
            403,
            "missing_permission",
        ),
    ];
    for (what, token, status, code) in cases {
        let reply = call(&moa, Method::POST, path, token.as_deref());
        assert_eq!(denied(&reply, status), code, "{what}: {}", reply.body);
    }
    // An id token with the wrong audience on an id route.
    let mut id = good.clone();
    id["token_use"] = json!("id");
    id["aud"] = json!("someone-else");
    let reply = call(&moa, Method::GET, "/api/me/x", Some(&issuer.token(&id)));
    assert_eq!(denied(&reply, 401), "wrong_audience");
}

#[test]
fn unknown_kids_refetch_the_jwks_at_most_once_per_window_and_rotation_works() {
    let issuer = Issuer::start();
    let (_app, moa) = app(&issuer);
    let good = issuer.claims(&["CUSTOMER"]);
    assert_eq!(
        call(
            &moa,
            Method::POST,
            "/api/orders/1",
            Some(&issuer.token(&good))
        )
        .status,
        200
    );
    assert_eq!(issuer.fetches.load(Ordering::SeqCst), 1);
    // A burst of tokens with made-up key ids: at most one more fetch within the window.
    for i in 0..20 {
        let token = issuer.sign(
            json!({ "alg": "RS256", "kid": format!("made-up-{i}") }),
            &good,
            &issuer.other,
        );
        assert_eq!(
            denied(
                &call(&moa, Method::POST, "/api/orders/1", Some(&token)),
                401
            ),
            "unknown_kid"
        );
    }
    let after_burst = issuer.fetches.load(Ordering::SeqCst);
    assert!(
        after_burst <= 2,
        "{after_burst} JWKS fetches for 20 unknown kids"
    );

    // The issuer rotates to a new key: after the window, its tokens pass (one refetch).
    *issuer.jwks.lock().unwrap() = json!({ "keys": [
        jwk("k1", &issuer.key.to_public_key()), jwk("k2", &issuer.other.to_public_key())
    ]})
    .to_string();
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let rotated = issuer.sign(json!({ "alg": "RS256", "kid": "k2" }), &good, &issuer.other);
    let reply = call(&moa, Method::POST, "/api/orders/1", Some(&rotated));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(issuer.fetches.load(Ordering::SeqCst), after_burst + 1);
}
