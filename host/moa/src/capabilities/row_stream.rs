//! The `stream<row>` the database capabilities (SQLite, PostgreSQL, MySQL) hand a component: a task
//! reads the rows ahead onto a channel; they reach the component in batches as it reads.

use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use wasmtime::StoreContextMut;
use wasmtime::component::{Destination, StreamProducer, StreamResult, VecBuffer};

/// Most rows handed to the component in one read.
const BATCH: usize = 64;

/// Rows of type `S` from the reading task, handed over as WIT rows `T` (`map`); `guard` lives as
/// long as the stream (e.g. to stop the statement when the component drops it).
pub struct ChannelRows<S, T, G = ()> {
    rows: mpsc::Receiver<S>,
    map: fn(S) -> T,
    _guard: G,
}

impl<S, T, G> ChannelRows<S, T, G> {
    pub fn new(rows: mpsc::Receiver<S>, map: fn(S) -> T, guard: G) -> Self {
        ChannelRows {
            rows,
            map,
            _guard: guard,
        }
    }
}

impl<T> ChannelRows<T, T> {
    /// Rows that are WIT rows already.
    pub fn plain(rows: mpsc::Receiver<T>) -> Self {
        ChannelRows::new(rows, |row| row, ())
    }
}

impl<D, S, T, G> StreamProducer<D> for ChannelRows<S, T, G>
where
    S: Send + 'static,
    T: Send + Sync + 'static,
    G: Send + Unpin + 'static,
{
    type Item = T;
    type Buffer = VecBuffer<T>;

    fn poll_produce<'a>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        _store: StoreContextMut<'a, D>,
        mut destination: Destination<'a, T, VecBuffer<T>>,
        finish: bool,
    ) -> Poll<wasmtime::Result<StreamResult>> {
        let this = self.get_mut();
        match this.rows.poll_recv(cx) {
            Poll::Ready(Some(first)) => {
                let mut batch = vec![(this.map)(first)];
                while batch.len() < BATCH {
                    match this.rows.try_recv() {
                        Ok(row) => batch.push((this.map)(row)),
                        Err(_) => break,
                    }
                }
                destination.set_buffer(batch.into());
                Poll::Ready(Ok(StreamResult::Completed))
            }
            // The reading task ended: no more rows.
            Poll::Ready(None) => Poll::Ready(Ok(StreamResult::Dropped)),
            Poll::Pending if finish => Poll::Ready(Ok(StreamResult::Cancelled)),
            Poll::Pending => Poll::Pending,
        }
    }
}
