//! What a plugin may do with WASI's blocking parts.
//!
//! - **stdout/stderr** go to a bounded in-memory sink per instance: a
//!   plugin that prints (`println!`, a panic message, an allocation-failure
//!   message) never blocks and never fails its write; after each call the
//!   host forwards what it wrote to `tracing`, truncated, and drops the rest.
//! - **`wasi:io/poll`** is replaced: a pollable that is not ready at once
//!   (a sleep, a wait on anything) is refused with a trap instead of parking
//!   a host thread. The timers of `wasi:clocks/monotonic-clock` are replaced
//!   too, by pollables that are ready at once (zero duration) or never, so
//!   the refusal does not depend on any clock. Plugins do no I/O, so nothing
//!   they may legitimately wait on ever pends; busy-polling is plain wasm
//!   and ends at the call's epoch deadline.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use parking_lot::Mutex;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::clocks::{WasiClocksCtxView, WasiClocksView};
use wasmtime_wasi::p2::{DynPollable, OutputStream, Pollable, StreamResult};
use wasmtime_wasi_io::bindings::wasi::io::poll as async_poll;

/// Most bytes of output kept from one call; the rest is counted, not kept.
pub const MAX_OUTPUT_PER_CALL: usize = 8 * 1024;
/// Most lines of output forwarded to the log from one call.
pub const MAX_LINES_PER_CALL: usize = 16;
/// Most bytes of one forwarded line.
const MAX_LINE: usize = 512;

/// The error a refused blocking call traps with.
#[derive(Debug, thiserror::Error)]
#[error("tried to block (sleep or wait on a pollable); plugins may not block")]
pub struct Blocked;

#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
    dropped: usize,
}

/// A bounded sink for one instance's stdout and stderr.
#[derive(Clone, Default)]
pub struct OutputSink {
    buffer: Arc<Mutex<Buffer>>,
}

impl OutputSink {
    fn push(&self, bytes: &[u8]) {
        let mut b = self.buffer.lock();
        let room = MAX_OUTPUT_PER_CALL.saturating_sub(b.bytes.len());
        let kept = bytes.len().min(room);
        b.bytes.extend_from_slice(&bytes[..kept]);
        b.dropped += bytes.len() - kept;
    }

    /// Takes what was written since the last call: its lines (at most
    /// [`MAX_LINES_PER_CALL`], each truncated) and how many bytes were
    /// left out.
    pub fn take(&self) -> (Vec<String>, usize) {
        let (bytes, mut dropped) = {
            let mut b = self.buffer.lock();
            (std::mem::take(&mut b.bytes), std::mem::take(&mut b.dropped))
        };
        if bytes.is_empty() {
            return (Vec::new(), dropped);
        }
        let text = String::from_utf8_lossy(&bytes);
        let mut lines = Vec::new();
        for line in text.lines() {
            if line.trim().is_empty() {
                continue;
            }
            if lines.len() == MAX_LINES_PER_CALL {
                dropped += line.len();
                continue;
            }
            let mut end = line.len().min(MAX_LINE);
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            lines.push(line[..end].to_string());
        }
        (lines, dropped)
    }
}

impl IsTerminal for OutputSink {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for OutputSink {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

impl OutputStream for OutputSink {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always writable: what is over the cap is counted and dropped.
        Ok(4096)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for OutputSink {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for OutputSink {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A timer from `subscribe-duration` or `subscribe-instant`: ready now,
/// or never (waiting is refused before it could be).
struct Timer {
    ready: bool,
}

#[wasmtime_wasi::async_trait]
impl Pollable for Timer {
    async fn ready(&mut self) {
        if !self.ready {
            std::future::pending::<()>().await;
        }
    }
}

fn timer(table: &mut ResourceTable, ready: bool) -> wasmtime::Result<Resource<DynPollable>> {
    let t = table.push(Timer { ready })?;
    wasmtime_wasi::p2::subscribe(table, t)
}

/// `wasi:clocks/monotonic-clock` with timers that never wait.
pub struct NoWaitClock<'a>(WasiClocksCtxView<'a>);

impl wasmtime_wasi::p2::bindings::clocks::monotonic_clock::Host for NoWaitClock<'_> {
    fn now(&mut self) -> wasmtime::Result<u64> {
        wasmtime_wasi::p2::bindings::clocks::monotonic_clock::Host::now(&mut self.0)
    }

    fn resolution(&mut self) -> wasmtime::Result<u64> {
        wasmtime_wasi::p2::bindings::clocks::monotonic_clock::Host::resolution(&mut self.0)
    }

    fn subscribe_instant(&mut self, when: u64) -> wasmtime::Result<Resource<DynPollable>> {
        let now = self.now()?;
        timer(self.0.table, when <= now)
    }

    fn subscribe_duration(&mut self, duration: u64) -> wasmtime::Result<Resource<DynPollable>> {
        timer(self.0.table, duration == 0)
    }
}

struct HasNoWaitClock;

impl HasData for HasNoWaitClock {
    type Data<'a> = NoWaitClock<'a>;
}

/// Polls `f` a few times without waiting: anything that needs real time
/// never completes here.
fn without_waiting<F: Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..3 {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return Some(v);
        }
    }
    None
}

/// `wasi:io/poll` on the instance's resource table, refusing to wait.
pub struct NoWaitPoll<'a>(pub &'a mut ResourceTable);

impl wasmtime_wasi::p2::bindings::sync::io::poll::Host for NoWaitPoll<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        match without_waiting(async_poll::Host::poll(self.0, pollables)) {
            Some(result) => result,
            None => Err(Blocked.into()),
        }
    }
}

impl wasmtime_wasi::p2::bindings::sync::io::poll::HostPollable for NoWaitPoll<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        // `ready` never waits by contract.
        without_waiting(async_poll::HostPollable::ready(self.0, pollable)).unwrap_or(Ok(false))
    }

    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        match without_waiting(async_poll::HostPollable::block(self.0, pollable)) {
            Some(result) => result,
            None => Err(Blocked.into()),
        }
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        async_poll::HostPollable::drop(self.0, pollable)
    }
}

struct HasNoWaitPoll;

impl HasData for HasNoWaitPoll {
    type Data<'a> = NoWaitPoll<'a>;
}

/// Replaces the `wasi:io/poll` and the monotonic clock's timers that
/// `add_to_linker_sync` linked.
pub fn link_no_wait_poll<T: WasiView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    wasmtime_wasi::p2::bindings::sync::io::poll::add_to_linker::<T, HasNoWaitPoll>(linker, |t| {
        NoWaitPoll(t.ctx().table)
    })?;
    wasmtime_wasi::p2::bindings::clocks::monotonic_clock::add_to_linker::<T, HasNoWaitClock>(
        linker,
        |t| NoWaitClock(t.clocks()),
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_bounded_and_split_into_truncated_lines() {
        let sink = OutputSink::default();
        let mut s = sink.clone();
        OutputStream::write(&mut s, Bytes::from_static(b"hello\nworld\n")).unwrap();
        assert_eq!(sink.take(), (vec!["hello".into(), "world".into()], 0));
        assert_eq!(sink.take(), (Vec::<String>::new(), 0), "taken once");
        let big = vec![b'x'; MAX_OUTPUT_PER_CALL + 100];
        OutputStream::write(&mut s, Bytes::from(big)).unwrap();
        let (lines, dropped) = sink.take();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].len(), MAX_LINE);
        assert_eq!(dropped, 100);
        let many: String = (0..100).map(|i| format!("line {i}\n")).collect();
        OutputStream::write(&mut s, Bytes::from(many)).unwrap();
        let (lines, dropped) = sink.take();
        assert_eq!(lines.len(), MAX_LINES_PER_CALL);
        assert!(dropped > 0);
    }

    #[test]
    fn timers_are_ready_now_or_never() {
        assert_eq!(without_waiting(async { 7 }), Some(7));
        assert_eq!(without_waiting(Timer { ready: true }.ready()), Some(()));
        assert!(without_waiting(Timer { ready: false }.ready()).is_none());
    }
}
