//! Credentials for MSK IAM from a local emulator of the two AWS endpoints a pod uses, speaking
//! their documented APIs: STS `AssumeRoleWithWebIdentity` (IRSA) and the EKS Pod Identity agent.
//! Checks the exchange, the refresh before expiry (with the rotated token file re-read), and the
//! errors a misconfigured role gives.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use moa_msk_iam::{CredentialSource, MskIam};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the emulator was asked: one form (or header map) per request.
type Seen = Arc<Mutex<Vec<BTreeMap<String, String>>>>;

/// Starts an emulator answering with `answer(n, request fields)` for the n-th request (from 0).
async fn emulator(
    answer: impl Fn(usize, &BTreeMap<String, String>) -> (u16, String) + Send + Sync + 'static,
) -> (String, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen: Seen = Default::default();
    let answer = Arc::new(answer);
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (answer, log) = (answer.clone(), log.clone());
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let (answer, log) = (answer.clone(), log.clone());
                        async move {
                            let mut fields: BTreeMap<String, String> = request
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (format!("header:{k}"), v.to_str().unwrap_or("").to_string())
                                })
                                .collect();
                            fields.insert("method".into(), request.method().to_string());
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            for pair in String::from_utf8_lossy(&body).split('&') {
                                if let Some((k, v)) = pair.split_once('=') {
                                    fields.insert(k.to_string(), decode(v));
                                }
                            }
                            let n = {
                                let mut log = log.lock().unwrap();
                                log.push(fields.clone());
                                log.len() - 1
                            };
                            let (status, body) = answer(n, &fields);
                            Ok::<_, std::convert::Infallible>(
                                Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, seen)
}

/// `application/x-www-form-urlencoded` value decoding.
fn decode(value: &str) -> String {
    let bytes = value.replace('+', " ").into_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn sts_credentials(n: usize, expires_in: chrono::Duration) -> String {
    let expiration = (chrono::Utc::now() + expires_in).format("%Y-%m-%dT%H:%M:%SZ");
    format!(
        r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:shop:moa</SubjectFromWebIdentityToken>
    <Credentials>
      <SessionToken>session-{n}/+=</SessionToken>
      <SecretAccessKey>secret-{n}</SecretAccessKey>
      <Expiration>{expiration}</Expiration>
      <AccessKeyId>ASIA{n}</AccessKeyId>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
</AssumeRoleWithWebIdentityResponse>"#
    )
}

#[tokio::test]
async fn irsa_credentials_are_exchanged_signed_with_and_refreshed_before_they_expire() {
    // Credentials that expire 302 s from now are refreshed 300 s early: about 2 s in.
    let (sts, seen) =
        emulator(|n, _| (200, sts_credentials(n, chrono::Duration::seconds(302)))).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "eyJhbGciOiJSUzI1NiJ9.first\n").unwrap();
    let source = CredentialSource::WebIdentity {
        role_arn: "arn:aws:iam::123456789012:role/moa-host".into(),
        token_file: token_file.clone(),
        session_name: "moa-msk-iam".into(),
        sts_endpoint: sts,
    };
    let iam = MskIam::start_with("ap-northeast-2", source).await.unwrap();
    let first = iam.token().unwrap();
    assert_eq!(first.principal, "ASIA0");
    let url = String::from_utf8(
        base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            &first.token,
        )
        .unwrap(),
    )
    .unwrap();
    assert!(
        url.contains("X-Amz-Security-Token=session-0%2F%2B%3D"),
        "the session token is signed along: {url}"
    );
    {
        let seen = seen.lock().unwrap();
        let form = &seen[0];
        assert_eq!(form["method"], "POST");
        assert_eq!(form["Action"], "AssumeRoleWithWebIdentity");
        assert_eq!(form["Version"], "2011-06-15");
        assert_eq!(form["RoleArn"], "arn:aws:iam::123456789012:role/moa-host");
        assert_eq!(form["RoleSessionName"], "moa-msk-iam");
        assert_eq!(form["WebIdentityToken"], "eyJhbGciOiJSUzI1NiJ9.first");
    }

    // EKS rotates the projected token; the refresh reads the new one.
    std::fs::write(&token_file, "eyJhbGciOiJSUzI1NiJ9.second\n").unwrap();
    for _ in 0..100 {
        if iam.credentials().access_key_id == "ASIA1" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(iam.credentials().access_key_id, "ASIA1", "refreshed");
    assert_eq!(iam.token().unwrap().principal, "ASIA1");
    assert_eq!(
        seen.lock().unwrap()[1]["WebIdentityToken"],
        "eyJhbGciOiJSUzI1NiJ9.second"
    );
}

#[tokio::test]
async fn a_role_sts_refuses_is_a_clear_error_at_start() {
    let (sts, _) = emulator(|_, _| {
        (
            403,
            r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error><Type>Sender</Type><Code>AccessDenied</Code><Message>Not authorized to perform sts:AssumeRoleWithWebIdentity</Message></Error>
  <RequestId>1</RequestId>
</ErrorResponse>"#
                .to_string(),
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "jwt").unwrap();
    let source = CredentialSource::WebIdentity {
        role_arn: "arn:aws:iam::123456789012:role/wrong".into(),
        token_file,
        session_name: "moa-msk-iam".into(),
        sts_endpoint: sts,
    };
    let error = MskIam::start_with("ap-northeast-2", source)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        error.contains("AccessDenied")
            && error.contains("arn:aws:iam::123456789012:role/wrong")
            && error.contains("403"),
        "{error}"
    );

    let missing = CredentialSource::WebIdentity {
        role_arn: "arn:aws:iam::123456789012:role/moa-host".into(),
        token_file: "/nonexistent/token".into(),
        session_name: "moa-msk-iam".into(),
        sts_endpoint: "http://127.0.0.1:9".into(),
    };
    let error = MskIam::start_with("ap-northeast-2", missing)
        .await
        .err()
        .expect("no token file")
        .to_string();
    assert!(error.contains("AWS_WEB_IDENTITY_TOKEN_FILE"), "{error}");
}

#[tokio::test]
async fn eks_pod_identity_credentials_are_fetched_with_the_agent_token() {
    let (agent, seen) = emulator(|_, fields| {
        if fields.get("header:authorization").map(String::as_str) != Some("agent-token") {
            return (401, "{}".into());
        }
        (
            200,
            r#"{"AccessKeyId":"ASIAPOD","SecretAccessKey":"pod-secret","Token":"pod-session","AccountId":"123456789012","Expiration":"2099-01-01T00:00:00Z"}"#.into(),
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("eks-pod-identity-token");
    std::fs::write(&token_file, "agent-token\n").unwrap();
    let source = CredentialSource::Container {
        uri: format!("{agent}/v1/credentials"),
        token_file: Some(token_file),
    };
    let iam = MskIam::start_with("ap-northeast-2", source).await.unwrap();
    let credentials = iam.credentials();
    assert_eq!(credentials.access_key_id, "ASIAPOD");
    assert_eq!(credentials.session_token.as_deref(), Some("pod-session"));
    assert_eq!(seen.lock().unwrap()[0]["method"], "GET");
    assert_eq!(iam.token().unwrap().principal, "ASIAPOD");
}
