//! Guest stdout/stderr as log events: each line a `moa::guest` event tagged with the component,
//! the stream and the request id, so a component cannot forge the host's log lines; bounded per line
//! and rate-limited per component (what goes over is dropped and counted).

use super::Metrics;
use bytes::Bytes;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Longest guest line logged as one event; longer lines are split.
pub const DEFAULT_MAX_LINE_BYTES: usize = 4096;
/// Guest output each component may log per second (burst: four seconds' worth).
pub const DEFAULT_BYTES_PER_SECOND: u64 = 64 * 1024;
/// How often a component over its rate is reported.
const DROP_REPORT_EVERY: Duration = Duration::from_secs(10);

/// The request id lines are tagged with; the trigger updates it per request/delivery.
pub type RequestIdCell = Arc<Mutex<Arc<str>>>;

/// Per component: a byte budget refilled at a fixed rate, shared by all its instances.
pub struct OutputBudget {
    component: Arc<str>,
    max_line_bytes: usize,
    bytes_per_second: f64,
    burst: f64,
    metrics: Arc<Metrics>,
    bucket: Mutex<Bucket>,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
    dropped_since_report: u64,
    reported: Option<Instant>,
}

impl OutputBudget {
    pub fn new(
        component: Arc<str>,
        max_line_bytes: usize,
        bytes_per_second: u64,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let rate = bytes_per_second as f64;
        Arc::new(OutputBudget {
            component,
            max_line_bytes: max_line_bytes.max(64),
            bytes_per_second: rate,
            burst: rate * 4.0,
            metrics,
            bucket: Mutex::new(Bucket {
                tokens: rate * 4.0,
                refilled: Instant::now(),
                dropped_since_report: 0,
                reported: None,
            }),
        })
    }

    /// Takes `bytes` from the budget; `false` (and the drop counted) when it is spent.
    fn take(&self, bytes: usize) -> bool {
        let Ok(mut bucket) = self.bucket.lock() else {
            return false;
        };
        let now = Instant::now();
        let refill = now.duration_since(bucket.refilled).as_secs_f64() * self.bytes_per_second;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.refilled = now;
        if bucket.tokens >= bytes as f64 {
            bucket.tokens -= bytes as f64;
            return true;
        }
        bucket.dropped_since_report += bytes as u64;
        self.metrics.guest_output_dropped(&self.component, bytes);
        if bucket
            .reported
            .is_none_or(|at| now.duration_since(at) >= DROP_REPORT_EVERY)
        {
            tracing::warn!(
                target: "moa::guest",
                component = %self.component,
                dropped_bytes = bucket.dropped_since_report,
                bytes_per_second = self.bytes_per_second as u64,
                "guest output over its rate limit; lines dropped (raise [limits] guest_output_bytes_per_second)"
            );
            bucket.dropped_since_report = 0;
            bucket.reported = Some(now);
        }
        false
    }
}

/// One instance's stdout or stderr.
#[derive(Clone)]
pub struct GuestOutput {
    inner: Arc<Mutex<LineBuffer>>,
}

struct LineBuffer {
    stream: &'static str,
    request_id: RequestIdCell,
    budget: Arc<OutputBudget>,
    pending: Vec<u8>,
}

impl GuestOutput {
    pub fn new(stream: &'static str, request_id: RequestIdCell, budget: Arc<OutputBudget>) -> Self {
        GuestOutput {
            inner: Arc::new(Mutex::new(LineBuffer {
                stream,
                request_id,
                budget,
                pending: Vec::new(),
            })),
        }
    }

    fn write_bytes(&self, bytes: &[u8]) {
        if let Ok(mut buffer) = self.inner.lock() {
            buffer.write(bytes);
        }
    }
}

impl LineBuffer {
    fn write(&mut self, mut bytes: &[u8]) {
        let max = self.budget.max_line_bytes;
        while !bytes.is_empty() {
            match bytes.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    self.append(&bytes[..end]);
                    self.emit();
                    bytes = &bytes[end + 1..];
                }
                None => {
                    self.append(bytes);
                    bytes = &[];
                }
            }
        }
        if self.pending.len() >= max {
            self.emit();
        }
    }

    /// Buffers at most one line's worth; a longer line is logged in pieces.
    fn append(&mut self, mut bytes: &[u8]) {
        let max = self.budget.max_line_bytes;
        while self.pending.len() + bytes.len() > max {
            let room = max - self.pending.len();
            self.pending.extend_from_slice(&bytes[..room]);
            self.emit();
            bytes = &bytes[room..];
        }
        self.pending.extend_from_slice(bytes);
    }

    fn emit(&mut self) {
        let line = std::mem::take(&mut self.pending);
        if !self.budget.take(line.len().max(1)) {
            return;
        }
        let text: String = String::from_utf8_lossy(&line)
            .trim_end_matches('\r')
            .chars()
            .map(|c| {
                if c.is_control() && c != '\t' {
                    '\u{fffd}'
                } else {
                    c
                }
            })
            .collect();
        let request_id = self
            .request_id
            .lock()
            .map(|id| id.clone())
            .unwrap_or_else(|_| Arc::from("-"));
        tracing::info!(
            target: "moa::guest",
            component = %self.budget.component,
            stream = self.stream,
            request_id = %request_id,
            "{text}"
        );
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            self.emit();
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(max_line: usize, rate: u64) -> (GuestOutput, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let budget = OutputBudget::new("c".into(), max_line, rate, metrics.clone());
        let id: RequestIdCell = Arc::new(Mutex::new(Arc::from("r1")));
        (GuestOutput::new("stdout", id, budget), metrics)
    }

    #[test]
    fn lines_over_the_rate_are_dropped_and_counted() {
        let (out, metrics) = output(4096, 100);
        // Burst is four seconds' worth: 400 bytes pass, the rest is dropped.
        for _ in 0..100 {
            out.write_bytes(&[b'x'; 99]);
            out.write_bytes(b"\n");
        }
        let rendered = metrics.render();
        let dropped = rendered
            .lines()
            .find(|l| l.starts_with("moa_guest_output_dropped_bytes_total{"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        assert!(dropped >= 9000, "{rendered}");
    }

    #[test]
    fn a_long_line_is_split_at_the_line_limit() {
        let (out, _) = output(64, 1 << 20);
        out.write_bytes(&[b'y'; 200]);
        let pending = out.inner.lock().unwrap().pending.len();
        assert_eq!(pending, 200 - 3 * 64);
    }
}
