//! The store's one writer: a thread that owns the write connection and commits every waiting job
//! (transactions' buffered writes, single write operations) in one SQLite transaction with one
//! fsync (group commit), each job in its own savepoint so that one failure does not sink the group.

use super::super::IndexSpec;
use super::super::ops::{DocumentError, Op, Output};
use super::map_sqlite;
use super::outbox::{self, RelayWork, StagedRow};
use super::view::{Base, Change, Overlay, View};
use rusqlite::{Connection, ErrorCode, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use tokio::sync::oneshot;

/// The most jobs one group commits.
const MAX_GROUP: usize = 1024;

/// A transaction's buffered writes, inbox marks and staged outbox messages.
pub struct Commit {
    pub changes: Vec<Change>,
    pub marks: Vec<(String, String)>,
    pub staged: Vec<StagedRow>,
}

/// What the writer does for one caller.
pub enum Work {
    /// A transaction's commit: its changes validated against the current versions, then applied
    /// with its marks and messages.
    Commit(Box<Commit>),
    /// The outbox relay's lease, deletes and inbox pruning.
    Relay(RelayWork),
    /// One write operation on the current state (atomic on its own).
    Run(Box<Op>, Vec<IndexSpec>),
    /// Schema SQL (index creation).
    Schema(String),
}

struct Job {
    work: Work,
    reply: oneshot::Sender<Result<Output, DocumentError>>,
}

/// The handle callers send work through; the thread ends when the last handle is dropped.
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer thread on `connection` (already in WAL mode with `synchronous = FULL`).
    pub fn start(connection: Connection, path: &Path) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let path = path.to_path_buf();
        std::thread::Builder::new()
            .name("moa-documents-writer".into())
            .spawn(move || run(connection, queue, path))?;
        Ok(Writer { jobs })
    }

    /// Hands `work` to the writer and waits until its group is durable (or failed).
    pub async fn submit(&self, work: Work) -> Result<Output, DocumentError> {
        let (reply, answer) = oneshot::channel();
        self.jobs.send(Job { work, reply }).map_err(|_| {
            DocumentError::Unavailable("the document store's writer stopped".into())
        })?;
        answer
            .await
            .map_err(|_| DocumentError::Unavailable("the document store's writer stopped".into()))?
    }
}

fn run(connection: Connection, queue: mpsc::Receiver<Job>, path: PathBuf) {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        commit_group(&connection, &path, group);
    }
}

/// One `BEGIN IMMEDIATE ... COMMIT` for every job of the group; replies after the commit is on
/// disk (`synchronous = FULL`), so "committed" means durable.
fn commit_group(connection: &Connection, path: &Path, group: Vec<Job>) {
    let sqlite = |e| map_sqlite(path, e);
    let version = connection
        .execute_batch("BEGIN IMMEDIATE")
        .and_then(|()| {
            connection.query_row(
                "UPDATE moa_meta SET value = value + 1 WHERE key = 'version' RETURNING value",
                [],
                |row| row.get::<_, i64>(0),
            )
        })
        .map_err(sqlite);
    let version = match version {
        Ok(version) => version,
        Err(error) => {
            if !connection.is_autocommit() {
                let _ = connection.execute_batch("ROLLBACK");
            }
            for job in group {
                let _ = job.reply.send(Err(error.clone()));
            }
            return;
        }
    };
    let mut outcomes = Vec::with_capacity(group.len());
    for job in group {
        let result = connection
            .execute_batch("SAVEPOINT job")
            .map_err(sqlite)
            .and_then(|()| perform(connection, path, job.work, version));
        let end = match result {
            Ok(_) => "RELEASE job",
            Err(_) => "ROLLBACK TO job; RELEASE job",
        };
        let result = result.and_then(|output| {
            connection.execute_batch(end).map_err(sqlite)?;
            Ok(output)
        });
        if result.is_err() && !connection.is_autocommit() {
            let _ = connection.execute_batch(end);
        }
        outcomes.push((job.reply, result));
    }
    if let Err(error) = connection.execute_batch("COMMIT") {
        let error = map_sqlite(path, error);
        if !connection.is_autocommit() {
            let _ = connection.execute_batch("ROLLBACK");
        }
        let lost =
            DocumentError::Unavailable(format!("the commit did not reach the disk: {error}"));
        for (reply, result) in outcomes {
            let _ = reply.send(result.and(Err(lost.clone())));
        }
        return;
    }
    for (reply, result) in outcomes {
        let _ = reply.send(result);
    }
}

fn perform(
    connection: &Connection,
    path: &Path,
    work: Work,
    version: i64,
) -> Result<Output, DocumentError> {
    match work {
        Work::Commit(commit) => {
            apply(connection, path, &commit.changes, version)?;
            outbox::write(
                connection,
                path,
                &commit.marks,
                &commit.staged,
                crate::capabilities::documents::outbox::now_ms(),
            )?;
            Ok(Output::Count(commit.changes.len() as u64))
        }
        Work::Relay(work) => outbox::relay(connection, path, work).map(Output::Count),
        Work::Run(op, indexes) => {
            let mut overlay = Overlay::default();
            let output = View {
                connection,
                overlay: &mut overlay,
                indexes: &indexes,
            }
            .run(*op)?;
            apply(connection, path, &overlay.into_changes(), version)?;
            Ok(output)
        }
        Work::Schema(sql) => {
            connection
                .execute_batch(&sql)
                .map_err(|e| map_sqlite(path, e))?;
            Ok(Output::Count(0))
        }
    }
}

/// Checks that every document a transaction changed is still as its snapshot saw it (first
/// committer wins, as MongoDB's snapshot transactions), then writes the changes with `version`.
/// Deletes go first, so a transaction that frees a unique value and reuses it commits.
fn apply(
    connection: &Connection,
    path: &Path,
    changes: &[Change],
    version: i64,
) -> Result<(), DocumentError> {
    let sqlite = |e| map_sqlite(path, e);
    let conflict = |what: &str| {
        DocumentError::WriteConflict(format!(
            "another transaction {what} first; run the transaction again"
        ))
    };
    let deletes = changes.iter().filter(|c| c.body.is_none());
    let puts = changes.iter().filter(|c| c.body.is_some());
    for change in deletes.chain(puts) {
        let current: Option<Base> = connection
            .prepare_cached("SELECT seq, version FROM documents WHERE collection = ?1 AND id = ?2")
            .and_then(|mut statement| {
                statement
                    .query_row((&change.collection, &change.key), |row| {
                        Ok(Base {
                            seq: row.get(0)?,
                            version: row.get(1)?,
                        })
                    })
                    .optional()
            })
            .map_err(sqlite)?;
        if current != change.base {
            return Err(match change.base {
                Some(_) => conflict(&format!(
                    "changed or deleted `{}` in `{}`",
                    change.key, change.collection
                )),
                None => conflict(&format!(
                    "inserted `{}` in `{}`",
                    change.key, change.collection
                )),
            });
        }
        let result = match (&change.body, current) {
            (Some(body), Some(row)) => connection
                .prepare_cached("UPDATE documents SET body = ?1, version = ?2 WHERE seq = ?3")
                .and_then(|mut s| s.execute((body, version, row.seq))),
            (Some(body), None) => connection
                .prepare_cached(
                    "INSERT INTO documents (collection, id, body, version) VALUES (?1, ?2, ?3, ?4)",
                )
                .and_then(|mut s| s.execute((&change.collection, &change.key, body, version))),
            (None, Some(row)) => connection
                .prepare_cached("DELETE FROM documents WHERE seq = ?1")
                .and_then(|mut s| s.execute([row.seq])),
            (None, None) => Ok(0),
        };
        match result {
            Ok(_) => {}
            // The view checked unique indexes against its snapshot: a collision now is with a
            // document another transaction committed since.
            Err(rusqlite::Error::SqliteFailure(code, _))
                if code.code == ErrorCode::ConstraintViolation =>
            {
                return Err(conflict("took a value of a unique index"));
            }
            Err(other) => return Err(sqlite(other)),
        }
    }
    Ok(())
}
