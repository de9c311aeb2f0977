//! Admission control for the HTTP trigger: caps on open connections and on requests handled at
//! once (503 with `Retry-After` past either), and an idle timeout on every connection (HTTP/1 and HTTP/2).

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The seconds a client is told to wait in `Retry-After` when the host is full.
pub const RETRY_AFTER_SECONDS: u64 = 1;

/// The host's connection and request caps.
pub struct Admission {
    connections: Arc<Semaphore>,
    requests: Arc<Semaphore>,
}

impl Admission {
    pub fn new(max_connections: usize, max_requests: usize) -> Self {
        Admission {
            connections: Arc::new(Semaphore::new(max_connections)),
            requests: Arc::new(Semaphore::new(max_requests)),
        }
    }

    /// A slot for a new connection, held while it is open; `None` when the cap is reached.
    pub fn connection(&self) -> Option<OwnedSemaphorePermit> {
        self.connections.clone().try_acquire_owned().ok()
    }

    /// A slot for one request from outside, held until its response body ends; `None` when full.
    pub fn request(&self) -> Option<OwnedSemaphorePermit> {
        self.requests.clone().try_acquire_owned().ok()
    }
}

/// Counts one connection's requests in progress (response bodies included), for the idle timeout.
#[derive(Clone, Default)]
pub struct ConnectionActivity(Arc<AtomicUsize>);

impl ConnectionActivity {
    pub fn start(&self) -> ActivityGuard {
        self.0.fetch_add(1, Ordering::AcqRel);
        ActivityGuard(self.0.clone())
    }

    fn busy(&self) -> bool {
        self.0.load(Ordering::Acquire) > 0
    }
}

/// Ends one request's activity when dropped.
pub struct ActivityGuard(Arc<AtomicUsize>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection that fails its reads with `TimedOut` after `timeout` without a byte from the client
/// while none of its requests is in progress: closes idle keep-alive and HTTP/2 connections and
/// clients that open a connection and never finish a request.
pub struct IdleTimeoutIo<T> {
    inner: T,
    activity: ConnectionActivity,
    timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl<T> IdleTimeoutIo<T> {
    pub fn new(inner: T, activity: ConnectionActivity, timeout: Duration) -> Self {
        IdleTimeoutIo {
            inner,
            activity,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
        }
    }

    fn rearm(&mut self) {
        let next = tokio::time::Instant::now() + self.timeout;
        self.sleep.as_mut().reset(next);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeoutIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        match Pin::new(&mut me.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                me.rearm();
                Poll::Ready(result)
            }
            Poll::Pending => {
                while me.sleep.as_mut().poll(cx).is_ready() {
                    if !me.activity.busy() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "connection idle too long",
                        )));
                    }
                    // A request is in progress: look again one timeout later.
                    me.rearm();
                }
                Poll::Pending
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeoutIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A response body that holds guards (request slot, connection activity) until it ends.
pub struct Guarded<B> {
    body: B,
    _guards: (Option<OwnedSemaphorePermit>, ActivityGuard),
}

impl<B> Guarded<B> {
    pub fn new(body: B, permit: Option<OwnedSemaphorePermit>, activity: ActivityGuard) -> Self {
        Guarded {
            body,
            _guards: (permit, activity),
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Guarded<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
