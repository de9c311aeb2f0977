//! Test component: `wasi:keyvalue@0.2.0-draft2` and `wasi:config` through spin-sdk 7's bindings,
//! dispatching on `spin-path-info`:
//! `GET /config[/<key>]`, `GET|PUT|DELETE /kv/<bucket>/<key>`, `GET /keys/<bucket>`,
//! `POST /incr/<bucket>/<key>/<delta>`, `POST /cas-add/<bucket>/<key>` (a compare-and-swap loop
//! adding 1; answers the value written and the retries), `POST /cas-race/<bucket>/<key>`, `PUT /many/<bucket>` (`k=v` lines),
//! `GET /many/<bucket>/<k1,k2,...>`, `DELETE /many/<bucket>/<k1,k2,...>`.

use spin_sdk::experimental::wasi::config::store as config;
use spin_sdk::experimental::wasi::keyvalue::{atomics, batch, store};
use spin_sdk::http::body::IncomingBodyExt as _;
use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;

fn reply(status: u16, body: impl Into<String>) -> anyhow::Result<http::Response<String>> {
    Ok(http::Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(body.into())?)
}

fn failed(error: impl std::fmt::Debug) -> anyhow::Result<http::Response<String>> {
    reply(409, format!("{error:?}"))
}

macro_rules! attempt {
    ($e:expr) => {
        match $e {
            Ok(value) => value,
            Err(error) => return failed(error),
        }
    };
}

#[http_service]
async fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    let info = req
        .headers()
        .get("spin-path-info")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let method = req.method().clone();
    let body = req
        .into_body()
        .bytes()
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let parts: Vec<&str> = info.split('/').filter(|s| !s.is_empty()).collect();
    match (method, parts.as_slice()) {
        (http::Method::GET, ["config"]) => {
            let mut all = attempt!(config::get_all());
            all.sort();
            let lines: Vec<String> = all.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
            reply(200, lines.join("\n"))
        }
        (http::Method::GET, ["config", key]) => match attempt!(config::get(key)) {
            Some(value) => reply(200, value),
            None => reply(404, "no value"),
        },
        (method, ["kv", bucket, key]) => {
            let bucket = attempt!(store::open(bucket));
            match method {
                http::Method::GET => match attempt!(bucket.get(key)) {
                    Some(value) => reply(200, String::from_utf8_lossy(&value).into_owned()),
                    None => reply(404, "absent"),
                },
                http::Method::PUT => {
                    attempt!(bucket.set(key, &body));
                    reply(200, "stored")
                }
                http::Method::DELETE => {
                    attempt!(bucket.delete(key));
                    reply(200, format!("exists={}", attempt!(bucket.exists(key))))
                }
                _ => reply(405, "GET, PUT or DELETE"),
            }
        }
        (http::Method::GET, ["keys", bucket]) => {
            let bucket = attempt!(store::open(bucket));
            let response = attempt!(bucket.list_keys(None));
            let mut keys = response.keys;
            keys.sort();
            reply(200, keys.join("\n"))
        }
        (http::Method::POST, ["incr", bucket, key, delta]) => {
            let bucket = attempt!(store::open(bucket));
            let delta: i64 = delta.parse()?;
            reply(
                200,
                attempt!(atomics::increment(&bucket, key, delta)).to_string(),
            )
        }
        (http::Method::POST, ["cas-add", bucket, key]) => {
            let bucket = attempt!(store::open(bucket));
            let mut cas = attempt!(atomics::Cas::new(&bucket, key));
            let mut retries = 0;
            loop {
                let current = attempt!(cas.current())
                    .map(|v| String::from_utf8_lossy(&v).parse::<u64>().unwrap_or(0))
                    .unwrap_or(0);
                let next = current + 1;
                match atomics::swap(cas, next.to_string().as_bytes()) {
                    Ok(()) => return reply(200, format!("{next} {retries}")),
                    Err(atomics::CasError::CasFailed(fresh)) => {
                        retries += 1;
                        cas = fresh;
                    }
                    Err(atomics::CasError::StoreError(error)) => return failed(error),
                }
            }
        }
        // A compare-and-swap that loses: the value changes between reading and swapping.
        (http::Method::POST, ["cas-race", bucket, key]) => {
            let bucket = attempt!(store::open(bucket));
            let cas = attempt!(atomics::Cas::new(&bucket, key));
            let read = attempt!(cas.current()).map(|v| String::from_utf8_lossy(&v).into_owned());
            attempt!(bucket.set(key, b"changed"));
            match atomics::swap(cas, b"mine") {
                Ok(()) => reply(200, "swapped although the value changed"),
                Err(atomics::CasError::CasFailed(fresh)) => {
                    let now =
                        attempt!(fresh.current()).map(|v| String::from_utf8_lossy(&v).into_owned());
                    reply(409, format!("cas failed: read {read:?}, now {now:?}"))
                }
                Err(atomics::CasError::StoreError(error)) => failed(error),
            }
        }
        (http::Method::PUT, ["many", bucket]) => {
            let bucket = attempt!(store::open(bucket));
            let text = String::from_utf8_lossy(&body).into_owned();
            let pairs: Vec<(String, Vec<u8>)> = text
                .lines()
                .filter_map(|line| line.split_once('='))
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect();
            attempt!(batch::set_many(&bucket, &pairs));
            reply(200, format!("stored {}", pairs.len()))
        }
        (method, ["many", bucket, keys]) => {
            let bucket = attempt!(store::open(bucket));
            let keys: Vec<String> = keys.split(',').map(str::to_string).collect();
            match method {
                http::Method::GET => {
                    let found = attempt!(batch::get_many(&bucket, &keys));
                    let lines: Vec<String> = found
                        .into_iter()
                        .map(|(k, v)| match v {
                            Some(v) => format!("{k}={}", String::from_utf8_lossy(&v)),
                            None => format!("{k} absent"),
                        })
                        .collect();
                    reply(200, lines.join("\n"))
                }
                http::Method::DELETE => {
                    attempt!(batch::delete_many(&bucket, &keys));
                    reply(200, "deleted")
                }
                _ => reply(405, "GET or DELETE"),
            }
        }
        _ => reply(404, "unknown route"),
    }
}
