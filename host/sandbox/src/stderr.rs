//! A guest's stderr and `host.log`, bounded per call: chatter never traps and never
//! floods the host's own log.
//!
//! stderr keeps the last [`STDERR_TAIL_BYTES`] a call wrote (a panic message is at the
//! end), is emptied when the next call starts, and never refuses a write — wasmtime's
//! `MemoryOutputPipe` is cumulative and fails once full, which made a plugin writing
//! 4 KB per call trap after 16 chunks. `host.log` forwards at most [`LOG_LINES_PER_CALL`]
//! lines and [`LOG_BYTES_PER_CALL`] bytes of a call; the host then says how many it
//! dropped, in one line.

use bytes::Bytes;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// What a call's stderr keeps: its last bytes.
pub const STDERR_TAIL_BYTES: usize = 64 * 1024;
/// `host.log` lines forwarded per call (the rest are counted).
pub const LOG_LINES_PER_CALL: u32 = 20;
/// `host.log` bytes forwarded per call.
pub const LOG_BYTES_PER_CALL: usize = 16 * 1024;

#[derive(Default)]
struct Tail {
    bytes: Vec<u8>,
    /// Bytes written this call that are no longer kept.
    dropped: u64,
}

/// The guest's stderr: the tail of what the current call wrote.
#[derive(Clone, Default)]
pub struct TailPipe(Arc<Mutex<Tail>>);

impl TailPipe {
    fn push(&self, data: &[u8]) {
        let mut tail = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        tail.bytes.extend_from_slice(data);
        if tail.bytes.len() > STDERR_TAIL_BYTES {
            let cut = tail.bytes.len() - STDERR_TAIL_BYTES;
            tail.bytes.drain(..cut);
            tail.dropped += cut as u64;
        }
    }

    /// What the current call wrote (its tail, with how much came before it).
    pub fn contents(&self) -> String {
        let tail = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let text = String::from_utf8_lossy(&tail.bytes).trim().to_string();
        if tail.dropped > 0 { format!("… ({} earlier bytes dropped) {text}", tail.dropped) } else { text }
    }

    /// Empties it for the next call.
    pub fn clear(&self) {
        let mut tail = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        tail.bytes.clear();
        tail.dropped = 0;
    }
}

impl IsTerminal for TailPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for TailPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl OutputStream for TailPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always room: the oldest bytes make way.
        Ok(STDERR_TAIL_BYTES)
    }
}

#[async_trait::async_trait]
impl Pollable for TailPipe {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for TailPipe {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
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

/// `host.log` of one call: forwards within the limits, counts the rest.
#[derive(Debug, Default)]
pub struct LogBudget {
    lines: u32,
    bytes: usize,
    dropped: u64,
}

impl LogBudget {
    /// Whether a line of `len` bytes may go to the host's log.
    pub fn admit(&mut self, len: usize) -> bool {
        if self.lines < LOG_LINES_PER_CALL && self.bytes + len <= LOG_BYTES_PER_CALL {
            self.lines += 1;
            self.bytes += len;
            true
        } else {
            self.dropped += 1;
            false
        }
    }

    /// Lines dropped this call; resets for the next.
    pub fn finish(&mut self) -> u64 {
        std::mem::take(self).dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_keeps_the_tail_of_a_call_and_never_refuses() {
        let pipe = TailPipe::default();
        let mut stream = pipe.clone();
        for i in 0..100 {
            stream.write(Bytes::from(format!("{i:04} {}\n", "x".repeat(4000)))).unwrap();
            assert_eq!(stream.check_write().unwrap(), STDERR_TAIL_BYTES);
        }
        let text = pipe.contents();
        assert!(text.starts_with("… ("), "{}", &text[..40]);
        assert!(text.ends_with(&"x".repeat(100)) && text.contains("0099 "), "the last line is kept");
        pipe.clear();
        stream.write(Bytes::from_static(b"panicked at 'boom'")).unwrap();
        assert_eq!(pipe.contents(), "panicked at 'boom'");
    }

    #[test]
    fn a_call_logs_twenty_lines_then_counts() {
        let mut budget = LogBudget::default();
        let admitted = (0..1000).filter(|_| budget.admit(80)).count();
        assert_eq!(admitted, LOG_LINES_PER_CALL as usize);
        assert_eq!(budget.finish(), 1000 - LOG_LINES_PER_CALL as u64);
        assert!(budget.admit(LOG_BYTES_PER_CALL), "reset for the next call");
        assert!(!budget.admit(1), "the bytes are bounded too");
    }
}
