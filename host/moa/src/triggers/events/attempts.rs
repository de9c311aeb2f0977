//! Delivery counts of Kafka messages kept on the host (a SQLite file in the state directory), so
//! that a message that takes the host down is counted across restarts and dead-lettered at last.
//!
//! Kafka itself remembers only offsets. A row is written before a message's first attempt and
//! deleted when the message ends (handled or dead-lettered); one thread writes them, many rows per
//! SQLite transaction, so deliveries started together share one write.

use rusqlite::Connection;
use std::path::Path;
use std::sync::mpsc;
use tokio::sync::oneshot;

/// Rows one write commits at most.
const MAX_GROUP: usize = 512;

/// One message of one consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

enum Job {
    /// Count one more delivery; reply with the count (1 the first time).
    Start(Delivery, oneshot::Sender<u32>),
    /// The message ended: forget it.
    End(Delivery),
}

/// The handle deliveries use; the writer thread ends with the last handle.
pub struct AttemptLog {
    jobs: mpsc::Sender<Job>,
}

impl AttemptLog {
    /// Opens (creating) the file at `path` and starts its writer.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let connection = Connection::open(path)
            .and_then(|c| {
                // A crash of the process is what this counts; WAL with NORMAL survives it.
                c.execute_batch(
                    "PRAGMA journal_mode = WAL;
                     PRAGMA synchronous = NORMAL;
                     PRAGMA busy_timeout = 5000;
                     CREATE TABLE IF NOT EXISTS kafka_deliveries (
                         grp       TEXT NOT NULL,
                         topic     TEXT NOT NULL,
                         partition INTEGER NOT NULL,
                         offset    INTEGER NOT NULL,
                         count     INTEGER NOT NULL,
                         PRIMARY KEY (grp, topic, partition, offset)
                     ) WITHOUT ROWID;",
                )?;
                Ok(c)
            })
            .with_context(|| format!("cannot open the delivery counts at {}", path.display()))?;
        let (jobs, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("moa-kafka-attempts".into())
            .spawn(move || run(connection, queue))
            .context("cannot start the delivery-count writer")?;
        Ok(AttemptLog { jobs })
    }

    /// Counts a delivery of `delivery` and returns how many there have been, this one included.
    /// A storage failure is logged and counts as the first (deliveries never wait on it).
    pub async fn start(&self, delivery: Delivery) -> u32 {
        let (reply, count) = oneshot::channel();
        if self.jobs.send(Job::Start(delivery, reply)).is_err() {
            return 1;
        }
        count.await.unwrap_or(1)
    }

    /// Forgets `delivery` (handled or dead-lettered); does not wait.
    pub fn end(&self, delivery: Delivery) {
        let _ = self.jobs.send(Job::End(delivery));
    }
}

fn run(connection: Connection, queue: mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let mut replies = Vec::new();
        let written = (|| -> rusqlite::Result<()> {
            let tx = connection.unchecked_transaction()?;
            for job in group {
                match job {
                    Job::Start(d, reply) => {
                        let count: i64 = tx
                            .prepare_cached(
                                "INSERT INTO kafka_deliveries (grp, topic, partition, offset, count)
                                 VALUES (?1, ?2, ?3, ?4, 1)
                                 ON CONFLICT DO UPDATE SET count = count + 1 RETURNING count",
                            )?
                            .query_row((&d.group, &d.topic, d.partition, d.offset), |row| {
                                row.get(0)
                            })?;
                        replies.push((reply, count.clamp(1, i64::from(u32::MAX)) as u32));
                    }
                    Job::End(d) => {
                        tx.prepare_cached(
                            "DELETE FROM kafka_deliveries
                             WHERE grp = ?1 AND topic = ?2 AND partition = ?3 AND offset = ?4",
                        )?
                        .execute((
                            &d.group,
                            &d.topic,
                            d.partition,
                            d.offset,
                        ))?;
                    }
                }
            }
            tx.commit()
        })();
        if let Err(error) = written {
            tracing::warn!(error = %error, "cannot write Kafka delivery counts; counting these deliveries as first ones");
            for (reply, _) in replies {
                let _ = reply.send(1);
            }
            continue;
        }
        for (reply, count) in replies {
            let _ = reply.send(count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{AttemptLog, Delivery};

    #[tokio::test]
    async fn counts_survive_a_reopen_and_end_when_the_message_does() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("attempts.db");
        let delivery = |offset| Delivery {
            group: "g".into(),
            topic: "t".into(),
            partition: 0,
            offset,
        };
        let log = AttemptLog::open(&path).expect("open");
        assert_eq!(log.start(delivery(7)).await, 1);
        assert_eq!(log.start(delivery(7)).await, 2);
        assert_eq!(log.start(delivery(8)).await, 1);
        log.end(delivery(8));
        // Jobs are written in order: once this one is counted, the end before it is too.
        assert_eq!(log.start(delivery(9)).await, 1);
        drop(log);
        let log = AttemptLog::open(&path).expect("reopen");
        assert_eq!(log.start(delivery(7)).await, 3, "counted across a restart");
        assert_eq!(
            log.start(delivery(8)).await,
            1,
            "an ended message starts again at 1"
        );
    }
}
