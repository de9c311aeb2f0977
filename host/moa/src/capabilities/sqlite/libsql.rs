//! A remote libSQL database (`[sqlite_database.<label>] type = "libsql"`, as in Spin): statements go
//! to the server over Hrana over HTTP (`POST /v2/pipeline`), one server-side stream per connection.

use super::database::{QueryResult, SqliteError, Value};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value as Json, json};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

/// A configured remote database: its URL and the token every request carries.
pub struct LibsqlDatabase {
    client: reqwest::Client,
    /// `http(s)://host[:port]`, without a trailing `/`.
    url: String,
    token: Option<String>,
}

impl LibsqlDatabase {
    /// `url` as Spin takes it: `libsql://` (TLS), `https://` or `http://`.
    pub fn new(url: &str, token: Option<String>) -> anyhow::Result<Self> {
        let url = match url.split_once("://") {
            Some(("libsql", rest)) => format!("https://{rest}"),
            Some(("https" | "http", _)) => url.to_string(),
            _ => anyhow::bail!(
                "`url` must be a libsql://, https:// or http:// URL of the libSQL server, not `{url}`"
            ),
        };
        let url = url.trim_end_matches('/').to_string();
        reqwest::Url::parse(&url).map_err(|err| anyhow::anyhow!("`url` `{url}`: {err}"))?;
        let client = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()?;
        Ok(LibsqlDatabase { client, url, token })
    }

    /// A new connection: its server-side stream opens with its first statement.
    pub fn connect(&self) -> LibsqlConnection {
        LibsqlConnection {
            client: self.client.clone(),
            token: self.token.clone(),
            stream: Mutex::new(Stream {
                base_url: self.url.clone(),
                baton: None,
            }),
            busy: tokio::sync::Mutex::new(()),
            changes: AtomicU64::new(0),
            last_insert_rowid: AtomicI64::new(0),
        }
    }
}

/// Where the connection's server-side stream continues: the baton of its last answer, and the
/// URL the server asked later requests to go to.
struct Stream {
    base_url: String,
    baton: Option<String>,
}

/// One component's connection: statements run one at a time on one server-side stream, so a
/// transaction a component begins holds across its statements.
pub struct LibsqlConnection {
    client: reqwest::Client,
    token: Option<String>,
    stream: Mutex<Stream>,
    busy: tokio::sync::Mutex<()>,
    changes: AtomicU64,
    last_insert_rowid: AtomicI64,
}

#[derive(Deserialize)]
struct PipelineResponse {
    baton: Option<String>,
    base_url: Option<String>,
    results: Vec<StreamResult>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum StreamResult {
    Ok { response: Json },
    Error { error: HranaError },
}

#[derive(Deserialize)]
struct HranaError {
    message: String,
    code: Option<String>,
}

#[derive(Deserialize)]
struct ExecuteResult {
    cols: Vec<Column>,
    rows: Vec<Vec<Json>>,
    affected_row_count: u64,
    last_insert_rowid: Option<String>,
}

#[derive(Deserialize)]
struct Column {
    name: Option<String>,
}

fn io(message: impl Into<String>) -> SqliteError {
    SqliteError::Io(message.into())
}

impl LibsqlConnection {
    /// Runs one statement to the end on the connection's stream, stopping at `deadline`.
    pub async fn execute(
        &self,
        sql: String,
        params: Vec<Value>,
        deadline: Instant,
    ) -> Result<QueryResult, SqliteError> {
        let _one_at_a_time = self.busy.lock().await;
        let args: Vec<Json> = params.iter().map(to_json).collect();
        let request = json!({
            "type": "execute",
            "stmt": { "sql": sql, "args": args, "want_rows": true },
        });
        let response = tokio::time::timeout_at(deadline.into(), self.pipeline(vec![request]))
            .await
            .map_err(|_| {
                io("the statement was interrupted: it ran past the request's deadline")
            })??;
        let Some(result) = response.into_iter().next() else {
            return Err(io("the libSQL server answered no result"));
        };
        let response = match result {
            StreamResult::Ok { response } => response,
            StreamResult::Error { error } => {
                return Err(match error.code.as_deref() {
                    Some("SQLITE_FULL") => SqliteError::DatabaseFull,
                    _ => io(error.message),
                });
            }
        };
        let result: ExecuteResult = response
            .get("result")
            .cloned()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|err| {
                io(format!(
                    "the libSQL server's answer is not understood: {err}"
                ))
            })?
            .ok_or_else(|| io("the libSQL server's answer has no result"))?;
        self.changes
            .store(result.affected_row_count, Ordering::Relaxed);
        if let Some(rowid) = result.last_insert_rowid.and_then(|r| r.parse().ok()) {
            self.last_insert_rowid.store(rowid, Ordering::Relaxed);
        }
        let rows = result
            .rows
            .into_iter()
            .map(|row| row.iter().map(from_json).collect::<Result<Vec<_>, _>>())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(QueryResult {
            columns: result
                .cols
                .into_iter()
                .map(|c| c.name.unwrap_or_default())
                .collect(),
            rows,
        })
    }

    /// Sends `requests` on the connection's stream and keeps the stream's new baton.
    async fn pipeline(&self, requests: Vec<Json>) -> Result<Vec<StreamResult>, SqliteError> {
        let (url, baton) = {
            let stream = self
                .stream
                .lock()
                .map_err(|_| io("the connection failed earlier"))?;
            (stream.base_url.clone(), stream.baton.clone())
        };
        let response = send(&self.client, &url, self.token.as_deref(), baton, requests).await?;
        if let Ok(mut stream) = self.stream.lock() {
            stream.baton = response.baton;
            if let Some(base_url) = response.base_url {
                stream.base_url = base_url.trim_end_matches('/').to_string();
            }
        }
        Ok(response.results)
    }

    /// `changes()`: rows changed by the connection's last statement.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    /// `last_insert_rowid()`: the row id of the connection's last insert (0 before the first).
    pub fn last_insert_rowid(&self) -> i64 {
        self.last_insert_rowid.load(Ordering::Relaxed)
    }
}

impl Drop for LibsqlConnection {
    /// Closes the server-side stream (the server would drop it after its idle timeout anyway).
    fn drop(&mut self) {
        let Ok(stream) = self.stream.get_mut() else {
            return;
        };
        let (Some(baton), Ok(runtime)) =
            (stream.baton.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let (client, url, token) = (
            self.client.clone(),
            stream.base_url.clone(),
            self.token.clone(),
        );
        runtime.spawn(async move {
            let close = vec![json!({ "type": "close" })];
            if let Err(err) = send(&client, &url, token.as_deref(), Some(baton), close).await {
                tracing::debug!(error = %err, "closing a libSQL stream failed");
            }
        });
    }
}

async fn send(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    baton: Option<String>,
    requests: Vec<Json>,
) -> Result<PipelineResponse, SqliteError> {
    let mut request = client
        .post(format!("{url}/v2/pipeline"))
        .json(&json!({ "baton": baton, "requests": requests }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|err| {
        io(format!(
            "the libSQL server at {url} cannot be reached: {err}"
        ))
    })?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(io(format!(
            "the libSQL server at {url} answered {status}: {}",
            body.chars().take(500).collect::<String>()
        )));
    }
    response.json().await.map_err(|err| {
        io(format!(
            "the libSQL server's answer is not understood: {err}"
        ))
    })
}

fn to_json(value: &Value) -> Json {
    match value {
        Value::Integer(v) => json!({ "type": "integer", "value": v.to_string() }),
        Value::Real(v) => json!({ "type": "float", "value": v }),
        Value::Text(v) => json!({ "type": "text", "value": v }),
        Value::Blob(v) => json!({
            "type": "blob",
            "base64": base64::engine::general_purpose::STANDARD_NO_PAD.encode(v),
        }),
        Value::Null => json!({ "type": "null" }),
    }
}

fn from_json(value: &Json) -> Result<Value, SqliteError> {
    let bad = || {
        io(format!(
            "the libSQL server sent a value not understood: {value}"
        ))
    };
    Ok(match value.get("type").and_then(Json::as_str) {
        Some("null") => Value::Null,
        Some("integer") => Value::Integer(
            value
                .get("value")
                .and_then(Json::as_str)
                .and_then(|v| v.parse().ok())
                .ok_or_else(bad)?,
        ),
        Some("float") => Value::Real(value.get("value").and_then(Json::as_f64).ok_or_else(bad)?),
        Some("text") => Value::Text(
            value
                .get("value")
                .and_then(Json::as_str)
                .ok_or_else(bad)?
                .to_string(),
        ),
        Some("blob") => {
            let text = value.get("base64").and_then(Json::as_str).ok_or_else(bad)?;
            let trimmed = text.trim_end_matches('=');
            Value::Blob(
                base64::engine::general_purpose::STANDARD_NO_PAD
                    .decode(trimmed)
                    .map_err(|_| bad())?,
            )
        }
        _ => return Err(bad()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_hrana_json() {
        for value in [
            Value::Null,
            Value::Integer(i64::MIN),
            Value::Integer(i64::MAX),
            Value::Real(-1.25),
            Value::Text("한국어 ✓".into()),
            Value::Blob((0..=255).collect()),
            Value::Blob(Vec::new()),
        ] {
            assert_eq!(from_json(&to_json(&value)).unwrap(), value);
        }
        assert!(from_json(&json!({"type": "integer", "value": "x"})).is_err());
        assert_eq!(
            from_json(&json!({"type": "blob", "base64": "AAE="})).unwrap(),
            Value::Blob(vec![0, 1])
        );
    }

    #[test]
    fn urls_are_spins() {
        assert_eq!(
            LibsqlDatabase::new("libsql://db.example.com", None)
                .unwrap()
                .url,
            "https://db.example.com"
        );
        assert_eq!(
            LibsqlDatabase::new("http://127.0.0.1:8080/", None)
                .unwrap()
                .url,
            "http://127.0.0.1:8080"
        );
        assert!(LibsqlDatabase::new("postgres://x", None).is_err());
    }
}
