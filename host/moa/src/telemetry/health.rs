//! Readiness of the host: every trigger keeps working. A trigger that dies at run time reports
//! itself here (logged once, counted in `moa_trigger_failures_total`) and `/readyz` answers 503.

use super::Metrics;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// What `/readyz` reports; shared by the triggers and the admin listener.
pub struct Health {
    failures: Mutex<BTreeMap<String, String>>,
    /// How many entries `failures` holds: lets the hot path skip the lock.
    failing: AtomicUsize,
    metrics: Arc<Metrics>,
}

impl Health {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Health {
            failures: Mutex::new(BTreeMap::new()),
            failing: AtomicUsize::new(0),
            metrics,
        })
    }

    /// Marks `trigger` as not working: logged and counted once until it recovers.
    pub fn trigger_failed(&self, trigger: &str, why: &str) {
        let Ok(mut failures) = self.failures.lock() else {
            return;
        };
        if failures.contains_key(trigger) {
            return;
        }
        tracing::error!(
            trigger,
            error = why,
            "trigger stopped working; the host reports not ready"
        );
        self.metrics.trigger_failed(trigger);
        failures.insert(trigger.to_string(), why.to_string());
        self.failing.store(failures.len(), Ordering::Release);
    }

    /// Marks `trigger` as working again.
    pub fn trigger_recovered(&self, trigger: &str) {
        if self.failing.load(Ordering::Acquire) == 0 {
            return;
        }
        if let Ok(mut failures) = self.failures.lock()
            && failures.remove(trigger).is_some()
        {
            self.failing.store(failures.len(), Ordering::Release);
            tracing::info!(trigger, "trigger working again");
        }
    }

    /// Triggers that do not work, with why.
    pub fn failures(&self) -> Vec<(String, String)> {
        self.failures
            .lock()
            .map(|f| f.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }
}
