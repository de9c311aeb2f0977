//! Lets the client tell a complete response from a cut one: when the component traps after its
//! response started streaming, the body ends with an error instead of a clean end (hyper then
//! aborts the chunked message, or resets the HTTP/2 stream), and the trap is logged and counted.
//!
//! wasmtime-wasi-http ends a WASIp3 body cleanly when the guest's writer goes away without
//! finishing it, so the only word of the trap is the instance's outcome: at the body's end this
//! waits (briefly) for the instance to report how it ended.

use crate::telemetry::Metrics;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::oneshot;
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

/// How long the end of a body waits for a single-use instance to report how it ended (it is torn
/// down right after its last task; a trap reports at once).
pub const OUTCOME_WAIT: Duration = Duration::from_millis(100);

/// Who to name when a response is cut.
pub struct CutReport {
    pub component: String,
    pub request_id: String,
    pub metrics: Arc<Metrics>,
}

/// A component's response body that ends with an error when the component trapped.
pub struct CompletionCheck {
    body: WasiBody,
    body_ended: bool,
    /// The instance's outcome: an error if it trapped, closed if it ended well.
    outcome: Option<oneshot::Receiver<wasmtime::Error>>,
    /// How long to wait at the end for an instance still alive (zero for reused instances,
    /// which live on after the request).
    wait: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    report: CutReport,
    finished: bool,
}

impl CompletionCheck {
    pub fn new(
        body: WasiBody,
        outcome: oneshot::Receiver<wasmtime::Error>,
        wait: Duration,
        report: CutReport,
    ) -> Self {
        CompletionCheck {
            body,
            body_ended: false,
            outcome: Some(outcome),
            wait,
            timer: None,
            report,
            finished: false,
        }
    }

    fn cut(&mut self, why: &str) -> HttpError {
        self.finished = true;
        self.report.metrics.trapped(&self.report.component);
        tracing::error!(
            request_id = %self.report.request_id,
            component = %self.report.component,
            error = %why,
            "component failed after its response started; the response was cut off"
        );
        HttpError::InternalError(Some(format!(
            "component `{}` failed after its response started",
            self.report.component
        )))
    }

    /// At the body's end: how did the instance end?
    fn poll_outcome(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let Some(outcome) = self.outcome.as_mut() else {
            self.finished = true;
            return Poll::Ready(None);
        };
        match Pin::new(outcome).poll(cx) {
            Poll::Ready(Ok(error)) => {
                self.outcome = None;
                let error = self.cut(&format!("{error:#}"));
                Poll::Ready(Some(Err(error)))
            }
            Poll::Ready(Err(_)) => {
                // The instance ended without an error.
                self.outcome = None;
                self.finished = true;
                Poll::Ready(None)
            }
            Poll::Pending if self.wait.is_zero() => {
                self.finished = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let wait = self.wait;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(wait)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.finished = true;
                        Poll::Ready(None)
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl Body for CompletionCheck {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        if !this.body_ended {
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => return Poll::Ready(Some(Ok(frame))),
                Poll::Ready(Some(Err(error))) => {
                    // The body failed on its own: the client sees it cut off; say why here.
                    let _ = this.cut(&error.to_string());
                    return Poll::Ready(Some(Err(error)));
                }
                Poll::Ready(None) => this.body_ended = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        this.poll_outcome(cx)
    }

    fn is_end_stream(&self) -> bool {
        // Never before the outcome is known: hyper must ask again, so a trap can still end it.
        self.finished
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
