//! MSK IAM end to end on the Kafka wire: `moa up` with `aws_msk_iam` on its Kafka broker, against
//! an emulator of an MSK broker's IAM listener (the Kafka protocol's ApiVersions, SaslHandshake and
//! SaslAuthenticate with OAUTHBEARER, as MSK serves them). The producer and the trigger's consumer
//! both authenticate with a token signed from the pod's AWS credentials; the emulator checks it
//! the way MSK does (action, region, credential scope, session token, freshness, signature).
//! Everything after authentication (metadata, produce) is real Kafka and tested elsewhere.

mod common;

use common::{AppDir, Moa, Options, wait_until};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

const ACCESS_KEY: &str = "AKIAMOATESTKEY";
const SECRET_KEY: &str = "moa/test+secret/key";
const SESSION_TOKEN: &str = "FwoGZXIvYXdzEXAMPLE/session+token==";

/// One SaslAuthenticate the emulator saw: the connection's client id and the decoded token URL.
#[derive(Debug, Clone)]
struct Authenticated {
    client_id: String,
    url: String,
    accepted: bool,
}

/// An MSK broker's IAM listener, up to the end of authentication.
struct MskEmulator {
    address: String,
    seen: Arc<Mutex<Vec<Authenticated>>>,
}

impl MskEmulator {
    fn start() -> MskEmulator {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let seen: Arc<Mutex<Vec<Authenticated>>> = Default::default();
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let log = log.clone();
                std::thread::spawn(move || serve(stream, &log));
            }
        });
        MskEmulator { address, seen }
    }

    fn seen(&self) -> Vec<Authenticated> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(mut stream: TcpStream, log: &Mutex<Vec<Authenticated>>) {
    loop {
        let mut size = [0u8; 4];
        if stream.read_exact(&mut size).is_err() {
            return;
        }
        let mut request = vec![0u8; i32::from_be_bytes(size) as usize];
        if stream.read_exact(&mut request).is_err() {
            return;
        }
        let key = i16::from_be_bytes([request[0], request[1]]);
        let version = i16::from_be_bytes([request[2], request[3]]);
        let correlation = &request[4..8];
        let client_len = i16::from_be_bytes([request[8], request[9]]).max(0) as usize;
        let client_id = String::from_utf8_lossy(&request[10..10 + client_len]).into_owned();
        let body_at = 10 + client_len;
        let mut response = correlation.to_vec();
        match key {
            // ApiVersions: v3 is flexible (compact arrays, tagged fields); older versions are not;
            // a newer one is answered UNSUPPORTED_VERSION in the v0 form, as brokers do.
            18 => {
                let apis: [(i16, i16, i16); 4] = [(18, 0, 3), (17, 0, 1), (36, 0, 1), (3, 0, 4)];
                if version == 3 {
                    response.extend(0i16.to_be_bytes());
                    response.push(apis.len() as u8 + 1);
                    for (k, min, max) in apis {
                        response.extend(k.to_be_bytes());
                        response.extend(min.to_be_bytes());
                        response.extend(max.to_be_bytes());
                        response.push(0);
                    }
                    response.extend(0i32.to_be_bytes());
                    response.push(0);
                } else {
                    let error: i16 = if version > 3 { 35 } else { 0 };
                    response.extend(error.to_be_bytes());
                    response.extend((apis.len() as i32).to_be_bytes());
                    for (k, min, max) in apis {
                        response.extend(k.to_be_bytes());
                        response.extend(min.to_be_bytes());
                        response.extend(max.to_be_bytes());
                    }
                    if (1..=3).contains(&version) {
                        response.extend(0i32.to_be_bytes());
                    }
                }
            }
            // SaslHandshake: MSK's IAM listener offers OAUTHBEARER (and AWS_MSK_IAM).
            17 => {
                let len = i16::from_be_bytes([request[body_at], request[body_at + 1]]) as usize;
                let mechanism = &request[body_at + 2..body_at + 2 + len];
                let error: i16 = if mechanism == b"OAUTHBEARER" { 0 } else { 33 };
                response.extend(error.to_be_bytes());
                response.extend(1i32.to_be_bytes());
                response.extend(11i16.to_be_bytes());
                response.extend(b"OAUTHBEARER");
            }
            // SaslAuthenticate v0/v1: the client's first OAUTHBEARER message (RFC 7628),
            // `n,,\x01auth=Bearer <token>\x01\x01`.
            36 => {
                let len = i32::from_be_bytes(request[body_at..body_at + 4].try_into().unwrap());
                let message = &request[body_at + 4..body_at + 4 + len as usize];
                let message = String::from_utf8_lossy(message);
                let token = message
                    .split('\x01')
                    .find_map(|part| part.strip_prefix("auth=Bearer "))
                    .unwrap_or_default();
                let url = base64::Engine::decode(
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                    token,
                )
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .unwrap_or_default();
                let accepted = verify(&url).is_ok();
                log.lock().unwrap().push(Authenticated {
                    client_id,
                    url,
                    accepted,
                });
                if accepted {
                    response.extend(0i16.to_be_bytes());
                    response.extend((-1i16).to_be_bytes());
                    response.extend(0i32.to_be_bytes());
                    if version >= 1 {
                        response.extend(900_000i64.to_be_bytes());
                    }
                } else {
                    // SASL_AUTHENTICATION_FAILED
                    let text = b"[moa-msk-emulator] Access denied";
                    response.extend(58i16.to_be_bytes());
                    response.extend((text.len() as i16).to_be_bytes());
                    response.extend(text);
                    response.extend(0i32.to_be_bytes());
                    if version >= 1 {
                        response.extend(0i64.to_be_bytes());
                    }
                }
            }
            // After authentication the client asks for metadata; this emulator stops there.
            _ => continue,
        }
        let mut framed = (response.len() as i32).to_be_bytes().to_vec();
        framed.extend(response);
        if stream.write_all(&framed).is_err() {
            return;
        }
    }
}

/// What MSK checks of a token URL, with the secret the emulator knows for `ACCESS_KEY`.
fn verify(url: &str) -> Result<(), String> {
    let query = url
        .strip_prefix("https://kafka.ap-northeast-2.amazonaws.com/?")
        .ok_or("not a kafka.ap-northeast-2 URL")?;
    let params: std::collections::BTreeMap<&str, &str> =
        query.split('&').filter_map(|p| p.split_once('=')).collect();
    let get = |k: &str| params.get(k).copied().ok_or(format!("no {k}"));
    if get("Action")? != "kafka-cluster%3AConnect" {
        return Err("wrong action".into());
    }
    let date = get("X-Amz-Date")?;
    let signed_at = chrono::NaiveDateTime::parse_from_str(date, "%Y%m%dT%H%M%SZ")
        .map_err(|e| e.to_string())?
        .and_utc();
    let age = chrono::Utc::now() - signed_at;
    if age > chrono::Duration::seconds(900) || age < chrono::Duration::seconds(-60) {
        return Err(format!("expired or from the future: {date}"));
    }
    let scope = format!(
        "{ACCESS_KEY}%2F{}%2Fap-northeast-2%2Fkafka-cluster%2Faws4_request",
        &date[..8]
    );
    if get("X-Amz-Credential")? != scope {
        return Err("wrong credential scope".into());
    }
    if get("X-Amz-Security-Token")? != moa_msk_iam::sigv4::encode(SESSION_TOKEN) {
        return Err("wrong session token".into());
    }
    // The signature MSK would compute for these credentials at that time.
    let expected = moa_msk_iam::token_for(
        &moa_msk_iam::Credentials {
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: SECRET_KEY.into(),
            session_token: Some(SESSION_TOKEN.into()),
            expires_at: None,
        },
        "ap-northeast-2",
        signed_at,
    );
    let expected = String::from_utf8(
        base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            &expected.token,
        )
        .map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let signature = |u: &str| {
        u.split('&')
            .find_map(|p| p.strip_prefix("X-Amz-Signature="))
            .map(str::to_string)
    };
    if signature(url) != signature(&expected) || signature(url).is_none() {
        return Err("bad signature".into());
    }
    Ok(())
}

fn app(emulator: &MskEmulator, secret: &str) -> (AppDir, Options) {
    let manifest = r#"
spin_manifest_version = 2
[application]
name = "msk"
[[trigger.http]]
route = "/..."
component = "front"
[[trigger.kafka]]
component = "relay"
topics = ["orders"]
group = "relay"
[component.front]
source = "{probe}"
allowed_publish_topics = ["orders"]
[component.relay]
source = "{relay}"
"#;
    let app = AppDir::new(manifest);
    // The emulator speaks plain TCP; MSK's IAM listener is TLS (the default, SASL_SSL).
    let rc = app.write(
        "runtime-config.toml",
        &format!(
            "[messaging.brokers.msk]\ntype = \"kafka\"\nbrokers = \"{}\"\naws_msk_iam = {{ region = \"ap-northeast-2\" }}\nproperties = {{ \"security.protocol\" = \"SASL_PLAINTEXT\" }}\n",
            emulator.address
        ),
    );
    let mut options = Options::runtime_config(&rc);
    options.env.extend([
        ("AWS_ACCESS_KEY_ID".to_string(), ACCESS_KEY.to_string()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), secret.to_string()),
        ("AWS_SESSION_TOKEN".to_string(), SESSION_TOKEN.to_string()),
        ("MOA_CONSUMER_NAME".to_string(), "msk-consumer".to_string()),
    ]);
    (app, options)
}

#[test]
fn producer_and_consumer_authenticate_to_msk_with_iam_tokens() {
    let emulator = MskEmulator::start();
    let (app, options) = app(&emulator, SECRET_KEY);
    let moa = Moa::start(&app, options);
    let both = |seen: &[Authenticated]| {
        seen.iter().any(|a| a.client_id == "rdkafka")
            && seen.iter().any(|a| a.client_id == "msk-consumer")
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !both(&emulator.seen()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the producer and the consumer did not both authenticate: {:?}\n{}",
            emulator.seen(),
            moa.stderr()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for auth in emulator.seen() {
        assert!(
            auth.accepted,
            "{} sent a token MSK would refuse: {}: {}\n{}",
            auth.client_id,
            verify(&auth.url).unwrap_err(),
            auth.url,
            moa.stderr()
        );
    }
    assert!(
        moa.stderr().contains("authenticates with MSK IAM"),
        "{}",
        moa.stderr()
    );
}

#[test]
fn wrong_credentials_are_refused_by_the_broker_and_logged() {
    let emulator = MskEmulator::start();
    let (app, options) = app(&emulator, "not-the-secret");
    let moa = Moa::start(&app, options);
    wait_until("a refused authentication", || {
        emulator.seen().iter().any(|a| !a.accepted)
    });
    wait_until("the refusal is logged", || {
        moa.stderr().contains("Access denied")
    });
}

#[test]
fn msk_iam_without_credentials_is_a_clear_startup_error() {
    let emulator = MskEmulator::start();
    let (app, mut options) = app(&emulator, SECRET_KEY);
    options.env.retain(|(k, _)| !k.starts_with("AWS_"));
    let error = match Moa::try_start(&app, options) {
        Ok(moa) => panic!("started without AWS credentials:\n{}", moa.stderr()),
        Err(stderr) => stderr,
    };
    assert!(
        error.contains("aws_msk_iam") && error.contains("IRSA"),
        "{error}"
    );
}
