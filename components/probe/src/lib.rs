//! Test component: does on request what the host's tests need to observe (trap, spin, sleep,
//! allocate, files, key-value, variables, outbound HTTP, publish, embeddings, echo), dispatching on `spin-path-info`;
//! anything else answers with the request's headers, one `name: value` per line.

use spin_sdk::http::body::IncomingBodyExt as _;
use spin_sdk::http::{EmptyBody, IntoResponse, Request};
use spin_sdk::http_service;
use spin_sdk::key_value::Store;
use std::time::Duration;

/// Spin 2.x key-value (`fermyon:spin/key-value@2.0.0`), as spin-sdk <= 5 components import it.
mod spin2 {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "moa:host/key-value-v2",
        generate_all,
    });
}

fn reply(status: u16, body: impl Into<String>) -> anyhow::Result<http::Response<String>> {
    Ok(http::Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(body.into())?)
}

#[http_service]
async fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    let info = req
        .headers()
        .get("spin-path-info")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let parts: Vec<&str> = info.split('/').filter(|s| !s.is_empty()).collect();
    match parts.as_slice() {
        ["trap"] => panic!("probe was asked to trap"),
        // A file the component's `files` mount shows it, read through WASI.
        ["file", path @ ..] => match std::fs::read(format!("/{}", path.join("/"))) {
            Ok(bytes) => reply(200, String::from_utf8_lossy(&bytes).into_owned()),
            Err(err) => reply(404, format!("{err}\n")),
        },
        ["spin"] => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        ["print", n] => {
            // n numbered lines on stdout, then one line on stderr that looks like a host log line.
            let n: usize = n.parse()?;
            for i in 0..n {
                println!("probe line {i} of {n} {}", "x".repeat(64));
            }
            eprintln!(
                r#"{{"level":"ERROR","target":"moa::http","message":"forged","forged":true}}"#
            );
            reply(200, format!("printed {n}\n"))
        }
        ["sleep", ms] => {
            spin_sdk::time::sleep(Duration::from_millis(ms.parse()?)).await;
            reply(200, "slept\n")
        }
        ["alloc", mb] => {
            let bytes = mb.parse::<usize>()? << 20;
            let mut block = vec![0u8; bytes];
            for i in (0..bytes).step_by(4096) {
                block[i] = 1;
            }
            reply(
                200,
                format!("allocated {}\n", std::hint::black_box(block).len()),
            )
        }
        ["kv", label, key] => {
            let store = match Store::open(label).await {
                Ok(store) => store,
                Err(err) => return reply(403, format!("open failed: {err:?}\n")),
            };
            match *req.method() {
                http::Method::PUT | http::Method::POST => {
                    let body = req
                        .into_body()
                        .bytes()
                        .await
                        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                    store.set(key, &body).await?;
                    reply(200, "stored\n")
                }
                http::Method::DELETE => {
                    store.delete(key).await?;
                    reply(200, "deleted\n")
                }
                _ => match store.get(key).await? {
                    Some(value) => reply(200, String::from_utf8_lossy(&value).into_owned()),
                    None => reply(404, "no such key\n"),
                },
            }
        }
        ["kv2", label, key] => {
            use spin2::fermyon::spin::key_value::Store as StoreV2;
            let store = match StoreV2::open(label) {
                Ok(store) => store,
                Err(err) => return reply(403, format!("open failed: {err:?}\n")),
            };
            if *req.method() == http::Method::PUT {
                let body = req
                    .into_body()
                    .bytes()
                    .await
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                store
                    .set(key, &body)
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                return reply(200, "stored\n");
            }
            match store.get(key).map_err(|e| anyhow::anyhow!("{e:?}"))? {
                Some(value) => reply(200, String::from_utf8_lossy(&value).into_owned()),
                None => reply(404, "no such key\n"),
            }
        }
        ["keys", label] => {
            let store = match Store::open(label).await {
                Ok(store) => store,
                Err(err) => return reply(403, format!("open failed: {err:?}\n")),
            };
            let keys = store.get_keys().await.collect().await?;
            reply(200, keys.join("\n"))
        }
        ["var", name] => match spin_sdk::variables::get(name).await {
            Ok(value) => reply(200, value),
            Err(err) => reply(404, format!("{err:?}\n")),
        },
        ["env", name] => match std::env::var(name) {
            Ok(value) => reply(200, value),
            Err(_) => reply(404, "unset\n"),
        },
        ["fetch"] => {
            let url = query.strip_prefix("url=").unwrap_or("").to_string();
            let outbound = http::Request::get(url).body(EmptyBody::new())?;
            match spin_sdk::http::send(outbound).await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let body = response
                        .into_body()
                        .bytes()
                        .await
                        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                    reply(
                        200,
                        format!("status {status}\n{}", String::from_utf8_lossy(&body)),
                    )
                }
                Err(err) => reply(502, format!("outbound failed: {err:?}\n")),
            }
        }
        ["publish", topic] => {
            let key = query.strip_prefix("key=").map(|k| k.as_bytes().to_vec());
            let payload = req
                .into_body()
                .bytes()
                .await
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let mut message = moa_sdk::messaging::Message::new(*topic, payload.to_vec())
                .with_header("content-type", "application/json");
            if let Some(key) = key {
                message = message.with_key(key);
            }
            match moa_sdk::messaging::publish(message) {
                Ok(()) => reply(200, "published\n"),
                Err(err) => reply(403, format!("publish failed: {err:?}\n")),
            }
        }
        ["publish-many", topic] => {
            // n messages `<prefix><key>:<seq><size x padding>` over `keys` keys, in batches of `batch`.
            let param = |name: &str, default: usize| -> anyhow::Result<usize> {
                match query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
                {
                    Some(v) => Ok(v.parse()?),
                    None => Ok(default),
                }
            };
            let (n, keys, batch, size) = (
                param("n", 1)?,
                param("keys", 1)?.max(1),
                param("batch", 100)?.max(1),
                param("size", 0)?,
            );
            let padding = "x".repeat(size);
            let prefix = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("prefix="))
                .unwrap_or("");
            let mut pending = Vec::with_capacity(batch);
            for i in 0..n {
                let key = format!("k{}", i % keys);
                let payload = format!("{prefix}{key}:{}{padding}", i / keys);
                pending.push(moa_sdk::messaging::Message::new(*topic, payload).with_key(key));
                if (pending.len() == batch || i + 1 == n)
                    && let Err(err) = moa_sdk::messaging::publish_batch(pending.drain(..))
                {
                    return reply(503, format!("publish failed after {i}: {err:?}\n"));
                }
            }
            reply(200, format!("published {n}\n"))
        }
        ["redis", op, key] => {
            // Spin's outbound Redis: ?addr=redis://host:port; set takes the body as the value.
            let address = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("addr="))
                .unwrap_or("")
                .to_string();
            let connection = match spin_sdk::redis::Connection::open(&address).await {
                Ok(connection) => connection,
                Err(err) => return reply(403, format!("open failed: {err:?}\n")),
            };
            let key = key.to_string();
            let result = match *op {
                "incr" => connection.incr(&key).await.map(|n| n.to_string()),
                "get" => connection.get(&key).await.map(|v| {
                    v.map_or("(nil)".into(), |v| String::from_utf8_lossy(&v).into_owned())
                }),
                "set" => {
                    let body = req
                        .into_body()
                        .bytes()
                        .await
                        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                    connection.set(&key, &body).await.map(|()| "OK".into())
                }
                "sadd" => connection
                    .sadd(&key, &["a", "b", "a"])
                    .await
                    .map(|n| n.to_string()),
                "execute" => connection
                    .execute(
                        "HMGET",
                        [
                            spin_sdk::redis::RedisParameter::Binary(key.clone().into_bytes()),
                            spin_sdk::redis::RedisParameter::Binary(b"f1".to_vec()),
                            spin_sdk::redis::RedisParameter::Binary(b"missing".to_vec()),
                        ],
                    )
                    .await
                    .map(|results| format!("{results:?}")),
                _ => return reply(404, "unknown redis op\n"),
            };
            match result {
                Ok(text) => reply(200, format!("{text}\n")),
                Err(err) => reply(500, format!("redis error: {err:?}\n")),
            }
        }
        ["embed", model] => {
            // Spin's LLM interface, unmodified: one text per body line; answers a summary line
            // then one vector per line (comma-separated).
            let body = req
                .into_body()
                .bytes()
                .await
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let texts: Vec<String> = String::from_utf8_lossy(&body)
                .lines()
                .map(str::to_string)
                .collect();
            let model = spin_sdk::llm::EmbeddingModel::Other(model);
            match spin_sdk::llm::generate_embeddings(model, &texts) {
                Ok(result) => {
                    let mut lines = vec![format!(
                        "count={} dimension={} prompt_tokens={}",
                        result.embeddings.len(),
                        result.embeddings.first().map_or(0, Vec::len),
                        result.usage.prompt_token_count
                    )];
                    lines.extend(
                        result
                            .embeddings
                            .iter()
                            .map(|v| v.iter().map(f32::to_string).collect::<Vec<_>>().join(",")),
                    );
                    reply(200, lines.join("\n"))
                }
                Err(err @ spin_sdk::llm::Error::ModelNotSupported) => {
                    reply(404, format!("{err:?}\n"))
                }
                Err(err @ spin_sdk::llm::Error::InvalidInput(_)) => {
                    reply(400, format!("{err:?}\n"))
                }
                Err(err) => reply(500, format!("{err:?}\n")),
            }
        }
        ["echo"] => {
            let body = req
                .into_body()
                .bytes()
                .await
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            reply(200, format!("{} bytes\n", body.len()))
        }
        _ => {
            let mut lines: Vec<String> = req
                .headers()
                .iter()
                .map(|(k, v)| format!("{}: {}", k, v.to_str().unwrap_or("?")))
                .collect();
            lines.sort();
            lines.push(format!("uri: {}", req.uri()));
            lines.insert(0, format!("probe: nothing to do for {info:?}"));
            reply(200, lines.join("\n"))
        }
    }
}
