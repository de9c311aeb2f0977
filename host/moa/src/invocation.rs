//! The context of one invocation (an HTTP request or an event delivery): request id, trace
//! context, in-app nesting depth and deadline, carried the same way by every trigger.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What the host knows about the work an instance is doing right now. Set by the trigger at the
/// start of every request or delivery ([`crate::state::HostState::begin`]), also on a reused instance.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The request id (HTTP: `x-request-id` or a new one; events: the broker's message id).
    pub request_id: Arc<str>,
    /// W3C `traceparent` of the work, passed on to published messages, in-app calls and the
    /// model runtime.
    pub traceparent: Option<String>,
    /// In-app call nesting depth (0 from outside).
    pub depth: u32,
    /// When the guest's CPU time runs out: past it, the next epoch tick interrupts the guest.
    pub deadline: Instant,
    /// Transient conditions a capability reported to the guest during this invocation.
    pub transient: TransientFailures,
    /// Where a middleware's `wasi:http/handler` call goes next (set by the HTTP trigger for the
    /// middleware in a chain; opaque here).
    pub next: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

/// Whether the last answer a capability gave the guest in this invocation was a transient
/// failure: a write conflict with another transaction (one a killed host left open holds its
/// documents until the store aborts it), a backend briefly unavailable. An event delivery that
/// fails right after one is retried without spending an attempt, so a healthy message is not
/// dead-lettered for them. A later successful answer clears it: a conflict the guest got past
/// (the SDK ran the transaction again) does not make a later, unrelated failure transient.
#[derive(Debug, Default)]
pub struct TransientFailures {
    last: AtomicBool,
    /// Whether any answer in this invocation was a transient failure (a batch of deliveries
    /// cannot tell which of them a conflict belonged to).
    any: AtomicBool,
}

impl TransientFailures {
    /// A capability answered with a transient failure.
    pub fn record(&self) {
        self.last.store(true, Ordering::Relaxed);
        self.any.store(true, Ordering::Relaxed);
    }

    /// A capability answered successfully.
    pub fn resolve(&self) {
        self.last.store(false, Ordering::Relaxed);
    }

    /// Whether the last answer was a transient failure.
    pub fn pending(&self) -> bool {
        self.last.load(Ordering::Relaxed)
    }

    /// Whether any answer was a transient failure.
    pub fn seen(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }
}

impl Clone for TransientFailures {
    fn clone(&self) -> Self {
        TransientFailures {
            last: AtomicBool::new(self.pending()),
            any: AtomicBool::new(self.seen()),
        }
    }
}

impl Invocation {
    /// A fresh invocation with `timeout` from now.
    pub fn new(request_id: impl Into<Arc<str>>, timeout: Duration) -> Self {
        Invocation {
            request_id: request_id.into(),
            traceparent: None,
            depth: 0,
            deadline: deadline_after(timeout),
            transient: TransientFailures::default(),
            next: None,
        }
    }

    pub fn with_traceparent(mut self, traceparent: Option<String>) -> Self {
        self.traceparent = traceparent;
        self
    }

    pub fn with_depth(mut self, depth: u32) -> Self {
        self.depth = depth;
        self
    }

    /// When a database statement started now must stop: a tenth of the time left before the
    /// deadline, so the component can still answer with the error.
    pub fn statement_deadline(&self) -> Instant {
        let now = Instant::now();
        let left = self.deadline.saturating_duration_since(now);
        now + left - left / 10
    }

    /// Time left before the deadline (zero once it passed).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// `now + timeout`, saturating far in the future for absurd timeouts.
pub fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}
