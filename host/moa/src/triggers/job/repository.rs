//! The job repository (Spring Batch's JobRepository) in the job's documents store: one execution
//! per job and parameters, its source split into ranges that hosts claim with a lease, the
//! checkpoint each chunk commits in its own transaction, and the records skipped with reasons.
//!
//! Collections: `_moa_job_executions`, `_moa_job_ranges`, `_moa_job_skips` (host-owned).

use crate::capabilities::documents::{
    DocumentBackend, DocumentError, DocumentTransaction, FindSpec, IndexSpec, Op, Output, Query,
    UpdateSpec,
};
use serde_json::{Value, json};
use sha2::Digest as _;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub const EXECUTIONS: &str = "_moa_job_executions";
pub const RANGES: &str = "_moa_job_ranges";
pub const SKIPS: &str = "_moa_job_skips";

/// Where an execution is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// A host is counting the source and making the ranges.
    Starting,
    Started,
    Completed,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Starting => "STARTING",
            Status::Started => "STARTED",
            Status::Completed => "COMPLETED",
            Status::Failed => "FAILED",
        }
    }

    fn parse(text: &str) -> Status {
        match text {
            "STARTING" => Status::Starting,
            "COMPLETED" => Status::Completed,
            "FAILED" => Status::Failed,
            _ => Status::Started,
        }
    }
}

/// One execution of a job with its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Execution {
    pub id: String,
    pub job: String,
    pub parameters: BTreeMap<String, String>,
    pub status: Status,
    pub records: u64,
    pub ranges: u64,
    pub created_ms: u64,
    pub ended_ms: Option<u64>,
    pub message: Option<String>,
}

/// A claimed range of source records `[first, end)`, resumed at `next`.
#[derive(Debug, Clone, PartialEq)]
pub struct Range {
    pub id: String,
    pub n: u32,
    pub first: u64,
    pub end: u64,
    pub next: u64,
}

/// How far an execution is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    pub ranges_done: u64,
    pub ranges_total: u64,
    /// Source records passed (written, skipped or empty lines).
    pub records_done: u64,
    pub written: u64,
    pub skipped: u64,
    /// Hosts holding a live claim.
    pub active_hosts: Vec<String>,
}

/// A record a chunk skipped, to store beside its checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct SkippedRecord {
    pub record: u64,
    pub reason: String,
    pub text: String,
}

/// Why an execution cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "job `{job}` already completed with these parameters (execution {id})\n  help: add a parameter to run it again, e.g. --param run={now}"
    )]
    AlreadyCompleted { job: String, id: String, now: u64 },
    #[error("job repository: {0}")]
    Store(#[from] DocumentError),
    #[error("{0}")]
    Source(String),
}

/// Runs `work` again on a write conflict or an unavailable store (another host's chunk holding
/// the embedded store's writer, a MongoDB failover), waiting 20 ms doubling to 1 s, for ~25 s.
async fn retrying<T, F, Fut>(mut work: F) -> Result<T, DocumentError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, DocumentError>>,
{
    let mut attempt = 0u32;
    loop {
        match work().await {
            Err(DocumentError::WriteConflict(_) | DocumentError::Unavailable(_))
                if attempt < 30 =>
            {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis((20u64 << attempt.min(6)).min(1000)))
                    .await;
            }
            other => return other,
        }
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The execution id of `job` with `parameters`: the same on every host, so they join one run.
pub fn execution_id(job: &str, parameters: &BTreeMap<String, String>) -> String {
    let mut hash = sha2::Sha256::new();
    hash.update(job.as_bytes());
    for (k, v) in parameters {
        hash.update(b"\n");
        hash.update(k.as_bytes());
        hash.update(b"=");
        hash.update(v.as_bytes());
    }
    format!("{job}-{}", &hex::encode(hash.finalize())[..12])
}

fn query(value: Value) -> Query {
    Query::from_value(value).expect("the repository's filters parse")
}

fn update(value: Value) -> UpdateSpec {
    UpdateSpec::from_value(value).expect("the repository's updates parse")
}

fn number(document: &Value, key: &str) -> u64 {
    document.get(key).and_then(Value::as_u64).unwrap_or(0)
}

fn execution_of(document: &Value) -> Execution {
    Execution {
        id: document["_id"].as_str().unwrap_or_default().to_string(),
        job: document["job"].as_str().unwrap_or_default().to_string(),
        parameters: document["parameters"]
            .as_object()
            .map(|p| {
                p.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default(),
        status: Status::parse(document["status"].as_str().unwrap_or_default()),
        records: number(document, "records"),
        ranges: number(document, "ranges"),
        created_ms: number(document, "created_ms"),
        ended_ms: document.get("ended_ms").and_then(Value::as_u64),
        message: document
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string),
    }
}

/// The `owner` of an execution document (the host that starts it).
async fn existing_owner(backend: &Arc<dyn DocumentBackend>, id: &str) -> Option<String> {
    match backend
        .run(Op::Find {
            collection: EXECUTIONS.into(),
            filter: query(json!({"_id": id})),
            spec: FindSpec::default(),
        })
        .await
    {
        Ok(Output::Documents(found)) => found.first()?["owner"].as_str().map(str::to_string),
        _ => None,
    }
}

/// The repository of one job store.
#[derive(Clone)]
pub struct JobRepository {
    backend: Arc<dyn DocumentBackend>,
}

/// What [`JobRepository::begin`] found.
#[derive(Debug)]
pub enum Begin {
    /// This host creates the ranges (it inserted the execution, or took over a dead starter).
    Create(Execution),
    /// The execution runs (or was restarted): claim ranges.
    Join(Execution),
    /// Another host is counting the source; look again shortly.
    Wait,
}

impl JobRepository {
    pub async fn open(
        backend: Arc<dyn DocumentBackend>,
        store: &str,
    ) -> Result<Self, DocumentError> {
        for (name, keys) in [
            ("moa_exec_status", vec!["execution", "status"]),
            ("moa_exec_n", vec!["execution", "n"]),
        ] {
            backend
                .create_index(&IndexSpec {
                    store: store.to_string(),
                    collection: RANGES.into(),
                    keys: keys.into_iter().map(|k| (k.to_string(), true)).collect(),
                    unique: false,
                    name: name.into(),
                })
                .await?;
        }
        Ok(JobRepository { backend })
    }

    /// Runs one repository operation, retried as [`retrying`] says.
    async fn run(&self, op: Op) -> Result<Output, DocumentError> {
        retrying(|| self.backend.run(op.clone())).await
    }

    pub async fn execution(&self, id: &str) -> Result<Option<Execution>, DocumentError> {
        let found = self
            .run(Op::Find {
                collection: EXECUTIONS.into(),
                filter: query(json!({"_id": id})),
                spec: FindSpec::default(),
            })
            .await?;
        Ok(match found {
            Output::Documents(documents) => documents.first().map(execution_of),
            _ => None,
        })
    }

    /// Every execution (of `job`, when given), newest first.
    pub async fn executions(&self, job: Option<&str>) -> Result<Vec<Execution>, DocumentError> {
        let filter = match job {
            Some(job) => json!({"job": job}),
            None => json!({}),
        };
        let found = self
            .run(Op::Find {
                collection: EXECUTIONS.into(),
                filter: query(filter),
                spec: FindSpec::sorted(json!({"created_ms": -1}))?,
            })
            .await?;
        Ok(match found {
            Output::Documents(documents) => documents.iter().map(execution_of).collect(),
            _ => Vec::new(),
        })
    }

    /// Finds or creates the execution of `job` with `parameters`, as host `host`.
    pub async fn begin(
        &self,
        job: &str,
        parameters: &BTreeMap<String, String>,
        host: &str,
        lease: Duration,
    ) -> Result<Begin, StartError> {
        let id = execution_id(job, parameters);
        let now = now_ms();
        let document = json!({
            "_id": id, "job": job, "parameters": parameters, "status": Status::Starting.as_str(),
            "owner": host, "lease_until": now + lease.as_millis() as u64, "created_ms": now,
            "records": 0, "ranges": 0,
        });
        let inserted = self
            .run(Op::Insert {
                collection: EXECUTIONS.into(),
                documents: vec![document.as_object().cloned().unwrap_or_default()],
            })
            .await;
        match inserted {
            Ok(_) => {
                let execution = execution_of(&document);
                return Ok(Begin::Create(execution));
            }
            Err(DocumentError::DuplicateKey(_)) => {}
            Err(other) => return Err(other.into()),
        }
        let Some(existing) = self.execution(&id).await? else {
            return Ok(Begin::Wait);
        };
        match existing.status {
            Status::Completed => Err(StartError::AlreadyCompleted {
                job: job.to_string(),
                id,
                now,
            }),
            Status::Started => Ok(Begin::Join(existing)),
            Status::Failed => {
                // A restart: the same execution resumes from its checkpoints.
                self.run(Op::Update {
                    collection: EXECUTIONS.into(),
                    filter: query(json!({"_id": id, "status": "FAILED"})),
                    update: update(json!({"$set": {"status": "STARTED", "message": null},
                                          "$unset": {"ended_ms": ""}, "$inc": {"restarts": 1}})),
                    upsert: false,
                    many: false,
                })
                .await?;
                Ok(Begin::Join(Execution {
                    status: Status::Started,
                    message: None,
                    ..existing
                }))
            }
            Status::Starting
                if existing_owner(&self.backend, &id).await.as_deref() == Some(host) =>
            {
                // This host's own start that did not finish (its range creation conflicted).
                Ok(Begin::Create(existing))
            }
            Status::Starting => {
                // Take over a starter that died (its lease ran out).
                let taken = self
                    .run(Op::Update {
                        collection: EXECUTIONS.into(),
                        filter: query(json!({"_id": id, "status": "STARTING", "lease_until": {"$lt": now}})),
                        update: update(json!({"$set": {"owner": host, "lease_until": now + lease.as_millis() as u64}})),
                        upsert: false,
                        many: false,
                    })
                    .await?;
                match taken {
                    Output::Updated(outcome) if outcome.matched == 1 => Ok(Begin::Create(existing)),
                    _ => Ok(Begin::Wait),
                }
            }
        }
    }

    /// Splits `records` source records into ranges of `range_records` and starts the execution.
    /// Only the host that owns the STARTING execution succeeds; `false` for any other.
    pub async fn create_ranges(
        &self,
        execution: &str,
        host: &str,
        records: u64,
        range_records: u64,
    ) -> Result<bool, DocumentError> {
        retrying(|| self.try_create_ranges(execution, host, records, range_records)).await
    }

    async fn try_create_ranges(
        &self,
        execution: &str,
        host: &str,
        records: u64,
        range_records: u64,
    ) -> Result<bool, DocumentError> {
        let range_records = range_records.max(1);
        let ranges = records.div_ceil(range_records);
        let mut tx = self.backend.begin().await?;
        let owned = tx
            .run(Op::Update {
                collection: EXECUTIONS.into(),
                filter: query(json!({"_id": execution, "status": "STARTING", "owner": host})),
                update: update(
                    json!({"$set": {"status": "STARTED", "records": records, "ranges": ranges,
                                                "started_ms": now_ms()}}),
                ),
                upsert: false,
                many: false,
            })
            .await?;
        if !matches!(owned, Output::Updated(outcome) if outcome.matched == 1) {
            tx.abort().await?;
            return Ok(false);
        }
        let documents: Vec<_> = (0..ranges)
            .map(|n| {
                let first = n * range_records;
                json!({
                    "_id": format!("{execution}:{n:07}"), "execution": execution, "n": n,
                    "first": first, "end": (first + range_records).min(records), "next": first,
                    "status": "pending", "owner": null, "lease_until": 0,
                    "written": 0, "skipped": 0, "claims": 0,
                })
                .as_object()
                .cloned()
                .unwrap_or_default()
            })
            .collect();
        for part in documents.chunks(500) {
            tx.run(Op::Insert {
                collection: RANGES.into(),
                documents: part.to_vec(),
            })
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Claims the first pending range, or one whose holder's lease ran out.
    pub async fn claim(
        &self,
        execution: &str,
        host: &str,
        lease: Duration,
    ) -> Result<Option<Range>, DocumentError> {
        let now = now_ms();
        let found = self
            .run(Op::FindOneAndUpdate {
                collection: RANGES.into(),
                filter: query(json!({"execution": execution, "$or": [
                    {"status": "pending"},
                    {"status": "claimed", "lease_until": {"$lt": now}},
                ]})),
                update: update(json!({"$set": {"status": "claimed", "owner": host,
                                                "lease_until": now + lease.as_millis() as u64},
                                      "$inc": {"claims": 1}})),
                sort: FindSpec::sorted(json!({"n": 1}))?.sort,
                projection: None,
                upsert: false,
                return_after: true,
            })
            .await?;
        Ok(match found {
            Output::Document(Some(document)) => Some(Range {
                id: document["_id"].as_str().unwrap_or_default().to_string(),
                n: number(&document, "n") as u32,
                first: number(&document, "first"),
                end: number(&document, "end"),
                next: number(&document, "next"),
            }),
            _ => None,
        })
    }

    /// Stages a chunk's checkpoint in `tx`: the range moves from `from` to `to` (done at its end),
    /// its counters grow, the skipped records are stored. `false` when the range is no longer this
    /// host's at `from` (taken over): the caller must abort the transaction.
    #[allow(clippy::too_many_arguments)]
    pub async fn checkpoint(
        tx: &mut dyn DocumentTransaction,
        execution: &str,
        range: &Range,
        host: &str,
        from: u64,
        to: u64,
        written: u64,
        skipped: &[SkippedRecord],
        lease: Duration,
    ) -> Result<bool, DocumentError> {
        let status = if to >= range.end { "done" } else { "claimed" };
        let moved = tx
            .run(Op::Update {
                collection: RANGES.into(),
                filter: query(json!({"_id": range.id, "owner": host, "next": from, "status": "claimed"})),
                update: update(json!({
                    "$set": {"next": to, "status": status, "lease_until": now_ms() + lease.as_millis() as u64},
                    "$inc": {"written": written, "skipped": skipped.len() as u64},
                })),
                upsert: false,
                many: false,
            })
            .await?;
        if !matches!(moved, Output::Updated(outcome) if outcome.matched == 1) {
            return Ok(false);
        }
        if !skipped.is_empty() {
            let documents = skipped
                .iter()
                .map(|skip| {
                    let text: String = skip.text.chars().take(1000).collect();
                    json!({"_id": format!("{execution}:{}", skip.record), "execution": execution,
                           "record": skip.record, "reason": skip.reason, "text": text,
                           "at_ms": now_ms()})
                    .as_object()
                    .cloned()
                    .unwrap_or_default()
                })
                .collect();
            tx.run(Op::Insert {
                collection: SKIPS.into(),
                documents,
            })
            .await?;
        }
        Ok(true)
    }

    /// Gives a claimed range back (on shutdown), so another host takes it at once.
    pub async fn release(&self, range: &Range, host: &str) -> Result<(), DocumentError> {
        self.run(Op::Update {
            collection: RANGES.into(),
            filter: query(json!({"_id": range.id, "owner": host, "status": "claimed"})),
            update: update(json!({"$set": {"status": "pending", "owner": null, "lease_until": 0}})),
            upsert: false,
            many: false,
        })
        .await?;
        Ok(())
    }

    pub async fn progress(&self, execution: &str) -> Result<Progress, DocumentError> {
        let found = self
            .run(Op::Find {
                collection: RANGES.into(),
                filter: query(json!({"execution": execution})),
                spec: FindSpec::default(),
            })
            .await?;
        let mut progress = Progress::default();
        let now = now_ms();
        if let Output::Documents(ranges) = found {
            for range in &ranges {
                progress.ranges_total += 1;
                let status = range["status"].as_str().unwrap_or_default();
                if status == "done" {
                    progress.ranges_done += 1;
                }
                if status == "claimed"
                    && number(range, "lease_until") >= now
                    && let Some(owner) = range["owner"].as_str()
                    && !progress.active_hosts.iter().any(|h| h == owner)
                {
                    progress.active_hosts.push(owner.to_string());
                }
                progress.records_done +=
                    number(range, "next").saturating_sub(number(range, "first"));
                progress.written += number(range, "written");
                progress.skipped += number(range, "skipped");
            }
        }
        Ok(progress)
    }

    /// Ends the execution (once): COMPLETED or FAILED with a message.
    pub async fn finish(
        &self,
        execution: &str,
        status: Status,
        message: Option<&str>,
    ) -> Result<bool, DocumentError> {
        let done = self
            .run(Op::Update {
                collection: EXECUTIONS.into(),
                filter: query(json!({"_id": execution, "status": "STARTED"})),
                update: update(
                    json!({"$set": {"status": status.as_str(), "ended_ms": now_ms(),
                                                "message": message}}),
                ),
                upsert: false,
                many: false,
            })
            .await?;
        Ok(matches!(done, Output::Updated(outcome) if outcome.matched == 1))
    }

    /// The records skipped so far, in source order (at most `limit`).
    pub async fn skips(
        &self,
        execution: &str,
        limit: u64,
    ) -> Result<Vec<SkippedRecord>, DocumentError> {
        let mut spec = FindSpec::sorted(json!({"record": 1}))?;
        spec.limit = Some(limit.max(1));
        let found = self
            .run(Op::Find {
                collection: SKIPS.into(),
                filter: query(json!({"execution": execution})),
                spec,
            })
            .await?;
        Ok(match found {
            Output::Documents(documents) => documents
                .iter()
                .map(|d| SkippedRecord {
                    record: number(d, "record"),
                    reason: d["reason"].as_str().unwrap_or_default().to_string(),
                    text: d["text"].as_str().unwrap_or_default().to_string(),
                })
                .collect(),
            _ => Vec::new(),
        })
    }
}
