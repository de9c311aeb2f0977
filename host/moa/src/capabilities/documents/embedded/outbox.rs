//! The embedded store's outbox and inbox as tables of its own: staged messages numbered by the
//! writer in commit order, inbox marks keyed by (consumer, message id), and the relay's lease.

use super::super::ops::DocumentError;
use super::super::outbox::{INBOX, Staged, collections, lease_lost};
use super::map_sqlite;
use crate::capabilities::messaging::OutgoingMessage;
use rusqlite::{Connection, ErrorCode};
use std::path::Path;

/// The tables. `seq` is given by the writer as it commits, so it is the commit order: the relay
/// reads a range after its cursor and every key's messages come in the order they committed.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS moa_outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL,
    topic      TEXT NOT NULL,
    key        BLOB,
    payload    BLOB NOT NULL,
    headers    BLOB NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS moa_inbox (
    consumer   TEXT NOT NULL,
    message_id TEXT NOT NULL,
    at_ms      INTEGER NOT NULL,
    PRIMARY KEY (consumer, message_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS moa_inbox_at ON moa_inbox (at_ms);
CREATE TABLE IF NOT EXISTS moa_lease (
    name     TEXT PRIMARY KEY,
    holder   TEXT NOT NULL,
    until_ms INTEGER NOT NULL
);";

/// A message a transaction staged, written at its commit.
#[derive(Debug, Clone)]
pub struct StagedRow {
    pub id: String,
    pub message: OutgoingMessage,
    pub created_ms: i64,
}

/// What the relay asks of the writer.
#[derive(Debug)]
pub enum RelayWork {
    /// Take or renew the lease (`until_ms` in the past gives it up).
    Lease {
        holder: String,
        now_ms: i64,
        until_ms: i64,
    },
    /// Delete the messages up to `through` if `holder` holds the lease.
    Remove {
        through: i64,
        holder: String,
        until_ms: i64,
    },
    /// Delete up to `max` inbox marks made before `before_ms`.
    PruneInbox { before_ms: i64, max: u64 },
}

/// Headers as bytes: per header a u32 name length, the name, a u32 value length, the value.
pub fn encode_headers(headers: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        for part in [name.as_bytes(), value.as_slice()] {
            out.extend_from_slice(&(part.len() as u32).to_le_bytes());
            out.extend_from_slice(part);
        }
    }
    out
}

/// The inverse of [`encode_headers`]; `None` when the bytes are not such a list.
pub fn decode_headers(mut bytes: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    fn part<'a>(bytes: &mut &'a [u8]) -> Option<&'a [u8]> {
        let length = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        let value = bytes.get(4..4 + length)?;
        *bytes = &bytes[4 + length..];
        Some(value)
    }
    let mut headers = Vec::new();
    while !bytes.is_empty() {
        let name = String::from_utf8(part(&mut bytes)?.to_vec()).ok()?;
        let value = part(&mut bytes)?.to_vec();
        headers.push((name, value));
    }
    Some(headers)
}

/// In the writer, at a transaction's commit: its inbox marks (a mark another transaction made
/// since the snapshot is a write conflict) and its staged messages.
pub fn write(
    connection: &Connection,
    path: &Path,
    marks: &[(String, String)],
    staged: &[StagedRow],
    now_ms: i64,
) -> Result<(), DocumentError> {
    let sqlite = |e| map_sqlite(path, e);
    for (consumer, message_id) in marks {
        let inserted = connection
            .prepare_cached(
                "INSERT INTO moa_inbox (consumer, message_id, at_ms) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut s| s.execute((consumer, message_id, now_ms)));
        match inserted {
            Ok(_) => {}
            Err(rusqlite::Error::SqliteFailure(code, _))
                if code.code == ErrorCode::ConstraintViolation =>
            {
                return Err(DocumentError::WriteConflict(format!(
                    "another transaction marked message `{message_id}` for `{consumer}` first; run the transaction again"
                )));
            }
            Err(other) => return Err(sqlite(other)),
        }
    }
    insert_staged(connection, staged).map_err(sqlite)
}

/// Appends staged messages; each gets the next `seq`.
fn insert_staged(connection: &Connection, staged: &[StagedRow]) -> rusqlite::Result<()> {
    let mut insert = connection.prepare_cached(
        "INSERT INTO moa_outbox (id, topic, key, payload, headers, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for row in staged {
        insert.execute((
            &row.id,
            &row.message.topic,
            &row.message.key,
            &row.message.payload,
            encode_headers(&row.message.headers),
            row.created_ms,
        ))?;
    }
    Ok(())
}

/// Whether `consumer` marked `message_id` in what `connection` sees.
pub fn is_marked(
    connection: &Connection,
    consumer: &str,
    message_id: &str,
) -> rusqlite::Result<bool> {
    connection
        .prepare_cached("SELECT 1 FROM moa_inbox WHERE consumer = ?1 AND message_id = ?2")?
        .exists((consumer, message_id))
}

/// Up to `limit` staged messages after `after`, in commit order.
pub fn pending(connection: &Connection, after: i64, limit: usize) -> rusqlite::Result<Vec<Staged>> {
    let mut statement = connection.prepare_cached(
        "SELECT seq, id, topic, key, payload, headers, created_ms FROM moa_outbox
         WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = statement.query_map((after, limit as i64), |row| {
        let headers: Vec<u8> = row.get(5)?;
        Ok(Staged {
            seq: row.get(0)?,
            id: row.get(1)?,
            created_ms: row.get(6)?,
            message: OutgoingMessage {
                topic: row.get(2)?,
                key: row.get(3)?,
                payload: row.get(4)?,
                // Only the writer encodes them; an unreadable list is sent without headers.
                headers: decode_headers(&headers).unwrap_or_default(),
            },
        })
    })?;
    rows.collect()
}

/// Staged messages waiting.
pub fn backlog(connection: &Connection) -> rusqlite::Result<u64> {
    connection.query_row("SELECT count(*) FROM moa_outbox", [], |row| row.get(0))
}

/// In the writer: the relay's lease, deletes and inbox pruning. Returns a count (deleted rows, or
/// 1 when the lease is held).
pub fn relay(connection: &Connection, path: &Path, work: RelayWork) -> Result<u64, DocumentError> {
    let sqlite = |e| map_sqlite(path, e);
    match work {
        RelayWork::Lease {
            holder,
            now_ms,
            until_ms,
        } => {
            let changed = connection
                .prepare_cached(
                    "INSERT INTO moa_lease (name, holder, until_ms) VALUES ('relay', ?1, ?2)
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms
                     WHERE moa_lease.holder = excluded.holder OR moa_lease.until_ms < ?3",
                )
                .and_then(|mut s| s.execute((&holder, until_ms, now_ms)))
                .map_err(sqlite)?;
            Ok(changed as u64)
        }
        RelayWork::Remove {
            through,
            holder,
            until_ms,
        } => {
            let held = connection
                .prepare_cached(
                    "UPDATE moa_lease SET until_ms = ?2 WHERE name = 'relay' AND holder = ?1",
                )
                .and_then(|mut s| s.execute((&holder, until_ms)))
                .map_err(sqlite)?;
            if held == 0 {
                return Err(lease_lost());
            }
            let deleted = connection
                .prepare_cached("DELETE FROM moa_outbox WHERE seq <= ?1")
                .and_then(|mut s| s.execute([through]))
                .map_err(sqlite)?;
            Ok(deleted as u64)
        }
        RelayWork::PruneInbox { before_ms, max } => {
            let deleted = connection
                .prepare_cached(
                    "DELETE FROM moa_inbox WHERE (consumer, message_id) IN
                     (SELECT consumer, message_id FROM moa_inbox WHERE at_ms < ?1 LIMIT ?2)",
                )
                .and_then(|mut s| s.execute((before_ms, max as i64)))
                .map_err(sqlite)?;
            Ok(deleted as u64)
        }
    }
}

/// Moves what stores from before these tables kept in collections (staged messages, inbox
/// marks) into them, and drops the collections' leftovers. A no-op on new files.
pub fn migrate(connection: &Connection) -> rusqlite::Result<()> {
    let legacy = connection
        .prepare(
            "SELECT 1 FROM documents WHERE collection IN (?1, ?2, '_moa_outbox_keys', '_moa_outbox_lease') LIMIT 1",
        )?
        .exists((collections::OUTBOX, INBOX))?;
    if !legacy {
        return Ok(());
    }
    connection.execute_batch("BEGIN IMMEDIATE")?;
    let moved = (|| {
        let mut staged: Vec<(Option<String>, Staged)> = Vec::new();
        {
            let mut statement =
                connection.prepare("SELECT body FROM documents WHERE collection = ?1")?;
            let bodies =
                statement.query_map([collections::OUTBOX], |row| row.get::<_, String>(0))?;
            for body in bodies {
                let value: serde_json::Value =
                    serde_json::from_str(&body?).unwrap_or(serde_json::Value::Null);
                let okey = value
                    .get("okey")
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_string);
                if let Some(message) = collections::decode(&value) {
                    staged.push((okey, message));
                }
            }
        }
        // Every key's messages in their sequence order; keys and key-less ones by age.
        staged
            .sort_by(|(ka, a), (kb, b)| (ka, a.seq, a.created_ms).cmp(&(kb, b.seq, b.created_ms)));
        let rows: Vec<StagedRow> = staged
            .into_iter()
            .map(|(_, s)| StagedRow {
                id: s.id,
                message: s.message,
                created_ms: s.created_ms,
            })
            .collect();
        let mut marks = Vec::new();
        {
            let mut statement =
                connection.prepare("SELECT body FROM documents WHERE collection = ?1")?;
            let bodies = statement.query_map([INBOX], |row| row.get::<_, String>(0))?;
            for body in bodies {
                let value: serde_json::Value =
                    serde_json::from_str(&body?).unwrap_or(serde_json::Value::Null);
                let id = value.get("_id").and_then(serde_json::Value::as_str);
                let at = value.get("at_ms").and_then(serde_json::Value::as_i64);
                if let (Some((consumer, message_id)), Some(at)) =
                    (id.and_then(|id| id.split_once('|')), at)
                {
                    marks.push((consumer.to_string(), message_id.to_string(), at));
                }
            }
        }
        for (consumer, message_id, at) in &marks {
            connection.execute(
                "INSERT OR IGNORE INTO moa_inbox (consumer, message_id, at_ms) VALUES (?1, ?2, ?3)",
                (consumer, message_id, at),
            )?;
        }
        insert_staged(connection, &rows)?;
        connection.execute(
            "DELETE FROM documents WHERE collection IN (?1, ?2, '_moa_outbox_keys', '_moa_outbox_lease')",
            (collections::OUTBOX, INBOX),
        )?;
        tracing::info!(
            staged = rows.len(),
            marks = marks.len(),
            "moved the outbox and inbox from collections into the store's own tables"
        );
        Ok(())
    })();
    match moved {
        Ok(()) => connection.execute_batch("COMMIT"),
        Err(error) => {
            let _ = connection.execute_batch("ROLLBACK");
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{decode_headers, encode_headers};

    #[test]
    fn headers_come_back_as_they_went_in_and_garbage_is_refused() {
        let headers = vec![
            ("traceparent".to_string(), b"00-ab-cd-01".to_vec()),
            ("empty".to_string(), Vec::new()),
            ("bin".to_string(), vec![0, 255, 7]),
        ];
        assert_eq!(decode_headers(&encode_headers(&headers)), Some(headers));
        assert_eq!(decode_headers(&[]), Some(Vec::new()));
        assert_eq!(decode_headers(&[9, 0, 0, 0, b'a']), None);
    }
}
