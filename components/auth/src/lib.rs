//! The `auth` middleware: verifies the request's Cognito-style JWT (RS256, key from the issuer's
//! JWKS) and the route's group rule, then passes the request on with the verified identity.
//!
//! Put it in front of a component with Spin's syntax:
//! `dependencies.middleware = [{ component = "auth" }]` on the `[[trigger.http]]`. The identity
//! reaches the next component as `x-moa-auth-subject`, `x-moa-auth-username`,
//! `x-moa-auth-groups` and `x-moa-auth-token-use`; the host strips any copy a client sends.
//! Denials never reach the next component: 401 (no, bad or expired token, with
//! `WWW-Authenticate`) or 403 (valid token, missing permission), with a JSON body
//! `{"error": <reason code>, "message": ...}`.

mod bindings {
    // The host checks RS256 signatures natively (moa:crypto/signatures), remembering the ones
    // that verified; docs/auth.md has the threat model.
    wit_bindgen::generate!({
        path: "../../wit",
        world: "moa:host/crypto",
        generate_all,
    });
}

mod config;
mod jwks;
mod jwt;
mod rules;

use config::Config;
use jwt::Denial;
use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;

#[http_service]
async fn handle(mut req: Request) -> anyhow::Result<impl IntoResponse> {
    let config = match Config::load().await {
        Ok(config) => config,
        Err(error) => {
            return Ok(deny(&Denial::misconfigured(format!("{error:#}"))).into_response()?);
        }
    };
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let Some(rule) = config.rules.find(&method, &path) else {
        return Ok(deny(&Denial::forbidden(
            "no_rule",
            format!("no access rule allows {method} {path}"),
        ))
        .into_response()?);
    };
    if !rule.public {
        let token = match bearer(&req) {
            Some(token) => token,
            None => {
                return Ok(deny(&Denial::unauthorized(
                    "missing_token",
                    "send `Authorization: Bearer <token>`",
                ))
                .into_response()?);
            }
        };
        let identity = match jwt::verify(&config, rule, &token).await {
            Ok(identity) => identity,
            Err(denial) => return Ok(deny(&denial).into_response()?),
        };
        let headers = req.headers_mut();
        for (name, value) in identity.headers() {
            if let Ok(value) = http::HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
    }
    let response = spin_sdk::http::next(req).await?;
    Ok(response.into_response()?)
}

/// The `Authorization: Bearer` token, if there is one.
fn bearer(req: &Request) -> Option<String> {
    let value = req
        .headers()
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// The denial as a JSON response (with `WWW-Authenticate` on 401).
fn deny(denial: &Denial) -> http::Response<String> {
    let body = serde_json::json!({ "error": denial.code, "message": denial.message }).to_string();
    let mut builder = http::Response::builder()
        .status(denial.status)
        .header("content-type", "application/json");
    if denial.status == 401 {
        builder = builder.header(
            "www-authenticate",
            format!(
                "Bearer realm=\"moa\", error=\"invalid_token\", error_description=\"{}\"",
                denial.code
            ),
        );
    }
    builder
        .body(body)
        .unwrap_or_else(|_| http::Response::new(String::new()))
}
