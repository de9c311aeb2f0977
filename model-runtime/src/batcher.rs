//! The token-budget dynamic batcher: texts from concurrent callers wait in one bounded queue and
//! leave it together as one padded batch for the single inference thread.
//!
//! A batch closes when it holds `max_batch_size` texts, when one more text would push its padded
//! size (texts × longest text) over `max_batch_tokens`, or `max_wait` after its first text
//! arrived. It only waits for as many texts as the previous batch held, so a lone caller is never
//! delayed and 32 callers still meet in one batch. The batch then runs as groups of similar
//! length (an exact split minimising padded tokens), so one long text does not make 31 short ones
//! pay for its padding. A full queue refuses at once
//! ([`RuntimeError::Overloaded`]); texts whose caller gave up or whose deadline passed are dropped
//! before they cost inference time.

use crate::embedder::Embedder;
use crate::metrics::RuntimeMetrics;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Batching limits.
#[derive(Debug, Clone, Copy)]
pub struct BatcherSettings {
    /// Most texts in one inference batch.
    pub max_batch_size: usize,
    /// Most padded tokens (texts × longest text) in one batch; at least the model's token limit.
    pub max_batch_tokens: usize,
    /// How long a batch may wait for company after its first text arrived.
    pub max_wait: Duration,
    /// Most texts waiting; beyond it callers get [`RuntimeError::Overloaded`].
    pub queue_capacity: usize,
    /// Most texts in one request.
    pub max_client_batch_size: usize,
}

impl Default for BatcherSettings {
    fn default() -> Self {
        BatcherSettings {
            max_batch_size: 32,
            max_batch_tokens: 16384,
            max_wait: Duration::from_millis(2),
            queue_capacity: 4096,
            max_client_batch_size: 512,
        }
    }
}

/// Why a request got no vectors. Each has one gRPC status (see proto/…/embedding.proto).
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0}")]
    InvalidInput(String),
    /// The request names a model this runtime does not serve.
    #[error("{0}")]
    UnknownModel(String),
    /// The queue is full; the text says how full.
    #[error("{0}")]
    Overloaded(String),
    #[error("the deadline passed before the batch ran")]
    DeadlineExceeded,
    #[error("the model runtime is {0}")]
    Unavailable(String),
    #[error("inference failed: {0}")]
    Internal(String),
}

impl RuntimeError {
    /// The label used in `moa_embed_errors_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            RuntimeError::InvalidInput(_) => "invalid_input",
            RuntimeError::UnknownModel(_) => "unknown_model",
            RuntimeError::Overloaded(_) => "overloaded",
            RuntimeError::DeadlineExceeded => "deadline",
            RuntimeError::Unavailable(_) => "unavailable",
            RuntimeError::Internal(_) => "internal",
        }
    }
}

/// What one chunk of a request got back from its batch.
#[derive(Debug)]
pub(crate) struct ChunkResult {
    pub vectors: Vec<Vec<f32>>,
    pub queued: Duration,
    pub inference: Duration,
}

/// Texts of one request (at most a batch's worth) with where their vectors go.
struct Entry {
    tokens: Vec<Vec<u32>>,
    normalize: bool,
    enqueued: Instant,
    deadline: Option<Instant>,
    reply: oneshot::Sender<Result<ChunkResult, RuntimeError>>,
}

impl Entry {
    fn width(&self) -> usize {
        self.tokens.iter().map(Vec::len).max().unwrap_or(1)
    }
}

struct Queue {
    entries: VecDeque<Entry>,
    texts: usize,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    arrived: Condvar,
    settings: BatcherSettings,
    metrics: Arc<RuntimeMetrics>,
}

/// The queue and its inference thread. Dropping the batcher (or [`Batcher::close`]) lets queued
/// work finish, then stops the thread.
pub struct Batcher {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Batcher {
    pub fn start(
        embedder: Arc<Embedder>,
        settings: BatcherSettings,
        metrics: Arc<RuntimeMetrics>,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                entries: VecDeque::new(),
                texts: 0,
                closed: false,
            }),
            arrived: Condvar::new(),
            settings,
            metrics,
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("moa-embed-batcher".into())
            .spawn(move || run(&worker, &embedder))?;
        Ok(Batcher {
            shared,
            thread: Some(thread),
        })
    }

    pub fn settings(&self) -> &BatcherSettings {
        &self.shared.settings
    }

    /// Queues already tokenized texts (split into batch-sized chunks) and waits for their vectors.
    pub(crate) async fn embed(
        &self,
        tokens: Vec<Vec<u32>>,
        normalize: bool,
        deadline: Option<Instant>,
    ) -> Result<(Vec<Vec<f32>>, Duration, Duration), RuntimeError> {
        let settings = &self.shared.settings;
        let mut receivers = Vec::new();
        {
            let mut queue = self.lock();
            if queue.closed {
                return Err(RuntimeError::Unavailable("shutting down".into()));
            }
            if queue.texts + tokens.len() > settings.queue_capacity {
                return Err(RuntimeError::Overloaded(format!(
                    "the batch queue is full ({} texts waiting, capacity {}); retry with backoff",
                    queue.texts, settings.queue_capacity
                )));
            }
            let now = Instant::now();
            let mut rest = tokens.into_iter().peekable();
            while rest.peek().is_some() {
                // A chunk never exceeds a batch: by count, and by padded tokens.
                let mut chunk: Vec<Vec<u32>> = Vec::new();
                let mut width = 0;
                while let Some(next) = rest.peek() {
                    let wider = width.max(next.len());
                    if !chunk.is_empty()
                        && (chunk.len() + 1 > settings.max_batch_size
                            || wider * (chunk.len() + 1) > settings.max_batch_tokens)
                    {
                        break;
                    }
                    width = wider;
                    chunk.extend(rest.next());
                }
                let (reply, receiver) = oneshot::channel();
                queue.texts += chunk.len();
                queue.entries.push_back(Entry {
                    tokens: chunk,
                    normalize,
                    enqueued: now,
                    deadline,
                    reply,
                });
                receivers.push(receiver);
            }
            self.shared.metrics.queue_texts.set(queue.texts as i64);
        }
        self.shared.arrived.notify_one();
        let mut vectors = Vec::new();
        let (mut queued, mut inference) = (Duration::ZERO, Duration::ZERO);
        for receiver in receivers {
            let chunk = receiver
                .await
                .map_err(|_| RuntimeError::Unavailable("shutting down".into()))??;
            vectors.extend(chunk.vectors);
            queued = queued.max(chunk.queued);
            inference += chunk.inference;
        }
        Ok((vectors, queued, inference))
    }

    /// Refuses new work; queued work still runs.
    pub fn close(&self) {
        self.lock().closed = true;
        self.shared.arrived.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The inference thread: take a batch, run it, answer, repeat until closed and empty.
fn run(shared: &Shared, embedder: &Embedder) {
    let mut expected = 1;
    while let Some(batch) = next_batch(shared, expected) {
        expected = batch.len();
        run_batch(shared, embedder, batch);
    }
}

/// Waits for work and gathers one batch; `None` once the queue is closed and empty.
fn next_batch(shared: &Shared, expected: usize) -> Option<Vec<Entry>> {
    let settings = &shared.settings;
    let mut queue = shared
        .queue
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut batch: Vec<Entry> = Vec::new();
    let (mut texts, mut width) = (0usize, 0usize);
    let mut opened: Option<Instant> = None;
    loop {
        // Move what fits from the front of the queue into the batch.
        while let Some(front) = queue.entries.front() {
            if front.reply.is_closed() || front.deadline.is_some_and(|d| d <= Instant::now()) {
                let Some(dropped) = queue.entries.pop_front() else {
                    break;
                };
                queue.texts -= dropped.tokens.len();
                if !dropped.reply.is_closed() {
                    shared
                        .metrics
                        .error(RuntimeError::DeadlineExceeded.reason());
                    let _ = dropped.reply.send(Err(RuntimeError::DeadlineExceeded));
                }
                continue;
            }
            let wider = width.max(front.width());
            let count = texts + front.tokens.len();
            if !batch.is_empty()
                && (count > settings.max_batch_size || wider * count > settings.max_batch_tokens)
            {
                break;
            }
            let Some(entry) = queue.entries.pop_front() else {
                break;
            };
            queue.texts -= entry.tokens.len();
            opened.get_or_insert(entry.enqueued);
            texts = count;
            width = wider;
            batch.push(entry);
        }
        shared.metrics.queue_texts.set(queue.texts as i64);
        let full = !queue.entries.is_empty() || texts >= settings.max_batch_size;
        if let Some(opened) = opened {
            let waited_enough = opened.elapsed() >= settings.max_wait;
            if full || texts >= expected || waited_enough || queue.closed {
                return Some(batch);
            }
            let left = settings.max_wait.saturating_sub(opened.elapsed());
            queue = shared
                .arrived
                .wait_timeout(queue, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        } else {
            if queue.closed {
                return None;
            }
            queue = shared
                .arrived
                .wait(queue)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

fn run_batch(shared: &Shared, embedder: &Embedder, batch: Vec<Entry>) {
    let metrics = &shared.metrics;
    let started = Instant::now();
    let texts: usize = batch.iter().map(|e| e.tokens.len()).sum();
    let width = batch.iter().map(Entry::width).max().unwrap_or(1);
    metrics.batch_texts.observe(texts as f64);
    for entry in &batch {
        metrics
            .queue_seconds
            .observe((started - entry.enqueued).as_secs_f64());
    }
    // Normalisation is per entry (callers may differ), so the graph runs unnormalised.
    let all: Vec<&[u32]> = batch
        .iter()
        .flat_map(|e| e.tokens.iter().map(Vec::as_slice))
        .collect();
    let span = tracing::info_span!("embed_batch", texts, padded_tokens = texts * width);
    let result = span.in_scope(|| embed_by_length(embedder, &all, metrics));
    let inference = started.elapsed();
    metrics.inference_seconds.observe(inference.as_secs_f64());
    match result {
        Ok(vectors) => {
            let mut vectors = vectors.into_iter();
            for entry in batch {
                let mut mine: Vec<Vec<f32>> = vectors.by_ref().take(entry.tokens.len()).collect();
                if entry.normalize {
                    mine.iter_mut().for_each(|v| crate::embedder::normalize(v));
                }
                let _ = entry.reply.send(Ok(ChunkResult {
                    vectors: mine,
                    queued: started - entry.enqueued,
                    inference,
                }));
            }
        }
        Err(err) => {
            tracing::error!(error = %err, texts, "inference failed");
            for entry in batch {
                metrics.error("internal");
                let _ = entry
                    .reply
                    .send(Err(RuntimeError::Internal(err.to_string())));
            }
        }
    }
}

/// The fixed cost of one graph run, in padded tokens: what splitting a batch must save to pay off.
const RUN_OVERHEAD_TOKENS: usize = 64;

/// Runs a batch as groups of similar length (fewer padding tokens than one run padded to the
/// longest text) and returns the vectors in the batch's order.
fn embed_by_length(
    embedder: &Embedder,
    texts: &[&[u32]],
    metrics: &RuntimeMetrics,
) -> Result<Vec<Vec<f32>>, crate::embedder::EmbedError> {
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| texts[i].len());
    let lengths: Vec<usize> = order.iter().map(|&i| texts[i].len().max(1)).collect();
    let mut vectors: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
    for group in length_groups(&lengths, RUN_OVERHEAD_TOKENS) {
        let members = &order[group.clone()];
        let run: Vec<&[u32]> = members.iter().map(|&i| texts[i]).collect();
        metrics
            .batch_tokens
            .observe((run.len() * lengths[group.end - 1]) as f64);
        for (&i, vector) in members.iter().zip(embedder.embed_tokens(&run, false)?) {
            vectors[i] = vector;
        }
    }
    Ok(vectors)
}

/// Splits ascending `lengths` into consecutive groups minimising the padded tokens computed
/// (group size × its longest) plus `overhead` per group: an exact dynamic programme, n ≤ a batch.
fn length_groups(lengths: &[usize], overhead: usize) -> Vec<std::ops::Range<usize>> {
    let n = lengths.len();
    let mut best = vec![0usize; n + 1];
    let mut cut = vec![0usize; n + 1];
    for end in 1..=n {
        best[end] = usize::MAX;
        for start in 0..end {
            let cost = best[start] + (end - start) * lengths[end - 1] + overhead;
            if cost < best[end] {
                best[end] = cost;
                cut[end] = start;
            }
        }
    }
    let mut groups = Vec::new();
    let mut end = n;
    while end > 0 {
        groups.push(cut[end]..end);
        end = cut[end];
    }
    groups.reverse();
    groups
}

#[cfg(test)]
mod tests {
    use super::length_groups;

    #[test]
    fn similar_lengths_share_a_run_and_outliers_get_their_own() {
        // Equal lengths: one run.
        assert_eq!(length_groups(&[20; 8], 64), vec![0..8]);
        // 31 short texts and one long one: padding the 31 to 500 tokens would cost far more
        // than a second run.
        let mut lengths = vec![20; 31];
        lengths.push(500);
        assert_eq!(length_groups(&lengths, 64), vec![0..31, 31..32]);
        // A small difference is not worth a run.
        assert_eq!(length_groups(&[20, 21, 22, 23], 64), vec![0..4]);
        assert!(length_groups(&[], 64).is_empty());
        // Every text is in exactly one group, in order.
        let lengths: Vec<usize> = (1..=32).map(|i| i * 7).collect();
        let groups = length_groups(&lengths, 64);
        assert_eq!(groups.first().unwrap().start, 0);
        assert_eq!(groups.last().unwrap().end, 32);
        assert!(groups.windows(2).all(|w| w[0].end == w[1].start));
    }
}
